"""The CTC prefix beam search: compiled core against the Python reference (issue 13, item 2).

    python benchmarks/search_speed.py --model models/default --lm models/default/lm \
        --manifest test=data/synth4/test.jsonl --manifest realdev=../shared/data/realdev/realdev.jsonl

What it measures, at 1 thread, on each set (the default model's first pass: chunk-masked CTC
log-probs at its chunk size, fed to the search chunk by chunk as in streaming):
1. Identical n-best: per utterance, the C core's n-best (tokens, scores, token times, fused
   scores) equals the Python loop's, without and with the LM.
2. Search time per second of audio (median over utterances), Python and C, without and with the
   LM (one scorer for all utterances, as a recognizer shares it; the first utterance warms it).
   The two implementations take turns on each utterance.
3. The search's share of streaming time at beam 10 (``ctc_prefix_beam`` with and without the LM,
   and the default two-pass mode), as benchmarks/lm_fusion.py measures it, for each implementation.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from lm_fusion import Encoded, search_share  # noqa: E402

from edgeasr.decoding import ctc  # noqa: E402
from edgeasr.decoding.fusion import build_scorer  # noqa: E402
from edgeasr.decoding.recognizer import DecodeOptions, Recognizer  # noqa: E402
from edgeasr.evaluate.report import repo_path, run_facts, save_result  # noqa: E402
from edgeasr.lm import load_lm  # noqa: E402

IMPLEMENTATIONS = ("python", "native")
#: the LM's weight and bonus in the prefix beam, as the recognizer fuses it by default
LM_WEIGHTS = (DecodeOptions().lm_weight, DecodeOptions().lm_bonus)


def _search(recognizer: Recognizer, log_probs, scorer, native: bool):
    search = recognizer.new_search(scorer, native=native)
    start = time.perf_counter()
    for offset in range(0, len(log_probs), recognizer.chunk_size):
        search.step(log_probs[offset : offset + recognizer.chunk_size])
        search.nbest(1)  # a partial result per chunk, as a streaming session asks
    nbest = search.nbest()
    return time.perf_counter() - start, [(h.tokens, h.score, h.times, h.token_probs, h.fused_score) for h in nbest]


def compare(recognizer: Recognizer, data: Encoded, lm) -> dict:
    out = {}
    for name, scorer_of in (("no_lm", lambda: None), ("lm", lambda: build_scorer(lm, *LM_WEIGHTS))):
        scorers = {impl: scorer_of() for impl in IMPLEMENTATIONS}  # each implementation its own caches
        per_second = {impl: [] for impl in IMPLEMENTATIONS}
        identical = 0
        for index, (utt, log_probs) in enumerate(zip(data.utts, data.log_probs)):
            found = {}
            for impl in IMPLEMENTATIONS:
                spent, found[impl] = _search(recognizer, log_probs, scorers[impl], impl == "native")
                if index:  # the first utterance warms the scorer's caches
                    per_second[impl].append(1000 * spent / utt.duration)
            identical += found["python"] == found["native"]
        python, native = (statistics.median(per_second[i]) for i in IMPLEMENTATIONS)
        out[name] = {"identical_nbest": identical, "utts": len(data.utts),
                     "python_ms_per_audio_s": round(python, 3), "native_ms_per_audio_s": round(native, 3),
                     "speedup": round(python / native, 1) if native else None}
        print(name, json.dumps(out[name]), flush=True)
    return out


def shares(model: str, data: Encoded, lm_path: str, utts: int) -> dict:
    out = {}
    saved = ctc._native
    for impl in IMPLEMENTATIONS:
        ctc._native = saved if impl == "native" else None  # new searches pick the Python loop
        try:
            out[impl] = search_share(model, data, lm_path, LM_WEIGHTS, utts)
        finally:
            ctc._native = saved
        print(impl, json.dumps(out[impl]), flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "models" / "default"))
    parser.add_argument("--lm", default=str(ROOT / "models" / "default" / "lm"))
    parser.add_argument("--manifest", action="append", required=True, metavar="NAME=PATH")
    parser.add_argument("--utts", type=int, default=60, help="utterances per set for the n-best and time checks")
    parser.add_argument("--share-utts", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/search_speed.json")
    parser.add_argument("--report", type=Path, default=ROOT / "BENCHMARKS.md", help="BENCHMARKS.md to regenerate")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if ctc._native is None:
        print("edgeasr: error: the compiled search is not built (make setup)", file=sys.stderr)
        return 2
    result = run_facts("search_speed", "benchmarks/search_speed.py", sys.argv[1:])
    plain = Recognizer.load(args.model, DecodeOptions(lm=None))
    lm = load_lm(args.lm)
    result.update(model=repo_path(args.model, ROOT), lm=repo_path(args.lm, ROOT), lm_weight=LM_WEIGHTS[0], lm_bonus=LM_WEIGHTS[1],
                  beam_size=plain.options.beam_size, chunk_size=plain.chunk_size, sets={})
    for item in args.manifest:
        name, path = item.split("=", 1)
        data = Encoded(plain, Path(path), max(args.utts, args.share_utts + 1))
        result["sets"][name] = {"manifest": path, "search": compare(plain, data, lm),
                                "share": shares(args.model, data, args.lm, args.share_utts)}
    save_result(result, args.out, args.report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
