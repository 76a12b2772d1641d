"""What a recognition returns: text, tokens, timestamps, confidence and n-best."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from edgeasr.decoding.ctc import Hypothesis
from edgeasr.text.tokenizer import SPACE, Tokenizer


@dataclass
class Word:
    word: str
    start: float  # seconds
    end: float
    confidence: float


@dataclass
class Result:
    text: str
    tokens: list[str] = field(default_factory=list)
    #: emission time of each token, seconds from the start of the audio
    token_times: list[float] = field(default_factory=list)
    words: list[Word] = field(default_factory=list)
    #: geometric mean of the token posteriors at their emission frames, in [0, 1]
    confidence: float = 0.0
    nbest: list[dict] = field(default_factory=list)
    is_final: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def build_result(
    hyp: Hypothesis,
    tokenizer: Tokenizer,
    frame_seconds: float,
    nbest: list[tuple[Hypothesis, float]] | None = None,
    is_final: bool = True,
    audio_seconds: float | None = None,
) -> Result:
    """Turn a hypothesis into text with word timings.

    A word starts at its first token's emission and ends just before the next word's first token
    (or at the end of the audio), since CTC marks when a token is recognised rather than its span.
    """
    pieces = [tokenizer.id_to_piece(t) for t in hyp.tokens]
    times = [round(t * frame_seconds, 3) for t in hyp.times]
    probs = list(hyp.token_probs) or [1.0] * len(pieces)
    words: list[Word] = []
    current: list[int] = []

    def close(end_time: float) -> None:
        if not current:
            return
        text = "".join(pieces[i] for i in current).replace(SPACE, "")
        if text:
            conf = math.exp(sum(math.log(max(probs[i], 1e-10)) for i in current) / len(current))
            words.append(Word(text, times[current[0]], round(end_time, 3), round(conf, 4)))

    for i, piece in enumerate(pieces):
        if piece.startswith(SPACE) and current:
            close(times[i])
            current = []
        current.append(i)
    last_end = audio_seconds if audio_seconds is not None else (times[-1] + frame_seconds if times else 0.0)
    close(max(last_end, times[-1] if times else 0.0))
    confidence = (
        math.exp(sum(math.log(max(p, 1e-10)) for p in probs) / len(probs)) if probs else 0.0
    )
    return Result(
        text=tokenizer.decode(hyp.tokens),
        tokens=pieces,
        token_times=times,
        words=words,
        confidence=round(confidence, 4),
        nbest=[{"text": tokenizer.decode(h.tokens), "score": round(s, 4)} for h, s in (nbest or [])],
        is_final=is_final,
    )
