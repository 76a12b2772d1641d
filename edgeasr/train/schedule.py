"""Learning-rate schedule: linear warm-up, then inverse square-root decay (WeNet's WarmupLR)."""

from __future__ import annotations


def warmup_lr(step: int, peak_lr: float, warmup_steps: int) -> float:
    """Learning rate for optimizer step ``step`` (1-based); peaks at ``peak_lr`` after warm-up."""
    step = max(step, 1)
    warmup_steps = max(warmup_steps, 1)
    return peak_lr * min(step / warmup_steps, (warmup_steps / step) ** 0.5)
