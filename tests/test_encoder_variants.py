"""Issue 4's encoder variants: block plans, FusionFormer (BatchNorm + fuse), Practical Conformer
(conv-only blocks, RNN-Performer attention with a fixed-size state)."""

from pathlib import Path

import pytest
import torch
from torch import nn

from edgeasr.model.asr import ASRModel, ModelConfig
from edgeasr.model.blocks import ConformerBlock, ConvBlock, FusionFormerBlock, PerformerBlock
from edgeasr.model.encoder import Encoder, EncoderConfig, EncoderStream
from edgeasr.nn.norm import LinearBN, MaskedBatchNorm, fuse_batch_norms, has_unfused_batch_norm
from edgeasr.nn.performer import (
    PerformerAttention,
    causal_linear_attention,
    orthogonal_random_features,
    positive_random_features,
)
from test_encoder_streaming import stream_in_random_pieces

ROOT = Path(__file__).resolve().parents[1]


def encoder_with(plan, **overrides) -> Encoder:
    torch.manual_seed(0)
    config = EncoderConfig(d_model=64, num_heads=4, d_ff=128, blocks=plan, dropout=0.0, performer_features=16, **overrides)
    return Encoder(config).eval()


def train_batch_norms(encoder: Encoder, steps: int = 3) -> None:
    """A few training-mode passes so BatchNorm running statistics are far from their init."""
    encoder.train()
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        feats = 3 * torch.randn(3, 160, 80, generator=generator) + 1
        encoder(feats, torch.tensor([160, 120, 70]), chunk_size=4)
    encoder.eval()


# --- block plan -------------------------------------------------------------------------------

def test_block_plan_builds_each_layer_kind_in_order():
    encoder = encoder_with(["conv", "conv", "performer", "conformer", "fusionformer"])
    kinds = [type(layer) for layer in encoder.layers]
    assert kinds == [ConvBlock, ConvBlock, PerformerBlock, ConformerBlock, FusionFormerBlock]
    assert not hasattr(encoder.layers[0], "attention")
    assert isinstance(encoder.layers[2].attention, PerformerAttention)


def test_block_kind_applies_to_every_layer_without_a_plan():
    config = EncoderConfig.from_dict({"d_model": 64, "num_heads": 4, "d_ff": 128, "num_blocks": 3, "block_kind": "conv"})
    assert Encoder(config).config.plan() == ["conv"] * 3


def test_unknown_block_kind_and_norm_are_rejected_with_the_known_names():
    with pytest.raises(ValueError, match="unknown block kind 'lstm'.*conformer"):
        EncoderConfig.from_dict({"blocks": ["conv", "lstm"]})
    with pytest.raises(ValueError, match="final_norm"):
        EncoderConfig.from_dict({"final_norm": "rms"})


@pytest.mark.parametrize("plan", [["conv", "conv", "performer"], ["fusionformer", "fusionformer"],
                                  ["conv", "conformer", "performer"]])
@pytest.mark.parametrize("chunk", [1, 4, 16])
def test_streaming_equals_full_sequence_for_every_block_kind(plan, chunk):
    encoder = encoder_with(plan, final_norm="none" if plan[0] == "fusionformer" else "layer")
    train_batch_norms(encoder)
    feats = torch.randn(1, 257, 80)
    with torch.no_grad():
        full, _ = encoder(feats, torch.tensor([257]), chunk)
    streamed = stream_in_random_pieces(EncoderStream(encoder, chunk), feats[0], seed=chunk)
    assert streamed.shape == full[0].shape
    assert (streamed - full[0]).abs().max().item() < 1e-4


@pytest.mark.parametrize("plan", [["conv", "performer"], ["fusionformer"]])
def test_padding_does_not_change_real_frames_for_new_kinds(plan):
    encoder = encoder_with(plan, final_norm="none" if plan[0] == "fusionformer" else "layer")
    train_batch_norms(encoder)
    short = torch.randn(1, 90, 80)
    batch = torch.cat([torch.cat([short, 50 * torch.randn(1, 40, 80)], dim=1), torch.randn(1, 130, 80)])
    with torch.no_grad():
        alone, n = encoder(short, torch.tensor([90]), 4)
        together, _ = encoder(batch, torch.tensor([90, 130]), 4)
    assert (alone[0] - together[0, : n[0]]).abs().max().item() < 1e-4


# --- Practical Conformer: Performer attention and constant state --------------------------------

def naive_causal_linear_attention(q, k, v):
    """Quadratic reference: out_t = sum_{s<=t} (q_t.k_s) v_s / sum_{s<=t} q_t.k_s."""
    weights = torch.matmul(q, k.transpose(-2, -1)).tril()
    return torch.matmul(weights, v) / weights.sum(-1, keepdim=True)


def test_causal_linear_attention_equals_quadratic_form_for_any_block_size():
    torch.manual_seed(0)
    q, k = torch.rand(2, 3, 100, 8) + 0.01, torch.rand(2, 3, 100, 8) + 0.01
    v = torch.randn(2, 3, 100, 5)
    reference = naive_causal_linear_attention(q, k, v)
    for block in (1, 7, 64, 100, 500):
        out, state = causal_linear_attention(q, k, v, block_size=block)
        assert torch.allclose(out, reference, rtol=1e-4, atol=1e-5), block
        assert state.shape == (2, 3, 8, 6)


def test_chunked_recurrence_equals_full_sequence_causal_computation():
    torch.manual_seed(0)
    attention = PerformerAttention(d_model=32, num_heads=4, num_features=16).eval()
    x = torch.randn(2, 120, 32)
    with torch.no_grad():
        full, _ = attention(x)
        pieces, state = [], None
        for start, end in [(0, 1), (1, 17), (17, 18), (18, 64), (64, 120)]:
            out, state = attention(x[:, start:end], cache=state)
            pieces.append(out)
            assert state.shape == (2, 4, 16, 9)  # heads x features x (d_head + 1): fixed size
        frame_by_frame, state = [], None
        for t in range(120):
            out, state = attention(x[:, t : t + 1], cache=state)
            frame_by_frame.append(out)
    assert (torch.cat(pieces, dim=1) - full).abs().max().item() < 1e-5
    assert (torch.cat(frame_by_frame, dim=1) - full).abs().max().item() < 1e-5


def test_performer_never_reads_the_future():
    torch.manual_seed(0)
    attention = PerformerAttention(d_model=32, num_heads=2, num_features=8).eval()
    x = torch.randn(1, 50, 32)
    changed = x.clone()
    changed[:, 30:] = torch.randn(1, 20, 32) * 10
    with torch.no_grad():
        a, _ = attention(x)
        b, _ = attention(changed)
    assert torch.allclose(a[:, :30], b[:, :30], atol=1e-6)
    assert not torch.allclose(a[:, 30:], b[:, 30:])


def test_random_features_estimate_the_softmax_kernel_without_bias():
    """FAVOR+: E[phi(q).phi(k)] = exp(q.k); with many features the estimate is close and unbiased
    (a QR without the sign fix gives a few percent low, however many features)."""
    generator = torch.Generator().manual_seed(0)
    projection = orthogonal_random_features(32768, 16, generator)
    q = 0.3 * torch.randn(20, 16, generator=generator)
    k = 0.3 * torch.randn(20, 16, generator=generator)
    estimate = positive_random_features(k, projection, is_query=False) @ positive_random_features(
        q, projection, is_query=False).T
    ratio = estimate / torch.exp(k @ q.T)
    assert (ratio - 1).abs().mean().item() < 0.04
    assert abs(ratio.mean().item() - 1) < 0.01


def test_random_features_are_orthogonal_within_each_block():
    w = orthogonal_random_features(16, 16, torch.Generator().manual_seed(0))
    directions = w / w.norm(dim=1, keepdim=True)
    assert torch.allclose(directions @ directions.T, torch.eye(16), atol=1e-5)


def test_query_features_are_stabilized_and_stay_finite_for_large_inputs():
    projection = orthogonal_random_features(16, 8, torch.Generator().manual_seed(0))
    big = 40 * torch.randn(5, 8)
    features = positive_random_features(big, projection, is_query=True)
    assert torch.isfinite(features).all() and (features > 0).any(dim=-1).all()


def test_practical_state_is_constant_in_context_length_and_softmax_state_grows():
    practical = encoder_with(["conv", "conv", "performer", "performer"])
    baseline = encoder_with(["conformer", "conformer"])
    sizes = {}
    for name, encoder in (("practical", practical), ("baseline", baseline)):
        stream = EncoderStream(encoder, chunk_size=4)
        sizes[name] = []
        for _ in range(3):
            stream.accept(torch.randn(400, 80))  # 4 s more audio each time
            sizes[name].append(stream.state_bytes())
    assert sizes["practical"][0] == sizes["practical"][1] == sizes["practical"][2]
    assert sizes["baseline"][0] < sizes["baseline"][1] < sizes["baseline"][2]


def test_conv_block_has_no_attention_and_returns_an_empty_attention_cache():
    encoder = encoder_with(["conv", "conv"])
    assert not any(isinstance(m, (PerformerAttention,)) for m in encoder.modules())
    stream = EncoderStream(encoder, 4)
    stream.accept(torch.randn(100, 80))
    assert all(cache.numel() == 0 for cache in stream.att_caches)
    assert all(cache.size(2) == 14 for cache in stream.cnn_caches)


# --- FusionFormer ----------------------------------------------------------------------------

def fusionformer_encoder() -> Encoder:
    encoder = encoder_with(["fusionformer"] * 3, final_norm="none")
    train_batch_norms(encoder)
    return encoder


def test_fusionformer_has_no_layer_norm_and_no_swish_or_glu():
    encoder = fusionformer_encoder()
    assert not any(isinstance(m, (nn.LayerNorm, nn.SiLU, nn.GLU)) for m in encoder.modules())
    # a BatchNorm after every linear and convolution: FFN 2 + 2, attention Q/K/V/out 4, conv 3
    assert sum(isinstance(m, MaskedBatchNorm) for m in encoder.layers[0].modules()) == 11


def test_fuse_folds_every_batch_norm_and_keeps_outputs():
    encoder = fusionformer_encoder()
    feats = torch.randn(2, 200, 80)
    lengths = torch.tensor([200, 150])
    with torch.no_grad():
        before, _ = encoder(feats, lengths, 8)
        stream_before = stream_in_random_pieces(EncoderStream(encoder, 8), feats[0], seed=3)
        folded = fuse_batch_norms(encoder)
        after, _ = encoder(feats, lengths, 8)
        stream_after = stream_in_random_pieces(EncoderStream(encoder, 8), feats[0], seed=3)
    assert folded == 33
    assert not has_unfused_batch_norm(encoder)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in encoder.modules())
    assert (before - after).abs().max().item() < 1e-5
    assert (stream_before - stream_after).abs().max().item() < 1e-5


def test_fuse_is_a_no_op_for_layer_norm_models():
    torch.manual_seed(0)
    model = ASRModel(ModelConfig.from_dict({"vocab_size": 10, "encoder": {"d_model": 32, "num_heads": 2, "d_ff": 64, "num_blocks": 1}}))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert model.fuse() == 0
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_masked_batch_norm_statistics_ignore_padded_frames():
    bn = MaskedBatchNorm(4, momentum=1.0)
    real = torch.randn(2, 10, 4) * 3 + 2
    padded = torch.cat([real, torch.full((2, 5, 4), 1e4)], dim=1)
    mask = torch.cat([torch.ones(2, 10, dtype=torch.bool), torch.zeros(2, 5, dtype=torch.bool)], dim=1)
    out = bn(padded, mask)
    flat = real.reshape(-1, 4)
    expected = (real - flat.mean(0)) / torch.sqrt(flat.var(0, unbiased=False) + bn.eps)
    assert torch.allclose(out[:, :10], expected, atol=1e-5)
    assert torch.allclose(bn.running_mean, flat.mean(0), atol=1e-5)
    assert torch.allclose(bn.running_var, flat.var(0, unbiased=True), atol=1e-4)


def test_linear_bn_fold_matches_eval_batch_norm():
    torch.manual_seed(0)
    layer = LinearBN(6, 5)
    layer.train()
    layer(torch.randn(4, 30, 6) * 2 + 1)
    layer.eval()
    x = torch.randn(3, 7, 6)
    expected = layer(x)
    layer.fuse()
    assert layer.bn is None
    assert (layer(x) - expected).abs().max().item() < 1e-5


def test_recognizer_fuses_a_fusionformer_model_when_it_loads(tmp_path):
    from edgeasr.audio.features import FbankOptions
    from edgeasr.decoding.recognizer import Recognizer
    from edgeasr.model.package import StreamingDefaults, load_model_dir, save_model_dir
    from edgeasr.text.tokenizer import Tokenizer
    from conftest import speechlike

    tokenizer = Tokenizer.train(["hello world"], kind="char")
    torch.manual_seed(0)
    model = ASRModel(ModelConfig.from_dict({
        "vocab_size": tokenizer.vocab_size,
        "encoder": {"d_model": 32, "num_heads": 2, "d_ff": 64, "num_blocks": 2, "block_kind": "fusionformer",
                    "final_norm": "none", "dropout": 0.0},
        "decoder": {"num_layers": 1, "d_ff": 64, "dropout": 0.0},
    }))
    train_batch_norms(model.encoder)
    directory = save_model_dir(tmp_path / "ff", model, tokenizer, FbankOptions(), StreamingDefaults(chunk_size=4))
    unfused = load_model_dir(directory).model
    recognizer = Recognizer.load(directory)
    assert has_unfused_batch_norm(unfused) and not has_unfused_batch_norm(recognizer.model)
    audio = speechlike(2.0, seed=0)
    from edgeasr.audio.features import compute_fbank

    feats = compute_fbank(audio).unsqueeze(0)
    with torch.no_grad():
        a, _ = unfused.encode(feats, torch.tensor([feats.size(1)]), 4)
        b, _ = recognizer.model.encode(feats, torch.tensor([feats.size(1)]), 4)
    assert (a - b).abs().max().item() < 1e-5
    assert isinstance(recognizer.transcribe(audio).text, str)


def test_shipped_encoder_configs_build_the_variants_they_describe():
    from edgeasr.train.trainer import ExperimentConfig

    built = {}
    for name in ("baseline", "fusionformer", "practical"):
        experiment = ExperimentConfig.load(ROOT / "configs" / "encoders" / f"{name}.yaml")
        built[name] = ASRModel(ModelConfig.from_dict({"vocab_size": 30, **experiment.model}))
    assert all(isinstance(b, ConformerBlock) for b in built["baseline"].encoder.layers)
    assert all(isinstance(b, FusionFormerBlock) for b in built["fusionformer"].encoder.layers)
    assert not any(isinstance(m, nn.LayerNorm) for m in built["fusionformer"].encoder.modules())
    plan = built["practical"].encoder.config.plan()
    assert plan[0] == "conv" and plan[-1] == "performer"
    count = lambda m: sum(p.numel() for p in m.encoder.parameters())  # noqa: E731
    assert count(built["practical"]) < 0.5 * count(built["baseline"])
    budgets = {ExperimentConfig.load(path).train.max_steps for path in (ROOT / "configs" / "encoders").glob("*.yaml")}
    assert len(budgets) == 1  # the same training budget for every variant


def test_checkpoints_with_conv1d_pointwise_weights_still_load():
    """Pointwise convolutions are now nn.Linear; weights saved as Conv1d [out, in, 1] load as before."""
    from edgeasr.nn.convolution import ConvolutionModule

    torch.manual_seed(0)
    module = ConvolutionModule(16, kernel_size=5).eval()
    old_style = {k: (v.unsqueeze(-1) if k.startswith("pointwise") and k.endswith("weight") else v)
                 for k, v in module.state_dict().items()}
    assert old_style["pointwise_in.weight"].shape == (32, 16, 1)
    reloaded = ConvolutionModule(16, kernel_size=5).eval()
    reloaded.load_state_dict(old_style)
    x = torch.randn(2, 30, 16)
    assert torch.equal(module(x)[0], reloaded(x)[0])
