"""Output units of the recognizer: characters or sentencepiece BPE pieces.

The id layout follows WeNet so that CTC, the attention decoder and exported models agree on it
without extra configuration: ``<blank>`` is 0 (the CTC blank), ``<unk>`` is 1, the real units come
next, and ``<sos/eos>`` is the last id (``vocab_size - 1``). For BPE the sentencepiece model is
trained with ``<blank>`` as its pad piece at id 0 and ``<unk>`` at id 1, so sentencepiece ids *are*
our ids and no translation table can drift out of sync; ``<sos/eos>`` is appended after them.

A tokenizer directory holds ``tokenizer.json`` (kind, ids, format version), ``units.txt``
(WeNet-style "piece id" lines, the authoritative unit list for the char kind) and, for BPE,
``bpe.model``.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

from edgeasr.errors import DataError
from edgeasr.fileio import atomic_write_bytes
from edgeasr.text.normalize import TEXT_ALPHABET, is_normalized, normalize_text

__all__ = ["Tokenizer", "BLANK", "UNK", "SOS_EOS", "SPACE"]

BLANK = "<blank>"
UNK = "<unk>"
SOS_EOS = "<sos/eos>"
#: How a word boundary is spelled inside pieces (sentencepiece's meta symbol).
SPACE = "\u2581"

_FORMAT = "edgeasr-tokenizer"
_FORMAT_VERSION = 1
_KINDS = ("bpe", "char")
_META = "tokenizer.json"
_UNITS = "units.txt"
_BPE_MODEL = "bpe.model"
# Characters every tokenizer must be able to spell, whatever the training text happened to contain:
# a BPE trained on text without a "q" would otherwise map "q" to <unk> forever.
_REQUIRED_CHARS = sorted(set(TEXT_ALPHABET) - {" "})


def _import_sentencepiece():  # noqa: ANN202 - module object
    try:
        import sentencepiece
    except ImportError as error:  # pragma: no cover - a declared dependency
        raise DataError(
            "the bpe tokenizer needs the sentencepiece package: pip install sentencepiece"
        ) from error
    return sentencepiece


class Tokenizer:
    """Maps normalized text to unit ids and back: ``decode(encode(t)) == t`` for normalized t."""

    blank_id: int = 0
    unk_id: int = 1

    def __init__(self, kind: str, units: Sequence[str], model_proto: bytes | None = None) -> None:
        """Build from a complete unit list (``<blank>``, ``<unk>``, ..., ``<sos/eos>``).

        Use ``Tokenizer.train`` or ``Tokenizer.load``; this constructor is their common ground.
        """
        if kind not in _KINDS:
            raise DataError(f"unknown tokenizer kind {kind!r}; expected one of {', '.join(_KINDS)}")
        units = list(units)
        if len(units) < 4 or units[0] != BLANK or units[1] != UNK or units[-1] != SOS_EOS:
            raise DataError(
                f"tokenizer units must start with {BLANK}, {UNK} and end with {SOS_EOS}"
            )
        if len(set(units)) != len(units):
            raise DataError("tokenizer units contain duplicates")
        self.kind = kind
        self._units = units
        self._piece_to_id = {piece: i for i, piece in enumerate(units)}
        self._model_proto = model_proto
        self._sp = None
        if kind == "bpe":
            if model_proto is None:
                raise DataError("a bpe tokenizer needs its sentencepiece model")
            spm = _import_sentencepiece()
            processor = spm.SentencePieceProcessor()
            try:
                processor.LoadFromSerializedProto(model_proto)
            except Exception as error:  # sentencepiece raises plain RuntimeError/OSError
                raise DataError(f"cannot read the sentencepiece model: {error}") from error
            sp_units = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
            if sp_units[2:] != units[2:-1] or processor.pad_id() != 0 or processor.unk_id() != 1:
                raise DataError("the sentencepiece model does not match the tokenizer's units")
            self._sp = processor

    # ------------------------------------------------------------------ ids and pieces
    @property
    def vocab_size(self) -> int:
        return len(self._units)

    @property
    def sos_id(self) -> int:
        return len(self._units) - 1

    @property
    def eos_id(self) -> int:
        return len(self._units) - 1

    @property
    def units(self) -> list[str]:
        """Every piece, indexed by id (a copy)."""
        return list(self._units)

    def id_to_piece(self, i: int) -> str:
        if not 0 <= i < len(self._units):
            raise ValueError(f"token id {i} is outside the vocabulary (size {len(self._units)})")
        return self._units[i]

    def piece_to_id(self, piece: str) -> int:
        return self._piece_to_id.get(piece, self.unk_id)

    def __len__(self) -> int:
        return len(self._units)

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size})"

    # ------------------------------------------------------------------ encode / decode
    @staticmethod
    def _prepare(text: str) -> str:
        # Raw text would turn every capital letter and digit into <unk>; normalizing here means a
        # caller cannot get that wrong, and normalized text (the common case) skips the work.
        return text if is_normalized(text) else normalize_text(text)

    def pieces(self, text: str) -> list[str]:
        """The pieces ``encode`` would produce, for inspection and debugging."""
        text = self._prepare(text)
        if self._sp is not None:
            return list(self._sp.encode(text, out_type=str))
        return [SPACE if ch == " " else ch for ch in text]

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``; never ``blank_id`` or ``eos_id``, ``unk_id`` only for unknown units."""
        text = self._prepare(text)
        if self._sp is not None:
            return list(self._sp.encode(text, out_type=int))
        lookup = self._piece_to_id
        return [lookup.get(SPACE if ch == " " else ch, self.unk_id) for ch in text]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; ``<blank>``, ``<sos/eos>`` and ``<unk>`` (no spelling) are skipped."""
        skip = (self.blank_id, self.unk_id, self.eos_id)
        size = len(self._units)
        parts = []
        for raw in ids:
            i = int(raw)
            if i in skip:
                continue
            if not 0 <= i < size:
                raise ValueError(f"token id {i} is outside the vocabulary (size {size})")
            parts.append(self._units[i])
        return " ".join("".join(parts).replace(SPACE, " ").split())

    # ------------------------------------------------------------------ training
    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        kind: str = "bpe",
        vocab_size: int = 256,
        *,
        seed: int = 0,
    ) -> Tokenizer:
        """Train on ``texts`` (normalized first where they are not).

        ``vocab_size`` counts every id, specials included, and applies to BPE only: the char kind
        always holds the whole text alphabet, so any normalized text encodes without ``<unk>``.
        When the text is too small for the requested BPE size, sentencepiece stops early and the
        tokenizer is smaller (a warning says so) rather than failing.
        """
        if kind not in _KINDS:
            raise DataError(f"unknown tokenizer kind {kind!r}; expected one of {', '.join(_KINDS)}")
        lines = [line for line in (cls._prepare(t) for t in texts) if line]
        if not lines:
            raise DataError("no text to train the tokenizer on (every transcript is empty)")
        chars = sorted(set(_REQUIRED_CHARS).union(*(set(line) for line in lines)) - {" "})
        if kind == "char":
            return cls("char", [BLANK, UNK, SPACE, *chars, SOS_EOS])
        return cls._train_bpe(lines, chars, vocab_size, seed)

    @classmethod
    def _train_bpe(
        cls, lines: list[str], chars: list[str], vocab_size: int, seed: int
    ) -> Tokenizer:
        minimum = len(chars) + 4  # the characters, the word-boundary piece, three specials
        if not isinstance(vocab_size, int) or vocab_size < minimum:
            raise DataError(
                f"vocab_size {vocab_size} is too small for a bpe tokenizer on this text: it needs "
                f"at least {minimum} ({len(chars)} characters, the word boundary, "
                f"{BLANK}, {UNK}, {SOS_EOS})"
            )
        spm = _import_sentencepiece()
        if hasattr(spm, "set_random_generator_seed"):
            spm.set_random_generator_seed(seed)
        # One extra line guarantees every alphabet character gets a piece even if the corpus
        # lacks it; among thousands of transcripts it does not change the merges measurably.
        corpus = [*lines, " ".join(chars)]
        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(corpus),
                model_writer=model,
                model_type="bpe",
                vocab_size=vocab_size - 1,  # <sos/eos> is ours, appended after sentencepiece's ids
                character_coverage=1.0,
                pad_id=0,
                pad_piece=BLANK,
                unk_id=1,
                unk_piece=UNK,
                bos_id=-1,
                eos_id=-1,
                # The text is normalized already; sentencepiece's own NFKC must not change it, or
                # decode(encode(text)) would stop being the identity.
                normalization_rule_name="identity",
                hard_vocab_limit=False,
                num_threads=1,
                input_sentence_size=0,
                shuffle_input_sentence=False,
                max_sentence_length=1 << 16,
                minloglevel=2,  # sentencepiece is chatty on stderr
            )
        except RuntimeError as error:
            raise DataError(f"sentencepiece could not train a bpe tokenizer: {error}") from error
        proto = model.getvalue()
        processor = spm.SentencePieceProcessor()
        processor.LoadFromSerializedProto(proto)
        pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
        tokenizer = cls("bpe", [*pieces, SOS_EOS], proto)
        if tokenizer.vocab_size < vocab_size:
            warnings.warn(
                f"the training text supports only {tokenizer.vocab_size} bpe units; "
                f"asked for {vocab_size}",
                stacklevel=3,  # the caller of Tokenizer.train
            )
        return tokenizer

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write the tokenizer into ``directory`` (created if needed); each file atomically."""
        folder = Path(directory)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise DataError(f"{folder}: cannot create the tokenizer directory: {error}") from error
        meta = {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "kind": self.kind,
            "vocab_size": self.vocab_size,
            "blank_id": self.blank_id,
            "unk_id": self.unk_id,
            "sos_id": self.sos_id,
            "eos_id": self.eos_id,
            "units": _UNITS,
        }
        if self.kind == "bpe":
            assert self._model_proto is not None
            atomic_write_bytes(folder / _BPE_MODEL, self._model_proto)
            meta["model"] = _BPE_MODEL
        units = "".join(f"{piece} {i}\n" for i, piece in enumerate(self._units))
        atomic_write_bytes(folder / _UNITS, units.encode("utf-8"))
        # The metadata goes last: a directory with tokenizer.json is a complete tokenizer.
        atomic_write_bytes(folder / _META, (json.dumps(meta, indent=2) + "\n").encode("utf-8"))

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> "Tokenizer":
        """Read a tokenizer written by ``save``; any problem is a ``DataError`` naming the file."""
        folder = Path(directory)
        meta_path = folder / _META
        if not folder.is_dir():
            raise DataError(f"{folder}: tokenizer directory not found")
        if not meta_path.is_file():
            raise DataError(f"{meta_path}: not found; is {folder} a tokenizer directory?")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise DataError(
                f"{meta_path}: not a readable tokenizer description: {error}"
            ) from error
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            raise DataError(f"{meta_path}: not an edgeasr tokenizer description")
        if meta.get("version") != _FORMAT_VERSION:
            raise DataError(
                f"{meta_path}: tokenizer format version {meta.get('version')!r} is not supported "
                f"(this edgeasr reads version {_FORMAT_VERSION})"
            )
        kind = meta.get("kind")
        units_path = _inside(folder, meta.get("units", _UNITS), meta_path)
        try:
            lines = units_path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise DataError(f"{units_path}: cannot read the tokenizer units: {error}") from error
        units = []
        for number, line in enumerate(lines, 1):
            piece, _, index = line.rpartition(" ")
            if not piece or not index.isdigit() or int(index) != len(units):
                raise DataError(f"{units_path}:{number}: expected '<piece> {len(units)}'")
            units.append(piece)
        if meta.get("vocab_size") != len(units):
            raise DataError(
                f"{meta_path}: vocab_size {meta.get('vocab_size')} does not match the "
                f"{len(units)} units in {units_path.name}"
            )
        proto = None
        if kind == "bpe":
            model_path = _inside(folder, meta.get("model", _BPE_MODEL), meta_path)
            try:
                proto = model_path.read_bytes()
            except OSError as error:
                raise DataError(f"{model_path}: cannot read the bpe model: {error}") from error
        try:
            return cls(str(kind), units, proto)
        except DataError as error:
            raise DataError(f"{folder}: {error}") from error


def _inside(folder: Path, name: object, meta_path: Path) -> Path:
    """A file the tokenizer description names, refused when it would lie outside the folder
    (a model directory from elsewhere must not make us read arbitrary files)."""
    path = (folder / str(name)).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise DataError(f"{meta_path}: names a file outside the tokenizer directory ({name})")
    return path
