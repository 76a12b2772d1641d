"""The transducer head against the CTC and Whisper-rescoring modes on the same encoder, one run.

    python benchmarks/transducer.py --model exp/whisper-rnnt/model \\
        --manifest test=data/synth15/test.jsonl --manifest realdev=../shared/data/realdev/realdev.jsonl

The model (``configs/whisper/tiny_transducer_frozen.yaml``: the default's frozen encoder, CTC head
and Whisper decoder plus a trained transducer head) streams every utterance at its chunk size in
each mode; the modes take turns on each utterance, 1 thread. Per set and mode: WER, CER, RTF
(compute / audio), the median ratio of each mode's time to ctc_greedy's, and the parameters of the
head each mode decodes with. Writes benchmarks/results/transducer.json and regenerates BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from edgeasr.audio.io import load_audio
from edgeasr.data.manifest import read_manifest
from edgeasr.decoding.recognizer import DecodeOptions, Recognizer
from edgeasr.evaluate.accuracy import transcribe_in_turns
from edgeasr.evaluate.metrics import corpus_errors
from edgeasr.evaluate.report import run_facts, save_result
from edgeasr.model.package import load_model_dir

ROOT = Path(__file__).resolve().parents[1]
MODES = "ctc_greedy,ctc_prefix_beam,transducer_greedy,whisper_rescoring"


def head_parameters(model) -> dict:
    count = lambda module: sum(p.numel() for p in module.parameters()) if module is not None else 0  # noqa: E731
    return {"encoder": count(model.encoder), "ctc": count(model.ctc), "transducer": count(model.transducer),
            "whisper_decoder": count(model.whisper_decoder)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a model directory with a transducer head")
    parser.add_argument("--manifest", action="append", required=True, metavar="NAME=PATH")
    parser.add_argument("--modes", default=MODES)
    parser.add_argument("--limit", type=int)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "transducer.json"))
    parser.add_argument("--report", default=str(ROOT / "BENCHMARKS.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    packaged = load_model_dir(args.model)
    if packaged.model.transducer is None:
        print(f"edgeasr: error: {args.model} has no transducer head", file=sys.stderr)
        return 2
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    recognizers = {mode: Recognizer(packaged, DecodeOptions(mode=mode)) for mode in modes}
    parts = head_parameters(packaged.model)
    result = {
        **run_facts("transducer", "benchmarks/transducer.py", sys.argv[1:] if argv is None else argv),
        "model": str(args.model),
        "chunk_size": recognizers[modes[0]].chunk_size,
        "frame_ms": 1000 * recognizers[modes[0]].frame_seconds,
        "parameters": parts,
        "transducer_config": packaged.model.config.transducer,
        "sets": {},
    }
    for item in args.manifest:
        name, _, path = item.partition("=")
        utts = read_manifest(path)[: args.limit]
        audio = [load_audio(u.audio) for u in utts]
        seconds = sum(len(a) for a in audio) / 16000
        texts, times = transcribe_in_turns(recognizers, audio)
        rows = {}
        for mode in modes:
            words, chars = corpus_errors((u.text for u in utts), texts[mode])
            ratios = [t / b for t, b in zip(times[mode], times[modes[0]]) if b > 0]
            rows[mode] = {"wer": round(words.rate, 2), "cer": round(chars.rate, 2),
                          "rtf": round(sum(times[mode]) / seconds, 4),
                          "time_vs_first_mode_median": round(statistics.median(ratios), 3)}
            print(json.dumps({"set": name, "mode": mode, **rows[mode]}), file=sys.stderr, flush=True)
        result["sets"][name] = {"manifest": path, "utts": len(utts), "audio_seconds": round(seconds, 1),
                                "rows": rows}
    save_result(result, args.out, args.report)
    print(json.dumps(result["sets"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
