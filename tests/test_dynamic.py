"""Dynamic compute: I3D dynamic depth (utterance gates) and compute-amortized frame skipping."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from edgeasr.audio.features import FbankOptions
from edgeasr.errors import EdgeAsrError
from edgeasr.export.onnx import export_onnx
from edgeasr.model.asr import ASRModel, ModelConfig
from edgeasr.model.blocks import ConformerBlock
from edgeasr.model.dynamic import DynamicConfig, straight_through_gate
from edgeasr.model.encoder import EncoderStream
from edgeasr.model.package import StreamingDefaults, load_model_dir, load_weights_from, save_model_dir
from edgeasr.text.tokenizer import Tokenizer

KINDS = ["i3d_global", "i3d_local", "amortized"]


def dynamic_model(kind: str, seed: int = 0, **options) -> ASRModel:
    """A small model whose gate predictors are randomized, so gates open and close by input."""
    torch.manual_seed(seed)
    dynamic = {"kind": kind, "pool_frames": 4, **options}
    model = ASRModel(ModelConfig.from_dict({
        "vocab_size": 20,
        "encoder": {"d_model": 32, "num_heads": 2, "d_ff": 64, "num_blocks": 3, "dropout": 0.0, "dynamic": dynamic},
        "decoder": {"num_layers": 1, "d_ff": 64, "dropout": 0.0},
    }))
    with torch.no_grad():
        for parameter in model.encoder.dynamic.parameters():
            parameter.normal_(0.0, 1.0)
    return model.eval()


def test_config_is_checked():
    with pytest.raises(ValueError, match="kind"):
        DynamicConfig.from_dict({"kind": "sometimes"})
    with pytest.raises(ValueError, match="modules"):
        DynamicConfig.from_dict({"modules": ["conv"]})
    with pytest.raises(ValueError, match="threshold"):
        DynamicConfig.from_dict({"threshold": 1.5})
    with pytest.raises(ValueError, match="unknown dynamic option"):
        DynamicConfig.from_dict({"lambda": 1.0})
    with pytest.raises(ValueError, match="conformer"):
        ModelConfig.from_dict({"vocab_size": 10, "encoder": {"block_kind": "performer", "dynamic": {}}})


def test_straight_through_gates_are_hard_forward_and_soft_backward():
    logits = torch.linspace(-3, 3, 50, requires_grad=True)
    gates, probs = straight_through_gate(logits, temperature=1.0, training=True)
    assert set(gates.detach().unique().tolist()) <= {0.0, 1.0}
    (gates * torch.arange(50.0)).sum().backward()
    assert logits.grad.abs().sum() > 0  # the predictor learns through the hard decision
    gates, _ = straight_through_gate(logits.detach(), 1.0, training=False, threshold=0.5)
    assert torch.equal(gates, (logits.detach() >= 0).float())
    fewer, _ = straight_through_gate(logits.detach(), 1.0, training=False, threshold=0.8)
    assert fewer.sum() < gates.sum()  # a higher threshold opens fewer gates


@pytest.mark.parametrize("level", ["frame", "utterance"])
def test_skipping_computes_what_multiplying_by_the_gate_would(level):
    """Inference gathers open frames (or utterances) and runs only those; training multiplies
    every output by the gate. Both must give the same block output and the same cache."""
    torch.manual_seed(1)
    block = ConformerBlock(32, 2, 64, 15, True, 0.0, 0.0)
    x = torch.randn(2, 10, 32)
    frames = torch.ones(2, 10, dtype=torch.bool)
    if level == "frame":
        cache = torch.randn(2, 2, 3, 32)
        mask = torch.ones(2, 10, 13, dtype=torch.bool)
        mask[1, :, :2] = False
        gates = {name: (torch.rand(2, 10) > 0.5).float() for name in ("ff_in", "attention", "ff_out")}
    else:
        cache = None
        mask = torch.ones(2, 10, 10, dtype=torch.bool)
        gates = {"ff_in": torch.tensor([1.0, 0.0]), "attention": torch.tensor([0.0, 1.0]),
                 "ff_out": torch.tensor([0.0, 0.0])}
    block.train()
    multiplied, cache_a, _ = block(x, mask, frames, cache, None, gates=gates)
    block.eval()
    with torch.no_grad():
        skipped, cache_b, _ = block(x, mask, frames, cache, None, gates=gates)
    assert torch.allclose(multiplied, skipped, atol=1e-5)
    if level == "frame":
        assert torch.allclose(cache_a, cache_b)  # closed frames still supply keys and values


@pytest.mark.parametrize("kind", KINDS)
def test_streaming_equals_the_full_sequence(kind):
    model = dynamic_model(kind)
    feats = torch.randn(1, 230, 80)
    with torch.no_grad():
        full, _ = model.encoder(feats, torch.tensor([230]), chunk_size=4)
        stream = EncoderStream(model.encoder, 4)
        streamed = torch.cat([stream.accept(feats[0, :77]), stream.accept(feats[0, 77:]), stream.finish()])
    assert torch.allclose(full[0], streamed, atol=1e-4)
    opened = torch.tensor(stream.gate_counter.module_fractions())
    assert 0 < opened.mean() < 1  # some modules ran and some were skipped: the test means something


def test_i3d_global_knows_the_architecture_before_the_encoder_runs():
    model = dynamic_model("i3d_global")
    x = torch.randn(2, 20, 32)
    frames = torch.ones(2, 20, dtype=torch.bool)
    gates, _ = model.encoder.dynamic.upfront(x, frames)
    assert len(gates) == 3 and gates[0].shape == (2, 3)  # every layer's [B, modules] up front
    assert dynamic_model("i3d_local").encoder.dynamic.upfront(x, frames) is None


def test_i3d_streams_only_with_chunks_that_hold_the_pooled_prefix():
    model = dynamic_model("i3d_global", pool_frames=8)
    with pytest.raises(EdgeAsrError, match="chunk size of at least 8"):
        EncoderStream(model.encoder, 4)
    EncoderStream(model.encoder, 8)
    EncoderStream(dynamic_model("amortized", pool_frames=8).encoder, 1)  # frame gates: any chunk


def test_amortized_gates_vary_by_frame_and_padding_never_runs():
    model = dynamic_model("amortized")
    with torch.no_grad():
        model.encoder(torch.randn(2, 120, 80), torch.tensor([120, 60]))
    record = model.encoder.last_gates
    first = record.gates[0]  # [B, T, M]
    assert first.dim() == 3 and 0 < first[0].float().mean() < 1
    assert not first[1, ~record.frame_mask[1]].any()


@pytest.mark.parametrize("kind", KINDS)
def test_closed_gates_save_real_flops(kind):
    """Counted by torch from the matrix products actually executed, not from the gates."""
    feats = torch.randn(1, 120, 80)

    def flops(model):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            stream = EncoderStream(model.encoder, 4)
            stream.accept(feats[0])
            stream.finish()
        return counter.get_total_flops()

    everything = dynamic_model(kind, threshold=1e-6)
    fewer = dynamic_model(kind, threshold=0.5)
    almost_nothing = dynamic_model(kind, threshold=1 - 1e-6)
    assert flops(almost_nothing) < flops(fewer) < flops(everything)


def test_a_skipped_module_is_not_called():
    model = dynamic_model("i3d_global", threshold=1 - 1e-6)  # every gate closed
    calls = []
    hooks = [layer.ff_in.register_forward_hook(lambda *args: calls.append(1)) for layer in model.encoder.layers]
    with torch.no_grad():
        model.encoder(torch.randn(1, 60, 80), torch.tensor([60]))
    for hook in hooks:
        hook.remove()
    assert not calls


@pytest.mark.parametrize("kind", KINDS)
def test_training_adds_a_compute_cost_that_reaches_the_predictor(kind):
    model = dynamic_model(kind, cost_weight=5.0)
    model.train()
    tokens = torch.randint(1, 19, (2, 5))
    losses = model(torch.randn(2, 120, 80), torch.tensor([120, 90]), tokens, torch.tensor([5, 4]))
    assert 0 < float(losses["compute"]) < 1
    model.zero_grad()
    model.encoder.dynamic.loss(model.encoder.dynamic.cost(model.encoder.last_gates.probabilities,
                                                          model.encoder.last_gates.frame_mask)).backward()
    grads = [p.grad for p in model.encoder.dynamic.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0
    lenient = dynamic_model(kind, cost_weight=5.0, target_compute=1.0)
    assert float(lenient.encoder.dynamic.loss(torch.tensor(0.7))) == 0.0  # under budget: no penalty


def test_dynamic_model_round_trips_through_its_package(tmp_path):
    tokenizer = Tokenizer.train(["hello world"], kind="char")
    model = dynamic_model("amortized")
    config = model.config.to_dict()
    config["vocab_size"] = tokenizer.vocab_size
    model = ASRModel(ModelConfig.from_dict(config)).eval()
    with torch.no_grad():
        for parameter in model.encoder.dynamic.parameters():
            parameter.normal_()
    directory = save_model_dir(tmp_path / "m", model, tokenizer, FbankOptions(), StreamingDefaults(chunk_size=4))
    loaded = load_model_dir(directory).model
    feats = torch.randn(1, 90, 80)
    with torch.no_grad():
        a, _ = model.encoder(feats, torch.tensor([90]))
        b, _ = loaded.encoder(feats, torch.tensor([90]))
    assert torch.allclose(a, b)
    with pytest.raises(EdgeAsrError, match="dynamic"):
        export_onnx(directory, tmp_path / "onnx")


def test_layer_pruning_initializes_a_shallower_model(tiny_model):
    source = load_model_dir(tiny_model).model
    config = source.config.to_dict()
    config["encoder"]["num_blocks"] = 1
    pruned = ASRModel(ModelConfig.from_dict(config))
    load_weights_from(pruned, tiny_model, layers=[1])
    assert torch.equal(pruned.encoder.layers[0].ff_in.linear_in.weight, source.encoder.layers[1].ff_in.linear_in.weight)
    with pytest.raises(EdgeAsrError, match="init_layers"):
        load_weights_from(pruned, tiny_model, layers=[5])


def test_gates_start_fresh_when_a_float_model_initializes_a_dynamic_one(tiny_model):
    config = load_model_dir(tiny_model).model.config.to_dict()
    config["encoder"]["dynamic"] = {"kind": "i3d_local"}
    model = ASRModel(ModelConfig.from_dict(config))
    load_weights_from(model, tiny_model)  # predictors are new; everything else must match
    source = load_model_dir(tiny_model).model
    assert torch.equal(model.encoder.layers[1].attention.linear_q.weight, source.encoder.layers[1].attention.linear_q.weight)


def test_transcribe_a_dynamic_model_with_a_chosen_gate_threshold(tmp_path, tiny_model, tiny_corpus, capsys):
    from edgeasr.cli import main
    from edgeasr.data.manifest import read_manifest

    tokenizer = load_model_dir(tiny_model).tokenizer
    config = dynamic_model("i3d_global").config.to_dict()
    config["vocab_size"] = tokenizer.vocab_size
    torch.manual_seed(0)
    model = ASRModel(ModelConfig.from_dict(config)).eval()
    directory = save_model_dir(tmp_path / "m", model, tokenizer, FbankOptions(), StreamingDefaults(chunk_size=4))
    audio = str(read_manifest(tiny_corpus / "test.jsonl")[0].audio)
    assert main(["transcribe", "--model", str(directory), "--gate-threshold", "0.9", audio]) == 0
    assert main(["transcribe", "--model", str(directory), "--chunk-size", "2", audio]) == 2
    assert "chunk size of at least 4" in capsys.readouterr().err
    assert main(["transcribe", "--model", str(tiny_model), "--gate-threshold", "0.9", audio]) == 2
    assert "no gates" in capsys.readouterr().err


def test_the_stream_counts_executed_layers_in_constant_memory():
    feats = torch.randn(300, 80)
    for kind in KINDS:
        model = dynamic_model(kind)
        stream = EncoderStream(model.encoder, 4)
        stream.accept(feats)
        stream.finish()
        counter = stream.gate_counter
        _, lengths = model.encoder(feats[None], torch.tensor([300]))
        assert counter.frames == int(lengths[0])
        assert 0 < counter.executed_layers() < 3
        assert counter.open.shape == (3, 3)
    model = dynamic_model("amortized")
    with torch.no_grad():  # every gate wide open
        model.encoder.dynamic.predictor.out.weight.zero_()
        model.encoder.dynamic.predictor.out.bias.fill_(5.0)
    everything = EncoderStream(model.encoder, 4)
    everything.accept(feats[:100])
    assert everything.gate_counter.executed_layers() == pytest.approx(3.0)
