"""Atomic file writes: a file is either its old self or its complete new self, never half of one.

edgeasr writes files from jobs that run for hours and get killed (corpus synthesis, feature
caching, training), and its readers rely on "the file exists, so it is complete": a resumed corpus
build reuses every WAV it finds, a resumed feature build skips every shard it finds, ``latest``
names the newest checkpoint there is. A half-written WAV decodes "successfully" as a shorter clip
and a half-written checkpoint or manifest fails only later and far away, so every such file is
written to a temporary file in the target's own directory (same file system, so the rename is
atomic), flushed to disk, and renamed over the target only once it is whole. A kill or crash before
the rename leaves the old file (or no file) and at most a temporary ``.<name>.<random>.tmp``;
an exception inside the write removes the temporary file.

``atomic_write`` is the one implementation; the helpers below cover the common cases.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_save_torch"]


def _current_umask() -> int:
    """The process umask, read without changing it where the kernel allows (Linux >= 4.7).

    ``os.umask`` can only be read by setting it, which races with threads creating files; that
    fallback is used only where /proc does not report it, and only once, at import time.
    """
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp creates 0600 files; finished files get the permissions a plain open() would give.
_DEFAULT_PERMISSIONS = 0o666 & ~_current_umask()


@contextmanager
def atomic_write(
    path: str | os.PathLike[str],
    mode: str = "wb",
    *,
    encoding: str | None = None,
    fsync: bool = True,
    permissions: int | None = None,
) -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on success it replaces ``path`` in one rename.

    ``mode`` is "wb" or "w" (text, with ``encoding``). The parent directory is created if needed.
    On normal exit the data is flushed (and fsynced unless ``fsync=False``), the file gets
    ``permissions`` (default: what ``open()`` would give under the umask) and is renamed over
    ``path``. On any exception, KeyboardInterrupt included, the temporary file is removed, ``path``
    is left as it was, and the exception propagates.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write: mode must be 'w' or 'wb', got {mode!r}")
    if mode == "wb" and encoding is not None:
        raise ValueError("atomic_write: binary mode takes no encoding")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        binary = os.fdopen(handle, "wb")
        try:
            temp = binary if mode == "wb" else io.TextIOWrapper(binary, encoding=encoding)
        except BaseException:  # e.g. an unknown encoding
            binary.close()
            raise
        with temp:
            yield temp
            temp.flush()
            if fsync:
                os.fsync(temp.fileno())
        os.chmod(temp_name, _DEFAULT_PERMISSIONS if permissions is None else permissions)
        os.replace(temp_name, path)
    except BaseException:
        try:
            os.unlink(temp_name)
        except FileNotFoundError:
            pass
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, **options: Any) -> None:
    """Write ``data`` to ``path`` atomically (``options`` as for ``atomic_write``)."""
    with atomic_write(path, "wb", **options) as handle:
        handle.write(data)


def atomic_write_text(
    path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8", **options: Any
) -> None:
    """Write ``text`` to ``path`` atomically, UTF-8 unless told otherwise."""
    with atomic_write(path, "w", encoding=encoding, **options) as handle:
        handle.write(text)


def atomic_save_torch(path: str | os.PathLike[str], obj: Any, **options: Any) -> None:
    """``torch.save(obj)`` to ``path`` atomically."""
    import torch  # here, not at the top: most users of this module never need torch

    with atomic_write(path, "wb", **options) as handle:
        torch.save(obj, handle)
