"""benchmarks/long_stream.py: per-minute rows of a long stream (both variants) and the report section."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from benchmark_helpers import load_benchmark
from edgeasr.data.manifest import Utterance, write_manifest
from edgeasr.evaluate.report import write_report

ROOT = Path(__file__).resolve().parents[1]
CLIPS = ("flite-awb", "kokoro-female", "kokoro-male")


def _benchmark_module():
    return load_benchmark("long_stream")




def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def test_stream_building_and_word_assignment(tmp_path):
    module = _benchmark_module()
    utts = [Utterance(audio=f"../samples/{clip}.wav", text=(ROOT / "samples" / f"{clip}.txt").read_text().strip(),
                      duration=5.0) for clip in CLIPS]
    manifest = tmp_path / "lists" / "clips.jsonl"
    manifest.parent.mkdir()
    shutil.copytree(ROOT / "samples", tmp_path / "samples")  # relative paths resolve against the manifest's folder
    write_manifest(manifest, utts)
    source = module.UtteranceAudio(manifest)

    samples, spans = module.build_stream(source, 30.0, True, np.random.default_rng(0), 1e-3)
    assert len(samples) >= 30 * 16000 and spans[-1]["start"] < 30.0 <= spans[-1]["end"]
    assert [s["text"] for s in spans[:4]] == [u.text for u in utts] + [utts[0].text]  # in order, starting over
    gaps = [b["start"] - a["end"] for a, b in zip(spans, spans[1:])]
    assert all(0.3 - 1e-3 <= g <= 1.5 + 1e-3 for g in gaps)
    back_to_back, tight = module.build_stream(source, 30.0, False, np.random.default_rng(0), 1e-3)
    assert all(abs(b["start"] - a["end"]) < 1e-9 for a, b in zip(tight, tight[1:]))
    assert len(back_to_back) == round(tight[-1]["end"] * 16000)

    class W:
        def __init__(self, word, start):
            self.word, self.start = word, start

    spans = [{"start": 0.0, "end": 2.0}, {"start": 3.0, "end": 5.0}]
    words = [W("a", 0.1), W("b", 2.4), W("c", 2.6), W("d", 4.9)]
    assert module.words_by_utterance(words, spans) == [["a", "b"], ["c", "d"]]
    assert module.minute_of(59.9, 5) == 0 and module.minute_of(60.0, 5) == 1 and module.minute_of(310.0, 5) == 4


def test_long_stream_rows_and_report(whisper_imported, tmp_path):
    utts = [Utterance(audio=str(ROOT / "samples" / f"{clip}.wav"),
                      text=(ROOT / "samples" / f"{clip}.txt").read_text().strip(), duration=5.0) for clip in CLIPS]
    manifest = tmp_path / "clips.jsonl"
    write_manifest(manifest, utts)
    results = tmp_path / "results"
    out, report, hyps = results / "long_stream.json", tmp_path / "BENCHMARKS.md", tmp_path / "hyps.jsonl"
    status = _benchmark_module().main([
        "--model", str(whisper_imported), "--manifest", str(manifest), "--minutes", "1", "--mode", "ctc_greedy",
        "--out", str(out), "--report", str(report), "--hyps", str(hyps)])
    assert status == 0
    result = json.loads(out.read_text())
    assert result["benchmark"] == "long_stream" and result["threads"] == 1 and result["segmented"]
    assert result["mode_used"] == "ctc_greedy" and result["block_ms"] == 640.0 and result["chunk_size"] == 32
    assert result["machine"] and result["date"] and result["command"].startswith("python benchmarks/long_stream.py")
    bound = result["state_bytes_bound"]
    assert bound and bound < 20e6  # one forced-cut segment of key/value caches, not the whole stream
    assert set(result["variants"]) == {"pauses", "no_pauses", "repeated"}
    for name, row in result["variants"].items():
        # the repeated minute holds the whole utterances that end within 60 s, so it may be shorter
        low = 45.0 if name == "repeated" else 60.0
        assert low <= row["audio_seconds"] < 60.0 + 8.0 and row["utts"] >= 10 and row["words"] > 0
        assert _finite(row["wer"]) and row["rtf"] > 0 and row["blocks"] > 0
        assert 0 < row["state_bytes_max"] <= bound
        # a minute of audio crosses the forced cut (20 s) at least twice, plus the segment finish() closes
        assert row["segments"] >= 3
        assert len(row["minutes"]) == 1
        minute = row["minutes"][0]
        assert minute["minute"] == 1 and minute["utts"] == row["utts"] and minute["words"] == row["words"]
        for key in ("wer", "rtf", "state_bytes", "rss_mb", "rss_mb_end", "segments", "substitutions",
                    "deletions", "insertions", "hyp_words"):
            assert _finite(minute[key]), (name, key, minute[key])
        assert all(_finite(minute["block_ms"][k]) and minute["block_ms"][k] > 0 for k in ("median", "p90", "max"))
        assert 0 < minute["state_bytes"] <= bound and minute["rss_mb"] > 0 and minute["rtf"] > 0
    no_pauses = result["variants"]["no_pauses"]
    assert no_pauses["speech_seconds"] == pytest.approx(no_pauses["audio_seconds"], abs=0.01)
    lines = [json.loads(line) for line in hyps.read_text().splitlines()]
    assert [(h["variant"], h["minute"]) for h in lines] == [("pauses", 1), ("no_pauses", 1), ("repeated", 1)]

    bench = report.read_text()
    assert "## Long streams (long_stream.json)" in bench
    assert "| minute | utts | WER % | RTF | ms / block (max) | encoder state MB | RSS MB | segments |" in bench
    assert "### `pauses`" in bench and "### `no_pauses`" in bench and "\n| 1 | " in bench
    # next to other results, the long-stream section comes first (after the default model's, when present)
    other = ROOT / "benchmarks" / "results" / "load_test.json"
    if other.is_file():
        shutil.copy(other, results / other.name)
        text = write_report(results, tmp_path / "again.md").read_text()
        assert text.index("## Long streams") < text.index("## Streaming server load test")
