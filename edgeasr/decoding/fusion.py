"""Text scorers fused into the searches: a word n-gram LM and hotwords (contextual biasing).

Both work on *characters of normalized text*, not on token ids, so one scorer serves every search:
the CTC prefix beam over characters or BPE pieces (``piece_texts`` gives each id its text) and the
joint Whisper search over Whisper's BPE (its tokens are spelled in our alphabet already). A scorer
is a small state machine:

    state = scorer.initial()
    delta, state = scorer.advance(state, text)    # text: what a token appends, e.g. "e" or " the"
    delta = scorer.finish(state)                  # at the end of a hypothesis

and a hypothesis's fused score is the sum of its deltas (already weighted). States are hashable
and equal states score the future alike, so the search may cache ``advance`` per (state, token).

- ``CharLMScorer``: shallow fusion of a character n-gram: every character is scored as it is
  spelled (misspellings inside words cost at once; no vocabulary, so no unknown words).
- ``WordLMScorer``: shallow fusion of a word n-gram. A word is scored when it ends (at the next
  space, or at the end with ``</s>``): ``weight * ln P(word | history) + bonus``. The bonus
  pays back what the LM's probabilities take from every word, which would otherwise favour
  hypotheses with fewer, longer words (deletions).
- ``HotwordScorer``: an Aho-Corasick automaton over the phrases' characters. Each character that
  continues a phrase earns its boost at once (so the phrase survives the beam while it is being
  spelled); a path that leaves a phrase unfinished gives that partial credit back (fail links keep
  the longest suffix that still matches, as in icefall's ContextGraph); a completed phrase keeps
  its credit and earns its full bonus again once.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from edgeasr.errors import EdgeAsrError
from edgeasr.lm.ngram import BOS, EOS, LN10, UNK, NgramLM
from edgeasr.text.normalize import normalize_text
from edgeasr.text.tokenizer import SPACE, Tokenizer


try:  # the compiled scorer (edgeasr/_native.c), built by `pip install` / make setup
    from edgeasr import _native
except ImportError:  # pragma: no cover - a source tree without a C build: the Python scorer serves
    _native = None


#: entries a scorer's memo may hold before it starts afresh: scorers live as long as their
#: recognizer (a server's), so their caches must not grow with the audio it has heard
CACHE_LIMIT = 500_000


def piece_texts(tokenizer: Tokenizer) -> list[str]:
    """The text each token id appends (specials append nothing; "▁" is a space)."""
    specials = {tokenizer.blank_id, tokenizer.unk_id, tokenizer.eos_id}
    return ["" if i in specials else piece.replace(SPACE, " ") for i, piece in enumerate(tokenizer.units)]


class WordLMScorer:
    """State: (LM context, the characters of the word being spelled).

    A word is scored when it ends; while it is being spelled, its prefix holds a look-ahead
    credit: the best unigram log-probability of any vocabulary word that starts with it ("max
    smearing", as lexicon decoders do), or ``unk_penalty`` below ``<unk>`` once no word does.
    Without it a beam of 10 fills with misspelled halves of words that only the next space
    reveals as unknown; with it they fall out while they are spelled. The credit is exchanged
    for the word's real n-gram score when the word ends.
    """

    def __init__(self, lm: NgramLM, weight: float = 0.5, lm_bonus: float = 1.0,
                 unk_penalty: float = 4.0) -> None:
        self.lm = lm
        self.weight = weight
        self.bonus = lm_bonus
        self.unk_penalty = unk_penalty
        self._cache: dict = {}
        self.unk_log_prob = lm.log_prob((), UNK) - unk_penalty
        self.lookahead = lm.cached("prefix_lookahead", lambda: _prefix_lookahead(lm))

    def initial(self):
        return ((BOS,), "")

    def _credit(self, partial: str) -> float:
        if not partial:
            return 0.0
        return self.weight * self.lookahead.get(partial, self.unk_log_prob)

    def _word(self, context, word: str):
        key = (context, word)
        hit = self._cache.get(key)
        if hit is None:
            log10, state = self.lm.advance(context, word)
            log_prob = log10 * LN10
            if word != EOS and word not in self.lookahead:
                log_prob -= self.unk_penalty
            score = self.weight * log_prob + (self.bonus if word != EOS else 0.0)
            hit = (score, state)
            if len(self._cache) > CACHE_LIMIT:
                self._cache.clear()
            self._cache[key] = hit
        return hit

    def advance(self, state, text: str):
        context, partial = state
        delta = -self._credit(partial)
        for ch in text:
            if ch == " ":
                if partial:
                    score, context = self._word(context, partial)
                    delta += score
                    partial = ""
            else:
                partial += ch
        return delta + self._credit(partial), (context, partial)

    def finish(self, state) -> float:
        context, partial = state
        delta = -self._credit(partial)
        if partial:
            score, context = self._word(context, partial)
            delta += score
        return delta + self._word(context, EOS)[0]


def _prefix_lookahead(lm: NgramLM) -> dict[str, float]:
    """Every prefix of every vocabulary word -> the best unigram ln-probability among its words
    (whole words included, so ``word in lookahead`` tells a known word)."""
    best: dict[str, float] = {}
    for (word,), log10 in lm.probs[1].items():
        if word in (BOS, EOS, UNK) or log10 <= -98:
            continue
        value = log10 * LN10
        for end in range(1, len(word) + 1):
            prefix = word[:end]
            if best.get(prefix, -math.inf) < value:
                best[prefix] = value
    return best


# --- hotwords ----------------------------------------------------------------------------------------


@dataclass
class _Node:
    depth: int = 0
    #: credit held while a phrase is spelled up to here (sum of its characters' boosts)
    partial: float = 0.0
    #: bonus earned on arriving here: every phrase that ends here or at one of its suffixes
    completes: float = 0.0
    phrase_end: bool = False
    children: dict = field(default_factory=dict)
    fail: int = 0


class HotwordScorer:
    """Contextual biasing towards ``phrases`` [(normalized text, boost per character)]."""

    def __init__(self, phrases: Sequence[tuple[str, float]]) -> None:
        self.nodes = [_Node()]
        self.phrases = []
        for text, boost in phrases:
            text = " ".join(normalize_text(text).split())
            if not text:
                continue
            self.phrases.append((text, boost))
            node = 0
            for ch in text:
                child = self.nodes[node].children.get(ch)
                if child is None:
                    self.nodes.append(_Node(depth=self.nodes[node].depth + 1,
                                            partial=self.nodes[node].partial + boost))
                    child = len(self.nodes) - 1
                    self.nodes[node].children[ch] = child
                else:  # a prefix shared by two phrases holds the larger boost
                    self.nodes[child].partial = max(self.nodes[child].partial, self.nodes[node].partial + boost)
                node = child
            self.nodes[node].phrase_end = True
        if not self.phrases:
            raise EdgeAsrError("no hotwords: every phrase was empty after normalization")
        self._link()
        self._cache: dict = {}

    def _link(self) -> None:
        """Breadth-first fail links; a node's completion bonus includes its suffixes' phrases."""
        queue = []
        for child in self.nodes[0].children.values():
            self.nodes[child].fail = 0
            queue.append(child)
        for index in queue:  # grows while iterated: breadth-first order
            node = self.nodes[index]
            for ch, child in node.children.items():
                fail = node.fail
                while fail and ch not in self.nodes[fail].children:
                    fail = self.nodes[fail].fail
                target = self.nodes[fail].children.get(ch, 0)
                self.nodes[child].fail = target if target != child else 0
                queue.append(child)
        for index in queue:  # parents' fail targets are shallower, so already final
            node = self.nodes[index]
            node.completes = (node.partial if node.phrase_end else 0.0) + self.nodes[node.fail].completes

    def initial(self):
        return 0

    def _step(self, state: int, ch: str) -> int:
        while True:
            child = self.nodes[state].children.get(ch)
            if child is not None:
                return child
            if state == 0:
                return 0
            state = self.nodes[state].fail

    def advance(self, state: int, text: str):
        key = (state, text)
        hit = self._cache.get(key)
        if hit is None:
            delta, node = 0.0, state
            for ch in text:
                new = self._step(node, ch)
                delta += self.nodes[new].partial - self.nodes[node].partial + self.nodes[new].completes
                node = new
            if len(self._cache) > CACHE_LIMIT:
                self._cache.clear()
            hit = self._cache[key] = (delta, node)
        return hit

    def finish(self, state: int) -> float:
        return -self.nodes[state].partial  # an unfinished phrase gives its credit back


class FusedScorer:
    """Several scorers as one; the state is the tuple of theirs."""

    def __init__(self, scorers: Sequence) -> None:
        self.scorers = list(scorers)

    def initial(self):
        return tuple(s.initial() for s in self.scorers)

    def advance(self, state, text: str):
        total, states = 0.0, []
        for scorer, sub in zip(self.scorers, state):
            delta, sub = scorer.advance(sub, text)
            total += delta
            states.append(sub)
        return total, tuple(states)

    def finish(self, state) -> float:
        return sum(scorer.finish(sub) for scorer, sub in zip(self.scorers, state))


def read_hotwords(source: str | os.PathLike[str] | Iterable[str], default_boost: float) -> list[tuple[str, float]]:
    """Phrases with boosts from a file (one a line, optional trailing ``:BOOST``, ``#`` comments)
    or from a list of such strings."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise EdgeAsrError(f"{path}: no such hotwords file")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise EdgeAsrError(f"{path}: not UTF-8 text") from None
        where = str(path)
    else:
        lines, where = list(source), "hotwords"
    phrases = []
    for number, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        boost = default_boost
        text, sep, tail = line.rpartition(":")
        if sep and tail.strip():
            try:
                boost = float(tail)
            except ValueError:
                raise EdgeAsrError(f"{where}:{number}: the boost after ':' must be a number, got {tail.strip()!r}") from None
            line = text
        if not math.isfinite(boost) or boost < 0:
            raise EdgeAsrError(f"{where}:{number}: the boost must be a non-negative number")
        phrases.append((line.strip(), boost))
    if not phrases:
        raise EdgeAsrError(f"{where}: no hotwords in it")
    return phrases


def _lm_scorer(lm: NgramLM, weight: float, bonus: float, unk_penalty: float):
    """A character LM (``lm.unit == "char"``) scores every character; a word LM every word."""
    if getattr(lm, "unit", "word") == "char":
        return CharLMScorer(lm, weight, bonus)
    return WordLMScorer(lm, weight, bonus, unk_penalty)


def build_scorer(lm: NgramLM | None = None, lm_weight: float = 0.0, lm_bonus: float = 0.0,
                 unk_penalty: float = 4.0, hotwords: Sequence[tuple[str, float]] | None = None,
                 source_lm: NgramLM | None = None, source_weight: float = 0.0):
    """The scorer a search fuses: the LM (when it has weight), hotwords, both, or None.

    ``source_lm`` (density-ratio fusion, McDermott et al. 2019, as the 4-bit RNN-T paper fuses
    its LM): an LM of the acoustic model's own training transcripts, whose score is taken away
    with ``source_weight``: the recognizer already learnt that text's statistics (a
    transducer's prediction network is itself such an LM), so the fused LM adds only the ratio
    of the target text's probability to the training text's."""
    scorers = []
    if lm is not None and lm_weight > 0:
        scorers.append(_lm_scorer(lm, lm_weight, lm_bonus, unk_penalty))
        if source_lm is not None and source_weight > 0:
            # no bonus and no unknown-word penalty: they belong to the fused LM alone
            scorers.append(_lm_scorer(source_lm, -source_weight, 0.0, 0.0))
    if hotwords:
        scorers.append(HotwordScorer(hotwords))
    if not scorers:
        return None
    return scorers[0] if len(scorers) == 1 else FusedScorer(scorers)


def text_score(scorer, text: str) -> float:
    """The scorer's whole score of a finished text (for rescoring fixed candidates)."""
    if scorer is None:
        return 0.0
    delta, state = scorer.advance(scorer.initial(), text)
    return delta + scorer.finish(state)


class CharLMScorer:
    """Shallow fusion of a character n-gram (its "words" are characters, ``_`` for a space):
    every character is scored as it is spelled, so misspellings inside a word cost at once.
    ``char_bonus`` per character pays back the LM's cost of length."""

    def __init__(self, lm: NgramLM, weight: float = 0.5, char_bonus: float = 0.5) -> None:
        self.lm = lm
        self.weight = weight
        self.char_bonus = char_bonus
        self._cache: dict = {}
        #: token texts -> this scorer compiled for them (``compiled``)
        self._compiled: dict = {}

    def initial(self):
        return (BOS,)

    def _char(self, context, ch: str):
        key = (context, ch)
        hit = self._cache.get(key)
        if hit is None:
            if len(self._cache) > CACHE_LIMIT:
                self._cache.clear()
            log10, state = self.lm.advance(context, ch)
            hit = self._cache[key] = (self.weight * log10 * LN10 + self.char_bonus, state)
        return hit

    def advance(self, state, text: str):
        delta = 0.0
        for ch in text:
            score, state = self._char(state, "_" if ch == " " else ch)
            delta += score
        return delta, state

    def finish(self, state) -> float:
        return self.weight * self.lm.log_prob(state, EOS)

    def compiled(self, texts: Sequence[str]):
        """This scorer in C over token ids (``_native.NgramScorer``: the same arithmetic, states as
        n-gram node ids) for the compiled prefix search, or None where it cannot be built (no
        compiled module, or an ARPA file that lacks an n-gram's context or suffix)."""
        key = tuple(texts)
        if key not in self._compiled:
            table = self.lm.cached("compiled_table", lambda: _compiled_table(self.lm))
            if table is None or _native is None:
                self._compiled[key] = None
            else:
                symbols = table["symbols"]
                spelled = [[symbols.get("_" if ch == " " else ch, symbols[UNK]) for ch in text] for text in texts]
                self._compiled[key] = _native.NgramScorer(
                    table["parent"], table["suffix"], table["symbol"], table["depth"], table["prob"],
                    table["backoff"], self.lm.order, symbols[UNK], symbols[EOS], table["initial"], spelled,
                    float(self.weight), float(self.char_bonus), LN10)
        return self._compiled[key]


def _compiled_table(lm: NgramLM):
    """The n-gram model as node arrays for ``_native.NgramScorer`` (node 0: the empty context; a
    node's parent is its context, its suffix the n-gram without its first unit), or None when an
    n-gram's context or suffix is missing from the model (our pruning keeps them; other ARPA
    writers may not), in which case the Python scorer serves."""
    symbols = {gram[0]: i for i, gram in enumerate(sorted(lm.probs[1]))}
    if UNK not in symbols or EOS not in symbols or BOS not in symbols:
        return None
    ids: dict[tuple, int] = {(): 0}
    parent, symbol, depth, prob, backoff = [0], [0], [0], [0.0], [0.0]
    for n in range(1, lm.order + 1):
        for gram, value in lm.probs[n].items():
            context = ids.get(gram[:-1])
            # a missing context, or a last unit that is no unigram (never matched: the Python
            # scorer reads it as <unk>): the table cannot mirror the Python walk
            if context is None or gram[-1] not in symbols:
                return None
            ids[gram] = len(parent)
            parent.append(context)
            symbol.append(symbols[gram[-1]])
            depth.append(n)
            prob.append(value)
            backoff.append(lm.backoffs[n].get(gram, 0.0))
    suffix = [0] * len(parent)
    for gram, node in ids.items():
        if len(gram) > 1:
            found = ids.get(gram[1:])
            if found is None:
                return None
            suffix[node] = found
    return {"symbols": symbols, "initial": ids[(BOS,)],
            "parent": np.asarray(parent, dtype=np.int32), "suffix": np.asarray(suffix, dtype=np.int32),
            "symbol": np.asarray(symbol, dtype=np.int32), "depth": np.asarray(depth, dtype=np.uint8),
            "prob": np.asarray(prob, dtype=np.float64), "backoff": np.asarray(backoff, dtype=np.float64)}
