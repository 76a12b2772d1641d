"""Atomic writes: whole files or the old file, never half of one, and no temporaries left over."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from edgeasr import fileio
from edgeasr.fileio import atomic_save_torch, atomic_write, atomic_write_bytes, atomic_write_text


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_lands_whole_and_creates_directories(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "data.bin"
    payload = os.urandom(3 << 20)
    with atomic_write(path) as handle:
        handle.write(payload[:100])
        assert not path.exists()  # nothing under the target name until the write is complete
        handle.write(payload[100:])
    assert path.read_bytes() == payload
    assert os.listdir(path.parent) == ["data.bin"]


def test_replaces_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "f.txt"
    atomic_write_text(path, "old\n")
    atomic_write_text(path, "new\n")
    assert path.read_text() == "new\n"
    assert os.listdir(tmp_path) == ["f.txt"]


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_exception_keeps_the_old_file_and_removes_the_temporary(
    tmp_path: Path, error: BaseException
) -> None:
    path = tmp_path / "keep.bin"
    atomic_write_bytes(path, b"old contents")
    with pytest.raises(type(error)):
        with atomic_write(path) as handle:
            handle.write(b"half of the new")
            raise error
    assert path.read_bytes() == b"old contents"
    assert os.listdir(tmp_path) == ["keep.bin"]


def test_exception_without_an_old_file_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        with atomic_write(tmp_path / "new.bin") as handle:
            handle.write(b"x")
            raise ValueError
    assert os.listdir(tmp_path) == []


def test_bad_encoding_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(LookupError):
        with atomic_write(tmp_path / "t.txt", "w", encoding="no-such-codec"):
            pass
    assert os.listdir(tmp_path) == []


def test_permissions_follow_the_umask_default(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    path = tmp_path / "atomic"
    atomic_write_bytes(path, b"x")
    assert _mode(path) == _mode(plain) == fileio._DEFAULT_PERMISSIONS  # mkstemp alone gives 0600


def test_umask_is_read_correctly() -> None:
    mask = os.umask(0o022)
    os.umask(mask)
    assert fileio._current_umask() == mask
    assert fileio._DEFAULT_PERMISSIONS == 0o666 & ~mask


def test_explicit_permissions(tmp_path: Path) -> None:
    path = tmp_path / "private"
    atomic_write_bytes(path, b"x", permissions=0o600)
    assert _mode(path) == 0o600


def test_text_mode_with_encoding(tmp_path: Path) -> None:
    text = "naïve café – ünïcödé\n"
    path = tmp_path / "t.txt"
    with atomic_write(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    assert path.read_bytes() == text.encode("utf-8")
    atomic_write_text(path, "é", encoding="latin-1")
    assert path.read_bytes() == b"\xe9"


def test_only_write_modes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mode"):
        with atomic_write(tmp_path / "x", "a"):
            pass
    assert os.listdir(tmp_path) == []


def test_atomic_save_torch_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "state.pt"
    state = {"w": torch.arange(6.0).reshape(2, 3), "step": 7}
    atomic_save_torch(path, state)
    loaded = torch.load(path, weights_only=True)
    assert torch.equal(loaded["w"], state["w"]) and loaded["step"] == 7
    assert os.listdir(tmp_path) == ["state.pt"]
