"""The transducer head against the CTC and Whisper-rescoring modes on the same encoder, one run.

    python benchmarks/transducer.py --model exp/whisper-rnnt/model \\
        --manifest test=data/synth15/test.jsonl --manifest realdev=../shared/data/realdev/realdev.jsonl

The model (``configs/whisper/tiny_transducer_frozen.yaml``: the default's frozen encoder, CTC head
and Whisper decoder plus a trained transducer head) streams every utterance in blocks of its chunk
in each mode; the modes take turns on each utterance, 1 thread. A mode written ``NAME+lm`` runs
with the LM (``--lm``, default the model directory's own) fused into its search, plain ``NAME``
without one; ``NAME+lm+dr`` adds density-ratio fusion (``--source-lm``: an LM of the training
transcripts, subtracted with ``--source-lm-weight``). ``transducer_whisper`` is the two-pass
transducer: its partials, then Whisper's decoder kept on the audio by the transducer. Per set and mode: WER, CER, RTF (compute / audio), the median ratio of each mode's
time to the first mode's, and two latencies, medians over utterances:

- ``first_partial_s``: audio seconds streamed when the first non-empty partial appeared (the
  utterances' lead-in silence is in it, the same for every mode: compare modes, not absolutes);
- ``final_ms``: compute time of ``finish()`` after the last block, i.e. from the end of the audio
  to the final text (the last token's latency as a user sees it); a second pass sits here.

Also the parameters of the head each mode decodes with. Writes benchmarks/results/transducer.json
and regenerates BENCHMARKS.md. ``--backend onnx --precision int4`` runs the same modes on ONNX
Runtime through a 4-bit model's exact 4-bit graphs (its encoder's and its transducer's).
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
from edgeasr.model.package import load_model_dir

ROOT = Path(__file__).resolve().parents[1]
MODES = ("ctc_greedy,ctc_prefix_beam+lm,transducer_greedy,transducer_beam,transducer_beam+lm,whisper_rescoring,"
         "transducer_whisper")


def head_parameters(model) -> dict:
    count = lambda module: sum(p.numel() for p in module.parameters()) if module is not None else 0  # noqa: E731
    return {"encoder": count(model.encoder), "ctc": count(model.ctc), "transducer": count(model.transducer),
            "whisper_decoder": count(model.whisper_decoder)}


def stream_one(recognizer, samples) -> dict:
    """One utterance streamed in chunk-sized blocks: text, compute seconds and the latencies."""
    block = int(round(recognizer.chunk_size * recognizer.frame_seconds * 16000))
    session = recognizer.stream()
    spent, first_partial = 0.0, None
    for offset in range(0, len(samples), block):
        started = time.perf_counter()
        partial = session.accept(samples[offset : offset + block])
        spent += time.perf_counter() - started
        if first_partial is None and partial.text.strip():
            first_partial = min(offset + block, len(samples)) / 16000
    started = time.perf_counter()
    final = session.finish()
    final_seconds = time.perf_counter() - started
    return {"text": final.text, "seconds": spent + final_seconds, "final_ms": 1000 * final_seconds,
            "first_partial_s": first_partial if first_partial is not None else len(samples) / 16000}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a model directory with a transducer head")
    parser.add_argument("--manifest", action="append", required=True, metavar="NAME=PATH")
    parser.add_argument("--modes", default=MODES)
    parser.add_argument("--lm", help="the LM of the NAME+lm modes (default: the model directory's lm/)")
    parser.add_argument("--source-lm", help="the source LM of the NAME+lm+dr modes (density-ratio fusion)")
    parser.add_argument("--source-lm-weight", type=float, default=DecodeOptions.source_lm_weight)
    parser.add_argument("--transducer-lm-bonus", type=float, default=DecodeOptions.lm_bonus,
                        help="the LM's bonus per character in the transducer's +lm modes (the CTC beam keeps "
                             f"the default, {DecodeOptions.lm_bonus})")
    parser.add_argument("--chunk-size", type=int, help="encoder frames per chunk (default: the model's)")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                        help="onnx: the model exported once (cached) and run on ONNX Runtime")
    parser.add_argument("--precision", choices=("float", "int8", "int4"), default="float",
                        help="ONNX Runtime graphs: int4 runs a 4-bit model's exact 4-bit graphs (encoder and "
                             "transducer), int8 the dynamic int8 ones")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "transducer.json"))
    parser.add_argument("--report", default=str(ROOT / "BENCHMARKS.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    packaged = load_model_dir(args.model)
    if packaged.model.transducer is None:
        print(f"edgeasr: error: {args.model} has no transducer head", file=sys.stderr)
        return 2
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    lm = args.lm or (str(Path(args.model) / "lm") if (Path(args.model) / "lm").is_dir() else None)
    if any("+lm" in m for m in modes) and lm is None:
        print(f"edgeasr: error: {args.model} has no lm/ for the +lm modes; pass --lm DIR", file=sys.stderr)
        return 2
    if any(m.endswith("+dr") for m in modes) and args.source_lm is None:
        print("edgeasr: error: the +dr modes need --source-lm", file=sys.stderr)
        return 2
    recognizers = {}
    for mode in modes:
        name, *extras = mode.split("+")
        bonus = args.transducer_lm_bonus if name.startswith("transducer") else DecodeOptions.lm_bonus
        options = dict(lm=lm if "lm" in extras else None, lm_bonus=bonus,
                       source_lm=args.source_lm if "dr" in extras else None, source_lm_weight=args.source_lm_weight)
        if args.backend == "onnx":
            from edgeasr.api import load_model

            recognizers[mode] = load_model(args.model, backend="onnx", mode=name, chunk_size=args.chunk_size,
                                           int8=args.precision == "int8", int4=args.precision == "int4", **options)
        else:
            recognizers[mode] = Recognizer(packaged, DecodeOptions(mode=name, chunk_size=args.chunk_size, **options))
    parts = head_parameters(packaged.model)
    result = {
        **run_facts("transducer", "benchmarks/transducer.py", sys.argv[1:] if argv is None else argv),
        "model": str(args.model),
        "backend": args.backend,
        "precision": args.precision if args.backend == "onnx" else "torch (fake-quant where quantized)",
        "chunk_size": recognizers[modes[0]].chunk_size,
        "frame_ms": 1000 * recognizers[modes[0]].frame_seconds,
        "parameters": parts,
        "transducer_config": packaged.model.config.transducer,
        "lm": lm,
        "source_lm": args.source_lm,
        "transducer_lm_bonus": args.transducer_lm_bonus,
        "source_lm_weight": args.source_lm_weight if args.source_lm else None,
        "sets": {},
    }
    for item in args.manifest:
        name, _, path = item.partition("=")
        utts = read_manifest(path)[: args.limit]
        audio = [load_audio(u.audio) for u in utts]
        seconds = sum(len(a) for a in audio) / 16000
        for recognizer in recognizers.values():
            stream_one(recognizer, audio[0][:16000])  # warm-up, untimed
        runs = {mode: [] for mode in modes}
        for samples in audio:  # the modes take turns on each utterance
            for mode, recognizer in recognizers.items():
                runs[mode].append(stream_one(recognizer, samples))
        rows = {}
        for mode in modes:
            words, chars = corpus_errors((u.text for u in utts), [r["text"] for r in runs[mode]])
            ratios = [r["seconds"] / b["seconds"] for r, b in zip(runs[mode], runs[modes[0]]) if b["seconds"] > 0]
            rows[mode] = {"wer": round(words.rate, 2), "cer": round(chars.rate, 2),
                          "rtf": round(sum(r["seconds"] for r in runs[mode]) / seconds, 4),
                          "time_vs_first_mode_median": round(statistics.median(ratios), 3),
                          "first_partial_s_median": round(statistics.median(r["first_partial_s"] for r in runs[mode]), 3),
                          "final_ms_median": round(statistics.median(r["final_ms"] for r in runs[mode]), 1)}
            print(json.dumps({"set": name, "mode": mode, **rows[mode]}), file=sys.stderr, flush=True)
        result["sets"][name] = {"manifest": path, "utts": len(utts), "audio_seconds": round(seconds, 1),
                                "rows": rows}
    save_result(result, args.out, args.report)
    print(json.dumps(result["sets"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
