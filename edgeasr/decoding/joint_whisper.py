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

import torch

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
    """Prefix probabilities of character sequences under CTC log-probs [T, V], batched.

    A state is (r_n, r_b): log P(prefix ends at frame t with a non-blank / blank), shape [T].
    """

    def __init__(self, log_probs: torch.Tensor, blank: int = 0) -> None:
        self.x = log_probs.double()
        self.frames = self.x.size(0)
        self.blank = blank
        self.blank_cum = torch.cumsum(self.x[:, blank], dim=0)  # B[t] = sum_{u<=t} log blank[u]

    def initial(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(r_n, r_b) of the empty prefix (its prefix log-probability is 0)."""
        return torch.full((self.frames,), NEG, dtype=torch.float64), self.blank_cum.clone()

    def extend(self, r_n: torch.Tensor, r_b: torch.Tensor, last: torch.Tensor, units: torch.Tensor,
               empty: torch.Tensor):
        """Append one unit to N prefixes at once.

        r_n, r_b [N, T]; last [N] (previous unit, -1 for none); units [N]; empty [N] (prefix is
        empty). Returns the new (r_n, r_b) and the new prefixes' log-probabilities [N].
        """
        x = self.x[:, units].T  # [N, T]
        total = torch.logaddexp(r_n, r_b)
        # A repeated unit can only follow a blank (else the two would merge).
        phi = torch.where((units == last)[:, None], r_b, total)
        count, frames = x.shape
        X = torch.cumsum(x, dim=1)
        # a[t] = x[t] * (a[t-1] + phi[t-1]), a[0] = x[0] if the prefix is empty
        start = torch.where(empty, x[:, 0], torch.full_like(x[:, 0], NEG))
        shifted_phi = torch.cat([torch.full((count, 1), NEG, dtype=x.dtype), phi[:, :-1]], dim=1)
        X_prev = torch.cat([torch.zeros(count, 1, dtype=x.dtype), X[:, :-1]], dim=1)
        terms = shifted_phi - X_prev
        terms[:, 0] = start - x[:, 0]  # the start term: a[0] = X[0] + (a[0] - X[0])
        new_n = X + torch.logcumsumexp(terms, dim=1)
        # b[t] = blank[t] * (b[t-1] + a[t-1]), b[0] = -inf
        B = self.blank_cum[None, :]
        shifted_n = torch.cat([torch.full((count, 1), NEG, dtype=x.dtype), new_n[:, :-1]], dim=1)
        B_prev = torch.cat([torch.zeros(1, 1, dtype=x.dtype).expand(count, 1), B[:, :-1].expand(count, -1)], dim=1)
        new_b = B + torch.logcumsumexp(shifted_n - B_prev, dim=1)
        # P(prefix + unit as a prefix): the unit's first frame can be any t
        psi = torch.logsumexp(torch.cat([start[:, None], shifted_phi[:, 1:] + x[:, 1:]], dim=1), dim=1)
        return new_n.clamp(min=NEG), new_b.clamp(min=NEG), psi

    def final(self, r_n: torch.Tensor, r_b: torch.Tensor) -> torch.Tensor:
        """log P(exactly this prefix | all audio) [N]."""
        return torch.logaddexp(r_n[:, -1], r_b[:, -1])


@dataclass
class _Beam:
    tokens: list[int]
    units: list[int]
    r_n: torch.Tensor
    r_b: torch.Tensor
    ctc: float
    att: float
    state: object = None  # the fused scorer's (LM, hotwords)
    fused: float = 0.0


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


@torch.no_grad()
def joint_beam_search(decoder, encoded: torch.Tensor, ctc_log_probs: torch.Tensor, prompt: list[int],
                      spelling: TokenSpelling, space_id: int, beam_size: int = 4, ctc_weight: float = 0.5,
                      candidates_per_beam: int = 8, max_tokens: int = 200, blank: int = 0,
                      length_bonus: float = 0.0, end_margin: float = 8.0, text_scorer=None,
                      unit_texts: list[str] | None = None) -> list[tuple[list[int], list[int], float]]:
    """Hypotheses [(whisper tokens, our units, joint score)], best first, for encoded [1, T, D].

    ``length_bonus`` is added per unit (character) of a hypothesis: both scores only fall as a
    hypothesis grows, which favours stopping early when the CTC head is unsure; the bonus pays
    for the characters the audio holds. With a bonus, live scores can rise, so the search ends
    when every live hypothesis trails the best finished one by ``end_margin`` (or at
    ``max_tokens``) instead of at the first finished hypothesis that beats them all.

    ``text_scorer`` (edgeasr.decoding.fusion: word LM, hotwords) adds its score of the text each token
    spells (``unit_texts``: the text of each of our units), and its end terms at end-of-text.
    """
    scorer = CTCPrefixScorer(ctc_log_probs, blank)
    r_n, r_b = scorer.initial()
    beams = [_Beam([], [], r_n, r_b, 0.0, 0.0, text_scorer.initial() if text_scorer is not None else None)]
    advanced: dict = {}
    finished: list[tuple[list[int], list[int], float]] = []
    eot = decoder.config.eot_id
    cross_one = decoder.cross_keys_values(encoded[:1])
    vocab_ok = torch.tensor([c is not None for c in spelling.chars] + [False] * (decoder.config.vocab_size - len(spelling.chars)))
    vocab_ok[eot] = True
    caches = [None] * len(decoder.layers)
    step = torch.tensor([prompt], dtype=torch.long)
    offset = 0
    for _ in range(max_tokens):
        if offset + step.size(1) > decoder.config.max_positions:
            break
        width = len(beams)
        cross = [(k.expand(width, -1, -1, -1), v.expand(width, -1, -1, -1)) for k, v in cross_one]
        logits = decoder._run(step, cross, None, caches, offset)[:, -1].float()
        logits[:, ~vocab_ok] = -torch.inf
        log_probs = logits.log_softmax(dim=-1)
        offset += step.size(1)
        top = log_probs.topk(candidates_per_beam, dim=-1)
        rows = []
        for b, beam in enumerate(beams):
            # End of text: the CTC probability of the whole hypothesis
            eos_att = beam.att + float(log_probs[b, eot])
            eos_ctc = float(scorer.final(beam.r_n[None], beam.r_b[None])[0])
            if beam.units or not beam.tokens:  # the empty hypothesis too: silence may be all there is
                end = beam.fused + (text_scorer.finish(beam.state) if text_scorer is not None else 0.0)
                finished.append((beam.tokens, beam.units, ctc_weight * eos_ctc + (1 - ctc_weight) * eos_att
                                 + length_bonus * len(beam.units) + end))
            for value, token in zip(top.values[b].tolist(), top.indices[b].tolist()):
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
                rows.append((b, token, beam.att + value, units, fused, state))
        if not rows:
            break
        # CTC prefix scores of every extension, one unit position at a time, all rows together
        count = len(rows)
        r_n = torch.stack([beams[b].r_n for b, *_ in rows])
        r_b = torch.stack([beams[b].r_b for b, *_ in rows])
        ctc = torch.tensor([beams[b].ctc for b, *_ in rows], dtype=torch.float64)
        last = torch.tensor([beams[b].units[-1] if beams[b].units else -1 for b, *_ in rows])
        lengths = torch.tensor([len(beams[b].units) for b, *_ in rows])
        longest = max(len(r[3]) for r in rows)
        for position in range(longest):
            active = torch.tensor([len(r[3]) > position for r in rows])
            if not active.any():
                break
            idx = active.nonzero().squeeze(1)
            units = torch.tensor([rows[i][3][position] for i in idx.tolist()])
            new_n, new_b, psi = scorer.extend(r_n[idx], r_b[idx], last[idx], units, lengths[idx] == 0)
            r_n[idx], r_b[idx], ctc[idx] = new_n, new_b, psi
            last[idx] = units
            lengths[idx] += 1
        scored = [(ctc_weight * float(ctc[i]) + (1 - ctc_weight) * rows[i][2]
                   + length_bonus * (len(beams[rows[i][0]].units) + len(rows[i][3])) + rows[i][4], i)
                  for i in range(count)]
        scored.sort(reverse=True)
        best_finished = max((s for *_, s in finished), default=-math.inf)
        chosen = [i for _, i in scored[:beam_size]]
        margin = end_margin if length_bonus > 0 else 0.0
        if not chosen or scored[0][0] < best_finished - margin:
            break  # every live hypothesis trails a finished one (without a bonus, scores only fall)
        new_beams, order = [], []
        for i in chosen:
            b, token, att, units, fused, state = rows[i]
            parent = beams[b]
            new_beams.append(_Beam(parent.tokens + [token], parent.units + units, r_n[i], r_b[i], float(ctc[i]), att,
                                   state, fused))
            order.append(b)
        index = torch.tensor(order)
        caches = [(k.index_select(0, index), v.index_select(0, index)) for k, v in caches]
        beams = new_beams
        step = torch.tensor([[beam.tokens[-1]] for beam in beams], dtype=torch.long)
    finished.sort(key=lambda item: item[2], reverse=True)
    return finished
