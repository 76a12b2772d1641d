"""Dynamic compute: modules of the encoder that run only where the input needs them.

Two published schemes, both options of the one encoder (``encoder.dynamic`` in a config):

- **I3D** (input-dependent dynamic depth, utterance level): a binary gate on each gated module
  (attention and the two feed-forward modules by default) of every layer, predicted from a
  time-pooled summary of the input. ``kind: i3d_local`` puts a small MLP at each layer on the
  pooled layer input; ``kind: i3d_global`` puts one MLP on the pooled subsampled input that
  predicts every gate up front, so the executed architecture is known before the encoder runs.
  A closed gate leaves the residual path untouched: the module is not run at all.
- **Compute-cost amortized** (frame level): ``kind: amortized``. A light causal arbitrator (a
  per-frame MLP over the subsampled input; it sees no future frame, so it streams) emits, for
  every frame, a gate for each gated module of every layer. Feed-forward modules run only on the
  frames whose gate is open (gathered, computed, scattered back); attention computes queries,
  scores and outputs only for open frames, while every frame still supplies its key and value,
  so later frames can attend to it and the streaming cache stays complete.

Training uses straight-through gates: the forward pass uses the hard 0/1 decision of a noisy
(Gumbel/logistic) sample, the backward pass the gradient of its sigmoid. The cost added to the
ASR loss is ``cost_weight * compute``, where compute is the mean gate probability for I3D and
the FLOP-weighted mean for amortized (optionally only the part above ``target_compute``).
Inference opens a gate when its probability reaches ``threshold`` (0.5 by default; raising it
trades accuracy for compute, no retraining).

Streaming: I3D pools over the first ``pool_frames`` encoder frames (0 = the whole utterance,
offline only). The stream decides the gates on its first chunk, which must hold at least
``pool_frames`` frames, and keeps them for the rest of the utterance; training pools the same
prefix, so streaming gives the full-sequence result. Amortized gates are per frame and causal,
so any chunk size works.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from edgeasr.errors import EdgeAsrError

#: Modules a gate can switch, in the order of a gate vector's last dimension.
GATEABLE = ("ff_in", "attention", "ff_out")
KINDS = ("i3d_local", "i3d_global", "amortized")


@dataclass
class DynamicConfig:
    kind: str = "i3d_global"
    #: Which modules of each layer have gates (a subset of GATEABLE).
    modules: list[str] = field(default_factory=lambda: list(GATEABLE))
    #: Hidden units of the gate predictors / arbitrator.
    hidden: int = 64
    #: I3D: encoder frames pooled for the decision (0 = whole utterance; offline only).
    pool_frames: int = 16
    #: Temperature of the Gumbel sample in training.
    temperature: float = 1.0
    #: Weight of the compute cost in the loss (the ASR loss is summed per utterance).
    cost_weight: float = 10.0
    #: Amortized: penalize only compute above this fraction (None = all compute).
    target_compute: float | None = None
    #: Inference: a gate opens at this probability.
    threshold: float = 0.5
    #: Initial gate bias, so training starts with (almost) every module on, as the float model.
    initial_bias: float = 2.0

    @classmethod
    def from_dict(cls, config: dict) -> "DynamicConfig":
        unknown = set(config) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown dynamic option(s): {', '.join(sorted(unknown))}")
        result = cls(**config)
        if result.kind not in KINDS:
            raise ValueError(f"dynamic kind must be one of {', '.join(KINDS)}, not '{result.kind}'")
        bad = [m for m in result.modules if m not in GATEABLE]
        if bad or not result.modules:
            raise ValueError(f"dynamic modules must be a non-empty subset of {', '.join(GATEABLE)}")
        if not 0.0 < result.threshold < 1.0:
            raise ValueError("dynamic threshold must be between 0 and 1")
        if result.pool_frames < 0:
            raise ValueError("dynamic pool_frames must be 0 (whole utterance) or positive")
        return result

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def frame_level(self) -> bool:
        return self.kind == "amortized"


def straight_through_gate(logits: torch.Tensor, temperature: float, training: bool, threshold: float = 0.5):
    """(gate values, probabilities). Training: hard 0/1 sample forward, sigmoid gradient back.

    A binary Gumbel-softmax draws Gumbel noise for "on" and "off"; their difference is logistic
    noise, so a sigmoid of (logit + logistic noise) / temperature is the same distribution.
    """
    probs = torch.sigmoid(logits)
    if not training:
        return (probs >= threshold).to(logits.dtype), probs
    uniform = torch.rand_like(logits).clamp(1e-6, 1 - 1e-6)
    soft = torch.sigmoid((logits + torch.log(uniform) - torch.log1p(-uniform)) / temperature)
    hard = (soft >= 0.5).to(logits.dtype)
    return hard + (soft - soft.detach()), probs  # exactly 0/1 forward; sigmoid gradient


def pooled(x: torch.Tensor, frame_mask: torch.Tensor, pool_frames: int) -> torch.Tensor:
    """Mean over the real frames among the first ``pool_frames`` (0 = all) of x [B, T, D]."""
    mask = frame_mask
    if pool_frames > 0:
        mask = mask.clone()
        mask[:, pool_frames:] = False
    weights = mask.to(x.dtype).unsqueeze(-1)
    return (x * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class GatePredictor(nn.Module):
    """Linear -> ReLU -> Linear: gate logits from a summary vector (or from every frame)."""

    def __init__(self, d_in: int, hidden: int, gates: int, initial_bias: float) -> None:
        super().__init__()
        self.hidden = nn.Linear(d_in, hidden)
        self.out = nn.Linear(hidden, gates)
        nn.init.zeros_(self.out.weight)
        nn.init.constant_(self.out.bias, initial_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x)))


@dataclass
class GateRecord:
    """What the gates did in one forward pass: the differentiable cost and what was executed."""

    frame_mask: torch.Tensor | None = None  # [B, T] real frames
    probabilities: list[torch.Tensor] = field(default_factory=list)  # per layer [B, (T,) M]
    gates: list[torch.Tensor] = field(default_factory=list)  # per layer [B, (T,) M], 0/1


class GateCounter:
    """Running totals of what the gates ran over a stream: constant memory however long it is."""

    def __init__(self) -> None:
        self.frames = 0
        self.open: torch.Tensor | None = None  # [layers, modules]: open module-frames

    def update(self, record: GateRecord) -> None:
        frames = int(record.frame_mask[0].sum())
        per_layer = []
        for gates in record.gates:
            g = gates[0].float()
            per_layer.append(g.sum(0) if g.dim() == 2 else g * frames)
        totals = torch.stack(per_layer)
        self.open = totals if self.open is None else self.open + totals
        self.frames += frames

    def executed_layers(self) -> float:
        """Layers' worth of gated modules run per frame (all open = the number of layers)."""
        if self.open is None or self.frames == 0:
            return 0.0
        return float((self.open / self.frames).mean(-1).sum())

    def module_fractions(self) -> list[list[float]]:
        """Per layer, per gated module: the fraction of frames it ran on."""
        if self.open is None or self.frames == 0:
            return []
        return (self.open / self.frames).tolist()


class DynamicCompute(nn.Module):
    """The gate predictors of one encoder, and the cost of their decisions."""

    def __init__(self, config: DynamicConfig, d_model: int, num_layers: int, module_costs: dict[str, float]) -> None:
        super().__init__()
        self.config = config
        self.num_layers = num_layers
        self.modules_gated = list(config.modules)
        self.index = {name: i for i, name in enumerate(self.modules_gated)}
        per_layer = len(self.modules_gated)
        if config.kind == "i3d_local":
            self.predictors = nn.ModuleList(
                GatePredictor(d_model, config.hidden, per_layer, config.initial_bias) for _ in range(num_layers)
            )
        else:
            self.predictor = GatePredictor(d_model, config.hidden, per_layer * num_layers, config.initial_bias)
        # FLOPs per frame of each gated module (amortized cost weights), normalized to sum to 1.
        costs = torch.tensor([float(module_costs[m]) for m in self.modules_gated])
        self.register_buffer("module_weights", costs / costs.sum(), persistent=False)

    def by_module(self, gates: torch.Tensor) -> dict[str, torch.Tensor]:
        """A layer's gate tensor [B, (T,) M] as {module name: [B, (T,)]} for the block."""
        return {name: gates[..., i] for i, name in enumerate(self.modules_gated)}

    def check_stream(self, chunk_size: int) -> None:
        """Utterance gates are decided on the first chunk: it must hold the pooled prefix."""
        if self.config.frame_level:
            return
        pool = self.config.pool_frames
        if pool == 0:
            raise EdgeAsrError("this model's I3D gates pool the whole utterance (pool_frames 0): offline only")
        if chunk_size < pool:
            raise EdgeAsrError(f"this model decides its I3D gates on the first {pool} encoder frames: "
                             f"stream with a chunk size of at least {pool}")

    def _gate(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return straight_through_gate(logits, self.config.temperature, self.training, self.config.threshold)

    def upfront(self, x: torch.Tensor, frame_mask: torch.Tensor) -> tuple[list, list] | None:
        """Gates of every layer before the first one runs (I3D global, amortized); else None.

        Returns (gates, probabilities) lists per layer: [B, M] utterance level or [B, T, M].
        """
        kind = self.config.kind
        if kind == "i3d_local":
            return None
        if kind == "i3d_global":
            logits = self.predictor(pooled(x, frame_mask, self.config.pool_frames))
            logits = logits.view(x.size(0), self.num_layers, -1)
            gates, probs = self._gate(logits)
            return list(gates.unbind(1)), list(probs.unbind(1))
        logits = self.predictor(x).view(x.size(0), x.size(1), self.num_layers, -1)
        gates, probs = self._gate(logits)
        gates = gates * frame_mask[:, :, None, None].to(gates.dtype)  # padding frames never run
        return list(gates.unbind(2)), list(probs.unbind(2))

    def local(self, layer: int, x: torch.Tensor, frame_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """I3D local: this layer's gates [B, M] from its pooled input."""
        return self._gate(self.predictors[layer](pooled(x, frame_mask, self.config.pool_frames)))

    def cost(self, probabilities: list[torch.Tensor], frame_mask: torch.Tensor) -> torch.Tensor:
        """Differentiable compute fraction in [0, 1] of the gated modules."""
        probs = torch.stack(probabilities, dim=-2)  # [B, (T,) L, M]
        if not self.config.frame_level:
            return probs.mean()
        weighted = (probs * self.module_weights).sum(-1).mean(-1)  # [B, T]
        real = frame_mask.to(weighted.dtype)
        return (weighted * real).sum() / real.sum().clamp(min=1.0)

    def loss(self, compute: torch.Tensor) -> torch.Tensor:
        target = self.config.target_compute
        excess = compute if target is None else torch.relu(compute - target)
        return self.config.cost_weight * excess


def module_costs(d_model: int, d_ff: int) -> dict[str, float]:
    """Multiply-adds per frame that closing each module's gate saves.

    Feed-forward: both linears. Attention (query side): the query and output projections; keys,
    values and the position terms are computed for every frame either way.
    """
    return {"ff_in": 2.0 * d_model * d_ff, "ff_out": 2.0 * d_model * d_ff, "attention": 2.0 * d_model * d_model}


def broadcast_gate(gate: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A [B] or [B, T] gate shaped to multiply x [B, T, D]."""
    return gate.view(*gate.shape, *([1] * (x.dim() - gate.dim())))


def run_gated(module, x: torch.Tensor, gate: torch.Tensor | None, training: bool) -> torch.Tensor | None:
    """Output of ``module(x)`` weighted by ``gate``; None when the module need not run at all.

    ``gate`` is None (always on), [B] (per utterance) or [B, T] (per frame). In training every
    frame runs and the output is multiplied by the straight-through gate (0/1 forward, gradient
    to the predictor). In inference closed utterances and frames are not computed: the open ones
    are gathered, run and scattered back, so the saving is real.
    """
    if gate is None:
        return module(x)
    if training:
        return module(x) * broadcast_gate(gate, x)
    keep = gate > 0.5
    if not bool(keep.any()):
        return None
    if bool(keep.all()):
        return module(x)
    out = x.new_zeros(x.shape)
    out[keep] = module(x[keep])
    return out
