"""Atomic training checkpoints and checkpoint averaging.

A checkpoint is written to a temporary file in the same directory and renamed, so a run killed
while saving leaves the previous checkpoint intact; ``latest`` then names the newest complete one.
Checkpoints hold only tensors and plain Python values, so they load with
``torch.load(weights_only=True)``: a model file can never run code on load.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from edgeasr.fileio import atomic_save_torch, atomic_write_text

_NAME = re.compile(r"^step-(\d{8})\.pt$")


SCORES = "scores.json"


def save_checkpoint(
    directory: str | os.PathLike[str],
    step: int,
    state: dict,
    keep: int = 5,
    score: float | None = None,
    keep_best: int = 0,
) -> Path:
    """Write ``step-N.pt``; keep the ``keep`` newest plus the ``keep_best`` best-scored ones.

    ``score`` (lower is better, e.g. dev CER) is recorded in ``scores.json`` so that the best
    checkpoints survive pruning and can be averaged.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"step-{step:08d}.pt"
    atomic_save_torch(path, state)
    scores = read_scores(directory)
    if score is not None:
        scores[step] = float(score)
        atomic_write_text(directory / SCORES, json.dumps({str(k): v for k, v in sorted(scores.items())}))
    found = list_checkpoints(directory)
    protected = set(found[-keep:]) if keep > 0 else set(found)
    protected |= set(best_checkpoints(directory, keep_best)) if keep_best > 0 else set()
    for old in found:
        if old not in protected:
            old.unlink(missing_ok=True)
    return path


def checkpoint_step(path: Path) -> int:
    return int(_NAME.match(path.name).group(1))


def read_scores(directory: str | os.PathLike[str]) -> dict[int, float]:
    path = Path(directory) / SCORES
    if not path.exists():
        return {}
    return {int(k): float(v) for k, v in json.loads(path.read_text()).items()}


def best_checkpoints(directory: str | os.PathLike[str], count: int) -> list[Path]:
    """The ``count`` existing checkpoints with the lowest recorded score, oldest first."""
    scores = read_scores(directory)
    scored = [p for p in list_checkpoints(directory) if checkpoint_step(p) in scores]
    best = sorted(scored, key=lambda p: (scores[checkpoint_step(p)], -checkpoint_step(p)))[:count]
    return sorted(best, key=checkpoint_step)


def checkpoints_to_average(directory: str | os.PathLike[str], count: int, by: str = "last") -> list[Path]:
    """``by="last"``: the newest ``count``; ``by="best"``: the best-scored (falls back to last)."""
    if by not in ("last", "best"):
        raise ValueError(f"average_by must be 'last' or 'best', got {by!r}")
    if by == "best":
        best = best_checkpoints(directory, count)
        if best:
            return best
    return list_checkpoints(directory)[-count:]


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


def newest_intact_checkpoint(directory: str | os.PathLike[str]) -> tuple[Path | None, dict | None, list[str]]:
    """(path, state, problems): the newest checkpoint that loads, and why newer ones did not
    (a disk filled up or a copy was cut short); (None, None, problems) when none loads."""
    problems = []
    for path in reversed(list_checkpoints(directory)):
        try:
            state = load_checkpoint(path)
            if not isinstance(state, dict) or "model" not in state or "step" not in state:
                raise ValueError("not a training checkpoint")
            return path, state, problems
        except Exception as error:  # torch raises many kinds for a damaged file
            problems.append(f"{path}: unreadable ({type(error).__name__}), skipped")
    return None, None, problems


def remove_stale_temporaries(directory: str | os.PathLike[str]) -> int:
    """Delete the temporary files of saves that were interrupted (``.step-*.tmp``)."""
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    stale = [p for p in directory.iterdir() if p.name.startswith(".step-") and p.name.endswith(".tmp")]
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


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
