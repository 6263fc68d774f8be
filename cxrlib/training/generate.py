"""Generation for a manifest split with a trained run: ``generations.csv``.

``generate_split(run, manifest, split)`` loads a training run's checkpoint (``best``,
else ``last``) and its config tree (``run_config.json``), computes the inputs as training
does (:mod:`cxrlib.training.inputs`: cached encoder features for a frozen encoder, the
same prior settings and mask source) and generates Findings for every image of the split with the
checkpoint's decoding settings (greedy or beam, repetition penalty, ``max_new_tokens``;
override with ``num_beams=`` / ``max_new_tokens=``). The result has the columns
``image_id, generated`` that :mod:`cxrlib.evaluate` reads, and ``nll``: the
teacher-forced negative log-likelihood of the image's reference Findings under the
model, per token (natural log, mean over the text's tokens and its EOS; NaN without a
reference text); unreadable images are left out and listed (``GenerationResult.bad``).

Why ``nll``: greedy decoding turns small differences between models into different
texts, so clinical F1 varies between training seeds by SD 0.02-0.04, while the
teacher-forced likelihood of the reference varies by about 0.002 (METHOD.md's
measurements). The ablation reports both (:mod:`cxrlib.experiment.ablation`).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from cxrlib.base.io import write_atomic
from cxrlib.data.dataset import Collate, image_inputs, model_inputs
from cxrlib.data.manifest import text_cell
from cxrlib.model import ReportModel
from cxrlib.training.inputs import split_dataset, split_frame
from cxrlib.training.runs import run_checkpoint, run_config, run_folder

log = logging.getLogger(__name__)


@dataclass
class GenerationResult:
    """Generated Findings of one split."""

    frame: pd.DataFrame  # image_id, generated, nll (manifest order)
    checkpoint: Path
    bad: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0


def load_run(run: str | os.PathLike, cache_dir: str | os.PathLike | None = None):
    """``(config, model, checkpoint)`` of a training run: its config tree (with the
    cache folder replaced when ``cache_dir`` is given) and its best (else last)
    checkpoint's model, in eval mode. ``run`` may also be a checkpoint folder or an
    exported model folder (``cxr export``)."""
    checkpoint = run_checkpoint(run)
    config = run_config(run_folder(run))
    if cache_dir is not None:
        config.data.cache_dir = str(cache_dir)
    model = ReportModel.from_pretrained(checkpoint)
    model.eval()
    return config, model, checkpoint


def _split_inputs(run, manifest, split, cache_dir, max_images, progress):
    """The run's model, the split's dataset (as training built it), the unreadable
    images and the checkpoint."""
    config, model, checkpoint = load_run(run, cache_dir)
    frame = split_frame(manifest, split)
    if max_images is not None:
        frame = frame.subset(frame.frame.iloc[:max_images])
    dataset, bad = split_dataset(config, model, frame, progress=progress)
    for image_id, message in bad:
        log.warning("generation: skipped unreadable image %s: %s", image_id, message)
    return model, dataset, bad, checkpoint


def generate_split(
    run: str | os.PathLike,
    manifest: str | os.PathLike,
    split: str | None = "test",
    *,
    out: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 32,
    max_images: int | None = None,
    num_beams: int | None = None,
    max_new_tokens: int | None = None,
    progress: bool = True,
) -> GenerationResult:
    """Generate Findings for ``split`` of ``manifest`` with training run ``run``.

    Parameters
    ----------
    run : path-like
        A training run folder (``cxr train --out``), a checkpoint folder (it needs the
        run's ``run_config.json`` two folders up) or an exported model folder.
    cache_dir : path-like, optional
        Feature and prior caches (default: the run config's ``data.cache_dir``).
    max_images : int, optional
        Only the first N images of the split (manifest order).
    out : path-like, optional
        Also write ``image_id, generated`` there as CSV (atomically).
    """
    import time

    from tqdm.auto import tqdm

    started = time.perf_counter()
    model, dataset, bad, checkpoint = _split_inputs(
        run, manifest, split, cache_dir, max_images, progress
    )
    kwargs = {}
    if num_beams is not None:
        kwargs["num_beams"] = num_beams
    if max_new_tokens is not None:
        kwargs["max_new_tokens"] = max_new_tokens
    ids, texts, nll = [], [], []
    for start in tqdm(
        range(0, len(dataset), batch_size), desc="generating", unit="batch", disable=not progress
    ):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        good = [it for it in items if "error" not in it]
        bad += [(it["image_id"], it["error"]) for it in items if "error" in it]
        if not good:
            continue
        inputs = image_inputs(good)
        with torch.no_grad():
            texts += model.generate(**inputs, **kwargs)
        nll += reference_nll(model, good)
        ids += [it["image_id"] for it in good]
    result = pd.DataFrame({"image_id": ids, "generated": texts, "nll": nll})
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(Path(out), lambda tmp: result.to_csv(tmp, index=False))
    return GenerationResult(result, checkpoint, bad, round(time.perf_counter() - started, 1))


def reference_nll(model: ReportModel, items: list[dict]) -> list[float]:
    """Per item, the teacher-forced negative log-likelihood of its reference Findings
    (``text``) per token, natural log: the mean over the text's tokens and EOS of
    ``-log p(token | image, earlier tokens)``; NaN for an item without text."""
    out = [math.nan] * len(items)
    scored = [i for i, it in enumerate(items) if text_cell(it.get("text", "")).strip()]
    if not scored:
        return out
    collate = Collate(model.tokenizer, model.config.max_text_tokens)
    batch = collate([items[i] for i in scored])
    inputs = model_inputs(batch, model.device)
    labels = inputs.pop("labels")
    with torch.no_grad():
        logits = model(**inputs).logits
    targets = labels[:, 1:]
    token_nll = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2).float(), targets, ignore_index=-100, reduction="none"
    )
    counts = (targets != -100).sum(1).clamp(min=1)
    for i, value in zip(scored, (token_nll.sum(1) / counts).tolist(), strict=True):
        out[i] = float(value)
    return out


def reference_nll_split(
    run: str | os.PathLike,
    manifest: str | os.PathLike,
    split: str | None = "test",
    *,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 32,
    progress: bool = True,
) -> pd.DataFrame:
    """``image_id, nll`` of every readable image of ``split`` (:func:`reference_nll`),
    without generating: for generations written before the ``nll`` column existed."""
    from tqdm.auto import tqdm

    model, dataset, _, _ = _split_inputs(run, manifest, split, cache_dir, None, progress)
    ids, nll = [], []
    for start in tqdm(
        range(0, len(dataset), batch_size), desc="reference NLL", unit="batch", disable=not progress
    ):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        good = [it for it in items if "error" not in it]
        nll += reference_nll(model, good)
        ids += [it["image_id"] for it in good]
    return pd.DataFrame({"image_id": ids, "nll": nll})
