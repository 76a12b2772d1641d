"""ONNX export of the streaming encoder and decoder, and the ONNX Runtime recognizer."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgeasr.audio.features import FbankOptions
from edgeasr.cli import main
from edgeasr.data.manifest import read_manifest
from edgeasr.decoding.recognizer import DecodeOptions, Recognizer
from edgeasr.export.onnx import export_onnx
from edgeasr.export.runtime import OnnxRecognizer
from edgeasr.model.asr import ASRModel, ModelConfig
from edgeasr.model.encoder import EncoderStream
from edgeasr.model.package import StreamingDefaults, load_model_dir, save_model_dir
from edgeasr.text.tokenizer import Tokenizer

VARIANTS = {
    "conformer": {"num_blocks": 2},
    "practical": {"blocks": ["conv", "performer"], "performer_features": 8},
    "fusionformer": {"num_blocks": 2, "block_kind": "fusionformer", "final_norm": "none"},
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant_dir(request, tmp_path_factory):
    tokenizer = Tokenizer.train(["hello world", "streaming speech recognition"], kind="char")
    torch.manual_seed(0)
    encoder = {"d_model": 32, "num_heads": 2, "d_ff": 64, "dropout": 0.0, **VARIANTS[request.param]}
    model = ASRModel(ModelConfig.from_dict({"vocab_size": tokenizer.vocab_size, "encoder": encoder,
                                            "decoder": {"num_layers": 1, "d_ff": 64, "dropout": 0.0}}))
    model.train()
    with torch.no_grad():  # BatchNorm statistics away from their initial values
        model.encode(torch.randn(2, 100, 80) * 2, torch.tensor([100, 80]))
        model.ctc.bias[0] = -2.0
        model.ctc.weight.mul_(8.0)
    model.eval()
    directory = save_model_dir(tmp_path_factory.mktemp(request.param), model, tokenizer, FbankOptions(),
                               StreamingDefaults(chunk_size=4))
    out = tmp_path_factory.mktemp(f"{request.param}_onnx")
    export_onnx(directory, out, int8=True)
    return directory, out


def run_onnx_encoder(out, feats: np.ndarray) -> np.ndarray:
    """The ONNX backend's chunk runner over ``feats``: every encoder frame, the flush included."""
    runner = OnnxRecognizer.load(out).chunk_runner()
    pieces = [encoded for encoded, _ in (runner.accept(feats), runner.finish()) if encoded is not None]
    return np.concatenate(pieces)


def test_onnx_encoder_equals_the_torch_stream(variant_dir):
    directory, out = variant_dir
    model = load_model_dir(directory).model
    model.fuse()
    feats = np.random.default_rng(0).normal(size=(230, 80)).astype(np.float32) * 3
    stream = EncoderStream(model.encoder, 4)
    with torch.no_grad():
        expected = torch.cat([stream.accept(model.normalize(torch.from_numpy(feats))), stream.finish()]).numpy()
    got = run_onnx_encoder(out, feats)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < 1e-4


def test_onnx_recognizer_gives_the_torch_text(variant_dir, tiny_corpus):
    directory, out = variant_dir
    torch_rec = Recognizer.load(directory, DecodeOptions(mode="attention_rescoring"))
    onnx_rec = OnnxRecognizer.load(out)
    for utt in read_manifest(tiny_corpus / "test.jsonl")[:3]:
        expected = torch_rec.transcribe(utt.audio)
        got = onnx_rec.transcribe(utt.audio)
        assert got.text == expected.text
        assert [w.word for w in got.words] == [w.word for w in expected.words]


def test_int8_graphs_are_smaller_and_run(variant_dir, tiny_corpus):
    _, out = variant_dir
    assert (out / "encoder.int8.onnx").stat().st_size < (out / "encoder.onnx").stat().st_size
    graph = onnx.load(str(out / "encoder.int8.onnx"))
    ops = {node.op_type for node in graph.graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops
    assert "ConvInteger" not in ops  # convolutions stay float (ConvInteger is far slower here)
    result = OnnxRecognizer.load(out, int8=True).transcribe(read_manifest(tiny_corpus / "test.jsonl")[0].audio)
    assert isinstance(result.text, str)


def test_metadata_travels_in_the_graph_and_next_to_it(variant_dir):
    _, out = variant_dir
    meta = json.loads((out / "metadata.json").read_text())
    props = {p.key: json.loads(p.value) for p in onnx.load(str(out / "encoder.onnx")).metadata_props}
    assert props["chunk_size"] == meta["chunk_size"] == 4
    assert props["window"] == meta["window"] and props["layers"] == meta["layers"]
    session = ort.InferenceSession(str(out / "encoder.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    assert names[0] == "feats" and len(names) == 1 + sum(("att" in e) + ("cnn" in e) for e in meta["layers"])


def test_limited_left_context_keeps_onnx_caches_bounded(tiny_model, tmp_path):
    out = tmp_path / "onnx"
    export_onnx(tiny_model, out, chunk_size=4, num_left_chunks=2)
    rec = OnnxRecognizer.load(out, mode="ctc_prefix_beam")
    session = rec.stream()
    rng = np.random.default_rng(0)
    for _ in range(20):
        session.accept(rng.normal(scale=0.1, size=3200).astype(np.float32))
    att = [c for name, c in zip(rec.cache_inputs, session.runner.caches) if name.startswith("att")]
    assert att and all(c.shape[2] <= 8 for c in att)


def test_export_command_and_its_errors(tiny_model, tmp_path, capsys):
    assert main(["export", "--model", str(tiny_model), "--out", str(tmp_path / "x")]) == 0
    assert "encoder.onnx" in capsys.readouterr().out
    assert main(["export", "--model", str(tiny_model), "--out", str(tmp_path / "y"), "--chunk-size", "0"]) == 2
    assert "chunk size of at least 1" in capsys.readouterr().err
    with pytest.raises(Exception, match="metadata.json"):
        OnnxRecognizer.load(tmp_path)


def test_transcribe_runs_an_onnx_export_directory(tiny_model, tiny_corpus, tmp_path, capsys):
    out = tmp_path / "onnx"
    export_onnx(tiny_model, out, int8=True)
    audio = read_manifest(tiny_corpus / "test.jsonl")[0].audio
    assert main(["transcribe", "--model", str(tiny_model), "--mode", "ctc_prefix_beam", audio]) == 0
    torch_text = capsys.readouterr().out
    assert main(["transcribe", "--model", str(out), "--mode", "ctc_prefix_beam", audio]) == 0
    assert capsys.readouterr().out == torch_text
    assert main(["transcribe", "--model", str(out), "--int8", audio]) == 0
    assert main(["transcribe", "--model", str(out), "--chunk-size", "8", audio]) == 2
    assert "exported with" in capsys.readouterr().err


def test_a_quantized_model_exports_from_its_rounded_weights(tiny_model, tiny_corpus, tmp_path):
    from edgeasr.quant.fake_quant import quantize_weight
    from edgeasr.quant.qat import quantized_layers

    quantized = tmp_path / "q"
    assert main(["quantize", "--model", str(tiny_model), "--out", str(quantized), "--calib",
                 str(tiny_corpus / "train.jsonl"), "--limit", "3", "--act-bits", "none"]) == 0
    out = tmp_path / "onnx"
    meta = export_onnx(quantized, out, int8=True)
    assert meta["source_quantization"]["weight_bits"] == 8
    # weight-only quantization: the float graph computes exactly what the torch model computes
    model = load_model_dir(quantized).model
    feats = np.random.default_rng(1).normal(size=(150, 80)).astype(np.float32)
    stream = EncoderStream(model.encoder, 4)
    with torch.no_grad():
        expected = torch.cat([stream.accept(model.normalize(torch.from_numpy(feats))), stream.finish()]).numpy()
    assert np.abs(run_onnx_encoder(out, feats) - expected).max() < 1e-4
    # the int8 graph stores those 8-bit codes per channel: same weights
    graph = onnx.load(str(out / "encoder.int8.onnx"))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in graph.graph.initializer}
    name = "encoder.layers.0.ff_in.linear_in"
    codes, _ = quantize_weight(model.get_submodule(name).weight, 8)
    int8_weights = [v for k, v in inits.items() if v.dtype == np.int8 and v.shape == codes.t().shape]
    assert any(np.array_equal(v, codes.t().numpy()) for v in int8_weights)
    assert quantized_layers(model)


def test_compacted_graph_computes_the_same_in_far_fewer_bytes(variant_dir):
    from edgeasr.export.onnx import compact_initializers

    _, out = variant_dir
    graph = onnx.load(str(out / "encoder.onnx"))
    compact_initializers(graph)
    floats = [i for i in graph.graph.initializer
              if i.data_type == onnx.TensorProto.FLOAT and np.prod(i.dims) >= 16]
    # every sizeable float32 tensor is now int8 codes or float16, but for per-channel conv scales
    assert all(all(size == 1 for size in i.dims[1:]) for i in floats)
    conv_codes = [i for i in graph.graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert conv_codes  # convolution weights as codes with per-channel scales
    assert graph.ByteSize() < 0.6 * onnx.load(str(out / "encoder.onnx")).ByteSize()
    onnx.checker.check_model(graph)

    def run(model_bytes):
        session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(0)
        feeds = {}
        window = json.loads((out / "metadata.json").read_text())["window"]
        for value in session.get_inputs():
            shape = [window if size == "window" else 3 if size == "cached" else size for size in value.shape]
            feeds[value.name] = rng.standard_normal(shape).astype(np.float32)
        return session.run(["encoded"], feeds)[0]

    before = run(onnx.load(str(out / "encoder.onnx")).SerializeToString())
    after = run(graph.SerializeToString())
    assert np.abs(after - before).max() < 0.05 * np.abs(before).max()


def test_onnx_runtime_runs_where_torch_cannot_be_imported(variant_dir, tiny_corpus):
    import subprocess
    import sys

    directory, out = variant_dir
    audio = str(read_manifest(tiny_corpus / "test.jsonl")[0].audio)
    script = (
        "import sys, json\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('torch is blocked in this test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from edgeasr.export.runtime import OnnxRecognizer\n"
        f"print(json.dumps(OnnxRecognizer.load({str(out)!r}).transcribe({audio!r}).text))\n"
        "assert 'torch' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    expected = Recognizer(load_model_dir(directory), DecodeOptions(chunk_size=4)).transcribe(audio).text
    assert json.loads(done.stdout) == expected
