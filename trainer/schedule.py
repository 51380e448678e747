"""Learning-rate schedule: linear warmup, then cosine decay (as a LambdaLR factor of the peak)."""

from __future__ import annotations

import math

import torch


def warmup_cosine(step: int, *, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """Factor of the peak learning rate at optimizer step ``step`` (0-based).

    Rises linearly from ``1/(warmup+1)`` to 1 over ``warmup`` steps, then follows half a cosine
    down to ``min_ratio`` at ``total`` steps, and stays there.
    """
    if step < warmup:
        return (step + 1) / (warmup + 1)
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(
    optimizer: torch.optim.Optimizer, *, warmup: int, total: int, min_ratio: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR over :func:`warmup_cosine`; its state_dict is just the step count."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: warmup_cosine(step, warmup=warmup, total=total, min_ratio=min_ratio),
    )
