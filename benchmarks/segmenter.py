"""Segmenter-finalized segments against rule-based endpointing, in one run (issue 17, item 3).

    python benchmarks/segmenter.py --model exp/whisper-segmenter/model \\
        --manifest test=data/synth-cal/test.jsonl --manifest realdev=../shared/data/realdev/realdev.jsonl

Streams are built from each manifest's utterances in order, ``--per-stream`` at a time, with
pauses of ``--pauses`` seconds (uniform, seeded) of faint noise between them; each utterance's end
of speech is where its audio last rises above -40 dB of its loudest 20 ms (its trailing silence
trimmed). Every stream goes through the model in the default two-pass mode in blocks of one chunk
(640 ms), once per endpointing setting, the settings taking turns on each stream, 1 thread:

- ``rules``: the CTC-blank rules alone (0.8 s of silence after speech);
- ``segmenter@P``: the segmenter closes a segment when its probability at a chunk's last frame
  reaches P (the rules stay as a fallback).

Per setting: WER/CER of the streams' final text against their joined references, segments per
stream, and the **finalization latency** of each utterance: from its end of speech to the moment
the final covering it is out (audio streamed by then, in real time, plus the compute of the call
that produced it), median and p90 over utterances. Writes benchmarks/results/segmenter.json and
regenerates BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
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
from edgeasr.decoding.recognizer import DecodeOptions, Recognizer  # noqa: E402
from edgeasr.evaluate.metrics import corpus_errors  # noqa: E402
from edgeasr.evaluate.report import run_facts, save_result  # noqa: E402
from edgeasr.model.package import load_model_dir  # noqa: E402

RATE = 16000


def speech_end(samples: np.ndarray, floor_db: float = -40.0) -> int:
    """The sample where the utterance's speech ends: after its last 20 ms frame within
    ``floor_db`` of its loudest."""
    frame = RATE // 50
    count = max(1, len(samples) // frame)
    energy = np.array([np.mean(samples[i * frame:(i + 1) * frame] ** 2) + 1e-12 for i in range(count)])
    level = 10 * np.log10(energy)
    loud = np.flatnonzero(level >= level.max() + floor_db)
    return int((loud[-1] + 1) * frame) if loud.size else len(samples)


def build_streams(utts, per_stream: int, pauses: tuple[float, float], seed: int):
    """[(audio, reference, [end of speech of each utterance, seconds])]"""
    rng = np.random.default_rng(seed)
    streams = []
    for first in range(0, len(utts) - per_stream + 1, per_stream):
        pieces, texts, ends, total = [], [], [], 0
        for utt in utts[first:first + per_stream]:
            samples = load_audio(utt.audio, sample_rate=RATE)
            ends.append((total + speech_end(samples)) / RATE)
            pause = (1e-3 * rng.standard_normal(int(rng.uniform(*pauses) * RATE))).astype(np.float32)
            pieces += [samples, pause]
            texts.append(utt.text)
            total += len(samples) + len(pause)
        streams.append((np.concatenate(pieces), " ".join(texts), ends))
    return streams


def run_stream(recognizer: Recognizer, audio: np.ndarray, ends: list[float]) -> dict:
    """Stream in chunk-sized blocks; when each final appears, and the final text."""
    block = int(round(recognizer.chunk_size * recognizer.frame_seconds * RATE))
    session = recognizer.stream()
    finals_out: list[tuple[float, float]] = []  # (segment end, stream time when it was out)
    spent = 0.0
    for offset in range(0, len(audio), block):
        started = time.perf_counter()
        session.accept(audio[offset:offset + block])
        took = time.perf_counter() - started
        spent += took
        fed = min(offset + block, len(audio)) / RATE
        for _, end, _ in session.finals[len(finals_out):]:
            finals_out.append((end, fed + took))
    started = time.perf_counter()
    result = session.finish()
    took = time.perf_counter() - started
    spent += took
    for _, end, _ in session.finals[len(finals_out):]:
        finals_out.append((end, len(audio) / RATE + took))
    latencies = []
    for speech_stop in ends:
        # the first final whose segment reaches past this utterance's end of speech
        out = next((at for end, at in finals_out if end >= speech_stop - 0.05), None)
        if out is not None:
            latencies.append(out - speech_stop)
    return {"text": result.text, "latencies": latencies, "segments": len(session.finals), "seconds": spent}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a model directory with a segmenter")
    parser.add_argument("--manifest", action="append", required=True, metavar="NAME=PATH")
    parser.add_argument("--mode", default="whisper_rescoring")
    parser.add_argument("--thresholds", default="0.5,0.7")
    parser.add_argument("--min-silence", type=float, default=DecodeOptions().segmenter_min_silence,
                        help="trailing CTC silence (s) the segmenter waits for (DecodeOptions.segmenter_min_silence)")
    parser.add_argument("--per-stream", type=int, default=6)
    parser.add_argument("--pauses", default="1.0,2.0", help="pause lengths between utterances: MIN,MAX seconds")
    parser.add_argument("--limit", type=int, help="utterances per manifest")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "segmenter.json"))
    parser.add_argument("--report", default=str(ROOT / "BENCHMARKS.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    packaged = load_model_dir(args.model)
    if packaged.model.segmenter is None:
        print(f"edgeasr: error: {args.model} has no segmenter (model.segmenter)", file=sys.stderr)
        return 2
    pauses = tuple(float(x) for x in args.pauses.split(","))
    settings = {"rules": DecodeOptions(mode=args.mode, segmenter=False)}
    for threshold in (float(x) for x in args.thresholds.split(",") if x.strip()):
        settings[f"segmenter@{threshold:g}"] = DecodeOptions(mode=args.mode, segmenter=True,
                                                             segmenter_threshold=threshold,
                                                             segmenter_min_silence=args.min_silence)
    recognizers = {name: Recognizer(packaged, options) for name, options in settings.items()}
    result = {**run_facts("segmenter", "benchmarks/segmenter.py", sys.argv[1:] if argv is None else argv),
              "model": str(args.model), "mode": args.mode, "chunk_ms": round(1000 * next(iter(
                  recognizers.values())).chunk_size * next(iter(recognizers.values())).frame_seconds),
              "pauses_s": list(pauses), "per_stream": args.per_stream, "min_silence_s": args.min_silence,
              "segmenter_parameters": sum(p.numel() for p in packaged.model.segmenter.parameters()),
              "sets": {}}
    for item in args.manifest:
        name, _, path = item.partition("=")
        utts = read_manifest(path)[: args.limit]
        streams = build_streams(utts, min(args.per_stream, len(utts)), pauses, args.seed)
        for recognizer in recognizers.values():
            recognizer.transcribe(streams[0][0][:RATE])  # warm-up, untimed
        runs = {setting: [] for setting in settings}
        for audio, _, ends in streams:  # the settings take turns on each stream
            for setting, recognizer in recognizers.items():
                runs[setting].append(run_stream(recognizer, audio, ends))
        audio_seconds = sum(len(a) for a, _, _ in streams) / RATE
        rows = {}
        for setting in settings:
            words, chars = corpus_errors([ref for _, ref, _ in streams], [r["text"] for r in runs[setting]])
            latencies = sorted(x for r in runs[setting] for x in r["latencies"])
            rows[setting] = {
                "wer": round(words.rate, 2), "cer": round(chars.rate, 2),
                "latency_ms_median": round(1000 * statistics.median(latencies), 1) if latencies else None,
                "latency_ms_p90": round(1000 * float(np.percentile(latencies, 90)), 1) if latencies else None,
                "utterances_finalized": len(latencies),
                "segments_per_stream": round(statistics.mean(r["segments"] for r in runs[setting]), 2),
                "rtf": round(sum(r["seconds"] for r in runs[setting]) / audio_seconds, 4),
            }
            print(json.dumps({"set": name, "setting": setting, **rows[setting]}), file=sys.stderr, flush=True)
        result["sets"][name] = {"manifest": path, "streams": len(streams), "utterances": len(streams) * args.per_stream,
                                "audio_seconds": round(audio_seconds, 1), "rows": rows}
    save_result(result, args.out, args.report)
    print(json.dumps(result["sets"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
