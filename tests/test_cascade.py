"""The cascaded second-pass encoder: config, joint loss, training on a frozen first pass, and the
cascade_rescoring mode in streaming."""

import pytest
import torch

import edgeasr
from edgeasr.audio.io import load_audio
from edgeasr.errors import EdgeAsrError
from edgeasr.evaluate.metrics import char_errors
from edgeasr.model.cascade import CascadeConfig, CascadeEncoder

CLIP = "samples/kokoro-male.wav"
STEPS, LR = 150, 5e-3


def test_config_is_checked():
    with pytest.raises(ValueError, match="unknown key"):
        CascadeConfig.from_dict({"layers": 2}, 64, 10)
    with pytest.raises(ValueError, match="conv_kernel"):
        CascadeConfig.from_dict({"conv_kernel": 4}, 64, 10)
    with pytest.raises(ValueError, match="divisible"):
        CascadeConfig.from_dict({"d_model": 30, "num_heads": 4}, 64, 10)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="pool"):
            CascadeConfig.from_dict({"pool": bad}, 64, 10)


def test_the_cascade_sees_the_whole_segment_and_ignores_padding():
    torch.manual_seed(0)
    cascade = CascadeEncoder(CascadeConfig.from_dict({"num_layers": 1, "d_model": 32, "num_heads": 4, "d_ff": 64,
                                                      "dropout": 0.0, "conv_kernel": 3}, 48, 12)).eval()
    x = torch.randn(1, 20, 48)
    with torch.no_grad():
        whole = cascade(x)
        changed_end = x.clone()
        changed_end[0, -1] += 5.0
        # non-causal: the last frame changes the first frame's output
        assert not torch.allclose(cascade(changed_end)[0, 0], whole[0, 0])
        padded = torch.cat([x, torch.randn(1, 7, 48)], dim=1)
        assert torch.allclose(cascade(padded, torch.tensor([20]))[:, :20], whole, atol=1e-5)
    assert whole.shape == (1, 20, 12) and torch.allclose(whole.exp().sum(-1), torch.ones(1, 20), atol=1e-5)


def test_funnel_pooling_runs_the_layers_on_group_means_and_keeps_the_output_rate():
    """``pool: 2``: the layers read the mean of every two frames (a last odd frame alone, padding
    left out), and the heads write one distribution per first-pass frame."""
    from edgeasr.model.cascade import funnel_pool

    torch.manual_seed(0)
    x = torch.randn(2, 7, 4)
    padding = torch.zeros(2, 7, dtype=torch.bool)
    padding[1, 4:] = True
    pooled, pooled_padding = funnel_pool(x, padding, 2)
    assert pooled.shape == (2, 4, 4)
    assert torch.allclose(pooled[0, 1], x[0, 2:4].mean(0)) and torch.allclose(pooled[0, 3], x[0, 6])
    assert torch.allclose(pooled[1, 1], x[1, 2:4].mean(0))
    assert pooled_padding.tolist() == [[False] * 4, [False, False, True, True]]

    cascade = CascadeEncoder(CascadeConfig.from_dict({"num_layers": 2, "d_model": 32, "num_heads": 4, "d_ff": 64,
                                                      "dropout": 0.0, "conv_kernel": 3, "pool": 2}, 48, 12)).eval()
    seen = []
    cascade.layers[0].register_forward_hook(lambda module, args, output: seen.append(args[0].shape[1]))
    x = torch.randn(1, 21, 48)
    with torch.no_grad():
        whole = cascade(x)
        assert seen == [11]  # ceil(21 / 2) frames through the layers
        padded = torch.cat([x, torch.randn(1, 6, 48)], dim=1)
        assert torch.allclose(cascade(padded, torch.tensor([21]))[:, :21], whole, atol=1e-5)
        changed_end = x.clone()
        changed_end[0, -1] += 5.0
        assert not torch.allclose(cascade(changed_end)[0, 0], whole[0, 0])  # still full context
    assert whole.shape == (1, 21, 12) and torch.allclose(whole.exp().sum(-1), torch.ones(1, 21), atol=1e-5)
    assert cascade.parameters_of() == sum(p.numel() for p in cascade.parameters())


def test_a_residual_cascade_starts_as_the_first_pass(tiny_model):
    from edgeasr.model.asr import ASRModel, ModelConfig
    from edgeasr.model.package import load_model_dir, load_weights_from

    source = load_model_dir(tiny_model)
    config = source.model.config.to_dict()
    config["cascade"] = {"num_layers": 1, "d_model": 32, "num_heads": 4, "d_ff": 64, "residual": True}
    model = ASRModel(ModelConfig.from_dict(config)).eval()
    load_weights_from(model, tiny_model)  # the cascade starts fresh beside the source's heads
    feats = torch.randn(1, 60, config["encoder"].get("input_dim", 80))
    with torch.no_grad():
        encoded, lengths = model.encode(feats, torch.tensor([60]), 4)
        assert torch.allclose(model.cascade_log_probs(encoded, lengths), model.ctc_log_probs(encoded), atol=1e-6)
    with pytest.raises(ValueError, match="first pass's CTC logits"):
        model.cascade(encoded)


@pytest.fixture(scope="module")
def cascade_model(tmp_path_factory):
    """A tiny fbank model whose first pass is trained on one clip, then frozen while a cascade
    is trained on its streaming (chunk-masked) output: the recipe's setting in small."""
    from edgeasr.audio.fbank import FbankOptions
    from edgeasr.model.asr import ASRModel, ModelConfig
    from edgeasr.model.package import StreamingDefaults, save_model_dir
    from edgeasr.text.tokenizer import Tokenizer

    text = open("samples/kokoro-male.txt").read().strip().lower()
    tokenizer = Tokenizer.train([text], kind="char")
    torch.manual_seed(0)
    config = ModelConfig.from_dict({
        "vocab_size": tokenizer.vocab_size,
        "encoder": {"d_model": 64, "num_heads": 4, "d_ff": 128, "num_blocks": 2, "dropout": 0.0},
        "decoder": {"num_layers": 0}, "ctc_weight": 1.0,
        "cascade": {"num_layers": 1, "d_model": 64, "num_heads": 4, "d_ff": 128, "dropout": 0.0, "conv_kernel": 5},
        "cascade_weight": 0.5, "static_chunk_size": 4, "dynamic_chunk": False,
    })
    model = ASRModel(config)
    features = FbankOptions()
    feats = features.compute(load_audio(CLIP, sample_rate=16000))
    tokens = torch.tensor([tokenizer.encode(text)])
    args = (feats[None], torch.tensor([feats.size(0)]), tokens, torch.tensor([tokens.size(1)]))
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    joint = []
    for _ in range(STEPS):  # jointly: both losses in the model's loss
        out = model(*args)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        joint.append(float(out["cascade"].detach()))
    model.freeze(["encoder", "ctc"])
    frozen = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("encoder.", "ctc."))}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=LR)
    for _ in range(30):  # then the cascade alone on the frozen first pass
        out = model(*args)
        optimizer.zero_grad()
        out["cascade"].backward()
        optimizer.step()
    unchanged = all(torch.equal(frozen[k], v) for k, v in model.state_dict().items() if k in frozen)
    directory = save_model_dir(tmp_path_factory.mktemp("cascade"), model.eval(), tokenizer, features,
                               StreamingDefaults(chunk_size=4, num_left_chunks=-1))
    return directory, joint, unchanged, text


def test_the_cascade_trains_jointly_and_on_a_frozen_first_pass(cascade_model):
    _, joint, unchanged, _ = cascade_model
    assert joint[-1] < 0.5 * joint[0]
    assert unchanged  # freezing the first pass leaves its weights exactly as they were


def test_cascade_rescoring_streams_and_replaces_the_first_pass_at_the_segment_end(cascade_model):
    directory, _, _, text = cascade_model
    recognizer = edgeasr.load_model(str(directory), mode="cascade_rescoring", lm=None, segment=False)
    assert recognizer.mode == "cascade_rescoring"
    samples = load_audio(CLIP, sample_rate=16000)
    session = recognizer.stream()
    partials = []
    for start in range(0, len(samples), 1234):
        partials.append(session.accept(samples[start : start + 1234]).text)
    final = session.finish()
    assert char_errors(text, final.text).rate < 40  # it learnt the clip it saw
    # the same frames offline (chunk-masked whole utterance) give the same final
    assert recognizer.transcribe(samples).text == final.text
    first = edgeasr.load_model(str(directory), mode="ctc_prefix_beam", lm=None, segment=False)
    assert first.transcribe(samples).text.startswith(partials[-1])  # partials are the first pass's
    assert [w.start for w in final.words] == sorted(w.start for w in final.words)


def test_cascade_mode_needs_a_cascade(tiny_model):
    with pytest.raises(EdgeAsrError, match="cascaded encoder"):
        edgeasr.load_model(str(tiny_model), mode="cascade_rescoring")
    with pytest.raises(EdgeAsrError, match="cascaded encoder"):
        edgeasr.load_model(str(tiny_model), backend="onnx", mode="cascade_rescoring")


def test_cascade_benchmark_writes_rows_and_a_report_section(cascade_model, tmp_path):
    from tests.benchmark_helpers import load_benchmark

    directory, *_ = cascade_model
    out, report = tmp_path / "results" / "cascade.json", tmp_path / "BENCHMARKS.md"
    benchmark = load_benchmark("cascade")
    assert benchmark.main(["--model", str(directory), "--manifest", "s=samples/samples.jsonl", "--lm", "none",
                           "--compare", f"again={directory}", "--forward-seconds", "1,3", "--forward-repeats", "3",
                           "--out", str(out), "--report", str(report)]) == 0
    import json

    result = json.loads(out.read_text())
    rows = result["sets"]["s"]["rows"]
    # no Whisper decoder in this model; the compared cascade (the same one here) in the same turns
    assert set(rows) == {"ctc_prefix_beam", "cascade_rescoring", "cascade_rescoring[again]"}
    assert rows["cascade_rescoring[again]"]["wer"] == rows["cascade_rescoring"]["wer"]
    assert all(row["rtf"] > 0 and row["end_of_segment_ms_median"] > 0 for row in rows.values())
    assert result["added_parameters"]["cascade_rescoring"] == result["added_parameters"]["cascade_rescoring[again]"] > 0
    assert set(result["cascade_forward_ms"]) == {"1", "3"}
    assert all(ms > 0 for times in result["cascade_forward_ms"].values() for ms in times.values())
    text = report.read_text()
    assert "## Cascaded second pass against the Whisper second pass" in text and "cascade_rescoring[again]" in text
    assert "networks alone" in text
    assert benchmark.main(["--model", str(directory), "--manifest", "s=samples/samples.jsonl",
                           "--compare", "nodirectory", "--out", str(out), "--report", str(report)]) == 2


def test_a_dynamic_cascade_has_one_head_per_size_sharing_its_lower_layers():
    torch.manual_seed(0)
    config = CascadeConfig.from_dict({"num_layers": 3, "d_model": 32, "num_heads": 4, "d_ff": 64, "dropout": 0.0,
                                      "conv_kernel": 3, "exits": [1, 2]}, 48, 12)
    assert config.exit_layers == [1, 2, 3]
    cascade = CascadeEncoder(config).eval()
    x = torch.randn(2, 15, 48)
    lengths = torch.tensor([15, 11])
    with torch.no_grad():
        together = cascade.forward_exits(x, lengths)
        for layers, out in zip(config.exit_layers, together):
            assert torch.allclose(cascade(x, lengths, layers=layers), out, atol=1e-6)  # one pass = each alone
        assert not torch.allclose(together[0], together[1])  # each size has its own head
        # the small sub-model does not depend on the layers above it
        before = cascade(x, lengths, layers=1)
        cascade.layers[2].linear1.weight.data.add_(1.0)
        assert torch.equal(cascade(x, lengths, layers=1), before)
    sizes = [cascade.parameters_of(n) for n in config.exit_layers]
    assert sizes[0] < sizes[1] < sizes[2] == cascade.parameters_of()
    assert sizes[2] < sum(p.numel() for p in cascade.parameters())  # the smaller heads are not part of it
    with pytest.raises(ValueError, match="sub-models of 1, 2, 3 layers"):
        cascade(x, lengths, layers=4)
    with pytest.raises(ValueError, match="exits"):
        CascadeConfig.from_dict({"num_layers": 2, "exits": [3]}, 48, 12)


def test_a_dynamic_cascade_trains_every_size_and_decodes_the_one_asked_for(tiny_model, tmp_path):
    from edgeasr.model.asr import ASRModel, ModelConfig
    from edgeasr.model.package import load_model_dir, load_weights_from, save_model_dir

    source = load_model_dir(tiny_model)
    config = source.model.config.to_dict()
    config["cascade"] = {"num_layers": 2, "d_model": 32, "num_heads": 4, "d_ff": 64, "dropout": 0.0,
                         "residual": True, "exits": [1]}
    config["cascade_weight"] = 1.0
    model = ASRModel(ModelConfig.from_dict(config))
    load_weights_from(model, tiny_model)
    model.freeze(["encoder", "ctc"])
    feats = torch.randn(1, 60, config["encoder"].get("input_dim", 80))
    tokens = torch.tensor([[1, 2, 3]])
    out = model(feats, torch.tensor([60]), tokens, torch.tensor([3]))
    out["cascade"].backward()
    # both heads get a gradient: the loss is every size's
    assert model.cascade.ctc.weight.grad.abs().sum() > 0
    assert model.cascade.exit_heads["1"]["ctc"].weight.grad.abs().sum() > 0
    directory = save_model_dir(tmp_path / "dynamic", model.eval(), source.tokenizer, source.features, source.streaming)
    samples = load_audio(CLIP, sample_rate=16000)
    texts = {layers: edgeasr.load_model(str(directory), mode="cascade_rescoring", lm=None, cascade_layers=layers)
             .transcribe(samples).text for layers in (1, 2)}
    assert all(isinstance(text, str) for text in texts.values())
    with pytest.raises(EdgeAsrError, match="sub-models of 1, 2 layers"):
        edgeasr.load_model(str(directory), mode="cascade_rescoring", lm=None, cascade_layers=3)
    with pytest.raises(EdgeAsrError, match="cascade_rescoring"):
        edgeasr.load_model(str(directory), mode="ctc_prefix_beam", lm=None, cascade_layers=1)
    # the benchmark measures each size as a mode of its own and reports the sizes side by side
    import json

    from tests.benchmark_helpers import load_benchmark

    out, report = tmp_path / "results" / "cascade.json", tmp_path / "BENCHMARKS.md"
    assert load_benchmark("cascade").main(["--model", str(directory), "--manifest", "s=samples/samples.jsonl",
                                           "--limit", "1", "--lm", "none", "--out", str(out), "--report", str(report)]) == 0
    result = json.loads(out.read_text())
    assert list(result["sets"]["s"]["rows"]) == ["ctc_prefix_beam", "cascade_rescoring@1", "cascade_rescoring"]
    assert result["added_parameters"]["cascade_rescoring@1"] < result["added_parameters"]["cascade_rescoring"]
    assert "| s | 1 of 2 layers |" in report.read_text()


def test_cascade_layers_on_a_model_without_a_cascade_is_a_one_line_cli_error(capsys):
    from edgeasr.cli import main

    status = main(["transcribe", "--model", "default", "--cascade-layers", "2", CLIP])
    err = capsys.readouterr().err
    assert status == 2
    assert "edgeasr: error: --cascade-layers applies to --mode cascade_rescoring" in err and "Traceback" not in err


@pytest.mark.parametrize("pool", [1, 2])
def test_the_cascade_runs_on_onnx_runtime_as_on_torch(tiny_model, tmp_path, pool):
    """`edgeasr export` writes one graph per cascade sub-model; ONNX Runtime's cascade_rescoring
    gives torch's final for each size, and --cascade-layers is checked at load there too; a
    funnel-pooled cascade (pool 2) exports for any segment length as well."""
    from edgeasr.export.onnx import export_onnx
    from edgeasr.model.asr import ASRModel, ModelConfig
    from edgeasr.model.package import load_model_dir, load_weights_from, save_model_dir

    source = load_model_dir(tiny_model)
    config = source.model.config.to_dict()
    config["cascade"] = {"num_layers": 2, "d_model": 32, "num_heads": 4, "d_ff": 64, "dropout": 0.0,
                         "conv_kernel": 5, "residual": True, "exits": [1], "pool": pool}
    model = ASRModel(ModelConfig.from_dict(config))
    load_weights_from(model, tiny_model)
    torch.manual_seed(4)
    with torch.no_grad():  # a residual cascade starts as the first pass: give it corrections to make
        for head in (model.cascade.ctc, model.cascade.exit_heads["1"]["ctc"]):
            head.weight.normal_(0, 0.5)
    directory = save_model_dir(tmp_path / "model", model.eval(), source.tokenizer, source.features, source.streaming)
    metadata = export_onnx(str(directory), tmp_path / "onnx")
    assert metadata["cascade"]["exit_layers"] == [1, 2]
    import onnxruntime

    graph = onnxruntime.InferenceSession(str(tmp_path / "onnx" / "cascade_2.onnx"), providers=["CPUExecutionProvider"])
    for frames in (1, 4, 9, 16):  # traced at 7 frames: odd and even lengths, and a lone frame
        segment = torch.randn(1, frames, config["encoder"]["d_model"])
        with torch.no_grad():
            expected = model.eval().cascade_log_probs(segment, None, layers=2)[0].numpy()
        assert graph.run(None, {"frames": segment.numpy()})[0] == pytest.approx(expected, abs=1e-4)
    samples = load_audio(CLIP, sample_rate=16000)
    for layers in (1, 2):
        options = {"mode": "cascade_rescoring", "lm": None, "cascade_layers": layers, "beam_size": 4}
        on_torch = edgeasr.load_model(str(directory), **options).transcribe(samples)
        on_onnx = edgeasr.load_model(str(tmp_path / "onnx"), **options).transcribe(samples)
        assert on_onnx.text == on_torch.text and on_onnx.decoded_by == "cascade"
        assert [h["score"] for h in on_onnx.nbest] == pytest.approx([h["score"] for h in on_torch.nbest], abs=1e-3)
    with pytest.raises(EdgeAsrError, match="sub-models of 1, 2 layers"):
        edgeasr.load_model(str(tmp_path / "onnx"), mode="cascade_rescoring", lm=None, cascade_layers=3)
    with pytest.raises(EdgeAsrError, match="cascade_rescoring"):
        edgeasr.load_model(str(tmp_path / "onnx"), mode="ctc_prefix_beam", lm=None, cascade_layers=1)


def test_cascade_layers_load_and_compute_as_torch_transformer_layers():
    """The cascade's own layer (exportable attention) reads checkpoints saved with
    nn.TransformerEncoderLayer (pre-norm, GELU) and computes the same, padding masked."""
    from torch import nn

    from edgeasr.model.cascade import CascadeLayer

    torch.manual_seed(0)
    saved = nn.TransformerEncoderLayer(32, 4, 64, 0.0, activation="gelu", batch_first=True, norm_first=True).eval()
    layer = CascadeLayer(32, 4, 64, 0.0).eval()
    layer.load_state_dict(saved.state_dict())
    x = torch.randn(2, 9, 32)
    padding = torch.zeros(2, 9, dtype=torch.bool)
    padding[1, 6:] = True
    with torch.no_grad():
        expected, got = saved(x, src_key_padding_mask=padding), layer(x, src_key_padding_mask=padding)
    assert torch.allclose(got[0], expected[0], atol=1e-5) and torch.allclose(got[1, :6], expected[1, :6], atol=1e-5)
