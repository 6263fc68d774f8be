"""Validation during training: the token-weighted loss over the validate split, and
Findings generated for its first images (``samples.csv``) scored by ``val_metrics``."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

from cxrlib.base.io import write_atomic
from cxrlib.data.dataset import Collate, ReportDataset, image_inputs, model_inputs
from cxrlib.metrics.clinical import clinical_f1
from cxrlib.metrics.labeler import LABELER_NAME, label_reports
from cxrlib.model import ReportModel

SAMPLES_FILE = "samples.csv"

ValMetrics = Callable[[list[str], list[str], list[str]], dict]
"""``val_metrics(image_ids, references, generated) -> {name: value}`` on validation."""


def clinical_val_metrics(
    image_ids: list[str], references: list[str], generated: list[str]
) -> dict[str, float]:
    """The default validation metric: clinical micro-F1 over the 14 observations
    (uncertain as negative) of the generated vs the reference Findings, both read by the
    rule labeler (:mod:`cxrlib.evaluate`); logged as ``clinical_micro_14``."""
    result = clinical_f1(label_reports(generated), label_reports(references), labeler=LABELER_NAME)
    return {"clinical_micro_14": result.metrics["clinical.uncertain_as_negative.micro_14"]}


@torch.no_grad()
def evaluate_split(
    model, dataset: ReportDataset, collate: Collate, accelerator, batch_size: int
) -> dict:
    """Token-weighted mean loss over ``dataset``, split over the processes."""
    if len(dataset) == 0:
        return {}
    model.eval()
    rank, world = accelerator.process_index, accelerator.num_processes
    order = list(range(rank, len(dataset), world))
    total = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
    for start in range(0, len(order), batch_size):
        batch = collate([dataset[i] for i in order[start : start + batch_size]])
        if not batch["image_ids"]:
            continue
        inputs = model_inputs(batch, accelerator.device)
        loss = model(**inputs).loss
        tokens = (inputs["labels"][:, 1:] != -100).sum()
        total += torch.stack([loss.double() * tokens, tokens.double()])
    total = accelerator.reduce(total, "sum")
    model.train()
    return {"loss": round((total[0] / total[1].clamp(min=1)).item(), 6)}


def samples(
    model: ReportModel,
    dataset: ReportDataset,
    n: int,
    out: Path,
    step: int,
    epoch: int,
    main: bool,
    val_metrics: ValMetrics | None,
) -> dict:
    """Generate Findings for the first ``n`` validation images; append to samples.csv;
    ``val_metrics`` of them (main process; the others return nothing)."""
    if not main or n == 0 or len(dataset) == 0:
        return {}
    items = [dataset[i] for i in range(min(n, len(dataset)))]
    items = [it for it in items if "error" not in it]
    if not items:
        return {}
    was_training = model.training
    model.eval()
    kwargs = {k: v.to(model.device) for k, v in image_inputs(items).items()}
    with torch.no_grad():
        generated = model.generate(**kwargs)
    model.train(was_training)
    ids = [it["image_id"] for it in items]
    refs = [it["text"] for it in items]
    rows = pd.DataFrame(
        {
            "epoch": epoch + 1,
            "step": step,
            "image_id": ids,
            "reference": refs,
            "generated": generated,
        }
    )
    path = out / SAMPLES_FILE
    if path.is_file():
        old = pd.read_csv(path, dtype={"image_id": str}, keep_default_na=False)
        rows = pd.concat([old[old["epoch"] < epoch + 1], rows], ignore_index=True)
    write_atomic(path, lambda tmp: rows.to_csv(tmp, index=False))
    if val_metrics is None:
        return {}
    return {k: float(v) for k, v in val_metrics(ids, refs, generated).items()}


def improves(metric: float | None, best: float | None, mode: str) -> bool:
    """Whether ``metric`` (finite) beats ``best`` (None: nothing yet) in ``mode``
    (``min`` or ``max``, ``train.early_stopping_mode``)."""
    if metric is None or not math.isfinite(metric):
        return False
    if best is None:
        return True
    return metric < best if mode == "min" else metric > best
