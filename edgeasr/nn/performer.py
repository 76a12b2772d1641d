"""RNN-Performer attention: causal FAVOR+ linear attention with a fixed-size streaming state.

Softmax attention reads every cached key and value for every new frame, so its streaming cost and
memory grow with the context. The Performer (Choromanski et al., 2021) replaces exp(q·k / sqrt(d))
by a dot product of positive random features, phi(q)·phi(k), with

    phi(x) = m^-1/2 exp(W x - |x|^2 / 2),   rows of W ~ N(0, I) (made orthogonal),

(x is q or k scaled by d^-1/4). Causal attention then becomes a running sum (Practical Conformer,
Botros et al., 2023, "RNNAttention-Performer"):

    S_t = S_{t-1} + phi(k_t) v_t^T,   z_t = z_{t-1} + phi(k_t),   o_t = S_t^T phi(q_t) / z_t^T phi(q_t)

The state per head is S (m x d_head) and z (m): it does not grow with the context, however long
the stream runs. Here S and z travel together as one tensor ``[B, H, m, d_head + 1]`` (the values
get a column of ones, whose running sum is z).

Training and streaming run the same function, ``causal_linear_attention``: the sequence is cut into
blocks; inside a block the causal part is a small masked matrix product, across blocks the state
carries the past. Any block size gives the same result (up to float rounding), which is what makes
chunked streaming equal to full-sequence computation; the tests hold it to that.

The attention is causal frame by frame: unlike chunked softmax attention, a frame never sees the
later frames of its own chunk, so the chunk size changes latency but not the output.
"""

from __future__ import annotations

import math

import torch
from torch import nn

#: Keeps the normalizer away from 0 when every key feature has underflowed.
_DENOMINATOR_FLOOR = 1e-6


def orthogonal_random_features(num_features: int, dim: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """[num_features, dim] Gaussian rows, orthogonal within each block of ``dim`` rows (FAVOR+).

    Orthogonal rows lower the variance of the kernel estimate; each row is rescaled to the norm a
    Gaussian row would have, so the estimate stays unbiased.
    """
    blocks = []
    remaining = num_features
    while remaining > 0:
        gaussian = torch.randn(dim, dim, generator=generator)
        q, r = torch.linalg.qr(gaussian)
        # Without this sign fix QR's Q is not uniformly distributed and the kernel estimate is
        # biased (a few percent low, however many features).
        q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
        blocks.append(q.T[: min(dim, remaining)])
        remaining -= dim
    directions = torch.cat(blocks, dim=0)
    norms = torch.randn(num_features, dim, generator=generator).norm(dim=1, keepdim=True)
    return directions * norms


def positive_random_features(x: torch.Tensor, projection: torch.Tensor, is_query: bool) -> torch.Tensor:
    """phi(x) for x [..., T, d] and projection [m, d] -> [..., T, m], all entries positive.

    A query's features may be divided by any per-query constant (it cancels between numerator and
    denominator), so queries subtract their largest exponent: no overflow, no underflow. A key's
    constant would not cancel, so keys keep the exact formula; its exponent is bounded anyway
    (w·x - |x|^2/2 <= |w|^2/2), which stays far inside float32 for head sizes up to a few hundred.
    """
    exponent = torch.matmul(x, projection.t()) - 0.5 * (x * x).sum(dim=-1, keepdim=True)
    if is_query:
        exponent = exponent - exponent.amax(dim=-1, keepdim=True).detach()
    return torch.exp(exponent) / math.sqrt(projection.size(0))


def causal_linear_attention(
    q_features: torch.Tensor,
    k_features: torch.Tensor,
    values: torch.Tensor,
    state: torch.Tensor | None = None,
    block_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal linear attention over [B, H, T, m] features and [B, H, T, dv] values.

    ``state`` [B, H, m, dv + 1] holds the running sums of earlier frames (None = no past).
    Returns (outputs [B, H, T, dv], new state).
    """
    batch, heads, frames, m = q_features.shape
    ones = values.new_ones(batch, heads, frames, 1)
    values_1 = torch.cat([values, ones], dim=-1)  # last column accumulates the normalizer z
    if state is None or state.numel() == 0:
        state = values.new_zeros(batch, heads, m, values_1.size(-1))
    outputs = []
    for start in range(0, frames, block_size):
        end = min(frames, start + block_size)
        q_b, k_b, v_b = q_features[:, :, start:end], k_features[:, :, start:end], values_1[:, :, start:end]
        within = torch.matmul(q_b, k_b.transpose(-2, -1)).tril()  # [B, H, t, t], causal in the block
        result = torch.matmul(q_b, state) + torch.matmul(within, v_b)
        outputs.append(result[..., :-1] / result[..., -1:].clamp_min(_DENOMINATOR_FLOOR))
        state = state + torch.matmul(k_b.transpose(-2, -1), v_b)
    if not outputs:
        return values.new_zeros(batch, heads, 0, values.size(-1)), state
    return torch.cat(outputs, dim=2), state


class PerformerAttention(nn.Module):
    """Multi-head causal FAVOR+ attention with the encoder's attention signature.

    ``forward(x, mask, cache, frame_mask) -> (out, new_cache)``: ``mask`` is accepted for the common
    signature and ignored (the attention is causal by construction); ``cache`` is the fixed-size
    state ``[B, H, m, d_head + 1]``. Padded frames sit at the end of a batch, so causality alone
    keeps them out of every real frame's output.
    """

    #: The state has a fixed size: nothing to trim, whatever the left context setting.
    cache_grows = False

    def __init__(self, d_model: int, num_heads: int, num_features: int = 64, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model {d_model} is not divisible by num_heads {num_heads}")
        if num_features < 1:
            raise ValueError("performer_features must be at least 1")
        self.d_model = d_model
        self.num_heads = num_heads
        self.d_head = d_model // num_heads
        self.num_features = num_features
        self.linear_q = nn.Linear(d_model, d_model)
        self.linear_k = nn.Linear(d_model, d_model)
        self.linear_v = nn.Linear(d_model, d_model)
        self.linear_out = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)
        # Drawn once and saved with the weights: the model is trained and deployed with one draw.
        self.register_buffer("projection", orthogonal_random_features(num_features, self.d_head))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, time, _ = x.shape
        return x.view(batch, time, self.num_heads, self.d_head).transpose(1, 2)

    @staticmethod
    def cached_frames(cache: torch.Tensor | None) -> int:
        return 0

    @staticmethod
    def trim_cache(cache: torch.Tensor, max_left_frames: int) -> torch.Tensor:
        return cache

    def state_shape(self, batch: int) -> tuple[int, int, int, int]:
        return (batch, self.num_heads, self.num_features, self.d_head + 1)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        cache: torch.Tensor | None = None,
        frame_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch, frames, _ = x.shape
        scale = self.d_head**-0.25
        q = positive_random_features(self._heads(self.linear_q(x)) * scale, self.projection, is_query=True)
        k = positive_random_features(self._heads(self.linear_k(x)) * scale, self.projection, is_query=False)
        v = self._heads(self.linear_v(x))
        context, state = causal_linear_attention(q, k, v, cache)
        context = self.dropout(context).transpose(1, 2).reshape(batch, frames, self.d_model)
        return self.linear_out(context), state
