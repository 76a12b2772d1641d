"""Distilled fast first passes against the default's own (issue 17, item 2: Practical first pass).

    python benchmarks/first_pass_student.py --student exp/practical-fp/model --teacher models/default \
        --manifest test=data/synth4/test.jsonl --manifest realdev=../shared/data/realdev/realdev.jsonl

``--student`` may be given several times (``DIR`` or ``NAME=DIR``; the name defaults to the
experiment directory's): every student is measured in the same run, the teacher and all students
taking turns on each utterance in the speed runs. At the teacher's chunk size (640 ms), 1 thread,
on each set:
1. First-pass accuracy: the student's and the teacher's streaming first pass (``ctc_greedy`` and
   ``ctc_prefix_beam`` with the model's LM), WER and CER.
2. Two passes: the teacher's default mode with the student as its first pass (``--first-pass``)
   against the teacher alone: the finals come from the teacher's second pass either way, the
   partials and endpoints from the first pass.
3. Per-chunk latency: each model streamed in 640 ms blocks (the two taking turns on each
   utterance), the time of every ``accept`` that completed an encoder chunk (front end, encoder,
   CTC head, greedy search), median and p90; RTF of the two-pass runs.
4. Sizes: parameters and float16 bytes of each first pass (encoder + CTC head).
5. With ``--onnx``: the same per-chunk latency on ONNX Runtime (both models exported once into the
   cache, float and int8 graphs), and the two-pass RTF there with the student's export as the
   first pass.
Targets (issue 17): first pass >= 3x lower per-chunk latency at <= +15% relative WER; the two-pass
WER with the fast first pass no worse than the default's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from whisper_default import SpeedProbe, accuracy_row  # noqa: E402

from edgeasr.audio.io import load_audio  # noqa: E402
from edgeasr.data.manifest import read_manifest  # noqa: E402
from edgeasr.decoding.recognizer import DecodeOptions, Recognizer  # noqa: E402
from edgeasr.evaluate.report import run_facts, save_result  # noqa: E402
from edgeasr.model.package import load_model_dir  # noqa: E402

FIRST_PASS_MODES = ("ctc_greedy", "ctc_prefix_beam")


def first_pass_size(model) -> dict:
    parts = [model.encoder, model.ctc]
    parameters = sum(p.numel() for part in parts for p in part.parameters())
    return {"parameters": parameters, "float16_bytes": 2 * parameters}


def measure_set(args, name: str, manifest: str, students: dict[str, str]) -> dict:
    utts = read_manifest(manifest)[: args.utts]
    audio = [load_audio(u.audio) for u in utts]
    chunk = load_model_dir(args.teacher).streaming.chunk_size
    out = {"manifest": manifest, "utts": len(utts), "first_pass": {}, "two_pass": {}}
    lm = str(Path(args.teacher) / "lm") if (Path(args.teacher) / "lm").exists() else None
    models = {"teacher": args.teacher, **students}
    for mode in FIRST_PASS_MODES:
        for who, directory in models.items():
            recognizer = Recognizer.load(directory, DecodeOptions(mode=mode, chunk_size=chunk, lm=lm))
            row, _ = accuracy_row(recognizer, utts, audio, streaming=True)
            out["first_pass"].setdefault(mode, {})[who] = row
            print(name, mode, who, row["wer"], row["cer"], flush=True)
    two = {"teacher": Recognizer.load(args.teacher, DecodeOptions(chunk_size=chunk)),
           **{who: Recognizer.load(args.teacher, DecodeOptions(chunk_size=chunk, first_pass=directory))
              for who, directory in students.items()}}
    for who, recognizer in two.items():
        row, _ = accuracy_row(recognizer, utts, audio, streaming=True)
        out["two_pass"][who] = {**row, "mode": recognizer.mode}
        print(name, "two-pass", who, row["wer"], row["cer"], flush=True)
    # speed: first pass alone (greedy), then both passes
    first = {who: Recognizer.load(d, DecodeOptions(mode="ctc_greedy", chunk_size=chunk, lm=None))
             for who, d in models.items()}
    out["first_pass_speed"] = timed_in_turns(first, audio, args.speed_utts, f"{name} first_pass_speed")
    out["two_pass_speed"] = timed_in_turns(two, audio, args.speed_utts, f"{name} two_pass_speed")
    if args.onnx:
        out.update(onnx_speed(args, name, audio, chunk, students))
    return out


def onnx_speed(args, name: str, audio: list, chunk: int, students: dict[str, str]) -> dict:
    """Per-chunk latency and two-pass RTF on ONNX Runtime, float and int8 first passes."""
    from edgeasr.api import load_model

    first = {}
    for precision in ("float", "int8"):
        for who, directory in {"teacher": args.teacher, **students}.items():
            first[f"{who}_{precision}"] = load_model(directory, backend="onnx", chunk_size=chunk, mode="ctc_greedy",
                                                      lm=None, int8=precision == "int8")
    two = {"teacher": load_model(args.teacher, backend="onnx", chunk_size=chunk),
           **{who: load_model(args.teacher, backend="onnx", chunk_size=chunk, first_pass=directory)
              for who, directory in students.items()}}
    return {"onnx_first_pass_speed": timed_in_turns(first, audio, args.speed_utts, f"{name} onnx_first_pass_speed"),
            "onnx_two_pass_speed": timed_in_turns(two, audio, args.speed_utts, f"{name} onnx_two_pass_speed")}


def parse_students(items: list[str]) -> dict[str, str]:
    """``--student`` values (``DIR`` or ``NAME=DIR``) -> {name: directory}; a model directory named
    ``model`` takes its experiment's name."""
    students = {}
    for item in items:
        name, _, directory = item.rpartition("=")
        path = Path(directory)
        name = name or (path.parent.name if path.name == "model" else path.name)
        if name == "teacher" or name in students:
            raise SystemExit(f"first_pass_student.py: two students named {name!r}: use NAME=DIR")
        students[name] = directory
    return students


def student_facts(directory: str) -> dict:
    """What a student is: its path, encoder config, first-pass size, training and targets."""
    model = load_model_dir(directory).model
    facts = {"path": directory, "encoder": {k: v for k, v in vars(model.config.encoder).items() if v is not None},
             "size": first_pass_size(model)}
    log = Path(directory).parent / "train_log.csv"
    if log.exists():
        facts["training"] = training_summary(log)
    recipe = Path(directory).parent / "config.yaml"  # the experiment's: which targets it learnt
    if recipe.exists():
        train = yaml.safe_load(recipe.read_text()).get("train") or {}
        facts["distillation"] = {key: train.get(key) for key in
                                 ("distill_ctc_weight", "distill_layer_weight", "distill_layers")}
    return facts


def timed_in_turns(recognizers: dict, audio: list, count: int, label: str) -> dict:
    """Each recognizer streamed over the first ``count`` utterances, taking turns on each one."""
    probes = {who: SpeedProbe(recognizer) for who, recognizer in recognizers.items()}
    for probe in probes.values():
        probe.run(audio[0], record=False)  # warm-up
    for samples in audio[:count]:
        for probe in probes.values():
            probe.run(samples)
    out = {who: probe.summary(probe.texts) for who, probe in probes.items()}
    print(label, json.dumps({w: (r["chunk_latency_ms"], r["rtf_median"]) for w, r in out.items()}), flush=True)
    return out


def training_summary(log: Path) -> dict:
    """Steps and wall minutes of the student's training, over every run of a resumed one (each
    run's elapsed time starts again from 0)."""
    import csv

    rows = list(csv.DictReader(open(log)))
    seconds, previous, runs = 0.0, 0.0, 1
    for row in rows:
        elapsed = float(row["elapsed_s"])
        if elapsed < previous:  # a resumed run
            seconds += previous
            runs += 1
        previous = elapsed
    return {"steps": int(rows[-1]["step"]), "minutes": round((seconds + previous) / 60, 1), "runs": runs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", action="append", required=True, metavar="[NAME=]DIR",
                        help="a distilled first-pass model directory (repeatable: all measured in one run)")
    parser.add_argument("--teacher", default="models/default")
    parser.add_argument("--manifest", action="append", required=True, metavar="NAME=PATH")
    parser.add_argument("--utts", type=int, default=216)
    parser.add_argument("--speed-utts", type=int, default=20)
    parser.add_argument("--onnx", action="store_true", help="also measure on ONNX Runtime (float and int8 graphs)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/first_pass_student.json")
    parser.add_argument("--report", type=Path, default=ROOT / "BENCHMARKS.md", help="BENCHMARKS.md to regenerate")
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = run_facts("first_pass_student", "benchmarks/first_pass_student.py", sys.argv[1:])
    students = parse_students(args.student)
    teacher = load_model_dir(args.teacher)
    result.update(teacher=args.teacher, teacher_size=first_pass_size(teacher.model),
                  students={who: student_facts(directory) for who, directory in students.items()},
                  chunk_size=teacher.streaming.chunk_size, sets={})
    for item in args.manifest:
        name, path = item.split("=", 1)
        result["sets"][name] = measure_set(args, name, path, students)
    first = next(iter(result["sets"].values()))

    def ratio(speeds: dict, who: str, suffix: str = "") -> float | None:
        student = speeds[f"{who}{suffix}"]["chunk_latency_ms"]["median"]
        return round(speeds[f"teacher{suffix}"]["chunk_latency_ms"]["median"] / student, 2) if student else None

    result["latency_ratio"] = {who: ratio(first["first_pass_speed"], who) for who in students}
    if "onnx_first_pass_speed" in first:
        result["onnx_latency_ratio"] = {
            who: {p: ratio(first["onnx_first_pass_speed"], who, f"_{p}") for p in ("float", "int8")}
            for who in students}
    save_result(result, args.out, args.report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
