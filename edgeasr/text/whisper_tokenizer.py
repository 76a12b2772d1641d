"""Whisper's byte-level BPE (GPT-2's 50,257 pieces plus special tokens), for its decoder.

edgeasr's own units (characters or a small BPE) are what the CTC head emits; Whisper's decoder
scores and writes text in its own pieces, so the second pass converts between the two through
text: our normalized hypotheses are encoded here, Whisper's output is decoded here and then
normalized (``edgeasr.text.normalize``) back into our alphabet.
"""

from __future__ import annotations

import os
from pathlib import Path

from edgeasr.errors import EdgeAsrError


class WhisperTokenizer:
    def __init__(self, path: str | os.PathLike[str], eot: int = 50256) -> None:
        try:
            from tokenizers import Tokenizer as _HFTokenizer
        except ImportError:  # pragma: no cover - a declared dependency
            raise EdgeAsrError("Whisper's tokenizer needs the tokenizers package: pip install tokenizers") from None
        self.path = Path(path)
        try:
            self._tokenizer = _HFTokenizer.from_file(str(self.path))
        except Exception as error:  # the library raises bare Exceptions for bad files
            raise EdgeAsrError(f"{self.path}: not a tokenizer.json ({str(error).splitlines()[0][:120]})") from None
        #: ids from here up are special tokens (end of text, start of transcript, timestamps...)
        self.eot = eot

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` as Whisper writes it after its prompt: with a leading space."""
        if not text:
            return []
        return self._tokenizer.encode(" " + text.strip(), add_special_tokens=False).ids

    def token_text(self, token: int) -> str:
        """One token's text exactly as it adds it (leading space kept, no stripping)."""
        return self._tokenizer.decode([token])

    def decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode([i for i in ids if i < self.eot]).strip()
