"""Padding and chunk masks: the whole dynamic-chunk scheme of U2 in one place.

Convention: masks are boolean and ``True`` means "may use". An attention mask has shape
``[B, T_query, T_key]``; a padding mask ``[B, T]`` is True on real frames.

Why chunk masks: a model trained with a random chunk size per batch (frame ``i`` sees every frame
up to the end of its own chunk, optionally only a few chunks back) serves any chunk size at
inference, and its chunk-by-chunk streaming output equals the full-sequence output under the same
mask, which is what the tests check.
"""

from __future__ import annotations

import torch


def padding_mask(lengths: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """[B, T] True where the frame is real (index < length)."""
    max_len = int(lengths.max().item()) if max_len is None else max_len
    steps = torch.arange(max_len, device=lengths.device)
    return steps.unsqueeze(0) < lengths.unsqueeze(1)


def chunk_mask(
    size: int, chunk_size: int, num_left_chunks: int = -1, device: torch.device | None = None
) -> torch.Tensor:
    """[T, T] mask where frame i may attend to frames of its own chunk and earlier chunks.

    ``chunk_size <= 0`` means full context. ``num_left_chunks < 0`` means unlimited history;
    otherwise only that many chunks before the frame's own chunk are visible.
    """
    if chunk_size <= 0:
        return torch.ones(size, size, dtype=torch.bool, device=device)
    index = torch.arange(size, device=device)
    chunk_of = index // chunk_size
    end = (chunk_of + 1) * chunk_size  # exclusive end of the query's chunk
    if num_left_chunks < 0:
        start = torch.zeros_like(end)
    else:
        start = torch.clamp((chunk_of - num_left_chunks) * chunk_size, min=0)
    keys = index.unsqueeze(0)
    return (keys >= start.unsqueeze(1)) & (keys < end.unsqueeze(1))


def draw_chunk_size(
    max_len: int,
    generator: torch.Generator | None = None,
    max_chunk: int = 25,
    full_context_prob: float = 0.5,
) -> int:
    """U2's dynamic chunk draw: full context about half the time, else a chunk in 1..max_chunk.

    Returns 0 for full context. The draw uses its own generator so that training is
    reproducible from the seed.
    """
    if torch.rand((), generator=generator).item() < full_context_prob:
        return 0
    return int(torch.randint(1, max_chunk + 1, (), generator=generator).item())


def attention_mask(
    lengths: torch.Tensor,
    max_len: int,
    chunk_size: int = 0,
    num_left_chunks: int = -1,
) -> torch.Tensor:
    """[B, T, T] mask combining key padding with the chunk pattern."""
    keys = padding_mask(lengths, max_len).unsqueeze(1)  # [B, 1, T]
    pattern = chunk_mask(max_len, chunk_size, num_left_chunks, device=lengths.device)
    return keys & pattern.unsqueeze(0)
