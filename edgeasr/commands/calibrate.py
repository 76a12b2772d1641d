"""``edgeasr calibrate``: fit a model's confidence calibration on a dev manifest.

Decodes the manifest as users do (the model's mode and streaming settings), labels each
recognized word right or wrong against the reference, fits ``edgeasr.decoding.confidence``'s
logistic map and writes ``MODEL/calibration.json``; from then on every final word and utterance
confidence of that model is calibrated. Fit on dev data, never on the set you report.
"""

from __future__ import annotations

import argparse
import json


from edgeasr.commands._decode_args import add_decode_arguments, open_recognizer
from edgeasr.errors import EdgeAsrError
from edgeasr.progress import Progress


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "calibrate", help="fit calibrated word/utterance confidences on a dev manifest",
        description=__doc__.split("\n\n")[1] if __doc__ else None)
    parser.add_argument("--manifest", required=True, metavar="DEV.jsonl", help="held-out dev utterances")
    parser.add_argument("--max-utts", type=int, metavar="N", help="use only the first N utterances")
    parser.add_argument("--out", metavar="DIR", help="where to write calibration.json (default: the model directory)")
    add_decode_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgeasr.api import set_compute_threads
    from edgeasr.data.manifest import read_manifest
    from edgeasr.decoding.confidence import calibrated, calibration_report, decode_for_calibration, fit_calibration

    set_compute_threads(args.threads)
    utterances = read_manifest(args.manifest)[: args.max_utts]
    if not utterances:
        raise EdgeAsrError(f"{args.manifest}: no utterances")
    recognizer = open_recognizer(args)
    directory = args.out or recognizer.directory
    if directory is None:
        raise EdgeAsrError("this model has no directory to write into; pass --out DIR")

    progress = Progress("calibrate", len(utterances), "utterances decoded", True, every=10.0)
    decoded = decode_for_calibration(recognizer, utterances, progress.update)
    calibrator = fit_calibration(decoded, str(args.manifest))
    before, after = calibration_report(decoded), calibration_report(calibrated(decoded, calibrator))
    path = calibrator.save(directory)
    print(json.dumps({"calibration": str(path), "weights": calibrator.weights, **calibrator.fitted_on,
                      "dev_word_ece": {"raw": before["word_ece"], "calibrated": after["word_ece"]},
                      "dev_utterance_ece": {"raw": before["utterance_ece"], "calibrated": after["utterance_ece"]}},
                     indent=1))
    return 0
