"""Global cepstral mean and variance normalisation (CMVN) for fbank features.

Log-mel features sit around +10 with per-band spreads of 2-5 nats; normalising every band to zero
mean and unit variance with statistics from the training set lets the encoder's first layer start
in a sane range. The statistics are global (not per utterance) so streaming needs no look-ahead:
the same two vectors apply to the first frame of a stream as to the last. They travel with the
model as JSON.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from edgeasr.audio.features import FbankOptions, compute_fbank
from edgeasr.audio.io import load_audio
from edgeasr.errors import DataError
from edgeasr.fileio import atomic_write


class GlobalCMVN:
    """``(feats - mean) * istd`` with fixed per-dimension statistics."""

    def __init__(self, mean: torch.Tensor, istd: torch.Tensor, frames: int = 0) -> None:
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        istd = torch.as_tensor(istd, dtype=torch.float32).reshape(-1)
        if mean.shape != istd.shape or mean.numel() == 0:
            raise DataError(
                f"CMVN: mean and istd must be equal-length vectors, got {tuple(mean.shape)} "
                f"and {tuple(istd.shape)}"
            )
        if not (torch.isfinite(mean).all() and torch.isfinite(istd).all()) or (istd <= 0).any():
            raise DataError("CMVN: statistics must be finite with istd > 0")
        self.mean = mean
        self.istd = istd
        self.frames = int(frames)

    @property
    def dim(self) -> int:
        return self.mean.numel()

    def apply(self, feats: torch.Tensor) -> torch.Tensor:
        """Works on [T, F] and [B, T, F] (any leading dims); returns a new tensor."""
        if feats.shape[-1] != self.dim:
            raise ValueError(f"CMVN has {self.dim} dims but features have {feats.shape[-1]}")
        mean = self.mean.to(feats.device, feats.dtype)
        istd = self.istd.to(feats.device, feats.dtype)
        return (feats - mean) * istd

    __call__ = apply

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "global_cmvn",
            "dim": self.dim,
            "frames": self.frames,
            "mean": [float(v) for v in self.mean],
            "istd": [float(v) for v in self.istd],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GlobalCMVN:
        if not isinstance(data, dict) or "mean" not in data or "istd" not in data:
            raise DataError("CMVN: expected an object with 'mean' and 'istd' lists")
        try:
            mean = torch.tensor(data["mean"], dtype=torch.float32)
            istd = torch.tensor(data["istd"], dtype=torch.float32)
        except (TypeError, ValueError) as error:
            raise DataError(f"CMVN: 'mean'/'istd' must be lists of numbers ({error})") from None
        return cls(mean, istd, int(data.get("frames", 0)))

    def save(self, path: str | os.PathLike) -> None:
        """Atomic JSON write: an interrupted save never leaves a half-written statistics file."""
        with atomic_write(path, "w", encoding="utf-8", permissions=0o644) as temp:
            json.dump(self.to_dict(), temp, indent=1)
            temp.write("\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> GlobalCMVN:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise DataError(f"{path}: no such CMVN file") from None
        except (OSError, UnicodeDecodeError) as error:
            raise DataError(f"{path}: cannot read CMVN file ({error})") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}: not valid JSON ({error})") from None
        try:
            return cls.from_dict(data)
        except DataError as error:
            raise DataError(f"{path}: {error}") from None


class CMVNAccumulator:
    """Running sums in float64: float32 sums of ~1e8 squared log energies lose the variance."""

    def __init__(self) -> None:
        self.sum: torch.Tensor | None = None
        self.sum_sq: torch.Tensor | None = None
        self.frames = 0

    def add(self, feats: torch.Tensor) -> None:
        """Accumulate [T, F] (or [B, T, F] without padding) features."""
        feats = torch.as_tensor(feats).detach().to("cpu", torch.float64)
        feats = feats.reshape(-1, feats.shape[-1])
        if feats.shape[0] == 0:
            return
        if self.sum is None:
            self.sum = torch.zeros(feats.shape[1], dtype=torch.float64)
            self.sum_sq = torch.zeros(feats.shape[1], dtype=torch.float64)
        elif feats.shape[1] != self.sum.numel():
            raise ValueError(f"feature dim {feats.shape[1]} != accumulated dim {self.sum.numel()}")
        self.sum += feats.sum(dim=0)
        self.sum_sq += feats.square().sum(dim=0)
        self.frames += feats.shape[0]

    def finalize(self, floor: float = 1e-2) -> GlobalCMVN:
        """Mean and inverse std; ``floor`` bounds the variance so a constant band can't explode."""
        if self.frames == 0 or self.sum is None or self.sum_sq is None:
            raise DataError("CMVN: no feature frames were accumulated (all inputs too short?)")
        mean = self.sum / self.frames
        variance = (self.sum_sq / self.frames - mean.square()).clamp_min(floor)
        return GlobalCMVN(mean.float(), variance.rsqrt().float(), self.frames)


def compute_cmvn(
    audio_paths: Iterable[str | os.PathLike],
    options: FbankOptions | None = None,
    max_files: int | None = None,
) -> GlobalCMVN:
    """Statistics over the fbank features of (the first ``max_files`` of) the given files.

    A few hundred utterances estimate the statistics well; there is no need to pass a whole corpus.
    """
    options = options or FbankOptions()
    accumulator = CMVNAccumulator()
    for index, path in enumerate(audio_paths):
        if max_files is not None and index >= max_files:
            break
        samples = load_audio(path, sample_rate=options.sample_rate)
        accumulator.add(compute_fbank(samples, options))
    if accumulator.frames == 0:
        raise DataError("CMVN: no audio frames found in the given files")
    return accumulator.finalize()
