"""Duration-bucketed batching: budget, coverage, determinism, epochs and DDP sharding."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from edgeasr.data.batching import DurationBatchSampler, make_batches
from edgeasr.errors import DataError

RNG = np.random.default_rng(1234)
DURATIONS = RNG.uniform(0.5, 15.0, size=500).round(3).tolist()
MAX_FRAMES = 6000  # 60 s of padded audio at 10 ms frames


def _frames(d: float) -> int:
    return max(1, math.ceil(d / 0.01 - 1e-6))


def _check_partition(batches: list[list[int]], n: int) -> None:
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(n))
    assert all(batch for batch in batches)


def _padded(batch: list[int], durations: list[float]) -> int:
    return len(batch) * max(_frames(durations[i]) for i in batch)


@pytest.mark.parametrize("shuffle", [True, False])
def test_every_index_once_within_budget(shuffle: bool) -> None:
    batches = make_batches(DURATIONS, max_frames=MAX_FRAMES, shuffle=shuffle, seed=1)
    _check_partition(batches, len(DURATIONS))
    assert all(_padded(b, DURATIONS) <= MAX_FRAMES for b in batches)
    # Packing is tight: merging any two neighbours would break the budget (for the sorted order).
    if not shuffle:
        for a, b in zip(batches, batches[1:]):
            assert _padded(a + b, DURATIONS) > MAX_FRAMES


def test_padding_waste_is_small() -> None:
    batches = make_batches(DURATIONS, max_frames=MAX_FRAMES, seed=0)
    real = sum(_frames(d) for d in DURATIONS)
    padded = sum(_padded(b, DURATIONS) for b in batches)
    assert real / padded > 0.85  # jitter costs a little padding; random batching would be ~0.55
    naive = [list(range(i, min(i + 8, 500))) for i in range(0, 500, 8)]
    assert real / sum(_padded(b, DURATIONS) for b in naive) < 0.75


def test_short_items_share_big_batches_long_items_small_ones() -> None:
    durations = [1.0] * 100 + [10.0] * 10
    batches = make_batches(durations, max_frames=2000, shuffle=False)
    sizes = {len(b): {durations[i] for i in b} for b in batches}
    assert sizes[20] == {1.0}
    assert sizes[2] == {10.0}
    assert len(batches) == 5 + 5


def test_overlong_items_go_alone_with_a_warning() -> None:
    durations = [1.0, 1.0, 30.0, 1.0, 45.0]
    with pytest.warns(UserWarning, match=r"2 utterance\(s\) are longer than max_frames=1000"):
        batches = make_batches(durations, max_frames=1000, shuffle=False)
    assert [2] in batches and [4] in batches
    _check_partition(batches, 5)
    assert sorted(batches, key=len)[-1] == [0, 1, 3]


def test_max_batch_size() -> None:
    batches = make_batches([0.1] * 25, max_frames=10**6, max_batch_size=4, shuffle=False)
    assert [len(b) for b in batches] == [4, 4, 4, 4, 4, 4, 1]


def test_sort_within() -> None:
    durations = [3.0, 1.0, 2.0, 1.5]
    (desc,) = make_batches(durations, max_frames=10**6, shuffle=False)
    assert desc == [0, 2, 3, 1]
    (asc,) = make_batches(durations, max_frames=10**6, shuffle=False, sort_within=False)
    assert asc == [1, 3, 2, 0]


def test_deterministic_for_a_seed_and_varied_across_seeds() -> None:
    a = make_batches(DURATIONS, max_frames=MAX_FRAMES, seed=5)
    b = make_batches(DURATIONS, max_frames=MAX_FRAMES, seed=5)
    c = make_batches(DURATIONS, max_frames=MAX_FRAMES, seed=6)
    assert a == b
    assert a != c
    # Not just a reordering of the same batches: jitter changes which items go together.
    assert {tuple(sorted(x)) for x in a} != {tuple(sorted(x)) for x in c}
    plain = make_batches(DURATIONS, max_frames=MAX_FRAMES, shuffle=False, seed=1)
    assert plain == make_batches(DURATIONS, max_frames=MAX_FRAMES, shuffle=False, seed=2)


def test_exact_frame_counts() -> None:
    # 1.0 s is 100 frames, not 101 from float rounding: four of them fill 400 frames exactly.
    batches = make_batches([1.0] * 8, max_frames=400, shuffle=False)
    assert [len(b) for b in batches] == [4, 4]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_frames": 0},
        {"max_frames": 1.5},
        {"max_frames": 100, "frame_shift": 0},
        {"max_frames": 100, "max_batch_size": 0},
        {"max_frames": 100, "jitter": 1.0},
    ],
)
def test_bad_settings(kwargs: dict) -> None:
    with pytest.raises(DataError):
        make_batches([1.0], **kwargs)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_bad_durations(bad: float) -> None:
    with pytest.raises(DataError, match="item 1"):
        make_batches([1.0, bad], max_frames=1000)


def test_empty() -> None:
    assert make_batches([], max_frames=100) == []
    assert len(DurationBatchSampler([], 100)) == 0


def test_sampler_epochs() -> None:
    sampler = DurationBatchSampler(DURATIONS, MAX_FRAMES, seed=3)
    first = list(sampler)
    assert first == list(sampler)  # same epoch, same batches
    assert len(sampler) == len(first)
    _check_partition(first, len(DURATIONS))
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first and len(sampler) == len(second)
    _check_partition(second, len(DURATIONS))
    again = DurationBatchSampler(DURATIONS, MAX_FRAMES, seed=3)
    again.set_epoch(1)
    assert list(again) == second


def test_sampler_distributed_shards() -> None:
    replicas = 3
    for epoch in range(3):
        full = DurationBatchSampler(DURATIONS, MAX_FRAMES, seed=9, num_replicas=1, rank=0)
        full.set_epoch(epoch)
        all_batches = list(full)
        shards = []
        for rank in range(replicas):
            sampler = DurationBatchSampler(DURATIONS, MAX_FRAMES, seed=9,
                                           num_replicas=replicas, rank=rank)
            sampler.set_epoch(epoch)
            shards.append(list(sampler))
            assert len(sampler) == len(shards[-1])
        counts = {len(s) for s in shards}
        assert counts == {len(all_batches) // replicas}  # every rank runs the same steps
        seen = [i for shard in shards for batch in shard for i in batch]
        assert len(seen) == len(set(seen))  # disjoint
        used = {tuple(b) for shard in shards for b in shard}
        assert used <= {tuple(b) for b in all_batches}
        assert len(all_batches) - len(used) == len(all_batches) % replicas


def test_sampler_rejects_bad_rank() -> None:
    with pytest.raises(DataError, match="rank"):
        DurationBatchSampler(DURATIONS, MAX_FRAMES, num_replicas=2, rank=2)


def test_sampler_warns_once_and_counts_overlong() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sampler = DurationBatchSampler([1.0, 50.0, 60.0], 1000)
        for epoch in range(3):
            sampler.set_epoch(epoch)
            list(sampler)
    assert sampler.overlong == 2
    assert len(caught) == 1


class _Lengths(Dataset):
    def __init__(self, durations: list[float]) -> None:
        self.durations = durations

    def __len__(self) -> int:
        return len(self.durations)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.full((_frames(self.durations[i]),), float(i))


def _pad(items: list[torch.Tensor]) -> torch.Tensor:
    return torch.nn.utils.rnn.pad_sequence(items, batch_first=True)


def test_works_as_a_dataloader_batch_sampler() -> None:
    durations = DURATIONS[:120]
    sampler = DurationBatchSampler(durations, MAX_FRAMES, seed=0)
    loader = DataLoader(_Lengths(durations), batch_sampler=sampler, collate_fn=_pad)
    seen = []
    for batch in loader:
        assert batch.numel() <= MAX_FRAMES
        seen += batch[:, 0].long().tolist()
    assert sorted(seen) == list(range(len(durations)))
    assert len(loader) == len(sampler)
