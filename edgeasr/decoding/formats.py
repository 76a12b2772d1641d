"""Results as files people use: plain text, JSON, SubRip and WebVTT subtitles, TSV.

A result's ``segments`` (cut at endpoints while streaming) are the unit of every format. For
subtitles, a segment longer than a readable cue (two lines of 42 characters, 7 s) is split at
word boundaries, each cue timed by its own words, as subtitle guidelines ask.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edgeasr.decoding.result import Result, Segment
from edgeasr.errors import EdgeAsrError
from edgeasr.fileio import atomic_write_text

FORMATS = ("txt", "json", "srt", "vtt", "tsv")
#: a subtitle cue: at most this many lines of this many characters, shown at most this long
CUE_LINES, CUE_LINE_CHARS, CUE_SECONDS = 2, 42, 7.0


@dataclass
class Cue:
    start: float
    end: float
    lines: list[str]


def _wrap(words: list[str], width: int) -> list[str]:
    lines, current = [], ""
    for word in words:
        if current and len(current) + 1 + len(word) > width:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    if current:
        lines.append(current)
    return lines


def cues(result: Result) -> list[Cue]:
    """Subtitle cues: each segment, split at words where it is too long to read as one."""
    out: list[Cue] = []
    for segment in _segments(result):
        if not segment.words:
            out.append(Cue(segment.start, segment.end, _wrap(segment.text.split(), CUE_LINE_CHARS)))
            continue
        group: list = []
        for word in segment.words:
            candidate = group + [word]
            lines = _wrap([w.word for w in candidate], CUE_LINE_CHARS)
            if group and (len(lines) > CUE_LINES or word.end - group[0].start > CUE_SECONDS):
                out.append(Cue(group[0].start, group[-1].end, _wrap([w.word for w in group], CUE_LINE_CHARS)))
                candidate = [word]
            group = candidate
        if group:
            out.append(Cue(group[0].start, group[-1].end, _wrap([w.word for w in group], CUE_LINE_CHARS)))
    return out


def _segments(result: Result) -> list[Segment]:
    if result.segments or not result.text:
        return result.segments
    words = result.words  # a result built by hand: one segment over its words
    start, end = (words[0].start, words[-1].end) if words else (0.0, 0.0)
    return [Segment(start, end, result.text, list(words), result.confidence, result.decoded_by)]


def _clock(seconds: float, separator: str) -> str:
    millis = max(0, int(round(seconds * 1000)))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def to_srt(result: Result) -> str:
    blocks = [f"{i}\n{_clock(c.start, ',')} --> {_clock(c.end, ',')}\n" + "\n".join(c.lines)
              for i, c in enumerate(cues(result), 1)]
    return "\n\n".join(blocks) + ("\n" if blocks else "")


def to_vtt(result: Result) -> str:
    blocks = [f"{_clock(c.start, '.')} --> {_clock(c.end, '.')}\n" + "\n".join(c.lines) for c in cues(result)]
    return "WEBVTT\n\n" + "\n\n".join(blocks) + ("\n" if blocks else "")


def to_tsv(result: Result) -> str:
    """start and end in integer milliseconds, then the text: one row per segment (Whisper's TSV)."""
    rows = ["start\tend\ttext"]
    rows += [f"{int(round(s.start * 1000))}\t{int(round(s.end * 1000))}\t{s.text}" for s in _segments(result)]
    return "\n".join(rows) + "\n"


def to_txt(result: Result) -> str:
    """One line per segment."""
    return "".join(f"{s.text}\n" for s in _segments(result))


def to_json(result: Result, audio: str | None = None) -> str:
    return json.dumps({"audio": audio, **result.to_dict()} if audio is not None else result.to_dict())


def render(result: Result, output_format: str, audio: str | None = None) -> str:
    """The whole document of ``result`` in ``output_format`` (one of ``FORMATS``)."""
    if output_format == "json":
        return to_json(result, audio) + "\n"
    writers = {"txt": to_txt, "srt": to_srt, "vtt": to_vtt, "tsv": to_tsv}
    if output_format not in writers:
        raise EdgeAsrError(f"unknown output format '{output_format}' (choose from {', '.join(FORMATS)})")
    return writers[output_format](result)


def output_path(audio: str, output_dir: str | Path, output_format: str) -> Path:
    """Where ``--output-dir`` puts the result of ``audio``: its file name with the format's
    extension (``stdin`` for ``-``)."""
    stem = "stdin" if audio == "-" else Path(audio).stem
    return Path(output_dir) / f"{stem}.{output_format}"


def write_result(result: Result, audio: str, output_dir: str | Path, output_format: str) -> Path:
    """Write one input's result into ``output_dir`` (created if needed), atomically."""
    path = output_path(audio, output_dir, output_format)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise EdgeAsrError(f"cannot create output directory {path.parent}: {error.strerror or error}") from None
    try:
        atomic_write_text(path, render(result, output_format, audio))
    except OSError as error:
        raise EdgeAsrError(f"cannot write {path}: {error.strerror or error}") from None
    return path
