"""Whisper log-mel features, batched in torch: the training-time twin of ``StreamingWhisperMel``.

``TorchWhisperMel`` pads every utterance of a zero-padded batch about its own end (one flip for
the start, one gather/scatter of ``n_fft // 2`` samples per utterance for the end), frames the
padded batch with a strided view, and applies one ``rfft``, one matmul and a floor computed over
each utterance's own frames. Settings and the streaming extractor live in the torch-free
``edgeasr.audio.whisper_mel`` (re-exported here).

Precision: it computes in the waveforms' dtype (float64 in, float64 maths; anything else in
float32). In float32 the features differ from the float64 streaming extractor by rounding only,
largest in bins near the floor of quiet frames (float32 FFT noise sits ~140 dB below a frame's
energy, and the floor shows bins 80 dB below the maximum). ``compute_whisper_mel`` feeds float64,
so it matches streaming to float32 output rounding.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from edgeasr.audio.whisper_mel import (  # noqa: F401
    LOG_EPSILON,
    StreamingWhisperMel,
    WhisperMelOptions,
    num_frames,
    periodic_hann,
    whisper_mel_filters,
)


class TorchWhisperMel(torch.nn.Module):
    """Batched Whisper log-mel in torch (no trainable parameters)."""

    def __init__(self, options: WhisperMelOptions | None = None) -> None:
        super().__init__()
        self.options = options or WhisperMelOptions()
        # Not buffers: they are made per dtype from float64 numpy, because ``.double()`` on
        # float32 buffers would keep float32 rounding, whose leakage shows near the floor.
        self._constants_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def _constants(self, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, ...]:
        """(window [n_fft], filters [n_fft // 2 + 1, F]) in ``dtype`` on ``device``."""
        key = (dtype, str(device))
        if key not in self._constants_cache:
            window = torch.from_numpy(periodic_hann(self.options.n_fft))
            filters = torch.from_numpy(whisper_mel_filters(self.options, dtype=np.float64))
            self._constants_cache[key] = (
                window.to(device=device, dtype=dtype),
                filters.to(device=device, dtype=dtype),
            )
        return self._constants_cache[key]

    def _padded(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """[B, N] -> [B, N + n_fft]: each utterance reflect-padded about its own ends.

        Utterances shorter than ``n_fft // 2 + 1`` samples are zero-padded instead.
        """
        opts = self.options
        pad = opts.pad
        batch, samples = x.shape
        reflectable = (lengths >= opts.min_reflect_samples).to(x.dtype)[:, None]
        if samples >= pad + 1:
            head = x[:, 1 : pad + 1].flip(1) * reflectable
        else:
            head = x.new_zeros(batch, pad)
        padded = torch.cat([head, x, x.new_zeros(batch, pad)], dim=1)
        # End: padded[pad + n + k] = x[n - 2 - k] for k < pad (zeros where not reflectable; the
        # zero padding after n already sits there).
        k = torch.arange(pad, device=x.device)[None, :]
        n = lengths[:, None]
        source = (n - 2 - k).clamp(min=0, max=max(samples - 1, 0))
        tail = torch.gather(x, 1, source) * reflectable if samples else x.new_zeros(batch, pad)
        return padded.scatter(1, pad + n + k, tail)

    def forward(
        self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, N] float audio in [-1, 1] (zero-padded after ``lengths``) -> ([B, T, F], [B]).

        Every utterance gets its own end padding and its own floor over its own frames; frames
        past an utterance's length are 0.
        """
        if waveforms.dim() != 2:
            raise ValueError(f"waveforms must be [batch, samples], got {tuple(waveforms.shape)}")
        opts = self.options
        batch, samples = waveforms.shape
        device = waveforms.device
        if lengths is None:
            lengths = torch.full((batch,), samples, dtype=torch.long, device=device)
        lengths = lengths.to(device=device, dtype=torch.long)
        if batch and (int(lengths.min()) < 0 or int(lengths.max()) > samples):
            raise ValueError(f"lengths must be in [0, {samples}], got {lengths.tolist()}")
        feat_lengths = torch.div(lengths, opts.hop_length, rounding_mode="floor")
        total = int(feat_lengths.max()) if batch else 0
        dtype = torch.float64 if waveforms.dtype == torch.float64 else torch.float32
        if total == 0:  # MKL's FFT rejects empty input
            return waveforms.new_zeros(batch, 0, opts.num_mel_bins, dtype=dtype), feat_lengths

        window, filters = self._constants(dtype, device)
        x = waveforms.to(dtype)
        # Zero anything after each length, so the padding is what we say it is.
        inside = torch.arange(samples, device=device)[None, :] < lengths[:, None]
        x = torch.where(inside, x, torch.zeros((), dtype=x.dtype, device=device))
        frames = self._padded(x, lengths).unfold(1, opts.n_fft, opts.hop_length)[:, :total]
        spectrum = torch.fft.rfft(frames * window, dim=-1)
        power = spectrum.real.square() + spectrum.imag.square()
        log_mel = torch.matmul(power, filters).clamp_min(LOG_EPSILON).log10()

        valid = torch.arange(total, device=device)[None, :] < feat_lengths[:, None]
        frame_max = log_mel.amax(dim=-1).masked_fill(~valid, float("-inf"))
        if opts.floor == "running":
            ceiling = torch.cummax(frame_max, dim=1).values
        else:
            ceiling = frame_max.amax(dim=1, keepdim=True).expand(-1, total)
        # -inf only where no frame is valid yet, i.e. on frames that are zeroed below.
        floor = (ceiling - opts.floor_range).clamp_min(float(np.log10(LOG_EPSILON)))
        feats = (torch.maximum(log_mel, floor[..., None]) + 4.0) / 4.0
        zero = torch.zeros((), dtype=feats.dtype, device=device)
        feats = torch.where(valid[..., None], feats, zero)
        return feats, feat_lengths


@lru_cache(maxsize=8)
def _cached_extractor(key: tuple) -> TorchWhisperMel:
    options = WhisperMelOptions.from_dict(dict(key))
    return TorchWhisperMel(options).eval()


def compute_whisper_mel(
    samples: np.ndarray | torch.Tensor, options: WhisperMelOptions | None = None
) -> torch.Tensor:
    """Features of one mono utterance, [T, num_mel_bins] float32 (T = N // hop, may be 0).

    Computed in float64 (then rounded), so it equals ``StreamingWhisperMel`` to ~1e-6.
    """
    options = options or WhisperMelOptions()
    if isinstance(samples, np.ndarray):
        samples = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float64))
    if samples.dim() != 1:
        raise ValueError(
            f"compute_whisper_mel expects 1-D mono samples, got shape {tuple(samples.shape)}"
        )
    extractor = _cached_extractor(tuple(sorted(options.to_dict().items())))
    with torch.no_grad():
        feats, _ = extractor(samples[None].to(torch.float64))
    return feats[0].to(torch.float32)
