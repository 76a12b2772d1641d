"""benchmarks/quantization.py: the one-run table of float and quantized models in torch and ORT."""

import json
import subprocess
import sys
from pathlib import Path

from edgeasr.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_quantization_benchmark_measures_every_row_in_both_runtimes(tiny_model, tiny_corpus, tmp_path):
    ptq = tmp_path / "ptq"
    assert main(["quantize", "--model", str(tiny_model), "--out", str(ptq), "--calib",
                 str(tiny_corpus / "train.jsonl"), "--limit", "3"]) == 0
    out = tmp_path / "results" / "quantization.json"
    report = tmp_path / "BENCHMARKS.md"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quantization.py"), "--float", str(tiny_model),
                    "--model", f"ptq_int8={ptq}", "--manifest", str(tiny_corpus / "test.jsonl"), "--limit", "2",
                    "--latency-utts", "2", "--repeats", "1", "--chunk", "4", "--out", str(out),
                    "--report", str(report)], check=True, capture_output=True)
    result = json.loads(out.read_text())
    names = {(r["name"], r["runtime"]) for r in result["rows"]}
    assert names == {(n, rt) for n in ("fp32", "dynamic_int8", "ptq_int8") for rt in ("torch", "onnxruntime")}
    by = {(r["name"], r["runtime"]): r for r in result["rows"]}
    assert by[("fp32", "torch")]["smaller"] == 1.0 and by[("fp32", "torch")]["faster"] == 1.0
    assert by[("ptq_int8", "torch")]["bytes"] < by[("fp32", "torch")]["bytes"]
    assert by[("ptq_int8", "onnxruntime")]["bytes"] < by[("fp32", "onnxruntime")]["bytes"]
    for row in result["rows"]:
        assert row["latency_ms"]["median"] > 0 and row["rtf"] > 0 and 0 <= row["cer"]
    assert result["reload"]["ptq_int8"]["identical"] == result["reload"]["ptq_int8"]["utts"] > 0
    text = report.read_text()
    assert "## Quantization" in text and "| ptq_int8 | onnxruntime |" in text
    assert "reloaded in a fresh process" in text


def test_integer_profile_benchmark_splits_each_forms_time_by_operator_kind(tiny_model, tiny_corpus, tmp_path):
    ptq = tmp_path / "ptq"
    assert main(["quantize", "--model", str(tiny_model), "--out", str(ptq), "--calib",
                 str(tiny_corpus / "train.jsonl"), "--limit", "3"]) == 0
    out = tmp_path / "results" / "integer_profile.json"
    report = tmp_path / "BENCHMARKS.md"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "integer_profile.py"), "--float", str(tiny_model),
                    "--quantized", str(ptq), "--manifest", str(tiny_corpus / "test.jsonl"), "--chunk-size", "4",
                    "--out", str(out), "--report", str(report)], check=True, capture_output=True)
    rows = {row["form"]: row for row in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"float", "fake_quant", "integer"} and rows["float"]["time_vs_float"] == 1.0
    # the integer form really multiplies int8 codes, and only it requantizes int32 sums
    assert rows["integer"]["int_mm_calls_per_chunk"] > 0 and rows["float"]["int_mm_calls_per_chunk"] == 0
    assert "requantize" in rows["integer"]["categories"] and "requantize" not in rows["float"]["categories"]
    assert all(row["chunk_ms_median"] > 0 for row in rows.values())
    assert "## Where the torch integer path's time goes" in report.read_text()
