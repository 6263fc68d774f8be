"""Model inputs: what the report model reads, for rows of a manifest or for one image.

Training, generation, evaluation, the baselines, attention grounding, ``cxr report``,
the explorer and the notebooks build their inputs here, so an image gives the model the
same tensors whichever of them asks:

- **which rows**: :func:`resolve_manifest` (``data.manifest`` or the cached phantom),
  :func:`load_splits` (the train and validate rows with image and text, capped),
  :func:`split_frame` (one split's rows with an image);
- **which model**: :func:`resolve_model_config` (a config-built encoder replaced by its
  pretrained folder when ``pretrain.enabled``);
- **rows -> dataset**: :func:`split_dataset` gives a
  :class:`~cxrlib.data.dataset.ReportDataset` of texts, cached encoder features (frozen
  encoder and ``train.feature_cache``; else image paths after a header check) and the
  run's layer priors (:func:`manifest_priors`), and the unreadable images it left out;
- **one image -> tensors**: :func:`image_inputs_for` (pixel values and the priors of its
  masks, with the settings of :func:`prior_settings`);
- **caches**: :func:`warm_caches` fills the feature and prior caches for rows before
  any run reads them, from the model config alone (no report model is built).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from cxrlib.anatomy.cache import LazyRows, cached_priors_for_manifest, checkpoint_fingerprint
from cxrlib.anatomy.priors import PriorConfig, masks_to_priors
from cxrlib.anatomy.segmenter import Segmenter
from cxrlib.base import storage
from cxrlib.base.errors import CxrError
from cxrlib.base.images import image_source, to_pixels
from cxrlib.data.dataset import Collate, Example, ReportDataset
from cxrlib.data.manifest import Manifest, read_manifest, text_cell
from cxrlib.data.phantom import PhantomSpec, prepare_phantom
from cxrlib.model import ModelConfig, encoders
from cxrlib.model.hub import hub_token, load_from_hub
from cxrlib.training.checkpoint import TrainingError
from cxrlib.training.config import RunConfig
from cxrlib.training.features import (
    CacheDecision,
    FeatureCache,
    ManifestFeatures,
    cache_pays,
    features_for_manifest,
    format_bytes,
)
from cxrlib.training.pretrain import pretrained_encoder

log = logging.getLogger(__name__)

FEATURES_IN_MEMORY_BYTES = 4 * 1024**3
"""Cached features of a split up to this size are loaded into memory; larger ones (the
published sizes on MIMIC-CXR: ~300 GB) are read from the shards per item."""


# --- which rows, which model --------------------------------------------------------------


def resolve_manifest(config: RunConfig) -> Path | str:
    """The manifest a run trains on: ``data.manifest`` (a path, or a URL kept as a string)
    or the cached phantom dataset."""
    if config.data.manifest:
        manifest = config.data.manifest
        return manifest if storage.is_url(manifest) else Path(manifest)
    data = config.data
    spec = PhantomSpec(n=data.phantom_n, seed=data.phantom_seed, size=data.phantom_size)
    return prepare_phantom(spec, Path(data.cache_dir))  # the workbook's cache layout


def load_splits(config: RunConfig, manifest: Path) -> dict[str, Manifest]:
    """The train and validate rows (capped by ``data.max_*_images``); rows without image
    or text are counted and left out (logged)."""
    full = read_manifest(manifest, check_files=False)
    df = full.frame
    column = config.data.text_column
    if column not in df.columns:
        raise CxrError(f"{manifest}: no text column {column!r} (data.text_column)")
    out = {}
    caps = {"train": config.data.max_train_images, "validate": config.data.max_val_images}
    for split, cap in caps.items():
        rows = df[df["split"] == split]
        texts = rows[column].map(text_cell)
        paths = rows["image_path"].map(text_cell)
        keep = (texts != "") & (paths != "")
        if (~keep).any():
            log.warning(
                "%s: %d %s rows left out (%d without text, %d without image)",
                manifest,
                int((~keep).sum()),
                split,
                int((texts == "").sum()),
                int((paths == "").sum()),
            )
        rows = rows[keep]
        if cap is not None:
            rows = rows.iloc[:cap]
        out[split] = full.subset(rows.copy())
    if len(out["train"]) == 0:
        raise CxrError(f"{manifest}: no train rows with an image and {column!r} text")
    return out


def split_frame(manifest: str | os.PathLike, split: str | None) -> Manifest:
    """The manifest's rows of ``split`` (all rows for None) that have an image."""
    full = read_manifest(manifest, check_files=False)
    rows = full if split is None else full.split(split)
    rows = rows.subset(rows.frame[rows.frame["image_path"].map(text_cell) != ""].copy())
    if len(rows) == 0:
        raise CxrError(f"{manifest}: no rows with an image in split {split!r}")
    return rows


def resolve_model_config(config: RunConfig, manifest: Path, progress: bool = True):
    """``config.model``, with a config-built encoder replaced by its pretrained folder
    when ``pretrain.enabled`` (:func:`cxrlib.training.pretrain.pretrained_encoder`: trained once
    per manifest and settings, then read from the cache)."""
    if not (config.pretrain.enabled and isinstance(config.model.encoder, dict)):
        return config.model
    encoder = pretrained_encoder(
        config.model,
        manifest,
        config.data.cache_dir,
        config.pretrain,
        seed=config.pretrain.seed,
        progress=progress,
    )
    log.info("encoder pretrained on %s: %s", manifest, encoder)
    return config.model.replace(encoder=str(encoder))


# --- rows -> dataset ----------------------------------------------------------------------


def split_dataset(
    config: RunConfig,
    model,
    manifest: Manifest,
    progress: bool = True,
    use_cache: bool | None = None,
) -> tuple[ReportDataset, list[tuple[str, str]]]:
    """The model's inputs for the manifest rows ``manifest``, and the unreadable images.

    Texts from ``data.text_column``; with the feature cache (``use_cache``; None: as
    :func:`use_feature_cache` decides from ``train.feature_cache``) the cached patch
    features (in memory up to :data:`FEATURES_IN_MEMORY_BYTES`, else read per item),
    otherwise image paths after a header check; the priors of the config (none for mode
    ``none``). Unreadable images are left out and returned as ``(image_id, message)``.
    ``model``: a :class:`~cxrlib.model.ReportModel`.
    """
    examples = _examples(config, manifest)
    per_image = model.num_patches * model.encoder_width * 2  # fp16
    in_memory = len(examples) * per_image <= FEATURES_IN_MEMORY_BYTES
    found, bad = _readable(config, model, manifest, examples, progress, in_memory, use_cache)
    bad_ids = {image_id for image_id, _ in bad}
    keep = [i for i, ex in enumerate(examples) if ex.image_id not in bad_ids]
    examples = [examples[i] for i in keep]
    rows = manifest.subset(manifest.frame.iloc[keep])
    features = None
    if found is not None:
        row_of = {image_id: i for i, image_id in enumerate(found.image_ids)}
        features = found.features[[row_of[ex.image_id] for ex in examples]]
    priors = None
    if model.config.mode != "none":
        priors = manifest_priors(config, prior_settings(config, model), rows)
    return ReportDataset(examples, model.config.image_size, features, priors), bad


def _examples(config: RunConfig, manifest: Manifest) -> list[Example]:
    """One :class:`Example` per row: image id, ``data.text_column`` text, image path."""
    df = manifest.frame  # three columns, not a dict of every column per row
    column = config.data.text_column
    texts = df[column] if column in df.columns else [""] * len(df)
    return [
        Example(text_cell(i), text_cell(t), str(manifest.resolve(text_cell(p))))
        for i, t, p in zip(df["image_id"], texts, df["image_path"], strict=True)
    ]


def _readable(
    config: RunConfig,
    model,
    manifest: Manifest,
    examples: list[Example],
    progress: bool,
    in_memory: bool,
    use_cache: bool | None = None,
) -> tuple[ManifestFeatures | None, list[tuple[str, str]]]:
    """The cached features (None when the run reads images) and the unreadable images."""
    if use_cache is None and examples:
        use_cache = use_feature_cache(config, model, [ex.image_id for ex in examples])
    if use_cache and model.config.encoder_trainable == "frozen" and examples:
        found = cached_features(config, model, manifest, progress, in_memory=in_memory)
        return found, [(image_id, message) for image_id, _, message in found.bad]
    # cheap header check first (the priors read image sizes); images that fail
    # later, while decoding, are skipped by the loader
    return None, list(unreadable_images(examples).items())


def cached_features(
    config: RunConfig, model, rows: Manifest, progress: bool = True, *, in_memory: bool = True
) -> ManifestFeatures:
    """The frozen encoder's features of ``rows`` from the run's feature cache
    (``data.cache_dir/features``), computed for the images not cached yet."""
    folder = feature_folder(config)
    return features_for_manifest(rows, model, folder, progress=progress, in_memory=in_memory)


def feature_folder(config: RunConfig) -> Path:
    """The run's feature cache folder: ``data.cache_dir/features``."""
    return Path(config.data.cache_dir) / "features"


def free_bytes(folder: str | os.PathLike) -> int:
    """Free bytes (:func:`shutil.disk_usage`) where ``folder`` is or will be created."""
    path = Path(folder).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return int(shutil.disk_usage(path).free)


def feature_cache_decision(
    config: RunConfig, model, image_ids: Sequence[str], runs: int = 1
) -> CacheDecision:
    """Whether the run caches the encoder features of ``image_ids``
    (``train.feature_cache``: true or false as set, with a frozen encoder; ``"auto"``:
    :func:`~cxrlib.training.features.cache_pays` for ``train.epochs`` x ``runs`` passes
    and the free space of :func:`feature_folder`). ``model``: a report model or an
    :class:`ImageEncoder`."""
    setting = config.train.feature_cache
    frozen = model.config.encoder_trainable == "frozen"
    ids = list(dict.fromkeys(str(i) for i in image_ids))
    missing = ids
    if frozen and setting:
        missing = FeatureCache(feature_folder(config), model).missing(ids)
    per_image = model.num_patches * model.encoder_width * 2  # float16
    if setting != "auto":
        use = bool(setting) and frozen
        why = "the encoder trains" if setting and not frozen else "as set"
        return CacheDecision(use, f"train.feature_cache={str(setting).lower()} ({why})",
                             len(missing) * per_image if use else 0)  # fmt: skip
    return cache_pays(
        frozen,
        config.train.epochs,
        runs,
        len(ids),
        per_image,
        free_bytes(feature_folder(config)),
        cached_images=len(ids) - len(missing),
    )


def use_feature_cache(config: RunConfig, model, image_ids: Sequence[str]) -> bool:
    """Whether a run reads the features of ``image_ids`` from the cache
    (true or false: as set, with a frozen encoder; ``"auto"``:
    :func:`feature_cache_decision`, logged)."""
    if config.train.feature_cache != "auto":
        return bool(config.train.feature_cache) and model.config.encoder_trainable == "frozen"
    decision = feature_cache_decision(config, model, image_ids)
    log.info("%s", decision.describe())
    return decision.use


def checkpoint_bytes(model, ema: bool = False) -> int:
    """Rough disk of a run's checkpoints: three copies (``last``, ``best``, and the new
    one while it replaces the old) of the weights, AdamW's two moments of the trainable
    ones and, with ``ema``, their moving average."""
    params = list(model.parameters())
    weights = sum(p.numel() * p.element_size() for p in params)
    trainable = sum(p.numel() * 4 for p in params if p.requires_grad)
    return 3 * (weights + trainable * (3 if ema else 2))


def check_disk(needs: dict[Path, tuple[int, str]]) -> None:
    """Log in one line the disk each folder will need, and stop with one
    :class:`CxrError` line naming the folder, the need and the free space when a
    folder's free space (:func:`shutil.disk_usage`) is short. ``needs``: folder ->
    (bytes, what); folders on one file system add up."""
    by_device: dict[object, list[Path]] = {}
    for folder in needs:
        path = Path(folder).absolute()
        while not path.exists() and path != path.parent:
            path = path.parent
        by_device.setdefault(path.stat().st_dev, []).append(folder)
    parts, short = [], None
    for folders in by_device.values():
        need = sum(needs[f][0] for f in folders)
        free = free_bytes(folders[0])
        what = " + ".join(f"{needs[f][1]} {format_bytes(needs[f][0])} in {f}" for f in folders)
        parts.append(f"{what} ({format_bytes(free)} free)")
        if need > free and short is None:
            short = (folders, need, free, what)
    log.info("disk needed: %s", "; ".join(parts))
    if short is not None:
        folders, need, free, what = short
        fixes = "free some space or point data.cache_dir or --out elsewhere"
        if "feature cache" in what:
            fixes += ", or set train.feature_cache=false (or auto)"
        raise CxrError(
            f"{folders[0]}: not enough free disk: the run needs {format_bytes(need)} "
            f"({what}), {format_bytes(free)} free; {fixes}"
        )


def check_run_disk(
    config: RunConfig, model, splits: dict[str, Manifest], out: str | os.PathLike | None = None
) -> CacheDecision:
    """Before a run: decide the feature cache for the images of ``splits``
    (:func:`feature_cache_decision`, logged), then :func:`check_disk` for the
    features not cached yet and, with ``out``, the checkpoints (roughly,
    :func:`checkpoint_bytes`). Returns the decision."""
    ids = [text_cell(i) for rows in splits.values() for i in rows.frame["image_id"]]
    decision = feature_cache_decision(config, model, ids)
    log.info("%s", decision.describe())
    needs: dict[Path, tuple[int, str]] = {}
    if decision.use:
        needs[feature_folder(config)] = (decision.need_bytes, "feature cache")
    if out is not None:
        ema = config.train.ema_decay is not None
        needs[Path(out)] = (checkpoint_bytes(model, ema), "checkpoints about")
    if needs:
        check_disk(needs)
    return decision


def unreadable_images(examples: list[Example]) -> dict[str, str]:
    """Image id -> message for files that are missing or have no readable image header."""
    from PIL import Image

    bad = {}
    for ex in examples:
        try:
            source = image_source(ex.path, "image")[1] if storage.is_url(ex.path) else ex.path
            with Image.open(source) as img:
                img.size  # noqa: B018 (reads the header)
        except CxrError as err:  # a URL that cannot be read
            bad[ex.image_id] = str(err)
            log.warning("skipped unreadable image %s: %s", ex.image_id, bad[ex.image_id])
        except (OSError, ValueError) as err:
            bad[ex.image_id] = f"{ex.path}: not a readable image ({err})"
            log.warning("skipped unreadable image %s: %s", ex.image_id, bad[ex.image_id])
    return bad


def prior_settings(config: RunConfig, model) -> PriorConfig:
    """The run's prior settings (``config.priors``) at the model's image size, patch size
    and number of decoder layers."""
    return config.priors.resolve(
        model.config.image_size, model.config.patch_size, model.num_decoder_layers
    )


def manifest_priors(config: RunConfig, settings: PriorConfig, rows: Manifest) -> LazyRows | None:
    """(N, L, P) priors of ``rows`` from the run's prior cache (``data.cache_dir/priors``)
    with the run's mask source and segmenter, read on demand (:class:`LazyRows`; its
    ``tensor()`` materialises them); None for no rows."""
    if len(rows) == 0:
        return None
    segmenter = segmenter_id = None
    if config.priors.segmenter:
        segmenter = Segmenter.from_pretrained(config.priors.segmenter)
        segmenter_id = checkpoint_fingerprint(config.priors.segmenter)
    cached = cached_priors_for_manifest(
        rows,
        settings,
        Path(config.data.cache_dir) / "priors",
        source=config.priors.source,
        segmenter=segmenter,
        segmenter_id=segmenter_id,
        progress=False,
    )
    log.info("priors: %s", cached.describe())
    return cached.priors


def check_bad_images(bad_images: list[tuple[str, str]], max_bad_images: int) -> None:
    """Stop a run whose unreadable images are more than ``max_bad_images``
    (``data.max_bad_images``): a :class:`TrainingError` listing the first 20."""
    if len(bad_images) > max_bad_images:
        listed = "; ".join(f"{i}: {m}" for i, m in bad_images[:20])
        more = f" (+{len(bad_images) - 20} more)" if len(bad_images) > 20 else ""
        raise TrainingError(
            f"{len(bad_images)} unreadable images, more than data.max_bad_images="
            f"{max_bad_images}: {listed}{more}"
        )


def epoch_loader(
    dataset: ReportDataset,
    batches: list[list[int]],
    collate: Collate,
    num_workers: int,
    seed: int,
) -> torch.utils.data.DataLoader:
    """The batches ``batches`` of ``dataset`` (:func:`cxrlib.data.dataset.epoch_batches`)
    collated, with a generator of its own seeded by ``seed``: creating the iterator must
    not draw from the global RNG (it would shift dropout after a resume)."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batches,
        collate_fn=collate,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
    )


# --- one image ----------------------------------------------------------------------------


def image_priors(
    masks: dict[str, np.ndarray | torch.Tensor], settings: PriorConfig, name: str
) -> torch.Tensor:
    """(1, L, P) priors of one image's organ masks ((1, H, W) each) with ``settings``."""
    return masks_to_priors(masks, settings, image_ids=[name])


def image_inputs_for(
    model,
    settings: PriorConfig,
    gray: np.ndarray,
    masks: dict[str, np.ndarray] | None,
    name: str,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(pixel values (1, 3, S, S), priors (1, L, P) or None)`` that ``model`` reads for
    one uint8 (H, W) image and its organ masks ((1, H, W) each), on the model's device.

    No priors for mode ``none`` or without masks (None: a uniform prior).
    """
    pixels = to_pixels(gray, model.config.image_size)[None].to(model.device)
    priors = None
    if masks is not None and model.config.mode != "none":
        priors = image_priors(masks, settings, name).to(model.device)
    return pixels, priors


# --- caches -------------------------------------------------------------------------------


class ImageEncoder:
    """The image side of a report model, built from its :class:`ModelConfig` alone: the
    frozen encoder as :meth:`ReportModel.from_config <cxrlib.model.ReportModel.from_config>`
    builds it (the same weights, patch grid and RoPE setting, in eval mode) and the
    decoder's number of layers; what the feature and prior caches read. No decoder or
    tokenizer is built."""

    training = False  # frozen: always in eval mode (train() and eval() change nothing)

    def __init__(self, config: ModelConfig):
        token = hub_token()
        encoder = encoders.build_encoder(
            config.encoder, config.image_size, config.patch_size, token
        )
        if not config.encoder_rope_augmentation:
            encoders.disable_rope_augmentation(encoder)
        self.encoder = encoder.requires_grad_(False).eval()
        stride = encoders.encoder_stride(encoder, config.image_size)
        self.config = config.replace(patch_size=stride)
        self.num_patches = self.config.num_patches
        self.encoder_width = encoders.encoder_width(encoder)
        self.num_decoder_layers = _decoder_layers(config.decoder)

    def train(self, mode: bool = True) -> ImageEncoder:
        return self

    def eval(self) -> ImageEncoder:
        return self

    @torch.no_grad()
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, P, E) patch features of (B, 3, S, S) pixel values."""
        return encoders.encoder_patches(self.encoder, pixel_values)


def _decoder_layers(decoder: str | dict) -> int:
    """The decoder's number of layers: its GPT2Config fields, or the pretrained config."""
    from transformers import GPT2Config

    if isinstance(decoder, dict):
        return int(GPT2Config(**decoder).n_layer)
    return int(load_from_hub("decoder", decoder, GPT2Config.from_pretrained).n_layer)


def warm_caches(
    config: RunConfig,
    model_config: ModelConfig,
    rows: Manifest,
    progress: bool = True,
    runs: int = 1,
) -> list[tuple[str, str]]:
    """Fill the feature cache (frozen encoder and ``train.feature_cache``; ``"auto"``
    decides for ``runs`` runs, after :func:`check_disk`) and the prior cache for
    ``rows`` as runs of ``config`` with model ``model_config`` read them (any mode), so
    the runs only read; returns the unreadable images."""
    encoder = ImageEncoder(model_config)
    examples = _examples(config, rows)
    ids = [ex.image_id for ex in examples]
    decision = feature_cache_decision(config, encoder, ids, runs) if ids else None
    if decision is not None:
        log.info("%s", decision.describe())
        if decision.use:
            check_disk({feature_folder(config): (decision.need_bytes, "feature cache")})
    use = decision is not None and decision.use
    _, bad = _readable(config, encoder, rows, examples, progress, False, use)
    bad_ids = {image_id for image_id, _ in bad}
    keep = [i for i, ex in enumerate(examples) if ex.image_id not in bad_ids]
    manifest_priors(config, prior_settings(config, encoder), rows.subset(rows.frame.iloc[keep]))
    return bad
