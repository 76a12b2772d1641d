"""``edgeasr eval``: WER/CER of a model on a manifest, with RTF at the thread count used."""

from __future__ import annotations

import argparse
import json
import time

import torch

from edgeasr.commands._decode_args import add_decode_arguments, open_recognizer
from edgeasr.errors import EdgeAsrError
from edgeasr.fileio import atomic_write
from edgeasr.progress import Progress


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="score a model on a manifest (WER, CER, S/D/I, RTF)",
        description=(
            "Decode every utterance of a JSONL manifest and report WER and CER (percent, with "
            "substitutions, deletions and insertions), the number of utterances, audio seconds and "
            "the real-time factor at the thread count used. Streams chunk by chunk unless "
            "--chunk-size 0 (or --offline) is given."
        ),
    )
    parser.add_argument("--manifest", required=True, help="JSONL manifest with audio and text")
    parser.add_argument("--offline", action="store_true",
                        help="run the encoder over whole utterances under the chunk mask (same text as streaming)")
    parser.add_argument("--json", action="store_true",
                        help="print exactly one JSON object: wer, cer, rtf, utts, audio_seconds, ...")
    parser.add_argument("--errors", metavar="FILE", help="write per-utterance results (JSONL) to FILE")
    parser.add_argument("--limit", type=int, help="only the first N utterances")
    parser.add_argument("--progress", action="store_true",
                        help="report progress on standard error (automatic on a terminal)")
    parser.add_argument("--batch-size", type=int, default=1,
                        help="with --offline: utterances per padded encoder batch (default: 1)")
    add_decode_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgeasr.audio.io import load_audio
    from edgeasr.data.manifest import read_manifest
    from edgeasr.decoding.recognizer import Recognizer
    from edgeasr.evaluate.metrics import ErrorCounts, char_errors, word_errors
    from edgeasr.api import set_compute_threads

    set_compute_threads(args.threads)
    recognizer = open_recognizer(args)
    onnx = not isinstance(recognizer, Recognizer)
    if onnx and (args.offline or args.batch_size != 1):
        raise EdgeAsrError("the ONNX backend streams one utterance at a time (no --offline or --batch-size)")
    chunk_size, model_name = recognizer.chunk_size, str(recognizer.directory)
    utts = read_manifest(args.manifest)[: args.limit]
    if not utts:
        raise EdgeAsrError(f"{args.manifest}: no utterances to score")
    empty = sum(1 for u in utts if not u.text.strip())
    if empty:
        import sys

        print(f"edgeasr: warning: {empty} of {len(utts)} utterances have an empty reference text "
              "(their words count as insertions only)", file=sys.stderr)
    words, chars = ErrorCounts(), ErrorCounts()
    audio_seconds = 0.0
    compute_seconds = 0.0
    rows = []
    streaming = chunk_size > 0 and not args.offline
    if args.batch_size < 1:
        raise EdgeAsrError("--batch-size must be at least 1")
    batch_size = 1 if streaming else args.batch_size
    results = []
    progress = Progress.auto("eval", len(utts), "utterances", getattr(args, "progress", False))
    for begin in range(0, len(utts), batch_size):
        audio = [load_audio(u.audio) for u in utts[begin : begin + batch_size]]
        started = time.perf_counter()
        if onnx:
            results.append(recognizer.transcribe(audio[0]))
        elif batch_size == 1:
            results.append(recognizer.transcribe(audio[0], streaming=streaming))
        else:
            results.extend(recognizer.transcribe_batch(audio))
        compute_seconds += time.perf_counter() - started
        audio_seconds += sum(len(a) for a in audio) / recognizer.sample_rate
        progress.update(len(results))
    for utt, result in zip(utts, results):
        w, c = word_errors(utt.text, result.text), char_errors(utt.text, result.text)
        words, chars = words + w, chars + c
        rows.append({"audio": utt.audio, "ref": utt.text, "hyp": result.text, "wer": round(w.rate, 2),
                     "errors": w.errors, "words": w.reference_length})
    summary = {
        "wer": round(words.rate, 2),
        "cer": round(chars.rate, 2),
        "rtf": round(compute_seconds / audio_seconds, 4) if audio_seconds else 0.0,
        "utts": len(utts),
        "audio_seconds": round(audio_seconds, 2),
        "substitutions": words.substitutions,
        "deletions": words.deletions,
        "insertions": words.insertions,
        "words": words.reference_length,
        "mode": recognizer.mode,
        "backend": "onnx" if onnx else "torch",
        "chunk_size": chunk_size,
        "streaming": streaming,
        "batch_size": batch_size,
        "threads": torch.get_num_threads(),
        "model": model_name,
    }
    if args.errors:
        with atomic_write(args.errors, "w", encoding="utf-8") as handle:
            for row in sorted(rows, key=lambda r: -r["errors"]):
                handle.write(json.dumps(row) + "\n")
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"WER {summary['wer']:.2f}% (S {words.substitutions} D {words.deletions} I {words.insertions} "
              f"of {words.reference_length} words)  CER {summary['cer']:.2f}%")
        print(f"{len(utts)} utterances, {audio_seconds:.1f} s of audio, RTF {summary['rtf']:.4f} at "
              f"{summary['threads']} thread(s), mode {summary['mode']}, chunk {summary['chunk_size']}"
              f"{' (streaming)' if streaming else ''}")
    return 0
