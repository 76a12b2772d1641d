"""The Whisper second pass re-encoding each segment alone, or in Whisper's window padded with silence.

    python benchmarks/second_pass_window.py --model default --windows 0,10,20,30 \
        --dev tts=data/synth4/dev.jsonl --dev realdev=../shared/data/realdev/realdev.jsonl \
        --manifest test=data/synth4/test.jsonl --manifest realdev=../shared/data/realdev/realdev.jsonl

Whisper was trained on 30 s windows: speech, then digital silence up to 30 s. Over a segment
alone its decoder does not know where speech ends and leans on the CTC head to stop, and the CTC
head, trained on synthesized speech, pulls it towards misspellings on real speech. Padding the
segment to a window of W seconds costs encoder time (attention is quadratic in W) and gives the
decoder back its stopping cue. This script measures that trade:

1. tuning (dev sets only): for each window, a small grid of the joint search's two weights
   (CTC weight, length bonus); the pair with the lowest mean WER over the dev sets is kept;
2. measuring: each window at its chosen weights on the test sets, the recognizers taking turns
   on each utterance (a busy spell of a shared machine falls on all of them), WER, CER and the
   real-time factor of the whole two-pass session at 1 thread.

``../shared/data/realdev`` may serve as a dev set here (it is a dev set: its references are
machine transcripts, and it never trains anything); the synthesized test split never takes part
in tuning. Writes ``benchmarks/results/second_pass_window.json`` and regenerates BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

import edgeasr
from edgeasr.audio.io import load_audio
from edgeasr.data.manifest import read_manifest
from edgeasr.evaluate.accuracy import transcribe_in_turns
from edgeasr.evaluate.metrics import corpus_errors
from edgeasr.evaluate.report import run_facts, save_result

ROOT = Path(__file__).resolve().parents[1]


def _floats(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part.strip()]


def _named(pairs: list[str]) -> dict[str, str]:
    named = {}
    for pair in pairs:
        name, _, path = pair.partition("=")
        if not path:
            raise SystemExit(f"expected NAME=MANIFEST, got {pair!r}")
        named[name] = path
    return named


def _load(path: str, max_utts: int | None):
    utts = read_manifest(path)[:max_utts]
    return utts, [load_audio(u.audio) for u in utts]


def _wer(utts, hyps: list[str]) -> tuple[float, float]:
    words, chars = corpus_errors([u.text for u in utts], hyps)
    return round(words.rate, 2), round(chars.rate, 2)


def tune(model: str, windows: list[float], ctc_weights: list[float], bonuses: list[float], dev: dict,
         writer: str | None = None) -> list[dict]:
    """Dev WER of every (window, CTC weight, length bonus); one row each."""
    rows = []
    for window in windows:
        for ctc_weight in ctc_weights:
            for bonus in bonuses:
                recognizer = edgeasr.load_model(model, mode="whisper_rescoring", second_pass_window=window,
                                                whisper_ctc_weight=ctc_weight, whisper_length_bonus=bonus,
                                                second_pass_model=writer)
                row = {"window": window, "ctc_weight": ctc_weight, "length_bonus": bonus}
                for name, (utts, audio) in dev.items():
                    row[name] = _wer(utts, [recognizer.transcribe(samples).text for samples in audio])[0]
                row["mean_wer"] = round(float(np.mean([row[name] for name in dev])), 2)
                rows.append(row)
                print(" ".join(f"{k} {v}" for k, v in row.items()), flush=True)
    return rows


def chosen(rows: list[dict], window: float) -> dict:
    """The window's row with the lowest mean dev WER (ties: the earlier row of the grid)."""
    return min((row for row in rows if row["window"] == window), key=lambda row: row["mean_wer"])


def measure(model: str, settings: list[dict], sets: dict) -> list[dict]:
    """Every setting on every test set, in turns per utterance: WER, CER, RTF."""
    recognizers = {
        i: edgeasr.load_model(model, mode="whisper_rescoring", second_pass_window=s["window"],
                              whisper_ctc_weight=s["ctc_weight"], whisper_length_bonus=s["length_bonus"],
                              second_pass_model=s.get("second_pass_model"), second_pass_pad=s.get("pad", "floor"))
        for i, s in enumerate(settings)}
    rows = []
    for set_name, (utts, audio) in sets.items():
        texts, seconds = transcribe_in_turns(recognizers, audio)
        duration = sum(len(samples) for samples in audio) / 16000.0
        for i, setting in enumerate(settings):
            wer, cer = _wer(utts, texts[i])
            rows.append({"set": set_name, **setting, "wer": wer, "cer": cer,
                         "rtf": round(sum(seconds[i]) / duration, 4), "audio_seconds": round(duration, 1),
                         "utts": len(utts)})
            print(f"{set_name} {setting.get('second_pass_model') or ''} window {setting['window']:g} "
                  f"pad {setting.get('pad', 'floor')}: WER {wer:.1f} CER {cer:.1f} "
                  f"RTF {rows[-1]['rtf']:.3f}", flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--windows", default="0,10,20,30", help="seconds (0 = the segment alone)")
    parser.add_argument("--ctc-weights", default="0.1,0.2")
    parser.add_argument("--length-bonuses", default="0,0.3,0.5")
    parser.add_argument("--dev", action="append", default=[], metavar="NAME=MANIFEST",
                        help="dev sets for the weights (never the test set)")
    parser.add_argument("--manifest", action="append", default=[], metavar="NAME=MANIFEST",
                        help="sets to measure the chosen settings on")
    parser.add_argument("--second-pass-model", action="append", default=[], metavar="DIR|whisper:base",
                        help="also measure this Whisper writing the finals (at the largest window's "
                             "weights; see --second-pass-model of edgeasr transcribe)")
    parser.add_argument("--pads", default="floor",
                        help="what fills the window, each measured at the window's weights: floor "
                             "(digital silence) and/or quietest (the segment's own quietest level)")
    parser.add_argument("--max-dev-utts", type=int, help="the first N utterances of each dev set")
    parser.add_argument("--max-utts", type=int)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/second_pass_window.json"))
    parser.add_argument("--report", default=str(ROOT / "BENCHMARKS.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    windows = _floats(args.windows)
    dev = {name: _load(path, args.max_dev_utts) for name, path in _named(args.dev).items()}
    if not dev:
        raise SystemExit("give at least one --dev NAME=MANIFEST")
    tuning = tune(args.model, windows, _floats(args.ctc_weights), _floats(args.length_bonuses), dev)
    settings = [{k: chosen(tuning, w)[k] for k in ("window", "ctc_weight", "length_bonus")} for w in windows]
    pads = [p.strip() for p in args.pads.split(",") if p.strip()]
    settings = [{**s, "pad": pad} for s in settings for pad in pads]
    settings += [{**settings[-1], "second_pass_model": writer} for writer in args.second_pass_model]
    sets = {name: _load(path, args.max_utts) for name, path in _named(args.manifest).items()}
    measured = measure(args.model, settings, sets) if sets else []
    result = {**run_facts("second_pass_window", "benchmarks/second_pass_window.py", sys.argv[1:]),
              "model": args.model, "dev": {name: len(utts) for name, (utts, _) in dev.items()},
              "tuning": tuning, "settings": settings, "measured": measured}
    report = save_result(result, args.out, args.report)
    print(f"wrote {args.out} and {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
