"""`edgeasr bench`: the side-by-side harness, its JSON, report and plot, and its errors."""

import json

import pytest
import torch
import yaml

from edgeasr.audio.features import FbankOptions
from edgeasr.cli import main
from edgeasr.evaluate.flops import streaming_flops
from edgeasr.model.asr import ASRModel, ModelConfig
from edgeasr.model.package import StreamingDefaults, load_model_dir, save_model_dir
from edgeasr.text.tokenizer import Tokenizer

PRACTICAL_ENCODER = {"d_model": 32, "num_heads": 2, "d_ff": 64, "blocks": ["conv", "performer"],
                     "performer_features": 8, "dropout": 0.0}


@pytest.fixture(scope="module")
def practical_model(tmp_path_factory):
    tokenizer = Tokenizer.train(["hello world", "streaming speech recognition"], kind="char")
    torch.manual_seed(1)
    model = ASRModel(ModelConfig.from_dict({
        "vocab_size": tokenizer.vocab_size, "encoder": PRACTICAL_ENCODER,
        "decoder": {"num_layers": 1, "d_ff": 64, "dropout": 0.0},
    })).eval()
    with torch.no_grad():
        model.ctc.bias[0] = -2.0
    return save_model_dir(tmp_path_factory.mktemp("practical"), model, tokenizer, FbankOptions(),
                          StreamingDefaults(chunk_size=4))


@pytest.fixture(scope="module")
def bench_run(tiny_model, practical_model, tiny_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    config = out / "speed_only.yaml"
    config.write_text(yaml.safe_dump({"model": {"encoder": PRACTICAL_ENCODER, "decoder": {"num_layers": 0}},
                                      "tokenizer": {"kind": "char", "vocab_size": 20}}))
    status = main(["bench", f"base={tiny_model}", f"practical={practical_model}", f"speed={config}",
                   "--manifest", str(tiny_corpus / "test.jsonl"), "--latency-utts", "2", "--repeats", "1",
                   "--chunk-sizes", "16,4", "--profile-layer-norm",
                   "--out", str(out / "results" / "encoders.json"), "--report", str(out / "BENCHMARKS.md")])
    assert status == 0
    return out, json.loads((out / "results" / "encoders.json").read_text())


def test_bench_measures_every_promised_quantity(bench_run):
    _, result = bench_run
    assert result["benchmark"] == "encoders" and result["baseline"] == "base"
    assert [row["name"] for row in result["models"]] == ["base", "practical", "speed"]
    for row in result["models"]:
        assert row["parameters"] > 0 and row["bytes_on_disk"] > 4 * row["parameters"] * 0.9
        assert row["gflops_per_audio_second"] > 0
        for chunk in ("16", "4"):
            latency = row["latency_ms"][chunk]
            assert 0 < latency["median"] <= latency["p90"] and latency["chunks"] > 0
    base, practical, speed = result["models"]
    assert base["vs_baseline"]["speedup_chunk_16"] == 1.0
    assert base["vs_baseline"]["wer_relative_first_pass"] in (0.0, None)
    assert practical["state_bytes_10s"] == practical["state_bytes_60s"]
    assert base["state_bytes_10s"] < base["state_bytes_60s"]  # softmax attention keeps all history
    assert speed["accuracy"] is None and speed["rtf"] is None and not speed["trained"]
    for row in (base, practical):
        assert row["rtf"] > 0
        assert set(row["accuracy"]) == {"first_pass", "rescored"}
    profile = result["layer_norm_profile"]
    assert 0 <= profile["time_share_profiler"] <= 1 and 0 < profile["flops_share"] < 0.5
    assert any("constant" in t["target"] and t["met"] for t in result["targets"])
    for row in (base, practical):
        assert row["latency_ms_long_stream"]["stream_seconds"] == 60.0
        assert 0 < row["latency_ms_long_stream"]["median"] <= row["latency_ms_long_stream"]["p90"]
    assert base["vs_baseline"]["speedup_long_stream"] == 1.0


def test_bench_first_pass_wer_equals_streaming_eval(bench_run, tiny_model, tiny_corpus, capsys):
    _, result = bench_run
    capsys.readouterr()
    assert main(["eval", "--model", str(tiny_model), "--manifest", str(tiny_corpus / "test.jsonl"),
                 "--mode", "ctc_prefix_beam", "--chunk-size", "16", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert result["models"][0]["accuracy"]["first_pass"]["wer"] == summary["wer"]


def test_bench_writes_the_report_table_and_a_png_plot(bench_run):
    out, result = bench_run
    report = (out / "BENCHMARKS.md").read_text()
    assert "Encoder variants side by side" in report
    for name in ("base", "practical", "speed"):
        assert f"| {name} |" in report
    assert "LayerNorm in the baseline" in report
    plot = out / "results" / "encoders_pareto.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "encoders_pareto.png" in report


def test_flops_count_grows_with_model_size(tiny_model, practical_model):
    feats = torch.randn(400, 80)
    big = streaming_flops(load_model_dir(tiny_model).model, feats, 4)
    small = streaming_flops(load_model_dir(practical_model).model, feats, 4)
    assert big["total"] > small["total"] > 0
    assert 0 < big["layer_norm"] < big["total"]


@pytest.mark.parametrize("argv,message", [
    (["bench", "MODEL"], "--manifest is required"),
    (["bench", "a=MODEL", "a=MODEL", "--manifest", "MANIFEST"], "names must be distinct"),
    (["bench", "MODEL", "--manifest", "MANIFEST", "--chunk-sizes", "16,x"], "comma-separated integers"),
    (["bench", "/nonexistent/model", "--manifest", "MANIFEST"], "nonexistent"),
])
def test_bench_bad_input_is_one_line_error(argv, message, tiny_model, tiny_corpus, tmp_path, capsys):
    argv = [a.replace("MODEL", str(tiny_model)).replace("MANIFEST", str(tiny_corpus / "test.jsonl")) for a in argv]
    assert main([*argv, "--out", str(tmp_path / "r.json"), "--report", ""]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "r.json").exists()
