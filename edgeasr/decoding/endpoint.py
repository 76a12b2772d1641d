"""Rule-based endpointing from CTC blank probabilities: where one utterance ends in a long stream.

A frame counts as silence when the CTC blank posterior reaches ``blank_threshold``. An utterance
ends when either:
- something was recognized and it is followed by ``silence_after_speech`` seconds of silence;
- nothing was recognized for ``silence_without_speech`` seconds (the segment is dropped, so a
  silent line does not grow forever);
- it has run ``max_utterance`` seconds (forced cut).
The same rules as sherpa-onnx's and WeNet's endpointers, on the signal a CTC model already has.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class EndpointRules:
    silence_after_speech: float = 0.8
    silence_without_speech: float = 5.0
    max_utterance: float = 20.0
    blank_threshold: float = 0.9

    def __post_init__(self) -> None:
        if min(self.silence_after_speech, self.silence_without_speech, self.max_utterance) <= 0:
            raise ValueError("endpoint durations must be positive")
        if not 0.0 < self.blank_threshold <= 1.0:
            raise ValueError("blank_threshold must be in (0, 1]")


def speech_frames(log_probs, blank: int = 0) -> int:
    """Frames whose most likely token is not blank: none means no speech (a prefix beam can
    still sum many weak paths into text there; best-path CTC cannot)."""
    if hasattr(log_probs, "detach"):
        log_probs = log_probs.detach().cpu().numpy()
    scores = np.asarray(log_probs)
    return int((scores.argmax(axis=-1) != blank).sum()) if scores.size else 0


class BlankTracker:
    """Counts decoded frames and the trailing run of silent (blank) frames: constant memory."""

    def __init__(self, blank: int = 0, threshold: float = 0.9) -> None:
        self.blank = blank
        self.log_threshold = math.log(threshold)
        self.frames = 0
        self.trailing_silence = 0
        #: frames whose most likely token is not blank (``speech_frames``): none = no speech
        self.speech_frames = 0

    def update(self, log_probs) -> None:
        if hasattr(log_probs, "detach"):
            log_probs = log_probs.detach().cpu().numpy()
        scores = np.asarray(log_probs, dtype=np.float32)
        blank = scores[:, self.blank]
        silent = blank >= self.log_threshold
        if silent.size == 0:
            return
        self.speech_frames += speech_frames(scores, self.blank)
        if silent.all():
            self.trailing_silence += int(silent.size)
        else:
            last_speech = int(np.flatnonzero(~silent)[-1])
            self.trailing_silence = int(silent.size) - 1 - last_speech
        self.frames += int(silent.size)


def endpoint_reached(rules: EndpointRules, tracker: BlankTracker, frame_seconds: float, has_text: bool) -> bool:
    silence = tracker.trailing_silence * frame_seconds
    if has_text and silence >= rules.silence_after_speech:
        return True
    if not has_text and silence >= rules.silence_without_speech:
        return True
    return tracker.frames * frame_seconds >= rules.max_utterance
