"""Word and character error rates with substitutions, deletions and insertions.

References and hypotheses both go through ``normalize_text`` first, the same normaliser training
used, so formatting ("Dr." vs "doctor", "5" vs "five") never counts as an error.
"""

from __future__ import annotations

from dataclasses import dataclass

import jiwer

from edgeasr.text.normalize import normalize_text


@dataclass
class ErrorCounts:
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    reference_length: int = 0

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float:
        """Error rate in percent (0 when the reference is empty and nothing was inserted)."""
        if self.reference_length == 0:
            return 0.0 if self.errors == 0 else 100.0
        return 100.0 * self.errors / self.reference_length

    def __add__(self, other: "ErrorCounts") -> "ErrorCounts":
        return ErrorCounts(
            self.substitutions + other.substitutions,
            self.deletions + other.deletions,
            self.insertions + other.insertions,
            self.reference_length + other.reference_length,
        )


def _counts(reference: list[str], hypothesis: list[str]) -> ErrorCounts:
    if not reference:
        return ErrorCounts(insertions=len(hypothesis))
    if not hypothesis:
        return ErrorCounts(deletions=len(reference), reference_length=len(reference))
    out = jiwer.process_words(" ".join(reference), " ".join(hypothesis))
    return ErrorCounts(out.substitutions, out.deletions, out.insertions, len(reference))


def word_errors(reference: str, hypothesis: str) -> ErrorCounts:
    return _counts(normalize_text(reference).split(), normalize_text(hypothesis).split())


def char_errors(reference: str, hypothesis: str) -> ErrorCounts:
    """Character errors over the normalised text with spaces removed (words glued together)."""
    ref = list(normalize_text(reference).replace(" ", ""))
    hyp = list(normalize_text(hypothesis).replace(" ", ""))
    return _counts(ref, hyp)


def corpus_errors(references, hypotheses) -> tuple[ErrorCounts, ErrorCounts]:
    """(word errors, character errors) summed over paired references and hypotheses."""
    words, chars = ErrorCounts(), ErrorCounts()
    for reference, hypothesis in zip(references, hypotheses):
        words, chars = words + word_errors(reference, hypothesis), chars + char_errors(reference, hypothesis)
    return words, chars
