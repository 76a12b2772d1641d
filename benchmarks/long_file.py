"""Long files through `edgeasr transcribe`, as a user runs it: time, peak memory, segments, WER.

    python benchmarks/long_file.py --manifest data/synth-cal/test.jsonl --minutes 2.6,10,30

For each length, a file is built from the manifest's utterances in a seeded shuffled order with
0.3-1.5 s pauses of low noise between them (the order starts over if it runs out), written as a
WAV, and transcribed by ``edgeasr transcribe FILE -f json`` in its own process at 1 thread (the
shipped settings: streaming, cut into segments at endpoints, each rescored on its own). Recorded:
wall time and RTF, the process's peak resident memory (getrusage of the child), the number of
segments and the longest one, and WER against the joined references. The point (issue: "a 157 s
file took 100 s and 2.7 GB peak memory and came out as one 1,500-character line"): time linear in
the length, memory flat, output in segments. Writes benchmarks/results/long_file.json and
regenerates BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgeasr.audio.io import load_audio, write_wav
from edgeasr.data.manifest import read_manifest
from edgeasr.evaluate.metrics import word_errors
from edgeasr.evaluate.report import run_facts, save_result

ROOT = Path(__file__).resolve().parents[1]


def build(utterances, minutes: float, seed: int, pauses: tuple[float, float] = (0.3, 1.5),
          pause_db: float = -60.0) -> tuple[np.ndarray, str]:
    """A file of the utterances in a seeded order, with ``pauses`` seconds (uniform) of noise
    at ``pause_db`` dBFS between them; and its joined reference."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(utterances))
    pieces, texts, total, k = [], [], 0, 0
    while total < minutes * 60 * 16000:
        utt = utterances[order[k % len(order)]]
        k += 1
        samples = load_audio(utt.audio)
        pause = (10 ** (pause_db / 20) * rng.standard_normal(int(rng.uniform(*pauses) * 16000))).astype(np.float32)
        pieces += [samples, pause]
        texts.append(utt.text)
        total += len(samples) + len(pause)
    return np.concatenate(pieces), " ".join(texts)


def transcribe(path: Path, model: str) -> tuple[dict, float, int]:
    """(JSON result, wall seconds, peak RSS KB) of `edgeasr transcribe` in a child process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "edgeasr", "transcribe", str(path), "--model", model, "-f", "json"],
                         capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if run.returncode:
        raise SystemExit(run.stderr[-2000:])
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return json.loads(run.stdout), wall, max(peak, before)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--minutes", default="2.6,10,30", help="file lengths, comma-separated")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "long_file.json"))
    parser.add_argument("--report", default=str(ROOT / "BENCHMARKS.md"))
    args = parser.parse_args()
    utterances = read_manifest(args.manifest)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for minutes in (float(m) for m in args.minutes.split(",")):
            audio, reference = build(utterances, minutes, args.seed)
            path = Path(tmp) / f"long-{minutes:g}.wav"
            write_wav(path, audio, 16000)
            # peak RSS of children is a running maximum: run the lengths shortest first
            result, wall, peak_kb = transcribe(path, args.model)
            seconds = len(audio) / 16000
            counts = word_errors(reference, result["text"])
            segments = result["segments"]
            row = {"minutes": round(seconds / 60, 2), "wall_seconds": round(wall, 1), "rtf": round(wall / seconds, 4),
                   "peak_rss_mb": round(peak_kb / 1024), "segments": len(segments),
                   "longest_segment_chars": max((len(s["text"]) for s in segments), default=0),
                   "longest_segment_seconds": round(max((s["end"] - s["start"] for s in segments), default=0), 1),
                   "wer": round(100 * counts.errors / max(1, counts.reference_length), 2),
                   "words": counts.reference_length}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    result = {**run_facts("long_file", "benchmarks/long_file.py", sys.argv[1:]), "model": args.model,
              "manifest": args.manifest, "rows": rows}
    save_result(result, args.out, args.report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
