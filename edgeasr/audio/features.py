"""Kaldi-compatible 80-dim log-mel filterbank features, batched (torch) and streaming (knf).

Two implementations of one definition, because training and serving want different things:

* ``TorchFbank`` computes whole batches with a handful of tensor ops (one ``unfold``, one
  ``rfft``, one matmul). It is the training path: several times faster than calling
  kaldi-native-fbank frame by frame and it runs on any torch device.
* ``StreamingFbank`` wraps ``kaldi_native_fbank.OnlineFbank``, which accepts audio in chunks of any
  size and hands back the frames that became complete. It is the serving path.

Both follow Kaldi's ``compute-fbank-feats`` recipe (povey window, DC removal, pre-emphasis 0.97,
power spectrum, triangular mel filters on the HTK mel scale, natural log floored at float
epsilon), so a model trained on one can be served with the other: the test-suite checks they agree
to < 1e-3 on recording-like audio. Two caveats, both about float32 limits rather than definitions:
a mel bin more than ~100 dB below the strongest bin of its frame holds rounding noise in either
implementation (only noiseless synthetic signals have such bins), and with a large DC offset
kaldi-native-fbank's float32 DC removal leaves ~0.03 error in the lowest bins of quiet frames,
where ours (DC removed in two passes) stays within 1e-3 of a float64 computation.

Kaldi convention on scale: Kaldi analyses int16 sample values, so its log energies are offsets of
``2 * ln(32768)`` from those of [-1, 1] audio. Callers here always pass [-1, 1] floats; both classes
multiply by 32768 internally so features (and therefore CMVN statistics and trained models) are
interchangeable with Kaldi/WeNet/k2 front-ends. ``dither`` is expressed in the same int16 units.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch


from edgeasr.audio.fbank import INT16_SCALE, LOG_FLOOR, FbankOptions, StreamingFbank, num_frames  # noqa: F401


def _mel(freq: np.ndarray | float) -> np.ndarray | float:
    return 1127.0 * np.log(1.0 + np.asarray(freq, dtype=np.float64) / 700.0)


def mel_filterbank(options: FbankOptions) -> torch.Tensor:
    """Kaldi's triangular filters, shape [padded_window_size // 2 + 1, num_mel_bins].

    Triangles are linear in mel (not in Hz) and sampled on FFT bin centres; the Nyquist bin gets
    weight 0, as in Kaldi, where the filters only span the first N/2 bins.
    """
    n_fft = options.padded_window_size
    num_fft_bins = n_fft // 2
    bin_width = options.sample_rate / n_fft
    mel_low, mel_high = _mel(options.low_freq), _mel(options.effective_high_freq)
    delta = (mel_high - mel_low) / (options.num_mel_bins + 1)
    edges = mel_low + delta * np.arange(options.num_mel_bins + 2)
    left, center, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    mel = _mel(bin_width * np.arange(num_fft_bins))[None, :]
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    weights = np.where((mel > left) & (mel < right), np.minimum(up, down), 0.0)
    weights = np.concatenate([weights, np.zeros((options.num_mel_bins, 1))], axis=1)
    return torch.from_numpy(weights.T.astype(np.float32)).contiguous()


def povey_window(size: int) -> torch.Tensor:
    """Hann raised to 0.85: Kaldi's default, slightly less tapered than Hann."""
    n = np.arange(size, dtype=np.float64)
    hann = 0.5 - 0.5 * np.cos(2.0 * math.pi * n / (size - 1))
    return torch.from_numpy((hann**0.85).astype(np.float32))


class TorchFbank(torch.nn.Module):
    """Batched Kaldi fbank in torch; the training-time front end (no trainable parameters)."""

    def __init__(self, options: FbankOptions | None = None) -> None:
        super().__init__()
        self.options = options or FbankOptions()
        self.register_buffer("window", povey_window(self.options.window_size), persistent=False)
        self.register_buffer("mel_weights", mel_filterbank(self.options), persistent=False)

    def _frames(self, waveforms: torch.Tensor, lengths: torch.Tensor, total: int) -> torch.Tensor:
        opts = self.options
        size, shift = opts.window_size, opts.window_shift
        if opts.snip_edges:
            if waveforms.shape[1] < size:
                return waveforms.new_zeros(waveforms.shape[0], 0, size)
            return waveforms.unfold(1, size, shift)[:, :total]
        # Frames centred on multiples of the shift; samples outside [0, length) are mirrored
        # (Kaldi: s < 0 -> -s - 1, s >= n -> 2n - 1 - s) about each utterance's own end.
        starts = torch.arange(total, device=waveforms.device) * shift + shift // 2 - size // 2
        index = starts[:, None] + torch.arange(size, device=waveforms.device)[None, :]
        n = lengths.to(waveforms.device)[:, None, None].clamp(min=1)
        index = index[None].expand(waveforms.shape[0], -1, -1)
        index = torch.where(index < 0, -index - 1, index)
        index = torch.where(index >= n, 2 * n - 1 - index, index)
        index = index.clamp(min=0, max=waveforms.shape[1] - 1)
        flat = torch.gather(waveforms, 1, index.reshape(waveforms.shape[0], -1))
        return flat.reshape(waveforms.shape[0], total, size)

    def forward(
        self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, N] float audio in [-1, 1] (zero-padded after ``lengths``) -> ([B, T, F], [B]).

        Frames past an utterance's own length are set to 0, so padding never leaks into
        statistics that ignore the lengths.
        """
        if waveforms.dim() != 2:
            raise ValueError(f"waveforms must be [batch, samples], got {tuple(waveforms.shape)}")
        batch, samples = waveforms.shape
        if lengths is None:
            lengths = torch.full((batch,), samples, dtype=torch.long)
        lengths = lengths.to(torch.long).cpu()
        feat_lengths = torch.tensor([num_frames(int(n), self.options) for n in lengths])
        total = int(feat_lengths.max()) if batch else 0
        opts = self.options

        if total == 0:  # nothing as long as one window (MKL's FFT also rejects empty input)
            empty = waveforms.new_zeros(batch, 0, opts.num_mel_bins, dtype=self.window.dtype)
            return empty, feat_lengths.to(waveforms.device)
        # Computes in the buffers' dtype: float32 normally, float64 after ``.double()``.
        x = waveforms.to(self.window.dtype) * INT16_SCALE
        frames = self._frames(x, lengths, total)
        if opts.dither > 0 and self.training:
            frames = frames + opts.dither * torch.randn_like(frames)
        # DC removal in two passes: with a DC offset, one float32 mean is off by ~1e-7 of the
        # offset, and that residual DC leaks into the lowest mel bins of quiet frames (Kaldi's
        # preemphasis leaves little else there). The second pass removes the residual, giving
        # float64 accuracy at float32 cost.
        frames = frames - frames.mean(dim=-1, keepdim=True)
        frames = frames - frames.mean(dim=-1, keepdim=True)
        if opts.preemph > 0:
            # In place per frame, as Kaldi: x[i] -= c * x[i-1] for i > 0, x[0] -= c * x[0].
            previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
            frames = frames - opts.preemph * previous
        frames = frames * self.window
        spectrum = torch.fft.rfft(frames, n=opts.padded_window_size)
        power = spectrum.real.square() + spectrum.imag.square()
        feats = torch.matmul(power, self.mel_weights).clamp_min(LOG_FLOOR).log()

        valid = torch.arange(total)[None, :] < feat_lengths[:, None]
        feats = feats * valid.to(feats.device, feats.dtype)[..., None]
        return feats, feat_lengths.to(waveforms.device)


@lru_cache(maxsize=8)
def _cached_extractor(key: tuple) -> TorchFbank:
    options = FbankOptions(**dict(key))
    return TorchFbank(options).eval()


def compute_fbank(
    samples: np.ndarray | torch.Tensor, options: FbankOptions | None = None
) -> torch.Tensor:
    """Features of one mono utterance, [T, num_mel_bins] float32 (T may be 0 for tiny inputs)."""
    options = options or FbankOptions()
    if isinstance(samples, np.ndarray):
        samples = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
    if samples.dim() != 1:
        raise ValueError(
            f"compute_fbank expects 1-D mono samples, got shape {tuple(samples.shape)}"
        )
    extractor = _cached_extractor(tuple(sorted(options.to_dict().items())))
    with torch.no_grad():
        feats, _ = extractor(samples[None])
    return feats[0]
