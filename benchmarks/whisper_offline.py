"""Whisper itself, offline, as the reference the streaming default is judged against.

    python benchmarks/whisper_offline.py --manifest test=data/synth4/test.jsonl \
        --manifest realdev=../shared/data/realdev/realdev.jsonl

faster-whisper (CTranslate2, int8, 1 thread; a test dependency, never used at run time) runs
Whisper tiny.en and Whisper base from their installed packages the way Whisper is meant to run:
30 s windows, beam 5, English. WER per set and, for synthesized sets, per TTS engine: how much of
the default's remaining error on robotic voices is Whisper's own. Realdev's references were
written by Whisper base (kept where tiny.en agreed), which flatters base there.
Writes ``benchmarks/results/whisper_offline.json``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from edgeasr.data.manifest import read_manifest
from edgeasr.evaluate.metrics import word_errors
from edgeasr.evaluate.report import run_facts, save_result
from edgeasr.model.whisper import packaged_whisper

ROOT = Path(__file__).resolve().parents[1]


def engine_of(audio: str) -> str | None:
    """Synthesized corpora name WAVs ``<engine>-<split>-...``; real recordings have no engine."""
    name = Path(audio).name
    return name.split("-")[0] if "-" in name else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", action="append", required=True, metavar="NAME=MANIFEST")
    parser.add_argument("--models", default="tiny.en,base")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/whisper_offline.json"))
    parser.add_argument("--report", default=str(ROOT / "BENCHMARKS.md"))
    args = parser.parse_args()
    from faster_whisper import WhisperModel

    sets = {name: read_manifest(path) for name, path in (m.split("=", 1) for m in args.manifest)}
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.models.split(","):
            model = WhisperModel(str(packaged_whisper(name).joined_dir(Path(scratch) / name)), device="cpu", compute_type="int8",
                                 cpu_threads=1)
            for set_name, utts in sets.items():
                counts: dict = defaultdict(lambda: [0, 0])
                for utt in utts:
                    segments, _ = model.transcribe(utt.audio, language="en", beam_size=5,
                                                   condition_on_previous_text=False)
                    errors = word_errors(utt.text, " ".join(s.text for s in segments))
                    for key in ("all", engine_of(utt.audio)):
                        if key is None:
                            continue
                        counts[key][0] += errors.errors
                        counts[key][1] += errors.reference_length
                row = {"model": name, "set": set_name, "utts": len(utts),
                       "wer": round(100 * counts["all"][0] / max(1, counts["all"][1]), 2),
                       "wer_by_engine": {k: round(100 * e / max(1, w), 2) for k, (e, w) in sorted(counts.items())
                                         if k != "all"}}
                rows.append(row)
                print(row, flush=True)
    result = {**run_facts("whisper_offline", "benchmarks/whisper_offline.py", sys.argv[1:]), "rows": rows}
    save_result(result, args.out, args.report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
