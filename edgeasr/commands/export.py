"""``edgeasr export``: ONNX graphs of a model for streaming with ONNX Runtime."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a model to ONNX (streaming encoder with caches, decoder, int8 option)",
        description=(
            "Write encoder.onnx (one chunk: features and per-layer caches in, encoder output, CTC "
            "log-probabilities and new caches out; CMVN inside), decoder.onnx (rescoring), the "
            "tokenizer and metadata.json (chunk size, left context, window, cache layout). --int8 "
            "adds onnxruntime dynamic int8 graphs (MatMul/Gemm only). Run them with "
            "`edgeasr transcribe --model DIR` or edgeasr.export.runtime.OnnxRecognizer."
        ),
    )
    parser.add_argument("--model", default="default", help="model directory (or 'default')")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--chunk-size", type=int, help="encoder frames per chunk (default: the model's)")
    parser.add_argument("--left-chunks", type=int, help="chunks of attention history kept (-1 = all; default: the model's)")
    parser.add_argument("--int8", action="store_true", help="also write int8 graphs (onnxruntime dynamic quantization)")
    parser.add_argument("--int4", action="store_true",
                        help="also write 4-bit decoder graphs (MatMulNBits, blocks of 32; implies --int8 for the "
                             "encoder graphs they run beside); a model trained to 4 bits (QAT/PTQ W4) also gets "
                             "4-bit encoder graphs carrying its own codes exactly")
    parser.add_argument("--calib", metavar="MANIFEST",
                        help="with --int4: round the 4-bit decoder with GPTQ, calibrated on this audio (the "
                             "model's second pass decodes it; keep it apart from your test sets), instead of "
                             "round-to-nearest")
    parser.add_argument("--calib-encoder", action="store_true",
                        help="with --calib: the encoder's layers 4-bit too, rounded by GPTQ (both encoder graphs)")
    parser.add_argument("--calib-block", type=int, default=32, choices=(32, 64, 128),
                        help="with --calib: inputs per 4-bit block (one scale and zero point each; default 32, "
                             "longer blocks store fewer scales and round coarser)")
    parser.add_argument("--calib-limit", type=int, default=100, metavar="N",
                        help="calibration utterances for --calib, spread over the manifest (default: 100)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import sys
    import time

    from edgeasr.errors import EdgeAsrError
    from edgeasr.export.onnx import export_onnx

    if args.calib and not args.int4:
        raise EdgeAsrError("--calib rounds the 4-bit decoder graphs: add --int4")
    if args.calib_encoder and not args.calib:
        raise EdgeAsrError("--calib-encoder rounds the encoder with GPTQ on calibration audio: add --calib MANIFEST")
    if args.calib_block != 32 and not args.calib:
        raise EdgeAsrError("--calib-block sets GPTQ's blocks: add --calib MANIFEST")
    if args.calib_limit < 1:
        raise EdgeAsrError(f"--calib-limit must be at least 1, got {args.calib_limit}")
    started = time.monotonic()
    gptq_codes = None
    if args.calib:
        from edgeasr.progress import Progress
        from edgeasr.quant.gptq import whisper_codes

        parts = "encoder and decoder" if args.calib_encoder else "decoder"
        print(f"edgeasr: calibrating the 4-bit {parts} (GPTQ) on {args.calib} ...", file=sys.stderr, flush=True)
        progress = Progress.auto("calibrate", args.calib_limit, "utterances")
        gptq_codes = whisper_codes(args.model, args.calib, args.calib_limit, encoder=args.calib_encoder,
                                   block=args.calib_block,
                                   report=lambda done, total: progress.update(done))
    kinds = " (float, int8 and 4-bit decoder graphs)" if args.int4 else " (float and int8 graphs)" if args.int8 else ""
    print(f"edgeasr: exporting {args.model} to ONNX{kinds}: "
          "tracing and writing the graphs takes a while ...", file=sys.stderr, flush=True)
    meta = export_onnx(args.model, args.out, args.chunk_size, args.left_chunks, args.int8, int4=args.int4,
                       gptq_codes=gptq_codes)
    written = sorted(Path(args.out).glob("*.onnx")) + sorted(Path(args.out).glob("weights*.bin"))
    sizes = ", ".join(f"{p.name} {p.stat().st_size / 1e6:.1f} MB" for p in written)
    print(f"exported to {args.out} in {time.monotonic() - started:.0f} s: {sizes}; chunk {meta['chunk_size']}, "
          f"left chunks {meta['num_left_chunks']}")
    return 0
