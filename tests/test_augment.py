"""Augmentation: seeded determinism and that each effect does what it claims, measured."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from audio_fixtures import peak_frequency, rms_db, sine, speech_like

from edgeasr.audio.augment import (
    NOISE_KINDS,
    AugmentConfig,
    active_power,
    add_noise,
    augment_waveform,
    band_limit,
    make_noise,
    noise_floor,
    reverberate,
    spec_augment,
    speed_perturb,
)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# --------------------------------------------------------------------------- spec_augment


def test_spec_augment_masks_without_touching_input():
    feats = torch.randn(200, 80, generator=torch.Generator().manual_seed(0)) + 5.0
    original = feats.clone()
    out = spec_augment(
        feats,
        rng(1),
        num_freq_masks=2,
        max_freq_width=10,
        num_time_masks=2,
        max_time_width=40,
        max_time_ratio=0.2,
    )
    assert torch.equal(feats, original)
    masked = out == 0
    full_columns = masked.all(dim=0).sum().item()
    full_rows = masked.all(dim=1).sum().item()
    assert 0 < full_columns <= 20 and 0 < full_rows <= 2 * min(40, int(0.2 * 200))
    assert torch.equal(out[~masked], feats[~masked])
    assert torch.equal(out, spec_augment(feats, rng(1)))  # same seed, same masks
    assert not torch.equal(out, spec_augment(feats, rng(2)))


def test_spec_augment_mean_fill_and_short_inputs():
    feats = torch.full((30, 80), 7.0)
    feats[:, :40] = 1.0
    out = spec_augment(feats, rng(3), num_time_masks=0, mask_value=None)
    assert set(out.unique().tolist()) <= {1.0, 4.0, 7.0}
    assert (out == 4.0).any()  # the utterance mean
    tiny = torch.ones(3, 80)
    assert spec_augment(tiny, rng(0)).shape == (3, 80)  # 20% of 3 frames: no time mask fits
    assert torch.equal(spec_augment(tiny, rng(0), num_freq_masks=0), tiny)


# --------------------------------------------------------------------------- speed


@pytest.mark.parametrize("factor", [0.9, 1.1, 1.25])
def test_speed_changes_length_and_pitch_together(factor):
    x = sine(1000, 16000, 2.0)
    y = speed_perturb(x, factor)
    assert y.dtype == np.float32
    assert abs(len(y) - len(x) / factor) <= 1
    assert abs(peak_frequency(y[800:-800], 16000) - 1000 * factor) <= 2
    assert abs(rms_db(y[800:-800]) - rms_db(x)) < 0.1


def test_speed_one_is_a_copy_and_bad_factor_fails():
    x = sine(500, 16000, 0.1)
    y = speed_perturb(x, 1.0)
    assert np.array_equal(x, y) and y is not x
    with pytest.raises(ValueError):
        speed_perturb(x, 0.0)


# --------------------------------------------------------------------------- noise


def _achieved_snr(clean: np.ndarray, noisy: np.ndarray, active: slice) -> float:
    signal_power = np.mean(clean[active].astype(np.float64) ** 2)
    noise_power = np.mean((noisy.astype(np.float64) - clean) ** 2)
    return 10 * np.log10(signal_power / noise_power)


@pytest.mark.parametrize("kind", NOISE_KINDS)
@pytest.mark.parametrize("snr_db", [0.0, 10.0, 25.0])
def test_add_noise_hits_the_snr_over_active_speech(kind, snr_db):
    # A tone for one second, then a second of digital silence: the SNR must refer to the tone.
    clean = np.concatenate([sine(300, 16000, 1.0, 0.4), np.zeros(16000, np.float32)])
    noisy = add_noise(clean, rng(5), snr_db, kind=kind)
    assert noisy.dtype == np.float32 and noisy.shape == clean.shape
    assert abs(_achieved_snr(clean, noisy, slice(0, 16000)) - snr_db) < 0.5


def test_add_noise_with_a_recording_shorter_or_longer():
    clean = speech_like(seconds=1.0)
    for length in (3000, 50000):
        recording = make_noise(rng(9), length, "pink")
        noisy = add_noise(clean, rng(1), 12.0, noise=recording)
        achieved = 10 * np.log10(
            active_power(clean) / np.mean((noisy - clean.astype(np.float64)) ** 2)
        )
        assert abs(achieved - 12.0) < 0.5
    assert np.array_equal(add_noise(np.zeros(100, np.float32), rng(0), 10.0), np.zeros(100))
    with pytest.raises(ValueError):
        add_noise(clean, rng(0), 10.0, noise=np.zeros(10))
    with pytest.raises(ValueError, match="unknown noise kind"):
        add_noise(clean, rng(0), 10.0, kind="purple")


def test_noise_colours_have_their_slopes():
    def band_power(x, low, high):
        spectrum = np.abs(np.fft.rfft(x)) ** 2
        freqs = np.fft.rfftfreq(len(x), 1 / 16000)
        return spectrum[(freqs >= low) & (freqs < high)].mean()

    slopes = {}
    for kind in ("white", "pink", "brown"):
        x = make_noise(rng(0), 64000, kind)
        slopes[kind] = 10 * np.log10(band_power(x, 2000, 4000) / band_power(x, 200, 400))
    # Power per Hz falls by 0, 10 and 20 dB per decade (200-400 Hz vs 2-4 kHz is one decade).
    assert abs(slopes["white"]) < 1.0
    assert abs(slopes["pink"] + 10) < 1.5
    assert abs(slopes["brown"] + 20) < 1.5
    babble = make_noise(rng(0), 32000, "babble")
    assert band_power(babble, 200, 1000) > 100 * band_power(babble, 6000, 8000)  # speech-shaped


# --------------------------------------------------------------------------- room, channel, floor


def test_reverb_adds_a_decaying_tail_and_keeps_length_and_peak():
    burst = np.zeros(32000, np.float32)
    burst[:4000] = sine(500, 16000, 0.25, 0.8)
    wet = reverberate(burst, rng(2), rt60_range=(0.5, 0.5))
    assert wet.shape == burst.shape and wet.dtype == np.float32
    assert np.max(np.abs(wet)) == pytest.approx(0.8, rel=1e-5)
    tail_early = rms_db(wet[4400:5600])  # 25-100 ms after the burst
    tail_late = rms_db(wet[9600:11200])  # 350-450 ms after
    assert tail_early > rms_db(burst[:4000]) - 40  # audible reverberation
    # 0.5 s RT60 is 60 dB per 0.5 s, so ~40 dB between those windows (noise tail: be lenient).
    assert 25 < tail_early - tail_late < 55
    assert np.array_equal(wet, reverberate(burst, rng(2), rt60_range=(0.5, 0.5)))


def test_band_limit_keeps_the_band_and_removes_the_rest():
    for freq, inside in [(100, False), (1000, True), (3000, True), (6000, False)]:
        x = sine(freq, 16000, 1.0)
        y = band_limit(x, 16000, 300, 3400)
        change = rms_db(y[2000:-2000]) - rms_db(x[2000:-2000])
        if inside:
            assert abs(change) < 0.2, (freq, change)
        else:
            assert change < -50, (freq, change)
    x = sine(200, 16000, 0.5)
    assert rms_db(band_limit(x, 16000, 0, 4000)[2000:-2000]) == pytest.approx(rms_db(x), abs=0.2)
    assert rms_db(band_limit(x, 16000, 1000, 8000)[2000:-2000]) < rms_db(x) - 50


def test_noise_floor_fills_digital_silence_at_the_level():
    silent = np.zeros(48000, np.float32)
    floored = noise_floor(silent, rng(0), -60.0)
    assert abs(rms_db(floored) - (-60.0)) < 0.2
    assert np.count_nonzero(floored == 0) == 0


# --------------------------------------------------------------------------- the chain


def test_augment_waveform_is_deterministic_and_bounded():
    x = speech_like(seconds=1.5)
    config = AugmentConfig(
        speed_prob=1.0,
        reverb_prob=0.5,
        noise_prob=0.7,
        band_limit_prob=0.5,
        gain_prob=1.0,
        gain_db_range=(10.0, 20.0),
    )
    outputs = [augment_waveform(x, rng(seed), config) for seed in range(12)]
    again = [augment_waveform(x, rng(seed), config) for seed in range(12)]
    for a, b in zip(outputs, again, strict=True):
        assert a.dtype == np.float32 and np.array_equal(a, b)
        assert np.max(np.abs(a)) <= 1.0
    assert len({o.tobytes() for o in outputs}) == 12
    lengths = {len(o) for o in outputs}
    assert lengths <= {len(x), round(len(x) / 0.9), round(len(x) / 1.1)} and len(lengths) > 1


def test_augment_with_everything_off_only_adds_the_floor():
    x = speech_like(seconds=0.5)
    config = AugmentConfig(
        speed_prob=0,
        reverb_prob=0,
        noise_prob=0,
        band_limit_prob=0,
        gain_prob=0,
        noise_floor_db_range=(-70.0, -70.0),
    )
    y = augment_waveform(x, rng(0), config)
    assert y.shape == x.shape
    assert abs(rms_db(y - x) - (-70.0)) < 0.3


def test_augment_config_round_trip_and_validation():
    config = AugmentConfig(noise_kinds=("pink",), snr_range_db=(0.0, 10.0))
    data = config.to_dict()
    assert data["snr_range_db"] == [0.0, 10.0]  # plain lists: YAML/JSON friendly
    assert AugmentConfig.from_dict(data) == config
    with pytest.raises(ValueError, match="unknown field"):
        AugmentConfig.from_dict({"noise_probability": 0.5})
    with pytest.raises(ValueError, match="noise_prob"):
        AugmentConfig(noise_prob=1.5)
    with pytest.raises(ValueError, match="unknown kind"):
        AugmentConfig(noise_kinds=("purple",))
