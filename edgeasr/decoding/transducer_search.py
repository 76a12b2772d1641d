"""Transducer search: greedy and modified beam search, streaming, over any backend.

Both searches read the transducer through a small runner interface, so the torch model and the
ONNX Runtime graphs decode with the very same code (as the CTC searches do):

- ``runner.project(frames [T, De]) -> [T, J]``: the joiner's encoder projection, once per frame;
- ``runner.predict(contexts [H, C] int64) -> [H, J]``: the prediction network on each
  hypothesis's last ``runner.context`` tokens (blank-padded), through the joiner's predictor
  projection;
- ``runner.join(frame [J], predicted [H, J]) -> [H, V]``: the joint's log-probabilities.

The prediction network is stateless (its state is the last tokens), so a hypothesis is its token
sequence and the searches carry across chunks by keeping their hypotheses: chunked and
whole-utterance decoding give the same n-best (tested).

**Modified beam search** (one symbol per frame, as icefall's and sherpa-onnx's): at every frame
each hypothesis either emits blank (it stays) or one token; the ``beam_size`` best survive, and two
hypotheses that reach the same tokens are merged (their probabilities add). A fused text scorer
(the n-gram LM, hotwords: ``edgeasr.decoding.fusion``) adds its score to each extension, as in the
CTC prefix beam; only each hypothesis's ``token_beam`` best tokens are scored by it, so the LM
costs a few cached lookups per frame, not one per vocabulary entry.
"""

from __future__ import annotations

import math

import numpy as np

from edgeasr.decoding.ctc import Hypothesis

NEG_INF = float("-inf")


class _ContextCache:
    """Predictor outputs by token context: hypotheses share contexts (the stateless predictor
    sees only the last few tokens), so each distinct context is computed once, in one batch."""

    limit = 50_000

    def __init__(self, runner) -> None:
        self.runner = runner
        self.store: dict[tuple[int, ...], np.ndarray] = {}

    def rows(self, contexts: list[tuple[int, ...]]) -> np.ndarray:
        missing = [c for c in dict.fromkeys(contexts) if c not in self.store]
        if missing:
            if len(self.store) > self.limit:
                self.store.clear()
            computed = self.runner.predict(np.array(missing, dtype=np.int64))
            for context, row in zip(missing, computed):
                self.store[context] = row
        return np.stack([self.store[c] for c in contexts])


def _context(tokens: tuple[int, ...], size: int, blank: int) -> tuple[int, ...]:
    last = tokens[-size:]
    return (blank,) * (size - len(last)) + last


class TransducerGreedySearch:
    """Best symbol per step: a non-blank is emitted and the same frame is asked again, at most
    ``max_symbols`` times (so one frame cannot loop forever); blank moves to the next frame."""

    def __init__(self, runner, max_symbols: int = 3) -> None:
        self.runner = runner
        self.max_symbols = max_symbols
        self.cache = _ContextCache(runner)
        self.reset()

    def reset(self) -> None:
        self.tokens: list[int] = []
        self.times: list[int] = []
        #: the joint's log-probability of each emitted token (for scores and confidence)
        self.log_probs: list[float] = []
        self.score = 0.0
        self.frame_offset = 0

    def step(self, encoded) -> None:
        """Consume encoder frames [T, De] (numpy or torch) of the next chunk."""
        if encoded is None or len(encoded) == 0:
            return
        runner, blank, size = self.runner, self.runner.blank, self.runner.context
        projected = runner.project(encoded)
        for t in range(projected.shape[0]):
            for _ in range(self.max_symbols):
                predicted = self.cache.rows([_context(tuple(self.tokens), size, blank)])
                log_probs = runner.join(projected[t], predicted)[0]
                token = int(log_probs.argmax())
                self.score += float(log_probs[token])
                if token == blank:
                    break
                self.tokens.append(token)
                self.times.append(self.frame_offset + t)
                self.log_probs.append(float(log_probs[token]))
        self.frame_offset += projected.shape[0]

    def nbest(self, n: int | None = None) -> list[Hypothesis]:
        return [Hypothesis(tuple(self.tokens), self.score, tuple(self.times),
                           tuple(math.exp(v) for v in self.log_probs))]


class _Hyp:
    __slots__ = ("tokens", "score", "fused", "state", "times", "probs")

    def __init__(self, tokens, score, fused, state, times, probs) -> None:
        self.tokens = tokens  # tuple of token ids
        self.score = score  # log P(tokens, alignment so far) under the transducer, summed over merged paths
        self.fused = fused  # the fused scorer's score of the tokens (0 without one)
        self.state = state  # the fused scorer's state
        self.times = times  # frame of each token
        self.probs = probs  # the joint's probability of each token at its frame


class TransducerBeamSearch:
    """Modified beam search (one symbol per frame), optionally fused with a text scorer."""

    def __init__(self, runner, beam_size: int = 4, scorer=None, piece_texts: list[str] | None = None,
                 token_beam: int | None = None) -> None:
        if scorer is not None and piece_texts is None:
            raise ValueError("a fused scorer needs the text of every token (fusion.piece_texts)")
        self.runner = runner
        self.beam_size = beam_size
        #: tokens per hypothesis and frame considered for extension (the scorer sees only these)
        self.token_beam = token_beam or beam_size
        self.scorer = scorer
        self.piece_texts = piece_texts
        # (scorer state, token) -> (delta, state), on the scorer: shared by a recognizer's streams
        self._advance: dict = scorer.__dict__.setdefault("_token_cache", {}) if scorer is not None else {}
        self.cache = _ContextCache(runner)
        self.reset()

    def reset(self) -> None:
        state = self.scorer.initial() if self.scorer is not None else None
        self.hyps = [_Hyp((), 0.0, 0.0, state, (), ())]
        self.frame_offset = 0

    def _fused(self, hyp: _Hyp, token: int):
        key = (hyp.state, token)
        hit = self._advance.get(key)
        if hit is None:
            if len(self._advance) > 200_000:
                self._advance.clear()
            hit = self._advance[key] = self.scorer.advance(hyp.state, self.piece_texts[token])
        return hit

    def step(self, encoded) -> None:
        """Consume encoder frames [T, De] (numpy or torch) of the next chunk."""
        if encoded is None or len(encoded) == 0:
            return
        projected = self.runner.project(encoded)
        for t in range(projected.shape[0]):
            self.hyps = self._frame(projected[t], self.frame_offset + t)
        self.frame_offset += projected.shape[0]

    def _frame(self, projected: np.ndarray, frame: int) -> list[_Hyp]:
        """One frame: every hypothesis stays (blank) or emits one of its ``token_beam`` best
        tokens; extensions that reach another hypothesis's tokens merge into it (probabilities
        add) before ranking; the ``beam_size`` best survive.

        Scores are ranked as arrays and only the survivors become hypotheses: building one
        object per candidate (beam x (token_beam + 1) a frame) was most of the search's time."""
        runner, blank, size = self.runner, self.runner.blank, self.runner.context
        hyps = self.hyps
        count = len(hyps)
        predicted = self.cache.rows([_context(h.tokens, size, blank) for h in hyps])
        log_probs = runner.join(projected, predicted)  # [H, V]
        k = min(self.token_beam, log_probs.shape[1] - 1)
        masked = log_probs.copy()
        masked[:, blank] = NEG_INF
        best = np.argpartition(-masked, k - 1, axis=1)[:, :k]  # [H, k]
        scores = np.array([h.score for h in hyps], dtype=np.float64)
        fused = np.array([h.fused for h in hyps], dtype=np.float64)
        token_lp = np.take_along_axis(log_probs, best, axis=1).astype(np.float64)  # [H, k]
        token_scores = scores[:, None] + token_lp
        token_fused = np.repeat(fused[:, None], k, axis=1)
        states = None
        if self.scorer is not None:
            states = [[None] * k for _ in range(count)]
            for i, hyp in enumerate(hyps):
                for p, token in enumerate(best[i].tolist()):
                    delta, states[i][p] = self._fused(hyp, token)
                    token_fused[i, p] += delta
        # blank: a hypothesis stays, and absorbs a token extension of another that reaches its tokens
        stay_scores = scores + log_probs[:, blank]
        absorbed = np.zeros((count, k), dtype=bool)
        better_path: dict[int, tuple[int, int]] = {}  # stayer -> the extension whose path was likelier
        index = {h.tokens: i for i, h in enumerate(hyps)}
        for j, hyp in enumerate(hyps):
            parent = index.get(hyp.tokens[:-1]) if hyp.tokens else None
            if parent is None:
                continue
            where = np.flatnonzero(best[parent] == hyp.tokens[-1])
            if not where.size:
                continue
            p = int(where[0])
            absorbed[parent, p] = True
            extension = token_scores[parent, p]
            if extension > stay_scores[j]:
                better_path[j] = (parent, p)
            stay_scores[j] = np.logaddexp(stay_scores[j], extension)
        totals = np.concatenate([stay_scores + fused,
                                 np.where(absorbed, NEG_INF, token_scores + token_fused).ravel()])
        survivors = []
        for c in np.argsort(-totals, kind="stable")[: self.beam_size].tolist():
            if not math.isfinite(totals[c]):
                break
            if c < count:
                hyp = hyps[c]
                if c in better_path:  # the times of the likelier path are kept
                    parent, p = better_path[c]
                    source = hyps[parent]
                    survivors.append(_Hyp(hyp.tokens, float(stay_scores[c]), hyp.fused, hyp.state,
                                          source.times + (frame,), source.probs + (math.exp(token_lp[parent, p]),)))
                else:
                    survivors.append(_Hyp(hyp.tokens, float(stay_scores[c]), hyp.fused, hyp.state, hyp.times, hyp.probs))
                continue
            i, p = divmod(c - count, k)
            hyp, token = hyps[i], int(best[i, p])
            survivors.append(_Hyp(hyp.tokens + (token,), float(token_scores[i, p]), float(token_fused[i, p]),
                                  states[i][p] if states is not None else None, hyp.times + (frame,),
                                  hyp.probs + (math.exp(token_lp[i, p]),)))
        return survivors

    def nbest(self, n: int | None = None) -> list[Hypothesis]:
        """Best first, by the transducer's score plus the fused score with its end terms."""
        scorer = self.scorer
        ranked = []
        for hyp in self.hyps:
            fused = hyp.fused + (scorer.finish(hyp.state) if scorer is not None else 0.0)
            ranked.append((hyp.score + fused, hyp, fused))
        ranked.sort(key=lambda item: item[0], reverse=True)
        return [Hypothesis(hyp.tokens, hyp.score, hyp.times, hyp.probs, fused)
                for _, hyp, fused in ranked[: n or len(ranked)]]
