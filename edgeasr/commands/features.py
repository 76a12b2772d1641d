"""``edgeasr features FILE``: show what the model will see for a clip.

Prints the frame count, per-dimension statistics and a small text spectrogram, and can save the
matrix. With ``--chunk-ms`` the audio goes through the streaming extractor in fixed-size chunks,
as a live microphone would feed it, which yields the same frames as whole-file extraction.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from edgeasr.audio.cmvn import GlobalCMVN
from edgeasr.audio.features import FbankOptions, StreamingFbank, compute_fbank, mel_filterbank
from edgeasr.audio.io import load_audio
from edgeasr.errors import DataError, EdgeAsrError
from edgeasr.fileio import atomic_write

#: Characters from least to most energy.
SHADES = " .:-=+*#%@"
PREVIEW_BANDS = 16
PREVIEW_COLUMNS = 60


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "features",
        help="compute 80-dim log-mel features of a clip and preview them",
        description=(
            "Compute the recognizer's input features (Kaldi-compatible 80-dim log-mel fbank, "
            "25 ms window, 10 ms shift) for an audio file; print their size, per-dimension "
            "statistics and a text spectrogram, and optionally save them as .npy."
        ),
    )
    parser.add_argument("file", metavar="FILE", help="audio file")
    parser.add_argument(
        "--raw-rate", type=int, metavar="HZ", help="sample rate of headerless PCM (.raw, .pcm)"
    )
    parser.add_argument(
        "--chunk-ms",
        type=float,
        metavar="N",
        help="stream the audio through the online extractor in chunks of N ms",
    )
    parser.add_argument("--out", metavar="FEATS.npy", help="save the [frames, 80] float32 matrix")
    parser.add_argument("--cmvn", metavar="CMVN.json", help="apply global CMVN statistics first")
    parser.set_defaults(func=run)


def _stream(
    samples: np.ndarray, options: FbankOptions, chunk_ms: float
) -> tuple[torch.Tensor, int]:
    chunk = max(1, int(round(options.sample_rate * chunk_ms / 1000.0)))
    extractor = StreamingFbank(options)
    pieces = [
        extractor.accept(samples[start : start + chunk]) for start in range(0, len(samples), chunk)
    ]
    pieces.append(extractor.finish())
    return torch.from_numpy(np.concatenate(pieces)), (len(samples) + chunk - 1) // chunk


def _band_labels(options: FbankOptions, bands: list[np.ndarray]) -> list[str]:
    weights = mel_filterbank(options).numpy()  # [bins, mels]
    bin_hz = options.sample_rate / options.padded_window_size
    centres = weights.argmax(axis=0) * bin_hz
    labels = []
    for band in bands:
        hz = float(np.mean(centres[band]))
        labels.append(f"{hz / 1000:.1f}k" if hz >= 1000 else f"{hz:.0f}")
    return labels


def spectrogram_preview(
    feats: np.ndarray,
    options: FbankOptions,
    bands: int = PREVIEW_BANDS,
    columns: int = PREVIEW_COLUMNS,
) -> list[str]:
    """Text spectrogram: mel bins pooled into ``bands`` rows (high at top), frames into at most
    ``columns`` columns, shaded between the 2nd and 99.5th percentile so quiet clips still show."""
    frames, dims = feats.shape
    if frames == 0:
        return []
    band_groups = np.array_split(np.arange(dims), min(bands, dims))
    column_groups = np.array_split(np.arange(frames), min(columns, frames))
    grid = np.array(
        [[feats[np.ix_(cols, band)].mean() for cols in column_groups] for band in band_groups]
    )
    low, high = np.percentile(grid, 2.0), np.percentile(grid, 99.5)
    scaled = np.clip((grid - low) / max(high - low, 1e-6), 0.0, 1.0)
    levels = np.minimum((scaled * len(SHADES)).astype(int), len(SHADES) - 1)
    labels = _band_labels(options, band_groups)
    width = max(len(label) for label in labels)
    lines = []
    for row in range(len(band_groups) - 1, -1, -1):
        shades = "".join(SHADES[level] for level in levels[row])
        lines.append(f"  {labels[row]:>{width}} |{shades}")
    duration = ((frames - 1) * options.frame_shift_ms + options.frame_length_ms) / 1000.0
    axis = f"{'0 s':<{max(len(column_groups) - 8, 4)}}{duration:.2f} s"
    lines.append(f"  {'':>{width}} +{'-' * len(column_groups)}")
    lines.append(f"  {'':>{width}}  {axis}")
    return lines


def _summary(feats: np.ndarray) -> list[str]:
    mean, std = feats.mean(axis=0), feats.std(axis=0)
    return [
        f"per-dim mean: min {mean.min():.2f} (dim {mean.argmin()})  median {np.median(mean):.2f}  "
        f"max {mean.max():.2f} (dim {mean.argmax()})",
        f"per-dim std:  min {std.min():.2f} (dim {std.argmin()})  median {np.median(std):.2f}  "
        f"max {std.max():.2f} (dim {std.argmax()})",
        f"all values:   mean {feats.mean():.2f}  std {feats.std():.2f}  "
        f"min {feats.min():.2f}  max {feats.max():.2f}",
    ]


def _save_npy(path: Path, feats: np.ndarray) -> None:
    with atomic_write(path, permissions=0o644) as temp:
        np.save(temp, feats)


def run(args: argparse.Namespace) -> int:
    options = FbankOptions()
    if args.chunk_ms is not None and not args.chunk_ms > 0:
        raise DataError(f"--chunk-ms must be positive, got {args.chunk_ms:g}")
    cmvn = GlobalCMVN.load(args.cmvn) if args.cmvn else None
    if cmvn is not None and cmvn.dim != options.num_mel_bins:
        raise DataError(
            f"{args.cmvn}: CMVN has {cmvn.dim} dims, features have {options.num_mel_bins}"
        )
    out = Path(args.out) if args.out else None
    if out is not None and out.suffix != ".npy":
        raise DataError(f"{out}: --out must end in .npy")

    samples = load_audio(args.file, sample_rate=options.sample_rate, raw_sample_rate=args.raw_rate)
    duration = len(samples) / options.sample_rate
    if args.chunk_ms is not None:
        feats, chunks = _stream(samples, options, args.chunk_ms)
        how = f"streamed in {chunks} chunks of {args.chunk_ms:g} ms"
    else:
        feats = compute_fbank(samples, options)
        how = "whole file"
    if cmvn is not None:
        feats = cmvn.apply(feats)
        how += f", CMVN from {args.cmvn}"
    matrix = feats.numpy().astype(np.float32)

    print(f"{args.file}: {duration:.3f} s at {options.sample_rate} Hz ({how})")
    print(
        f"{matrix.shape[0]} frames x {matrix.shape[1]} dims "
        f"({options.frame_length_ms:g} ms window, {options.frame_shift_ms:g} ms shift, log-mel)"
    )
    if matrix.shape[0] == 0:
        print(f"(no frames: the clip is shorter than one {options.frame_length_ms:g} ms window)")
    else:
        for line in _summary(matrix):
            print(line)
        print()
        print(
            f"spectrogram ({min(PREVIEW_BANDS, matrix.shape[1])} mel bands, low at the bottom; "
            f"time left to right; '{SHADES[1]}' quiet ... '{SHADES[-1]}' loud)"
        )
        for line in spectrogram_preview(matrix, options):
            print(line)
    if out is not None:
        try:
            _save_npy(out, matrix)
        except OSError as error:
            raise EdgeAsrError(
                f"{out}: cannot write features ({error.strerror or error})"
            ) from None
        print(f"saved {out}")
    return 0
