"""Training: the Accelerate loop, checkpoints with exact resume, the feature cache in use.

``train(config, out)`` (and ``cxr train``) runs one :class:`cxrlib.training.config.RunConfig`:

- **Engine**: Hugging Face Accelerate. The same code runs on a CPU, on one GPU (bf16
  autocast with ``mixed_precision="auto"``) and on several GPUs or nodes when started
  with ``accelerate launch`` or ``torchrun``; gradients are synchronised by Accelerate's
  DistributedDataParallel, never by hand.
- **Data**: the manifest's ``train`` and ``validate`` rows (the phantom dataset when no
  manifest is given); the per-layer priors from the prior cache; with a frozen encoder
  the patch features from the feature cache (:mod:`cxrlib.training.features`), computed once.
  Batch order: :func:`cxrlib.data.dataset.epoch_batches` (seeded per epoch, disjoint per
  process).
- **Optimisation**: AdamW (no decay on biases, norms and embeddings), linear warmup then
  cosine decay, gradient clipping, gradient accumulation; validation loss every epoch
  (and whatever ``val_metrics`` computes on generated validation Findings); early
  stopping on ``train.early_stopping_metric``.
- **Outputs** in ``out``: ``run_config.json`` (the whole tree, seed, git commit, package
  versions; once the model is built, the encoder, segmenter and priors it resolved:
  :func:`cxrlib.training.runs.run_inputs`), ``metrics.csv`` (one row per logged step and
  per validation), TensorBoard logs in ``tensorboard/``, ``samples.csv`` (generated vs
  reference Findings of a few validation images after each epoch), ``checkpoints/last``
  and ``checkpoints/best``, ``summary.json`` at the end.

Checkpoints: a :meth:`ReportModel.save_pretrained` folder plus ``optimizer.safetensors``
(optimizer tensors), ``rng.safetensors`` (every process's torch RNG state),
``trainer_state.json`` (step, epoch, position in the epoch, scheduler, optimizer
settings, python/numpy RNG states, best metric, bad images, rows of ``metrics.csv``)
and ``README.md``, the model card (:mod:`cxrlib.training.model_card`: no test metrics yet).
No pickle. A checkpoint is written whole into ``checkpoints/.tmp-<name>``, then the old
one is renamed to ``.old-<name>``, the new one renamed into place and the old deleted;
:func:`recover_checkpoints` repairs a run killed between the renames. So a ``kill -9``
at any moment loses at most the steps since the last checkpoint, and ``--resume``
continues with the same batches, learning rate and random numbers as an uninterrupted
run (bit-identical weights on the same machine and thread count).
A checkpoint the system refuses to write (disk full, read-only, no permission) leaves
the previous one in place and loadable, removes ``.tmp-<name>`` and stops the run with a
:class:`~cxrlib.base.io.WriteError` naming the checkpoint and the cause (the other
processes of a multi-process run stop too, with the same words).
"""

from __future__ import annotations

import csv
import errno
import io
import json
import logging
import math
import os
import random
import shutil
import signal
import time
from collections.abc import Callable
from contextlib import nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from cxrlib.anatomy.cache import cached_priors_for_manifest, checkpoint_fingerprint
from cxrlib.anatomy.segmenter import Segmenter
from cxrlib.base.errors import CxrError
from cxrlib.base.io import WriteError, os_error, write_atomic
from cxrlib.data.dataset import (
    Collate,
    Example,
    ReportDataset,
    epoch_batches,
    image_inputs,
    model_inputs,
)
from cxrlib.data.manifest import Manifest, read_manifest, text_cell
from cxrlib.data.phantom import PhantomSpec, prepare_phantom
from cxrlib.metrics.clinical import clinical_f1
from cxrlib.metrics.labeler import LABELER_NAME, label_reports
from cxrlib.model import ReportModel
from cxrlib.training.config import RunConfig
from cxrlib.training.features import features_for_manifest
from cxrlib.training.model_card import write_card
from cxrlib.training.pretrain import pretrained_encoder
from cxrlib.training.runs import record_inputs, run_config_path, run_inputs, write_run_record

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng.safetensors"
EMA_FILE = "ema.safetensors"
EMA_CHECKPOINT = "ema"
METRICS_FILE = "metrics.csv"
SAMPLES_FILE = "samples.csv"
FEATURES_IN_MEMORY_BYTES = 4 * 1024**3
"""Cached features of a split up to this size are loaded into memory; larger ones (the
published sizes on MIMIC-CXR: ~300 GB) are read from the shards per item."""
CRASH_ENV = "CXR_CRASH_AT"
"""Test hook: ``"<stage>:<n>"`` kills the process with SIGKILL at the n-th checkpoint
write when it reaches ``stage`` (``files``: model written, state not yet; ``swap``: old
checkpoint renamed away, new one not yet in place). Used by the kill -9 tests;
``"<stage>:<n>:enospc"`` raises a full disk's OSError there instead (the write-fault
tests of several processes)."""

ValMetrics = Callable[[list[str], list[str], list[str]], dict]
"""``val_metrics(image_ids, references, generated) -> {name: value}`` on validation."""


class TrainingError(CxrError):
    """Training stopped: non-finite loss, too many unreadable images, bad resume."""


@dataclass
class TrainResult:
    """What :func:`train` did."""

    out: Path
    global_step: int
    epochs_done: int
    stop_reason: str
    best_metric: float | None
    bad_images: list[tuple[str, str]] = field(default_factory=list)
    metrics: pd.DataFrame | None = None


# --- data -------------------------------------------------------------------------------


def resolve_manifest(config: RunConfig) -> Path:
    """The manifest a run trains on: ``data.manifest`` or the cached phantom dataset."""
    if config.data.manifest:
        return Path(config.data.manifest)
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


def split_dataset(
    config: RunConfig, model: ReportModel, manifest: Manifest, progress: bool = True
) -> tuple[ReportDataset, list[tuple[str, str]]]:
    """The model's inputs for the manifest rows ``manifest``, and the unreadable images.

    Texts from ``data.text_column``; with a frozen encoder and ``train.feature_cache``
    the cached patch features (in memory up to :data:`FEATURES_IN_MEMORY_BYTES`, else
    read per item), otherwise image paths after a header check; the priors of the
    config. Unreadable images are left out and returned as ``(image_id, message)``.
    Training and generation both build their inputs here.
    """
    frame = manifest.frame
    examples = [
        Example(
            text_cell(r["image_id"]),
            text_cell(r.get(config.data.text_column, "")),
            str(manifest.resolve(text_cell(r["image_path"]))),
        )
        for r in frame.to_dict("records")
    ]
    found = None
    if config.train.feature_cache and model.config.encoder_trainable == "frozen" and examples:
        per_image = model.num_patches * model.encoder_width * 2  # fp16
        found = features_for_manifest(
            manifest,
            model,
            Path(config.data.cache_dir) / "features",
            progress=progress,
            in_memory=len(frame) * per_image <= FEATURES_IN_MEMORY_BYTES,
        )
        bad = [(image_id, message) for image_id, _, message in found.bad]
    else:
        # cheap header check first (the priors read image sizes); images that fail
        # later, while decoding, are skipped by the loader
        bad = list(_unreadable(examples).items())
    bad_ids = {image_id for image_id, _ in bad}
    keep = [i for i, ex in enumerate(examples) if ex.image_id not in bad_ids]
    examples = [examples[i] for i in keep]
    frame = frame.iloc[keep]
    features = None
    if found is not None:
        row_of = {image_id: i for i, image_id in enumerate(found.image_ids)}
        features = found.features[[row_of[ex.image_id] for ex in examples]]
    priors = _priors_for(config, model, manifest.subset(frame))
    return ReportDataset(examples, model.config.image_size, features, priors), bad


def _priors_for(config: RunConfig, model: ReportModel, rows: Manifest) -> torch.Tensor | None:
    if model.config.mode == "none" or len(rows) == 0:
        return None
    prior_config = config.priors.resolve(
        model.config.image_size, model.config.patch_size, model.num_decoder_layers
    )
    segmenter = segmenter_id = None
    if config.priors.segmenter:
        segmenter = Segmenter.from_pretrained(config.priors.segmenter)
        segmenter_id = checkpoint_fingerprint(config.priors.segmenter)
    cached = cached_priors_for_manifest(
        rows,
        prior_config,
        Path(config.data.cache_dir) / "priors",
        source=config.priors.source,
        segmenter=segmenter,
        segmenter_id=segmenter_id,
        progress=False,
    )
    log.info("priors: %s", cached.describe())
    return cached.priors


# --- optimisation -----------------------------------------------------------------------


class WarmupCosine:
    """LR multiplier: linear warmup to 1 over ``warmup`` steps, cosine to ``floor``."""

    def __init__(self, warmup: int, total: int, floor: float):
        self.warmup, self.total, self.floor = warmup, total, floor

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * progress))


def param_groups(model: ReportModel, weight_decay: float) -> list[dict]:
    """Trainable parameters: decayed matrices, and undecayed biases/norms/embeddings."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        plain = p.ndim < 2 or "wpe" in name or "wte" in name or "prior_strength" in name
        (no_decay if plain else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


# --- checkpoints ------------------------------------------------------------------------


def _crash_point(stage: str, counter: list[int]) -> None:
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return
    want, _, rest = spec.partition(":")
    nth, _, how = rest.partition(":")
    if want == stage and counter[0] == int(nth or 1):
        if how == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.kill(os.getpid(), signal.SIGKILL)


def _rng_state() -> dict:
    state = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": _numpy_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _numpy_state() -> list:
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # noqa: NPY002
    return [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def _set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    keys = np.asarray(keys, dtype=np.uint32)
    np.random.set_state((name, keys, pos, has_gauss, cached))  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _optimizer_files(optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"state.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_state(tensors: dict, meta: dict) -> dict:
    state: dict = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    for idx, values in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def recover_checkpoints(folder: Path) -> None:
    """Repair ``folder`` after a kill: put back ``.old-<name>`` where ``<name>`` is
    missing (killed between the two renames) and delete unfinished ``.tmp-*`` folders."""
    if not folder.is_dir():
        return
    for old in folder.glob(".old-*"):
        name = old.name[len(".old-") :]
        if (folder / name).is_dir():
            shutil.rmtree(old)
        else:
            old.rename(folder / name)
            log.warning("recovered checkpoint %s from an interrupted write", folder / name)
    for tmp in folder.glob(".tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def _fsync_tree(path: Path) -> None:
    for p in path.iterdir():
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())


def _write_checkpoint_files(
    tmp: Path,
    name: str,
    model: ReportModel,
    optimizer: torch.optim.Optimizer,
    state: dict,
    rng_states: list[dict],
    counter: list[int],
    ema: dict[str, torch.Tensor] | None = None,
) -> None:
    """Every file of checkpoint ``name`` into the fresh folder ``tmp``, synced to disk."""
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    _crash_point("files", counter)
    tensors, opt_meta = _optimizer_files(optimizer)
    save_file(tensors, str(tmp / OPTIMIZER_FILE))
    rng_tensors, rng_meta = {}, []
    for rank, rs in enumerate(rng_states):
        rng_tensors[f"rank{rank}.torch"] = rs["torch"]
        for i, cuda in enumerate(rs.get("cuda", [])):
            rng_tensors[f"rank{rank}.cuda{i}"] = cuda
        rng_meta.append(
            {"python": rs["python"], "numpy": rs["numpy"], "cuda": len(rs.get("cuda", []))}
        )
    save_file(rng_tensors, str(tmp / RNG_FILE))
    if ema is not None:
        save_file({k: v.detach().cpu().contiguous() for k, v in ema.items()}, str(tmp / EMA_FILE))
    full_state = {**state, "optimizer": opt_meta, "rng": rng_meta}
    (tmp / STATE_FILE).write_text(json.dumps(full_state, indent=1))
    write_card(tmp, tmp.parent.parent, tmp, name=name)  # part of the atomic checkpoint
    _fsync_tree(tmp)


def _swap_in(tmp: Path, final: Path, counter: list[int]) -> None:
    """Rename ``tmp`` to ``final`` by way of ``.old-<name>``; when the second rename
    fails, the old checkpoint is put back (else :func:`recover_checkpoints` does)."""
    old = final.with_name(f".old-{final.name}")
    if final.exists():
        if old.exists():
            shutil.rmtree(old)
        final.rename(old)
    try:
        _crash_point("swap", counter)
        tmp.rename(final)
    except OSError:
        if old.exists() and not final.exists():
            with suppress(OSError):
                old.rename(final)
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_checkpoint(
    folder: Path,
    name: str,
    model: ReportModel,
    optimizer: torch.optim.Optimizer,
    state: dict,
    rng_states: list[dict],
    counter: list[int],
    ema: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write checkpoint ``folder/name`` atomically (main process only; see module doc),
    with its model card ``README.md`` (:mod:`cxrlib.training.model_card`; ``folder`` is the run's
    ``checkpoints`` folder). ``ema``: the moving average of the trainable weights
    (``train.ema_decay``), kept in ``ema.safetensors`` for an exact resume.

    A write the system refuses (disk full, read-only, no permission) leaves the previous
    ``folder/name`` in place, removes ``.tmp-<name>`` and raises :class:`WriteError`.
    """
    tmp, final = folder / f".tmp-{name}", folder / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _write_checkpoint_files(tmp, name, model, optimizer, state, rng_states, counter, ema)
        _swap_in(tmp, final, counter)
    except Exception as err:
        shutil.rmtree(tmp, ignore_errors=True)
        cause = os_error(err)
        if cause is None:
            raise
        raise WriteError(final, cause, "the checkpoint") from err
    return final


def read_checkpoint(path: Path, rank: int) -> tuple[dict, dict, dict]:
    """(trainer state, optimizer state_dict, this rank's RNG state) of a checkpoint."""
    state = json.loads((path / STATE_FILE).read_text())
    optimizer = _optimizer_state(load_file(str(path / OPTIMIZER_FILE)), state["optimizer"])
    rng_tensors = load_file(str(path / RNG_FILE))
    if rank >= len(state["rng"]):
        raise TrainingError(
            f"{path}: saved by {len(state['rng'])} processes, cannot resume on rank {rank}"
        )
    meta = state["rng"][rank]
    rng = {
        "python": meta["python"],
        "numpy": meta["numpy"],
        "torch": rng_tensors[f"rank{rank}.torch"],
    }
    if meta["cuda"]:
        rng["cuda"] = [rng_tensors[f"rank{rank}.cuda{i}"] for i in range(meta["cuda"])]
    return state, optimizer, rng


# --- metrics ----------------------------------------------------------------------------


class MetricsLog:
    """``metrics.csv`` (rewritten atomically on every row) and TensorBoard scalars."""

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


# --- the loop ---------------------------------------------------------------------------


def _normalised(tree: dict | None) -> dict | None:
    """A recorded config tree with the fields added since it was written at their
    defaults (so a run of an older version resumes); None when it no longer parses."""
    try:
        return RunConfig.from_dict(tree).to_dict()
    except (TypeError, ValueError, KeyError):
        return None


def _mixed_precision(setting: str) -> str:
    if setting != "auto":
        return setting
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def _sha256_params(model: ReportModel) -> str:
    import hashlib

    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def train(
    config: RunConfig,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    progress: bool = True,
    val_metrics: ValMetrics | None = None,
) -> TrainResult:
    """Train one run of ``config`` into ``out`` (see the module docstring).

    Parameters
    ----------
    config : RunConfig
    out : path-like
        Run folder; must be empty or absent unless ``resume``.
    resume : bool
        Continue from ``out/checkpoints/last`` (the config must be the same); with no
        checkpoint yet, start from the beginning.
    progress : bool
        Show tqdm bars (main process only).
    val_metrics : callable, optional
        Validation metrics from the ``train.val_generate`` generated Findings, logged
        beside the validation loss and usable as ``train.early_stopping_metric``;
        default :func:`clinical_val_metrics` (``clinical_micro_14``).

    Raises
    ------
    TrainingError
        Non-finite loss (the last good checkpoint is kept), more unreadable images than
        ``data.max_bad_images``, an ``out`` folder of another run, a changed config on
        resume.
    """
    from accelerate import Accelerator  # deferred: heavy, imported only when a run starts

    # cpu=True without CUDA: also what makes torchrun / accelerate launch on CPUs
    # start a gloo process group instead of running W independent copies
    accelerator = Accelerator(
        mixed_precision=_mixed_precision(config.train.mixed_precision),
        cpu=not torch.cuda.is_available(),
    )
    trainer = Trainer(config, out, accelerator, progress=progress, val_metrics=val_metrics)
    return trainer.fit(resume)


class Trainer:
    """One training run of ``config`` into ``out`` under ``accelerator`` (see :func:`train`).

    The run's state (step, epoch and batch position, best metric, bad epochs, unreadable
    images) lives on the instance so that the epoch, validation and checkpoint methods share
    it; a checkpoint holds exactly that state, so a resumed run continues bit-identically.
    """

    def __init__(
        self,
        config: RunConfig,
        out: str | os.PathLike,
        accelerator,
        *,
        progress: bool = True,
        val_metrics: ValMetrics | None = None,
    ):
        self.config, self.tc, self.out = config, config.train, Path(out)
        self.progress = progress
        self.val_metrics = clinical_val_metrics if val_metrics is None else val_metrics
        self.accelerator = accelerator
        self.main = accelerator.is_main_process
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.ckpt_dir = self.out / CHECKPOINTS
        self.step, self.epoch, self.batch_pos = 0, 0, 0
        self.best, self.bad_epochs, self.metrics_rows = None, 0, None
        self.bad_images: list[tuple[str, str]] = []
        self.stop_reason, self.done = "completed", False
        self.saved_step: int | None = None  # the step of the last written ``last`` checkpoint
        self.seen_first_epoch: list[str] = []
        self._counter = [0]  # checkpoints written by this process (see write_checkpoint)

    def fit(self, resume: bool = False) -> TrainResult:
        """Run (or with ``resume`` continue) the training; returns its :class:`TrainResult`."""
        last = self._open_run_folder(resume)
        splits = self._build_model(last)
        self._build_data(splits)
        self._build_optimizer()
        if last is not None:
            self.resume(last)
        self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        self.raw_model: ReportModel = self.accelerator.unwrap_model(self.model)
        self.ema = self._start_ema(last)
        self.metrics = MetricsLog(
            self.out, self.main, self.metrics_rows, self.step + 1 if last else None
        )
        self.saved_step = self.step if last is not None else None
        self.started = time.perf_counter()
        self.done = self.step >= self.total_steps
        while not self.done and self.epoch < self.tc.epochs:
            self.train_epoch()
            self._end_epoch()
        self.metrics.close()
        self.write_ema_model()
        return self._finish()

    def _open_run_folder(self, resume: bool) -> Path | None:
        """Check ``out`` (new, or the same config on resume), write the run record.

        Returns the checkpoint to resume from, or ``None`` to start from the beginning.
        """
        out, config_path, tree = self.out, run_config_path(self.out), self.config.to_dict()
        last = None
        if self.main:
            recover_checkpoints(self.ckpt_dir)
        self.accelerator.wait_for_everyone()
        if resume:
            if not config_path.is_file():
                log.warning("%s: nothing to resume (no run record); starting a new run", out)
                resume = False
            else:
                stored = json.loads(config_path.read_text())
                if _normalised(stored.get("config")) != tree:
                    raise TrainingError(
                        f"{config_path}: the run was started with another config; resume with "
                        "the same profile, --config and options (or use a new --out)"
                    )
                if (self.ckpt_dir / "last").is_dir():
                    last = self.ckpt_dir / "last"
                else:
                    log.warning("%s: no checkpoint yet; starting from the beginning", out)
        elif out.exists() and any(out.iterdir()):
            raise TrainingError(f"{out}: not empty; give a new --out, or --resume to continue it")
        if self.main and not resume:
            out.mkdir(parents=True, exist_ok=True)
            write_run_record(out, self.config, self.world)
        self.accelerator.wait_for_everyone()
        return last

    def _build_model(self, last: Path | None) -> dict[str, pd.DataFrame]:
        """Seed, read the splits and build (or load from ``last``) the model; returns the splits."""
        from accelerate.utils import set_seed  # deferred: heavy (see train)

        config, accelerator = self.config, self.accelerator
        set_seed(config.seed)
        with accelerator.main_process_first():
            manifest = resolve_manifest(config)
        splits = load_splits(config, manifest)
        train_texts = splits["train"].frame[config.data.text_column].map(text_cell).tolist()
        if last is not None:
            self.model = ReportModel.from_pretrained(last)
        else:
            with accelerator.main_process_first():
                model_config = resolve_model_config(config, manifest, self.progress and self.main)
            set_seed(config.seed)
            self.model = ReportModel.from_config(model_config, texts=train_texts)
            if self.main:
                layers = self.model.num_decoder_layers
                record_inputs(self.out, run_inputs(config, self.model.config, layers, manifest))
        if self.tc.feature_cache and config.model.encoder_trainable != "frozen":
            log.warning(
                "train.feature_cache ignored: the encoder trains (%s)",
                config.model.encoder_trainable,
            )
        return splits

    def _build_data(self, splits: dict[str, pd.DataFrame]) -> None:
        """The split datasets (caches written by rank 0 first), collate and step counts."""
        tc = self.tc
        self.datasets = {}
        for split, frame in splits.items():
            with self.accelerator.main_process_first():
                self.datasets[split], bad = split_dataset(
                    self.config, self.model, frame, self.progress and self.main
                )
            self.bad_images += bad
        _check_bad(self.bad_images, self.config)
        self.collate = Collate(self.model.tokenizer, self.model.config.max_text_tokens)
        self.n_train = n_train = len(self.datasets["train"])
        batches = epoch_batches(n_train, tc.batch_size, self.config.seed, 0, self.world, self.rank)
        if len(batches) == 0:
            raise TrainingError(
                f"{n_train} training images cannot fill one batch on {self.world} processes"
            )
        steps_per_epoch = math.ceil(len(batches) / tc.grad_accum_steps)
        self.total_steps = tc.epochs * steps_per_epoch
        if tc.max_steps is not None:
            self.total_steps = min(self.total_steps, tc.max_steps)

    def _build_optimizer(self) -> None:
        """AdamW over :func:`param_groups` with the warm-up + cosine schedule."""
        tc = self.tc
        warmup = int(round(tc.warmup_ratio * self.total_steps))
        self.optimizer = torch.optim.AdamW(
            param_groups(self.model, tc.weight_decay), lr=tc.lr, betas=tuple(tc.betas)
        )
        schedule = WarmupCosine(warmup, self.total_steps, tc.min_lr_ratio)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)

    def resume(self, last: Path) -> None:
        """Restore optimizer, scheduler, counters, unreadable images and RNGs from ``last``."""
        state, opt_state, rng = read_checkpoint(last, self.rank)
        self.optimizer.load_state_dict(opt_state)
        sched_state = dict(state["scheduler"])
        sched_state["lr_lambdas"] = [None] * len(self.optimizer.param_groups)
        self.scheduler.load_state_dict(sched_state)
        self.step, self.epoch = state["step"], state["epoch"]
        self.batch_pos = state["batch_in_epoch"]
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]
        self.metrics_rows = state["metrics_rows"]
        self.bad_images = [tuple(b) for b in state["bad_images"]] + [
            b for b in self.bad_images if list(b) not in state["bad_images"]
        ]
        _set_rng_state(rng)
        log.info(
            "resuming %s at step %d (epoch %d, batch %d)",
            self.out, self.step, self.epoch + 1, self.batch_pos,
        )  # fmt: skip

    def save_checkpoint(self, name: str, next_epoch: int, next_batch: int) -> None:
        """Write checkpoint ``name`` (main process) holding every rank's RNG state."""
        from accelerate.utils import gather_object  # deferred: heavy (see train)

        rng_states = gather_object([_rng_state()])
        failure: WriteError | None = None
        if self.main:
            self._counter[0] += 1
            sched = self.scheduler.state_dict()
            sched.pop("lr_lambdas", None)
            state = {
                "step": self.step,
                "epoch": next_epoch,
                "batch_in_epoch": next_batch,
                "best": self.best,
                "bad_epochs": self.bad_epochs,
                "bad_images": [list(b) for b in self.bad_images],
                "metrics_rows": len(self.metrics.rows),
                "scheduler": sched,
                "world_size": self.world,
                "seed": self.config.seed,
                "train_images": self.n_train,  # for the model card (not read on resume)
                "validate_images": len(self.datasets["validate"]),
            }
            try:
                write_checkpoint(
                    self.ckpt_dir, name, self.raw_model, self.optimizer.optimizer, state,
                    rng_states, self._counter, self.ema,
                )  # fmt: skip
            except WriteError as err:
                failure = err
        # every process learns whether the write failed (a barrier as well): else the
        # others would wait forever for a main process that stopped
        failed = [m for m in gather_object([str(failure or "")]) if m]
        if failure is not None:
            raise failure
        if failed:
            raise TrainingError(f"{failed[0]} (on the main process)")
        if name == "last":
            self.saved_step = self.step

    def _start_ema(self, last: Path | None) -> dict[str, torch.Tensor] | None:
        """The moving average of the trainable weights (``train.ema_decay``): a copy of
        them at the start, or what checkpoint ``last`` holds; None when off."""
        if self.tc.ema_decay is None:
            return None
        params = {n: p for n, p in self.raw_model.named_parameters() if p.requires_grad}
        if last is None:
            return {n: p.detach().clone() for n, p in params.items()}
        path = last / EMA_FILE
        if not path.is_file():
            raise TrainingError(f"{path}: missing; the run was not started with train.ema_decay")
        saved = load_file(str(path))
        if saved.keys() != params.keys():
            raise TrainingError(f"{path}: holds other parameters than the model trains")
        return {n: saved[n].to(params[n].device, params[n].dtype) for n in params}

    @torch.no_grad()
    def _update_ema(self) -> None:
        """Move the average towards the weights of the step just taken."""
        if self.ema is None:
            return
        decay = min(self.tc.ema_decay, (1 + self.step) / (10 + self.step))
        params = dict(self.raw_model.named_parameters())
        for name, avg in self.ema.items():
            avg.lerp_(params[name].detach(), 1.0 - decay)

    def write_ema_model(self) -> Path | None:
        """``checkpoints/ema``: the model folder with the averaged weights (main process),
        written atomically; None when the average is off."""
        if self.ema is None or not self.main:
            return None
        params = dict(self.raw_model.named_parameters())
        kept = {n: params[n].detach().clone() for n in self.ema}
        final = self.ckpt_dir / EMA_CHECKPOINT
        try:
            with torch.no_grad():
                for name, avg in self.ema.items():
                    params[name].copy_(avg)
            tmp = self.ckpt_dir / f".tmp-{EMA_CHECKPOINT}"
            shutil.rmtree(tmp, ignore_errors=True)
            self.raw_model.save_pretrained(tmp)
            _fsync_tree(tmp)
            _swap_in(tmp, final, self._counter)
        finally:
            with torch.no_grad():
                for name, value in kept.items():
                    params[name].copy_(value)
        return final

    def train_epoch(self) -> None:
        """Train from ``batch_pos`` to the end of epoch ``epoch`` (or to the last step)."""
        from tqdm.auto import tqdm  # deferred like the other run-time imports

        tc, seed = self.tc, self.config.seed
        batches = epoch_batches(
            self.n_train, tc.batch_size, seed, self.epoch, self.world, self.rank
        )
        loader = torch.utils.data.DataLoader(
            self.datasets["train"],
            batch_sampler=batches[self.batch_pos :],
            collate_fn=self.collate,
            num_workers=tc.num_workers,
            # its own generator: creating the iterator must not draw from the global RNG
            # (it would shift dropout after a resume)
            generator=torch.Generator().manual_seed(seed * 100_003 + self.epoch),
        )
        self.model.train()
        bar = tqdm(
            total=len(batches),
            initial=self.batch_pos,
            desc=f"epoch {self.epoch + 1}/{tc.epochs}",
            unit="batch",
            disable=not (self.progress and self.main),
        )
        self._reset_window()
        for i, batch in enumerate(loader, start=self.batch_pos):
            self._note_batch(batch)
            window_end = min(len(batches), (i // tc.grad_accum_steps + 1) * tc.grad_accum_steps)
            window_size = window_end - (i // tc.grad_accum_steps) * tc.grad_accum_steps
            sync = i + 1 == window_end
            with nullcontext() if sync else self.accelerator.no_sync(self.model):
                loss = self._backward(batch, i, window_size)
            self.window_loss.append(loss.detach())
            self.window_images += len(batch["image_ids"])
            bar.update(1)
            if not sync:
                continue
            self._optimizer_step(bar)
            epoch_end = i + 1 == len(batches)
            if self.step >= self.total_steps:
                self.done = True
            every = tc.checkpoint_every
            if every and self.step % every == 0 and not epoch_end and not self.done:
                self.save_checkpoint("last", self.epoch, i + 1)
            if self.done and not epoch_end:
                break
        bar.close()

    def _reset_window(self) -> None:
        """Start a new logging window (losses, images and time since the last train row)."""
        self.window_loss, self.window_images, self.window_start = [], 0, time.perf_counter()

    def _note_batch(self, batch: dict) -> None:
        """Record the first epoch's image ids (DDP) and the batch's unreadable images."""
        if self.epoch == 0 and self.world > 1:
            self.seen_first_epoch += batch["image_ids"]
        if batch["bad"]:
            self.bad_images += batch["bad"]
            for image_id, message in batch["bad"]:
                log.warning("skipped unreadable image %s: %s", image_id, message)
            _check_bad(self.bad_images, self.config)

    def _backward(self, batch: dict, i: int, window_size: int) -> torch.Tensor:
        """Loss of ``batch`` (batch ``i``), checked finite on every rank, back-propagated."""
        accelerator = self.accelerator
        if batch["image_ids"]:
            loss = self.model(**model_inputs(batch, accelerator.device)).loss
        else:  # every image of this batch was unreadable: keep the ranks in step
            loss = sum(p.sum() * 0.0 for p in self.model.parameters() if p.requires_grad)
        finite = torch.tensor(
            float(torch.isfinite(loss.detach()).item()), device=accelerator.device
        )
        if accelerator.reduce(finite, "min").item() < 1:
            kept = (
                f"the last good checkpoint is {self.ckpt_dir / 'last'} (step {self.saved_step})"
                if self.saved_step is not None
                else "no checkpoint was written yet"
            )
            raise TrainingError(
                f"step {self.step + 1} (epoch {self.epoch + 1}, batch {i + 1}): the loss is "
                f"{loss.item()}; training stopped, {kept}. Lower train.lr or check the data"
            )
        accelerator.backward(loss / window_size)
        return loss

    def _optimizer_step(self, bar) -> None:
        """Clip, step optimizer and schedule, and every ``log_every`` steps log a train row."""
        tc, model = self.tc, self.model
        grad_norm = None
        if tc.grad_clip is not None:
            grad_norm = self.accelerator.clip_grad_norm_(
                [p for p in model.parameters() if p.requires_grad], tc.grad_clip
            )
        lr = self.scheduler.get_last_lr()[0]  # the rate this step uses
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._update_ema()
        self.step += 1
        if self.step % tc.log_every == 0 or self.step == self.total_steps:
            self._log_train(lr, grad_norm, bar)

    def _log_train(self, lr: float, grad_norm, bar) -> None:
        """Add the window's train row (mean loss and images/s over all ranks) to metrics."""
        accelerator = self.accelerator
        mean_loss = accelerator.reduce(torch.stack(self.window_loss).mean(), "mean").item()
        images = accelerator.reduce(
            torch.tensor(float(self.window_images), device=accelerator.device), "sum"
        ).item()
        rate = images / max(1e-9, time.perf_counter() - self.window_start)
        self.metrics.add(
            {
                "step": self.step,
                "epoch": self.epoch + 1,
                "split": "train",
                "loss": round(mean_loss, 6),
                "lr": lr,
                "grad_norm": None if grad_norm is None else round(float(grad_norm), 6),
                "images_per_s": round(rate, 2),
                "elapsed_s": round(time.perf_counter() - self.started, 2),
            }
        )
        bar.set_postfix(loss=f"{mean_loss:.3f}", lr=f"{lr:.2e}", img_s=f"{rate:.1f}")
        self._reset_window()

    def validate(self, finished_epoch: int) -> dict:
        """Validation loss and generated-sample metrics (main's, for all) after an epoch."""
        from accelerate.utils import broadcast_object_list  # deferred: heavy (see train)

        tc, val = self.tc, self.datasets["validate"]
        values = evaluate_split(self.model, val, self.collate, self.accelerator, tc.batch_size)
        values.update(
            _samples(
                self.raw_model, val, tc.val_generate, self.out, self.step, finished_epoch,
                self.main, self.val_metrics,
            )
        )  # fmt: skip
        values = broadcast_object_list([values])[0]
        self.metrics.add(
            {"step": self.step, "epoch": finished_epoch + 1, "split": "validate", **values}
        )
        return values

    def _end_epoch(self) -> None:
        """Validate, track the best metric and early stopping, write best/last checkpoints."""
        tc = self.tc
        finished_epoch = self.epoch
        self.epoch, self.batch_pos = self.epoch + 1, 0
        values = self.validate(finished_epoch)
        name = "loss" if tc.early_stopping_metric == "val_loss" else tc.early_stopping_metric
        metric = values.get(name)
        improved = self._improves(metric)
        if improved:
            self.best, self.bad_epochs = metric, 0
        else:
            self.bad_epochs += 1
        if tc.patience is not None and self.bad_epochs >= tc.patience:
            self.stop_reason = (
                f"early stopping: {tc.early_stopping_metric} did not improve for "
                f"{self.bad_epochs} epochs"
            )
            self.done = True
        if improved:
            self.save_checkpoint("best", self.epoch, 0)
        self.save_checkpoint("last", self.epoch, 0)
        reached = self.step >= self.total_steps and self.epoch < tc.epochs
        if reached and self.stop_reason == "completed":
            self.stop_reason = f"max_steps={tc.max_steps} reached"

    def _improves(self, metric: float | None) -> bool:
        """Whether ``metric`` (finite) beats the best so far in ``early_stopping_mode``."""
        if metric is None or not math.isfinite(metric):
            return False
        if self.best is None:
            return True
        return metric < self.best if self.tc.early_stopping_mode == "min" else metric > self.best

    def _finish(self) -> TrainResult:
        """Write ``rank-R.json`` (DDP) and ``summary.json``; returns the result."""
        out, main, step, epoch, best = self.out, self.main, self.step, self.epoch, self.best
        if self.world > 1:
            record = {
                "rank": self.rank,
                "world_size": self.world,
                "first_epoch_image_ids": self.seen_first_epoch,
                "weights_sha256": _sha256_params(self.raw_model),
            }
            (out / f"rank-{self.rank}.json").write_text(json.dumps(record))
        result = TrainResult(
            out=out,
            global_step=step,
            epochs_done=epoch,
            stop_reason=self.stop_reason,
            best_metric=best,
            bad_images=list(self.bad_images),
            metrics=pd.DataFrame(self.metrics.rows) if main else None,
        )
        if main:
            summary = {
                "global_step": step,
                "epochs_done": epoch,
                "stop_reason": self.stop_reason,
                "best": {self.tc.early_stopping_metric: best},
                "bad_images": [list(b) for b in self.bad_images],
                "train_images": self.n_train,
                "validate_images": len(self.datasets["validate"]),
                "world_size": self.world,
                "seconds": round(time.perf_counter() - self.started, 1),
            }
            write_atomic(
                out / "summary.json", lambda tmp: tmp.write_text(json.dumps(summary, indent=2))
            )
        self.accelerator.wait_for_everyone()
        return result


def _unreadable(examples: list[Example]) -> dict[str, str]:
    """Image id -> message for files that are missing or have no readable image header."""
    from PIL import Image

    bad = {}
    for ex in examples:
        try:
            with Image.open(ex.path) as img:
                img.size  # noqa: B018 (reads the header)
        except (OSError, ValueError) as err:
            bad[ex.image_id] = f"{ex.path}: not a readable image ({err})"
            log.warning("skipped unreadable image %s: %s", ex.image_id, bad[ex.image_id])
    return bad


def clinical_val_metrics(
    image_ids: list[str], references: list[str], generated: list[str]
) -> dict[str, float]:
    """The default validation metric: clinical micro-F1 over the 14 observations
    (uncertain as negative) of the generated vs the reference Findings, both read by the
    rule labeler (:mod:`cxrlib.evaluate`); logged as ``clinical_micro_14``."""
    result = clinical_f1(label_reports(generated), label_reports(references), labeler=LABELER_NAME)
    return {"clinical_micro_14": result.metrics["clinical.uncertain_as_negative.micro_14"]}


def _check_bad(bad_images: list, config: RunConfig) -> None:
    if len(bad_images) > config.data.max_bad_images:
        listed = "; ".join(f"{i}: {m}" for i, m in bad_images[:20])
        more = f" (+{len(bad_images) - 20} more)" if len(bad_images) > 20 else ""
        raise TrainingError(
            f"{len(bad_images)} unreadable images, more than data.max_bad_images="
            f"{config.data.max_bad_images}: {listed}{more}"
        )


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


def _samples(
    model: ReportModel,
    dataset: ReportDataset,
    n: int,
    out: Path,
    step: int,
    epoch: int,
    main: bool,
    val_metrics: ValMetrics | None,
) -> dict:
    """Generate Findings for the first ``n`` validation images; append to samples.csv."""
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
