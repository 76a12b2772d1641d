"""Whisper's log-mel front end, settings and streaming extractor, without torch.

Whisper's encoder expects the features of ``whisper.audio.log_mel_spectrogram``: a centred STFT
(periodic Hann window of 400 samples, hop 160, ``n_fft // 2`` samples of reflect padding at both
ends, last frame dropped so an utterance of ``N`` samples gives ``N // 160`` frames), the power
spectrum through 80 Slaney-normalised mel filters on the Slaney mel scale, ``log10`` of the energies
floored at 1e-10, a dynamic-range floor 8 decades below a maximum, and ``(x + 4) / 4``.

Whisper takes that maximum over the whole utterance, which a streaming recognizer cannot know
until the end. ``WhisperMelOptions.floor`` therefore chooses between:

* ``"running"`` (edgeasr's default): frame ``t`` is floored 8 decades below the largest log-mel
  value of frames ``0..t``. Every frame depends only on the past, so streaming and batch agree
  exactly and the only state is one scalar.
* ``"utterance"``: Whisper exactly. ``StreamingWhisperMel`` can only produce these frames at
  ``finish()``, so it holds them (and its memory grows with the utterance) until then.

The running floor is never above the utterance floor, so the two modes differ only in frames
before the loudest part of the utterance, and only in bins more than 8 decades below it.

Inputs too short for reflect padding (fewer than ``n_fft // 2 + 1`` samples) are zero-padded
instead, in streaming and batch alike (Whisper itself would fail on them).

``StreamingWhisperMel`` works in float64 so its frames are a reference the batched torch version
(``edgeasr.audio.whisper_features``, training) can be checked against; frames come out as
float32. Serving imports only this module, so it must not import torch at module level.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from edgeasr.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: Mel energies are floored here before the log (Whisper's value).
LOG_EPSILON = 1e-10
FLOOR_MODES = ("running", "utterance")


@dataclass
class WhisperMelOptions:
    """Whisper log-mel settings; stored with every model that uses them."""

    kind: ClassVar[str] = "whisper_mel"

    sample_rate: int = 16000
    n_fft: int = 400
    hop_length: int = 160
    num_mel_bins: int = 80
    floor_range: float = 8.0  # decades (log10 units) kept below the maximum
    floor: str = "running"  # "running" (streamable) or "utterance" (Whisper exactly)

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.sample_rate, int) or self.sample_rate <= 0:
            problems.append(f"sample_rate must be a positive integer, got {self.sample_rate!r}")
        if not isinstance(self.n_fft, int) or self.n_fft < 2 or self.n_fft % 2:
            problems.append(f"n_fft must be an even integer >= 2, got {self.n_fft!r}")
        if not isinstance(self.hop_length, int) or self.hop_length <= 0:
            problems.append(f"hop_length must be a positive integer, got {self.hop_length!r}")
        elif isinstance(self.n_fft, int) and self.hop_length > self.n_fft // 2:
            # A frame must reach past the next frame's centre, or streaming would emit frames
            # that a shorter final utterance does not have.
            problems.append(
                f"hop_length must be <= n_fft // 2 ({self.n_fft // 2}), got {self.hop_length}"
            )
        if not isinstance(self.num_mel_bins, int) or self.num_mel_bins < 1:
            problems.append(f"num_mel_bins must be a positive integer, got {self.num_mel_bins!r}")
        if not isinstance(self.floor_range, (int, float)) or not self.floor_range > 0:
            problems.append(f"floor_range must be > 0, got {self.floor_range!r}")
        if self.floor not in FLOOR_MODES:
            problems.append(f"floor must be one of {', '.join(FLOOR_MODES)}, got {self.floor!r}")
        if problems:
            raise DataError("whisper mel options: " + "; ".join(problems))
        self.floor_range = float(self.floor_range)

    # -- the front-end protocol shared with FbankOptions ---------------------------------------

    @property
    def dim(self) -> int:
        return self.num_mel_bins

    @property
    def frame_shift(self) -> float:
        """Seconds between frames."""
        return self.hop_length / self.sample_rate

    def compute(self, samples: np.ndarray) -> torch.Tensor:
        """Features of one mono [-1, 1] utterance, [T, dim] float32 torch tensor (batch path)."""
        from edgeasr.audio.whisper_features import compute_whisper_mel

        return compute_whisper_mel(samples, self)

    def stream(self) -> StreamingWhisperMel:
        return StreamingWhisperMel(self)

    # -- serialisation --------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WhisperMelOptions:
        """Strict on purpose: a misspelled key in a model file must not silently change features."""
        data = dict(data)
        kind = data.pop("kind", cls.kind)
        if kind != cls.kind:
            raise DataError(f"whisper mel options: kind must be {cls.kind!r}, got {kind!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DataError(f"whisper mel options: unknown field(s) {', '.join(unknown)}")
        return cls(**data)

    # -- derived sizes --------------------------------------------------------------------------

    @property
    def pad(self) -> int:
        """Samples of reflect padding at each end (the frame centring)."""
        return self.n_fft // 2

    @property
    def min_reflect_samples(self) -> int:
        """Shortest input that can be reflect-padded; shorter ones are zero-padded."""
        return self.pad + 1


def num_frames(num_samples: int, options: WhisperMelOptions) -> int:
    """Frames of an utterance of ``num_samples`` samples (the last STFT frame is dropped)."""
    return max(int(num_samples), 0) // options.hop_length


def _hz_to_slaney_mel(hz: np.ndarray | float) -> np.ndarray:
    """Slaney's mel scale: linear (3 mels per 200 Hz) below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz * 3.0 / 200.0
    log_step = np.log(6.4) / 27.0  # 27 mels per factor 6.4 in frequency
    logarithmic = 15.0 + np.log(np.maximum(hz, 1e-30) / 1000.0) / log_step
    return np.where(hz >= 1000.0, logarithmic, linear)


def _slaney_mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    log_step = np.log(6.4) / 27.0
    return np.where(mel >= 15.0, 1000.0 * np.exp(log_step * (mel - 15.0)), mel * 200.0 / 3.0)


def whisper_mel_filters(
    options: WhisperMelOptions | None = None, dtype: type = np.float32
) -> np.ndarray:
    """Slaney-normalised triangular mel filters, [n_fft // 2 + 1, num_mel_bins].

    The filters of ``librosa.filters.mel(sr, n_fft, n_mels)`` with its defaults (0 Hz to Nyquist,
    Slaney scale, area normalisation), transposed so the power spectrum multiplies from the left.
    """
    options = options or WhisperMelOptions()
    n_bins = options.n_fft // 2 + 1
    bin_hz = np.arange(n_bins, dtype=np.float64) * options.sample_rate / options.n_fft
    top = _hz_to_slaney_mel(options.sample_rate / 2.0)
    edges_hz = _slaney_mel_to_hz(np.linspace(0.0, float(top), options.num_mel_bins + 2))
    left, centre, right = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
    rising = (bin_hz[None, :] - left) / (centre - left)
    falling = (right - bin_hz[None, :]) / (right - centre)
    weights = np.clip(np.minimum(rising, falling), 0.0, None)
    weights *= 2.0 / (right - left)  # equal area per filter
    return np.ascontiguousarray(weights.T, dtype=dtype)


def periodic_hann(size: int) -> np.ndarray:
    """Periodic Hann window (``torch.hann_window(size)``), float64."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(size, dtype=np.float64) / size)


class StreamingWhisperMel:
    """Chunk-in, frames-out Whisper log-mel; identical frames whatever the chunking.

    Frame ``i`` is centred on sample ``i * hop`` and covers samples ``i * hop - n_fft // 2`` to
    ``i * hop + n_fft // 2 - 1``, so it is emitted as soon as those have arrived (frame 0 also
    waits for sample ``n_fft // 2``, which the start's reflection mirrors into it). Samples no
    frame still needs are dropped, so with the running floor memory stays flat on endless
    streams: the buffer holds less than ``n_fft + chunk`` samples and the floor is one scalar.
    """

    def __init__(self, options: WhisperMelOptions | None = None) -> None:
        self.options = options or WhisperMelOptions()
        self._window = periodic_hann(self.options.n_fft)
        self._filters = whisper_mel_filters(self.options, dtype=np.float64)
        self.reset()

    def reset(self) -> None:
        """Start a new utterance (the old one's buffered samples and floor are discarded)."""
        self._buffer = np.zeros(0, dtype=np.float64)
        self._buffer_start = 0  # absolute index of self._buffer[0]
        self._received = 0
        self._next = 0  # next frame index to compute
        self._running_max = -np.inf
        self._held: list[np.ndarray] = []  # un-floored frames, floor="utterance" only
        self._finished = False

    @property
    def frames_emitted(self) -> int:
        """Frames handed out so far (with ``floor="utterance"``, 0 until ``finish()``)."""
        if self.options.floor == "utterance":
            return self._next if self._finished else 0
        return self._next

    @property
    def buffered_samples(self) -> int:
        """Samples held for frames not yet computed."""
        return int(self._buffer.size)

    def _empty(self) -> np.ndarray:
        return np.zeros((0, self.options.num_mel_bins), dtype=np.float32)

    def _ready(self) -> int:
        """Frames whose samples have all arrived (more may come once the end is known)."""
        opts = self.options
        if self._received < opts.min_reflect_samples:
            return 0
        return (self._received - opts.pad) // opts.hop_length + 1

    def _log_mel(self, stop: int, end: int | None) -> np.ndarray:
        """Un-floored log10 mel energies of frames ``self._next .. stop - 1``, float64.

        ``end`` is the utterance length once known (for the end's padding), else None.
        """
        opts = self.options
        first = self._next * opts.hop_length - opts.pad
        last = (stop - 1) * opts.hop_length + opts.pad  # one past the last sample needed
        if first >= 0 and (end is None or last <= end):  # inside the signal (all but the ends): a view
            signal = self._buffer[first - self._buffer_start : last - self._buffer_start]
            return self._spectrum(signal)
        index = np.arange(first, last)
        if end is not None and end < opts.min_reflect_samples:
            inside = (index >= 0) & (index < end)
            source = np.where(inside, index, self._buffer_start)
            signal = np.where(inside, self._buffer[source - self._buffer_start], 0.0)
        else:
            index = np.abs(index)  # reflection about sample 0
            if end is not None:
                index = np.where(index >= end, 2 * end - 2 - index, index)
            signal = self._buffer[index - self._buffer_start]
        return self._spectrum(signal)

    def _spectrum(self, signal: np.ndarray) -> np.ndarray:
        """Un-floored log10 mel energies of the frames over ``signal`` (its samples, padding included)."""
        opts = self.options
        frames = np.lib.stride_tricks.sliding_window_view(signal, opts.n_fft)[:: opts.hop_length]
        spectrum = np.fft.rfft(frames * self._window, axis=-1)
        power = spectrum.real**2 + spectrum.imag**2
        return np.log10(np.maximum(power @ self._filters, LOG_EPSILON))

    def _drop_consumed(self) -> None:
        keep_from = max(0, self._next * self.options.hop_length - self.options.pad)
        if keep_from > self._buffer_start:
            self._buffer = self._buffer[keep_from - self._buffer_start :].copy()
            self._buffer_start = keep_from

    def _floor_running(self, log_mel: np.ndarray) -> np.ndarray:
        running = np.maximum.accumulate(
            np.concatenate([[self._running_max], log_mel.max(axis=1)])
        )[1:]
        self._running_max = float(running[-1])
        floored = np.maximum(log_mel, running[:, None] - self.options.floor_range)
        return ((floored + 4.0) / 4.0).astype(np.float32)

    def _emit(self, stop: int, end: int | None) -> np.ndarray:
        if stop <= self._next:
            return self._empty()
        log_mel = self._log_mel(stop, end)
        self._next = stop
        self._drop_consumed()
        if self.options.floor == "utterance":
            self._held.append(log_mel)
            return self._empty()
        return self._floor_running(log_mel)

    def accept(self, samples: np.ndarray) -> np.ndarray:
        """Feed [-1, 1] mono samples; returns the frames that became complete, [n, dim] float32.

        With ``floor="utterance"`` nothing comes out before ``finish()``.
        """
        if self._finished:
            raise RuntimeError("StreamingWhisperMel.accept() after finish(); call reset() first")
        samples = np.asarray(samples, dtype=np.float64).reshape(-1)
        if samples.size:
            self._buffer = np.concatenate([self._buffer, samples])
            self._received += samples.size
        return self._emit(self._ready(), None)

    def finish(self) -> np.ndarray:
        """Pad the end and return the remaining frames; the utterance then has ``N // hop``."""
        if self._finished:
            return self._empty()
        self._finished = True
        total = num_frames(self._received, self.options)
        out = self._emit(total, self._received)
        if self.options.floor != "utterance":
            return out
        if not self._held:
            return self._empty()
        log_mel = np.concatenate(self._held)
        self._held = []
        floored = np.maximum(log_mel, log_mel.max() - self.options.floor_range)
        return ((floored + 4.0) / 4.0).astype(np.float32)
