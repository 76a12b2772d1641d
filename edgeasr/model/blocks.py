"""Encoder blocks. Every block kind has the same signature, so a block plan can mix them::

    forward(x, att_mask, frame_mask, att_cache, cnn_cache) -> (x, new_att_cache, new_cnn_cache)

``att_mask`` [B, T, T_cache + T] (True = may attend), ``frame_mask`` [B, T] (True = real frame).
A block without attention returns an empty attention cache; one without convolution an empty
convolution cache. ``cached_frames`` and ``trim_cache`` tell the encoder how much attention history
a cache holds and cut it to the left context kept; a fixed-size state (Performer) is never cut.

Kinds, by the name a config's ``blocks:`` plan uses:
- ``conformer``: ½FFN -> rel-pos MHSA -> conv -> ½FFN -> LayerNorm (pre-norm residuals).
- ``conv``: ½FFN -> conv -> ½FFN -> LayerNorm, no attention (Practical Conformer's lower blocks).
- ``performer``: a Conformer block whose attention is causal RNN-Performer (fixed-size state).
- ``fusionformer``: a Conformer block with no LayerNorm: BatchNorm after every linear and
  convolution, ReLU for Swish and GLU; ``fuse()`` folds the BatchNorms for inference.
New kinds register themselves in ``BLOCKS`` and build from the encoder config with ``from_config``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from edgeasr.model.dynamic import broadcast_gate, run_gated
from edgeasr.nn.attention import RelPositionAttention
from edgeasr.nn.convolution import BatchNormConvolutionModule, ConvolutionModule
from edgeasr.nn.feed_forward import BatchNormFeedForward, FeedForward
from edgeasr.nn.performer import PerformerAttention

if TYPE_CHECKING:
    from edgeasr.model.encoder import EncoderConfig

BLOCKS: dict[str, type["EncoderBlock"]] = {}


def register_block(name: str):
    def decorate(cls):
        BLOCKS[name] = cls
        return cls

    return decorate


def _empty(x: torch.Tensor) -> torch.Tensor:
    return x.new_zeros(0)


class EncoderBlock(nn.Module):
    """What the encoder needs of every block besides ``forward``.

    A block with attention keeps it in ``self.attention``; one without has no such attribute.
    """

    @classmethod
    def from_config(cls, config: "EncoderConfig") -> "EncoderBlock":
        """The common constructor (d_model, num_heads, d_ff, kernel_size, causal, dropouts)."""
        return cls(
            config.d_model, config.num_heads, config.d_ff, config.kernel_size, config.causal,
            config.dropout, config.attention_dropout,
        )

    def cached_frames(self, att_cache: torch.Tensor | None) -> int:
        """Frames of attention history in ``att_cache`` that the attention mask must cover."""
        attention = getattr(self, "attention", None)
        return 0 if attention is None else attention.cached_frames(att_cache)

    def trim_cache(self, att_cache: torch.Tensor, max_left_frames: int) -> torch.Tensor:
        attention = getattr(self, "attention", None)
        return att_cache if attention is None else attention.trim_cache(att_cache, max_left_frames)


@register_block("conformer")
class ConformerBlock(EncoderBlock):
    """Macaron Conformer block: ½FFN -> MHSA -> conv -> ½FFN -> LayerNorm (pre-norm residuals)."""

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        d_ff: int,
        kernel_size: int = 15,
        causal: bool = True,
        dropout: float = 0.1,
        attention_dropout: float = 0.0,
        attention: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.norm_ff_in = nn.LayerNorm(d_model)
        self.ff_in = FeedForward(d_model, d_ff, dropout)
        self.norm_att = nn.LayerNorm(d_model)
        self.attention = attention if attention is not None else RelPositionAttention(d_model, num_heads, attention_dropout)
        self.norm_conv = nn.LayerNorm(d_model)
        self.conv = ConvolutionModule(d_model, kernel_size, causal)
        self.norm_ff_out = nn.LayerNorm(d_model)
        self.ff_out = FeedForward(d_model, d_ff, dropout)
        self.norm_final = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        att_mask: torch.Tensor,
        frame_mask: torch.Tensor,
        att_cache: torch.Tensor | None = None,
        cnn_cache: torch.Tensor | None = None,
        gates: dict[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``gates`` (dynamic compute): per module name, [B] or [B, T] 0/1 values; a closed gate
        skips the module and leaves the residual untouched (see edgeasr.model.dynamic)."""
        gates = gates or {}  # no gate: the module always runs (run_gated calls it directly)
        ff = run_gated(lambda h: self.ff_in(self.norm_ff_in(h)), x, gates.get("ff_in"), self.training)
        if ff is not None:
            x = x + 0.5 * self.dropout(ff)
        att, new_att_cache = self._gated_attention(x, att_mask, att_cache, gates.get("attention"))
        if att is not None:
            x = x + self.dropout(att)
        conv, new_cnn_cache = self.conv(self.norm_conv(x), frame_mask, cnn_cache)
        x = x + self.dropout(conv)
        ff = run_gated(lambda h: self.ff_out(self.norm_ff_out(h)), x, gates.get("ff_out"), self.training)
        if ff is not None:
            x = x + 0.5 * self.dropout(ff)
        return self.norm_final(x), new_att_cache, new_cnn_cache

    def _gated_attention(self, x, att_mask, att_cache, gate):
        """(output or None when skipped, new cache). Utterance gates skip whole utterances;
        frame gates skip queries of closed frames while keys and values are kept for all."""
        if gate is None or self.training:
            att, new_cache = self.attention(self.norm_att(x), att_mask, att_cache)
            return (att if gate is None else att * broadcast_gate(gate, x)), new_cache
        keep = gate > 0.5
        if keep.dim() == 2:  # frame level
            if not bool(keep.any()):  # keys and values still enter the cache
                return None, self.attention(self.norm_att(x), att_mask, att_cache, query_keep=keep)[1]
            query_keep = None if bool(keep.all()) else keep
            return self.attention(self.norm_att(x), att_mask, att_cache, query_keep=query_keep)
        if bool(keep.all()):
            return self.attention(self.norm_att(x), att_mask, att_cache)
        unchanged = att_cache if att_cache is not None else _empty(x)
        if not bool(keep.any()):  # skipped for the whole utterance: its cache is never read
            return None, unchanged
        if att_cache is not None and att_cache.numel() > 0:
            raise ValueError("per-utterance attention gates with a cache need one utterance per stream")
        out = x.new_zeros(x.shape)
        out[keep], _ = self.attention(self.norm_att(x[keep]), att_mask[keep], None)
        return out, unchanged


@register_block("performer")
class PerformerBlock(ConformerBlock):
    """Conformer block with causal RNN-Performer attention: its streaming state has a fixed size."""

    @classmethod
    def from_config(cls, config: "EncoderConfig") -> "PerformerBlock":
        attention = PerformerAttention(config.d_model, config.num_heads, config.performer_features, config.attention_dropout)
        return cls(
            config.d_model, config.num_heads, config.d_ff, config.kernel_size, config.causal,
            config.dropout, config.attention_dropout, attention=attention,
        )


@register_block("conv")
class ConvBlock(EncoderBlock):
    """Conv-only block (Practical Conformer): ½FFN -> causal conv module -> ½FFN -> LayerNorm.

    Without attention its streaming state is just the convolution's k - 1 frames, and each chunk
    costs the same however long the stream has run.
    """

    def __init__(self, d_model: int, d_ff: int, kernel_size: int = 15, causal: bool = True, dropout: float = 0.1) -> None:
        super().__init__()
        self.norm_ff_in = nn.LayerNorm(d_model)
        self.ff_in = FeedForward(d_model, d_ff, dropout)
        self.norm_conv = nn.LayerNorm(d_model)
        self.conv = ConvolutionModule(d_model, kernel_size, causal)
        self.norm_ff_out = nn.LayerNorm(d_model)
        self.ff_out = FeedForward(d_model, d_ff, dropout)
        self.norm_final = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    @classmethod
    def from_config(cls, config: "EncoderConfig") -> "ConvBlock":
        return cls(config.d_model, config.d_ff, config.kernel_size, config.causal, config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        att_mask: torch.Tensor,
        frame_mask: torch.Tensor,
        att_cache: torch.Tensor | None = None,
        cnn_cache: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = x + 0.5 * self.dropout(self.ff_in(self.norm_ff_in(x)))
        conv, new_cnn_cache = self.conv(self.norm_conv(x), frame_mask, cnn_cache)
        x = x + self.dropout(conv)
        x = x + 0.5 * self.dropout(self.ff_out(self.norm_ff_out(x)))
        return self.norm_final(x), _empty(x), new_cnn_cache


@register_block("fusionformer")
class FusionFormerBlock(EncoderBlock):
    """FusionFormer block: the Conformer layout with no LayerNorm anywhere.

    ½FFN -> MHSA -> conv -> ½FFN with plain residuals; every linear and convolution inside is
    followed by a BatchNorm (statistics over real frames), ReLU replaces Swish and GLU. After
    ``fuse()`` the only operations left are linears, convolutions, ReLU, attention and additions.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        d_ff: int,
        kernel_size: int = 15,
        causal: bool = True,
        dropout: float = 0.1,
        attention_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.ff_in = BatchNormFeedForward(d_model, d_ff, dropout)
        self.attention = RelPositionAttention(d_model, num_heads, attention_dropout, batch_norm=True)
        self.conv = BatchNormConvolutionModule(d_model, kernel_size, causal)
        self.ff_out = BatchNormFeedForward(d_model, d_ff, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        att_mask: torch.Tensor,
        frame_mask: torch.Tensor,
        att_cache: torch.Tensor | None = None,
        cnn_cache: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = x + 0.5 * self.dropout(self.ff_in(x, frame_mask))
        att, new_att_cache = self.attention(x, att_mask, att_cache, frame_mask)
        x = x + self.dropout(att)
        conv, new_cnn_cache = self.conv(x, frame_mask, cnn_cache)
        x = x + self.dropout(conv)
        x = x + 0.5 * self.dropout(self.ff_out(x, frame_mask))
        return x, new_att_cache, new_cnn_cache
