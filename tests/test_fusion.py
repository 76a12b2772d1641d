"""The LM and hotwords inside the search: each fixes what plain CTC search gets wrong, gives back
what it must, and both backends and entry points reach them."""

import math

import numpy as np
import pytest

from edgeasr.decoding.ctc import PrefixBeamSearch
from edgeasr.decoding.fusion import (
    HotwordScorer,
    WordLMScorer,
    build_scorer,
    piece_texts,
    read_hotwords,
    text_score,
)
from edgeasr.errors import EdgeAsrError
from edgeasr.lm import train_ngram
from edgeasr.text.normalize import TEXT_ALPHABET
from edgeasr.text.tokenizer import SPACE, Tokenizer

TOKENIZER = Tokenizer.train([TEXT_ALPHABET.strip()], kind="char")


def unit(ch: str) -> int:
    return TOKENIZER.piece_to_id(SPACE if ch == " " else ch)


def frames_for(text: str, confusions: dict[int, tuple[str, float]] | None = None) -> np.ndarray:
    """CTC log-probs spelling ``text``, one frame a character with a blank frame after each;
    ``confusions[i] = (other, p)`` puts probability p on ``other`` at character i."""
    vocab = TOKENIZER.vocab_size
    rows = []
    for i, ch in enumerate(text):
        row = np.full(vocab, 1e-4)
        target = unit(ch)
        if confusions and i in confusions:
            other, p = confusions[i]
            row[unit(other)] = p
            row[target] = 1 - p
        else:
            row[target] = 0.95
        rows.append(row / row.sum())
        blank = np.full(vocab, 1e-4)
        blank[TOKENIZER.blank_id] = 0.95
        rows.append(blank / blank.sum())
    return np.log(np.array(rows, dtype=np.float32))


def decode(log_probs, scorer=None, beam=10) -> str:
    search = PrefixBeamSearch(beam_size=beam, scorer=scorer, piece_texts=piece_texts(TOKENIZER))
    for start in range(0, len(log_probs), 5):  # incremental, as in streaming
        search.step(log_probs[start : start + 5])
    return TOKENIZER.decode(search.nbest()[0].tokens)


LM_TEXT = ["the cat sat on the mat", "a cat sat there", "my cat is black", "the cat ate"]


def test_the_lm_fixes_a_misspelling_plain_search_makes():
    lm = train_ngram([s.split() for s in LM_TEXT], order=3)
    frames = frames_for("the cat sat", {4: ("k", 0.6)})  # acoustics prefer "kat"
    assert decode(frames) == "the kat sat"
    assert decode(frames, WordLMScorer(lm, weight=1.0, lm_bonus=1.0)) == "the cat sat"
    # clear acoustics win over the LM: an unseen word spoken clearly is kept
    assert decode(frames_for("the dog sat"), WordLMScorer(lm, weight=0.5, lm_bonus=1.0)) == "the dog sat"


def test_word_lm_scores_words_at_their_end_and_sentence_end():
    lm = train_ngram([s.split() for s in LM_TEXT], order=3)
    scorer = WordLMScorer(lm, weight=1.0, lm_bonus=0.0, unk_penalty=0.0)
    expected = (lm.log_prob(("<s>",), "the") + lm.log_prob(("<s>", "the"), "cat")
                + lm.log_prob(("the", "cat"), "</s>"))
    assert text_score(scorer, "the cat") == pytest.approx(expected)
    # spelled in pieces, the same total: look-ahead credit is exchanged, never kept
    state, total = scorer.initial(), 0.0
    for piece in ["t", "h", "e", " ", "c", "a", "t"]:
        delta, state = scorer.advance(state, piece)
        total += delta
    assert total + scorer.finish(state) == pytest.approx(expected)


def test_hotword_credit_is_kept_when_complete_and_given_back_when_not():
    scorer = HotwordScorer([("kubernetes", 1.0), ("ab", 2.0), ("bc", 1.0)])
    assert text_score(scorer, "kubernetes") == pytest.approx(10.0)
    assert text_score(scorer, "deploy kubernetes now") == pytest.approx(10.0)
    assert text_score(scorer, "kuberne") == pytest.approx(0.0)  # unfinished: nothing kept
    assert text_score(scorer, "kubernetis") == pytest.approx(0.0)
    # fail links: "abc" completes "ab" and, through the suffix, "bc"
    assert text_score(scorer, "abc") == pytest.approx(4.0 + 2.0)
    # a partial match earns as it goes, so the phrase survives a small beam while spelled
    delta, state = scorer.advance(scorer.initial(), "kube")
    assert delta == pytest.approx(4.0)


def test_biasing_recovers_a_phrase_plain_search_misses():
    frames = frames_for("deploy kubernetes", {15: ("i", 0.65)})
    assert decode(frames) == "deploy kubernetis"
    biased = build_scorer(hotwords=read_hotwords(["kubernetes"], 1.5))
    assert decode(frames, biased) == "deploy kubernetes"
    # and leaves speech without the phrase alone
    assert decode(frames_for("deploy the cat"), biased) == "deploy the cat"


def test_hotwords_file_format_and_errors(tmp_path):
    path = tmp_path / "hotwords.txt"
    path.write_text("# names\nEdgeASR :3\nKubernetes\n\nDr. Smith:2.5\n")
    assert read_hotwords(path, 1.5) == [("EdgeASR", 3.0), ("Kubernetes", 1.5), ("Dr. Smith", 2.5)]
    scorer = HotwordScorer(read_hotwords(path, 1.5))
    assert [text for text, _ in scorer.phrases] == ["edgeasr", "kubernetes", "doctor smith"]
    bad = tmp_path / "bad.txt"
    bad.write_text("phrase :lots\n")
    with pytest.raises(EdgeAsrError, match="boost"):
        read_hotwords(bad, 1.0)
    with pytest.raises(EdgeAsrError, match="no such hotwords file"):
        read_hotwords(tmp_path / "missing.txt", 1.0)
    with pytest.raises(EdgeAsrError, match="no hotwords"):
        read_hotwords(["# only a comment"], 1.0)


def test_search_with_an_lm_stays_incremental():
    lm = train_ngram([s.split() for s in LM_TEXT], order=3)
    frames = frames_for("the cat sat on the mat", {4: ("k", 0.55), 13: ("i", 0.5)})
    whole = PrefixBeamSearch(beam_size=6, scorer=WordLMScorer(lm), piece_texts=piece_texts(TOKENIZER))
    whole.step(frames)
    pieces = PrefixBeamSearch(beam_size=6, scorer=WordLMScorer(lm), piece_texts=piece_texts(TOKENIZER))
    for start in range(0, len(frames), 3):
        pieces.step(frames[start : start + 3])
    assert [(h.tokens, round(h.score, 6), round(h.fused_score, 6)) for h in whole.nbest()] == \
        [(h.tokens, round(h.score, 6), round(h.fused_score, 6)) for h in pieces.nbest()]
    assert all(math.isfinite(h.fused_score) for h in whole.nbest())


def test_density_ratio_fusion_subtracts_the_source_lm():
    """build_scorer's source LM (density-ratio fusion): a text's fused score is the target LM's
    score minus the source LM's, weighted, with no bonus or unknown-word penalty of its own; the
    search's decision moves with it: a word the acoustic model's own training text made common
    loses the credit it already has."""
    from edgeasr.lm.ngram import LN10

    target = train_ngram([s.split() for s in LM_TEXT], order=3)
    source = train_ngram([s.split() for s in ["the cat sat", "the cat sat on the cat"] * 5], order=3)
    plain = build_scorer(target, 1.0, 1.0)
    ratio = build_scorer(target, 1.0, 1.0, source_lm=source, source_weight=0.5)
    for text in ("the cat sat", "the kat sat", "a dog"):
        words = text.split()
        context, source_ln = ("<s>",), 0.0
        for word in words + ["</s>"]:
            log10, context = source.advance(context, word)
            source_ln += log10 * LN10
        assert text_score(ratio, text) == pytest.approx(text_score(plain, text) - 0.5 * source_ln, abs=1e-6)
    frames = frames_for("the cat sat", {4: ("k", 0.45)})  # acoustics lean to "cat"
    assert decode(frames, plain) == "the cat sat"
    strong = build_scorer(target, 1.0, 1.0, source_lm=source, source_weight=2.0)
    assert decode(frames, strong) == "the kat sat"
    assert build_scorer(None, 1.0, 1.0, source_lm=source, source_weight=0.5) is None


def test_source_lm_needs_an_lm():
    import edgeasr

    with pytest.raises(EdgeAsrError, match="--source-lm .* needs an LM to fuse"):
        edgeasr.load_model("models/u2-baseline", mode="ctc_prefix_beam", lm=None, source_lm="models/default/lm")
