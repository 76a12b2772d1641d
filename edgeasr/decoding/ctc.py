"""CTC search: greedy and prefix beam search, both with token timestamps.

Prefix beam search keeps, for every distinct collapsed prefix, the probability of ending in blank
and in non-blank, so that "a a" (two tokens) and "aa" (one token with a repeat) are kept apart.
It is incremental: ``PrefixBeamSearch.step`` consumes one chunk of log-probabilities at a time, so
streaming and offline decoding run the very same code and give the same n-best.

Log-probabilities may be numpy arrays or (CPU) torch tensors; the search itself is numpy and
plain Python, so the ONNX runtime uses it without torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

NEG_INF = float("-inf")


def _as_array(log_probs) -> np.ndarray:
    """float32 [T, V] from a numpy array or a torch tensor (detached, on the CPU)."""
    if hasattr(log_probs, "detach"):
        log_probs = log_probs.detach().cpu().numpy()
    return np.asarray(log_probs, dtype=np.float32)


def _logadd(*values: float) -> float:
    top = max(values)
    if top == NEG_INF:
        return NEG_INF
    return top + math.log(sum(math.exp(v - top) for v in values))


@dataclass
class Hypothesis:
    tokens: tuple[int, ...]
    score: float  # log P(prefix | audio so far) under CTC
    #: encoder frame index at which each token was emitted (peak of its first non-blank frame)
    times: tuple[int, ...] = ()
    #: per-token posterior at its emission frame, for confidence
    token_probs: tuple[float, ...] = ()


class GreedySearch:
    """Incremental best-path decoding: keeps only the emitted tokens and the previous frame's label,
    so its memory grows with the text, never with the audio."""

    def __init__(self, blank: int = 0) -> None:
        self.blank = blank
        self.reset()

    def reset(self) -> None:
        self.tokens: list[int] = []
        self.times: list[int] = []
        self.probs: list[float] = []
        self.previous = self.blank
        self.score = 0.0
        self.frame_offset = 0

    def step(self, log_probs) -> None:
        scores = _as_array(log_probs)
        best = scores.argmax(axis=-1)
        values = np.take_along_axis(scores, best[:, None], axis=-1)[:, 0]
        for t, (token, value) in enumerate(zip(best.tolist(), values.tolist())):
            self.score += value
            if token != self.blank and token != self.previous:
                self.tokens.append(token)
                self.times.append(self.frame_offset + t)
                self.probs.append(math.exp(value))
            self.previous = token
        self.frame_offset += len(best)

    def nbest(self, n: int | None = None) -> list[Hypothesis]:
        return [Hypothesis(tuple(self.tokens), self.score, tuple(self.times), tuple(self.probs))]


def ctc_greedy(log_probs, blank: int = 0) -> Hypothesis:
    """log_probs [T, V] -> best path collapsed (repeats merged, blanks removed)."""
    search = GreedySearch(blank)
    search.step(log_probs)
    return search.nbest()[0]


@dataclass
class _Beam:
    blank: float = NEG_INF  # log P(prefix, path ends in blank)
    nonblank: float = NEG_INF  # log P(prefix, path ends in its last token)
    times: tuple[int, ...] = ()
    probs: tuple[float, ...] = ()
    #: best log-prob of the last token's frame so far, to place its timestamp at its peak
    last_peak: float = NEG_INF

    @property
    def total(self) -> float:
        return _logadd(self.blank, self.nonblank)


@dataclass
class PrefixBeamSearch:
    """Incremental CTC prefix beam search.

    ``beam_size`` prefixes survive each frame; only the ``token_beam`` most likely tokens of a frame
    are expanded (the rest cannot enter a small beam anyway), which keeps the cost linear in T.
    """

    beam_size: int = 10
    blank: int = 0
    token_beam: int | None = None
    frame_offset: int = 0
    beams: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.beams = {(): _Beam(blank=0.0)}
        self.frame_offset = 0

    def step(self, log_probs) -> None:
        """Consume log_probs [T, V] of the next frames."""
        scores = _as_array(log_probs)
        token_beam = min(self.token_beam or self.beam_size, scores.shape[-1])
        values, indices = _top_tokens(scores, token_beam)
        for t in range(len(values)):
            frame = self.frame_offset + t
            next_beams: dict[tuple[int, ...], _Beam] = {}

            def get(prefix, source: _Beam) -> _Beam:
                beam = next_beams.get(prefix)
                if beam is None:
                    beam = _Beam(times=source.times, probs=source.probs, last_peak=source.last_peak)
                    next_beams[prefix] = beam
                return beam

            for token, lp in zip(indices[t], values[t]):
                for prefix, beam in self.beams.items():
                    if token == self.blank:
                        target = get(prefix, beam)
                        target.blank = _logadd(target.blank, beam.total + lp)
                        continue
                    last = prefix[-1] if prefix else None
                    if token == last:
                        # Repeat without blank in between: same prefix, token continues.
                        target = get(prefix, beam)
                        target.nonblank = _logadd(target.nonblank, beam.nonblank + lp)
                        if lp > target.last_peak and target.times:
                            target.times = target.times[:-1] + (frame,)
                            target.probs = target.probs[:-1] + (math.exp(lp),)
                            target.last_peak = lp
                        # Repeat after a blank: a new token.
                        extended = prefix + (token,)
                        new = next_beams.get(extended)
                        if new is None:
                            new = _Beam(times=beam.times + (frame,), probs=beam.probs + (math.exp(lp),), last_peak=lp)
                            next_beams[extended] = new
                        new.nonblank = _logadd(new.nonblank, beam.blank + lp)
                    else:
                        extended = prefix + (token,)
                        new = next_beams.get(extended)
                        if new is None:
                            new = _Beam(times=beam.times + (frame,), probs=beam.probs + (math.exp(lp),), last_peak=lp)
                            next_beams[extended] = new
                        new.nonblank = _logadd(new.nonblank, beam.total + lp)
            ranked = sorted(next_beams.items(), key=lambda item: item[1].total, reverse=True)
            self.beams = dict(ranked[: self.beam_size])
        self.frame_offset += len(values)

    def nbest(self, n: int | None = None) -> list[Hypothesis]:
        ranked = sorted(self.beams.items(), key=lambda item: item[1].total, reverse=True)
        return [
            Hypothesis(prefix, beam.total, beam.times, beam.probs) for prefix, beam in ranked[: n or len(ranked)]
        ]


def _top_tokens(scores: np.ndarray, k: int) -> tuple[list, list]:
    """Per frame, the ``k`` best (log-prob, token) pairs, best first (ties: lower token first)."""
    if scores.shape[0] == 0:
        return [], []
    candidates = np.argpartition(-scores, k - 1, axis=-1)[:, :k] if k < scores.shape[-1] else \
        np.broadcast_to(np.arange(scores.shape[-1]), scores.shape).copy()
    candidate_scores = np.take_along_axis(scores, candidates, axis=-1)
    order = np.lexsort((candidates, -candidate_scores), axis=-1)
    indices = np.take_along_axis(candidates, order, axis=-1)
    values = np.take_along_axis(candidate_scores, order, axis=-1)
    return values.tolist(), indices.tolist()


def ctc_prefix_beam_search(log_probs, beam_size: int = 10, blank: int = 0) -> list[Hypothesis]:
    """log_probs [T, V] -> n-best hypotheses, best first."""
    search = PrefixBeamSearch(beam_size=beam_size, blank=blank)
    search.step(log_probs)
    return search.nbest()
