"""Tokenizer: WeNet id layout, exact round trip, persistence, and the tokenizer CLI."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

import edgeasr.cli
from edgeasr.data.manifest import Utterance, write_manifest
from edgeasr.errors import DataError
from edgeasr.text.normalize import normalize_text
from edgeasr.text.tokenizer import SOS_EOS, Tokenizer

PASSAGE = """
It was the best of times, it was the worst of times; it was the age of wisdom, it was the age of
foolishness. Mr. Jones paid $3.50 for 2 quarts of milk on the 21st of June, 1984, at 3:30 p.m.
The quick brown fox jumps over the lazy dog. Don't stop believing: we'll meet at o'clock sharp.
Sphinx of black quartz, judge my vow! Jackdaws love my big sphinx of quartz. The five boxing
wizards jump quickly; how vexingly quick daft zebras jump. Pack my box with five dozen liquor jugs.
"""


def _sentences(count: int, seed: int) -> list[str]:
    words = normalize_text(PASSAGE).split() + ["xylophone", "quizzical", "jazz", "zephyr", "o'er"]
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, 14))) for _ in range(count)]


TRAIN = _sentences(400, seed=0)
HELD_OUT = _sentences(200, seed=1) + [
    "q", "z z z", "a", "qwertyuiop asdfghjkl zxcvbnm", "it's", "don't won't can't shan't",
]


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return Tokenizer.train(TRAIN, "bpe", 100, seed=0)


@pytest.fixture(scope="module")
def char() -> Tokenizer:
    return Tokenizer.train(TRAIN, "char")


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_round_trip_is_exact(kind: str, bpe: Tokenizer, char: Tokenizer) -> None:
    tokenizer = bpe if kind == "bpe" else char
    for text in TRAIN + HELD_OUT:
        ids = tokenizer.encode(text)
        assert tokenizer.decode(ids) == text
        assert all(0 < i < tokenizer.eos_id for i in ids), text
        assert tokenizer.unk_id not in ids, text  # every letter of the alphabet is a unit
        assert len(tokenizer.pieces(text)) == len(ids)


def test_wenet_id_layout(bpe: Tokenizer, char: Tokenizer) -> None:
    for tokenizer in (bpe, char):
        assert tokenizer.blank_id == 0 and tokenizer.id_to_piece(0) == "<blank>"
        assert tokenizer.unk_id == 1 and tokenizer.id_to_piece(1) == "<unk>"
        assert tokenizer.sos_id == tokenizer.eos_id == tokenizer.vocab_size - 1
        assert tokenizer.id_to_piece(tokenizer.eos_id) == SOS_EOS
        assert len(set(tokenizer.units)) == tokenizer.vocab_size
    assert bpe.vocab_size == 100
    # char: blank, unk, word boundary, apostrophe, 26 letters, sos/eos
    assert char.vocab_size == 31
    assert char.pieces("a b'c") == ["a", "\u2581", "b", "'", "c"]


def test_bpe_learns_multi_character_pieces(bpe: Tokenizer) -> None:
    text = "it was the best of times"
    assert len(bpe.encode(text)) < len(text)
    assert any(len(piece) > 2 for piece in bpe.pieces(text))


def test_decode_skips_specials_and_checks_range(bpe: Tokenizer) -> None:
    ids = bpe.encode("the age of wisdom")
    noisy = [0, *ids[:2], bpe.eos_id, 0, 0, *ids[2:], bpe.unk_id, bpe.eos_id]
    assert bpe.decode(noisy) == "the age of wisdom"
    assert bpe.decode([]) == ""
    with pytest.raises(ValueError):
        bpe.decode([bpe.vocab_size])
    with pytest.raises(ValueError):
        bpe.id_to_piece(-1)


def test_encode_normalizes_raw_text(bpe: Tokenizer, char: Tokenizer) -> None:
    for tokenizer in (bpe, char):
        assert tokenizer.decode(tokenizer.encode("Mr. Jones, 21st!")) == "mister jones twenty first"


def test_training_is_deterministic() -> None:
    a = Tokenizer.train(TRAIN, "bpe", 80, seed=3)
    b = Tokenizer.train(TRAIN, "bpe", 80, seed=3)
    assert a.units == b.units
    assert all(a.encode(t) == b.encode(t) for t in HELD_OUT)


def test_training_normalizes_its_text() -> None:
    tokenizer = Tokenizer.train(["HELLO World 42", "MR. SMITH"], "char")
    assert tokenizer.vocab_size == 31  # nothing beyond the normalized alphabet
    assert tokenizer.decode(tokenizer.encode("Hello")) == "hello"


def test_vocab_too_small_is_a_clear_error() -> None:
    with pytest.raises(DataError, match="too small.*at least 31"):
        Tokenizer.train(TRAIN, "bpe", 20)


def test_vocab_too_large_shrinks_with_a_warning() -> None:
    with pytest.warns(UserWarning, match="supports only"):
        tokenizer = Tokenizer.train(["tiny text"], "bpe", 5000)
    assert 31 <= tokenizer.vocab_size < 5000
    assert tokenizer.decode(tokenizer.encode("tiny text")) == "tiny text"
    assert tokenizer.decode(tokenizer.encode("jazz")) == "jazz"


def test_empty_training_text_and_bad_kind() -> None:
    with pytest.raises(DataError, match="no text"):
        Tokenizer.train(["", "...", "  "], "bpe", 64)
    with pytest.raises(DataError, match="kind"):
        Tokenizer.train(TRAIN, "wordpiece", 64)


def test_training_is_silent(capfd: pytest.CaptureFixture[str]) -> None:
    Tokenizer.train(TRAIN, "bpe", 60)
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_save_and_load(tmp_path: Path, kind: str, bpe: Tokenizer, char: Tokenizer) -> None:
    tokenizer = bpe if kind == "bpe" else char
    tokenizer.save(tmp_path / "tok")
    names = sorted(p.name for p in (tmp_path / "tok").iterdir())
    assert names == (["bpe.model", "tokenizer.json", "units.txt"] if kind == "bpe"
                     else ["tokenizer.json", "units.txt"])
    meta = json.loads((tmp_path / "tok" / "tokenizer.json").read_text())
    assert meta["kind"] == kind and meta["vocab_size"] == tokenizer.vocab_size
    assert meta["eos_id"] == tokenizer.vocab_size - 1
    loaded = Tokenizer.load(tmp_path / "tok")
    assert loaded.kind == kind and loaded.units == tokenizer.units
    for text in HELD_OUT:
        assert loaded.encode(text) == tokenizer.encode(text)


def test_load_errors(tmp_path: Path, bpe: Tokenizer) -> None:
    with pytest.raises(DataError, match="not found"):
        Tokenizer.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="tokenizer.json: not found"):
        Tokenizer.load(tmp_path / "empty")

    folder = tmp_path / "tok"
    bpe.save(folder)
    meta_path = folder / "tokenizer.json"
    meta = json.loads(meta_path.read_text())

    meta_path.write_text("{not json")
    with pytest.raises(DataError, match="not a readable"):
        Tokenizer.load(folder)
    meta_path.write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(DataError, match="version 99"):
        Tokenizer.load(folder)
    meta_path.write_text(json.dumps({**meta, "vocab_size": 7}))
    with pytest.raises(DataError, match="does not match"):
        Tokenizer.load(folder)
    meta_path.write_text(json.dumps(meta))
    (folder / "bpe.model").write_bytes(b"garbage")
    with pytest.raises(DataError, match="sentencepiece model"):
        Tokenizer.load(folder)
    (folder / "bpe.model").unlink()
    with pytest.raises(DataError, match="bpe.model"):
        Tokenizer.load(folder)


# ----------------------------------------------------------------------------- CLI


def run_cli(monkeypatch: pytest.MonkeyPatch, *argv: str) -> int:
    # Build the real parser from this feature's command modules only, so these tests do not
    # depend on every other subcommand module being importable.
    monkeypatch.setattr(edgeasr.cli, "COMMAND_MODULES", ["data", "tokenizer"])
    return edgeasr.cli.main([str(a) for a in argv])


def _manifest(tmp_path: Path) -> Path:
    path = tmp_path / "train.jsonl"
    write_manifest(
        path, [Utterance(f"a{i}.wav", text, 1.0) for i, text in enumerate(TRAIN)]
    )
    return path


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_cli_train_and_encode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    manifest = _manifest(tmp_path)
    out = tmp_path / "tok"
    code = run_cli(monkeypatch, "tokenizer", "train", "--manifest", manifest, "--manifest",
                   manifest, "--kind", kind, "--vocab-size", "90", "--out", out)
    assert code == 0
    assert f"{kind} tokenizer" in capsys.readouterr().out
    tokenizer = Tokenizer.load(out)
    assert tokenizer.kind == kind

    assert run_cli(monkeypatch, "tokenizer", "encode", "--model", out, "Mr.", "Jones", "42") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split(None, 1)[1] == "mister jones forty two"
    ids = [int(i) for i in lines[2].split()[1:]]
    assert ids == tokenizer.encode("mister jones forty two")
    assert lines[1].split()[1:] == tokenizer.pieces("mister jones forty two")


def test_cli_errors_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(monkeypatch, "tokenizer", "encode", "--model", tmp_path / "nope", "hi") == 2
    err = capsys.readouterr().err
    assert err.startswith("edgeasr: error: ") and err.count("\n") == 1 and "nope" in err

    manifest = _manifest(tmp_path)
    assert run_cli(monkeypatch, "tokenizer", "train", "--manifest", manifest, "--vocab-size",
                   "10", "--out", tmp_path / "t") == 2
    err = capsys.readouterr().err
    assert err.startswith("edgeasr: error: ") and "too small" in err and err.count("\n") == 1

    assert run_cli(monkeypatch, "tokenizer", "train", "--manifest", tmp_path / "x.jsonl",
                   "--out", tmp_path / "t") == 2
    assert "manifest not found" in capsys.readouterr().err


def test_cli_help(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["tokenizer", "--help"], ["tokenizer", "train", "--help"],
                 ["tokenizer", "encode", "--help"]):
        with pytest.raises(SystemExit) as exit_info:
            run_cli(monkeypatch, *argv)
        assert exit_info.value.code == 0
        assert "usage: edgeasr tokenizer" in capsys.readouterr().out
    assert run_cli(monkeypatch, "tokenizer") == 2
    assert "usage: edgeasr tokenizer" in capsys.readouterr().err

