"""A cascaded second-pass encoder: non-causal layers that read the streaming first pass's output.

The cascaded-encoder idea (Practical Conformer; dynamic cascaded encoders): a causal first-pass
encoder streams and gives partials through its CTC head; at the end of each segment, a few
non-causal layers run over *the first pass's encoder frames* of that segment (not the audio:
nothing is re-encoded), with full context within the segment, and their own CTC head gives the
final text. Against the Whisper second pass (re-encode the segment's audio with full context,
then Whisper's 29.6 M-parameter decoder step by step) this costs a few layers over frames that
already exist, so it is cheap; whether it is accurate enough is what benchmarks/cascade.py
measures.

Several sizes from one model (the dynamic cascaded encoder): ``exits`` lists layer counts after
which the cascade has a head of its own (norm and CTC layer), e.g. ``[1, 2, 3]`` for small, medium
and large sub-models that share their lower layers. Training sums the CTC loss of every exit
(their mean), so each sub-model is trained as itself; decoding picks one (``--cascade-layers N``,
default the deepest) and runs only its layers: a smaller device runs the same model file smaller.

``CascadeConfig`` (``model.cascade`` in a config): ``num_layers`` transformer layers of
``d_model`` (a linear map from the first pass's width when they differ), ``num_heads``,
``d_ff``, ``dropout``; a depthwise convolution of ``conv_kernel`` frames first gives each frame
its neighbours (0 = none); ``residual`` adds its logits to the first pass's CTC logits, starting
from zero, so it starts as good as the first pass. Trained jointly with the first pass (``cascade_weight`` of the loss)
or alone on a frozen first pass (``train.freeze: [encoder, ctc, ...]``, weight 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

KNOWN_KEYS = ("num_layers", "d_model", "num_heads", "d_ff", "dropout", "conv_kernel", "residual", "exits", "pool")


@dataclass
class CascadeConfig:
    input_dim: int
    vocab_size: int
    num_layers: int = 2
    d_model: int = 256
    num_heads: int = 4
    d_ff: int = 1024
    dropout: float = 0.1
    conv_kernel: int = 15
    #: add the cascade's logits to the first pass's CTC logits (its output layer starts at zero),
    #: so training starts from the first pass's own text and learns only corrections
    residual: bool = False
    #: layer counts with a head of their own (the sub-models); None = the full depth only
    exits: list[int] | None = None
    #: funnel pooling: the layers read the mean of every ``pool`` frames (1 = the first pass's rate)
    pool: int = 1

    @property
    def exit_layers(self) -> list[int]:
        """The sub-models' depths, smallest first (always ending at ``num_layers``)."""
        return sorted(set(self.exits or []) | {self.num_layers})

    @classmethod
    def from_dict(cls, config: dict, input_dim: int, vocab_size: int) -> "CascadeConfig":
        unknown = sorted(set(config) - set(KNOWN_KEYS))
        if unknown:
            raise ValueError(f"model.cascade: unknown key(s) {', '.join(unknown)} (known: {', '.join(KNOWN_KEYS)})")
        made = cls(input_dim=input_dim, vocab_size=vocab_size, **config)
        if made.num_layers < 1 or made.d_model % made.num_heads:
            raise ValueError("model.cascade: num_layers >= 1 and d_model divisible by num_heads")
        if made.conv_kernel < 0 or (made.conv_kernel and made.conv_kernel % 2 == 0):
            raise ValueError("model.cascade: conv_kernel must be 0 or odd")
        if not isinstance(made.pool, int) or isinstance(made.pool, bool) or made.pool < 1:
            raise ValueError(f"model.cascade: pool must be a whole number of frames, 1 or more (got {made.pool!r})")
        if made.exits is not None:
            if not isinstance(made.exits, list) or not all(isinstance(n, int) and 1 <= n <= made.num_layers
                                                           for n in made.exits):
                raise ValueError(f"model.cascade: exits must be a list of layer counts from 1 to {made.num_layers}")
        return made


class CascadeLayer(nn.Module):
    """A pre-norm transformer layer (self-attention, GELU feed-forward) with full context.

    It holds the parameters under nn.TransformerEncoderLayer's names (``self_attn``, ``linear1``,
    ``linear2``, ``norm1``, ``norm2``), so cascades saved with that layer load unchanged, but its
    attention is edgeasr's own (``edgeasr.nn.mha``): nn.TransformerEncoderLayer's inference path
    has no ONNX form and its traced reshapes bake in the length, and a cascade must export."""

    def __init__(self, d_model: int, num_heads: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        from edgeasr.nn.mha import MultiHeadAttention

        self.self_attn = MultiHeadAttention(d_model, num_heads)
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, src_key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, T, D]; ``src_key_padding_mask`` [B, T], True at padding."""
        h = self.norm1(x)
        x = x + self.dropout(self.self_attn(h, h, h, key_padding_mask=src_key_padding_mask)[0])
        h = self.linear2(self.dropout(nn.functional.gelu(self.linear1(self.norm2(x)))))
        return x + self.dropout(h)


class CascadeEncoder(nn.Module):
    """First-pass encoder frames [B, T, input_dim] -> CTC log-probs [B, T, vocab], full context
    within each sequence (padding masked)."""

    def __init__(self, config: CascadeConfig) -> None:
        super().__init__()
        self.config = config
        self.project = (nn.Linear(config.input_dim, config.d_model) if config.input_dim != config.d_model
                        else nn.Identity())
        self.conv = (nn.Conv1d(config.d_model, config.d_model, config.conv_kernel, padding=config.conv_kernel // 2,
                               groups=config.d_model) if config.conv_kernel else None)
        self.layers = nn.ModuleList(CascadeLayer(config.d_model, config.num_heads, config.d_ff, config.dropout)
                                    for _ in range(config.num_layers))
        # the full depth's head keeps its names (models with one size load as before); every
        # smaller exit has its own, keyed by its layer count
        self.norm = nn.LayerNorm(config.d_model)
        self.ctc = nn.Linear(config.d_model, config.vocab_size)
        self.exit_heads = nn.ModuleDict({
            str(n): nn.ModuleDict({"norm": nn.LayerNorm(config.d_model), "ctc": nn.Linear(config.d_model, config.vocab_size)})
            for n in config.exit_layers if n != config.num_layers})
        if config.residual:
            for head in [self.ctc] + [h["ctc"] for h in self.exit_heads.values()]:
                nn.init.zeros_(head.weight)
                nn.init.zeros_(head.bias)

    def _head(self, layers: int):
        if layers == self.config.num_layers:
            return self.norm, self.ctc
        if str(layers) not in self.exit_heads:
            raise ValueError(f"this cascade has sub-models of {', '.join(map(str, self.config.exit_layers))} "
                             f"layers, not {layers}")
        head = self.exit_heads[str(layers)]
        return head["norm"], head["ctc"]

    def parameters_of(self, layers: int | None = None) -> int:
        """Parameters the sub-model of ``layers`` layers runs (shared lower layers and its head)."""
        layers = self.config.num_layers if layers is None else layers
        norm, ctc = self._head(layers)
        parts = [self.project, self.conv, norm, ctc, *self.layers[:layers]]
        return sum(p.numel() for part in parts if part is not None for p in part.parameters())

    def forward(self, encoded: torch.Tensor, lengths: torch.Tensor | None = None,
                first_pass_logits: torch.Tensor | None = None, layers: int | None = None) -> torch.Tensor:
        """``first_pass_logits`` [B, T, vocab]: the first pass's CTC logits, which a residual
        cascade corrects (required then, ignored otherwise). ``layers``: the sub-model to run
        (one of ``config.exit_layers``; default the full depth): only its layers run."""
        layers = self.config.num_layers if layers is None else layers
        return self.forward_exits(encoded, lengths, first_pass_logits, [layers])[0]

    def forward_exits(self, encoded: torch.Tensor, lengths: torch.Tensor | None = None,
                      first_pass_logits: torch.Tensor | None = None,
                      exits: list[int] | None = None) -> list[torch.Tensor]:
        """The log-probs of several sub-models in one pass over the shared layers (training
        reads every exit: ``exits`` default ``config.exit_layers``), in the order given."""
        exits = list(self.config.exit_layers if exits is None else exits)
        heads = {n: self._head(n) for n in exits}
        if self.config.residual and first_pass_logits is None:
            raise ValueError("a residual cascade needs the first pass's CTC logits")
        x = self.project(encoded)
        padding = None
        if lengths is not None:
            padding = torch.arange(x.size(1), device=x.device)[None, :] >= lengths[:, None]
            x = x.masked_fill(padding[..., None], 0.0)
        if self.conv is not None:
            x = x + self.conv(x.transpose(1, 2)).transpose(1, 2)
        pool = self.config.pool
        full_rate = x
        if pool > 1:
            x, padding = funnel_pool(x, padding, pool)
        out = {}
        for depth in range(max(exits) + 1):
            if depth:
                x = self.layers[depth - 1](x, src_key_padding_mask=padding)
            if depth in heads:
                norm, ctc = heads[depth]
                if pool > 1:
                    logits = ctc(norm(funnel_unpool(x, pool, full_rate.size(1)) + full_rate))
                else:
                    logits = ctc(norm(x))
                if self.config.residual:
                    logits = logits + first_pass_logits
                out[depth] = torch.log_softmax(logits, dim=-1)
        return [out[n] for n in exits]


def funnel_pool(x: torch.Tensor, padding: torch.Tensor | None, pool: int
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """x [B, T, D] -> the mean of every ``pool`` frames [B, ceil(T / pool), D], padding excluded,
    and the pooled padding mask (True where a group holds no frame of the sequence).

    The mean is a ratio of two average pools (frames, and the mask of real frames), so the
    divisor convention of a last, partial group cancels out: torch and ONNX Runtime agree."""
    real = torch.ones_like(x[..., :1]) if padding is None else (~padding)[..., None].to(x.dtype)
    summed = nn.functional.avg_pool1d((x * real).transpose(1, 2), pool, pool, ceil_mode=True)
    counted = nn.functional.avg_pool1d(real.transpose(1, 2), pool, pool, ceil_mode=True)
    pooled = (summed / counted.clamp(min=1e-6)).transpose(1, 2)
    pooled_padding = None if padding is None else counted[:, 0, :] <= 0
    return pooled, pooled_padding


def funnel_unpool(x: torch.Tensor, pool: int, frames: int) -> torch.Tensor:
    """x [B, T', D] -> every frame repeated ``pool`` times, cut to ``frames`` [B, frames, D]."""
    repeated = x.unsqueeze(2).expand(-1, -1, pool, -1).reshape(x.size(0), -1, x.size(2))
    return repeated[:, :frames]
