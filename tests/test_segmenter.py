"""The segmenter: its targets, its training on a frozen first pass, and the streaming session
closing segments where it says speech has ended (issue 17, item 3)."""

import pytest
import torch
from conftest import speechlike

import edgeasr
from edgeasr.errors import EdgeAsrError
from edgeasr.model.asr import ASRModel, ModelConfig
from edgeasr.model.package import load_model_dir, load_weights_from, save_model_dir
from edgeasr.model.segmenter import end_targets


def test_targets_mark_the_frames_after_the_last_token_and_its_margin():
    blank, token = [0.0, -9.0], [-9.0, 0.0]
    frames = [blank, token, blank, token, blank, blank, blank, blank]
    log_probs = torch.tensor([frames, frames])
    targets = end_targets(log_probs, torch.tensor([8, 3]), margin=2)
    # last token at frame 3, + 2 frames of tail: frames 6 and 7 are "ended"
    assert targets[0].tolist() == [0, 0, 0, 0, 0, 0, 1, 1]
    # the second utterance is 3 frames long: its last token (frame 1) and tail end at frame 3
    assert targets[1].tolist()[:4] == [0, 0, 0, 0]
    silent = end_targets(torch.tensor([[blank] * 4]), torch.tensor([4]), margin=2)
    assert silent[0].tolist() == [1, 1, 1, 1]  # nothing said: ended throughout


@pytest.fixture(scope="module")
def with_segmenter(tiny_model, tmp_path_factory):
    """tiny_model plus a segmenter head; returns (directory, the model) for weights to be set."""
    source = load_model_dir(tiny_model)
    config = source.model.config.to_dict()
    config["segmenter"] = {"hidden": 8, "margin": 2}
    model = ASRModel(ModelConfig.from_dict(config))
    load_weights_from(model, source)
    return source, model, tmp_path_factory.mktemp("segmenter")


def _saved(with_segmenter, bias: float, name: str):
    source, model, folder = with_segmenter
    with torch.no_grad():
        model.segmenter.net[-1].weight.zero_()
        model.segmenter.net[-1].bias.fill_(bias)
    return save_model_dir(folder / name, model.eval(), source.tokenizer, source.features, source.streaming)


def test_the_segmenter_trains_on_a_frozen_first_pass(with_segmenter):
    source, model, _ = with_segmenter
    model.frozen_prefixes = ("encoder", "ctc", "decoder", "reverse_decoder")
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith("segmenter."))
    feats = source.features.compute(speechlike(3.0, seed=1))
    tokens = torch.tensor([source.tokenizer.encode("hello world")])
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(40):
        out = model(feats[None], torch.tensor([feats.size(0)]), tokens, torch.tensor([tokens.size(1)]))
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(float(out["segmenter"].detach()))
    model.eval()
    assert losses[-1] < 0.5 * losses[0]


def test_the_session_closes_segments_where_the_segmenter_says_so(with_segmenter):
    """A segmenter that always says "ended" closes a segment at the first chunk after text;
    one that never does leaves the blank rules alone; --segmenter off ignores it."""
    audio = speechlike(4.0, seed=2)
    eager = _saved(with_segmenter, 20.0, "eager")
    never = _saved(with_segmenter, -20.0, "never")

    def finals(directory, **options):
        recognizer = edgeasr.load_model(str(directory), mode="ctc_greedy", segment=True,
                                        segmenter_min_silence=0.0, **options)
        session = recognizer.stream()
        for start in range(0, len(audio), 1600):
            session.accept(audio[start : start + 1600])
        session.finish()
        return len(session.finals)

    rules = finals(never)
    assert finals(eager) > rules + 3
    assert finals(eager, segmenter=False) == rules
    with pytest.raises(EdgeAsrError, match="segmenter"):
        edgeasr.load_model(str(eager), mode="ctc_greedy", segmenter_threshold=1.5)


def test_asking_for_a_segmenter_the_model_lacks_is_an_error(tiny_model):
    with pytest.raises(EdgeAsrError, match="needs a model with a segmenter"):
        edgeasr.load_model(str(tiny_model), mode="ctc_greedy", segmenter=True)


def test_the_shipped_default_closes_segments_with_its_segmenter():
    """models/default carries a segmenter, on unless turned off; --segmenter-min-silence is
    checked at load with a one-line error."""
    assert load_model_dir("models/default").model.segmenter is not None
    assert edgeasr.load_model("default", lm=None).segmenter is not None
    assert edgeasr.load_model("default", lm=None, segmenter=False).segmenter is None
    # torch's dynamic int8 Linear takes the segmenter's frame as a matrix, not a lone vector
    quantized = edgeasr.load_model("default", lm=None, mode="ctc_greedy", dynamic_int8=True)
    assert quantized.segmenter is not None and "the job" in quantized.transcribe("samples/kokoro-male.wav").text


def test_segmenter_min_silence_on_the_command_line(capsys):
    from edgeasr.cli import main

    assert main(["transcribe", "--segmenter-min-silence", "-1", "samples/kokoro-male.wav"]) == 2
    err = capsys.readouterr().err
    assert "edgeasr: error: --segmenter-min-silence must be 0 or more" in err and "Traceback" not in err
    assert main(["transcribe", "--model", "default", "--mode", "ctc_greedy", "--segmenter-min-silence", "0.2",
                 "samples/kokoro-male.wav"]) == 0
    assert "the job" in capsys.readouterr().out


def test_segmenter_benchmark_writes_rows_and_a_report_section(with_segmenter, tmp_path):
    import json
    from pathlib import Path

    from benchmark_helpers import load_benchmark
    from edgeasr.data.manifest import Utterance, write_manifest

    eager = _saved(with_segmenter, 20.0, "eager-bench")
    clips = sorted(Path("samples").glob("*.wav"))[:2]
    manifest = tmp_path / "clips.jsonl"
    write_manifest(manifest, [Utterance(audio=str(c.resolve()), text=c.with_suffix(".txt").read_text().strip(),
                                        duration=5.0) for c in clips])
    out, report = tmp_path / "results" / "segmenter.json", tmp_path / "BENCHMARKS.md"
    assert load_benchmark("segmenter").main([
        "--model", str(eager), "--manifest", f"clips={manifest}", "--mode", "ctc_greedy", "--per-stream", "2",
        "--thresholds", "0.5", "--min-silence", "0", "--out", str(out), "--report", str(report)]) == 0
    rows = json.loads(out.read_text())["sets"]["clips"]["rows"]
    assert set(rows) == {"rules", "segmenter@0.5"}
    # a segmenter that always says "ended" cuts more segments than the rules
    assert rows["segmenter@0.5"]["segments_per_stream"] > rows["rules"]["segments_per_stream"]
    assert rows["rules"]["utterances_finalized"] == 2
    assert "## Segmenter against rule-based endpointing" in report.read_text()


def test_the_onnx_export_carries_the_segmenter(with_segmenter, tmp_path):
    """segmenter.onnx beside the encoder: ONNX Runtime closes the same segments as torch."""
    from edgeasr.export.onnx import export_onnx

    source, model, _ = with_segmenter
    with torch.no_grad():  # a segmenter that reads its frames, whatever the tests before it trained
        generator = torch.Generator().manual_seed(0)
        for layer in (model.segmenter.net[0], model.segmenter.net[-1]):
            layer.weight.normal_(0, 3.0 / layer.in_features ** 0.5, generator=generator)
            layer.bias.fill_(0.0)
    directory = save_model_dir(tmp_path / "model", model.eval(), source.tokenizer, source.features, source.streaming)
    metadata = export_onnx(str(directory), tmp_path / "onnx")
    assert (tmp_path / "onnx" / metadata["segmenter"]["graph"]).is_file()
    audio = speechlike(4.0, seed=3)

    def run(path, threshold, probe=None, **options):
        recognizer = edgeasr.load_model(str(path), mode="ctc_greedy", segment=True, segmenter_min_silence=0.0,
                                        segmenter_threshold=threshold, **options)
        if probe is not None:  # record what the segmenter says at each chunk
            said = recognizer.segmenter
            recognizer.segmenter = lambda encoded: probe.append(said(encoded)) or probe[-1]
        session = recognizer.stream()
        for start in range(0, len(audio), 1600):
            session.accept(audio[start : start + 1600])
        session.finish()
        return [(round(a, 2), round(b, 2)) for a, b, _ in session.finals]

    # The threshold sits in the widest gap between the chunks' probabilities around their median, so
    # some chunks end a segment and some do not on any machine, and torch and ORT agree on each.
    probe: list[float] = []
    run(directory, 0.5, probe=probe, backend="torch")
    values = sorted(probe)
    middle = values[len(values) // 4 : 3 * len(values) // 4 + 1]
    gap, threshold = max((b - a, (a + b) / 2) for a, b in zip(middle, middle[1:]))
    assert gap > 1e-3, f"the segmenter says the same for every chunk: {values}"
    torch_finals = run(directory, threshold, backend="torch")
    assert len(torch_finals) > 1
    assert run(tmp_path / "onnx", threshold) == torch_finals
