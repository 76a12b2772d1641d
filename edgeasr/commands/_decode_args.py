"""Decoding options shared by `transcribe` and `eval`."""

from __future__ import annotations

import argparse

from edgeasr.decoding.core import MODES, DecodeOptions


def add_decode_arguments(parser: argparse.ArgumentParser, default_mode: str = "attention_rescoring") -> None:
    parser.add_argument("--model", default="default", help="model directory, or 'default' for the shipped model")
    parser.add_argument("--mode", choices=MODES, default=default_mode, help=f"decoding mode (default: {default_mode})")
    parser.add_argument("--chunk-size", type=int, metavar="N",
                        help="encoder frames per chunk (x 40 ms at 4x subsampling); 0 = full context; "
                             "default: the model's own setting")
    parser.add_argument("--left-chunks", type=int, metavar="N",
                        help="chunks of history attention keeps (-1 = all); default: the model's setting")
    parser.add_argument("--beam-size", type=int, default=10, help="CTC prefix beam size (default: 10)")
    parser.add_argument("--ctc-weight", type=float, default=0.5,
                        help="CTC weight in attention rescoring (default: 0.5)")
    parser.add_argument("--second-pass", choices=("joint", "rescore"), default="joint",
                        help="whisper_rescoring: joint CTC/Whisper beam search, or rescoring of the CTC "
                             "n-best plus one free Whisper decode (default: joint)")
    parser.add_argument("--reverse-weight", type=float, default=0.0,
                        help="right-to-left decoder weight in rescoring, U2++ models (default: 0)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--dynamic-int8", action="store_true",
                        help="run Linear layers as torch dynamic int8 (float models; no calibration)")
    parser.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                        help="torch, or onnx: ONNX Runtime only (a model directory is exported once into "
                             "~/.cache/edgeasr); an export directory always runs on ONNX Runtime")
    parser.add_argument("--int8", action="store_true", help="ONNX backend: run the int8 graphs")
    parser.add_argument("--int4", action="store_true",
                        help="ONNX backend: 4-bit decoder graphs beside the int8 encoder (export --int4)")
    parser.add_argument("--gate-threshold", type=float, metavar="P",
                        help="dynamic-compute models: gate-open probability (default: the model's, 0.5); "
                             "higher runs fewer modules")
    add_search_arguments(parser)


def add_search_arguments(parser: argparse.ArgumentParser) -> None:
    """The language model, hotwords, search pruning, the VAD and the segmenter (shared with `edgeasr serve`)."""
    parser.add_argument("--vad", action="store_true",
                        help="skip audio an energy voice-activity detector hears as silence (the encoder "
                             "never runs on it): long pauses cost next to nothing")
    defaults = DecodeOptions()
    parser.add_argument("--segmenter", choices=["auto", "on", "off"], default="auto",
                        help="close segments where the model's segmenter predicts the end of speech, before the "
                             "blank rules would (default auto: when the model has one)")
    parser.add_argument("--segmenter-threshold", type=float, default=defaults.segmenter_threshold,
                        help=f"segmenter probability that closes a segment (default: {defaults.segmenter_threshold})")
    parser.add_argument("--segmenter-min-silence", type=float, default=defaults.segmenter_min_silence, metavar="SECONDS",
                        help="seconds of trailing silence (CTC blanks) the segmenter needs before it closes a segment "
                             f"(default: {defaults.segmenter_min_silence}; the blank rules wait 0.8)")
    parser.add_argument("--lm", metavar="PATH",
                        help="word n-gram LM: an `edgeasr lm train` directory or an ARPA file; 'none' = no LM "
                             "(default: the model directory's lm/ when it has one)")
    parser.add_argument("--lm-weight", type=float, default=defaults.lm_weight,
                        help=f"LM weight in the CTC prefix beam (default: {defaults.lm_weight})")
    parser.add_argument("--lm-bonus", type=float, default=defaults.lm_bonus,
                        help="score bonus per unit the LM scores: a word, or a character for a character LM "
                             f"(default: {defaults.lm_bonus})")
    parser.add_argument("--source-lm", metavar="PATH",
                        help="density-ratio fusion: an LM of the acoustic model's training transcripts "
                             "(`edgeasr lm train`), whose score is subtracted from --lm's in the first pass")
    parser.add_argument("--source-lm-weight", type=float, default=defaults.source_lm_weight,
                        help=f"density-ratio fusion: the source LM's weight (default: {defaults.source_lm_weight})")
    parser.add_argument("--whisper-ctc-weight", type=float, default=None,
                        help=f"Whisper second pass: CTC's weight against Whisper's decoder "
                             f"(default: {DecodeOptions.whisper_ctc_weight})")
    parser.add_argument("--whisper-length-bonus", type=float, default=None,
                        help=f"Whisper second pass: score bonus per character "
                             f"(default: {DecodeOptions.whisper_length_bonus})")
    parser.add_argument("--second-pass-transducer-weight", type=float, default=None, metavar="W",
                        help="transducer_whisper: the transducer's share of the first-pass score Whisper's "
                             "decoder is weighed against; the rest is the CTC head's "
                             f"(default: {DecodeOptions.second_pass_transducer_weight:g}, best on the TTS dev set; 1: the transducer alone)")
    parser.add_argument("--second-pass-window", type=float, default=None, metavar="SECONDS",
                        help="Whisper second pass: re-encode each segment at the start of a window of "
                             "this many seconds filled with silence, as Whisper was trained (0 = the "
                             f"segment alone, faster; default: {DecodeOptions.second_pass_window:g})")
    parser.add_argument("--second-pass-pad", choices=("floor", "quietest"), default=None,
                        help="what fills the second pass's window: digital silence at Whisper's floor, or "
                             f"the segment's own quietest level per mel bin (default: {DecodeOptions.second_pass_pad})")
    parser.add_argument("--second-pass-model", metavar="DIR|whisper:base",
                        help="whisper_rescoring: another Whisper writes the finals (its encoder and decoder; "
                             "this model's CTC head still scores), e.g. whisper:base, imported once from its "
                             "packages (torch backend)")
    parser.add_argument("--cascade-layers", type=int, metavar="N",
                        help="cascade_rescoring with a dynamic cascade: the sub-model of N layers writes the finals "
                             "(default: all of them; the model card lists its sizes)")
    parser.add_argument("--whisper-lm-weight", type=float, default=defaults.whisper_lm_weight,
                        help=f"LM weight in the Whisper joint second pass (default: {defaults.whisper_lm_weight})")
    parser.add_argument("--hotwords", metavar="FILE",
                        help="phrases to bias recognition towards: one a line, optional ' :BOOST' at the end")
    parser.add_argument("--hotword-boost", type=float, default=defaults.hotword_boost,
                        help=f"boost per character of a hotword, in nats (default: {defaults.hotword_boost})")
    parser.add_argument("--first-pass", metavar="DIR",
                        help="stream the first pass (partials, endpoints) with this model directory's encoder "
                             "and CTC head, e.g. a small student distilled from the model; the model's own second "
                             "pass still makes the finals (with --backend onnx: the student's export, or its model "
                             "directory exported once at this export's chunk size)")
    parser.add_argument("--token-threshold", type=float, default=defaults.token_threshold,
                        help="prefix beam: skip tokens this many nats below a frame's best "
                             f"(default: {defaults.token_threshold}; 'inf' = exhaustive)")
    parser.add_argument("--score-threshold", type=float, default=defaults.score_threshold,
                        help="prefix beam: drop prefixes this many nats below the best "
                             f"(default: {defaults.score_threshold}; 'inf' = keep the whole beam)")


def search_options(args: argparse.Namespace) -> dict:
    """The DecodeOptions fields ``add_search_arguments`` sets."""
    segmenter = {"auto": None, "on": True, "off": False}[getattr(args, "segmenter", "auto")]
    return {"vad": getattr(args, "vad", False), "segmenter": segmenter,
            "segmenter_threshold": getattr(args, "segmenter_threshold", DecodeOptions().segmenter_threshold),
            "segmenter_min_silence": getattr(args, "segmenter_min_silence", DecodeOptions().segmenter_min_silence),
            "lm": "auto" if args.lm is None else (None if args.lm == "none" else args.lm),
            "lm_weight": args.lm_weight, "lm_bonus": args.lm_bonus,
            "source_lm": getattr(args, "source_lm", None),
            "source_lm_weight": getattr(args, "source_lm_weight", DecodeOptions().source_lm_weight),
            "whisper_lm_weight": args.whisper_lm_weight, "hotwords": args.hotwords,
            "hotword_boost": args.hotword_boost, "token_threshold": args.token_threshold,
            "score_threshold": args.score_threshold, "first_pass": getattr(args, "first_pass", None),
            # the Whisper second pass's settings: left to DecodeOptions' defaults unless given
            **{name: getattr(args, name) for name in SECOND_PASS_OPTIONS if getattr(args, name, None) is not None}}


#: DecodeOptions fields of the Whisper second pass that the command line sets only when given
SECOND_PASS_OPTIONS = ("whisper_ctc_weight", "whisper_length_bonus", "second_pass_window", "second_pass_pad",
                       "second_pass_transducer_weight",
                       "second_pass_model", "cascade_layers")


def open_recognizer(args: argparse.Namespace):
    """The recognizer the decode arguments ask for: torch ``Recognizer`` or ``OnnxRecognizer``.

    Both have ``chunk_size``, ``sample_rate``, ``directory``, ``stream()`` and ``transcribe()``.
    """
    from edgeasr.api import check_threads, is_onnx_export, load_model
    from edgeasr.errors import EdgeAsrError

    check_threads(args.threads)

    if args.backend == "onnx" or is_onnx_export(args.model):
        if args.gate_threshold is not None or args.dynamic_int8:
            raise EdgeAsrError("--gate-threshold and --dynamic-int8 apply to the torch backend")
        return load_model(args.model, "onnx", mode=args.mode, chunk_size=args.chunk_size,
                          num_left_chunks=args.left_chunks, beam_size=args.beam_size,
                          ctc_weight=args.ctc_weight, int8=args.int8, int4=args.int4, threads=args.threads,
                          reverse_weight=args.reverse_weight, **search_options(args))
    if args.int8 or args.int4:
        raise EdgeAsrError("--int8 / --int4 run quantized ONNX graphs: add --backend onnx (or use --dynamic-int8 "
                           "with torch)")
    from edgeasr.decoding.recognizer import Recognizer

    return Recognizer.load(args.model, decode_options(args))


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
        second_pass_search=args.second_pass,
        **search_options(args),
    )
