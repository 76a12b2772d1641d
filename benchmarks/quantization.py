"""Quantized models side by side with the float model, in torch and in ONNX Runtime, in one run.

    python benchmarks/quantization.py --float models/u2-baseline --manifest data/synth/test.jsonl \
        --model ptq_int8=exp/ptq_w8 --model qat_int8=exp/qat_w8a8/model \
        --model qat_w4a8=exp/qat_w4a8/model --model qat_w4a4=exp/qat_w4a4/model \
        --model mixed=exp/mixed --out benchmarks/results/quantization.json

Rows: fp32 and dynamic int8 (both from the float model), then every quantized model directory
given. Each row is measured in two runtimes:
- torch: fp32 as is; dynamic int8 through torch's quantize_dynamic; quantized models through the
  integer-only path (``convert_to_integer``: int8 x int8 -> int32 products, fixed-point
  requantization). Bytes: the model file (for dynamic int8, its serialized state).
- onnxruntime: fp32 graphs; int8 graphs (MatMul/Gemm dynamic int8; per channel for quantized
  models, whose codes carry over exactly). Bytes: encoder + decoder graphs.
Per runtime: per-chunk latency (median, p90) at chunk 16, RTF of the streaming recognizer at 1
thread, WER/CER after attention rescoring at chunk 16. The models take turns, so they see the same
machine load. A reload check decodes a few utterances in a fresh process and compares the text.
Then BENCHMARKS.md is regenerated.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgeasr.audio.features import compute_fbank
from edgeasr.audio.io import load_audio
from edgeasr.data.manifest import read_manifest
from edgeasr.decoding.recognizer import DecodeOptions, Recognizer
from edgeasr.evaluate.metrics import ErrorCounts, char_errors, word_errors
from edgeasr.evaluate.report import save_result
from edgeasr.export.onnx import export_onnx
from edgeasr.export.runtime import OnnxRecognizer
from edgeasr.model.encoder import EncoderStream
from edgeasr.quant.dynamic import serialized_bytes
from edgeasr.quant.integer import convert_to_integer

ROOT = Path(__file__).resolve().parents[1]


class TorchRow:
    def __init__(self, directory: str, kind: str, chunk: int) -> None:
        options = DecodeOptions(mode="attention_rescoring", chunk_size=chunk, dynamic_int8=kind == "dynamic")
        self.recognizer = Recognizer.load(directory, options)
        if kind == "integer":
            convert_to_integer(self.recognizer.model)
        model = self.recognizer.model
        # fp32 and dynamic int8: the bytes of their state as torch saves it (a float model file may
        # be stored as float16 for shipping; fp32 is the reference); quantized models: their file.
        self.bytes = serialized_bytes(model) if kind in ("dynamic", "float") else (Path(directory) / "model.pt").stat().st_size
        self.chunk = chunk

    def chunk_times(self, feats: list[torch.Tensor]) -> list[float]:
        model = self.recognizer.model
        times = []
        with torch.no_grad():
            for f in feats:
                stream = EncoderStream(model.encoder, self.chunk)
                pending = model.normalize(f)
                att, cnn = [], []
                while pending.size(0) >= stream.window:
                    started = time.perf_counter()
                    out, att, cnn = model.encoder.forward_chunk(pending[: stream.window].unsqueeze(0), att, cnn)
                    model.ctc_log_probs(out)
                    times.append(time.perf_counter() - started)
                    pending = pending[stream.stride :]
        return times

    def transcribe(self, samples: np.ndarray) -> str:
        return self.recognizer.transcribe(samples).text


class OnnxRow:
    def __init__(self, directory: str, int8: bool, chunk: int, workdir: Path) -> None:
        out = workdir / f"{Path(directory).name}-{abs(hash(directory))}"
        if not (out / "metadata.json").exists():
            export_onnx(directory, out, chunk_size=chunk, int8=True)
        self.recognizer = OnnxRecognizer.load(out, int8=int8)
        suffix = ".int8.onnx" if int8 else ".onnx"
        self.bytes = sum((out / f"{part}{suffix}").stat().st_size for part in ("encoder", "decoder")
                         if (out / f"{part}{suffix}").exists())

    def chunk_times(self, feats: list[torch.Tensor]) -> list[float]:
        rec = self.recognizer
        meta = rec.meta
        times = []
        for f in feats:
            caches = rec.initial_caches()
            pending = f.numpy()
            while pending.shape[0] >= meta["window"]:
                started = time.perf_counter()
                outputs = rec.encoder.run(None, {"feats": pending[None, : meta["window"]],
                                                 **dict(zip(rec.cache_inputs, caches))})
                times.append(time.perf_counter() - started)
                caches = outputs[2:]
                pending = pending[meta["stride"] :]
        return times

    def transcribe(self, samples: np.ndarray) -> str:
        return self.recognizer.transcribe(samples).text


def accuracy(row, utts, audio) -> dict:
    words, chars = ErrorCounts(), ErrorCounts()
    compute = 0.0
    for utt, samples in zip(utts, audio):
        started = time.perf_counter()
        text = row.transcribe(samples)
        compute += time.perf_counter() - started
        words, chars = words + word_errors(utt.text, text), chars + char_errors(utt.text, text)
    seconds = sum(len(a) for a in audio) / 16000
    return {"wer": round(words.rate, 2), "cer": round(chars.rate, 2), "rtf": round(compute / seconds, 4)}


def reload_check(directory: str, audio_paths: list[str]) -> dict:
    here = [Recognizer.load(directory).transcribe(path).text for path in audio_paths]
    fresh = subprocess.run([sys.executable, "-m", "edgeasr", "transcribe", "--model", directory, "--json", *audio_paths],
                           capture_output=True, text=True, check=True)
    there = [json.loads(line)["text"] for line in fresh.stdout.strip().splitlines()]
    return {"utts": len(here), "identical": sum(a == b for a, b in zip(here, there))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--float", dest="float_model", default="models/u2-baseline")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=DIR", help="a quantized model")
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--limit", type=int, help="utterances for WER (default: all)")
    parser.add_argument("--latency-utts", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=16)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "quantization.json"))
    parser.add_argument("--report", default=str(ROOT / "BENCHMARKS.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    utts = read_manifest(args.manifest)[: args.limit]
    audio = [load_audio(u.audio) for u in utts]
    latency_feats = [compute_fbank(a) for a in audio[: args.latency_utts]]
    specs = [("fp32", args.float_model, "float"), ("dynamic_int8", args.float_model, "dynamic")]
    for item in args.model:
        name, _, directory = item.partition("=")
        specs.append((name, directory, "integer"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runners = {}
        for name, directory, kind in specs:
            runners[(name, "torch")] = TorchRow(directory, kind, args.chunk)
            runners[(name, "onnxruntime")] = OnnxRow(directory, kind != "float", args.chunk, Path(tmp))
        times: dict = {key: [] for key in runners}
        for key, runner in runners.items():
            runner.chunk_times(latency_feats[:2])  # warm-up
        for _ in range(args.repeats):
            for key, runner in runners.items():
                times[key].extend(runner.chunk_times(latency_feats))
        for (name, runtime), runner in runners.items():
            t = sorted(times[(name, runtime)])
            row = {"name": name, "runtime": runtime, "bytes": runner.bytes,
                   "latency_ms": {"median": round(1000 * statistics.median(t), 3),
                                  "p90": round(1000 * t[int(0.9 * (len(t) - 1))], 3)}}
            row.update(accuracy(runner, utts, audio))
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    base = next(r for r in rows if r["name"] == "fp32" and r["runtime"] == "torch")
    for row in rows:
        row["smaller"] = round(base["bytes"] / row["bytes"], 2)
        row["faster"] = round(base["latency_ms"]["median"] / row["latency_ms"]["median"], 2)
        row["wer_relative"] = round(100 * (row["wer"] - base["wer"]) / base["wer"], 2) if base["wer"] else None
    checks = {name: reload_check(directory, [u.audio for u in utts[:3]]) for name, directory, kind in specs
              if kind == "integer"}
    result = {
        "benchmark": "quantization",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, 1 thread",
        "float_model": args.float_model,
        "test": {"manifest": args.manifest, "utts": len(utts), "audio_seconds": round(sum(len(a) for a in audio) / 16000, 1)},
        "chunk_size": args.chunk,
        "rows": rows,
        "reload": checks,
    }
    save_result(result, args.out, args.report)
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
