"""Export a trained run as a shareable model folder: the model files, the run's
configuration, the segmenter it used and its model card (:mod:`cxrlib.training.model_card`)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from cxrlib.base.errors import CxrError
from cxrlib.experiment.inference import EXPORTED_SEGMENTER, run_segmenter
from cxrlib.training.model_card import CARD_FILE, MODEL_FILES, model_card, test_metrics_path
from cxrlib.training.runs import (
    EXPORTED_CONFIG_FILE,
    run_checkpoint,
    run_config,
    run_config_path,
    run_folder,
)


def export_run(
    run: str | os.PathLike,
    out: str | os.PathLike,
    metrics: str | os.PathLike | None = None,
    segmenter: str | os.PathLike | None = None,
) -> Path:
    """Copy a run's best (else last) model into a new shareable folder ``out``.

    ``out`` gets :data:`MODEL_FILES`, the run's ``config.json`` as ``run_config.json``
    (what :func:`cxrlib.training.generate.load_run` and ``cxr report`` need for the priors) and a
    ``README.md`` (:func:`model_card`) with the test metrics of ``metrics``, else of the
    run's ablation evaluation (:func:`ablation_metrics`), else none. Written into a
    temporary folder beside ``out``, then renamed.

    Parameters
    ----------
    run : path-like
        A training run folder, or a checkpoint folder inside one.
    out : path-like
        New or empty folder.
    metrics : path-like, optional
        A ``cxr evaluate`` ``metrics.json`` of this run on a test split.
    segmenter : path-like, optional
        The lung and heart segmenter to ship in ``out/segmenter/`` (what
        ``cxr report --run OUT`` segments new images with); default the one the run
        used (:func:`cxrlib.experiment.inference.run_segmenter`), none when it records none.

    Returns
    -------
    Path
        ``out``.

    Raises
    ------
    CxrError
        ``run`` missing or without checkpoints or config, ``out`` not empty, a missing
        or malformed ``metrics``.
    """
    run, out = Path(run), Path(out)
    if not run.is_dir():
        raise CxrError(f"{run}: no such training run folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CxrError(f"{out}: not empty; give a new or empty --out folder")
    checkpoint = run_checkpoint(run)
    run_dir = run_folder(run)
    found = test_metrics_path(run_dir, metrics)
    if segmenter is None:
        segmenter = run_segmenter(run_dir, run_config(run_dir))
    elif not (Path(segmenter) / "model.safetensors").is_file():
        raise CxrError(f"{segmenter}: not a segmenter folder (no model.safetensors)")
    card = model_card(
        run_dir, checkpoint, found, name=checkpoint.name, shipped_segmenter=segmenter is not None
    )
    missing = [f for f in MODEL_FILES if not (checkpoint / f).is_file()]
    if missing:
        raise CxrError(f"{checkpoint}: incomplete model folder (no {', '.join(missing)})")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        for name in MODEL_FILES:
            shutil.copyfile(checkpoint / name, tmp / name)
        shutil.copyfile(run_config_path(run_dir), tmp / EXPORTED_CONFIG_FILE)
        (tmp / CARD_FILE).write_text(card)
        _fsync_files(tmp)
        if segmenter is not None:
            files = [f for f in Path(segmenter).iterdir() if f.is_file()]
            (tmp / EXPORTED_SEGMENTER).mkdir()
            for f in files:
                shutil.copyfile(f, tmp / EXPORTED_SEGMENTER / f.name)
            _fsync_files(tmp / EXPORTED_SEGMENTER)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _fsync_files(folder: Path) -> None:
    for path in (p for p in folder.iterdir() if p.is_file()):
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
