"""benchmarks/search_speed.py end to end on the default model and real clips; the report sections
of the search and first-pass-student results."""

import json
import subprocess
import sys
from pathlib import Path

from edgeasr.evaluate.report import first_pass_student_section, search_speed_section

ROOT = Path(__file__).resolve().parents[1]


def test_the_search_benchmark_finds_the_same_nbest_and_a_faster_core(tmp_path):
    out = tmp_path / "results" / "search_speed.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "search_speed.py"), "--utts", "3",
                          "--share-utts", "1", "--manifest", f"clips={ROOT / 'samples' / 'samples.jsonl'}",
                          "--out", str(out), "--report", str(tmp_path / "BENCHMARKS.md")], capture_output=True, text=True, timeout=900, cwd=tmp_path,
                         env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(out.read_text())
    search = result["sets"]["clips"]["search"]
    for row in search.values():
        assert row["identical_nbest"] == row["utts"] == 3
    # the C core without an LM: nothing but bookkeeping left, several times faster (measured ~10x)
    assert search["no_lm"]["speedup"] > 2
    share = result["sets"]["clips"]["share"]
    assert set(share) == {"python", "native"} and set(share["native"]) == {"no_lm", "lm", "default_two_pass_lm"}
    section = "\n".join(search_speed_section(result, "search_speed.json"))
    assert "| clips | no | 3/3 |" in section and "| clips | C |" in section
    assert "## CTC prefix beam search" in (tmp_path / "BENCHMARKS.md").read_text()  # not the repository's


def test_the_first_pass_student_section_reports_its_targets():
    """Several students measured in one run: a row, the targets and the chunk's parts for each."""
    result = json.loads((ROOT / "benchmarks" / "results" / "first_pass_student.json").read_text())
    section = "\n".join(first_pass_student_section(result, "first_pass_student.json"))
    students = list(result["students"])
    assert len(students) >= 2
    for who in students:
        assert f"| {who} | first pass >= 3x lower per-chunk latency (torch) |" in section
        assert f"| {who} | first pass >= 3x lower per-chunk latency (ONNX Runtime, float) |" in section  # --onnx
        assert f"| realdev (20) | {who} |" in section and f"| realdev | {who} |" in section
        assert f"| ONNX Runtime float | {who} |" in section  # where its chunk's time goes
    assert "Where a chunk's time goes" in section and "| torch | teacher |" in section
    assert section.count("two-pass WER with the fast first pass") == len(result["sets"]) * len(students)


def test_a_result_of_one_student_reads_as_before():
    """first_pass_student_layers.json was written when a run measured one student ("student")."""
    layered = json.loads((ROOT / "benchmarks" / "results" / "first_pass_student_layers.json").read_text())
    section = "\n".join(first_pass_student_section(layered, "first_pass_student_layers.json"))
    assert "| realdev (20) | student |" in section and "| student | test: first-pass WER within +15%" in section
    assert "Where a chunk's time goes" not in section  # measured before the parts were timed


def test_the_first_pass_student_section_says_which_targets_it_learnt():
    layered = json.loads((ROOT / "benchmarks" / "results" / "first_pass_student_layers.json").read_text())
    section = "\n".join(first_pass_student_section(layered, "first_pass_student_layers.json"))
    assert "layer pairs 0->0, 1->1, 2->2, 3->3, weight 1" in section
    plain = json.loads((ROOT / "benchmarks" / "results" / "first_pass_student.json").read_text())
    assert "layer pairs" not in "\n".join(first_pass_student_section(plain, "first_pass_student.json"))
