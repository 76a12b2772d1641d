"""The classic TTS engines of the corpus: espeak-ng, flite, festival (Debian) and hibari (PyPI).

They differ a lot in naturalness and cost. espeak-ng is formant synthesis: robotic, but ~185x real
time with eight English accents and dozens of voice variants, so it buys cheap accent and rate
variety. flite and festival's diphone voices are recorded speech glued together; festival's HTS
voice (slt) and hibari's neural voice are the most natural of the four and the most useful for
recognizing real people.

Several of these voices are recordings of the same people: flite's kal/kal16 and festival's
kal_diphone are one speaker, flite's slt and festival's slt HTS voice another. Each Voice carries
``params["speaker"]`` naming the person, and the builder keeps one person in one split, so no test
speaker is ever heard in training through another engine.

Conventions for the builder (all optional ``Voice.params`` keys):
- ``speaker``: split key; voices sharing it always land in the same split (default: the voice id).
- ``weight``: relative share of the engine's utterances (default 1.0).
- ``fixed_pitch``: True if this voice ignores ``pitch`` although the engine supports it.
"""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from edgeasr.data.corpus.base import Engine, Synthesis, Voice, register_engine
from edgeasr.errors import EngineError

#: Seconds a single synthesis may take before it counts as hung (HTS reads ~8x real time).
SUBPROCESS_TIMEOUT = 300.0


def _first_line(text: str | bytes) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return "no error message"


def _require_binary(binary: str, engine: str, hint: str) -> str:
    path = shutil.which(binary)
    if path is None:
        raise EngineError(f"{engine}: program '{binary}' not found; install it with {hint}")
    return path


def _run(engine: str, command: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run an engine's program; any failure becomes one EngineError line with its stderr."""
    try:
        result = subprocess.run(
            command,
            input=stdin.encode("utf-8") if stdin is not None else None,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            timeout=SUBPROCESS_TIMEOUT,
            check=False,
        )
    except FileNotFoundError:
        raise EngineError(f"{engine}: program '{command[0]}' not found") from None
    except subprocess.TimeoutExpired:
        raise EngineError(f"{engine}: '{command[0]}' ran longer than {SUBPROCESS_TIMEOUT:.0f} s") from None
    if result.returncode != 0:
        raise EngineError(
            f"{engine}: '{Path(command[0]).name}' failed with status {result.returncode}: "
            f"{_first_line(result.stderr)}"
        )
    return result


def _read_wav(engine: str, path: Path, stderr: bytes = b"") -> Synthesis:
    """A synthesized WAV as float32 mono; empty or silent output is a failure, not a sample."""
    if not path.exists() or path.stat().st_size <= 44:
        raise EngineError(f"{engine}: produced no audio ({_first_line(stderr)})")
    try:
        samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError) as error:
        raise EngineError(f"{engine}: produced an unreadable WAV ({error})") from None
    samples = samples.mean(axis=1).astype(np.float32)
    if samples.size == 0 or float(np.max(np.abs(samples))) < 1e-4:
        raise EngineError(f"{engine}: produced silent audio ({_first_line(stderr)})")
    return Synthesis(samples=samples, sample_rate=int(rate))


# --- espeak-ng ---------------------------------------------------------------------------------------

#: Variants that are effects rather than voices (robots, whispers, echo, a demon, a test speed).
ESPEAK_EXCLUDED_VARIANTS = frozenset({
    "Demonic", "UniRobot", "anikaRobot", "announcer", "fast", "whisper", "whisperf", "croak",
    "robosoft", "robosoft2", "robosoft3", "robosoft4", "robosoft5", "robosoft6", "robosoft7",
    "robosoft8",
})
#: English accents in espeak-ng's own (non-mbrola) voices, and our short accent labels.
ESPEAK_ACCENTS = {
    "en-us": "us",
    "en-us-nyc": "us-nyc",
    "en-gb": "gb",
    "en-gb-x-rp": "gb-rp",
    "en-gb-scotland": "gb-scotland",
    "en-gb-x-gbclan": "gb-lancaster",
    "en-gb-x-gbcwmd": "gb-west-midlands",
    "en-029": "caribbean",
}


class EspeakEngine(Engine):
    """espeak-ng: formant synthesis, every English accent x every voice variant.

    The voice "espeak:en-gb-x-rp+f3" is accent en-gb-x-rp with variant f3. The variant (timbre,
    pitch, formants) is what makes a speaker, so it is the split key: a variant held out for test
    is unseen in training in every accent.
    """

    name = "espeak"
    supports = frozenset({"rate", "pitch"})
    speed_hint = 185.0
    sample_rate = 22050
    #: espeak-ng's default speaking rate in words per minute.
    base_wpm = 175

    def __init__(self, binary: str = "espeak-ng") -> None:
        self.binary = binary
        self._voices: list[Voice] | None = None

    def check(self) -> None:
        _require_binary(self.binary, self.name, "apt-get install espeak-ng (or run make setup)")

    def _list(self, which: str) -> list[list[str]]:
        out = _run(self.name, [self.binary, f"--voices={which}"]).stdout.decode("utf-8", "replace")
        return [line.split() for line in out.splitlines()[1:] if line.strip()]

    def voices(self) -> list[Voice]:
        if self._voices is not None:
            return list(self._voices)
        self.check()
        accents: list[str] = []
        for fields in self._list("en"):
            if len(fields) >= 5 and fields[4].startswith("gmw/") and fields[1] in ESPEAK_ACCENTS:
                if fields[1] not in accents:
                    accents.append(fields[1])
        variants: list[tuple[str, str | None]] = [("", "male")]  # the accent's own default voice
        for fields in self._list("variant"):
            if len(fields) != 5 or not fields[4].startswith("!v/"):
                continue  # a file name with a space: not addressable with -v
            variant = fields[4][3:]
            if variant in ESPEAK_EXCLUDED_VARIANTS:
                continue
            gender = {"M": "male", "F": "female"}.get(fields[2].split("/")[-1])
            variants.append((variant, gender))
        variants = [variants[0]] + sorted(set(variants[1:]))
        voices = []
        for accent in sorted(accents, key=list(ESPEAK_ACCENTS).index):
            for variant, gender in variants:
                spec = f"{accent}+{variant}" if variant else accent
                voices.append(Voice(
                    engine=self.name,
                    id=f"espeak:{spec}",
                    accent=ESPEAK_ACCENTS[accent],
                    gender=gender,
                    params={"spec": spec, "speaker": f"espeak:+{variant or 'default'}"},
                ))
        if not voices:
            raise EngineError(f"{self.name}: '{self.binary}' lists no English voices")
        self._voices = voices
        return list(voices)

    def synthesize(
        self, text: str, voice: Voice, *, rate: float = 1.0, pitch: float = 1.0, seed: int = 0
    ) -> Synthesis:
        spec = voice.params.get("spec") or voice.id.split(":", 1)[1]
        wpm = int(round(min(max(self.base_wpm * rate, 80), 450)))
        pitch_value = int(round(min(max(50 + (pitch - 1.0) * 100, 0), 99)))
        with tempfile.TemporaryDirectory(prefix="edgeasr-espeak-") as tmp:
            wav = Path(tmp) / "out.wav"
            command = [self.binary, "-v", spec, "-s", str(wpm), "-p", str(pitch_value), "-w", str(wav)]
            result = _run(self.name, command, stdin=text)
            return _read_wav(self.name, wav, result.stderr)


# --- flite -------------------------------------------------------------------------------------------

#: Known flite voices: speaker (person) key, accent, gender, default mean f0 (Hz) as measured
#: here (None: the voice ignores int_f0_target_mean), relative weight. kal is 8 kHz audio, so it
#: gets half the share; awb_time is a limited-domain voice that can only tell the time: left out.
FLITE_VOICES = {
    "kal": ("cmu-kal", "us", "male", 89.0, 0.5),
    "kal16": ("cmu-kal", "us", "male", 89.0, 1.0),
    "awb": ("arctic-awb", "gb-scotland", "male", 131.0, 1.0),
    "rms": ("arctic-rms", "us", "male", None, 1.0),
    "slt": ("arctic-slt", "us", "female", 170.0, 1.0),
}


class FliteEngine(Engine):
    """flite: CMU's small synthesizer (diphone kal voices, clustergen ARCTIC voices)."""

    name = "flite"
    supports = frozenset({"rate", "pitch"})
    speed_hint = 52.0
    sample_rate = 16000

    def __init__(self, binary: str = "flite") -> None:
        self.binary = binary
        self._voices: list[Voice] | None = None

    def check(self) -> None:
        _require_binary(self.binary, self.name, "apt-get install flite (or run make setup)")

    def voices(self) -> list[Voice]:
        if self._voices is not None:
            return list(self._voices)
        self.check()
        out = _run(self.name, [self.binary, "-lv"]).stdout.decode("utf-8", "replace")
        listed = out.split(":", 1)[-1].split()
        voices = []
        for name, (speaker, accent, gender, f0, weight) in FLITE_VOICES.items():
            if name not in listed:
                continue
            params = {"name": name, "speaker": speaker, "weight": weight}
            if f0 is None:
                params["fixed_pitch"] = True
            else:
                params["f0"] = f0
            voices.append(Voice(self.name, f"flite:{name}", accent, gender, params))
        if not voices:
            raise EngineError(f"{self.name}: '{self.binary}' lists none of {', '.join(FLITE_VOICES)}")
        self._voices = voices
        return list(voices)

    def synthesize(
        self, text: str, voice: Voice, *, rate: float = 1.0, pitch: float = 1.0, seed: int = 0
    ) -> Synthesis:
        name = voice.params.get("name") or voice.id.split(":", 1)[1]
        command = [self.binary, "-voice", name, "--setf", f"duration_stretch={1.0 / rate:.4f}"]
        f0 = voice.params.get("f0")
        if f0 and pitch != 1.0:
            command += ["--setf", f"int_f0_target_mean={f0 * pitch:.1f}"]
        with tempfile.TemporaryDirectory(prefix="edgeasr-flite-") as tmp:
            text_file, wav = Path(tmp) / "in.txt", Path(tmp) / "out.wav"
            text_file.write_text(text + "\n", encoding="utf-8")
            result = _run(self.name, command + ["-f", str(text_file), "-o", str(wav)])
            return _read_wav(self.name, wav, result.stderr)


# --- festival ----------------------------------------------------------------------------------------

#: English festival voices we know how to drive: speaker key, accent, gender, kind, weight.
#: The HTS voice is by far the most natural (and slowest), so it gets twice the share.
FESTIVAL_VOICES = {
    "cmu_us_slt_arctic_hts": ("arctic-slt", "us", "female", "hts", 2.0),
    "kal_diphone": ("cmu-kal", "us", "male", "diphone", 1.0),
    "ked_diphone": ("cmu-ked", "us", "male", "diphone", 1.0),
    "rab_diphone": ("cstr-rab", "gb-scotland", "male", "diphone", 1.0),
    "don_diphone": ("cstr-don", "gb", "male", "diphone", 1.0),
}


class FestivalEngine(Engine):
    """festival via text2wave: diphone voices (rate and pitch) and the slt HTS voice (rate only)."""

    name = "festival"
    supports = frozenset({"rate", "pitch"})
    speed_hint = 12.0
    sample_rate = None  # 16 kHz diphones, 32 kHz HTS: the builder resamples

    def __init__(self, text2wave: str = "text2wave", festival: str = "festival") -> None:
        self.text2wave = text2wave
        self.festival = festival
        self._voices: list[Voice] | None = None

    def check(self) -> None:
        hint = "apt-get install festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts (or run make setup)"
        _require_binary(self.text2wave, self.name, hint)
        _require_binary(self.festival, self.name, hint)

    def voices(self) -> list[Voice]:
        if self._voices is not None:
            return list(self._voices)
        self.check()
        out = _run(self.name, [self.festival, "--batch", "(print (voice.list))"]).stdout
        listed = out.decode("utf-8", "replace").replace("(", " ").replace(")", " ").split()
        voices = []
        for name, (speaker, accent, gender, kind, weight) in FESTIVAL_VOICES.items():
            if name in listed:
                params = {"name": name, "kind": kind, "speaker": speaker, "weight": weight}
                if kind == "hts":
                    params["fixed_pitch"] = True
                voices.append(Voice(self.name, f"festival:{name}", accent, gender, params))
        if not voices:
            raise EngineError(
                f"{self.name}: no English voice installed; install festvox-kallpc16k, "
                f"festvox-kdlpc16k or festvox-us-slt-hts (or run make setup)"
            )
        self._voices = voices
        return list(voices)

    def synthesize(
        self, text: str, voice: Voice, *, rate: float = 1.0, pitch: float = 1.0, seed: int = 0
    ) -> Synthesis:
        name = voice.params.get("name") or voice.id.split(":", 1)[1]
        kind = voice.params.get("kind") or ("hts" if name.endswith("_hts") else "diphone")
        evals = [f"(voice_{name})"]
        if kind == "hts":
            # HTS ignores Duration_Stretch; hts_engine's own -r option is its speech rate.
            evals.append(f'(set! hts_engine_params (append hts_engine_params (list (list "-r" {rate:.4f}))))')
        else:
            evals.append(f"(Parameter.set 'Duration_Stretch {1.0 / rate:.4f})")
            if pitch != 1.0:
                evals.append(
                    "(set! int_lr_params (append (list "
                    f"(list 'target_f0_mean (* {pitch:.4f} (cadr (assoc 'target_f0_mean int_lr_params)))) "
                    f"(list 'target_f0_std (* {pitch:.4f} (cadr (assoc 'target_f0_std int_lr_params))))) "
                    "int_lr_params))"
                )
        with tempfile.TemporaryDirectory(prefix="edgeasr-festival-") as tmp:
            wav = Path(tmp) / "out.wav"
            command = [self.text2wave, "-o", str(wav)]
            for expression in evals:
                command += ["-eval", expression]
            result = _run(self.name, command, stdin=text + "\n")
            return _read_wav(self.name, wav, result.stderr)


# --- hibari ------------------------------------------------------------------------------------------

#: Loaded hibari models, per (module, british G2P): loading costs ~0.2 s and the builder calls
#: synthesize thousands of times in each worker process.
_HIBARI_CACHE: dict[tuple[str, bool], object] = {}


class HibariEngine(Engine):
    """hibari-tts: a small neural voice (Kokoro's af_heart distilled), 24 kHz, ~100x real time.

    Only the voice bundled in the package is used (the others would be downloaded). Its G2P can
    also speak British English; that is genuinely different speech (other vowels, non-rhotic), so
    it is offered as a second voice, "hibari:heart-gb", with the same speaker key: one person, one
    split.
    """

    name = "hibari"
    supports = frozenset({"rate"})
    speed_hint = 80.0
    sample_rate = 24000
    bundled_voice = "heart"

    def __init__(self, module: str = "hibari") -> None:
        self.module = module

    def check(self) -> None:
        hint = "pip install hibari-tts (or run make setup)"
        try:
            found = importlib.util.find_spec(self.module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise EngineError(f"{self.name}: Python package '{self.module}' is not installed; {hint}")
        self._model_path()

    def _model_path(self) -> str:
        try:
            voices = importlib.import_module(f"{self.module}.voices")
            # download_missing=False: never fetch anything at run time.
            return voices.voice_path(self.bundled_voice, download_missing=False)
        except (ImportError, AttributeError, FileNotFoundError, ValueError) as error:
            raise EngineError(
                f"{self.name}: bundled voice '{self.bundled_voice}' not found ({error}); "
                f"reinstall with pip install hibari-tts (or run make setup)"
            ) from None

    def voices(self) -> list[Voice]:
        speaker = f"hibari:{self.bundled_voice}"
        return [
            Voice(self.name, speaker, "us", "female", {"g2p": "us", "speaker": speaker}),
            Voice(self.name, f"{speaker}-gb", "gb", "female", {"g2p": "gb", "speaker": speaker}),
        ]

    def _model(self, british: bool):
        key = (self.module, british)
        if key not in _HIBARI_CACHE:
            self.check()
            package = importlib.import_module(self.module)
            g2p = importlib.import_module(f"{self.module}.g2p").G2P(british=british)
            _HIBARI_CACHE[key] = package.Hibari(model=self._model_path(), threads=1, g2p=g2p)
        return _HIBARI_CACHE[key]

    def synthesize(
        self, text: str, voice: Voice, *, rate: float = 1.0, pitch: float = 1.0, seed: int = 0
    ) -> Synthesis:
        model = self._model(voice.params.get("g2p") == "gb")
        try:
            samples = model(text, speed=float(min(max(rate, 0.5), 2.0)), seed=seed)
        except Exception as error:  # noqa: BLE001 - a model failure on one sentence, reported as such
            raise EngineError(f"{self.name}: synthesis failed: {_first_line(str(error))}") from None
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if samples.size == 0 or float(np.max(np.abs(samples))) < 1e-4:
            raise EngineError(f"{self.name}: produced no audio for {text[:40]!r}")
        return Synthesis(samples=np.clip(samples, -1.0, 1.0), sample_rate=int(model.sample_rate))


register_engine("espeak", EspeakEngine)
register_engine("flite", FliteEngine)
register_engine("festival", FestivalEngine)
register_engine("hibari", HibariEngine)

__all__ = ["EspeakEngine", "FliteEngine", "FestivalEngine", "HibariEngine"]
