"""Decoding options shared by `transcribe` and `eval`."""

from __future__ import annotations

import argparse

from edgeasr.decoding.recognizer import MODES, DecodeOptions


def add_decode_arguments(parser: argparse.ArgumentParser, default_mode: str = "attention_rescoring") -> None:
    parser.add_argument("--model", default="default", help="model directory, or 'default' for the shipped model")
    parser.add_argument("--mode", choices=MODES, default=default_mode, help=f"decoding mode (default: {default_mode})")
    parser.add_argument("--chunk-size", type=int, metavar="N",
                        help="encoder frames per chunk (x 40 ms at 4x subsampling); 0 = full context; "
                             "default: the model's own setting")
    parser.add_argument("--left-chunks", type=int, metavar="N",
                        help="chunks of history attention keeps (-1 = all); default: the model's setting")
    parser.add_argument("--beam-size", type=int, default=10, help="CTC prefix beam size (default: 10)")
    parser.add_argument("--ctc-weight", type=float, default=0.5, help="CTC weight in rescoring (default: 0.5)")
    parser.add_argument("--reverse-weight", type=float, default=0.0,
                        help="right-to-left decoder weight in rescoring, U2++ models (default: 0)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--dynamic-int8", action="store_true",
                        help="run Linear layers as torch dynamic int8 (float models; no calibration)")
    parser.add_argument("--gate-threshold", type=float, metavar="P",
                        help="dynamic-compute models: gate-open probability (default: the model's, 0.5); "
                             "higher runs fewer modules")


def decode_options(args: argparse.Namespace) -> DecodeOptions:
    return DecodeOptions(
        mode=args.mode,
        chunk_size=args.chunk_size,
        num_left_chunks=args.left_chunks,
        beam_size=args.beam_size,
        ctc_weight=args.ctc_weight,
        reverse_weight=args.reverse_weight,
        dynamic_int8=args.dynamic_int8,
        gate_threshold=args.gate_threshold,
    )
