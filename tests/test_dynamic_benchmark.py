"""benchmarks/dynamic.py: dynamic compute against static depth, with its table and plot."""

import json
import subprocess
import sys
from pathlib import Path

import torch

from edgeasr.audio.features import FbankOptions
from edgeasr.model.asr import ASRModel, ModelConfig
from edgeasr.model.package import StreamingDefaults, load_model_dir, save_model_dir

ROOT = Path(__file__).resolve().parents[1]


def test_dynamic_benchmark_writes_curves_for_static_and_dynamic_models(tiny_model, tiny_corpus, tmp_path):
    packaged = load_model_dir(tiny_model)
    config = packaged.model.config.to_dict()
    config["encoder"]["dynamic"] = {"kind": "amortized"}
    torch.manual_seed(0)
    model = ASRModel(ModelConfig.from_dict(config)).eval()
    model.load_state_dict(packaged.model.state_dict(), strict=False)
    with torch.no_grad():  # gates that open for some frames and not others
        model.encoder.dynamic.predictor.out.weight.normal_(0.0, 1.0)
        model.encoder.dynamic.predictor.out.bias.zero_()
    dynamic = save_model_dir(tmp_path / "amortized", model, packaged.tokenizer, FbankOptions(),
                             StreamingDefaults(chunk_size=4))
    out = tmp_path / "results" / "dynamic.json"
    report = tmp_path / "BENCHMARKS.md"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "dynamic.py"), "--manifest",
                    str(tiny_corpus / "test.jsonl"), "--static", f"2={tiny_model}", "--dynamic", f"amortized={dynamic}",
                    "--thresholds", "0.2,0.8", "--limit", "2", "--flops-utts", "2", "--timing-utts", "1",
                    "--repeats", "1", "--chunk", "4", "--out", str(out), "--report", str(report)],
                   check=True, capture_output=True)
    result = json.loads(out.read_text())
    rows = {r["name"]: r for r in result["rows"]}
    assert set(rows) == {"static 2 layers", "amortized @0.2", "amortized @0.8"}
    assert rows["static 2 layers"]["executed_layers"] == 2.0 and rows["static 2 layers"]["compute_saved"] == 0.0
    # a higher threshold runs fewer modules and fewer FLOPs, as counted from what was executed
    assert rows["amortized @0.8"]["executed_layers"] < rows["amortized @0.2"]["executed_layers"] <= 2.0
    assert rows["amortized @0.8"]["layers_gflops_per_s"] < rows["amortized @0.2"]["layers_gflops_per_s"]
    for row in rows.values():  # the subsampling front end is counted apart from the layers
        assert 0 < row["layers_gflops_per_s"] < row["encoder_gflops_per_s"]
    assert (out.parent / "dynamic.png").stat().st_size > 0
    text = report.read_text()
    assert "## Dynamic compute" in text and "| amortized @0.8 |" in text and "dynamic.png" in text
