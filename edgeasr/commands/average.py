"""``edgeasr average``: package an experiment's checkpoints into a model directory."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "average",
        help="average an experiment's last or best K checkpoints into a model directory",
        description=(
            "Average the weights of the newest (--by last) or lowest-dev-CER (--by best) K "
            "checkpoints of a training run and write a model directory usable by transcribe/eval."
        ),
    )
    parser.add_argument("--exp", required=True, help="experiment directory (the --out of `edgeasr train`)")
    parser.add_argument("--out", required=True, help="model directory to write")
    parser.add_argument("--num", type=int, default=5, help="checkpoints to average (default: 5)")
    parser.add_argument("--by", choices=("last", "best"), default="last", help="which checkpoints (default: last)")
    parser.add_argument("--fp16", action="store_true",
                        help="store float weights as float16: half the size, loaded as float32 (for shipping)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgeasr.train.trainer import package_experiment

    print(f"model: {package_experiment(args.exp, args.out, args.num, args.by, half=args.fp16)}")
    return 0
