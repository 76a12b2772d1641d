"""Mixed-precision search: sensitivity per layer group, the greedy Pareto path, a budget."""

import json

import pytest
import torch

from edgeasr.cli import main
from edgeasr.model.package import load_model_dir
from edgeasr.quant.qat import quantized_layers
from edgeasr.quant.search import allocation_config, choose, greedy_pareto, layer_groups, sensitivity


@pytest.fixture(scope="module")
def searched(tiny_model):
    model = load_model_dir(tiny_model).model
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(1, 120, 80, generator=generator) * 2, torch.tensor([120])) for _ in range(2)]
    groups = layer_groups(model)
    table = sensitivity(model, batches, groups, (8, 4, 2))
    return model, groups, table, greedy_pareto(model, groups, table, (8, 4, 2))


def test_groups_split_blocks_into_modules_and_leave_the_decoder_out(searched):
    _, groups, _, _ = searched
    assert "encoder.layers.0.ff_in" in groups and "encoder.layers.1.attention" in groups
    assert "ctc" in groups and "encoder.subsampling" in groups
    assert not any(name.startswith("decoder") for names in groups.values() for name in names)


def test_fewer_bits_move_the_posteriors_more(searched):
    _, _, table, _ = searched
    for group, costs in table.items():
        assert 0 <= costs[8] <= costs[2], group
    assert sum(c[2] for c in table.values()) > sum(c[8] for c in table.values())


def test_greedy_path_shrinks_monotonically_from_all_8_to_all_2_bits(searched):
    _, groups, _, path = searched
    assert all(bits == 8 for bits in path[0].allocation.values())
    assert all(bits == 2 for bits in path[-1].allocation.values())
    assert len(path) == 2 * len(groups) + 1
    assert all(a.bytes > b.bytes for a, b in zip(path, path[1:]))


def test_choose_meets_the_budget_and_refuses_an_impossible_one(searched):
    _, _, _, path = searched
    middle = (path[0].bytes + path[-1].bytes) // 2
    chosen = choose(path, middle)
    assert chosen.bytes <= middle
    with pytest.raises(ValueError, match="no allocation fits"):
        choose(path, path[-1].bytes - 1)


def test_allocation_config_builds_that_mixed_model(searched):
    model, groups, _, path = searched
    allocation = path[len(path) // 2].allocation
    config = allocation_config(groups, allocation)
    import copy

    from edgeasr.quant.qat import prepare_qat

    trial = copy.deepcopy(model)
    prepare_qat(trial, config)
    bits = quantized_layers(trial)
    for group, names in groups.items():
        assert all(bits[name].weight_bits == allocation[group] for name in names)


def test_quantize_search_command_writes_the_pareto_set_and_a_model_in_budget(tiny_model, tiny_corpus, tmp_path, capsys):
    out = tmp_path / "mixed"
    assert main(["quantize", "--model", str(tiny_model), "--out", str(out), "--calib", str(tiny_corpus / "train.jsonl"),
                 "--limit", "3", "--search", "--budget-kb", "120", "--search-eval", str(tiny_corpus / "dev.jsonl"),
                 "--progress"]) == 0
    progress = capsys.readouterr().err
    # the last trial and the last measured point always report, whatever the pace
    assert "quantize --search: sensitivity:" in progress and "(100%)" in progress
    assert "quantize --search: WER of Pareto points:" in progress
    report = json.loads((out / "search.json").read_text())
    assert report["chosen"]["bytes"] <= 120 * 1024
    assert len(report["pareto"]) >= 3 and all("wer" in row for row in report["measured"])
    layers = quantized_layers(load_model_dir(out).model)
    assert {spec.weight_bits for spec in layers.values()} <= {8, 4, 2}
