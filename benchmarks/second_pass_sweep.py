"""The Whisper second pass's two search weights, swept on a dev set, with WER per TTS engine.

    python benchmarks/second_pass_sweep.py --model default --manifest data/synth-cal/dev.jsonl \
        --ctc-weights 0,0.1,0.2,0.3,0.4 --length-bonuses 0.3,0.5,0.8

The joint search scores ``ctc_weight * CTC + (1 - ctc_weight) * Whisper + length_bonus * chars``.
The weights (0.2, 0.5) were first tuned on dev for the segment alone (no window); this sweep
records that tuning reproducibly (one axis at a time around them) and splits the errors by the engine that spoke each utterance, to
show where the remaining errors are: in voices Whisper itself cannot read (formant and diphone
synthesis) or in the search. A dev set only: the test set and realdev stay out of any tuning.
Writes ``benchmarks/results/second_pass_sweep.json`` and regenerates BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch

import edgeasr
from edgeasr.audio.io import load_audio
from edgeasr.data.manifest import read_manifest
from edgeasr.evaluate.metrics import corpus_errors, word_errors
from edgeasr.evaluate.report import run_facts, save_result

ROOT = Path(__file__).resolve().parents[1]
#: the centre of the sweep: the weights tuned for the segment alone (second_pass_window.py chose
#: today's defaults together with the window)
DEFAULT_CTC_WEIGHT, DEFAULT_LENGTH_BONUS = 0.2, 0.5


def _floats(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part.strip()]


def engine_of(utt) -> str:
    """The engine that spoke an utterance: the manifest's ``engine`` field, else the file name's
    first part (synthesized corpora name WAVs ``<engine>-<split>-...``)."""
    return (utt.extra or {}).get("engine") or Path(utt.audio).name.split("-")[0]


def score(utts, hyps: list[str]) -> dict:
    words, chars = corpus_errors([u.text for u in utts], hyps)
    per_engine: dict = defaultdict(lambda: [0, 0])
    for utt, hyp in zip(utts, hyps):
        errors = word_errors(utt.text, hyp)
        per_engine[engine_of(utt)][0] += errors.errors
        per_engine[engine_of(utt)][1] += errors.reference_length
    return {"wer": round(words.rate, 2), "cer": round(chars.rate, 2),
            "wer_by_engine": {engine: {"wer": round(100 * e / max(w, 1), 2), "words": w}
                              for engine, (e, w) in sorted(per_engine.items())}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--manifest", required=True, help="a dev manifest (never the test set)")
    parser.add_argument("--ctc-weights", default="0,0.1,0.2,0.3,0.4")
    parser.add_argument("--length-bonuses", default="0.3,0.5,0.8")
    parser.add_argument("--window", type=float, default=0.0, help="second-pass window, seconds (default: 0)")
    parser.add_argument("--max-utts", type=int)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/second_pass_sweep.json"))
    parser.add_argument("--report", default=str(ROOT / "BENCHMARKS.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    utts = read_manifest(args.manifest)[: args.max_utts]
    audio = [load_audio(u.audio) for u in utts]
    settings = [(w, DEFAULT_LENGTH_BONUS) for w in _floats(args.ctc_weights)]
    settings += [(DEFAULT_CTC_WEIGHT, b) for b in _floats(args.length_bonuses) if (DEFAULT_CTC_WEIGHT, b) not in settings]
    rows = []
    for ctc_weight, bonus in settings:
        recognizer = edgeasr.load_model(args.model, mode="whisper_rescoring", whisper_ctc_weight=ctc_weight,
                                        whisper_length_bonus=bonus, second_pass_window=args.window)
        hyps = [recognizer.transcribe(samples).text for samples in audio]
        row = {"ctc_weight": ctc_weight, "length_bonus": bonus, **score(utts, hyps),
               "default": (ctc_weight, bonus) == (DEFAULT_CTC_WEIGHT, DEFAULT_LENGTH_BONUS)}
        rows.append(row)
        print(f"ctc_weight {ctc_weight:g} length_bonus {bonus:g}: WER {row['wer']:.1f} "
              + " ".join(f"{e} {v['wer']:.1f}" for e, v in row["wer_by_engine"].items()), flush=True)
    result = {**run_facts("second_pass_sweep", "benchmarks/second_pass_sweep.py", sys.argv[1:]),
              "model": args.model, "manifest": args.manifest, "utts": len(utts), "rows": rows}
    report = save_result(result, args.out, args.report)
    print(f"wrote {args.out} and {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
