"""Quantization-aware training: fake-quant layers built from config, mixed precision, reload."""

import subprocess
import sys

import pytest
import torch
from torch import nn

from edgeasr.audio.features import FbankOptions
from edgeasr.model.asr import ASRModel, ModelConfig
from edgeasr.model.package import StreamingDefaults, load_model_dir, save_model_dir
from edgeasr.quant.qat import FakeQuantConv1d, FakeQuantLinear, LayerQuant, QuantConfig, prepare_qat, quantized_layers
from edgeasr.text.tokenizer import Tokenizer

ENCODER = {"d_model": 32, "num_heads": 2, "d_ff": 64, "num_blocks": 2, "dropout": 0.0}


def float_model(seed: int = 0, **extra) -> ASRModel:
    torch.manual_seed(seed)
    return ASRModel(ModelConfig.from_dict({"vocab_size": 12, "encoder": ENCODER,
                                           "decoder": {"num_layers": 1, "d_ff": 64, "dropout": 0.0}, **extra}))


def batch():
    generator = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 120, 80, generator=generator)
    tokens = torch.tensor([[2, 3, 4, 5], [6, 7, -1, -1]])
    return feats, torch.tensor([120, 90]), tokens, torch.tensor([4, 2])


def test_prepare_qat_swaps_linears_and_convs_and_shares_the_float_weights():
    model = float_model()
    weight = model.encoder.layers[0].ff_in.linear_in.weight
    swapped = prepare_qat(model, QuantConfig(skip=["decoder.*"]))
    layer = model.encoder.layers[0].ff_in.linear_in
    assert isinstance(layer, FakeQuantLinear) and layer.weight is weight
    assert isinstance(model.encoder.layers[0].conv.depthwise, FakeQuantConv1d)
    assert not any(isinstance(m, FakeQuantLinear) for m in model.decoder.modules())
    assert swapped == len(quantized_layers(model)) > 20


def test_mixed_precision_patterns_last_match_wins():
    config = QuantConfig(weight_bits=8, layers={"encoder.layers.*": {"weight_bits": 4},
                                                "encoder.layers.1.ff_*": {"weight_bits": 2, "act_bits": None}})
    assert config.for_layer("ctc").weight_bits == 8
    assert config.for_layer("encoder.layers.0.attention.linear_q").weight_bits == 4
    spec = config.for_layer("encoder.layers.1.ff_out.linear_in")
    assert spec.weight_bits == 2 and spec.act_bits is None
    model = float_model()
    prepare_qat(model, config)
    bits = quantized_layers(model)
    assert bits["encoder.layers.1.ff_out.linear_in"].weight_bits == 2
    assert bits["encoder.layers.0.conv.pointwise_in"].weight_bits == 4


def test_bad_quant_config_is_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="weight bits"):
        QuantConfig.from_dict({"weight_bits": 3})
    with pytest.raises(ValueError, match="unknown quant option"):
        QuantConfig.from_dict({"bitz": 4})
    with pytest.raises(ValueError, match="8 or 4 bits or not at all"):
        QuantConfig.from_dict({"act_bits": 6})


@pytest.mark.parametrize("bits,tolerance", [(8, 0.05), (4, 0.6)])
def test_fake_quant_model_stays_close_to_float_and_trains(bits, tolerance):
    reference = float_model().eval()
    model = float_model()
    model.load_state_dict(reference.state_dict())
    prepare_qat(model, QuantConfig(weight_bits=bits))
    model.train()
    feats, lengths, tokens, token_lengths = batch()
    with torch.no_grad():
        model(feats, lengths, tokens, token_lengths)  # one pass to set activation ranges
    model.eval()
    with torch.no_grad():
        expected, _ = reference.encode(feats, lengths)
        got, _ = model.encode(feats, lengths)
    relative = ((got - expected).norm() / expected.norm()).item()
    assert 0 < relative < tolerance
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        loss = model(feats, lengths, tokens, token_lengths)["loss"]
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is not None for n, p in model.named_parameters() if "encoder.layers" in n and p.requires_grad)
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_quantized_model_reloads_in_a_fresh_process_with_the_same_outputs(tmp_path):
    tokenizer = Tokenizer.train(["hello world"], kind="char")
    torch.manual_seed(0)
    config = {"vocab_size": tokenizer.vocab_size, "encoder": ENCODER,
              "decoder": {"num_layers": 1, "d_ff": 64, "dropout": 0.0},
              "quantization": {"weight_bits": 4, "layers": {"ctc": {"weight_bits": 8}}}}
    model = ASRModel(ModelConfig.from_dict(config))
    feats, lengths, tokens, token_lengths = batch()
    model.train()
    with torch.no_grad():
        model(feats, lengths, tokens, token_lengths)
    model.eval()
    directory = save_model_dir(tmp_path / "q", model, tokenizer, FbankOptions(), StreamingDefaults(chunk_size=4))
    with torch.no_grad():
        expected = model.ctc_log_probs(model.encode(feats, lengths)[0])
    torch.save(feats, tmp_path / "feats.pt")
    script = (
        "import sys, torch\n"
        "from edgeasr.model.package import load_model_dir\n"
        f"m = load_model_dir({str(directory)!r}).model\n"
        f"f = torch.load({str(tmp_path / 'feats.pt')!r})\n"
        "with torch.no_grad():\n"
        "    out = m.ctc_log_probs(m.encode(f, torch.tensor([120, 90]))[0])\n"
        f"torch.save(out, {str(tmp_path / 'out.pt')!r})\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)
    assert torch.equal(torch.load(tmp_path / "out.pt"), expected)
    reloaded = load_model_dir(directory).model
    assert quantized_layers(reloaded) == quantized_layers(model)
    assert not any(type(m) is nn.Linear for m in reloaded.encoder.modules())


def test_native_mode_computes_on_integer_codes_and_still_trains():
    """Native QAT: the forward value comes from int8 x int8 -> int32 products; gradients flow."""
    from edgeasr.quant.integer import IntegerLinear

    torch.manual_seed(0)
    native, emulated = FakeQuantLinear(40, 16), FakeQuantLinear(40, 16)
    emulated.load_state_dict(native.state_dict())
    native._setup(LayerQuant(4, 8, native=True))
    emulated._setup(LayerQuant(4, 8, native=False))
    x = torch.randn(30, 40) * 3
    for layer in (native, emulated):
        layer.train()
        layer(x)
    y_native, y_emulated = native(x), emulated(x)
    step = native.output_quant.qparams()[0].item()
    assert (y_native - y_emulated).abs().max().item() <= step * 1.0001  # same grid, float vs int sums
    y_native.sum().backward()
    assert native.weight.grad is not None and native.weight.grad.abs().sum() > 0
    native.eval()
    serving = IntegerLinear(native)
    with torch.no_grad():
        assert (serving(x) - native(x)).abs().max().item() <= step * 1.0001


def test_native_flag_travels_through_the_config():
    assert QuantConfig.from_dict({"native": True}).for_layer("ctc").native


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_model_files_store_packed_codes_and_reload_them_exactly(bits, tmp_path):
    from edgeasr.quant.fake_quant import quantize_weight

    tokenizer = Tokenizer.train(["hello world"], kind="char")
    # Big enough that the file's per-tensor overhead does not hide the payload.
    encoder = {**ENCODER, "d_model": 128, "d_ff": 512}
    base = {"vocab_size": tokenizer.vocab_size, "encoder": encoder, "decoder": {"num_layers": 0}}
    torch.manual_seed(0)
    float_model = ASRModel(ModelConfig.from_dict(base)).eval()
    torch.manual_seed(0)
    model = ASRModel(ModelConfig.from_dict({**base, "quantization": {"weight_bits": bits, "act_bits": None}})).eval()
    float_dir = save_model_dir(tmp_path / "float", float_model, tokenizer, FbankOptions())
    quant_dir = save_model_dir(tmp_path / "quant", model, tokenizer, FbankOptions())
    float_bytes = (float_dir / "model.pt").stat().st_size
    quant_bytes = (quant_dir / "model.pt").stat().st_size
    assert quant_bytes < float_bytes * (bits / 32 + 0.15)  # codes + per-channel scales + float rest
    reloaded = load_model_dir(quant_dir).model
    for name in quantized_layers(model):
        original = quantize_weight(model.get_submodule(name).weight, bits)
        again = quantize_weight(reloaded.get_submodule(name).weight, bits)
        assert torch.equal(original[0], again[0])
        assert torch.allclose(original[1], again[1], rtol=1e-6, atol=0)
    feats, lengths, _, _ = batch()
    with torch.no_grad():
        a = model.ctc_log_probs(model.encode(feats, lengths)[0])
        b = reloaded.ctc_log_probs(reloaded.encode(feats, lengths)[0])
    assert (a - b).abs().max().item() < 1e-5


def test_tanh_transform_is_near_identity_for_small_weights_and_spreads_heavy_tails():
    from edgeasr.quant.fake_quant import quantize_weight
    from edgeasr.quant.qat import transform_weight

    small = torch.randn(8, 50) * 0.01
    assert torch.allclose(transform_weight(small, "tanh"), small, rtol=2e-3, atol=1e-6)
    torch.manual_seed(0)
    heavy = torch.distributions.StudentT(2.0).sample((16, 400)) * 0.5
    plain_codes, _ = quantize_weight(heavy, 4)
    tanh_codes, _ = quantize_weight(transform_weight(heavy, "tanh"), 4)
    assert (tanh_codes != 0).float().mean() > (plain_codes != 0).float().mean()
    assert transform_weight(heavy, "tanh").abs().amax(1).allclose(heavy.abs().amax(1))


def test_grid_regularizer_is_zero_on_the_grid_and_training_lowers_it():
    from edgeasr.quant.fake_quant import fake_quantize_weight
    from edgeasr.quant.qat import quantization_regularizer

    model = float_model()
    prepare_qat(model, QuantConfig(weight_bits=4, act_bits=None, skip=["decoder.*"]))
    layer = model.encoder.layers[0].ff_in.linear_in
    with torch.no_grad():
        layer.weight.copy_(fake_quantize_weight(layer.effective_weight(), 4))
    assert layer.grid_distance().item() < 1e-4
    before = quantization_regularizer(model).item()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    for _ in range(20):
        optimizer.zero_grad()
        quantization_regularizer(model).backward()
        optimizer.step()
    assert quantization_regularizer(model).item() < before


def test_regularizer_enters_the_training_loss_when_configured():
    model = float_model(quantization={"weight_bits": 4, "act_bits": None, "regularizer_weight": 0.5,
                                      "skip": ["decoder.*"]})
    model.train()
    losses = model(*batch())
    assert "quant_reg" in losses and losses["quant_reg"].item() > 0
    assert "quant_reg" not in float_model()(*batch())


def test_tanh_model_reloads_from_packed_codes_with_the_same_outputs(tmp_path):
    tokenizer = Tokenizer.train(["hello world"], kind="char")
    torch.manual_seed(0)
    config = {"vocab_size": tokenizer.vocab_size, "encoder": ENCODER, "decoder": {"num_layers": 0},
              "quantization": {"weight_bits": 4, "act_bits": None, "weight_transform": "tanh"}}
    model = ASRModel(ModelConfig.from_dict(config)).eval()
    with torch.no_grad():
        for layer in quantized_layers(model):
            model.get_submodule(layer).weight.mul_(20)  # large weights: tanh really squashes them
    directory = save_model_dir(tmp_path / "t", model, tokenizer, FbankOptions())
    reloaded = load_model_dir(directory).model
    feats, lengths, _, _ = batch()
    with torch.no_grad():
        a = model.ctc_log_probs(model.encode(feats, lengths)[0])
        b = reloaded.ctc_log_probs(reloaded.encode(feats, lengths)[0])
    assert (a - b).abs().max().item() < 1e-4


@pytest.mark.parametrize("encoder", [
    {"blocks": ["conv", "performer"], "performer_features": 8},
    {"num_blocks": 2, "block_kind": "fusionformer", "final_norm": "none"},
    {"num_blocks": 2},
], ids=["practical", "fusionformer", "conformer"])
def test_qat_trains_and_streams_with_every_encoder_variant(encoder):
    from edgeasr.model.asr import ASRModel, ModelConfig
    from edgeasr.model.encoder import EncoderStream
    from edgeasr.quant.qat import quantized_layers

    torch.manual_seed(0)
    model = ASRModel(ModelConfig.from_dict({
        "vocab_size": 12, "encoder": {"d_model": 32, "num_heads": 2, "d_ff": 64, "dropout": 0.0, **encoder},
        "decoder": {"num_layers": 1, "d_ff": 64, "dropout": 0.0},
        "quantization": {"weight_bits": 4, "act_bits": 8},
    }))
    layers = quantized_layers(model)
    assert any(name.startswith("encoder.layers.") for name in layers)
    model.train()
    losses = model(torch.randn(2, 90, 80), torch.tensor([90, 70]), torch.randint(1, 11, (2, 4)), torch.tensor([4, 3]))
    losses["loss"].backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if n.startswith("encoder.layers.0.") and p.requires_grad)
    model.eval()
    model.fuse()
    feats = torch.randn(1, 150, 80)
    with torch.no_grad():
        full, _ = model.encoder(feats, torch.tensor([150]), chunk_size=4)
        stream = EncoderStream(model.encoder, 4)
        streamed = torch.cat([stream.accept(feats[0]), stream.finish()])
    assert (full[0] - streamed).abs().max() < 1e-3


def test_a_quantized_model_with_pretrained_parts_reloads_exactly(whisper_imported, tmp_path):
    """QAT of a model whose frozen parts load from the pretrained package (the transducer QAT
    recipes): the file holds the packed codes of what changed and leaves out what did not; it
    loads back to the same outputs (once, small tensors were merged by a layout that the left-out
    tensors shifted, and the model would not load)."""
    import torch

    from edgeasr.model.asr import ASRModel, ModelConfig
    from edgeasr.model.package import load_model_dir, load_weights_from, save_model_dir

    source = load_model_dir(whisper_imported)
    config = source.model.config.to_dict()
    config["quantization"] = {"weight_bits": 4, "act_bits": 8, "skip": ["whisper_decoder.*"]}
    model = ASRModel(ModelConfig.from_dict(config))
    load_weights_from(model, source)
    with torch.no_grad():  # one fine-tuned layer (stored as codes), the others as imported (left out)
        model.encoder.layers[0].ffn[0].weight.add_(0.01)
    feats = torch.randn(1, 200, 80)
    model.train()
    model.encode(feats, torch.tensor([200]), 16, -1)  # the activation ranges see data once
    model.eval()
    saved = save_model_dir(tmp_path / "qat", model, source.tokenizer, source.features, source.streaming,
                           pretrained=source.pretrained, whisper_dir=source.whisper_dir)
    reloaded = load_model_dir(saved).model
    with torch.no_grad():
        expected = model.ctc_log_probs(model.encode(feats, torch.tensor([200]), 16, -1)[0])
        got = reloaded.ctc_log_probs(reloaded.encode(feats, torch.tensor([200]), 16, -1)[0])
    assert torch.allclose(got, expected, atol=1e-4)
