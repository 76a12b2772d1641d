"""``edgeasr tokenizer``: train output units from manifest transcripts, and inspect them.

``encode`` exists so a user can see what the model will be asked to emit for a sentence (how
words split into pieces) before spending hours of training on a vocabulary.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from edgeasr.data.manifest import iter_manifest
from edgeasr.text.normalize import normalize_text
from edgeasr.text.tokenizer import Tokenizer


def register(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser(
        "tokenizer",
        help="train a character or BPE tokenizer, or show how text is tokenized",
        description="Output units of the recognizer: characters, or sentencepiece BPE pieces "
        "trained on the manifests' transcripts. Ids follow WeNet: <blank>=0, <unk>=1, "
        "<sos/eos>=last.",
    )
    group.set_defaults(func=None, group_parser=group)
    actions = group.add_subparsers(dest="tokenizer_action", metavar="<action>")

    p = actions.add_parser(
        "train",
        help="train a tokenizer on the text of manifests",
        description="Train a tokenizer on the (normalized) transcripts of one or more manifests "
        "and save it to a directory.",
    )
    p.add_argument("--manifest", action="append", required=True, metavar="F.jsonl",
                   help="manifest whose text to train on (repeat for several)")
    p.add_argument("--kind", choices=("bpe", "char"), default="bpe",
                   help="bpe: sentencepiece BPE pieces; char: one unit per character "
                   "(default: bpe)")
    p.add_argument("--vocab-size", type=int, default=256, metavar="N",
                   help="number of ids including <blank>, <unk> and <sos/eos>; bpe only "
                   "(default: 256)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--out", required=True, metavar="DIR", help="directory to save it in")
    p.set_defaults(func=_train)

    p = actions.add_parser(
        "encode",
        help="show the pieces and ids of a text",
        description="Normalize TEXT and print it with its pieces and ids under a tokenizer.",
    )
    p.add_argument("--model", required=True, metavar="DIR", help="tokenizer directory")
    p.add_argument("text", nargs="+", metavar="TEXT", help="text to encode (words are joined)")
    p.set_defaults(func=_encode)


def _texts(manifests: list[str]) -> list[str]:
    return [u.text for path in manifests for u in iter_manifest(path, resolve_paths=False)]


def _train(args: argparse.Namespace) -> int:
    texts = _texts(args.manifest)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tokenizer = Tokenizer.train(texts, kind=args.kind, vocab_size=args.vocab_size,
                                    seed=args.seed)
    for warning in caught:
        print(f"edgeasr: warning: {warning.message}", file=sys.stderr)
    tokenizer.save(args.out)
    print(
        f"trained a {tokenizer.kind} tokenizer with {tokenizer.vocab_size} units on "
        f"{len(texts)} transcripts; saved to {args.out}"
    )
    return 0


def _encode(args: argparse.Namespace) -> int:
    tokenizer = Tokenizer.load(args.model)
    text = normalize_text(" ".join(args.text))
    print(f"text:   {text}")
    print(f"pieces: {' '.join(tokenizer.pieces(text))}")
    print(f"ids:    {' '.join(str(i) for i in tokenizer.encode(text))}")
    return 0
