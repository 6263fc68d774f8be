"""The training run's ``metrics.csv`` (one row per logged step and per validation), its
TensorBoard scalars, and the window of steps a ``train`` row sums up."""

from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path

import pandas as pd
import torch

from cxrlib.base.io import write_atomic

METRICS_FILE = "metrics.csv"


class MetricsLog:
    """``metrics.csv`` (rewritten atomically on every row) and TensorBoard scalars.

    ``enabled``: the main process writes, the others keep nothing; ``keep_rows``: on
    resume, the rows of ``metrics.csv`` the checkpoint knows (later rows are dropped);
    ``purge_step``: TensorBoard drops its events from that step on.
    """

    def __init__(self, out: Path, enabled: bool, keep_rows: int | None, purge_step: int | None):
        self.path = out / METRICS_FILE
        self.enabled = enabled
        self.rows: list[dict] = []
        self.writer = None
        if not enabled:
            return
        if keep_rows is not None and self.path.is_file():
            self.rows = pd.read_csv(self.path).iloc[:keep_rows].to_dict("records")
            self._flush()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=purge_step)

    def add(self, row: dict) -> None:
        if not self.enabled:
            return
        self.rows.append(row)
        for key, value in row.items():
            numeric = isinstance(value, int | float) and math.isfinite(value)
            if key not in ("step", "epoch", "split") and numeric:
                self.writer.add_scalar(f"{row['split']}/{key}", value, row["step"])
        self._flush()

    def _flush(self) -> None:
        columns: list[str] = []
        for row in self.rows:
            columns += [k for k in row if k not in columns]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        w.writeheader()
        w.writerows(self.rows)
        write_atomic(self.path, lambda tmp: tmp.write_text(buf.getvalue()))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()


class TrainWindow:
    """The losses and images since the last ``train`` row of ``metrics.csv``."""

    def __init__(self):
        self.losses: list[torch.Tensor] = []
        self.images = 0
        self.start = time.perf_counter()

    def add(self, loss: torch.Tensor, images: int) -> None:
        """One forward pass: its loss and number of readable images."""
        self.losses.append(loss.detach())
        self.images += images

    def row(self, accelerator, step: int, epoch: int, lr: float, grad_norm) -> dict:
        """The ``train`` row after optimizer step ``step`` of ``epoch`` (0-based): the mean
        loss and the images per second over all processes."""
        mean_loss = accelerator.reduce(torch.stack(self.losses).mean(), "mean").item()
        images = accelerator.reduce(
            torch.tensor(float(self.images), device=accelerator.device), "sum"
        ).item()
        rate = images / max(1e-9, time.perf_counter() - self.start)
        return {
            "step": step,
            "epoch": epoch + 1,
            "split": "train",
            "loss": round(mean_loss, 6),
            "lr": lr,
            "grad_norm": None if grad_norm is None else round(float(grad_norm), 6),
            "images_per_s": round(rate, 2),
        }
