"""Quantization-aware training: swap a float model's layers for fake-quantized ones.

``prepare_qat(model, config)`` replaces every ``nn.Linear``, ``nn.Conv1d`` and ``nn.Conv2d`` the
config selects with a fake-quant twin that keeps the same parameters (so a float checkpoint loads
into it unchanged and fine-tuning starts from the float model): the weight is rounded per output
channel to ``weight_bits`` and the input activation per tensor to ``act_bits`` on every forward
pass, with straight-through gradients.

Bit widths are set per layer (mixed precision) by glob patterns over module names, the last
matching pattern winning::

    quant:
      weight_bits: 8          # default for every selected layer
      act_bits: 8             # null = weights only
      layers:
        "encoder.layers.*.ff_*": {weight_bits: 4}
        "ctc": {weight_bits: 8}
      skip: ["decoder.*", "reverse_decoder.*"]   # stay float

The config is stored with the model (``quantization`` in its config), so a reloaded model rebuilds
the same fake-quant layers before its weights load: quantized models do not break after reload.
"""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from edgeasr.quant.fake_quant import ActivationQuantizer, fake_quantize_weight, weight_qmax, weight_scale


@dataclass
class LayerQuant:
    weight_bits: int
    act_bits: int | None
    native: bool = False
    weight_transform: str | None = None


WEIGHT_TRANSFORMS = (None, "tanh")


def transform_weight(weight: torch.Tensor, kind: str | None) -> torch.Tensor:
    """The weight a layer quantizes. ``tanh`` (two-stage sub-8-bit QAT): w~ = tanh(w) / max|tanh(w)|
    per output channel, rescaled by the channel's max |w| so it starts close to w; it squashes
    outlier weights so the uniform grid spends its few levels where most weights are."""
    if kind is None:
        return weight
    flat = weight.reshape(weight.size(0), -1)
    squashed = torch.tanh(flat)
    peak = squashed.abs().amax(dim=1, keepdim=True).clamp_min(1e-8)
    magnitude = flat.abs().amax(dim=1, keepdim=True).detach()
    return (squashed / peak * magnitude).view_as(weight)


#: The attention decoders only rescore a finished n-best list: their weights are quantized (they
#: are a fifth of the default model's bytes) but their activations stay float, since calibration
#: runs the encoder and CTC head only.
DECODER_WEIGHT_ONLY = {"decoder.*": {"act_bits": None}, "reverse_decoder.*": {"act_bits": None}}


@dataclass
class QuantConfig:
    weight_bits: int = 8
    act_bits: int | None = 8
    #: glob pattern over module names -> {"weight_bits": b, "act_bits": a}; the last match wins
    layers: dict[str, dict] = field(default_factory=dict)
    #: glob patterns of layers left in float
    skip: list[str] = field(default_factory=list)
    #: Linear layers compute their forward pass on integer tensors (int8 codes, int32
    #: accumulation), gradients through the float fake-quant path: training numerics = serving.
    native: bool = False
    #: None or "tanh" (the sub-8-bit weight transform); per layer too, in ``layers``
    weight_transform: str | None = None
    #: Weight of the S8BQAT-style regularizer pulling weights toward their quantization grid
    #: (added to the training loss; 0 = off)
    regularizer_weight: float = 0.0

    @classmethod
    def from_dict(cls, config: dict) -> "QuantConfig":
        unknown = set(config) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown quant option(s): {', '.join(sorted(unknown))}")
        result = cls(**config)
        result.validate()
        return result

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        specs = [{"weight_bits": self.weight_bits, "act_bits": self.act_bits,
                  "weight_transform": self.weight_transform}, *self.layers.values()]
        if self.regularizer_weight < 0:
            raise ValueError("regularizer_weight must be >= 0")
        for spec in specs:
            unknown = set(spec) - {"weight_bits", "act_bits", "weight_transform"}
            if unknown:
                raise ValueError(f"unknown per-layer quant option(s): {', '.join(sorted(unknown))}")
            if "weight_bits" in spec:
                weight_qmax(spec["weight_bits"])
            if spec.get("weight_transform") not in WEIGHT_TRANSFORMS:
                raise ValueError(f"weight_transform must be none or tanh, not {spec['weight_transform']}")
            if spec.get("act_bits") not in (None, 8, 4):
                raise ValueError(f"activations are quantized to 8 or 4 bits or not at all, not {spec['act_bits']}")

    def for_layer(self, name: str) -> LayerQuant | None:
        """The bit widths for module ``name``, or None when it stays float."""
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in self.skip):
            return None
        spec = {"weight_bits": self.weight_bits, "act_bits": self.act_bits, "weight_transform": self.weight_transform}
        for pattern, override in self.layers.items():
            if fnmatch.fnmatchcase(name, pattern):
                spec.update(override)
        return LayerQuant(spec["weight_bits"], spec["act_bits"], self.native, spec["weight_transform"])


class _FakeQuant:
    """Mixin: rounds the weight, the input and the output of the layer it is mixed into.

    With 8-bit activations the layer computes what an integer kernel computes: int8 input codes
    times int8 (or packed 4/2-bit) weight codes, accumulated, then requantized to int8 on the
    output grid (``edgeasr.quant.integer`` runs exactly that on integer tensors).
    """

    weight_bits: int
    input_quant: ActivationQuantizer | None
    output_quant: ActivationQuantizer | None

    def _setup(self, spec: LayerQuant) -> None:
        self.weight_bits = spec.weight_bits
        self.native = spec.native
        self.weight_transform = spec.weight_transform
        self.input_quant = ActivationQuantizer(spec.act_bits) if spec.act_bits else None
        self.output_quant = ActivationQuantizer(spec.act_bits) if spec.act_bits else None

    def _quantized(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(fake-quant input, weight, bias). The bias is rounded to the int32 grid of the
        accumulator (scale s_in x s_w per channel), as the integer kernel stores it."""
        effective = self.effective_weight()
        scale = weight_scale(effective, self.weight_bits)
        weight = fake_quantize_weight(effective, self.weight_bits, scale)
        bias = self.bias
        if self.input_quant is not None:
            x = self.input_quant(x)
            if bias is not None and bool(self.input_quant.initialized):
                step = self.input_quant.qparams()[0] * scale.view(-1)
                bias = bias + (torch.round(bias / step) * step - bias).detach()
        return x, weight, bias

    def effective_weight(self) -> torch.Tensor:
        """The float weight before rounding (after the weight transform, if any)."""
        return transform_weight(self.weight, self.weight_transform)

    def grid_distance(self) -> torch.Tensor:
        """S8BQAT-style regularizer: mean of 1 - |cos(pi w / s)|, zero on the grid, one halfway."""
        weight = self.effective_weight()
        scale = weight_scale(weight, self.weight_bits)
        return (1 - torch.cos(torch.pi * weight / scale).abs()).mean()

    def _output(self, y: torch.Tensor) -> torch.Tensor:
        return y if self.output_quant is None else self.output_quant(y)

    def extra_repr(self) -> str:
        bits = self.input_quant.bits if self.input_quant is not None else "float"
        return f"{super().extra_repr()}, weight_bits={self.weight_bits}, act_bits={bits}"


class FakeQuantLinear(_FakeQuant, nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, weight, bias = self._quantized(x)
        y = nn.functional.linear(x, weight, bias)
        if self.native and self.input_quant is not None and bool(self.input_quant.initialized):
            y = y + (self._integer_forward(x, weight, bias) - y).detach()
        return self._output(y)

    @torch.no_grad()
    def _integer_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The same product on integer codes: int8 x int8 -> int32 (+ int32 bias), then scaled."""
        s_in, z_in = self.input_quant.qparams()
        s_w = weight_scale(self.effective_weight(), self.weight_bits).view(-1)
        x_codes = (torch.round(x / s_in) + z_in).to(torch.int8).reshape(-1, self.in_features)
        w_codes = torch.round(weight / s_w.unsqueeze(1)).to(torch.int8)
        acc = torch._int_mm(x_codes, w_codes.t().contiguous())
        acc = acc - int(z_in) * w_codes.to(torch.int32).sum(dim=1)
        if bias is not None:
            acc = acc + torch.round(bias / (s_in * s_w)).to(torch.int32)
        return (acc.to(torch.float32) * (s_in * s_w)).view(*x.shape[:-1], self.out_features)


class FakeQuantConv1d(_FakeQuant, nn.Conv1d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, weight, bias = self._quantized(x)
        return self._output(self._conv_forward(x, weight, bias))


class FakeQuantConv2d(_FakeQuant, nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, weight, bias = self._quantized(x)
        return self._output(self._conv_forward(x, weight, bias))


_TWINS: dict[type, type] = {nn.Linear: FakeQuantLinear, nn.Conv1d: FakeQuantConv1d, nn.Conv2d: FakeQuantConv2d}


def _twin(module: nn.Module, spec: LayerQuant) -> nn.Module:
    cls = _TWINS[type(module)]
    twin = cls.__new__(cls)
    nn.Module.__init__(twin)
    twin.__dict__.update({k: v for k, v in module.__dict__.items() if k not in ("_parameters", "_buffers", "_modules")})
    twin._parameters = dict(module._parameters)  # the same Parameter objects: weights are shared
    twin._buffers = dict(module._buffers)
    twin._modules = dict(module._modules)
    twin._setup(spec)
    return twin


def prepare_qat(model: nn.Module, config: QuantConfig) -> int:
    """Swap the selected layers of ``model`` for fake-quant twins in place; returns how many."""
    swapped = 0
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if type(child) not in _TWINS:
                continue
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            # the segmenter (25 k parameters, one small float graph of its own) stays float: its
            # output is a threshold decision, and it is not part of the encoder's integer graphs
            spec = None if name.startswith("segmenter.") else config.for_layer(name)
            if spec is None:
                continue
            setattr(parent, child_name, _twin(child, spec))
            swapped += 1
    return swapped


def quantized_layers(model: nn.Module) -> dict[str, LayerQuant]:
    """{module name: bit widths} of every fake-quant layer of ``model``."""
    return {
        name: LayerQuant(m.weight_bits, m.input_quant.bits if m.input_quant is not None else None, m.native,
                         m.weight_transform)
        for name, m in model.named_modules()
        if isinstance(m, _FakeQuant)
    }


def quantization_regularizer(model: nn.Module) -> torch.Tensor:
    """Mean grid distance over every fake-quant layer (0 when there are none)."""
    distances = [m.grid_distance() for m in model.modules() if isinstance(m, _FakeQuant)]
    if not distances:
        return torch.zeros(())
    return torch.stack(distances).mean()
