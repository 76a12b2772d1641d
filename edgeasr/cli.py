"""The ``edgeasr`` console command.

Each subcommand lives in its own module under ``edgeasr.commands`` and exposes
``register(subparsers)``; this file only wires them together and turns ``EdgeAsrError`` into a
one-line message with exit status 2, so bad input never shows a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from edgeasr import __version__
from edgeasr.errors import EdgeAsrError

# Modules under edgeasr.commands, in the order their subcommands appear in --help.
COMMAND_MODULES = ["demo", "audio", "features", "data", "tokenizer", "corpus", "importer", "lm", "train", "average", "transcribe", "calibrate", "eval", "bench", "quantize", "export", "serve", "client"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeasr",
        description="Efficient streaming speech recognition for small devices.",
    )
    parser.add_argument("--version", action="version", version=f"edgeasr {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="<command>")
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"edgeasr.commands.{name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        # A group such as `edgeasr corpus` with no action: show its help, not a traceback.
        (getattr(args, "group_parser", None) or parser).print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except EdgeAsrError as error:
        print(f"edgeasr: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgeasr: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
