"""``edgeasr transcribe FILE...``: one line of text per file, streaming by default."""

from __future__ import annotations

import argparse
import json
import sys

import torch

from edgeasr.commands._decode_args import add_decode_arguments, decode_options
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
    parser.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                        help="torch, or onnx: ONNX Runtime only (a model directory is exported once into "
                             "~/.cache/edgeasr); an export directory always runs on ONNX Runtime")
    parser.add_argument("--int8", action="store_true", help="ONNX backend: run the int8 graphs")
    add_decode_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgeasr.api import is_onnx_export, load_model
    from edgeasr.audio.io import load_audio

    torch.set_num_threads(max(1, args.threads))
    if is_onnx_export(args.model) or args.backend == "onnx":
        if args.gate_threshold is not None or args.dynamic_int8:
            raise EdgeAsrError("--gate-threshold and --dynamic-int8 apply to the torch backend")
        recognizer = load_model(args.model, "onnx", mode=args.mode, chunk_size=args.chunk_size,
                                num_left_chunks=args.left_chunks, beam_size=args.beam_size,
                                ctc_weight=args.ctc_weight, int8=args.int8, threads=args.threads)
        chunk_size, sample_rate = recognizer.meta["chunk_size"], recognizer.features.sample_rate
    else:
        from edgeasr.decoding.recognizer import Recognizer

        if args.int8:
            raise EdgeAsrError("--int8 runs ONNX int8 graphs: add --backend onnx (or use --dynamic-int8 with torch)")
        recognizer = Recognizer.load(args.model, decode_options(args))
        chunk_size, sample_rate = recognizer.chunk_size, recognizer.packaged.features.sample_rate
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
