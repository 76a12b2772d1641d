"""The front-end protocol: how a model turns samples into feature frames, batch and streaming.

A model directory stores its front end as a dict with a ``kind`` (``features:`` in config.yaml,
``features`` in ONNX metadata); ``frontend_from_dict`` rebuilds it. Every front end offers the same
members, so the recognizer, the trainer's feature cache, evaluation and benchmarks never name a
concrete one:

- ``kind``         registry name ("fbank": Kaldi fbank; "whisper_mel": Whisper's log-mel)
- ``dim``          features per frame
- ``frame_shift``  seconds between frames
- ``sample_rate``  the rate the front end expects
- ``compute(samples) -> torch.Tensor [T, dim]``  one utterance, whole
- ``stream()``     an object with ``accept(samples) -> np.ndarray [n, dim]``, ``finish()``,
                   ``reset()``: the same frames as ``compute`` however the audio is chunked
- ``to_dict()``    what the model directory stores

Directories written before front ends had kinds hold bare fbank options: no ``kind`` means fbank.
This module stays torch-free (the ONNX runtime imports it).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from edgeasr.errors import DataError


class FrameStream(Protocol):
    def accept(self, samples: np.ndarray) -> np.ndarray: ...
    def finish(self) -> np.ndarray: ...
    def reset(self) -> None: ...


class Frontend(Protocol):
    kind: str
    sample_rate: int

    @property
    def dim(self) -> int: ...
    @property
    def frame_shift(self) -> float: ...
    def compute(self, samples: np.ndarray): ...  # -> torch.Tensor [T, dim]
    def stream(self) -> FrameStream: ...
    def to_dict(self) -> dict[str, Any]: ...


def _fbank(data: dict[str, Any]) -> Frontend:
    from edgeasr.audio.fbank import FbankOptions

    return FbankOptions.from_dict(data)


def _whisper_mel(data: dict[str, Any]) -> Frontend:
    from edgeasr.audio.whisper_mel import WhisperMelOptions

    return WhisperMelOptions.from_dict(data)


FRONTENDS = {"fbank": _fbank, "whisper_mel": _whisper_mel}


def frontend_from_dict(data: dict[str, Any] | None) -> Frontend:
    """The front end a stored dict describes (an empty dict or None: default fbank)."""
    data = dict(data or {})
    kind = data.pop("kind", "fbank")
    if kind not in FRONTENDS:
        raise DataError(f"unknown front end kind '{kind}' (known: {', '.join(FRONTENDS)})")
    return FRONTENDS[kind](data)
