"""Global CMVN: statistics, normalisation, persistence and bad statistics files."""

from __future__ import annotations

import json
import os

import pytest
import torch
from audio_fixtures import speech_like

from edgeasr.audio.cmvn import CMVNAccumulator, GlobalCMVN, compute_cmvn
from edgeasr.audio.features import compute_fbank
from edgeasr.audio.io import load_audio, write_wav
from edgeasr.errors import AudioError, DataError


def _random_feats(seed: int, frames: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    scale = torch.linspace(0.5, 4.0, 80)
    offset = torch.linspace(-3.0, 15.0, 80)
    return torch.randn(frames, 80, generator=generator) * scale + offset


def test_accumulator_matches_float64_statistics_and_normalises():
    chunks = [_random_feats(seed, frames) for seed, frames in enumerate([300, 1, 0, 517])]
    accumulator = CMVNAccumulator()
    for chunk in chunks:
        accumulator.add(chunk)
    cmvn = accumulator.finalize()
    everything = torch.cat(chunks).double()
    assert cmvn.frames == 818
    torch.testing.assert_close(cmvn.mean.double(), everything.mean(0), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        cmvn.istd.double(), 1 / everything.std(0, unbiased=False), atol=0, rtol=1e-5
    )
    normalised = cmvn.apply(torch.cat(chunks))
    assert normalised.mean(0).abs().max() < 1e-4
    assert (normalised.std(0, unbiased=False) - 1).abs().max() < 1e-4


def test_apply_on_batches_and_does_not_modify_input():
    accumulator = CMVNAccumulator()
    accumulator.add(_random_feats(0, 200))
    cmvn = accumulator.finalize()
    batch = torch.stack([_random_feats(1, 50), _random_feats(2, 50)])
    original = batch.clone()
    out = cmvn.apply(batch)
    assert out.shape == (2, 50, 80)
    assert torch.equal(batch, original)
    torch.testing.assert_close(out[1], cmvn.apply(batch[1]))
    with pytest.raises(ValueError, match="80 dims"):
        cmvn.apply(torch.zeros(3, 40))


def test_variance_floor_keeps_constant_dims_finite():
    feats = _random_feats(0, 100)
    feats[:, 5] = 3.0
    accumulator = CMVNAccumulator()
    accumulator.add(feats)
    cmvn = accumulator.finalize(floor=1e-2)
    assert cmvn.istd[5].item() == pytest.approx(10.0)
    assert torch.isfinite(cmvn.apply(feats)).all()


def test_save_load_round_trip_is_exact_and_atomic(tmp_path):
    accumulator = CMVNAccumulator()
    accumulator.add(_random_feats(3, 64))
    cmvn = accumulator.finalize()
    path = tmp_path / "stats" / "cmvn.json"
    cmvn.save(path)
    assert os.listdir(path.parent) == ["cmvn.json"]
    loaded = GlobalCMVN.load(path)
    assert torch.equal(loaded.mean, cmvn.mean) and torch.equal(loaded.istd, cmvn.istd)
    assert loaded.frames == 64
    assert GlobalCMVN.from_dict(cmvn.to_dict()).to_dict() == cmvn.to_dict()
    assert json.loads(path.read_text())["dim"] == 80


@pytest.mark.parametrize(
    "content, expect",
    [
        (None, "no such CMVN file"),
        ("{not json", "not valid JSON"),
        ('{"mean": [1, 2]}', "'mean' and 'istd'"),
        ('{"mean": [1, 2], "istd": [1]}', "equal-length"),
        ('{"mean": [1, 2], "istd": [1, 0]}', "istd > 0"),
        ('{"mean": ["a"], "istd": [1]}', "lists of numbers"),
    ],
)
def test_bad_statistics_files(tmp_path, content, expect):
    path = tmp_path / "cmvn.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=expect) as info:
        GlobalCMVN.load(path)
    assert str(path) in str(info.value)


def test_empty_accumulator_is_a_clear_error():
    accumulator = CMVNAccumulator()
    accumulator.add(torch.zeros(0, 80))
    with pytest.raises(DataError, match="no feature frames"):
        accumulator.finalize()


def test_compute_cmvn_from_files(tmp_path):
    paths = []
    for seed in range(4):
        path = tmp_path / f"u{seed}.wav"
        write_wav(path, speech_like(seconds=0.5 + 0.25 * seed, seed=seed), 16000)
        paths.append(str(path))
    cmvn = compute_cmvn(paths, max_files=3)  # the fourth file is never read
    used = torch.cat([compute_fbank(load_audio(p)) for p in paths[:3]])
    assert cmvn.frames == len(used)
    normalised = cmvn.apply(used)
    assert normalised.mean(0).abs().max() < 1e-3
    assert (normalised.std(0, unbiased=False) - 1).abs().max() < 1e-3
    with pytest.raises(AudioError, match="missing.wav"):
        compute_cmvn([str(tmp_path / "missing.wav")])
    with pytest.raises(DataError):
        compute_cmvn([])
