"""``edgeasr train``: train a model from a YAML recipe on a corpus directory.

Run it under ``torchrun --nproc_per_node=N`` for data-parallel training (gloo on CPU).
"""

from __future__ import annotations

import argparse

import yaml

from edgeasr.errors import EdgeAsrError


def _override(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model from a YAML recipe",
        description=(
            "Train a model on DATA/train.jsonl (DATA/dev.jsonl for progress checks). Features are "
            "cached under DATA/features; checkpoints are atomic and --resume continues after a kill. "
            "The averaged model is packaged in OUT/model."
        ),
    )
    parser.add_argument("--config", required=True, help="YAML recipe (see configs/)")
    parser.add_argument("--data", required=True, help="corpus directory holding train.jsonl and dev.jsonl")
    parser.add_argument("--out", required=True, help="experiment directory")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in OUT")
    parser.add_argument("--max-steps", type=int, help="override train.max_steps")
    parser.add_argument("--set", type=_override, action="append", default=[], metavar="KEY=VALUE",
                        help="override a train.* option, e.g. --set peak_lr=0.002 (repeatable)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgeasr.train.trainer import train

    overrides = dict(args.set)
    if args.max_steps is not None:
        if args.max_steps < 1:
            raise EdgeAsrError("--max-steps must be at least 1")
        overrides["max_steps"] = args.max_steps
    model_dir = train(args.config, args.data, args.out, resume=args.resume, overrides=overrides,
                      progress=not args.quiet)
    print(f"model: {model_dir}")
    return 0
