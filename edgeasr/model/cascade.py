"""A cascaded second-pass encoder: non-causal layers that read the streaming first pass's output.

The cascaded-encoder idea (Practical Conformer; dynamic cascaded encoders): a causal first-pass
encoder streams and gives partials through its CTC head; at the end of each segment, a few
non-causal layers run over *the first pass's encoder frames* of that segment (not the audio:
nothing is re-encoded), with full context within the segment, and their own CTC head gives the
final text. Against the Whisper second pass (re-encode the segment's audio with full context,
then Whisper's 29.6 M-parameter decoder step by step) this costs a few layers over frames that
already exist, so it is cheap; whether it is accurate enough is what benchmarks/cascade.py
measures.

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

KNOWN_KEYS = ("num_layers", "d_model", "num_heads", "d_ff", "dropout", "conv_kernel", "residual")


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
        return made


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
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(config.d_model, config.num_heads, config.d_ff, config.dropout,
                                       activation="gelu", batch_first=True, norm_first=True)
            for _ in range(config.num_layers))
        self.norm = nn.LayerNorm(config.d_model)
        self.ctc = nn.Linear(config.d_model, config.vocab_size)
        if config.residual:
            nn.init.zeros_(self.ctc.weight)
            nn.init.zeros_(self.ctc.bias)

    def forward(self, encoded: torch.Tensor, lengths: torch.Tensor | None = None,
                first_pass_logits: torch.Tensor | None = None) -> torch.Tensor:
        """``first_pass_logits`` [B, T, vocab]: the first pass's CTC logits, which a residual
        cascade corrects (required then, ignored otherwise)."""
        x = self.project(encoded)
        padding = None
        if lengths is not None:
            padding = torch.arange(x.size(1), device=x.device)[None, :] >= lengths[:, None]
            x = x.masked_fill(padding[..., None], 0.0)
        if self.conv is not None:
            x = x + self.conv(x.transpose(1, 2)).transpose(1, 2)
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=padding)
        logits = self.ctc(self.norm(x))
        if self.config.residual:
            if first_pass_logits is None:
                raise ValueError("a residual cascade needs the first pass's CTC logits")
            logits = logits + first_pass_logits
        return torch.log_softmax(logits, dim=-1)
