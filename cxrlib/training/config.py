"""One config tree for a training run: ``data`` / ``priors`` / ``model`` / ``train``.

:class:`RunConfig` holds these nodes, ``pretrain`` (supervised encoder pretraining,
:mod:`cxrlib.training.pretrain`) and the seed. Every node is a dataclass with one
commented default per field; the tree is plain JSON (:meth:`RunConfig.to_dict`) and
loads from YAML or JSON (:func:`load_config`). Unknown keys are errors at every level,
so a typo never silently falls back to a default.

Profiles are named presets (:data:`PROFILES`, one table of :class:`Profile`; the config
tree of one: :func:`profile_config`). Each has a training part, the tree below, and a
notebook part, what the workbook offers its notebooks (the smoke workbook trains its
decoders 1 epoch, the others as the tree says):

- ``smoke``: seconds on a CPU: 64 phantom images drawn at 128 px, a 2-layer model, 2 epochs
  (1 epoch of encoder pretraining); what the tests and CI run;
- ``default``: the phantom dataset (6,000 images drawn at 256 px) with
  :meth:`ModelConfig.cpu` (a small ResNet at 128 px, 8x8 patches), its encoder
  pretrained once on the phantom labels and per-patch masks (:mod:`cxrlib.training.pretrain`)
  and frozen, sized for 2 CPU cores;
- ``full``: the published sizes (:meth:`ModelConfig.published`: DINOv3 ViT-S/16 +
  GPT-2 small, 512 px) on a user's manifest (MIMIC-CXR), bf16 on GPUs.

A file given with ``--config`` is a *partial* tree merged over the profile
(:func:`merge`): ``{"train": {"epochs": 3}}`` changes one field and keeps the rest.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cxrlib.anatomy.prior_config import PriorConfig
from cxrlib.base.errors import CxrError, one_line
from cxrlib.base.vocabulary import MASK_SOURCES
from cxrlib.model.config import DEFAULT_ENCODER_TYPE, ModelConfig

MIXED_PRECISION = ("auto", "no", "bf16", "fp16")
EARLY_STOPPING_MODES = ("min", "max")


def _key_text(key: object) -> str:
    """A key as an error message shows it: as written when printable text, else repr."""
    return key if isinstance(key, str) and key.isprintable() and key else repr(key)


def _check_unknown(cls: type, data: dict, where: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(_key_text(k) for k in data if k not in known)
    if unknown:
        raise CxrError(f"{where}: unknown key(s) {', '.join(unknown)}")


def _matches(value: object, hint: object) -> bool:
    """Whether a config value is of a field's annotated type (an int is a float too;
    a bool is neither; lists stand for tuples); annotations not known here pass."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return any(_matches(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if hint in (bool, str):
        return isinstance(value, hint)
    if hint in (int, float):
        kinds = (int,) if hint is int else (int, float)
        return isinstance(value, kinds) and not isinstance(value, bool)
    if origin in (list, tuple):
        return isinstance(value, list | tuple) and all(_matches(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    return True


def _check_types(cls: type, data: dict, where: str) -> None:
    """CxrError naming the first key of ``data`` whose value is not of its field's type."""
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        if key in hints and not _matches(value, hints[key]):
            hint = str(hints[key]).replace("<class '", "").replace("'>", "")
            shown = " ".join(repr(value).split())
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            raise CxrError(f"{where}.{key}: expected {hint}, got {shown}")


@dataclass
class DataConfig:
    """Which images and texts a run trains on."""

    # manifest CSV (cxrlib.data.manifest schema); None: the phantom dataset below
    manifest: str | None = None
    # phantom dataset generated (once, cached) when manifest is None
    phantom_n: int = 3000
    phantom_seed: int = 0
    phantom_size: int = 224
    # folder for the phantom, prior and encoder-feature caches
    cache_dir: str = "cache"
    # the report text the decoder learns
    text_column: str = "findings"
    # first N images of the train / validate split (manifest order); None: all
    max_train_images: int | None = None
    max_val_images: int | None = None
    # unreadable images are logged, counted and skipped up to this many; one more
    # stops the run with the list
    max_bad_images: int = 10

    def __post_init__(self) -> None:
        for name in ("phantom_n", "phantom_size"):
            if getattr(self, name) < 1:
                raise CxrError(f"data.{name}: expected a positive integer")
        for name in ("max_train_images", "max_val_images"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise CxrError(f"data.{name}: expected a positive integer or null")
        if self.max_bad_images < 0:
            raise CxrError("data.max_bad_images: expected >= 0")


@dataclass
class RunPriorsConfig:
    """A run's ``priors`` section: where the masks come from and how they become the
    per-layer priors.

    Image size, patch size and the number of layers come from the model, so they are
    not repeated here; :meth:`resolve` adds them and gives the
    :class:`cxrlib.anatomy.priors.PriorConfig` the priors are computed with.
    """

    # structures united into the mask: lungs, heart, left_lung, right_lung
    structures: list[str] = field(default_factory=lambda: ["lungs", "heart"])
    # thesis | linear | constant | none (see cxrlib.anatomy.priors)
    schedule: str = "linear"
    # sigmas as fractions of the image side (any grid gets the published priors in
    # image space): linear from sigma_start (layer 0) to sigma_end (last layer), 13/3
    # and 2/3 patches of the published 32-patch grid; constant: sigma, 2 patches of it
    sigma_start: float = 13 / 96
    sigma_end: float = 1 / 48
    sigma: float = 1 / 16
    padding: str = "reflect"
    # where masks come from: auto (manifest masks, else segmenter, else uniform),
    # manifest, segmenter or none (uniform priors)
    source: str = "auto"
    # segmenter folder (cxr segment train) for images without masks; None: no segmenter
    segmenter: str | None = None

    def __post_init__(self) -> None:
        if self.source not in MASK_SOURCES:
            raise CxrError(f"priors.source: expected one of {', '.join(MASK_SOURCES)}")
        self.resolve(224, 16, 1)  # validates the remaining fields

    def resolve(self, image_size: int, patch_size: int, num_layers: int):
        """The :class:`PriorConfig` for a model of these sizes."""
        return PriorConfig(
            structures=tuple(self.structures),
            schedule=self.schedule,
            num_layers=num_layers,
            image_size=image_size,
            patch_size=patch_size,
            sigma_start=self.sigma_start,
            sigma_end=self.sigma_end,
            sigma=self.sigma,
            padding=self.padding,
        )


@dataclass
class TrainConfig:
    """The optimisation loop (:func:`cxrlib.training.train.train`)."""

    epochs: int = 10
    # images per process per forward pass
    batch_size: int = 16
    # forward passes per optimizer step (effective batch = batch * processes * this)
    grad_accum_steps: int = 1
    # AdamW; no weight decay on biases, norms and embeddings' positions
    lr: float = 3e-4
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    # linear warmup over this fraction of all optimizer steps, then cosine decay to
    # min_lr_ratio * lr
    warmup_ratio: float = 0.05
    min_lr_ratio: float = 0.0
    # gradient clipping by global norm; None: off
    grad_clip: float | None = 1.0
    # auto: bf16 autocast on CUDA, fp32 on CPU; or no / bf16 / fp16
    mixed_precision: str = "auto"
    # frozen encoder: compute patch features once (fp16 on disk) and reuse them; "auto":
    # only when it pays and fits on disk (cxrlib.training.features.cache_pays, decided
    # at the start of the run)
    feature_cache: bool | str = True
    # DataLoader worker processes (0: load in the training process)
    num_workers: int = 0
    # optimizer steps between checkpoints (0: only at the end of each epoch)
    checkpoint_every: int = 0
    # optimizer steps between train rows in metrics.csv / TensorBoard
    log_every: int = 10
    # early stopping: validation metric (val_loss, or clinical_micro_14: clinical
    # micro-F1 of the val_generate generated Findings, mode max), its direction, epochs
    # without improvement (None: never stop early); the best checkpoint follows it
    early_stopping_metric: str = "val_loss"
    early_stopping_mode: str = "min"
    patience: int | None = None
    # validation images whose Findings are generated after each epoch (samples.csv and
    # the clinical_micro_14 metric)
    val_generate: int = 8
    # stop after this many optimizer steps in all (None: run every epoch)
    max_steps: int | None = None
    # exponential moving average of the trainable weights, updated after every optimizer
    # step with decay min(ema_decay, (1 + step) / (10 + step)); the run then also writes
    # checkpoints/ema, a model folder with the averaged weights (None: off)
    ema_decay: float | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "grad_accum_steps", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise CxrError(f"train.{name}: expected a positive integer (got {value!r})")
        for name in ("checkpoint_every", "num_workers", "val_generate"):
            if getattr(self, name) < 0:
                raise CxrError(f"train.{name}: expected >= 0")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise CxrError(f"train.lr: expected a positive number (got {self.lr!r})")
        if not 0 <= self.warmup_ratio < 1:
            raise CxrError("train.warmup_ratio: expected a value in [0, 1)")
        if not 0 <= self.min_lr_ratio <= 1:
            raise CxrError("train.min_lr_ratio: expected a value in [0, 1]")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise CxrError("train.grad_clip: expected a positive number or null")
        if self.feature_cache not in (True, False, "auto"):
            raise CxrError(
                f"train.feature_cache: expected true, false or auto (got {self.feature_cache!r})"
            )
        if self.mixed_precision not in MIXED_PRECISION:
            raise CxrError(f"train.mixed_precision: expected one of {', '.join(MIXED_PRECISION)}")
        if self.early_stopping_mode not in EARLY_STOPPING_MODES:
            raise CxrError("train.early_stopping_mode: expected min or max")
        if self.patience is not None and self.patience < 1:
            raise CxrError("train.patience: expected a positive integer or null")
        if self.max_steps is not None and self.max_steps < 1:
            raise CxrError("train.max_steps: expected a positive integer or null")
        if len(self.betas) != 2:
            raise CxrError("train.betas: expected two numbers")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise CxrError(
                f"train.ema_decay: expected a number in (0, 1) or null (got {self.ema_decay!r})"
            )


@dataclass(frozen=True)
class PretrainConfig:
    """Encoder pretraining (:func:`cxrlib.training.pretrain.pretrained_encoder`); off
    unless ``enabled``."""

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
    # weight of the per-patch targets (organs and finding regions under each patch,
    # module doc); 0: image-level targets only
    dense_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0 or self.max_shift < 0:
            raise CxrError("pretrain: epochs and batch_size >= 1, lr > 0, max_shift >= 0")
        if not self.dense_weight >= 0:
            raise CxrError("pretrain: dense_weight >= 0")


@dataclass
class RunConfig:
    """The whole tree of one training run."""

    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    priors: RunPriorsConfig = field(default_factory=RunPriorsConfig)
    model: ModelConfig = field(default_factory=ModelConfig.tiny)
    train: TrainConfig = field(default_factory=TrainConfig)
    # supervised pretraining of a config-built encoder before it is frozen
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    # the profile this tree started from (informational)
    profile: str = "custom"

    def to_dict(self) -> dict[str, Any]:
        """The tree as JSON-ready plain data."""
        return {
            "profile": self.profile,
            "seed": self.seed,
            "data": dataclasses.asdict(self.data),
            "priors": dataclasses.asdict(self.priors),
            "model": self.model.to_dict(),
            "train": dataclasses.asdict(self.train),
            "pretrain": dataclasses.asdict(self.pretrain),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Inverse of :meth:`to_dict`; missing keys take defaults, unknown keys are errors."""
        _check_unknown(cls, data, "config")
        _check_types(cls, {k: data[k] for k in ("seed", "profile") if k in data}, "config")
        parts: dict[str, Any] = {k: data[k] for k in ("seed", "profile") if k in data}
        nodes = (
            ("data", DataConfig),
            ("priors", RunPriorsConfig),
            ("train", TrainConfig),
            ("pretrain", PretrainConfig),
            ("model", ModelConfig),
        )
        for name, node in nodes:
            if name not in data:
                continue
            if not isinstance(data[name], dict):
                raise CxrError(f"config.{name}: expected a mapping")
            _check_unknown(node, data[name], f"config.{name}")
            _check_types(node, data[name], f"config.{name}")
            try:
                parts[name] = (
                    node.from_dict(data[name]) if node is ModelConfig else node(**data[name])
                )
            except CxrError as err:  # a nested check (priors -> PriorConfig) names no node
                if str(err).startswith((name, "config")):
                    raise
                raise CxrError(f"config.{name}: {one_line(err)}") from None
            except (TypeError, ValueError, OverflowError) as err:  # a value the checks cannot take
                raise CxrError(f"config.{name}: {one_line(err)}") from None
        return cls(**parts)

    def replace(self, **changes: Any) -> RunConfig:
        """A deep copy with top-level ``changes`` applied."""
        return dataclasses.replace(copy.deepcopy(self), **changes)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)


def _smoke() -> RunConfig:
    model = ModelConfig.tiny(
        encoder={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_register_tokens": 2,
        },
        image_size=64,
        decoder={"n_layer": 2, "n_head": 2, "n_embd": 64},
        max_text_tokens=96,
        tokenizer_vocab_size=512,
        max_new_tokens=24,
    )
    return RunConfig(
        profile="smoke",
        # the workbook's smoke data: 64 studies drawn at 128 px, read at the model's 64 px
        data=DataConfig(phantom_n=64, phantom_size=128),
        model=model,
        train=TrainConfig(
            epochs=2,
            batch_size=8,
            lr=1e-3,
            warmup_ratio=0.1,
            checkpoint_every=2,
            log_every=1,
            val_generate=2,
        ),
        pretrain=PretrainConfig(enabled=True, epochs=1, batch_size=8),
    )


def _default() -> RunConfig:
    return RunConfig(
        profile="default",
        # 6,000 phantom studies drawn at 256 px, read at the model's 128 px (docs/decisions.md,
        # "Choosing the CPU encoder": every variant tried, chosen on the validation split)
        data=DataConfig(phantom_n=6000, phantom_size=256),
        model=ModelConfig.cpu(),
        # batch 4 at lr 2e-3: on 2 CPU cores an epoch costs the same at any batch size,
        # and more, smaller steps learn more per epoch (1 epoch, validation split:
        # loss 1.56 / labeler micro-F1 0.40 against 1.76 / 0.16 at batch 16, lr 3e-3)
        # 6 epochs, the cosine schedule reaching 0: validation micro-F1 0.816 against 0.747
        # after 4 (soft, seed 0; docs/decisions.md, "Choosing the decoder budget")
        train=TrainConfig(
            epochs=6, batch_size=4, lr=2e-3, checkpoint_every=200, log_every=25, val_generate=64
        ),
        # a random frozen encoder gives the decoder nothing to read (one text for every
        # image): the ResNet learns the labels and, per patch, the organs and finding
        # regions under it, once (~5 min), then is frozen and reused by every run
        pretrain=PretrainConfig(
            enabled=True, epochs=6, batch_size=32, lr=2e-3, max_shift=4, dense_weight=1.0
        ),
    )


def _full() -> RunConfig:
    return RunConfig(
        profile="full",
        data=DataConfig(manifest=None, max_bad_images=100),
        model=ModelConfig.published(),
        train=TrainConfig(
            epochs=10,
            batch_size=16,
            lr=5e-5,
            mixed_precision="auto",
            checkpoint_every=1000,
            log_every=50,
            early_stopping_metric="val_loss",
            patience=3,
            val_generate=256,
            num_workers=8,
            # on MIMIC-CXR the cache is ~300 GB: used only when it pays and fits
            # (docs/decisions.md, "Caching encoder features at scale")
            feature_cache="auto",
        ),
    )


@dataclass(frozen=True)
class Profile:
    """A named preset: a training part and a notebook part.

    ``run_config`` returns a fresh :class:`RunConfig`: what ``cxr train --profile``
    trains, and alone the data (:func:`cxrlib.training.profiles.profile_phantom`). The
    rest is what the workbook (:mod:`cxrlib.experiment.workbook`) does with it:
    ``parameters`` are offered to every notebook (each takes those its ``parameters``
    cell declares; ``epochs`` None: the config tree's), ``publish_figures`` copies the
    run's figures to ``figures/``, ``workers`` processes draw the phantom,
    ``needs_manifest`` asks for ``--manifest``.
    """

    name: str
    run_config: Callable[[], RunConfig]
    parameters: dict = field(default_factory=dict)
    publish_figures: bool = False
    workers: int = 2
    # the profile runs on a user's manifest (--manifest), not on the phantom
    needs_manifest: bool = False

    def to_dict(self) -> dict:
        """Every field but ``run_config``, as JSON-ready values."""
        fields = (f.name for f in dataclasses.fields(self) if f.name != "run_config")
        return {name: copy.deepcopy(getattr(self, name)) for name in fields}


PROFILES: dict[str, Profile] = {
    # every notebook on tiny settings; CI runs it
    "smoke": Profile(
        "smoke",
        _smoke,
        {
            "seed": 0,
            "n_overlay": 4,
            "segmenter_epochs": 1,
            "segmenter_image_size": 64,
            "n_examples": 2,
            "n_bootstrap": 50,
            "epochs": 1,
            "seeds": [0, 1, 2],
        },
    ),
    # what `make workbook` runs on the embedded phantom dataset
    "default": Profile(
        "default",
        _default,
        {
            "seed": 0,
            "n_overlay": 8,
            # 24 epochs at 192 px: held-out Dice 0.938 in 3.8 min against 0.944 in 11.7
            # min for cxr segment train's 40 epochs at 256 px (docs/decisions.md, "Fitting the
            # 30-minute budget")
            "segmenter_epochs": 24,
            "segmenter_image_size": 192,
            "n_examples": 4,
            "n_bootstrap": 1000,
            # None: the training profile's epochs (6, ending at learning rate 0): one
            # epoch per run left the decoders far from what they learn (issue 25,
            # docs/decisions.md, "Choosing the decoder budget")
            "epochs": None,
            "seeds": [0, 1, 2],
        },
        publish_figures=True,
    ),
    # the published sizes on a user's manifest (MIMIC-CXR), on GPUs; a --manifest is
    # required; each ablation run on all GPUs with `accelerate launch`
    "full": Profile(
        "full",
        _full,
        {
            "seed": 0,
            "n_overlay": 8,
            "segmenter_epochs": 40,
            "segmenter_image_size": 256,
            "n_examples": 4,
            "n_bootstrap": 1000,
            "epochs": None,
            "seeds": [0, 1, 2],
            "parallel": 1,
        },
        needs_manifest=True,
    ),
}
"""The profiles, one table: each one's training part (its config tree) and its notebook
part (the parameters the workbook offers its notebooks); names as
:data:`cxrlib.base.vocabulary.PROFILES`."""


def profile_config(name: str) -> RunConfig:
    """A fresh :class:`RunConfig` of profile ``name``."""
    if name not in PROFILES:
        raise CxrError(f"unknown profile {name!r} (choose from {', '.join(PROFILES)})")
    return PROFILES[name].run_config()


def merge(base: dict, override: dict) -> dict:
    """``base`` with ``override`` merged in recursively (mappings merge, values replace).

    A mapping naming a ``model_type`` other than the one it would merge into (an encoder
    of another kind) replaces it whole: a ResNet's fields merged into a DINOv3's would
    make a config of neither.
    """
    out = copy.deepcopy(base)
    for key, value in override.items():
        if (
            isinstance(value, dict)
            and isinstance(out.get(key), dict)
            and _same_kind(out[key], value)
        ):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _same_kind(base: dict, override: dict) -> bool:
    if "model_type" not in override:
        return True
    return base.get("model_type", DEFAULT_ENCODER_TYPE) == override["model_type"]


def read_config_file(path: str | os.PathLike) -> dict:
    """A (partial) config tree from a ``.yaml``/``.yml`` or ``.json`` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config file not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise CxrError(f"{path}: not UTF-8 text ({one_line(err)})") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError, RecursionError) as err:
        first = one_line(str(err).strip().splitlines()[0]) if str(err).strip() else one_line(err)
        raise CxrError(f"{path}: not valid {path.suffix.lstrip('.') or 'YAML'} ({first})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise CxrError(f"{path}: expected a mapping at the top level")
    return data


def parse_assignment(text: str) -> dict:
    """``"train.epochs=3"`` -> ``{"train": {"epochs": 3}}`` (value parsed as YAML)."""
    if "=" not in text:
        raise CxrError(f"--set {text!r}: expected KEY=VALUE, e.g. train.epochs=3")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except (yaml.YAMLError, RecursionError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CxrError(f"--set {text!r}: the value is not valid YAML ({first})") from None
    node: dict = {}
    cursor = node
    parts = key.strip().split(".")
    for part in parts[:-1]:
        cursor[part] = {}
        cursor = cursor[part]
    cursor[parts[-1]] = value
    return node


def load_config(
    profile: str = "default",
    path: str | os.PathLike | None = None,
    overrides: list[dict] | None = None,
) -> RunConfig:
    """Profile ``profile``, then the file at ``path``, then ``overrides``, merged in order."""
    tree = profile_config(profile).to_dict()
    if path is not None:
        tree = merge(tree, read_config_file(path))
    for override in overrides or []:
        tree = merge(tree, override)
    return RunConfig.from_dict(tree)
