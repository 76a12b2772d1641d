"""Accuracy and speed of a U2 model per decoding mode and chunk size; writes JSON + model card.

    python benchmarks/u2_baseline.py --model models/u2-baseline --manifest data/synth/test.jsonl \
        --out benchmarks/results/u2_default.json [--card models/u2-baseline/README.md]

For each chunk size (0 = full context, 16, 8, 4) the encoder runs once per utterance under that
chunk mask and all three decoding modes read the same encoder output. Streaming is checked against
this offline computation on a subset (same text expected), and timed at 1 thread: RTF is compute
time over audio time for the streaming session (fbank + encoder with caches + search + rescoring).
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
import yaml

from edgeasr.audio.io import load_audio
from edgeasr.data.manifest import read_manifest
from edgeasr.decoding.recognizer import DecodeOptions, Recognizer
from edgeasr.evaluate.accuracy import MODES, decode_all_modes
from edgeasr.model.package import load_model_dir


def streaming_check(model_dir, utts, audio, chunk: int, count: int) -> dict:
    recognizer = Recognizer.load(model_dir, DecodeOptions(mode="attention_rescoring", chunk_size=chunk))
    same, rtfs, compute, seconds = 0, [], 0.0, 0.0
    for samples in audio[:count]:
        started = time.perf_counter()
        session = recognizer.stream()
        for start in range(0, len(samples), 1600):
            session.accept(samples[start : start + 1600])
        streamed = session.finish()
        elapsed = time.perf_counter() - started
        duration = len(samples) / 16000
        rtfs.append(elapsed / duration)
        compute += elapsed
        seconds += duration
        same += streamed.text == recognizer.transcribe(samples, streaming=False).text
    return {"chunk_size": chunk, "utts": min(count, len(audio)), "identical_text": same,
            "rtf": round(compute / seconds, 4), "rtf_median": round(statistics.median(rtfs), 4)}


def model_card(result: dict) -> str:
    m = result["model"]
    lines = [
        "# edgeasr default model",
        "",
        f"U2 streaming Conformer (CTC + attention decoder), {m['parameters'] / 1e6:.2f} M parameters, "
        f"{m['bytes_on_disk'] / 1e6:.1f} MB on disk ({m.get('weights_dtype', 'float32')} `model.pt`, run in float32). Recipe: `{m.get('recipe', 'configs/u2_conformer_small.yaml')}`.",
        "",
        "## Data",
        "",
        result.get("data_note", ""),
        "",
        f"## Accuracy on held-out test voices and sentences ({result['test']['utts']} utterances, "
        f"{result['test']['audio_seconds'] / 60:.1f} min)",
        "",
        "WER % (CER %) by decoding mode and chunk size (encoder frames of 40 ms; full = whole utterance):",
        "",
        "| mode | " + " | ".join(("full" if c == 0 else str(c)) for c in result["chunk_sizes"]) + " |",
        "|---|" + "---|" * len(result["chunk_sizes"]),
    ]
    for mode in [m for m in MODES if m in result["accuracy"][str(result["chunk_sizes"][0])]]:
        cells = []
        for chunk in result["chunk_sizes"]:
            r = result["accuracy"][str(chunk)][mode]
            cells.append(f"{r['wer']:.1f} ({r['cer']:.1f})")
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    s = result["streaming"]
    lines += [
        "",
        "## Streaming",
        "",
        f"Chunk {s['chunk_size']} ({s['chunk_size'] * 40} ms), attention rescoring, 1 thread: RTF {s['rtf']:.4f} "
        f"(median per utterance {s['rtf_median']:.4f}); streaming text identical to offline text at the same "
        f"chunk size on {s['identical_text']}/{s['utts']} utterances.",
        "",
        f"Measured {result['date']} on {result['machine']}. Regenerate with "
        "`python benchmarks/u2_baseline.py --model models/u2-baseline --manifest data/synth/test.jsonl "
        "--out benchmarks/results/u2_default.json --card models/u2-baseline/README.md`.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/u2-baseline")
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--card", help="also write the model card here")
    parser.add_argument("--chunks", default="0,16,8,4")
    parser.add_argument("--beam", type=int, default=10)
    parser.add_argument("--limit", type=int)
    parser.add_argument("--stream-utts", type=int, default=40)
    parser.add_argument("--data-note", default="")
    args = parser.parse_args()
    torch.set_num_threads(1)
    packaged = load_model_dir(args.model)
    utts = read_manifest(args.manifest)[: args.limit]
    audio = [load_audio(u.audio) for u in utts]
    chunks = [int(c) for c in args.chunks.split(",")]
    result = {
        "benchmark": "u2_baseline",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, 1 thread",
        "model": {
            "directory": str(args.model),
            "parameters": sum(p.numel() for p in packaged.model.parameters()),
            "bytes_on_disk": sum(f.stat().st_size for f in Path(args.model).rglob("*") if f.is_file()),
            "weights_dtype": (yaml.safe_load((Path(args.model) / "config.yaml").read_text()) or {}).get(
                "weights_dtype", "float32"),
            "config": packaged.model.config.to_dict(),
        },
        "test": {"manifest": args.manifest, "utts": len(utts),
                 "audio_seconds": round(sum(len(a) for a in audio) / 16000, 1)},
        "chunk_sizes": chunks,
        "accuracy": {},
        "data_note": args.data_note,
    }
    for chunk in chunks:
        result["accuracy"][str(chunk)] = decode_all_modes(packaged, utts, audio, chunk, args.beam)
        print(f"chunk {chunk}: {json.dumps(result['accuracy'][str(chunk)])}", file=sys.stderr)
    result["streaming"] = streaming_check(args.model, utts, audio, 16, args.stream_utts)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    if args.card:
        Path(args.card).write_text(model_card(result))
    print(json.dumps({k: result[k] for k in ("accuracy", "streaming")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
