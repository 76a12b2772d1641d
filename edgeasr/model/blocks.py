"""Encoder blocks. Every block kind has the same signature, so a block plan can mix them::

    forward(x, att_mask, frame_mask, att_cache, cnn_cache) -> (x, new_att_cache, new_cnn_cache)

``att_mask`` [B, T, T_cache + T] (True = may attend), ``frame_mask`` [B, T] (True = real frame).
A block without attention returns an empty attention cache; one without convolution an empty
convolution cache. New block kinds register themselves in ``BLOCKS`` under the name a config uses.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from edgeasr.nn.attention import RelPositionAttention
from edgeasr.nn.convolution import ConvolutionModule
from edgeasr.nn.feed_forward import FeedForward

BLOCKS: dict[str, Callable[..., nn.Module]] = {}


def register_block(name: str):
    def decorate(cls):
        BLOCKS[name] = cls
        return cls

    return decorate


def _empty(x: torch.Tensor) -> torch.Tensor:
    return x.new_zeros(0)


@register_block("conformer")
class ConformerBlock(nn.Module):
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
    ) -> None:
        super().__init__()
        self.norm_ff_in = nn.LayerNorm(d_model)
        self.ff_in = FeedForward(d_model, d_ff, dropout)
        self.norm_att = nn.LayerNorm(d_model)
        self.attention = RelPositionAttention(d_model, num_heads, attention_dropout)
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
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = x + 0.5 * self.dropout(self.ff_in(self.norm_ff_in(x)))
        att, new_att_cache = self.attention(self.norm_att(x), att_mask, att_cache)
        x = x + self.dropout(att)
        conv, new_cnn_cache = self.conv(self.norm_conv(x), frame_mask, cnn_cache)
        x = x + self.dropout(conv)
        x = x + 0.5 * self.dropout(self.ff_out(self.norm_ff_out(x)))
        return self.norm_final(x), new_att_cache, new_cnn_cache
