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
class Segment:
    """One stretch of speech between endpoints, from its first word's start to its last word's
    end: a transcript line, a subtitle cue."""

    start: float  # seconds from the start of the audio
    end: float
    text: str
    words: list[Word] = field(default_factory=list)
    confidence: float = 0.0
    #: the pass that wrote this segment's text: "first_pass" (the streaming search), or the
    #: second pass's kind: "whisper", "attention" or "cascade"
    decoded_by: str = "first_pass"


#: a word ends this many encoder frames after its last token's emission (CTC marks a token
#: where it is recognised, about where its sound ends), unless the next word starts earlier
WORD_TAIL_FRAMES = 2


def shift_segments(segments: list[Segment], offset: float) -> list[Segment]:
    """Segments with times moved by ``offset`` seconds (a stream segment's into the stream's)."""
    if not offset:
        return list(segments)
    return [Segment(round(s.start + offset, 3), round(s.end + offset, 3), s.text,
                    [Word(w.word, round(w.start + offset, 3), round(w.end + offset, 3), w.confidence) for w in s.words],
                    s.confidence, s.decoded_by) for s in segments]


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
    #: the speech segments (cut at endpoints when streaming), each with its words
    segments: list[Segment] = field(default_factory=list)
    #: the pass that wrote the text (of the last segment, for a stream's joined result; each
    #: segment says its own): "first_pass" for partials and one-pass modes, else the second
    #: pass's kind, "whisper", "attention" or "cascade"
    decoded_by: str = "first_pass"

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

    A word starts at its first token's emission and ends ``WORD_TAIL_FRAMES`` after its last
    token's, or where the next word starts if that is sooner (CTC marks when a token is
    recognised rather than its span; ending words at the next word's start would give the
    silence after a word to the word).
    """
    pieces = [tokenizer.id_to_piece(t) for t in hyp.tokens]
    times = [round(t * frame_seconds, 3) for t in hyp.times]
    probs = list(hyp.token_probs) or [1.0] * len(pieces)
    words: list[Word] = []
    current: list[int] = []

    tail = WORD_TAIL_FRAMES * frame_seconds

    def close(limit: float) -> None:
        if not current:
            return
        text = "".join(pieces[i] for i in current).replace(SPACE, "")
        if text:
            conf = math.exp(sum(math.log(max(probs[i], 1e-10)) for i in current) / len(current))
            end = max(times[current[0]], min(limit, times[current[-1]] + tail))
            words.append(Word(text, times[current[0]], round(end, 3), round(conf, 4)))

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
    text = tokenizer.decode(hyp.tokens)
    segments = [Segment(words[0].start, words[-1].end, text, list(words), round(confidence, 4))] if words else []
    return Result(
        text=text,
        tokens=pieces,
        token_times=times,
        words=words,
        confidence=round(confidence, 4),
        nbest=[{"text": tokenizer.decode(h.tokens), "score": round(s, 4)} for h, s in (nbest or [])],
        is_final=is_final,
        segments=segments,
    )
