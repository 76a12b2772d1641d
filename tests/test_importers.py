"""Importers of LibriSpeech trees, Kaldi data directories and foreign JSONL manifests."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import edgeasr.cli
from edgeasr.data.importers import (
    import_jsonl,
    import_kaldi_dir,
    import_librispeech,
    librispeech_splits,
)
from edgeasr.data.manifest import Utterance, read_manifest, write_manifest
from edgeasr.errors import DataError


def run_cli(monkeypatch: pytest.MonkeyPatch, *argv: object) -> int:
    # The real parser and error handling, built from this feature's command modules only.
    monkeypatch.setattr(edgeasr.cli, "COMMAND_MODULES", ["data", "tokenizer"])
    return edgeasr.cli.main([str(a) for a in argv])


def _audio(path: Path, seconds: float, rate: int = 16000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(path.name))
    samples = rng.uniform(-0.2, 0.2, int(round(seconds * rate))).astype(np.float32)
    sf.write(path, samples, rate, subtype="PCM_16")
    return path


# (speaker, chapter, [(utterance number, seconds, transcript)])
LIBRI = {
    "dev-clean": [
        ("19", "198", [(0, 0.5, "HELLO WORLD"), (1, 0.75, "DON'T STOP AT 21ST STREET")]),
        ("103", "1240", [(0, 1.0, "CHAPTER ONE")]),
    ],
    "test-clean": [("2", "7", [(3, 0.25, "MR SMITH PAID 5 DOLLARS")])],
}


def _librispeech(root: Path) -> Path:
    for split, speakers in LIBRI.items():
        for speaker, chapter, utts in speakers:
            folder = root / "LibriSpeech" / split / speaker / chapter
            lines = []
            for number, seconds, text in utts:
                utt_id = f"{speaker}-{chapter}-{number:04d}"
                _audio(folder / f"{utt_id}.flac", seconds)
                lines.append(f"{utt_id} {text}")
            (folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    return root / "LibriSpeech"


def test_librispeech_single_split(tmp_path: Path) -> None:
    root = _librispeech(tmp_path)
    utterances = import_librispeech(root / "dev-clean")
    # numeric order of speaker folders: 19 before 103
    assert [u.extra["id"] for u in utterances] == ["19-198-0000", "19-198-0001", "103-1240-0000"]
    first, second, third = utterances
    assert first.text == "hello world" and second.text == "don't stop at twenty first street"
    assert first.speaker == "19" and third.speaker == "103"
    assert first.duration == pytest.approx(0.5) and second.duration == pytest.approx(0.75)
    assert first.audio == str(root / "dev-clean" / "19" / "198" / "19-198-0000.flac")
    assert first.extra == {"id": "19-198-0000", "split": "dev-clean"}


def test_librispeech_all_splits_or_some(tmp_path: Path) -> None:
    root = _librispeech(tmp_path)
    assert list(librispeech_splits(root)) == ["dev-clean", "test-clean"]
    assert list(librispeech_splits(tmp_path)) == ["dev-clean", "test-clean"]  # extraction folder
    everything = import_librispeech(root)
    assert len(everything) == 4
    assert {u.extra["split"] for u in everything} == {"dev-clean", "test-clean"}
    only_test = import_librispeech(tmp_path, splits=["test-clean"])
    assert [u.text for u in only_test] == ["mister smith paid five dollars"]
    with pytest.raises(DataError, match="no split named 'train-other'"):
        import_librispeech(root, splits=["train-other"])


def test_librispeech_missing_audio(tmp_path: Path, caplog) -> None:
    root = _librispeech(tmp_path)
    (root / "dev-clean" / "19" / "198" / "19-198-0001.flac").unlink()
    with pytest.raises(DataError) as info:
        import_librispeech(root)
    message = str(info.value)
    assert "19-198.trans.txt:2: audio for 19-198-0001 not found" in message
    assert "--skip-missing" in message

    skipped: list[str] = []
    utterances = import_librispeech(root, strict=False, skipped=skipped)
    assert skipped == ["19-198-0001"] and len(utterances) == 3
    with caplog.at_level(logging.WARNING):
        import_librispeech(root, strict=False)
    assert "1 LibriSpeech transcript lines had no audio" in caplog.text


def test_librispeech_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such directory"):
        import_librispeech(tmp_path / "nothing")
    with pytest.raises(DataError, match="no LibriSpeech transcripts found"):
        import_librispeech(tmp_path)
    root = _librispeech(tmp_path)
    trans = root / "test-clean" / "2" / "7" / "2-7.trans.txt"
    trans.write_text("2-7-0003 FINE\n9-9-0001 WRONG SPEAKER\n")
    with pytest.raises(DataError, match=r"2-7.trans.txt:2: expected '<2-7-NNNN> TEXT'"):
        import_librispeech(root)
    trans.write_text("2-7-0003 FINE\n")
    (root / "test-clean" / "2" / "7" / "2-7-0003.flac").write_bytes(b"not flac")
    with pytest.raises(DataError, match=r"2-7.trans.txt:1: .*2-7-0003.flac: not a readable audio"):
        import_librispeech(root)


def _kaldi(tmp_path: Path, *, segments: bool = False) -> Path:
    data = tmp_path / "data" / "train"
    data.mkdir(parents=True)
    wav = tmp_path / "wav"
    if segments:
        _audio(wav / "rec1.wav", 3.0)
        _audio(wav / "rec2.wav", 2.0)
        (data / "wav.scp").write_text(f"rec1 {wav / 'rec1.wav'}\nrec2 {wav / 'rec2.wav'}\n")
        (data / "segments").write_text(
            "u1 rec1 0.0 1.25\nu2 rec1 1.25 3.0\nu3 rec2 0.5 -1\n"
        )
    else:
        _audio(wav / "u1.wav", 1.0)
        _audio(wav / "u2.wav", 0.5)
        _audio(wav / "u3.wav", 0.25)
        (data / "wav.scp").write_text(
            f"u1 {wav / 'u1.wav'}\nu2 {wav / 'u2.wav'}\n\nu3 {wav / 'u3.wav'}\n"
        )
    (data / "text").write_text("u1 HELLO <noise> THERE\nu2 IT COSTS $3 [laughter]\nu3\n")
    return data


def test_kaldi_plain(tmp_path: Path) -> None:
    data = _kaldi(tmp_path)
    (data / "utt2spk").write_text("u1 alice\nu2 bob\n")
    utterances = import_kaldi_dir(data)
    assert [u.extra["id"] for u in utterances] == ["u1", "u2", "u3"]
    assert [u.text for u in utterances] == ["hello there", "it costs three dollars", ""]
    assert [u.duration for u in utterances] == pytest.approx([1.0, 0.5, 0.25])
    assert [u.speaker for u in utterances] == ["alice", "bob", None]
    assert utterances[0].audio == str(tmp_path / "wav" / "u1.wav")
    raw = import_kaldi_dir(data, normalize=False)
    assert raw[0].text == "HELLO <noise> THERE"


def test_kaldi_segments(tmp_path: Path) -> None:
    utterances = import_kaldi_dir(_kaldi(tmp_path, segments=True))
    u1, u2, u3 = utterances
    assert u1.audio == u2.audio == str(tmp_path / "wav" / "rec1.wav")
    assert (u1.extra["start"], u1.extra["end"], u1.duration) == (0.0, 1.25, 1.25)
    assert (u2.extra["start"], u2.extra["end"], u2.duration) == (1.25, 3.0, 1.75)
    # an end of -1 means "to the end of the recording"
    assert u3.extra["end"] == pytest.approx(2.0) and u3.duration == pytest.approx(1.5)


def test_kaldi_relative_paths(tmp_path: Path, monkeypatch) -> None:
    data = _kaldi(tmp_path)
    (data / "wav.scp").write_text("u1 ../../wav/u1.wav\nu2 wav/u2.wav\nu3 wav/u3.wav\n")
    monkeypatch.chdir(tmp_path)  # "wav/u2.wav" is relative to the recipe folder (cwd)
    utterances = import_kaldi_dir("data/train")
    assert [u.audio for u in utterances] == [str(tmp_path / "wav" / f"u{i}.wav") for i in (1, 2, 3)]


def test_kaldi_pipes_and_archives_are_rejected(tmp_path: Path) -> None:
    data = _kaldi(tmp_path)
    (data / "wav.scp").write_text("u1 /a/u1.wav\nu2 sph2pipe -f wav /a/u2.sph |\n")
    with pytest.raises(DataError) as info:
        import_kaldi_dir(data)
    message = str(info.value)
    assert message.startswith(f"{data / 'wav.scp'}:2: pipe commands are not supported")
    assert "WAV" in message
    (data / "wav.scp").write_text("u1 /a/feats.ark:123\n")
    with pytest.raises(DataError, match=r"wav.scp:1: archive offsets are not supported"):
        import_kaldi_dir(data)


def test_kaldi_inconsistent_directories(tmp_path: Path) -> None:
    data = _kaldi(tmp_path)
    (data / "text").write_text("u1 A\nu2 B\nu3 C\nu4 D\nu5 E\n")
    with pytest.raises(DataError, match=r"2 utterances in .*text have no entry in wav.scp "
                                        r"\(first: u4\)"):
        import_kaldi_dir(data)
    (data / "text").write_text("u2 B\n")
    with pytest.raises(DataError, match=r"2 utterances in .*wav.scp have no transcript in text "
                                        r"\(first: u1\)"):
        import_kaldi_dir(data)
    (data / "text").write_text("u1 A\nu2 B\nu1 C\n")
    with pytest.raises(DataError, match=r"text:3: duplicate id 'u1' \(first on line 1\)"):
        import_kaldi_dir(data)
    (data / "text").write_text("u1 A\nu2 B\nu3 C\n")
    (tmp_path / "wav" / "u2.wav").unlink()
    with pytest.raises(DataError, match=r"wav.scp:2: .*u2.wav: no such file"):
        import_kaldi_dir(data)
    (data / "wav.scp").unlink()
    with pytest.raises(DataError, match=r"not a Kaldi data directory \(wav.scp is missing\)"):
        import_kaldi_dir(data)
    with pytest.raises(DataError, match="no such directory"):
        import_kaldi_dir(tmp_path / "nothing")


def test_kaldi_bad_segments(tmp_path: Path) -> None:
    data = _kaldi(tmp_path, segments=True)
    (data / "segments").write_text("u1 rec1 0.0 1.25\nu2 rec1 2.0 9.0\nu3 rec2 0 1\n")
    with pytest.raises(DataError, match=r"segments:2: segment ends at 9 s but .*lasts 3.000 s"):
        import_kaldi_dir(data)
    (data / "segments").write_text("u1 rec1 0.0 1.25\nu2 rec1 2.0 1.0\nu3 rec2 0 1\n")
    with pytest.raises(DataError, match=r"segments:2: segment must satisfy 0 <= start < end"):
        import_kaldi_dir(data)
    (data / "segments").write_text("u1 rec1 0.0 1.25\nu2 rec9 0 1\nu3 rec2 0 1\n")
    with pytest.raises(DataError, match=r"segments:2: recording 'rec9' is not in"):
        import_kaldi_dir(data)
    (data / "segments").write_text("u1 rec1 0.0 x\nu2 rec1 0 1\nu3 rec2 0 1\n")
    with pytest.raises(DataError, match=r"segments:1: start and end must be seconds"):
        import_kaldi_dir(data)


def test_import_jsonl(tmp_path: Path) -> None:
    _audio(tmp_path / "a.wav", 0.5)
    path = tmp_path / "m.jsonl"
    write_manifest(path, [Utterance("a.wav", "Hello, Dr. Who!", 0.5, extra={"id": "x"})])
    (utterance,) = import_jsonl(path)
    assert utterance.text == "hello doctor who" and utterance.extra == {"id": "x"}
    assert utterance.audio == str(tmp_path / "a.wav")
    assert import_jsonl(path, normalize=False)[0].text == "Hello, Dr. Who!"
    write_manifest(path, [Utterance("a.wav", "a", 0.5), Utterance("gone.wav", "b", 1.0),
                          Utterance("gone2.wav", "c", 1.0)])
    with pytest.raises(DataError, match=r"2 audio files listed in .* do not exist \(first: "):
        import_jsonl(path)


# ----------------------------------------------------------------------------- CLI


def test_cli_import_librispeech(tmp_path: Path, monkeypatch, capsys) -> None:
    root = _librispeech(tmp_path / "corpus")
    out = tmp_path / "manifests" / "dev.jsonl"
    assert run_cli(monkeypatch, "data", "import-librispeech", root, "--splits", "dev-clean",
                   "--out", out, "--relative") == 0
    assert capsys.readouterr().out.startswith(f"wrote 3 utterances (0.00 h, 2 speakers) to {out}")
    first = json.loads(out.read_text().splitlines()[0])
    assert first["audio"] == "../corpus/LibriSpeech/dev-clean/19/198/19-198-0000.flac"
    assert first["speaker"] == "19" and first["id"] == "19-198-0000"
    assert [u.text for u in read_manifest(out)][0] == "hello world"
    assert run_cli(monkeypatch, "data", "validate", out) == 0

    (root / "dev-clean" / "103" / "1240" / "103-1240-0000.flac").unlink()
    assert run_cli(monkeypatch, "data", "import-librispeech", root, "--out", out) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgeasr: error: ") and err.count("\n") == 1
    assert run_cli(monkeypatch, "data", "import-librispeech", root, "--out", out,
                   "--skip-missing") == 0
    captured = capsys.readouterr()
    assert "skipped 1 transcript lines without audio (first: 103-1240-0000)" in captured.err
    assert "wrote 3 utterances" in captured.out


def test_cli_import_kaldi(tmp_path: Path, monkeypatch, capsys) -> None:
    data = _kaldi(tmp_path, segments=True)
    out = tmp_path / "k.jsonl"
    assert run_cli(monkeypatch, "data", "import-kaldi", data, "--out", out) == 0
    assert "wrote 3 utterances" in capsys.readouterr().out
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[1]["start"] == 1.25 and lines[1]["end"] == 3.0 and lines[1]["id"] == "u2"
    assert run_cli(monkeypatch, "data", "validate", out) == 0

    (data / "wav.scp").write_text("rec1 cat x.wav |\n")
    assert run_cli(monkeypatch, "data", "import-kaldi", data, "--out", out) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgeasr: error: ") and "pipe commands" in err and err.count("\n") == 1
