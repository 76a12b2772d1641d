"""The ONNX Runtime backend against torch on a test manifest: same text? same WER? how fast?

    python benchmarks/onnx_parity.py --model default --manifest data/synth/test.jsonl

Streams every utterance through the torch recognizer and through the torch-free ONNX Runtime
recognizer (float graphs, and int8 graphs), at the model's chunk size, in ``--mode`` (default attention rescoring), 1
thread. Reports per backend: utterances whose text equals torch's, WER/CER, RTF. Writes
benchmarks/results/onnx_parity.json and regenerates BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from edgeasr.api import load_model
from edgeasr.audio.io import load_audio
from edgeasr.data.manifest import read_manifest
from edgeasr.evaluate.metrics import ErrorCounts, char_errors, word_errors
from edgeasr.evaluate.report import save_result

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--limit", type=int)
    parser.add_argument("--mode", default="attention_rescoring",
                        help="decoding mode for every backend (a Whisper model's ONNX export has the first "
                             "pass only: compare it with --mode ctc_prefix_beam)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "onnx_parity.json"))
    parser.add_argument("--report", default=str(ROOT / "BENCHMARKS.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    utts = read_manifest(args.manifest)[: args.limit]
    audio = [load_audio(u.audio) for u in utts]
    seconds = sum(len(a) for a in audio) / 16000
    backends = {"torch": load_model(args.model, mode=args.mode), "onnx": load_model(args.model, "onnx", mode=args.mode),
                "onnx_int8": load_model(args.model, "onnx", mode=args.mode, int8=True)}
    texts, rows = {}, []
    for name, recognizer in backends.items():
        words, chars, compute, out = ErrorCounts(), ErrorCounts(), 0.0, []
        for utt, samples in zip(utts, audio):
            started = time.perf_counter()
            text = recognizer.transcribe(samples).text
            compute += time.perf_counter() - started
            out.append(text)
            words, chars = words + word_errors(utt.text, text), chars + char_errors(utt.text, text)
        texts[name] = out
        rows.append({"backend": name, "wer": round(words.rate, 2), "cer": round(chars.rate, 2),
                     "rtf": round(compute / seconds, 4),
                     "same_text_as_torch": sum(a == b for a, b in zip(out, texts["torch"]))})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    result = {
        "benchmark": "onnx_parity",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, 1 thread",
        "model": args.model,
        "mode": backends["torch"].mode,
        "test": {"manifest": args.manifest, "utts": len(utts), "audio_seconds": round(seconds, 1)},
        "rows": rows,
    }
    save_result(result, args.out, args.report)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
