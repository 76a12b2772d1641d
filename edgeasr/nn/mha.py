"""Plain multi-head attention for the decoder, with nn.MultiheadAttention's parameter layout.

Why not nn.MultiheadAttention itself: its inference fast path has no ONNX form, and its traced
graph bakes the batch size into reshapes (it multiplies sizes as Python ints), so an exported
decoder fails on any other n-best size. This one keeps heads as their own dimension and never
does arithmetic on sizes, so the traced graph works for any batch and length. The Q/K/V
projection is an ``nn.Linear`` (``in_proj``), so quantization treats it like every other linear;
checkpoints saved with nn.MultiheadAttention's ``in_proj_weight`` / ``in_proj_bias`` load through
a hook.
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
        self.in_proj = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        nn.init.xavier_uniform_(self.in_proj.weight)
        nn.init.zeros_(self.in_proj.bias)
        nn.init.zeros_(self.out_proj.bias)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for old, new in (("in_proj_weight", "in_proj.weight"), ("in_proj_bias", "in_proj.bias")):
            if prefix + old in state_dict:
                state_dict[prefix + new] = state_dict.pop(prefix + old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

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
        if query is key and key is value:  # self-attention: one product for Q, K and V
            q, k, v = self.in_proj(query).chunk(3, dim=-1)
        else:  # cross-attention: the query from one sequence, keys and values from the other
            q = self.in_proj(query).chunk(3, dim=-1)[0]
            _, k, v = self.in_proj(key).chunk(3, dim=-1)
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
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
