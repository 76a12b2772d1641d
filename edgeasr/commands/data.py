"""``edgeasr data``: import corpora into manifests, summarize them, and check them before training.

A training run that discovers a missing or corrupt file hours in has wasted those hours; ``data
validate`` decodes every header up front and lists every bad line at once, so the manifest can be
fixed in one pass.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from edgeasr.audio.io import audio_duration
from edgeasr.data.importers import import_kaldi_dir, import_librispeech
from edgeasr.data.manifest import (
    Utterance,
    iter_manifest_lines,
    manifest_stats,
    read_manifest,
    write_manifest,
)
from edgeasr.errors import EdgeAsrError

# A stored duration may differ this much from the file's before ``validate`` calls it wrong:
# enough for rounding and MP3 header estimates, far less than any real mismatch.
_DURATION_TOLERANCE_S = 0.05


def register(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser(
        "data",
        help="import corpora into manifests, show their statistics, validate them",
        description="Work with JSONL manifests: one utterance per line with its audio path, "
        "normalized text, duration and speaker.",
    )
    group.set_defaults(func=None, group_parser=group)
    actions = group.add_subparsers(dest="data_action", metavar="<action>")

    p = actions.add_parser(
        "import-librispeech",
        help="make a manifest from a LibriSpeech folder",
        description="Make a manifest from LibriSpeech: ROOT may be one split "
        "(LibriSpeech/dev-clean), the LibriSpeech folder (all splits, or those named with "
        "--splits), or the folder it was extracted into. Text is normalized; durations are read "
        "from the audio headers.",
    )
    p.add_argument("root", metavar="ROOT", help="LibriSpeech folder or one of its splits")
    p.add_argument("--out", required=True, metavar="F.jsonl", help="manifest to write")
    p.add_argument("--splits", nargs="+", metavar="NAME", help="only these splits (e.g. dev-clean)")
    p.add_argument("--skip-missing", action="store_true",
                   help="skip transcript lines whose audio is missing instead of failing")
    _add_path_options(p)
    p.set_defaults(func=_import_librispeech)

    p = actions.add_parser(
        "import-kaldi",
        help="make a manifest from a Kaldi data directory",
        description="Make a manifest from a Kaldi data directory (wav.scp and text, optionally "
        "utt2spk and segments). wav.scp must list audio files, not pipe commands.",
    )
    p.add_argument("data_dir", metavar="DIR", help="Kaldi data directory")
    p.add_argument("--out", required=True, metavar="F.jsonl", help="manifest to write")
    p.add_argument("--no-normalize", action="store_true",
                   help="keep the transcripts as they are instead of normalizing them")
    _add_path_options(p)
    p.set_defaults(func=_import_kaldi)

    p = actions.add_parser(
        "stats",
        help="count, hours, speakers and durations of manifests",
        description="Show the size of one or more manifests (and their total).",
    )
    p.add_argument("manifests", nargs="+", metavar="F.jsonl", help="manifests to summarize")
    p.add_argument("--json", action="store_true", help="print the numbers as JSON")
    p.set_defaults(func=_stats)

    p = actions.add_parser(
        "validate",
        help="check that every line parses and every audio file exists and decodes",
        description="Check manifests line by line: valid JSON and fields, audio that exists and "
        "has a readable header, and a stored duration that matches the audio. Every bad line is "
        "reported; the exit status is 2 if there is any.",
    )
    p.add_argument("manifests", nargs="+", metavar="F.jsonl", help="manifests to check")
    p.add_argument("--header-only", action="store_true",
                   help="read only each file's header (fast) instead of decoding every sample, which also "
                        "catches NaN/Inf samples and broken data that recognition would refuse")
    p.set_defaults(func=_validate)


def _add_path_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--relative", action="store_true",
                        help="store audio paths relative to the manifest's folder "
                        "(default: absolute paths)")
    parser.add_argument("--progress", action="store_true", help="show a progress bar")


def _write(args: argparse.Namespace, utterances: list[Utterance]) -> None:
    relative_to = os.path.dirname(os.path.abspath(args.out)) if args.relative else None
    write_manifest(args.out, utterances, relative_to=relative_to)
    stats = manifest_stats(utterances)
    print(
        f"wrote {stats['count']} utterances ({stats['hours']:.2f} h, "
        f"{stats['speakers']} speakers) to {args.out}"
    )


def _import_librispeech(args: argparse.Namespace) -> int:
    missing: list[str] = []
    utterances = import_librispeech(
        args.root,
        splits=args.splits,
        strict=not args.skip_missing,
        progress=args.progress,
        skipped=missing,
    )
    if missing:
        print(
            f"edgeasr: warning: skipped {len(missing)} transcript lines without audio "
            f"(first: {missing[0]})",
            file=sys.stderr,
        )
    _write(args, utterances)
    return 0


def _import_kaldi(args: argparse.Namespace) -> int:
    utterances = import_kaldi_dir(
        args.data_dir, normalize=not args.no_normalize, progress=args.progress
    )
    _write(args, utterances)
    return 0


def _format_stats(name: str, stats: dict) -> str:
    return (
        f"{name}: {stats['count']} utterances, {stats['hours']:.2f} h, "
        f"{stats['speakers']} speakers, duration min/mean/max "
        f"{stats['min_duration']:.2f}/{stats['mean_duration']:.2f}/{stats['max_duration']:.2f} s"
    )


def _stats(args: argparse.Namespace) -> int:
    everything: list[Utterance] = []
    rows = []
    for path in args.manifests:
        utterances = read_manifest(path, resolve_paths=False)
        everything += utterances
        rows.append((path, manifest_stats(utterances)))
    total = manifest_stats(everything)
    if args.json:
        report = {"manifests": [{"path": path, **stats} for path, stats in rows], "total": total}
        print(json.dumps(report, indent=2))
        return 0
    for path, stats in rows:
        print(_format_stats(path, stats))
    if len(rows) > 1:
        print(_format_stats("total", total))
    return 0


def _check_audio(utterance: Utterance, decode: bool = True) -> str | None:
    """The problem with an utterance's audio, or None. ``decode`` reads every sample the way
    recognition does, so what passes here is what ``eval`` and ``train`` accept."""
    try:
        actual = audio_duration(utterance.audio)
        if decode:
            from edgeasr.audio.io import load_audio

            load_audio(utterance.audio)
    except EdgeAsrError as error:
        return str(error)
    end = utterance.extra.get("end")
    if isinstance(end, (int, float)) and not isinstance(end, bool):
        # A segment of a longer recording: it must lie inside the file.
        if end > actual + _DURATION_TOLERANCE_S:
            return f"segment ends at {end:g} s but {utterance.audio} lasts {actual:.3f} s"
        return None
    if abs(actual - utterance.duration) > _DURATION_TOLERANCE_S:
        return (
            f"duration {utterance.duration:g} s in the manifest but {utterance.audio} "
            f"lasts {actual:.3f} s"
        )
    return None


def _validate(args: argparse.Namespace) -> int:
    total_bad = 0
    for path in args.manifests:
        count = bad = 0
        for number, item in iter_manifest_lines(path):
            count += 1
            problem = str(item) if isinstance(item, EdgeAsrError) else _check_audio(item, not args.header_only)
            if problem is None:
                continue
            bad += 1
            # Parse errors already carry "file:line:"; audio problems get it here.
            print(problem if isinstance(item, EdgeAsrError) else f"{path}:{number}: {problem}")
        total_bad += bad
        print(f"{path}: {count} lines checked, {bad} bad", file=sys.stderr if bad else sys.stdout)
    return 2 if total_bad else 0
