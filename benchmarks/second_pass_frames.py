"""What Whisper's decoder reads in the second pass: a full-context re-encoding, or the frames the
streaming first pass already made (issue 17, item 4), in one run.

    python benchmarks/second_pass_frames.py --model default \\
        --manifest test=data/synth4/test.jsonl --manifest realdev=../shared/data/realdev/realdev.jsonl

The default's second pass (``whisper_rescoring``) re-encodes each segment with full context, at
the start of a 10 s window of silence, before Whisper's decoder writes the finals. U2-style
attention rescoring would instead let the decoder read the first pass's chunk-causal frames, which
cost nothing more. Every utterance is transcribed in three ways, taking turns, 1 thread:

- ``full_context``: the shipped second pass;
- ``chunk_causal``: the decoder reads the segment's chunk-causal encoding at the model's chunk
  (what the first pass streamed), and the joint search's CTC term the first pass's posteriors;
- ``chunk_causal_window``: as above, but the 10 s window of silence is encoded chunk-causally too
  (the segment's whole chunks are the same; its last, partial chunk now sees the silence after it).

Only the encoder frames differ: the joint search, its weights and the decoder are the same. Per
set and variant: WER and CER. Writes benchmarks/results/second_pass_frames.json and regenerates
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeasr.audio.io import load_audio  # noqa: E402
from edgeasr.data.manifest import read_manifest  # noqa: E402
from edgeasr.decoding.recognizer import DecodeOptions, Recognizer  # noqa: E402
from edgeasr.evaluate.metrics import corpus_errors  # noqa: E402
from edgeasr.evaluate.report import run_facts, save_result  # noqa: E402
from edgeasr.model.package import load_model_dir  # noqa: E402

VARIANTS = ("full_context", "chunk_causal", "chunk_causal_window")


def chunk_causal_encode(recognizer: Recognizer, with_window: bool):
    """A replacement for the second pass's ``_encode``: the segment's chunk-causal encoding (and
    CTC posteriors) at the recognizer's chunk, optionally with its silence window encoded the same way."""
    model, chunk = recognizer.model, recognizer.chunk_size
    second = recognizer.second_pass

    def encode(self, feats):
        frames = int(feats.shape[0])
        values = torch.as_tensor(np.asarray(feats), dtype=torch.float32)
        with torch.no_grad():
            own, _ = model.encoder(values.unsqueeze(0), torch.tensor([frames]), chunk, -1)
            log_probs = model.ctc_log_probs(own)[0].numpy()
            encoded = own
            if with_window and second.window_frames > frames:
                fill = values.max() - second.silence_below_max
                padded = torch.cat([values, fill.expand(second.window_frames - frames, values.size(1))])
                encoded, _ = model.encoder(padded.unsqueeze(0), torch.tensor([padded.size(0)]), chunk, -1)
        return encoded, log_probs, own[0].float().numpy()

    second._encode = types.MethodType(encode, second)
    return recognizer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help="a Whisper-based model directory")
    parser.add_argument("--manifest", action="append", required=True, metavar="NAME=PATH")
    parser.add_argument("--limit", type=int, help="utterances per manifest")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "second_pass_frames.json"))
    parser.add_argument("--report", default=str(ROOT / "BENCHMARKS.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    packaged = load_model_dir(args.model)
    if packaged.model.whisper_decoder is None:
        print(f"edgeasr: error: {args.model} has no Whisper decoder (a second pass to compare)", file=sys.stderr)
        return 2
    recognizers = {variant: Recognizer(packaged, DecodeOptions(mode="whisper_rescoring")) for variant in VARIANTS}
    chunk_causal_encode(recognizers["chunk_causal"], with_window=False)
    chunk_causal_encode(recognizers["chunk_causal_window"], with_window=True)
    result = {**run_facts("second_pass_frames", "benchmarks/second_pass_frames.py", sys.argv[1:] if argv is None else argv),
              "model": args.model, "chunk_size": recognizers["full_context"].chunk_size,
              "frame_ms": 1000 * recognizers["full_context"].frame_seconds, "sets": {}}
    for item in args.manifest:
        name, _, path = item.partition("=")
        utts = read_manifest(path)[: args.limit]
        texts: dict = {variant: [] for variant in VARIANTS}
        for utt in utts:
            audio = load_audio(utt.audio)
            for variant, recognizer in recognizers.items():
                texts[variant].append(recognizer.transcribe(audio).text)
        rows = {}
        for variant in VARIANTS:
            words, chars = corpus_errors((u.text for u in utts), texts[variant])
            rows[variant] = {"wer": round(words.rate, 2), "cer": round(chars.rate, 2)}
            print(f"[{name}] {variant}: WER {rows[variant]['wer']} CER {rows[variant]['cer']}", file=sys.stderr, flush=True)
        result["sets"][name] = {"manifest": path, "utts": len(utts), "rows": rows}
    save_result(result, args.out, args.report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
