"""``edgeasr bench``: encoder variants side by side against a baseline, in one process."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


from edgeasr.errors import EdgeAsrError
from edgeasr.fileio import atomic_write_text


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="benchmark models or configs side by side (size, FLOPs, state, latency, RTF, WER)",
        description=(
            "Measure, in one process and against the first model as baseline: parameters, bytes on "
            "disk, FLOPs per second of audio, streaming state bytes (after 10 s and 60 s), per-chunk "
            "latency (median, p90) at each chunk size, RTF at 1 thread and WER/CER on a held-out "
            "manifest. Writes JSON, a Pareto plot (WER against latency) and regenerates the report. "
            "A YAML config instead of a model directory gives a speed-only row with random weights."
        ),
    )
    parser.add_argument("models", nargs="+", metavar="[NAME=]MODEL",
                        help="model directories ('default' for the shipped one) or YAML configs; the first is the baseline")
    parser.add_argument("--manifest", help="held-out JSONL manifest for WER/CER and latency audio")
    parser.add_argument("--limit", type=int, help="only the first N utterances for WER/CER")
    parser.add_argument("--chunk-sizes", default="16,4", help="chunk sizes for latency (default: 16,4)")
    parser.add_argument("--latency-utts", type=int, default=20, help="utterances streamed for latency and RTF (default: 20)")
    parser.add_argument("--repeats", type=int, default=3, help="latency passes per model, interleaved (default: 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--profile-layer-norm", action="store_true",
                        help="also measure LayerNorm's share of the baseline's time and FLOPs")
    parser.add_argument("--out", default="benchmarks/results/encoders.json", help="JSON result file")
    parser.add_argument("--plot", default=None, help="Pareto plot PNG (default: next to --out, *_pareto.png)")
    parser.add_argument("--report", default="BENCHMARKS.md",
                        help="report regenerated from every JSON next to --out ('' to skip)")
    parser.add_argument("--note", action="append", default=[], help="a sentence to print under the table (repeatable)")
    parser.set_defaults(func=run)


def _targets(result: dict) -> list[dict]:
    """The issue's targets for rows whose plan makes them a FusionFormer or Practical variant."""
    targets = []
    for row in result["models"][1:]:
        ratios = row["vs_baseline"]
        wer_key = "wer_relative_first_pass"
        if "fusionformer" in row["plan"]:
            speed, wer = ratios.get("speedup_chunk_16"), ratios.get(wer_key)
            if speed is not None and wer is not None:
                targets.append({"target": f"{row['name']}: >= 1.10x faster per chunk at <= +3% relative WER",
                                "measured": f"{speed:.2f}x, {wer:+.1f}% WER", "met": speed >= 1.10 and wer <= 3})
        if "performer" in row["plan"] or "conv" in row["plan"].split(" + ")[0]:
            speed, wer = ratios.get("speedup_chunk_16"), ratios.get(wer_key)
            constant = row["state_bytes_10s"] == row["state_bytes_60s"]
            if speed is not None and wer is not None:
                targets.append({"target": f"{row['name']}: >= 3x lower per-chunk latency at <= +10% relative WER (first pass)",
                                "measured": f"{speed:.2f}x, {wer:+.1f}% WER", "met": speed >= 3 and wer <= 10})
            targets.append({"target": f"{row['name']}: streaming state constant in context length",
                            "measured": f"{row['state_bytes_10s']} B after 10 s, {row['state_bytes_60s']} B after 60 s",
                            "met": constant})
    return targets


def run(args: argparse.Namespace) -> int:
    from edgeasr.audio.features import FbankOptions
    from edgeasr.audio.io import load_audio
    from edgeasr.data.manifest import read_manifest
    from edgeasr.evaluate.bench import load_bench_model, run_bench
    from edgeasr.evaluate.flops import layer_norm_share
    from edgeasr.evaluate.report import pareto_plot, write_report
    from edgeasr.api import set_compute_threads

    set_compute_threads(args.threads)
    try:
        chunk_sizes = tuple(int(c) for c in args.chunk_sizes.split(","))
    except ValueError:
        raise EdgeAsrError(f"--chunk-sizes takes comma-separated integers, not '{args.chunk_sizes}'") from None
    if any(c < 1 for c in chunk_sizes):
        raise EdgeAsrError("--chunk-sizes must all be at least 1 (streaming chunks)")
    if not args.manifest:
        raise EdgeAsrError("--manifest is required: latency is measured on real utterances and WER on held-out ones")
    utts = read_manifest(args.manifest)[: args.limit]
    if not utts:
        raise EdgeAsrError(f"{args.manifest}: no utterances")
    audio = [load_audio(u.audio) for u in utts]

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    result = run_bench(args.models, utts, audio, chunk_sizes, args.latency_utts, args.repeats, log=log)
    if args.profile_layer_norm:
        baseline = load_bench_model(args.models[0])
        options = baseline.packaged.features if baseline.packaged else FbankOptions()
        feats = [options.compute(samples) for samples in audio[: args.latency_utts]]
        result["layer_norm_profile"] = layer_norm_share(baseline.model, feats, chunk_size=16)
        log(f"LayerNorm profile: {result['layer_norm_profile']}")
    result["targets"] = _targets(result)
    result["notes"] = list(args.note)
    out = Path(args.out)
    plot = Path(args.plot) if args.plot else out.with_name(out.stem + "_pareto.png")
    if any(row.get("accuracy") for row in result["models"]):
        pareto_plot(result, plot)
        result["plot"] = str(plot)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=1))
    if args.report:
        write_report(out.parent, args.report)
    print(json.dumps({row["name"]: row["vs_baseline"] for row in result["models"]}, indent=1))
    return 0
