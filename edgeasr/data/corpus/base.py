"""What every TTS engine of the corpus builder looks like.

The builder only talks to engines through this interface, so adding an engine is one module that
subclasses ``Engine`` and calls ``register_engine``. Engines are real programs or models installed
by the project's set-up (Debian packages, PyPI packages); an engine that is missing says so through
``check()`` with an install hint instead of being skipped silently.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from edgeasr.errors import EngineError


@dataclass(frozen=True)
class Voice:
    """One speaker an engine can produce.

    ``id`` is globally unique and stable across runs ("espeak:en-us+f3", "kokoro:blend-017"), because
    train/dev/test splits are made by voice id and resumed runs must find the same voices again.
    ``params`` holds engine-specific settings needed to reproduce the voice (e.g. style weights).
    """

    engine: str
    id: str
    accent: str = "us"
    gender: str | None = None
    params: dict = field(default_factory=dict, hash=False, compare=False)


@dataclass
class Synthesis:
    """Audio produced by an engine: float32 mono samples in [-1, 1] at ``sample_rate``."""

    samples: np.ndarray
    sample_rate: int


class Engine(ABC):
    """A text-to-speech engine.

    ``rate`` is a speaking-rate factor (1.0 = the engine's normal pace, 1.2 = 20% faster) and
    ``pitch`` a pitch factor (1.0 = the voice's normal pitch); engines that cannot change one of them
    ignore it and report so in ``supports``. ``seed`` makes stochastic engines reproducible.
    """

    name: str = ""
    #: Which of "rate" and "pitch" this engine honours.
    supports: frozenset[str] = frozenset()
    #: Rough synthesis speed in x real time on one core, used to plan work; measured values win.
    speed_hint: float = 10.0

    @abstractmethod
    def check(self) -> None:
        """Raise ``EngineError`` (with an install hint) if the engine cannot run here."""

    @abstractmethod
    def voices(self) -> list[Voice]:
        """Every voice this engine offers on this machine, in a stable order."""

    @abstractmethod
    def synthesize(
        self, text: str, voice: Voice, *, rate: float = 1.0, pitch: float = 1.0, seed: int = 0
    ) -> Synthesis:
        """Speak ``text`` with ``voice``; raise ``EngineError`` on failure."""

    def available(self) -> tuple[bool, str]:
        """(True, "") if usable, else (False, reason): for reports that list every engine."""
        try:
            self.check()
        except EngineError as error:
            return False, str(error)
        return True, ""


_REGISTRY: dict[str, Callable[[], Engine]] = {}


def register_engine(name: str, factory: Callable[[], Engine]) -> None:
    """Make an engine known to the builder and the CLI under ``name``."""
    _REGISTRY[name] = factory


def engine_names() -> list[str]:
    _load_builtin_engines()
    return list(_REGISTRY)


def get_engine(name: str) -> Engine:
    _load_builtin_engines()
    if name not in _REGISTRY:
        known = ", ".join(_REGISTRY) or "none"
        raise EngineError(f"unknown TTS engine '{name}' (known: {known})")
    return _REGISTRY[name]()


def _load_builtin_engines() -> None:
    # Imported lazily so that importing the base class never drags in every engine's dependencies;
    # each module calls register_engine at import time.
    import importlib

    for module in ("engines", "kokoro", "piper"):
        try:
            importlib.import_module(f"edgeasr.data.corpus.{module}")
        except ModuleNotFoundError as error:
            if error.name != f"edgeasr.data.corpus.{module}":
                raise
