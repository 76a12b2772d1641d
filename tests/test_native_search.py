"""The compiled prefix beam search (edgeasr/_native.c) against the Python one.

The Python loop in edgeasr.decoding.ctc is the reference; the C core must give the very same
n-best (tokens, scores, token times and posteriors, fused scores) chunk by chunk, with and
without fused scorers, through trie, emission-pool and scorer-state compaction."""

import numpy as np
import pytest

from edgeasr.decoding import ctc
from edgeasr.decoding.ctc import PrefixBeamSearch
from edgeasr.decoding.fusion import build_scorer, piece_texts
from edgeasr.lm import train_ngram
from edgeasr.text.normalize import TEXT_ALPHABET
from edgeasr.text.tokenizer import Tokenizer

TOKENIZER = Tokenizer.train([TEXT_ALPHABET.strip()], kind="char")
TEXTS = ["the cat sat on the mat", "a cat sat there", "my cat is black", "the cat ate the rat"]


def peaky_log_probs(frames: int, vocab: int, seed: int, blank_share: float = 0.6) -> np.ndarray:
    """CTC-like posteriors: most frames blank-dominated, others spread over a few tokens."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 1.5, size=(frames, vocab))
    logits[:, 0] += np.where(rng.random(frames) < blank_share, 6.0, 0.0)
    logits = logits - logits.max(axis=1, keepdims=True)
    return (logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))).astype(np.float32)


def decode(native: bool, log_probs: np.ndarray, chunk: int, scorer=None, **options):
    search = PrefixBeamSearch(scorer=scorer, piece_texts=piece_texts(TOKENIZER) if scorer else None,
                              native=native, **options)
    partials = []
    for start in range(0, len(log_probs), chunk):
        search.step(log_probs[start : start + chunk])
        partials.append(search.nbest(1)[0].tokens)
    nbest = [(h.tokens, h.score, h.times, h.token_probs, h.fused_score) for h in search.nbest()]
    return partials, nbest, search.frame_offset


def char_lm():
    lm = train_ngram([list(text.replace(" ", "_")) for text in TEXTS], order=4)
    lm.unit = "char"
    return lm


def test_the_compiled_core_is_built():
    assert ctc._native is not None, "make setup builds edgeasr/_native.c; it is missing"
    assert PrefixBeamSearch()._core is not None  # and the search uses it by default


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("beam_size,chunk", [(1, 7), (4, 1), (10, 16), (10, 200)])
def test_same_nbest_as_the_python_search(seed, beam_size, chunk):
    log_probs = peaky_log_probs(120, TOKENIZER.vocab_size, seed)
    assert decode(True, log_probs, chunk, beam_size=beam_size) == decode(False, log_probs, chunk,
                                                                        beam_size=beam_size)


@pytest.mark.parametrize("options", [dict(token_threshold=50.0, token_beam=12), dict(score_threshold=1.0),
                                     dict(token_threshold=1.0, blank=3)])
def test_same_nbest_with_other_pruning(options):
    log_probs = peaky_log_probs(90, TOKENIZER.vocab_size, 11)
    assert decode(True, log_probs, 9, **options) == decode(False, log_probs, 9, **options)


@pytest.mark.parametrize("kind", ["char_lm", "word_lm", "hotwords", "word_lm+hotwords"])
def test_same_nbest_with_fused_scorers(kind):
    lm = char_lm() if kind == "char_lm" else train_ngram([t.split() for t in TEXTS], order=3)
    # single letters too, so random frames complete some phrase and the boosts show in the scores
    hotwords = [("black cat", 2.0), ("mat", 1.0), ("a", 0.5), ("e", 0.5)] if "hotwords" in kind else None
    weight = 0.0 if kind == "hotwords" else 0.7
    for seed in range(3):
        log_probs = peaky_log_probs(100, TOKENIZER.vocab_size, 20 + seed, blank_share=0.4)
        # a fresh scorer each side: the native run must not lean on caches the Python run filled
        got = decode(True, log_probs, 8, build_scorer(lm, weight, 1.0, hotwords=hotwords), beam_size=8)
        want = decode(False, log_probs, 8, build_scorer(lm, weight, 1.0, hotwords=hotwords), beam_size=8)
        assert got == want
        assert any(fused != 0.0 for *_, fused in got[1])  # the scorer really took part


def test_a_character_lm_is_scored_in_c_exactly_as_in_python():
    """The compiled scorer gives every (state, token) the Python scorer's delta and next context,
    bit for bit, and the same end-of-text score."""
    lm = char_lm()
    scorer = build_scorer(lm, 0.7, 0.3)
    texts = piece_texts(TOKENIZER) + ["the ", "", "q!"]  # multi-character, empty, unknown character
    compiled = scorer.compiled(texts)
    assert compiled is not None
    names = {i: gram[0] for i, gram in enumerate(sorted(lm.probs[1]))}
    seen = {compiled.initial: scorer.initial()}
    frontier = [compiled.initial]
    for _ in range(3):  # three tokens deep from <s>: every context a short text can reach
        following = []
        for state in frontier:
            for token, text in enumerate(texts):
                delta, after = compiled.advance(state, token)
                want_delta, want_after = scorer.advance(seen[state], text)
                assert delta == want_delta
                assert tuple(names[i] for i in compiled.context(after)) == want_after
                if after not in seen:
                    seen[after] = want_after
                    following.append(after)
        frontier = following
    assert len(seen) > 50
    assert all(compiled.finish(state) == scorer.finish(context) for state, context in seen.items())


def test_the_search_uses_the_compiled_lm_and_falls_back_where_it_cannot():
    log_probs = peaky_log_probs(100, TOKENIZER.vocab_size, 30, blank_share=0.4)
    texts = piece_texts(TOKENIZER)
    search = PrefixBeamSearch(beam_size=8, scorer=build_scorer(char_lm(), 0.7, 1.0), piece_texts=texts)
    assert search._compiled is not None
    # an ARPA model without the context of one of its n-grams: the Python scorer serves
    lm = char_lm()
    dropped = next(gram for gram in lm.probs[2] if any(g[:2] == gram for g in lm.probs[3]))
    del lm.probs[2][dropped]
    lm.backoffs[2].pop(dropped, None)
    fallback = PrefixBeamSearch(beam_size=8, scorer=build_scorer(lm, 0.7, 1.0), piece_texts=texts)
    assert fallback._compiled is None and fallback._core is not None
    assert decode(True, log_probs, 8, build_scorer(lm, 0.7, 1.0), beam_size=8) == \
        decode(False, log_probs, 8, build_scorer(lm, 0.7, 1.0), beam_size=8)


def test_compaction_keeps_the_results_and_bounds_memory(monkeypatch):
    """Small limits force every compaction (trie nodes, emission cells, scorer states) many times
    over a long stream; the text and times are those of the uncompacted Python search."""
    log_probs = peaky_log_probs(3000, TOKENIZER.vocab_size, 5, blank_share=0.3)
    # hotwords beside the LM: a scorer the core asks of Python, whose states it interns
    scorer_args = (char_lm(), 0.5, 0.5, 4.0, [("black cat", 1.0)])
    want = decode(False, log_probs, 32, build_scorer(*scorer_args), beam_size=6)
    monkeypatch.setattr(PrefixBeamSearch, "compact_after", 40)
    search = PrefixBeamSearch(beam_size=6, scorer=build_scorer(*scorer_args), piece_texts=piece_texts(TOKENIZER))
    partials, peaks, drops = [], [0, 0, 0], [0, 0, 0]
    for start in range(0, len(log_probs), 32):
        before = (search._core.nodes, search._core.cells, len(search._states))
        search.step(log_probs[start : start + 32])
        partials.append(search.nbest(1)[0].tokens)
        after = (search._core.nodes, search._core.cells, len(search._states))
        for i in range(3):
            peaks[i] = max(peaks[i], after[i])
            drops[i] += after[i] < before[i]
    assert all(drops), drops  # each store was compacted
    # without compaction the trie alone grows by ~20 nodes a frame (60,000 here)
    assert peaks[0] < 6000 and peaks[1] < 6000 and peaks[2] < 6000, peaks
    got = (partials, [(h.tokens, h.score, h.times, h.token_probs, h.fused_score) for h in search.nbest()],
           search.frame_offset)
    assert got == want


def test_reset_starts_afresh():
    log_probs = peaky_log_probs(60, TOKENIZER.vocab_size, 3)
    search = PrefixBeamSearch(beam_size=5)
    search.step(log_probs)
    first = search.nbest()
    search.reset()
    assert search.frame_offset == 0 and search.nbest()[0].tokens == ()
    search.step(log_probs)
    assert [(h.tokens, h.score, h.times) for h in search.nbest()] == [(h.tokens, h.score, h.times) for h in first]


def test_bad_arrays_are_refused_clearly():
    search = PrefixBeamSearch()
    with pytest.raises(ValueError, match=r"float32 array \[T, V\]"):
        search._core.step(np.zeros(5, dtype=np.float32))
    with pytest.raises(ValueError, match="at least 1"):
        ctc._native.Search(0, 0, 1, 4.0, 6.0, None, 0)
    search.step(np.zeros((0, TOKENIZER.vocab_size), dtype=np.float32))  # no frames: nothing changes
    assert search.frame_offset == 0
