"""User-facing errors.

Every problem a user can cause (a bad file, a wrong flag, a missing engine) is raised as an
``EdgeAsrError`` with a one-line message that names the thing and the problem. The CLI catches
exactly this class and prints the message without a traceback; anything else is a bug and keeps
its traceback so it can be reported.
"""

from __future__ import annotations


class EdgeAsrError(Exception):
    """A problem with the user's input or environment, explained in one line."""

    def __init__(self, message: str) -> None:
        # Keep the message on one line whatever the caller passed in.
        super().__init__(" ".join(str(message).split()))


class AudioError(EdgeAsrError):
    """An audio file or buffer that cannot be used; the message names the file."""

    def __init__(self, source: object, problem: str) -> None:
        self.source = str(source)
        self.problem = problem
        super().__init__(f"{source}: {problem}")


class DataError(EdgeAsrError):
    """A manifest, data directory or text file that cannot be used."""


class EngineError(EdgeAsrError):
    """A TTS engine that is missing or failed."""
