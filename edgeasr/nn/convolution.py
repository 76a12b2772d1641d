"""The Conformer convolution module, causal or not, with a cache for streaming.

``ConvolutionModule`` (Conformer):
    pointwise conv (d -> 2d) -> GLU -> depthwise conv (kernel k) -> LayerNorm -> Swish -> pointwise conv
``BatchNormConvolutionModule`` (FusionFormer): no LayerNorm, no GLU, no Swish:
    pointwise (d -> d) -> BN -> ReLU -> depthwise -> BN -> ReLU -> pointwise -> BN
and every BN folds into the layer before it (``fuse()``).

A causal module pads k - 1 frames on the left only, so a frame never reads the future; streaming
then keeps the last k - 1 inputs of the depthwise conv as its cache and gives exactly the
full-sequence output. A non-causal module (symmetric padding) is for full-context models only.
Padded frames are zeroed before the depthwise conv so padding never leaks into real frames.
"""

from __future__ import annotations

import torch
from torch import nn

from edgeasr.nn.norm import DepthwiseConvBN, LinearBN


class _CachedConvolution(nn.Module):
    """What both convolution modules share: the kernel check and the cache length."""

    def __init__(self, kernel_size: int, causal: bool) -> None:
        super().__init__()
        if not causal and kernel_size % 2 == 0:
            raise ValueError("a non-causal convolution needs an odd kernel size")
        self.causal = causal
        self.kernel_size = kernel_size
        self.padding = 0 if causal else (kernel_size - 1) // 2

    @property
    def cache_frames(self) -> int:
        return self.kernel_size - 1 if self.causal else 0


def _with_history(
    h: torch.Tensor, frame_mask: torch.Tensor | None, cache: torch.Tensor | None, causal: bool, cache_frames: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero padded frames of ``h`` [B, D, T], prepend the cache when causal; -> (input, new_cache)."""
    if frame_mask is not None:
        h = h.masked_fill(~frame_mask.unsqueeze(1), 0.0)
    if not causal:
        return h, h.new_zeros(h.size(0), h.size(1), 0)
    if cache is None or cache.size(2) == 0:
        cache = h.new_zeros(h.size(0), h.size(1), cache_frames)
    h = torch.cat([cache, h], dim=2)
    return h, h[:, :, h.size(2) - cache_frames :]


class ConvolutionModule(_CachedConvolution):
    def __init__(self, d_model: int, kernel_size: int = 15, causal: bool = True) -> None:
        super().__init__(kernel_size, causal)
        # Kernel-1 convolutions are per-frame linears: stored and run as nn.Linear on [B, T, D]
        # (no slow generic convolution path, no transposes, and quantization treats them like
        # every other linear). Older checkpoints saved them as Conv1d weights [out, in, 1]; the
        # load hook below squeezes those.
        self.pointwise_in = nn.Linear(d_model, 2 * d_model)
        self.depthwise = nn.Conv1d(d_model, d_model, kernel_size, padding=self.padding, groups=d_model)
        # LayerNorm rather than BatchNorm: per-frame statistics behave identically in streaming
        # and in training on padded batches.
        self.norm = nn.LayerNorm(d_model)
        self.activation = nn.SiLU()
        self.pointwise_out = nn.Linear(d_model, d_model)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("pointwise_in.weight", "pointwise_out.weight"):
            weight = state_dict.get(prefix + name)
            if weight is not None and weight.dim() == 3:
                state_dict[prefix + name] = weight.squeeze(-1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(
        self, x: torch.Tensor, frame_mask: torch.Tensor | None = None, cache: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, D], frame_mask [B, T] (True = real), cache [B, D, k-1] -> (out, new_cache)."""
        if frame_mask is not None:
            x = x.masked_fill(~frame_mask.unsqueeze(-1), 0.0)
        h = nn.functional.glu(self.pointwise_in(x), dim=-1).transpose(1, 2)  # [B, D, T]
        h, new_cache = _with_history(h, frame_mask, cache, self.causal, self.cache_frames)
        h = self.depthwise(h)
        h = self.activation(self.norm(h.transpose(1, 2)))
        return self.pointwise_out(h), new_cache


class BatchNormConvolutionModule(_CachedConvolution):
    def __init__(self, d_model: int, kernel_size: int = 15, causal: bool = True) -> None:
        super().__init__(kernel_size, causal)
        # Pointwise convolutions are per-frame linears: run them on [B, T, D] without transposes.
        self.pointwise_in = LinearBN(d_model, d_model)
        self.depthwise = DepthwiseConvBN(d_model, kernel_size, padding=self.padding)
        self.pointwise_out = LinearBN(d_model, d_model)

    def forward(
        self, x: torch.Tensor, frame_mask: torch.Tensor | None = None, cache: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, D], frame_mask [B, T] (True = real), cache [B, D, k-1] -> (out, new_cache)."""
        h = torch.relu(self.pointwise_in(x, frame_mask)).transpose(1, 2)  # [B, D, T]
        h, new_cache = _with_history(h, frame_mask, cache, self.causal, self.cache_frames)
        h = torch.relu(self.depthwise(h, frame_mask)).transpose(1, 2)
        return self.pointwise_out(h, frame_mask), new_cache
