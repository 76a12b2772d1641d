"""``edgeasr corpus synth|engines|texts``: build the synthesized speech corpus and inspect its parts.

No speech corpus can be downloaded where edgeasr is developed, so training speech is synthesized by
real TTS engines reading natural sentences. ``engines`` shows which engines this machine has (and
how fast they are), ``texts`` dumps the sentences, and ``synth`` builds a resumable corpus.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from edgeasr.errors import DataError
from edgeasr.fileio import atomic_write


def _positive_hours(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of hours, got '{text}'") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"hours must be >= 0, got {value}")
    return value


def _range(text: str) -> tuple[float, float]:
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH, got '{text}'") from None
    if low > high:
        raise argparse.ArgumentTypeError(f"LOW must not exceed HIGH in '{text}'")
    return low, high


def register(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser(
        "corpus",
        help="synthesize a speech corpus with TTS engines",
        description="Build a training corpus of synthesized speech and inspect engines and texts.",
    )
    group.set_defaults(func=None, group_parser=group)
    actions = group.add_subparsers(dest="corpus_action", metavar="<action>")

    synth = actions.add_parser(
        "synth",
        help="synthesize a train/dev/test corpus (resumable)",
        description=(
            "Synthesize HOURS of speech into DIR: DIR/wav/<split>/*.wav, DIR/{train,dev,test}.jsonl "
            "manifests (paths relative to DIR), DIR/card.json and DIR/CARD.md. The corpus is a pure "
            "function of the options and the seed; re-running the same command skips every WAV "
            "that exists, so an interrupted build resumes to the identical corpus. Train, dev and "
            "test share no voice and no sentence."
        ),
    )
    synth.add_argument("--hours", type=_positive_hours, required=True,
                       help="total hours of audio (train + dev + test)")
    synth.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory")
    synth.add_argument("--engines", metavar="LIST",
                       help="comma-separated engines (default: every registered engine)")
    synth.add_argument("--engine-weights", metavar="NAME=W,...",
                       help="share of the hours per engine (default favours natural voices: "
                            "kokoro=3,hibari=2,piper=1.5,festival=1.5,flite=1.5,espeak=1)")
    synth.add_argument("--skip-missing", action="store_true",
                       help="leave out engines that are not installed (listed in the card) "
                            "instead of failing")
    synth.add_argument("--heldout-engines", metavar="LIST",
                       help="engines used only in dev/test (e.g. piper: an unseen engine)")
    synth.add_argument("--seed", type=int, default=0, help="seed of the whole job plan (default: 0)")
    synth.add_argument("--jobs", type=int, default=0,
                       help="worker processes (default: 0, one per core)")
    synth.add_argument("--dev-hours", type=_positive_hours,
                       help="hours of dev (default: --dev-frac of --hours, at least 3 minutes)")
    synth.add_argument("--test-hours", type=_positive_hours,
                       help="hours of test (default: --test-frac of --hours, at least 3 minutes)")
    synth.add_argument("--dev-frac", type=float, default=0.05, help="dev share when --dev-hours is not given (default: 0.05)")
    synth.add_argument("--test-frac", type=float, default=0.05, help="test share when --test-hours is not given (default: 0.05)")
    synth.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                       help="noise, reverb, telephone band and level changes (milder in dev/test); "
                            "a low noise floor is always added")
    synth.add_argument("--sample-rate", type=int, default=16000, help="output sample rate in Hz (default: 16000)")
    synth.add_argument("--rate-range", type=_range, default=(0.8, 1.25), metavar="LOW,HIGH",
                       help="speaking-rate factors drawn per utterance (default: 0.8,1.25)")
    synth.add_argument("--pitch-range", type=_range, default=(0.85, 1.15), metavar="LOW,HIGH",
                       help="pitch factors drawn per utterance, where the voice supports it (default: 0.85,1.15)")
    synth.add_argument("--heldout-voice-frac", type=float, default=0.1,
                       help="share of each engine's speakers held out for dev and for test each (default: 0.1)")
    synth.add_argument("--splits", default="train,dev,test", metavar="LIST",
                       help="splits to synthesize (default: train,dev,test); 'dev,test' builds only "
                            "the held-out sets, the same utterances a whole build has")
    synth.add_argument("--quiet", action="store_true", help="no progress bar")
    synth.set_defaults(func=run_synth)

    engines = actions.add_parser(
        "engines",
        help="list TTS engines: available or not, voices, sample rate, speed",
        description=(
            "List every registered TTS engine: whether it can run here (and why not), its number "
            "of voices and speakers, its sample rate and, with --measure, its speed in x real "
            "time measured by synthesizing one sentence with its first voice."
        ),
    )
    engines.add_argument("--measure", action="store_true", help="synthesize one sentence per engine and time it")
    engines.add_argument("--json", action="store_true", help="print JSON instead of a table")
    engines.set_defaults(func=run_engines)

    texts = actions.add_parser(
        "texts",
        help="dump or count the corpus sentences",
        description=(
            "Load the corpus sentences (fortunes, WordNet examples, the Zen of Python, license "
            "texts), cleaned, normalized and deduplicated. --out writes them as JSONL (text, "
            "normalized, source, split); --stats prints counts per source and split."
        ),
    )
    texts.add_argument("--out", type=Path, metavar="FILE", help="write sentences as JSONL")
    texts.add_argument("--stats", action="store_true", help="print counts per source and split")
    texts.add_argument("--min-words", type=int, default=3, help="shortest sentence in words")
    texts.add_argument("--max-words", type=int, default=30, help="longest sentence in words")
    texts.add_argument("--sources", metavar="LIST",
                       help="comma-separated source kinds (default: fortunes,wordnet,zen,license; "
                            "'doc' adds installed packages' READMEs)")
    texts.add_argument("--progress", action="store_true",
                       help="report each source as it is read on standard error (automatic on a terminal)")
    texts.set_defaults(func=run_texts)


def run_synth(args: argparse.Namespace) -> int:
    from edgeasr.data.corpus.builder import SynthOptions, build_corpus, parse_list, parse_weights

    options = SynthOptions(
        hours=args.hours,
        out_dir=args.out,
        engines=parse_list(args.engines) or None,
        engine_weights=parse_weights(args.engine_weights),
        seed=args.seed,
        jobs=args.jobs,
        dev_hours=args.dev_hours,
        test_hours=args.test_hours,
        dev_frac=args.dev_frac,
        test_frac=args.test_frac,
        augment=args.augment,
        sample_rate=args.sample_rate,
        skip_missing=args.skip_missing,
        heldout_engines=parse_list(args.heldout_engines),
        rate_range=args.rate_range,
        pitch_range=args.pitch_range,
        heldout_voice_frac=args.heldout_voice_frac,
        splits=tuple(parse_list(args.splits)),
    )
    command = "edgeasr " + " ".join(shlex.quote(arg) for arg in sys.argv[1:]) if sys.argv[1:] else None
    report = build_corpus(options, command=command, progress=not args.quiet)
    card = report.card
    for split, row in card["splits"].items():
        print(f"{split:5s} {row['hours']:8.3f} h {row['utterances']:7d} utterances "
              f"{row['speakers']:4d} voices")
    speed = card["speed"]
    rate = speed["audio_hours_per_wall_minute"]
    print(f"{report.new_utterances} synthesized, {report.reused_utterances} reused in {report.wall_s:.1f} s"
          + (f"; {rate:.4f} h of audio per wall minute on {speed['cores']} cores" if rate else ""))
    for name, reason in card["skipped_engines"].items():
        print(f"skipped {name}: {reason}")
    print(f"corpus: {report.out_dir} (see CARD.md)")
    return 0


def run_engines(args: argparse.Namespace) -> int:
    from edgeasr.data.corpus.base import engine_names, get_engine
    from edgeasr.errors import EngineError

    sentence = "The quick brown fox jumps over the lazy dog, and then it runs back home."
    rows = []
    for name in engine_names():
        engine = get_engine(name)
        ok, reason = engine.available()
        row = {"engine": name, "available": ok, "reason": reason, "voices": None, "speakers": None,
               "sample_rate": getattr(engine, "sample_rate", None), "x_real_time": None}
        if ok:
            try:
                voices = engine.voices()
                row["voices"] = len(voices)
                row["speakers"] = len({str(v.params.get("speaker") or v.id) for v in voices})
                if args.measure and voices:
                    engine.synthesize("Warm up.", voices[0])
                    started = time.perf_counter()
                    result = engine.synthesize(sentence, voices[0])
                    elapsed = time.perf_counter() - started
                    row["sample_rate"] = result.sample_rate
                    row["x_real_time"] = round(len(result.samples) / result.sample_rate / elapsed, 1)
            except EngineError as error:
                row["available"], row["reason"] = False, str(error)
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'engine':10s} {'ok':3s} {'voices':>6s} {'speakers':>8s} {'rate Hz':>8s} {'x real time':>11s}  note")
    for row in rows:
        print(f"{row['engine']:10s} {'yes' if row['available'] else 'no':3s} "
              f"{row['voices'] if row['voices'] is not None else '-':>6} "
              f"{row['speakers'] if row['speakers'] is not None else '-':>8} "
              f"{row['sample_rate'] or 'varies':>8} "
              f"{row['x_real_time'] if row['x_real_time'] is not None else '-':>11}  {row['reason']}")
    return 0


def run_texts(args: argparse.Namespace) -> int:
    from edgeasr.data.corpus.builder import TEXT_HELDOUT_FRAC, TEXT_SPLIT_SEED
    from edgeasr.data.corpus.texts import (
        DEFAULT_SOURCES, SOURCE_READERS, load_sentences, source_counts, split_texts,
    )

    if args.min_words < 1 or args.max_words < args.min_words:
        raise DataError(f"bad word limits: --min-words {args.min_words} --max-words {args.max_words}")
    sources = [s.strip() for s in (args.sources or ",".join(DEFAULT_SOURCES)).split(",") if s.strip()]
    known = [kind for kind in SOURCE_READERS if kind in sources]

    def report_source(started: int, kind: str) -> None:
        print(f"edgeasr: corpus texts: reading {kind} ({started}/{len(known)} sources)", file=sys.stderr, flush=True)

    on_source = report_source if getattr(args, "progress", False) or sys.stderr.isatty() else None
    try:
        sentences = load_sentences(args.min_words, args.max_words, sources, on_source=on_source)
    except ValueError as error:
        raise DataError(f"--sources: {error}") from None
    train, dev, test = split_texts(sentences, TEXT_HELDOUT_FRAC, TEXT_HELDOUT_FRAC, TEXT_SPLIT_SEED)
    split_of = {id(s): name for name, part in (("train", train), ("dev", dev), ("test", test)) for s in part}
    if args.out:
        with atomic_write(args.out, "w", encoding="utf-8") as handle:
            for sentence in sentences:
                handle.write(json.dumps({"text": sentence.text, "normalized": sentence.normalized,
                                         "source": sentence.source, "split": split_of[id(sentence)]}) + "\n")
        print(f"wrote {len(sentences)} sentences to {args.out}")
    if args.stats or not args.out:
        print(f"{len(sentences)} sentences (train {len(train)}, dev {len(dev)}, test {len(test)})")
        for kind, count in source_counts(sentences).items():
            if kind in sources:
                print(f"  {kind:9s} {count:7d}")
        words = [len(s.normalized.split()) for s in sentences]
        if words:
            print(f"  words per sentence: mean {sum(words) / len(words):.1f}, min {min(words)}, max {max(words)}")
    return 0
