"""Can the pretrained streaming encoder skip compute? Module skips on the default (issue 16, item 4).

    python benchmarks/encoder_skip.py --manifest dev=data/synth4/dev.jsonl \
        --manifest realdev=../shared/data/realdev/realdev.jsonl

I3D gates switch whole modules (a layer's attention or feed-forward) off per utterance; compute-
amortized gates switch them off per frame. Either saves what the skipped modules cost, and only
pays if the model still recognizes without them. Before training gates on the default's
encoder (Whisper tiny's 4 layers, streaming at 640 ms chunks), this measures the room there is:

1. Cost: multiply-accumulates per encoder frame of each module (attention with its keys over the
   streaming context, feed-forward), the conv stem and the CTC head, on the set's own lengths;
   a module's share of the first pass.
2. Static skips: each module skipped for every frame (and the top layer whole), the first pass's
   greedy WER/CER on each set: how much each module matters with no retraining.
3. Oracle frame skips: the top layer skipped (its output = its input) on the frames where the
   full model is already sure of blank (posterior >= ``--blank-threshold``), an upper bound for a
   per-frame gate on the layer whose skip harms no other frame (its keys and values come from its
   input, so every frame still serves as context): share of frames skipped, compute saved, WER.

Writes benchmarks/results/encoder_skip.json and regenerates BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeasr.audio.io import load_audio  # noqa: E402
from edgeasr.data.manifest import read_manifest  # noqa: E402
from edgeasr.decoding.ctc import ctc_greedy  # noqa: E402
from edgeasr.decoding.recognizer import DecodeOptions, Recognizer  # noqa: E402
from edgeasr.evaluate.metrics import ErrorCounts, char_errors, word_errors  # noqa: E402
from edgeasr.evaluate.report import repo_path, run_facts, save_result  # noqa: E402
from edgeasr.nn.mask import attention_mask, padding_mask  # noqa: E402

MODULES = ("attention", "ffn")


def encode(model, feats: torch.Tensor, chunk_size: int, skips: frozenset = frozenset(),
           top_frame_skip: torch.Tensor | None = None) -> torch.Tensor:
    """The chunk-masked first pass (as it streams) with modules left out: ``skips`` holds
    (layer, module) pairs skipped for every frame; ``top_frame_skip`` [T] bool: frames whose top
    layer is skipped (output = input). Returns the CTC log-probs [T, V]."""
    encoder = model.encoder
    lengths = torch.tensor([feats.size(0)])
    steps = (feats.size(0) + 1) // 2
    x = feats[None].transpose(1, 2)
    x = F.gelu(encoder.conv1(x))
    x = F.gelu(encoder.conv2(x)).transpose(1, 2) + encoder.positions[:steps]
    out_lengths = torch.div(lengths + 1, 2, rounding_mode="floor")
    mask = attention_mask(out_lengths, steps, chunk_size, -1)
    top = len(encoder.layers) - 1
    for index, layer in enumerate(encoder.layers):
        before = x
        h = layer.attn_norm(x)
        keys, values = layer.attn.keys_values(h)
        if (index, "attention") not in skips:
            x = x + layer.attn.attend(h, keys, values, mask)
        if (index, "ffn") not in skips:
            x = x + layer.ffn(layer.ffn_norm(x))
        if index == top and top_frame_skip is not None:
            x = torch.where(top_frame_skip[None, :, None], before, x)
    x = encoder.norm(x) * padding_mask(out_lengths, steps).unsqueeze(-1)
    return model.ctc_log_probs(x)[0]


def macs_per_frame(model, chunk_frames: int, frame_counts: list[int]) -> dict:
    """Multiply-accumulates per encoder frame, averaged over the utterances' frames: attention's
    projections and its scores/weighted sum over the keys a frame sees in streaming (its chunk and
    every chunk before), feed-forward, the conv stem, the CTC head."""
    encoder = model.encoder
    d = encoder.config.d_model
    d_ff = encoder.layers[0].ffn[0].out_features
    mel = encoder.config.input_dim
    keys_seen, frames = 0, 0
    for count in frame_counts:
        for t in range(count):
            keys_seen += min(count, (t // chunk_frames + 1) * chunk_frames)
        frames += count
    mean_keys = keys_seen / max(frames, 1)
    ctc = sum(m.weight.numel() for m in model.ctc.modules() if isinstance(m, torch.nn.Linear))
    return {
        "attention": 4 * d * d + 2 * mean_keys * d,
        "keys_values": 2 * d * d,  # still computed for a frame whose top layer is skipped
        "ffn": 2 * d * d_ff,
        "stem": 2 * mel * d * 3 + d * d * 3,  # conv1 on two mel frames, conv2 once
        "ctc_head": ctc,
        "mean_keys": round(mean_keys, 1),
    }


def rate(pairs) -> dict:
    words, chars = ErrorCounts(), ErrorCounts()
    for reference, hypothesis in pairs:
        words += word_errors(reference, hypothesis)
        chars += char_errors(reference, hypothesis)
    return {"wer": round(words.rate, 2), "cer": round(chars.rate, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "models" / "default"))
    parser.add_argument("--manifest", action="append", required=True, metavar="NAME=PATH")
    parser.add_argument("--utts", type=int, default=60, help="utterances per set")
    parser.add_argument("--blank-threshold", type=float, action="append",
                        help="oracle frame skips where the full model's blank posterior is at least this (repeat)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/encoder_skip.json")
    parser.add_argument("--report", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    thresholds = args.blank_threshold or [0.999, 0.99]
    recognizer = Recognizer.load(args.model, DecodeOptions())
    model, tokenizer = recognizer.model, recognizer.tokenizer
    layers = len(model.encoder.layers)
    chunk_frames = recognizer.chunk_size // model.encoder.subsampling_rate
    static = [frozenset()] + [frozenset({(i, m)}) for i in range(layers) for m in MODULES] \
        + [frozenset({(layers - 1, m) for m in MODULES})]
    result = run_facts("encoder_skip", "benchmarks/encoder_skip.py", sys.argv[1:])
    result.update(model=repo_path(args.model, ROOT), chunk_size=recognizer.chunk_size, layers=layers, sets={})
    all_counts = []
    for spec in args.manifest:
        name, path = spec.split("=", 1)
        utts = read_manifest(path)[: args.utts]
        references = [u.text for u in utts]
        with torch.no_grad():
            feats = [model.normalize(recognizer.frontend.compute(load_audio(u.audio, sample_rate=recognizer.sample_rate)))
                     for u in utts]
            full = [encode(model, f, recognizer.chunk_size) for f in feats]
            rows = []
            for skips in static:
                texts = full if not skips else [encode(model, f, recognizer.chunk_size, skips) for f in feats]
                hyps = [tokenizer.decode(ctc_greedy(lp.numpy(), model.blank_id).tokens) for lp in texts]
                rows.append({"skip": sorted([i, m] for i, m in skips), **rate(zip(references, hyps))})
                print(name, rows[-1], flush=True)
            oracle = []
            for threshold in thresholds:
                skipped = frames = 0
                hyps = []
                for f, lp in zip(feats, full):
                    sure = lp[:, model.blank_id].exp() >= threshold
                    skipped += int(sure.sum())
                    frames += sure.numel()
                    out = encode(model, f, recognizer.chunk_size, top_frame_skip=sure)
                    hyps.append(tokenizer.decode(ctc_greedy(out.numpy(), model.blank_id).tokens))
                oracle.append({"blank_threshold": threshold, "frames_skipped": round(skipped / frames, 4),
                               **rate(zip(references, hyps))})
                print(name, oracle[-1], flush=True)
        counts = [lp.size(0) for lp in full]
        all_counts += counts
        result["sets"][name] = {"manifest": repo_path(path, ROOT), "utts": len(utts), "static": rows, "oracle_top_layer": oracle}
    macs = macs_per_frame(model, chunk_frames, all_counts)
    total = layers * (macs["attention"] + macs["ffn"]) + macs["stem"] + macs["ctc_head"]
    result["macs_per_frame"] = {k: round(v) if k != "mean_keys" else v for k, v in macs.items()}
    result["share_of_first_pass"] = {"attention": round(macs["attention"] / total, 4), "ffn": round(macs["ffn"] / total, 4),
                                     "layer": round((macs["attention"] + macs["ffn"]) / total, 4),
                                     "stem": round(macs["stem"] / total, 4), "ctc_head": round(macs["ctc_head"] / total, 4),
                                     "top_layer_frame_skip": round((macs["attention"] + macs["ffn"] - macs["keys_values"]) / total, 4)}
    print("shares", result["share_of_first_pass"], flush=True)
    print("wrote", save_result(result, args.out, args.report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
