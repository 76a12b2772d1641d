"""The cascaded second pass against the Whisper second pass on the same streaming first pass, one run.

    python benchmarks/cascade.py --model exp/whisper-cascade/model \\
        --manifest test=data/synth-cal/test.jsonl --manifest realdev=../shared/data/realdev/realdev.jsonl

The model (``configs/whisper/tiny_cascade_frozen.yaml``: the shipped default's frozen streaming
encoder, CTC head and Whisper decoder, plus a trained cascade) streams every utterance in 640 ms
blocks in three modes (a dynamic cascade, ``configs/whisper/tiny_cascade_dynamic.yaml``, adds a
mode ``cascade_rescoring@N`` for each smaller sub-model of N layers, against the dynamic-cascade
target: the medium sub-model at most 70% of the large one's size at most +5% relative WER): the first pass alone (``ctc_prefix_beam``, what partials show), the
cascade (``cascade_rescoring``: two non-causal layers over the segment's first-pass frames) and
the pretrained two-pass default (``whisper_rescoring``: the segment's audio re-encoded with full
context, then Whisper's decoder). All use the model directory's LM (or ``--lm``, default: the
shipped default's) for the prefix beams. The modes take turns on each utterance, 1 thread.
Per set and mode: WER and CER; RTF; end-of-segment latency (the median time ``finish()`` takes
once the last audio is in: the final segment's second pass, which the user waits for after they
stop speaking); and the parameters and float16 bytes each pass adds. Writes
benchmarks/results/cascade.json and regenerates BENCHMARKS.md.

``--compare NAME=DIR`` (repeatable) adds another cascade trained on the same frozen first pass
(e.g. the funnel-pooled ``configs/whisper/tiny_cascade_funnel.yaml``) as the mode
``cascade_rescoring[NAME]``, in the same turns. The cascade networks alone are also timed on
first-pass frames of fixed lengths (``--forward-seconds``, median of ``--forward-repeats``), where
the layers' cost is not hidden by the search.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from edgeasr.audio.io import load_audio
from edgeasr.data.manifest import read_manifest
from edgeasr.decoding.recognizer import DecodeOptions, Recognizer
from edgeasr.evaluate.metrics import corpus_errors
from edgeasr.evaluate.report import run_facts, save_result
from edgeasr.model.package import DEFAULT_MODEL_DIR, load_model_dir

ROOT = Path(__file__).resolve().parents[1]
MODES = ("ctc_prefix_beam", "cascade_rescoring", "whisper_rescoring")


def parameters(module) -> int:
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


def stream(recognizer, samples, block: int = 10240) -> tuple[str, float, float]:
    """(text, compute seconds, seconds ``finish()`` took)."""
    started = time.perf_counter()
    session = recognizer.stream()
    for i in range(0, len(samples), block):
        session.feed(samples[i : i + block])
    finishing = time.perf_counter()
    text = session.finish().text
    done = time.perf_counter()
    return text, done - started, done - finishing


def forward_times(cascades: dict, width: int, frame_seconds: float, lengths: list[float], repeats: int) -> dict:
    """Median milliseconds of each cascade network alone (its layers and head, no search) over a
    segment of first-pass frames of each length, the cascades taking turns."""
    torch.manual_seed(0)
    times: dict = {}
    with torch.no_grad():
        for seconds in lengths:
            frames = torch.randn(1, max(1, round(seconds / frame_seconds)), width)
            spent: dict = {mode: [] for mode in cascades}
            for _ in range(repeats):
                for mode, (owner, layers) in cascades.items():
                    started = time.perf_counter()
                    owner.cascade_log_probs(frames, None, layers=layers)
                    spent[mode].append(time.perf_counter() - started)
            times[f"{seconds:g}"] = {mode: round(1000 * statistics.median(values), 3) for mode, values in spent.items()}
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a model directory with a cascade (model.cascade)")
    parser.add_argument("--manifest", action="append", required=True, metavar="NAME=PATH")
    parser.add_argument("--lm", default=str(DEFAULT_MODEL_DIR / "lm"), help="LM for the prefix beams ('none': none)")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--compare", action="append", default=[], metavar="NAME=DIR",
                        help="another cascade on the same first pass, as mode cascade_rescoring[NAME] (repeatable)")
    parser.add_argument("--forward-seconds", default="2,5,10",
                        help="segment lengths (seconds) at which the cascade networks alone are timed")
    parser.add_argument("--forward-repeats", type=int, default=30)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cascade.json"))
    parser.add_argument("--report", default=str(ROOT / "BENCHMARKS.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    packaged = load_model_dir(args.model)
    model = packaged.model
    if getattr(model, "cascade", None) is None:
        print(f"edgeasr: error: {args.model} has no cascade (model.cascade)", file=sys.stderr)
        return 2
    lm = None if args.lm == "none" else args.lm
    modes = [m for m in MODES if m != "whisper_rescoring" or model.whisper_decoder is not None]
    recognizers = {mode: Recognizer(packaged, DecodeOptions(mode=mode, lm=lm)) for mode in modes}
    first = parameters(model.encoder) + parameters(model.ctc)
    added = {"ctc_prefix_beam": 0, "cascade_rescoring": model.cascade.parameters_of(),
             "whisper_rescoring": parameters(model.whisper_decoder)}
    # a dynamic cascade: each smaller sub-model as a mode of its own (cascade_rescoring@N layers)
    exits = model.cascade.config.exit_layers
    #: the cascade networks timed alone: (the model holding it, sub-model layers) per mode
    cascades = {"cascade_rescoring": (model, None)}
    for layers in exits[:-1]:
        mode = f"cascade_rescoring@{layers}"
        recognizers[mode] = Recognizer(packaged, DecodeOptions(mode="cascade_rescoring", lm=lm, cascade_layers=layers))
        added[mode] = model.cascade.parameters_of(layers)
        cascades[mode] = (model, layers)
        modes.insert(modes.index("cascade_rescoring"), mode)
    compared = {}
    for item in args.compare:
        label, _, directory = item.partition("=")
        if not label or not directory:
            print(f"edgeasr: error: --compare wants NAME=DIR, got {item!r}", file=sys.stderr)
            return 2
        other = load_model_dir(directory)
        if getattr(other.model, "cascade", None) is None:
            print(f"edgeasr: error: {directory} has no cascade (model.cascade)", file=sys.stderr)
            return 2
        mode = f"cascade_rescoring[{label}]"
        recognizers[mode] = Recognizer(other, DecodeOptions(mode="cascade_rescoring", lm=lm))
        added[mode] = other.model.cascade.parameters_of()
        cascades[mode] = (other.model, None)
        compared[label] = {"model": directory, "cascade_config": other.model.config.cascade}
        modes.insert(modes.index("cascade_rescoring") + 1, mode)
    recognizers = {mode: recognizers[mode] for mode in modes}
    result = {
        **run_facts("cascade", "benchmarks/cascade.py", sys.argv[1:] if argv is None else argv),
        "model": str(args.model), "lm": lm, "cascade_config": model.config.cascade, "cascade_exits": exits,
        "chunk_size": recognizers[modes[0]].chunk_size, "frame_ms": 1000 * recognizers[modes[0]].frame_seconds,
        "first_pass_parameters": first, "added_parameters": added, "compared": compared,
        "cascade_forward_ms": forward_times(cascades, model.cascade.config.input_dim, recognizers[modes[0]].frame_seconds,
                                            [float(x) for x in args.forward_seconds.split(",") if x],
                                            args.forward_repeats),
        "sets": {},
    }
    for item in args.manifest:
        name, _, path = item.partition("=")
        utts = read_manifest(path)[: args.limit]
        audio = [load_audio(u.audio) for u in utts]
        seconds = sum(len(a) for a in audio) / 16000
        for recognizer in recognizers.values():
            recognizer.transcribe(audio[0][:16000])  # warm-up
        runs: dict = {mode: {"texts": [], "compute": [], "finish": []} for mode in modes}
        for samples in audio:
            for mode, recognizer in recognizers.items():
                text, compute, finish = stream(recognizer, samples)
                runs[mode]["texts"].append(text)
                runs[mode]["compute"].append(compute)
                runs[mode]["finish"].append(finish)
        rows = {}
        for mode in modes:
            words, chars = corpus_errors((u.text for u in utts), runs[mode]["texts"])
            rows[mode] = {"wer": round(words.rate, 2), "cer": round(chars.rate, 2),
                          "rtf": round(sum(runs[mode]["compute"]) / seconds, 4),
                          "end_of_segment_ms_median": round(1000 * statistics.median(runs[mode]["finish"]), 1),
                          "end_of_segment_ms_p90": round(1000 * sorted(runs[mode]["finish"])[int(0.9 * (len(utts) - 1))], 1)}
            print(json.dumps({"set": name, "mode": mode, **rows[mode]}), file=sys.stderr, flush=True)
        result["sets"][name] = {"manifest": path, "utts": len(utts), "audio_seconds": round(seconds, 1), "rows": rows}
    save_result(result, args.out, args.report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
