"""``edgeasr transcribe FILE...``: one line of text per file, streaming by default."""

from __future__ import annotations

import argparse
import json
import sys

import torch

from edgeasr.commands._decode_args import add_decode_arguments, open_recognizer
from edgeasr.errors import EdgeAsrError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "transcribe",
        help="transcribe audio files (streaming by default)",
        description=(
            "Print one line per file: its transcript. Audio streams through the model chunk by "
            "chunk as it would from a microphone; --chunk-size 0 decodes with full context instead."
        ),
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="audio files (WAV/FLAC/OGG/MP3, .raw/.pcm)")
    parser.add_argument("--raw-rate", type=int, metavar="HZ", help="sample rate of headerless PCM input")
    parser.add_argument("--json", action="store_true",
                        help="one JSON object per line: audio, text, words with times, confidence, n-best")
    parser.add_argument("--partials", action="store_true", help="also print partial results while streaming")
    add_decode_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgeasr.audio.io import load_audio
    from edgeasr.api import check_threads

    torch.set_num_threads(check_threads(args.threads))
    recognizer = open_recognizer(args)
    chunk_size, sample_rate = recognizer.chunk_size, recognizer.sample_rate
    failed = 0
    for path in args.files:
        try:
            samples = load_audio(path, raw_sample_rate=args.raw_rate)
            if chunk_size > 0:
                session = recognizer.stream()
                step = sample_rate // 10  # 100 ms, like a live source
                for start in range(0, len(samples), step):
                    partial = session.accept(samples[start : start + step])
                    if args.partials and partial.text:
                        print(f"  ... {partial.text}", file=sys.stderr, flush=True)
                result = session.finish()
            else:
                result = recognizer.transcribe_offline(samples)
        except EdgeAsrError as error:
            print(f"edgeasr: error: {error}", file=sys.stderr)
            failed += 1
            continue
        if args.json:
            print(json.dumps({"audio": str(path), **result.to_dict()}), flush=True)
        else:
            print(f"{path}\t{result.text}" if len(args.files) > 1 else result.text, flush=True)
    return 2 if failed else 0
