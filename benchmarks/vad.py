"""Where the energy VAD helps: long recordings with pauses, with and without ``--vad``, in turns.

    python benchmarks/vad.py --manifest data/synth-cal/test.jsonl --minutes 3

Files are built as in benchmarks/long_file.py from the manifest's utterances, once with short
pauses (0.3-1.5 s, read speech) and once with long ones (2-10 s, a meeting or a call with gaps),
the pauses filled with room noise; ``--files`` files of each (seeds 0, 1, ...). Each file is
streamed by the default model with and without the VAD, the two taking turns (a busy spell of the
shared machine falls on both), at 1 thread. Recorded per pause setting: compute time and RTF, the
median per-file time ratio VAD / no VAD, the share of audio the VAD skipped, segments, and WER
against the joined references (Whisper's second pass reads a segment a little differently with
less silence before it, so single files move either way by a few points; several files tell). Short utterances (realdev, the TTS test) are
scored with and without ``--vad`` by ``edgeasr eval`` (see docs/LONG_AUDIO.md). Writes
benchmarks/results/vad.json and regenerates BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

import edgeasr
from edgeasr.data.manifest import read_manifest
from edgeasr.evaluate.metrics import word_errors
from edgeasr.evaluate.report import run_facts, save_result

sys.path.insert(0, str(Path(__file__).resolve().parent))
from long_file import build  # noqa: E402  (the same file builder as the long-file benchmark)

ROOT = Path(__file__).resolve().parents[1]
PAUSES = {"short pauses (0.3-1.5 s)": (0.3, 1.5), "long pauses (2-10 s)": (2.0, 10.0)}


def stream(recognizer, audio, block: int = 10240):
    started = time.perf_counter()
    session = recognizer.stream()
    for i in range(0, len(audio), block):
        session.feed(audio[i : i + block])
    result = session.finish()
    return result, time.perf_counter() - started, session.skipped_seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--pause-db", type=float, default=-50.0, help="room noise level in the pauses (dBFS)")
    parser.add_argument("--files", type=int, default=3, help="files per pause setting (seeds 0..N-1)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "vad.json"))
    parser.add_argument("--report", default=str(ROOT / "BENCHMARKS.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    utterances = read_manifest(args.manifest)
    recognizers = {vad: edgeasr.load_model(args.model, vad=vad) for vad in (False, True)}
    for recognizer in recognizers.values():  # warm-up
        recognizer.transcribe(np.zeros(16000, dtype=np.float32))
    rows = []
    for label, pauses in PAUSES.items():
        totals = {vad: {"seconds": 0.0, "compute": 0.0, "skipped": 0.0, "errors": 0, "words": 0, "segments": 0,
                        "ratios": []} for vad in recognizers}
        for seed in range(args.files):
            audio, reference = build(utterances, args.minutes, seed, pauses, args.pause_db)
            runs = {vad: stream(recognizer, audio) for vad, recognizer in recognizers.items()}
            for vad, (result, wall, skipped) in runs.items():
                counts = word_errors(reference, result.text)
                total = totals[vad]
                total["seconds"] += len(audio) / 16000
                total["compute"] += wall
                total["skipped"] += skipped
                total["errors"] += counts.errors
                total["words"] += counts.reference_length
                total["segments"] += len(result.segments)
                total["ratios"].append(wall / runs[False][1])
        for vad, total in totals.items():
            rows.append({"file": label, "files": args.files, "minutes": round(total["seconds"] / 60, 2), "vad": vad,
                         "compute_seconds": round(total["compute"], 2), "rtf": round(total["compute"] / total["seconds"], 4),
                         "time_vs_no_vad": round(float(np.median(total["ratios"])), 3),
                         "skipped_share": round(total["skipped"] / total["seconds"], 3), "segments": total["segments"],
                         "wer": round(100 * total["errors"] / max(1, total["words"]), 2), "words": total["words"]})
            print(rows[-1], file=sys.stderr, flush=True)
    result = {**run_facts("vad", "benchmarks/vad.py", sys.argv[1:]), "model": args.model,
              "manifest": args.manifest, "pause_db": args.pause_db, "minutes_per_file": args.minutes, "rows": rows}
    save_result(result, args.out, args.report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
