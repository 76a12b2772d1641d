"""``edgeasr demo``: the main job, end to end, on whatever this machine has.

With a trained default model in ``models/default`` it streams a bundled sample clip through the
recognizer and prints partial results. Until then (and always with ``--features``), it builds a
tiny synthesized corpus with real TTS engines and shows the features of one of its clips,
extracted both whole-file and streaming, proving the two agree.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from edgeasr.audio.features import FbankOptions, StreamingFbank, compute_fbank
from edgeasr.audio.io import load_audio
from edgeasr.errors import EdgeAsrError

DEMO_CORPUS = Path("data/demo-corpus")
SAMPLES_DIR = Path(__file__).resolve().parents[2] / "samples"
DEMO_ENGINES = "espeak,flite,festival,hibari"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the main job on a sample (what `make demo` runs)",
        description=(
            "Build a tiny corpus with real TTS engines and show the features of one clip "
            "(whole-file and streaming extraction, which must agree)."
        ),
    )
    parser.add_argument("--out", type=Path, default=DEMO_CORPUS, help=f"corpus directory (default: {DEMO_CORPUS})")
    parser.add_argument("--seconds", type=float, default=60.0, help="audio to synthesize (default: 60)")
    parser.add_argument("--engines", default=DEMO_ENGINES, help=f"TTS engines (default: {DEMO_ENGINES})")
    parser.add_argument("--features", action="store_true",
                        help="show the corpus + features demo even when a default model exists")
    parser.add_argument("--model", default="default", help="model for the transcription demo (default: default)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgeasr.model.package import resolve_model_dir

    if not args.features and (resolve_model_dir(args.model) / "model.pt").exists():
        return run_transcription(args)
    return run_features(args)


def run_transcription(args: argparse.Namespace) -> int:
    """Stream the bundled sample clips through the model, 100 ms at a time, like a microphone."""
    import time

    from edgeasr.api import set_compute_threads
    from edgeasr.decoding.recognizer import Recognizer
    from edgeasr.evaluate.metrics import word_errors

    set_compute_threads(1)
    recognizer = Recognizer.load(args.model)
    print(f"== streaming transcription with {recognizer.packaged.directory} "
          f"(chunk {recognizer.chunk_size} frames = {recognizer.chunk_size * recognizer.frame_seconds * 1000:.0f} ms, "
          f"mode {recognizer.mode}, 1 thread)")
    clips = sorted(SAMPLES_DIR.glob("*.wav"))
    if not clips:
        raise EdgeAsrError(f"{SAMPLES_DIR}: no sample clips to transcribe")
    for clip in clips:
        reference_path = clip.with_suffix(".txt")
        reference = reference_path.read_text().strip() if reference_path.exists() else None
        samples = load_audio(clip)
        print(f"\n{clip.name} ({len(samples) / 16000:.1f} s)")
        session = recognizer.stream()
        shown = ""
        started = time.perf_counter()
        for start in range(0, len(samples), 1600):
            partial = session.accept(samples[start : start + 1600])
            if partial.text != shown:
                shown = partial.text
                print(f"  partial {start / 16000 + 0.1:5.1f} s: {shown}")
        result = session.finish()
        elapsed = time.perf_counter() - started
        print(f"  final:   {result.text}")
        print(f"  words:   " + " ".join(f"{w.word}@{w.start:.2f}s" for w in result.words))
        print(f"  confidence {result.confidence:.2f}; real-time factor {elapsed / (len(samples) / 16000):.3f}")
        if reference:
            errors = word_errors(reference, result.text)
            print(f"  reference: {reference}\n  WER {errors.rate:.1f}%")
    return 0


def run_features(args: argparse.Namespace) -> int:
    from edgeasr.cli import main as cli_main
    from edgeasr.data.manifest import read_manifest

    print(f"== 1. synthesizing a tiny corpus ({args.seconds:.0f} s of speech) into {args.out}")
    status = cli_main([
        "corpus", "synth", "--hours", f"{args.seconds / 3600:.6f}", "--out", str(args.out),
        "--engines", args.engines, "--skip-missing", "--quiet",
    ])
    if status:
        return status
    card = json.loads((args.out / "card.json").read_text())
    print(json.dumps(card.get("summary", card), indent=1)[:1500])

    manifest = args.out / "test.jsonl"
    utts = read_manifest(manifest) if manifest.exists() else []
    if not utts:
        utts = read_manifest(args.out / "train.jsonl")
    if not utts:
        raise EdgeAsrError(f"{args.out}: the demo corpus has no utterances")
    clip = utts[0]
    print(f"\n== 2. features of one clip: {clip.audio}")
    print(f"   transcript: {clip.text!r}  ({clip.duration:.2f} s, voice {clip.speaker})")

    options = FbankOptions()
    samples = load_audio(clip.audio)
    whole_stream = StreamingFbank(options)
    whole = torch.from_numpy(np.concatenate([whole_stream.accept(samples), whole_stream.finish()]))
    stream = StreamingFbank(options)
    pieces = [stream.accept(samples[i : i + 1600]) for i in range(0, len(samples), 1600)]
    pieces.append(stream.finish())
    streamed = torch.from_numpy(np.concatenate(pieces))
    batched = compute_fbank(samples, options)
    same = whole.shape == streamed.shape and torch.equal(whole, streamed)
    torch_gap = (batched - whole).abs().max().item() if batched.shape == whole.shape else float("inf")
    print(f"   streaming extractor, 100 ms chunks vs whole file: {tuple(streamed.shape)} frames, "
          f"{'identical' if same else 'DIFFERENT'}")
    print(f"   batched torch fbank (training path) vs streaming: max |difference| {torch_gap:.1e}")
    return cli_main(["features", clip.audio, "--chunk-ms", "100"])
