"""Post-training quantization: activation ranges from a calibration set, no training.

``calibrate(model, batches, observer)`` runs the float model (its fake-quant layers pass values
through until they have a range) over calibration features, records what every activation
quantizer sees, and then fixes each range:

- ``minmax``: the smallest and largest value seen (no clipping; outliers widen the grid);
- ``percentile``: the p-th and (100 - p)-th percentiles of a bounded random sample of the values
  (clips rare outliers for a finer grid; p = 99.99 by default).

Weights need no calibration: their per-channel scales come from the weights themselves.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from edgeasr.quant.fake_quant import ActivationQuantizer

OBSERVERS = ("minmax", "percentile")


class _Observer:
    def __init__(self, kind: str, percentile: float, max_samples: int, generator: torch.Generator) -> None:
        self.kind = kind
        self.percentile = percentile
        self.max_samples = max_samples
        self.generator = generator
        self.low = float("inf")
        self.high = float("-inf")
        self.samples: list[torch.Tensor] = []
        self.kept = 0

    def __call__(self, module, inputs, output) -> None:
        x = inputs[0].detach().reshape(-1).float()
        if x.numel() == 0:
            return
        self.low = min(self.low, x.min().item())
        self.high = max(self.high, x.max().item())
        if self.kind == "percentile" and self.kept < self.max_samples:
            take = min(x.numel(), self.max_samples - self.kept, 20000)
            index = torch.randint(0, x.numel(), (take,), generator=self.generator)
            self.samples.append(x[index])
            self.kept += take

    def range(self) -> tuple[float, float]:
        if self.kind == "minmax" or not self.samples:
            return self.low, self.high
        values = torch.cat(self.samples)
        q = torch.tensor([1 - self.percentile / 100, self.percentile / 100])
        low, high = torch.quantile(values, q).tolist()
        return low, high


@torch.no_grad()
def calibrate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    observer: str = "percentile",
    percentile: float = 99.99,
    max_samples: int = 200_000,
) -> int:
    """Set every activation quantizer's range from ``batches`` of (feats [B, T, F], lengths [B])
    run through ``model.encode`` (and the CTC head); returns how many quantizers were set."""
    if observer not in OBSERVERS:
        raise ValueError(f"unknown observer '{observer}' (choose from {', '.join(OBSERVERS)})")
    if not 50 < percentile <= 100:
        raise ValueError("percentile must be in (50, 100]")
    quantizers = [m for m in model.modules() if isinstance(m, ActivationQuantizer)]
    for quantizer in quantizers:
        quantizer.initialized.fill_(False)  # pass-through: calibrate on float activations
    generator = torch.Generator().manual_seed(0)
    observers = [_Observer(observer, percentile, max_samples, generator) for _ in quantizers]
    hooks = [q.register_forward_hook(o) for q, o in zip(quantizers, observers)]
    was_training = model.training
    model.eval()
    seen = 0
    try:
        for feats, lengths in batches:
            encoded, _ = model.encode(feats, lengths)
            model.ctc_log_probs(encoded)
            seen += 1
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    if not seen:
        raise ValueError("no calibration data")
    calibrated = 0
    for quantizer, obs in zip(quantizers, observers):
        if obs.low == float("inf"):
            continue  # never reached (e.g. the decoder, which calibration does not run)
        low, high = obs.range()
        quantizer.low.fill_(low)
        quantizer.high.fill_(high)
        quantizer.initialized.fill_(True)
        calibrated += 1
    return calibrated
