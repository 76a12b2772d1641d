"""Atomic training checkpoints and checkpoint averaging.

A checkpoint is written to a temporary file in the same directory and renamed, so a run killed
while saving leaves the previous checkpoint intact; ``latest`` then names the newest complete one.
Checkpoints hold only tensors and plain Python values, so they load with
``torch.load(weights_only=True)``: a model file can never run code on load.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from edgeasr.fileio import atomic_save_torch

_NAME = re.compile(r"^step-(\d{8})\.pt$")


def save_checkpoint(directory: str | os.PathLike[str], step: int, state: dict, keep: int = 5) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"step-{step:08d}.pt"
    atomic_save_torch(path, state)
    for old in list_checkpoints(directory)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(directory: str | os.PathLike[str]) -> list[Path]:
    """Complete checkpoints, oldest first (temporary files of interrupted saves are ignored)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if _NAME.match(p.name)]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def load_checkpoint(path: str | os.PathLike[str]) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def latest_checkpoint(directory: str | os.PathLike[str]) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1] if found else None


def average_checkpoints(paths: list[Path]) -> dict[str, torch.Tensor]:
    """Element-wise mean of the model weights of several checkpoints (integer buffers: last one)."""
    if not paths:
        raise ValueError("no checkpoints to average")
    total: dict[str, torch.Tensor] = {}
    for path in paths:
        weights = load_checkpoint(path)["model"]
        for name, value in weights.items():
            if value.is_floating_point():
                total[name] = total.get(name, 0) + value.double()
            else:
                total[name] = value
    return {
        name: (value / len(paths)).float() if value.is_floating_point() else value
        for name, value in total.items()
    }
