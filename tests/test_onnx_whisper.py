"""The default (Whisper-encoder) model exported to ONNX and run on ONNX Runtime without torch:
the streaming first pass gives the same log-probabilities as the torch stream, and the second
pass (full-context re-encoding, Whisper's decoder step by step in the joint search) the same
encodings, the same proposals and the same text."""

from pathlib import Path

import numpy as np
import pytest

import edgeasr
from edgeasr.audio.io import load_audio
from edgeasr.errors import EdgeAsrError
from edgeasr.export.onnx import export_onnx

CLIPS = sorted(Path("samples").glob("*.wav"))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("whisper-onnx")
    meta = export_onnx("default", out, int4=True)  # float, int8 and 4-bit decoder graphs
    assert meta["format"] == "edgeasr-onnx-whisper-streaming"
    return out


def stream_log_probs(recognizer, samples, step):
    """CTC log-probs of a stream fed in ``step``-sample pieces through the backend's runner."""
    runner, features, out = recognizer.chunk_runner(), recognizer.frontend.stream(), []
    for start in range(0, len(samples), step):
        out.append(runner.accept(features.accept(samples[start : start + step]))[1])
    out += [runner.accept(features.finish())[1], runner.finish()[1]]
    return np.concatenate([np.asarray(x) for x in out if x is not None])


def test_onnx_first_pass_equals_the_torch_stream(exported):
    torch_asr = edgeasr.load_model("default", mode="ctc_prefix_beam")
    onnx_asr = edgeasr.load_model(str(exported), mode="ctc_prefix_beam")
    assert type(onnx_asr).__name__ == "OnnxRecognizer" and onnx_asr.mode == "ctc_prefix_beam"
    for clip, step in zip(CLIPS, (777, 1600, 16000)):  # odd piece sizes: windows span the pieces
        samples = load_audio(clip)
        reference = stream_log_probs(torch_asr, samples, step)
        got = stream_log_probs(onnx_asr, samples, step)
        assert got.shape == reference.shape  # every encoder frame, the last partial chunk too
        assert np.abs(got - reference).max() < 2e-3
        assert onnx_asr.transcribe(samples).text == torch_asr.transcribe(samples).text


def test_onnx_int8_first_pass_and_the_api(exported, tmp_path, monkeypatch):
    from edgeasr.evaluate.metrics import word_errors

    int8 = edgeasr.load_model(str(exported), int8=True, mode="ctc_prefix_beam")
    errors = words = 0
    for clip in CLIPS:
        counts = word_errors(clip.with_suffix(".txt").read_text(), int8.transcribe(str(clip)).text)
        errors, words = errors + counts.errors, words + counts.reference_length
    assert errors / words < 0.35  # the first pass alone, int8: still reads the clips
    with pytest.raises(EdgeAsrError, match="torch backend"):
        edgeasr.load_model(str(exported), second_pass_search="rescore")
    monkeypatch.setenv("EDGEASR_CACHE", str(tmp_path / "cache"))
    cached = edgeasr.load_model("default", backend="onnx")  # exported once into the cache
    assert cached.transcribe(str(CLIPS[0])).text == edgeasr.load_model(str(exported)).transcribe(str(CLIPS[0])).text


@pytest.fixture(scope="module")
def torch_default():
    return edgeasr.load_model("default")


def test_onnx_second_pass_graphs_equal_torch(exported, torch_default):
    """encoder_full.onnx equals the torch full-context encoder; decoder_step.onnx proposes the
    same tokens with the same log-probabilities as the (float) torch decoder, step after step."""
    import torch

    from edgeasr.model.whisper import TorchDecoderSteps

    onnx_asr = edgeasr.load_model(str(exported))
    assert onnx_asr.mode == "whisper_rescoring"
    model = torch_default.model
    samples = load_audio(CLIPS[0])
    mel = torch_default.frontend.compute(samples)
    encoded_ort, log_probs_ort, own_ort = onnx_asr.second_pass.backend.encode(np.asarray(mel))
    with torch.no_grad():
        encoded, _ = model.encoder(model.normalize(mel)[None], torch.tensor([mel.shape[0]]), 0, -1)
        log_probs = model.ctc_log_probs(encoded)[0].numpy()
    assert encoded_ort.shape == tuple(encoded.shape)
    assert np.abs(encoded_ort - encoded.numpy()).max() < 2e-3
    assert np.abs(log_probs_ort - log_probs).max() < 2e-3
    assert np.array_equal(own_ort, encoded_ort[0])  # no padded window: the segment's own frames are these
    decoder = model.whisper_decoder
    decoder.use_int8(False)  # the float graph against the float decoder
    try:
        steps = {"torch": TorchDecoderSteps(decoder), "onnx": onnx_asr.second_pass.backend.steps}
        bias = np.zeros(steps["onnx"].vocab_size, dtype=np.float32)
        bias[:100] = -np.inf  # never proposed: must never come out
        tokens = np.array([torch_default.packaged.whisper_prompt] * 2, dtype=np.int64)
        state = {name: (s.cross(encoded if name == "torch" else encoded_ort), None) for name, s in steps.items()}
        offset = 0
        for _ in range(4):
            out = {}
            for name, s in steps.items():
                cross, caches = state[name]
                values, chosen, eot, caches = s.step(tokens, cross, caches, offset, bias, 5)
                state[name] = (cross, s.select(caches, np.array([1, 0])))  # beams swap: caches follow
                out[name] = (values, chosen, eot)
            assert (out["onnx"][1] == out["torch"][1]).all()
            assert (out["onnx"][1] >= 100).all()
            assert np.abs(out["onnx"][0] - out["torch"][0]).max() < 2e-3
            assert np.abs(out["onnx"][2] - out["torch"][2]).max() < 2e-3
            offset += tokens.shape[1]
            tokens = out["torch"][1][::-1, :1].copy()  # each beam goes on with its best token
    finally:
        decoder.use_int8()


def test_onnx_two_pass_transcribes_like_torch_without_torch(exported, torch_default, tmp_path):
    """The exported default decodes in whisper_rescoring by default, its text as torch's; the
    int8 graphs too; and the whole two-pass path runs in a process where torch cannot load."""
    import subprocess
    import sys

    from edgeasr.evaluate.metrics import word_errors

    float_asr = edgeasr.load_model(str(exported))
    int8_asr = edgeasr.load_model(str(exported), int8=True)
    counts = {"torch": [0, 0], "float": [0, 0], "int8": [0, 0]}
    for clip in CLIPS:
        reference = clip.with_suffix(".txt").read_text()
        for name, asr in (("torch", torch_default), ("float", float_asr), ("int8", int8_asr)):
            c = word_errors(reference, asr.transcribe(str(clip)).text)
            counts[name][0] += c.errors
            counts[name][1] += c.reference_length
    wer = {name: errors / words for name, (errors, words) in counts.items()}
    assert wer["float"] <= wer["torch"] + 0.02 and wer["int8"] <= wer["torch"] + 0.05, wer
    assert wer["int8"] < 0.15, wer  # the two passes read the clips: the first pass alone is ~0.3
    script = (
        "import sys; sys.modules['torch'] = None\n"
        "import edgeasr\n"
        f"r = edgeasr.load_model({str(exported)!r}, int8=True)\n"
        f"print(r.mode, '|', r.transcribe({str(CLIPS[0].resolve())!r}).text)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    mode, text = done.stdout.strip().split(" | ")
    assert mode == "whisper_rescoring" and text == int8_asr.transcribe(str(CLIPS[0])).text


def test_a_first_pass_only_export_says_how_to_get_the_second(exported, tmp_path):
    """Exports made before the second pass was exported load (first pass) and name the fix."""
    import json
    import shutil

    old = tmp_path / "old-export"
    shutil.copytree(exported, old)
    meta = json.loads((old / "metadata.json").read_text())
    meta.pop("second_pass")
    (old / "metadata.json").write_text(json.dumps(meta))
    assert edgeasr.load_model(str(old)).mode == "ctc_prefix_beam"
    with pytest.raises(EdgeAsrError, match="re-export"):
        edgeasr.load_model(str(old), mode="whisper_rescoring")


def test_int4_decoder_graphs_are_really_4_bit_and_still_read(exported):
    """--int4: the decoder graphs' weights are 4-bit blocks (MatMulNBits, GatherBlockQuantized), under
    half the int8 graph's bytes, and the two passes still read the clips as the int8 graphs do."""
    import onnx

    from edgeasr.evaluate.metrics import word_errors

    step = onnx.load(str(exported / "decoder_step.int4.onnx"), load_external_data=False)
    ops = {node.op_type for node in step.graph.node}
    assert {"MatMulNBits", "GatherBlockQuantized"} <= ops and "MatMulInteger" not in ops
    from edgeasr.export.shared_weights import graph_bytes

    assert graph_bytes([exported / "decoder_step.int4.onnx"]) < 0.5 * graph_bytes([exported / "decoder_step.int8.onnx"])
    assert not (exported / "encoder.int4.onnx").exists()  # a float encoder stays int8 (4-bit RTN costs WER)
    int4 = edgeasr.load_model(str(exported), int4=True)
    assert int4.encoder_graph == "encoder.int8.onnx"
    int8 = edgeasr.load_model(str(exported), int8=True)
    assert int4.precision == "int4" and int4.mode == "whisper_rescoring"
    errors = {"int4": 0, "int8": 0}
    words = 0
    for clip in CLIPS:
        reference = clip.with_suffix(".txt").read_text()
        words += word_errors(reference, int8.transcribe(str(clip)).text).reference_length
        errors["int4"] += word_errors(reference, int4.transcribe(str(clip)).text).errors
        errors["int8"] += word_errors(reference, int8.transcribe(str(clip)).text).errors
    assert errors["int4"] / words < 0.15 and errors["int4"] <= errors["int8"] + 0.05 * words, errors


def test_int4_needs_the_graphs(tmp_path):
    """Asking an export without 4-bit graphs for them names the fix in one line."""
    out = tmp_path / "fbank-export"
    export_onnx("models/u2-baseline", out, int8=True)
    with pytest.raises(EdgeAsrError, match="--int4"):
        edgeasr.load_model(str(out), int4=True)
    with pytest.raises(EdgeAsrError, match="backend='onnx'"):
        edgeasr.load_model("models/u2-baseline", int4=True)


def test_the_server_runs_both_passes_on_onnx_runtime(exported):
    """`edgeasr serve --backend onnx --int8` on the default: finals come from the ONNX second pass
    (on a worker, beside the stream) and say what the recognizer says of the whole clip."""
    import asyncio

    from edgeasr.serve.client import stream_audio
    from edgeasr.serve.server import ServerLimits
    from serve_helpers import RunningServer

    recognizer = edgeasr.load_model(str(exported), int8=True)
    samples = np.round(load_audio(CLIPS[0]) * 32767) / 32767  # what 16-bit PCM carries
    server = RunningServer(recognizer, ServerLimits())
    try:
        events = asyncio.run(stream_audio(server.url, samples, speed=0))
    finally:
        server.close()
    finals = [e for e in events if e["type"] == "final"]
    assert events[-1]["type"] == "done" and finals
    assert " ".join(e["text"] for e in finals if e["text"]) == recognizer.transcribe(samples.astype(np.float32)).text


@pytest.fixture(scope="module")
def four_bit_default(tmp_path_factory):
    """The default with 4-bit encoder weights (8-bit stem and CTC head), activation ranges seen on
    the sample clips: the model a W4A8 QAT recipe packages, without the training."""
    import torch

    from edgeasr.model.asr import ASRModel, ModelConfig
    from edgeasr.model.package import load_model_dir, load_weights_from, save_model_dir

    source = load_model_dir("models/default")
    config = source.model.config.to_dict()
    config["quantization"] = {"weight_bits": 4, "act_bits": 8, "skip": ["whisper_decoder.*"],
                              "layers": {"encoder.conv*": {"weight_bits": 8}, "ctc*": {"weight_bits": 8}}}
    model = ASRModel(ModelConfig.from_dict(config))
    load_weights_from(model, source)
    model.train()
    with torch.no_grad():
        for clip in CLIPS:
            feats = source.features.compute(load_audio(clip))
            model.encode(feats[None], torch.tensor([feats.size(0)]), 32, -1)
    model.eval()
    folder = tmp_path_factory.mktemp("w4")
    directory = save_model_dir(folder / "model", model, source.tokenizer, source.features, source.streaming,
                               pretrained=source.pretrained, whisper_dir=source.whisper_dir)
    meta = export_onnx(str(directory), folder / "onnx", int4=True)
    return model, directory, folder / "onnx", meta


def test_a_4_bit_model_exports_its_own_codes_as_matmul_nbits(four_bit_default):
    """--int4 on a model trained to 4 bits: both encoder graphs carry exactly the model's 4-bit
    codes (unpacked from MatMulNBits), the 8-bit CTC head stays int8, and the graph is far smaller."""
    import onnx
    from onnx import numpy_helper

    from edgeasr.export.int4 import unpack_codes
    from edgeasr.quant.fake_quant import quantize_weight
    from edgeasr.quant.qat import quantized_layers

    model, _, out, meta = four_bit_default
    assert meta["int4_encoder"] is True and meta["source_quantization"]["weight_bits"] == 4
    expected = {}
    for name, spec in quantized_layers(model).items():
        if spec.weight_bits == 4:
            codes, _ = quantize_weight(model.get_submodule(name).effective_weight(), 4)
            expected[name] = codes.numpy()
    assert expected and not any(name.startswith("ctc") for name in expected)
    for graph_name in ("encoder.int4.onnx", "encoder_full.int4.onnx"):
        graph = onnx.load(str(out / graph_name))
        tensors = {t.name: numpy_helper.to_array(t) for t in graph.graph.initializer}
        nbits = [node for node in graph.graph.node if node.op_type == "MatMulNBits"]
        stored = [unpack_codes(tensors[node.input[1]].reshape(tensors[node.input[1]].shape[0], -1)) for node in nbits]
        assert len(nbits) == len(expected)
        for name, codes in expected.items():  # every 4-bit layer's codes, bit for bit
            assert any(s.shape == codes.shape and np.array_equal(s, codes) for s in stored), name
        assert any(node.op_type == "MatMulInteger" for node in graph.graph.node)  # the 8-bit head
    from edgeasr.export.shared_weights import graph_bytes

    assert graph_bytes([out / "encoder.int4.onnx"]) < 0.7 * graph_bytes([out / "encoder.int8.onnx"])
    assert graph_bytes([out / "encoder.int4.onnx"]) < 0.2 * graph_bytes([out / "encoder.onnx"])


def test_the_4_bit_graphs_read_like_the_torch_4_bit_model(four_bit_default):
    """int4=True runs the 4-bit encoder graphs (both passes) and reads the clips as the torch model
    with the same codes does."""
    from edgeasr.evaluate.metrics import char_errors, word_errors

    _, directory, out, _ = four_bit_default
    errors = {}
    for mode in ("ctc_greedy", "whisper_rescoring"):
        int4 = edgeasr.load_model(str(out), int4=True, mode=mode)
        assert int4.encoder_graph == "encoder.int4.onnx"
        torch_4bit = edgeasr.load_model(str(directory), mode=mode)
        for name, recognizer in (("onnx", int4), ("torch", torch_4bit)):
            counts = [0, 0, 0]
            for clip in CLIPS:
                reference, text = clip.with_suffix(".txt").read_text(), recognizer.transcribe(str(clip)).text
                counts[0] += word_errors(reference, text).errors
                counts[1] += char_errors(reference, text).errors
                counts[2] += char_errors(reference, text).reference_length
            errors[mode, name] = counts
    chars = errors["ctc_greedy", "torch"][2]
    assert errors["ctc_greedy", "onnx"][1] <= errors["ctc_greedy", "torch"][1] + 0.05 * chars, errors
    assert errors["whisper_rescoring", "onnx"][1] <= errors["whisper_rescoring", "torch"][1] + 0.02 * chars, errors


def test_graphs_of_one_precision_share_their_weights_on_disk(four_bit_default):
    """weights.<precision>.bin holds each tensor once: the two encoder graphs read the same bytes,
    and the 4-bit decoder's tied token table and output projection the same codes."""
    import onnx

    from edgeasr.export.shared_weights import graph_bytes

    _, _, out, meta = four_bit_default
    assert meta["weights_files"] == ["weights.bin", "weights.int8.bin", "weights.int4.bin"]

    def places(path):
        graph = onnx.load(str(path), load_external_data=False)
        return {(e["location"], e["offset"]) for e in ({x.key: x.value for x in t.external_data}
                                                      for t in graph.graph.initializer if t.external_data)}

    for suffix in (".onnx", ".int8.onnx", ".int4.onnx"):
        first, full = out / f"encoder{suffix}", out / f"encoder_full{suffix}"
        assert places(first) == places(full) and places(first)  # the same tensors
        assert graph_bytes([first, full]) < 1.05 * graph_bytes([first])
    step = onnx.load(str(out / "decoder_step.int4.onnx"), load_external_data=False)
    by_name = {t.name: {x.key: x.value for x in t.external_data} for t in step.graph.initializer}
    table = next(n for n in step.graph.node if n.op_type == "GatherBlockQuantized" and "positions" not in n.input[0])
    projection = next(n for n in step.graph.node if n.op_type == "MatMulNBits"
                      and {a.name: a.i for a in n.attribute}["N"] == 51864)
    assert by_name[table.input[0]]["offset"] == by_name[projection.input[1]]["offset"]
    assert by_name[table.input[3]]["offset"] == by_name[projection.input[3]]["offset"]
