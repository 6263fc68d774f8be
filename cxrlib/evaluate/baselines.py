"""Baselines evaluated exactly like a model: their output is ``image_id, generated``.

- **most frequent**: every image gets the training split's most frequent Findings text
  (ties broken by the text's sort order, so the choice is deterministic);
- **retrieval** (nearest neighbour): an image gets the Findings of the training image
  whose encoder features are closest: patch features (the run's frozen encoder, from
  the feature cache) mean-pooled over patches, L2-normalised, cosine similarity; ties
  go to the earliest training row. The cached features are streamed shard by shard:
  only the pooled (N, E) float32 bank is held (0.6 GB for MIMIC-CXR's 377k images).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence

import pandas as pd
import torch

from cxrlib.base.errors import CxrError
from cxrlib.data.manifest import text_cell
from cxrlib.model import ReportModel
from cxrlib.training.features import LazyFeatures
from cxrlib.training.inputs import cached_features, split_frame
from cxrlib.training.runs import run_checkpoint, run_config


def most_frequent_report(train_texts: Sequence[str]) -> str:
    """The most frequent non-empty text (ties: the first in sorted order)."""
    counts = Counter(t for t in train_texts if t)
    if not counts:
        raise ValueError("no training texts")
    best = max(counts.values())
    return min(t for t, c in counts.items() if c == best)


BANK_ROWS = 65_536
"""Training rows compared at once: a (1,024 x 65,536) float32 similarity block is 256 MB
(a block of every row of MIMIC-CXR's training split would be 1.5 GB)."""


def pooled(features: torch.Tensor | LazyFeatures, batch_size: int = 1024) -> torch.Tensor:
    """(N, P, E) patch features -> (N, E) mean over patches, L2-normalised, float32.

    :class:`~cxrlib.training.features.LazyFeatures` are streamed from the cache's shards
    ``batch_size`` items at a time: only the (N, E) result grows with N.
    """
    if isinstance(features, LazyFeatures):
        out = torch.empty(len(features), features.width, dtype=torch.float32)
        for positions, block in features.batches(batch_size):
            out[positions] = pooled(block)
        return out
    x = features.to(torch.float32).mean(dim=1)
    return torch.nn.functional.normalize(x, dim=-1)


def nearest_reports(
    train_features: torch.Tensor | LazyFeatures,
    train_texts: Sequence[str],
    query_features: torch.Tensor | LazyFeatures,
    batch_size: int = 1024,
) -> tuple[list[str], list[int]]:
    """For each query, the text of the most cosine-similar training image, and its row.

    Features are (N, P, E) tensors or :class:`~cxrlib.training.features.LazyFeatures`
    (streamed: memory then grows with N only by the (N, E) float32 pooled bank).
    """
    if train_features.shape[0] != len(train_texts):
        raise ValueError(f"{train_features.shape[0]} feature rows for {len(train_texts)} texts")
    bank = pooled(train_features, batch_size)  # (N, E)
    queries = pooled(query_features, batch_size)  # (Q, E)
    rows: list[int] = []
    for start in range(0, queries.shape[0], batch_size):
        rows += _nearest_rows(queries[start : start + batch_size], bank)
    return [train_texts[i] for i in rows], rows


def _nearest_rows(q: torch.Tensor, bank: torch.Tensor) -> list[int]:
    """Row of ``bank`` most similar to each row of ``q`` (first maximum on ties), over
    :data:`BANK_ROWS` bank rows at a time: the (b, rows) similarity block stays bounded."""
    best = torch.full((q.shape[0],), -torch.inf)
    arg = torch.zeros(q.shape[0], dtype=torch.long)
    for lo in range(0, bank.shape[0], BANK_ROWS):
        sim = q @ bank[lo : lo + BANK_ROWS].T
        at = sim.argmax(dim=1)  # first maximum within the block
        value = sim.gather(1, at[:, None])[:, 0]
        better = value > best  # strictly: an earlier block keeps a tie
        best = torch.where(better, value, best)
        arg = torch.where(better, at + lo, arg)
    return arg.tolist()


def baseline_generations(
    run: str | os.PathLike,
    manifest: str | os.PathLike,
    split: str = "test",
    *,
    cache_dir: str | os.PathLike | None = None,
    max_images: int | None = None,
    progress: bool = True,
) -> dict[str, pd.DataFrame]:
    """``{"most_frequent": frame, "retrieval": frame}`` for ``split``, each with
    ``image_id, generated``, using the training run's encoder and data settings."""
    config = run_config(run)
    if cache_dir is not None:
        config.data.cache_dir = str(cache_dir)
    column = config.data.text_column
    model = ReportModel.from_pretrained(run_checkpoint(run))
    train = split_frame(manifest, "train")
    train = train.subset(train.frame[column].map(text_cell) != "")
    if not len(train.frame):
        raise CxrError(f"{manifest}: no train row has {column} text (the baselines need some)")
    test = split_frame(manifest, split)
    if max_images is not None:
        test = test.subset(test.frame.iloc[:max_images])
    bank = cached_features(config, model, train, progress, in_memory=False)  # streamed
    queries = cached_features(config, model, test, progress, in_memory=False)
    texts = train.frame[column].map(text_cell)
    text_of = dict(zip(train.frame["image_id"].map(text_cell), texts, strict=True))
    bank_texts = [text_of[i] for i in bank.image_ids]
    retrieved, _ = nearest_reports(bank.features, bank_texts, queries.features)
    frequent = most_frequent_report(list(texts))
    ids = list(queries.image_ids)
    return {
        "most_frequent": pd.DataFrame({"image_id": ids, "generated": [frequent] * len(ids)}),
        "retrieval": pd.DataFrame({"image_id": ids, "generated": retrieved}),
    }
