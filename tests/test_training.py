"""Training: a real (tiny) run on synthesized speech, resume after a kill, DDP with two processes."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from edgeasr.cli import main
from edgeasr.model.package import load_model_dir
from edgeasr.train.checkpoint import average_checkpoints, list_checkpoints, load_checkpoint

TINY_RECIPE = """
model:
  encoder: {d_model: 32, num_heads: 2, d_ff: 64, num_blocks: 2, kernel_size: 5, dropout: 0.0}
  decoder: {num_layers: 1, d_ff: 64, dropout: 0.0}
tokenizer: {kind: char}
train:
  max_steps: 6
  warmup_steps: 2
  checkpoint_every: 2
  keep_checkpoints: 10
  log_every: 1
  eval_every: 3
  eval_utts: 2
  max_frames: 1500
  speeds: [0.9, 1.0, 1.1]
  feature_jobs: 1
  sortagrad: true
streaming: {chunk_size: 8, num_left_chunks: -1}
"""


@pytest.fixture()
def corpus(tiny_corpus):
    return tiny_corpus


@pytest.fixture()
def recipe(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_RECIPE)
    return path


def weights(model_dir: Path) -> dict:
    return load_model_dir(model_dir).model.state_dict()


def test_training_runs_logs_and_packages_a_model(corpus, recipe, tmp_path):
    out = tmp_path / "exp"
    assert main(["train", "--config", str(recipe), "--data", str(corpus), "--out", str(out), "--quiet"]) == 0
    rows = (out / "train_log.csv").read_text().splitlines()
    assert rows[0].startswith("step,epoch,loss")
    assert len(rows) == 1 + 6
    assert any(r.split(",")[8] for r in rows[1:]), "dev CER was never measured"
    packaged = load_model_dir(out / "model")
    assert packaged.streaming.chunk_size == 8
    # The packaged weights are the average of the last checkpoints.
    averaged = average_checkpoints(list_checkpoints(out / "checkpoints")[-5:])
    for name, value in packaged.model.state_dict().items():
        assert torch.allclose(value.float(), averaged[name].float()), name
    # Checkpoints load without unpickling arbitrary objects.
    state = load_checkpoint(list_checkpoints(out / "checkpoints")[-1])
    assert state["step"] == 6
    # `edgeasr average` repackages the same checkpoints into the same weights.
    assert main(["average", "--exp", str(out), "--out", str(tmp_path / "avg"), "--num", "5"]) == 0
    for name, value in load_model_dir(tmp_path / "avg").model.state_dict().items():
        assert torch.equal(value, packaged.model.state_dict()[name]), name
    # A second run into the same directory must not silently overwrite it.
    assert main(["train", "--config", str(recipe), "--data", str(corpus), "--out", str(out), "--quiet"]) == 2


def test_resume_after_a_kill_continues_exactly(corpus, recipe, tmp_path):
    straight = tmp_path / "straight"
    assert main(["train", "--config", str(recipe), "--data", str(corpus), "--out", str(straight), "--quiet"]) == 0

    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "edgeasr", "train", "--config", str(recipe), "--data", str(corpus),
               "--out", str(killed), "--quiet", "--set", "max_steps=1000"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list_checkpoints(killed / "checkpoints")) < 2:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = list_checkpoints(killed / "checkpoints")
    assert done, "the run was killed before its first checkpoint"
    # Keep only checkpoints up to step 4 so the resumed run has work left, as after a real kill.
    for path in done:
        if int(path.stem.split("-")[1]) > 4:
            path.unlink()
    assert main(["train", "--config", str(recipe), "--data", str(corpus), "--out", str(killed),
                 "--quiet", "--resume"]) == 0
    a, b = weights(straight / "model"), weights(killed / "model")
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name


def test_resume_skips_a_corrupt_checkpoint_cleans_up_and_keeps_the_log_clean(corpus, recipe, tmp_path, capsys):
    out = tmp_path / "exp"
    assert main(["train", "--config", str(recipe), "--data", str(corpus), "--out", str(out), "--quiet",
                 "--set", "max_steps=4"]) == 0
    checkpoints = list_checkpoints(out / "checkpoints")
    newest = checkpoints[-1]
    newest.write_bytes(newest.read_bytes()[:200])  # a disk that filled up mid-copy
    stale = out / "checkpoints" / ".step-00000009.pt.abc.tmp"
    stale.write_bytes(b"half a save")
    capsys.readouterr()
    assert main(["train", "--config", str(recipe), "--data", str(corpus), "--out", str(out), "--quiet",
                 "--resume"]) == 0
    err = capsys.readouterr().err
    assert f"{newest.name}: unreadable" in err
    assert not stale.exists()
    steps = [row.split(",")[0] for row in (out / "train_log.csv").read_text().splitlines()[1:]]
    assert steps == sorted(set(steps), key=int), steps  # no step logged twice
    assert load_checkpoint(list_checkpoints(out / "checkpoints")[-1])["step"] == 6
    # every checkpoint damaged: a clear error, not a silent restart from step 0
    for path in list_checkpoints(out / "checkpoints"):
        path.write_bytes(b"")
    assert main(["train", "--config", str(recipe), "--data", str(corpus), "--out", str(out), "--quiet",
                 "--resume"]) == 2
    assert "no intact checkpoint" in capsys.readouterr().err


def test_two_process_data_parallel_training(corpus, recipe, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
               "-m", "edgeasr", "train", "--config", str(recipe), "--data", str(corpus), "--out", str(out),
               "--quiet", "--max-steps", "3"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    state = load_checkpoint(list_checkpoints(out / "checkpoints")[-1])
    assert state["step"] == 3
    assert (out / "model" / "model.pt").exists()


def test_missing_corpus_is_a_clear_error(recipe, tmp_path, capsys):
    assert main(["train", "--config", str(recipe), "--data", str(tmp_path / "nope"), "--out",
                 str(tmp_path / "x"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edgeasr: error:") and "train.jsonl" in err and "\n" not in err


def test_pruning_keeps_newest_and_best_and_averages_the_best(tmp_path):
    from edgeasr.train.checkpoint import checkpoints_to_average, save_checkpoint

    scores = {1: 50.0, 2: 20.0, 3: 30.0, 4: 10.0, 5: 40.0, 6: 45.0}
    for step, score in scores.items():
        save_checkpoint(tmp_path, step, {"model": {"w": torch.full((2,), float(step))}}, keep=2,
                        score=score, keep_best=2)
    kept = [int(p.stem.split("-")[1]) for p in list_checkpoints(tmp_path)]
    assert kept == [2, 4, 5, 6]  # newest two (5, 6) and best two (4, 2)
    best = checkpoints_to_average(tmp_path, 2, by="best")
    assert [int(p.stem.split("-")[1]) for p in best] == [2, 4]
    assert torch.equal(average_checkpoints(best)["w"], torch.full((2,), 3.0))
    last = checkpoints_to_average(tmp_path, 2, by="last")
    assert [int(p.stem.split("-")[1]) for p in last] == [5, 6]


def test_bad_recipe_values_are_clear_errors(corpus, tmp_path, capsys):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(TINY_RECIPE.replace("max_steps: 6", "max_steps: 6\n  average_by: median"))
    assert main(["train", "--config", str(recipe), "--data", str(corpus), "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "average_by" in capsys.readouterr().err


def train_float_then_qat(corpus, recipe, tmp_path, extra_train: str = "") -> tuple[Path, Path]:
    """The tiny recipe trained in float, then 2 steps of W4A8 QAT from it (plus ``extra_train``
    lines in its train section); returns (float experiment, QAT experiment)."""
    float_dir = tmp_path / "float"
    assert main(["train", "--config", str(recipe), "--data", str(corpus), "--out", str(float_dir), "--quiet"]) == 0
    qat_recipe = tmp_path / "qat.yaml"
    qat_recipe.write_text(TINY_RECIPE.replace(
        "  decoder: {num_layers: 1, d_ff: 64, dropout: 0.0}\n",
        "  decoder: {num_layers: 1, d_ff: 64, dropout: 0.0}\n"
        "  quantization: {weight_bits: 4, act_bits: 8, skip: ['decoder.*']}\n",
    ).replace("  max_steps: 6\n", f"  max_steps: 2\n{extra_train}  init_from: {float_dir / 'model'}\n"))
    out = tmp_path / "qat"
    assert main(["train", "--config", str(qat_recipe), "--data", str(corpus), "--out", str(out), "--quiet"]) == 0
    return float_dir, out


def test_qat_fine_tunes_from_a_float_model_and_packages_a_quantized_one(corpus, recipe, tmp_path):
    from edgeasr.quant.qat import quantized_layers

    float_dir, out = train_float_then_qat(corpus, recipe, tmp_path)
    start = load_checkpoint(list_checkpoints(out / "checkpoints")[0])["model"]
    float_weights = weights(float_dir / "model")
    # CMVN and tokenizer come from the float model, and training started from its weights.
    assert torch.equal(start["cmvn_mean"], float_weights["cmvn_mean"])
    assert (out / "tokenizer" / "tokenizer.json").read_text() == (float_dir / "model" / "tokenizer" / "tokenizer.json").read_text()
    name = "encoder.layers.0.ff_in.linear_in.weight"
    assert (start[name] - float_weights[name]).abs().max() < 0.05
    packaged = load_model_dir(out / "model").model
    layers = quantized_layers(packaged)
    assert layers and all(spec.weight_bits == 4 for spec in layers.values())
    assert all(bool(m.input_quant.initialized) for m in packaged.modules() if hasattr(m, "input_quant") and m.input_quant is not None)


def test_init_from_a_model_of_another_shape_is_a_one_line_error(corpus, recipe, tmp_path, capsys):
    float_dir = tmp_path / "float"
    assert main(["train", "--config", str(recipe), "--data", str(corpus), "--out", str(float_dir), "--quiet"]) == 0
    other = tmp_path / "other.yaml"
    other.write_text(TINY_RECIPE.replace("d_model: 32", "d_model: 48").replace(
        "  max_steps: 6\n", f"  max_steps: 2\n  init_from: {float_dir / 'model'}\n"))
    capsys.readouterr()
    assert main(["train", "--config", str(other), "--data", str(corpus), "--out", str(tmp_path / "x"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "do not fit this config" in err


def test_optimizer_state_follows_a_layer_whose_storage_layout_changed():
    """Checkpoints from before pointwise convolutions became linears resume (weights via the
    layer's load hook, Adam moments reshaped to match)."""
    from edgeasr.nn.convolution import ConvolutionModule
    from edgeasr.train.trainer import _match_optimizer_shapes

    module = ConvolutionModule(8, kernel_size=3)
    optimizer = torch.optim.Adam(module.parameters())
    module(torch.randn(1, 10, 8))[0].sum().backward()
    optimizer.step()
    state = optimizer.state_dict()
    weight_id = [i for i, p in enumerate(module.parameters()) if p is module.pointwise_in.weight][0]
    for key in ("exp_avg", "exp_avg_sq"):  # what an old checkpoint holds: [out, in, 1]
        state["state"][weight_id][key] = state["state"][weight_id][key].unsqueeze(-1)
    fresh = torch.optim.Adam(module.parameters())
    fresh.load_state_dict(state)
    _match_optimizer_shapes(fresh)
    module(torch.randn(1, 10, 8))[0].sum().backward()
    fresh.step()
    assert fresh.state[module.pointwise_in.weight]["exp_avg"].shape == module.pointwise_in.weight.shape


def test_average_fp16_ships_half_the_bytes_and_loads_as_float32(corpus, recipe, tmp_path):
    out = tmp_path / "exp"
    assert main(["train", "--config", str(recipe), "--data", str(corpus), "--out", str(out), "--quiet"]) == 0
    assert main(["average", "--exp", str(out), "--out", str(tmp_path / "f32"), "--num", "2"]) == 0
    assert main(["average", "--exp", str(out), "--out", str(tmp_path / "f16"), "--num", "2", "--fp16"]) == 0
    full, half = (tmp_path / "f32" / "model.pt").stat().st_size, (tmp_path / "f16" / "model.pt").stat().st_size
    assert half < 0.6 * full
    a, b = load_model_dir(tmp_path / "f32").model, load_model_dir(tmp_path / "f16").model
    assert all(p.dtype == torch.float32 for p in b.parameters())
    feats = torch.randn(1, 120, 80)
    with torch.no_grad():
        x = a.ctc_log_probs(a.encode(feats, torch.tensor([120]))[0])
        y = b.ctc_log_probs(b.encode(feats, torch.tensor([120]))[0])
    assert (x - y).abs().max().item() < 0.05


def test_distillation_pulls_the_encoder_towards_its_teacher(tiny_model):
    """distill_weight: zero error against an identical teacher, a gradient into the encoder when
    they differ, the error falls under training, and the teacher stays out of the state dict."""
    import copy

    from conftest import speechlike

    from edgeasr.model.package import load_model_dir as load

    packaged = load(tiny_model)
    teacher = packaged.model
    student = copy.deepcopy(teacher)
    student.set_teacher(teacher, 1.0)
    student.chunk_generator.manual_seed(0)
    feats = packaged.features.compute(speechlike(2.0, seed=4))[None]
    lengths = torch.tensor([feats.size(1)])
    tokens = torch.tensor([packaged.tokenizer.encode("hello world")])
    token_lengths = torch.tensor([tokens.size(1)])
    student.train()
    assert float(student(feats, lengths, tokens, token_lengths)["distill"].detach()) < 1e-10
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        for parameter in student.encoder.parameters():
            parameter.add_(0.2 * torch.randn(parameter.shape, generator=generator))
    optimizer = torch.optim.Adam(student.encoder.parameters(), lr=3e-3)
    errors = []
    for _ in range(15):
        out = student(feats, lengths, tokens, token_lengths)
        optimizer.zero_grad()
        out["distill"].backward()
        assert student.encoder.layers[0].ff_in.linear_in.weight.grad.abs().sum() > 0
        optimizer.step()
        errors.append(float(out["distill"].detach()))
    assert errors[0] > 1e-3 and errors[-1] < 0.5 * errors[0]
    assert all(p.grad is None for p in teacher.parameters())
    assert set(student.state_dict()) == set(teacher.state_dict())
    student.eval()
    assert "distill" not in student(feats, lengths, tokens, token_lengths)


def test_qat_with_distillation_logs_the_term_and_needs_a_teacher(corpus, recipe, tmp_path, capsys):
    _, out = train_float_then_qat(corpus, recipe, tmp_path, "  distill_weight: 1.0\n")
    import csv

    rows = list(csv.DictReader(open(out / "train_log.csv")))
    # 4-bit weights move the encoder's output off the float teacher's: a real, finite error
    assert rows and all(0 < float(row["distill"]) < 10 for row in rows)
    load_model_dir(out / "model")  # the teacher is no part of the packaged model
    no_teacher = tmp_path / "no_teacher.yaml"
    no_teacher.write_text(TINY_RECIPE.replace("  max_steps: 6\n", "  max_steps: 2\n  distill_weight: 1.0\n"))
    assert main(["train", "--config", str(no_teacher), "--data", str(corpus), "--out", str(tmp_path / "x")]) != 0
    assert "distill_weight" in capsys.readouterr().err
