"""benchmarks/batching.py end to end on the default model and the sample clips: compute shares that
add up, batched calls timed per stream, the best-case ratio derived from them, and its report
section."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgeasr.evaluate.report import batching_section

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from batching import PARTS, best_case  # noqa: E402


def test_the_batching_benchmark_measures_shares_and_batched_calls(tmp_path):
    out = tmp_path / "results" / "batching.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "batching.py"), "--utts", "2", "--repeats", "2",
                          "--batches", "1,2", "--manifest", str(ROOT / "samples" / "samples.jsonl"),
                          "--out", str(out), "--report", str(tmp_path / "BENCHMARKS.md")],
                         capture_output=True, text=True, timeout=900, cwd=tmp_path,
                         env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(out.read_text())
    shares = result["session"]["shares"]
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-3)
    assert all(shares[part] > 0 for part in PARTS)  # the default streams both passes
    for part in PARTS:
        assert set(result["batched"][part]) == {"1", "2"}
        assert result["batched"][part]["1"]["speedup"] == 1.0
        assert result["batched"][part]["2"]["ms_per_stream"] > 0
    assert result["model"] == "models/default"  # named as the repository names it
    section = "\n".join(batching_section(result, "batching.json"))
    assert "| second-pass re-encoding (10 s window) |" in section and "B=2:" in section
    assert "## Batching concurrent streams" in (tmp_path / "BENCHMARKS.md").read_text()


def test_the_best_case_is_bounded_by_the_part_that_does_not_batch():
    shares = {"first_pass_encoder": 0.2, "second_pass_encoder": 0.4, "second_pass_decoder": 0.3, "rest": 0.1}
    speedups = {part: {"1": {"speedup": 1.0}, "8": {"speedup": 1000.0}} for part in PARTS}
    speedups["second_pass_encoder"]["8"]["speedup"] = 1.0
    ratio = best_case(shares, speedups, [1, 8])
    assert ratio["1"] == 1.0
    assert ratio["8"] == pytest.approx(1 / (0.1 + 0.4 + 0.5 / 1000), abs=1e-3)  # ~2x: the rest and the encoder stay
