"""Corpus sentences: cleaned, normalized, deduplicated, sourced, and split stably."""

from __future__ import annotations

import re

import pytest

from edgeasr.data.corpus import texts
from edgeasr.data.corpus.texts import (
    Sentence,
    clean_sentence,
    fortune_paragraphs,
    load_sentences,
    sentences_from,
    split_texts,
    wordnet_examples,
    zen_of_python,
)
from edgeasr.text.normalize import normalize_text


@pytest.fixture(scope="module")
def sentences() -> list[Sentence]:
    return load_sentences()


def test_sources_give_many_distinct_sentences(sentences):
    counts = texts.source_counts(sentences)
    assert len(sentences) >= 20000
    assert counts["fortunes"] > 10000 and counts["wordnet"] > 10000
    assert counts["zen"] >= 10
    assert counts["doc"] == 0, "package READMEs vary between machines: off by default"


def test_sentences_are_clean_normalized_and_unique(sentences):
    normalized = [s.normalized for s in sentences]
    assert len(set(normalized)) == len(normalized)
    for sentence in sentences:
        assert sentence.normalized == normalize_text(sentence.text)
        assert 3 <= len(sentence.normalized.split()) <= 30
        assert re.fullmatch(r"[A-Za-z .,;:!?'\"()\-]+", sentence.text), sentence.text
        assert not re.search(r"\b[A-Z]{2,}\b", sentence.text), sentence.text
        assert sentence.source.split(":")[0] in texts.SOURCE_PACKAGES
        assert sentence.text[-1] in ".!?\"')"


def test_word_limits_are_honoured():
    short = sentences_from([("One two. One two three four five six seven. One two three four.", "t:x")],
                           min_words=3, max_words=5)
    assert [s.normalized for s in short] == ["one two three four"]


def test_fortunes_lose_attributions_and_excluded_sets(tmp_path):
    (tmp_path / "people").write_text(
        "A friend is a present you give yourself.\n\t\t-- Robert Louis Stevenson\n%\n"
        "The cat sat on the mat\nall day long.\n%\n",
        encoding="utf-8",
    )
    (tmp_path / "people.dat").write_bytes(b"\x00")
    (tmp_path / "ethnic").write_text("Some joke about a people here.\n%\n", encoding="utf-8")
    paragraphs = list(fortune_paragraphs(tmp_path))
    assert paragraphs == [
        ("A friend is a present you give yourself.", "fortunes:people"),
        ("The cat sat on the mat all day long.", "fortunes:people"),
    ]


def test_wordnet_examples_become_sentences(tmp_path):
    (tmp_path / "data.verb").write_text(
        "  1 This software and database is being provided\n"
        '01234567 29 v 01 walk 0 000 | use one\'s feet; "she walked home"; "we walk to school every day"  \n',
        encoding="utf-8",
    )
    assert list(wordnet_examples(tmp_path)) == [
        ("She walked home.", "wordnet:verb"),
        ("We walk to school every day.", "wordnet:verb"),
    ]


def test_zen_of_python_is_read_without_printing(capsys):
    lines = list(zen_of_python())
    assert lines[0][0] == "Beautiful is better than ugly."
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("I paid $5 for 3 apples.", "I paid five dollars for three apples."),
        ("In 1984 we had 1,000 cats -- all hungry", "In nineteen eighty four we had one thousand cats, all hungry."),
        ("Mr. Smith won 50% of the 2nd round!", "Mister Smith won fifty percent of the second round!"),
        ("Q: Why did the chicken cross the road?", "Why did the chicken cross the road?"),
        ("Read it at http://example.com today.", None),
        ("Write to bob@example.org now.", None),
        ("The NASA rocket flew.", None),
        ("J. Edgar Hoover ran it.", None),
        ("He said e.g. many things.", None),
        ("x = f(y) + 2 * z;", None),
        ("and then the story ended.", None),
    ],
)
def test_clean_sentence(raw, expected):
    cleaned = clean_sentence(raw)
    assert cleaned == expected
    if cleaned is not None and not raw.startswith("Q:"):
        # The engine reads the cleaned text; its transcript is what the original meant.
        assert normalize_text(cleaned) == normalize_text(raw.replace("--", ","))


def test_split_is_disjoint_and_stable(sentences):
    train, dev, test = split_texts(sentences, 0.05, 0.05, seed=0)
    assert len(train) + len(dev) + len(test) == len(sentences)
    sets = [{s.normalized for s in part} for part in (train, dev, test)]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert 0.04 < len(dev) / len(sentences) < 0.06 and 0.04 < len(test) / len(sentences) < 0.06
    # Adding sources (here: dropping half of them) moves no sentence to another split.
    _, dev_half, test_half = split_texts(sentences[::2], 0.05, 0.05, seed=0)
    assert {s.normalized for s in dev_half} <= sets[1] and {s.normalized for s in test_half} <= sets[2]
    # Another seed is another split.
    _, dev_other, _ = split_texts(sentences, 0.05, 0.05, seed=1)
    assert {s.normalized for s in dev_other} != sets[1]


def test_loading_is_deterministic():
    first = sentences_from(fortune_paragraphs())
    second = sentences_from(fortune_paragraphs())
    assert first == second and len(first) > 10000
