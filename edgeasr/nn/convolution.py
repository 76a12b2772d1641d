"""The Conformer convolution module, causal or not, with a cache for streaming.

pointwise conv (d -> 2d) -> GLU -> depthwise conv (kernel k) -> norm -> Swish -> pointwise conv.

A causal module pads k - 1 frames on the left only, so a frame never reads the future; streaming
then keeps the last k - 1 inputs of the depthwise conv as its cache and gives exactly the
full-sequence output. A non-causal module (symmetric padding) is for full-context models only.
Padded frames are zeroed before the depthwise conv so padding never leaks into real frames.
"""

from __future__ import annotations

import torch
from torch import nn


class ConvolutionModule(nn.Module):
    def __init__(self, d_model: int, kernel_size: int = 15, causal: bool = True) -> None:
        super().__init__()
        if not causal and kernel_size % 2 == 0:
            raise ValueError("a non-causal convolution needs an odd kernel size")
        self.causal = causal
        self.kernel_size = kernel_size
        self.pointwise_in = nn.Conv1d(d_model, 2 * d_model, 1)
        padding = 0 if causal else (kernel_size - 1) // 2
        self.depthwise = nn.Conv1d(d_model, d_model, kernel_size, padding=padding, groups=d_model)
        # LayerNorm rather than BatchNorm: per-frame statistics behave identically in streaming
        # and in training on padded batches.
        self.norm = nn.LayerNorm(d_model)
        self.activation = nn.SiLU()
        self.pointwise_out = nn.Conv1d(d_model, d_model, 1)

    @property
    def cache_frames(self) -> int:
        return self.kernel_size - 1 if self.causal else 0

    def forward(
        self, x: torch.Tensor, frame_mask: torch.Tensor | None = None, cache: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, D], frame_mask [B, T] (True = real), cache [B, D, k-1] -> (out, new_cache)."""
        if frame_mask is not None:
            x = x.masked_fill(~frame_mask.unsqueeze(-1), 0.0)
        h = nn.functional.glu(self.pointwise_in(x.transpose(1, 2)), dim=1)  # [B, D, T]
        if frame_mask is not None:
            h = h.masked_fill(~frame_mask.unsqueeze(1), 0.0)
        if self.causal:
            if cache is None or cache.size(2) == 0:
                cache = h.new_zeros(h.size(0), h.size(1), self.cache_frames)
            h = torch.cat([cache, h], dim=2)
            new_cache = h[:, :, h.size(2) - self.cache_frames :]
        else:
            new_cache = h.new_zeros(h.size(0), h.size(1), 0)
        h = self.depthwise(h)
        h = self.activation(self.norm(h.transpose(1, 2)))
        out = self.pointwise_out(h.transpose(1, 2)).transpose(1, 2)
        return out, new_cache
