"""Synthetic test signals and a CLI runner for the audio tests (no TTS, no files from outside)."""

from __future__ import annotations

import importlib.util

import numpy as np


def sine(freq: float, rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(rate * seconds))) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def speech_like(rate: int = 16000, seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    """Voiced buzz with a gliding pitch, syllable-rate amplitude modulation, a quiet pause and a
    little noise: covers loud, quiet and near-silent frames like real speech does."""
    rng = np.random.default_rng(seed)
    n = int(rate * seconds)
    t = np.arange(n) / rate
    f0 = 120 + 25 * np.sin(2 * np.pi * 0.6 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 30))
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 3.7 * t)
    x = 0.25 * voiced / np.abs(voiced).max() * envelope + 0.003 * rng.standard_normal(n)
    pause = slice(n // 2, min(n, n // 2 + rate // 4))
    x[pause] = 1e-4 * rng.standard_normal(pause.stop - pause.start)
    return x.astype(np.float32)


def rms_db(x: np.ndarray) -> float:
    return 10 * np.log10(np.mean(np.asarray(x, dtype=np.float64) ** 2))


def peak_frequency(x: np.ndarray, rate: int) -> float:
    """Frequency of the largest Hann-windowed FFT bin."""
    x = np.asarray(x, dtype=np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1.0 / rate)[np.argmax(spectrum)])


def run_cli(argv: list[str], monkeypatch) -> int:
    """``edgeasr.cli.main`` with every command module that exists today.

    Other command modules are written in parallel; loading only those present keeps these tests
    about the audio commands while still going through the real entry point.
    """
    import edgeasr.cli as cli

    present = [
        name
        for name in cli.COMMAND_MODULES
        if importlib.util.find_spec(f"edgeasr.commands.{name}") is not None
    ]
    monkeypatch.setattr(cli, "COMMAND_MODULES", present)
    return cli.main(argv)
