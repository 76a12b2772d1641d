"""Front-end features (fbank or Whisper log-mel) computed once and kept on disk as float16, for training.

On two CPU cores, recomputing features every epoch costs as much as a small model's forward pass,
so training reads cached features instead (the feasibility run's main lesson). Speed perturbation
changes the features, so each speed factor is cached as its own copy; noise, reverb and
band-limiting are applied when the corpus is synthesized, and SpecAugment on the cached features
at training time.

Layout: ``<store>/<speed>/shard-00000.npy`` holds the frames of a run of utterances concatenated
([frames, 80] float16) and ``shard-00000.idx.npy`` their (start, length) rows. Shards are written
atomically and the build skips finished shards, so a killed build resumes. ``store.json`` records
the manifest fingerprint and the feature options; a store built for other inputs is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgeasr.audio.augment import speed_perturb
from edgeasr.audio.frontend import Frontend, frontend_from_dict
from edgeasr.audio.io import load_audio
from edgeasr.data.manifest import Utterance
from edgeasr.errors import DataError
from edgeasr.fileio import atomic_write

SHARD_SIZE = 256


def _fingerprint(utterances: list[Utterance], options: Frontend) -> str:
    digest = hashlib.sha256(json.dumps(options.to_dict(), sort_keys=True).encode())
    for utt in utterances:
        digest.update(f"{utt.audio}\t{utt.duration:.4f}\n".encode())
    return digest.hexdigest()[:16]


def _speed_dir(speed: float) -> str:
    return f"speed-{speed:.2f}"


def _atomic_save(path: Path, array: np.ndarray) -> None:
    with atomic_write(path) as handle:
        np.save(handle, array)


def _build_shard(args: tuple) -> str:
    audio_paths, speed, options_dict, shard_path = args
    torch.set_num_threads(1)
    options = frontend_from_dict(options_dict)
    feats, index, start = [], [], 0
    for audio in audio_paths:
        samples = load_audio(audio, sample_rate=options.sample_rate)
        if speed != 1.0:
            samples = speed_perturb(samples, speed, options.sample_rate)
        frames = options.compute(samples).numpy().astype(np.float16)
        feats.append(frames)
        index.append((start, len(frames)))
        start += len(frames)
    shard = Path(shard_path)
    data = np.concatenate(feats) if feats else np.zeros((0, options.dim), np.float16)
    _atomic_save(shard.with_name(shard.name.replace(".npy", ".idx.npy")), np.asarray(index, np.int64))
    _atomic_save(shard, data)  # written last: its presence marks the shard finished
    return shard_path


@dataclass
class FeatureStore:
    """Read access to cached features: ``store.get(i, speed)`` -> float32 tensor [T, 80]."""

    root: Path
    speeds: tuple[float, ...]
    count: int
    shard_size: int = SHARD_SIZE

    def __post_init__(self) -> None:
        self._shards: dict[tuple[float, int], tuple[np.ndarray, np.ndarray]] = {}

    def _shard(self, speed: float, shard: int) -> tuple[np.ndarray, np.ndarray]:
        key = (speed, shard)
        if key not in self._shards:
            base = self.root / _speed_dir(speed)
            data = np.load(base / f"shard-{shard:05d}.npy", mmap_mode="r")
            index = np.load(base / f"shard-{shard:05d}.idx.npy")
            self._shards[key] = (data, index)
        return self._shards[key]

    def num_frames(self, item: int, speed: float = 1.0) -> int:
        _, index = self._shard(speed, item // self.shard_size)
        return int(index[item % self.shard_size][1])

    def get(self, item: int, speed: float = 1.0) -> torch.Tensor:
        if not 0 <= item < self.count:
            raise IndexError(item)
        data, index = self._shard(speed, item // self.shard_size)
        start, length = index[item % self.shard_size]
        return torch.from_numpy(np.asarray(data[start : start + length], dtype=np.float32))


def build_feature_store(
    utterances: list[Utterance],
    root: str | os.PathLike[str],
    options: Frontend | None = None,
    speeds: tuple[float, ...] = (1.0,),
    jobs: int = 1,
    progress: bool = False,
) -> FeatureStore:
    """Compute (or finish computing) cached features for ``utterances`` at each speed factor."""
    options = options or frontend_from_dict(None)
    root = Path(root)
    fingerprint = _fingerprint(utterances, options)
    meta_path = root / "store.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("fingerprint") != fingerprint:
            raise DataError(
                f"{root}: feature store was built for a different manifest or feature options; "
                "delete it or choose another directory"
            )
    root.mkdir(parents=True, exist_ok=True)
    meta_path.write_text(
        json.dumps({"fingerprint": fingerprint, "count": len(utterances), "options": options.to_dict(),
                    "shard_size": SHARD_SIZE}, indent=1)
    )
    tasks = []
    for speed in speeds:
        (root / _speed_dir(speed)).mkdir(exist_ok=True)
        for shard, begin in enumerate(range(0, len(utterances), SHARD_SIZE)):
            path = root / _speed_dir(speed) / f"shard-{shard:05d}.npy"
            if path.exists():
                continue
            audio = [u.audio for u in utterances[begin : begin + SHARD_SIZE]]
            tasks.append((audio, speed, options.to_dict(), str(path)))
    if tasks:
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(tasks), desc="features", unit="shard")
        if jobs > 1:
            with ProcessPoolExecutor(max_workers=jobs) as pool:
                for _ in pool.map(_build_shard, tasks):
                    if bar:
                        bar.update()
        else:
            for task in tasks:
                _build_shard(task)
                if bar:
                    bar.update()
        if bar:
            bar.close()
    return FeatureStore(root, tuple(speeds), len(utterances))
