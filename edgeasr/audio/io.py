"""Decoding, validation, resampling and writing of audio files.

Everything that reaches the recognizer passes through ``load_audio``: whatever a user hands us
(WAV/FLAC/OGG/MP3, headerless PCM, any rate, any channel count) comes out as float32 mono at
16 kHz, or as one ``AudioError`` line naming the file and what is wrong with it. libsndfile is
lenient with damaged files (a WAV cut mid-data decodes "fine", just shorter), so the checks here
are explicit rather than left to the decoder: a silently shortened utterance corrupts a training
pair as surely as a crash would stop a run.
"""

from __future__ import annotations

import contextlib
import os
import stat as stat_module
import struct
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from edgeasr.errors import AudioError
from edgeasr.fileio import atomic_write

SAMPLE_RATE = 16000
RAW_EXTENSIONS = (".raw", ".pcm")
MAX_SAMPLE_RATE = 384000
MIN_SAMPLE_RATE = 1000

# libsoxr recipe: very-high quality with the steep-filter flag (SOXR_STEEP_FILTER = 0x40). The
# default recipes start rolling off at ~91% of the output Nyquist frequency, which would erase
# the 7-8 kHz band that 16 kHz models can still use; the steep filter keeps the passband flat to
# ~99% and still rejects everything above Nyquist by > 100 dB.
_SOXR_STEEP_FILTER = 0x40
_SOXR_RECIPE = int(soxr.VHQ) | _SOXR_STEEP_FILTER

# Decoded sample counts may fall short of the header's claim by this fraction before we call the
# file truncated: MP3 durations come from the Xing/LAME header or an estimate, others are exact.
_SHORTFALL_TOLERANCE = {"MP3": 0.05}
_DEFAULT_SHORTFALL_TOLERANCE = 0.001


@dataclass(frozen=True)
class AudioInfo:
    """What a file's header says, obtained without decoding the samples."""

    path: str
    format: str  # e.g. "WAV", "FLAC", "RAW"
    subtype: str  # e.g. "PCM_16", "FLOAT", "VORBIS"
    sample_rate: int
    channels: int
    frames: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


def _check_file(path: Path) -> int:
    """Fail early with a precise reason; returns the size in bytes."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise AudioError(path, "no such file") from None
    except PermissionError:
        raise AudioError(path, "permission denied") from None
    except OSError as error:
        raise AudioError(path, f"cannot access file ({error.strerror or error})") from None
    if stat_module.S_ISDIR(stat.st_mode):
        raise AudioError(path, "is a directory, not an audio file")
    if not stat_module.S_ISREG(stat.st_mode):
        # A FIFO or device would block or never end; decoding wants a finished file.
        raise AudioError(path, "not a regular file (pipe, socket or device)")
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except PermissionError:
        raise AudioError(path, "permission denied (file is not readable)") from None
    except OSError as error:
        raise AudioError(path, f"cannot read file ({error.strerror or error})") from None
    if stat.st_size == 0:
        raise AudioError(path, "empty file (0 bytes)")
    return stat.st_size


def check_sample_rate(source: object, rate: int | float, what: str = "sample rate") -> int:
    """Whole Hz within [MIN_SAMPLE_RATE, MAX_SAMPLE_RATE]; anything else is a damaged header or
    a mistyped flag, and would otherwise surface later as a baffling resampler failure."""
    if rate != rate or not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:  # rate != rate: NaN
        raise AudioError(
            source,
            f"unsupported {what} {rate:g} Hz (must be {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz)",
        )
    if int(rate) != rate:
        raise AudioError(source, f"{what} must be a whole number of Hz, got {rate:g}")
    return int(rate)


def _is_raw(path: Path) -> bool:
    return path.suffix.lower() in RAW_EXTENSIONS


def _wav_data_shortfall(path: Path) -> tuple[int, int] | None:
    """(bytes declared, bytes present) of a RIFF/WAVE data chunk cut short, else None.

    libsndfile quietly decodes whatever part of the data chunk exists, so a file truncated by a
    full disk or a killed writer would otherwise pass as a shorter, valid recording.
    """
    with open(path, "rb") as handle:
        header = handle.read(12)
        if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
            return None
        size = path.stat().st_size
        offset = 12
        while offset + 8 <= size:
            handle.seek(offset)
            chunk = handle.read(8)
            if len(chunk) < 8:
                return None
            chunk_id, chunk_size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if chunk_id == b"data":
                # 0 and 0xFFFFFFFF mark streams written without a final size: nothing to compare.
                if chunk_size in (0, 0xFFFFFFFF):
                    return None
                present = size - (offset + 8)
                return (chunk_size, present) if present < chunk_size else None
            offset += 8 + chunk_size + (chunk_size & 1)
    return None


def _looks_like_mp3(path: Path) -> bool:
    if path.suffix.lower() == ".mp3":
        return True
    with open(path, "rb") as handle:
        head = handle.read(3)
    return head == b"ID3" or (len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0)


@contextlib.contextmanager
def _native_stderr_silenced(active: bool) -> Iterator[None]:
    """Hide libmpg123's own warnings ("Xing stream size off...") printed straight to fd 2.

    They would surround our one-line error with decoder chatter. Only done on the main thread,
    because redirecting fd 2 is process-wide and could swallow another thread's output.
    """
    if not active or threading.current_thread() is not threading.main_thread():
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _libsndfile_problem(error: Exception) -> str:
    detail = str(getattr(error, "error_string", "") or error).strip().rstrip(".")
    if "does not exist" in detail or not detail:
        # libsndfile's wording when the mp3 decoder finds no stream; the file itself is there.
        detail = "no decodable audio stream"
    return f"not a readable audio file: unrecognised format or corrupt data ({detail})"


def audio_info(
    path: str | os.PathLike, *, raw_sample_rate: int | None = None, raw_channels: int = 1
) -> AudioInfo:
    """Header facts (format, rate, channels, length) with every sanity check, no decoding."""
    path = Path(path)
    size = _check_file(path)
    if _is_raw(path):
        if raw_sample_rate is None:
            raise AudioError(
                path,
                "headerless PCM has no sample rate; pass --raw-rate HZ (e.g. --raw-rate 16000)",
            )
        rate = check_sample_rate(path, raw_sample_rate, "raw sample rate")
        if raw_channels < 1:
            raise AudioError(path, f"raw channel count must be >= 1, got {raw_channels}")
        frame_bytes = 2 * raw_channels
        if size % frame_bytes:
            raise AudioError(
                path,
                f"{size} bytes is not a whole number of 16-bit {raw_channels}-channel frames "
                f"(truncated or not 16-bit PCM)",
            )
        return AudioInfo(str(path), "RAW", "PCM_16", rate, raw_channels, size // frame_bytes)
    try:
        with _native_stderr_silenced(_looks_like_mp3(path)):
            info = sf.info(str(path))
    except (sf.SoundFileError, RuntimeError) as error:
        raise AudioError(path, _libsndfile_problem(error)) from None
    rate = check_sample_rate(path, info.samplerate)
    if info.channels < 1:
        raise AudioError(path, "header declares no audio channels")
    shortfall = _wav_data_shortfall(path) if info.format in ("WAV", "WAVEX") else None
    if shortfall:
        declared, present = shortfall
        raise AudioError(
            path,
            f"truncated: header declares {declared} bytes of audio data but only {present} "
            f"are present",
        )
    return AudioInfo(str(path), info.format, info.subtype, rate, info.channels, int(info.frames))


def _read_raw(path: Path, info: AudioInfo) -> np.ndarray:
    data = np.fromfile(path, dtype="<i2")
    return (data.astype(np.float32) / 32768.0).reshape(-1, info.channels)


def read_audio(
    path: str | os.PathLike,
    *,
    raw_sample_rate: int | None = None,
    raw_channels: int = 1,
    max_duration: float | None = None,
) -> tuple[np.ndarray, int]:
    """Decode a file as-is: float32 [samples, channels] in [-1, 1] and the file's own rate.

    ``max_duration`` (seconds) is checked against the header before anything is decoded, so an
    accidental multi-hour file costs nothing.
    """
    info = audio_info(path, raw_sample_rate=raw_sample_rate, raw_channels=raw_channels)
    path = Path(path)
    if info.frames == 0:
        raise AudioError(path, "contains no audio samples (empty or truncated)")
    if max_duration is not None and info.duration > max_duration:
        raise AudioError(
            path, f"too long: {info.duration:.1f} s exceeds the limit of {max_duration:g} s"
        )
    if info.format == "RAW":
        samples = _read_raw(path, info)
    else:
        try:
            with _native_stderr_silenced(info.format == "MP3"):
                samples, _ = sf.read(str(path), dtype="float32", always_2d=True)
        except (sf.SoundFileError, RuntimeError) as error:
            raise AudioError(path, _libsndfile_problem(error)) from None
        tolerance = _SHORTFALL_TOLERANCE.get(info.format, _DEFAULT_SHORTFALL_TOLERANCE)
        if len(samples) < info.frames * (1.0 - tolerance):
            raise AudioError(
                path,
                f"truncated or corrupt: header declares {info.frames} samples but only "
                f"{len(samples)} could be decoded",
            )
    return validate_samples(samples, path), info.sample_rate


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Average channels ([N] or [N, C] -> [N]); averaging keeps the level of correlated channels."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 1:
        return samples
    if samples.ndim != 2:
        raise ValueError(f"expected [samples] or [samples, channels], got shape {samples.shape}")
    if samples.shape[1] == 1:
        return np.ascontiguousarray(samples[:, 0])
    return samples.mean(axis=1, dtype=np.float32)


def _soxr_resample(samples: np.ndarray, orig_rate: float, new_rate: float) -> np.ndarray:
    """libsoxr with our steep recipe; [N] or [N, C] float32 in, same shape out."""
    x = np.ascontiguousarray(samples, dtype=np.float32)
    two_d = x if x.ndim == 2 else x[:, None]
    if len(two_d) == 0:
        return x.copy()
    try:
        # The public soxr.resample() accepts only the five named recipes; its C entry point takes
        # libsoxr's recipe bits directly, which is how the steep-filter flag gets through.
        out = soxr.soxr_ext.csoxr_divide_proc_float32(
            float(orig_rate), float(new_rate), np.ascontiguousarray(two_d), _SOXR_RECIPE
        )
    except (AttributeError, TypeError):  # a python-soxr without that entry point
        out = soxr.resample(two_d, orig_rate, new_rate, quality="VHQ")
    out = np.asarray(out, dtype=np.float32)
    return out if x.ndim == 2 else out[:, 0]


def resample(samples: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Band-limited sample-rate conversion (anti-aliased; passband flat to ~99% of Nyquist)."""
    if orig_rate <= 0 or new_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_rate} -> {new_rate}")
    samples = np.asarray(samples, dtype=np.float32)
    if orig_rate == new_rate:
        return samples.copy()
    return _soxr_resample(samples, orig_rate, new_rate)


def validate_samples(samples: np.ndarray, source: object) -> np.ndarray:
    """Refuse buffers that would poison features (NaN/Inf) or that hold nothing."""
    samples = np.asarray(samples)
    if samples.size == 0:
        raise AudioError(source, "contains no audio samples")
    if not np.issubdtype(samples.dtype, np.floating):
        raise AudioError(source, f"samples must be floating point, got {samples.dtype}")
    if not np.isfinite(samples).all():
        bad = int(np.size(samples) - np.count_nonzero(np.isfinite(samples)))
        raise AudioError(source, f"contains {bad} NaN/Inf sample value(s)")
    return samples.astype(np.float32, copy=False)


#: integer sample formats a caller's array may come in, and the full scale of each
_INTEGER_FULL_SCALE = {np.dtype(np.int16): 32768.0, np.dtype(np.int32): 2147483648.0, np.dtype(np.int8): 128.0}
#: the most channels an array may have (more is taken for a mistaken layout, not audio)
MAX_ARRAY_CHANNELS = 16


def array_samples(samples, sample_rate: int | None, target_rate: int, source: object = "audio array") -> np.ndarray:
    """A caller's array as model input: float32 mono at ``target_rate``, or one clear error.

    What arrives from other libraries is converted, never misread: int16/int32/int8 PCM is scaled
    to [-1, 1] (uint8 around 128, as in 8-bit WAV), float64 narrowed, channels averaged whether
    laid out [samples, channels] or [channels, samples] (the longer axis is time), and audio at
    ``sample_rate`` resampled (None = already at ``target_rate``). Floats far outside [-1, 1]
    (integer PCM stored as float) and anything not audio-shaped are refused.
    """
    if isinstance(samples, (list, tuple)):
        samples = np.asarray(samples, dtype=np.float32)
    if not isinstance(samples, np.ndarray):
        raise AudioError(source, f"expected a numpy array of samples or a file path, got {type(samples).__name__}")
    x = samples
    if x.dtype in _INTEGER_FULL_SCALE:
        x = x.astype(np.float32) / _INTEGER_FULL_SCALE[x.dtype]
    elif x.dtype == np.uint8:
        x = (x.astype(np.float32) - 128.0) / 128.0
    elif x.dtype.kind == "f":
        x = x.astype(np.float32, copy=False)
    else:
        raise AudioError(source, f"unsupported sample type {x.dtype} (use float32 in [-1, 1] or int16 PCM)")
    if x.ndim == 2:
        time_axis = 0 if x.shape[0] >= x.shape[1] else 1
        if x.shape[1 - time_axis] > MAX_ARRAY_CHANNELS:
            raise AudioError(source, f"array of shape {samples.shape} is not audio: expected [samples] or "
                                     f"[samples, channels] with at most {MAX_ARRAY_CHANNELS} channels")
        x = x.mean(axis=1 - time_axis, dtype=np.float32)
    elif x.ndim != 1:
        raise AudioError(source, f"array of shape {samples.shape} is not audio: expected [samples] or [samples, channels]")
    if x.size and not np.isfinite(x).all():
        bad = int(x.size - np.count_nonzero(np.isfinite(x)))
        raise AudioError(source, f"contains {bad} NaN/Inf sample value(s)")
    if x.size and samples.dtype.kind == "f":
        peak = float(np.abs(x).max())
        if peak > 4.0:
            raise AudioError(source, f"float samples must lie in [-1, 1], found {peak:g} (integer PCM stored as "
                                     "float? divide by 32768 or pass the int16 array)")
    if sample_rate is not None:
        rate = check_sample_rate(source, sample_rate)
        if rate != target_rate:
            x = resample(x, rate, target_rate)
    return np.ascontiguousarray(x, dtype=np.float32)


def model_input(audio, sample_rate: int | None, target_rate: int) -> np.ndarray:
    """What ``transcribe`` accepts, as model input: a file path (``sample_rate`` then only names
    the rate of headerless PCM) or an array at ``sample_rate`` (None = ``target_rate``)."""
    if isinstance(audio, (str, os.PathLike)):
        return load_audio(audio, sample_rate=target_rate, raw_sample_rate=sample_rate)
    return array_samples(audio, sample_rate, target_rate)


def read_stdin_audio(target_rate: int = SAMPLE_RATE, raw_sample_rate: int | None = None, source=None) -> np.ndarray:
    """Audio piped to standard input (``-`` on the command line): any format libsndfile reads,
    or 16-bit PCM at ``raw_sample_rate``; float32 mono at ``target_rate``, validated."""
    import io

    data = (source if source is not None else sys.stdin.buffer).read()
    if not data:
        raise AudioError("-", "no audio on standard input")
    if raw_sample_rate is not None:
        rate = check_sample_rate("-", raw_sample_rate, "raw sample rate")
        if len(data) % 2:
            raise AudioError("-", f"{len(data)} bytes is not a whole number of 16-bit samples")
        samples = (np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0)[:, None]
    else:
        try:
            samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
        except (sf.SoundFileError, RuntimeError) as error:
            raise AudioError("-", _libsndfile_problem(error) + "; headerless PCM needs --raw-rate HZ") from None
        rate = check_sample_rate("-", rate)
    mono = resample(to_mono(validate_samples(samples, "-")), rate, target_rate)
    return validate_samples(mono, "-")


def iter_audio_blocks(path: str | os.PathLike, seconds: float = 10.0, *, raw_sample_rate: int | None = None,
                      raw_channels: int = 1) -> tuple[int, Iterator[np.ndarray]]:
    """(the file's sample rate, its audio as float32 mono blocks of about ``seconds``), decoded as
    they are consumed: a file of hours never sits in memory whole. The header is checked first
    (as ``audio_info``); a stream that decodes short of its header's length fails at its end."""
    info = audio_info(path, raw_sample_rate=raw_sample_rate, raw_channels=raw_channels)
    path = Path(path)
    if info.frames == 0:
        raise AudioError(path, "contains no audio samples (empty or truncated)")
    block = max(1, int(seconds * info.sample_rate))

    def raw_blocks() -> Iterator[np.ndarray]:
        data = np.memmap(path, dtype="<i2", mode="r").reshape(-1, info.channels)
        for start in range(0, len(data), block):
            yield to_mono(data[start : start + block].astype(np.float32) / 32768.0)

    def decoded_blocks() -> Iterator[np.ndarray]:
        seen = 0
        try:
            with _native_stderr_silenced(info.format == "MP3"):
                for piece in sf.blocks(str(path), blocksize=block, dtype="float32", always_2d=True):
                    seen += len(piece)
                    yield to_mono(piece)
        except (sf.SoundFileError, RuntimeError) as error:
            raise AudioError(path, _libsndfile_problem(error)) from None
        tolerance = _SHORTFALL_TOLERANCE.get(info.format, _DEFAULT_SHORTFALL_TOLERANCE)
        if seen < info.frames * (1.0 - tolerance):
            raise AudioError(path, f"truncated or corrupt: header declares {info.frames} samples but only "
                                   f"{seen} could be decoded")

    return info.sample_rate, (raw_blocks() if info.format == "RAW" else decoded_blocks())


def load_audio(
    path: str | os.PathLike,
    *,
    sample_rate: int = SAMPLE_RATE,
    raw_sample_rate: int | None = None,
    max_duration: float | None = None,
    raw_channels: int = 1,
) -> np.ndarray:
    """The one entry point for model input: float32 mono at ``sample_rate``, validated."""
    check_sample_rate("target", sample_rate)
    samples, rate = read_audio(
        path, raw_sample_rate=raw_sample_rate, raw_channels=raw_channels, max_duration=max_duration
    )
    mono = resample(to_mono(samples), rate, sample_rate)
    return validate_samples(mono, path)


def write_wav(path: str | os.PathLike, samples: np.ndarray, sample_rate: int) -> None:
    """16-bit PCM WAV, written atomically: a crash leaves either the old file or the new one.

    Corpus building and conversion run for hours and get interrupted; a half-written WAV would
    later decode "successfully" as a shorter file, so the data goes to a temporary file in the
    same directory and is renamed over the target only when complete.
    """
    path = Path(path)
    check_sample_rate(path, sample_rate)
    data = np.asarray(samples, dtype=np.float32)
    if data.ndim not in (1, 2):
        raise ValueError(f"expected [samples] or [samples, channels], got shape {data.shape}")
    if not np.isfinite(data).all():
        raise AudioError(path, "refusing to write NaN/Inf samples")
    data = np.clip(data, -1.0, 1.0)
    with atomic_write(path) as temp:
        sf.write(temp, data, sample_rate, format="WAV", subtype="PCM_16")


def audio_duration(
    path: str | os.PathLike, *, raw_sample_rate: int | None = None, raw_channels: int = 1
) -> float:
    """Seconds, from the header alone (or the size of a raw file): cheap enough for manifests."""
    return audio_info(path, raw_sample_rate=raw_sample_rate, raw_channels=raw_channels).duration
