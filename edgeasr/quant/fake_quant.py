"""Fake quantization for quantization-aware training (QAT), with straight-through gradients.

The forward pass rounds weights and activations to the grid an integer kernel will use, so the
model learns weights that survive rounding; the backward pass treats rounding as the identity
(the straight-through estimator), except that values clipped at the ends of the range get no
gradient.

- Weights: symmetric, one scale per output channel, ``bits`` in {8, 4, 2}: integers in
  [-(2^(b-1) - 1), 2^(b-1) - 1] (the most negative code is left out so the grid is symmetric and
  a weight and its negation round alike). 2 bits is ternary {-1, 0, 1} x scale.
- Activations: one scale and zero point per tensor (asymmetric, 8 bits, codes -128..127), from an
  exponential moving average of the batch min and max during training, frozen in eval mode.
"""

from __future__ import annotations

import torch
from torch import nn

SUPPORTED_WEIGHT_BITS = (2, 4, 8)


def weight_qmax(bits: int) -> int:
    if bits not in SUPPORTED_WEIGHT_BITS:
        raise ValueError(f"weight bits must be one of {SUPPORTED_WEIGHT_BITS}, not {bits}")
    return 2 ** (bits - 1) - 1


def weight_scale(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-channel scale [out, 1, ...] mapping the largest |weight| of a row to qmax."""
    flat = weight.detach().reshape(weight.size(0), -1)
    scale = flat.abs().amax(dim=1).clamp_min(1e-8) / weight_qmax(bits)
    return scale.view(-1, *([1] * (weight.dim() - 1)))


def quantize_weight(weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(integer codes as int8, per-channel scale) for ``weight`` [out, ...]."""
    scale = weight_scale(weight, bits)
    qmax = weight_qmax(bits)
    codes = torch.clamp(torch.round(weight.detach() / scale), -qmax, qmax).to(torch.int8)
    return codes, scale


def fake_quantize_weight(weight: torch.Tensor, bits: int, scale: torch.Tensor | None = None) -> torch.Tensor:
    """Round to the per-channel grid in the forward pass; identity gradient (nothing is clipped:
    the scale comes from the largest weight of each row; pass it when already computed)."""
    scale = weight_scale(weight, bits) if scale is None else scale
    qmax = weight_qmax(bits)
    rounded = torch.clamp(torch.round(weight / scale), -qmax, qmax) * scale
    return weight + (rounded - weight).detach()


def activation_qparams(low: torch.Tensor, high: torch.Tensor, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero_point) of an asymmetric grid covering [low, high] (always including 0, so
    zero padding stays exactly zero)."""
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    low = torch.clamp(low, max=0.0)
    high = torch.clamp(high, min=0.0)
    scale = ((high - low) / (qmax - qmin)).clamp_min(1e-8)
    zero_point = torch.clamp(torch.round(qmin - low / scale), qmin, qmax)
    return scale, zero_point


def fake_quantize_activation(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Round ``x`` to the grid; gradient passes inside the range and is zero where clipped."""
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    codes = torch.round(x / scale) + zero_point
    inside = (codes >= qmin) & (codes <= qmax)
    rounded = (torch.clamp(codes, qmin, qmax) - zero_point) * scale
    return torch.where(inside, x + (rounded - x).detach(), rounded.detach())


class ActivationQuantizer(nn.Module):
    """Per-tensor 8-bit fake quantizer with EMA min/max ranges (updated only in training)."""

    def __init__(self, bits: int = 8, momentum: float = 0.01) -> None:
        super().__init__()
        self.bits = bits
        self.momentum = momentum
        self.register_buffer("low", torch.zeros(()))
        self.register_buffer("high", torch.zeros(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def observe(self, x: torch.Tensor) -> None:
        low, high = x.detach().min(), x.detach().max()
        if not bool(self.initialized):
            self.low.copy_(low)
            self.high.copy_(high)
            self.initialized.fill_(True)
        else:
            self.low.lerp_(low, self.momentum)
            self.high.lerp_(high, self.momentum)

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        return activation_qparams(self.low, self.high, self.bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.observe(x)
        if not bool(self.initialized):
            return x  # no range seen yet (eval before any calibration): leave unquantized
        scale, zero_point = self.qparams()
        return fake_quantize_activation(x, scale, zero_point, self.bits)
