"""A small U-Net that segments the left lung, the right lung and the heart.

The published segmenter's weights and training data were never released; this one is
trained on real radiographs with manual masks (Wingspan, ``../shared/data/wingspan``;
Dong et al., MICCAI 2018 and 2019) and, optionally, phantom masks. It predicts three
independent channels (sigmoid each: the left lung and the heart overlap in the
retrocardiac region), trained with binary cross-entropy plus soft Dice, with intensity
and small affine augmentation. Predictions are upsampled to each image's own size and
post-processed with scikit-image/scipy: the largest connected component per organ, holes
filled.

Channels and sides are the **patient's**: ``left_lung`` is on the image's right.

Checkpoint folder (``save_pretrained``): ``config.json`` (the :class:`SegmenterConfig`,
provenance) and ``model.safetensors`` (weights, written atomically).
"""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage
from skimage import measure
from torch import nn
from tqdm.auto import tqdm

from cxrlib.anatomy.cache import checkpoint_fingerprint
from cxrlib.anatomy.metrics import dice, hd95
from cxrlib.base.cache import build_once, cache_key
from cxrlib.base.errors import CxrError
from cxrlib.base.images import load_image
from cxrlib.base.io import read_json_object, write_atomic, write_json_atomic
from cxrlib.base.masks import cardiothoracic_ratio, load_mask
from cxrlib.base.provenance import provenance
from cxrlib.base.stats import bootstrap_mean_ci
from cxrlib.data.explore import sample_rows
from cxrlib.data.manifest import Manifest, read_manifest, resolve
from cxrlib.data.wingspan import build_manifest

ORGANS: tuple[str, ...] = ("left_lung", "right_lung", "heart")
"""Output channels, in order (patient's sides)."""

MASK_COLUMN = {organ: f"{organ}_mask_path" for organ in ORGANS}

QUALITY_GOALS = {
    "dice_left_lung": 0.95,
    "dice_right_lung": 0.95,
    "dice_heart": 0.90,
    "ctr_mae": 0.03,
}
"""Goals on held-out Wingspan images (Dice at least, CTR MAE at most)."""


@dataclass
class SegmenterConfig:
    """Architecture and training settings; defaults are the documented default run."""

    image_size: int = 256  # side of the square network input, px
    base_channels: int = 8  # channels of the first U-Net level, doubled at each level
    depth: int = 5  # down-sampling steps (256 px -> 8 px at the bottom)
    epochs: int = 40  # passes over the training images
    batch_size: int = 8
    lr: float = 3e-3  # peak AdamW learning rate (one-cycle schedule)
    weight_decay: float = 1e-4
    seed: int = 0  # weights, shuffling and augmentation
    augment: bool = True  # intensity (gamma, contrast, noise) and small affine
    max_rotation: float = 8.0  # degrees
    max_scale: float = 0.10  # +- fraction
    max_shift: float = 0.05  # +- fraction of the image side
    threads: int = 0  # torch threads; 0 keeps torch's default

    @classmethod
    def from_dict(cls, data: dict) -> SegmenterConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise CxrError(f"unknown segmenter config keys: {sorted(unknown)}")
        return cls(**data)


# --- the network ------------------------------------------------------------------------


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """U-Net: (B, 1, S, S) standardised image -> (B, 3, S, S) logits; S divisible by 2**depth."""

    def __init__(self, base_channels: int = 8, depth: int = 5, out_channels: int = len(ORGANS)):
        super().__init__()
        ch = [base_channels * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList(
            [_block(1, ch[0])] + [_block(ch[i], ch[i + 1]) for i in range(depth)]
        )
        self.up = nn.ModuleList(
            [nn.ConvTranspose2d(ch[i + 1], ch[i], 2, stride=2) for i in reversed(range(depth))]
        )
        self.dec = nn.ModuleList([_block(2 * ch[i], ch[i]) for i in reversed(range(depth))])
        self.head = nn.Conv2d(ch[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))  # (B, ch[i], S / 2**i, S / 2**i)
            skips.append(x)
        skips.pop()  # the bottom level is not a skip
        for up, dec in zip(self.up, self.dec, strict=True):
            x = dec(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)  # (B, 3, S, S)


# --- data -------------------------------------------------------------------------------


def _resize(array: np.ndarray, size: int) -> np.ndarray:
    """Area-weighted resize of a 2-D uint8/float array to (size, size), float32 in [0, 1]."""
    img = Image.fromarray(array.astype(np.float32) / (255.0 if array.dtype == np.uint8 else 1.0))
    return np.asarray(img.resize((size, size), Image.Resampling.BOX), dtype=np.float32)


def standardise(images: torch.Tensor) -> torch.Tensor:
    """Per-image zero mean, unit variance: (B, 1, S, S) in [0, 1] -> (B, 1, S, S)."""
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    std = images.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-3)
    return (images - mean) / std


@dataclass
class MaskedImages:
    """Images and organ masks at the network size: ``images`` (N, 1, S, S) in [0, 1],
    ``masks`` (N, 3, S, S) area fractions in [0, 1], ``ids`` the image ids."""

    images: torch.Tensor
    masks: torch.Tensor
    ids: list[str] = field(default_factory=list)


def load_masked_images(manifest: Manifest, size: int, progress: bool = True) -> MaskedImages:
    """Read the images and left-lung, right-lung and heart masks of a manifest.

    Raises :class:`CxrError` when a mask column is missing, or naming the image when a
    mask is empty or not the size of its image.
    """
    df, root = manifest.frame, manifest.root
    missing = [c for c in MASK_COLUMN.values() if c not in df.columns]
    if missing:
        raise CxrError(f"manifest has no {', '.join(missing)} column(s): cannot train a segmenter")
    images, masks = [], []
    for row in tqdm(df.itertuples(index=False), total=len(df), desc="load", disable=not progress):
        row = row._asdict()
        image = load_image(resolve(root, row["image_path"]))
        organ_masks = []
        for organ in ORGANS:
            cell = str(row[MASK_COLUMN[organ]] or "")
            if not cell:
                raise CxrError(f"image {row['image_id']}: no {organ} mask")
            mask = load_mask(resolve(root, cell))
            if mask.shape != image.shape:
                raise CxrError(
                    f"image {row['image_id']}: {organ} mask is {mask.shape}, image is {image.shape}"
                )
            if not mask.any():
                raise CxrError(f"image {row['image_id']}: {organ} mask is empty")
            organ_masks.append(_resize(mask.astype(np.float32), size))
        images.append(_resize(image, size)[None])
        masks.append(np.stack(organ_masks))
    return MaskedImages(
        images=torch.from_numpy(np.stack(images)),
        masks=torch.from_numpy(np.stack(masks)),
        ids=[str(i) for i in df["image_id"]],
    )


def augment(
    images: torch.Tensor, masks: torch.Tensor, cfg: SegmenterConfig, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random small affine (same for image and masks) and intensity changes, batched.

    ``images`` (B, 1, S, S) in [0, 1], ``masks`` (B, 3, S, S) -> same shapes.
    """
    b = images.shape[0]

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(b, generator=gen)

    angle = torch.deg2rad(uniform(-cfg.max_rotation, cfg.max_rotation))
    scale = uniform(1 - cfg.max_scale, 1 + cfg.max_scale)
    shift = 2 * cfg.max_shift * (torch.rand(b, 2, generator=gen) * 2 - 1)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )  # (B, 2, 3)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    both = F.grid_sample(torch.cat([images, masks], 1), grid, align_corners=False)
    images, masks = both[:, :1], both[:, 1:]
    gamma = torch.exp(uniform(-0.35, 0.35)).view(b, 1, 1, 1)
    images = images.clamp(0, 1) ** gamma
    contrast = uniform(0.8, 1.2).view(b, 1, 1, 1)
    images = (images - 0.5) * contrast + 0.5 + uniform(-0.08, 0.08).view(b, 1, 1, 1)
    noise = torch.randn(images.shape, generator=gen) * uniform(0, 0.03).view(b, 1, 1, 1)
    return images + noise, masks


def _loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE plus (1 - soft Dice), averaged over the channels. (B, C, S, S) each."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum(dim=(2, 3))
    soft_dice = (2 * inter + 1) / (prob.sum(dim=(2, 3)) + target.sum(dim=(2, 3)) + 1)
    return bce + (1 - soft_dice).mean()


# --- the segmenter ----------------------------------------------------------------------


def postprocess(mask: np.ndarray) -> np.ndarray:
    """Largest 8-connected component of a boolean mask (H, W), holes filled."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask
    labels = measure.label(mask, connectivity=2)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return ndimage.binary_fill_holes(labels == sizes.argmax())


class Segmenter:
    """A trained U-Net with its config: predicts organ masks for radiographs of any size."""

    def __init__(self, config: SegmenterConfig, model: UNet | None = None):
        self.config = config
        self.model = model if model is not None else UNet(config.base_channels, config.depth)
        self.model.eval()

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> Segmenter:
        """Load a folder written by :meth:`save_pretrained`."""
        from safetensors.torch import load_file

        path = Path(path)
        for name in ("config.json", "model.safetensors"):
            if not (path / name).is_file():
                raise CxrError(f"segmenter checkpoint {path}: {name} not found")
        meta = json.loads((path / "config.json").read_text())
        seg = cls(SegmenterConfig.from_dict(meta["config"]))
        seg.model.load_state_dict(load_file(path / "model.safetensors"))
        seg.model.eval()
        return seg

    def save_pretrained(self, path: str | os.PathLike, extra: dict | None = None) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (atomically) into ``path``."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in self.model.state_dict().items()}
        write_atomic(path / "model.safetensors", lambda tmp: save_file(state, tmp))
        meta = {"config": asdict(self.config), "organs": list(ORGANS), **(extra or {})}
        write_json_atomic(path / "config.json", meta, default=str)
        return path

    @torch.no_grad()
    def predict_proba(self, images: list[np.ndarray], batch_size: int = 8) -> list[np.ndarray]:
        """Organ probabilities at each image's own size.

        Parameters
        ----------
        images : list of ndarray
            2-D uint8 radiographs, any sizes.

        Returns
        -------
        list of ndarray
            Per image, float32 (3, H, W) in [0, 1], channels :data:`ORGANS`.
        """
        size = self.config.image_size
        out: list[np.ndarray] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            for image in chunk:
                if image.ndim != 2:
                    raise ValueError(f"images must be 2-D grayscale, got shape {image.shape}")
            x = torch.from_numpy(np.stack([_resize(im, size)[None] for im in chunk]))
            prob = torch.sigmoid(self.model(standardise(x)))  # (b, 3, S, S)
            for image, p in zip(chunk, prob, strict=True):
                up = F.interpolate(p[None], size=image.shape, mode="bilinear", align_corners=False)
                out.append(up[0].numpy())
        return out

    def predict(
        self, images: list[np.ndarray] | np.ndarray, postprocessing: bool = True
    ) -> dict[str, np.ndarray]:
        """Boolean organ masks for a batch of same-size radiographs.

        Parameters
        ----------
        images : ndarray (B, H, W) uint8, or a list of B such 2-D arrays
        postprocessing : bool
            Keep the largest component per organ and fill holes.

        Returns
        -------
        dict
            ``left_lung``, ``right_lung``, ``heart``: bool (B, H, W).
        """
        images = list(images)
        if len({im.shape for im in images}) > 1:
            raise ValueError("predict takes images of one size; call predict_proba per image")
        probs = self.predict_proba(images)
        out = {}
        for c, organ in enumerate(ORGANS):
            masks = [p[c] > 0.5 for p in probs]
            if postprocessing:
                masks = [postprocess(m) for m in masks]
            out[organ] = np.stack(masks)
        return out


# --- training ---------------------------------------------------------------------------


def train_segmenter(
    train: Manifest,
    out: str | os.PathLike,
    config: SegmenterConfig | None = None,
    held_out: Manifest | None = None,
    progress: bool = True,
) -> Segmenter:
    """Train the U-Net on a manifest's images and masks; write the checkpoint to ``out``.

    ``held_out`` (images never trained on) is only monitored each epoch (loss, Dice at
    the network size), never used to choose anything: the last epoch is the result.
    ``out`` receives ``config.json``, ``model.safetensors`` and ``metrics.csv``.
    """
    cfg = config or SegmenterConfig()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_masked_images(train, cfg.image_size, progress=progress)
    val = (
        load_masked_images(held_out, cfg.image_size, progress=progress)
        if held_out is not None
        else None
    )
    model = UNet(cfg.base_channels, cfg.depth).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = data.images.shape[0]
    steps_per_epoch = max(1, (n + cfg.batch_size - 1) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.1
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    rows: list[dict] = []
    started = time.perf_counter()
    bar = tqdm(range(cfg.epochs), desc="segmenter", unit="epoch", disable=not progress)
    for epoch in bar:
        model.train()
        order = torch.randperm(n, generator=gen)
        total, seen = 0.0, 0
        for start in range(0, n, cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            x, y = data.images[idx], data.masks[idx]
            if cfg.augment:
                x, y = augment(x, y, cfg, gen)
            x = standardise(x).contiguous(memory_format=torch.channels_last)
            loss = _loss(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        row = {
            "epoch": epoch + 1,
            "split": "train",
            "loss": total / seen,
            "lr": sched.get_last_lr()[0],
        }
        row["seconds"] = round(time.perf_counter() - started, 1)
        rows.append(row)
        if val is not None:
            rows.append(
                {
                    "epoch": epoch + 1,
                    "split": "held_out",
                    **_monitor(model, val),
                    "seconds": row["seconds"],
                }
            )
            bar.set_postfix(loss=f"{row['loss']:.3f}", held_out_dice=f"{rows[-1]['dice_mean']:.3f}")
        else:
            bar.set_postfix(loss=f"{row['loss']:.3f}")
        _write_metrics(out / "metrics.csv", rows)  # every epoch: a live training curve
    model = model.to(memory_format=torch.contiguous_format)
    seg = Segmenter(cfg, model)
    seg.save_pretrained(
        out,
        extra={
            "train_images": len(data.ids),
            "held_out_images": 0 if val is None else len(val.ids),
            "seconds": round(time.perf_counter() - started, 1),
            "provenance": provenance(),
        },
    )
    return seg


@torch.no_grad()
def _monitor(model: UNet, val: MaskedImages) -> dict:
    model.eval()
    losses, dices = [], []
    for start in range(0, val.images.shape[0], 16):
        x = standardise(val.images[start : start + 16]).contiguous(
            memory_format=torch.channels_last
        )
        y = val.masks[start : start + 16]
        logits = model(x)
        losses.append(float(_loss(logits, y)) * len(x))
        pred, true = logits > 0, y > 0.5
        inter = (pred & true).sum(dim=(2, 3)).float()
        dices.append(
            (2 * inter / (pred.sum(dim=(2, 3)) + true.sum(dim=(2, 3))).clamp_min(1)).numpy()
        )
    d = np.concatenate(dices)
    out = {"loss": sum(losses) / val.images.shape[0]}
    out.update({f"dice_{o}": float(d[:, i].mean()) for i, o in enumerate(ORGANS)})
    out["dice_mean"] = float(d.mean())
    return out


def _write_metrics(path: Path, rows: list[dict]) -> None:
    columns = [
        "epoch",
        "split",
        "loss",
        "lr",
        *[f"dice_{o}" for o in ORGANS],
        "dice_mean",
        "seconds",
    ]

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: row.get(k, "") for k in columns})

    write_atomic(path, write)


# --- evaluation -------------------------------------------------------------------------


def _predict_row(seg: Segmenter, row, root: str | os.PathLike) -> dict:
    """One manifest row's image, manual masks and post-processed predicted masks.

    Returns ``image_id``, ``image`` (H, W) uint8, ``true`` and ``pred`` (organ -> bool
    (H, W), at the image's own size).
    """
    image = load_image(resolve(root, row["image_path"]))
    pred = seg.predict([image])
    return {
        "image_id": row["image_id"],
        "image": image,
        "true": {o: load_mask(resolve(root, row[MASK_COLUMN[o]])) for o in ORGANS},
        "pred": {o: pred[o][0] for o in ORGANS},
    }


def evaluate(seg: Segmenter, manifest: Manifest, progress: bool = True) -> pd.DataFrame:
    """Per-image quality of ``seg`` on a manifest with left/right lung and heart masks.

    Predictions are made at the network size, upsampled to each image's own size and
    post-processed, then compared with the manifest's masks at that size.

    Returns
    -------
    pandas.DataFrame
        One row per image: ``image_id``, ``dice_<organ>``, ``hd95_<organ>`` (pixels of
        the original image), ``ctr_pred`` (from predicted masks), ``ctr_true`` (the
        manifest's ``ctr`` column where present, else from the true masks),
        ``ctr_source`` and ``ctr_abs_error``.
    """
    df, root = manifest.frame, manifest.root
    rows = []
    for row in tqdm(
        df.itertuples(index=False), total=len(df), desc="evaluate", disable=not progress
    ):
        row = row._asdict()
        example = _predict_row(seg, row, root)
        true, pred = example["true"], example["pred"]
        out = {"image_id": row["image_id"]}
        for o in ORGANS:
            out[f"dice_{o}"] = dice(pred[o], true[o])
            out[f"hd95_{o}"] = hd95(pred[o], true[o])
        out["ctr_pred"] = cardiothoracic_ratio(
            pred["left_lung"] | pred["right_lung"], pred["heart"]
        )
        given = row.get("ctr", "")
        try:
            given = float(given)
        except (TypeError, ValueError):
            given = float("nan")
        if np.isfinite(given):
            out["ctr_true"], out["ctr_source"] = given, "ctr column"
        else:
            lungs = true["left_lung"] | true["right_lung"]
            out["ctr_true"], out["ctr_source"] = (
                cardiothoracic_ratio(lungs, true["heart"]),
                "true masks",
            )
        out["ctr_abs_error"] = abs(out["ctr_pred"] - out["ctr_true"])
        rows.append(out)
    return pd.DataFrame(rows)


def summarise(per_image: pd.DataFrame) -> dict:
    """Mean and bootstrap 95% interval of every metric, n, and the targets met."""
    summary: dict = {"n": len(per_image), "metrics": {}}
    for col in [c for c in per_image.columns if c.startswith(("dice_", "hd95_", "ctr_abs"))]:
        mean, lo, hi = bootstrap_mean_ci(per_image[col].to_numpy())
        name = "ctr_mae" if col == "ctr_abs_error" else col
        summary["metrics"][name] = {"mean": mean, "ci95": [lo, hi]}
    met = {}
    for name, target in QUALITY_GOALS.items():
        value = summary["metrics"][name]["mean"]
        met[name] = bool(value <= target) if name == "ctr_mae" else bool(value >= target)
    summary["targets"] = QUALITY_GOALS
    summary["targets_met"] = met
    summary["ctr_sources"] = per_image["ctr_source"].value_counts().to_dict()
    return summary


def format_summary(summary: dict) -> str:
    """The summary as a text table: metric, mean, 95% interval, target."""
    lines = [f"segmenter evaluation: n = {summary['n']} images (mean, bootstrap 95% interval)"]
    lines.append(f"  {'metric':<18} {'mean':>8}  {'95% interval':<19} target")
    for name, m in summary["metrics"].items():
        target = summary["targets"].get(name)
        shown = ""
        if target is not None:
            ok = "met" if summary["targets_met"][name] else "MISSED"
            shown = f"{'<=' if name == 'ctr_mae' else '>='} {target} ({ok})"
        lo, hi = m["ci95"]
        lines.append(f"  {name:<18} {m['mean']:>8.4f}  [{lo:.4f}, {hi:.4f}]  {shown}")
    return "\n".join(lines)


# --- data sources and folders -----------------------------------------------------------


def segmenter_data(
    wingspan: str | os.PathLike | None = None,
    manifest: str | os.PathLike | None = None,
    work: str | os.PathLike = ".",
) -> Manifest:
    """The manifest a segmenter trains or is evaluated on.

    With ``wingspan`` (the folder), its manifest is built into ``work/wingspan/`` (the
    data folder itself is never written); with ``manifest``, that file is read.
    """
    if (wingspan is None) == (manifest is None):
        raise ValueError("give exactly one of wingspan and manifest")
    if wingspan is not None:
        path = Path(work) / "wingspan" / "manifest.csv"
        build_manifest(wingspan, path)
        return read_manifest(path)
    return read_manifest(manifest)


def predict_folder(
    seg: Segmenter, images: str | os.PathLike, out: str | os.PathLike, progress: bool = True
) -> int:
    """Masks for every PNG/JPEG radiograph in ``images``.

    Writes ``out/<organ>/<name>.png`` for ``left_lung``, ``right_lung``, ``heart`` and
    ``lungs`` (their union), 0/255, at each image's own size. Returns the image count.
    """
    images, out = Path(images), Path(out)
    if not images.is_dir():
        raise CxrError(f"--images {images} is not a folder")
    paths = sorted(
        p for p in images.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg") and p.is_file()
    )
    if not paths:
        raise CxrError(f"no PNG/JPEG images in {images}")
    for organ in (*ORGANS, "lungs"):
        (out / organ).mkdir(parents=True, exist_ok=True)
    for path in tqdm(paths, desc="segment", unit="img", disable=not progress):
        masks = seg.predict([load_image(path)])
        masks = {o: masks[o][0] for o in ORGANS}
        masks["lungs"] = masks["left_lung"] | masks["right_lung"]
        for organ, mask in masks.items():
            Image.fromarray(mask.astype(np.uint8) * 255).save(out / organ / f"{path.stem}.png")
    return len(paths)


def example_predictions(
    seg: Segmenter, manifest: Manifest, n: int = 4, seed: int = 0
) -> list[dict]:
    """Predicted and manual masks of ``n`` sampled manifest rows, for figures.

    Returns a list of dicts: ``image_id``, ``image`` (H, W) uint8, ``true`` and ``pred``
    (organ -> bool (H, W)).
    """
    rows = sample_rows(manifest.frame, n, seed)
    return [_predict_row(seg, row, manifest.root) for _, row in rows.iterrows()]


SEGMENTER_VERSION = 1
"""Bumped when the same config and data would train a different network."""


def training_key(config: SegmenterConfig, train_ids: list[str], held_out_ids: list[str]) -> str:
    """Hash of everything that decides a trained segmenter: config, data, version."""
    payload = {
        "version": SEGMENTER_VERSION,
        "config": asdict(config),
        "train": sorted(map(str, train_ids)),
        "held_out": sorted(map(str, held_out_ids)),
    }
    return cache_key(payload, compact=False)


def train_or_load(
    train: Manifest,
    config: SegmenterConfig,
    cache: str | os.PathLike,
    held_out: Manifest | None = None,
    progress: bool = True,
) -> tuple[Segmenter, Path]:
    """A segmenter for these settings and data: from ``cache`` if trained before, else
    trained now and stored there (``cache/segmenter-<key>/``, complete or absent: trained
    into a temporary folder, then renamed). Two processes asking at once train it once
    (:func:`~cxrlib.base.cache.build_once`: the other waits, then loads it). Returns the
    segmenter and its folder."""
    held_ids = [] if held_out is None else list(held_out.frame["image_id"])
    key = training_key(config, list(train.frame["image_id"]), held_ids)
    folder = Path(cache) / f"segmenter-{key[:16]}"
    trained: list[Segmenter] = []

    def build(tmp: Path) -> None:
        trained.append(train_segmenter(train, tmp, config, held_out=held_out, progress=progress))

    build_once(folder, _segmenter_is_complete, build)
    return (trained[0] if trained else Segmenter.from_pretrained(folder)), folder


def _segmenter_is_complete(folder: Path) -> bool:
    return (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()


# Without Wingspan the workbook's segmenter learns from the manifest (the phantom: 6,000
# images with masks). All of its train split would cost 250 s an epoch on 2 cores (24
# epochs: 100 minutes) for nothing: on phantom anatomy held-out Dice is 0.99 after one
# epoch. A seeded sample of Wingspan's size (168 training, 51 held-out images) trains in
# about 5 minutes.
MANIFEST_TRAIN_IMAGES = 192
MANIFEST_HELD_OUT_IMAGES = 64


def split_held_out(
    data: Manifest, max_train: int | None = None, max_held_out: int | None = None, seed: int = 0
) -> tuple[Manifest, Manifest]:
    """The ``train`` split rows of ``data`` and the rest (held out), each with its root:
    what a segmenter trains on and is measured on. ``max_train`` / ``max_held_out``: at
    most that many rows of each, drawn with ``seed`` (kept in manifest order)."""
    is_train = data.frame["split"] == "train"

    def at_most(rows: pd.Series, n: int | None) -> Manifest:
        frame = data.frame[rows]
        if n is not None and len(frame) > n:
            frame = frame.sample(n=n, random_state=seed).sort_index()
        return data.subset(frame)

    return at_most(is_train, max_train), at_most(~is_train, max_held_out)


@dataclass
class CachedSegmenter:
    """A segmenter of :func:`cached_segmenter` with the data it was trained on."""

    segmenter: Segmenter
    folder: Path  # its folder in the cache (config.json, metrics.csv, weights)
    data: Manifest  # every row
    train: Manifest
    held_out: Manifest
    source: str  # where the data came from, for a notebook's first line


def cached_segmenter(
    wingspan: str | os.PathLike,
    manifest: str | os.PathLike,
    run_dir: str | os.PathLike,
    cache: str | os.PathLike,
    epochs: int,
    image_size: int,
    seed: int,
    progress: bool = True,
) -> CachedSegmenter:
    """The segmenter the workbook's notebooks use, from their parameters.

    Trained on Wingspan when its folder exists (its manifest built into
    ``run_dir/segmenter/data``), else on ``manifest``: the train split trains, the other
    splits are held out (from a manifest, a seeded sample of at most
    :data:`MANIFEST_TRAIN_IMAGES` and :data:`MANIFEST_HELD_OUT_IMAGES` rows);
    :class:`SegmenterConfig` of ``epochs``, ``image_size`` and ``seed``, the rest its
    defaults. Reused from ``cache`` for equal settings and data
    (:func:`train_or_load`), so every notebook asking gets the same one.
    """
    if Path(wingspan).is_dir():
        data = segmenter_data(wingspan=wingspan, work=Path(run_dir) / "segmenter" / "data")
        source = f"Wingspan ({wingspan})"
        train, held_out = split_held_out(data)
    else:
        data = read_manifest(Path(manifest))
        source = f"{manifest} (Wingspan not found)"
        limits = MANIFEST_TRAIN_IMAGES, MANIFEST_HELD_OUT_IMAGES
        train, held_out = split_held_out(data, *limits, seed=seed)
    config = SegmenterConfig(epochs=epochs, image_size=image_size, seed=seed)
    seg, folder = train_or_load(train, config, cache, held_out=held_out, progress=progress)
    record_segmenter(run_dir, folder, source)
    return CachedSegmenter(seg, folder, data, train, held_out, source)


SEGMENTER_RECORD = "segmenter.json"
"""The file in a workbook run folder naming the segmenter its notebooks use."""


def record_segmenter(run_dir: str | os.PathLike, folder: Path, source: str = "") -> Path:
    """Write ``run_dir/segmenter.json``: the segmenter ``folder`` (resolved), its
    :func:`~cxrlib.anatomy.cache.checkpoint_fingerprint` and the data ``source``."""
    record = {
        "path": str(Path(folder).resolve()),
        "fingerprint": checkpoint_fingerprint(folder),
        "source": source,
    }
    path = Path(run_dir) / SEGMENTER_RECORD
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, record)
    return path


def recorded_segmenter(run_dir: str | os.PathLike) -> Path | None:
    """The segmenter folder ``run_dir/segmenter.json`` names (:func:`record_segmenter`),
    or None when there is no record or its folder is gone."""
    record = read_json_object(Path(run_dir) / SEGMENTER_RECORD) or {}
    folder = Path(record["path"]) if isinstance(record.get("path"), str) else None
    return folder if folder is not None and (folder / "config.json").is_file() else None
