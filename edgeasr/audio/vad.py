"""Energy voice-activity detection: which blocks of a stream can skip the recognizer entirely.

The CTC endpointer already finds where speech ends, but only after the encoder has run over the
silence: on a recording that is mostly pauses (a meeting, a call, a lecture with gaps) the
encoder and the second pass's bookkeeping then cost as much per second of silence as per second
of speech. This detector decides per block from the audio alone, before any model runs.

Method (no model, nothing to download; a trained VAD such as Silero's ships in no package here):
20 ms frames' energies in dB against a noise floor that tracks the quietest recent frames: it
drops at once to a quieter frame and rises slowly (``floor_rise_db_per_s``), so it follows a
change of room or microphone level without climbing into speech. A frame is voiced when it is
``margin_db`` above the floor and above ``absolute_floor_db`` (digital silence and dither are
never speech); a block holds speech when at least ``min_voiced_ms`` of its frames are voiced.
It errs towards speech: noise that is loud and uneven (music, babble) counts as speech and is
simply decoded as before, so the detector can save compute but rarely lose words. The session
(``edgeasr.decoding.core.StreamingSession``) also keeps one block of pre-roll, so a word that
starts at the very end of a silent block is decoded from its start.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class VadRules:
    #: dB above the noise floor for a frame to count as voiced
    margin_db: float = 10.0
    #: frames below this level (dBFS) are never voiced
    absolute_floor_db: float = -65.0
    #: voiced time a block needs to count as speech
    min_voiced_ms: float = 60.0
    #: how fast the floor may rise towards louder frames
    floor_rise_db_per_s: float = 3.0
    frame_ms: float = 20.0

    def __post_init__(self) -> None:
        if self.margin_db <= 0 or self.min_voiced_ms <= 0 or self.frame_ms <= 0 or self.floor_rise_db_per_s < 0:
            raise ValueError("VAD margin, voiced time and frame length must be positive")


class EnergyVad:
    """Streaming block decisions (``is_speech(block)``) with a running noise floor; constant memory."""

    def __init__(self, sample_rate: int, rules: VadRules | None = None) -> None:
        self.rules = rules or VadRules()
        self.frame = max(1, int(round(sample_rate * self.rules.frame_ms / 1000)))
        self.rise_per_frame = self.rules.floor_rise_db_per_s * self.rules.frame_ms / 1000
        self.floor: float | None = None
        #: samples not yet a whole frame, carried to the next block
        self._carry = np.zeros(0, dtype=np.float32)

    def frame_levels(self, samples: np.ndarray) -> np.ndarray:
        """dBFS of each whole 20 ms frame of ``samples`` (the remainder waits for the next call)."""
        samples = np.concatenate([self._carry, np.asarray(samples, dtype=np.float32)])
        whole = samples.size - samples.size % self.frame
        self._carry = samples[whole:].copy()
        frames = samples[:whole].reshape(-1, self.frame).astype(np.float64)
        power = (frames * frames).mean(axis=1)
        return 10.0 * np.log10(np.maximum(power, 1e-12))

    def is_speech(self, samples: np.ndarray) -> bool:
        levels = self.frame_levels(samples)
        if levels.size == 0:
            return False
        rules = self.rules
        if self.floor is None:  # the first block: its quietest frames are the best guess
            self.floor = float(np.percentile(levels, 10))
        voiced = 0
        floor = self.floor
        for level in levels:
            floor = min(float(level), floor + self.rise_per_frame)
            if level >= rules.absolute_floor_db and level >= floor + rules.margin_db:
                voiced += 1
        self.floor = floor
        return voiced * rules.frame_ms >= rules.min_voiced_ms
