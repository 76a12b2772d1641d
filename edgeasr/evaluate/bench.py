"""Side-by-side benchmark of encoder variants, in one process, against a baseline.

For each model (a trained model directory, or a YAML config for speed-only rows with random
weights) it measures:
- parameters and bytes on disk (the weights file; a config's weights are saved to measure them);
- FLOPs per second of audio when streaming at chunk 16 (encoder + CTC head, see ``flops``);
- streaming state bytes after 10 s and after 60 s of audio (a constant-state model shows the same
  number twice; a softmax-attention model with unlimited history grows);
- per-chunk latency, median and p90, at each chunk size (encoder + CTC head for one chunk, on the
  feature windows of real test utterances; the models take turns, repeat after repeat, so they all
  see the same machine load);
- RTF at 1 thread of the whole streaming recognizer (fbank, encoder, prefix beam, rescoring);
- WER and CER on a held-out manifest at chunk 16: first pass (CTC prefix beam) and attention
  rescoring (trained models only).
FusionFormer models are measured folded (``fuse()``), as they are deployed.
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from edgeasr.audio.features import FbankOptions
from edgeasr.decoding.recognizer import DecodeOptions, Recognizer
from edgeasr.errors import EdgeAsrError
from edgeasr.evaluate.accuracy import decode_all_modes
from edgeasr.evaluate.flops import chunk_windows, streaming_flops
from edgeasr.model.encoder import EncoderStream
from edgeasr.model.package import PackagedModel, load_model_dir


@dataclass
class BenchModel:
    name: str
    source: str
    model: torch.nn.Module
    packaged: PackagedModel | None  # None for a config (random weights: speed only)
    weights_bytes: int


def _describe_plan(model) -> str:
    plan = model.encoder.config.plan()
    parts: list[str] = []
    for kind in plan:
        if parts and parts[-1].rsplit("x", 1)[0] == kind:
            base, count = parts[-1].rsplit("x", 1)
            parts[-1] = f"{base}x{int(count) + 1}"
        else:
            parts.append(f"{kind}x1")
    return " + ".join(parts)


def load_bench_model(spec: str) -> BenchModel:
    """``[NAME=]PATH``: a model directory (or ``default``) or a YAML config (random weights)."""
    name, _, path = spec.rpartition("=")
    path = path or spec
    source = Path(path)
    if source.suffix in (".yaml", ".yml"):
        from edgeasr.model.asr import ASRModel, ModelConfig
        from edgeasr.train.trainer import ExperimentConfig

        experiment = ExperimentConfig.load(source)
        config = ModelConfig.from_dict({"vocab_size": experiment.tokenizer.get("vocab_size", 256), **experiment.model})
        torch.manual_seed(0)
        model = ASRModel(config).eval()
        with tempfile.TemporaryDirectory() as tmp:
            weights = Path(tmp) / "model.pt"
            torch.save(model.state_dict(), weights)
            size = weights.stat().st_size
        model.fuse()
        return BenchModel(name or source.stem, str(source), model, None, size)
    packaged = load_model_dir(path)
    weights = packaged.directory / "model.pt"
    model = packaged.model.eval()
    model.fuse()
    return BenchModel(name or packaged.directory.name, str(path), model, packaged, weights.stat().st_size)


def _state_bytes(model, seconds: float, chunk_size: int, feature_dim: int) -> int:
    stream = EncoderStream(model.encoder, chunk_size)
    stream.accept(torch.randn(int(seconds * 100), feature_dim))
    return stream.state_bytes()


@torch.no_grad()
def _chunk_times(model, windows: list[list[torch.Tensor]]) -> list[float]:
    """Seconds per chunk, each utterance streamed from an empty state."""
    times = []
    for utterance in windows:
        att, cnn = [], []
        for window in utterance:
            started = time.perf_counter()
            out, att, cnn = model.encoder.forward_chunk(window, att, cnn)
            model.ctc_log_probs(out)
            times.append(time.perf_counter() - started)
    return times


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _streaming_rtf(model: BenchModel, audio: list, chunk_size: int) -> float:
    recognizer = Recognizer(model.packaged, DecodeOptions(mode="attention_rescoring", chunk_size=chunk_size))
    compute = seconds = 0.0
    for samples in audio:
        started = time.perf_counter()
        session = recognizer.stream()
        for start in range(0, len(samples), 1600):
            session.accept(samples[start : start + 1600])
        session.finish()
        compute += time.perf_counter() - started
        seconds += len(samples) / 16000
    return compute / seconds


def run_bench(
    specs: list[str],
    utts: list,
    audio: list,
    chunk_sizes: tuple[int, ...] = (16, 4),
    latency_utts: int = 20,
    repeats: int = 3,
    accuracy_chunk: int = 16,
    beam_size: int = 10,
    log=print,
) -> dict:
    """Measure every model of ``specs``; the first is the baseline the ratios refer to."""
    if not specs:
        raise EdgeAsrError("give at least one model directory or config to benchmark")
    models = [load_bench_model(spec) for spec in specs]
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise EdgeAsrError(f"model names must be distinct (got {', '.join(names)}); use NAME=PATH")
    features = models[0].packaged.features if models[0].packaged else FbankOptions()
    latency_feats = [features.compute(samples) for samples in audio[:latency_utts]]
    rows = []
    for m in models:
        ten_seconds = torch.randn(1000, features.dim)
        flops = streaming_flops(m.model, ten_seconds, 16)
        rows.append({
            "name": m.name,
            "source": m.source,
            "plan": _describe_plan(m.model),
            "d_model": m.model.encoder.config.d_model,
            "trained": m.packaged is not None,
            "parameters": sum(p.numel() for p in m.model.parameters()),
            "encoder_parameters": sum(p.numel() for p in m.model.encoder.parameters()),
            "bytes_on_disk": m.weights_bytes,
            "gflops_per_audio_second": round(flops["total"] / 10 / 1e9, 4),
            "state_bytes_10s": _state_bytes(m.model, 10, 16, features.num_mel_bins),
            "state_bytes_60s": _state_bytes(m.model, 60, 16, features.num_mel_bins),
            "latency_ms": {},
        })
        log(f"{m.name}: {rows[-1]['parameters']} params, {rows[-1]['gflops_per_audio_second']} GFLOPs/s audio")
    for chunk in chunk_sizes:
        windows = {m.name: [chunk_windows(m.model, f, chunk) for f in latency_feats] for m in models}
        for m in models:  # warm-up
            _chunk_times(m.model, windows[m.name][:2])
        times: dict[str, list[float]] = {m.name: [] for m in models}
        for _ in range(repeats):
            for m in models:
                times[m.name].extend(_chunk_times(m.model, windows[m.name]))
        for row in rows:
            t = times[row["name"]]
            row["latency_ms"][str(chunk)] = {
                "median": round(1000 * statistics.median(t), 3),
                "p90": round(1000 * _percentile(t, 0.9), 3),
                "chunks": len(t),
            }
        log(f"chunk {chunk}: " + ", ".join(f"{r['name']} {r['latency_ms'][str(chunk)]['median']} ms" for r in rows))
    # One long stream (the latency utterances back to back, repeated to 60 s): softmax attention's
    # cost grows with the history it keeps, a fixed-size state's does not. Chunks of the last 30 s.
    joined = torch.cat(latency_feats)
    long_feats = joined.repeat(-(-6000 // max(1, joined.size(0))), 1)[:6000]
    if long_feats.size(0) >= 3000:
        windows = {m.name: [chunk_windows(m.model, long_feats, 16)] for m in models}
        times = {m.name: [] for m in models}
        for _ in range(max(1, repeats // 2)):
            for m in models:
                measured = _chunk_times(m.model, windows[m.name])
                times[m.name].extend(measured[len(measured) // 2 :])
        for row in rows:
            t = times[row["name"]]
            row["latency_ms_long_stream"] = {
                "chunk_size": 16, "stream_seconds": round(long_feats.size(0) / 100, 1),
                "median": round(1000 * statistics.median(t), 3), "p90": round(1000 * _percentile(t, 0.9), 3),
            }
        log("long stream, chunk 16: " + ", ".join(f"{r['name']} {r['latency_ms_long_stream']['median']} ms" for r in rows))
    for m, row in zip(models, rows):
        if m.packaged is None:
            row["rtf"] = None
            row["accuracy"] = None
            continue
        row["rtf"] = round(_streaming_rtf(m, audio[:latency_utts], accuracy_chunk), 4)
        modes = decode_all_modes(m.packaged, utts, audio, accuracy_chunk, beam_size)
        row["accuracy"] = {"first_pass": modes["ctc_prefix_beam"], "rescored": modes["attention_rescoring"]}
        log(f"{m.name}: RTF {row['rtf']}, first pass WER {modes['ctc_prefix_beam']['wer']} CER "
            f"{modes['ctc_prefix_beam']['cer']}, rescored WER {modes['attention_rescoring']['wer']}")
    baseline = rows[0]
    for row in rows:
        row["vs_baseline"] = _ratios(row, baseline, chunk_sizes)
    return {
        "benchmark": "encoders",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} thread(s)",
        "threads": torch.get_num_threads(),
        "baseline": baseline["name"],
        "chunk_sizes": list(chunk_sizes),
        "accuracy_chunk_size": accuracy_chunk,
        "test": {"utts": len(utts), "audio_seconds": round(sum(len(a) for a in audio) / 16000, 1),
                 "latency_utts": len(latency_feats)},
        "models": rows,
    }


def _relative(value: float, base: float) -> float | None:
    return round(100 * (value - base) / base, 2) if base else None


def _ratios(row: dict, base: dict, chunk_sizes) -> dict:
    ratios = {
        f"speedup_chunk_{c}": round(base["latency_ms"][str(c)]["median"] / row["latency_ms"][str(c)]["median"], 3)
        for c in chunk_sizes
    }
    ratios["flops_ratio"] = round(row["gflops_per_audio_second"] / base["gflops_per_audio_second"], 4)
    if "latency_ms_long_stream" in row and "latency_ms_long_stream" in base:
        ratios["speedup_long_stream"] = round(
            base["latency_ms_long_stream"]["median"] / row["latency_ms_long_stream"]["median"], 3)
    if row.get("accuracy") and base.get("accuracy"):
        for key in ("first_pass", "rescored"):
            ratios[f"wer_relative_{key}"] = _relative(row["accuracy"][key]["wer"], base["accuracy"][key]["wer"])
            ratios[f"cer_relative_{key}"] = _relative(row["accuracy"][key]["cer"], base["accuracy"][key]["cer"])
    return ratios
