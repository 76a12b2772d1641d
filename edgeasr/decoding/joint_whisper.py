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

    A state is (r_n, r_b): log P(prefix ends at frame t with a non-blank / blank), shape [T].
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

    def extend(self, r_n: np.ndarray, r_b: np.ndarray, last: np.ndarray, units: np.ndarray, empty: np.ndarray):
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

    def final(self, r_n: np.ndarray, r_b: np.ndarray) -> np.ndarray:
        """log P(exactly this prefix | all audio) [N]."""
        return np.logaddexp(r_n[:, -1], r_b[:, -1])


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
    r_n: np.ndarray
    r_b: np.ndarray
    ctc: float
    att: float
    state: object = None  # the fused scorer's (LM, hotwords)
    fused: float = 0.0
    #: per unit, its share of the Whisper log-probability of the token that wrote it (a token's
    #: value split over its letters; 0 for spaces): summed over a word, the word's log-probability
    unit_att: tuple = ()


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
                      unit_texts: list[str] | None = None) -> list[tuple[list[int], list[int], float, tuple]]:
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
    The search itself is numpy: torch and ONNX Runtime decoders give the same hypotheses.
    """
    scorer = CTCPrefixScorer(ctc_log_probs, blank)
    r_n, r_b = scorer.initial()
    beams = [_Beam([], [], r_n, r_b, 0.0, 0.0, text_scorer.initial() if text_scorer is not None else None)]
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
        finals = scorer.final(np.stack([beam.r_n for beam in beams]), np.stack([beam.r_b for beam in beams]))
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
        r_n = np.stack([beam.r_n for beam in parents])
        r_b = np.stack([beam.r_b for beam in parents])
        ctc = np.array([beam.ctc for beam in parents], dtype=np.float64)
        last = np.array([beam.units[-1] if beam.units else -1 for beam in parents], dtype=np.int64)
        lengths = np.array([len(beam.units) for beam in parents], dtype=np.int64)
        spans = np.array([len(r[3]) for r in rows])
        for position in range(int(spans.max())):
            idx = np.flatnonzero(spans > position)
            units = np.array([rows[i][3][position] for i in idx.tolist()], dtype=np.int64)
            new_n, new_b, psi = scorer.extend(r_n[idx], r_b[idx], last[idx], units, lengths[idx] == 0)
            r_n[idx], r_b[idx], ctc[idx] = new_n, new_b, psi
            last[idx] = units
            lengths[idx] += 1
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
            new_beams.append(_Beam(parent.tokens + [token], parent.units + units, r_n[i], r_b[i], float(ctc[i]), att,
                                   state, fused, parent.unit_att + shares))
            order.append(b)
        caches = decoder.select(caches, np.array(order, dtype=np.int64))
        beams = new_beams
        step = np.array([[beam.tokens[-1]] for beam in beams], dtype=np.int64)
    finished.sort(key=lambda item: item[2], reverse=True)
    return finished
