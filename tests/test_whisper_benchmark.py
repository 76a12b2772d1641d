"""benchmarks/whisper_default.py: accuracy, speed and size rows, the model card and the report section."""

import json
import math
from pathlib import Path


from benchmark_helpers import load_benchmark
from edgeasr.data.manifest import Utterance, write_manifest
from edgeasr.evaluate.report import whisper_section, write_report

ROOT = Path(__file__).resolve().parents[1]
CLIPS = ("kokoro-male", "flite-awb")  # the two shortest samples


def _benchmark_module():
    return load_benchmark("whisper_default")




def test_whisper_benchmark_rows_card_and_report(whisper_imported, tiny_model, tmp_path):
    utts = [Utterance(audio=str(ROOT / "samples" / f"{clip}.wav"),
                      text=(ROOT / "samples" / f"{clip}.txt").read_text().strip(), duration=5.0) for clip in CLIPS]
    manifest = tmp_path / "clips.jsonl"
    write_manifest(manifest, utts)
    out = tmp_path / "results" / "whisper_default.json"
    report, card = tmp_path / "BENCHMARKS.md", tmp_path / "card" / "README.md"
    modes, chunks = ["ctc_greedy", "ctc_prefix_beam", "whisper_rescoring"], [0, 32]
    status = _benchmark_module().main([
        "--model", str(whisper_imported), "--manifest", f"clips={manifest}", "--limit", "2",
        "--chunk-sizes", ",".join(map(str, chunks)), "--modes", ",".join(modes), "--rtf-utts", "1",
        "--baseline", str(tiny_model), "--out", str(out), "--report", str(report), "--card", str(card),
        "--corpus-card", str(tmp_path / "absent.json")])
    assert status == 0
    result = json.loads(out.read_text())
    assert result["benchmark"] == "whisper_default" and result["threads"] == 1
    assert result["sets"]["clips"]["utts"] == 2
    for chunk in chunks:
        for mode in modes:
            row = result["accuracy"]["clips"][str(chunk)][mode]
            assert math.isfinite(row["wer"]) and math.isfinite(row["cer"]) and row["words"] > 0
            assert row["substitutions"] + row["deletions"] + row["insertions"] >= 0
            base = result["baseline"]["accuracy"]["clips"][str(chunk)][mode]
            assert math.isfinite(base["wer"])
            assert base["chunk_size"] == (0 if chunk == 0 else 16)  # same duration at 40 ms frames
    assert set(result["speed"]["clips"]) == {"32"}  # streaming only
    for mode in modes:
        speed = result["speed"]["clips"]["32"][mode]
        assert speed["rtf"] > 0 and speed["rtf_median"] > 0 and speed["utts"] == 1
        assert speed["chunk_latency_ms"]["count"] > 0 and speed["chunk_latency_ms"]["median"] > 0
        assert 0 < speed["chunk_latency_fraction"]["median"] and speed["finish_ms"]["median"] > 0
    assert result["speed"]["clips"]["32"]["whisper_rescoring"]["second_pass_ms"]["count"] >= 1
    assert result["speed"]["clips"]["32"]["ctc_greedy"]["second_pass_ms"] is None
    model = result["model"]
    assert model["bytes"]["in_git"] > 0 and model["bytes"]["pretrained_file"] > 0
    assert model["bytes"]["total"] == model["bytes"]["in_git"] + model["bytes"]["pretrained_file"]
    assert all(model["parameters"][part] > 0 for part in ("encoder", "ctc_head", "whisper_decoder"))
    assert model["stored_in_model_pt"]["ctc_head"] == model["parameters"]["ctc_head"]
    assert "encoder" not in model["stored_in_model_pt"]  # linked: the encoder loads from the package

    text = card.read_text()
    assert "Whisper tiny.en" in text and "MIT" in text and "| whisper_rescoring |" in text
    assert "chunk 32 (640 ms)" in text and "## Licences" in text and "Apache-2.0" in text
    # the shipped ONNX Runtime and confidence figures go on the card from their own JSON
    assert "## On ONNX Runtime" in text and "| realdev | onnx_int8 |" in text and "## Confidence" in text
    card.unlink()  # --card-only rebuilds the same card from the JSON, measuring nothing
    assert _benchmark_module().main(["--card-only", "--out", str(out), "--card", str(card)]) == 0
    assert card.read_text() == text
    # a model with a segmenter (as the shipped default) gets its line, its measured section
    # (benchmarks/results/segmenter.json, measured on the default) and its reproduce lines
    assert "**Segmenter**" not in text
    with_segmenter = json.loads(out.read_text())
    with_segmenter["model"]["parameters"]["segmenter"] = 24705
    segmenter_card = _benchmark_module().model_card(with_segmenter)
    assert "- **Segmenter**: 24.7 k parameters" in segmenter_card
    assert "## Segmenter against the blank rules" in segmenter_card and "| segmenter@0.9 |" in segmenter_card
    assert "--config configs/whisper/tiny_segmenter_frozen.yaml" in segmenter_card
    bench = report.read_text()
    assert "## Default model: Whisper tiny.en" in bench
    assert "| target | measured | met |" in bench and "<= 25 MB in git" in bench
    # next to the previous default's result, the default model's section comes first
    (out.parent / "u2_default.json").write_text((ROOT / "benchmarks" / "results" / "u2_default.json").read_text())
    bench = write_report(out.parent, report).read_text()
    assert bench.index("## Default model: Whisper tiny.en") < bench.index("the previous from-scratch default (baseline)")
    section = "\n".join(whisper_section(result, "whisper_default.json"))
    assert "| baseline: attention_rescoring |" in section and "% of chunk" in section


def test_the_speed_probe_says_where_a_chunks_time_goes(tiny_model):
    """Each streamed chunk's time is split into front end, model, search and the rest: a delay put
    into one part shows up in that part's median, not in the others'."""
    import time

    import numpy as np

    from edgeasr.audio.io import load_audio
    from edgeasr.decoding.recognizer import DecodeOptions, Recognizer

    module = _benchmark_module()
    samples = load_audio(str(ROOT / "samples" / f"{CLIPS[0]}.wav"))
    recognizer = Recognizer.load(tiny_model, DecodeOptions(mode="ctc_greedy", chunk_size=16))
    plain = module.SpeedProbe(recognizer)
    plain.run(samples, record=False)  # warm-up
    plain.run(samples)
    parts = plain.summary(plain.texts)["chunk_parts_ms"]
    assert list(parts) == list(module.CHUNK_PARTS)
    assert all(parts[name] > 0 for name in ("front_end", "model", "search")) and parts["rest"] >= 0

    original = recognizer.__class__.stream

    def stream_with_slow_model(self, *args, **kwargs):
        session = original(self, *args, **kwargs)
        accept = session.runner.accept

        def slow(feats):
            time.sleep(0.05)
            return accept(feats)
        session.runner.accept = slow
        return session

    recognizer.stream = stream_with_slow_model.__get__(recognizer)
    slowed = module.SpeedProbe(recognizer)
    slowed.run(samples)
    delayed = slowed.summary(slowed.texts)
    assert delayed["chunk_parts_ms"]["model"] >= 50
    for name in ("front_end", "search", "rest"):  # the delay is not charged to the other parts
        assert delayed["chunk_parts_ms"][name] < 25
    assert np.isclose(delayed["chunk_latency_ms"]["median"], sum(delayed["chunk_parts_ms"].values()), rtol=0.5)


def test_second_pass_frames_benchmark_swaps_only_the_frames_the_decoder_reads(whisper_imported, tmp_path):
    """benchmarks/second_pass_frames.py: the chunk-causal variants hand the decoder the segment's
    chunk-causal encoding (alone, or its whole silence window), the shipped variant is untouched,
    and the result has a row per set and variant and a report section."""
    import numpy as np
    import torch

    from edgeasr.decoding.recognizer import DecodeOptions, Recognizer
    from edgeasr.model.package import load_model_dir
    from tests.benchmark_helpers import load_benchmark

    benchmark = load_benchmark("second_pass_frames")
    packaged = load_model_dir(whisper_imported)
    shipped = Recognizer(packaged, DecodeOptions(mode="whisper_rescoring", chunk_size=16))
    alone = benchmark.chunk_causal_encode(Recognizer(packaged, DecodeOptions(mode="whisper_rescoring", chunk_size=16)),
                                          with_window=False)
    window = benchmark.chunk_causal_encode(Recognizer(packaged, DecodeOptions(mode="whisper_rescoring", chunk_size=16)),
                                           with_window=True)
    feats = torch.randn(70, 80)
    full, _, _ = shipped.second_pass._encode(feats)
    causal, log_probs, own = alone.second_pass._encode(feats)
    padded, _, _ = window.second_pass._encode(feats)
    with torch.no_grad():
        expected, _ = packaged.model.encoder(feats.unsqueeze(0), torch.tensor([70]), 16, -1)
    # the same computation, but not always the same kernels (thread count): float rounding apart
    assert torch.allclose(causal, expected, atol=1e-4) and np.allclose(own, expected[0].numpy(), atol=1e-4)
    assert log_probs.shape[0] == causal.shape[1]
    assert padded.shape[1] == full.shape[1] > causal.shape[1]  # the window's frames, as the shipped pass
    whole = causal.shape[1] // 16 * 16  # chunk-causal: the segment's whole chunks never see the silence after it
    assert torch.allclose(padded[:, :whole], causal[:, :whole], atol=1e-4), (padded[:, :whole] - causal[:, :whole]).abs().max()
    assert not torch.allclose(full[:, : causal.shape[1]], causal, atol=1e-3)

    out, report = tmp_path / "results" / "second_pass_frames.json", tmp_path / "BENCHMARKS.md"
    assert benchmark.main(["--model", str(whisper_imported), "--manifest", "s=samples/samples.jsonl", "--limit", "1",
                           "--out", str(out), "--report", str(report)]) == 0
    rows = json.loads(out.read_text())["sets"]["s"]["rows"]
    assert set(rows) == set(benchmark.VARIANTS) and all(math.isfinite(r["wer"]) for r in rows.values())
    assert "## What the Whisper second pass reads" in report.read_text()
