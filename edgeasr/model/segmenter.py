"""Segmenter: an end-of-segment predictor on the streaming first pass's encoder frames.

Why: rule-based endpointing waits for 0.8 s of CTC blanks before it closes a segment, and the
second pass (Whisper's decoder, a cascade) only starts then. The segmenter in a two-pass
cascaded encoder (arXiv 2211.15432) lets the causal first pass itself predict where a segment
ends, so the final arrives sooner. Here a small MLP reads each chunk-causal encoder frame and
gives P(the segment's speech is over by this frame); the session closes the segment when the
last frame of a chunk says so (``DecodeOptions.segmenter``), the blank rules staying as a
fallback.

**Targets without alignments.** The frames after the utterance's last token, by the CTC head's
own best path over the same encoder output (its last non-blank frame), plus ``margin`` frames
for the last sound to fade, are "ended" (1); the frames before are not (0) — pauses inside a
sentence included, which is what the head must learn to tell apart from an end. Only the head
trains (the encoder and CTC head can stay frozen), so it is cheap: minutes on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class SegmenterConfig:
    hidden: int = 64
    #: encoder frames after the last token still counted as speech (the last sound's tail)
    margin: int = 5

    @classmethod
    def from_dict(cls, config: dict) -> "SegmenterConfig":
        unknown = sorted(set(config) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"model.segmenter: unknown key(s) {', '.join(unknown)} "
                             f"(known: {', '.join(sorted(cls.__dataclass_fields__))})")
        return cls(**config)


def end_targets(log_probs: torch.Tensor, lengths: torch.Tensor, margin: int, blank: int = 0) -> torch.Tensor:
    """[B, T] float: 1 on frames after the last non-blank of the best path (+ ``margin``), 0
    before; an utterance with no non-blank frame is all "ended" (nothing was said)."""
    frames = log_probs.size(1)
    speech = log_probs.argmax(dim=-1) != blank  # [B, T]
    positions = torch.arange(frames, device=log_probs.device)[None, :]
    speech = speech & (positions < lengths[:, None])
    last = torch.where(speech, positions, torch.full_like(positions, -1)).max(dim=1).values  # [B]
    ended = positions > (last + margin)[:, None]
    ended |= (last < 0)[:, None]
    return ended.float()


class Segmenter(nn.Module):
    def __init__(self, config: SegmenterConfig, encoder_dim: int) -> None:
        super().__init__()
        self.config = config
        self.net = nn.Sequential(nn.Linear(encoder_dim, config.hidden), nn.GELU(), nn.Linear(config.hidden, 1))

    def forward(self, encoded: torch.Tensor) -> torch.Tensor:
        """encoded [..., D] -> logits [...] of "the segment has ended here"."""
        return self.net(encoded).squeeze(-1)

    def loss(self, encoded: torch.Tensor, lengths: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
        """Binary cross-entropy against ``end_targets`` over the valid frames (a frame mean)."""
        targets = end_targets(log_probs.detach(), lengths, self.config.margin)
        valid = torch.arange(encoded.size(1), device=encoded.device)[None, :] < lengths[:, None]
        logits = self(encoded)
        losses = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        return (losses * valid).sum() / valid.sum().clamp(min=1)
