"""``edgeasr audio info|convert``: look at audio files and turn them into model input.

``info`` is the first thing to run on a folder of recordings someone sent you: one line per file,
and bad files are named with the reason instead of stopping the listing. ``convert`` produces
exactly what the recognizer consumes (16 kHz mono 16-bit WAV by default).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

from edgeasr.audio.io import (
    SAMPLE_RATE,
    audio_info,
    check_sample_rate,
    read_audio,
    resample,
    to_mono,
    validate_samples,
    write_wav,
)
from edgeasr.errors import AudioError, EdgeAsrError


def _add_raw_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--raw-rate",
        type=int,
        metavar="HZ",
        help="sample rate of headerless 16-bit little-endian PCM files (.raw, .pcm)",
    )
    parser.add_argument(
        "--raw-channels",
        type=int,
        default=1,
        metavar="N",
        help="channel count of headerless PCM files (default: 1)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser(
        "audio",
        help="inspect and convert audio files",
        description="Inspect audio files or convert them to the recognizer's input format.",
    )
    group.set_defaults(func=None, group_parser=group)
    actions = group.add_subparsers(dest="audio_action", metavar="<action>")

    info = actions.add_parser(
        "info",
        help="one line per file: format, rate, channels, duration, peak level",
        description=(
            "Print format, sample rate, channels, duration and peak level (dBFS) of each file. "
            "Unreadable files get a one-line error and the listing goes on; the exit status "
            "is 2 if any file failed."
        ),
    )
    info.add_argument("files", nargs="+", metavar="FILE", help="audio files")
    _add_raw_options(info)
    info.set_defaults(func=run_info)

    convert = actions.add_parser(
        "convert",
        help="decode, mix to mono, resample and write a 16-bit WAV",
        description=(
            "Decode IN (WAV/FLAC/OGG/MP3 or headerless PCM), average its channels, resample it "
            "with a band-limited filter and write OUT as 16-bit PCM WAV (written atomically)."
        ),
    )
    convert.add_argument("input", metavar="IN", help="input audio file")
    convert.add_argument("output", metavar="OUT", help="output .wav file")
    convert.add_argument(
        "--rate",
        type=int,
        default=SAMPLE_RATE,
        metavar="HZ",
        help=f"output sample rate (default: {SAMPLE_RATE})",
    )
    _add_raw_options(convert)
    convert.set_defaults(func=run_convert)


def _peak_dbfs(samples: np.ndarray) -> str:
    peak = float(np.max(np.abs(samples)))
    return "-inf dBFS" if peak <= 0 else f"{20 * math.log10(peak):.1f} dBFS"


def run_info(args: argparse.Namespace) -> int:
    failed = 0
    for name in args.files:
        try:
            info = audio_info(name, raw_sample_rate=args.raw_rate, raw_channels=args.raw_channels)
            samples, _ = read_audio(
                name, raw_sample_rate=args.raw_rate, raw_channels=args.raw_channels
            )
        except EdgeAsrError as error:
            print(f"edgeasr: error: {error}", file=sys.stderr)
            failed += 1
            continue
        channels = "mono" if info.channels == 1 else f"{info.channels} ch"
        print(
            f"{name}  {info.format}/{info.subtype}  {info.sample_rate} Hz  {channels}  "
            f"{len(samples) / info.sample_rate:.3f} s  peak {_peak_dbfs(samples)}",
            flush=True,
        )
    return 2 if failed else 0


def run_convert(args: argparse.Namespace) -> int:
    output = Path(args.output)
    if output.suffix.lower() != ".wav":
        raise AudioError(output, "output must be a .wav file (convert writes 16-bit PCM WAV)")
    if Path(args.input).resolve() == output.resolve():
        raise AudioError(output, "output would overwrite the input; choose another name")
    target = check_sample_rate("--rate", args.rate, "output sample rate")
    samples, rate = read_audio(
        args.input, raw_sample_rate=args.raw_rate, raw_channels=args.raw_channels
    )
    mono = validate_samples(resample(to_mono(samples), rate, target), args.input)
    write_wav(output, mono, target)
    print(
        f"wrote {output}: {target} Hz mono 16-bit, {len(mono) / target:.3f} s "
        f"(from {rate} Hz, {samples.shape[1]} ch)"
    )
    return 0
