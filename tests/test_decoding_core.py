"""One decoding core for every backend: the mode switch, session and endpointer exist once, and
torch and ONNX Runtime give the same n-best with an LM and hotwords."""

import math
from pathlib import Path

import numpy as np
import pytest

from edgeasr.api import load_model
from edgeasr.cli import main
from edgeasr.data.manifest import read_manifest
from edgeasr.decoding.core import DecodeOptions, StreamingSession
from edgeasr.decoding.endpoint import EndpointRules
from edgeasr.decoding.modes import MODE_NAMES, MODES, resolve_mode
from edgeasr.errors import EdgeAsrError
from edgeasr.export.onnx import export_onnx
from edgeasr.lm.build import build_lm

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {p: p.read_text() for p in (ROOT / "edgeasr").rglob("*.py")}


def test_the_removed_copies_stay_removed():
    # the modes are spelled out once, in the registry; everyone else reads it
    spelled = [p.name for p, text in SOURCES.items() if '"ctc_greedy"' in text or "'ctc_greedy'" in text]
    assert spelled == ["modes.py"], spelled
    # one streaming session: the ONNX runtime has no search, endpointer or session of its own
    runtime = SOURCES[ROOT / "edgeasr/export/runtime.py"]
    for name in ("PrefixBeamSearch", "GreedySearch", "BlankTracker", "class OnnxStreamingSession", "build_result("):
        assert name not in runtime, name
    # evaluation decodes through the core, not a switch of its own
    accuracy = SOURCES[ROOT / "edgeasr/evaluate/accuracy.py"]
    assert "PrefixBeamSearch" not in accuracy and "attention_rescore" not in accuracy
    assert sum("class StreamingSession" in text for text in SOURCES.values()) == 1


def test_mode_registry_resolution():
    assert set(MODE_NAMES) == set(MODES)
    assert resolve_mode("attention_rescoring", False, True).name == "whisper_rescoring"
    assert resolve_mode("attention_rescoring", False, False).name == "ctc_prefix_beam"
    with pytest.raises(EdgeAsrError, match="Whisper decoder"):
        resolve_mode("whisper_rescoring", True, False)
    with pytest.raises(EdgeAsrError, match="unknown decoding mode"):
        resolve_mode("viterbi", True, True)


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    text = tmp_path_factory.mktemp("lmtext") / "text.txt"
    text.write_text("hello world\nstreaming speech recognition\nhello speech\nworld recognition is streaming\n")
    out = tmp_path_factory.mktemp("lm") / "lm"
    build_lm(out, texts=[text], use_pool=False, order=4, unit="char")
    return out


@pytest.fixture(scope="module")
def exported(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "export"
    export_onnx(tiny_model, out)
    return out


@pytest.mark.parametrize("mode", ["ctc_prefix_beam", "attention_rescoring"])
def test_onnx_and_torch_give_the_same_nbest_with_lm_and_hotwords(tiny_model, exported, tiny_corpus, lm_dir, mode):
    options = dict(mode=mode, lm=str(lm_dir), lm_weight=0.8, lm_bonus=1.0, hotwords=["hello world :2", "speech"],
                   token_threshold=math.inf)
    torch_rec = load_model(str(tiny_model), "torch", **options)
    onnx_rec = load_model(str(exported), **options)
    assert torch_rec.lm is not None and onnx_rec.lm is not None
    for utt in read_manifest(tiny_corpus / "test.jsonl")[:3]:
        a, b = torch_rec.transcribe(utt.audio), onnx_rec.transcribe(utt.audio)
        assert [h["text"] for h in a.nbest] == [h["text"] for h in b.nbest]
        assert [h["score"] for h in a.nbest] == pytest.approx([h["score"] for h in b.nbest], abs=1e-3)


def test_the_lm_changes_the_result_and_travels_with_the_model(tiny_model, tiny_corpus, lm_dir, tmp_path):
    import shutil

    audio = read_manifest(tiny_corpus / "test.jsonl")[0].audio
    plain = load_model(str(tiny_model), mode="ctc_prefix_beam", lm=None)
    fused = load_model(str(tiny_model), mode="ctc_prefix_beam", lm=str(lm_dir), lm_weight=2.0,
                       token_threshold=math.inf)
    assert plain.transcribe(audio).nbest != fused.transcribe(audio).nbest
    # an lm/ inside the model directory is used by default, and an export carries it along
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    shutil.copytree(lm_dir, model / "lm")
    assert load_model(str(model)).lm is not None
    assert load_model(str(model), lm=None).lm is None
    export_onnx(model, tmp_path / "export")
    assert (tmp_path / "export" / "lm" / "lm.arpa.gz").is_file()
    assert load_model(str(tmp_path / "export")).lm is not None


def test_streaming_api_reset_and_endpoints(tiny_model, tiny_corpus):
    recognizer = load_model(str(tiny_model), mode="ctc_prefix_beam")
    audio = np.concatenate([load_wav(u.audio) for u in read_manifest(tiny_corpus / "test.jsonl")[:2]])
    fresh = recognizer.stream()
    fresh.accept(audio)
    expected = fresh.finish()
    session = recognizer.stream()
    assert isinstance(session, StreamingSession)
    session.accept(audio[:8000])
    session.reset()  # a new stream in place: nothing of the first 0.5 s remains
    for start in range(0, len(audio), 3200):
        session.accept(audio[start : start + 3200])
        assert not session.is_endpoint()  # no segmentation for this model by default
    assert session.finish().text == expected.text
    # the endpointer's blank threshold is the one the rules give
    recognizer.endpoint_rules = EndpointRules(blank_threshold=0.5)
    assert recognizer.stream().blank_tracker.log_threshold == pytest.approx(math.log(0.5))


def load_wav(path):
    from edgeasr.audio.io import load_audio

    return load_audio(path)


def test_options_reach_every_entry_point(tiny_model, tiny_corpus, lm_dir, tmp_path, capsys):
    with pytest.raises(EdgeAsrError, match="unknown decoding option"):
        load_model(str(tiny_model), lm_wieght=1.0)
    with pytest.raises(EdgeAsrError, match="--lm-weight"):
        load_model(str(tiny_model), lm_weight=-1.0)
    hotwords = tmp_path / "hotwords.txt"
    hotwords.write_text("hello world :3\n")
    audio = str(read_manifest(tiny_corpus / "test.jsonl")[0].audio)
    assert main(["transcribe", "--model", str(tiny_model), "--lm", str(lm_dir), "--hotwords", str(hotwords),
                 "--lm-weight", "0.5", "--token-threshold", "inf", audio]) == 0
    capsys.readouterr()
    assert main(["transcribe", "--model", str(tiny_model), "--lm", str(tmp_path / "missing"), audio]) == 2
    error = capsys.readouterr().err
    assert "no such language model" in error and len(error.strip().splitlines()) == 1
    bad = tmp_path / "bad.txt"
    bad.write_text("x :many\n")
    assert main(["transcribe", "--model", str(tiny_model), "--hotwords", str(bad), audio]) == 2
    assert "boost" in capsys.readouterr().err
    assert main(["eval", "--model", str(tiny_model), "--manifest", str(tiny_corpus / "test.jsonl"),
                 "--lm", str(lm_dir), "--hotwords", str(hotwords), "--limit", "2"]) == 0
