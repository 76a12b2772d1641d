"""Turn corpora that users already have on disk into manifests.

Two layouts cover most English ASR data in the wild: LibriSpeech's own folder tree, and Kaldi data
directories (``wav.scp`` + ``text`` [+ ``utt2spk``, ``segments``]), which most other recipes can
export. Importers are strict by default: a transcript without audio, or audio without a transcript,
is an error naming the file and line, because a silently smaller corpus is harder to notice than a
failed import. Transcripts are normalized with ``normalize_text`` so every manifest speaks the same
alphabet as the tokenizer and the scorer.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from edgeasr.audio.io import audio_duration
from edgeasr.data.manifest import Utterance, read_manifest
from edgeasr.errors import AudioError, DataError
from edgeasr.text.normalize import normalize_text

__all__ = ["import_jsonl", "import_kaldi_dir", "import_librispeech", "librispeech_splits"]

log = logging.getLogger(__name__)

_AUDIO_EXTENSIONS = (".flac", ".wav")
# Kaldi transcripts mark non-speech with tags such as <noise>, [laughter] or <unk>; spelled out by
# the normalizer they would become words the speaker never said.
_KALDI_TAG = re.compile(r"(?<!\S)(?:<[^<>\s]*>|\[[^\[\]\s]*\])(?!\S)")


def _natural_key(name: str) -> tuple:
    # Speaker and chapter folders are numbers: "19" sorts before "103".
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def _progress(items: Sequence, enabled: bool, desc: str) -> Iterable:
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="file", leave=False)


def _duration(path: str, where: str) -> float:
    try:
        return audio_duration(path)
    except AudioError as error:
        raise DataError(f"{where}: {error}") from error


# --------------------------------------------------------------------------- LibriSpeech


def _is_librispeech_split(folder: Path) -> bool:
    return any(folder.glob("*/*/*.trans.txt"))


def librispeech_splits(root: str | os.PathLike[str]) -> dict[str, Path]:
    """Split name -> folder for ``root`` (one split, the ``LibriSpeech`` folder, or its parent)."""
    base = Path(root)
    if not base.exists():
        raise DataError(f"{base}: no such directory")
    if not base.is_dir():
        raise DataError(f"{base}: not a directory (expected a LibriSpeech folder)")
    if _is_librispeech_split(base):
        return {base.resolve().name: base}
    candidates = [base]
    if (base / "LibriSpeech").is_dir():
        candidates.insert(0, base / "LibriSpeech")
    for candidate in candidates:
        splits = {
            child.name: child
            for child in sorted(candidate.iterdir(), key=lambda p: _natural_key(p.name))
            if child.is_dir() and _is_librispeech_split(child)
        }
        if splits:
            return splits
    raise DataError(
        f"{base}: no LibriSpeech transcripts found; expected "
        f"<split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt (e.g. LibriSpeech/dev-clean)"
    )


def _librispeech_transcripts(
    split: Path,
) -> Iterable[tuple[Path, int, str, str, str]]:
    """(transcript file, line, utterance id, speaker, raw text) for every line of a split."""
    for speaker_dir in sorted(split.iterdir(), key=lambda p: _natural_key(p.name)):
        if not speaker_dir.is_dir():
            continue
        for chapter_dir in sorted(speaker_dir.iterdir(), key=lambda p: _natural_key(p.name)):
            if not chapter_dir.is_dir():
                continue
            for trans in sorted(chapter_dir.glob("*.trans.txt")):
                try:
                    lines = trans.read_text(encoding="utf-8").splitlines()
                except (OSError, UnicodeDecodeError) as error:
                    raise DataError(f"{trans}: cannot read the transcript: {error}") from error
                prefix = f"{speaker_dir.name}-{chapter_dir.name}-"
                for number, line in enumerate(lines, 1):
                    if not line.strip():
                        continue
                    utt_id, _, text = line.strip().partition(" ")
                    if not utt_id.startswith(prefix) or not utt_id[len(prefix):]:
                        raise DataError(
                            f"{trans}:{number}: expected '<{prefix}NNNN> TEXT', got {line[:60]!r}"
                        )
                    yield trans, number, utt_id, speaker_dir.name, text


def _librispeech_import(
    root: str | os.PathLike[str],
    splits: Sequence[str] | None,
    strict: bool,
    progress: bool,
) -> tuple[list[Utterance], list[str]]:
    available = librispeech_splits(root)
    if splits:
        unknown = [name for name in splits if name not in available]
        if unknown:
            raise DataError(
                f"{root}: no split named {unknown[0]!r}; found {', '.join(available) or 'none'}"
            )
        chosen = {name: available[name] for name in splits}
    else:
        chosen = available
    entries = []
    missing: list[str] = []
    for split_name, folder in chosen.items():
        for trans, number, utt_id, speaker, text in _librispeech_transcripts(folder):
            audio = next(
                (
                    trans.parent / f"{utt_id}{ext}"
                    for ext in _AUDIO_EXTENSIONS
                    if (trans.parent / f"{utt_id}{ext}").is_file()
                ),
                None,
            )
            if audio is None:
                if strict:
                    raise DataError(
                        f"{trans}:{number}: audio for {utt_id} not found "
                        f"(expected {trans.parent / (utt_id + '.flac')}); "
                        f"use --skip-missing to import the rest"
                    )
                missing.append(utt_id)
                continue
            entries.append((trans, number, utt_id, speaker, text, audio, split_name))
    utterances = []
    for trans, number, utt_id, speaker, text, audio, split_name in _progress(
        entries, progress, "reading durations"
    ):
        path = os.path.abspath(audio)
        utterances.append(
            Utterance(
                audio=path,
                text=normalize_text(text),
                duration=_duration(path, f"{trans}:{number}"),
                speaker=speaker,
                extra={"id": utt_id, "split": split_name},
            )
        )
    return utterances, missing


def import_librispeech(
    root: str | os.PathLike[str],
    *,
    splits: Sequence[str] | None = None,
    strict: bool = True,
    progress: bool = False,
    skipped: list[str] | None = None,
) -> list[Utterance]:
    """Utterances of a LibriSpeech tree, text normalized, speaker = LibriSpeech speaker id.

    ``root`` may be one split (``.../LibriSpeech/dev-clean``), the ``LibriSpeech`` folder holding
    several (all are imported unless ``splits`` names some), or the folder it was extracted into.
    ``extra`` carries ``id`` (the utterance id) and ``split``. A transcript line whose audio is
    missing raises ``DataError`` unless ``strict`` is false, in which case it is skipped, the
    ids of skipped lines are appended to ``skipped`` when a list is given (else their number is
    logged).
    """
    utterances, missing = _librispeech_import(root, splits, strict, progress)
    if skipped is not None:
        skipped.extend(missing)
    elif missing:
        log.warning(
            "%d LibriSpeech transcript lines had no audio (first: %s)", len(missing), missing[0]
        )
    return utterances


# --------------------------------------------------------------------------- Kaldi


def _read_kaldi_table(path: Path, *, need_value: bool = True) -> dict[str, tuple[int, str]]:
    """``id -> (line number, rest of line)`` for a Kaldi two-column file."""
    table: dict[str, tuple[int, str]] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read: {error}") from error
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        key, _, value = line.strip().partition(" ")
        value = value.strip()
        if need_value and not value:
            raise DataError(f"{path}:{number}: expected '<id> <value>', got {line.strip()[:60]!r}")
        if key in table:
            first = table[key][0]
            raise DataError(f"{path}:{number}: duplicate id {key!r} (first on line {first})")
        table[key] = (number, value)
    return table


def _kaldi_audio_path(value: str, where: str, data_dir: Path) -> str:
    if value.endswith("|"):
        raise DataError(
            f"{where}: pipe commands are not supported ({value[:60]!r}); run the command once "
            f"per recording to write a WAV file (e.g. 'sox in.sph out.wav') and list the WAV "
            f"paths in wav.scp"
        )
    if re.search(r"\.ark:\d+$", value):
        raise DataError(
            f"{where}: archive offsets are not supported ({value[:60]!r}); write each recording "
            f"to its own WAV file and list the WAV paths in wav.scp"
        )
    if os.path.isabs(value):
        return value
    # Kaldi recipes write paths relative to the recipe folder they run in (the current folder);
    # a data directory copied elsewhere may instead hold paths relative to itself.
    for base in (Path.cwd(), data_dir):
        if (base / value).exists():
            return os.path.abspath(base / value)
    return os.path.abspath(value)


def _missing_error(ids: list[str], what: str) -> DataError:
    return DataError(f"{len(ids)} {what} (first: {ids[0]})")


def import_kaldi_dir(
    data_dir: str | os.PathLike[str], *, normalize: bool = True, progress: bool = False
) -> list[Utterance]:
    """Utterances of a Kaldi data directory.

    Reads ``wav.scp`` and ``text``, and ``utt2spk`` and ``segments`` when present. With segments,
    each utterance points at its recording's file with ``extra["start"]``/``["end"]`` in seconds and
    ``duration = end - start`` (an end of -1 means the end of the recording, as in Kaldi). Relative
    paths are tried against the current folder, then the data directory. Noise tags such as
    ``<noise>`` or ``[laughter]`` are dropped before normalizing the text (unless ``normalize`` is
    false). Utterances missing speakers in ``utt2spk`` get none.
    """
    folder = Path(data_dir)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a Kaldi data directory (no such directory)")
    for required in ("wav.scp", "text"):
        if not (folder / required).is_file():
            raise DataError(f"{folder}: not a Kaldi data directory ({required} is missing)")
    wav_scp = folder / "wav.scp"
    recordings = _read_kaldi_table(wav_scp)
    texts = _read_kaldi_table(folder / "text", need_value=False)
    speakers = _read_kaldi_table(folder / "utt2spk") if (folder / "utt2spk").is_file() else {}
    segments_path = folder / "segments"
    segments: dict[str, tuple[int, str]] = (
        _read_kaldi_table(segments_path) if segments_path.is_file() else {}
    )

    paths: dict[str, str] = {}
    for rec_id, (number, value) in recordings.items():
        paths[rec_id] = _kaldi_audio_path(value, f"{wav_scp}:{number}", folder)

    # Every utterance needs audio and a transcript; say how many do not, and name one.
    audio_ids = segments if segments else recordings
    source = "segments" if segments else "wav.scp"
    no_audio = [utt for utt in texts if utt not in audio_ids]
    if no_audio:
        raise _missing_error(no_audio, f"utterances in {folder / 'text'} have no entry in {source}")
    no_text = [utt for utt in audio_ids if utt not in texts]
    if no_text:
        raise _missing_error(no_text, f"utterances in {folder / source} have no transcript in text")

    durations: dict[str, float] = {}

    def recording_duration(rec_id: str) -> float:
        if rec_id not in durations:
            number = recordings[rec_id][0]
            durations[rec_id] = _duration(paths[rec_id], f"{wav_scp}:{number}")
        return durations[rec_id]

    utterances = []
    for utt_id in _progress(sorted(texts), progress, "reading durations"):
        text = texts[utt_id][1]
        if normalize:
            text = normalize_text(_KALDI_TAG.sub(" ", text))
        speaker = speakers[utt_id][1] if utt_id in speakers else None
        extra: dict[str, object] = {"id": utt_id}
        if segments:
            number, value = segments[utt_id]
            where = f"{segments_path}:{number}"
            fields = value.split()
            if len(fields) != 3:
                raise DataError(f"{where}: expected '<utt-id> <recording-id> <start> <end>'")
            rec_id = fields[0]
            try:
                start, end = float(fields[1]), float(fields[2])
            except ValueError:
                raise DataError(f"{where}: start and end must be seconds, got {value!r}") from None
            if rec_id not in recordings:
                raise DataError(f"{where}: recording {rec_id!r} is not in {wav_scp}")
            total = recording_duration(rec_id)
            if end == -1:
                end = total
            if not 0 <= start < end:
                raise DataError(f"{where}: segment must satisfy 0 <= start < end, got {value!r}")
            if end > total + 0.05:
                raise DataError(
                    f"{where}: segment ends at {end:g} s but {paths[rec_id]} lasts {total:.3f} s"
                )
            end = min(end, total)
            audio = paths[rec_id]
            duration = round(end - start, 6)
            extra.update(start=start, end=end)
        else:
            audio = paths[utt_id]
            duration = recording_duration(utt_id)
        utterances.append(
            Utterance(audio=audio, text=text, duration=duration, speaker=speaker, extra=extra)
        )
    return utterances


# --------------------------------------------------------------------------- JSONL


def import_jsonl(path: str | os.PathLike[str], *, normalize: bool = True) -> list[Utterance]:
    """A manifest made elsewhere, checked the way the other importers check their input.

    Every line must parse, every audio file must exist (decoding is left to ``data validate``), and
    the text is normalized (unless ``normalize`` is false) so the result mixes with other imports.
    """
    utterances = read_manifest(path)
    missing = [u.audio for u in utterances if not os.path.isfile(u.audio)]
    if missing:
        raise _missing_error(missing, f"audio files listed in {path} do not exist")
    if normalize:
        for utterance in utterances:
            utterance.text = normalize_text(utterance.text)
    return utterances
