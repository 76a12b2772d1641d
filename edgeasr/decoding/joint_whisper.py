"""Joint CTC / Whisper-decoder beam search: Whisper writes, the CTC head keeps it on the audio.

Whisper's decoder fed the encoding of unpadded audio (a segment shorter than its 30 s window)
rarely emits end-of-text: it repeats the sentence or drifts. The CTC head over the same encoding
knows exactly what was said and when it ends, but misspells. Joint decoding (Watanabe et al.,
"Hybrid CTC/attention", 2017; ESPnet's CTCPrefixScorer) scores every partial hypothesis with

    ctc_weight * log P_ctc(prefix) + (1 - ctc_weight) * log P_whisper(prefix)

where the CTC prefix probability sums over every alignment of the prefix to any leading part of
the audio, and end-of-text is scored with the CTC probability of the *whole* hypothesis: a
repetition needs audio that is not there, so CTC vetoes it; a misspelling is unlikely under
Whisper, so the decoder vetoes it.

Whisper writes byte-level BPE pieces with case and punctuation; the CTC head spells our
normalized alphabet. Each Whisper token is mapped once to the characters it contributes
(lower-cased; punctuation contributes none, a hyphen a word boundary); tokens that cannot be
spelled in our alphabet (digits, other scripts) are never proposed, so numbers come out in words
as our references spell them. The CTC prefix recursion runs over all frames at once per
character (log-space cumulative sums), for all candidate extensions together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

import numpy as np

from edgeasr.text.normalize import TEXT_ALPHABET
from edgeasr.text.tokenizer import SPACE, Tokenizer

NEG = -1e30
#: characters of Whisper's non-speech annotations ("[BLANK_AUDIO]", "(music)", "♪"): tokens with
#: them are never proposed, or silence and noise come out as the words of the annotation
NON_SPEECH_MARKS = frozenset("[]()♪♫*<>{}")


@dataclass
class TokenSpelling:
    """chars[t]: the unit ids Whisper token t adds (None: never propose it)."""

    chars: list[tuple[int, ...] | None]


@lru_cache(maxsize=4)
def _spelling(tokenizer_json: str, eot: int, units: tuple[str, ...]) -> TokenSpelling:
    from edgeasr.text.whisper_tokenizer import WhisperTokenizer

    return _spell(WhisperTokenizer(tokenizer_json, eot=eot), Tokenizer("char", list(units)))


def spell_whisper_tokens(whisper_tokenizer, tokenizer: Tokenizer) -> TokenSpelling:
    """Our units for every Whisper text token (ids below end-of-text); built once per process
    for a pair of tokenizers (~50k token decodes), however many recognizers share them."""
    if tokenizer.kind != "char":
        raise ValueError("the joint search spells Whisper's tokens in characters: a char tokenizer is needed")
    return _spelling(str(whisper_tokenizer.path), whisper_tokenizer.eot, tuple(tokenizer.units))


def _spell(whisper_tokenizer, tokenizer: Tokenizer) -> TokenSpelling:
    letters = set(TEXT_ALPHABET) - {" "}
    space_id = tokenizer.piece_to_id(SPACE)
    chars: list[tuple[int, ...] | None] = []
    for token in range(whisper_tokenizer.eot):
        text = whisper_tokenizer.token_text(token)
        if "\ufffd" in text:  # part of a multi-byte character: not English text
            chars.append(None)
            continue
        if any(ch in text for ch in NON_SPEECH_MARKS):
            chars.append(None)  # "[BLANK_AUDIO]", "(silence)", "♪": annotations, not speech
            continue
        lowered = text.lower().replace("-", " ")
        if any(ch.isalnum() and ch not in letters for ch in lowered):
            chars.append(None)  # digits, accented or foreign letters
            continue
        units: list[int] = []
        for ch in lowered:
            if ch in letters:
                units.append(tokenizer.piece_to_id(ch))
            elif ch.isspace():
                units.append(space_id)
        chars.append(tuple(units))
    return TokenSpelling(chars)


class CTCPrefixScorer:
    """Prefix probabilities of character sequences under CTC log-probs [T, V], batched (numpy,
    float64: the same on every backend).

    A prefix's state is (r_n, r_b): log P(prefix ends at frame t with a non-blank / blank), each
    [T]; the joint search stacks N of them into [N, T] arrays (see ``PrefixScorer``).
    """

    def __init__(self, log_probs, blank: int = 0) -> None:
        self.x = np.asarray(log_probs, dtype=np.float64)
        self.frames = self.x.shape[0]
        self.blank = blank
        self.blank_cum = np.cumsum(self.x[:, blank])  # B[t] = sum_{u<=t} log blank[u]
        self.blank_cum_prev = np.concatenate([[0.0], self.blank_cum[:-1]])

    def initial(self) -> tuple[np.ndarray, np.ndarray]:
        """(r_n, r_b) of the empty prefix (its prefix log-probability is 0)."""
        return np.full(self.frames, NEG), self.blank_cum.copy()

    def extend_units(self, r_n: np.ndarray, r_b: np.ndarray, last: np.ndarray, units: np.ndarray, empty: np.ndarray):
        """Append one unit to N prefixes at once.

        r_n, r_b [N, T]; last [N] (previous unit, -1 for none); units [N]; empty [N] (prefix is
        empty). Returns the new (r_n, r_b) and the new prefixes' log-probabilities [N].
        """
        x = self.x[:, units].T  # [N, T]
        # A repeated unit can only follow a blank (else the two would merge).
        phi = np.where((units == last)[:, None], r_b, np.logaddexp(r_n, r_b))
        X = np.cumsum(x, axis=1)
        # a[t] = x[t] * (a[t-1] + phi[t-1]), a[0] = x[0] if the prefix is empty
        start = np.where(empty, x[:, 0], NEG)
        terms = np.empty_like(x)
        terms[:, 1:] = phi[:, :-1] - X[:, :-1]
        terms[:, 0] = start - x[:, 0]  # the start term: a[0] = X[0] + (a[0] - X[0])
        new_n = X + np.logaddexp.accumulate(terms, axis=1)
        # b[t] = blank[t] * (b[t-1] + a[t-1]), b[0] = -inf
        shifted = np.empty_like(new_n)
        shifted[:, 0] = NEG
        shifted[:, 1:] = new_n[:, :-1] - self.blank_cum_prev[None, 1:]
        new_b = self.blank_cum[None, :] + np.logaddexp.accumulate(shifted, axis=1)
        # P(prefix + unit as a prefix): the unit's first frame can be any t
        psi = np.logaddexp.reduce(np.concatenate([start[:, None], phi[:, :-1] + x[:, 1:]], axis=1), axis=1)
        return np.maximum(new_n, NEG), np.maximum(new_b, NEG), psi

    def extend(self, states: tuple[np.ndarray, ...], histories: list[tuple[int, ...]], units: np.ndarray):
        """``PrefixScorer.extend``: the units after each history."""
        last = np.array([h[-1] if h else -1 for h in histories], dtype=np.int64)
        empty = np.array([not h for h in histories])
        r_n, r_b, psi = self.extend_units(states[0], states[1], last, units, empty)
        return (r_n, r_b), psi

    def final(self, states: tuple[np.ndarray, ...], histories: list[tuple[int, ...]] | None = None) -> np.ndarray:
        """log P(exactly this prefix | all audio) [N]."""
        return np.logaddexp(states[0][:, -1], states[1][:, -1])


class TransducerPrefixScorer:
    """Prefix probabilities of unit sequences under a transducer head over a segment's encoder
    frames [T, D]: the transducer's counterpart of ``CTCPrefixScorer``, so Whisper's decoder can
    write while the transducer keeps it on the audio (as WeNet rescores its transducer's output).

    A prefix y_1..u's state is alpha[t] = log P(the lattice path has emitted y_1..u and stands at
    frame t), [T]. Appending y (``e[t]``: the joint's log-probability of y at frame t after the
    prefix's context; ``b[t]``: blank's after the new context):

        P(prefix + y as a prefix) = sum_t alpha[t] e[t]
        alpha'[t] = alpha'[t-1] b[t-1] + alpha[t] e[t]

    the same linear recurrence as the RNN-T loss's, solved by cumulative sums. The whole
    sequence ends with a blank at the last frame: ``final`` = alpha[T-1] + b'[T-1].

    The prediction network is stateless (it reads the last ``runner.context`` units), so the
    joint's log-probabilities over all frames, [T, V] per distinct context, are computed once per
    segment and shared by every hypothesis that ends in that context.
    """

    def __init__(self, runner, frames) -> None:
        self.runner = runner
        self.projected = np.asarray(runner.project(np.asarray(frames, dtype=np.float32)), dtype=np.float32)
        self.frames = self.projected.shape[0]
        self.context, self.blank = runner.context, runner.blank
        self._log_probs: dict[tuple[int, ...], np.ndarray] = {}

    def _context_of(self, history: tuple[int, ...]) -> tuple[int, ...]:
        """What the stateless predictor reads after ``history`` (as the transducer searches do)."""
        from edgeasr.decoding.transducer_search import _context

        return _context(tuple(history), self.context, self.blank)

    #: contexts joined in one call: [contexts x frames, joint_dim] floats at once
    batch = 16

    def _joint(self, contexts: list[tuple[int, ...]]) -> list[np.ndarray]:
        """The joint's log-probabilities [T, V] (float64) after each context, all frames at once.

        The joiner's first step adds a frame's projection to a predictor row, so the sums for
        every (new context, frame) pair go in as the "predictor rows" of one call with a zero
        frame: one runner call per batch of contexts, on torch and on ONNX Runtime alike."""
        missing = [c for c in dict.fromkeys(contexts) if c not in self._log_probs]
        for start in range(0, len(missing), self.batch):
            part = missing[start : start + self.batch]
            predicted = np.asarray(self.runner.predict(np.array(part, dtype=np.int64)), dtype=np.float32)
            summed = (predicted[:, None, :] + self.projected[None, :, :]).reshape(-1, self.projected.shape[1])
            joined = np.asarray(self.runner.join(np.zeros(self.projected.shape[1], dtype=np.float32), summed),
                                dtype=np.float64).reshape(len(part), self.frames, -1)
            for context, log_probs in zip(part, joined):
                self._log_probs[context] = log_probs
        return [self._log_probs[c] for c in contexts]

    def initial(self) -> tuple[np.ndarray]:
        blank = self._joint([self._context_of(())])[0][:, self.blank]
        return (np.concatenate([[0.0], np.cumsum(blank[:-1])]),)

    def extend(self, states: tuple[np.ndarray, ...], histories: list[tuple[int, ...]], units: np.ndarray):
        """``PrefixScorer.extend``."""
        alpha = states[0]
        before = self._joint([self._context_of(h) for h in histories])
        after = self._joint([self._context_of(h + (int(u),)) for h, u in zip(histories, units.tolist())])
        emit = np.stack([lp[:, u] for lp, u in zip(before, units.tolist())])  # [N, T]
        entry = alpha + emit
        psi = np.logaddexp.reduce(entry, axis=1)
        blank = np.stack([lp[:, self.blank] for lp in after])  # [N, T]
        reached = np.zeros_like(blank)  # sum of blank[s] for s < t
        np.cumsum(blank[:, :-1], axis=1, out=reached[:, 1:])
        new_alpha = reached + np.logaddexp.accumulate(entry - reached, axis=1)
        return (np.maximum(new_alpha, NEG),), psi

    def final(self, states: tuple[np.ndarray, ...], histories: list[tuple[int, ...]]) -> np.ndarray:
        """log P(exactly this sequence | all frames) [N]."""
        ends = np.array([lp[-1, self.blank] for lp in self._joint([self._context_of(h) for h in histories])])
        return states[0][:, -1] + ends


class MixedPrefixScorer:
    """A weighted sum of prefix scorers' log-probabilities (e.g. a model's CTC head and its
    transducer): each keeps its own state, side by side in one tuple."""

    def __init__(self, weighted: list[tuple[object, float]]) -> None:
        self.weighted = [(scorer, float(weight)) for scorer, weight in weighted]
        self._sizes: list[int] = []

    def initial(self) -> tuple[np.ndarray, ...]:
        states: tuple = ()
        self._sizes = []
        for scorer, _ in self.weighted:
            own = scorer.initial()
            self._sizes.append(len(own))
            states += tuple(own)
        return states

    def _split(self, states: tuple) -> list[tuple]:
        parts, start = [], 0
        for size in self._sizes:
            parts.append(tuple(states[start : start + size]))
            start += size
        return parts

    def extend(self, states: tuple[np.ndarray, ...], histories: list[tuple[int, ...]], units: np.ndarray):
        new_states: tuple = ()
        total = 0.0
        for (scorer, weight), own in zip(self.weighted, self._split(states)):
            extended, psi = scorer.extend(own, histories, units)
            new_states += tuple(extended)
            total = total + weight * psi
        return new_states, total

    def final(self, states: tuple[np.ndarray, ...], histories: list[tuple[int, ...]]) -> np.ndarray:
        return sum(weight * scorer.final(own, histories)
                   for (scorer, weight), own in zip(self.weighted, self._split(states)))


class PrefixScorer(Protocol):
    """What the joint search asks of the first pass's head over a segment (``CTCPrefixScorer``,
    ``TransducerPrefixScorer``, or a ``MixedPrefixScorer`` of both).

    A prefix's state is a tuple of arrays [T]; the search stacks N prefixes' states into arrays
    [N, T] and passes each prefix's units so far (``histories``)."""

    def initial(self) -> tuple[np.ndarray, ...]: ...

    def extend(self, states: tuple[np.ndarray, ...], histories: list[tuple[int, ...]], units: np.ndarray
               ) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
        """The states of each history + its unit, and log P(history + unit as a prefix) [N]."""

    def final(self, states: tuple[np.ndarray, ...], histories: list[tuple[int, ...]]) -> np.ndarray:
        """log P(exactly this sequence) [N]."""


class DecoderSteps(Protocol):
    """Whisper's decoder one step at a time, on some backend (torch, ONNX Runtime).

    ``cross(encoded)`` computes the audio's cross-attention keys/values once per segment;
    ``step(tokens [B, U] int64, cross, caches, offset, token_bias [V], top_k)`` returns, for the
    last position under log-softmax(logits + token_bias) (bias 0, or -inf for a token never
    proposed), the ``top_k`` best log-probabilities and tokens [B, k], end-of-text's
    log-probability [B] (numpy), and the new self-attention caches (``caches`` is ``None`` at
    the first step). The selection runs in the backend: over 51,864 tokens it costs more in
    numpy than the step's layers; ``select(caches, index)`` keeps the beams ``index`` names, in that order.
    """

    eot: int
    vocab_size: int
    max_positions: int

    def cross(self, encoded): ...

    def step(self, tokens: np.ndarray, cross, caches, offset: int, token_bias: np.ndarray, top_k: int): ...

    def select(self, caches, index: np.ndarray): ...


@dataclass
class _Beam:
    tokens: list[int]
    units: list[int]
    #: the prefix scorer's state (``PrefixScorer``), each array [T]
    prefix: tuple
    #: the prefix scorer's log-probability of ``units`` as a prefix
    ctc: float
    att: float
    state: object = None  # the fused scorer's (LM, hotwords)
    fused: float = 0.0
    #: per unit, its share of the Whisper log-probability of the token that wrote it (a token's
    #: value split over its letters; 0 for spaces): summed over a word, the word's log-probability
    unit_att: tuple = ()


def _stacked(prefixes: list[tuple]) -> tuple[np.ndarray, ...]:
    """N prefix states (tuples of [T] arrays) -> one tuple of [N, T] arrays."""
    return tuple(np.stack(parts) for parts in zip(*prefixes))


def _spelled(beam_units: list[int], token_units: tuple[int, ...], space_id: int) -> list[int]:
    """Units a token appends after ``beam_units``: no leading, doubled or trailing-start spaces."""
    out = []
    previous = beam_units[-1] if beam_units else None
    for unit in token_units:
        if unit == space_id and (previous is None or previous == space_id):
            continue
        out.append(unit)
        previous = unit
    return out


def joint_beam_search(decoder: DecoderSteps, encoded, ctc_log_probs, prompt: list[int],
                      spelling: TokenSpelling, space_id: int, beam_size: int = 4, ctc_weight: float = 0.5,
                      candidates_per_beam: int = 8, max_tokens: int = 200, blank: int = 0,
                      length_bonus: float = 0.0, end_margin: float = 8.0, text_scorer=None,
                      unit_texts: list[str] | None = None, prefix_scorer=None
                      ) -> list[tuple[list[int], list[int], float, tuple]]:
    """Hypotheses [(whisper tokens, our units, joint score, per-unit Whisper log-prob shares)],
    best first, for encoded [1, T, D] (in the decoder backend's own array type) and CTC
    log-probs [T, V]. The shares (see ``_Beam.unit_att``) give each word's probability under
    Whisper's decoder, the confidence signal of a decoder trained on real speech.

    ``length_bonus`` is added per unit (character) of a hypothesis: both scores only fall as a
    hypothesis grows, which favours stopping early when the CTC head is unsure; the bonus pays
    for the characters the audio holds. With a bonus, live scores can rise, so the search ends
    when every live hypothesis trails the best finished one by ``end_margin`` (or at
    ``max_tokens``) instead of at the first finished hypothesis that beats them all.

    ``text_scorer`` (edgeasr.decoding.fusion: word LM, hotwords) adds its score of the text each token
    spells (``unit_texts``: the text of each of our units), and its end terms at end-of-text.
    ``prefix_scorer`` (``PrefixScorer``) replaces the CTC head's prefix scores with another
    head's (the transducer's, or a mix); ``ctc_weight`` then weighs that score.
    The search itself is numpy: torch and ONNX Runtime decoders give the same hypotheses.
    """
    scorer = CTCPrefixScorer(ctc_log_probs, blank) if prefix_scorer is None else prefix_scorer
    beams = [_Beam([], [], tuple(scorer.initial()), 0.0, 0.0, text_scorer.initial() if text_scorer is not None else None)]
    advanced: dict = {}
    finished: list[tuple[list[int], list[int], float, tuple]] = []
    eot = decoder.eot
    cross = decoder.cross(encoded)
    token_bias = np.full(decoder.vocab_size, -np.inf, dtype=np.float32)
    token_bias[: len(spelling.chars)] = [-np.inf if c is None else 0.0 for c in spelling.chars]
    token_bias[eot] = 0.0
    caches = None
    step = np.array([prompt], dtype=np.int64)
    offset = 0
    for _ in range(max_tokens):
        if offset + step.shape[1] > decoder.max_positions:
            break
        top_values, top_tokens, eot_log_probs, caches = decoder.step(step, cross, caches, offset, token_bias,
                                                                     candidates_per_beam)
        offset += step.shape[1]
        finals = scorer.final(_stacked([beam.prefix for beam in beams]), [tuple(beam.units) for beam in beams])
        rows = []
        for b, beam in enumerate(beams):
            # End of text: the CTC probability of the whole hypothesis
            if beam.units or not beam.tokens:  # the empty hypothesis too: silence may be all there is
                eos_att = beam.att + float(eot_log_probs[b])
                end = beam.fused + (text_scorer.finish(beam.state) if text_scorer is not None else 0.0)
                finished.append((beam.tokens, beam.units, ctc_weight * float(finals[b]) + (1 - ctc_weight) * eos_att
                                 + length_bonus * len(beam.units) + end, beam.unit_att))
            for value, token in zip(top_values[b].tolist(), top_tokens[b].tolist()):
                if token == eot or not math.isfinite(value):
                    continue
                units = _spelled(beam.units, spelling.chars[token], space_id)
                fused, state = beam.fused, beam.state
                if text_scorer is not None and units:
                    key = (state, tuple(units))
                    hit = advanced.get(key)
                    if hit is None:
                        hit = advanced[key] = text_scorer.advance(state, "".join(unit_texts[u] for u in units))
                    fused, state = fused + hit[0], hit[1]
                rows.append((b, token, beam.att + value, units, fused, state, value))
        if not rows:
            break
        # CTC prefix scores of every extension, one unit position at a time, all rows together
        count = len(rows)
        parents = [beams[b] for b, *_ in rows]
        states = _stacked([beam.prefix for beam in parents])
        ctc = np.array([beam.ctc for beam in parents], dtype=np.float64)
        histories = [tuple(beam.units) for beam in parents]
        spans = np.array([len(r[3]) for r in rows])
        for position in range(int(spans.max())):
            idx = np.flatnonzero(spans > position)
            units = np.array([rows[i][3][position] for i in idx.tolist()], dtype=np.int64)
            extended, psi = scorer.extend(tuple(s[idx] for s in states), [histories[i] for i in idx.tolist()], units)
            for whole, part in zip(states, extended):
                whole[idx] = part
            ctc[idx] = psi
            for i, unit in zip(idx.tolist(), units.tolist()):
                histories[i] = histories[i] + (unit,)
        scored = [(ctc_weight * float(ctc[i]) + (1 - ctc_weight) * rows[i][2]
                   + length_bonus * (len(parents[i].units) + len(rows[i][3])) + rows[i][4], i)
                  for i in range(count)]
        scored.sort(reverse=True)
        best_finished = max((entry[2] for entry in finished), default=-math.inf)
        chosen = [i for _, i in scored[:beam_size]]
        margin = end_margin if length_bonus > 0 else 0.0
        if not chosen or scored[0][0] < best_finished - margin:
            break  # every live hypothesis trails a finished one (without a bonus, scores only fall)
        new_beams, order = [], []
        for i in chosen:
            b, token, att, units, fused, state, value = rows[i]
            parent = beams[b]
            letters = sum(1 for u in units if u != space_id)
            shares = tuple(0.0 if u == space_id else value / letters for u in units)
            new_beams.append(_Beam(parent.tokens + [token], parent.units + units, tuple(s[i] for s in states),
                                   float(ctc[i]), att,
                                   state, fused, parent.unit_att + shares))
            order.append(b)
        caches = decoder.select(caches, np.array(order, dtype=np.int64))
        beams = new_beams
        step = np.array([[beam.tokens[-1]] for beam in beams], dtype=np.int64)
    finished.sort(key=lambda item: item[2], reverse=True)
    return finished
