"""Build a speech corpus by synthesis: ``edgeasr corpus synth --hours H --out DIR``.

The corpus trains models that are judged on real recordings, so the plan aims at variety the
recognizer cannot latch onto: many engines and voices, random speaking rate and pitch, rooms,
noises and channels, and train/dev/test splits that share neither voices nor sentences.

Three properties shape the code:

- **Deterministic.** Job ``i`` of the stream (split, engine) -- its sentence, voice, rate, pitch and
  augmentation -- is a pure function of the seed, the options, the engines' voice lists and the
  sentence list (``CorpusPlan.job``); the hours only decide how long each stream runs. Each stream takes the *shortest prefix* of its job sequence
  whose real durations reach its share of the hours, so the corpus does not depend on timing,
  worker count or interruptions.
- **Resumable.** Each utterance is ``DIR/wav/<split>/<utt_id>.wav``, written atomically, and the
  utt id ends in a hash of the job's parameters: a WAV that exists is exactly the job's output and
  is never synthesized again. A killed run resumes to the identical corpus.
- **Parallel.** Chunks of jobs (one engine per chunk) go to worker processes that keep one engine
  instance each; slow engines are scheduled first so they do not form the tail.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import sys
import time
from collections import defaultdict
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edgeasr.audio.augment import add_noise, band_limit, noise_floor, reverberate
from edgeasr.audio.io import audio_duration, resample, write_wav
from edgeasr.data.corpus.base import Engine, Voice, engine_names, get_engine
from edgeasr.data.corpus.texts import Sentence, load_sentences, split_texts
from edgeasr.data.manifest import Utterance, write_manifest
from edgeasr.errors import DataError, EngineError

SPLITS = ("train", "dev", "test")
#: Share of the hours per engine: natural voices first. Neural voices sound most like people;
#: festival's HTS voice and flite's ARCTIC voices next; espeak-ng is robotic but cheap accent and
#: rate variety. Engines not listed get 1.0.
DEFAULT_ENGINE_WEIGHTS = {
    "kokoro": 3.0,
    "hibari": 2.0,
    "piper": 1.5,
    "festival": 1.5,
    "flite": 1.5,
    "espeak": 1.0,
}
#: Held-out splits get at least this many hours each by default (or 20% of a tiny corpus).
MIN_HELDOUT_HOURS = 0.05
#: The text split is made with a fixed seed, so corpora built with different seeds still share one
#: test text set and their scores compare.
TEXT_SPLIT_SEED = 0
TEXT_HELDOUT_FRAC = 0.05
LOG_NAME = ".synth-log.jsonl"
#: Noise kinds: the augment module's synthetic colours and babble, plus "speech": time-reversed
#: copies of TTS speech (the utterance itself), speech-like in spectrum and rhythm but wordless.
NOISE_KINDS = ("white", "pink", "brown", "babble", "speech")
#: Jobs per block of a batching engine (one with ``synthesize_many``): one rate and seed per block.
BATCH_BLOCK = 16


@dataclass(frozen=True)
class AugmentProfile:
    """Probabilities and ranges of the per-utterance acoustic conditions of one split."""

    noise_prob: float
    snr_db: tuple[float, float]
    reverb_prob: float
    rt60: tuple[float, float]
    drr_db: tuple[float, float]
    band_prob: float
    peak_db: tuple[float, float]


#: Training sees harsh conditions; dev/test milder ones, so their scores mostly measure voices and
#: texts the model has not heard rather than how much noise was drawn.
TRAIN_PROFILE = AugmentProfile(0.5, (5.0, 30.0), 0.3, (0.2, 0.8), (0.0, 12.0), 0.15, (-24.0, -1.0))
HELDOUT_PROFILE = AugmentProfile(0.3, (15.0, 30.0), 0.15, (0.2, 0.5), (3.0, 12.0), 0.08, (-12.0, -1.0))


@dataclass
class SynthOptions:
    """Everything that decides the corpus (the output directory and worker count aside)."""

    hours: float
    out_dir: Path
    engines: list[str] | None = None
    engine_weights: dict[str, float] = field(default_factory=dict)
    seed: int = 0
    jobs: int = 0  # 0: every core
    dev_hours: float | None = None
    test_hours: float | None = None
    dev_frac: float = 0.05
    test_frac: float = 0.05
    augment: bool = True
    sample_rate: int = 16000
    skip_missing: bool = False
    heldout_engines: list[str] = field(default_factory=list)
    rate_range: tuple[float, float] = (0.8, 1.25)
    pitch_range: tuple[float, float] = (0.85, 1.15)
    heldout_voice_frac: float = 0.1
    min_words: int = 3
    max_words: int = 30
    #: the splits to synthesize (default all): ``("dev", "test")`` builds only a corpus's held-out
    #: sets, identical to those of the whole build (every job is a pure function of its stream
    #: and index), so benchmarks can be reproduced without hours of training audio
    splits: tuple[str, ...] = SPLITS

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        if not self.hours > 0:
            raise DataError(f"--hours must be positive, got {self.hours}")
        for name in ("dev_hours", "test_hours"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise DataError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
        if not 0 <= self.dev_frac < 1 or not 0 <= self.test_frac < 1:
            raise DataError("--dev-frac and --test-frac must be in [0, 1)")
        low, high = self.rate_range
        if not 0.3 <= low <= high <= 3.0:
            raise DataError(f"rate range must satisfy 0.3 <= low <= high <= 3, got {self.rate_range}")
        if self.sample_rate < 8000:
            raise DataError(f"--sample-rate must be at least 8000 Hz, got {self.sample_rate}")
        unknown = [split for split in self.splits if split not in SPLITS]
        if unknown or not self.splits:
            raise DataError(f"--splits must name some of {', '.join(SPLITS)}, got {', '.join(self.splits) or 'none'}")
        for name, weight in self.engine_weights.items():
            if not weight >= 0:
                raise DataError(f"--engine-weights: weight of '{name}' must be >= 0, got {weight}")

    def split_hours(self) -> dict[str, float]:
        """Hours per split: ``hours`` is the whole corpus; dev and test come out of it."""
        def heldout(explicit: float | None, frac: float) -> float:
            if explicit is not None:
                return explicit
            return max(frac * self.hours, min(MIN_HELDOUT_HOURS, 0.2 * self.hours)) if frac else 0.0

        dev = heldout(self.dev_hours, self.dev_frac)
        test = heldout(self.test_hours, self.test_frac)
        train = self.hours - dev - test
        if train <= 0:
            raise DataError(
                f"dev ({dev:g} h) and test ({test:g} h) leave nothing of --hours {self.hours:g} for training"
            )
        return {"train": train, "dev": dev, "test": test}

    def fingerprint(self) -> dict[str, Any]:
        """The options that shape jobs (not hours, paths or workers): part of every job hash."""
        return {
            "seed": self.seed,
            "augment": self.augment,
            "sample_rate": self.sample_rate,
            "rate_range": list(self.rate_range),
            "pitch_range": list(self.pitch_range),
        }


@dataclass(frozen=True)
class Job:
    """One utterance to synthesize: every parameter that decides its audio."""

    utt_id: str
    split: str
    engine: str
    index: int
    voice: Voice
    text: str
    normalized: str
    source: str
    rate: float
    pitch: float
    seed: int
    lead_s: float
    trail_s: float
    peak_db: float
    floor_db: float
    noise: str | None = None
    snr_db: float | None = None
    rt60: float | None = None
    drr_db: float | None = None
    band: tuple[float, float] | None = None

    def wav_path(self, out_dir: Path) -> Path:
        return Path(out_dir) / "wav" / self.split / f"{self.utt_id}.wav"

    def extra(self) -> dict[str, Any]:
        """The manifest line's extra keys: every parameter, so a model's errors can be traced."""
        return {
            "id": self.utt_id,
            "engine": self.engine,
            "voice": self.voice.id,
            "accent": self.voice.accent,
            "gender": self.voice.gender,
            "rate": self.rate,
            "pitch": self.pitch,
            "source": self.source,
            "prompt": self.text,
            "noise": self.noise,
            "snr": self.snr_db,
            "reverb": None if self.rt60 is None else {"rt60": self.rt60, "drr_db": self.drr_db},
            "band": list(self.band) if self.band else None,
            "peak_db": self.peak_db,
            "floor_db": self.floor_db,
            "lead_s": self.lead_s,
            "trail_s": self.trail_s,
            "seed": self.seed,
        }


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts (stable across processes, unlike ``hash``)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _bucket(*parts: object) -> float:
    return derive_seed(*parts) / 2.0**63


def speaker_key(voice: Voice) -> str:
    """The person behind a voice: voices sharing it always go to the same split."""
    return str(voice.params.get("speaker") or voice.id)


def parse_weights(text: str | None) -> dict[str, float]:
    """``"kokoro=3,hibari=2"`` -> {"kokoro": 3.0, "hibari": 2.0}."""
    weights: dict[str, float] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            weights[name.strip()] = float(value)
        except ValueError:
            raise DataError(f"--engine-weights: expected NAME=NUMBER, got '{item.strip()}'") from None
    return weights


def parse_list(text: str | None) -> list[str]:
    return [item.strip() for item in (text or "").split(",") if item.strip()]


# --- engines and voices --------------------------------------------------------------------------


@dataclass
class EngineSelection:
    """Engines that will speak, and those requested but not usable (with the reason)."""

    engines: dict[str, Engine]
    voices: dict[str, list[Voice]]
    skipped: dict[str, str]


def select_engines(options: SynthOptions) -> EngineSelection:
    """Check every requested engine up front: a missing engine fails the run (clear message)
    unless ``skip_missing``, where it is reported and left out."""
    names = options.engines or engine_names()
    unknown = [name for name in names if name not in engine_names()]
    if unknown:
        raise EngineError(
            f"unknown TTS engine(s) {', '.join(unknown)} (known: {', '.join(engine_names())})"
        )
    for name in options.heldout_engines:
        if name not in names:
            raise EngineError(f"--heldout-engines: '{name}' is not among the engines used ({', '.join(names)})")
    engines: dict[str, Engine] = {}
    voices: dict[str, list[Voice]] = {}
    skipped: dict[str, str] = {}
    for name in names:
        engine = get_engine(name)
        ok, reason = engine.available()
        if ok:
            try:
                engine_voices = engine.voices()
            except EngineError as error:
                ok, reason = False, str(error)
            else:
                if not engine_voices:
                    ok, reason = False, f"{name}: no voices"
        if ok:
            engines[name], voices[name] = engine, engine_voices
        else:
            skipped[name] = reason
    if skipped and not options.skip_missing:
        details = "; ".join(skipped.values())
        raise EngineError(f"TTS engine(s) not available: {', '.join(skipped)} ({details}); "
                          f"install them or pass --skip-missing")
    if not engines:
        raise EngineError("no TTS engine is available; run make setup")
    return EngineSelection(engines, voices, skipped)


def assign_voice_splits(
    voices: dict[str, list[Voice]], heldout_engines: Sequence[str] = (), heldout_frac: float = 0.1
) -> dict[str, str]:
    """Split label per speaker key: "train", "dev", "test" or "devtest" (both held-out splits).

    An engine with k speakers holds out max(1, round(k * frac)) of them for dev and as many for
    test when k >= 3 (at least one stays in training), one for both dev and test when k == 2, and
    none when k == 1. An engine in ``heldout_engines`` goes to dev/test whole: an unseen engine is
    a strong generalization test. A speaker several engines share (flite's and festival's slt) is
    held out only if that stays within every one of those engines' quota, so no engine loses more
    of its training speakers than its own share. Which speakers go is decided by a stable hash of
    their key, preferring speakers heard through one engine only; engines with more speakers
    choose first.
    """
    keys = {name: sorted({speaker_key(v) for v in vs}) for name, vs in voices.items()}
    owners: dict[str, list[str]] = defaultdict(list)
    for name in sorted(keys):
        for key in keys[name]:
            owners[key].append(name)
    assignment: dict[str, str] = {}
    held = sorted(name for name in keys if name in heldout_engines)
    for name in held:
        free = sorted((k for k in keys[name] if k not in assignment), key=lambda k: _bucket("voice", k))
        if len(free) == 1:
            assignment[free[0]] = "devtest"
        elif len(free) > 1:
            for position, key in enumerate(free):
                assignment[key] = "dev" if position % 2 == 0 else "test"

    def quota(name: str) -> int:
        k = len(keys[name])
        if name in held or k >= 3:
            return k if name in held else min(k - 1, 2 * max(1, round(k * heldout_frac)))
        return 1 if k == 2 else 0

    def held_out(name: str) -> int:
        return sum(assignment.get(key, "train") != "train" for key in keys[name])

    order = sorted((n for n in keys if n not in held), key=lambda n: (-len(keys[n]), n))
    for name in order:
        k = len(keys[name])
        labels = [assignment.get(key) for key in keys[name]]
        wants = {"dev": 0, "test": 0}
        if k == 2:
            wants = {"devtest": 1}
        elif k >= 3:
            per_split = max(1, round(k * heldout_frac))
            wants = {"test": per_split - sum(l in ("test", "devtest") for l in labels),
                     "dev": per_split - sum(l in ("dev", "devtest") for l in labels)}
        if k == 2 and any(l not in (None, "train") for l in labels):
            wants = {}
        free = sorted(
            (key for key in keys[name] if key not in assignment),
            key=lambda key: (len(owners[key]), _bucket("voice", key)),
        )
        for split, count in wants.items():
            for _ in range(max(0, count)):
                allowed = [key for key in free
                           if all(held_out(owner) < quota(owner) for owner in owners[key] if owner not in held)]
                if not allowed:
                    break
                assignment[allowed[0]] = split
                free.remove(allowed[0])
        # One held-out speaker but no other for the second held-out split: it serves both.
        labels = [assignment.get(key) for key in keys[name]]
        if "test" in labels and not any(l in ("dev", "devtest") for l in labels):
            assignment[keys[name][labels.index("test")]] = "devtest"
        elif "dev" in labels and not any(l in ("test", "devtest") for l in labels):
            assignment[keys[name][labels.index("dev")]] = "devtest"
    for name in keys:
        for key in keys[name]:
            assignment.setdefault(key, "train")
    return assignment


# --- the plan ------------------------------------------------------------------------------------


class CorpusPlan:
    """Voices, texts and hours per (split, engine), and the deterministic job sequence of each."""

    def __init__(
        self,
        options: SynthOptions,
        engines: dict[str, Engine],
        voices: dict[str, list[Voice]],
        sentences: Sequence[Sentence],
    ) -> None:
        self.options = options
        self.engines = engines
        self.supports = {name: frozenset(engine.supports) for name, engine in engines.items()}
        self.batching = {name: hasattr(engine, "synthesize_many") for name, engine in engines.items()}
        self.assignment = assign_voice_splits(voices, options.heldout_engines, options.heldout_voice_frac)
        self.voices: dict[str, dict[str, list[Voice]]] = {split: {} for split in SPLITS}
        for name in sorted(voices):
            for split in SPLITS:
                chosen = [
                    v for v in voices[name]
                    if self.assignment[speaker_key(v)] in (split, "devtest" if split != "train" else "")
                ]
                if chosen:
                    self.voices[split][name] = chosen
        train, dev, test = split_texts(sentences, TEXT_HELDOUT_FRAC, TEXT_HELDOUT_FRAC, TEXT_SPLIT_SEED)
        self.texts = {"train": train, "dev": dev, "test": test}
        for split, pool in self.texts.items():
            if not pool:
                raise DataError(f"no {split} sentences: the text sources gave {len(sentences)} in all")
        weights = {name: options.engine_weights.get(name, DEFAULT_ENGINE_WEIGHTS.get(name, 1.0))
                   for name in engines}
        self.weights = weights
        self.split_hours = options.split_hours()
        self.targets: dict[tuple[str, str], float] = {}
        for split in SPLITS:
            present = {name: weights[name] for name in self.voices[split] if weights[name] > 0}
            total = sum(present.values())
            for name, weight in present.items():
                self.targets[(split, name)] = self.split_hours[split] * 3600.0 * weight / total
        self._fingerprint = json.dumps(options.fingerprint(), sort_keys=True)

    def streams(self) -> list[tuple[str, str]]:
        """(split, engine) pairs with hours to fill, in a fixed order."""
        return [key for key in ((s, e) for s in self.options.splits for e in sorted(self.engines))
                if self.targets.get(key, 0) > 0]

    @lru_cache(maxsize=256)
    def _text_order(self, split: str, engine: str, cycle: int) -> np.ndarray:
        """A fresh permutation of the split's sentences per pass, so texts are evenly used."""
        rng = np.random.default_rng(derive_seed(self.options.seed, "texts", split, engine, cycle))
        return rng.permutation(len(self.texts[split]))

    def job(self, split: str, engine: str, index: int) -> Job:
        """Job ``index`` of a stream: a pure function of the plan's inputs."""
        options = self.options
        rng = np.random.default_rng(derive_seed(options.seed, "job", split, engine, index))
        pool = self.texts[split]
        sentence = pool[int(self._text_order(split, engine, index // len(pool))[index % len(pool)])]
        voices = self.voices[split][engine]
        weights = np.array([float(v.params.get("weight", 1.0)) for v in voices])
        voice = voices[int(rng.choice(len(voices), p=weights / weights.sum()))]
        supports = self.supports[engine]
        draws = rng.random(8)  # always the same number of draws, whatever is used
        synth_seed = int(rng.integers(2**31 - 1))
        if self.batching[engine]:
            # Engines that pay a start-up per call speak blocks of jobs with one rate and seed
            # in one call; rate and seed then vary from block to block instead.
            block = np.random.default_rng(derive_seed(options.seed, "block", split, engine, index // BATCH_BLOCK))
            draws[0], synth_seed = block.random(), int(block.integers(2**31 - 1))
        low, high = options.rate_range
        rate = math.exp(math.log(low) + draws[0] * (math.log(high) - math.log(low))) if "rate" in supports else 1.0
        pitch = 1.0
        if "pitch" in supports and not voice.params.get("fixed_pitch"):
            pitch = options.pitch_range[0] + draws[1] * (options.pitch_range[1] - options.pitch_range[0])
        profile = TRAIN_PROFILE if split == "train" else HELDOUT_PROFILE
        params: dict[str, Any] = {
            "rate": round(rate, 4),
            "pitch": round(pitch, 4),
            "seed": synth_seed,
            "lead_s": round(float(rng.uniform(0.1, 0.6)), 3),
            "trail_s": round(float(rng.uniform(0.1, 0.6)), 3),
            "peak_db": round(float(rng.uniform(*profile.peak_db)), 2),
            "floor_db": round(float(rng.uniform(-75.0, -55.0)), 2),
        }
        if options.augment:
            if draws[2] < profile.noise_prob:
                params["noise"] = NOISE_KINDS[int(draws[3] * len(NOISE_KINDS))]
                params["snr_db"] = round(float(rng.uniform(*profile.snr_db)), 2)
            if draws[4] < profile.reverb_prob:
                params["rt60"] = round(float(rng.uniform(*profile.rt60)), 3)
                params["drr_db"] = round(float(rng.uniform(*profile.drr_db)), 2)
            if draws[5] < profile.band_prob:
                if draws[6] < 0.5:  # telephone channel
                    params["band"] = (round(float(rng.uniform(200, 400))), round(float(rng.uniform(3000, 3600))))
                else:  # a poor microphone or a low-rate codec
                    params["band"] = (round(float(rng.uniform(50, 200))), round(float(rng.uniform(3500, 7000))))
        digest = hashlib.sha1(
            json.dumps([self._fingerprint, voice.id, sentence.text, sorted(params.items())],
                       sort_keys=True, default=list).encode("utf-8")
        ).hexdigest()[:10]
        return Job(
            utt_id=f"{engine}-{split}-{index:06d}-{digest}",
            split=split, engine=engine, index=index, voice=voice, text=sentence.text,
            normalized=sentence.normalized, source=sentence.source, **params,
        )

    def jobs(self, split: str, engine: str, count: int, start: int = 0) -> list[Job]:
        return [self.job(split, engine, i) for i in range(start, start + count)]

    def estimate_seconds(self, job: Job) -> float:
        """A duration guess before synthesis (about 2.7 words per second), to size the work."""
        return len(job.normalized.split()) / (2.7 * job.rate) + job.lead_s + job.trail_s + 0.3


# --- rendering an utterance ----------------------------------------------------------------------


def trim_silence(samples: np.ndarray, sample_rate: int, threshold_db: float = -45.0) -> np.ndarray:
    """Cut leading/trailing stretches more than ``threshold_db`` below the loudest 10 ms frame."""
    frame = max(1, sample_rate // 100)
    count = len(samples) // frame
    if count == 0:
        return samples
    energy = np.square(samples[: count * frame].astype(np.float64)).reshape(count, frame).mean(axis=1)
    peak = energy.max()
    if peak <= 0:
        return samples[:0]
    active = np.nonzero(energy >= peak * 10.0 ** (threshold_db / 10.0))[0]
    margin = 2  # frames kept either side: soft onsets and final consonants
    start = max(0, (active[0] - margin) * frame)
    end = min(len(samples), (active[-1] + 1 + margin) * frame)
    return samples[start:end]


def reversed_speech_noise(samples: np.ndarray, rng: np.random.Generator, talkers: int = 4) -> np.ndarray:
    """Babble from TTS speech itself: time-reversed, shifted copies of the utterance. It has the
    spectrum and rhythm of speech (and of this very voice, the hardest case) but no words."""
    reversed_ = samples[::-1].astype(np.float64)
    noise = np.zeros(len(samples))
    for _ in range(talkers):
        noise += np.roll(reversed_, int(rng.integers(len(samples))))
    return noise


def render(job: Job, samples: np.ndarray, engine_rate: int, sample_rate: int) -> np.ndarray:
    """Engine output -> the corpus utterance: resample, trim and pad silence, level, room, noise,
    channel, noise floor. Raises EngineError if nothing audible is left."""
    rng = np.random.default_rng(derive_seed("render", job.utt_id))
    x = resample(np.asarray(samples, dtype=np.float32), engine_rate, sample_rate)
    x = trim_silence(x, sample_rate)
    if len(x) < 0.2 * sample_rate:
        raise EngineError(f"{job.engine}: {job.voice.id} produced almost no speech for {job.text[:40]!r}")
    x = x * np.float32(10.0 ** (job.peak_db / 20.0) / float(np.max(np.abs(x))))
    lead, trail = int(job.lead_s * sample_rate), int(job.trail_s * sample_rate)
    x = np.concatenate([np.zeros(lead, np.float32), x, np.zeros(trail, np.float32)])
    if job.rt60 is not None:
        x = reverberate(x, rng, sample_rate, (job.rt60, job.rt60), (job.drr_db, job.drr_db))
    if job.noise is not None:
        if job.noise == "speech":
            x = add_noise(x, rng, job.snr_db, noise=reversed_speech_noise(x, rng), sample_rate=sample_rate)
        else:
            x = add_noise(x, rng, job.snr_db, kind=job.noise, sample_rate=sample_rate)
    if job.band is not None:
        low, high = job.band
        x = band_limit(x, sample_rate, float(low), min(float(high), sample_rate / 2 - 100.0))
    x = noise_floor(x, rng, job.floor_db)
    peak = float(np.max(np.abs(x)))
    if peak > 0.99:
        x = x * np.float32(0.99 / peak)
    return x.astype(np.float32)


@dataclass
class JobResult:
    utt_id: str
    split: str
    engine: str
    index: int
    duration: float | None  # None: failed
    error: str | None = None
    synth_s: float = 0.0
    total_s: float = 0.0


_WORKER_ENGINES: dict[str, Engine] = {}


def _engine_in_worker(name: str) -> Engine:
    engine = _WORKER_ENGINES.get(name)
    if engine is None:
        engine = _WORKER_ENGINES[name] = get_engine(name)
    return engine


def _batch_synthesize(engine: Engine, jobs: list[Job]) -> list[tuple[Any, float] | None]:
    """(synthesis, seconds) per job from the engine's batch API, one call per voice; None where
    that is not possible (no batch API, a voice with one job, or a failed batch: those jobs go
    one at a time, which also pins an error on the sentence that caused it)."""
    out: list[tuple[Any, float] | None] = [None] * len(jobs)
    many = getattr(engine, "synthesize_many", None)
    if many is None:
        return out
    groups: dict[str, list[int]] = defaultdict(list)
    for position, job in enumerate(jobs):
        groups[job.voice.id].append(position)
    for positions in groups.values():
        if len(positions) < 2:
            continue
        started = time.perf_counter()
        try:
            results = list(many([jobs[p].text for p in positions], jobs[positions[0]].voice,
                                rates=[jobs[p].rate for p in positions],
                                seeds=[jobs[p].seed for p in positions]))
        except EngineError:
            continue
        if len(results) != len(positions):
            continue
        spent = time.perf_counter() - started
        audio = sum(len(r.samples) / r.sample_rate for r in results) or 1.0
        for p, result in zip(positions, results):
            # The call's time is shared out by audio length, for per-engine speed figures.
            out[p] = (result, spent * len(result.samples) / result.sample_rate / audio)
    return out


def run_chunk(out_dir: str, sample_rate: int, jobs: list[Job]) -> list[JobResult]:
    """Synthesize and write a chunk of jobs (of one engine) in this process."""
    engine = _engine_in_worker(jobs[0].engine)
    batched = _batch_synthesize(engine, jobs)
    results = []
    for job, ready in zip(jobs, batched):
        started = time.perf_counter()
        try:
            if ready is not None:
                synthesis, synth_s = ready
            else:
                synthesis = engine.synthesize(job.text, job.voice, rate=job.rate, pitch=job.pitch, seed=job.seed)
                synth_s = time.perf_counter() - started
            audio = render(job, synthesis.samples, synthesis.sample_rate, sample_rate)
        except EngineError as error:
            spent = time.perf_counter() - started
            results.append(JobResult(job.utt_id, job.split, job.engine, job.index, None, str(error), spent, spent))
            continue
        write_wav(job.wav_path(Path(out_dir)), audio, sample_rate)
        total_s = time.perf_counter() - started + (synth_s if ready is not None else 0.0)
        results.append(JobResult(job.utt_id, job.split, job.engine, job.index, len(audio) / sample_rate,
                                 None, synth_s, total_s))
    return results


def _worker_init() -> None:
    # One thread per process: the pool already uses every core, and oversubscribed BLAS/ONNX
    # threads on 2 cores run far slower than one each.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


# --- scheduling ----------------------------------------------------------------------------------


class _Stream:
    """Progress of one (split, engine) job sequence towards its target duration.

    Sums and the prefix are kept incrementally: a 100-hour corpus has tens of thousands of jobs
    per stream, and rescanning them for every scheduling decision would be quadratic.
    """

    def __init__(self, split: str, engine: str, target: float) -> None:
        self.split, self.engine, self.target = split, engine, target
        self.known: dict[int, float] = {}  # index -> seconds (0.0 for a failed job)
        self.inflight: dict[int, float] = {}  # index -> estimated seconds
        self.known_total = 0.0
        self.inflight_total = 0.0
        self.next_index = 0
        self.prefix_length = 0  # jobs 0..prefix_length-1 are all known
        self.prefix_total = 0.0
        self.cut: int | None = None  # number of jobs in the final prefix, once reached

    def start(self, index: int, estimate: float) -> None:
        self.inflight[index] = estimate
        self.inflight_total += estimate

    def drop(self, index: int) -> float | None:
        estimate = self.inflight.pop(index, None)
        if estimate is not None:
            self.inflight_total -= estimate
        return estimate

    def finish(self, index: int, seconds: float) -> None:
        """Record a job's real duration and move the prefix (and maybe the cut) forward."""
        self.drop(index)
        self.known[index] = seconds
        self.known_total += seconds
        while self.cut is None and self.prefix_length in self.known:
            self.prefix_total += self.known[self.prefix_length]
            self.prefix_length += 1
            if self.prefix_total >= self.target:
                self.cut = self.prefix_length

    def committed(self) -> float:
        return self.known_total + self.inflight_total


@dataclass
class BuildReport:
    """What a build did; ``card`` is the content of card.json."""

    out_dir: Path
    card: dict[str, Any]
    new_utterances: int
    reused_utterances: int
    wall_s: float


def _clean_temp_files(wav_dir: Path) -> int:
    """Remove write_wav temp files left by a killed run (".<name>.wav.<random>.tmp")."""
    removed = 0
    if wav_dir.is_dir():
        for path in wav_dir.glob(".*.tmp"):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _chunk_size(engine: Engine, estimate: float) -> int:
    """Jobs per chunk: about two seconds of work, so progress and scheduling stay fluid; engines
    with a batch API get one block of jobs (one rate and seed) per chunk, spoken in one call."""
    if hasattr(engine, "synthesize_many"):
        return BATCH_BLOCK
    return int(min(16, max(1, engine.speed_hint * 2.0 / max(estimate, 0.5))))


def build_corpus(
    options: SynthOptions,
    *,
    command: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    sentences: Sequence[Sentence] | None = None,
) -> BuildReport:
    """Synthesize (or finish) the corpus described by ``options`` into ``options.out_dir``."""
    say = log or (lambda message: print(message, file=sys.stderr))
    started = time.perf_counter()
    selection = select_engines(options)
    for name, reason in selection.skipped.items():
        say(f"corpus: skipping engine {name}: {reason}")
    sentences = list(sentences) if sentences is not None else load_sentences(options.min_words, options.max_words)
    plan = CorpusPlan(options, selection.engines, selection.voices, sentences)
    out_dir = options.out_dir
    for split in SPLITS:
        (out_dir / "wav" / split).mkdir(parents=True, exist_ok=True)
        _clean_temp_files(out_dir / "wav" / split)
    existing = {split: {p.stem for p in (out_dir / "wav" / split).glob("*.wav")} for split in SPLITS}
    say("corpus: engines " + ", ".join(
        f"{name} ({len(selection.voices[name])} voices, weight {plan.weights[name]:g})"
        for name in selection.engines))
    say("corpus: target " + ", ".join(f"{split} {plan.split_hours[split]:.3f} h" for split in SPLITS)
        + f"; {sum(len(e) for e in existing.values())} WAVs already present")

    streams = {key: _Stream(key[0], key[1], plan.targets[key]) for key in plan.streams()}
    jobs_by_key: dict[tuple[str, str, int], Job] = {}
    ratio: dict[str, float] = defaultdict(lambda: 1.0)  # actual / estimated duration per engine
    workers = options.jobs or os.cpu_count() or 1
    new_results: list[JobResult] = []
    reused = 0
    failures: dict[str, list[str]] = defaultdict(list)
    attempts: dict[str, int] = defaultdict(int)

    def job_of(stream: _Stream, index: int) -> Job:
        key = (stream.split, stream.engine, index)
        if key not in jobs_by_key:
            jobs_by_key[key] = plan.job(stream.split, stream.engine, index)
        return jobs_by_key[key]

    def take_work(stream: _Stream) -> list[Job]:
        """Next jobs of a stream still needed by the estimate; existing WAVs are counted, not redone."""
        nonlocal reused
        chunk: list[Job] = []
        limit = None
        while stream.cut is None and stream.committed() < stream.target:
            job = job_of(stream, stream.next_index)
            stream.next_index += 1
            if job.utt_id in existing[job.split]:
                stream.finish(job.index, audio_duration(job.wav_path(out_dir)))
                reused += 1
                continue
            estimate = plan.estimate_seconds(job) * ratio[job.engine]
            stream.start(job.index, estimate)
            chunk.append(job)
            if limit is None:
                limit = _chunk_size(selection.engines[job.engine], estimate)
                if plan.batching[job.engine]:
                    limit -= job.index % BATCH_BLOCK  # chunks end where blocks end
            if len(chunk) >= limit:
                break
        return chunk

    def accept(results: Sequence[JobResult]) -> None:
        _log_results(out_dir, results)
        for result in results:
            stream = streams[(result.split, result.engine)]
            estimate = stream.drop(result.index)
            attempts[result.engine] += 1
            if result.duration is None:
                failures[result.engine].append(result.error or "failed")
                stream.finish(result.index, 0.0)  # left out of the corpus; retried on resume
                if attempts[result.engine] >= 8 and len(failures[result.engine]) > 0.5 * attempts[result.engine]:
                    raise EngineError(
                        f"{result.engine}: most syntheses fail; first error: {failures[result.engine][0]}"
                    )
            else:
                stream.finish(result.index, result.duration)
                if estimate:
                    job = jobs_by_key[(result.split, result.engine, result.index)]
                    observed = result.duration / plan.estimate_seconds(job)
                    ratio[result.engine] = 0.8 * ratio[result.engine] + 0.2 * observed
                new_results.append(result)

    def priority(stream: _Stream) -> float:
        # Slow engines first (longest processing time first keeps every core busy to the end).
        return -(stream.target - stream.committed()) / selection.engines[stream.engine].speed_hint

    total_target = sum(s.target for s in streams.values())
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=round(total_target / 3600.0, 4), unit="h", desc="synth", file=sys.stderr,
                   bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.3f}/{total:.3f} h [{elapsed}<{remaining}]")

    def update_bar() -> None:
        if bar is not None:
            done = sum(min(s.target, s.known_total) for s in streams.values())
            bar.n = round(done / 3600.0, 4)
            bar.refresh()

    def fill(capacity: int) -> list[list[Job]]:
        """Up to ``capacity`` chunks of new work, slowest engines first."""
        chunks: list[list[Job]] = []
        while len(chunks) < capacity:
            candidates = sorted((s for s in streams.values() if s.cut is None), key=priority)
            chunk = next((c for c in (take_work(s) for s in candidates) if c), None)
            if not chunk:
                break
            chunks.append(chunk)
        return chunks

    executor = None
    if workers > 1:
        _worker_init()
        executor = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_worker_init)
    pending: dict[Future, list[Job]] = {}
    try:
        while True:
            if executor is None:
                chunks = fill(1)
                for chunk in chunks:
                    accept(run_chunk(str(out_dir), options.sample_rate, chunk))
                    update_bar()
            else:
                for chunk in fill(2 * workers - len(pending)):
                    pending[executor.submit(run_chunk, str(out_dir), options.sample_rate, chunk)] = chunk
                if pending:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        pending.pop(future)
                        accept(future.result())
                    update_bar()
                    # Chunks wholly past a finished stream's cut are not needed any more.
                    for future, chunk in list(pending.items()):
                        stream = streams[(chunk[0].split, chunk[0].engine)]
                        if stream.cut is not None and all(j.index >= stream.cut for j in chunk) and future.cancel():
                            for job in chunk:
                                stream.drop(job.index)
                            pending.pop(future)
                    continue
                chunks = []
            if not chunks:
                if all(s.cut is not None for s in streams.values()):
                    break
                stuck = [f"{s.split}/{s.engine}" for s in streams.values() if s.cut is None]
                raise RuntimeError(f"corpus scheduler made no progress on {', '.join(stuck)}")
    finally:
        if executor is not None:
            for future in pending:
                future.cancel()
            executor.shutdown(wait=True, cancel_futures=True)
        if bar is not None:
            update_bar()
            bar.close()
        _log_run(out_dir, new_results, time.perf_counter() - started, command)

    # The corpus: each stream's shortest prefix reaching its target, failed jobs left out.
    manifests: dict[str, list[Utterance]] = {split: [] for split in SPLITS}
    for stream in streams.values():
        cut = stream.cut if stream.cut is not None else len(stream.known)
        for index in range(cut):
            seconds = stream.known.get(index, 0.0)
            if seconds <= 0:
                continue
            job = job_of(stream, index)
            manifests[job.split].append(Utterance(
                audio=str(job.wav_path(out_dir)), text=job.normalized, duration=round(seconds, 4),
                speaker=job.voice.id, extra=job.extra(),
            ))
    for split in options.splits:  # a split not built keeps the manifest it had
        write_manifest(out_dir / f"{split}.jsonl", manifests[split], relative_to=out_dir)
    wall = time.perf_counter() - started

    from edgeasr.data.corpus.card import make_card, write_card

    listed = {split: {u.extra["id"] for u in manifests[split]} for split in SPLITS}
    unused = sum(
        1 for split in SPLITS for p in (out_dir / "wav" / split).glob("*.wav") if p.stem not in listed[split]
    )
    card = make_card(
        options=options, plan=plan, selection=selection, manifests=manifests, sentences=sentences,
        log_path=out_dir / LOG_NAME, command=command, failures=dict(failures), unused_wavs=unused,
    )
    write_card(out_dir, card)
    return BuildReport(out_dir, card, len(new_results), reused, wall)


def _log_results(out_dir: Path, results: Sequence[JobResult]) -> None:
    """Append per-utterance timings as they arrive, so a killed run's speed still counts."""
    if not results:
        return
    lines = [json.dumps({"id": r.utt_id, "engine": r.engine, "duration": round(r.duration or 0.0, 4),
                         "synth_s": round(r.synth_s, 4), "total_s": round(r.total_s, 4)})
             for r in results if r.duration is not None]
    with open(out_dir / LOG_NAME, "a", encoding="utf-8") as handle:
        handle.write("".join(line + "\n" for line in lines))


def _log_run(out_dir: Path, results: Sequence[JobResult], wall_s: float, command: str | None) -> None:
    """One line per run: wall time against new audio gives the overall hours per minute."""
    line = json.dumps({
        "run": time.strftime("%Y-%m-%dT%H:%M:%S"), "wall_s": round(wall_s, 3),
        "new_utterances": len(results), "new_audio_s": round(sum(r.duration or 0.0 for r in results), 3),
        "cores": os.cpu_count(), "command": command,
    })
    with open(out_dir / LOG_NAME, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")
