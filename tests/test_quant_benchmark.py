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


def test_quantization_benchmark_on_the_default_covers_both_passes_and_4_bit_graphs(tmp_path):
    """benchmarks/quantization_default.py: the default and a 4-bit PTQ of it (edgeasr quantize),
    every row in both modes, bytes per pass; the 4-bit model's ONNX row runs its MatMulNBits graphs."""
    clips = sorted(Path("samples").glob("*.wav"))[:2]
    manifest = tmp_path / "clips.jsonl"
    manifest.write_text("".join(json.dumps({"audio": str(c.resolve()), "text": c.with_suffix(".txt").read_text().strip(),
                                            "duration": 5.0}) + "\n" for c in clips))
    ptq = tmp_path / "ptq_w4"
    assert main(["quantize", "--model", "default", "--out", str(ptq), "--calib", str(manifest), "--weight-bits", "4",
                 "--layers", "{ctc: {weight_bits: 8}, 'encoder.conv*': {weight_bits: 8}}"]) == 0
    out, report = tmp_path / "results" / "quantization_default.json", tmp_path / "BENCHMARKS.md"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quantization_default.py"), "--model", f"ptq_w4a8={ptq}",
                    "--manifest", f"clips={manifest}", "--out", str(out), "--report", str(report),
                    "--calib", str(manifest), "--calib-limit", "2", "--calib-encoder", "--gptq-export", str(tmp_path / "gptq")],
                   check=True, capture_output=True)
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert set(rows) == {"fp32 / torch", "dynamic_int8 / torch", "fp32 / onnxruntime", "int8 / onnxruntime",
                         "int4 / onnxruntime", "int4_gptq / onnxruntime", "int4_gptq_all / onnxruntime",
                         "ptq_w4a8 / torch", "ptq_w4a8 / onnxruntime"}
    # the GPTQ rows' graphs say how they were rounded; the second one's encoder is 4-bit as well
    decoder_only = json.loads((tmp_path / "gptq" / "metadata.json").read_text())
    both = json.loads((tmp_path / "gptq-all" / "metadata.json").read_text())
    assert decoder_only["int4_decoder_rounding"] == "gptq" and not decoder_only["int4_encoder"]
    assert both["int4_encoder_rounding"] == "gptq" and both["int4_encoder"]
    assert rows["int4_gptq_all / onnxruntime"]["bytes"]["first_pass"] < 0.75 * rows["int8 / onnxruntime"]["bytes"]["first_pass"]
    assert rows["int4_gptq / onnxruntime"]["bytes"]["both_passes"] < 0.5 * rows["int8 / onnxruntime"]["bytes"]["both_passes"]
    for row in ("int4_gptq / onnxruntime", "int4_gptq_all / onnxruntime"):
        assert rows[row]["sets"]["clips"]["whisper_rescoring"]["wer"] < 20, row
    assert result["quantized"]["ptq_w4a8"]["quantization"]["weight_bits"] == 4
    fp32 = rows["fp32 / torch"]["bytes"]
    for name, row in rows.items():
        assert 0 < row["bytes"]["first_pass"] < row["bytes"]["both_passes"], name
        for mode in ("ctc_greedy", "whisper_rescoring"):
            assert row["sets"]["clips"][mode]["rtf"] > 0 and row["sets"]["clips"][mode]["cer"] >= 0
    # 4-bit encoder graphs: the first pass reads well under a fifth of fp32's bytes, under the int8 graph's
    four_bit = rows["ptq_w4a8 / onnxruntime"]["bytes"]
    assert four_bit["first_pass"] < 0.2 * fp32["first_pass"]
    assert four_bit["first_pass"] < 0.75 * rows["int8 / onnxruntime"]["bytes"]["first_pass"]
    assert rows["ptq_w4a8 / onnxruntime"]["sets"]["clips"]["whisper_rescoring"]["wer"] < 20
    text = report.read_text()
    assert "## Quantization of the default model" in text and "| ptq_w4a8 / onnxruntime |" in text
    assert "| int4_gptq / onnxruntime: >= 6x smaller" in text
