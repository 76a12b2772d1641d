"""Multi-head self-attention with relative positions and an explicit key/value cache.

Every attention variant in edgeasr has one signature::

    forward(x, mask, cache) -> (out, new_cache)

``x`` is the query frames ``[B, T, D]``; ``cache`` holds keys and values of earlier frames
``[B, H, T_cache, 2 * d_head]`` (empty tensor when none); keys and values are the cache followed
by the projections of ``x``; ``mask`` is ``[B, T, T_cache + T]`` (True = may attend). The returned
cache is the full key/value tensor; the encoder trims it to the left context it keeps, so memory
stays bounded on endless streams.

Relative positions are computed from the distance between query and key for whatever lengths
arrive (sinusoids evaluated on demand), so there is no maximum length to overflow: a 30-minute
stream works the same as a 3-second one.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from edgeasr.nn.norm import LinearBN


def sinusoid_embedding(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """[N, dim] sinusoidal embedding of (possibly negative) positions, computed on demand."""
    half = dim // 2
    freq = torch.exp(
        torch.arange(half, device=positions.device, dtype=torch.float32) * (-math.log(10000.0) / half)
    )
    angles = positions.to(torch.float32).unsqueeze(1) * freq.unsqueeze(0)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


class RelPositionAttention(nn.Module):
    """Transformer-XL style attention: content and position terms with learned biases u and v.

    Score(i, j) = (q_i + u)·k_j + (q_i + v)·W_p p(i - j), where p is a sinusoid of the distance.
    Distances are gathered from a table built for exactly the distances present, which replaces
    the usual "rel_shift" trick with an explicit index and needs no length limit.
    """

    #: The cache holds keys and values of past frames: it grows with context and is trimmed.
    cache_grows = True
    #: Set by the integer-only path (edgeasr.quant.integer.convert_to_integer): the attention
    #: products run on int8 codes with int32 accumulation.
    integer_products = False

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0, batch_norm: bool = False) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model {d_model} is not divisible by num_heads {num_heads}")
        self.d_model = d_model
        self.num_heads = num_heads
        self.d_head = d_model // num_heads
        # FusionFormer (batch_norm=True): a BatchNorm after each of the Q/K/V/output projections,
        # folded into them for inference. The position projection acts on sinusoids, not on
        # frames, so it keeps no BatchNorm.
        projection = (lambda: LinearBN(d_model, d_model)) if batch_norm else (lambda: nn.Linear(d_model, d_model))
        self.linear_q = projection()
        self.linear_k = projection()
        self.linear_v = projection()
        self.linear_out = projection()
        self.linear_pos = nn.Linear(d_model, d_model, bias=False)
        self.pos_bias_u = nn.Parameter(torch.zeros(num_heads, self.d_head))
        self.pos_bias_v = nn.Parameter(torch.zeros(num_heads, self.d_head))
        nn.init.xavier_uniform_(self.pos_bias_u)
        nn.init.xavier_uniform_(self.pos_bias_v)
        self.dropout = nn.Dropout(dropout)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, time, _ = x.shape
        return x.view(batch, time, self.num_heads, self.d_head).transpose(1, 2)

    @staticmethod
    def cached_frames(cache: torch.Tensor | None) -> int:
        return cache.size(2) if cache is not None and cache.dim() == 4 else 0

    @staticmethod
    def trim_cache(cache: torch.Tensor, max_left_frames: int) -> torch.Tensor:
        """Keep only the last ``max_left_frames`` frames of history (-1 = keep all)."""
        if max_left_frames < 0 or cache.dim() != 4:
            return cache
        return cache[:, :, max(0, cache.size(2) - max_left_frames) :]

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        cache: torch.Tensor | None = None,
        frame_mask: torch.Tensor | None = None,
        query_keep: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``query_keep`` [B, T] (inference only): compute outputs only for these frames.

        Every frame still supplies its key and value (and enters the cache); queries, scores,
        context and the output projection run only for kept frames; the others return zeros.
        This is how frame-level dynamic compute (edgeasr.model.dynamic) saves real work.
        """
        k = self._heads(_project(self.linear_k, x, frame_mask))
        v = self._heads(_project(self.linear_v, x, frame_mask))
        if cache is not None and cache.size(2) > 0:
            k_cache, v_cache = cache.split(self.d_head, dim=-1)
            k = torch.cat([k_cache, k], dim=2)
            v = torch.cat([v_cache, v], dim=2)
        new_cache = torch.cat([k, v], dim=-1)
        if query_keep is None:
            return self._attend(x, k, v, mask, frame_mask, x.size(1)), new_cache
        out = x.new_zeros(x.shape)
        for b in range(x.size(0)):  # streaming has one utterance; offline batches loop here
            rows = query_keep[b].nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            sub_mask = None if frame_mask is None else frame_mask[b : b + 1, rows]
            out[b, rows] = self._attend(x[b : b + 1, rows], k[b : b + 1], v[b : b + 1], mask[b : b + 1, rows],
                                        sub_mask, x.size(1), query_rows=rows)[0]
        return out, new_cache

    def _projected_positions(self, table: torch.Tensor, t_chunk: int, t_key: int, dtype) -> torch.Tensor:
        """``linear_pos`` of the sinusoid table rows (distances t_key - 1 down to 1 - t_chunk).

        The projection depends on the distance only, never on the input, so inference keeps the
        rows it has computed and projects only distances it has not seen: streaming extends the
        range by one chunk of distances at a time instead of re-projecting the whole history
        (a saving that grows with context). Training and tracing compute it.
        """
        remember = not (self.training or torch.is_grad_enabled() or torch.jit.is_tracing())
        if not remember or t_key + t_chunk - 1 > MAX_MEMO_DISTANCES:
            return self.linear_pos(table.to(dtype))
        top, bottom = t_key - 1, 1 - t_chunk
        memo = getattr(self, "_position_memo", None)
        key = _memo_key(self.linear_pos)
        if memo is None or memo[0] != key or memo[3].dtype != dtype:
            memo = (key, top, bottom, self.linear_pos(table.to(dtype)))
        else:
            _, high, low, rows = memo
            pieces = []
            if top > high:
                pieces.append(self.linear_pos(sinusoid_embedding(torch.arange(top, high, -1), self.d_model).to(dtype)))
            pieces.append(rows)
            if bottom < low:
                pieces.append(self.linear_pos(sinusoid_embedding(torch.arange(low - 1, bottom - 1, -1), self.d_model).to(dtype)))
            if len(pieces) > 1:
                memo = (key, max(top, high), min(bottom, low), torch.cat(pieces))
        self._position_memo = memo
        _, high, _, rows = memo
        return rows[high - top : high - top + t_key + t_chunk - 1]

    def _attend(self, x, k, v, mask, frame_mask, t_chunk: int, query_rows: torch.Tensor | None = None) -> torch.Tensor:
        """Outputs for queries ``x`` [B, Tq, D] over keys/values [B, H, Tk, dh]. The chunk has
        ``t_chunk`` frames; ``query_rows`` says which of them the queries are (default: all)."""
        batch, t_query, _ = x.shape
        q = self._heads(_project(self.linear_q, x, frame_mask))  # [B, H, Tq, dh]
        t_key = k.size(2)

        # Distances present: chunk frame i sits at key position (t_key - t_chunk + i); distance to
        # key j ranges from -(t_chunk - 1) to (t_key - 1). Table row r holds distance (t_key - 1 - r).
        table, relative_index = _relative_positions(t_chunk, t_key, self.d_model, x.device)
        if query_rows is not None:
            relative_index = relative_index[query_rows]
        pos = self._projected_positions(table, t_chunk, t_key, x.dtype)
        pos = pos.view(-1, self.num_heads, self.d_head).transpose(0, 1)  # [H, R, dh]

        q_u = q + self.pos_bias_u.unsqueeze(1)
        q_v = q + self.pos_bias_v.unsqueeze(1)
        matmul = torch.matmul
        if self.integer_products and not self.training:
            from edgeasr.quant.integer import integer_matmul as matmul
        content = matmul(q_u, k.transpose(-2, -1))  # [B, H, Tq, Tk]
        position_all = matmul(q_v, pos.transpose(-2, -1).unsqueeze(0))  # [B, H, Tq, R]
        index = relative_index.expand(batch, self.num_heads, t_query, t_key)
        position = torch.gather(position_all, 3, index)

        scores = (content + position) / math.sqrt(self.d_head)
        allowed = mask.unsqueeze(1)  # [B, 1, Tq, Tk]
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=-1).masked_fill(~allowed, 0.0)
        if matmul is torch.matmul:
            context = torch.matmul(self.dropout(weights), v)  # [B, H, Tq, dh]
        else:
            context = matmul(weights, v, a_scale=1.0 / 127.0)
        context = context.transpose(1, 2).reshape(batch, t_query, self.d_model)
        return _project(self.linear_out, context, frame_mask)


#: Largest distance range whose projected positions inference keeps (per layer, d_model floats
#: each: 2,048 distances of a 144-wide model are 1.2 MB over 8 layers); longer contexts compute.
MAX_MEMO_DISTANCES = 2048


def _memo_key(layer: nn.Module) -> tuple:
    """Identifies the projection and the state of its weights: an update or a swapped layer
    (dynamic int8, integer path) invalidates what was remembered."""
    weights = tuple((t.data_ptr(), t._version) for t in (*layer.parameters(), *layer.buffers()))
    return (id(layer), type(layer), weights)


_POSITION_CACHE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
_POSITION_CACHE_SIZE = 64


def _relative_positions(t_query: int, t_key: int, d_model: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(sinusoid table [R, d_model] of the distances present, gather index [Tq, Tk] into it).

    Every layer of a chunk asks for the same (t_query, t_key), and streaming repeats the same few
    shapes, so both are kept in a small cache; they are constants (no gradient). While tracing for
    ONNX they are computed in the graph, so the exported model works for any cache length.
    """
    tracing = torch.jit.is_tracing()
    key = (t_query, t_key, d_model, str(device))
    if not tracing and key in _POSITION_CACHE:
        return _POSITION_CACHE[key]
    distances = torch.arange(t_key - 1, -t_query, -1, device=device)
    table = sinusoid_embedding(distances, d_model)
    rows = torch.arange(t_query, device=device).unsqueeze(1)
    cols = torch.arange(t_key, device=device).unsqueeze(0)
    index = t_query - 1 - rows + cols
    if not tracing:
        if len(_POSITION_CACHE) >= _POSITION_CACHE_SIZE:
            _POSITION_CACHE.pop(next(iter(_POSITION_CACHE)))
        _POSITION_CACHE[key] = (table, index)
    return table, index


def _project(layer: nn.Module, x: torch.Tensor, frame_mask: torch.Tensor | None) -> torch.Tensor:
    """Apply a projection; a BatchNorm projection also needs to know which frames are padding."""
    return layer(x, frame_mask) if isinstance(layer, LinearBN) else layer(x)
