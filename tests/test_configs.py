"""Every shipped recipe loads, builds its model, and the default fits the 25 MB budget."""

from pathlib import Path

import pytest

from edgeasr.model.asr import ASRModel, ModelConfig
from edgeasr.train.trainer import ExperimentConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_recipe_builds(path):
    experiment = ExperimentConfig.load(path)
    if experiment.train.init_from:  # fine-tuning recipes start from a shipped model that must exist
        assert (ROOT / experiment.train.init_from / "model.pt").exists()
    vocab = experiment.tokenizer.get("vocab_size", 256) if experiment.tokenizer.get("kind") == "bpe" else 31
    model = ASRModel(ModelConfig.from_dict({**experiment.model, "vocab_size": vocab}))
    assert sum(p.numel() for p in model.parameters()) > 0
    assert experiment.streaming["chunk_size"] > 0


def test_default_recipe_fits_the_size_budget():
    experiment = ExperimentConfig.load(ROOT / "configs" / "u2_conformer_small.yaml")
    model = ASRModel(ModelConfig.from_dict({**experiment.model, "vocab_size": experiment.tokenizer["vocab_size"]}))
    fp32_bytes = 4 * sum(p.numel() for p in model.parameters())
    assert fp32_bytes < 25e6
