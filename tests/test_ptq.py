"""Post-training quantization: calibration observers and `edgeasr quantize`."""

import json
import subprocess
import sys

import pytest
import torch

from edgeasr.cli import main
from edgeasr.data.manifest import read_manifest
from edgeasr.model.package import load_model_dir
from edgeasr.quant.fake_quant import ActivationQuantizer
from edgeasr.quant.ptq import calibrate
from edgeasr.quant.qat import QuantConfig, prepare_qat, quantized_layers


def test_minmax_covers_everything_and_percentile_clips_outliers(tiny_model):
    feats = torch.randn(1, 200, 80)
    feats[0, 100, :5] = 40.0  # a rare outlier
    ranges = {}
    for observer in ("minmax", "percentile"):
        model = load_model_dir(tiny_model).model
        prepare_qat(model, QuantConfig(skip=["decoder.*", "reverse_decoder.*"]))
        assert calibrate(model, [(feats, torch.tensor([200]))], observer, percentile=99.9) > 0
        first = model.encoder.subsampling
        quantizer = next(m for m in first.modules() if isinstance(m, ActivationQuantizer))
        ranges[observer] = (quantizer.low.item(), quantizer.high.item())
        assert all(bool(q.initialized) for n, q in model.named_modules()
                   if isinstance(q, ActivationQuantizer) and not n.startswith(("decoder", "reverse_decoder")))
    normalized_max = ranges["minmax"][1]
    assert ranges["percentile"][1] < normalized_max
    assert ranges["minmax"][0] <= ranges["percentile"][0]


def test_calibrate_refuses_unknown_observers_and_empty_data(tiny_model):
    model = load_model_dir(tiny_model).model
    prepare_qat(model, QuantConfig())
    with pytest.raises(ValueError, match="unknown observer"):
        calibrate(model, [], "kl")
    with pytest.raises(ValueError, match="no calibration data"):
        calibrate(model, [], "minmax")


def test_quantize_command_writes_a_model_that_reloads_with_the_same_text(tiny_model, tiny_corpus, tmp_path, capsys):
    out = tmp_path / "ptq"
    assert main(["quantize", "--model", str(tiny_model), "--out", str(out), "--calib",
                 str(tiny_corpus / "train.jsonl"), "--limit", "5", "--weight-bits", "4",
                 "--layers", "{ctc: {weight_bits: 8}}"]) == 0
    assert "quantized" in capsys.readouterr().out
    model = load_model_dir(out).model
    layers = quantized_layers(model)
    assert layers["ctc"].weight_bits == 8 and layers["encoder.layers.0.ff_in.linear_in"].weight_bits == 4
    assert layers["decoder.output"].weight_bits == 4 and layers["decoder.output"].act_bits is None
    audio = [u.audio for u in read_manifest(tiny_corpus / "test.jsonl")[:2]]
    assert main(["transcribe", "--model", str(out), "--json", *audio]) == 0
    here = [json.loads(line)["text"] for line in capsys.readouterr().out.strip().splitlines()]
    fresh = subprocess.run([sys.executable, "-m", "edgeasr", "transcribe", "--model", str(out), "--json", *audio],
                           capture_output=True, text=True, check=True)
    assert [json.loads(line)["text"] for line in fresh.stdout.strip().splitlines()] == here


@pytest.mark.parametrize("extra,message", [
    (["--layers", "{a: {weight_bits: 3}}"], "weight bits"),
    (["--layers", "{a: [1"], "quantization settings"),
    (["--act-bits", "3"], "8 or 4 bits or not at all"),
])
def test_quantize_bad_settings_are_one_line_errors(extra, message, tiny_model, tiny_corpus, tmp_path, capsys):
    argv = ["quantize", "--model", str(tiny_model), "--out", str(tmp_path / "q"), "--calib",
            str(tiny_corpus / "train.jsonl"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "q").exists()


def test_quantizing_a_quantized_model_is_refused(tiny_model, tiny_corpus, tmp_path, capsys):
    out = tmp_path / "q"
    args = ["--calib", str(tiny_corpus / "train.jsonl"), "--limit", "2"]
    assert main(["quantize", "--model", str(tiny_model), "--out", str(out), *args]) == 0
    assert main(["quantize", "--model", str(out), "--out", str(tmp_path / "q2"), *args]) == 2
    assert "already quantized" in capsys.readouterr().err
