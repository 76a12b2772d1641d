"""Feature settings and the streaming filterbank, without torch.

``FbankOptions`` (stored with every model) and ``StreamingFbank`` (kaldi-native-fbank's online
extractor; numpy frames out) are all that serving needs, so the ONNX runtime imports this module
and never torch. The batched torch implementation used for training lives in
``edgeasr.audio.features``, which re-exports these names.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import kaldi_native_fbank as knf
import numpy as np

from edgeasr.errors import DataError

#: Factor between [-1, 1] floats and the int16 range Kaldi front-ends expect.
INT16_SCALE = 32768.0
#: Kaldi floors mel energies at float32 epsilon before the log.
LOG_FLOOR = float(np.finfo(np.float32).eps)


@dataclass
class FbankOptions:
    """Feature settings; stored with every model so serving uses exactly what training used."""

    sample_rate: int = 16000
    num_mel_bins: int = 80
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    dither: float = 0.0
    preemph: float = 0.97
    low_freq: float = 20.0
    high_freq: float = 0.0  # <= 0 means an offset from Nyquist (Kaldi convention): 0 is Nyquist
    snip_edges: bool = True

    def __post_init__(self) -> None:
        nyquist = self.sample_rate / 2
        problems = []
        if self.sample_rate <= 0:
            problems.append(f"sample_rate must be positive, got {self.sample_rate}")
        if self.num_mel_bins < 3:
            problems.append(f"num_mel_bins must be >= 3, got {self.num_mel_bins}")
        if self.frame_shift_ms <= 0 or self.frame_length_ms < self.frame_shift_ms:
            problems.append("need 0 < frame_shift_ms <= frame_length_ms")
        if self.dither < 0:
            problems.append("dither must be >= 0")
        if not 0.0 <= self.preemph <= 1.0:
            problems.append("preemph must be in [0, 1]")
        if not 0.0 <= self.low_freq < self.effective_high_freq <= nyquist:
            problems.append(
                f"need 0 <= low_freq < high_freq <= Nyquist ({nyquist:g} Hz), got "
                f"low_freq={self.low_freq:g}, high_freq={self.high_freq:g}"
            )
        if problems:
            raise DataError("fbank options: " + "; ".join(problems))

    @property
    def effective_high_freq(self) -> float:
        return self.high_freq if self.high_freq > 0 else self.sample_rate / 2 + self.high_freq

    @property
    def window_size(self) -> int:
        # Truncation, as Kaldi does, so frame counts agree with kaldi-native-fbank.
        return int(self.sample_rate * 0.001 * self.frame_length_ms)

    @property
    def window_shift(self) -> int:
        return int(self.sample_rate * 0.001 * self.frame_shift_ms)

    @property
    def padded_window_size(self) -> int:
        return 1 << (self.window_size - 1).bit_length()

    # --- the front-end protocol (edgeasr.audio.frontend) ---------------------------------------
    kind = "fbank"

    @property
    def dim(self) -> int:
        return self.num_mel_bins

    @property
    def frame_shift(self) -> float:
        """Seconds between frames."""
        return self.frame_shift_ms / 1000.0

    def compute(self, samples: np.ndarray):  # noqa: ANN201 - torch.Tensor, torch imported lazily
        """Features of one utterance, [T, dim] float32 torch tensor (batched torch fbank)."""
        from edgeasr.audio.features import compute_fbank

        return compute_fbank(samples, self)

    def stream(self) -> "StreamingFbank":
        return StreamingFbank(self)

    def to_dict(self) -> dict[str, Any]:
        # No "kind" key: fbank options stored before front ends had kinds look the same, and
        # feature-cache fingerprints stay valid (edgeasr.audio.frontend treats no kind as fbank).
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FbankOptions:
        """Strict on purpose: a misspelled key in a model file must not silently change features."""
        data = dict(data)
        if data.get("kind", "fbank") != "fbank":
            raise DataError(f"fbank options: kind is '{data['kind']}', not 'fbank'")
        data.pop("kind", None)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DataError(f"fbank options: unknown field(s) {', '.join(unknown)}")
        return cls(**data)

    def to_knf(self) -> knf.FbankOptions:
        opts = knf.FbankOptions()
        opts.frame_opts.samp_freq = float(self.sample_rate)
        opts.frame_opts.frame_length_ms = float(self.frame_length_ms)
        opts.frame_opts.frame_shift_ms = float(self.frame_shift_ms)
        opts.frame_opts.dither = float(self.dither)
        opts.frame_opts.preemph_coeff = float(self.preemph)
        opts.frame_opts.remove_dc_offset = True
        opts.frame_opts.window_type = "povey"
        opts.frame_opts.round_to_power_of_two = True
        opts.frame_opts.snip_edges = bool(self.snip_edges)
        opts.mel_opts.num_bins = int(self.num_mel_bins)
        opts.mel_opts.low_freq = float(self.low_freq)
        opts.mel_opts.high_freq = float(self.high_freq)
        opts.use_energy = False
        opts.use_log_fbank = True
        opts.use_power = True
        return opts


def num_frames(num_samples: int, options: FbankOptions) -> int:
    """Frames Kaldi produces for ``num_samples`` (model code sizes its masks with this)."""
    shift = options.window_shift
    if options.snip_edges:
        if num_samples < options.window_size:
            return 0
        return 1 + (num_samples - options.window_size) // shift
    return (num_samples + shift // 2) // shift



class StreamingFbank:
    """Chunk-in, frames-out features for serving; identical frames whatever the chunking.

    kaldi-native-fbank keeps the not-yet-complete tail of the signal internally, so chunks of any
    size (0 or 1 sample included) can be fed; frames already handed out are dropped from its buffer
    so memory stays flat on endless streams.
    """

    def __init__(self, options: FbankOptions | None = None) -> None:
        self.options = options or FbankOptions()
        self._knf_options = self.options.to_knf()
        self.reset()

    def reset(self) -> None:
        """Start a new utterance (the old one's buffered samples are discarded)."""
        self._fbank = knf.OnlineFbank(self._knf_options)
        self._next = 0
        self._finished = False

    @property
    def frames_emitted(self) -> int:
        return self._next

    def _take_ready(self) -> np.ndarray:
        ready = self._fbank.num_frames_ready
        count = ready - self._next
        if count <= 0:
            return np.zeros((0, self.options.num_mel_bins), dtype=np.float32)
        out = np.empty((count, self.options.num_mel_bins), dtype=np.float32)
        for row, index in enumerate(range(self._next, ready)):
            out[row] = self._fbank.get_frame(index)
        self._fbank.pop(count)
        self._next = ready
        return out

    def accept(self, samples: np.ndarray) -> np.ndarray:
        """Feed [-1, 1] mono samples; returns the frames that became complete, [n, F]."""
        if self._finished:
            raise RuntimeError("StreamingFbank.accept() after finish(); call reset() first")
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if samples.size:
            self._fbank.accept_waveform(float(self.options.sample_rate), samples * INT16_SCALE)
        return self._take_ready()

    def finish(self) -> np.ndarray:
        """Flush at end of input (only ``snip_edges=False`` has frames waiting on it)."""
        if not self._finished:
            self._fbank.input_finished()
            self._finished = True
        return self._take_ready()
