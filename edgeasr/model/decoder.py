"""Transformer attention decoder for rescoring (left-to-right, optionally right-to-left).

U2 uses it only to rescore CTC hypotheses, never to search, so it stays small and
non-streaming. The right-to-left copy (U2++) reads the reversed token sequence; averaging both
directions' scores makes rescoring less sensitive to early errors.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from edgeasr.nn.attention import sinusoid_embedding
from edgeasr.nn.feed_forward import FeedForward
from edgeasr.nn.mha import MultiHeadAttention


class DecoderLayer(nn.Module):
    def __init__(self, d_model: int, num_heads: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.norm_self = nn.LayerNorm(d_model)
        self.self_attention = MultiHeadAttention(d_model, num_heads)
        self.norm_src = nn.LayerNorm(d_model)
        self.src_attention = MultiHeadAttention(d_model, num_heads)
        self.norm_ff = nn.LayerNorm(d_model)
        self.ff = FeedForward(d_model, d_ff, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        causal_block: torch.Tensor,
        token_pad: torch.Tensor,
        memory: torch.Tensor,
        memory_pad: torch.Tensor,
    ) -> torch.Tensor:
        h = self.norm_self(x)
        h, _ = self.self_attention(
            h, h, h, attn_mask=causal_block, key_padding_mask=token_pad, need_weights=False
        )
        x = x + self.dropout(h)
        h = self.norm_src(x)
        h, _ = self.src_attention(h, memory, memory, key_padding_mask=memory_pad, need_weights=False)
        x = x + self.dropout(h)
        return x + self.dropout(self.ff(self.norm_ff(x)))


class TransformerDecoder(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        num_heads: int = 4,
        d_ff: int = 1024,
        num_layers: int = 3,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.embed = nn.Embedding(vocab_size, d_model)
        self.layers = nn.ModuleList(
            DecoderLayer(d_model, num_heads, d_ff, dropout) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.output = nn.Linear(d_model, vocab_size)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        tokens: torch.Tensor,
        token_lengths: torch.Tensor,
        memory: torch.Tensor,
        memory_lengths: torch.Tensor,
    ) -> torch.Tensor:
        """tokens [B, U] (starting with <sos>) -> logits [B, U, V]."""
        length = tokens.size(1)
        steps = torch.arange(length, device=tokens.device)
        positions = sinusoid_embedding(steps, self.d_model).to(memory.dtype)
        x = self.dropout(self.embed(tokens) * math.sqrt(self.d_model) + positions)
        # Blocked positions are True.
        causal_block = steps.unsqueeze(0) > steps.unsqueeze(1)  # key after query
        token_pad = steps.unsqueeze(0) >= token_lengths.unsqueeze(1)
        memory_steps = torch.arange(memory.size(1), device=memory.device)
        memory_pad = memory_steps.unsqueeze(0) >= memory_lengths.unsqueeze(1)
        for layer in self.layers:
            x = layer(x, causal_block, token_pad, memory, memory_pad)
        return self.output(self.norm(x))
