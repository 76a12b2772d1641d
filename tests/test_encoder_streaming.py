"""The streaming encoder must equal the masked full-sequence encoder (issue 3's core promise)."""

import pytest
import torch

from edgeasr.model.encoder import Encoder, EncoderConfig, EncoderStream
from edgeasr.nn.mask import chunk_mask


def small_encoder(**overrides) -> Encoder:
    torch.manual_seed(0)
    config = EncoderConfig(d_model=64, num_heads=4, d_ff=128, num_blocks=3, dropout=0.0, **overrides)
    return Encoder(config).eval()


def stream_in_random_pieces(stream: EncoderStream, feats: torch.Tensor, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    outputs, position = [], 0
    while position < feats.size(0):
        size = int(torch.randint(0, 37, (), generator=generator))
        outputs.append(stream.accept(feats[position : position + size]))
        position += size
    outputs.append(stream.finish())
    return torch.cat(outputs)


@pytest.mark.parametrize("chunk,left", [(1, -1), (4, -1), (8, 2), (16, 0), (5, 3)])
@pytest.mark.parametrize("rate", [4, 6, 8])
def test_streaming_equals_full_sequence_under_the_same_chunk_mask(chunk, left, rate):
    encoder = small_encoder(subsampling_rate=rate)
    feats = torch.randn(1, 257, 80)
    with torch.no_grad():
        full, lengths = encoder(feats, torch.tensor([257]), chunk, left)
    streamed = stream_in_random_pieces(EncoderStream(encoder, chunk, left), feats[0], seed=chunk)
    assert streamed.shape == full[0].shape
    assert (streamed - full[0]).abs().max().item() < 1e-4


def test_padding_does_not_change_real_frames():
    encoder = small_encoder()
    short = torch.randn(1, 90, 80)
    padded = torch.cat([short, torch.randn(1, 40, 80)], dim=1)
    batch = torch.cat([padded, torch.randn(1, 130, 80)])
    with torch.no_grad():
        alone, n = encoder(short, torch.tensor([90]), 4)
        together, lengths = encoder(batch, torch.tensor([90, 130]), 4)
    assert lengths[0] == n[0]
    assert (alone[0] - together[0, : n[0]]).abs().max().item() < 1e-4


def test_cache_stays_bounded_with_limited_left_context():
    encoder = small_encoder()
    stream = EncoderStream(encoder, chunk_size=4, num_left_chunks=2)
    for _ in range(30):
        stream.accept(torch.randn(64, 80))
    assert all(cache.size(2) <= 2 * 4 + 4 for cache in stream.att_caches)
    assert all(cache.size(2) == encoder.config.kernel_size - 1 for cache in stream.cnn_caches)


def test_chunk_mask_pattern():
    mask = chunk_mask(6, chunk_size=2, num_left_chunks=1)
    expected = torch.tensor(
        [
            [1, 1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 1, 0, 0],
            [1, 1, 1, 1, 0, 0],
            [0, 0, 1, 1, 1, 1],
            [0, 0, 1, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(mask, expected)


def test_remembered_position_projections_change_nothing_but_the_flops(monkeypatch):
    """Inference keeps projected relative positions per distance; a stream then projects only
    the distances its new chunk adds, with the same numbers as projecting them all again."""
    import edgeasr.nn.attention as attention
    from torch.utils.flop_counter import FlopCounterMode

    encoder = small_encoder()
    feats = torch.randn(300, 80)

    def run():
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            out = stream_in_random_pieces(EncoderStream(encoder, 4, -1), feats, seed=3)
        return out, counter.get_total_flops()

    remembered, fewer = run()
    monkeypatch.setattr(attention, "MAX_MEMO_DISTANCES", 0)
    recomputed, more = run()
    assert (remembered - recomputed).abs().max().item() < 1e-5
    assert fewer < 0.97 * more
    with torch.no_grad():  # a weight update invalidates what was remembered
        encoder.layers[0].attention.linear_pos.weight.mul_(2.0)
    monkeypatch.setattr(attention, "MAX_MEMO_DISTANCES", 2048)
    changed, _ = run()
    monkeypatch.setattr(attention, "MAX_MEMO_DISTANCES", 0)
    expected, _ = run()
    assert (changed - expected).abs().max().item() < 1e-5
