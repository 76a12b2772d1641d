"""The ONNX Runtime backend against torch on test manifests: same text? same WER? how fast?

    python benchmarks/onnx_parity.py --model default --mode whisper_rescoring \\
        --manifest test=data/synth-cal/test.jsonl --manifest realdev=../shared/data/realdev/realdev.jsonl \\
        --out benchmarks/results/onnx_parity_default.json

Streams every utterance through the torch recognizer and through the torch-free ONNX Runtime
recognizer (float graphs, int8 graphs, and 4-bit decoder graphs beside the int8 encoder where
the mode has a decoder), at the model's chunk size, in ``--mode`` (default
attention rescoring), 1 thread. The backends take turns on each utterance, so a busy spell of the
shared machine falls on all of them. Reports per set and backend: utterances whose text equals
torch's, WER/CER, RTF (compute / audio, and the median of the per-utterance ratios to torch's),
and the bytes on disk of what each backend loads. Writes the JSON and regenerates BENCHMARKS.md.
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
from edgeasr.model.package import load_model_dir, resolve_model_dir

ROOT = Path(__file__).resolve().parents[1]


def _sets(items: list[str]) -> list[tuple[str, str]]:
    """NAME=PATH pairs; a bare path is the set "test"."""
    out = []
    for item in items:
        name, _, path = item.rpartition("=") if "=" in item else ("test", "", item)
        out.append((name, path))
    return out


def _bytes(paths) -> int:
    return sum(p.stat().st_size for p in paths if p.is_file())


def loaded_bytes(model: str, export: Path, mode: str) -> dict:
    """Bytes on disk each backend reads: the model directory (+ the pretrained package file its
    config names) for torch; the graphs the mode runs, the tokenizers and the LM for ONNX."""
    directory = resolve_model_dir(model)
    torch_bytes = _bytes(p for p in directory.rglob("*") if p.is_file())
    pretrained = load_model_dir(directory).pretrained
    if pretrained is not None:
        torch_bytes += pretrained.locate().stat().st_size
    graphs = ["encoder"] + (["encoder_full", "decoder_cross", "decoder_step"] if mode == "whisper_rescoring" else [])
    # the graphs' shared weights files are counted through the graphs that read them
    side = [p for p in export.rglob("*") if p.is_file() and p.suffix != ".onnx" and not p.name.startswith("weights")]
    int4 = [export / (f"{g}.int4.onnx" if g.startswith("decoder") else f"{g}.int8.onnx") for g in graphs]

    def read(paths):
        return graph_bytes([p for p in paths if p.is_file()])

    return {
        "torch": torch_bytes,
        "onnx": read([export / f"{g}.onnx" for g in graphs]) + _bytes(side),
        "onnx_int8": read([export / f"{g}.int8.onnx" for g in graphs]) + _bytes(side),
        "onnx_int4": read(int4) + _bytes(side),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--manifest", action="append", required=True, metavar="[NAME=]PATH")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--mode", default="attention_rescoring", help="decoding mode for every backend")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "onnx_parity.json"))
    parser.add_argument("--report", default=str(ROOT / "BENCHMARKS.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    backends = {"torch": load_model(args.model, mode=args.mode), "onnx": load_model(args.model, "onnx", mode=args.mode),
                "onnx_int8": load_model(args.model, "onnx", mode=args.mode, int8=True)}
    if args.mode in ("whisper_rescoring", "attention_rescoring"):  # a decoder to run in 4 bits
        backends["onnx_int4"] = load_model(args.model, "onnx", mode=args.mode, int4=True)
    export = export_cached(args.model, None, None)
    sizes = loaded_bytes(args.model, export, backends["torch"].mode)
    result = {
        "benchmark": "onnx_parity",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, 1 thread",
        "load_average": list(os.getloadavg()),
        "model": args.model,
        "mode": backends["torch"].mode,
        "bytes_on_disk": sizes,
        "sets": {},
    }
    for name, path in _sets(args.manifest):
        utts = read_manifest(path)[: args.limit]
        audio = [load_audio(u.audio) for u in utts]
        seconds = sum(len(a) for a in audio) / 16000
        texts, compute = transcribe_in_turns(backends, audio)
        rows = []
        for backend in backends:
            words, chars = corpus_errors((u.text for u in utts), texts[backend])
            ratios = [t / r for t, r in zip(compute["torch"], compute[backend]) if r > 0]
            rows.append({"backend": backend, "wer": round(words.rate, 2), "cer": round(chars.rate, 2),
                         "rtf": round(sum(compute[backend]) / seconds, 4),
                         "speedup_vs_torch_median": round(statistics.median(ratios), 3),
                         "bytes_on_disk": sizes[backend],
                         "same_text_as_torch": sum(a == b for a, b in zip(texts[backend], texts["torch"]))})
            print(json.dumps({"set": name, **rows[-1]}), file=sys.stderr, flush=True)
        result["sets"][name] = {"manifest": path, "utts": len(utts), "audio_seconds": round(seconds, 1), "rows": rows}
    save_result(result, args.out, args.report)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
