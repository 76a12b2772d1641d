"""``edgeasr lm``: build a word n-gram language model for the search, and measure one.

``train`` gathers normalised text (files, plus the corpus text pool's train split unless
``--no-pool``), removes every sentence of the ``--exclude`` manifests, and writes an ARPA model
with its card. Put it in a model directory as ``lm/`` and every decoder uses it (or pass ``--lm``).
"""

from __future__ import annotations

import argparse
import json

from edgeasr.errors import EdgeAsrError


def register(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser("lm", help="build or measure a word n-gram language model",
                                  description="Word n-gram language models (Kneser-Ney, ARPA) for the beam search.")
    group.set_defaults(func=None, group_parser=group)
    actions = group.add_subparsers(dest="lm_action", metavar="<action>")
    p = actions.add_parser("train", help="train an n-gram LM from text",
                           description="Train an interpolated modified Kneser-Ney word n-gram on normalised text "
                                       "and write DIR/lm.arpa.gz, DIR/card.json and DIR/README.md.")
    p.add_argument("--text", action="append", default=[], metavar="FILE",
                   help="text file, one sentence a line (.gz allowed; normalised like transcripts); repeat")
    p.add_argument("--transcripts", action="append", default=[], metavar="M.jsonl",
                   help="a manifest whose transcripts are text too, e.g. the acoustic model's training set "
                        "(the source LM of density-ratio fusion: `--source-lm`); repeat")
    p.add_argument("--no-pool", action="store_true",
                   help="leave out the corpus text pool (the packaged prose the synthesized corpus reads)")
    p.add_argument("--unit", choices=("word", "char"), default="word",
                   help="word n-gram, or character n-gram (scores spelling as it happens; use --order 6)")
    p.add_argument("--order", type=int, choices=range(1, 11), metavar="N", default=3,
                   help="n-gram order (default: 3; 5-7 for characters)")
    p.add_argument("--prune", metavar="C1,C2,...",
                   help="minimum count per order, e.g. 1,1,2 (default: 2 for the highest order of 3+)")
    p.add_argument("--exclude", action="append", default=[], metavar="M.jsonl",
                   help="manifest whose transcripts must not be in the LM (held-out dev/test sets); repeat")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (e.g. MODEL_DIR/lm)")
    p.set_defaults(func=_train)
    p = actions.add_parser("eval", help="perplexity of a text under an LM",
                           description="Perplexity of FILE's sentences (normalised) under an LM.")
    p.add_argument("--lm", required=True, metavar="PATH", help="LM directory or ARPA file")
    p.add_argument("--text", required=True, metavar="FILE", help="text file, one sentence a line")
    p.set_defaults(func=_eval)


def _counts(value: str | None, order: int) -> list[int] | None:
    if value is None:
        return None
    try:
        counts = [int(part) for part in value.split(",")]
    except ValueError:
        raise EdgeAsrError(f"--prune must be comma-separated whole numbers, got {value!r}") from None
    if len(counts) != order:
        raise EdgeAsrError(f"--prune needs {order} counts (one per order), got {len(counts)}")
    return counts


def _train(args: argparse.Namespace) -> int:
    from edgeasr.lm.build import build_lm

    card = build_lm(args.out, texts=args.text, use_pool=not args.no_pool, order=args.order,
                    min_counts=_counts(args.prune, args.order), exclude=args.exclude, unit=args.unit,
                    transcripts=args.transcripts)
    print(json.dumps({k: card[k] for k in ("unit", "order", "ngrams", "sentences", "words", "excluded_sentences",
                                            "dev_perplexity", "bytes")}))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from edgeasr.lm import load_lm
    from edgeasr.lm.build import text_file_sentences

    from edgeasr.lm.build import as_characters

    lm = load_lm(args.lm)
    sentences = list(text_file_sentences(Path(args.text)))
    if not sentences:
        raise EdgeAsrError(f"{args.text}: no sentences")
    if lm.unit == "char":
        sentences = [as_characters(s) for s in sentences]
    words = sum(len(s) for s in sentences)
    oov = sum(1 for s in sentences for w in s if (w,) not in lm.probs[1])
    print(json.dumps({"sentences": len(sentences), "words": words, "oov_rate": round(oov / words, 4),
                      "perplexity": round(lm.perplexity(sentences), 2)}))
    return 0
