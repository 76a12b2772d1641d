"""Every shipped recipe loads, builds its model, and the default fits the 25 MB budget."""

from pathlib import Path

import pytest

from edgeasr.errors import EdgeAsrError
from edgeasr.model.asr import ASRModel, ModelConfig
from edgeasr.train.trainer import PRETRAINED_SOURCES, ExperimentConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_recipe_builds(path):
    experiment = ExperimentConfig.load(path)
    init_from = experiment.train.init_from
    if init_from in PRETRAINED_SOURCES:  # imported on the first run; its dims come from the import
        return
    if init_from:  # fine-tuning recipes start from a shipped model that must exist in git
        assert (ROOT / init_from / "model.pt").exists()
        assert not (ROOT / init_from).resolve().is_relative_to(ROOT / "exp"), "exp/ is not in git"
    vocab = experiment.tokenizer.get("vocab_size", 256) if experiment.tokenizer.get("kind") == "bpe" else 31
    model = ASRModel(ModelConfig.from_dict({**experiment.model, "vocab_size": vocab}))
    assert sum(p.numel() for p in model.parameters()) > 0
    assert experiment.streaming["chunk_size"] > 0


def test_default_recipe_fits_the_size_budget():
    experiment = ExperimentConfig.load(ROOT / "configs" / "u2_conformer_small.yaml")
    model = ASRModel(ModelConfig.from_dict({**experiment.model, "vocab_size": experiment.tokenizer["vocab_size"]}))
    fp32_bytes = 4 * sum(p.numel() for p in model.parameters())
    assert fp32_bytes < 25e6


def test_unknown_pretrained_init_from_is_refused():
    with pytest.raises(EdgeAsrError, match="unknown pretrained model"):
        ExperimentConfig.load(ROOT / "configs/whisper/tiny_ctc_frozen.yaml", {"init_from": "whisper:huge"})
