"""Quantization building blocks: fake quantizers with straight-through gradients, and bit packing."""

import pytest
import torch

from edgeasr.quant.fake_quant import (
    ActivationQuantizer,
    activation_qparams,
    fake_quantize_activation,
    fake_quantize_weight,
    quantize_weight,
    weight_qmax,
)
from edgeasr.quant.pack import pack_codes, packed_bytes, unpack_codes


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_weight_fake_quant_lands_on_a_symmetric_per_channel_grid(bits):
    torch.manual_seed(0)
    weight = torch.randn(6, 10) * torch.arange(1, 7).unsqueeze(1)  # rows of very different ranges
    fake = fake_quantize_weight(weight, bits)
    codes, scale = quantize_weight(weight, bits)
    qmax = weight_qmax(bits)
    assert torch.allclose(fake, codes.float() * scale)
    assert codes.abs().max() <= qmax
    assert torch.equal(codes.abs().amax(dim=1), torch.full((6,), qmax, dtype=torch.int8))  # each row uses its range
    assert ((fake - weight).abs() <= scale / 2 + 1e-6).all()  # rounding error at most half a step
    assert len(torch.unique(codes)) <= 2 * qmax + 1


def test_weight_fake_quant_has_a_straight_through_gradient():
    weight = torch.randn(4, 5, requires_grad=True)
    (fake_quantize_weight(weight, 4) * torch.arange(20.0).view(4, 5)).sum().backward()
    assert torch.equal(weight.grad, torch.arange(20.0).view(4, 5))


def test_unsupported_weight_bits_are_refused():
    with pytest.raises(ValueError, match="weight bits"):
        fake_quantize_weight(torch.randn(2, 2), 3)


def test_activation_fake_quant_grid_keeps_zero_exact_and_clips_outside():
    scale, zero_point = activation_qparams(torch.tensor(-1.0), torch.tensor(3.0))
    x = torch.tensor([0.0, -1.0, 3.0, 1.2345, 10.0, -5.0], requires_grad=True)
    y = fake_quantize_activation(x, scale, zero_point)
    assert y[0].item() == 0.0
    assert abs(y[3].item() - 1.2345) <= scale.item() / 2 + 1e-6
    assert y[4].item() == pytest.approx(3.0, abs=scale.item())  # clipped to the top of the range
    assert y[5].item() == pytest.approx(-1.0, abs=scale.item())
    y.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]  # no gradient where clipped


def test_activation_quantizer_tracks_ranges_in_training_and_freezes_them_in_eval():
    quantizer = ActivationQuantizer(momentum=0.5)
    quantizer.eval()
    x = torch.randn(100)
    assert torch.equal(quantizer(x), x)  # nothing observed yet: passes through
    quantizer.train()
    quantizer(torch.tensor([-2.0, 4.0]))
    quantizer(torch.tensor([-4.0, 8.0]))
    assert quantizer.low.item() == pytest.approx(-3.0) and quantizer.high.item() == pytest.approx(6.0)
    quantizer.eval()
    quantizer(torch.tensor([-100.0, 100.0]))
    assert quantizer.high.item() == pytest.approx(6.0)
    out = quantizer(torch.linspace(-3, 6, 50))
    scale, _ = quantizer.qparams()
    assert len(torch.unique(out)) <= 256 and (out - torch.linspace(-3, 6, 50)).abs().max() <= scale / 2 + 1e-6


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("count", [0, 1, 7, 8, 1001])
def test_pack_unpack_round_trips_exactly(bits, count):
    generator = torch.Generator().manual_seed(count)
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    codes = torch.randint(low, high + 1, (count,), generator=generator, dtype=torch.int8)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == packed_bytes(count, bits)
    assert torch.equal(unpack_codes(packed, bits, count), codes)


def test_four_bit_codes_take_half_a_byte_each():
    codes, _ = quantize_weight(torch.randn(256, 144), 4)
    assert pack_codes(codes, 4).numel() == 256 * 144 // 2


def test_pack_refuses_codes_out_of_range_and_short_buffers():
    with pytest.raises(ValueError, match="outside the 4-bit range"):
        pack_codes(torch.tensor([8], dtype=torch.int8), 4)
    with pytest.raises(ValueError, match="expected"):
        unpack_codes(torch.zeros(2, dtype=torch.uint8), 4, 5)


def test_4_bit_grid_detection_and_packing_for_matmul_nbits():
    """A matrix on a per-column 4-bit grid is found and packed two codes a byte, losslessly; a float
    matrix, or one on an 8-bit grid, is not taken for 4-bit."""
    import numpy as np

    from edgeasr.export.int4 import block_for, grid_codes, pack_codes, unpack_codes
    from edgeasr.quant.fake_quant import fake_quantize_weight

    weight = torch.randn(24, 64, generator=torch.Generator().manual_seed(0))  # [N, K] as torch stores it
    on_grid = fake_quantize_weight(weight, 4).detach().numpy().T.copy()  # [K, N] as the ONNX MatMul reads it
    codes, scales = grid_codes(on_grid)
    assert codes.shape == (24, 64) and np.abs(codes).max() == 7
    np.testing.assert_allclose(codes.T * scales, on_grid, rtol=1e-6, atol=1e-7)
    packed = pack_codes(codes, block_for(64))
    assert packed.dtype == np.uint8 and packed.shape == (24, 1, 32)
    assert np.array_equal(unpack_codes(packed.reshape(24, -1)), codes)
    assert grid_codes(weight.numpy().T.copy()) is None
    assert grid_codes(fake_quantize_weight(weight, 8).detach().numpy().T.copy()) is None
    assert block_for(384) == 128 and block_for(1536) == 256 and block_for(40) is None
