"""GPTQ rounding of 4-bit weights and its codes in onnxruntime's MatMulNBits graphs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from edgeasr.quant.gptq import InputMoments, block_params, gptq, round_to_nearest, spread


def correlated_inputs(rows: int, depth: int, seed: int = 0) -> torch.Tensor:
    """Inputs with strongly correlated features, as a layer's inputs are (low rank plus noise)."""
    generator = torch.Generator().manual_seed(seed)
    basis = torch.randn(8, depth, generator=generator)
    return torch.randn(rows, 8, generator=generator) @ basis + 0.1 * torch.randn(rows, depth, generator=generator)


def test_block_params_keep_zero_exact_and_cover_the_range():
    values = torch.tensor([[0.5, 1.0, 2.0, 3.0], [-1.0, -0.5, 0.2, 0.1]])
    scale, zero = block_params(values)
    # the range stretched to include 0: [0, 3] and [-1, 0.2]
    assert torch.allclose(scale, torch.tensor([3.0 / 15, 1.2 / 15]))
    assert zero.tolist() == [0.0, round(1.0 / (1.2 / 15))]
    quantized = round_to_nearest(torch.tensor([[0.0, 0.37, -0.8, 2.5] * 8]), block=32)
    assert quantized.dequantize()[0, 0].item() == 0.0


def test_round_to_nearest_codes_are_4_bit_and_close():
    weight = torch.randn(16, 64)
    quantized = round_to_nearest(weight, block=32)
    assert quantized.codes.dtype == torch.uint8 and int(quantized.codes.max()) <= 15
    assert quantized.scales.shape == (16, 2) and quantized.zero_points.shape == (16, 2)
    error = (quantized.dequantize() - weight).abs()
    assert (error <= quantized.scales.repeat_interleave(32, dim=1) / 2 + 1e-6).all()


def test_gptq_with_uncorrelated_inputs_is_round_to_nearest():
    """A diagonal Hessian gives the rounding errors nowhere to go: GPTQ must reduce to RTN."""
    weight = torch.randn(24, 64)
    hessian = torch.diag(torch.rand(64) + 0.5)
    assert torch.equal(gptq(weight, hessian).codes, round_to_nearest(weight).codes)
    assert torch.equal(gptq(weight, hessian, act_order=True).codes, round_to_nearest(weight).codes)


def test_gptq_cuts_the_layer_output_error_on_correlated_inputs():
    weight = torch.randn(48, 128, generator=torch.Generator().manual_seed(0))
    inputs = correlated_inputs(2500, 128, seed=1)
    calibration, held_out = inputs[:2000], inputs[2000:]
    hessian = calibration.T @ calibration / len(calibration)
    error = lambda q: ((held_out @ (weight - q.dequantize()).T) ** 2).mean().item()  # noqa: E731
    rtn, ours = error(round_to_nearest(weight)), error(gptq(weight, hessian))
    assert ours < 0.5 * rtn, (ours, rtn)
    assert error(gptq(weight, hessian, act_order=True)) < 0.5 * rtn


def test_gptq_rejects_shapes_it_cannot_block():
    with pytest.raises(ValueError, match="multiple of 32"):
        gptq(torch.randn(4, 40), torch.eye(40))
    with pytest.raises(ValueError, match="hessian"):
        gptq(torch.randn(4, 64), torch.eye(32))


def test_input_moments_are_the_mean_outer_product_of_the_inputs():
    layer = nn.Linear(6, 3)
    first, second = torch.randn(2, 5, 6), torch.randn(4, 6)
    with InputMoments({"layer": layer}) as moments:
        layer(first)
        layer(second)
    layer(torch.randn(3, 6))  # after the context: not recorded
    rows = torch.cat([first.reshape(-1, 6), second]).double()
    assert moments.rows["layer"] == 14
    assert torch.allclose(moments.hessian("layer"), rows.T @ rows / 14)
    with pytest.raises(ValueError, match="no calibration input"):
        InputMoments({"unused": nn.Linear(2, 2)}).hessian("unused")


def test_spread_takes_evenly_spaced_items():
    assert spread(list(range(10)), 5) == [0, 2, 4, 6, 8]
    assert spread([1, 2], 5) == [1, 2]


def test_gptq_codes_go_into_the_4_bit_graph_unchanged(tmp_path):
    """The MatMulNBits node carries exactly the given codes (no second rounding) and computes
    with them: its output is the dequantized weight's product."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    from edgeasr.export.int4 import linear_fingerprint, matmul_nbits_arrays
    from edgeasr.export.onnx import _quantize_int4

    torch.manual_seed(0)
    layer = nn.Linear(64, 24, bias=False)
    weight_kn = layer.weight.detach().T.contiguous().numpy()
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, 64])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, 24])],
                              [numpy_helper.from_array(weight_kn, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "g.onnx"))
    inputs = correlated_inputs(500, 64)
    codes = gptq(layer.weight, inputs.T @ inputs / 500)
    assert not torch.equal(codes.codes, round_to_nearest(layer.weight).codes)  # a different rounding
    _quantize_int4(tmp_path / "g.onnx", tmp_path / "g.int4.onnx", {linear_fingerprint(layer.weight): codes})
    model = onnx.load(str(tmp_path / "g.int4.onnx"))
    (node,) = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    stored = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for name, expected in zip(node.input[1:4], matmul_nbits_arrays(codes)):
        assert np.array_equal(stored[name], expected), name
    x = correlated_inputs(8, 64, seed=3).numpy()
    got = ort.InferenceSession(str(tmp_path / "g.int4.onnx")).run(None, {"x": x})[0]
    expected = x @ codes.dequantize().T.numpy()
    # accuracy level 4 rounds the activations to int8 per block: ~1% of the output's scale
    assert np.abs(got - expected).max() < 0.02 * np.abs(expected).max()


def test_export_calib_needs_int4(tmp_path, capsys):
    from edgeasr.cli import main

    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"audio": "a.wav", "text": "a", "duration": 1.0}) + "\n")
    assert main(["export", "--out", str(tmp_path / "o"), "--calib", str(manifest)]) != 0
    error = capsys.readouterr().err.strip().splitlines()
    assert error == ["edgeasr: error: --calib rounds the 4-bit decoder graphs: add --int4"]


def test_write_int4_graph_turns_coded_products_into_4_bit_and_the_rest_int8(tmp_path):
    """The encoder's path: products with codes become MatMulNBits carrying them (zero points
    included), a product without codes gets per-channel dynamic int8."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    from edgeasr.export.int4 import linear_fingerprint, matmul_nbits_arrays, write_int4_graph

    torch.manual_seed(0)
    coded, plain = nn.Linear(64, 32, bias=False), nn.Linear(32, 8, bias=False)
    weights = [numpy_helper.from_array(coded.weight.detach().T.contiguous().numpy(), "w1"),
               numpy_helper.from_array(plain.weight.detach().T.contiguous().numpy(), "w2")]
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["y"])],
                              "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, 64])],
                              [helper.make_tensor_value_info("h", onnx.TensorProto.FLOAT, [None, 32]),
                               helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, 8])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "g.onnx"))
    inputs = correlated_inputs(300, 64)
    codes = gptq(coded.weight, inputs.T @ inputs / 300)
    assert write_int4_graph(tmp_path / "g.onnx", tmp_path / "g.int4.onnx", {linear_fingerprint(coded.weight): codes}) == 1
    model = onnx.load(str(tmp_path / "g.int4.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMulNBits") == 1 and "MatMulInteger" in ops and "MatMul" not in ops
    (node,) = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    stored = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for name, expected in zip(node.input[1:4], matmul_nbits_arrays(codes)):
        assert np.array_equal(stored[name], expected), name
    x = correlated_inputs(6, 64, seed=4).numpy()
    hidden, got = ort.InferenceSession(str(tmp_path / "g.int4.onnx")).run(None, {"x": x})
    expected_hidden = x @ codes.dequantize().T.numpy()
    # accuracy level 4 rounds the activations to int8 per block: ~1% of the output's scale
    assert np.abs(hidden - expected_hidden).max() < 0.02 * np.abs(expected_hidden).max()
    # the int8 product only roughly: onnxruntime's u8 x s8 kernel saturates some sums on AVX2 CPUs
    expected = expected_hidden @ plain.weight.detach().T.numpy()
    assert np.corrcoef(got.ravel(), expected.ravel())[0, 1] > 0.95


@pytest.mark.parametrize("content, message", [(None, "manifest not found"), ("", "no calibration utterances")])
def test_export_calib_manifest_problems_are_one_line_errors(tmp_path, capsys, content, message):
    from edgeasr.cli import main

    manifest = tmp_path / "calib.jsonl"
    if content is not None:
        manifest.write_text(content)
    assert main(["export", "--out", str(tmp_path / "o"), "--int4", "--calib", str(manifest)]) != 0
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("edgeasr: error:")]
    assert len(errors) == 1 and message in errors[0]
    assert not (tmp_path / "o").exists()  # nothing half-written
