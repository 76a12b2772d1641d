"""Every shipped recipe loads, builds its model, and the default fits the 25 MB budget."""

from pathlib import Path

import pytest

from edgeasr.model.asr import ASRModel, ModelConfig
from edgeasr.train.trainer import ExperimentConfig

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_recipe_builds(path):
    experiment = ExperimentConfig.load(path)
    vocab = experiment.tokenizer.get("vocab_size", 256) if experiment.tokenizer.get("kind") == "bpe" else 31
    model = ASRModel(ModelConfig.from_dict({**experiment.model, "vocab_size": vocab}))
    assert sum(p.numel() for p in model.parameters()) > 0
    assert experiment.streaming["chunk_size"] > 0


def test_default_recipe_fits_the_size_budget():
    experiment = ExperimentConfig.load(Path(CONFIGS[0]).parent / "u2_conformer_small.yaml")
    model = ASRModel(ModelConfig.from_dict({**experiment.model, "vocab_size": experiment.tokenizer["vocab_size"]}))
    fp32_bytes = 4 * sum(p.numel() for p in model.parameters())
    assert fp32_bytes < 25e6
