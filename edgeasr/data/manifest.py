"""JSONL manifests: the one format every data source is turned into before training or scoring.

One utterance per line: ``{"audio": path, "text": str, "duration": seconds, "speaker": str?}``
plus any extra keys (``id``, ``engine``, ``voice``, ``source``, segment ``start``/``end``...),
which are kept through a read/write round trip so tools that add metadata never lose each other's.
JSONL rather than one JSON document because manifests grow to hundreds of thousands of lines, are
appended to by resumable corpus builds, and are easy to ``head``, ``grep`` and ``shuf``. A line
without ``"duration"`` gets it from its audio file's header, and WeNet's data lists
(``{"key", "wav", "txt"}``) read as they are.

Relative audio paths are relative to the manifest's own directory, so a corpus folder (manifest plus
its audio) can be moved or copied as a whole.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeasr.errors import AudioError, DataError
from edgeasr.fileio import atomic_write

__all__ = [
    "Utterance",
    "iter_manifest",
    "iter_manifest_lines",
    "manifest_stats",
    "read_manifest",
    "write_manifest",
]

_CORE_KEYS = ("audio", "text", "duration", "speaker")
#: WeNet's data.list spells audio "wav" and text "txt" (and has no duration): read those too
_WENET_ALIASES = {"audio": "wav", "text": "txt"}


@dataclass
class Utterance:
    """One transcribed stretch of audio; ``extra`` holds every other key of its manifest line."""

    audio: str
    text: str
    duration: float
    speaker: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The manifest line as a dict: core keys first (stable, readable files), then extras."""
        _check_duration(self.duration)
        line: dict[str, Any] = {"audio": self.audio, "text": self.text, "duration": self.duration}
        if self.speaker is not None:
            line["speaker"] = self.speaker
        for key, value in self.extra.items():
            if key in _CORE_KEYS:
                raise DataError(f"extra key {key!r} would overwrite the utterance's own field")
            line[key] = value
        return line

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Utterance:
        """Validate one manifest line; raise ``DataError`` saying what is wrong with it."""
        if not isinstance(d, dict):
            raise DataError(f"expected a JSON object, got {type(d).__name__}")
        aliases = {key: alias for key, alias in _WENET_ALIASES.items() if key not in d and alias in d}
        for key in ("audio", "text"):
            if key not in d and key not in aliases:
                raise DataError(f'missing key "{key}"' + (f' (or "{_WENET_ALIASES[key]}")' if key in _WENET_ALIASES else ""))
        audio, text = d.get("audio", d.get(aliases.get("audio", ""))), d.get("text", d.get(aliases.get("text", "")))
        duration, speaker = d.get("duration"), d.get("speaker")
        if not isinstance(audio, str) or not audio.strip():
            raise DataError('"audio" must be a non-empty path string')
        if not isinstance(text, str):
            raise DataError(f'"text" must be a string, got {type(text).__name__}')
        if duration is not None:  # absent: read from the audio header once the path is resolved
            duration = _check_duration(duration)
        if speaker is not None:
            if isinstance(speaker, bool) or not isinstance(speaker, (str, int)):
                raise DataError(f'"speaker" must be a string, got {type(speaker).__name__}')
            speaker = str(speaker)  # numeric speaker ids (LibriSpeech style) are still labels
        extra = {k: v for k, v in d.items() if k not in _CORE_KEYS and k not in aliases.values()}
        return cls(audio=audio, text=text, duration=duration, speaker=speaker, extra=extra)


def _check_duration(duration: object) -> float:
    if isinstance(duration, bool) or not isinstance(duration, (int, float)):
        raise DataError(f'"duration" must be a number of seconds, got {duration!r}')
    value = float(duration)
    if not math.isfinite(value) or value < 0:
        raise DataError(f'"duration" must be a finite, non-negative number, got {duration!r}')
    return value


def _resolve(audio: str, base: Path) -> str:
    if os.path.isabs(audio):
        return audio
    return os.path.normpath(os.path.join(base, audio))


def iter_manifest_lines(
    path: str | os.PathLike[str], *, resolve_paths: bool = True
) -> Iterator[tuple[int, Utterance | DataError]]:
    """Yield ``(line_number, Utterance or the DataError of that line)`` for every non-blank line.

    For tools that must report *every* bad line (``edgeasr data validate``) instead of stopping at
    the first one. A missing or unreadable file still raises at once.
    """
    manifest = Path(path)
    if not manifest.exists():
        raise DataError(f"{manifest}: manifest not found")
    if manifest.is_dir():
        raise DataError(f"{manifest}: is a directory, expected a JSONL manifest file")
    base = manifest.parent.absolute()
    try:
        handle = open(manifest, "rb")
    except OSError as error:
        raise DataError(f"{manifest}: cannot read the manifest: {error.strerror}") from error
    with handle:
        for number, raw in enumerate(handle, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield number, DataError(f"{manifest}:{number}: not UTF-8 text")
                continue
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                yield number, DataError(f"{manifest}:{number}: bad JSON ({error.msg})")
                continue
            try:
                utterance = Utterance.from_dict(record)
            except DataError as error:
                yield number, DataError(f"{manifest}:{number}: {error}")
                continue
            if utterance.duration is None:
                from edgeasr.audio.io import audio_duration

                try:
                    utterance.duration = audio_duration(_resolve(utterance.audio, base))
                except AudioError as error:
                    yield number, DataError(f"{manifest}:{number}: no \"duration\" and {error}")
                    continue
            if resolve_paths:
                utterance.audio = _resolve(utterance.audio, base)
            yield number, utterance


def iter_manifest(
    path: str | os.PathLike[str], *, resolve_paths: bool = True
) -> Iterator[Utterance]:
    """Stream the utterances of a manifest; the first malformed line raises ``DataError``.

    Relative audio paths are resolved against the manifest's directory unless ``resolve_paths`` is
    false (useful when only the text is needed, or to copy a manifest verbatim).
    """
    for _, item in iter_manifest_lines(path, resolve_paths=resolve_paths):
        if isinstance(item, DataError):
            raise item
        yield item


def read_manifest(path: str | os.PathLike[str], *, resolve_paths: bool = True) -> list[Utterance]:
    """All utterances of a manifest; see ``iter_manifest``."""
    return list(iter_manifest(path, resolve_paths=resolve_paths))


def write_manifest(
    path: str | os.PathLike[str],
    utterances: Iterable[Utterance],
    *,
    relative_to: str | os.PathLike[str] | None = None,
) -> int:
    """Write utterances as JSONL, atomically (a crash leaves the old file or the new one, whole).

    With ``relative_to`` (normally the manifest's own directory, which is what ``read_manifest``
    resolves against), audio paths are stored relative to that directory so the folder can move.
    Returns the number of lines written.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(f"{target}: cannot create its directory: {error.strerror}") from error
    base = os.path.abspath(relative_to) if relative_to is not None else None
    count = 0
    try:
        with atomic_write(target, "w", encoding="utf-8") as handle:
            for utterance in utterances:
                line = utterance.to_dict()
                if base is not None:
                    line["audio"] = _relative(utterance.audio, base)
                handle.write(json.dumps(line, ensure_ascii=False) + "\n")
                count += 1
    except OSError as error:
        problem = error.strerror or error
        raise DataError(f"{target}: cannot write the manifest: {problem}") from error
    return count


def _relative(audio: str, base: str) -> str:
    try:
        return os.path.relpath(os.path.abspath(audio), base)
    except ValueError:  # another drive on Windows: no relative path exists
        return os.path.abspath(audio)


def manifest_stats(utterances: Sequence[Utterance]) -> dict[str, Any]:
    """Count, total hours, distinct speakers and duration range: what a corpus summary shows."""
    durations = [u.duration for u in utterances]
    speakers = {u.speaker for u in utterances if u.speaker is not None}
    total = math.fsum(durations)
    return {
        "count": len(durations),
        "hours": total / 3600.0,
        "seconds": total,
        "speakers": len(speakers),
        "without_speaker": sum(1 for u in utterances if u.speaker is None),
        "min_duration": min(durations) if durations else 0.0,
        "mean_duration": total / len(durations) if durations else 0.0,
        "max_duration": max(durations) if durations else 0.0,
    }
