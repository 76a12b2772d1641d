"""Dynamic int8 (torch) as the simple quantization baseline."""

import json

import torch
from torch import nn

from edgeasr.cli import main
from edgeasr.decoding.recognizer import DecodeOptions, Recognizer
from edgeasr.model.asr import ASRModel, ModelConfig
from edgeasr.quant.dynamic import dynamic_int8, serialized_bytes


def test_dynamic_int8_replaces_linears_and_shrinks_the_weights():
    torch.manual_seed(0)
    model = ASRModel(ModelConfig.from_dict({"vocab_size": 30, "encoder": {"d_model": 128, "num_heads": 4, "d_ff": 512,
                                                                          "num_blocks": 2}}))
    quantized = dynamic_int8(model)
    assert not any(type(m) is nn.Linear for m in quantized.encoder.modules())
    assert any(type(m) is nn.Linear for m in model.encoder.modules())  # the float model is untouched
    assert serialized_bytes(quantized) < 0.45 * serialized_bytes(model)
    feats = torch.randn(1, 200, 80)
    with torch.no_grad():
        a, _ = model.eval().encode(feats, torch.tensor([200]))
        b, _ = quantized.encode(feats, torch.tensor([200]))
    assert ((a - b).norm() / a.norm()).item() < 0.1


def test_recognizer_and_eval_run_with_dynamic_int8(tiny_model, tiny_corpus, capsys):
    recognizer = Recognizer.load(tiny_model, DecodeOptions(dynamic_int8=True))
    assert not any(type(m) is nn.Linear for m in recognizer.model.encoder.modules())
    assert main(["eval", "--model", str(tiny_model), "--manifest", str(tiny_corpus / "test.jsonl"),
                 "--dynamic-int8", "--json", "--limit", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["utts"] == 2


def test_dynamic_int8_on_a_quantized_model_is_a_one_line_error(tiny_model, tiny_corpus, tmp_path, capsys):
    out = tmp_path / "q"
    assert main(["quantize", "--model", str(tiny_model), "--out", str(out), "--calib",
                 str(tiny_corpus / "train.jsonl"), "--limit", "2"]) == 0
    wav = str(next((tiny_corpus / "wav").rglob("*.wav")))
    assert main(["transcribe", "--model", str(out), "--dynamic-int8", wav]) == 2
    assert "already quantized" in capsys.readouterr().err
