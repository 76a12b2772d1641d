"""The default (Whisper-encoder) model's streaming first pass exported to ONNX and run on ONNX
Runtime without torch: the same log-probabilities as the torch stream, the same text."""

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
    meta = export_onnx("default", out, int8=True)
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
    onnx_asr = edgeasr.load_model(str(exported))
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

    int8 = edgeasr.load_model(str(exported), int8=True)
    errors = words = 0
    for clip in CLIPS:
        counts = word_errors(clip.with_suffix(".txt").read_text(), int8.transcribe(str(clip)).text)
        errors, words = errors + counts.errors, words + counts.reference_length
    assert errors / words < 0.35  # the first pass alone, int8: still reads the clips
    with pytest.raises(EdgeAsrError, match="torch backend"):
        edgeasr.load_model(str(exported), mode="whisper_rescoring")
    monkeypatch.setenv("EDGEASR_CACHE", str(tmp_path / "cache"))
    cached = edgeasr.load_model("default", backend="onnx")  # exported once into the cache
    assert cached.transcribe(str(CLIPS[0])).text == edgeasr.load_model(str(exported)).transcribe(str(CLIPS[0])).text
