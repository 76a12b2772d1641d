"""The Python API: edgeasr.load_model, results, streaming sessions, and the two backends."""

import subprocess
import sys

import numpy as np
import pytest

import edgeasr
from edgeasr.audio.io import load_audio
from edgeasr.cli import main
from edgeasr.data.manifest import read_manifest
from edgeasr.errors import EdgeAsrError


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEASR_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_transcribe_a_path_or_an_array_and_stream(tiny_model, tiny_corpus):
    asr = edgeasr.load_model(str(tiny_model))
    path = read_manifest(tiny_corpus / "test.jsonl")[0].audio
    samples = load_audio(path)
    result = asr.transcribe(path)
    assert result.text and result.text == asr.transcribe(samples).text
    assert result.words and all(w.start <= w.end for w in result.words)
    assert 0 < result.confidence <= 1 and result.nbest and result.nbest[0]["text"] == result.text
    assert len(result.tokens) == len(result.token_times)
    session = asr.stream()
    partials = [session.accept(samples[i : i + 1600]) for i in range(0, len(samples), 1600)]
    assert not partials[-1].is_final and partials[-1].text
    final = session.finish()
    assert final.is_final and final.text == result.text


def test_onnx_backend_exports_once_and_gives_the_torch_text(tiny_model, tiny_corpus, cache, capsys):
    path = read_manifest(tiny_corpus / "test.jsonl")[1].audio
    expected = edgeasr.load_model(str(tiny_model)).transcribe(path).text
    capsys.readouterr()
    asr = edgeasr.load_model(str(tiny_model), backend="onnx")
    notice = capsys.readouterr().err.splitlines()  # the first load says why it takes a while
    assert notice[0].startswith("edgeasr: exporting ") and "once" in notice[0] and "cached in" in notice[-1]
    assert type(asr).__name__ == "OnnxRecognizer"
    assert asr.transcribe(path).text == expected
    exports = list((cache / "onnx").iterdir())
    assert len(exports) == 1
    stamp = (exports[0] / "encoder.onnx").stat().st_mtime_ns
    again = edgeasr.load_model(str(tiny_model), backend="onnx", int8=True)
    assert "exporting" not in capsys.readouterr().err  # a cached export loads silently
    assert isinstance(again.transcribe(path).text, str)
    assert (exports[0] / "encoder.onnx").stat().st_mtime_ns == stamp  # reused, not re-exported
    assert type(edgeasr.load_model(exports[0])).__name__ == "OnnxRecognizer"  # an export runs on ORT
    assert main(["transcribe", "--backend", "onnx", "--model", str(tiny_model), str(path)]) == 0


def test_the_onnx_cache_removes_exports_no_load_can_reuse(tiny_model, cache):
    """A retrained model, a deleted model directory, an older edgeasr's entry and a killed export's
    staging directory each leave an entry no load can reuse: the next export removes them, and
    the fresh entries of models still there (at any chunk size) stay."""
    import os
    import shutil

    from edgeasr.api import export_cached

    kept, gone = cache.parent / "kept", cache.parent / "gone"
    shutil.copytree(tiny_model, kept)
    shutil.copytree(tiny_model, gone)
    first = export_cached(kept, 16, -1)
    other_chunk = export_cached(kept, 8, -1)
    of_gone = export_cached(gone, 16, -1)
    older = cache / "onnx" / "model-0123456789ab"  # made before entries named their source
    shutil.copytree(first, older)
    (older / "cache_source.json").unlink()
    killed = cache / "onnx" / ".model-0123456789ab-xyz"
    killed.mkdir()
    os.utime(killed, (0, 0))  # an export killed long ago
    shutil.rmtree(gone)
    weights = kept / "model.pt"
    weights.write_bytes(weights.read_bytes())  # retrained: same path, new file
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    fresh = export_cached(kept, 16, -1)
    assert fresh != first and fresh.is_dir()
    for removed in (first, other_chunk, of_gone, older, killed):  # other_chunk read the old file too
        assert not removed.exists(), removed
    again = export_cached(kept, 8, -1)
    assert fresh.is_dir() and again.is_dir()  # both current: kept side by side
    assert sorted(p.name for p in (cache / "onnx").iterdir()) == sorted([fresh.name, again.name])


def test_the_thread_count_caps_numpy_blas_too(tiny_model, tiny_corpus, cache):
    """numpy's BLAS pool (Whisper's mel filters run through it every chunk) follows ``threads``
    like torch does, on both backends and on the command line: left at the machine's size, its
    threads fought the other busy cores and the first pass streamed at 1.7x the RTF."""
    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    def blas_threads() -> set[int]:
        return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}

    path = read_manifest(tiny_corpus / "test.jsonl")[0].audio
    torch_threads = torch.get_num_threads()
    try:
        for load in (lambda: edgeasr.load_model(str(tiny_model), threads=1),
                     lambda: edgeasr.load_model(str(tiny_model), backend="onnx", threads=1),
                     lambda: main(["transcribe", "--model", str(tiny_model), "--threads", "1", str(path)])):
            with threadpool_limits(limits=2, user_api="blas"):
                assert blas_threads() == {2}
                load()
                assert blas_threads() == {1}
    finally:
        torch.set_num_threads(torch_threads)


def test_bad_choices_get_one_line_errors(tiny_model):
    with pytest.raises(EdgeAsrError, match="unknown backend"):
        edgeasr.load_model(str(tiny_model), backend="tensorrt")
    with pytest.raises(EdgeAsrError, match="backend='onnx'"):
        edgeasr.load_model(str(tiny_model), int8=True)
    with pytest.raises(EdgeAsrError):
        edgeasr.load_model("/no/such/model")


def test_importing_edgeasr_does_not_import_torch():
    code = "import sys, edgeasr; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_results_serialize_to_json(tiny_model):
    import json

    asr = edgeasr.load_model(str(tiny_model))
    result = asr.transcribe(np.zeros(16000, dtype=np.float32))
    assert json.loads(json.dumps(result.to_dict()))["is_final"] is True


def test_eval_on_both_backends_gives_the_same_wer(tiny_model, tiny_corpus, cache, capsys):
    import json

    manifest = str(tiny_corpus / "test.jsonl")
    assert main(["eval", "--model", str(tiny_model), "--manifest", manifest, "--json"]) == 0
    torch_summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["eval", "--model", str(tiny_model), "--manifest", manifest, "--json", "--backend", "onnx"]) == 0
    onnx_summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert onnx_summary["backend"] == "onnx" and onnx_summary["utts"] == torch_summary["utts"]
    assert onnx_summary["wer"] == torch_summary["wer"] and onnx_summary["cer"] == torch_summary["cer"]
    assert main(["eval", "--model", str(tiny_model), "--manifest", manifest, "--backend", "onnx", "--offline"]) == 2
