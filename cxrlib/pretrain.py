"""Supervised encoder pretraining on a manifest's labels: a frozen encoder worth caching.

The real workbook starts from DINOv3's self-supervised weights; a config-built encoder
(the tiny preset) starts random, and the decoder of a random frozen encoder learns one
text for every image. So, once per dataset and encoder config, the encoder is trained
to recognise what the manifest records about each image, then frozen: its patch
features are cached (:mod:`cxrlib.features`) and shared by every mode and seed of the
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
targets' cross-entropies. The encoder is saved with ``save_pretrained`` (safetensors)
in a folder keyed by the manifest, the encoder config and these settings, with
``pretrain.json`` (settings, per-epoch losses, validation accuracy per target).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from cxrlib.data.images import normalise, resize_gray
from cxrlib.data.manifest import CHEXPERT_LABELS, MASK_COLUMNS, read_manifest, text_cell
from cxrlib.errors import CxrError

log = logging.getLogger(__name__)

PRETRAIN_VERSION = 1
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
}


@dataclass(frozen=True)
class PretrainConfig:
    """Encoder pretraining (:func:`pretrained_encoder`); off unless ``enabled``."""

    # pretrain a config-built encoder before training the report model
    enabled: bool = False
    epochs: int = 8
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    # random shifts of up to this many pixels (train images only)
    max_shift: int = 8
    # its own seed: one pretrained encoder serves every run seed of an ablation
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0 or self.max_shift < 0:
            raise ValueError("pretrain: epochs and batch_size >= 1, lr > 0, max_shift >= 0")


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


def _load_images(df: pd.DataFrame, size: int, progress: bool) -> tuple[torch.Tensor, list[int]]:
    """uint8 (N, S, S) grayscale of the readable rows, and their row positions."""
    from tqdm.auto import tqdm

    from cxrlib.data.dataset import resolve_path
    from cxrlib.explore import load_image

    root = df.attrs["root"]
    images, keep = [], []
    for i, path in enumerate(tqdm(df["image_path"], desc="images", disable=not progress)):
        try:
            gray = load_image(resolve_path(root, text_cell(path)))
        except CxrError as err:
            log.warning("pretraining: skipped %s", err)
            continue
        images.append(torch.from_numpy(np.array(resize_gray(gray, size))))
        keep.append(i)
    if not images:
        raise CxrError("pretraining: no readable images")
    return torch.stack(images), keep


def _shift(gray: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    if max_shift == 0:
        return gray
    out = torch.empty_like(gray)
    dy, dx = torch.randint(-max_shift, max_shift + 1, (2, gray.shape[0]), generator=gen)
    for i in range(gray.shape[0]):
        out[i] = torch.roll(gray[i], (int(dy[i]), int(dx[i])), dims=(0, 1))
    return out


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

    Returns the folder written (``config.json``, ``model.safetensors`` of a
    ``DINOv3ViTModel``, ``pretrain.json``).
    """
    from tqdm.auto import tqdm

    from cxrlib.model.report_model import _build_encoder

    if not isinstance(model_config.encoder, dict):
        raise ValueError("pretraining needs a config-built encoder (ModelConfig.encoder dict)")
    df = read_manifest(manifest, check_files=False)
    train_df = df[df["split"] == "train"]
    val_df = df[df["split"] == "validate"]
    names, classes, kinds = build_targets(train_df)
    torch.manual_seed(seed)
    encoder = _build_encoder(model_config, None)
    for name in ("pos_embed_shift", "pos_embed_jitter", "pos_embed_rescale"):
        setattr(encoder.config, name, None)
    heads = TargetHeads(encoder.config.hidden_size, classes)
    size = model_config.image_size
    train_imgs, keep = _load_images(train_df, size, progress)
    train_y = encode_targets(train_df.iloc[keep], names, classes, kinds)
    val_imgs, vkeep = _load_images(val_df, size, progress) if len(val_df) else (None, [])
    val_y = encode_targets(val_df.iloc[vkeep], names, classes, kinds) if vkeep else None
    params = list(encoder.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    steps = config.epochs * -(-len(train_imgs) // config.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, config.lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    registers = 1 + encoder.config.num_register_tokens
    history = []
    started = time.perf_counter()

    def patches(gray: torch.Tensor) -> torch.Tensor:
        return encoder(pixel_values=normalise(gray)).last_hidden_state[:, registers:]

    for epoch in range(config.epochs):
        encoder.train()
        heads.train()
        order = torch.randperm(len(train_imgs), generator=gen)
        losses = []
        bar = tqdm(
            range(0, len(order), config.batch_size),
            desc=f"encoder pretraining {epoch + 1}/{config.epochs}",
            disable=not progress,
        )
        for start in bar:
            idx = order[start : start + config.batch_size]
            logits = heads(patches(_shift(train_imgs[idx], config.max_shift, gen)))
            y = train_y[idx]
            loss = torch.stack(
                [nn.functional.cross_entropy(lg, y[:, k]) for k, lg in enumerate(logits)]
            ).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        row = {"epoch": epoch + 1, "train_loss": round(float(np.mean(losses)), 5)}
        if val_imgs is not None:
            row.update(_validate(encoder, heads, patches, val_imgs, val_y, names, config))
        history.append(row)
        log.info("encoder pretraining: %s", row)
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    encoder.save_pretrained(tmp, safe_serialization=True)
    record = {
        "version": PRETRAIN_VERSION,
        "manifest": str(manifest),
        "settings": asdict(config),
        "seed": seed,
        "targets": dict(zip(names, classes, strict=True)),
        "train_images": len(train_imgs),
        "validate_images": len(vkeep),
        "history": history,
        "seconds": round(time.perf_counter() - started, 1),
        "key": key,
    }
    (tmp / "pretrain.json").write_text(json.dumps(record, indent=2))
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)
    return out


@torch.no_grad()
def _validate(encoder, heads, patches, imgs, y, names, config) -> dict:
    encoder.eval()
    heads.eval()
    correct = torch.zeros(len(names))
    for start in range(0, len(imgs), config.batch_size):
        logits = heads(patches(imgs[start : start + config.batch_size]))
        target = y[start : start + config.batch_size]
        for k, lg in enumerate(logits):
            correct[k] += (lg.argmax(-1) == target[:, k]).sum()
    acc = correct / len(imgs)
    labels = [k for k, n in enumerate(names) if n in CHEXPERT_LABELS]
    return {
        "val_accuracy_labels": round(acc[labels].mean().item(), 4),
        "val_accuracy_all": round(acc.mean().item(), 4),
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
    the seed and :data:`PRETRAIN_VERSION`.
    """
    manifest = Path(manifest).resolve()
    st = manifest.stat()
    key_data = {
        "version": PRETRAIN_VERSION,
        "manifest": [str(manifest), st.st_size, st.st_mtime_ns],
        "encoder": model_config.encoder,
        "image_size": model_config.image_size,
        "patch_size": model_config.patch_size,
        "settings": asdict(config),
        "seed": seed,
    }
    key = hashlib.sha256(json.dumps(key_data, sort_keys=True).encode()).hexdigest()
    folder = Path(cache_dir) / "encoders" / f"encoder-{key[:16]}"
    if (folder / "pretrain.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    pretrain_encoder(model_config, manifest, folder, config, seed, progress, key=key_data)
    return folder
