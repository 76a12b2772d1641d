"""``edgeasr lm train``: gather normalised text, estimate a word n-gram, write it with a card.

Text comes from files the user names (one sentence per line, any casing and punctuation: each line
goes through ``normalize_text``, the transcripts' own normaliser) and from the corpus's text pool:
the freely licensed prose that installed Debian packages ship (``edgeasr.data.corpus.texts``).
Only the pool's *train* split is used, and every sentence of an ``--exclude`` manifest is removed,
so a synthesized corpus's dev and test transcripts never leak into the model that decodes them.
The card records sources, licences, counts and the perplexity on the pool's held-out dev split.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Sequence

from edgeasr.errors import EdgeAsrError
from edgeasr.lm.ngram import _open_text, train_ngram
from edgeasr.text.normalize import normalize_text

LM_FILE = "lm.arpa.gz"


def lm_file(path: str | os.PathLike[str]) -> Path:
    """The ARPA file of an LM directory, or the file itself."""
    path = Path(path)
    if path.is_dir():
        path = path / LM_FILE
    if not path.is_file():
        raise EdgeAsrError(f"{path}: no such language model (make one with `edgeasr lm train`)")
    return path


def text_file_sentences(path: Path) -> Iterable[list[str]]:
    if not path.is_file():
        raise EdgeAsrError(f"{path}: no such text file")
    try:
        with _open_text(path) as lines:
            for line in lines:
                words = normalize_text(line).split()
                if words:
                    yield words
    except UnicodeDecodeError:
        raise EdgeAsrError(f"{path}: not UTF-8 text") from None


def pool_sentences(split: str = "train") -> tuple[list[list[str]], dict]:
    """The corpus text pool's sentences of one split, and their sources (for the card)."""
    from edgeasr.data.corpus.builder import TEXT_HELDOUT_FRAC, TEXT_SPLIT_SEED
    from edgeasr.data.corpus.texts import SOURCE_PACKAGES, load_sentences, source_counts, split_texts

    train, dev, test = split_texts(load_sentences(), TEXT_HELDOUT_FRAC, TEXT_HELDOUT_FRAC, TEXT_SPLIT_SEED)
    chosen = {"train": train, "dev": dev, "test": test}[split]
    counts = source_counts(chosen)
    sources = {kind: {"package": SOURCE_PACKAGES[kind], "sentences": n} for kind, n in counts.items() if n}
    return [s.normalized.split() for s in chosen], sources


def excluded_texts(manifests: Sequence[str | os.PathLike[str]]) -> set[str]:
    from edgeasr.data.manifest import read_manifest

    texts: set[str] = set()
    for manifest in manifests:
        texts |= {" ".join(normalize_text(u.text).split()) for u in read_manifest(manifest, resolve_paths=False)}
    return texts


def as_characters(words: list[str]) -> list[str]:
    """A sentence as a character LM's "words": its letters, "_" for each space."""
    return list("_".join(words))


def build_lm(out: str | os.PathLike[str], texts: Sequence[str | os.PathLike[str]] = (), use_pool: bool = True,
             order: int = 3, min_counts: Sequence[int] | None = None,
             exclude: Sequence[str | os.PathLike[str]] = (), unit: str = "word",
             transcripts: Sequence[str | os.PathLike[str]] = ()) -> dict:
    """Train and write ``out/lm.arpa.gz`` with ``card.json`` and ``README.md``; returns the card.

    ``unit="char"`` trains a character n-gram (orders 5-7 are typical) instead of a word one.
    ``transcripts``: manifests whose transcripts are text too, e.g. an acoustic model's training
    set, for the source LM of density-ratio fusion."""
    if unit not in ("word", "char"):
        raise EdgeAsrError(f"--unit must be word or char, not {unit!r}")
    if not texts and not transcripts and not use_pool:
        raise EdgeAsrError("no text: pass --text FILE or --transcripts M.jsonl (or leave the corpus text pool on)")
    banned = excluded_texts(exclude)
    sentences: list[list[str]] = []
    sources: dict = {}
    if use_pool:
        pool, sources = pool_sentences("train")
        sentences += pool
    for path in texts:
        lines = list(text_file_sentences(Path(path)))
        sources[f"file:{Path(path).name}"] = {"path": str(path), "sentences": len(lines)}
        sentences += lines
    if transcripts:
        from edgeasr.data.manifest import read_manifest

        for manifest in transcripts:
            lines = [normalize_text(u.text).split() for u in read_manifest(manifest, resolve_paths=False)]
            lines = [line for line in lines if line]
            sources[f"transcripts:{Path(manifest).name}"] = {"path": str(manifest), "sentences": len(lines)}
            sentences += lines
    before = len(sentences)
    sentences = [s for s in sentences if " ".join(s) not in banned]
    if not sentences:
        raise EdgeAsrError("no sentences left to train on")
    if min_counts is None:
        if unit == "char":  # character n-grams are many: prune the two highest orders
            min_counts = [1] * (order - 2) + [2, 2] if order >= 4 else [1] * order
        else:
            min_counts = [1] * (order - 1) + [2] if order >= 3 else [1] * order
    convert = as_characters if unit == "char" else list
    lm = train_ngram([convert(s) for s in sentences], order=order, min_counts=min_counts)
    out = Path(out)
    lm.write_arpa(out / LM_FILE)
    held_out, _ = pool_sentences("dev")
    held_out = [s for s in held_out if " ".join(s) not in banned]
    card = {
        "order": order,
        "smoothing": "interpolated modified Kneser-Ney",
        "min_counts": list(min_counts),
        "ngrams": lm.counts(),
        "sentences": len(sentences),
        "words": sum(len(s) for s in sentences),
        "excluded_sentences": before - len(sentences),
        "excluded_manifests": [str(m) for m in exclude],
        "sources": sources,
        "unit": unit,
        "dev_perplexity": round(lm.perplexity([convert(s) for s in held_out]), 2) if held_out else None,
        "dev_sentences": len(held_out),
        "bytes": (out / LM_FILE).stat().st_size,
    }
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    (out / "README.md").write_text(card_markdown(card))
    return card


LICENCES = {
    "fortunes": "fortune cookies: public domain / freely redistributable (Debian fortunes, BSD-licensed package)",
    "wordnet": "WordNet 3.0 example sentences: WordNet licence (BSD-like, Princeton)",
    "zen": "the Zen of Python: PSF licence",
    "license": "licence texts from base-files: verbatim copying permitted",
}


def card_markdown(card: dict) -> str:
    kind = "Character" if card.get("unit") == "char" else "Word"
    lines = [f"# {kind} n-gram language model", "",
             f"{card['order']}-gram over {card.get('unit', 'word')}s, {card['smoothing']}, pruned with minimum counts {card['min_counts']} "
             f"per order; n-grams per order: {card['ngrams']}. {card['sentences']:,} sentences, "
             f"{card['words']:,} words; {card['excluded_sentences']} sentences removed because held-out "
             f"manifests contain them ({', '.join(card['excluded_manifests']) or 'none given'}).", "",
             f"Perplexity per {card.get('unit', 'word')} on the text pool's held-out dev split ({card['dev_sentences']} sentences): "
             f"{card['dev_perplexity']}.", "", "## Sources and licences", ""]
    for kind, source in card["sources"].items():
        licence = LICENCES.get(kind, "as its owner licensed it")
        lines.append(f"- {kind}: {source.get('package') or source.get('path')}, {source['sentences']:,} sentences; {licence}")
    lines += ["", "Rebuild: `edgeasr lm train` with the same --unit, --text, --order, --prune and --exclude "
                  "(see docs/LM.md).", ""]
    return "\n".join(lines)
