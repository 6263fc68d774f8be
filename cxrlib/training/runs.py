"""Where runs live: the one place that names and finds run folders.

A workbook (or ablation) run folder holds::

    run_dir/
      segmenter.json                      the segmenter its notebooks use
      train/<mode>-seed<seed>/            one training run (training_run)
        run_config.json  summary.json  checkpoints/{best,last}/
      ablation/generations/<name>.csv     its generated Findings (generations_path)
      ablation/evaluation/<name>/metrics.json   (evaluation_folder)

``<name>`` is :func:`run_name` (``soft-seed0``); a baseline's evaluation folder is the
baseline's name. A training run's record (:data:`RUN_RECORD`, ``run_config.json``: its
config tree, provenance and, once the model is built, the inputs it resolved) has the
same name in an exported model folder (``cxr export``), beside the model's own
``config.json``. Runs written before the record had its name kept it in ``config.json``;
:func:`run_config_path` still reads those. Notebooks, the explorer, the ablation and the
model card build and parse these names only through this module.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from cxrlib.anatomy.cache import checkpoint_fingerprint
from cxrlib.base.errors import CxrError
from cxrlib.base.io import read_json_object, write_json_atomic
from cxrlib.base.provenance import provenance
from cxrlib.base.storage import is_url
from cxrlib.model.config import ModelConfig
from cxrlib.training.config import RunConfig

RUN_RECORD = "run_config.json"
"""A training run's record (:func:`write_run_record`), in its run folder and in an exported
model folder (:func:`cxrlib.experiment.export.export_run`); the model's config is
``config.json``."""

EXPORTED_CONFIG_FILE = RUN_RECORD
"""The run record's name in an exported model folder (the same :data:`RUN_RECORD`)."""

_LEGACY_RUN_RECORD = "config.json"  # a training run's record before it had its own name

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
    """The training runs under ``run_dir/train`` that wrote a run record, by
    ``(mode, seed)``, in name order."""
    runs = {}
    for folder in sorted((Path(run_dir) / "train").glob("*/")):
        if not run_config_path(folder).is_file():
            continue
        try:
            runs[parse_run_name(folder.name)] = folder
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
    """The run record of a training run or an exported model folder: its
    ``run_config.json`` (:data:`RUN_RECORD`); for a run written before the record had
    that name, its ``config.json``."""
    run = Path(run)
    record, legacy = run / RUN_RECORD, run / _LEGACY_RUN_RECORD
    # a model folder's config.json is the model's, never a run record
    if record.is_file() or not legacy.is_file() or (run / "model.safetensors").is_file():
        return record
    return legacy


def run_config(run: str | os.PathLike) -> RunConfig:
    """The config tree a training run recorded (:func:`run_config_path`)."""
    path = run_config_path(run)
    if not path.is_file():
        raise CxrError(f"{path}: not found (is {run} a training run folder?)")
    return RunConfig.from_dict(json.loads(path.read_text())["config"])


def run_record(run: str | os.PathLike) -> dict:
    """The whole run record of ``run`` (:func:`run_config_path`), or {} when there is none."""
    return read_json_object(run_config_path(run)) or {}


def run_folder(run: str | os.PathLike) -> Path:
    """The folder whose run record (:func:`run_config_path`) belongs to ``run``: an
    exported model folder itself, a training run, or the run around a checkpoint
    folder (two folders up)."""
    checkpoint = run_checkpoint(run)
    run = Path(run)
    if (checkpoint / RUN_RECORD).is_file():
        return checkpoint
    if run_config_path(run).is_file() and checkpoint != run:
        return run
    return checkpoint.parent.parent


def write_run_record(out: str | os.PathLike, config: RunConfig, world_size: int) -> Path:
    """Write ``out/run_config.json`` as a run starts: the config tree, the seed, the
    number of processes and :func:`~cxrlib.base.provenance.provenance`."""
    record = {"config": config.to_dict(), "seed": config.seed, "world_size": world_size}
    path = Path(out) / RUN_RECORD
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {**record, **provenance()})
    return path


def run_inputs(
    config: RunConfig, model: ModelConfig, num_layers: int, manifest: str | os.PathLike
) -> dict:
    """What a run resolved before its first step, as its record keeps it (``inputs``).

    ``manifest``: the manifest read; ``encoder``: ``{"path", "fingerprint"}`` for an
    encoder folder on disk (a pretrained one in the cache), else ``{"name"}`` (a hub id)
    or ``{"config"}`` (built from a config, random); ``segmenter``: ``{"path",
    "fingerprint"}`` of ``priors.segmenter``, or None; ``priors``: the prior settings of
    ``model`` (:class:`~cxrlib.anatomy.prior_config.PriorConfig`, ``num_layers`` decoder
    layers) with their cache key, the mask ``source`` and the attention ``mode``.
    """
    encoder = model.encoder
    if isinstance(encoder, dict):
        encoder_entry: dict = {"config": encoder}
    elif Path(encoder).exists():
        encoder_entry = {"path": str(Path(encoder).resolve())}
        encoder_entry["fingerprint"] = checkpoint_fingerprint(encoder)
    else:
        encoder_entry = {"name": encoder}
    segmenter = config.priors.segmenter
    prior = config.priors.resolve(model.image_size, model.patch_size, num_layers)
    return {
        "manifest": manifest if is_url(manifest) else str(Path(manifest).resolve()),
        "encoder": encoder_entry,
        "segmenter": None
        if not segmenter
        else {
            "path": str(Path(segmenter).resolve()),
            "fingerprint": checkpoint_fingerprint(segmenter),
        },
        "priors": {
            **prior.to_dict(),
            "cache_key": prior.cache_key(),
            "source": config.priors.source,
            "mode": model.mode,
        },
    }


def record_inputs(out: str | os.PathLike, inputs: dict) -> None:
    """Add ``inputs`` (:func:`run_inputs`) to the run record in ``out``."""
    path = run_config_path(out)
    record = read_json_object(path) or {}
    record["inputs"] = inputs
    write_json_atomic(path, record)


def recorded_inputs(run: str | os.PathLike) -> dict:
    """The ``inputs`` a run recorded (:func:`run_inputs`); {} for runs that predate them."""
    return run_record(run).get("inputs") or {}
