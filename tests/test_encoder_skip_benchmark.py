"""benchmarks/encoder_skip.py: its skip-free encoding is the streaming first pass's, a skip really
changes the output, and the script runs end to end with a report section."""

import json
import subprocess
import sys
from pathlib import Path

import torch

from edgeasr.audio.io import load_audio
from edgeasr.decoding.recognizer import DecodeOptions, Recognizer
from edgeasr.evaluate.report import encoder_skip_section

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from encoder_skip import encode  # noqa: E402


def test_encoding_without_skips_is_the_first_pass_and_skips_change_it():
    recognizer = Recognizer.load("default", DecodeOptions())
    model = recognizer.model
    samples = load_audio(ROOT / "samples" / "kokoro-male.wav", sample_rate=recognizer.sample_rate)
    feats = model.normalize(recognizer.frontend.compute(samples))
    with torch.no_grad():
        encoded, _ = model.encoder(feats[None], torch.tensor([feats.size(0)]), recognizer.chunk_size, -1)
        want = model.ctc_log_probs(encoded)[0]
        got = encode(model, feats, recognizer.chunk_size)
        assert torch.allclose(got, want, atol=1e-4)
        skipped = encode(model, feats, recognizer.chunk_size, frozenset({(3, "ffn")}))
        assert (skipped - want).abs().max() > 0.1
        # skipping the top layer on every frame is skipping both of its modules
        every = torch.ones(got.size(0), dtype=torch.bool)
        assert torch.allclose(encode(model, feats, recognizer.chunk_size, top_frame_skip=every),
                              encode(model, feats, recognizer.chunk_size, frozenset({(3, "attention"), (3, "ffn")})),
                              atol=1e-5)


def test_the_encoder_skip_benchmark_runs_and_reports(tmp_path):
    out = tmp_path / "results" / "encoder_skip.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "encoder_skip.py"), "--utts", "2",
                          "--manifest", f"clips={ROOT / 'samples' / 'samples.jsonl'}", "--blank-threshold", "0.999",
                          "--out", str(out), "--report", str(tmp_path / "BENCHMARKS.md")],
                         capture_output=True, text=True, timeout=900, cwd=tmp_path,
                         env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(out.read_text())
    static = result["sets"]["clips"]["static"]
    assert static[0]["skip"] == [] and len(static) == 2 * result["layers"] + 2
    assert 0 <= result["sets"]["clips"]["oracle_top_layer"][0]["frames_skipped"] <= 1
    share = result["share_of_first_pass"]
    assert 0 < share["top_layer_frame_skip"] < share["layer"] < 1
    section = "\n".join(encoder_skip_section(result, "encoder_skip.json"))
    assert "| nothing (the default) | 0% |" in section and "| layer 3 ffn |" in section
    assert "## Skipping encoder modules" in (tmp_path / "BENCHMARKS.md").read_text()
