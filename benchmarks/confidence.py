"""Confidence calibration of a model: expected calibration error and reliability diagrams.

    python benchmarks/confidence.py --model default \
        --manifest test=data/synth-cal/test.jsonl --manifest realdev=../shared/data/realdev/realdev.jsonl

Each manifest is decoded as users decode (the model's mode and streaming settings). Every
recognized word is labelled right or wrong by aligning the transcript with the reference, and
its confidence compared with that: raw (the geometric mean of its token posteriors) and
calibrated (the model's calibration.json, fitted by ``edgeasr calibrate`` on a dev set that is
none of these). Utterance confidence (the mean of its words') is compared with the share of its
words that are right. Writes ``benchmarks/results/confidence.json``, a reliability diagram
``confidence.png`` beside it, and regenerates BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import edgeasr
from edgeasr.data.manifest import read_manifest
from edgeasr.decoding.confidence import calibrated, calibration_report, decode_for_calibration
from edgeasr.evaluate.report import run_facts, save_result

ROOT = Path(__file__).resolve().parents[1]
TARGET_ECE = 0.10


def reliability_plot(sets: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sets), figsize=(4.2 * len(sets), 4), squeeze=False)
    for ax, (name, row) in zip(axes[0], sets.items()):
        ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfect")
        for kind, style in (("raw", "o-"), ("calibrated", "s-")):
            bins = [b for b in row[kind]["word_bins"] if b["count"]]
            ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], style,
                    label=f"{kind} (ECE {row[kind]['word_ece']:.3f})")
        ax.set_title(f"{name}: {row['raw']['words']} words")
        ax.set_xlabel("word confidence")
        ax.set_ylabel("share of words right")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--manifest", action="append", required=True, metavar="NAME=PATH")
    parser.add_argument("--max-utts", type=int)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "confidence.json"))
    parser.add_argument("--report", default=str(ROOT / "BENCHMARKS.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    recognizer = edgeasr.load_model(args.model)
    if recognizer.calibrator is None:
        raise SystemExit(f"{args.model} has no calibration.json: run `edgeasr calibrate` on a dev set first")
    sets = {}
    for spec in args.manifest:
        name, _, path = spec.partition("=")
        utterances = read_manifest(path)[: args.max_utts]
        decoded = decode_for_calibration(recognizer, utterances)
        sets[name] = {"manifest": path, "utterances": len(utterances), "raw": calibration_report(decoded),
                      "calibrated": calibration_report(calibrated(decoded, recognizer.calibrator))}
        print(name, {k: {m: sets[name][k][m] for m in ("word_ece", "utterance_ece", "word_accuracy",
                                                        "mean_word_confidence")} for k in ("raw", "calibrated")},
              file=sys.stderr, flush=True)
    out = Path(args.out)
    plot = out.with_suffix(".png")
    out.parent.mkdir(parents=True, exist_ok=True)
    reliability_plot(sets, plot)
    result = {**run_facts("confidence", "benchmarks/confidence.py", sys.argv[1:]), "model": args.model,
              "calibration": recognizer.calibrator.fitted_on, "weights": recognizer.calibrator.weights,
              "target_ece": TARGET_ECE, "sets": sets, "plot": plot.name}
    save_result(result, out, args.report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
