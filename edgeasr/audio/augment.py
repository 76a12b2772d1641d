"""Waveform and spectrogram augmentation for training on (mostly synthetic) speech.

Our corpus is largely TTS: clean, digitally silent between words, one microphone that never
existed. Each function here adds one thing real recordings have and TTS lacks (room echo, noise,
band-limited channels, a noise floor, other speaking rates), so the model cannot key on the
synthetic cleanliness. Every random choice is drawn from an explicit ``np.random.Generator`` so a
training run replays exactly from its seed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch

from edgeasr.audio.io import _soxr_resample

NOISE_KINDS = ("white", "pink", "brown", "babble")

# Frames used to find the "active" part of a signal when measuring its power for an SNR; frames
# more than ACTIVE_RANGE_DB below the loudest count as pauses and are left out, so an utterance
# with long silences gets the same noise level as the same words spoken without pauses.
_ACTIVE_FRAME = 320
ACTIVE_RANGE_DB = 40.0


def spec_augment(
    feats: torch.Tensor,
    rng: np.random.Generator,
    num_freq_masks: int = 2,
    max_freq_width: int = 10,
    num_time_masks: int = 2,
    max_time_width: int = 40,
    max_time_ratio: float = 0.2,
    mask_value: float | None = 0.0,
) -> torch.Tensor:
    """SpecAugment frequency and time masks on [T, F] features; the input is not modified.

    Masked cells are set to ``mask_value``: 0 suits CMVN-normalised features, where 0 is the
    global mean, so a mask reads as "average speech" rather than as a loud or silent band. Pass
    ``None`` to fill with the utterance's own mean instead (for un-normalised log-mel).
    Time masks are at most ``max_time_ratio`` of the utterance each, so short utterances keep
    most of their content.
    """
    if feats.dim() != 2:
        raise ValueError(f"spec_augment expects [T, F], got {tuple(feats.shape)}")
    out = feats.clone()
    frames, dims = out.shape
    fill = float(feats.mean()) if mask_value is None else float(mask_value)
    for _ in range(num_freq_masks):
        width = int(rng.integers(0, min(max_freq_width, dims) + 1))
        start = int(rng.integers(0, dims - width + 1))
        out[:, start : start + width] = fill
    time_limit = min(max_time_width, int(max_time_ratio * frames))
    for _ in range(num_time_masks):
        width = int(rng.integers(0, max(time_limit, 0) + 1))
        start = int(rng.integers(0, frames - width + 1))
        out[start : start + width, :] = fill
    return out


def speed_perturb(samples: np.ndarray, factor: float, sample_rate: int = 16000) -> np.ndarray:
    """sox ``speed``: tempo and pitch change together; ``factor`` 1.1 gives 1/1.1 the length.

    The audio is reinterpreted as recorded at ``sample_rate * factor`` and resampled back to
    ``sample_rate`` with the band-limited resampler, so speeding up cannot alias.
    """
    if not factor > 0:
        raise ValueError(f"speed factor must be positive, got {factor}")
    samples = np.asarray(samples, dtype=np.float32)
    if factor == 1.0:
        return samples.copy()
    return _soxr_resample(samples, sample_rate * factor, sample_rate)


def active_power(samples: np.ndarray) -> float:
    """Mean power over the frames within ``ACTIVE_RANGE_DB`` of the loudest (0.0 if silent)."""
    x = np.asarray(samples, dtype=np.float64).reshape(-1)
    if x.size == 0:
        return 0.0
    count = max(1, math.ceil(x.size / _ACTIVE_FRAME))
    padded = np.zeros(count * _ACTIVE_FRAME)
    padded[: x.size] = x
    frame_energy = np.square(padded).reshape(count, _ACTIVE_FRAME).sum(axis=1)
    lengths = np.full(count, _ACTIVE_FRAME, dtype=np.float64)
    lengths[-1] = x.size - (count - 1) * _ACTIVE_FRAME
    frame_power = frame_energy / lengths
    peak = frame_power.max()
    if peak <= 0:
        return 0.0
    active = frame_power >= peak * 10.0 ** (-ACTIVE_RANGE_DB / 10.0)
    return float(frame_energy[active].sum() / lengths[active].sum())


def _shaped_noise(
    rng: np.random.Generator, n: int, exponent: float, sample_rate: int
) -> np.ndarray:
    """Gaussian noise with a 1/f**exponent power spectrum (flat below 20 Hz, no DC)."""
    white = rng.standard_normal(n)
    if exponent == 0:
        return white
    spectrum = np.fft.rfft(white)
    freqs = np.fft.rfftfreq(n, d=1.0 / sample_rate)
    freqs = np.maximum(freqs, 20.0)
    spectrum *= freqs ** (-exponent / 2.0)
    spectrum[0] = 0.0
    return np.fft.irfft(spectrum, n=n)


def _smooth_noise(
    rng: np.random.Generator, n: int, cutoff_hz: float, sample_rate: int
) -> np.ndarray:
    """Slowly varying random curve (low-passed noise), unit RMS."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    spectrum[np.fft.rfftfreq(n, d=1.0 / sample_rate) > cutoff_hz] = 0.0
    curve = np.fft.irfft(spectrum, n=n)
    rms = np.sqrt(np.mean(curve**2))
    return curve / rms if rms > 0 else curve


def _babble(rng: np.random.Generator, n: int, sample_rate: int, talkers: int = 6) -> np.ndarray:
    """Several synthetic "talkers": voiced buzz with drifting pitch, formant-like colouring and
    syllable-rate (~4 Hz) on/off modulation. Speech-like in spectrum and rhythm, free of words."""
    total = np.zeros(n)
    freqs = np.fft.rfftfreq(n, d=1.0 / sample_rate)
    for _ in range(talkers):
        f0 = rng.uniform(90.0, 240.0) * (1.0 + 0.08 * _smooth_noise(rng, n, 2.0, sample_rate))
        phase = np.cumsum(f0) / sample_rate
        buzz = 2.0 * (phase % 1.0) - 1.0  # sawtooth: all harmonics, falling at 6 dB/octave
        envelope = np.zeros_like(freqs)
        for centre, width in (
            (rng.uniform(300, 900), 150),
            (rng.uniform(900, 2300), 250),
            (rng.uniform(2300, 3400), 350),
        ):
            envelope += np.exp(-0.5 * ((freqs - centre) / width) ** 2)
        voice = np.fft.irfft(np.fft.rfft(buzz) * (0.05 + envelope), n=n)
        syllables = np.clip(_smooth_noise(rng, n, 4.0, sample_rate) + 0.3, 0.0, None)
        voice *= syllables
        rms = np.sqrt(np.mean(voice**2))
        if rms > 0:
            total += voice / rms
    return total


def make_noise(
    rng: np.random.Generator, num_samples: int, kind: str = "white", sample_rate: int = 16000
) -> np.ndarray:
    """Synthetic noise of a named colour (unit-free; ``add_noise`` sets its level)."""
    if kind == "white":
        return rng.standard_normal(num_samples)
    if kind == "pink":
        return _shaped_noise(rng, num_samples, 1.0, sample_rate)
    if kind == "brown":
        return _shaped_noise(rng, num_samples, 2.0, sample_rate)
    if kind == "babble":
        return _babble(rng, num_samples, sample_rate)
    raise ValueError(f"unknown noise kind {kind!r}; choose from {', '.join(NOISE_KINDS)}")


def _fit_length(rng: np.random.Generator, noise: np.ndarray, n: int) -> np.ndarray:
    """A random-offset crop of ``noise`` (looped if shorter) of exactly ``n`` samples."""
    if len(noise) >= n:
        start = int(rng.integers(0, len(noise) - n + 1))
        return noise[start : start + n]
    start = int(rng.integers(0, len(noise)))
    return np.resize(np.roll(noise, -start), n)


def add_noise(
    samples: np.ndarray,
    rng: np.random.Generator,
    snr_db: float,
    noise: np.ndarray | None = None,
    kind: str = "white",
    sample_rate: int = 16000,
) -> np.ndarray:
    """Add noise at exactly ``snr_db``: active-speech power (see ``active_power``) over the
    noise's mean power. ``noise`` (a recording) is cropped or looped at a random offset; without
    it, synthetic noise of ``kind`` is generated. A silent input is returned unchanged, since no
    SNR is defined for it."""
    x = np.asarray(samples, dtype=np.float32)
    signal_power = active_power(x)
    if x.size == 0 or signal_power <= 0:
        return x.copy()
    if noise is None:
        noise_part = make_noise(rng, x.size, kind, sample_rate)
    else:
        noise = np.asarray(noise, dtype=np.float64).reshape(-1)
        if noise.size == 0:
            raise ValueError("noise recording is empty")
        noise_part = _fit_length(rng, noise, x.size).astype(np.float64)
    noise_power = float(np.mean(np.square(noise_part)))
    if noise_power <= 0:
        raise ValueError("noise is silent; cannot reach an SNR with it")
    scale = math.sqrt(signal_power / (noise_power * 10.0 ** (snr_db / 10.0)))
    return (x + scale * noise_part).astype(np.float32)


def _fft_convolve(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    size = x.size + h.size - 1
    n_fft = 1 << (size - 1).bit_length()
    return np.fft.irfft(np.fft.rfft(x, n_fft) * np.fft.rfft(h, n_fft), n_fft)[:size]


def room_impulse_response(
    rng: np.random.Generator, sample_rate: int, rt60: float, drr_db: float
) -> np.ndarray:
    """A direct-path impulse followed, after a short pre-delay, by a noise tail decaying 60 dB in
    ``rt60`` seconds (a diffuse-field model), scaled to the given direct-to-reverberant ratio."""
    length = max(int(rt60 * sample_rate), 16)
    t = np.arange(length) / sample_rate
    tail = rng.standard_normal(length) * np.exp(-3.0 * math.log(10.0) * t / rt60)
    predelay = int(rng.uniform(0.002, 0.01) * sample_rate)
    tail[: predelay + 1] = 0.0
    tail_energy = float(np.sum(tail**2))
    rir = np.zeros(length)
    rir[0] = 1.0
    if tail_energy > 0:
        rir += tail * math.sqrt(10.0 ** (-drr_db / 10.0) / tail_energy)
    return rir


def reverberate(
    samples: np.ndarray,
    rng: np.random.Generator,
    sample_rate: int = 16000,
    rt60_range: tuple[float, float] = (0.2, 0.8),
    drr_range_db: tuple[float, float] = (0.0, 12.0),
) -> np.ndarray:
    """Convolve with a simulated room; same length out, scaled back to the input's peak so that
    reverb changes the sound of the room, not the recording level (and cannot clip)."""
    x = np.asarray(samples, dtype=np.float32)
    if x.size == 0:
        return x.copy()
    rt60 = float(rng.uniform(*rt60_range))
    drr_db = float(rng.uniform(*drr_range_db))
    rir = room_impulse_response(rng, sample_rate, rt60, drr_db)
    y = _fft_convolve(x.astype(np.float64), rir)[: x.size]
    peak_in, peak_out = float(np.max(np.abs(x))), float(np.max(np.abs(y)))
    if peak_out > 0:
        y *= peak_in / peak_out
    return y.astype(np.float32)


def _lowpass_kernel(cutoff_hz: float, sample_rate: int, taps: int) -> np.ndarray:
    m = np.arange(taps) - (taps - 1) / 2
    fc = cutoff_hz / sample_rate
    kernel = 2 * fc * np.sinc(2 * fc * m) * np.blackman(taps)
    return kernel / kernel.sum()


def band_limit(
    samples: np.ndarray,
    sample_rate: int,
    low_hz: float,
    high_hz: float,
    transition_hz: float = 150.0,
) -> np.ndarray:
    """Linear-phase band-pass (Blackman windowed-sinc FIR, ~74 dB stopband), delay-compensated.

    ``low_hz <= 0`` gives a low-pass, ``high_hz >= Nyquist`` a high-pass; e.g. 300-3400 Hz is a
    telephone channel. The filter is ``transition_hz`` wide at each edge.
    """
    x = np.asarray(samples, dtype=np.float32)
    nyquist = sample_rate / 2
    if not low_hz < high_hz:
        raise ValueError(f"need low_hz < high_hz, got {low_hz} and {high_hz}")
    if x.size == 0 or (low_hz <= 0 and high_hz >= nyquist):
        return x.copy()
    taps = int(math.ceil(5.5 * sample_rate / transition_hz)) | 1
    delay = (taps - 1) // 2
    if high_hz < nyquist:
        kernel = _lowpass_kernel(high_hz, sample_rate, taps)
    else:
        kernel = np.zeros(taps)
        kernel[delay] = 1.0  # all-pass
    if low_hz > 0:
        kernel = kernel - _lowpass_kernel(low_hz, sample_rate, taps)
    y = _fft_convolve(x.astype(np.float64), kernel)[delay : delay + x.size]
    return y.astype(np.float32)


def noise_floor(
    samples: np.ndarray, rng: np.random.Generator, level_db: float = -60.0
) -> np.ndarray:
    """Add white noise at ``level_db`` dBFS RMS.

    TTS output has digitally silent gaps (exact zeros) that no microphone produces: their log-mel
    frames sit at the log floor, far from anything seen at test time. A faint floor removes that
    give-away.
    """
    x = np.asarray(samples, dtype=np.float32)
    level = 10.0 ** (level_db / 20.0)
    return (x + level * rng.standard_normal(x.size)).astype(np.float32)


@dataclass
class AugmentConfig:
    """Probabilities and ranges for ``augment_waveform`` (stored in training configs)."""

    speed_prob: float = 1.0
    speed_factors: tuple[float, ...] = (0.9, 1.0, 1.1)
    reverb_prob: float = 0.3
    rt60_range: tuple[float, float] = (0.2, 0.8)
    drr_range_db: tuple[float, float] = (0.0, 12.0)
    noise_prob: float = 0.5
    snr_range_db: tuple[float, float] = (5.0, 30.0)
    noise_kinds: tuple[str, ...] = NOISE_KINDS
    band_limit_prob: float = 0.1
    band_low_hz_range: tuple[float, float] = (200.0, 400.0)
    band_high_hz_range: tuple[float, float] = (3000.0, 3800.0)
    noise_floor_db_range: tuple[float, float] = (-75.0, -55.0)
    gain_prob: float = 0.5
    gain_db_range: tuple[float, float] = (-10.0, 6.0)

    def __post_init__(self) -> None:
        for name in ("speed_prob", "reverb_prob", "noise_prob", "band_limit_prob", "gain_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"AugmentConfig.{name} must be in [0, 1], got {value}")
        for kind in self.noise_kinds:
            if kind not in NOISE_KINDS:
                raise ValueError(f"AugmentConfig.noise_kinds: unknown kind {kind!r}")
        if not self.speed_factors or min(self.speed_factors) <= 0:
            raise ValueError("AugmentConfig.speed_factors must be non-empty and positive")
        # YAML/JSON give lists; keep tuples so configs compare and hash consistently.
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                setattr(self, f.name, tuple(value))

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AugmentConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"AugmentConfig: unknown field(s) {', '.join(unknown)}")
        return cls(**data)


def augment_waveform(
    samples: np.ndarray,
    rng: np.random.Generator,
    config: AugmentConfig | None = None,
    sample_rate: int = 16000,
) -> np.ndarray:
    """Apply the configured chain in the order sound meets it on the way to a recorder.

    speaker rate (speed) -> room (reverb) -> background (noise) -> channel (band limit) ->
    microphone/ADC (noise floor) -> recording level (gain). The result is scaled down if its peak
    would exceed full scale, never hard-clipped. The same seed gives the same output.
    """
    config = config or AugmentConfig()
    x = np.asarray(samples, dtype=np.float32)
    if rng.random() < config.speed_prob:
        factor = float(config.speed_factors[int(rng.integers(len(config.speed_factors)))])
        x = speed_perturb(x, factor, sample_rate)
    if rng.random() < config.reverb_prob:
        x = reverberate(x, rng, sample_rate, config.rt60_range, config.drr_range_db)
    if rng.random() < config.noise_prob and config.noise_kinds:
        kind = config.noise_kinds[int(rng.integers(len(config.noise_kinds)))]
        snr = float(rng.uniform(*config.snr_range_db))
        x = add_noise(x, rng, snr, kind=kind, sample_rate=sample_rate)
    if rng.random() < config.band_limit_prob:
        low = float(rng.uniform(*config.band_low_hz_range))
        high = min(float(rng.uniform(*config.band_high_hz_range)), sample_rate / 2 - 100.0)
        x = band_limit(x, sample_rate, low, high)
    x = noise_floor(x, rng, float(rng.uniform(*config.noise_floor_db_range)))
    if rng.random() < config.gain_prob:
        x = x * np.float32(10.0 ** (float(rng.uniform(*config.gain_db_range)) / 20.0))
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak > 1.0:
        x = x / np.float32(peak)
    return x.astype(np.float32)
