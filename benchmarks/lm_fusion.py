"""Language models and hotwords in the search, measured on the default model (issue 13).

    python benchmarks/lm_fusion.py --model models/default \
        --lm word=models/default/lm-word --lm char=models/default/lm \
        --tune data/synth4/dev.jsonl --manifest test=data/synth4/test.jsonl \
        --manifest realdev=../shared/data/realdev/realdev.jsonl \
        --biasing data/biasing/biasing.jsonl --onnx-model models/u2-baseline

What it measures, all at 1 thread:
1. The LM weights, tuned on the dev set only (a small grid, first pass), for each LM given.
2. WER/CER without and with each LM: the streaming first pass (640 ms chunks, CTC prefix beam 10)
   and the two-pass default (Whisper joint second pass; the LM there at its own weight).
3. Hotwords: on sentences with rare names and terms spoken by held-out voices
   (benchmarks/make_biasing_set.py), the share of phrases recognized without and with the whole
   phrase list as hotwords; and the plain test set's WER with that list active.
4. The search's share of streaming time at beam 10 (with and without the LM, and in the default
   two-pass mode with its LM), median over utterances.
5. ONNX Runtime and torch n-best identical with an LM and hotwords (a model that exports).

First-pass accuracy decodes the chunk-masked encoder output (equal to streaming, tests prove it)
once per utterance, so the grid is cheap; the two-pass numbers decode each utterance as a stream.
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

from edgeasr.audio.io import load_audio  # noqa: E402
from edgeasr.data.manifest import read_manifest  # noqa: E402
from edgeasr.decoding import ctc as ctc_module  # noqa: E402
from edgeasr.decoding.fusion import build_scorer, read_hotwords  # noqa: E402
from edgeasr.decoding.recognizer import DecodeOptions, Recognizer  # noqa: E402
from edgeasr.evaluate.metrics import ErrorCounts, char_errors, word_errors  # noqa: E402
from edgeasr.evaluate.report import run_facts, save_result  # noqa: E402
from edgeasr.lm import load_lm  # noqa: E402

#: (weight, bonus) grids per LM unit, tuned on dev
GRIDS = {
    "word": [(0.3, 0.5), (0.3, 1.5), (0.5, 0.5), (0.5, 1.5), (0.8, 1.5), (0.8, 3.0)],
    "char": [(0.3, 0.3), (0.5, 0.5), (0.5, 1.0), (0.8, 1.0), (0.8, 1.5), (1.0, 1.5)],
}


def rate(pairs) -> dict:
    words, chars = ErrorCounts(), ErrorCounts()
    for reference, hypothesis in pairs:
        words += word_errors(reference, hypothesis)
        chars += char_errors(reference, hypothesis)
    return {"wer": round(words.rate, 2), "cer": round(chars.rate, 2), "words": words.reference_length}


class Encoded:
    """Per utterance: reference, audio and the chunk-masked CTC log-probs (the first pass's input)."""

    def __init__(self, recognizer: Recognizer, manifest: Path, limit: int | None) -> None:
        self.utts = read_manifest(manifest)[:limit] if limit else read_manifest(manifest)
        self.audio, self.log_probs = [], []
        model = recognizer.model
        with torch.no_grad():
            for utt in self.utts:
                samples = load_audio(utt.audio, sample_rate=recognizer.sample_rate)
                feats = model.normalize(recognizer.frontend.compute(samples))
                encoded, _ = model.encoder(feats[None], torch.tensor([feats.size(0)]), recognizer.chunk_size, -1)
                self.audio.append(samples)
                self.log_probs.append(model.ctc_log_probs(encoded)[0].numpy())


def first_pass(recognizer: Recognizer, data: Encoded, scorer) -> list[str]:
    texts = []
    for log_probs in data.log_probs:
        search = recognizer.new_search(scorer)
        for start in range(0, len(log_probs), recognizer.chunk_size):  # chunk by chunk, as streamed
            search.step(log_probs[start : start + recognizer.chunk_size])
        texts.append(recognizer.tokenizer.decode(search.nbest()[0].tokens))
    return texts


def two_pass(recognizer: Recognizer, data: Encoded, hotwords=None) -> list[str]:
    return [recognizer.transcribe(samples, hotwords=hotwords).text for samples in data.audio]


def tune(recognizer, data, lm) -> tuple[list, tuple[float, float]]:
    rows = []
    for weight, bonus in GRIDS[lm.unit]:
        texts = first_pass(recognizer, data, build_scorer(lm, weight, bonus))
        rows.append({"weight": weight, "bonus": bonus, **rate(zip([u.text for u in data.utts], texts))})
    best = min(rows, key=lambda r: (r["wer"], r["cer"]))
    return rows, (best["weight"], best["bonus"])


def search_share(model: str, data: Encoded, lm_path, lm_weights, utts: int) -> dict:
    """The share of streaming time spent in the prefix beam search (beam 10), per utterance."""
    spent = {"search": 0.0}
    original = ctc_module.PrefixBeamSearch.step

    def timed(self, log_probs):
        start = time.perf_counter()
        original(self, log_probs)
        spent["search"] += time.perf_counter() - start

    out = {}
    for name, mode, lm, (weight, bonus) in [("no_lm", "ctc_prefix_beam", None, (0.0, 0.0)),
                                            ("lm", "ctc_prefix_beam", lm_path, lm_weights),
                                            ("default_two_pass_lm", "attention_rescoring", lm_path, lm_weights)]:
        recognizer = Recognizer.load(model, DecodeOptions(mode=mode, beam_size=10, lm=lm,
                                                          lm_weight=weight, lm_bonus=bonus))
        recognizer.transcribe(data.audio[0])  # warm-up
        shares, rtfs = [], []
        ctc_module.PrefixBeamSearch.step = timed
        try:
            for samples in data.audio[:utts]:
                spent["search"] = 0.0
                start = time.perf_counter()
                session = recognizer.stream()
                step = recognizer.frontend.sample_rate * 64 // 100  # 640 ms of audio per accept
                for offset in range(0, len(samples), step):
                    session.accept(samples[offset : offset + step])
                session.finish()
                total = time.perf_counter() - start
                shares.append(spent["search"] / total)
                rtfs.append(total / (len(samples) / recognizer.frontend.sample_rate))
        finally:
            ctc_module.PrefixBeamSearch.step = original
        out[name] = {"mode": recognizer.mode, "search_share_median": round(statistics.median(shares), 4),
                     "search_share_max": round(max(shares), 4), "rtf_median": round(statistics.median(rtfs), 4),
                     "utts": len(shares)}
    return out


def onnx_parity(model: str, manifest: Path, lm_path, hotwords, utts: int) -> dict:
    from edgeasr.api import load_model

    options = dict(mode="ctc_prefix_beam", lm=lm_path, lm_weight=0.5, lm_bonus=0.5, hotwords=hotwords)
    torch_rec = load_model(model, "torch", **options)
    onnx_rec = load_model(model, "onnx", **options)
    same, worst = 0, 0.0
    samples = [load_audio(u.audio, sample_rate=16000) for u in read_manifest(manifest)[:utts]]
    for audio in samples:
        a, b = torch_rec.transcribe(audio), onnx_rec.transcribe(audio)
        if [h["text"] for h in a.nbest] == [h["text"] for h in b.nbest]:
            same += 1
        worst = max([worst] + [abs(x["score"] - y["score"]) for x, y in zip(a.nbest, b.nbest)])
    return {"model": model, "utts": len(samples), "identical_nbest": same, "max_score_difference": round(worst, 5)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/default")
    parser.add_argument("--lm", action="append", required=True, metavar="NAME=PATH")
    parser.add_argument("--tune", type=Path, required=True, help="dev manifest the weights are tuned on")
    parser.add_argument("--tune-utts", type=int, default=60)
    parser.add_argument("--manifest", action="append", required=True, metavar="NAME=PATH")
    parser.add_argument("--biasing", type=Path, help="biasing manifest (make_biasing_set.py)")
    parser.add_argument("--hotword-boost", type=float, default=DecodeOptions().hotword_boost)
    parser.add_argument("--share-utts", type=int, default=20)
    parser.add_argument("--onnx-model", help="a model that exports to ONNX, for the n-best parity check")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/lm_fusion.json")
    args = parser.parse_args()
    torch.set_num_threads(1)

    plain = Recognizer.load(args.model, DecodeOptions(lm=None))
    lms = dict(item.split("=", 1) for item in args.lm)
    sets = {name: Encoded(plain, Path(path), None) for name, path in (m.split("=", 1) for m in args.manifest)}
    dev = Encoded(plain, args.tune, args.tune_utts)
    result = run_facts("lm_fusion", "benchmarks/lm_fusion.py", sys.argv[1:])
    result.update(model=args.model, chunk_size=plain.chunk_size, beam_size=10,
                  sets={name: {"manifest": str(path), "utts": len(sets[name].utts)}
                        for name, path in (m.split("=", 1) for m in args.manifest)},
                  tune={"manifest": str(args.tune), "utts": len(dev.utts)}, lms={}, first_pass={}, two_pass={})

    refs = {name: [u.text for u in data.utts] for name, data in sets.items()}
    result["first_pass"]["no_lm"] = {name: rate(zip(refs[name], first_pass(plain, data, None)))
                                     for name, data in sets.items()}
    result["two_pass"]["no_lm"] = {name: rate(zip(refs[name], two_pass(plain, data))) for name, data in sets.items()}
    best_lm = None
    for name, path in lms.items():
        lm = load_lm(path)
        card_path = Path(path) / "card.json"
        card = json.loads(card_path.read_text()) if card_path.exists() else {}
        grid, (weight, bonus) = tune(plain, dev, lm)
        result["lms"][name] = {"path": path, "unit": lm.unit, "order": lm.order, "ngrams": lm.counts(),
                               "bytes": card.get("bytes"), "dev_perplexity": card.get("dev_perplexity"),
                               "grid": grid, "weight": weight, "bonus": bonus}
        scorer = build_scorer(lm, weight, bonus)
        result["first_pass"][name] = {set_name: rate(zip(refs[set_name], first_pass(plain, data, scorer)))
                                      for set_name, data in sets.items()}
        if best_lm is None or result["first_pass"][name][next(iter(sets))]["wer"] < \
                result["first_pass"][best_lm][next(iter(sets))]["wer"]:
            best_lm = name
        print(json.dumps({name: result["first_pass"][name]}), flush=True)
    # the two-pass system with the best LM in its first pass and, at a small weight, in the joint search
    name = best_lm
    entry = result["lms"][name]
    for joint_weight in (0.0, 0.2):
        recognizer = Recognizer.load(args.model, DecodeOptions(lm=lms[name], lm_weight=entry["weight"],
                                                               lm_bonus=entry["bonus"], whisper_lm_weight=joint_weight))
        result["two_pass"][f"{name}_joint_{joint_weight:g}"] = {
            set_name: rate(zip(refs[set_name], two_pass(recognizer, data))) for set_name, data in sets.items()}
    result["best_lm"] = name

    if args.biasing:
        biasing = Encoded(plain, args.biasing, None)
        entries = [json.loads(line) for line in args.biasing.read_text().splitlines()]
        phrases = [e["hotword"] for e in entries]
        hotwords = read_hotwords(phrases, args.hotword_boost)

        def recall(texts):
            hits = sum(f" {p} " in f" {t} " for p, t in zip(phrases, texts))
            return {"recalled": hits, "phrases": len(phrases), "recall": round(hits / len(phrases), 3)}

        first_plain = first_pass(plain, biasing, None)
        first_biased = first_pass(plain, biasing, build_scorer(hotwords=hotwords))
        result["hotwords"] = {
            "manifest": str(args.biasing), "phrases": len(phrases), "boost_per_char": args.hotword_boost,
            "first_pass": {"without": recall(first_plain), "with": recall(first_biased)},
            "two_pass": {"without": recall(two_pass(plain, biasing)),
                         "with": recall(two_pass(plain, biasing, hotwords=phrases))},
            "examples": [{"reference": u.text, "without": a, "with": b}
                         for u, a, b in list(zip(biasing.utts, first_plain, first_biased))[:5]],
        }
        test_name = next(iter(sets))
        result["hotwords"]["plain_test_with_list"] = {
            "set": test_name,
            "first_pass": rate(zip(refs[test_name], first_pass(plain, sets[test_name], build_scorer(hotwords=hotwords)))),
            "two_pass": rate(zip(refs[test_name], two_pass(plain, sets[test_name], hotwords=phrases))),
        }
        print(json.dumps(result["hotwords"]), flush=True)

    first_set = sets[next(iter(sets))]
    result["search_share"] = search_share(args.model, first_set, lms[name], (entry["weight"], entry["bonus"]),
                                          args.share_utts)
    print(json.dumps(result["search_share"]), flush=True)
    if args.onnx_model:
        manifests = dict(m.split("=", 1) for m in args.manifest)
        result["onnx_parity"] = onnx_parity(args.onnx_model, Path(manifests[next(iter(sets))]), lms[name],
                                            ["hello world", "kubernetes :3"], 5)
        print(json.dumps(result["onnx_parity"]), flush=True)
    save_result(result, args.out, ROOT / "BENCHMARKS.md")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
