"""Torch-side data: a :class:`ReportDataset` over manifest rows, its collate, and the
seeded per-epoch batch order that every process of a distributed run agrees on.

An item is one image with its Findings text and, when given, its cached encoder
features (P, E) and its layer priors (L, P). Without features the image is read from
disk (:func:`cxrlib.base.images.load_pixels`); an unreadable image does not stop the
loader: the item carries the error and :class:`Collate` drops it from the batch and
lists it in ``batch["bad"]``, so the trainer can count, log and limit the skips.

Batch order (:func:`epoch_batches`): epoch ``e`` of seed ``s`` is the permutation
``numpy.random.default_rng([s, e]).permutation(n)``; with ``W`` processes its first
``n - n % W`` entries are dealt round-robin (process ``r`` takes entries ``r, r + W,
...``), so the processes see disjoint images and the same number of batches. The order
depends on nothing but (seed, epoch, W), which is what lets a resumed run skip to
exactly where it stopped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from cxrlib.base.errors import CxrError
from cxrlib.base.images import load_pixels


def epoch_order(n: int, seed: int, epoch: int, world_size: int = 1, rank: int = 0) -> list[int]:
    """Indices process ``rank`` of ``world_size`` visits in ``epoch`` (see module doc)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
    perm = np.random.default_rng([int(seed), int(epoch)]).permutation(n)
    usable = n - n % world_size
    return perm[rank:usable:world_size].tolist()


def epoch_batches(
    n: int, batch_size: int, seed: int, epoch: int, world_size: int = 1, rank: int = 0
) -> list[list[int]]:
    """:func:`epoch_order` cut into batches of ``batch_size`` (the last may be shorter)."""
    order = epoch_order(n, seed, epoch, world_size, rank)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@dataclass
class Example:
    """What a training run knows about one image."""

    image_id: str
    text: str
    path: str  # absolute image path ("" when features are given)


class ReportDataset(Dataset):
    """Items ``{"index", "image_id", "text", "features" | "pixel_values", "priors"}``.

    Parameters
    ----------
    examples : sequence of Example
    image_size : int
        Side of ``pixel_values`` when images are read from disk.
    features : (N, P, E) tensor, optional
        Cached encoder features in ``examples`` order (any float dtype).
    priors : (N, L, P) tensor or lazy view, optional
        Layer priors in ``examples`` order: anything with ``shape`` and ``priors[i]``
        -> (L, P), such as :class:`cxrlib.anatomy.cache.LazyRows` (read per item from
        the prior cache's shards, so memory does not grow with N).
    """

    def __init__(
        self,
        examples: Sequence[Example],
        image_size: int,
        features: torch.Tensor | None = None,
        priors=None,
    ):
        self.examples = list(examples)
        self.image_size = image_size
        for name, tensor in (("features", features), ("priors", priors)):
            if tensor is not None and tensor.shape[0] != len(self.examples):
                raise ValueError(
                    f"{name}: {tensor.shape[0]} rows for {len(self.examples)} examples"
                )
        self.features = features
        self.priors = priors

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        ex = self.examples[index]
        item = {"index": index, "image_id": ex.image_id, "text": ex.text}
        if self.features is not None:
            item["image_features"] = self.features[index]
        else:
            try:
                item["pixel_values"] = load_pixels(ex.path, self.image_size)
            except (CxrError, OSError) as err:
                item["error"] = str(err)
        if self.priors is not None:
            item["priors"] = self.priors[index]
        return item


class Collate:
    """Stack items into model inputs; tokenise texts; drop and list unreadable images.

    Returns a dict with ``input_ids``, ``attention_mask``, ``labels`` (B, T),
    ``image_features`` (B, P, E) float32 or ``pixel_values`` (B, 3, S, S), ``priors``
    (B, L, P) when the dataset has them, ``image_ids``, ``indices`` and ``bad``: a list
    of ``(image_id, message)`` for the dropped items.
    """

    def __init__(self, tokenizer, max_text_tokens: int):
        self.tokenizer = tokenizer
        self.max_text_tokens = max_text_tokens

    def __call__(self, items: list[dict]) -> dict:
        bad = [(it["image_id"], it["error"]) for it in items if "error" in it]
        good = [it for it in items if "error" not in it]
        batch: dict = {
            "bad": bad,
            "image_ids": [it["image_id"] for it in good],
            "indices": [it["index"] for it in good],
        }
        if not good:
            return batch
        batch.update(self.tokenizer.batch([it["text"] for it in good], self.max_text_tokens))
        batch.update(image_inputs(good))
        return batch


def image_inputs(items: list[dict]) -> dict[str, torch.Tensor]:
    """The image side of readable items, stacked as float32: ``image_features`` or
    ``pixel_values``, and ``priors`` when the dataset has them."""
    keys = ("image_features", "pixel_values", "priors")
    return {
        k: torch.stack([it[k] for it in items]).to(torch.float32) for k in keys if k in items[0]
    }


def model_inputs(batch: dict, device: torch.device | str) -> dict:
    """The tensors of a collated batch that :class:`ReportModel` takes, on ``device``."""
    keys = ("input_ids", "attention_mask", "labels", "image_features", "pixel_values", "priors")
    return {k: batch[k].to(device) for k in keys if k in batch}
