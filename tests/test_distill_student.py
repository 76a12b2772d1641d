"""Distilling a different, smaller student from a frozen teacher (train.teacher, distill_ctc_weight):
the fast first pass learns the pretrained default's CTC posteriors frame by frame."""

import copy

import numpy as np
import pytest
import torch

from conftest import speechlike

from edgeasr.cli import main
from edgeasr.model.asr import ASRModel, ModelConfig
from edgeasr.model.package import load_model_dir

STUDENT_ENCODER = {"d_model": 32, "num_heads": 2, "d_ff": 64, "blocks": ["conv", "performer"], "kernel_size": 5,
                   "performer_features": 8, "subsampling_channels": 8, "dropout": 0.0}


def batch(packaged, text="hello world", seconds=2.0):
    feats = packaged.features.compute(speechlike(seconds, seed=4))[None]
    tokens = torch.tensor([packaged.tokenizer.encode(text)])
    return feats, torch.tensor([feats.size(1)]), tokens, torch.tensor([tokens.size(1)])


def student_of(packaged, **encoder):
    return ASRModel(ModelConfig.from_dict({"vocab_size": packaged.tokenizer.vocab_size,
                                           "encoder": {**STUDENT_ENCODER, **encoder}, "decoder": {"num_layers": 0},
                                           "ctc_weight": 1.0}))


def losses_while_training(student, key: str, steps: int, *args) -> list[float]:
    """The ``key`` loss at each of ``steps`` Adam steps on that loss alone, on one batch."""
    optimizer = torch.optim.Adam(student.parameters(), lr=3e-3)
    values = []
    for _ in range(steps):
        out = student(*args)
        optimizer.zero_grad()
        out[key].backward()
        optimizer.step()
        values.append(float(out[key].detach()))
    return values


def test_the_posterior_kl_is_zero_for_a_copy_and_falls_for_a_student(tiny_model):
    packaged = load_model_dir(tiny_model)
    teacher = packaged.model
    args = batch(packaged)
    twin = copy.deepcopy(teacher)
    twin.set_teacher(teacher, 0.0, ctc_weight=1.0)
    twin.train()
    assert float(twin(*args)["distill_ctc"].detach()) < 1e-6  # the same posteriors: nothing to learn

    student = student_of(packaged)  # another architecture: conv + Performer blocks, 32 wide
    student.set_teacher(teacher, 0.0, ctc_weight=1.0)
    student.train()
    optimizer = torch.optim.Adam(student.parameters(), lr=3e-3)
    values = []
    for _ in range(25):
        out = student(*args)
        assert "distill" not in out  # no encoder-output term: the widths differ
        optimizer.zero_grad()
        out["distill_ctc"].backward()
        optimizer.step()
        values.append(float(out["distill_ctc"].detach()))
    assert values[0] > 0.5 and values[-1] < 0.5 * values[0]
    assert all(p.grad is None for p in teacher.parameters())
    student.eval()
    assert "distill_ctc" not in student(*args)


def test_teachers_that_cannot_be_distilled_are_refused(tiny_model):
    packaged = load_model_dir(tiny_model)
    with pytest.raises(ValueError, match="frames"):
        student_of(packaged, subsampling_rate=2).set_teacher(packaged.model, 0.0, ctc_weight=1.0)
    with pytest.raises(ValueError, match="wide"):
        student_of(packaged).set_teacher(packaged.model, 1.0)
    other = ASRModel(ModelConfig.from_dict({"vocab_size": packaged.tokenizer.vocab_size + 3,
                                            "encoder": STUDENT_ENCODER, "decoder": {"num_layers": 0}}))
    with pytest.raises(ValueError, match="tokenizer"):
        other.set_teacher(packaged.model, 0.0, ctc_weight=1.0)


def test_a_20ms_student_learns_from_whisper(whisper_imported):
    """Subsampling by 2 gives Whisper's 20 ms frames; Whisper's stem pads, the student's valid
    convolutions do not, so the teacher's frames are centre-cropped to the student's count."""
    packaged = load_model_dir(whisper_imported)
    student = student_of(packaged, subsampling_rate=2)
    student.set_teacher(packaged.model, 0.0, ctc_weight=1.0)
    student.train()
    feats, lengths, tokens, token_lengths = batch(packaged, seconds=1.5)
    with torch.no_grad():
        teacher_frames = packaged.model.encode(feats, lengths)[0].size(1)
        student_frames = student.encode(feats, lengths)[0].size(1)
    assert teacher_frames - student_frames == 2  # one pad frame at each end
    values = losses_while_training(student, "distill_ctc", 12, feats, lengths, tokens, token_lengths)
    assert values[-1] < 0.7 * values[0]


def test_layer_targets_teach_the_students_middle_layers_and_stay_out_of_the_model(whisper_imported, tmp_path):
    """Layer-wise targets: each paired student layer, projected to the teacher's width, learns the
    teacher layer's layer-normalized output; the projections never reach a model directory."""
    from edgeasr.model.package import StreamingDefaults, save_model_dir

    packaged = load_model_dir(whisper_imported)
    teacher_layers = len(packaged.model.encoder.layers)
    student = student_of(packaged, subsampling_rate=2)  # 2 blocks against the teacher's layers
    student.set_teacher(packaged.model, 0.0, layer_weight=1.0)
    assert student.distill_layer_pairs == ((0, teacher_layers // 2 - 1), (1, teacher_layers - 1))
    assert sorted(student.distill_projections) == ["0", "1"]
    student.train()
    feats, lengths, tokens, token_lengths = batch(packaged, seconds=1.5)
    # the loss is the error against what the paired layers really output, recomputed here
    caught = {}

    def catcher(key):
        def catch(module, inputs, output):
            caught[key] = output[0]
        return catch

    handles = [layers[index].register_forward_hook(catcher((side, index)))
               for side, layers in (("student", student.encoder.layers), ("teacher", packaged.model.encoder.layers))
               for index in range(len(layers))]
    out = student(feats, lengths, tokens, token_lengths)
    for handle in handles:
        handle.remove()
    assert "distill_ctc" not in out
    frames = caught[("student", 0)].size(1)
    offset = (caught[("teacher", 0)].size(1) - frames) // 2
    expected = sum(
        ((student.distill_projections[str(s)](caught[("student", s)])
          - torch.nn.functional.layer_norm(caught[("teacher", t)], (caught[("teacher", t)].size(-1),))
          [:, offset : offset + frames]) ** 2).mean(-1).sum()
        for s, t in student.distill_layer_pairs) / 2  # per frame: the mean over dims; summed over frames
    assert torch.allclose(out["distill_layers"], expected, rtol=1e-5)
    assert float(out["distill_layers"].detach()) > 0.5 * frames  # near 1 a frame for random projections
    assert student._caught_hidden == {}  # each batch's hidden states are used once, not kept
    values = losses_while_training(student, "distill_layers", 15, feats, lengths, tokens, token_lengths)
    assert values[-1] < 0.7 * values[0]
    assert all(p.grad is None for p in packaged.model.parameters())
    assert student.distill_projections["1"].weight.grad is not None

    student.eval()
    with torch.no_grad():
        plain = student(feats, lengths, tokens, token_lengths)
    assert "distill_layers" not in plain and student._caught_hidden == {}  # nothing caught in eval
    saved = save_model_dir(tmp_path / "student", student, packaged.tokenizer, packaged.features,
                           StreamingDefaults(chunk_size=16, num_left_chunks=-1))
    reloaded = load_model_dir(saved)  # loads strictly: no training-only projections in it
    assert not any(name.startswith("distill_projections") for name in reloaded.model.state_dict())
    with torch.no_grad():
        assert torch.allclose(reloaded.model.encode(feats, lengths)[0], student.encode(feats, lengths)[0], atol=1e-6)


def test_layer_pairs_that_do_not_exist_are_refused(tiny_model):
    packaged = load_model_dir(tiny_model)
    student = student_of(packaged)
    with pytest.raises(ValueError, match="pair"):
        student.set_teacher(packaged.model, 0.0, layer_weight=1.0, layer_pairs=[[0, 99]])
    with pytest.raises(ValueError, match="one teacher layer"):
        student.set_teacher(packaged.model, 0.0, layer_weight=1.0, layer_pairs=[[0, 0], [0, 1]])
    student.set_teacher(packaged.model, 0.0, layer_weight=1.0, layer_pairs=[[1, 0]])
    assert student.distill_layer_pairs == ((1, 0),)
    student.set_teacher(None, 0.0)  # hooks and projections go with the teacher
    assert student._distill_hooks == [] and not hasattr(student, "distill_projections")


def test_train_with_a_teacher_takes_its_tokenizer_and_front_end(tiny_model, tiny_corpus, tmp_path, capsys):
    recipe = tmp_path / "student.yaml"
    recipe.write_text(f"""
model:
  encoder: {STUDENT_ENCODER}
  decoder: {{num_layers: 0}}
  ctc_weight: 1.0
tokenizer: {{kind: bpe, vocab_size: 40}}
train:
  teacher: {tiny_model}
  distill_ctc_weight: 1.0
  max_steps: 3
  warmup_steps: 1
  checkpoint_every: 3
  log_every: 1
  eval_every: 3
  eval_utts: 2
  average_last: 1
  max_frames: 4000
  speeds: [1.0]
  augment_warmup_steps: 0
""")
    out = tmp_path / "exp"
    assert main(["train", "--config", str(recipe), "--data", str(tiny_corpus), "--out", str(out), "--quiet"]) == 0
    import csv

    rows = list(csv.DictReader(open(out / "train_log.csv")))
    assert rows and all(float(row["distill_ctc"]) > 0 for row in rows)
    student, teacher = load_model_dir(out / "model"), load_model_dir(tiny_model)
    assert student.tokenizer.units == teacher.tokenizer.units  # the teacher's, not a new BPE
    assert student.features.to_dict() == teacher.features.to_dict()
    assert student.model.config.encoder.blocks == ["conv", "performer"]

    layered = tmp_path / "layered.yaml"
    layered.write_text(recipe.read_text().replace("distill_ctc_weight: 1.0",
                                                  "distill_ctc_weight: 1.0\n  distill_layer_weight: 0.5"))
    out2 = tmp_path / "exp-layers"
    assert main(["train", "--config", str(layered), "--data", str(tiny_corpus), "--out", str(out2), "--quiet"]) == 0
    rows = list(csv.DictReader(open(out2 / "train_log.csv")))
    assert rows and all(float(row["distill_layers"]) > 0 for row in rows)
    checkpoint = torch.load(sorted((out2 / "checkpoints").glob("*.pt"))[-1], weights_only=False)
    assert any(name.startswith("distill_projections") for name in checkpoint["model"])  # kept to resume
    assert main(["train", "--config", str(layered), "--data", str(tiny_corpus), "--out", str(out2), "--quiet",
                 "--resume", "--set", "max_steps=4"]) == 0
    load_model_dir(out2 / "model")  # strict load: the projections stayed out
    assert main(["average", "--exp", str(out2), "--out", str(tmp_path / "averaged"), "--num", "2"]) == 0
    load_model_dir(tmp_path / "averaged")

    bad = tmp_path / "bad.yaml"
    bad.write_text(recipe.read_text().replace("distill_ctc_weight: 1.0", "distill_weight: 1.0"))
    assert main(["train", "--config", str(bad), "--data", str(tiny_corpus), "--out", str(tmp_path / "x")]) != 0
    assert "wide" in capsys.readouterr().err


@pytest.fixture(scope="module")
def student_dir(whisper_imported, tmp_path_factory):
    """A random 20 ms student with the Whisper model's tokenizer and front end."""
    from edgeasr.model.package import StreamingDefaults, save_model_dir

    packaged = load_model_dir(whisper_imported)
    torch.manual_seed(0)
    student = student_of(packaged, subsampling_rate=2).eval()
    with torch.no_grad():
        student.ctc.bias[0] = -3.0  # biased away from blank, so its partials hold text
    return save_model_dir(tmp_path_factory.mktemp("student"), student, packaged.tokenizer, packaged.features,
                          StreamingDefaults(chunk_size=16, num_left_chunks=-1))


def partials_in_turn(session, other, audio, block: int = 5120) -> list[tuple[str, str]]:
    """Two streams fed the same blocks in turn: the pairs of partial texts after each block."""
    return [(session.accept(audio[start : start + block]).text, other.accept(audio[start : start + block]).text)
            for start in range(0, len(audio), block)]


def test_a_separate_first_pass_streams_the_partials_and_the_model_makes_the_finals(whisper_imported, student_dir):
    from edgeasr.decoding.recognizer import DecodeOptions, Recognizer

    audio = speechlike(1.5, seed=9)
    both = Recognizer.load(whisper_imported, DecodeOptions(mode="whisper_rescoring", chunk_size=16,
                                                           first_pass=str(student_dir), segment=False))
    alone = Recognizer.load(student_dir, DecodeOptions(mode="ctc_greedy", chunk_size=16, lm=None))
    teacher = Recognizer.load(whisper_imported, DecodeOptions(mode="whisper_rescoring", chunk_size=16, segment=False))
    assert both.first_model is not both.model
    session, student_session = both.stream(), alone.stream()
    partials = partials_in_turn(session, student_session, audio)
    assert any(ours for ours, _ in partials)
    assert all(ours == theirs for ours, theirs in partials)  # the partials are the student's
    final = session.finish().text
    assert final == teacher.transcribe(audio, streaming=True).text  # the finals are the model's second pass


def test_a_segmenter_is_left_out_when_a_separate_first_pass_streams(whisper_imported, student_dir, tmp_path):
    """The model's segmenter reads its own first pass's frames: with --first-pass the blank rules
    close the segments (auto), and asking for the segmenter there is a one-line error."""
    from edgeasr.decoding.recognizer import DecodeOptions, Recognizer
    from edgeasr.errors import EdgeAsrError
    from edgeasr.model.asr import ASRModel, ModelConfig
    from edgeasr.model.package import load_model_dir, load_weights_from, save_model_dir

    source = load_model_dir(whisper_imported)
    config = source.model.config.to_dict()
    config["segmenter"] = {"hidden": 8, "margin": 2}
    model = ASRModel(ModelConfig.from_dict(config))
    load_weights_from(model, source)
    directory = save_model_dir(tmp_path / "with-segmenter", model.eval(), source.tokenizer, source.features,
                               source.streaming, pretrained=source.pretrained, whisper_dir=source.whisper_dir)
    options = {"mode": "whisper_rescoring", "chunk_size": 16, "segment": False, "lm": None}
    assert Recognizer.load(directory, DecodeOptions(**options)).segmenter is not None
    both = Recognizer.load(directory, DecodeOptions(**options, first_pass=str(student_dir)))
    assert both.segmenter is None and both.first_model is not both.model
    assert isinstance(both.transcribe(speechlike(1.0, seed=3)).text, str)
    with pytest.raises(EdgeAsrError, match="--segmenter on: the segmenter reads this model's own first pass"):
        Recognizer.load(directory, DecodeOptions(**options, first_pass=str(student_dir), segmenter=True))


def test_a_first_pass_that_does_not_fit_is_refused(whisper_imported, tiny_model):
    from edgeasr.decoding.recognizer import DecodeOptions, Recognizer
    from edgeasr.errors import EdgeAsrError

    with pytest.raises(EdgeAsrError, match="--first-pass .*features"):
        Recognizer.load(whisper_imported, DecodeOptions(mode="whisper_rescoring", first_pass=str(tiny_model)))


@pytest.fixture(scope="module")
def exports(whisper_imported, student_dir, tmp_path_factory):
    """The Whisper model's export and the student's (a block-plan encoder on Whisper's log-mel)."""
    from edgeasr.export.onnx import export_onnx

    folder = tmp_path_factory.mktemp("first-pass-onnx")
    export_onnx(whisper_imported, folder / "model", chunk_size=16)
    meta = export_onnx(student_dir, folder / "student")
    assert meta["format"] == "edgeasr-onnx-streaming" and meta["features"]["kind"] == "whisper_mel"
    return folder / "model", folder / "student"


def test_the_student_on_onnx_runtime_streams_what_torch_does(student_dir, exports):
    from edgeasr.api import load_model

    audio = speechlike(2.0, seed=5)
    on_torch = load_model(student_dir, mode="ctc_greedy", lm=None)
    on_onnx = load_model(exports[1], mode="ctc_greedy", lm=None)
    assert on_onnx.frontend.kind == "whisper_mel"  # the front end the export names
    runners = [(r.chunk_runner(), r.frontend.stream()) for r in (on_torch, on_onnx)]
    got = [[], []]
    for start in range(0, len(audio), 3000):
        for index, (runner, features) in enumerate(runners):
            got[index].append(runner.accept(features.accept(audio[start : start + 3000]))[1])
    reference, ours = (np.concatenate([np.asarray(x) for x in out if x is not None]) for out in got)
    assert ours.shape == reference.shape and np.abs(ours - reference).max() < 1e-3
    assert on_onnx.transcribe(audio).text == on_torch.transcribe(audio).text


def test_a_separate_first_pass_on_onnx_runtime(whisper_imported, student_dir, exports, tmp_path, monkeypatch):
    """The student's export streams the partials; the model's export re-encodes the same
    features in its second pass for the finals, as on torch."""
    from edgeasr.api import load_model

    model, student = exports
    audio = speechlike(1.5, seed=9)
    both = load_model(model, mode="whisper_rescoring", first_pass=str(student), segment=False)
    alone = load_model(student, mode="ctc_greedy", lm=None)
    teacher = load_model(model, mode="whisper_rescoring", segment=False)
    assert type(both).__name__ == "OnnxRecognizer" and both.first_export is not both
    session, student_session = both.stream(), alone.stream()
    partials = partials_in_turn(session, student_session, audio)
    assert any(ours for ours, _ in partials)
    assert all(ours == theirs for ours, theirs in partials)  # the partials are the student's
    assert session.finish().text == teacher.transcribe(audio).text  # the finals are the model's second pass
    # a model directory as the first pass: exported once, at the export's chunk size
    monkeypatch.setenv("EDGEASR_CACHE", str(tmp_path / "cache"))
    from_dir = load_model(model, mode="whisper_rescoring", first_pass=str(student_dir), segment=False)
    assert from_dir.first_export.chunk_size == both.chunk_size
    assert from_dir.transcribe(audio).text == both.transcribe(audio).text


def test_an_onnx_first_pass_that_does_not_fit_is_refused(whisper_imported, student_dir, exports, tmp_path,
                                                         monkeypatch):
    from edgeasr.api import load_model
    from edgeasr.errors import EdgeAsrError
    from edgeasr.export.onnx import export_onnx

    model, student = exports
    with pytest.raises(EdgeAsrError, match="--first-pass .*Whisper-encoder export"):
        load_model(model, mode="whisper_rescoring", first_pass=str(model))
    export_onnx(student_dir, tmp_path / "other-chunk", chunk_size=8)
    with pytest.raises(EdgeAsrError, match="--first-pass .*8-frame chunks.*--chunk-size 16"):
        load_model(model, mode="whisper_rescoring", first_pass=str(tmp_path / "other-chunk"))
    with pytest.raises(EdgeAsrError, match="--first-pass .*neither an ONNX export nor a model directory"):
        load_model(model, mode="whisper_rescoring", first_pass=str(tmp_path))
    monkeypatch.setenv("EDGEASR_CACHE", str(tmp_path / "cache"))
    with pytest.raises(EdgeAsrError, match="--first-pass .*neither an ONNX export nor a model directory"):
        load_model(whisper_imported, backend="onnx", first_pass=str(tmp_path / "other-chunk" / "tokenizer"))
    assert not (tmp_path / "cache").exists()  # refused before the model's export began
