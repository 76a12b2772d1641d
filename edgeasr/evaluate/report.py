"""BENCHMARKS.md and plots, generated from the JSON files in benchmarks/results/.

Tables in the docs are never edited by hand: every number comes from a result file written by a
benchmark that anyone can re-run (``edgeasr bench``, ``benchmarks/*.py``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from edgeasr.evaluate.accuracy import MODES
from edgeasr.fileio import atomic_write_text


def u2_section(result: dict, name: str) -> list[str]:
    model, test = result["model"], result["test"]
    lines = [
        f"## U2 baseline, the previous from-scratch default (baseline): `{model['directory']}` ({name})",
        "",
        f"{model['parameters'] / 1e6:.2f} M parameters, {model['bytes_on_disk'] / 1e6:.1f} MB on disk; "
        f"test set `{test['manifest']}`: {test['utts']} utterances, {test['audio_seconds'] / 60:.1f} min "
        f"(voices and sentences held out from training). Measured {result['date']} on {result['machine']}.",
        "",
        "WER % (CER %) per decoding mode and chunk size (40 ms encoder frames; full = whole utterance):",
        "",
        "| mode | " + " | ".join("full" if c == 0 else f"chunk {c}" for c in result["chunk_sizes"]) + " |",
        "|---|" + "---|" * len(result["chunk_sizes"]),
    ]
    first = result["accuracy"][str(result["chunk_sizes"][0])]
    for mode in [m for m in MODES if m in first]:  # (a transducer row only where the model has one)
        cells = [
            f"{result['accuracy'][str(c)][mode]['wer']:.1f} ({result['accuracy'][str(c)][mode]['cer']:.1f})"
            for c in result["chunk_sizes"]
        ]
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    s = result["streaming"]
    acc = result["accuracy"]
    lines += [""]
    if "0" in acc and "16" in acc:
        full = acc["0"]["attention_rescoring"]["wer"]
        c16 = acc["16"]["attention_rescoring"]["wer"]
        beam16 = acc["16"]["ctc_prefix_beam"]["wer"]
        rel = 100 * (c16 - full) / full if full else 0.0
        lines += [
            "| target | measured | met |",
            "|---|---|---|",
            f"| streaming text == offline text at the same chunk size | {s['identical_text']}/{s['utts']} utterances | "
            f"{'yes' if s['identical_text'] == s['utts'] else 'no'} |",
            f"| attention rescoring better than CTC prefix beam (chunk 16) | {c16:.1f} vs {beam16:.1f} WER | "
            f"{'yes' if c16 < beam16 else 'no'} |",
            f"| chunk 16 within 15% relative WER of full context | {rel:+.1f}% relative | {'yes' if rel <= 15 else 'no'} |",
            f"| streaming RTF at 1 thread below 0.05 (chunk {s['chunk_size']}) | {s['rtf']:.4f} | "
            f"{'yes' if s['rtf'] < 0.05 else 'no'} |",
            "",
        ]
        if full > 50:
            lines += [
                f"At {full:.0f}% WER the relative targets say little: this model is compute-starved (a short CPU "
                "run), and its errors are mostly misspelled words (see the CER). The ratios become meaningful once "
                "the baseline is trained longer.",
                "",
            ]
    return lines


#: Targets of the Whisper-based default model (issue: "a recognizer that recognizes real speech").
WHISPER_TARGET_CHUNK = 32  # encoder frames of 20 ms: 640 ms
WHISPER_TARGETS = {"real_wer": 40.0, "tts_wer": 10.0, "rtf": 0.05, "chunk_fraction": 0.10, "git_bytes": 25e6}


def _whisper_chunk_label(chunk: int, frame_ms: float) -> str:
    return "full" if chunk == 0 else f"chunk {chunk} ({chunk * frame_ms:.0f} ms)"


def _ms(stats: dict | None) -> str:
    if not stats or stats.get("median") is None:
        return "-"
    return f"{stats['median']:.1f} ({stats['p90']:.1f})"


def whisper_speed_rows(result: dict) -> list[str]:
    """Rows of the speed table: | set | chunk | mode | RTF (median) | first pass | % | second pass | finish |."""
    frame = result["model"]["frame_ms"]
    rows = []
    for name, by_chunk in result["speed"].items():
        for chunk, by_mode in by_chunk.items():
            for mode, r in by_mode.items():
                fraction = r["chunk_latency_fraction"]
                share = (f"{100 * fraction['median']:.1f}% ({100 * fraction['p90']:.1f}%)"
                         if fraction.get("median") is not None else "-")
                rows.append(f"| {name} | {_whisper_chunk_label(int(chunk), frame)} | {mode} | {r['rtf']:.4f} "
                            f"({r['rtf_median']:.4f}) | {_ms(r['chunk_latency_ms'])} | {share} | "
                            f"{_ms(r.get('second_pass_ms'))} | {_ms(r['finish_ms'])} |")
    return rows


def whisper_targets(result: dict) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for the Whisper-based default, at chunk 32 in its default mode."""
    frame = result["model"]["frame_ms"]
    chunk = str(WHISPER_TARGET_CHUNK)
    at = f"chunk {chunk} ({WHISPER_TARGET_CHUNK * frame:.0f} ms)"
    mode = "whisper_rescoring" if "whisper_rescoring" in result["modes"] else result["modes"][-1]
    targets = []
    for name, info in result["sets"].items():
        real = info.get("kind") == "real"
        limit = WHISPER_TARGETS["real_wer"] if real else WHISPER_TARGETS["tts_wer"]
        what = "real speech, machine-transcribed references" if real else "synthesized speech, held-out voices"
        label = f"`{name}` ({what}) WER <= {limit:.0f}% at {at}, {mode}"
        row = result["accuracy"][name].get(chunk, {}).get(mode)
        targets.append((label, f"{row['wer']:.1f}%" if row else "not measured", bool(row) and row["wer"] <= limit))
    speeds = [(name, by[chunk]) for name, by in result["speed"].items() if chunk in by]
    if speeds:
        rtfs = [(name, rows[mode]["rtf"]) for name, rows in speeds if mode in rows]
        targets.append((f"streaming RTF <= {WHISPER_TARGETS['rtf']} at 1 thread ({at}, {mode})",
                        ", ".join(f"{name} {rtf:.4f}" for name, rtf in rtfs),
                        bool(rtfs) and max(r for _, r in rtfs) <= WHISPER_TARGETS["rtf"]))
        worst = max(((rows[m]["chunk_latency_fraction"]["median"] or 0.0, rows[m]["chunk_latency_ms"], name, m)
                     for name, rows in speeds for m in rows), key=lambda item: item[0])
        fraction, latency, name, worst_mode = worst
        targets.append((f"first-pass latency per chunk <= {100 * WHISPER_TARGETS['chunk_fraction']:.0f}% of the chunk "
                        f"(median, {at}, worst set and mode)",
                        f"{_ms(latency)} ms = {100 * fraction:.1f}% ({name}, {worst_mode})",
                        latency.get("median") is not None and fraction <= WHISPER_TARGETS["chunk_fraction"]))
    else:
        targets.append((f"streaming RTF and per-chunk latency at {at}", "not measured", False))
    size = result["model"]["bytes"]
    pretrained = f" (+ {size['pretrained_file'] / 1e6:.1f} MB pretrained package file)" if size["pretrained_file"] else ""
    targets.append((f"<= {WHISPER_TARGETS['git_bytes'] / 1e6:.0f} MB in git", f"{size['in_git'] / 1e6:.1f} MB{pretrained}",
                    size["in_git"] <= WHISPER_TARGETS["git_bytes"]))
    return targets


def baseline_chunks_label(result: dict) -> str:
    """"chunk 32 -> 16, ...": the baseline's chunk at each of the Whisper model's chunk sizes."""
    base = result["baseline"]
    rows = next(iter(base["accuracy"].values()))
    pairs = [(c, next(iter(rows[str(c)].values()))["chunk_size"]) for c in result["chunk_sizes"] if c > 0]
    return ", ".join(f"chunk {c} -> {b}" for c, b in pairs) or "full context only"


def whisper_section(result: dict, name: str) -> list[str]:
    model = result["model"]
    frame, chunks, modes = model["frame_ms"], result["chunk_sizes"], result["modes"]
    params, size = model["parameters"], model["bytes"]
    pre = model.get("pretrained")
    source = f"{pre['package']} {pre['version']}" if pre else "Whisper weights"
    options = result.get("decode_options") or {}
    search = options.get("second_pass_search", "joint")
    how = ("a joint beam search: Whisper's decoder proposes, the CTC head scores every prefix" if search == "joint"
           else "rescoring of the CTC n-best plus one free Whisper decode")
    weights = (f"; CTC weight {options['whisper_ctc_weight']:g}, {options.get('whisper_length_bonus', 0):g} per "
               "character" if "whisper_ctc_weight" in options else "")
    if options.get("second_pass_window"):
        weights += (f"; each segment re-encoded at the start of a {options['second_pass_window']:g} s window of "
                    "silence, as Whisper was trained")
    title = ("Default model: Whisper tiny.en encoder + streaming CTC head + Whisper second pass" if search == "joint"
             else "Comparison: the same model with the second pass by rescoring")
    lines = [
        f"## {title}: `{model['directory']}` ({name})",
        "",
        f"Whisper tiny.en's encoder ({source}, MIT, OpenAI) run chunk by chunk with caches, a CTC head trained on "
        f"synthesized speech, and Whisper's decoder in the second pass (`whisper_rescoring`: full-context "
        f"re-encoding of each segment, then {how}{weights}). {params['total'] / 1e6:.2f} M parameters "
        f"(encoder {params.get('encoder', 0) / 1e6:.2f} M, CTC head {params.get('ctc_head', 0) / 1e6:.2f} M, Whisper "
        f"decoder {params.get('whisper_decoder', 0) / 1e6:.2f} M); {size['in_git'] / 1e6:.1f} MB in git, "
        f"{size['total'] / 1e6:.1f} MB with the pretrained package file. Measured {result['date']} on "
        f"{result['machine']}.",
        "",
    ]
    base = result.get("baseline")
    for set_name, info in result["sets"].items():
        lines += [f"### `{set_name}`: `{info['manifest']}`, {info['utts']} utterances, "
                  f"{info['audio_seconds'] / 60:.1f} min", ""]
        if info.get("note"):
            lines += [info["note"], ""]
        lines += ["WER % (CER %) per decoding mode and chunk size (20 ms encoder frames; full = whole utterance, "
                  "offline):", "",
                  "| mode | " + " | ".join(_whisper_chunk_label(c, frame) for c in chunks) + " |",
                  "|---|" + "---|" * len(chunks)]
        for mode in modes:
            cells = [f"{result['accuracy'][set_name][str(c)][mode]['wer']:.1f} "
                     f"({result['accuracy'][set_name][str(c)][mode]['cer']:.1f})" for c in chunks]
            lines.append(f"| {mode} | " + " | ".join(cells) + " |")
        if base and set_name in base["accuracy"]:
            for mode in modes:
                rows = [base["accuracy"][set_name][str(c)][mode] for c in chunks]
                cells = [f"{r['wer']:.1f} ({r['cer']:.1f})" for r in rows]
                lines.append(f"| baseline: {rows[0]['mode_used']} | " + " | ".join(cells) + " |")
        lines.append("")
    if base:
        lines += [f"Baseline rows: `{base['directory']}`, the previous from-scratch default ({base['parameters'] / 1e6:.2f} M "
                  f"parameters, {base['bytes_on_disk'] / 1e6:.1f} MB), at the same chunk durations "
                  f"({base['frame_ms']:.0f} ms frames: {baseline_chunks_label(result)}), with its own second pass in "
                  "place of Whisper's.", ""]
    lines += [f"Speed at 1 thread (streaming sessions fed chunk-sized blocks; first {result['rtf_utts']} utterances of each "
              "set). RTF: compute / audio (median per utterance); first pass: time of each `accept` that completed an "
              "encoder chunk, median (p90), and as a share of the chunk's duration; second pass: time per segment; "
              "finish: time of `finish()` (end-of-stream latency):", "",
              "| set | chunk | mode | RTF (median) | first pass ms / chunk | % of chunk | second pass ms / segment | "
              "finish ms |",
              "|---|---|---|---|---|---|---|---|"]
    lines += whisper_speed_rows(result)
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {t} | {m} | {'yes' if ok else 'no'} |" for t, m, ok in whisper_targets(result)]
    lines.append("")
    return lines


def lm_fusion_section(result: dict, name: str) -> list[str]:
    """Language models and hotwords in the search (benchmarks/lm_fusion.py)."""
    sets = list(result["sets"])

    def cells(row: dict) -> str:
        return " | ".join(f"{row[s]['wer']:.1f} ({row[s]['cer']:.1f})" for s in sets)

    def relative(base: dict, new: dict, s: str) -> str:
        return f"{100 * (base[s]['wer'] - new[s]['wer']) / base[s]['wer']:.0f}%" if base[s]["wer"] else "-"

    first, second = result["first_pass"], result["two_pass"]
    lines = [
        f"## Language models and hotwords ({name})",
        "",
        f"Model `{result['model']}`, chunk {result['chunk_size']} (streaming first pass: CTC prefix beam "
        f"{result['beam_size']}), 1 thread; LM weights tuned on `{result['tune']['manifest']}` "
        f"({result['tune']['utts']} utterances) only. Sets: "
        + ", ".join(f"{s} `{result['sets'][s]['manifest']}` ({result['sets'][s]['utts']} utts)" for s in sets)
        + f". Measured {result['date']} on {result['machine']}.",
        "",
        "| LM | unit, order | n-grams | size | weight, bonus |",
        "|---|---|---|---|---|",
    ]
    for lm_name, lm in result["lms"].items():
        size = f"{lm['bytes'] / 1e6:.1f} MB" if lm.get("bytes") else "-"
        lines.append(f"| {lm_name} (`{lm['path']}`) | {lm['unit']}, {lm['order']} | {sum(lm['ngrams']):,} | {size} "
                     f"| {lm['weight']:g}, {lm['bonus']:g} |")
    lines += ["", "WER % (CER %):", "", "| decoding | " + " | ".join(sets) + " | WER cut vs no LM |",
              "|---|" + "---|" * len(sets) + "---|"]
    for key, row in first.items():
        cut = "" if key == "no_lm" else ", ".join(f"{s} {relative(first['no_lm'], row, s)}" for s in sets)
        lines.append(f"| first pass, {'no LM' if key == 'no_lm' else key + ' LM'} | {cells(row)} | {cut} |")
    for key, row in second.items():
        label = "no LM" if key == "no_lm" else key.replace("_joint_", " LM, joint-search weight ")
        cut = "" if key == "no_lm" else ", ".join(f"{s} {relative(second['no_lm'], row, s)}" for s in sets)
        lines.append(f"| two-pass (Whisper joint), {label} | {cells(row)} | {cut} |")
    hot = result.get("hotwords")
    if hot:
        plain = hot["plain_test_with_list"]
        lines += [
            "",
            f"Hotwords: {hot['phrases']} sentences with rare names and terms spoken by held-out voices "
            f"(`{hot['manifest']}`), every phrase in the list, {hot['boost_per_char']:g} nats per character:",
            "",
            "| pass | phrases recognized without | with hotwords | plain test WER with the list |",
            "|---|---|---|---|",
            f"| first pass | {hot['first_pass']['without']['recalled']}/{hot['phrases']} | "
            f"{hot['first_pass']['with']['recalled']}/{hot['phrases']} | {plain['first_pass']['wer']:.2f} "
            f"(without: {first['no_lm'][plain['set']]['wer']:.2f}) |",
            f"| two-pass | {hot['two_pass']['without']['recalled']}/{hot['phrases']} | "
            f"{hot['two_pass']['with']['recalled']}/{hot['phrases']} | {plain['two_pass']['wer']:.2f} "
            f"(without: {second['no_lm'][plain['set']]['wer']:.2f}) |",
        ]
    share = result.get("search_share")
    if share:
        lines += ["", "Search share of streaming time (prefix beam 10, `ctc_prefix_beam` mode, median over "
                  f"{share['no_lm']['utts']} utterances): without LM {100 * share['no_lm']['search_share_median']:.1f}% "
                  f"(max {100 * share['no_lm']['search_share_max']:.1f}%), with the {result['best_lm']} LM "
                  f"{100 * share['lm']['search_share_median']:.1f}% (max {100 * share['lm']['search_share_max']:.1f}%); "
                  f"RTF {share['no_lm']['rtf_median']:.3f} / {share['lm']['rtf_median']:.3f}."]
        if "search_implementation" not in result:
            lines[-1] = lines[-1].replace("Search share", "Search share (the Python search loop, before the "
                                          "compiled core: see search_speed.json below)", 1)
        two = share.get("default_two_pass_lm")
        if two:
            lines[-1] += (f" In the default two-pass mode (`{two['mode']}`, partials from the LM-fused beam): "
                          f"{100 * two['search_share_median']:.1f}% (max {100 * two['search_share_max']:.1f}%), "
                          f"RTF {two['rtf_median']:.3f}.")
    parity = result.get("onnx_parity")
    if parity:
        lines += ["", f"ONNX Runtime vs torch (`{parity['model']}`, LM and hotwords on): identical n-best on "
                  f"{parity['identical_nbest']}/{parity['utts']} utterances, scores within "
                  f"{parity['max_score_difference']:g}."]
    return lines + [""]


def search_speed_section(result: dict, name: str) -> list[str]:
    """The compiled CTC prefix search against the Python reference (benchmarks/search_speed.py)."""
    lines = [
        f"## CTC prefix beam search: compiled core vs Python reference ({name})",
        "",
        f"Model `{result['model']}`, first pass at chunk {result['chunk_size']} (CTC prefix beam "
        f"{result['beam_size']}, a partial result per chunk); LM `{result['lm']}` at weight "
        f"{result['lm_weight']:g}, bonus {result['lm_bonus']:g}. Search time: the search alone over the "
        "chunk-masked CTC log-probs, per second of audio, median over utterances (the implementations take "
        "turns on each; one scorer for all utterances, as a recognizer shares it). Share: the search's share "
        f"of streaming time at beam 10. Measured {result['date']} on {result['machine']}.",
        "",
        "| set | LM | identical n-best | Python ms / audio s | C ms / audio s | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for set_name, entry in result["sets"].items():
        for lm_key, row in entry["search"].items():
            lines.append(f"| {set_name} | {'no' if lm_key == 'no_lm' else 'yes'} | {row['identical_nbest']}/{row['utts']} "
                         f"| {row['python_ms_per_audio_s']:.2f} | {row['native_ms_per_audio_s']:.2f} | {row['speedup']:.1f}x |")
    lines += ["", "Search share of streaming time, median (max) over utterances (target: <= 10%):", "",
              "| set | implementation | `ctc_prefix_beam`, no LM | `ctc_prefix_beam`, LM | default two-pass, LM |",
              "|---|---|---|---|---|"]
    for set_name, entry in result["sets"].items():
        for impl, share in entry["share"].items():
            cells = [f"{100 * share[k]['search_share_median']:.1f}% ({100 * share[k]['search_share_max']:.1f}%)"
                     for k in ("no_lm", "lm", "default_two_pass_lm")]
            lines.append(f"| {set_name} | {'C' if impl == 'native' else 'Python'} | " + " | ".join(cells) + " |")
    return lines + [""]


def _layer_targets(distillation: dict) -> str:
    """How a student learnt the teacher's hidden states, if it did (train.distill_layer_weight)."""
    if not distillation.get("distill_layer_weight"):
        return ""
    pairs = distillation.get("distill_layers")
    paired = ", ".join(f"{s}->{t}" for s, t in pairs) if pairs else "matched by relative depth"
    return (f", its layers' outputs projected onto the teacher's (layer pairs {paired}, weight "
            f"{distillation['distill_layer_weight']:g})")


def _students(result: dict) -> dict:
    """{name: facts} of a first-pass-student result; a result of one student written before
    several could be measured in one run keys its rows "student"."""
    if "students" in result:
        return result["students"]
    return {"student": {"path": result["student"], "encoder": result["student_encoder"],
                        "size": result["sizes"]["student"], "training": result.get("training"),
                        "distillation": result.get("distillation")}}


def _latency_ratios(result: dict, who: str) -> list[tuple[str, float]]:
    """(backend, teacher / student per-chunk latency) of one student, either result layout."""
    torch_ratio, onnx = result.get("latency_ratio"), result.get("onnx_latency_ratio") or {}
    if "students" in result:
        torch_ratio, onnx = (torch_ratio or {}).get(who), onnx.get(who) or {}
    return ([("torch", torch_ratio)] if torch_ratio else []) + [(f"ONNX Runtime, {p}", r) for p, r in onnx.items() if r]


def _chunk_parts_table(result: dict) -> list[str]:
    """Where a chunk's time goes, teacher against each student, on the first set (SpeedProbe's parts)."""
    set_name, entry = next(iter(result["sets"].items()))
    runs = [("torch", entry["first_pass_speed"], "")]
    if "onnx_first_pass_speed" in entry:
        runs += [(f"ONNX Runtime {p}", entry["onnx_first_pass_speed"], f"_{p}") for p in ("float", "int8")]
    if "chunk_parts_ms" not in runs[0][1]["teacher"]:
        return []  # measured before the parts were timed
    parts = list(runs[0][1]["teacher"]["chunk_parts_ms"])
    lines = ["", f"Where a chunk's time goes ({set_name}; ms, the median of each part over the same calls, so "
             "the parts need not add up to the whole; a student's cells give the teacher's time / the student's):", "",
             "| backend | first pass | " + " | ".join(parts) + " | whole chunk |", "|---|---|" + "---|" * (len(parts) + 1)]
    for label, speeds, suffix in runs:
        teacher = speeds[f"teacher{suffix}"]
        cells = [f"{teacher['chunk_parts_ms'][p]:.2f}" for p in parts] + [f"{teacher['chunk_latency_ms']['median']:.2f}"]
        lines.append(f"| {label} | teacher | " + " | ".join(cells) + " |")
        for who in _students(result):
            student = speeds[f"{who}{suffix}"]
            pairs = [(teacher["chunk_parts_ms"][p], student["chunk_parts_ms"][p]) for p in parts]
            pairs.append((teacher["chunk_latency_ms"]["median"], student["chunk_latency_ms"]["median"]))
            cells = [f"{s:.2f} ({t / s:.1f}x)" if s else f"{s:.2f}" for t, s in pairs]
            lines.append(f"| {label} | {who} | " + " | ".join(cells) + " |")
    return lines


def _student_line(who: str, facts: dict) -> str:
    encoder, size, trained = facts["encoder"], facts["size"], facts.get("training")
    stem = encoder.get("subsampling_channels")
    return (f"- `{who}` (`{facts['path']}`): {encoder.get('d_model')} wide, blocks {encoder.get('blocks')}"
            + (f", a convolutional stem of {stem} channels" if stem else "")
            + f"; {size['parameters'] / 1e6:.2f} M parameters in its first pass ({size['float16_bytes'] / 1e6:.1f} MB "
            "float16); trained on the teacher's CTC posteriors (KL per 20 ms frame)"
            + _layer_targets(facts.get("distillation") or {})
            + " and the transcripts"
            + (f", {trained['steps']} steps in {trained['minutes']:g} min" if trained else "")
            + (f" ({trained['runs']} runs, resumed)" if trained and trained.get("runs", 1) > 1 else "") + ".")


def first_pass_student_section(result: dict, name: str) -> list[str]:
    """Distilled fast first passes against the default's own (benchmarks/first_pass_student.py)."""
    students = _students(result)
    teacher_size = result.get("teacher_size") or result["sizes"]["teacher"]
    who_all = ["teacher", *students]
    lines = [
        f"## Practical first pass distilled from the default ({name})",
        "",
        f"Teacher `{result['teacher']}`: {teacher_size['parameters'] / 1e6:.2f} M parameters in its first pass "
        f"({teacher_size['float16_bytes'] / 1e6:.1f} MB float16). Students:",
        "",
        *[_student_line(who, facts) for who, facts in students.items()],
        "",
        f"Chunk {result['chunk_size']} (640 ms), 1 thread. Two passes: the default mode with the student as "
        "its first pass (`--first-pass`); the finals are the teacher's second pass either way. Latency: each "
        "`accept` that completed an encoder chunk (greedy first pass), median (p90); the prefix beam runs with the "
        "teacher's LM; the models take turns on each utterance. End of segment: the time `finish()` takes after the "
        f"last audio (the last segment's second pass), median (p90). Measured {result['date']} on {result['machine']}.",
        "",
    ]
    modes = list(next(iter(result["sets"].values()))["first_pass"])  # best path first, as measured
    greedy = modes[0]
    lines += ["| set | first pass | " + " | ".join(f"{m} WER (CER)" for m in modes)
              + " | two passes WER (CER) | ms / chunk | two-pass RTF | end of segment ms |",
              "|---|---|" + "---|" * len(modes) + "---|---|---|---|"]
    for set_name, entry in result["sets"].items():
        for who in who_all:
            cells = [f"{entry['first_pass'][m][who]['wer']:.1f} ({entry['first_pass'][m][who]['cer']:.1f})"
                     for m in modes]
            two = entry["two_pass"][who]
            latency = entry["first_pass_speed"][who]["chunk_latency_ms"]
            lines.append(f"| {set_name} ({entry['utts']}) | {who} | " + " | ".join(cells)
                         + f" | {two['wer']:.1f} ({two['cer']:.1f}) | {latency['median']:.1f} ({latency['p90']:.1f}) "
                         f"| {entry['two_pass_speed'][who]['rtf_median']:.4f} | {_ms(entry['two_pass_speed'][who]['finish_ms'])} |")
    if "onnx_first_pass_speed" in next(iter(result["sets"].values())):
        lines += ["", "On ONNX Runtime (all exported at the same chunk size; ms per chunk, median (p90); the "
                  "two-pass RTF with the student's export as the first pass):", "",
                  "| set | first pass | float ms / chunk | int8 ms / chunk | two-pass RTF | end of segment ms |",
                  "|---|---|---|---|---|---|"]
        for set_name, entry in result["sets"].items():
            speeds, two = entry["onnx_first_pass_speed"], entry["onnx_two_pass_speed"]
            for who in who_all:
                cells = [f"{speeds[f'{who}_{p}']['chunk_latency_ms']['median']:.1f} "
                         f"({speeds[f'{who}_{p}']['chunk_latency_ms']['p90']:.1f})" for p in ("float", "int8")]
                lines.append(f"| {set_name} | {who} | " + " | ".join(cells) + f" | {two[who]['rtf_median']:.4f} "
                             f"| {_ms(two[who]['finish_ms'])} |")
    lines += _chunk_parts_table(result)
    lines += ["", "| student | target | measured | met |", "|---|---|---|---|"]
    for who in students:
        for backend, ratio in _latency_ratios(result, who):
            lines.append(f"| {who} | first pass >= 3x lower per-chunk latency ({backend}) | {ratio:.2f}x | "
                         f"{'yes' if ratio >= 3 else 'no'} |")
        for set_name, entry in result["sets"].items():
            first = entry["first_pass"][greedy]
            rel = _relative(first[who]["wer"], first["teacher"]["wer"])
            lines.append(f"| {who} | {set_name}: first-pass WER within +15% relative ({greedy}) | {rel:+.1f}% | "
                         f"{'yes' if rel <= 15 else 'no'} |")
            # near 100% WER saturates (a word is wrong however wrong it is): the CER tells the gap
            c_rel = _relative(first[who]["cer"], first["teacher"]["cer"])
            lines.append(f"| {who} | {set_name}: first-pass CER within +15% relative ({greedy}; WER near 100% "
                         f"saturates) | {c_rel:+.1f}% | {'yes' if c_rel <= 15 else 'no'} |")
            two_t, two_s = entry["two_pass"]["teacher"]["wer"], entry["two_pass"][who]["wer"]
            lines.append(f"| {who} | {set_name}: two-pass WER with the fast first pass <= the default's | {two_s:.1f} "
                         f"vs {two_t:.1f} | {'yes' if two_s <= two_t else 'no'} |")
    return lines + [""]


def _relative(value: float, reference: float) -> float:
    """Percent change of ``value`` against ``reference`` (0 when the reference is 0)."""
    return 100 * (value - reference) / reference if reference else 0.0


def long_stream_section(result: dict, name: str) -> list[str]:
    """Per-minute accuracy, speed and memory of one long stream per variant (benchmarks/long_stream.py)."""
    model = result["model"]
    rules = result.get("endpoint_rules")
    if result.get("segmented") and rules:
        cut = (f"cut into segments at endpoints (CTC blank >= {rules['blank_threshold']:g}: "
               f"{rules['silence_after_speech']:g} s of silence after speech, {rules['silence_without_speech']:g} s "
               f"without any; forced cut at {rules['max_utterance']:g} s), each starting a fresh encoder stream")
    else:
        cut = "not cut into segments (one encoder stream throughout)"
    mode = result["mode_used"] if result["mode_used"] == result["mode"] else f"{result['mode']} -> {result['mode_used']}"
    lines = [
        f"## Long streams ({name})",
        "",
        f"Model `{model['directory']}` ({model['encoder']}, {model['frame_ms']:g} ms frames), `{mode}`, chunk "
        f"{result['chunk_size']} ({result['chunk_ms']:g} ms); test utterances of `{result['manifest']}` in "
        f"{'a seeded shuffled order' if result.get('order', 'manifest') == 'shuffled' else 'manifest order'}, "
        f"joined into {result['minutes']:g}-minute streams fed to one streaming session in {result['block_ms']:g} ms "
        f"blocks; the stream is {cut}. Measured {result['date']} on {result['machine']} (load average "
        f"{result['load_average'][0]:.1f} at the start).",
        "",
        "Per minute of stream time: WER % of the utterances starting in it (hypothesis words go to the utterance "
        "their start time falls in); RTF: `accept` wall time / audio (the last minute includes `finish()` and the "
        "tail of the utterance crossing the end); ms per block: median (max; blocks that close a segment include "
        "its second pass); encoder state: max of `state_bytes()`; RSS: max resident memory of the process; "
        "segments: closed in that minute.",
        "",
    ]
    bound = result.get("state_bytes_bound")
    for variant, row in result["variants"].items():
        lines += [
            f"### `{variant}`: {row['description']}",
            "",
            f"{row['audio_seconds'] / 60:.2f} min, {row['utts']} utterances, {row['words']} words; WER "
            f"{row['wer']:.1f}% over the whole stream ({row['substitutions']} S, {row['deletions']} D, "
            f"{row['insertions']} I), RTF {row['rtf']:.4f}, {row['segments']} segments "
            f"({row['segments_with_text']} with text), finish {row['finish_ms']:.0f} ms, RSS "
            f"{row['rss_mb_start']:.0f} MB before the stream.",
            "",
            "| minute | utts | WER % | RTF | ms / block (max) | encoder state MB | RSS MB | segments |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for m in row["minutes"]:
            blocks = m["block_ms"]
            ms = f"{blocks['median']:.1f} ({blocks['max']:.0f})" if blocks["median"] is not None else "-"
            lines.append(f"| {m['minute']} | {m['utts']} | {m['wer']:.1f} | {m['rtf']:.4f} | {ms} | "
                         f"{m['state_bytes'] / 1e6:.2f} | {m['rss_mb']:.0f} | {m['segments']} |")
        first, last = row["minutes"][0], row["minutes"][-1]
        lines.append(f"| all | {row['utts']} | {row['wer']:.1f} | {row['rtf']:.4f} | | "
                     f"{row['state_bytes_max'] / 1e6:.2f} | {row['rss_mb_max']:.0f} | {row['segments']} |")
        lines += ["", f"Last minute against the first: WER {last['wer']:.1f}% vs {first['wer']:.1f}%, RTF "
                  f"{last['rtf']:.4f} vs {first['rtf']:.4f}, RSS {last['rss_mb']:.0f} vs {first['rss_mb']:.0f} MB"
                  + (f"; encoder state at most {row['state_bytes_max'] / 1e6:.2f} MB (bound for one forced-cut "
                     f"segment: {bound / 1e6:.2f} MB)." if bound else "."), ""]
    return lines


def _kb(value: int) -> str:
    return f"{value / 1024:.1f}"


def encoders_section(result: dict, name: str, plot: str | None) -> list[str]:
    rows = result["models"]
    chunks = result["chunk_sizes"]
    test = result["test"]
    lines = [
        f"## Encoder variants side by side ({name})",
        "",
        f"One process, models taking turns; {result['machine']}; measured {result['date']}. Baseline: "
        f"`{result['baseline']}`. Latency is encoder + CTC head per chunk (median / p90 over the chunks of "
        f"{test['latency_utts']} test utterances, each streamed from an empty state); RTF is the whole streaming "
        f"recognizer at chunk {result['accuracy_chunk_size']}; WER % (CER %) on {test['utts']} held-out utterances "
        f"({test['audio_seconds'] / 60:.1f} min) at chunk {result['accuracy_chunk_size']}. FLOPs per second of "
        "audio at chunk 16; state is the streaming caches after 10 s / 60 s of audio.",
        "",
        "| model | blocks | params | MB on disk | GFLOPs / s audio | state KB 10 s / 60 s | "
        + " | ".join(f"ms / chunk {c} (p90)" for c in chunks)
        + " | RTF | WER first pass | WER rescored |",
        "|---|---|---|---|---|---|" + "---|" * len(chunks) + "---|---|---|",
    ]
    for row in rows:
        acc = row.get("accuracy")
        first = f"{acc['first_pass']['wer']:.1f} ({acc['first_pass']['cer']:.1f})" if acc else "untrained"
        rescored = f"{acc['rescored']['wer']:.1f} ({acc['rescored']['cer']:.1f})" if acc else "untrained"
        latency = [f"{row['latency_ms'][str(c)]['median']:.2f} ({row['latency_ms'][str(c)]['p90']:.2f})" for c in chunks]
        rtf = f"{row['rtf']:.4f}" if row.get("rtf") is not None else "-"
        lines.append(
            f"| {row['name']} | {row['plan']}, d={row['d_model']} | {row['parameters'] / 1e6:.2f} M | "
            f"{row['bytes_on_disk'] / 1e6:.1f} | {row['gflops_per_audio_second']:.3f} | "
            f"{_kb(row['state_bytes_10s'])} / {_kb(row['state_bytes_60s'])} | " + " | ".join(latency)
            + f" | {rtf} | {first} | {rescored} |"
        )
    lines += ["", "Ratios against the baseline (speed-up = baseline ms / model ms; WER and CER change in % relative):", "",
              "| model | " + " | ".join(f"speed-up chunk {c}" for c in chunks)
              + " | FLOPs ratio | WER first pass | CER first pass | WER rescored | CER rescored |",
              "|---|" + "---|" * len(chunks) + "---|---|---|---|---|"]
    for row in rows:
        r = row["vs_baseline"]

        def pct(key: str) -> str:
            return f"{r[key]:+.1f}%" if r.get(key) is not None else "-"

        lines.append(
            f"| {row['name']} | " + " | ".join(f"{r[f'speedup_chunk_{c}']:.2f}x" for c in chunks)
            + f" | {r['flops_ratio']:.2f} | {pct('wer_relative_first_pass')} | {pct('cer_relative_first_pass')} | "
            f"{pct('wer_relative_rescored')} | {pct('cer_relative_rescored')} |"
        )
    if all("latency_ms_long_stream" in row for row in rows):
        stream = rows[0]["latency_ms_long_stream"]
        lines += ["", f"Long stream (the latency utterances back to back and repeated, {stream['stream_seconds']:.0f} s; chunks of its "
                  f"second half, chunk {stream['chunk_size']}): "
                  + "; ".join(f"{row['name']} {row['latency_ms_long_stream']['median']:.2f} ms "
                              f"(p90 {row['latency_ms_long_stream']['p90']:.2f}, "
                              f"{row['vs_baseline'].get('speedup_long_stream', 1.0):.2f}x)" for row in rows) + "."]
    targets = result.get("targets")
    if targets:
        lines += ["", "| target | measured | met |", "|---|---|---|"]
        for target in targets:
            lines.append(f"| {target['target']} | {target['measured']} | {'yes' if target['met'] else 'no'} |")
    profile = result.get("layer_norm_profile")
    if profile:
        lines += [
            "",
            f"LayerNorm in the baseline (chunk {profile['chunk_size']}, {profile['chunks']} chunks): "
            f"{100 * profile['time_share_ablation']:.1f}% of streaming time by ablation (every LayerNorm replaced by "
            f"the identity), {100 * profile['time_share_profiler']:.1f}% of self CPU time under the profiler, for "
            f"{100 * profile['flops_share']:.2f}% of FLOPs.",
        ]
    for note in result.get("notes", []):
        lines += ["", note]
    if plot:
        lines += ["", f"![WER against per-chunk latency]({plot})"]
    lines.append("")
    return lines


def quantization_section(result: dict, name: str) -> list[str]:
    test = result["test"]
    lines = [
        f"## Quantization ({name})",
        "",
        f"Float model `{result['float_model']}` and its quantized forms, each in torch and in ONNX Runtime, measured in "
        f"one run on {result['machine']} ({result['date']}). Latency: encoder + CTC head per chunk {result['chunk_size']} "
        f"(median, p90); RTF and WER % (CER %) from streaming recognition with attention rescoring on "
        f"{test['utts']} held-out utterances ({test['audio_seconds'] / 60:.1f} min). Ratios against torch fp32.",
        "",
        "| model | runtime | MB | smaller | ms / chunk (p90) | faster | RTF | WER (CER) | WER change |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        change = f"{row['wer_relative']:+.1f}%" if row.get("wer_relative") is not None else "-"
        lines.append(
            f"| {row['name']} | {row['runtime']} | {row['bytes'] / 1e6:.2f} | {row['smaller']:.2f}x | "
            f"{row['latency_ms']['median']:.2f} ({row['latency_ms']['p90']:.2f}) | {row['faster']:.2f}x | "
            f"{row['rtf']:.4f} | {row['wer']:.1f} ({row['cer']:.1f}) | {change} |"
        )
    targets = []
    for row in result["rows"]:
        if "int8" in row["name"]:
            met = row["smaller"] >= 3.8 and row["faster"] >= 1.3 and (row["wer_relative"] or 0) <= 2
            targets.append((f"{row['name']} ({row['runtime']}): >= 3.8x smaller, >= 1.3x faster, <= +2% WER",
                            f"{row['smaller']:.2f}x, {row['faster']:.2f}x, {row['wer_relative']:+.1f}%", met))
        if "w4a8" in row["name"]:
            met = row["smaller"] >= 6 and (row["wer_relative"] or 0) <= 5
            targets.append((f"{row['name']} ({row['runtime']}): >= 6x smaller, <= +5% WER",
                            f"{row['smaller']:.2f}x, {row['wer_relative']:+.1f}%", met))
    for model, check in result.get("reload", {}).items():
        targets.append((f"{model}: reloaded in a fresh process, same text", f"{check['identical']}/{check['utts']}",
                        check["identical"] == check["utts"]))
    if targets:
        lines += ["", "| target | measured | met |", "|---|---|---|"]
        lines += [f"| {t} | {m} | {'yes' if ok else 'no'} |" for t, m, ok in targets]
    lines.append("")
    return lines


def pareto_plot(result: dict, path: str | Path, chunk_size: int = 16) -> None:
    """WER (first pass) against median per-chunk latency; the Pareto front joined by a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [
        (row["latency_ms"][str(chunk_size)]["median"], row["accuracy"]["first_pass"]["wer"],
         row["accuracy"]["first_pass"]["cer"], row["name"])
        for row in result["models"]
        if row.get("accuracy") and str(chunk_size) in row["latency_ms"]
    ]
    figure, axes = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for latency, wer, cer, name in points:
        axes.scatter(latency, wer, s=36)
        axes.annotate(f"{name}\n(CER {cer:.1f})", (latency, wer), textcoords="offset points", xytext=(6, 4), fontsize=8)
    front, best = [], float("inf")
    for latency, wer, _, _ in sorted(points):
        if wer < best:
            front.append((latency, wer))
            best = wer
    if len(front) > 1:
        axes.plot(*zip(*front), linestyle="--", linewidth=1, color="gray", label="Pareto front")
        axes.legend(fontsize=8)
    axes.set_xlabel(f"median latency per chunk {chunk_size} (ms, 1 thread)")
    axes.set_ylabel("WER % (first pass, chunk 16)")
    axes.set_title(f"Encoder variants ({result['date']})", fontsize=10)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)


def _static_wer_at(rows: list[dict], layers: float) -> float | None:
    """WER of the static models linearly interpolated at ``layers`` executed layers."""
    static = sorted((r["executed_layers"], r["wer"]) for r in rows if r["family"] == "static")
    for (x0, y0), (x1, y1) in zip(static, static[1:]):
        if x0 <= layers <= x1:
            return y0 + (y1 - y0) * (layers - x0) / (x1 - x0) if x1 > x0 else y0
    return None


def dynamic_section(result: dict, name: str, plot: str | None) -> list[str]:
    test = result["test"]
    lines = [
        f"## Dynamic compute: I3D dynamic depth and compute-amortized frame skipping ({name})",
        "",
        f"Streaming at chunk {result['chunk_size']} with attention rescoring, {test['utts']} held-out utterances "
        f"({test['audio_seconds'] / 60:.1f} min), {result['machine']} ({result['date']}). Executed layers: layers' worth of "
        "gated modules (attention, both feed-forward modules) run per frame; the convolution module always runs. "
        f"FLOPs: counted from the products actually executed on {test['flops_utts']} utterances (gate predictors "
        "included), for the whole encoder and for its layers alone (the subsampling front end is outside every gate). "
        f"Encoder time: per utterance, median over {test['timing_utts']} utterances x {test['repeats']} interleaved passes. "
        f"Ratios against `{result['reference']}`.",
        "",
        "| model | executed layers | encoder GFLOPs / s | layers GFLOPs / s | compute saved (layers) | "
        "encoder ms / utt, streaming (offline) | time saved, streaming (offline) | WER (CER) | WER change |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        change = f"{row['wer_relative']:+.1f}%" if row.get("wer_relative") is not None else "-"
        lines.append(
            f"| {row['name']} | {row['executed_layers']:.2f} | {row['encoder_gflops_per_s']:.3f} | "
            f"{row['layers_gflops_per_s']:.3f} | {100 * row['compute_saved']:.0f}% ({100 * row['layers_compute_saved']:.0f}%) | "
            f"{row['encoder_ms_per_utt']:.1f} ({row['encoder_ms_per_utt_offline']:.1f}) | "
            f"{100 * row['time_saved']:.0f}% ({100 * row['time_saved_offline']:.0f}%) | {row['wer']:.1f} ({row['cer']:.1f}) | {change} |"
        )
    targets = []
    for row in result["rows"]:
        if row["family"].startswith("i3d") and row["threshold"] == 0.5:
            static = _static_wer_at(result["rows"], row["executed_layers"])
            measured = f"{row['wer']:.1f} vs {static:.1f}" if static is not None else f"{row['wer']:.1f} (outside the static range)"
            targets.append((f"{row['name']}: lower WER than static models at {row['executed_layers']:.2f} layers",
                            measured, static is not None and row["wer"] < static))
        if row["family"] == "amortized" and row["threshold"] == 0.5:
            targets.append((f"{row['name']}: >= 50% less encoder compute (layers) at <= +5% WER",
                            f"{100 * row['layers_compute_saved']:.0f}% (whole encoder {100 * row['compute_saved']:.0f}%), "
                            f"{row['wer_relative']:+.1f}%",
                            row["layers_compute_saved"] >= 0.5 and row["wer_relative"] <= 5))
            targets.append((f"{row['name']}: >= 30% less encoder wall time (streaming chunk {result['chunk_size']})",
                            f"{100 * row['time_saved']:.0f}%", row["time_saved"] >= 0.3))
            targets.append((f"{row['name']}: >= 30% less encoder wall time (offline, one pass)",
                            f"{100 * row['time_saved_offline']:.0f}%", row["time_saved_offline"] >= 0.3))
    if targets:
        lines += ["", "| target | measured | met |", "|---|---|---|"]
        lines += [f"| {t} | {m} | {'yes' if ok else 'no'} |" for t, m, ok in targets]
    if plot:
        lines += ["", f"![WER against executed layers and executed compute]({plot})"]
    lines.append("")
    return lines


def dynamic_plot(result: dict, path: str | Path) -> None:
    """Two panels: WER against executed layers (I3D vs static), and against executed encoder
    layer FLOPs (amortized vs static); each dynamic model is a curve over gate thresholds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    families = sorted({row["family"] for row in result["rows"]})
    colors = {family: f"C{index}" for index, family in enumerate(families)}  # same colour in both panels
    for axes, x_key, label, keep in (
        (left, "executed_layers", "executed layers (gated modules per frame, in layers)", lambda f: f != "amortized"),
        (right, "layers_gflops_per_s", "executed encoder-layer GFLOPs per audio second", lambda f: True),
    ):
        for family in families:
            if not keep(family):
                continue
            rows = sorted((r for r in result["rows"] if r["family"] == family), key=lambda r: r[x_key])
            style = "s-" if family == "static" else "o--"
            axes.plot([r[x_key] for r in rows], [r["wer"] for r in rows], style, label=family, markersize=5,
                      color=colors[family])
            for r in rows:
                if r["threshold"] is not None:
                    axes.annotate(f"{r['threshold']:g}", (r[x_key], r["wer"]), textcoords="offset points",
                                  xytext=(4, 3), fontsize=7)
        axes.set_xlabel(label, fontsize=9)
        axes.set_ylabel(f"WER % (chunk {result['chunk_size']}, rescored)")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    figure.suptitle(f"Dynamic compute vs static depth ({result['date']}); labels: gate threshold", fontsize=10)
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)


def load_test_section(result: dict, name: str) -> list[str]:
    memory = result["memory_kb"]
    lines = [
        f"## Streaming server load test ({name})",
        "",
        f"`edgeasr serve` ({result['backend']}, model `{result['model']}`) on {result['machine']} ({result['date']}). "
        f"Each session streams {result['seconds_per_session']:g} s of held-out speech at {result['speed']:g}x real time "
        f"in {result['chunk_ms']} ms messages over loopback; latency is from sending a message to receiving the "
        "server's reply to it (queueing included). RTF: worker compute over audio.",
        "",
        "| sessions | chunks | latency p50 (ms) | p95 | max | RTF | sessions held | server RSS after (MB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result["levels"]:
        lat = row["latency_ms"]
        lines.append(f"| {row['sessions']} | {row['chunks']} | {lat['p50']:.1f} | {lat['p95']:.1f} | {lat['max']:.1f} | "
                     f"{row['rtf']:.3f} | {row['sessions_held_max']} | {row['memory_after_kb']['rss_kb'] / 1024:.0f} |")
    lines += [
        "",
        f"Server memory: {memory['start']['rss_kb'] / 1024:.0f} MB resident at start, "
        f"{memory['end']['rss_kb'] / 1024:.0f} MB at the end, peak {memory['end']['peak_kb'] / 1024:.0f} MB.",
        "",
    ]
    return lines


def onnx_parity_section(result: dict, name: str) -> list[str]:
    """Torch against ONNX Runtime (float, int8): same text, WER, RTF, bytes; one table per set."""
    sets = result.get("sets") or {"test": {**result["test"], "rows": result["rows"]}}  # older files: one set
    lines = [
        f"## ONNX Runtime backend against torch ({name})",
        "",
        f"Model `{result['model']}` streamed at its chunk size, mode {result.get('mode', 'attention_rescoring')}, "
        f"{result['machine']} ({result['date']}). The ONNX rows run without torch (features, encoder with caches, "
        "CTC prefix beam, and the mode's second pass: attention rescoring, or the Whisper joint search over "
        "the full-context encoder and decoder graphs).",
    ]
    if "sets" in result:
        lines[-1] += (" The backends take turns on each utterance; speed-up: median over utterances of torch's "
                      "time / the backend's. MB: what each backend loads from disk (torch: the model directory "
                      "and the pretrained package file; ONNX: the graphs the mode runs, tokenizers, LM).")
    for set_name, entry in sets.items():
        lines += ["", f"**{set_name}** ({entry['utts']} utterances, {entry['audio_seconds'] / 60:.1f} min):", ""]
        with_speedup = any("speedup_vs_torch_median" in row for row in entry["rows"])
        head = "| backend | same text as torch | WER (CER) | RTF |"
        rule = "|---|---|---|---|"
        if with_speedup:
            head += " speed-up | MB |"
            rule += "---|---|"
        lines += [head, rule]
        for row in entry["rows"]:
            line = (f"| {row['backend']} | {row['same_text_as_torch']}/{entry['utts']} | {row['wer']:.1f} "
                    f"({row['cer']:.1f}) | {row['rtf']:.4f} |")
            if with_speedup:
                line += f" {row['speedup_vs_torch_median']:.2f}x | {row['bytes_on_disk'] / 1e6:.1f} |"
            lines.append(line)
    lines.append("")
    return lines


def repo_path(path: str | Path, root: str | Path) -> str:
    """A path inside the repository as the repository names it (results and cards must not name
    the machine they were measured on); a path outside it as given."""
    try:  # absolute, not resolved: a symlink in the repository keeps its repository name
        return str(Path(os.path.abspath(path)).relative_to(os.path.abspath(root)))
    except ValueError:
        return str(path)


def run_facts(benchmark: str, script: str, argv: list[str]) -> dict:
    """What every result records about its run: the machine, versions, threads, load, command.

    The load average is kept because speeds here are measured on shared machines."""
    import os
    import platform
    import shlex
    import time

    import torch

    return {
        "benchmark": benchmark,
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} thread{'s' if torch.get_num_threads() > 1 else ''}",
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "command": f"python {script} " + shlex.join(argv),
    }


def save_result(result: dict, out: str | Path, report: str | Path) -> Path:
    """Write a benchmark's result JSON (atomically) and regenerate the report from its folder."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=1))
    return write_report(out.parent, report)


#: result files measured on the from-scratch models (u2-baseline era), reported last and labelled
FROM_SCRATCH_RESULTS = frozenset({
    "u2_default.json", "quantization.json", "dynamic.json", "encoders.json", "integer_profile.json",
    "onnx_parity.json", "load_test.json", "long_stream_u2.json",
})


def write_report(results_dir: str | Path, out: str | Path) -> Path:
    """Regenerate the whole BENCHMARKS.md from every result file in ``results_dir``."""
    results_dir, out = Path(results_dir), Path(out)
    lines = [
        "# Benchmarks",
        "",
        "Generated by `python benchmarks/make_report.py` (also run by `edgeasr bench`) from "
        "`benchmarks/results/*.json`; do not edit by hand.",
        "Speeds are measured at 1 thread on the machine named in each section; accuracy is WER on held-out data.",
        "",
    ]
    loaded = [(path, json.loads(path.read_text())) for path in sorted(results_dir.glob("*.json"))]
    # The default model's section first, then its long-stream check; the others in file-name order.
    first = {"whisper_default": 0, "long_stream": 1, "lm_fusion": 2, "search_speed": 3, "quantization_default": 4}
    # Results measured on the from-scratch models (before the pretrained default) go last, under
    # a heading that says so: their accuracy columns describe a model that did not recognize.
    loaded.sort(key=lambda item: (item[0].name in FROM_SCRATCH_RESULTS,
                                  first.get(item[1].get("benchmark"), len(first))))
    legacy_heading_written = False
    for path, result in loaded:
        if path.name in FROM_SCRATCH_RESULTS and not legacy_heading_written:
            legacy_heading_written = True
            lines += [
                "# Measured on the from-scratch models (before the pretrained default)",
                "",
                "The sections below were measured on models trained from scratch on synthesized speech "
                "(`models/u2-baseline` and its variants, ~88% WER): their speed and size ratios hold, "
                "their accuracy columns describe a model that does not recognize speech. The default model's "
                "tables are above.",
                "",
            ]
        if result.get("benchmark") == "whisper_default":
            lines += whisper_section(result, path.name)
        elif result.get("benchmark") == "long_stream":
            lines += long_stream_section(result, path.name)
        elif result.get("benchmark") == "lm_fusion":
            lines += lm_fusion_section(result, path.name)
        elif result.get("benchmark") == "search_speed":
            lines += search_speed_section(result, path.name)
        elif result.get("benchmark") == "first_pass_student":
            lines += first_pass_student_section(result, path.name)
        elif result.get("benchmark") == "u2_baseline":
            lines += u2_section(result, path.name)
        elif result.get("benchmark") == "quantization":
            lines += quantization_section(result, path.name)
        elif result.get("benchmark") == "quantization_default":
            lines += quantization_default_section(result, path.name)
        elif result.get("benchmark") == "encoders":
            plot = result.get("plot")
            if plot:
                try:
                    plot = str(Path(plot).resolve().relative_to(out.resolve().parent))
                except ValueError:
                    pass
            lines += encoders_section(result, path.name, plot)
        elif result.get("benchmark") == "onnx_parity":
            lines += onnx_parity_section(result, path.name)
        elif result.get("benchmark") == "transducer":
            lines += transducer_section(result, path.name)
        elif result.get("benchmark") == "cascade":
            lines += cascade_section(result, path.name)
        elif result.get("benchmark") == "integer_profile":
            lines += integer_profile_section(result, path.name)
        elif result.get("benchmark") == "segmenter":
            lines += segmenter_section(result, path.name)
        elif result.get("benchmark") == "second_pass_frames":
            lines += second_pass_frames_section(result, path.name)
        elif result.get("benchmark") == "vad":
            lines += vad_section(result, path.name)
        elif result.get("benchmark") == "second_pass_sweep":
            lines += second_pass_sweep_section(result, path.name)
        elif result.get("benchmark") == "second_pass_window":
            lines += second_pass_window_section(result, path.name)
        elif result.get("benchmark") == "load_test":
            lines += load_test_section(result, path.name)
        elif result.get("benchmark") == "capacity":
            lines += capacity_section(result, path.name)
        elif result.get("benchmark") == "batching":
            lines += batching_section(result, path.name)
        elif result.get("benchmark") == "encoder_skip":
            lines += encoder_skip_section(result, path.name)
        elif result.get("benchmark") == "confidence":
            lines += confidence_section(result, path.name)
        elif result.get("benchmark") == "long_file":
            lines += long_file_section(result, path.name)
        elif result.get("benchmark") == "dynamic":
            plot = result.get("plot")  # a file name next to the result
            if plot:
                dynamic_plot(result, results_dir / plot)
                try:
                    plot = str((results_dir / plot).resolve().relative_to(out.resolve().parent))
                except ValueError:
                    plot = str(results_dir / plot)
            lines += dynamic_section(result, path.name, plot)
    atomic_write_text(out, "\n".join(lines))
    return out


def cascade_section(result: dict, name: str) -> list[str]:
    """The cascaded second pass beside the first pass and the Whisper second pass (benchmarks/cascade.py)."""
    added = result["added_parameters"]
    lines = [
        f"## Cascaded second pass against the Whisper second pass ({name})",
        "",
        f"Model `{result['model']}`: the default's frozen streaming first pass "
        f"({result['first_pass_parameters'] / 1e6:.2f} M parameters) with a cascade of "
        f"{added['cascade_rescoring'] / 1e6:.2f} M parameters ({result['cascade_config']}) over its encoder frames, "
        f"and Whisper's decoder ({added['whisper_rescoring'] / 1e6:.2f} M) over a full-context re-encoding; streamed "
        f"in {result['chunk_size'] * result['frame_ms']:.0f} ms blocks, the modes taking turns on each utterance; "
        f"{result['machine']} ({result['date']}). End of segment: the time `finish()` takes after the last audio "
        "(the final segment's second pass).",
        "",
        "| set | mode | WER (CER) | RTF | end of segment, ms median (p90) | parameters added (float16 MB) |",
        "|---|---|---|---|---|---|",
    ]
    for set_name, entry in result["sets"].items():
        for mode, row in entry["rows"].items():
            lines.append(f"| {set_name} ({entry['utts']} utts) | {mode} | {row['wer']:.1f} ({row['cer']:.1f}) | "
                         f"{row['rtf']:.4f} | {row['end_of_segment_ms_median']:.0f} ({row['end_of_segment_ms_p90']:.0f}) | "
                         f"{added[mode] / 1e6:.2f} M ({2 * added[mode] / 1e6:.1f}) |")
    for label, other in (result.get("compared") or {}).items():
        lines += ["", f"`cascade_rescoring[{label}]`: the cascade of `{other['model']}` ({other['cascade_config']}) on the "
                  "same frozen first pass, in the same turns."]
    forward = result.get("cascade_forward_ms") or {}
    if forward:
        cascades = list(next(iter(forward.values())))
        lines += ["", "The cascade networks alone (layers and head, no search) on first-pass frames of a segment of "
                  "each length, ms, median, taking turns:", "",
                  "| segment | " + " | ".join(cascades) + " |", "|---|" + "---|" * len(cascades)]
        for seconds, times in forward.items():
            base = times[cascades[0]]
            cells = [f"{times[c]:.2f}" + (f" ({base / times[c]:.2f}x)" if c != cascades[0] and times[c] > 0 else "")
                     for c in cascades]
            lines.append(f"| {seconds} s | " + " | ".join(cells) + " |")
    exits = result.get("cascade_exits") or []
    if len(exits) > 1:  # a dynamic cascade: the smaller sub-models against the full one
        lines += ["", "Dynamic cascade: each smaller sub-model against the full one (target for the medium: size <= 70%, "
                  "WER <= +5% relative).", "", "| set | sub-model | size vs full | WER vs full | met |", "|---|---|---|---|---|"]
        for set_name, entry in result["sets"].items():
            full = entry["rows"]["cascade_rescoring"]
            for layers in exits[:-1]:
                mode = f"cascade_rescoring@{layers}"
                size = added[mode] / added["cascade_rescoring"]
                change = (entry["rows"][mode]["wer"] - full["wer"]) / max(full["wer"], 1e-9)
                lines.append(f"| {set_name} | {layers} of {exits[-1]} layers | {size * 100:.0f}% | {change * 100:+.1f}% | "
                             f"{'yes' if size <= 0.7 and change <= 0.05 else 'no'} |")
    return lines + [""]


def integer_profile_section(result: dict, name: str) -> list[str]:
    """Float, fake-quant and integer-only encoders per chunk, with a profile by operator kind
    (benchmarks/integer_profile.py)."""
    kinds = ("matmul", "quantize", "requantize", "other")
    lines = [
        f"## Where the torch integer path's time goes ({name})",
        "",
        f"Float `{result['float_model']}` against its W8A8 model `{result['quantized_model']}` (fake-quant, and "
        f"integer-only after `convert_to_integer`), encoder streaming at chunk {result['chunk_size']}, "
        f"{result['chunks']} chunks, the forms taking turns on each utterance; 1 thread, {result['machine']} "
        f"({result['date']}). Time: median per chunk, and the median per-chunk ratio to float. Profile: self CPU "
        "ms per chunk of the aten operators by kind (torch.profiler; its own overhead inflates all forms alike).",
        "",
        "| form | ms / chunk | vs float | " + " | ".join(f"{k} ms" for k in kinds) + " |",
        "|---|---|---|" + "---|" * len(kinds),
    ]
    for row in result["rows"]:
        cells = [f"{row['categories'][k]['self_ms_per_chunk']:.2f}" if k in row["categories"] else "-" for k in kinds]
        lines.append(f"| {row['form']} | {row['chunk_ms_median']:.2f} | {row['time_vs_float']:.2f}x | " + " | ".join(cells) + " |")
    return lines + [""]


def vad_section(result: dict, name: str) -> list[str]:
    """Long recordings with and without the energy VAD (benchmarks/vad.py)."""
    lines = [
        f"## Energy VAD on recordings with pauses ({name})",
        "",
        f"Model `{result['model']}` (shipped mode), files built from `{result['manifest']}` with pauses of room "
        f"noise at {result['pause_db']:g} dBFS, streamed with and without `--vad`, the two taking turns; 1 thread, "
        f"{result['machine']} ({result['date']}). Skipped: the share of the audio the encoder never saw.",
        "",
        "| files | minutes in all | VAD | RTF | time vs no VAD (median per file) | skipped | segments | WER |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(f"| {row.get('files', 1)} x {row['file']} | {row['minutes']:.1f} | {'on' if row['vad'] else 'off'} | "
                     f"{row['rtf']:.4f} | "
                     f"{row['time_vs_no_vad']:.2f}x | {100 * row['skipped_share']:.0f}% | {row['segments']} | "
                     f"{row['wer']:.1f}% ({row['words']} words) |")
    return lines + [""]


def second_pass_sweep_section(result: dict, name: str) -> list[str]:
    """The Whisper joint search's weights swept on dev, WER per engine (benchmarks/second_pass_sweep.py)."""
    engines = sorted({e for row in result["rows"] for e in row["wer_by_engine"]})
    lines = [
        f"## Whisper second pass: search weights on dev, WER by engine ({name})",
        "",
        f"Model `{result['model']}`, `{result['manifest']}` ({result['utts']} utterances, a dev set: "
        f"the test sets take no part in tuning), mode whisper_rescoring, streaming; {result['machine']} "
        f"({result['date']}). Score = ctc_weight x CTC + (1 - ctc_weight) x Whisper + length_bonus per "
        "character; **bold**: the defaults of the run (the segment alone, no window; today's defaults were "
        "chosen with the window, in the section \"the segment alone or in Whisper's window\").",
        "",
        "| ctc_weight | length_bonus | WER (CER) | " + " | ".join(f"{e} WER (words)" for e in engines) + " |",
        "|---|---|---|" + "---|" * len(engines),
    ]
    for row in result["rows"]:
        mark = "**" if row.get("default") else ""
        cells = [f"{row['wer_by_engine'][e]['wer']:.1f} ({row['wer_by_engine'][e]['words']})"
                 if e in row["wer_by_engine"] else "-" for e in engines]
        lines.append(f"| {mark}{row['ctc_weight']:g}{mark} | {mark}{row['length_bonus']:g}{mark} | "
                     f"{row['wer']:.1f} ({row['cer']:.1f}) | " + " | ".join(cells) + " |")
    return lines + [""]


def second_pass_window_section(result: dict, name: str) -> list[str]:
    """The second pass re-encoding segments alone or in a silence-padded Whisper window
    (benchmarks/second_pass_window.py): dev tuning of the weights per window, then test sets."""
    dev = result["dev"]
    lines = [
        f"## Whisper second pass: the segment alone or in Whisper's window ({name})",
        "",
        f"Model `{result['model']}`, mode whisper_rescoring, 640 ms chunks, 1 thread; {result['machine']} "
        f"({result['date']}). Window W: each segment is re-encoded at the start of W seconds filled with "
        "silence at Whisper's floor, as Whisper was trained (0 = the segment alone). The joint search's "
        "weights were chosen per window on the dev sets ("
        + ", ".join(f"{k}: {v} utterances" for k, v in dev.items())
        + "; realdev's references are machine transcripts); the synthesized test split took no part.",
        "",
    ]
    if result.get("note"):
        lines += [result["note"], ""]
    if result["measured"]:
        lines += ["| set | second pass | window (s) | pad | ctc_weight | length_bonus | WER (CER) | RTF, both passes |",
                  "|---|---|---|---|---|---|---|---|"]
        for row in result["measured"]:
            writer = row.get("second_pass_model") or "the model's own"
            lines.append(f"| {row['set']} ({row['utts']}) | {writer} | {row['window']:g} | {row.get('pad', 'floor')} | "
                         f"{row['ctc_weight']:g} | "
                         f"{row['length_bonus']:g} | {row['wer']:.1f} ({row['cer']:.1f}) | {row['rtf']:.3f} |")
        lines.append("")
    names = list(dev)
    lines += ["Dev WER of the whole grid (**bold**: the setting kept for the window):", "",
              "| window (s) | ctc_weight | length_bonus | " + " | ".join(f"{n} WER" for n in names) + " | mean |",
              "|---|---|---|" + "---|" * len(names) + "---|"]
    kept = {(s["window"], s["ctc_weight"], s["length_bonus"]) for s in result["settings"]}
    for row in result["tuning"]:
        mark = "**" if (row["window"], row["ctc_weight"], row["length_bonus"]) in kept else ""
        lines.append(f"| {row['window']:g} | {row['ctc_weight']:g} | {row['length_bonus']:g} | "
                     + " | ".join(f"{row[n]:.1f}" for n in names) + f" | {mark}{row['mean_wer']:.1f}{mark} |")
    return lines + [""]


def quantization_default_section(result: dict, name: str) -> list[str]:
    """The default model quantized, torch and ONNX Runtime, both passes (benchmarks/quantization_default.py)."""
    rows = result["rows"]
    sets = list(result["sets"])
    reference = rows["fp32 / torch"]
    first_pass, two_passes = list(reference["sets"][sets[0]])  # the benchmark's two modes, in its order
    quantized = ", ".join(f"`{n}` = `{q['model']}`" for n, q in result.get("quantized", {}).items()) or "none"
    lines = [
        f"## Quantization of the default model, torch and ONNX Runtime, both passes ({name})",
        "",
        f"Float model `{result['float_model']}`; quantized models: {quantized}. First pass: streaming "
        f"`ctc_greedy` at {result['chunk_ms']} ms chunks; two passes: the default mode `whisper_rescoring`. "
        "torch rows of quantized models run fake-quant (the reference for their numerics, not a fast path); "
        "onnxruntime rows of 8-bit models run int8 graphs (per channel, their codes exactly), of 4-bit models "
        "the int4 export (their own 4-bit codes as MatMulNBits in both encoder graphs, 4-bit decoder graphs). "
        "The float model's `int4` row: 4-bit decoder graphs beside the int8 encoder"
        + (f"; `int4_gptq`: the same with the decoder's layers rounded by GPTQ (blocks of {result['gptq'].get('block', 32)}), "
           "calibrated on "
           f"{result['gptq']['calib_limit']} utterances of `{result['gptq']['calib']}` (`edgeasr export --int4 --calib`)"
           + ("; `int4_gptq_all`: the encoder's layers 4-bit by GPTQ as well (`--calib-encoder`), both encoder graphs"
              if result["gptq"].get("encoder_row") else "")
           if result.get("gptq") else "") + ". MB: bytes on disk of what "
        "the row reads, first pass (encoder + CTC head) and both passes (+ Whisper's decoder); x: fp32 torch's "
        "bytes / the row's. Time: median over utterances of the row's compute / fp32 torch's (rows take turns). "
        f"{result['machine']} ({result['date']}).",
        *(["", f"Note: {result['note']}."] if result.get("note") else []),
        "",
        "| row | MB first pass | MB both passes | " + " | ".join(
            f"{s} ({result['sets'][s]['utts']}) first pass WER (CER) | {s} two passes WER (CER)" for s in sets)
        + f" | time first pass ({sets[0]}) | time two passes ({sets[0]}) | RTF two passes ({sets[0]}) |",
        "|---|---|---|" + "---|---|" * len(sets) + "---|---|---|",
    ]
    for row, entry in rows.items():
        size = entry["bytes"]
        cells = [f"{size['first_pass'] / 1e6:.2f} ({reference['bytes']['first_pass'] / size['first_pass']:.1f}x)",
                 f"{size['both_passes'] / 1e6:.1f} ({reference['bytes']['both_passes'] / size['both_passes']:.1f}x)"]
        for set_name in sets:
            for mode in (first_pass, two_passes):
                m = entry["sets"][set_name][mode]
                cells.append(f"{m['wer']:.1f} ({m['cer']:.1f})")
        speed = entry["sets"][sets[0]]
        cells += [f"{speed[first_pass]['time_vs_fp32_torch_median']:.2f}x",
                  f"{speed[two_passes]['time_vs_fp32_torch_median']:.2f}x",
                  f"{speed[two_passes]['rtf']:.4f}"]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    four_bit = [row for row in ("int4 / onnxruntime", "int4_gptq / onnxruntime", "int4_gptq_all / onnxruntime")
                if row in rows]
    four_bit += [f"{n} / onnxruntime" for n, q in result.get("quantized", {}).items()
                 if (q.get("quantization") or {}).get("weight_bits") == 4]
    for row in four_bit:
        entry = rows[row]
        smaller = reference["bytes"]["both_passes"] / entry["bytes"]["both_passes"]
        changes = []
        for set_name in sets:
            base = reference["sets"][set_name][two_passes]["wer"]
            got = entry["sets"][set_name][two_passes]["wer"]
            changes.append((set_name, 100 * (got - base) / base if base else 0.0))
        met = smaller >= 6 and all(change <= 2 for _, change in changes)
        lines.append(f"| {row}: >= 6x smaller than fp32 (both passes), WER within 2% relative of fp32 torch | "
                     f"{smaller:.2f}x; " + ", ".join(f"{n} {c:+.1f}%" for n, c in changes)
                     + f" | {'yes' if met else 'no'} |")
    return lines + [""]


def transducer_section(result: dict, name: str) -> list[str]:
    """The transducer head beside the CTC and Whisper modes on one encoder (benchmarks/transducer.py)."""
    params = result["parameters"]
    modes = list(next(iter(result["sets"].values()))["rows"])
    lines = [
        f"## Transducer head against CTC and the Whisper second pass ({name})",
        "",
        f"Model `{result['model']}` (encoder {params['encoder'] / 1e6:.2f} M parameters, CTC head "
        f"{params['ctc'] / 1e6:.2f} M, transducer head {params['transducer'] / 1e6:.2f} M, Whisper decoder "
        f"{params['whisper_decoder'] / 1e6:.2f} M)"
        + (f", on ONNX Runtime ({result['precision']} graphs)" if result.get("backend") == "onnx" else "")
        + f", streamed at chunk {result['chunk_size']} "
        f"({result['chunk_size'] * result['frame_ms']:.0f} ms), the modes taking turns on each utterance; "
        f"{result['machine']} ({result['date']}). Time: median over utterances of the mode's time / {modes[0]}'s. "
        f"`+lm`: with the LM `{result.get('lm')}` fused into the search"
        + (f" (the transducer's with a bonus of {result['transducer_lm_bonus']:g} per character, tuned on dev)"
           if result.get("transducer_lm_bonus") not in (None, 1.5) else "")
        + (f"; `+dr`: density-ratio fusion, the source LM `{result['source_lm']}` (the training transcripts) "
           f"subtracted with weight {result['source_lm_weight']:g}" if result.get("source_lm") else "")
        + ". `transducer_whisper`: the transducer's partials, then Whisper's decoder and the transducer decode each "
          "segment jointly. First partial: audio seconds streamed "
        "when the first non-empty partial appeared (lead-in silence included, the same for every mode); final: "
        "compute time from the end of the audio to the final text (medians over utterances).",
        "",
        "| set | mode | WER (CER) | RTF | time vs " + modes[0] + " | first partial (s) | final (ms) |",
        "|---|---|---|---|---|---|---|",
    ]
    for set_name, entry in result["sets"].items():
        for mode, row in entry["rows"].items():
            latency = (f"{row['first_partial_s_median']:.2f} | {row['final_ms_median']:.0f}"
                       if "final_ms_median" in row else "- | -")
            lines.append(f"| {set_name} ({entry['utts']} utts) | {mode} | {row['wer']:.1f} ({row['cer']:.1f}) | "
                         f"{row['rtf']:.4f} | {row['time_vs_first_mode_median']:.2f}x | {latency} |")
    return lines + [""]


def second_pass_frames_section(result: dict, name: str) -> list[str]:
    """Whisper's decoder over a full-context re-encoding against the first pass's chunk-causal
    frames (benchmarks/second_pass_frames.py)."""
    lines = [
        f"## What the Whisper second pass reads ({name})",
        "",
        f"Model `{result['model']}`, `whisper_rescoring`; the decoder reads each segment re-encoded with full context "
        f"(the shipped pass) or the chunk-causal frames at chunk {result['chunk_size']} "
        f"({result['chunk_size'] * result['frame_ms']:.0f} ms) that the first pass streamed, alone or with the 10 s "
        f"silence window encoded the same way; same joint search; {result['machine']} ({result['date']}).",
        "",
        "| set | full context | chunk-causal | chunk-causal, window |",
        "|---|---|---|---|",
    ]
    for set_name, entry in result["sets"].items():
        rows = entry["rows"]
        cells = [f"{rows[v]['wer']:.1f} ({rows[v]['cer']:.1f})" for v in ("full_context", "chunk_causal", "chunk_causal_window")]
        lines.append(f"| {set_name} ({entry['utts']} utts), WER (CER) | " + " | ".join(cells) + " |")
    return lines + [""]


def segmenter_section(result: dict, name: str) -> list[str]:
    """Segmenter-finalized segments against rule-based endpointing (benchmarks/segmenter.py)."""
    low, high = result["pauses_s"]
    lines = [
        f"## Segmenter against rule-based endpointing ({name})",
        "",
        f"Model `{result['model']}` (segmenter {result['segmenter_parameters'] / 1e3:.0f} k parameters on the "
        f"first pass's encoder frames), mode {result['mode']}, {result['chunk_ms']} ms blocks, 1 thread; streams of "
        f"{result['per_stream']} utterances with {low:g}-{high:g} s pauses; {result['machine']} ({result['date']}). "
        "Latency: from an utterance's end of speech to the moment the final covering it is out (audio streamed "
        "in real time plus the compute of the call), over utterances. `rules`: 0.8 s of CTC blanks; "
        "`segmenter@P`: closed when the segmenter's probability reaches P (rules as fallback).",
        "",
        "| set | endpointing | WER (CER) | latency median (ms) | p90 | segments / stream | RTF |",
        "|---|---|---|---|---|---|---|",
    ]
    for set_name, entry in result["sets"].items():
        for setting, row in entry["rows"].items():
            lines.append(f"| {set_name} ({entry['streams']} streams) | {setting} | {row['wer']:.1f} ({row['cer']:.1f}) | "
                         f"{row['latency_ms_median']:.0f} | {row['latency_ms_p90']:.0f} | "
                         f"{row['segments_per_stream']:.1f} | {row['rtf']:.4f} |")
    return lines + [""]


def confidence_section(result: dict, name: str) -> list[str]:
    fitted = result.get("calibration", {})
    lines = [
        f"## Confidence calibration ({name})",
        "",
        f"Model `{result['model']}`, decoded as users decode it, {result['date']}. Each recognized word is labelled right "
        "or wrong by aligning the transcript with the reference; ECE is the expected calibration error over 10 "
        "equal-width bins (words: confidence against right/wrong; utterances: the mean word confidence against the "
        "share of its words that are right). Raw: the geometric mean of a word's token posteriors. Calibrated: "
        f"`calibration.json`, fitted by `edgeasr calibrate` on {fitted.get('manifest', '?')} "
        f"({fitted.get('utterances', '?')} utterances, {fitted.get('words', '?')} words), none of the sets below. "
        f"Target: ECE <= {result['target_ece']:.2f}.",
        "",
        "| set | words | words right | mean confidence raw / calibrated | word ECE raw | calibrated | utterance ECE raw | calibrated |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for set_name, row in result["sets"].items():
        raw, cal = row["raw"], row["calibrated"]
        lines.append(f"| {set_name} | {raw['words']} | {100 * raw['word_accuracy']:.1f}% | "
                     f"{raw['mean_word_confidence']:.3f} / {cal['mean_word_confidence']:.3f} | {raw['word_ece']:.3f} | "
                     f"**{cal['word_ece']:.3f}** | {raw['utterance_ece']:.3f} | **{cal['utterance_ece']:.3f}** |")
    if result.get("plot"):
        lines += ["", f"![reliability diagram](benchmarks/results/{result['plot']})"]
    lines.append("")
    return lines


def encoder_skip_section(result: dict, name: str) -> list[str]:
    """How much of the pretrained streaming encoder can be skipped (benchmarks/encoder_skip.py)."""
    share = result["share_of_first_pass"]
    sets = list(result["sets"])
    lines = [
        f"## Skipping encoder modules of the default: the room for dynamic compute ({name})",
        "",
        f"Model `{result['model']}` ({result['layers']} Whisper layers), first pass at chunk {result['chunk_size']} "
        f"(chunk-masked, as it streams), greedy CTC, no LM; {result['machine']} ({result['date']}). Cost per encoder "
        f"frame: one layer's attention {share['attention'] * 100:.1f}% and feed-forward {share['ffn'] * 100:.1f}% of "
        f"the first pass's multiply-accumulates (stem {share['stem'] * 100:.1f}%, CTC head {share['ctc_head'] * 100:.1f}%; "
        f"attention over {result['macs_per_frame']['mean_keys']:g} keys on average).",
        "",
        "| skipped (every frame) | compute saved | " + " | ".join(
            f"{n} ({result['sets'][n]['utts']}) WER (CER)" for n in sets) + " |",
        "|---|---|" + "---|" * len(sets),
    ]
    rows = list(zip(*[result["sets"][n]["static"] for n in sets]))
    for row in rows:
        skip = row[0]["skip"]
        label = ", ".join(f"layer {i} {m}" for i, m in skip) or "nothing (the default)"
        saved = sum(share[m] for _, m in skip)
        cells = " | ".join(f"{r['wer']:.1f} ({r['cer']:.1f})" for r in row)
        lines.append(f"| {label} | {saved * 100:.0f}% | {cells} |")
    lines += ["", "Oracle per-frame skip of the top layer where the full model is sure of blank (an upper bound for "
              "a per-frame gate there):", "",
              "| blank posterior >= | " + " | ".join(f"{n}: frames skipped, compute saved, WER (CER)" for n in sets) + " |",
              "|---|" + "---|" * len(sets)]
    layer = share["top_layer_frame_skip"]  # a skipped frame still gives its keys and values
    for row in zip(*[result["sets"][n]["oracle_top_layer"] for n in sets]):
        cells = " | ".join(f"{r['frames_skipped'] * 100:.0f}%, {r['frames_skipped'] * layer * 100:.0f}%, "
                           f"{r['wer']:.1f} ({r['cer']:.1f})" for r in row)
        lines.append(f"| {row[0]['blank_threshold']:g} | {cells} |")
    lines.append("")
    return lines


def batching_section(result: dict, name: str) -> list[str]:
    """What batching concurrent streams can buy on the measuring machine (benchmarks/batching.py)."""
    session, batched = result["session"], result["batched"]
    labels = {"first_pass_encoder": "first-pass encoder chunk (+ CTC head)",
              "second_pass_encoder": f"second-pass re-encoding ({result['second_pass_window']:g} s window)",
              "second_pass_decoder": f"second-pass decoder step ({result['beams_per_stream']} beams a stream)"}
    batches = list(next(iter(batched.values())))
    lines = [
        f"## Batching concurrent streams: what it can buy ({name})",
        "",
        f"Model `{result['model']}` (torch), {result['machine']} ({result['date']}). Compute shares: "
        f"{result['utts']} utterances of `{result['manifest']}` ({session['audio_seconds']:g} s) streamed in "
        f"640 ms blocks, RTF {session['rtf']:.3f}. Batched calls: B streams' work as one call with streaming's shapes "
        f"(a chunk over a {result['cache_seconds']:g} s left cache; decoder step {result['tokens']} tokens in); "
        "per-stream time, median, the B values taking turns.",
        "",
        "| part | share of a session's compute | " + " | ".join(f"B={b} ms/stream (speed-up)" for b in batches) + " |",
        "|---|---|" + "---|" * len(batches),
    ]
    for part, label in labels.items():
        cells = " | ".join(f"{batched[part][b]['ms_per_stream']:.1f} ({batched[part][b]['speedup']:.2f}x)" for b in batches)
        lines.append(f"| {label} | {session['shares'][part] * 100:.0f}% | {cells} |")
    lines.append(f"| the rest (features, searches, endpointing) | {session['shares']['rest'] * 100:.0f}% |"
                 + " - |" * len(batches))
    best = result["best_case_sessions_ratio"]
    lines += ["", "Best case, sessions per core with batching / without (every call finds B streams ready): "
              + ", ".join(f"B={b}: {best[b]:.2f}x" for b in batches) + " (target: >= 2x).", ""]
    return lines


def capacity_section(result: dict, name: str) -> list[str]:
    def latency(row: dict) -> str:
        lat = row.get("latency_ms")
        return f"{lat['p50']:.0f} | {lat['p95']:.0f} | {lat['max']:.0f}" if lat else "- | - | -"

    lines = [
        f"## Streaming server capacity, overload and soak ({name})",
        "",
        f"`edgeasr serve` ({result['backend']}"
        f"{', ' + result['precision'] + ' graphs' if result.get('precision', 'float') != 'float' else ''}, "
        f"model `{result['model']}`, {result['workers']} workers) on "
        f"{result['machine']} ({result['date']}), clients in a second process on the same 2 cores. Each session "
        f"streams {result['seconds_per_session']:g} s of speech at real time in 100 ms messages and asks for a reply "
        "to each; latency is from sending a message to its reply (queueing included). A level is served at real "
        f"time when every session is served and p95 <= {result['p95_limit_ms']:.0f} ms.",
        "",
        "| phase | sessions | served | refused (reason given) | dropped | latency p50 (ms) | p95 | max | RTF |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    if result.get("note"):
        lines[3:3] = ["", f"Note: {result['note']}"]
    for row in result["levels"]:
        lines.append(f"| capacity | {row['sessions']} | {row['served']} | {row['refused']} | {row['closed'] + row['error']} | "
                     f"{latency(row)} | {row['rtf']:.3f} |")
    over = result["overload"]
    lines.append(f"| overload (0.5 s apart) | {over['sessions']} | {over['served']} | {over['refused']} | "
                 f"{over['closed'] + over['error']} | {latency(over)} | {over['rtf']:.3f} |")
    run = result.get("capacity_run")
    lines += ["", f"Capacity: **{result['capacity_sessions']} sessions** at real time on this machine"
                  + (f" (measured {run['date']}, load average {run['load_average'][0]:.1f} at the start)." if run else ".")]
    trickle = result.get("trickle")
    if trickle:
        held, after = trickle["newcomer_while_held"], trickle["newcomer_after"]
        lines += ["", f"Trickle: {trickle['tricklers']} clients sending 2 bytes every 20 s held {trickle['slots_held']} "
                      f"slots; a newcomer was {held['outcome']} after {held['first_reply_s'] * 1000:.0f} ms "
                      f"(\"{held.get('reason', '')}\"); the pace limit closed the tricklers after "
                      f"{trickle['tricklers_closed_after_s']:.0f} s, and the next newcomer was {after['outcome']} "
                      f"(first reply after {after['first_reply_s'] * 1000:.0f} ms)."]
    soak = result.get("soak")
    if soak:
        rss = soak["rss_mb"]
        lines += ["", f"Soak ({soak.get('date', result['date'])}{'; ' + result['soak_note'] if result.get('soak_note') else ''}): "
                      f"{soak['concurrent']} concurrent sessions back to back for {soak['minutes']:.0f} minutes "
                      f"({soak['sessions']} sessions: {soak['served']} served, {soak['refused']} refused, "
                      f"{soak['closed'] + soak['error']} dropped; latency p50 {soak['latency_ms']['p50']:.0f} ms, "
                      f"p95 {soak['latency_ms']['p95']:.0f} ms). Server memory: {rss['first']} MB at the start, "
                      f"{rss['after_first_third']} MB over the second third, {rss['last_third_median']} MB over the last "
                      f"third, at most {rss['max']} MB."]
    lines.append("")
    return lines


def long_file_section(result: dict, name: str) -> list[str]:
    lines = [
        f"## Long files through `edgeasr transcribe` ({name})",
        "",
        f"Model `{result['model']}`, shipped settings (streaming, cut into segments at endpoints, each rescored on its "
        f"own), one process per file at 1 thread, {result['machine']} ({result['date']}, load average "
        f"{result['load_average'][0]:.1f}). Files built from `{result['manifest']}` with 0.3-1.5 s pauses. Peak memory "
        "is the transcribing process's maximum resident set (model included).",
        "",
        "| minutes | wall (s) | RTF | peak RSS (MB) | segments | longest segment (chars / s) | WER |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(f"| {row['minutes']:.1f} | {row['wall_seconds']:.0f} | {row['rtf']:.3f} | {row['peak_rss_mb']} | "
                     f"{row['segments']} | {row['longest_segment_chars']} / {row['longest_segment_seconds']:.0f} | "
                     f"{row['wer']:.1f}% |")
    lines.append("")
    return lines
