"""The shipped default model: a Whisper-based two-pass recognizer that must recognize speech.

These run the real model in models/default (Whisper tiny.en's encoder and decoder from the pinned
package, the CTC head trained here) on the bundled sample clips, held-out voices and sentences.
"""

import tomllib
from pathlib import Path

import pytest
import yaml

import edgeasr
from edgeasr.audio.io import load_audio
from edgeasr.evaluate.metrics import word_errors
from edgeasr.model.package import DEFAULT_MODEL_DIR

SAMPLES = sorted(Path("samples").glob("*.wav"))


@pytest.fixture(scope="module")
def default_model():
    return edgeasr.load_model("default")


def test_default_model_is_two_pass_whisper_and_small_in_git(default_model):
    assert default_model.mode == "whisper_rescoring"
    config = yaml.safe_load((DEFAULT_MODEL_DIR / "config.yaml").read_text())
    assert config["model"]["encoder"]["kind"] == "whisper"
    # the pretrained weights come from the package pinned in pyproject.toml, not from git
    pins = tomllib.loads(Path("pyproject.toml").read_text())["project"]["dependencies"]
    assert f"{config['pretrained']['package']}=={config['pretrained']['version']}" in pins
    in_git = sum(f.stat().st_size for f in DEFAULT_MODEL_DIR.rglob("*") if f.is_file())
    assert in_git < 25e6


def test_default_model_streams_the_samples_nearly_right(default_model):
    errors = words = 0
    for clip in SAMPLES:
        samples = load_audio(clip, sample_rate=16000)
        session = default_model.stream()
        partials = []
        for start in range(0, len(samples), 1600):
            partials.append(session.accept(samples[start : start + 1600]).text)
        result = session.finish()
        assert any(partials), f"{clip.name}: no partial result before the end"
        times = [w.start for w in result.words]
        assert times == sorted(times) and times[-1] <= len(samples) / 16000
        counts = word_errors(clip.with_suffix(".txt").read_text(), result.text)
        errors += counts.errors
        words += counts.reference_length
    assert 100 * errors / words <= 15.0, f"WER {100 * errors / words:.1f}% on the sample clips"


def test_a_long_file_in_one_call_and_silence(default_model):
    """A whole file longer than Whisper's 30 s window, handed over in one call, is cut into
    segments as it would be live (it used to overflow the encoder's positions), and digital
    silence gives no text (it used to come out as "you you you ...")."""
    import numpy as np

    clip = load_audio(SAMPLES[0], sample_rate=16000)
    reference = SAMPLES[0].with_suffix(".txt").read_text()
    pause = np.zeros(16000 * 2, dtype=np.float32)
    repeats = int(np.ceil(40 * 16000 / (len(clip) + len(pause))))
    result = default_model.transcribe(np.concatenate([clip, pause] * repeats))
    counts = word_errors(" ".join([reference] * repeats), result.text)
    assert 100 * counts.errors / counts.reference_length <= 20.0, result.text
    assert default_model.transcribe(np.zeros(16000 * 40, dtype=np.float32)).text == ""
