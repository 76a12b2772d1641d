"""Integer-arithmetic-only linear layers (Jacob et al., 2018).

A calibrated fake-quant linear layer (``FakeQuantLinear`` with 8-bit input and output ranges)
becomes an ``IntegerLinear`` that computes, on integer tensors only:

    x_q   = clamp(round(x / s_in) + z_in)                          int8 input codes
    acc   = x_q @ W_q^T  +  (b_q - z_in * sum_k W_q[:, k])         int32 (bias folded with the
                                                                   input zero point)
    y_q   = clamp(z_out + requantize(acc, M0[c], shift[c]))       int8 output codes

with W_q the per-channel weight codes (8, 4 or 2 bits, stored in int8), b_q = round(b / (s_in s_w))
an int32 bias, and the real multiplier s_in s_w[c] / s_out held as a fixed-point int32 M0 in
[2^30, 2^31) and a shift, so requantization is an integer multiply, a rounding shift and an add.
The int8 x int8 -> int32 product runs through ``torch._int_mm`` (VNNI kernels on x86), which is
what makes int8 faster than float here rather than slower.

Only the layer's input quantization and output dequantization touch floats, because the ops
between layers (softmax, LayerNorm, Swish, residual adds) stay in float in this path; the docs
say so. The attention products (q·k, q·p, probabilities·v) run on int8 codes with int32 sums too
(``integer_matmul``): probabilities on a fixed 1/127 grid, queries, keys, positions and values on
a per-tensor range measured on each chunk, since they have no calibrated observers. The outputs match the fake-quant model within one output quantization step (tested).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from edgeasr.quant.fake_quant import quantize_weight



def quantize_multiplier(real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-element fixed-point form of positive ``real`` multipliers: (M0 int64, right shift int64)
    with real ~= M0 * 2^-(31 + shift) and 2^30 <= M0 < 2^31."""
    m0, shifts = [], []
    for value in real.double().tolist():
        if value <= 0:
            raise ValueError("requantization multipliers must be positive")
        mantissa, exponent = math.frexp(value)  # value = mantissa * 2^exponent, mantissa in [0.5, 1)
        q = round(mantissa * (1 << 31))
        if q == 1 << 31:  # mantissa rounded up to 1.0
            q //= 2
            exponent += 1
        m0.append(q)
        shifts.append(-exponent)
    return torch.tensor(m0, dtype=torch.int64), torch.tensor(shifts, dtype=torch.int64)


def act_range(bits: int) -> tuple[int, int]:
    """Signed code range of ``bits``-bit activations (held in int8 tensors)."""
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def requantize(acc: torch.Tensor, m0: torch.Tensor, shift: torch.Tensor, zero_point: int,
               bits: int = 8) -> torch.Tensor:
    """int32 accumulators [..., C] -> int8 codes: round(acc * M0 / 2^(31 + shift)) + zero point,
    clamped to the ``bits``-bit range.

    Integer arithmetic only: a 64-bit product, a rounding (half up) arithmetic right shift, an add
    and a clamp. ``shift`` may be negative (multipliers above 1) down to -30.
    """
    total = (31 + shift).clamp_min(1)
    product = acc.to(torch.int64) * m0
    rounded = (product + (torch.ones_like(total) << (total - 1))) >> total
    low, high = act_range(bits)
    return torch.clamp(rounded + zero_point, low, high).to(torch.int8)


class _IntegerLayer(nn.Module):
    """What the integer forms of fake-quant layers share: the activation grids, the weight codes
    with their per-channel scales, the int32 bias on the accumulator's grid (s_in x s_w), the
    fixed-point output multipliers, and the float edges (quantize in, dequantize out)."""

    def _setup(self, layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """Take the layer's grids and multipliers; returns (weight codes, int64 bias on the
        accumulator's grid) for the subclass to lay out."""
        if layer.input_quant is None or layer.output_quant is None or not bool(layer.input_quant.initialized):
            raise ValueError("integer inference needs a layer with calibrated input and output ranges")
        s_in, z_in = layer.input_quant.qparams()
        s_out, z_out = layer.output_quant.qparams()
        codes, s_w = quantize_weight(layer.effective_weight(), layer.weight_bits)
        s_w = s_w.view(-1)
        bias = layer.bias.detach() if layer.bias is not None else torch.zeros_like(s_w)
        m0, shift = quantize_multiplier(s_in * s_w / s_out)
        self.register_buffer("m0", m0)
        self.register_buffer("shift", shift)
        self.weight_bits = layer.weight_bits
        self.input_scale, self.input_zero_point = float(s_in), int(z_in)
        self.output_scale, self.output_zero_point = float(s_out), int(z_out)
        self.input_bits, self.output_bits = layer.input_quant.bits, layer.output_quant.bits
        return codes, torch.round(bias / (s_in * s_w)).to(torch.int64)

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        codes = torch.round(x / self.input_scale) + self.input_zero_point
        return torch.clamp(codes, *act_range(self.input_bits)).to(torch.int8)

    def forward_codes(self, x_q: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y_q = self.forward_codes(self.quantize_input(x))
        return (y_q.to(torch.float32) - self.output_zero_point) * self.output_scale


class IntegerLinear(_IntegerLayer):
    """The integer-only form of a calibrated ``FakeQuantLinear`` (see the module docstring)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        codes, bias_q = self._setup(layer)
        # The input zero point's share of the product, sum_k z_in * W[c, k], folds into the bias.
        bias_q = bias_q - self.input_zero_point * codes.to(torch.int64).sum(dim=1)
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.register_buffer("weight_t", codes.t().contiguous())  # int8 [in, out] for _int_mm
        self.register_buffer("bias_q", bias_q.to(torch.int32))

    def forward_codes(self, x_q: torch.Tensor) -> torch.Tensor:
        """int8 input codes [..., in] -> int8 output codes [..., out]; integer arithmetic only."""
        flat = x_q.reshape(-1, self.in_features)
        acc = torch._int_mm(flat, self.weight_t) + self.bias_q
        y_q = requantize(acc, self.m0, self.shift, self.output_zero_point, self.output_bits)
        return y_q.view(*x_q.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, weight_bits={self.weight_bits}, "
                f"activation bits {self.input_bits}/{self.output_bits}")


class IntegerConv(_IntegerLayer):
    """The integer-only form of a calibrated ``FakeQuantConv1d`` / ``FakeQuantConv2d``.

    Input codes are centred on their zero point (so zero padding means real zero), cut into
    patches, and multiplied with the weight codes in integers: dense convolutions (the
    subsampling) through ``torch._int_mm`` on int8 patches, depthwise convolutions as int32
    multiply-adds over the kernel. Bias, zero-point correction and requantization as in
    ``IntegerLinear``.
    """

    def __init__(self, layer: nn.Module) -> None:
        if any(d != 1 for d in layer.dilation) or layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            raise ValueError("integer convolutions support plain zero padding without dilation")
        super().__init__()
        codes, bias_q = self._setup(layer)
        self.dims = codes.dim() - 2
        self.kernel, self.stride, self.padding = layer.kernel_size, layer.stride, layer.padding
        self.groups, self.out_channels = layer.groups, layer.out_channels
        self.depthwise = layer.groups == layer.in_channels == layer.out_channels and layer.groups > 1
        if not self.depthwise and layer.groups != 1:
            raise ValueError("integer convolutions are dense or depthwise")
        self.register_buffer("codes", codes)
        self.register_buffer("weight_t", codes.reshape(codes.size(0), -1).t().contiguous())
        self.register_buffer("bias_q", bias_q.to(torch.int32))  # inputs are centred: no zero-point fold

    def _patches(self, centred: torch.Tensor) -> torch.Tensor:
        """[B, C, *spatial] int32 -> [B, C, *out_spatial, *kernel] by zero padding and unfolding."""
        pads = []
        for p in reversed(self.padding):
            pads += [p, p]
        x = nn.functional.pad(centred, pads)
        for dim in range(self.dims):
            x = x.unfold(2 + dim, self.kernel[dim], self.stride[dim])
        return x

    def forward_codes(self, x_q: torch.Tensor) -> torch.Tensor:
        """int8 input codes [B, C, *spatial] -> int8 output codes; integer arithmetic only."""
        centred = x_q.to(torch.int32) - self.input_zero_point
        patches = self._patches(centred)
        if self.depthwise:
            weight = self.codes.to(torch.int32).view(1, self.out_channels, *([1] * self.dims), *self.kernel)
            acc = (patches * weight).sum(dim=tuple(range(-self.dims, 0)))  # [B, C, *out]
            acc = acc + self.bias_q.view(1, -1, *([1] * self.dims))
            moved = acc.movedim(1, -1)
        else:
            batch = patches.size(0)
            out_shape = patches.shape[2 : 2 + self.dims]
            # [B, C, *out, *k] -> [B * out, C * k]; centred codes fit int16, so split into the
            # int8 product and the zero-point term to use the int8 kernel.
            cols = patches.movedim(1, 1 + self.dims).reshape(batch * out_shape.numel(), -1)
            acc = _int8_matmul(cols, self.weight_t) + self.bias_q
            moved = acc.view(batch, *out_shape, self.out_channels)
        y_q = requantize(moved, self.m0, self.shift, self.output_zero_point, self.output_bits)
        return y_q.movedim(-1, 1)



def _int8_matmul(centred: torch.Tensor, weight_t: torch.Tensor) -> torch.Tensor:
    """int32 [M, K] (values in [-255, 255]) x int8 [K, N] -> int32, with int8 kernels only:
    the left side is split into a high and a low int8 part (x = 16 h + l)."""
    high = torch.div(centred, 16, rounding_mode="floor")
    low = centred - 16 * high  # 0..15
    return 16 * torch._int_mm(high.to(torch.int8), weight_t) + torch._int_mm(low.to(torch.int8), weight_t)


def integer_matmul(a: torch.Tensor, b: torch.Tensor, a_scale: float | None = None) -> torch.Tensor:
    """a @ b (batched) with int8 operands and int32 accumulation, for activation x activation
    products (attention's q·k, q·p and probabilities·v), which have no weights to calibrate.

    Each operand gets one symmetric 8-bit scale: ``a_scale`` when given (attention
    probabilities use 1/127: they lie in [0, 1]), else its own absolute maximum measured on the
    tensor (a per-call, dynamic range). The codes are multiplied as int32 tensors and the int32
    sums are scaled back once: s_a * s_b * (A_q @ B_q).
    """
    def codes(x: torch.Tensor, scale: float | None) -> tuple[torch.Tensor, torch.Tensor]:
        s = torch.as_tensor(scale if scale is not None else float(x.abs().max()) / 127.0)
        s = torch.where(s > 0, s, torch.ones_like(s))
        return torch.clamp(torch.round(x / s), -127, 127).to(torch.int8), s

    a_q, s_a = codes(a, a_scale)
    b_q, s_b = codes(b, None)
    accumulated = torch.matmul(a_q.to(torch.int32), b_q.to(torch.int32))
    return accumulated.to(a.dtype) * (s_a * s_b)


def convert_to_integer(model: nn.Module) -> int:
    """Replace every calibrated 8-bit-activation fake-quant Linear and convolution by its integer
    form (``IntegerLinear`` / ``IntegerConv``), in place, for inference; returns how many.
    Layers without calibrated ranges stay as they are."""
    from edgeasr.quant.qat import FakeQuantConv1d, FakeQuantConv2d, FakeQuantLinear

    converted = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            quantizer = getattr(child, "input_quant", None)
            if quantizer is None or not bool(quantizer.initialized):
                continue  # weights-only or never calibrated (e.g. a decoder calibration did not run)
            if isinstance(child, FakeQuantLinear):
                setattr(parent, name, IntegerLinear(child))
            elif isinstance(child, (FakeQuantConv1d, FakeQuantConv2d)):
                setattr(parent, name, IntegerConv(child))
            else:
                continue
            converted += 1
    if converted:
        from edgeasr.nn.attention import RelPositionAttention

        for module in model.modules():
            if isinstance(module, RelPositionAttention):
                module.integer_products = True  # q·k, q·p and probabilities·v on int8 codes
    return converted
