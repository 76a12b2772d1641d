"""Dynamic compute against static depth, in one run: WER, executed layers, executed FLOPs, wall time.

    python benchmarks/dynamic.py --manifest data/synth/test.jsonl \
        --static 8=exp/dyn_static_8/model --static 6=exp/dyn_static_6/model --static 4=exp/dyn_static_4/model \
        --dynamic i3d_global=exp/dyn_i3d_global/model --dynamic i3d_local=exp/dyn_i3d_local/model \
        --dynamic amortized=exp/dyn_amortized/model --thresholds 0.3,0.5,0.7 \
        --out benchmarks/results/dynamic.json

Every point (a static model, or a dynamic model at one gate threshold) streams the test set at
chunk 16 with attention rescoring at 1 thread:
- WER / CER of the final text;
- executed layers: layers' worth of gated modules run per frame (attention and feed-forward
  modules; the convolution module always runs), from the stream's gate counters;
- executed encoder FLOPs per audio second, counted by torch's FlopCounterMode from the matrix
  products actually run (gate predictors included), split into the layers and the subsampling
  front end, which no gate covers;
- encoder wall time per utterance, streamed chunk by chunk and in one full-context pass, median
  over utterances, the points taking turns over several passes so they see the same machine load.
The first static model given is the reference for the ratios. Then BENCHMARKS.md is regenerated.
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
from torch.utils.flop_counter import FlopCounterMode

from edgeasr.audio.features import compute_fbank
from edgeasr.audio.io import load_audio
from edgeasr.data.manifest import read_manifest
from edgeasr.decoding.recognizer import DecodeOptions, Recognizer
from edgeasr.evaluate.metrics import ErrorCounts, char_errors, word_errors
from edgeasr.evaluate.report import save_result
from edgeasr.model.encoder import EncoderStream

ROOT = Path(__file__).resolve().parents[1]


class Point:
    def __init__(self, name: str, family: str, directory: str, threshold: float | None, chunk: int) -> None:
        self.name, self.family, self.directory, self.threshold = name, family, directory, threshold
        self.chunk = chunk
        options = DecodeOptions(mode="attention_rescoring", chunk_size=chunk, gate_threshold=threshold)
        self.recognizer = Recognizer.load(directory, options)
        self.model = self.recognizer.model
        self.layers = len(self.model.encoder.layers)

    def encoder_seconds(self, feats: torch.Tensor, streaming: bool = True) -> float:
        """Wall time of the encoder alone over one utterance: chunk by chunk, or in one pass
        (full context), where gathering the open frames has more rows to save on."""
        normalized = self.model.normalize(feats)
        with torch.no_grad():
            if streaming:
                stream = EncoderStream(self.model.encoder, self.chunk)
                started = time.perf_counter()
                stream.accept(normalized)
                stream.finish()
            else:
                started = time.perf_counter()
                self.model.encoder(normalized.unsqueeze(0), torch.tensor([normalized.size(0)]))
            return time.perf_counter() - started

    def flops(self, feats: torch.Tensor) -> tuple[int, int, float]:
        """(encoder FLOPs, subsampling FLOPs, executed layers) for one utterance."""
        stream = EncoderStream(self.model.encoder, self.chunk)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            stream.accept(self.model.normalize(feats))
            stream.finish()
        # the counter names modules by class from the outermost one it saw: "ConvSubsampling"
        front_name = type(self.model.encoder.subsampling).__name__
        front = sum(counter.get_flop_counts().get(front_name, {}).values())
        executed = stream.gate_counter.executed_layers() if stream.gate_counter is not None else float(self.layers)
        return counter.get_total_flops(), front, executed

    def accuracy(self, utts, audio) -> dict:
        words, chars = ErrorCounts(), ErrorCounts()
        for utt, samples in zip(utts, audio):
            text = self.recognizer.transcribe(samples).text
            words, chars = words + word_errors(utt.text, text), chars + char_errors(utt.text, text)
        return {"wer": round(words.rate, 2), "cer": round(chars.rate, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--static", action="append", default=[], metavar="LAYERS=DIR")
    parser.add_argument("--dynamic", action="append", default=[], metavar="NAME=DIR")
    parser.add_argument("--thresholds", default="0.5", help="gate thresholds for dynamic models, comma-separated")
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--limit", type=int, help="utterances for WER (default: all)")
    parser.add_argument("--flops-utts", type=int, default=40)
    parser.add_argument("--timing-utts", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=16)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "dynamic.json"))
    parser.add_argument("--report", default=str(ROOT / "BENCHMARKS.md"))
    args = parser.parse_args()
    if not args.static:
        parser.error("give at least one --static LAYERS=DIR (the first is the reference)")
    torch.set_num_threads(1)
    utts = read_manifest(args.manifest)[: args.limit]
    audio = [load_audio(u.audio) for u in utts]
    feats = [compute_fbank(a) for a in audio]
    points = []
    for item in args.static:
        layers, _, directory = item.partition("=")
        points.append(Point(f"static {layers} layers", "static", directory, None, args.chunk))
    for item in args.dynamic:
        name, _, directory = item.partition("=")
        for threshold in (float(t) for t in args.thresholds.split(",")):
            points.append(Point(f"{name} @{threshold:g}", name, directory, threshold, args.chunk))

    timing = feats[: args.timing_utts]
    seconds = {(p.name, streaming): [[] for _ in timing] for p in points for streaming in (True, False)}
    for point in points:
        point.encoder_seconds(timing[0])  # warm-up
    for _ in range(args.repeats):
        for point in points:
            for streaming in (True, False):
                for index, f in enumerate(timing):
                    seconds[(point.name, streaming)][index].append(point.encoder_seconds(f, streaming))
    audio_seconds = {"flops": sum(f.size(0) for f in feats[: args.flops_utts]) / 100.0}
    rows = []
    for point in points:
        totals = [point.flops(f) for f in feats[: args.flops_utts]]
        per_utt = [statistics.median(times) for times in seconds[(point.name, True)]]
        per_utt_offline = [statistics.median(times) for times in seconds[(point.name, False)]]
        row = {
            "name": point.name, "family": point.family, "directory": point.directory, "threshold": point.threshold,
            "layers": point.layers,
            "executed_layers": round(statistics.fmean(t[2] for t in totals), 3),
            "encoder_gflops_per_s": round(sum(t[0] for t in totals) / audio_seconds["flops"] / 1e9, 4),
            "layers_gflops_per_s": round(sum(t[0] - t[1] for t in totals) / audio_seconds["flops"] / 1e9, 4),
            "encoder_ms_per_utt": round(1000 * statistics.median(per_utt), 3),
            "encoder_ms_per_utt_offline": round(1000 * statistics.median(per_utt_offline), 3),
            **point.accuracy(utts, audio),
        }
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    base = rows[0]
    for row in rows:
        row["compute_saved"] = round(1 - row["encoder_gflops_per_s"] / base["encoder_gflops_per_s"], 4)
        row["layers_compute_saved"] = round(1 - row["layers_gflops_per_s"] / base["layers_gflops_per_s"], 4)
        row["time_saved"] = round(1 - row["encoder_ms_per_utt"] / base["encoder_ms_per_utt"], 4)
        row["time_saved_offline"] = round(1 - row["encoder_ms_per_utt_offline"] / base["encoder_ms_per_utt_offline"], 4)
        row["wer_relative"] = round(100 * (row["wer"] - base["wer"]) / base["wer"], 2) if base["wer"] else None
    result = {
        "benchmark": "dynamic",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, 1 thread",
        "test": {"manifest": args.manifest, "utts": len(utts), "audio_seconds": round(sum(len(a) for a in audio) / 16000, 1),
                 "flops_utts": min(args.flops_utts, len(utts)), "timing_utts": len(timing), "repeats": args.repeats},
        "chunk_size": args.chunk,
        "reference": base["name"],
        "rows": rows,
        "plot": Path(args.out).with_suffix(".png").name,
    }
    save_result(result, args.out, args.report)
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
