"""benchmarks/second_pass_window.py end to end on the default model and the sample clips: the
dev grid, the kept settings, the measured rows (with Whisper base writing) and the report section."""

import json
import subprocess
import sys
from pathlib import Path

from edgeasr.evaluate.report import second_pass_window_section

ROOT = Path(__file__).resolve().parents[1]


def test_the_window_benchmark_tunes_on_dev_and_measures(tmp_path):
    out = tmp_path / "results" / "second_pass_window.json"
    clips = f"clips={ROOT / 'samples' / 'samples.jsonl'}"
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "second_pass_window.py"), "--windows", "0,30",
         "--ctc-weights", "0.1,0.2", "--length-bonuses", "0.3", "--dev", clips, "--manifest", clips,
         "--max-dev-utts", "2", "--second-pass-model", "whisper:base",
         "--out", str(out), "--report", str(tmp_path / "BENCHMARKS.md")],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "EDGEASR_CACHE": str(tmp_path / "cache")})
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(out.read_text())
    assert len(result["tuning"]) == 4 and result["dev"] == {"clips": 2}
    for setting in result["settings"][:2]:  # each window keeps its best dev row
        rows = [r for r in result["tuning"] if r["window"] == setting["window"]]
        best = min(r["mean_wer"] for r in rows)
        assert any(r["mean_wer"] == best and r["ctc_weight"] == setting["ctc_weight"] for r in rows)
    assert result["settings"][2] == {**result["settings"][1], "second_pass_model": "whisper:base"}
    measured = result["measured"]
    assert [(r["window"], r.get("second_pass_model")) for r in measured] == [(0, None), (30, None), (30, "whisper:base")]
    assert all(r["utts"] == 3 and 0 < r["rtf"] < 5 and r["wer"] <= 20 for r in measured)  # clean clips
    section = "\n".join(second_pass_window_section(result, "second_pass_window.json"))
    assert "| clips (3) | whisper:base | 30 |" in section and "| clips (3) | the model's own | 0 |" in section
    assert "## Whisper second pass: the segment alone" in (tmp_path / "BENCHMARKS.md").read_text()
