"""Word n-gram LM: a proper distribution per context, Kneser-Ney's continuation counts, pruning
that keeps it normalised, ARPA round trips, clear errors, and `edgeasr lm train/eval`."""

import gzip
import json
import math

import pytest

from edgeasr.cli import main
from edgeasr.errors import EdgeAsrError
from edgeasr.lm import NgramLM, load_lm, train_ngram
from edgeasr.lm.ngram import BOS, EOS, UNK

TEXT = """the cat sat on the mat
the dog sat on the log
a cat and a dog met on the mat
the cat saw the dog
i saw a cat in san francisco
we went to san francisco
san francisco is far
the dog ran to the cat
his dog barked at my dog
our dog slept
""".strip().splitlines()


def sentences():
    return [line.split() for line in TEXT]


def predicted_words(lm: NgramLM) -> list[str]:
    return [g[0] for g in lm.probs[1] if g[0] != BOS]


@pytest.mark.parametrize("order,min_counts", [(1, [1]), (2, [1, 1]), (3, [1, 1, 1]), (3, [1, 2, 2]), (4, [1, 1, 2, 2])])
def test_every_context_sums_to_one(order, min_counts):
    lm = train_ngram(sentences(), order=order, min_counts=min_counts)
    words = predicted_words(lm)
    contexts = {()} | {gram for n in range(1, order) for gram in lm.probs[n]} | {("never", "seen")}
    for context in contexts:
        if context and context[-1] == EOS:
            continue
        total = sum(10 ** lm.log10_prob(context, w) for w in words)
        assert total == pytest.approx(1.0, abs=1e-9), context
    # <s> is never predicted; unknown words are <unk>
    assert lm.log10_prob((), "zebra") == lm.log10_prob((), UNK)
    assert UNK in words and EOS in words


def test_kneser_ney_prefers_words_seen_in_many_contexts():
    """"francisco" only ever follows "san", "dog" follows five words: the unigram (continuation
    count) of "francisco" is lower than its frequency alone suggests, while after "san" it is near certain."""
    lm = train_ngram(sentences(), order=3)
    assert lm.log10_prob((), "francisco") < lm.log10_prob((), "dog")
    assert lm.log_prob(("san",), "francisco") > math.log(0.5)
    assert lm.sentence_log10_prob("the cat sat on the mat".split()) > lm.sentence_log10_prob("mat the on sat cat the".split())


def test_pruning_drops_rare_ngrams_but_keeps_what_others_need():
    full = train_ngram(sentences(), order=3, min_counts=[1, 1, 1])
    pruned = train_ngram(sentences(), order=3, min_counts=[1, 2, 2])
    assert pruned.counts()[2] < full.counts()[2] and pruned.counts()[1] <= full.counts()[1]
    for gram in pruned.probs[3]:  # every kept trigram's context and suffix are kept bigrams
        assert gram[:2] in pruned.probs[2] and gram[1:] in pruned.probs[2]


def test_arpa_round_trip_and_errors(tmp_path):
    lm = train_ngram(sentences(), order=3)
    path = lm.write_arpa(tmp_path / "lm.arpa.gz")
    back = NgramLM.read_arpa(path)
    assert back.order == 3 and back.counts() == lm.counts()
    for context, word in [((), "cat"), (("the",), "cat"), (("on", "the"), "mat"), (("san",), "zebra")]:
        assert back.log10_prob(context, word) == pytest.approx(lm.log10_prob(context, word), abs=2e-6)
    truncated = tmp_path / "cut.arpa"
    lines = gzip.open(path, "rt").read().splitlines()
    truncated.write_text("\n".join(lines[: len(lines) // 2]))
    with pytest.raises(EdgeAsrError, match="truncated"):
        NgramLM.read_arpa(truncated)
    garbage = tmp_path / "garbage.arpa"
    garbage.write_bytes(b"\x00\xff not an lm")
    with pytest.raises(EdgeAsrError, match="ARPA"):
        NgramLM.read_arpa(garbage)
    with pytest.raises(EdgeAsrError, match="no such"):
        load_lm(tmp_path / "missing")


def test_lm_train_and_eval_commands(tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text("\n".join(TEXT) + "\nThe Cat, sat on 2 mats!\n")
    held_out = tmp_path / "test.jsonl"
    held_out.write_text(json.dumps({"audio": "x.wav", "text": "the cat saw the dog", "duration": 1.0}) + "\n")
    out = tmp_path / "lm"
    assert main(["lm", "train", "--text", str(text), "--no-pool", "--order", "3", "--exclude", str(held_out),
                 "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["excluded_sentences"] == 1 and summary["sentences"] == len(TEXT)  # one removed, one added
    card = json.loads((out / "card.json").read_text())
    assert card["smoothing"].startswith("interpolated modified Kneser-Ney")
    assert "Sources and licences" in (out / "README.md").read_text()
    lm = load_lm(out)
    assert ("two",) in lm.probs[1]  # "2 mats" was normalised to words like transcripts are
    assert main(["lm", "eval", "--lm", str(out), "--text", str(text)]) == 0
    assert json.loads(capsys.readouterr().out)["perplexity"] > 1
    assert main(["lm", "train", "--no-pool", "--out", str(tmp_path / "x")]) == 2
    assert "no text" in capsys.readouterr().err
    assert main(["lm", "train", "--text", str(text), "--no-pool", "--prune", "1,x", "--out", str(tmp_path / "y")]) == 2
    assert "--prune" in capsys.readouterr().err


def test_lm_from_a_training_manifests_transcripts(tmp_path, capsys):
    """--transcripts: a manifest's transcripts are the text (the source LM of density-ratio fusion)."""
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"audio": f"{i}.wav", "text": text, "duration": 1.0}) + "\n"
                             for i, text in enumerate(["The Zebra ran.", "a zebra sat", "zebra"])))
    out = tmp_path / "source"
    assert main(["lm", "train", "--transcripts", str(train), "--no-pool", "--unit", "char", "--order", "3",
                 "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["sentences"] == 3
    card = json.loads((out / "card.json").read_text())
    assert card["sources"]["transcripts:train.jsonl"]["sentences"] == 3
    assert ("z",) in load_lm(out).probs[1]
