"""The corpus card: what a synthesized corpus holds and how it was made (card.json + CARD.md).

A model trained on synthetic speech is only as trustworthy as our knowledge of that speech, so the
card records everything needed to judge or rebuild the corpus: hours per split, engine and voice,
which texts it reads and where they come from, the exact command and seed, engines that were
skipped and why, and the synthesis speed measured on this machine (over every run that built it).
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from edgeasr.data.corpus.texts import SOURCE_PACKAGES, Sentence, source_counts
from edgeasr.data.manifest import Utterance
from edgeasr.fileio import atomic_write_text

if TYPE_CHECKING:
    from edgeasr.data.corpus.builder import CorpusPlan, EngineSelection, SynthOptions

SPLITS = ("train", "dev", "test")


def _hours(seconds: float) -> float:
    return round(seconds / 3600.0, 4)


def _tally(utterances: Sequence[Utterance], key: str) -> dict[str, dict[str, float]]:
    table: dict[str, dict[str, float]] = defaultdict(lambda: {"utterances": 0, "seconds": 0.0})
    for utterance in utterances:
        row = table[str(utterance.extra.get(key))]
        row["utterances"] += 1
        row["seconds"] += utterance.duration
    return {name: {"utterances": int(row["utterances"]), "hours": _hours(row["seconds"])}
            for name, row in sorted(table.items())}


def read_speed_log(log_path: Path, corpus_ids: set[str]) -> dict[str, Any]:
    """Synthesis speed from the build log: per engine over the utterances in the corpus, and
    overall over every run that synthesized something."""
    per_utt: dict[str, dict[str, Any]] = {}
    runs: list[dict[str, Any]] = []
    if log_path.exists():
        for line in log_path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a killed run
            if "run" in entry:
                runs.append(entry)
            elif entry.get("id") in corpus_ids:
                per_utt[entry["id"]] = entry
    cores = os.cpu_count() or 1
    engines: dict[str, dict[str, float]] = defaultdict(lambda: {"audio_s": 0.0, "synth_s": 0.0, "total_s": 0.0})
    for entry in per_utt.values():
        row = engines[entry["engine"]]
        row["audio_s"] += entry.get("duration", 0.0)
        row["synth_s"] += entry.get("synth_s", 0.0)
        row["total_s"] += entry.get("total_s", 0.0)
    per_engine = {}
    for name, row in sorted(engines.items()):
        if row["synth_s"] <= 0 or row["total_s"] <= 0:
            continue
        per_engine[name] = {
            "measured_on_hours": _hours(row["audio_s"]),
            "engine_x_real_time": round(row["audio_s"] / row["synth_s"], 1),
            "x_real_time_one_core": round(row["audio_s"] / row["total_s"], 1),
            # Every core working on this engine alone.
            "audio_hours_per_minute_all_cores": round(row["audio_s"] / row["total_s"] * cores / 60.0, 3),
        }
    working = [run for run in runs if run.get("new_utterances")]
    wall = sum(run.get("wall_s", 0.0) for run in working)
    audio = sum(run.get("new_audio_s", 0.0) for run in working)
    return {
        "cores": cores,
        "audio_hours_per_wall_minute": round(audio / 3600.0 / (wall / 60.0), 4) if wall > 0 else None,
        "synthesized_hours": _hours(audio),
        "wall_minutes": round(wall / 60.0, 2),
        "runs": len(runs),
        "per_engine": per_engine,
    }


def make_card(
    *,
    options: "SynthOptions",
    plan: "CorpusPlan",
    selection: "EngineSelection",
    manifests: dict[str, list[Utterance]],
    sentences: Sequence[Sentence],
    log_path: Path,
    command: str | None,
    failures: dict[str, list[str]],
    unused_wavs: int,
) -> dict[str, Any]:
    """Everything worth knowing about the corpus, as a JSON-able dict."""
    splits = {}
    for split in SPLITS:
        utterances = manifests[split]
        splits[split] = {
            "hours": _hours(sum(u.duration for u in utterances)),
            "target_hours": round(plan.split_hours[split], 4),
            "utterances": len(utterances),
            "speakers": len({u.speaker for u in utterances}),
            "sentences_used": len({u.text for u in utterances}),
            "sentence_pool": len(plan.texts[split]),
            "engines": _tally(utterances, "engine"),
            "voices": _tally(utterances, "voice"),
            "held_voices": {name: len(voices) for name, voices in plan.voices[split].items()},
        }
    used = [u for split in SPLITS for u in manifests[split]]
    used_by_kind: dict[str, int] = defaultdict(int)
    seen_texts: set[str] = set()
    for utterance in used:
        if utterance.text not in seen_texts:
            seen_texts.add(utterance.text)
            used_by_kind[str(utterance.extra.get("source", "")).split(":", 1)[0]] += 1
    available = source_counts(sentences)
    sources = {
        kind: {"package": SOURCE_PACKAGES.get(kind, "?"), "available": available.get(kind, 0),
               "used": used_by_kind.get(kind, 0)}
        for kind in available
    }
    engines = {}
    for name, engine in selection.engines.items():
        voices = selection.voices[name]
        engines[name] = {
            "weight": plan.weights[name],
            "voices": len(voices),
            "speakers": len({str(v.params.get("speaker") or v.id) for v in voices}),
            "voices_by_split": {split: len(plan.voices[split].get(name, [])) for split in SPLITS},
            "supports": sorted(engine.supports),
            "failures": len(failures.get(name, [])),
            "failure_examples": failures.get(name, [])[:3],
        }
    corpus_ids = {str(u.extra.get("id")) for u in used}
    return {
        "format": "edgeasr-corpus-card/1",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "command": command,
        "seed": options.seed,
        "options": {
            "hours": options.hours,
            "engines": list(selection.engines),
            "engine_weights": plan.weights,
            "heldout_engines": list(options.heldout_engines),
            "augment": options.augment,
            "sample_rate": options.sample_rate,
            "rate_range": list(options.rate_range),
            "pitch_range": list(options.pitch_range),
            "heldout_voice_frac": options.heldout_voice_frac,
            "words": [options.min_words, options.max_words],
        },
        "machine": {"cores": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "hours": _hours(sum(u.duration for u in used)),
        "utterances": len(used),
        "splits": splits,
        "engines": engines,
        "skipped_engines": dict(selection.skipped),
        "text_sources": sources,
        "sentences_available": len(sentences),
        "speed": read_speed_log(log_path, corpus_ids),
        "unused_wavs": unused_wavs,
    }


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def card_markdown(card: dict[str, Any]) -> str:
    """CARD.md: the card for people."""
    speed = card["speed"]
    lines = [
        "# Synthesized speech corpus",
        "",
        f"{card['hours']:.3f} hours in {card['utterances']} utterances, 16-bit mono WAV at "
        f"{card['options']['sample_rate']} Hz. Built with:",
        "",
        "```",
        card.get("command") or "(build_corpus called from Python)",
        "```",
        "",
        f"Seed {card['seed']}; augmentation {'on' if card['options']['augment'] else 'off'}; "
        f"speaking rate {card['options']['rate_range']}, pitch {card['options']['pitch_range']}. "
        "Train, dev and test share no speaker (a person several engines speak for counts once) "
        "and no sentence.",
        "",
        "## Splits",
        "",
    ]
    lines += _table(
        ["split", "hours", "target h", "utterances", "speakers", "sentences used", "sentence pool"],
        [[split, f"{row['hours']:.3f}", f"{row['target_hours']:.3f}", row["utterances"], row["speakers"],
          row["sentences_used"], row["sentence_pool"]] for split, row in card["splits"].items()],
    )
    lines += ["", "## Engines", ""]
    rows = []
    for name, row in card["engines"].items():
        per = [card["splits"][split]["engines"].get(name, {"hours": 0.0}) for split in SPLITS]
        measured = speed["per_engine"].get(name, {})
        rows.append([name, row["weight"], row["voices"], row["speakers"],
                     "/".join(str(row["voices_by_split"][s]) for s in SPLITS),
                     " / ".join(f"{p['hours']:.3f}" for p in per),
                     measured.get("x_real_time_one_core", "-"), row["failures"]])
    lines += _table(["engine", "weight", "voices", "speakers", "voices train/dev/test",
                     "hours train / dev / test", "x real time (1 core)", "failures"], rows)
    if card["skipped_engines"]:
        lines += ["", "Skipped engines:", ""]
        lines += [f"- **{name}**: {reason}" for name, reason in card["skipped_engines"].items()]
    lines += ["", "## Synthesis speed", ""]
    if speed["audio_hours_per_wall_minute"] is not None:
        lines.append(
            f"{speed['audio_hours_per_wall_minute']:.4f} hours of audio per minute of wall time overall "
            f"({speed['synthesized_hours']:.3f} h synthesized in {speed['wall_minutes']:.2f} min over "
            f"{speed['runs']} run(s)) on {speed['cores']} cores."
        )
    else:
        lines.append("No audio was synthesized by the recorded runs.")
    if speed["per_engine"]:
        lines += [""] + _table(
            ["engine", "engine x real time", "with processing", "audio h per minute (all cores)"],
            [[name, row["engine_x_real_time"], row["x_real_time_one_core"],
              row["audio_hours_per_minute_all_cores"]] for name, row in speed["per_engine"].items()],
        )
    lines += ["", "## Texts", ""]
    lines += _table(
        ["source", "package", "sentences available", "sentences used"],
        [[kind, row["package"], row["available"], row["used"]] for kind, row in card["text_sources"].items()],
    )
    lines += ["", "## Voices", ""]
    for split in SPLITS:
        voices = card["splits"][split]["voices"]
        lines.append(f"**{split}** ({len(voices)} voices): " + ", ".join(
            f"{name} ({row['utterances']})" for name, row in voices.items()))
        lines.append("")
    if card.get("unused_wavs"):
        lines.append(f"{card['unused_wavs']} WAV file(s) in wav/ are not in any manifest (left by a larger "
                     "or interrupted build; a rebuild with more hours reuses them).")
    lines.append(f"Machine: {card['machine']['cores']} cores, {card['machine']['platform']}, "
                 f"Python {card['machine']['python']}. Created {card['created']}.")
    return "\n".join(lines) + "\n"


def write_card(out_dir: Path, card: dict[str, Any]) -> None:
    """card.json and CARD.md, each written atomically."""
    out_dir = Path(out_dir)
    for name, text in (("card.json", json.dumps(card, indent=2) + "\n"), ("CARD.md", card_markdown(card))):
        atomic_write_text(out_dir / name, text)
