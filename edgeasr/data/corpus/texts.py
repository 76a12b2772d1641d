"""Natural English sentences for the synthesized corpus, from freely licensed text shipped in packages.

No speech corpus can be downloaded here, so the corpus is spoken by TTS engines, and what they read
decides which words and phrasings the recognizer ever hears. The sources are prose that Debian
ships (fortune cookies, WordNet's example sentences, package READMEs, license texts) plus the Zen
of Python; fortunes and WordNet examples come first because they are the closest to how people talk.

Every sentence is kept twice: ``text`` is what an engine reads (punctuation kept for prosody,
numbers already spelled out the way the normalizer spells them) and ``normalized`` is the
transcript. Sentences an engine would read differently from their transcript (acronyms, initials,
abbreviations, symbols, code) are dropped rather than guessed at: a wrong transcript teaches the
model a wrong spelling on every epoch.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import re
import sysconfig
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from edgeasr.text.normalize import normalize_text

FORTUNES_DIR = Path("/usr/share/games/fortunes")
WORDNET_DIR = Path("/usr/share/wordnet")
LICENSES_DIR = Path("/usr/share/common-licenses")
DOC_DIR = Path("/usr/share/doc")

#: Fortune sets left out: pictures, non-English text, code, and jokes about ethnic groups (the
#: offensive sets live in a separate package we never install).
EXCLUDED_FORTUNE_SETS = frozenset({"ascii-art", "translate-me", "perl", "ethnic"})

#: Source kinds in the order they are read (earlier kinds win duplicates), with the Debian package
#: that ships them, for the corpus card.
SOURCE_PACKAGES = {
    "fortunes": "fortunes, fortunes-min",
    "wordnet": "wordnet-base",
    "zen": "python3.11 (the Zen of Python)",
    "doc": "README files of installed Debian packages",
    "license": "base-files (/usr/share/common-licenses)",
}

# Abbreviations every engine expands the same way; spelled out before anything else so the
# transcript says what the voice says. Anything else with an inner period is dropped.
_ABBREVIATIONS = {
    "Mr.": "Mister",
    "Mrs.": "Missus",
    "Dr.": "Doctor",
    "etc.": "et cetera",
    "vs.": "versus",
}
_ABBREVIATION = re.compile("|".join(rf"(?<![\w.]){re.escape(short)}" for short in _ABBREVIATIONS))
_NON_LETTER = re.compile(r"[^A-Za-z]+")
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "`": "'",
                         "\u2013": "-", "\u2014": " - ", "\u00a0": " "})
_ALLOWED = re.compile(r"^[A-Za-z .,;:!?'\"()\-]+$")
# Numbers as they appear in prose: times, money, thousands separators, decimals, ordinals, decades,
# percentages. Each match is replaced by the normalizer's reading before an engine sees it.
_NUMERIC = re.compile(
    r"(?<![\w.$\u00a3\u20ac])(?:"
    r"\d{1,2}:\d{2}(?:\s?[ap]m\b)?"
    r"|[$\u00a3\u20ac]\s?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
    r"|(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:st|nd|rd|th|s|%)?"
    r")(?![\w$%])"
)
_ACRONYM = re.compile(r"\b[A-Z]{2,}\b")
_SINGLE_LETTER = re.compile(r"(?<![\w'])([B-HJ-Zb-z])(?![\w'])")
_INNER_PERIOD = re.compile(r"\w\.\w")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')]*\s+(?=[\"'(]?[A-Z])")
_ATTRIBUTION = re.compile(r"^\s*(--|\u2014|~~)\s*\S")
_URLISH = re.compile(r"(https?:|www\.|\.com\b|\.org\b|\.net\b|@|::|\.\w{2,4}/)", re.IGNORECASE)


@dataclass(frozen=True)
class Sentence:
    """One sentence: what the engine reads, its transcript, and where it came from."""

    text: str
    normalized: str
    source: str

    @property
    def source_kind(self) -> str:
        """The source family ("fortunes", "wordnet", ...) for per-source counts."""
        return self.source.split(":", 1)[0]


# --- sources ---------------------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    return data.decode("utf-8", errors="replace")


def _unwrap(lines: Iterable[str]) -> str:
    """Join hard-wrapped lines into one paragraph string."""
    return " ".join(line.strip() for line in lines if line.strip())


def fortune_paragraphs(directory: Path = FORTUNES_DIR) -> Iterator[tuple[str, str]]:
    """(paragraph, source) for every fortune, attribution lines dropped.

    A fortune's lines are hard-wrapped prose; an indented line after flush text starts a new
    paragraph (dialogue), and lines starting with "--" name the author, which an engine would read
    aloud.
    """
    if not directory.is_dir():
        return
    for path in sorted(directory.iterdir()):
        if path.suffix or path.is_dir() or path.name in EXCLUDED_FORTUNE_SETS:
            continue
        try:
            content = _read_text(path)
        except OSError:
            continue
        source = f"fortunes:{path.name}"
        for entry in re.split(r"^%\s*$", content, flags=re.MULTILINE):
            paragraph: list[str] = []
            indented = False
            for line in entry.splitlines():
                if _ATTRIBUTION.match(line):
                    break  # the rest of the entry is the author and the work
                starts_indented = line[:1] in ("\t", " ")
                # A blank line, or an indented line after flush text, starts a paragraph; a
                # block indented as a whole stays one.
                if (not line.strip() or (starts_indented and not indented)) and paragraph:
                    yield _unwrap(paragraph), source
                    paragraph = []
                indented = starts_indented
                paragraph.append(line)
            if paragraph:
                yield _unwrap(paragraph), source


def wordnet_examples(directory: Path = WORDNET_DIR) -> Iterator[tuple[str, str]]:
    """(example, source) for WordNet's usage examples: short, everyday, complete sentences."""
    for part in ("verb", "noun", "adj", "adv"):
        path = directory / f"data.{part}"
        if not path.is_file():
            continue
        source = f"wordnet:{part}"
        for line in _read_text(path).splitlines():
            if line.startswith("  ") or "|" not in line:
                continue  # the license header
            gloss = line.split("|", 1)[1]
            for example in re.findall(r'"([^"]+)"', gloss):
                example = example.strip()
                if not example:
                    continue
                # Examples are usually written without the capital and the full stop.
                example = example[0].upper() + example[1:]
                if example[-1] not in ".!?":
                    example += "."
                if part == "adj" and len(example.split()) < 5:
                    continue  # mostly bare noun phrases ("a vapid conversation")
                yield example, source


def zen_of_python() -> Iterator[tuple[str, str]]:
    """The Zen of Python, read from the standard library's ``this.py`` without importing it
    (importing it prints the poem)."""
    path = Path(sysconfig.get_paths()["stdlib"]) / "this.py"
    try:
        match = re.search(r's = """(.*?)"""', path.read_text(encoding="utf-8"), re.DOTALL)
    except OSError:
        return
    if not match:
        return
    for line in codecs.decode(match.group(1), "rot13").splitlines()[1:]:
        if line.strip():
            yield line.strip(), "zen:this.py"


def _prose_paragraphs(text: str) -> Iterator[str]:
    """Paragraphs that look like running prose: no indentation games, tables or code."""
    for block in re.split(r"\n\s*\n", text):
        lines = [line for line in block.splitlines() if line.strip()]
        if not lines:
            continue
        if any(line.startswith(("    ", "\t", "$ ", "#", ">", "|", "+", "=", "*")) for line in lines):
            continue
        yield _unwrap(lines)


def doc_readmes(directory: Path = DOC_DIR) -> Iterator[tuple[str, str]]:
    """(paragraph, source) from packages' README files (plain or gzipped)."""
    if not directory.is_dir():
        return
    for package in sorted(directory.iterdir()):
        if not package.is_dir():
            continue
        for path in sorted(package.glob("README*")):
            if not path.is_file() or path.suffix not in ("", ".gz", ".txt", ".md", ".Debian"):
                continue
            try:
                text = _read_text(path)
            except OSError:
                continue
            for paragraph in _prose_paragraphs(text):
                yield paragraph, f"doc:{path}"


def license_texts(directory: Path = LICENSES_DIR) -> Iterator[tuple[str, str]]:
    """(paragraph, source) from the license texts Debian ships: formal, but well-edited prose."""
    if not directory.is_dir():
        return
    for path in sorted(directory.iterdir()):
        if path.is_file() and not path.is_symlink():
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            for paragraph in _prose_paragraphs(text):
                yield paragraph, f"license:{path.name}"


#: Readers per source kind. "doc" is off by default: which READMEs exist depends on the packages
#: installed on a machine, and a corpus must not change with them (its prose is technical anyway).
SOURCE_READERS = {
    "fortunes": fortune_paragraphs,
    "wordnet": wordnet_examples,
    "zen": zen_of_python,
    "doc": doc_readmes,
    "license": license_texts,
}
DEFAULT_SOURCES = ("fortunes", "wordnet", "zen", "license")


def raw_paragraphs(sources: Sequence[str] = DEFAULT_SOURCES,
                   on_source: Callable[[int, str], None] | None = None) -> Iterator[tuple[str, str]]:
    """Every chosen source, in the fixed order that decides which copy of a duplicate is kept;
    ``on_source(sources_started, kind)`` is called as each source starts (progress lines)."""
    unknown = sorted(set(sources) - set(SOURCE_READERS))
    if unknown:
        raise ValueError(f"unknown text source(s) {unknown}; known: {list(SOURCE_READERS)}")
    started = 0
    for kind, reader in SOURCE_READERS.items():
        if kind in sources:
            started += 1
            if on_source is not None:
                on_source(started, kind)
            yield from reader()


# --- cleaning --------------------------------------------------------------------------------------


def split_sentences(paragraph: str) -> list[str]:
    """Split prose at sentence ends; abbreviations are handled later by rejecting what breaks."""
    paragraph = " ".join(paragraph.translate(_QUOTES).split())
    if not paragraph:
        return []
    return [part.strip() for part in _SENTENCE_END.split(paragraph) if part.strip()]


def _spell_numbers(text: str) -> str:
    """Spell numbers out with the normalizer, so engine and transcript agree on the words: an
    engine left alone reads "1984" or "$5.50" its own way, which may not be the transcript's."""
    return _NUMERIC.sub(lambda match: normalize_text(match.group(0)), text)


def clean_sentence(sentence: str) -> str | None:
    """The engine-ready form of a sentence, or None if it cannot be read unambiguously."""
    text = " ".join(sentence.translate(_QUOTES).split())
    text = text.replace("--", ", ").replace(" ,", ",")
    text = re.sub(r"^(Q|A|[A-Z][a-z]+):\s+", "", text)  # "Q: ...", "Bob: ..." dialogue tags
    text = _ABBREVIATION.sub(lambda match: _ABBREVIATIONS[match.group(0)], text)
    text = _spell_numbers(text.replace(" & ", " and "))
    text = " ".join(text.split()).strip(" -;:,")
    if not text or _URLISH.search(text) or not _ALLOWED.match(text):
        return None
    if _ACRONYM.search(text) or _SINGLE_LETTER.search(text) or _INNER_PERIOD.search(text):
        return None
    if not text[0].isupper() and not text[0] in "\"'(":
        return None  # a fragment left over from a bad split
    if re.search(r"\.\s*\.|\.\S", text):
        return None  # ellipses and "U.S."-style dots
    if text.count('"') % 2 or text.count("(") != text.count(")"):
        return None
    if len(_NON_LETTER.sub("", text)) < 0.75 * len(text.replace(" ", "")):
        return None
    if text[-1] not in ".!?\"')":
        text += "."
    return text


def sentences_from(
    paragraphs: Iterable[tuple[str, str]], *, min_words: int = 3, max_words: int = 30,
    max_chars: int = 200,
) -> list[Sentence]:
    """Clean, normalize and deduplicate sentences (on the transcript), first occurrence wins."""
    seen: set[str] = set()
    out: list[Sentence] = []
    for paragraph, source in paragraphs:
        for raw in split_sentences(paragraph):
            text = clean_sentence(raw)
            if text is None or len(text) > max_chars:
                continue
            normalized = normalize_text(text)
            words = normalized.split()
            if not min_words <= len(words) <= max_words or normalized in seen:
                continue
            if any(len(word) > 20 for word in words):
                continue
            seen.add(normalized)
            out.append(Sentence(text=text, normalized=normalized, source=source))
    return out


@lru_cache(maxsize=4)
def _cached_sentences(min_words: int, max_words: int, sources: tuple[str, ...]) -> tuple[Sentence, ...]:
    return tuple(sentences_from(raw_paragraphs(sources), min_words=min_words, max_words=max_words))


def load_sentences(
    min_words: int = 3, max_words: int = 30, sources: Sequence[str] = DEFAULT_SOURCES,
    on_source: Callable[[int, str], None] | None = None,
) -> list[Sentence]:
    """Every usable sentence from the installed sources, deduplicated, in a deterministic order.

    With ``on_source`` (see ``raw_paragraphs``) the sources are read afresh so each start can be
    reported; without it the result is cached per process.
    """
    if on_source is not None:
        return sentences_from(raw_paragraphs(tuple(sources), on_source), min_words=min_words, max_words=max_words)
    return list(_cached_sentences(min_words, max_words, tuple(sources)))


# --- splits ----------------------------------------------------------------------------------------


def text_bucket(normalized: str, seed: int = 0) -> float:
    """A stable number in [0, 1) for a transcript: the split depends on nothing else, so adding
    sources later never moves an existing sentence to another split."""
    digest = hashlib.sha256(f"{seed}\x00{normalized}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_texts(
    sentences: Sequence[Sentence], dev_frac: float = 0.05, test_frac: float = 0.05, seed: int = 0
) -> tuple[list[Sentence], list[Sentence], list[Sentence]]:
    """(train, dev, test) sentences, disjoint by transcript and stable as sources grow."""
    if dev_frac < 0 or test_frac < 0 or dev_frac + test_frac >= 1:
        raise ValueError(f"bad split fractions dev={dev_frac} test={test_frac}")
    train: list[Sentence] = []
    dev: list[Sentence] = []
    test: list[Sentence] = []
    for sentence in sentences:
        bucket = text_bucket(sentence.normalized, seed)
        if bucket < test_frac:
            test.append(sentence)
        elif bucket < test_frac + dev_frac:
            dev.append(sentence)
        else:
            train.append(sentence)
    return train, dev, test


def source_counts(sentences: Iterable[Sentence]) -> dict[str, int]:
    """Sentences per source kind, in the order the kinds are read."""
    counts = {kind: 0 for kind in SOURCE_PACKAGES}
    for sentence in sentences:
        counts[sentence.source_kind] = counts.get(sentence.source_kind, 0) + 1
    return counts
