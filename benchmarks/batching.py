"""Batching concurrent streams on CPU: what one batched call saves per stream (issue 14).

    python benchmarks/batching.py --manifest ../shared/data/realdev/realdev.jsonl

The issue asks for the pending work of concurrent sessions to run as one batched call, so that
the same cores serve at least twice the sessions. Before building it, this measures what it can
buy on this machine, at 1 thread, with the default model (torch):

1. Where a real-time session's compute goes: each utterance streamed in 640 ms blocks, the time
   inside the first pass's encoder (chunks and CTC head), the second pass's re-encoding (the 10 s
   window and the CTC head's own pass over the segment), the second pass's decoder steps, and
   the rest (features, searches, endpointing, bookkeeping), summed over the set.
2. Per-stream cost of each part when B streams' work runs as one call (B = 1, 2, 4, 8), with the
   shapes streaming uses: a chunk of encoder frames with a left cache of ``--cache-seconds``; a
   re-encoded window; one decoder step of the joint search's beams per stream, over a window's
   cross keys, ``--tokens`` tokens in. Speed-up: per-stream time at B=1 over per-stream time at B.
   Calls take turns across B values; medians.
3. The best case for sessions per core: 1 / (rest + sum of share / speed-up(B)): every call finds
   B streams ready at once. That is an upper bound: real-time sessions arrive out of step, and a
   stream waiting for partners adds latency.

Writes benchmarks/results/batching.json and regenerates BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeasr.audio.io import load_audio  # noqa: E402
from edgeasr.data.manifest import read_manifest  # noqa: E402
from edgeasr.decoding import recognizer as recognizer_module  # noqa: E402
from edgeasr.decoding import whisper_rescoring  # noqa: E402
from edgeasr.decoding.recognizer import DecodeOptions, Recognizer  # noqa: E402
from edgeasr.evaluate.report import repo_path, run_facts, save_result  # noqa: E402
from edgeasr.model import whisper as whisper_module  # noqa: E402

PARTS = ("first_pass_encoder", "second_pass_encoder", "second_pass_decoder")


def compute_shares(recognizer: Recognizer, audio: list[np.ndarray], block_seconds: float = 0.64) -> dict:
    """Seconds spent in each part while streaming every utterance (hooks time the calls)."""
    spent = dict.fromkeys(PARTS, 0.0)
    hooks = [(recognizer_module.TorchChunkRunner, "accept", "first_pass_encoder"),
             (recognizer_module.TorchChunkRunner, "finish", "first_pass_encoder"),
             (whisper_rescoring.TorchWhisperBackend, "encode", "second_pass_encoder"),
             (whisper_module.TorchDecoderSteps, "step", "second_pass_decoder"),
             (whisper_module.TorchDecoderSteps, "select", "second_pass_decoder")]
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in hooks]

    def timed(function, part):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent[part] += time.perf_counter() - start
        return wrapper

    total = 0.0
    try:
        for (owner, name, part), (_, _, function) in zip(hooks, originals):
            setattr(owner, name, timed(function, part))
        recognizer.transcribe(audio[0])  # warm-up
        for key in spent:
            spent[key] = 0.0
        step = int(recognizer.frontend.sample_rate * block_seconds)
        for samples in audio:
            start = time.perf_counter()
            session = recognizer.stream()
            for offset in range(0, len(samples), step):
                session.accept(samples[offset : offset + step])
            session.finish()
            total += time.perf_counter() - start
    finally:
        for owner, name, function in originals:
            setattr(owner, name, function)
    seconds = sum(len(s) for s in audio) / recognizer.frontend.sample_rate
    shares = {part: round(value / total, 4) for part, value in spent.items()}
    shares["rest"] = round(1.0 - sum(shares.values()), 4)
    return {"audio_seconds": round(seconds, 1), "compute_seconds": round(total, 2),
            "rtf": round(total / seconds, 4), "shares": shares}


class Workloads:
    """One call of each part for B streams at once, with streaming's shapes (random inputs: the
    time depends on the shapes only)."""

    def __init__(self, recognizer: Recognizer, cache_seconds: float, window_seconds: float,
                 tokens: int, beams: int) -> None:
        self.model = model = recognizer.model
        encoder = model.encoder
        self.chunk = recognizer.chunk_size // encoder.subsampling_rate  # encoder frames a chunk
        self.cache = int(round(cache_seconds / recognizer.frame_seconds))
        self.window = int(round(window_seconds / recognizer.frontend.frame_shift))  # feature frames
        self.tokens, self.beams = tokens, beams
        config = encoder.config
        self.heads, self.head_dim = config.num_heads, config.d_model // config.num_heads
        self.d_model, self.input_dim = config.d_model, config.input_dim
        backend = recognizer.second_pass.backend if getattr(recognizer, "second_pass", None) else None
        if backend is None:
            backend = whisper_rescoring.TorchWhisperBackend(model)
        self.decoder = backend.steps.decoder  # with its int8 copies, as decoding runs it
        self.generator = torch.Generator().manual_seed(0)

    def _randn(self, *shape):
        return torch.randn(*shape, generator=self.generator)

    def inputs(self, batch: int) -> dict:
        cross_frames = self.window // 2
        rows = batch * self.beams
        layers = len(self.decoder.layers)
        return {
            "chunk": self._randn(batch, self.chunk, self.d_model),
            "caches": [(self._randn(batch, self.heads, self.cache, self.head_dim),
                        self._randn(batch, self.heads, self.cache, self.head_dim)) for _ in self.model.encoder.layers],
            "window": self._randn(batch, self.window, self.input_dim),
            "tokens": torch.randint(0, 50000, (rows, 1), generator=self.generator),
            "cross": self.decoder.cross_keys_values(self._randn(batch, cross_frames, self.d_model).repeat_interleave(self.beams, 0)),
            "self": [(self._randn(rows, self.decoder.config.num_heads, self.tokens, self.head_dim),
                      self._randn(rows, self.decoder.config.num_heads, self.tokens, self.head_dim)) for _ in range(layers)],
        }

    @torch.no_grad()
    def first_pass_encoder(self, data: dict) -> None:
        """A chunk through the blocks over the left caches, the final norm and the CTC head."""
        encoder = self.model.encoder
        x = data["chunk"] + encoder.positions[self.cache : self.cache + self.chunk]
        for layer, cache in zip(encoder.layers, data["caches"]):
            x, _ = layer(x, None, cache)
        self.model.ctc_log_probs(encoder.norm(x))

    @torch.no_grad()
    def second_pass_encoder(self, data: dict) -> None:
        """The window re-encoded at full context (the CTC head's pass over the segment alone is
        the same kind of call, shorter; it is inside the measured share)."""
        batch = data["window"].size(0)
        self.model.encoder(data["window"], torch.full((batch,), self.window), 0, -1)

    @torch.no_grad()
    def second_pass_decoder(self, data: dict) -> None:
        """One joint-search step: logits of every beam's next token, log-softmax, top-k."""
        caches = list(data["self"])
        logits = self.decoder._run(data["tokens"], data["cross"], None, caches, self.tokens)[:, -1].float()
        logits.log_softmax(dim=-1).topk(5, dim=-1)


def batch_speedups(work: Workloads, batches: list[int], repeats: int) -> dict:
    inputs = {b: work.inputs(b) for b in batches}
    times = {part: {b: [] for b in batches} for part in PARTS}
    for part in PARTS:
        call = getattr(work, part)
        for b in batches:  # warm-up
            call(inputs[b])
        for _ in range(repeats):
            for b in batches:  # in turns, so drifts of a shared machine hit every B alike
                start = time.perf_counter()
                call(inputs[b])
                times[part][b].append((time.perf_counter() - start) / b)
    out = {}
    for part in PARTS:
        base = statistics.median(times[part][batches[0]])
        out[part] = {str(b): {"ms_per_stream": round(statistics.median(times[part][b]) * 1e3, 3),
                              "speedup": round(base / statistics.median(times[part][b]), 3)} for b in batches}
    return out


def best_case(shares: dict, speedups: dict, batches: list[int]) -> dict:
    """Sessions per core with batching / without, if every call found B streams ready."""
    out = {}
    for b in batches:
        cost = shares["rest"] + sum(shares[part] / speedups[part][str(b)]["speedup"] for part in PARTS)
        out[str(b)] = round(1.0 / cost, 3)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "models" / "default"))
    parser.add_argument("--manifest", type=Path, required=True, help="speech to stream for the compute shares")
    parser.add_argument("--utts", type=int, default=20)
    parser.add_argument("--batches", default="1,2,4,8")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--cache-seconds", type=float, default=5.0, help="left context a chunk attends to")
    parser.add_argument("--tokens", type=int, default=20, help="tokens already decoded at the measured step")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/batching.json")
    parser.add_argument("--report", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    batches = [int(b) for b in args.batches.split(",")]
    if batches[0] != 1:
        batches = [1] + batches
    recognizer = Recognizer.load(args.model, DecodeOptions())
    options = recognizer.options
    audio = [load_audio(u.audio, sample_rate=recognizer.frontend.sample_rate)
             for u in read_manifest(args.manifest)[: args.utts]]
    result = run_facts("batching", "benchmarks/batching.py", sys.argv[1:])
    result.update(model=repo_path(args.model, ROOT), manifest=repo_path(args.manifest, ROOT), utts=len(audio),
                  chunk_size=recognizer.chunk_size, second_pass_window=options.second_pass_window,
                  cache_seconds=args.cache_seconds, tokens=args.tokens)
    result["session"] = compute_shares(recognizer, audio)
    print("session", result["session"], flush=True)
    work = Workloads(recognizer, args.cache_seconds, options.second_pass_window or 10.0, args.tokens, beams=3)
    result["beams_per_stream"] = work.beams
    result["batched"] = batch_speedups(work, batches, args.repeats)
    print("batched", result["batched"], flush=True)
    result["best_case_sessions_ratio"] = best_case(result["session"]["shares"], result["batched"], batches)
    print("best case", result["best_case_sessions_ratio"], flush=True)
    print("wrote", save_result(result, args.out, args.report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
