"""The optimiser's parts: AdamW parameter groups, the learning-rate schedule and the
moving average of the weights (``train.ema_decay``)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from cxrlib.model import ReportModel


class WarmupCosine:
    """LR multiplier: linear warmup to 1 over ``warmup`` steps, cosine to ``floor``."""

    def __init__(self, warmup: int, total: int, floor: float):
        self.warmup, self.total, self.floor = warmup, total, floor

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * progress))


def param_groups(model: ReportModel, weight_decay: float) -> list[dict]:
    """Trainable parameters: decayed matrices, and undecayed biases/norms/embeddings."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        plain = p.ndim < 2 or "wpe" in name or "wte" in name or "prior_strength" in name
        (no_decay if plain else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: ReportModel, tc, total_steps: int):
    """``(optimizer, scheduler)``: AdamW over :func:`param_groups` with the warm-up +
    cosine schedule of ``tc`` (:class:`cxrlib.training.config.TrainConfig`)."""
    warmup = int(round(tc.warmup_ratio * total_steps))
    optimizer = torch.optim.AdamW(
        param_groups(model, tc.weight_decay), lr=tc.lr, betas=tuple(tc.betas)
    )
    schedule = WarmupCosine(warmup, total_steps, tc.min_lr_ratio)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def trainable(model: ReportModel) -> dict[str, torch.nn.Parameter]:
    """The parameters that train, by name (what the moving average follows)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def ema_start(model: ReportModel) -> dict[str, torch.Tensor]:
    """The moving average at the start of a run: a copy of the trainable weights."""
    return {n: p.detach().clone() for n, p in trainable(model).items()}


@torch.no_grad()
def ema_update(ema: dict[str, torch.Tensor], model: ReportModel, decay: float, step: int) -> None:
    """Move the average towards the weights after optimizer step ``step`` (0-based), with
    the decay warmed up as ``min(decay, (1 + step) / (10 + step))``."""
    decay = min(decay, (1 + step) / (10 + step))
    params = dict(model.named_parameters())
    for name, avg in ema.items():
        avg.lerp_(params[name].detach(), 1.0 - decay)


@contextmanager
def averaged_weights(model: ReportModel, ema: dict[str, torch.Tensor]) -> Iterator[ReportModel]:
    """``model`` with the averaged weights in place of its own, restored on exit."""
    params = dict(model.named_parameters())
    kept = {n: params[n].detach().clone() for n in ema}
    try:
        with torch.no_grad():
            for name, avg in ema.items():
                params[name].copy_(avg)
        yield model
    finally:
        with torch.no_grad():
            for name, value in kept.items():
                params[name].copy_(value)
