"""JSONL manifests: round trip, path resolution, clear errors, atomic writes, stats, CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import edgeasr.cli
from edgeasr.data.manifest import (
    Utterance,
    iter_manifest,
    iter_manifest_lines,
    manifest_stats,
    read_manifest,
    write_manifest,
)
from edgeasr.errors import DataError


def run_cli(monkeypatch: pytest.MonkeyPatch, *argv: object) -> int:
    # The real parser and error handling, built from this feature's command modules only.
    monkeypatch.setattr(edgeasr.cli, "COMMAND_MODULES", ["data", "tokenizer"])
    return edgeasr.cli.main([str(a) for a in argv])


def _wav(path: Path, seconds: float, rate: int = 16000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = np.random.default_rng(0).uniform(-0.1, 0.1, int(seconds * rate)).astype(np.float32)
    sf.write(path, samples, rate, subtype="PCM_16")
    return path


UTTERANCES = [
    Utterance("audio/a.wav", "hello world", 1.5, "spk1", {"id": "a", "engine": "espeak",
                                                         "voice": {"rate": 1.1}}),
    Utterance("/abs/b.flac", "", 0.0, None, {}),
    Utterance("c.wav", "caf\u00e9 \u2014 unicode", 2, "7", {"source": "x", "n": [1, 2]}),
]


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    assert write_manifest(path, UTTERANCES) == 3
    back = read_manifest(path, resolve_paths=False)
    assert back == UTTERANCES
    assert back[0].extra == {"id": "a", "engine": "espeak", "voice": {"rate": 1.1}}
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert list(first)[:4] == ["audio", "text", "duration", "speaker"]
    assert "speaker" not in json.loads(path.read_text(encoding="utf-8").splitlines()[1])
    assert "caf\u00e9" in path.read_text(encoding="utf-8")  # stored as UTF-8, not \u escapes


def test_relative_paths_resolve_against_the_manifest(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "sub" / "m.jsonl"
    write_manifest(path, UTTERANCES)
    monkeypatch.chdir(tmp_path)  # must not matter
    audio = [u.audio for u in read_manifest(path)]
    assert audio == [str(tmp_path / "sub" / "audio" / "a.wav"), "/abs/b.flac",
                     str(tmp_path / "sub" / "c.wav")]
    assert [u.audio for u in iter_manifest("sub/m.jsonl")] == audio


def test_write_relative_to(tmp_path: Path) -> None:
    folder = tmp_path / "corpus"
    utterances = [Utterance(str(folder / "wav" / "x.wav"), "x", 1.0),
                  Utterance(str(tmp_path / "other" / "y.wav"), "y", 1.0)]
    path = folder / "m.jsonl"
    write_manifest(path, utterances, relative_to=folder)
    stored = [json.loads(line)["audio"] for line in path.read_text().splitlines()]
    assert stored == [os.path.join("wav", "x.wav"), os.path.join("..", "other", "y.wav")]
    assert [u.audio for u in read_manifest(path)] == [u.audio for u in utterances]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "bad JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"text": "a", "duration": 1}', 'missing key "audio"'),
        ('{"audio": "a.wav", "duration": 1}', 'missing key "text"'),
        ('{"audio": "a.wav", "text": "a"}', 'no "duration" and'),  # a.wav does not exist to measure
        ('{"audio": "", "text": "a", "duration": 1}', "non-empty path"),
        ('{"audio": "a.wav", "text": 5, "duration": 1}', '"text" must be a string'),
        ('{"audio": "a.wav", "text": "a", "duration": "1.5"}', "number of seconds"),
        ('{"audio": "a.wav", "text": "a", "duration": true}', "number of seconds"),
        ('{"audio": "a.wav", "text": "a", "duration": -0.5}', "non-negative"),
        ('{"audio": "a.wav", "text": "a", "duration": NaN}', "finite"),
        ('{"audio": "a.wav", "text": "a", "duration": 1, "speaker": [1]}', '"speaker" must be'),
    ],
)
def test_malformed_lines_name_file_line_and_problem(
    tmp_path: Path, line: str, message: str
) -> None:
    path = tmp_path / "m.jsonl"
    good = '{"audio": "a.wav", "text": "a", "duration": 1}'
    path.write_text(f"{good}\n\n{line}\n{good}\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_manifest(path)
    assert str(info.value).startswith(f"{path}:3: ")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_blank_lines_empty_text_and_numeric_speakers(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text('\n  \n{"audio": "a.wav", "text": "", "duration": 3, "speaker": 19}\n\n')
    (utterance,) = read_manifest(path)
    assert utterance.text == "" and utterance.duration == 3.0 and utterance.speaker == "19"


def test_not_utf8_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"audio": "a.wav", "text": "\xff", "duration": 1}\n')
    with pytest.raises(DataError, match=r"m.jsonl:1: not UTF-8"):
        read_manifest(path)
    with pytest.raises(DataError, match="manifest not found"):
        read_manifest(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="is a directory"):
        read_manifest(tmp_path)


def test_iter_manifest_lines_reports_every_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text('{"audio": "a.wav", "text": "a", "duration": 1}\nbad\n\n{"audio": 1}\n')
    items = list(iter_manifest_lines(path))
    assert [number for number, _ in items] == [1, 2, 4]
    assert isinstance(items[0][1], Utterance)
    assert all(isinstance(item, DataError) for _, item in items[1:])


def test_write_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    write_manifest(path, UTTERANCES)
    before = path.read_bytes()

    def broken():
        yield UTTERANCES[0]
        yield Utterance("x.wav", "x", float("nan"))

    with pytest.raises(DataError, match="finite"):
        write_manifest(path, broken())
    assert path.read_bytes() == before  # the old manifest is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.jsonl"]  # no temporary left


def test_extra_cannot_shadow_core_fields() -> None:
    with pytest.raises(DataError, match="overwrite"):
        Utterance("a.wav", "a", 1.0, extra={"text": "other"}).to_dict()


def test_manifest_stats() -> None:
    stats = manifest_stats(UTTERANCES + [Utterance("d.wav", "d", 3600.0, "spk1")])
    assert stats["count"] == 4
    assert stats["speakers"] == 2 and stats["without_speaker"] == 1
    assert stats["hours"] == pytest.approx((1.5 + 0 + 2 + 3600) / 3600)
    assert stats["min_duration"] == 0.0 and stats["max_duration"] == 3600.0
    assert stats["mean_duration"] == pytest.approx(3603.5 / 4)
    empty = manifest_stats([])
    assert empty["count"] == 0 and empty["hours"] == 0 and empty["mean_duration"] == 0


# ----------------------------------------------------------------------------- CLI


def test_cli_stats(tmp_path: Path, monkeypatch, capsys) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_manifest(a, UTTERANCES)
    write_manifest(b, [Utterance("d.wav", "d", 7200.0, "spk9")])
    assert run_cli(monkeypatch, "data", "stats", a, b) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{a}: 3 utterances")
    assert out[2].startswith("total: 4 utterances, 2.00 h, 3 speakers")

    assert run_cli(monkeypatch, "data", "stats", "--json", a) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["manifests"][0]["count"] == 3 and report["total"]["speakers"] == 2


def test_cli_validate(tmp_path: Path, monkeypatch, capsys) -> None:
    _wav(tmp_path / "ok.wav", 1.0)
    _wav(tmp_path / "long.wav", 2.0)
    (tmp_path / "junk.wav").write_bytes(b"this is not audio at all")
    good = tmp_path / "good.jsonl"
    write_manifest(good, [Utterance("ok.wav", "ok", 1.0), Utterance("long.wav", "a", 2.0),
                          Utterance("long.wav", "seg", 0.5, extra={"start": 1.0, "end": 1.5})])
    assert run_cli(monkeypatch, "data", "validate", good) == 0
    assert "0 bad" in capsys.readouterr().out

    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        "\n".join([
            '{"audio": "ok.wav", "text": "fine", "duration": 1.0}',
            '{"audio": "missing.wav", "text": "a", "duration": 1.0}',
            "not json",
            '{"audio": "junk.wav", "text": "a", "duration": 1.0}',
            '{"audio": "long.wav", "text": "a", "duration": 1.0}',
            '{"audio": "long.wav", "text": "a", "duration": 1.0, "start": 2.5, "end": 3.5}',
        ]) + "\n"
    )
    assert run_cli(monkeypatch, "data", "validate", bad) == 2
    captured = capsys.readouterr()
    report = captured.out.splitlines()
    assert [line.split(":")[1] for line in report] == ["2", "3", "4", "5", "6"]
    assert "no such file" in report[0] and "bad JSON" in report[1]
    assert "not a readable audio file" in report[2]
    assert "lasts 2.000 s" in report[3] and "segment ends at 3.5" in report[4]
    assert "6 lines checked, 5 bad" in captured.err


def test_cli_errors_and_help(tmp_path: Path, monkeypatch, capsys) -> None:
    assert run_cli(monkeypatch, "data", "stats", tmp_path / "none.jsonl") == 2
    err = capsys.readouterr().err
    assert err == f"edgeasr: error: {tmp_path / 'none.jsonl'}: manifest not found\n"
    for action in ("stats", "validate", "import-librispeech", "import-kaldi"):
        with pytest.raises(SystemExit) as info:
            run_cli(monkeypatch, "data", action, "--help")
        assert info.value.code == 0
        assert f"usage: edgeasr data {action}" in capsys.readouterr().out
    assert run_cli(monkeypatch, "data") == 2
    assert "usage: edgeasr data" in capsys.readouterr().err


def test_missing_durations_come_from_the_audio_and_wenet_lists_read(tmp_path: Path) -> None:
    sf.write(tmp_path / "a.wav", np.zeros(24000, dtype=np.float32), 16000)
    path = tmp_path / "m.jsonl"
    path.write_text('{"audio": "a.wav", "text": "hello"}\n'
                    '{"key": "utt1", "wav": "a.wav", "txt": "hello world"}\n', encoding="utf-8")
    plain, wenet = read_manifest(path)
    assert plain.duration == pytest.approx(1.5) and wenet.duration == pytest.approx(1.5)
    assert wenet.text == "hello world" and wenet.audio == str(tmp_path / "a.wav")
    assert wenet.extra == {"key": "utt1"}  # the aliases become the core fields, not extras
    assert set(wenet.to_dict()) == {"audio", "text", "duration", "key"}
