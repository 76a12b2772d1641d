"""Mixed-precision search (the MOHAQ idea): which layers can take fewer bits, for a size budget.

1. Sensitivity: for every group of layers (one feed-forward, attention or convolution module of
   a block, the subsampling, the CTC head) and every candidate bit width, quantize that group
   alone and measure how far the model's CTC posteriors move from the float model's on
   calibration audio (mean KL divergence per frame). Cheap: no decoding, one pass per trial.
2. Search: start with every group at the widest width; repeatedly narrow the group whose next
   step costs the least added divergence per byte saved. Every step is a point (bytes, predicted
   divergence); the points form the Pareto set of this greedy path, from which the allocation that
   meets a size budget at the least predicted divergence is taken.
3. The chosen allocation (and, on request, every Pareto point) is then measured for real: WER of
   the quantized model on a held-out manifest.

Bytes are the packed weight bytes of the quantized layers plus their per-channel scales.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from edgeasr.quant.pack import packed_bytes
from edgeasr.quant.qat import DECODER_WEIGHT_ONLY, QuantConfig, prepare_qat

QUANTIZABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)


def layer_groups(model: nn.Module, skip: tuple[str, ...] = ("decoder", "reverse_decoder")) -> dict[str, list[str]]:
    """{group: [module names]}: encoder blocks split into their modules, plus front end and head."""
    groups: dict[str, list[str]] = {}
    for name, module in model.named_modules():
        if not isinstance(module, QUANTIZABLE) or name.split(".")[0] in skip:
            continue
        parts = name.split(".")
        if parts[:2] == ["encoder", "layers"] and len(parts) > 3:
            group = ".".join(parts[:4])
        elif parts[0] == "encoder":
            group = ".".join(parts[:2])
        else:
            group = parts[0]
        groups.setdefault(group, []).append(name)
    return groups


def group_bytes(model: nn.Module, names: list[str], bits: int) -> int:
    total = 0
    for name in names:
        weight = model.get_submodule(name).weight
        total += packed_bytes(weight.numel(), bits) + 4 * weight.size(0)
    return total


def allocation_config(groups: dict[str, list[str]], allocation: dict[str, int], act_bits: int | None = 8,
                      skip: list[str] | None = None) -> QuantConfig:
    """The QuantConfig giving each group its bit width (the groups' names as exact patterns)."""
    layers = {**DECODER_WEIGHT_ONLY,
              **{name: {"weight_bits": allocation[group]} for group, names in groups.items() for name in names}}
    return QuantConfig(weight_bits=8, act_bits=act_bits, layers=layers, skip=skip or [])


@torch.no_grad()
def _posteriors(model, batches) -> list[torch.Tensor]:
    return [model.ctc_log_probs(model.encode(feats, lengths)[0]) for feats, lengths in batches]


@torch.no_grad()
def sensitivity(model: nn.Module, batches: list, groups: dict[str, list[str]], bits_options: tuple[int, ...],
                progress: Callable[[int], None] | None = None) -> dict:
    """{group: {bits: mean KL(float || quantized) per frame}} with one group quantized at a time
    (weights only, so the number reflects what the bit width of that group does).

    ``progress(trials_done)`` is called after each of the ``len(groups) * len(bits_options)``
    trials: on a large model the table is the slow part of a search.
    """
    model = model.eval()
    done = 0
    reference = _posteriors(model, batches)
    table: dict[str, dict[int, float]] = {}
    for group, names in groups.items():
        table[group] = {}
        for bits in bits_options:
            trial = copy.deepcopy(model)
            prepare_qat(trial, QuantConfig(weight_bits=bits, act_bits=None, skip=_everything_but(trial, names)))
            trial.eval()
            divergence, frames = 0.0, 0
            for ref, got in zip(reference, _posteriors(trial, batches)):
                divergence += float((ref.exp() * (ref - got)).sum())
                frames += ref.shape[0] * ref.shape[1]
            table[group][bits] = divergence / max(1, frames)
            done += 1
            if progress is not None:
                progress(done)
    return table


def _everything_but(model: nn.Module, names: list[str]) -> list[str]:
    keep = set(names)
    return [name for name, m in model.named_modules() if isinstance(m, QUANTIZABLE) and name not in keep]


@dataclass
class ParetoPoint:
    allocation: dict[str, int]
    bytes: int
    predicted_divergence: float


def greedy_pareto(model: nn.Module, groups: dict[str, list[str]], table: dict, bits_options: tuple[int, ...]) -> list[ParetoPoint]:
    """The greedy narrowing path from all-widest to all-narrowest (see the module docstring)."""
    widths = sorted(bits_options, reverse=True)
    allocation = {group: widths[0] for group in groups}
    sizes = {group: {b: group_bytes(model, names, b) for b in widths} for group, names in groups.items()}

    def point() -> ParetoPoint:
        return ParetoPoint(dict(allocation), sum(sizes[g][allocation[g]] for g in groups),
                           sum(table[g][allocation[g]] for g in groups))

    path = [point()]
    while True:
        best, best_rate = None, float("inf")
        for group in groups:
            index = widths.index(allocation[group])
            if index + 1 == len(widths):
                continue
            narrower = widths[index + 1]
            saved = sizes[group][allocation[group]] - sizes[group][narrower]
            added = max(0.0, table[group][narrower] - table[group][allocation[group]])
            rate = added / max(1, saved)
            if rate < best_rate:
                best, best_rate = (group, narrower), rate
        if best is None:
            return path
        allocation[best[0]] = best[1]
        path.append(point())


def choose(path: list[ParetoPoint], budget_bytes: int) -> ParetoPoint:
    """The least predicted divergence among the points within ``budget_bytes``."""
    fitting = [p for p in path if p.bytes <= budget_bytes]
    if not fitting:
        smallest = min(p.bytes for p in path)
        raise ValueError(f"no allocation fits {budget_bytes} bytes (the smallest takes {smallest})")
    return min(fitting, key=lambda p: p.predicted_divergence)


def measure(points: list[ParetoPoint], evaluate: Callable[[ParetoPoint], dict],
            progress: Callable[[int], None] | None = None) -> list[dict]:
    """Real measurements (e.g. WER) of chosen points, as JSON-ready rows; ``progress(points_done)``
    after each."""
    rows = []
    for p in points:
        rows.append({"bytes": p.bytes, "predicted_divergence": p.predicted_divergence, "allocation": p.allocation,
                     **evaluate(p)})
        if progress is not None:
            progress(len(rows))
    return rows
