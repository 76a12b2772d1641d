"""benchmarks/load_test.py: concurrent streams against a real `edgeasr serve` process."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_load_test_measures_latency_rtf_sessions_and_memory(tiny_model, tiny_corpus, tmp_path):
    out = tmp_path / "results" / "load_test.json"
    report = tmp_path / "BENCHMARKS.md"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "load_test.py"), "--model", str(tiny_model),
                    "--manifest", str(tiny_corpus / "test.jsonl"), "--sessions", "1,3", "--seconds", "2",
                    "--speed", "4", "--out", str(out), "--report", str(report)], check=True, capture_output=True)
    result = json.loads(out.read_text())
    levels = {row["sessions"]: row for row in result["levels"]}
    assert set(levels) == {1, 3}
    assert levels[3]["chunks"] == 3 * levels[1]["chunks"] == 3 * 20  # 2 s in 100 ms messages, one reply each
    assert levels[3]["sessions_held_max"] >= 2
    for row in levels.values():
        assert 0 < row["latency_ms"]["p50"] <= row["latency_ms"]["p95"] <= row["latency_ms"]["max"]
        assert 0 < row["rtf"] < 5 and row["audio_seconds"] == row["sessions"] * 2
    assert result["memory_kb"]["end"]["rss_kb"] > 0
    assert "## Streaming server load test" in report.read_text()
