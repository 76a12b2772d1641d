"""Every broken model directory, export and option is one clear line, checked at load (issue 14)."""

import json
import shutil
import socket

import pytest
import torch
import yaml

from edgeasr.api import load_model
from edgeasr.cli import main
from edgeasr.errors import EdgeAsrError
from edgeasr.export.onnx import export_onnx
from edgeasr.model.package import load_model_dir


@pytest.fixture
def model_copy(tiny_model, tmp_path):
    target = tmp_path / "model"
    shutil.copytree(tiny_model, target)
    return target


def edit_config(directory, change):
    path = directory / "config.yaml"
    config = yaml.safe_load(path.read_text())
    change(config)
    path.write_text(yaml.safe_dump(config))


class Payload:
    """Anything but tensors: unpickling it would run code."""

    def __reduce__(self):
        return (print, ("pwned",))


def test_broken_weights_files_are_named_not_tracebacks(model_copy):
    weights = model_copy / "model.pt"
    weights.write_bytes(b"")
    with pytest.raises(EdgeAsrError, match="model.pt: empty file"):
        load_model_dir(model_copy)
    weights.write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(EdgeAsrError, match="model.pt: not a readable torch weights file"):
        load_model_dir(model_copy)
    torch.save({"x": Payload()}, weights)
    with pytest.raises(EdgeAsrError, match="model.pt: refused"):
        load_model_dir(model_copy)


@pytest.mark.parametrize("change,message", [
    (lambda c: c["streaming"].update(chunk_sise=4), "unknown streaming setting"),
    (lambda c: c["streaming"].update(chunk_size=-2), "chunk_size must be"),
    (lambda c: c.pop("features"), "missing its 'features' section"),
    (lambda c: c["model"].update(vocab_size=c["model"]["vocab_size"] + 3), "tokenizer has"),
])
def test_bad_configs_are_refused_at_load(model_copy, change, message):
    edit_config(model_copy, change)
    with pytest.raises(EdgeAsrError, match=message):
        load_model_dir(model_copy)


def test_tokenizer_paths_stay_inside_the_model(model_copy):
    meta_path = model_copy / "tokenizer" / "tokenizer.json"
    meta = json.loads(meta_path.read_text())
    meta["units"] = "../../../../etc/passwd"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(EdgeAsrError, match="outside the tokenizer directory"):
        load_model_dir(model_copy)


def test_truncated_onnx_graph_is_named(tiny_model, tmp_path):
    out = tmp_path / "export"
    export_onnx(tiny_model, out)
    graph = out / "encoder.onnx"
    graph.write_bytes(graph.read_bytes()[:1000])
    with pytest.raises(EdgeAsrError, match="encoder.onnx: not a usable ONNX graph"):
        load_model(str(out))


def test_absurd_thread_counts_are_refused(tiny_model, tiny_corpus, capsys):
    with pytest.raises(EdgeAsrError, match="threads must be"):
        load_model(str(tiny_model), threads=1_000_000)
    audio = str(next((tiny_corpus / "wav").rglob("*.wav")))
    assert main(["transcribe", "--model", str(tiny_model), "--threads", "1000000", audio]) == 2
    error = capsys.readouterr().err
    assert "threads must be" in error and len(error.strip().splitlines()) == 1


def test_serve_on_a_busy_or_invalid_port_says_so(tiny_model, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--model", str(tiny_model), "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    assert main(["serve", "--model", str(tiny_model), "--port", "70000"]) == 2
    assert "--port must be" in capsys.readouterr().err


def test_empty_manifests_and_nan_audio_are_caught(tiny_model, tmp_path, capsys):
    import numpy as np
    import soundfile as sf

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["eval", "--model", str(tiny_model), "--manifest", str(empty)]) == 2
    assert "no utterances" in capsys.readouterr().err
    samples = np.zeros(16000, dtype=np.float32)
    samples[100] = np.nan
    sf.write(tmp_path / "nan.wav", samples, 16000, subtype="FLOAT")
    manifest = tmp_path / "nan.jsonl"
    manifest.write_text(json.dumps({"audio": str(tmp_path / "nan.wav"), "text": "", "duration": 1.0}) + "\n")
    assert main(["data", "validate", str(manifest)]) == 2  # what eval would refuse, validate refuses
    assert "NaN" in capsys.readouterr().out
    good = tmp_path / "good.wav"
    sf.write(good, np.zeros(16000, dtype=np.float32), 16000)
    manifest.write_text(json.dumps({"audio": str(good), "text": "", "duration": 1.0}) + "\n")
    assert main(["eval", "--model", str(tiny_model), "--manifest", str(manifest)]) == 0
    assert "empty reference" in capsys.readouterr().err
