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

import torch

from edgeasr.audio.features import FbankOptions, StreamingFbank, compute_fbank
from edgeasr.audio.io import load_audio
from edgeasr.errors import EdgeAsrError

DEMO_CORPUS = Path("data/demo-corpus")
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
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
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
    whole = torch.cat([whole_stream.accept(samples), whole_stream.finish()])
    stream = StreamingFbank(options)
    pieces = [stream.accept(samples[i : i + 1600]) for i in range(0, len(samples), 1600)]
    pieces.append(stream.finish())
    streamed = torch.cat(pieces)
    batched = compute_fbank(samples, options)
    same = whole.shape == streamed.shape and torch.equal(whole, streamed)
    torch_gap = (batched - whole).abs().max().item() if batched.shape == whole.shape else float("inf")
    print(f"   streaming extractor, 100 ms chunks vs whole file: {tuple(streamed.shape)} frames, "
          f"{'identical' if same else 'DIFFERENT'}")
    print(f"   batched torch fbank (training path) vs streaming: max |difference| {torch_gap:.1e}")
    return cli_main(["features", clip.audio, "--chunk-ms", "100"])
