"""Plain multi-head attention for the decoder, with nn.MultiheadAttention's parameter layout.

Why not nn.MultiheadAttention itself: its inference fast path has no ONNX form, and its traced
graph bakes the batch size into reshapes (it multiplies sizes as Python ints), so an exported
decoder fails on any other n-best size. This one keeps heads as their own dimension and never
does arithmetic on sizes, so the traced graph works for any batch and length. The parameter
names (``in_proj_weight``, ``in_proj_bias``, ``out_proj``) are nn.MultiheadAttention's, so
models saved with it load unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class MultiHeadAttention(nn.Module):
    def __init__(self, d_model: int, num_heads: int) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model {d_model} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.d_head = d_model // num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d_model))
        self.out_proj = nn.Linear(d_model, d_model)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.size(0), x.size(1), self.num_heads, self.d_head).transpose(1, 2)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, None]:
        """[B, Tq, D] x [B, Tk, D] -> ([B, Tq, D], None). Masks are True where attention is blocked:
        ``attn_mask`` [Tq, Tk], ``key_padding_mask`` [B, Tk]."""
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        q = self._heads(nn.functional.linear(query, w_q, b_q))
        k = self._heads(nn.functional.linear(key, w_k, b_k))
        v = self._heads(nn.functional.linear(value, w_v, b_v))
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(self.d_head)  # [B, H, Tq, Tk]
        blocked = None
        if attn_mask is not None:
            blocked = attn_mask.unsqueeze(0).unsqueeze(0)
        if key_padding_mask is not None:
            padding = key_padding_mask.unsqueeze(1).unsqueeze(2)
            blocked = padding if blocked is None else blocked | padding
        if blocked is not None:
            scores = scores.masked_fill(blocked, torch.finfo(scores.dtype).min)
        context = torch.matmul(torch.softmax(scores, dim=-1), v).transpose(1, 2)
        context = context.reshape(context.size(0), context.size(1), -1)
        return self.out_proj(context), None
