"""Where the torch integer-only path spends its time, against float, per streaming chunk.

    python benchmarks/integer_profile.py --float models/u2-baseline --quantized exp/ptq8 \
        --manifest samples/samples.jsonl --chunk-size 16

(``exp/ptq8``: ``edgeasr quantize --model models/u2-baseline --out exp/ptq8 --calib F.jsonl``, or
any W8A8 QAT model directory.) The encoder streams chunk by chunk at 1 thread in three forms:
float, fake-quant (the quantized model as trained: float ops on rounded values) and integer-only
(``convert_to_integer``: int8 x int8 -> int32 ``_int_mm``, fixed-point requantization). They
take turns on each chunk; the per-chunk time ratios are medians. Then torch's profiler counts,
per form, the operators one chunk dispatches and their self CPU time, grouped by what they do:

- ``matmul``: the products (float linear/matmul/conv; ``_int_mm`` and int32 matmul),
- ``quantize``: float -> codes and back (round, clamp, casts, division and multiplication by scales),
- ``requantize``: the fixed-point rescaling of int32 sums (int64 products, shifts, adds),
- ``other``: layer norm, softmax, activations, reshapes, concatenation and the rest.

The point (issue: "the torch integer path at least as fast as float at chunk 16 on one thread,
or an explanation with a profile of where the time goes"): at 16 frames a chunk the matrices
are tiny, so each operator's fixed dispatch cost, not its arithmetic, sets the time, and the
integer path dispatches several operators for each float one. Writes
``benchmarks/results/integer_profile.json`` and regenerates BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

from edgeasr.audio.io import load_audio
from edgeasr.data.manifest import read_manifest
from edgeasr.decoding.recognizer import DecodeOptions, Recognizer
from edgeasr.evaluate.report import run_facts, save_result
from edgeasr.evaluate.flops import chunk_windows
from edgeasr.quant.integer import convert_to_integer

ROOT = Path(__file__).resolve().parents[1]

MATMUL = {"aten::linear", "aten::addmm", "aten::mm", "aten::bmm", "aten::matmul", "aten::_int_mm",
          "aten::conv1d", "aten::conv2d", "aten::convolution", "aten::_convolution", "aten::mkldnn_convolution",
          "aten::baddbmm", "aten::einsum"}
QUANTIZE = {"aten::round", "aten::clamp", "aten::clamp_", "aten::to", "aten::_to_copy", "aten::copy_", "aten::div",
            "aten::mul", "aten::sub", "aten::abs", "aten::max", "aten::where", "aten::as_tensor"}
REQUANTIZE = {"aten::__rshift__", "aten::__lshift__", "aten::bitwise_right_shift", "aten::bitwise_left_shift",
              "aten::ones_like", "aten::clamp_min"}


def category(name: str, kind: str) -> str:
    if name in MATMUL:
        return "matmul"
    if kind != "float" and name in REQUANTIZE:
        return "requantize"
    if kind != "float" and name in QUANTIZE:
        return "quantize"
    return "other"


def windows(recognizer: Recognizer, audio: list, chunk: int) -> list[list[torch.Tensor]]:
    """Each utterance's encoder input windows, chunk by chunk."""
    return [chunk_windows(recognizer.model, recognizer.frontend.compute(samples), chunk) for samples in audio]


def run_chunks(model, utterances: list[list[torch.Tensor]], times: list[float] | None = None) -> None:
    """Stream each utterance (caches start empty per utterance), timing every chunk."""
    for chunks in utterances:
        att, cnn = [], []
        for window in chunks:
            started = time.perf_counter()
            out, att, cnn = model.encoder.forward_chunk(window, att, cnn)
            model.ctc_log_probs(out)
            if times is not None:
                times.append(time.perf_counter() - started)


def profile(model, utterances: list[list[torch.Tensor]], kind: str) -> dict:
    """Operators per chunk and self CPU time per category (aten operators, self time)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    run_chunks(model, utterances[:1])
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        run_chunks(model, utterances)
    n = sum(len(chunks) for chunks in utterances)
    per_category: dict = defaultdict(lambda: {"ops": 0, "self_us": 0.0})
    ops: dict = defaultdict(lambda: {"calls": 0, "self_us": 0.0})
    for event in prof.key_averages():
        if not event.key.startswith("aten::"):
            continue
        group = per_category[category(event.key, kind)]
        group["ops"] += event.count
        group["self_us"] += event.self_cpu_time_total
        ops[event.key]["calls"] += event.count
        ops[event.key]["self_us"] += event.self_cpu_time_total
    top = sorted(ops.items(), key=lambda item: -item[1]["self_us"])[:10]
    return {"categories": {name: {"ops_per_chunk": round(v["ops"] / n, 1), "self_ms_per_chunk": round(v["self_us"] / n / 1000, 3)}
                           for name, v in sorted(per_category.items())},
            "ops_per_chunk": round(sum(v["ops"] for v in per_category.values()) / n, 1),
            "int_mm_calls_per_chunk": round(ops["aten::_int_mm"]["calls"] / n, 1) if "aten::_int_mm" in ops else 0.0,
            "top_ops": [{"op": name, "calls_per_chunk": round(v["calls"] / n, 1),
                         "self_ms_per_chunk": round(v["self_us"] / n / 1000, 3)} for name, v in top]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--float", dest="float_model", default="models/u2-baseline")
    parser.add_argument("--quantized", required=True, help="a W8A8 (PTQ or QAT) model directory")
    parser.add_argument("--manifest", default=str(ROOT / "samples" / "samples.jsonl"))
    parser.add_argument("--chunk-size", type=int, default=16)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/integer_profile.json"))
    parser.add_argument("--report", default=str(ROOT / "BENCHMARKS.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    options = DecodeOptions(mode="ctc_greedy", chunk_size=args.chunk_size)
    forms = {"float": Recognizer.load(args.float_model, options),
             "fake_quant": Recognizer.load(args.quantized, options),
             "integer": Recognizer.load(args.quantized, options)}
    convert_to_integer(forms["integer"].model)
    audio = [load_audio(u.audio) for u in read_manifest(args.manifest)]
    chunks = windows(forms["float"], audio, args.chunk_size)
    times: dict = {name: [] for name in forms}
    with torch.no_grad():
        for recognizer in forms.values():
            run_chunks(recognizer.model, chunks[:1])
        for _ in range(3):
            for utterance in chunks:  # the forms take turns on each utterance
                for name, recognizer in forms.items():
                    run_chunks(recognizer.model, [utterance], times[name])
        profiles = {name: profile(recognizer.model, chunks, name) for name, recognizer in forms.items()}
    medians = {name: statistics.median(values) * 1000 for name, values in times.items()}
    pairs = {name: statistics.median(t / f for t, f in zip(times[name], times["float"])) for name in forms}
    rows = [{"form": name, "chunk_ms_median": round(medians[name], 3), "time_vs_float": round(pairs[name], 3),
             **profiles[name]} for name in forms]
    for row in rows:
        print(row["form"], row["chunk_ms_median"], row["time_vs_float"], row["ops_per_chunk"], row["categories"],
              file=sys.stderr)
    result = {**run_facts("integer_profile", "benchmarks/integer_profile.py", sys.argv[1:]),
              "float_model": args.float_model, "quantized_model": args.quantized, "chunk_size": args.chunk_size,
              "chunks": sum(len(c) for c in chunks), "rows": rows}
    save_result(result, args.out, args.report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
