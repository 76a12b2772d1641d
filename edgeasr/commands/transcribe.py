"""``edgeasr transcribe FILE...``: transcripts, JSON or subtitles per file, streaming by default."""

from __future__ import annotations

import argparse
import sys

from edgeasr.commands._decode_args import add_decode_arguments, open_recognizer
from edgeasr.decoding.formats import FORMATS, render, write_result
from edgeasr.errors import EdgeAsrError
from edgeasr.progress import Progress, clock

#: files at least this long report progress on a terminal (or always with --progress)
PROGRESS_SECONDS = 60.0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "transcribe",
        help="transcribe audio files (streaming by default; txt, json, srt, vtt, tsv)",
        description=(
            "Transcribe each file. Audio streams through the model chunk by chunk as it would from a "
            "microphone, cut into segments at endpoints (pauses), so files of any length take memory "
            "and time in proportion; --chunk-size 0 decodes with full context instead. '-' reads "
            "audio from standard input. Without --output-dir, results go to standard output: one "
            "line per file (txt), one JSON object per file (json), or the subtitle/TSV document."
        ),
    )
    parser.add_argument("files", nargs="+", metavar="FILE",
                        help="audio files (WAV/FLAC/OGG/MP3, .raw/.pcm), or - for standard input")
    parser.add_argument("--raw-rate", type=int, metavar="HZ", help="sample rate of headerless PCM input")
    parser.add_argument("--output-format", "-f", choices=FORMATS, default="txt",
                        help="txt (one line per segment in files), json (text, segments, words with times, "
                             "confidence, n-best), srt or vtt subtitles, tsv (start/end ms, text); default txt")
    parser.add_argument("--output-dir", "-o", metavar="DIR",
                        help="write one file per input into DIR (name.FORMAT) instead of standard output")
    parser.add_argument("--json", action="store_true", help="same as --output-format json")
    parser.add_argument("--partials", action="store_true", help="also print partial results while streaming")
    parser.add_argument("--progress", action="store_true",
                        help=f"report progress on standard error (automatic on a terminal for files over "
                             f"{PROGRESS_SECONDS:.0f} s)")
    add_decode_arguments(parser)
    parser.set_defaults(func=run)


def _load(path: str, args, sample_rate: int):
    from edgeasr.audio.io import load_audio, read_stdin_audio

    if path == "-":
        return read_stdin_audio(sample_rate, args.raw_rate)
    return load_audio(path, sample_rate=sample_rate, raw_sample_rate=args.raw_rate)


def _progress(path: str, seconds: float, forced: bool) -> Progress:
    return Progress(path, seconds, "audio", forced or (sys.stderr.isatty() and seconds >= PROGRESS_SECONDS), show=clock)


def run(args: argparse.Namespace) -> int:
    from edgeasr.api import set_compute_threads

    output_format = "json" if args.json else args.output_format
    if args.json and args.output_format not in ("txt", "json"):
        raise EdgeAsrError("--json and --output-format disagree; use one of them")
    if args.output_dir is None and output_format in ("srt", "vtt", "tsv") and len(args.files) > 1:
        raise EdgeAsrError(f"{output_format} output of several files needs --output-dir DIR (one file each)")
    if args.files.count("-") > 1:
        raise EdgeAsrError("standard input ('-') can be read only once")
    set_compute_threads(args.threads)
    recognizer = open_recognizer(args)
    chunk_size, sample_rate = recognizer.chunk_size, recognizer.sample_rate
    failed = 0
    for path in args.files:
        try:
            if chunk_size <= 0:
                result = recognizer.transcribe_offline(_load(path, args, sample_rate))
            elif path != "-" and not args.partials:  # from disk block by block: flat memory
                from edgeasr.audio.io import audio_info

                progress = _progress(path, audio_info(path, raw_sample_rate=args.raw_rate).duration, args.progress)
                result = recognizer.transcribe_file(path, raw_sample_rate=args.raw_rate, progress=progress.update)
            else:  # standard input, or partials to show: 100 ms pieces, as from a live source
                samples = _load(path, args, sample_rate)
                progress = _progress(path, len(samples) / sample_rate, args.progress)
                session, step = recognizer.stream(), sample_rate // 10
                for start in range(0, len(samples), step):
                    partial = session.accept(samples[start : start + step])
                    if args.partials and partial.text:
                        print(f"  ... {partial.text}", file=sys.stderr, flush=True)
                    progress.update(min(len(samples), start + step) / sample_rate)
                result = session.finish()
            if args.output_dir is not None:
                write_result(result, path, args.output_dir, output_format)
        except EdgeAsrError as error:
            print(f"edgeasr: error: {error}", file=sys.stderr)
            failed += 1
            continue
        if args.output_dir is not None:
            continue
        if output_format == "txt":  # standard output: the whole transcript on one line per file
            print(f"{path}\t{result.text}" if len(args.files) > 1 else result.text, flush=True)
        else:
            print(render(result, output_format, path), end="", flush=True)
    return 2 if failed else 0
