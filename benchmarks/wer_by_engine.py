"""WER per TTS engine from a hypotheses file of benchmarks/whisper_default.py (``--hyps``).

    python benchmarks/wer_by_engine.py --hyps exp/hyps_default.jsonl --set test \
        --out benchmarks/results/whisper_default_by_engine.json

A synthesized corpus names each WAV after its engine (``<engine>-<split>-<index>-<hash>.wav``),
so the errors of one test run can be split by engine: which voices a model still fails on.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

from edgeasr.evaluate.metrics import word_errors


def by_engine(lines: list[dict], set_name: str) -> dict:
    counts: dict = defaultdict(lambda: [0, 0])
    for row in lines:
        if row["set"] != set_name:
            continue
        engine = Path(row["audio"]).name.split("-")[0]
        errors = word_errors(row["ref"], row["hyp"])
        key = (str(row["chunk_size"]), row["mode"], engine)
        counts[key][0] += errors.errors
        counts[key][1] += errors.reference_length
    result: dict = {}
    for (chunk, mode, engine), (errors, words) in sorted(counts.items()):
        result.setdefault(chunk, {}).setdefault(mode, {})[engine] = {
            "wer": round(100 * errors / max(1, words), 2), "words": words}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hyps", required=True)
    parser.add_argument("--set", default="test")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    lines = [json.loads(line) for line in Path(args.hyps).read_text().splitlines() if line.strip()]
    result = {"benchmark": "wer_by_engine", "hyps": args.hyps, "set": args.set,
              "wer_by_chunk_mode_engine": by_engine(lines, args.set)}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["wer_by_chunk_mode_engine"].get("32", {}), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
