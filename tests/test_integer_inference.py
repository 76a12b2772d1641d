"""Integer-only linear layers: fixed-point requantization, int8 x int8 -> int32, parity with fake-quant."""

import pytest
import torch

from edgeasr.model.asr import ASRModel, ModelConfig
from edgeasr.quant.integer import IntegerLinear, convert_to_integer, quantize_multiplier, requantize
from edgeasr.quant.qat import FakeQuantLinear, LayerQuant, QuantConfig, prepare_qat


def test_fixed_point_multipliers_represent_the_real_ones():
    reals = torch.tensor([1e-6, 3.3e-4, 0.01, 0.4999, 0.5, 0.75, 0.99999999, 1.0, 3.7])
    m0, shift = quantize_multiplier(reals)
    assert ((m0 >= 2**30) & (m0 < 2**31)).all()
    approx = m0.double() * torch.pow(2.0, -(31 + shift).double())
    assert torch.allclose(approx, reals.double(), rtol=1e-9)


def test_requantize_rounds_like_the_real_multiplication():
    generator = torch.Generator().manual_seed(0)
    acc = torch.randint(-2**24, 2**24, (2000, 6), generator=generator, dtype=torch.int32)
    reals = torch.tensor([1e-5, 3e-5, 1e-4, 2e-4, 7.7e-6, 0.9])
    m0, shift = quantize_multiplier(reals)
    codes = requantize(acc, m0, shift, zero_point=-3)
    expected = torch.clamp(torch.round(acc.double() * reals.double()) - 3, -128, 127)
    difference = (codes.double() - expected).abs()
    assert codes.dtype == torch.int8
    assert difference.max() <= 1 and (difference == 0).float().mean() > 0.99


def calibrated_layer(bits: int, seed: int = 0, act_bits: int = 8) -> FakeQuantLinear:
    torch.manual_seed(seed)
    layer = FakeQuantLinear(48, 20)
    layer._setup(LayerQuant(bits, act_bits))
    layer.train()
    for _ in range(5):
        layer(torch.randn(64, 48) * 2 + 0.5)
    return layer.eval()


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_integer_linear_matches_fake_quant_within_one_output_step(bits):
    layer = calibrated_layer(bits)
    integer = IntegerLinear(layer)
    x = torch.randn(3, 50, 48) * 2 + 0.5
    with torch.no_grad():
        expected = layer(x)
    got = integer(x)
    step = integer.output_scale
    assert (got - expected).abs().max().item() <= step * 1.0001
    assert ((got - expected).abs() < step / 2).float().mean() > 0.95


def test_integer_linear_runs_on_integer_tensors_only():
    integer = IntegerLinear(calibrated_layer(8))
    assert integer.weight_t.dtype == torch.int8 and integer.bias_q.dtype == torch.int32
    assert integer.m0.dtype == torch.int64 and integer.shift.dtype == torch.int64
    codes = integer.quantize_input(torch.randn(7, 48))
    out = integer.forward_codes(codes)
    assert codes.dtype == torch.int8 and out.dtype == torch.int8 and out.shape == (7, 20)


def test_uncalibrated_or_weight_only_layers_are_refused():
    layer = FakeQuantLinear(4, 4)
    layer._setup(LayerQuant(8, 8))
    with pytest.raises(ValueError, match="calibrated"):
        IntegerLinear(layer)
    layer._setup(LayerQuant(8, None))
    with pytest.raises(ValueError, match="calibrated"):
        IntegerLinear(layer)


def test_a_whole_model_converts_and_stays_close_to_its_fake_quant_form():
    torch.manual_seed(0)
    model = ASRModel(ModelConfig.from_dict({
        "vocab_size": 12, "encoder": {"d_model": 32, "num_heads": 2, "d_ff": 64, "num_blocks": 2, "dropout": 0.0},
        "decoder": {"num_layers": 1, "d_ff": 64, "dropout": 0.0},
    }))
    prepare_qat(model, QuantConfig(weight_bits=8, act_bits=8))
    model.train()
    feats = torch.randn(2, 150, 80)
    lengths = torch.tensor([150, 120])
    with torch.no_grad():
        for _ in range(3):
            model.encode(feats, lengths)
    model.eval()
    with torch.no_grad():
        fake, _ = model.encode(feats, lengths)
        converted = convert_to_integer(model.encoder)
        integer, _ = model.encode(feats, lengths)
    assert converted > 10
    assert not any(isinstance(m, FakeQuantLinear) for m in model.encoder.modules())
    relative = ((integer - fake).norm() / fake.norm()).item()
    assert relative < 0.05


def calibrated_conv(cls, *args, bits=8, inputs=None, **kwargs):
    torch.manual_seed(0)
    layer = cls(*args, **kwargs)
    layer._setup(LayerQuant(bits, 8))
    layer.train()
    for _ in range(4):
        layer(inputs())
    return layer.eval()


@pytest.mark.parametrize("padding", [0, 1])
@pytest.mark.parametrize("bits", [8, 4])
def test_integer_dense_conv2d_matches_fake_quant_within_one_step(padding, bits):
    from edgeasr.quant.integer import IntegerConv
    from edgeasr.quant.qat import FakeQuantConv2d

    inputs = lambda: torch.randn(2, 3, 21, 17) * 2 + 0.7  # noqa: E731
    layer = calibrated_conv(FakeQuantConv2d, 3, 8, 3, 2, padding=padding, bits=bits, inputs=inputs)
    integer = IntegerConv(layer)
    x = inputs()
    with torch.no_grad():
        expected = layer(x)
    got = integer(x)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= integer.output_scale * 1.0001
    assert integer.forward_codes(integer.quantize_input(x)).dtype == torch.int8


@pytest.mark.parametrize("padding", [0, 2])
def test_integer_depthwise_conv1d_matches_fake_quant_within_one_step(padding):
    from edgeasr.quant.integer import IntegerConv
    from edgeasr.quant.qat import FakeQuantConv1d

    inputs = lambda: torch.randn(2, 6, 40) * 1.5 - 0.3  # noqa: E731
    layer = calibrated_conv(FakeQuantConv1d, 6, 6, 5, padding=padding, groups=6, inputs=inputs)
    integer = IntegerConv(layer)
    x = inputs()
    with torch.no_grad():
        expected = layer(x)
    got = integer(x)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= integer.output_scale * 1.0001


def test_whole_model_conversion_covers_convolutions_too():
    from edgeasr.quant.qat import FakeQuantConv1d, FakeQuantConv2d

    torch.manual_seed(0)
    model = ASRModel(ModelConfig.from_dict({
        "vocab_size": 12, "encoder": {"d_model": 32, "num_heads": 2, "d_ff": 64, "num_blocks": 2, "dropout": 0.0},
        "decoder": {"num_layers": 0},
    }))
    prepare_qat(model, QuantConfig())
    feats, lengths = torch.randn(2, 150, 80), torch.tensor([150, 120])
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model.ctc_log_probs(model.encode(feats, lengths)[0])
    model.eval()
    with torch.no_grad():
        fake, _ = model.encode(feats, lengths)
        convert_to_integer(model)
        integer, _ = model.encode(feats, lengths)
    assert not any(isinstance(m, (FakeQuantLinear, FakeQuantConv1d, FakeQuantConv2d)) for m in model.modules())
    assert ((integer - fake).norm() / fake.norm()).item() < 0.05


def test_four_bit_activations_run_integer_and_match_fake_quant():
    layer = calibrated_layer(4, act_bits=4)
    integer = IntegerLinear(layer)
    x = torch.randn(3, 50, 48) * 2 + 0.5
    with torch.no_grad():
        expected = layer(x)
    codes = integer.forward_codes(integer.quantize_input(x))
    assert codes.min() >= -8 and codes.max() <= 7
    assert (integer(x) - expected).abs().max().item() <= integer.output_scale * 1.0001


def test_attention_products_run_on_int8_codes_with_int32_sums():
    from edgeasr.quant.integer import integer_matmul

    torch.manual_seed(0)
    a, b = torch.randn(2, 4, 16, 36), torch.randn(2, 4, 36, 50) * 3
    exact = torch.matmul(a, b)
    got = integer_matmul(a, b)
    s_a, s_b = a.abs().max() / 127, b.abs().max() / 127
    worst = 36 * (a.abs().max() * s_b / 2 + b.abs().max() * s_a / 2 + s_a * s_b / 4)  # 36 rounded products
    assert (got - exact).abs().max() < worst
    assert (got - exact).abs().mean() < 0.02 * exact.abs().mean()
    probs = torch.softmax(torch.randn(2, 4, 16, 50), dim=-1)
    got = integer_matmul(probs, b.transpose(-2, -1)[..., :50, :36].contiguous(), a_scale=1 / 127)
    assert torch.allclose(got, torch.matmul(probs, b.transpose(-2, -1)[..., :50, :36]), atol=0.05 * b.abs().max())
    calls = []
    original = torch.matmul

    def spy(x, y, *args, **kwargs):
        calls.append((x.dtype, y.dtype))
        return original(x, y, *args, **kwargs)

    torch.matmul = spy
    try:
        integer_matmul(a, b)
    finally:
        torch.matmul = original
    assert calls == [(torch.int32, torch.int32)]  # the product itself never sees a float
