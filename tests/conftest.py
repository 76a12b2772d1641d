"""Fixtures shared by several test files: a tiny synthesized corpus and a tiny model directory."""

import numpy as np
import pytest
import torch

from edgeasr.audio.features import FbankOptions
from edgeasr.cli import main
from edgeasr.model.asr import ASRModel, ModelConfig
from edgeasr.model.package import StreamingDefaults, save_model_dir
from edgeasr.text.tokenizer import Tokenizer


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """About 20 s of real TTS speech (espeak-ng and flite) with train/dev/test manifests."""
    out = tmp_path_factory.mktemp("corpus")
    status = main(["corpus", "synth", "--hours", "0.006", "--out", str(out), "--engines", "espeak,flite",
                   "--quiet", "--jobs", "2"])
    assert status == 0
    return out


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A random model whose CTC head is biased away from blank, so it emits tokens."""
    tokenizer = Tokenizer.train(["hello world", "streaming speech recognition"], kind="char")
    torch.manual_seed(0)
    config = ModelConfig.from_dict({
        "vocab_size": tokenizer.vocab_size,
        "encoder": {"d_model": 64, "num_heads": 4, "d_ff": 128, "num_blocks": 2, "dropout": 0.0},
        "decoder": {"num_layers": 1, "reverse_layers": 1, "d_ff": 128, "dropout": 0.0},
    })
    model = ASRModel(config).eval()
    with torch.no_grad():
        model.ctc.bias[0] = -2.0
        model.ctc.weight.mul_(8.0)
    return save_model_dir(tmp_path_factory.mktemp("model"), model, tokenizer, FbankOptions(),
                          StreamingDefaults(chunk_size=4, num_left_chunks=-1))


def speechlike(seconds: float, seed: int) -> np.ndarray:
    """A voiced-sounding test signal: harmonics under a 3 Hz syllable envelope plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
    tone = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) for f in (220, 440, 1250, 2600))
    return (0.1 * envelope * tone + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="session")
def whisper_imported(tmp_path_factory):
    """Whisper tiny.en imported from the installed package (linked), with an untrained CTC head:
    real encoder and decoder, so plumbing and second passes are real; the head's text is noise."""
    from edgeasr.model.whisper_import import import_whisper

    out = tmp_path_factory.mktemp("whisper") / "model"
    import_whisper(None, out, link=True)
    return out
