"""Position-wise feed-forward modules.

``FeedForward``: Linear -> Swish -> Linear (Conformer).
``BatchNormFeedForward``: Linear -> BN -> ReLU -> Linear -> BN (FusionFormer); after ``fuse()`` it
is two linears and a ReLU, nothing else.
"""

from __future__ import annotations

import torch
from torch import nn

from edgeasr.nn.norm import LinearBN


class FeedForward(nn.Module):
    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.linear_in = nn.Linear(d_model, d_ff)
        self.activation = nn.SiLU()
        self.dropout = nn.Dropout(dropout)
        self.linear_out = nn.Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.linear_out(self.dropout(self.activation(self.linear_in(x))))


class BatchNormFeedForward(nn.Module):
    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.linear_in = LinearBN(d_model, d_ff)
        self.dropout = nn.Dropout(dropout)
        self.linear_out = LinearBN(d_ff, d_model)

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.dropout(torch.relu(self.linear_in(x, frame_mask)))
        return self.linear_out(hidden, frame_mask)
