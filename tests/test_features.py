"""Fbank features: torch batch path == kaldi-native-fbank; streaming == whole file, any chunking."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from audio_fixtures import run_cli, sine, speech_like

from edgeasr.audio.cmvn import CMVNAccumulator
from edgeasr.audio.features import (
    FbankOptions,
    StreamingFbank,
    TorchFbank,
    compute_fbank,
    num_frames,
)
from edgeasr.audio.io import write_wav
from edgeasr.errors import DataError

# Float32 rounding before the log is the only difference between the two implementations; it
# is relative, so it stays ~1e-4 in the log domain even for frames near digital silence
# (measured down to 1e-8 full scale); fully silent frames hit the same log floor in both.
TOLERANCE = 1e-3


def knf_features(samples: np.ndarray, options: FbankOptions | None = None) -> torch.Tensor:
    extractor = StreamingFbank(options)
    return cat([extractor.accept(samples), extractor.finish()])


def cat(pieces: list[np.ndarray]) -> torch.Tensor:
    """Streaming frames come out as numpy (the serving path has no torch)."""
    assert all(isinstance(p, np.ndarray) and p.dtype == np.float32 for p in pieces)
    return torch.from_numpy(np.concatenate(pieces))


def float64_features(samples: np.ndarray, options: FbankOptions) -> torch.Tensor:
    feats, _ = TorchFbank(options).double()(torch.from_numpy(samples.astype(np.float64))[None])
    return feats[0]


def _chirp(n: int = 16000) -> np.ndarray:
    t = np.arange(n) / 16000
    return 0.3 * np.sin(2 * np.pi * (50 + 3000 * t) * t)


def recorded_like() -> dict[str, np.ndarray]:
    """Signals with a noise floor, as every recording has, and no large DC offset."""
    rng = np.random.default_rng(7)
    return {
        "speech_like": speech_like(seconds=2.0, seed=1),
        "speech_like_2": speech_like(seconds=1.3, seed=2),
        "white_noise": (0.1 * rng.standard_normal(16000)).astype(np.float32),
        "very_quiet": (1e-6 * rng.standard_normal(8000)).astype(np.float32),
        "silence_then_tone_in_noise": np.concatenate(
            [np.zeros(4000), sine(440, 16000, 0.5) + 3e-4 * rng.standard_normal(8000)]
        ).astype(np.float32),
    }


@pytest.mark.parametrize("name", list(recorded_like()))
@pytest.mark.parametrize("snip_edges", [True, False])
def test_torch_fbank_matches_kaldi_native_fbank(name, snip_edges):
    options = FbankOptions(snip_edges=snip_edges)
    x = recorded_like()[name]
    ours = compute_fbank(x, options)
    reference = knf_features(x, options)
    assert ours.shape == reference.shape == (num_frames(len(x), options), 80)
    assert (ours - reference).abs().max().item() < TOLERANCE


def extremes() -> dict[str, tuple[np.ndarray, float]]:
    """Synthetic signals that push float32; value: the tolerance against knf (see the test)."""
    rng = np.random.default_rng(3)
    return {
        "chirp_plus_dc": ((_chirp() + 0.2).astype(np.float32), TOLERANCE),
        "chirp_over_floor": (
            (_chirp() + 1e-3 * rng.standard_normal(16000)).astype(np.float32),
            TOLERANCE,
        ),
        "silence_then_tone": (
            np.concatenate([np.zeros(4000), sine(440, 16000, 0.5)]).astype(np.float32),
            TOLERANCE,
        ),
        # kaldi-native-fbank removes DC in float32 and is itself ~0.03 off float64 in the lowest
        # bins of quiet frames here; ours removes it in float64 and stays within 1e-3.
        "speech_with_dc_offset": (
            (speech_like(seconds=2.0, seed=2) + 0.1).astype(np.float32),
            0.05,
        ),
    }


@pytest.mark.parametrize("name", list(extremes()))
def test_extreme_signals_match_float64_where_float32_can(name):
    """Noiseless tones leave mel bins > 100 dB under the frame's loudest, where float32 holds
    only rounding noise (in knf as in ours). On bins within 80 dB (18.4 nats) we match a float64
    computation to 1e-3, and kaldi-native-fbank to the listed tolerance."""
    x, knf_tolerance = extremes()[name]
    options = FbankOptions()
    ours, reference = compute_fbank(x, options), knf_features(x, options)
    exact = float64_features(x, options)
    meaningful = exact >= exact.max(dim=1, keepdim=True).values - 18.4
    assert meaningful.float().mean() > 0.2
    assert (ours.double() - exact).abs()[meaningful].max().item() < TOLERANCE
    assert (ours - reference).abs()[meaningful].max().item() < knf_tolerance


def test_other_settings_match_too():
    options = FbankOptions(
        sample_rate=8000,
        num_mel_bins=40,
        low_freq=64.0,
        high_freq=-200.0,
        preemph=0.0,
        frame_length_ms=32.0,
    )
    x = speech_like(rate=8000, seconds=1.0)
    assert (compute_fbank(x, options) - knf_features(x, options)).abs().max().item() < TOLERANCE


@pytest.mark.parametrize("snip_edges", [True, False])
def test_num_frames_agrees_with_knf(snip_edges):
    options = FbankOptions(snip_edges=snip_edges)
    for n in [0, 1, 160, 399, 400, 401, 559, 560, 561, 16000, 16079, 16080]:
        x = np.full(n, 0.1, dtype=np.float32)
        assert (
            num_frames(n, options)
            == len(knf_features(x, options))
            == len(compute_fbank(x, options))
        )


@pytest.mark.parametrize("snip_edges", [True, False])
def test_batch_with_lengths_equals_one_at_a_time(snip_edges):
    options = FbankOptions(snip_edges=snip_edges)
    waves = [speech_like(seconds=s, seed=i) for i, s in enumerate([1.0, 0.63, 0.2])]
    lengths = torch.tensor([len(w) for w in waves])
    batch = torch.zeros(3, int(lengths.max()))
    for i, w in enumerate(waves):
        batch[i, : len(w)] = torch.from_numpy(w)
    feats, feat_lengths = TorchFbank(options)(batch, lengths)
    assert feat_lengths.tolist() == [num_frames(len(w), options) for w in waves]
    for i, w in enumerate(waves):
        single = compute_fbank(w, options)
        torch.testing.assert_close(feats[i, : feat_lengths[i]], single, atol=1e-4, rtol=0)
        assert torch.count_nonzero(feats[i, feat_lengths[i] :]) == 0  # padding frames zeroed


def test_module_has_no_parameters_and_dither_only_in_training():
    module = TorchFbank(FbankOptions(dither=1.0))
    assert list(module.parameters()) == []
    x = torch.from_numpy(speech_like(seconds=0.5))[None]
    torch.manual_seed(0)
    trained, _ = module.train()(x)
    evaluated, _ = module.eval()(x)
    plain, _ = TorchFbank(FbankOptions())(x)
    assert not torch.equal(trained, evaluated)
    torch.testing.assert_close(evaluated, plain)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_streaming_equals_whole_file_for_random_chunkings(seed):
    rng = np.random.default_rng(seed)
    x = speech_like(seconds=1.5, seed=seed)
    whole = knf_features(x)
    extractor = StreamingFbank()
    pieces, start = [], 0
    while start < len(x):
        size = int(rng.choice([0, 1, 2, 7, 159, 160, 161, 399, 400, 1000, 3333]))
        pieces.append(extractor.accept(x[start : start + size]))
        start += size
    pieces.append(extractor.finish())
    streamed = cat(pieces)
    assert torch.equal(streamed, whole)
    assert extractor.frames_emitted == len(whole)


def test_streaming_snip_edges_false_and_reset():
    options = FbankOptions(snip_edges=False)
    x = speech_like(seconds=0.7)
    whole = knf_features(x, options)
    extractor = StreamingFbank(options)
    first = cat([extractor.accept(x[i : i + 333]) for i in range(0, len(x), 333)])
    last = extractor.finish()
    assert len(last) > 0  # frames that need the mirrored end wait for finish()
    assert torch.equal(torch.cat([first, torch.from_numpy(last)]), whole)
    with pytest.raises(RuntimeError):
        extractor.accept(x[:10])
    extractor.reset()
    assert torch.equal(cat([extractor.accept(x), extractor.finish()]), whole)


def test_streaming_tiny_inputs():
    extractor = StreamingFbank()
    assert extractor.accept(np.zeros(0, np.float32)).shape == (0, 80)
    assert extractor.accept(np.zeros(399, np.float32)).shape == (0, 80)
    assert extractor.accept(np.zeros(1, np.float32)).shape == (1, 80)
    assert extractor.finish().shape == (0, 80)


def test_options_round_trip_and_validation():
    options = FbankOptions(num_mel_bins=64, dither=1.0)
    assert FbankOptions.from_dict(options.to_dict()) == options
    with pytest.raises(DataError, match="unknown field"):
        FbankOptions.from_dict({**options.to_dict(), "num_mel_bin": 80})
    with pytest.raises(DataError, match="high_freq"):
        FbankOptions(low_freq=9000.0)
    assert compute_fbank(np.zeros(100, np.float32)).shape == (0, 80)


def test_features_cli_batch_stream_cmvn_and_out(tmp_path, capsys, monkeypatch):
    clip = tmp_path / "clip.wav"
    write_wav(clip, speech_like(seconds=1.0), 16000)
    out = tmp_path / "f" / "feats.npy"
    assert run_cli(["features", str(clip), "--out", str(out)], monkeypatch) == 0
    text = capsys.readouterr().out
    assert "98 frames x 80 dims" in text and "spectrogram" in text and "per-dim mean" in text
    lines = [line for line in text.splitlines() if "|" in line]
    assert len(lines) == 16 and all(len(line.split("|")[1]) == 60 for line in lines)
    saved = np.load(out)
    assert saved.shape == (98, 80) and saved.dtype == np.float32

    assert run_cli(["features", str(clip), "--chunk-ms", "37"], monkeypatch) == 0
    assert "streamed in 28 chunks of 37 ms" in capsys.readouterr().out

    accumulator = CMVNAccumulator()
    accumulator.add(torch.from_numpy(saved))
    stats = tmp_path / "cmvn.json"
    accumulator.finalize().save(stats)
    normalized = tmp_path / "n.npy"
    assert (
        run_cli(
            ["features", str(clip), "--cmvn", str(stats), "--out", str(normalized)], monkeypatch
        )
        == 0
    )
    capsys.readouterr()
    assert abs(np.load(normalized).mean()) < 1e-3

    assert run_cli(["features", str(clip), "--chunk-ms", "0"], monkeypatch) == 2
    assert "--chunk-ms" in capsys.readouterr().err
    assert run_cli(["features", str(clip), "--cmvn", str(tmp_path / "none.json")], monkeypatch) == 2
    assert "none.json" in capsys.readouterr().err
