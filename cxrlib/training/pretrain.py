"""Supervised encoder pretraining on a manifest's labels: a frozen encoder worth caching.

The real workbook starts from DINOv3's self-supervised weights; a config-built encoder
(the tiny preset) starts random, and the decoder of a random frozen encoder learns one
text for every image. So, once per dataset and encoder config, the encoder is trained
to recognise what the manifest records about each image, then frozen: its patch
features are cached (:mod:`cxrlib.training.features`) and shared by every mode and seed of the
ablation, which is about the decoder.

Targets (from the train split only):

- each of the 14 CheXpert labels as 3 classes: not positive (0 or blank), positive (1),
  uncertain (-1);
- every other column with at most :data:`MAX_CLASSES` distinct non-blank values as
  classes plus "blank" (the phantom's ``effusion_side``, ``opacity_zone``,
  ``cardiomegaly_size``, ...); a column of ``;``-separated items with at most
  :data:`MAX_CLASSES` distinct items (``devices``) as one binary target per item.
  Identifier, path, text and numeric columns are never targets.

Each target reads the patch tokens through its own attention pooling (one learned
query, softmax over patches, a linear classifier), so finding, side and zone have to be
encoded in the patches themselves, where the decoder reads them. Loss: the mean of the
targets' cross-entropies.

**Dense targets** (``dense_weight > 0``, where the manifest has lung and heart masks):
every patch also learns what lies under it, the per-patch target being the area share
of the patch covered by the left lung, the right lung, the heart and each of the 13
findings' drawn regions (the phantom's ``finding_mask_path``; without it, a finding's
region is the lung of its side, both lungs, or the heart for the cardiac findings), a
binary cross-entropy with these soft targets through one linear layer per patch, added
with weight ``dense_weight``. Random shifts move image and masks together.

Any encoder of :mod:`cxrlib.model.encoders` built from a config dict pretrains (a ViT
or a backbone); its patch grid is its own. After training, :func:`cxrlib.evaluate.
recognition.recognition` measures the heads on the validation and test splits (AUROC
per finding, side and zone accuracy); nothing is chosen on them. The encoder is saved
with ``save_pretrained`` (safetensors) in a folder keyed by the manifest, the encoder
config and these settings, with ``pretrain.json`` (settings, per-epoch losses,
validation accuracy per target, ``recognition``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from cxrlib.base import storage
from cxrlib.base.cache import build_once, cache_key
from cxrlib.base.errors import CxrError
from cxrlib.base.images import load_image, normalise, resize_gray
from cxrlib.base.masks import load_mask, read_finding_mask
from cxrlib.base.vocabulary import PHANTOM_SIDE_COLUMNS
from cxrlib.data.manifest import (
    CHEXPERT_LABELS,
    FINDING_MASK_COLUMN,
    MASK_COLUMNS,
    Manifest,
    read_manifest,
    text_cell,
)
from cxrlib.metrics.recognition import recognition, targets_met
from cxrlib.model.encoders import (
    build_encoder,
    disable_rope_augmentation,
    encoder_patches,
    encoder_stride,
    encoder_width,
)
from cxrlib.training.config import PretrainConfig

log = logging.getLogger(__name__)

PRETRAIN_VERSION = 2
MAX_CLASSES = 8
NOT_TARGETS = {
    "study_id",
    "image_id",
    "image_path",
    "view",
    "split",
    "findings",
    "impression",
    "patient_id",
    "ctr",
    *MASK_COLUMNS,
    FINDING_MASK_COLUMN,
}
DENSE_ORGANS = ("left_lung_mask_path", "right_lung_mask_path", "heart_mask_path")
DENSE_FINDINGS = tuple(label for label in CHEXPERT_LABELS if label != "No Finding")
CARDIAC = ("Cardiomegaly", "Enlarged Cardiomediastinum")


@dataclass
class Targets:
    """Class indices (N, K) int64 per image and target, with the targets' names/classes."""

    names: list[str]
    classes: list[list[str]]
    values: torch.Tensor


def _is_numeric(values: pd.Series) -> bool:
    return pd.to_numeric(values[values != ""], errors="coerce").notna().all()


def build_targets(train: pd.DataFrame) -> tuple[list[str], list[list[str]], list[str]]:
    """(names, classes, kinds) of the targets defined by the train rows (module doc)."""
    names, classes, kinds = [], [], []
    for label in CHEXPERT_LABELS:
        names.append(label)
        classes.append(["not positive", "positive", "uncertain"])
        kinds.append("label")
    for column in train.columns:
        if column in NOT_TARGETS or column in CHEXPERT_LABELS:
            continue
        values = train[column].map(text_cell)
        present = values[values != ""]
        if present.empty or _is_numeric(values):
            continue
        if present.str.contains(";").any():
            items = sorted({i.strip() for v in present for i in v.split(";") if i.strip()})
            if len(items) <= MAX_CLASSES:
                for item in items:
                    names.append(f"{column}:{item}")
                    classes.append(["absent", "present"])
                    kinds.append("item")
            continue
        distinct = sorted(present.unique())
        if len(distinct) <= MAX_CLASSES:
            names.append(column)
            classes.append(["", *distinct])
            kinds.append("category")
    return names, classes, kinds


def encode_targets(df: pd.DataFrame, names, classes, kinds) -> torch.Tensor:
    """(N, K) class indices of ``df``'s rows; unseen categories count as blank."""
    out = np.zeros((len(df), len(names)), dtype=np.int64)
    for k, (name, cls, kind) in enumerate(zip(names, classes, kinds, strict=True)):
        if kind == "label":
            v = pd.to_numeric(df[name], errors="coerce").to_numpy()
            out[:, k] = np.where(v == 1, 1, np.where(v == -1, 2, 0))
        elif kind == "item":
            column, item = name.split(":", 1)
            cells = df[column].map(text_cell)
            out[:, k] = [int(item in {i.strip() for i in c.split(";")}) for c in cells]
        else:
            index = {c: i for i, c in enumerate(cls)}
            out[:, k] = [index.get(c, 0) for c in df[name].map(text_cell)]
    return torch.from_numpy(out)


class TargetHeads(nn.Module):
    """One attention pooling (learned query) and linear classifier per target."""

    def __init__(self, width: int, classes: list[list[str]]):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(len(classes), width) * width**-0.5)
        self.norm = nn.LayerNorm(width)
        self.heads = nn.ModuleList(nn.Linear(width, len(c)) for c in classes)

    def forward(self, patches: torch.Tensor) -> list[torch.Tensor]:
        x = self.norm(patches)  # (B, P, E)
        weights = torch.softmax(torch.einsum("ke,bpe->bkp", self.queries, x), dim=-1)
        pooled = torch.einsum("bkp,bpe->bke", weights, x)  # (B, K, E)
        return [head(pooled[:, k]) for k, head in enumerate(self.heads)]


def _load_images(manifest: Manifest, size: int, progress: bool) -> tuple[torch.Tensor, list[int]]:
    """uint8 (N, S, S) grayscale of the readable rows, and their row positions."""
    from tqdm.auto import tqdm

    df = manifest.frame
    images, keep = [], []
    for i, path in enumerate(tqdm(df["image_path"], desc="images", disable=not progress)):
        try:
            gray = load_image(manifest.resolve(text_cell(path)))
        except CxrError as err:
            log.warning("pretraining: skipped %s", err)
            continue
        images.append(torch.from_numpy(np.array(resize_gray(gray, size))))
        keep.append(i)
    if not images:
        raise CxrError("pretraining: no readable images")
    return torch.stack(images), keep


def _shift(gray: torch.Tensor, max_shift: int, gen: torch.Generator, *others: torch.Tensor):
    """``gray`` (N, S, S) and each of ``others`` (N, ..., S, S) rolled by one random shift
    per image; ``(gray, *others)`` when others are given, else the shifted ``gray``."""
    if max_shift == 0:
        return (gray, *others) if others else gray
    outs = [torch.empty_like(t) for t in (gray, *others)]
    dy, dx = torch.randint(-max_shift, max_shift + 1, (2, gray.shape[0]), generator=gen)
    for i in range(gray.shape[0]):
        for src, dst in zip((gray, *others), outs, strict=True):
            dst[i] = torch.roll(src[i], (int(dy[i]), int(dx[i])), dims=(-2, -1))
    return tuple(outs) if others else outs[0]


def _grid_ready(mask: np.ndarray, size: int, bits: bool = False) -> np.ndarray:
    """A mask at ``size`` x ``size``: an organ mask (bool) as uint8 0..255 resized
    bilinearly; a finding bit field by nearest neighbour, which keeps the bits."""
    from PIL import Image

    if bits:
        if mask.shape == (size, size):
            return mask.astype(np.int32)
        rows = (np.arange(size) * mask.shape[0]) // size
        cols = (np.arange(size) * mask.shape[1]) // size
        return mask[rows][:, cols].astype(np.int32)
    img = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR))


@dataclass
class DenseTargets:
    """Masks of the train images for the per-patch targets (module doc).

    ``organs``: uint8 (N, 3, S, S) left lung, right lung, heart (255 inside);
    ``regions``: int32 (N, S, S) bit field of the findings' drawn regions (bit k:
    ``CHEXPERT_LABELS[k]``) or None; ``present``: bool (N, 13) positive or uncertain
    per finding of :data:`DENSE_FINDINGS`; ``sides``: (N, 13) side per finding ("" if
    none).
    """

    organs: torch.Tensor
    regions: torch.Tensor | None
    present: torch.Tensor
    sides: np.ndarray

    @classmethod
    def load(cls, manifest: Manifest, size: int, progress: bool) -> DenseTargets | None:
        """The masks of the rows, or None when any row lacks a lung or heart mask."""
        from tqdm.auto import tqdm

        df = manifest.frame
        if not all(c in df.columns for c in DENSE_ORGANS):
            return None
        cells = df[list(DENSE_ORGANS)].map(text_cell)
        if (cells == "").any().any():
            return None
        organs = np.zeros((len(df), 3, size, size), dtype=np.uint8)
        has_regions = (
            FINDING_MASK_COLUMN in df.columns
            and (df[FINDING_MASK_COLUMN].map(text_cell) != "").all()
        )
        regions = np.zeros((len(df), size, size), dtype=np.int32) if has_regions else None
        rows = tqdm(range(len(df)), desc="masks", disable=not progress)
        for i in rows:
            for c in range(len(DENSE_ORGANS)):
                mask = load_mask(manifest.resolve(cells.iloc[i, c]))
                organs[i, c] = _grid_ready(mask, size)
            if regions is not None:
                path = manifest.resolve(text_cell(df[FINDING_MASK_COLUMN].iloc[i]))
                regions[i] = _grid_ready(read_finding_mask(path), size, bits=True)
        values = df[list(DENSE_FINDINGS)].apply(pd.to_numeric, errors="coerce").to_numpy()
        side_of = {finding: column for column, finding in PHANTOM_SIDE_COLUMNS.items()}
        sides = np.full((len(df), len(DENSE_FINDINGS)), "", dtype=object)
        for k, finding in enumerate(DENSE_FINDINGS):
            column = side_of.get(finding)
            if column in df.columns:
                sides[:, k] = df[column].map(text_cell).to_numpy()
        return cls(
            torch.from_numpy(organs),
            None if regions is None else torch.from_numpy(regions),
            torch.from_numpy(np.isin(values, (1.0, -1.0))),
            sides,
        )

    @property
    def channels(self) -> int:
        return 3 + len(DENSE_FINDINGS)

    def batch(self, idx: torch.Tensor, stride: int) -> torch.Tensor:
        """The masks of images ``idx`` as (B, 3 + 13, P) per-patch area shares."""
        organs = self.organs[idx].float() / 255.0  # (B, 3, S, S)
        if self.regions is not None:
            bits = torch.tensor([1 << CHEXPERT_LABELS.index(f) for f in DENSE_FINDINGS])
            regions = (self.regions[idx][:, None] & bits[None, :, None, None]) != 0
            regions = regions.float()  # (B, 13, S, S)
        else:
            regions = self._proxy_regions(idx, organs)
        maps = torch.cat([organs, regions], 1)
        pooled = nn.functional.avg_pool2d(maps, stride)  # (B, C, g, g)
        return pooled.flatten(2)

    def _proxy_regions(self, idx: torch.Tensor, organs: torch.Tensor) -> torch.Tensor:
        """Without drawn regions: the lung of the finding's side (both: the union), the
        heart for the cardiac findings, times whether the finding is there."""
        left, right, heart = organs[:, 0], organs[:, 1], organs[:, 2]
        lungs = torch.maximum(left, right)
        out = torch.zeros(len(idx), len(DENSE_FINDINGS), *left.shape[-2:])
        present = self.present[idx]
        sides = self.sides[idx.numpy()]
        for k, finding in enumerate(DENSE_FINDINGS):
            for b in np.flatnonzero(present[:, k].numpy()):
                if finding in CARDIAC:
                    out[b, k] = heart[b]
                elif sides[b, k] == "left":
                    out[b, k] = left[b]
                elif sides[b, k] == "right":
                    out[b, k] = right[b]
                else:
                    out[b, k] = lungs[b]
        return out


def _augment(imgs, masks, idx, max_shift, gen):
    """Shifted train images ``idx`` and, rolled with them, their masks (or None)."""
    if masks is None:
        return _shift(imgs[idx], max_shift, gen), None
    gray, organs, *regions = _shift(
        imgs[idx],
        max_shift,
        gen,
        masks.organs[idx],
        *([masks.regions[idx]] if masks.regions is not None else []),
    )
    shifted = DenseTargets(
        organs,
        regions[0] if regions else None,
        masks.present[idx],
        masks.sides[idx.numpy()],
    )
    return gray, shifted


def pretrain_encoder(
    model_config,
    manifest: str | os.PathLike,
    out: str | os.PathLike,
    config: PretrainConfig,
    seed: int = 0,
    progress: bool = True,
    key: dict | None = None,
) -> Path:
    """Train the config-built encoder of ``model_config`` on ``manifest``'s labels.

    Returns the folder written (``config.json``, ``model.safetensors`` of the encoder,
    loadable with :func:`cxrlib.model.encoders.build_encoder`, and ``pretrain.json``).
    """
    if not isinstance(model_config.encoder, dict):
        raise CxrError("pretraining needs a config-built encoder (ModelConfig.encoder dict)")
    data = read_manifest(manifest, check_files=False)
    df = data.frame
    train_df = df[df["split"] == "train"]
    names, classes, kinds = build_targets(train_df)
    torch.manual_seed(seed)
    size = model_config.image_size
    encoder = build_encoder(model_config.encoder, size, model_config.patch_size, None)
    disable_rope_augmentation(encoder)
    stride = encoder_stride(encoder, size)
    heads = TargetHeads(encoder_width(encoder), classes)
    train_imgs, keep = _load_images(data.subset(train_df), size, progress)
    train_y = encode_targets(train_df.iloc[keep], names, classes, kinds)
    held_out = _held_out_sets(data, names, classes, kinds, size, progress)
    masks, dense_head = _dense_targets(
        config, data.subset(train_df.iloc[keep]), encoder, size, progress
    )
    started = time.perf_counter()
    dense = (masks, dense_head, stride)
    history = _fit(
        encoder, heads, dense, (train_imgs, train_y), held_out, names, config, seed, progress
    )
    seconds = round(time.perf_counter() - started, 1)
    measured = _measure(encoder, heads, train_y, held_out, names, classes, config)
    record = {
        "version": PRETRAIN_VERSION,
        "manifest": str(manifest),
        "settings": asdict(config),
        "seed": seed,
        "encoder": {
            "model_type": encoder.config.model_type,
            "image_size": size,
            "patch_size": stride,
            "grid": size // stride,
            "parameters": sum(p.numel() for p in encoder.parameters()),
        },
        "targets": dict(zip(names, classes, strict=True)),
        "train_images": len(train_imgs),
        "validate_images": len(held_out["validate"][0]) if "validate" in held_out else 0,
        "test_images": len(held_out["test"][0]) if "test" in held_out else 0,
        "dense_targets": None
        if masks is None
        else ("drawn regions" if masks.regions is not None else "side lung proxy"),
        "history": history,
        "seconds": seconds,
        "recognition": measured,
        "key": key,
    }
    return _write_encoder(encoder, record, Path(out))


def _held_out_sets(data: Manifest, names, classes, kinds, size, progress) -> dict:
    """``{split: (images, targets)}`` for the non-empty validate/test splits of ``data``."""
    held_out = {}
    for split in ("validate", "test"):
        rows = data.split(split)
        frame = rows.frame
        if len(frame):
            imgs, rows = _load_images(rows, size, progress)
            held_out[split] = (imgs, encode_targets(frame.iloc[rows], names, classes, kinds))
    return held_out


def _dense_targets(config, train_rows: Manifest, encoder, size, progress):
    """The lung/heart mask targets and their head, or ``(None, None)`` when off or missing."""
    if config.dense_weight <= 0:
        return None, None
    masks = DenseTargets.load(train_rows, size, progress)
    if masks is None:
        log.warning("pretraining: no lung/heart masks for every train image; dense targets off")
        return None, None
    width = encoder_width(encoder)
    return masks, nn.Sequential(nn.LayerNorm(width), nn.Linear(width, masks.channels))


def _fit(encoder, heads, dense, train, held_out, names, config, seed, progress):
    """Run ``config.epochs`` epochs of AdamW + one-cycle; returns the per-epoch history rows.

    ``dense`` is ``(masks, dense_head, stride)`` (masks and head ``None`` when off); ``train`` is
    ``(images, targets)``.
    """
    masks, dense_head, stride = dense
    train_imgs, train_y = train
    modules = [encoder, heads] + ([dense_head] if dense_head is not None else [])
    params = [p for m in modules for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    steps = config.epochs * -(-len(train_imgs) // config.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, config.lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    history = []

    def patches(gray: torch.Tensor) -> torch.Tensor:
        return encoder_patches(encoder, normalise(gray))

    def step(idx: torch.Tensor) -> float:
        gray, shifted = _augment(train_imgs, masks, idx, config.max_shift, gen)
        features = patches(gray)
        y = train_y[idx]
        loss = torch.stack(
            [nn.functional.cross_entropy(lg, y[:, k]) for k, lg in enumerate(heads(features))]
        ).mean()
        if shifted is not None:
            target = shifted.batch(torch.arange(len(idx)), stride)  # (B, C, P)
            dense = dense_head(features).transpose(1, 2)  # (B, C, P)
            loss = loss + config.dense_weight * (
                nn.functional.binary_cross_entropy_with_logits(dense, target)
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        return loss.item()

    for epoch in range(config.epochs):
        for m in modules:
            m.train()
        losses = _epoch(
            step, len(train_imgs), gen, f"{epoch + 1}/{config.epochs}", config, progress
        )
        row = {"epoch": epoch + 1, "train_loss": round(float(np.mean(losses)), 5)}
        if "validate" in held_out:
            row.update(_validate(encoder, heads, patches, *held_out["validate"], names, config))
        history.append(row)
        log.info("encoder pretraining: %s", row)
    return history


def _epoch(step, n_images, gen, label, config, progress) -> list[float]:
    """One shuffled pass of ``step`` over mini-batches; returns the batch losses."""
    from tqdm.auto import tqdm

    order = torch.randperm(n_images, generator=gen)
    losses = []
    bar = tqdm(
        range(0, len(order), config.batch_size),
        desc=f"encoder pretraining {label}",
        disable=not progress,
    )
    for start in bar:
        losses.append(step(order[start : start + config.batch_size]))
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    return losses


def _measure(encoder, heads, train_y, held_out, names, classes, config) -> dict:
    """Train prevalence, held-out recognition and (with a validate split) the targets met."""
    prevalence = {
        label: round(float((train_y[:, names.index(label)] > 0).float().mean()), 4)
        for label in CHEXPERT_LABELS
    }

    def patches(gray: torch.Tensor) -> torch.Tensor:
        return encoder_patches(encoder, normalise(gray))

    measured = {"train_prevalence": prevalence}
    for split, (imgs, y) in held_out.items():
        probs = _probabilities(encoder, heads, patches, imgs, config.batch_size)
        measured[split] = recognition(probs, y.numpy(), names, classes)
    if "validate" in measured:
        measured["targets_validate"] = targets_met(measured["validate"], prevalence)
    return measured


def _write_encoder(encoder, record: dict, out: Path) -> Path:
    """Save ``encoder`` and ``pretrain.json`` to ``out`` via a ``.tmp`` folder, renamed last."""
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    encoder.save_pretrained(tmp, safe_serialization=True)
    (tmp / "pretrain.json").write_text(json.dumps(record, indent=2))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


@torch.no_grad()
def _probabilities(encoder, heads, patches, imgs, batch_size: int) -> list[np.ndarray]:
    """One (N, C_k) array of class probabilities per target."""
    encoder.eval()
    heads.eval()
    out: list[list[torch.Tensor]] = [[] for _ in heads.heads]
    for start in range(0, len(imgs), batch_size):
        for k, lg in enumerate(heads(patches(imgs[start : start + batch_size]))):
            out[k].append(lg.softmax(-1))
    return [torch.cat(o).numpy() for o in out]


def _validate(encoder, heads, patches, imgs, y, names, config) -> dict:
    """Validation accuracy: the labels' mean and every target's mean."""
    probs = _probabilities(encoder, heads, patches, imgs, config.batch_size)
    acc = np.array([(p.argmax(-1) == y[:, k].numpy()).mean() for k, p in enumerate(probs)])
    labels = [k for k, n in enumerate(names) if n in CHEXPERT_LABELS]
    return {
        "val_accuracy_labels": round(float(acc[labels].mean()), 4),
        "val_accuracy_all": round(float(acc.mean()), 4),
    }


def pretrained_encoder(
    model_config,
    manifest: str | os.PathLike,
    cache_dir: str | os.PathLike,
    config: PretrainConfig,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """The pretrained encoder folder for these inputs, trained once and then reused.

    The folder ``cache_dir/encoders/encoder-<key16>`` is keyed by the manifest (path,
    size, modification time), the encoder config, image and patch size, the settings,
    the seed and :data:`PRETRAIN_VERSION`. Two processes asking at once train it once
    (:func:`~cxrlib.base.cache.build_once`: the other waits, then reuses it).
    """
    if storage.is_url(manifest):
        stamp = storage.stat(manifest)  # [url, size, version]
    else:
        manifest = Path(manifest).resolve()
        st = manifest.stat()
        stamp = [str(manifest), st.st_size, st.st_mtime_ns]
    key_data = {
        "version": PRETRAIN_VERSION,
        "manifest": stamp,
        "encoder": model_config.encoder,
        "image_size": model_config.image_size,
        "patch_size": model_config.patch_size,
        "settings": asdict(config),
        "seed": seed,
    }
    key = cache_key(key_data, compact=False)
    folder = Path(cache_dir) / "encoders" / f"encoder-{key[:16]}"

    def build(tmp: Path) -> None:
        pretrain_encoder(model_config, manifest, tmp, config, seed, progress, key=key_data)

    build_once(folder, lambda f: (f / "pretrain.json").is_file(), build)
    return folder


def pretrain_record(encoder: str | os.PathLike | dict) -> dict | None:
    """The ``pretrain.json`` of a pretrained encoder folder, or None (a hub id, a config
    dict, or a folder not made by :func:`pretrain_encoder`)."""
    if isinstance(encoder, dict):
        return None
    path = Path(encoder) / "pretrain.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CxrError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None
