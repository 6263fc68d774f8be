"""Training: the Accelerate loop, with exact resume.

``train(config, out)`` (and ``cxr train``) runs one :class:`cxrlib.training.config.RunConfig`
with Hugging Face Accelerate: the same code on a CPU, one GPU (bf16 autocast with
``mixed_precision="auto"``) or several GPUs or nodes (``accelerate launch``, ``torchrun``).
Around the loop: the inputs (:mod:`.inputs`), the batch order
(:func:`cxrlib.data.dataset.epoch_batches`, seeded per epoch, disjoint per process), the
optimiser, schedule and weight average (:mod:`.optimization`), validation and early
stopping (:mod:`.validation`), ``metrics.csv`` (:mod:`.metrics_log`), the checkpoints
(:mod:`.checkpoint`) and, when the run ends, the model cards (:mod:`.model_card`).

Outputs in ``out``: ``run_config.json`` (the whole tree, seed, git commit, package
versions), ``metrics.csv``, ``tensorboard/``, ``samples.csv``, ``checkpoints/last``,
``checkpoints/best`` (and ``checkpoints/ema``), ``summary.json``. A ``kill -9`` loses at
most the steps since the last checkpoint; ``--resume`` continues bit-identically (same
batches, learning rate and random numbers, on the same machine and thread count).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from cxrlib.base.io import WriteError, write_atomic
from cxrlib.data.dataset import Collate, epoch_batches, model_inputs
from cxrlib.data.manifest import Manifest, text_cell
from cxrlib.model import ReportModel
from cxrlib.training import checkpoint, inputs, optimization, runs, validation
from cxrlib.training.checkpoint import CHECKPOINTS, TrainingError
from cxrlib.training.config import RunConfig
from cxrlib.training.metrics_log import MetricsLog, TrainWindow
from cxrlib.training.model_card import write_checkpoint_cards
from cxrlib.training.validation import ValMetrics

log = logging.getLogger(__name__)


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


def _mixed_precision(setting: str) -> str:
    if setting != "auto":
        return setting
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def train(
    config: RunConfig,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    progress: bool = True,
    val_metrics: ValMetrics | None = None,
    crash_at: str | None = None,
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
        default :func:`~cxrlib.training.validation.clinical_val_metrics`
        (``clinical_micro_14``).
    crash_at : str, optional
        The checkpoint test hook (:mod:`cxrlib.training.checkpoint`; ``cxr train`` passes
        the ``CXR_CRASH_AT`` environment variable).

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
    trainer = Trainer(
        config, out, accelerator, progress=progress, val_metrics=val_metrics, crash_at=crash_at
    )
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
        crash_at: str | None = None,
    ):
        self.config, self.tc, self.out = config, config.train, Path(out)
        self.progress = progress
        self.val_metrics = validation.clinical_val_metrics if val_metrics is None else val_metrics
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
        self.crash_at = crash_at  # the checkpoint test hook

    def fit(self, resume: bool = False) -> TrainResult:
        """Run (or with ``resume`` continue) the training; returns its :class:`TrainResult`."""
        last = self._open_run_folder(resume)
        splits = self._build_model(last)
        self.use_cache = inputs.check_run_disk(self.config, self.model, splits, self.out).use
        self._build_data(splits)
        self.optimizer, self.scheduler = optimization.build_optimizer(
            self.model, self.tc, self.total_steps
        )
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
        if self.main:
            checkpoint.recover_checkpoints(self.ckpt_dir)
        self.accelerator.wait_for_everyone()
        resume, last = checkpoint.resume_point(self.out, self.config, resume)
        if self.main and not resume:
            runs.write_run_record(self.out, self.config, self.world)
        self.accelerator.wait_for_everyone()
        return last

    def _build_model(self, last: Path | None) -> dict[str, Manifest]:
        """Seed, read the splits and build (or load from ``last``) the model; returns the splits."""
        from accelerate.utils import set_seed  # deferred: heavy (see train)

        config, accelerator = self.config, self.accelerator
        set_seed(config.seed)
        with accelerator.main_process_first():
            manifest = inputs.resolve_manifest(config)
        splits = inputs.load_splits(config, manifest)
        train_texts = splits["train"].frame[config.data.text_column].map(text_cell).tolist()
        if last is not None:
            self.model = ReportModel.from_pretrained(last)
        else:
            with accelerator.main_process_first():
                model_config = inputs.resolve_model_config(
                    config, manifest, self.progress and self.main
                )
            set_seed(config.seed)
            self.model = ReportModel.from_config(model_config, texts=train_texts)
            if self.main:  # what the run resolved, in its record
                used = (config, self.model.config, self.model.num_decoder_layers, manifest)
                runs.record_inputs(self.out, runs.run_inputs(*used))
        if self.tc.feature_cache is True and (how := config.model.encoder_trainable) != "frozen":
            log.warning("train.feature_cache ignored: the encoder trains (%s)", how)
        return splits

    def _build_data(self, splits: dict[str, Manifest]) -> None:
        """The split datasets (caches written by rank 0 first), collate and step counts."""
        tc = self.tc
        self.datasets = {}
        for split, frame in splits.items():
            with self.accelerator.main_process_first():
                self.datasets[split], bad = inputs.split_dataset(
                    self.config, self.model, frame, self.progress and self.main, self.use_cache
                )
            self.bad_images += bad
        inputs.check_bad_images(self.bad_images, self.config.data.max_bad_images)
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

    def resume(self, last: Path) -> None:
        """Restore optimizer, scheduler, counters, unreadable images and RNGs from ``last``."""
        state, opt_state, rng = checkpoint.read_checkpoint(last, self.rank)
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
        checkpoint.set_rng_state(rng)
        log.info(
            "resuming %s at step %d (epoch %d, batch %d)",
            self.out, self.step, self.epoch + 1, self.batch_pos,
        )  # fmt: skip

    def save_checkpoint(self, name: str, next_epoch: int, next_batch: int) -> None:
        """Write checkpoint ``name`` (main process) holding every rank's RNG state."""
        from accelerate.utils import gather_object  # deferred: heavy (see train)

        rng_states = gather_object([checkpoint.rng_state()])
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
                checkpoint.write_checkpoint(
                    self.ckpt_dir, name, self.raw_model, self.optimizer.optimizer, state,
                    rng_states, self._counter, self.ema, self.crash_at,
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
        if last is None:
            return optimization.ema_start(self.raw_model)
        return checkpoint.read_ema(last, optimization.trainable(self.raw_model))

    def write_ema_model(self) -> Path | None:
        """``checkpoints/ema``: the model folder with the averaged weights (main process),
        written atomically; None when the average is off."""
        if self.ema is None or not self.main:
            return None
        with optimization.averaged_weights(self.raw_model, self.ema) as model:
            final = self.ckpt_dir / checkpoint.EMA_CHECKPOINT
            return checkpoint.write_model_folder(model, final, self._counter, self.crash_at)

    def train_epoch(self) -> None:
        """Train from ``batch_pos`` to the end of epoch ``epoch`` (or to the last step)."""
        from tqdm.auto import tqdm  # deferred like the other run-time imports

        tc, seed = self.tc, self.config.seed
        batches = epoch_batches(
            self.n_train, tc.batch_size, seed, self.epoch, self.world, self.rank
        )
        loader = inputs.epoch_loader(
            self.datasets["train"], batches[self.batch_pos :], self.collate, tc.num_workers,
            seed * 100_003 + self.epoch,
        )  # fmt: skip
        self.model.train()
        bar = tqdm(
            total=len(batches),
            initial=self.batch_pos,
            desc=f"epoch {self.epoch + 1}/{tc.epochs}",
            unit="batch",
            disable=not (self.progress and self.main),
        )
        self.window = TrainWindow()
        for i, batch in enumerate(loader, start=self.batch_pos):
            self._note_batch(batch)
            window_end = min(len(batches), (i // tc.grad_accum_steps + 1) * tc.grad_accum_steps)
            window_size = window_end - (i // tc.grad_accum_steps) * tc.grad_accum_steps
            sync = i + 1 == window_end
            with nullcontext() if sync else self.accelerator.no_sync(self.model):
                loss = self._backward(batch, i, window_size)
            self.window.add(loss, len(batch["image_ids"]))
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

    def _note_batch(self, batch: dict) -> None:
        """Record the first epoch's image ids (DDP) and the batch's unreadable images."""
        if self.epoch == 0 and self.world > 1:
            self.seen_first_epoch += batch["image_ids"]
        if batch["bad"]:
            self.bad_images += batch["bad"]
            for image_id, message in batch["bad"]:
                log.warning("skipped unreadable image %s: %s", image_id, message)
            inputs.check_bad_images(self.bad_images, self.config.data.max_bad_images)

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
        if self.ema is not None:
            optimization.ema_update(self.ema, self.raw_model, tc.ema_decay, self.step)
        self.step += 1
        if self.step % tc.log_every == 0 or self.step == self.total_steps:
            row = self.window.row(self.accelerator, self.step, self.epoch, lr, grad_norm)
            row["elapsed_s"] = round(time.perf_counter() - self.started, 2)
            self.metrics.add(row)
            bar.set_postfix(
                loss=f"{row['loss']:.3f}", lr=f"{lr:.2e}", img_s=f"{row['images_per_s']:.1f}"
            )
            self.window = TrainWindow()

    def validate(self, finished_epoch: int) -> dict:
        """Validation loss and generated-sample metrics (main's, for all) after an epoch."""
        from accelerate.utils import broadcast_object_list  # deferred: heavy (see train)

        tc, val = self.tc, self.datasets["validate"]
        values = validation.evaluate_split(
            self.model, val, self.collate, self.accelerator, tc.batch_size
        )
        values.update(
            validation.samples(
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
        improved = validation.improves(metric, self.best, tc.early_stopping_mode)
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

    def _finish(self) -> TrainResult:
        """Write ``rank-R.json`` (DDP), ``summary.json`` and the model cards; returns the result."""
        main, step, epoch, best = self.main, self.step, self.epoch, self.best
        if self.world > 1:
            checkpoint.write_rank_record(
                self.out, self.rank, self.world, self.seen_first_epoch, self.raw_model
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
            text = json.dumps(summary, indent=2)
            write_atomic(self.out / "summary.json", lambda tmp: tmp.write_text(text))
            write_checkpoint_cards(self.out)
        self.accelerator.wait_for_everyone()
        return TrainResult(
            out=self.out,
            global_step=step,
            epochs_done=epoch,
            stop_reason=self.stop_reason,
            best_metric=best,
            bad_images=list(self.bad_images),
            metrics=pd.DataFrame(self.metrics.rows) if main else None,
        )
