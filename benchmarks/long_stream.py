"""A long stream through one streaming session: accuracy, speed and memory minute by minute.

    python benchmarks/long_stream.py --model DIR --manifest data/synth4/test.jsonl \
        [--minutes 5] [--mode whisper_rescoring] [--chunk-size 32] [--seed 0] \
        [--out benchmarks/results/long_stream.json] [--report BENCHMARKS.md] [--hyps FILE]

Whisper's encoder has absolute positions that end at 30 s, so a ``StreamingSession`` of a
Whisper-based model cuts the stream into segments at endpoints (CTC-blank rules, a forced cut at
~20 s) and starts each segment with a fresh encoder stream. This benchmark checks that it holds
up over minutes: the last minute is recognized as well as the first, and memory and time per
block stay flat.

Two streams of ``--minutes`` minutes are built from the test utterances in a seeded shuffled order
(a synthesized manifest is grouped by engine, and espeak's voices are far harder than the others:
in manifest order the first minute would be all espeak and the comparison of minutes meaningless;
``--order manifest`` keeps the file's order). The order starts over if it runs out; the utterance that crosses the end is kept whole, so the
stream runs a few seconds past it and that tail counts in the last minute):

- ``pauses``: a pause of 0.3-1.5 s of low Gaussian noise (``--noise-dbfs``, seeded) between
  utterances: endpoints come from the blank rules;
- ``no_pauses``: the utterances back to back (only their own short leading/trailing silences):
  segments end mostly by the forced cut.

Each stream is fed to one session in ``--block-ms`` blocks at 1 thread. Per minute of stream
time: RTF (``accept`` wall time over the minute's audio; ``finish()`` counts in the last minute),
time per block (median, p90, max; blocks that close a segment include its second pass), the
encoder stream's ``state_bytes()`` (max), the process's current RSS (from /proc/self/statm;
max and at the minute's end) and the segments closed (endpoints; the last minute also counts the
one ``finish()`` closes).

WER per minute: a reference utterance belongs to the minute in which it starts; a hypothesis
word (``finish().words``, times in stream seconds) belongs to the utterance its start time falls
in (pauses split halfway between utterances) and so to that utterance's minute, which keeps an
utterance that straddles a minute boundary whole on both sides. The words of each minute are
scored as one string against the minute's joined references (``word_errors``); the total is one
alignment over the whole stream.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from edgeasr.audio.io import load_audio
from edgeasr.data.manifest import read_manifest
from edgeasr.decoding.recognizer import MODES, DecodeOptions, Recognizer
from edgeasr.errors import EdgeAsrError
from edgeasr.evaluate.metrics import ErrorCounts, word_errors
from edgeasr.evaluate.report import run_facts, save_result
from edgeasr.model.package import load_model_dir

ROOT = Path(__file__).resolve().parents[1]
RATE = 16000
PAUSE_SECONDS = (0.3, 1.5)
VARIANTS = {
    "pauses": "0.3-1.5 s of low noise between utterances (endpoints from the CTC-blank rules)",
    "no_pauses": "utterances back to back, no pause added (segments end mostly by the forced cut)",
    "repeated": "the first minute of the pauses stream played again and again: every minute holds the same "
                "speech, so any drift over the stream shows as a WER that changes from minute to minute",
}


def current_rss_bytes() -> int:
    """Resident set size now (``getrusage``'s max RSS only ever grows)."""
    try:
        with open("/proc/self/statm") as handle:
            pages = int(handle.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # no /proc: fall back to the peak
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


# --- the streams ---------------------------------------------------------------------------------

class UtteranceAudio:
    """The manifest's utterances in order (starting over at the end), each loaded once."""

    def __init__(self, manifest: str | Path, shuffle_seed: int | None = None) -> None:
        self.utts = read_manifest(manifest)  # audio paths resolved against the manifest's folder
        if not self.utts:
            raise EdgeAsrError(f"{manifest}: no utterances")
        if shuffle_seed is not None:
            order = np.random.default_rng(shuffle_seed).permutation(len(self.utts))
            self.utts = [self.utts[i] for i in order]
        self._audio: dict[int, np.ndarray] = {}

    def get(self, index: int) -> tuple[object, np.ndarray]:
        index %= len(self.utts)
        if index not in self._audio:
            samples = load_audio(self.utts[index].audio, sample_rate=RATE)
            self._audio[index] = np.asarray(samples, dtype=np.float32).reshape(-1)
        return self.utts[index], self._audio[index]


def repeat_minute(stream: tuple[np.ndarray, list[dict]], times: int) -> tuple[np.ndarray, list[dict]]:
    """The stream's whole utterances that end within its first 60 s, played ``times`` times.

    The block ends where the first utterance left out begins (after the pause that precedes it):
    cutting at 60 s would keep the start of that utterance's audio without its reference.
    """
    audio, spans = stream
    kept = [s for s in spans if s["end"] <= 60.0] or spans[:1]
    following = spans[len(kept)]["start"] if len(kept) < len(spans) else kept[-1]["end"]
    spans = kept
    block = audio[: int(round(following * RATE))]
    length = block.size / RATE
    repeated = [dict(s, start=s["start"] + k * length, end=s["end"] + k * length)
                for k in range(times) for s in spans]
    return np.tile(block, times), repeated


def build_stream(source: UtteranceAudio, seconds: float, pauses: bool, rng: np.random.Generator,
                 noise_rms: float) -> tuple[np.ndarray, list[dict]]:
    """Utterances (with noise pauses or none) until ``seconds``; their spans and texts."""
    target = int(round(seconds * RATE))
    pieces, spans, length, index = [], [], 0, 0
    while length < target:
        utt, audio = source.get(index)
        if audio.size == 0:
            index += 1
            if index > 10 * len(source.utts):
                raise EdgeAsrError("the manifest's audio is empty")
            continue
        if pauses and spans:
            gap = int(round(rng.uniform(*PAUSE_SECONDS) * RATE))
            pieces.append((noise_rms * rng.standard_normal(gap)).astype(np.float32))
            length += gap
        spans.append({"id": utt.extra.get("id") or Path(utt.audio).stem, "text": utt.text,
                      "start": length / RATE, "end": (length + audio.size) / RATE})
        pieces.append(audio)
        length += audio.size
        index += 1
    return np.concatenate(pieces), spans


def minute_of(seconds: float, minutes: int) -> int:
    return min(max(int(seconds // 60), 0), minutes - 1)


def words_by_utterance(words, spans: list[dict]) -> list[list[str]]:
    """Each hypothesis word to the utterance its start falls in (gaps split halfway)."""
    bounds = [(a["end"] + b["start"]) / 2 for a, b in zip(spans, spans[1:])]
    out: list[list[str]] = [[] for _ in spans]
    for word in words:
        out[bisect.bisect_right(bounds, word.start)].append(word.word)
    return out


def _errors_row(counts: ErrorCounts) -> dict:
    """WER and its parts; words and hyp_words counted after normalisation, as scored."""
    return {"wer": round(counts.rate, 2), "substitutions": counts.substitutions, "deletions": counts.deletions,
            "insertions": counts.insertions, "words": counts.reference_length,
            "hyp_words": counts.reference_length - counts.deletions + counts.insertions}


def _ms_stats(seconds: list[float]) -> dict:
    if not seconds:
        return {"median": None, "p90": None, "max": None}
    values = 1000 * np.asarray(seconds, dtype=np.float64)
    return {"median": round(float(np.median(values)), 3), "p90": round(float(np.percentile(values, 90)), 3),
            "max": round(float(values.max()), 3)}


# --- one stream through one session --------------------------------------------------------------

def run_stream(recognizer: Recognizer, samples: np.ndarray, spans: list[dict], minutes: int, block: int,
               texts: list[dict] | None = None) -> dict:
    """Stream ``samples`` through one session; the variant's row (``texts`` gets each minute's
    reference and hypothesis when given)."""
    bins = [{"audio": 0.0, "compute": 0.0, "blocks": [], "state": 0, "rss": 0, "rss_end": 0, "segments": 0}
            for _ in range(minutes)]
    rss_start = current_rss_bytes()
    session = recognizer.stream()
    with torch.no_grad():
        for start in range(0, len(samples), block):
            chunk = samples[start : start + block]
            row = bins[minute_of(start / RATE, minutes)]
            began = time.perf_counter()
            session.accept(chunk)
            elapsed = time.perf_counter() - began
            rss = current_rss_bytes()
            row["audio"] += chunk.size / RATE
            row["compute"] += elapsed
            row["blocks"].append(elapsed)
            row["state"] = max(row["state"], session.runner.encoder.state_bytes())
            row["rss"], row["rss_end"] = max(row["rss"], rss), rss
            row["segments"] += session.is_endpoint()
        began = time.perf_counter()
        result = session.finish()
        finish = time.perf_counter() - began
    last = bins[-1]
    last["compute"] += finish
    last["segments"] += 1  # the one finish() closes
    last["rss_end"] = current_rss_bytes()
    last["rss"] = max(last["rss"], last["rss_end"])

    hyp_words = words_by_utterance(result.words, spans)
    refs = [[] for _ in range(minutes)]
    hyps = [[] for _ in range(minutes)]
    utts = [0] * minutes
    for span, words in zip(spans, hyp_words):
        m = minute_of(span["start"], minutes)
        refs[m].append(span["text"])
        hyps[m] += words
        utts[m] += 1
    rows = []
    for m, b in enumerate(bins):
        counts = word_errors(" ".join(refs[m]), " ".join(hyps[m]))
        if texts is not None:
            texts.append({"minute": m + 1, "ref": " ".join(refs[m]), "hyp": " ".join(hyps[m])})
        end = len(samples) / RATE if m == minutes - 1 else 60.0 * (m + 1)
        rows.append({
            "minute": m + 1, "start_s": 60.0 * m, "end_s": round(end, 3), "utts": utts[m],
            **_errors_row(counts),
            "rtf": round(b["compute"] / b["audio"], 4) if b["audio"] else 0.0,
            "block_ms": _ms_stats(b["blocks"]),
            "state_bytes": b["state"],
            "rss_mb": round(b["rss"] / 2**20, 1), "rss_mb_end": round(b["rss_end"] / 2**20, 1),
            "segments": b["segments"],
        })
    all_hyp = [w.word for w in result.words]
    total = word_errors(" ".join(s["text"] for s in spans), " ".join(all_hyp))
    compute = sum(b["compute"] for b in bins)
    audio_seconds = len(samples) / RATE
    return {
        "audio_seconds": round(audio_seconds, 3),
        "utts": len(spans),
        "speech_seconds": round(sum(s["end"] - s["start"] for s in spans), 3),
        **_errors_row(total),
        "rtf": round(compute / audio_seconds, 4),
        "blocks": sum(len(b["blocks"]) for b in bins),
        "finish_ms": round(1000 * finish, 3),
        "segments": sum(b["segments"] for b in bins),
        "segments_with_text": len(session.finals),
        "state_bytes_max": max(b["state"] for b in bins),
        "rss_mb_start": round(rss_start / 2**20, 1),
        "rss_mb_max": max(r["rss_mb"] for r in rows),
        "first_last_wer": [rows[0]["wer"], rows[-1]["wer"]],
        "minutes": rows,
    }


def state_bytes_bound(recognizer: Recognizer) -> int | None:
    """What the encoder stream may hold in a segment of the forced-cut length (plus a chunk and
    the stem's buffers); None when the stream is not cut into segments or the encoder is not Whisper's."""
    rules = recognizer.endpoint_rules
    config = getattr(recognizer.model.encoder, "config", None)
    if rules is None or not hasattr(config, "max_positions"):
        return None
    frames = math.ceil(rules.max_utterance / recognizer.frame_seconds) + 2 * recognizer.chunk_size
    if recognizer.num_left_chunks >= 0:
        frames = min(frames, (recognizer.num_left_chunks + 2) * recognizer.chunk_size)
    kv = config.num_layers * 2 * frames * config.d_model * 4
    stem = (3 * config.input_dim + 4 * config.d_model + 2 * recognizer.chunk_size * config.d_model) * 4
    return kv + stem


# --- main ----------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="model directory")
    parser.add_argument("--manifest", required=True, help="test manifest (JSONL)")
    parser.add_argument("--minutes", type=float, default=5.0, help="length of each stream")
    parser.add_argument("--mode", default="whisper_rescoring", choices=MODES)
    parser.add_argument("--chunk-size", type=int, default=32, help="encoder frames per chunk (20 ms frames for Whisper)")
    parser.add_argument("--beam-size", type=int, default=10)
    parser.add_argument("--block-ms", type=float, default=640.0, help="audio per accept() call")
    parser.add_argument("--seed", type=int, default=0, help="utterance order, pause lengths and noise")
    parser.add_argument("--order", choices=("shuffled", "manifest"), default="shuffled",
                        help="utterance order in the stream (default: shuffled with --seed)")
    parser.add_argument("--noise-dbfs", type=float, default=-60.0, help="RMS level of the pauses' noise")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="which streams to run")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "long_stream.json"))
    parser.add_argument("--report", default=str(ROOT / "BENCHMARKS.md"), help="BENCHMARKS.md to regenerate")
    parser.add_argument("--hyps", metavar="FILE", help="write each minute's reference and hypothesis (JSONL) to FILE")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    started_all = time.perf_counter()
    if not args.minutes > 0:
        raise EdgeAsrError("--minutes must be positive")
    if args.chunk_size < 1:
        raise EdgeAsrError("--chunk-size must be at least 1 (streaming)")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for name in variants:
        if name not in VARIANTS:
            raise EdgeAsrError(f"unknown variant {name!r} (choose from {', '.join(VARIANTS)})")
    minutes = max(1, math.ceil(args.minutes - 1e-9))
    block = max(1, round(args.block_ms * RATE / 1000))
    noise_rms = 10 ** (args.noise_dbfs / 20)

    packaged = load_model_dir(args.model)
    recognizer = Recognizer(packaged, DecodeOptions(mode=args.mode, chunk_size=args.chunk_size,
                                                    beam_size=args.beam_size))
    if recognizer.sample_rate != RATE:
        raise EdgeAsrError(f"this benchmark streams {RATE} Hz audio; the model wants {recognizer.sample_rate} Hz")
    source = UtteranceAudio(args.manifest, args.seed if args.order == "shuffled" else None)
    rng = np.random.default_rng(args.seed)
    streams = {name: build_stream(source, 60.0 * args.minutes, name == "pauses", rng, noise_rms)
               for name in variants if name != "repeated"}
    if "repeated" in variants:
        streams["repeated"] = repeat_minute(build_stream(source, 60.0, True, np.random.default_rng(args.seed), noise_rms),
                                            minutes)

    # warm-up, untimed: first calls pay for lazy initialisation (the second pass too, at finish)
    first = next(iter(streams.values()))[0]
    warm = recognizer.stream()
    with torch.no_grad():
        warm.accept(first[: 2 * block])
        warm.finish()
    del warm

    rules = recognizer.endpoint_rules
    result = {
        **run_facts("long_stream", "benchmarks/long_stream.py", sys.argv[1:] if argv is None else argv),
        "model": {
            "directory": str(args.model),
            "encoder": type(recognizer.model.encoder).__name__,
            "frame_ms": round(1000 * recognizer.frame_seconds, 3),
            "max_segment_frames": recognizer.max_segment_frames,
        },
        "manifest": str(args.manifest),
        "mode": args.mode,
        "mode_used": recognizer.mode,
        "chunk_size": recognizer.chunk_size,
        "chunk_ms": round(1000 * recognizer.chunk_size * recognizer.frame_seconds, 3),
        "num_left_chunks": recognizer.num_left_chunks,
        "beam_size": args.beam_size,
        "block_ms": round(1000 * block / RATE, 3),
        "minutes": args.minutes,
        "seed": args.seed, "order": args.order,
        "pause_seconds": list(PAUSE_SECONDS),
        "noise_dbfs": args.noise_dbfs,
        "segmented": rules is not None,
        "endpoint_rules": asdict(rules) if rules is not None else None,
        "state_bytes_bound": state_bytes_bound(recognizer),
        "variants": {},
    }
    hyps = []
    for name, (samples, spans) in streams.items():
        began = time.perf_counter()
        texts: list[dict] = []
        row = run_stream(recognizer, samples, spans, minutes, block, texts)
        hyps += [{"variant": name, **t} for t in texts]
        row["description"] = VARIANTS[name]
        row["seconds"] = round(time.perf_counter() - began, 1)
        result["variants"][name] = row
        print(f"[{name}] {row['audio_seconds'] / 60:.2f} min, {row['utts']} utts: WER {row['wer']:.2f} "
              f"(first minute {row['first_last_wer'][0]:.2f}, last {row['first_last_wer'][1]:.2f}), "
              f"RTF {row['rtf']:.4f}, {row['segments']} segments, state max {row['state_bytes_max']} B, "
              f"RSS max {row['rss_mb_max']:.0f} MB ({row['seconds']:.0f} s)", file=sys.stderr, flush=True)
    result["seconds"] = round(time.perf_counter() - started_all, 1)
    save_result(result, args.out, args.report)
    if args.hyps:
        Path(args.hyps).parent.mkdir(parents=True, exist_ok=True)
        Path(args.hyps).write_text("".join(json.dumps(h) + "\n" for h in hyps), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
