"""CTC search: greedy and prefix beam search, both with token timestamps.

Prefix beam search keeps, for every distinct collapsed prefix, the probability of ending in blank
and in non-blank, so that "a a" (two tokens) and "aa" (one token with a repeat) are kept apart.
It is incremental: ``PrefixBeamSearch.step`` consumes one chunk of log-probabilities at a time, so
streaming and offline decoding run the very same code and give the same n-best.

Log-probabilities may be numpy arrays or (CPU) torch tensors; the search itself is numpy and
plain Python, so the ONNX runtime uses it without torch.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np

try:  # the compiled core (edgeasr/_native.c), built by `pip install` / make setup
    from edgeasr import _native
except ImportError:  # pragma: no cover - a build without a C compiler: the Python search runs
    _native = None

NEG_INF = float("-inf")


def _as_array(log_probs) -> np.ndarray:
    """float32 [T, V] from a numpy array or a torch tensor (detached, on the CPU)."""
    if hasattr(log_probs, "detach"):
        log_probs = log_probs.detach().cpu().numpy()
    return np.asarray(log_probs, dtype=np.float32)


@dataclass
class Hypothesis:
    tokens: tuple[int, ...]
    score: float  # log P(prefix | audio so far) under CTC
    #: encoder frame index at which each token was emitted (peak of its first non-blank frame)
    times: tuple[int, ...] = ()
    #: per-token posterior at its emission frame, for confidence
    token_probs: tuple[float, ...] = ()
    #: the fused scorer's score (weighted LM, word bonus, hotword boosts); 0 without one
    fused_score: float = 0.0
    #: per word, its log-probability under the Whisper decoder of a second pass (for
    #: confidence); empty when no decoder wrote the hypothesis
    word_scores: tuple[float, ...] = ()


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


class _Beam:
    """One prefix: CTC log-probabilities of its paths and what the fused scorer says of it.

    ``emitted`` is a cons list ``(frame, posterior, previous)`` of the prefix's token times, so
    extending a prefix costs O(1) however long it is (tuples would be copied every frame)."""

    __slots__ = ("blank", "nonblank", "total", "emitted", "last_peak", "state", "fused")

    def __init__(self, blank: float = NEG_INF, nonblank: float = NEG_INF, emitted=None,
                 last_peak: float = NEG_INF, state=None, fused: float = 0.0) -> None:
        self.blank = blank  # log P(prefix, path ends in blank)
        self.nonblank = nonblank  # log P(prefix, path ends in its last token)
        self.total = NEG_INF
        self.emitted = emitted
        #: best log-prob of the last token's frame so far, to place its timestamp at its peak
        self.last_peak = last_peak
        self.state = state  # the fused scorer's state (None without one)
        self.fused = fused  # the fused scorer's score of the prefix (LM, hotwords)


def _logadd2(a: float, b: float) -> float:
    if a < b:
        a, b = b, a
    if b == NEG_INF:
        return a
    return a + math.log1p(math.exp(b - a))


class _PrefixTrie:
    """Prefixes as small integers: node 0 is the empty prefix, ``child(node, token)`` the prefix
    one token longer. Hashing an int pair is O(1) where a tuple prefix costs its length on every
    lookup. ``compact`` drops the nodes no live beam needs, so endless streams stay bounded."""

    def __init__(self) -> None:
        self.children: dict[tuple[int, int], int] = {}
        self.parent = [-1]
        self.token = [-1]

    def child(self, node: int, token: int) -> int:
        key = (node, token)
        found = self.children.get(key)
        if found is None:
            found = self.children[key] = len(self.parent)
            self.parent.append(node)
            self.token.append(token)
        return found

    def tokens(self, node: int) -> tuple[int, ...]:
        out = []
        while node > 0:
            out.append(self.token[node])
            node = self.parent[node]
        return tuple(reversed(out))

    def compact(self, live: list[int]) -> dict[int, int]:
        """Keep only ``live`` nodes and their ancestors; returns old id -> new id."""
        old_parent, old_token = self.parent, self.token
        self.children, self.parent, self.token = {}, [-1], [-1]
        mapping = {0: 0}
        for node in live:
            path = []
            while node not in mapping:
                path.append(node)
                node = old_parent[node]
            for old in reversed(path):
                mapping[old] = self.child(mapping[old_parent[old]], old_token[old])
        return mapping


def _unroll(emitted) -> tuple[tuple[int, ...], tuple[float, ...]]:
    times, probs = [], []
    while emitted is not None:
        times.append(emitted[0])
        probs.append(emitted[1])
        emitted = emitted[2]
    return tuple(reversed(times)), tuple(reversed(probs))


class PrefixBeamSearch:
    """Incremental CTC prefix beam search, optionally fused with a text scorer (LM, hotwords).

    ``beam_size`` prefixes survive each frame, ranked by CTC log-probability plus the scorer's
    score. Per frame only the ``token_beam`` most likely tokens (default: the beam size) within
    ``token_threshold`` nats of the frame's best are expanded: a token ~50 times less likely
    than the best (4 nats) cannot lift a prefix into a small beam, and skipping it keeps the
    search a small share of streaming time (measured in benchmarks/search_speed.py; with no
    threshold the n-best is that of the exhaustive top-k search). Frames where only blank
    remains update the beams in place without building new ones.

    Two implementations of the same arithmetic: the compiled core (``native=True``, the default
    where it is built: the per-frame bookkeeping in C; a character LM alone is scored in C too
    (``CharLMScorer.compiled``), any other fused scorer in Python, called only for (state, token)
    pairs a stream has not met) and this module's Python loop
    (``native=False``), the reference. They give identical n-best lists (tests/test_native_search.py).
    """

    #: trie nodes kept before dead branches are dropped (a few MB)
    compact_after = 200_000

    def __init__(self, beam_size: int = 10, blank: int = 0, token_beam: int | None = None,
                 token_threshold: float = 4.0, scorer=None, piece_texts: list[str] | None = None,
                 score_threshold: float = 6.0, native: bool | None = None) -> None:
        if scorer is not None and piece_texts is None:
            raise ValueError("a fused scorer needs the text of every token (fusion.piece_texts)")
        if native and _native is None:
            raise RuntimeError("the compiled prefix search (edgeasr._native) is not built: "
                               "reinstall edgeasr (make setup) with a C compiler")
        self.beam_size = beam_size
        self.blank = blank
        self.token_beam = token_beam
        self.token_threshold = token_threshold
        #: prefixes scoring more than this many nats below the frame's best are dropped even when
        #: the beam has room: they cost a full expansion every frame and cannot come back
        self.score_threshold = score_threshold
        self.scorer = scorer
        self.piece_texts = piece_texts
        # (scorer state, token) -> (delta, state), kept on the scorer: a recognizer shares its
        # scorers between streams, so later streams start with a warm cache
        self._advance: dict = scorer.__dict__.setdefault("_token_cache", {}) if scorer is not None else {}
        self._core = None
        #: the scorer compiled to C (a character LM alone): its states are its n-gram node ids
        self._compiled = None
        if native is not False and _native is not None:
            if scorer is not None and hasattr(scorer, "compiled"):
                self._compiled = scorer.compiled(piece_texts)
            advance = self._compiled or (self._native_advance if scorer is not None else None)
            self._core = _native.Search(beam_size, blank, min(token_beam or beam_size, 1 << 20), float(token_threshold),
                                        float(score_threshold), advance, 0, self.compact_after)
        self.reset()

    # --- the compiled core's side: scorer states as small integers --------------------------------

    def _intern(self, state) -> int:
        found = self._state_ids.get(state)
        if found is None:
            found = self._state_ids[state] = len(self._states)
            self._states.append(state)
        return found

    def _native_advance(self, state_id: int, token: int) -> tuple[float, int]:
        """The core's cache miss: the scorer's (delta, state id) for ``token`` after a state."""
        state = self._states[state_id]
        hit = self._advance.get((state, token)) or self._fused_miss(state, token)
        return hit[0], self._intern(hit[1])

    @property
    def frame_offset(self) -> int:
        return self._core.frame_offset if self._core is not None else self._frame_offset

    @frame_offset.setter
    def frame_offset(self, value: int) -> None:
        self._frame_offset = value

    def reset(self) -> None:
        if self._core is not None:
            self._states: list = []
            self._state_ids: dict = {}
            self._states_trigger = self.compact_after
            if self._compiled is not None:
                self._core.reset(self._compiled.initial)
            else:
                self._core.reset(self._intern(self.scorer.initial()) if self.scorer is not None else 0)
            return
        root = _Beam(blank=0.0, state=self.scorer.initial() if self.scorer is not None else None)
        root.total = 0.0
        self.trie = _PrefixTrie()
        self.beams: dict[int, _Beam] = {0: root}
        self.frame_offset = 0

    def _fused_miss(self, state, token: int):
        """(delta, state) of the scorer for ``token`` after ``state``, computed and cached (the
        cache, shared by a recognizer's streams, starts afresh once it is large)."""
        if len(self._advance) > self.compact_after:
            self._advance.clear()
        hit = self._advance[(state, token)] = self.scorer.advance(state, self.piece_texts[token])
        return hit

    def step(self, log_probs) -> None:
        """Consume log_probs [T, V] of the next frames.

        Per frame, every surviving prefix's paths are first accumulated as plain lists
        ``[blank, nonblank, source beam, token or -1 (same prefix), lp, state, fused]``; only
        the ``beam_size`` that survive become beams (with their times), so the many candidates
        that are pruned cost a list each, not an object with copied history."""
        scores = _as_array(log_probs)
        if scores.shape[0] == 0:
            return
        if self._core is not None:
            self._core.step(np.ascontiguousarray(scores))
            if self._compiled is None and len(self._states) > self._states_trigger:  # keep the live beams' states
                live = [self._states[i] for i in self._core.states()]
                self._states, self._state_ids = [], {}
                self._core.remap_states([self._intern(state) for state in live])
                self._states_trigger = max(self.compact_after, 2 * len(self._states))
            return
        blank, trie, scorer = self.blank, self.trie, self.scorer
        logadd, child, children_get = _logadd2, trie.child, trie.children.get
        advance_get = self._advance.get
        tokens = trie.token
        token_beam = min(self.token_beam or self.beam_size, scores.shape[-1])
        values, indices = _top_tokens(scores, token_beam)
        for t in range(len(values)):
            frame = self.frame_offset + t
            floor = values[t][0] - self.token_threshold
            candidates = [(token, lp) for token, lp in zip(indices[t], values[t]) if lp >= floor]
            if len(candidates) == 1 and candidates[0][0] == blank:
                lp = candidates[0][1]
                for beam in self.beams.values():  # only blank: every prefix stays, in the same order
                    beam.blank = beam.total + lp
                    beam.nonblank = NEG_INF
                    beam.total = beam.blank
                continue
            acc: dict[int, list] = {}
            get = acc.get
            for node, beam in self.beams.items():
                last = tokens[node]
                b, nb, total = beam.blank, beam.nonblank, beam.total
                entry = None  # the same prefix's entry (another beam's extension may have made it)
                for token, lp in candidates:
                    if token == blank or token == last:
                        if entry is None:
                            entry = get(node)
                            if entry is None:
                                entry = acc[node] = [NEG_INF, NEG_INF, beam, -1, NEG_INF, beam.state, beam.fused]
                        if token == blank:
                            entry[0] = logadd(entry[0], total + lp)
                            continue
                        # Repeat without blank in between: same prefix, the token continues.
                        entry[1] = logadd(entry[1], nb + lp)
                        if entry[3] == -1 and lp > entry[4]:
                            entry[4] = lp  # the repeated token's peak so far, for its time
                        if b == NEG_INF:
                            continue
                        source = b  # a repeat after a blank is a new token
                    else:
                        source = total
                    extended = children_get((node, token))
                    if extended is None:
                        extended = child(node, token)
                    other = get(extended)
                    if other is None:
                        if scorer is not None:
                            hit = advance_get((beam.state, token))
                            if hit is None:
                                hit = self._fused_miss(beam.state, token)
                            acc[extended] = [NEG_INF, source + lp, beam, token, lp, hit[1], beam.fused + hit[0]]
                        else:
                            acc[extended] = [NEG_INF, source + lp, beam, token, lp, None, 0.0]
                    else:
                        other[1] = logadd(other[1], source + lp)
            ranked = [(logadd(e[0], e[1]) + e[6], node, e) for node, e in acc.items()]
            if len(ranked) > self.beam_size:
                ranked = heapq.nlargest(self.beam_size, ranked, key=lambda item: item[0])
            cut = max(item[0] for item in ranked) - self.score_threshold
            next_beams: dict[int, _Beam] = {}
            for score, node, (b, nb, source, token, lp, state, fused) in ranked:
                if score < cut:
                    continue
                if token == -1:  # the same prefix; a repeat may move its last token's time
                    emitted, peak = source.emitted, source.last_peak
                    if lp > peak and emitted is not None:
                        emitted, peak = (frame, math.exp(lp), emitted[2]), lp
                    beam = _Beam(b, nb, emitted, peak, state, fused)
                else:
                    beam = _Beam(b, nb, (frame, math.exp(lp), source.emitted), lp, state, fused)
                beam.total = score - fused
                next_beams[node] = beam
            self.beams = next_beams
        self.frame_offset += len(values)
        if len(trie.parent) > self.compact_after:
            mapping = trie.compact(list(self.beams))
            self.beams = {mapping[node]: beam for node, beam in self.beams.items()}

    def nbest(self, n: int | None = None) -> list[Hypothesis]:
        """Best first, by CTC plus the fused score, with the scorer's end-of-hypothesis terms
        (the LM's last word and ``</s>``, unfinished hotwords' credit given back)."""
        scorer = self.scorer
        if self._core is not None:
            found = []
            for tokens, total, fused, state, times, probs in self._core.beams():
                if self._compiled is not None:
                    fused += self._compiled.finish(state)
                elif scorer is not None:
                    fused += scorer.finish(self._states[state])
                found.append((total + fused, Hypothesis(tokens, total, times, probs, fused)))
            found.sort(key=lambda item: item[0], reverse=True)
            return [hyp for _, hyp in found[: n or len(found)]]
        ranked = []
        for node, beam in self.beams.items():
            fused = beam.fused + (scorer.finish(beam.state) if scorer is not None else 0.0)
            ranked.append((beam.total + fused, node, beam, fused))
        ranked.sort(key=lambda item: item[0], reverse=True)
        out = []
        for _, node, beam, fused in ranked[: n or len(ranked)]:
            times, probs = _unroll(beam.emitted)
            out.append(Hypothesis(self.trie.tokens(node), beam.total, times, probs, fused))
        return out


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


def ctc_prefix_beam_search(log_probs, beam_size: int = 10, blank: int = 0, **options) -> list[Hypothesis]:
    """log_probs [T, V] -> n-best hypotheses, best first (``options``: see PrefixBeamSearch)."""
    search = PrefixBeamSearch(beam_size=beam_size, blank=blank, **options)
    search.step(log_probs)
    return search.nbest()
