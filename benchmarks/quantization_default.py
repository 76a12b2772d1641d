"""The quantization table on the default model: float, dynamic int8, QAT/PTQ W8A8 and W4A8, in
torch and in ONNX Runtime, both passes, in one run.

    python benchmarks/quantization_default.py --float models/default \\
        --model qat_w8a8=exp/default-w8a8/model --model qat_w4a8=exp/default-w4a8/model \\
        --manifest test=data/synth15/test.jsonl --manifest realdev=../shared/data/realdev/realdev.jsonl \\
        --out benchmarks/results/quantization_default.json

    # GPTQ rows on the current default (benchmarks/results/quantization_default_gptq.json)
    python benchmarks/quantization_default.py --float models/default \\
        --calib data/synth15/train.jsonl --calib-encoder \\
        --manifest test=data/synth4/test.jsonl --manifest realdev=../shared/data/realdev/realdev.jsonl \\
        --out benchmarks/results/quantization_default_gptq.json

Rows, each a model in a runtime:
- fp32 (torch), dynamic_int8 (torch's quantize_dynamic at load), and the float model's ONNX graphs
  as onnxruntime quantizes them: fp32, int8 (dynamic int8, per tensor) and int4 (4-bit decoder
  graphs, the encoder in int8: a float encoder loses 4-9 points when rounded to 4 bits);
- with ``--calib MANIFEST``: int4_gptq, the float model's 4-bit decoder graphs with their layers
  rounded by GPTQ on that audio instead of round-to-nearest (``edgeasr export --int4 --calib``), and
  with ``--calib-encoder`` int4_gptq_all, the encoder's layers 4-bit by GPTQ as well (both encoder
  graphs);
- every quantized model given (``--model NAME=DIR``): in torch (fake-quant: the reference for its
  numerics, not a fast path) and in onnxruntime (8-bit models: int8 graphs per channel, which carry
  their codes exactly; 4-bit models: the int4 export, their own codes as MatMulNBits in both
  encoder graphs, beside 4-bit decoder graphs).
Per set and row: WER/CER of the streaming first pass alone (ctc_greedy at the model's chunk size)
and of the default mode (whisper_rescoring: full-context re-encoding and Whisper's decoder at each
segment's end), RTF of each, and the median over utterances of the row's time / fp32 torch's (the
rows take turns on each utterance, so a busy spell falls on all). Bytes on disk: what the row reads
for the first pass (encoder and CTC head) and for both passes (plus Whisper's decoder); torch rows
count their weights as torch stores them (fp32 state, dynamic int8 state, packed codes).
Writes the JSON and regenerates BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from edgeasr.api import export_cached, load_model
from edgeasr.audio.io import load_audio
from edgeasr.data.manifest import read_manifest
from edgeasr.evaluate.accuracy import transcribe_in_turns
from edgeasr.evaluate.metrics import corpus_errors
from edgeasr.evaluate.report import save_result
from edgeasr.export.shared_weights import graph_bytes
from edgeasr.model.package import load_model_dir
from edgeasr.quant.dynamic import dynamic_int8, serialized_bytes
from onnx_parity import _sets  # [NAME=]PATH manifests, as the ONNX parity benchmark reads them

ROOT = Path(__file__).resolve().parents[1]
MODES = ("ctc_greedy", "whisper_rescoring")
FIRST_PASS = ("encoder", "ctc")


def torch_bytes(directory: str, kind: str) -> dict:
    """Bytes of the weights a torch row holds, first pass and both passes, as torch would store them."""
    model = load_model_dir(directory).model.eval()
    if kind == "dynamic":
        model = dynamic_int8(model)
    if kind in ("float", "dynamic"):
        if kind == "float":
            model = model.float()
        first = sum(serialized_bytes(getattr(model, part)) for part in FIRST_PASS)
        return {"first_pass": first, "both_passes": first + serialized_bytes(model.whisper_decoder)}
    from edgeasr.quant.pack import packed_bytes
    from edgeasr.quant.qat import quantized_layers

    # a quantized model: packed codes (+ one fp32 scale per channel) for its quantized layers,
    # fp32 for the rest, as its model.pt stores them when nothing is left to the package
    layers = quantized_layers(model)
    sizes = {"first_pass": 0, "both_passes": 0}
    for name, tensor in model.state_dict().items():
        if "_quant." in name:
            continue
        owner = name.rsplit(".", 1)[0]
        if name.endswith(".weight") and owner in layers:
            size = packed_bytes(tensor.numel(), layers[owner].weight_bits) + 4 * tensor.size(0)
        else:
            size = tensor.numel() * 4
        sizes["both_passes"] += size
        if name.split(".", 1)[0] in FIRST_PASS:
            sizes["first_pass"] += size
    return sizes


def onnx_bytes(export: Path, encoder_suffix: str, decoder_suffix: str) -> dict:
    """Graph files plus the shared weights they read, each tensor once (edgeasr.export.shared_weights)."""
    first = [export / f"encoder{encoder_suffix}"]
    both = first + [export / f"encoder_full{encoder_suffix}", export / f"decoder_cross{decoder_suffix}",
                    export / f"decoder_step{decoder_suffix}"]
    return {"first_pass": graph_bytes(first), "both_passes": graph_bytes(both)}


def gptq_export(float_model: str, calib: str, limit: int, out: Path, encoder: bool = False, block: int = 32) -> Path:
    """The float model's graphs with GPTQ-rounded 4-bit layers (``edgeasr export --int4 --calib``:
    the decoder's; with ``encoder``, ``--calib-encoder``, the encoder's too), written once into
    ``out`` (reused when it was made from the same calibration)."""
    from edgeasr.export.onnx import export_onnx
    from edgeasr.quant.gptq import whisper_codes

    stamp = {"model": str(Path(float_model).resolve()), "calib": str(Path(calib).resolve()), "limit": limit,
             "encoder": encoder, "block": block}
    marker = out / "gptq_calibration.json"
    if marker.exists() and json.loads(marker.read_text()) == stamp:
        return out
    codes = whisper_codes(float_model, calib, limit, encoder=encoder, block=block)
    export_onnx(float_model, out, int4=True, gptq_codes=codes)
    marker.write_text(json.dumps(stamp))
    return out


def build_rows(float_model: str, quantized: list[tuple[str, str]], mode: str, gptq: dict | None = None) -> dict:
    """{row name: (recognizer, info)} for one decoding mode."""
    rows = {}
    float_export = export_cached(float_model, None, None)
    rows["fp32 / torch"] = (load_model(float_model, mode=mode), {"kind": "float", "model": float_model})
    rows["dynamic_int8 / torch"] = (load_model(float_model, mode=mode, dynamic_int8=True),
                                    {"kind": "dynamic", "model": float_model})
    for precision, flags, suffixes in (("fp32", {}, (".onnx", ".onnx")),
                                       ("int8", {"int8": True}, (".int8.onnx", ".int8.onnx")),
                                       ("int4", {"int4": True}, (".int8.onnx", ".int4.onnx"))):
        rows[f"{precision} / onnxruntime"] = (load_model(str(float_export), mode=mode, **flags),
                                              {"kind": "onnx", "model": float_model, "export": float_export,
                                               "suffixes": suffixes})
    for row, (export, encoder_suffix) in (gptq or {}).items():
        rows[row] = (load_model(str(export), mode=mode, int4=True),
                     {"kind": "onnx", "model": float_model, "export": export, "suffixes": (encoder_suffix, ".int4.onnx")})
    for name, directory in quantized:
        rows[f"{name} / torch"] = (load_model(directory, mode=mode), {"kind": "quantized", "model": directory})
        export = export_cached(directory, None, None)
        four_bit = (export / "encoder.int4.onnx").exists()
        flags, suffixes = ({"int4": True}, (".int4.onnx", ".int4.onnx")) if four_bit else \
            ({"int8": True}, (".int8.onnx", ".int8.onnx"))
        rows[f"{name} / onnxruntime"] = (load_model(str(export), mode=mode, **flags),
                                         {"kind": "onnx", "model": directory, "export": export, "suffixes": suffixes})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--float", dest="float_model", default="models/default")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=DIR", help="a quantized model")
    parser.add_argument("--manifest", action="append", required=True, metavar="[NAME=]PATH")
    parser.add_argument("--limit", type=int, help="utterances per set (default: all)")
    parser.add_argument("--calib", metavar="MANIFEST",
                        help="also the row int4_gptq: the float model's 4-bit decoder rounded by GPTQ on this audio")
    parser.add_argument("--calib-limit", type=int, default=100)
    parser.add_argument("--calib-block", type=int, default=32, choices=(32, 64, 128),
                        help="inputs per 4-bit block of the GPTQ rows (edgeasr export --calib-block)")
    parser.add_argument("--calib-encoder", action="store_true",
                        help="with --calib, also the row int4_gptq_all: the encoder's layers 4-bit (GPTQ) too")
    parser.add_argument("--gptq-export", default=str(ROOT / "exp" / "default-gptq-onnx"),
                        help="where the GPTQ rows' graphs are written (DIR, DIR-all; reused when calibrated alike)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "quantization_default.json"))
    parser.add_argument("--report", default=str(ROOT / "BENCHMARKS.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    quantized = [tuple(item.split("=", 1)) for item in args.model]
    sets = [(name, path, read_manifest(path)[: args.limit]) for name, path in _sets(args.manifest)]
    gptq = {}
    if args.calib:
        gptq["int4_gptq / onnxruntime"] = (
            gptq_export(args.float_model, args.calib, args.calib_limit, Path(args.gptq_export), block=args.calib_block),
            ".int8.onnx")
    if args.calib and args.calib_encoder:
        gptq["int4_gptq_all / onnxruntime"] = (
            gptq_export(args.float_model, args.calib, args.calib_limit, Path(args.gptq_export + "-all"), encoder=True,
                        block=args.calib_block),
            ".int4.onnx")
    result = {
        "benchmark": "quantization_default",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, 1 thread",
        "load_average": list(os.getloadavg()),
        "command": "python " + " ".join(sys.argv),
        "float_model": args.float_model,
        "quantized": {name: {"model": directory, "quantization": load_model_dir(directory).model.config.quantization}
                      for name, directory in quantized},
        "gptq": {"calib": args.calib, "calib_limit": args.calib_limit, "encoder_row": args.calib_encoder,
                 "block": args.calib_block,
                 "export": args.gptq_export} if gptq else None,
        "chunk_ms": None,
        "rows": {},
        "sets": {name: {"manifest": path, "utts": len(utts)} for name, path, utts in sets},
    }
    for mode in MODES:
        rows = build_rows(args.float_model, quantized, mode, gptq)
        for row, (recognizer, info) in rows.items():
            entry = result["rows"].setdefault(row, {"model": info["model"]})
            if "bytes" not in entry:
                entry["bytes"] = onnx_bytes(info["export"], *info["suffixes"]) if info["kind"] == "onnx" \
                    else torch_bytes(info["model"], info["kind"])
        first = next(iter(rows.values()))[0]
        result["chunk_ms"] = round(load_model_dir(args.float_model).streaming.chunk_size * first.frame_seconds * 1000)
        for name, _, utts in sets:
            audio = [load_audio(u.audio) for u in utts]
            seconds = sum(len(a) for a in audio) / 16000
            result["sets"][name]["audio_seconds"] = round(seconds, 1)
            texts, compute = transcribe_in_turns({row: rec for row, (rec, _) in rows.items()}, audio)
            baseline = compute["fp32 / torch"]
            for row in rows:
                words, chars = corpus_errors((u.text for u in utts), texts[row])
                ratios = [t / b for t, b in zip(compute[row], baseline) if b > 0]
                result["rows"][row].setdefault("sets", {}).setdefault(name, {})[mode] = {
                    "wer": round(words.rate, 2), "cer": round(chars.rate, 2),
                    "rtf": round(sum(compute[row]) / seconds, 4),
                    "time_vs_fp32_torch_median": round(statistics.median(ratios), 3)}
                print(json.dumps({"set": name, "mode": mode, "row": row, **result["rows"][row]["sets"][name][mode]}),
                      file=sys.stderr, flush=True)
        del rows
    save_result(result, args.out, args.report)
    print(json.dumps(result["rows"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
