"""Training: schedule, atomic checkpoints, the training loop (single process or torchrun DDP)."""
