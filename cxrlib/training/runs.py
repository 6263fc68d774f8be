"""Where runs live: the one place that names and finds run folders.

A workbook (or ablation) run folder holds::

    run_dir/
      train/<mode>-seed<seed>/            one training run (training_run)
        config.json  summary.json  checkpoints/{best,last}/
      ablation/generations/<name>.csv     its generated Findings (generations_path)
      ablation/evaluation/<name>/metrics.json   (evaluation_folder)

``<name>`` is :func:`run_name` (``soft-seed0``); a baseline's evaluation folder is the
baseline's name. An exported model folder (``cxr export``) is a model folder with the
run's record beside it as ``run_config.json``. Notebooks, the explorer, the ablation and
the model card build and parse these names only through this module.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from cxrlib.base.errors import CxrError
from cxrlib.training.config import RunConfig

EXPORTED_CONFIG_FILE = "run_config.json"
"""An exported model folder's copy of its run's ``config.json``
(:func:`cxrlib.experiment.export.export_run`; the folder's own ``config.json`` is the model's)."""

_RUN_NAME = re.compile(r"^(?P<mode>[a-z]+)-seed(?P<seed>\d+)$")


def run_name(mode: str, seed: int) -> str:
    """The name of the training run of ``mode`` and ``seed``: ``soft-seed0``."""
    return f"{mode}-seed{seed}"


def parse_run_name(name: str) -> tuple[str, int]:
    """``(mode, seed)`` of a :func:`run_name`; CxrError for anything else."""
    match = _RUN_NAME.match(name)
    if match is None:
        raise CxrError(f"{name!r}: not a training run name (<mode>-seed<N>, e.g. soft-seed0)")
    return match["mode"], int(match["seed"])


def training_run(run_dir: str | os.PathLike, mode: str, seed: int) -> Path:
    """``run_dir/train/<mode>-seed<seed>``: where a workbook run trains ``mode``."""
    return Path(run_dir) / "train" / run_name(mode, seed)


def training_runs(run_dir: str | os.PathLike) -> dict[tuple[str, int], Path]:
    """The training runs under ``run_dir/train`` that recorded a ``config.json``, by
    ``(mode, seed)``, in name order."""
    runs = {}
    for config in sorted((Path(run_dir) / "train").glob("*/config.json")):
        try:
            runs[parse_run_name(config.parent.name)] = config.parent
        except CxrError:
            continue  # a folder someone added by hand: not one of ours
    return runs


def ablation_folder(run_dir: str | os.PathLike) -> Path:
    """``run_dir/ablation``: an ablation's tables, generations and evaluations."""
    return Path(run_dir) / "ablation"


def ablation_record(run_dir: str | os.PathLike) -> Path:
    """``run_dir/ablation/ablation.json``: an ablation's settings, manifest and stage times."""
    return ablation_folder(run_dir) / "ablation.json"


def generations_path(run_dir: str | os.PathLike, name: str) -> Path:
    """``run_dir/ablation/generations/<name>.csv``: the generated Findings of a run."""
    return ablation_folder(run_dir) / "generations" / f"{name}.csv"


def evaluation_folder(run_dir: str | os.PathLike, name: str) -> Path:
    """``run_dir/ablation/evaluation/<name>``: a system's evaluation (``metrics.json``)."""
    return ablation_folder(run_dir) / "evaluation" / name


def ablation_of_evaluation(metrics: str | os.PathLike) -> Path | None:
    """The :func:`ablation_record` of the ablation whose :func:`evaluation_folder` holds
    ``metrics`` (a ``metrics.json``), or None when it is not inside one."""
    folder = Path(metrics).resolve().parent
    if folder.parent.name != "evaluation" or folder.parent.parent.name != "ablation":
        return None
    return ablation_record(folder.parent.parent.parent)


def ablation_metrics(run_dir: str | os.PathLike) -> Path | None:
    """The test ``metrics.json`` an ablation wrote for the training run ``OUT/train/<name>``
    (:func:`evaluation_folder` of ``OUT`` and ``<name>``), or None."""
    run_dir = Path(run_dir).resolve()
    if run_dir.parent.name != "train":
        return None
    path = evaluation_folder(run_dir.parent.parent, run_dir.name) / "metrics.json"
    return path if path.is_file() else None


def run_checkpoint(run: str | os.PathLike) -> Path:
    """``run/checkpoints/best``, else ``run/checkpoints/last``; or ``run`` itself when it
    is a model folder."""
    run = Path(run)
    if (run / "model.safetensors").is_file():
        return run
    for name in ("best", "last"):
        folder = run / "checkpoints" / name
        if (folder / "model.safetensors").is_file():
            return folder
    raise CxrError(f"{run}: no checkpoints/best or checkpoints/last (is it a training run?)")


def run_config_path(run: str | os.PathLike) -> Path:
    """The run record of ``run``: its ``config.json``, or ``run_config.json`` in an
    exported model folder."""
    run = Path(run)
    exported = run / EXPORTED_CONFIG_FILE
    return exported if exported.is_file() else run / "config.json"


def run_config(run: str | os.PathLike) -> RunConfig:
    """The config tree a training run recorded in ``config.json`` (an exported model
    folder: ``run_config.json``)."""
    path = run_config_path(run)
    if not path.is_file():
        raise CxrError(f"{path}: not found (is {run} a training run folder?)")
    return RunConfig.from_dict(json.loads(path.read_text())["config"])


def run_folder(run: str | os.PathLike) -> Path:
    """The folder whose run record (:func:`run_config_path`) belongs to ``run``: an
    exported model folder itself, a training run, or the run around a checkpoint
    folder (two folders up)."""
    checkpoint = run_checkpoint(run)
    run = Path(run)
    if (checkpoint / EXPORTED_CONFIG_FILE).is_file():
        return checkpoint
    if (run / "config.json").is_file() and checkpoint != run:
        return run
    return checkpoint.parent.parent
