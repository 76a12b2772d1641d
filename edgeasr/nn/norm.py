"""BatchNorm that ignores padded frames, and layers that fold it away for inference (FusionFormer).

FusionFormer (Song et al., 2022) removes every LayerNorm from the Conformer and appends a BatchNorm
after every linear and convolution layer instead. In training the BatchNorm normalizes with batch
statistics; at inference it is a fixed per-channel affine map, so it folds into the weights of the
layer in front of it and costs nothing:

    W' = diag(gamma / sqrt(var + eps)) W,   b' = gamma (b - mean) / sqrt(var + eps) + beta

Batches are padded, so the statistics here are taken over real frames only: otherwise the zeros of
the padding would pull the mean toward 0 and shrink the variance differently for every batch mix.

``LinearBN`` and ``DepthwiseConvBN`` carry their BatchNorm until ``fuse()`` is called, which folds
it in and drops it; after that they are a plain linear / convolution. ``fuse_batch_norms(model)``
does it for a whole model (the recognizer calls it when it loads a model).
"""

from __future__ import annotations

import torch
from torch import nn


class MaskedBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the channels (last dim) of ``[B, T, C]``; statistics from real frames only."""

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        if not self.training:
            return (x - self.running_mean) * torch.rsqrt(self.running_var + self.eps) * self.weight + self.bias
        flat = x.reshape(-1, x.size(-1))
        if frame_mask is not None:
            flat = flat[frame_mask.reshape(-1)]
        count = flat.size(0)
        if count < 2:  # nothing to estimate from (e.g. an all-padding batch): use running stats
            return (x - self.running_mean) * torch.rsqrt(self.running_var + self.eps) * self.weight + self.bias
        mean = flat.mean(dim=0)
        var = flat.var(dim=0, unbiased=False)
        with torch.no_grad():
            self.num_batches_tracked += 1
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_var.lerp_(var.detach() * count / (count - 1), self.momentum)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias

    def scale_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The inference-time map as y = scale * x + shift (per channel)."""
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        return scale, self.bias - self.running_mean * scale


class LinearBN(nn.Module):
    """Linear -> BatchNorm over real frames; ``fuse()`` folds the BatchNorm into the linear."""

    def __init__(self, d_in: int, d_out: int, batch_norm: bool = True) -> None:
        super().__init__()
        self.linear = nn.Linear(d_in, d_out)
        self.bn: MaskedBatchNorm | None = MaskedBatchNorm(d_out) if batch_norm else None

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        y = self.linear(x)
        return y if self.bn is None else self.bn(y, frame_mask)

    @torch.no_grad()
    def fuse(self) -> None:
        if self.bn is None:
            return
        scale, shift = self.bn.scale_shift()
        self.linear.weight.mul_(scale.unsqueeze(1))
        self.linear.bias.mul_(scale).add_(shift)
        self.bn = None


class DepthwiseConvBN(nn.Module):
    """Depthwise Conv1d over ``[B, C, T]`` -> BatchNorm over real frames; ``fuse()`` folds it."""

    def __init__(self, channels: int, kernel_size: int, padding: int = 0, batch_norm: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, kernel_size, padding=padding, groups=channels)
        self.bn: MaskedBatchNorm | None = MaskedBatchNorm(channels) if batch_norm else None

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, C, T_in] -> [B, C, T_out]; frame_mask [B, T_out] marks the real output frames."""
        y = self.conv(x)
        if self.bn is None:
            return y
        return self.bn(y.transpose(1, 2), frame_mask).transpose(1, 2)

    @torch.no_grad()
    def fuse(self) -> None:
        if self.bn is None:
            return
        scale, shift = self.bn.scale_shift()
        self.conv.weight.mul_(scale.view(-1, 1, 1))
        self.conv.bias.mul_(scale).add_(shift)
        self.bn = None


def fuse_batch_norms(model: nn.Module) -> int:
    """Fold every foldable BatchNorm of ``model`` into its weights; returns how many were folded.

    Only for inference: the folded model has no batch statistics left to train with.
    """
    folded = 0
    for module in model.modules():
        if isinstance(module, (LinearBN, DepthwiseConvBN)) and module.bn is not None:
            module.fuse()
            folded += 1
    return folded


def has_unfused_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, (LinearBN, DepthwiseConvBN)) and m.bn is not None for m in model.modules())
