"""The corpus builder: a real (small) synthesis run, resumability, determinism, splits."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edgeasr.audio.io import audio_duration
from edgeasr.data.corpus import base
from edgeasr.data.corpus.base import Voice
from edgeasr.data.corpus.builder import (
    CorpusPlan,
    SynthOptions,
    assign_voice_splits,
    build_corpus,
    parse_weights,
    render,
    select_engines,
)
from edgeasr.data.corpus.engines import FliteEngine
from edgeasr.data.manifest import read_manifest
from edgeasr.errors import DataError, EngineError

REPO = Path(__file__).resolve().parents[1]
SPLITS = ("train", "dev", "test")
OPTIONS = dict(hours=0.01, engines=["espeak", "flite"], seed=3)


def _options(out_dir: Path, **changes) -> SynthOptions:
    return SynthOptions(out_dir=out_dir, **{**OPTIONS, "jobs": 2, **changes})


def _longest_zero_run(samples: np.ndarray) -> int:
    zero = np.concatenate([[0], (samples == 0).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(zero))
    return int((edges[1::2] - edges[::2]).max()) if edges.size else 0


def _manifest_bytes(corpus: Path) -> dict[str, bytes]:
    return {split: (corpus / f"{split}.jsonl").read_bytes() for split in SPLITS}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("corpus")
    report = build_corpus(_options(out), command="pytest", progress=False)
    return out, report


def test_build_writes_valid_manifests_and_audio(corpus):
    out, report = corpus
    assert report.new_utterances > 0 and report.reused_utterances == 0
    card = json.loads((out / "card.json").read_text())
    for split in SPLITS:
        utterances = read_manifest(out / f"{split}.jsonl")
        assert utterances, f"{split} is empty"
        line = json.loads((out / f"{split}.jsonl").read_text().splitlines()[0])
        assert not os.path.isabs(line["audio"]), "audio paths must be relative to the corpus dir"
        hours = sum(u.duration for u in utterances) / 3600
        assert hours >= card["splits"][split]["target_hours"], "each split reaches its target"
        for u in utterances:
            info = sf.info(u.audio)
            assert info.samplerate == 16000 and info.channels == 1 and info.subtype == "PCM_16"
            assert abs(audio_duration(u.audio) - u.duration) < 1e-3
            assert u.text and u.speaker == u.extra["voice"]
            assert u.extra["engine"] in ("espeak", "flite")
            for key in ("rate", "pitch", "snr", "noise", "reverb", "band", "source", "prompt", "floor_db"):
                assert key in u.extra
            assert 0.8 <= u.extra["rate"] <= 1.25
        samples, _ = sf.read(utterances[0].audio, dtype="int16")
        assert _longest_zero_run(samples) < 100, "TTS digital silence must be covered by a noise floor"
        assert np.abs(samples).max() > 1000, "speech must be audible"


def test_splits_share_no_voice_and_no_text(corpus):
    out, _ = corpus
    manifests = {split: read_manifest(out / f"{split}.jsonl") for split in SPLITS}
    voices = {split: {u.speaker for u in manifests[split]} for split in SPLITS}
    texts = {split: {u.text for u in manifests[split]} for split in SPLITS}
    # flite's kal and kal16 are one person: compare persons, not just voice ids.
    persons = {split: {u.speaker.replace("kal16", "kal") for u in manifests[split]} for split in SPLITS}
    for held in ("dev", "test"):
        assert not voices["train"] & voices[held]
        assert not persons["train"] & persons[held]
        assert not texts["train"] & texts[held]
    assert not texts["dev"] & texts["test"]
    assert {u.extra["engine"] for u in manifests["train"]} == {"espeak", "flite"}


def test_card_records_counts_sources_and_speed(corpus):
    out, _ = corpus
    card = json.loads((out / "card.json").read_text())
    assert card["command"] == "pytest" and card["seed"] == 3
    assert card["machine"]["cores"] == os.cpu_count()
    assert card["utterances"] == sum(card["splits"][s]["utterances"] for s in SPLITS)
    for name in ("espeak", "flite"):
        measured = card["speed"]["per_engine"][name]
        assert measured["x_real_time_one_core"] > 1.0
        assert card["engines"][name]["voices"] > 0
    assert card["speed"]["audio_hours_per_wall_minute"] > 0
    assert sum(row["used"] for row in card["text_sources"].values()) == len(
        {json.loads(line)["text"] for s in SPLITS for line in (out / f"{s}.jsonl").read_text().splitlines()}
    )
    markdown = (out / "CARD.md").read_text()
    assert "## Synthesis speed" in markdown and "espeak" in markdown and "pytest" in markdown


def test_rerun_skips_everything_and_changes_nothing(corpus):
    out, _ = corpus
    before = _manifest_bytes(out)
    report = build_corpus(_options(out), command="pytest", progress=False)
    assert report.new_utterances == 0 and report.reused_utterances > 0
    assert _manifest_bytes(out) == before


def test_partial_corpus_resumes_to_identical_files(corpus, tmp_path):
    out, _ = corpus
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    wavs = sorted((copy / "wav").rglob("*.wav"))
    removed = {p.relative_to(copy): p.read_bytes() for p in wavs[::2]}
    for path in removed:
        (copy / path).unlink()
    for split in SPLITS:
        (copy / f"{split}.jsonl").unlink()
    leftover = copy / "wav" / "train" / ".espeak-train-000000-0000000000.wav.abc123.tmp"
    leftover.write_bytes(b"RIFF half a file")
    report = build_corpus(_options(copy, jobs=1), command="pytest", progress=False)
    assert report.new_utterances == len(removed)
    assert not leftover.exists(), "temp files of a killed run are cleaned up"
    assert _manifest_bytes(copy) == _manifest_bytes(out)
    for path, data in removed.items():
        assert (copy / path).read_bytes() == data, f"{path} resynthesized differently"


def test_held_out_splits_alone_are_those_of_the_whole_build(corpus, tmp_path):
    """--splits dev,test synthesizes only the held-out sets: the same utterances, byte for byte,
    as the whole corpus has, and no training audio."""
    out, _ = corpus
    held_out = tmp_path / "heldout"
    report = build_corpus(_options(held_out, splits=("dev", "test")), command="pytest", progress=False)
    assert report.new_utterances > 0
    assert not list((held_out / "wav" / "train").glob("*.wav")) and not (held_out / "train.jsonl").exists()
    for split in ("dev", "test"):
        assert (held_out / f"{split}.jsonl").read_bytes() == (out / f"{split}.jsonl").read_bytes()
        for wav in (out / "wav" / split).glob("*.wav"):
            assert (held_out / "wav" / split / wav.name).read_bytes() == wav.read_bytes()
    with pytest.raises(DataError, match="--splits"):
        _options(tmp_path, splits=("train", "eval"))


def test_killed_run_resumes_to_the_same_corpus(corpus, tmp_path):
    out, _ = corpus
    target = tmp_path / "killed"
    script = (
        "from pathlib import Path\n"
        "from edgeasr.data.corpus.builder import SynthOptions, build_corpus\n"
        f"options = SynthOptions(out_dir=Path({str(target)!r}), jobs=1, **{OPTIONS!r})\n"
        "build_corpus(options, progress=False)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            if any((target / "wav").rglob("*.wav")):
                break
            time.sleep(0.005)
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert any((target / "wav").rglob("*.wav")), "the run produced nothing before it was killed"
    assert not (target / "train.jsonl").exists(), "the run finished before it could be killed"
    report = build_corpus(_options(target), command="pytest", progress=False)
    assert report.reused_utterances > 0
    assert _manifest_bytes(target) == _manifest_bytes(out)


def test_job_plan_is_a_pure_function_of_the_seed(tmp_path):
    selection = select_engines(_options(tmp_path))
    from edgeasr.data.corpus.texts import load_sentences

    sentences = load_sentences()

    def plan(seed: int) -> CorpusPlan:
        return CorpusPlan(_options(tmp_path, seed=seed), selection.engines, selection.voices, sentences)

    first, second, other = plan(5), plan(5), plan(6)
    for split, engine in first.streams():
        jobs = first.jobs(split, engine, 40)
        assert jobs == second.jobs(split, engine, 40)
        assert [j.utt_id for j in jobs] != [j.utt_id for j in other.jobs(split, engine, 40)]
        assert len({j.utt_id for j in jobs}) == 40
        assert {j.voice.id for j in jobs} <= {v.id for v in first.voices[split][engine]}
        assert {j.normalized for j in jobs} <= {s.normalized for s in first.texts[split]}
    # Hours are shared by engine weight: flite 1.5 to espeak 1.
    assert first.targets[("train", "flite")] / first.targets[("train", "espeak")] == pytest.approx(1.5)


def _voices(engine: str, speakers: list[str]) -> list[Voice]:
    return [Voice(engine, f"{engine}:{s}", params={"speaker": s}) for s in speakers]


def test_voice_assignment_keeps_people_together_and_respects_quotas():
    voices = {
        "big": _voices("big", [f"v{i:02d}" for i in range(30)]),
        "a": _voices("a", ["kal", "slt", "awb", "rms"]),
        "b": _voices("b", ["kal", "slt", "ked"]),
        "pair": _voices("pair", ["p1", "p2"]),
        "solo": _voices("solo", ["only"]),
        "unseen": _voices("unseen", ["u1", "u2", "u3"]),
    }
    labels = assign_voice_splits(voices, heldout_engines=["unseen"], heldout_frac=0.1)
    assert sum(labels[f"v{i:02d}"] == "dev" for i in range(30)) == 3
    assert sum(labels[f"v{i:02d}"] == "test" for i in range(30)) == 3
    assert labels["only"] == "train"
    assert sorted([labels["p1"], labels["p2"]]) == ["devtest", "train"]
    assert {labels["u1"], labels["u2"], labels["u3"]} <= {"dev", "test"}
    # Shared people stay in training; each engine keeps at least one training speaker.
    assert labels["kal"] == labels["slt"] == "train"
    for name in ("a", "b"):
        held = [labels[v.params["speaker"]] for v in voices[name]]
        assert "train" in held and any(label in ("dev", "devtest") for label in held)
        assert any(label in ("test", "devtest") for label in held)
    assert labels == assign_voice_splits(voices, heldout_engines=["unseen"], heldout_frac=0.1)


def test_render_trims_pads_and_adds_a_noise_floor(tmp_path):
    selection = select_engines(_options(tmp_path))
    from edgeasr.data.corpus.texts import load_sentences

    plan = CorpusPlan(_options(tmp_path, augment=False), selection.engines, selection.voices, load_sentences())
    job = plan.job("train", "espeak", 0)
    rate = 22050
    speech = np.sin(2 * np.pi * 200 * np.arange(rate) / rate).astype(np.float32) * 0.5
    raw = np.concatenate([np.zeros(rate), speech, np.zeros(rate // 2)]).astype(np.float32)
    audio = render(job, raw, rate, 16000)
    expected = job.lead_s + 1.0 + job.trail_s
    assert abs(len(audio) / 16000 - expected) < 0.05
    lead = audio[: int(job.lead_s * 16000) - 400]
    assert 0 < np.sqrt(np.mean(lead**2)) < 10 ** ((job.floor_db + 3) / 20)
    assert np.max(np.abs(audio)) == pytest.approx(10 ** (job.peak_db / 20), rel=0.05)


def test_missing_engine_fails_clearly_unless_skipped(tmp_path, monkeypatch):
    monkeypatch.setitem(base._REGISTRY, "brokentts", lambda: FliteEngine(binary="/nonexistent/flite"))
    with pytest.raises(EngineError, match=r"brokentts.*apt-get install flite.*--skip-missing"):
        build_corpus(_options(tmp_path, engines=["espeak", "brokentts"]), progress=False)
    with pytest.raises(EngineError, match="unknown TTS engine"):
        build_corpus(_options(tmp_path, engines=["espeak", "nosuchtts"]), progress=False)
    report = build_corpus(_options(tmp_path, engines=["espeak", "brokentts"], hours=0.003, skip_missing=True),
                          progress=False)
    assert "brokentts" in report.card["skipped_engines"]
    assert "brokentts" in (tmp_path / "CARD.md").read_text()
    assert set(report.card["engines"]) == {"espeak"}


def test_bad_options_are_user_errors(tmp_path):
    with pytest.raises(DataError, match="hours"):
        SynthOptions(hours=0, out_dir=tmp_path)
    with pytest.raises(DataError, match="NAME=NUMBER"):
        parse_weights("kokoro:3")
    with pytest.raises(DataError, match="nothing"):
        SynthOptions(hours=0.1, out_dir=tmp_path, dev_hours=0.05, test_hours=0.05).split_hours()


def _corpus_cli(argv: list[str]) -> int:
    """Run ``edgeasr corpus ...`` through the command module's own parser."""
    import argparse

    from edgeasr.commands import corpus as corpus_command

    parser = argparse.ArgumentParser(prog="edgeasr")
    corpus_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_commands(tmp_path, capsys):
    for action in ("synth", "engines", "texts"):
        with pytest.raises(SystemExit) as exit_info:
            _corpus_cli(["corpus", action, "--help"])
        assert exit_info.value.code == 0
    assert "--heldout-engines" in capsys.readouterr().out

    assert _corpus_cli(["corpus", "engines", "--json"]) == 0
    rows = {row["engine"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["espeak"]["available"] and rows["espeak"]["voices"] > 100

    out = tmp_path / "cli-corpus"
    assert _corpus_cli(["corpus", "synth", "--hours", "0.003", "--out", str(out), "--engines", "espeak",
                        "--jobs", "1", "--quiet", "--no-augment"]) == 0
    printed = capsys.readouterr().out
    assert "train" in printed and "synthesized" in printed
    lines = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert lines and all(line["noise"] is None and line["reverb"] is None for line in lines)

    texts_file = tmp_path / "texts.jsonl"
    assert _corpus_cli(["corpus", "texts", "--out", str(texts_file), "--stats", "--progress"]) == 0
    captured = capsys.readouterr()
    assert "wordnet" in captured.out
    assert "corpus texts: reading fortunes (1/4 sources)" in captured.err
    assert "corpus texts: reading license (4/4 sources)" in captured.err
    rows = [json.loads(line) for line in texts_file.read_text().splitlines()]
    assert len(rows) > 20000 and {row["split"] for row in rows} == {"train", "dev", "test"}
