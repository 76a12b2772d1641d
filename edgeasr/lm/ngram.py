"""Word n-gram language models: interpolated modified Kneser-Ney, count pruning, ARPA files.

Why our own: KenLM's ``lmplz`` is not installable here as a wheel, and a few hundred thousand
sentences train in seconds in Python. The model is written as a standard ARPA file (read by
KenLM, flashlight and sherpa-onnx alike) and queried here with plain dictionaries.

Estimation (Chen & Goodman's modified Kneser-Ney, interpolated, as KenLM does it):
- the highest order and n-grams that start with ``<s>`` use raw counts; every lower order uses
  continuation counts (how many distinct words precede the n-gram);
- three discounts per order (for counts 1, 2, 3+) come from the counts of counts;
- unigrams are interpolated with a uniform distribution over the vocabulary plus ``<unk>``, so an
  unseen word has a small, finite probability.
Pruning drops rare n-grams of order 2 and up (``min_counts``) but keeps every n-gram that a kept
higher one needs as its context or its suffix; back-off weights are then recomputed so that every
context's distribution still sums to one (``test_lm`` checks it exhaustively).
"""

from __future__ import annotations

import gzip
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from edgeasr.errors import EdgeAsrError

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
#: ARPA's "impossible" log10 probability (used for <s>, which is never predicted)
LOG10_ZERO = -99.0
LN10 = math.log(10.0)


def _open_text(path: Path, mode: str = "rt"):
    return gzip.open(path, mode, encoding="utf-8") if path.suffix == ".gz" else open(path, mode, encoding="utf-8")


@dataclass
class NgramLM:
    """An n-gram back-off model: ``probs[n][ngram] = log10 p`` and ``backoffs[n][context] = log10 bow``.

    ``ngram`` and ``context`` are tuples of words; order-1 keys are 1-tuples."""

    order: int
    probs: list[dict] = field(default_factory=list)
    backoffs: list[dict] = field(default_factory=list)
    #: "word", or "char": the model's words are characters, "_" standing for a space
    unit: str = "word"

    def cached(self, name: str, build):
        """A value derived from the model (e.g. a search's look-ahead table), built once per model."""
        store = self.__dict__.setdefault("_derived", {})
        if name not in store:
            store[name] = build()
        return store[name]

    def __post_init__(self) -> None:
        while len(self.probs) <= self.order:
            self.probs.append({})
        while len(self.backoffs) <= self.order:
            self.backoffs.append({})

    # --- queries -------------------------------------------------------------------------------

    @property
    def vocabulary(self) -> set[str]:
        return {gram[0] for gram in self.probs[1]}

    def log10_prob(self, context: Sequence[str], word: str) -> float:
        """log10 P(word | context), backing off through shorter contexts (an unknown word is <unk>)."""
        if (word,) not in self.probs[1]:
            word = UNK
        context = tuple(context)[-(self.order - 1):] if self.order > 1 else ()
        penalty = 0.0
        while True:
            gram = context + (word,)
            value = self.probs[len(gram)].get(gram)
            if value is not None:
                return penalty + value
            penalty += self.backoffs[len(context)].get(context, 0.0)
            context = context[1:]

    def advance(self, context: tuple[str, ...], word: str) -> tuple[float, tuple[str, ...]]:
        """(log10 P(word | context), the state after it) in one walk: the state is the longest
        n-gram that matched, trimmed to the model's context length (its suffixes are in the model
        too, so it equals ``state_after``)."""
        if (word,) not in self.probs[1]:
            word = UNK
        keep = self.order - 1
        context = context[-keep:] if keep else ()
        penalty = 0.0
        probs, backoffs = self.probs, self.backoffs
        while True:
            gram = context + (word,)
            value = probs[len(gram)].get(gram)
            if value is not None:
                return penalty + value, (gram[-keep:] if keep and len(gram) > keep else (gram if keep else ()))
            penalty += backoffs[len(context)].get(context, 0.0)
            context = context[1:]

    def log_prob(self, context: Sequence[str], word: str) -> float:
        """Natural-log P(word | context)."""
        return self.log10_prob(context, word) * LN10

    def state_after(self, context: Sequence[str], word: str) -> tuple[str, ...]:
        """The context to keep after ``word``: the longest suffix the model still knows, so two
        histories that the model cannot tell apart share one state (and one beam)."""
        if (word,) not in self.probs[1]:
            word = UNK
        state = (tuple(context) + (word,))[-(self.order - 1):] if self.order > 1 else ()
        while state and state not in self.backoffs[len(state)] and state not in self.probs[len(state)]:
            state = state[1:]
        return state

    def sentence_log10_prob(self, words: Sequence[str]) -> float:
        context: tuple[str, ...] = (BOS,)
        total = 0.0
        for word in list(words) + [EOS]:
            total += self.log10_prob(context, word)
            context = self.state_after(context, word)
        return total

    def perplexity(self, sentences: Iterable[Sequence[str]]) -> float:
        total, count = 0.0, 0
        for words in sentences:
            total += self.sentence_log10_prob(words)
            count += len(words) + 1
        return 10 ** (-total / max(count, 1))

    def counts(self) -> list[int]:
        return [len(self.probs[n]) for n in range(1, self.order + 1)]

    # --- ARPA ----------------------------------------------------------------------------------

    def write_arpa(self, path: str | os.PathLike[str]) -> Path:
        """Write the standard ARPA text format (gzip-compressed when the name ends in .gz)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with _open_text(path, "wt") as out:
            out.write("\n\\data\\\n")
            for n in range(1, self.order + 1):
                out.write(f"ngram {n}={len(self.probs[n])}\n")
            for n in range(1, self.order + 1):
                out.write(f"\n\\{n}-grams:\n")
                backoffs = self.backoffs[n] if n < self.order else {}
                for gram in sorted(self.probs[n]):
                    line = f"{self.probs[n][gram]:.6f}\t{' '.join(gram)}"
                    if gram in backoffs:
                        line += f"\t{backoffs[gram]:.6f}"
                    out.write(line + "\n")
            out.write("\n\\end\\\n")
        return path

    @classmethod
    def read_arpa(cls, path: str | os.PathLike[str]) -> "NgramLM":
        path = Path(path)
        if not path.is_file():
            raise EdgeAsrError(f"{path}: no such language model file")
        declared: dict[int, int] = {}
        probs: list[dict] = [{}]
        backoffs: list[dict] = [{}]
        section = 0
        try:
            with _open_text(path) as lines:
                for number, raw in enumerate(lines, 1):
                    line = raw.strip()
                    if not line:
                        continue
                    if line.startswith("ngram ") and section == 0:
                        n, count = line[6:].split("=")
                        declared[int(n)] = int(count)
                    elif line.startswith("\\") and line.endswith("-grams:"):
                        section = int(line[1:].split("-")[0])
                        while len(probs) <= section:
                            probs.append({})
                            backoffs.append({})
                    elif line == "\\end\\":
                        break
                    elif section:
                        parts = line.split()
                        if len(parts) < section + 1:
                            raise EdgeAsrError(f"{path}:{number}: not a {section}-gram line")
                        gram = tuple(parts[1 : section + 1])
                        probs[section][gram] = float(parts[0])
                        if len(parts) > section + 1:
                            backoffs[section][gram] = float(parts[section + 1])
        except (OSError, UnicodeDecodeError, ValueError, EOFError) as error:
            raise EdgeAsrError(f"{path}: not a readable ARPA language model ({error})") from None
        order = max(declared or {0: 0})
        if not order:
            raise EdgeAsrError(f"{path}: not an ARPA language model (no \\data\\ section)")
        while len(probs) <= order:
            probs.append({})
            backoffs.append({})
        for n, count in declared.items():
            if len(probs[n]) != count:
                raise EdgeAsrError(f"{path}: declares {count} {n}-grams but holds {len(probs[n])} (truncated?)")
        if (UNK,) not in probs[1]:
            probs[1][(UNK,)] = min(probs[1].values())  # ARPA files without <unk>: the rarest word's
        # a character model's "words" are single characters ("_" for the space)
        unit = "char" if all(len(g[0]) == 1 or g[0] in (BOS, EOS, UNK) for g in probs[1]) else "word"
        return cls(order=order, probs=probs, backoffs=backoffs, unit=unit)


# --- estimation ------------------------------------------------------------------------------------


def _discounts(adjusted: dict) -> tuple[float, float, float]:
    """Modified Kneser-Ney discounts (D1, D2, D3+) from the counts of counts of one order."""
    of_count = [0] * 5
    for count in adjusted.values():
        if count <= 4:
            of_count[count] += 1
    t1, t2, t3, t4 = of_count[1:]
    if min(t1, t2, t3, t4) == 0:  # too little text for the estimate: the usual fallbacks
        return 0.5, 1.0, 1.5
    y = t1 / (t1 + 2 * t2)
    d1, d2, d3 = 1 - 2 * y * t2 / t1, 2 - 3 * y * t3 / t2, 3 - 4 * y * t4 / t3
    return max(d1, 0.01), min(max(d2, 0.01), 2.0), min(max(d3, 0.01), 3.0)


def train_ngram(sentences: Iterable[Sequence[str]], order: int = 3,
                min_counts: Sequence[int] | None = None) -> NgramLM:
    """Estimate an interpolated modified Kneser-Ney model from sentences (lists of words).

    ``min_counts[n-1]``: n-grams of order n seen fewer times are pruned (orders 2 and up;
    default 1 = keep all of them, 2 for the highest order of a 4-gram)."""
    if order < 1:
        raise EdgeAsrError("--order must be at least 1")
    min_counts = list(min_counts) if min_counts is not None else [1] * order
    if len(min_counts) != order or any(c < 1 for c in min_counts):
        raise EdgeAsrError(f"--prune needs {order} counts of at least 1, one per order (e.g. 1,1,2)")
    raw: list[dict] = [defaultdict(int) for _ in range(order + 1)]
    for words in sentences:
        tokens = [BOS, *words, EOS]
        for end in range(1, len(tokens)):
            for n in range(1, min(order, end + 1) + 1):
                raw[n][tuple(tokens[end - n + 1 : end + 1])] += 1
    if not raw[1]:
        raise EdgeAsrError("no text to train a language model on")
    # Adjusted counts: raw for the top order and for n-grams starting with <s>; otherwise the
    # number of distinct words seen before the n-gram.
    adjusted: list[dict] = [dict() for _ in range(order + 1)]
    adjusted[order] = dict(raw[order])
    for n in range(order - 1, 0, -1):
        continuation: dict = defaultdict(int)
        for gram in raw[n + 1]:
            continuation[gram[1:]] += 1
        adjusted[n] = {gram: (count if gram[0] == BOS else continuation.get(gram, count))
                       for gram, count in raw[n].items()}
    adjusted[1].pop((BOS,), None)
    # What survives pruning: frequent enough, or needed by a kept higher-order n-gram.
    kept: list[set] = [set() for _ in range(order + 2)]
    kept[1] = set(adjusted[1])
    for n in range(order, 1, -1):
        need = {g[:-1] for g in kept[n + 1]} | {g[1:] for g in kept[n + 1]} if n < order else set()
        kept[n] = {gram for gram, count in raw[n].items() if count >= min_counts[n - 1]} | need
    lm = NgramLM(order=order)
    vocabulary_size = len(adjusted[1]) + (0 if (UNK,) in adjusted[1] else 1)
    # --- unigrams: discounted continuation counts plus the uniform share of the left-over mass
    d1, d2, d3 = _discounts(adjusted[1])
    total = sum(adjusted[1].values())
    left = sum(d1 if c == 1 else d2 if c == 2 else d3 for c in adjusted[1].values()) / total
    unigram = {gram: (count - (d1 if count == 1 else d2 if count == 2 else d3)) / total + left / vocabulary_size
               for gram, count in adjusted[1].items()}
    unigram.setdefault((UNK,), left / vocabulary_size)
    lm.probs[1] = {gram: math.log10(p) for gram, p in unigram.items()}
    lm.probs[1][(BOS,)] = LOG10_ZERO
    # --- higher orders: interpolate with the (final, pruned) lower-order model
    for n in range(2, order + 1):
        d1, d2, d3 = _discounts(adjusted[n])
        totals: dict = defaultdict(int)
        mass: dict = defaultdict(float)
        for gram, count in adjusted[n].items():
            context = gram[:-1]
            totals[context] += count
            mass[context] += d1 if count == 1 else d2 if count == 2 else d3
        probs = {}
        for gram in kept[n]:
            count = adjusted[n][gram]
            context = gram[:-1]
            discounted = (count - (d1 if count == 1 else d2 if count == 2 else d3)) / totals[context]
            gamma = mass[context] / totals[context]
            probs[gram] = discounted + gamma * 10 ** lm.log10_prob(context[1:], gram[-1])
        lm.probs[n] = {gram: math.log10(p) for gram, p in probs.items()}
        _set_backoffs(lm, n)
    return lm


def _set_backoffs(lm: NgramLM, n: int) -> None:
    """Back-off weights of the contexts of order-``n`` n-grams, so each context sums to one:
    bow(h) = (1 - sum of its explicit p(w|h)) / (1 - sum of the lower order's P(w|h') over them)."""
    explicit: dict = defaultdict(float)
    lower: dict = defaultdict(float)
    for gram, value in lm.probs[n].items():
        context = gram[:-1]
        explicit[context] += 10 ** value
        lower[context] += 10 ** lm.log10_prob(context[1:], gram[-1])
    backoffs = lm.backoffs[n - 1]
    for context in explicit:
        numerator = max(1.0 - explicit[context], 1e-12)
        denominator = max(1.0 - lower[context], 1e-12)
        backoffs[context] = math.log10(numerator / denominator)
    # Contexts (kept n-1-grams) never continued at order n back off at no cost: bow 1.
    for context in lm.probs[n - 1]:
        if context not in backoffs and context[-1] != EOS:
            backoffs[context] = 0.0
