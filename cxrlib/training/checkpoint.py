"""Training checkpoints, written atomically and read back for an exact resume, and the
run folder they resume in (its ``run_config.json`` record).

A checkpoint is a :meth:`ReportModel.save_pretrained` folder plus ``optimizer.safetensors``
(optimizer tensors), ``rng.safetensors`` (every process's torch RNG state),
``ema.safetensors`` (the moving average of the weights, with ``train.ema_decay``) and
``trainer_state.json`` (step, epoch, position in the epoch, scheduler, optimizer
settings, python/numpy RNG states, best metric, bad images, rows of ``metrics.csv``).
No pickle. The model card (``README.md``, :mod:`cxrlib.training.model_card`) is added
when the run ends, not by every write.

:func:`write_checkpoint` writes the whole folder into ``checkpoints/.tmp-<name>``, then
renames the old one to ``.old-<name>``, the new one into place and deletes the old;
:func:`recover_checkpoints` repairs a run killed between the renames. A write the system
refuses (disk full, read-only, no permission) leaves the previous checkpoint in place and
loadable, removes ``.tmp-<name>`` and raises :class:`~cxrlib.base.io.WriteError` naming
the checkpoint and the cause.

Test hook ``crash_at`` (what the ``cxr train`` command reads from ``CXR_CRASH_AT``):
``"<stage>:<n>"`` kills the process with SIGKILL at the n-th checkpoint write when it
reaches ``stage`` (``files``: model written, state not yet; ``swap``: old checkpoint
renamed away, new one not yet in place); ``"<stage>:<n>:enospc"`` raises a full disk's
OSError there instead. Library code never reads the environment for it.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import shutil
import signal
from contextlib import suppress
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from cxrlib.base.errors import CxrError
from cxrlib.base.io import WriteError, os_error
from cxrlib.model import ReportModel
from cxrlib.training.config import RunConfig
from cxrlib.training.runs import run_config_path

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng.safetensors"
EMA_FILE = "ema.safetensors"
EMA_CHECKPOINT = "ema"
CRASH_ENV = "CXR_CRASH_AT"
"""The environment variable ``cxr train`` passes to :func:`cxrlib.training.train.train` as
``crash_at`` (the kill -9 and write-fault tests; see the module docstring)."""


class TrainingError(CxrError):
    """Training stopped: non-finite loss, too many unreadable images, bad resume."""


def _crash_point(stage: str, counter: list[int], crash_at: str | None) -> None:
    """The test hook ``crash_at`` (module docstring) at ``stage`` of write ``counter[0]``."""
    if not crash_at:
        return
    want, _, rest = crash_at.partition(":")
    nth, _, how = rest.partition(":")
    if want == stage and counter[0] == int(nth or 1):
        if how == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.kill(os.getpid(), signal.SIGKILL)


# --- random number generators -------------------------------------------------------------


def rng_state() -> dict:
    """This process's python, numpy, torch (and CUDA) RNG states."""
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


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` gave."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    keys = np.asarray(keys, dtype=np.uint32)
    np.random.set_state((name, keys, pos, has_gauss, cached))  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- optimizer state ----------------------------------------------------------------------


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


# --- writing ------------------------------------------------------------------------------


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
    model: ReportModel,
    optimizer: torch.optim.Optimizer,
    state: dict,
    rng_states: list[dict],
    counter: list[int],
    ema: dict[str, torch.Tensor] | None,
    crash_at: str | None,
) -> None:
    """Every file of a checkpoint into the fresh folder ``tmp``, synced to disk."""
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    _crash_point("files", counter, crash_at)
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
    _fsync_tree(tmp)


def _swap_in(tmp: Path, final: Path, counter: list[int], crash_at: str | None) -> None:
    """Rename ``tmp`` to ``final`` by way of ``.old-<name>``; when the second rename
    fails, the old checkpoint is put back (else :func:`recover_checkpoints` does)."""
    old = final.with_name(f".old-{final.name}")
    if final.exists():
        if old.exists():
            shutil.rmtree(old)
        final.rename(old)
    try:
        _crash_point("swap", counter, crash_at)
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
    crash_at: str | None = None,
) -> Path:
    """Write checkpoint ``folder/name`` atomically (main process only; see module doc).

    ``counter``: ``[checkpoints written by this process]`` (what ``crash_at`` counts);
    ``ema``: the moving average of the trainable weights (``train.ema_decay``), kept in
    ``ema.safetensors`` for an exact resume.

    A write the system refuses (disk full, read-only, no permission) leaves the previous
    ``folder/name`` in place, removes ``.tmp-<name>`` and raises :class:`WriteError`.
    """
    tmp, final = folder / f".tmp-{name}", folder / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _write_checkpoint_files(
            tmp, model, optimizer, state, rng_states, counter, ema, crash_at
        )  # fmt: skip
        _swap_in(tmp, final, counter, crash_at)
    except Exception as err:
        shutil.rmtree(tmp, ignore_errors=True)
        cause = os_error(err)
        if cause is None:
            raise
        raise WriteError(final, cause, "the checkpoint") from err
    return final


def write_model_folder(
    model: ReportModel, final: Path, counter: list[int], crash_at: str | None = None
) -> Path:
    """``model`` as a model folder ``final`` (:meth:`ReportModel.save_pretrained`), written
    whole beside it and renamed into place like a checkpoint."""
    tmp = final.with_name(f".tmp-{final.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    _fsync_tree(tmp)
    _swap_in(tmp, final, counter, crash_at)
    return final


# --- reading ------------------------------------------------------------------------------


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


def read_ema(path: Path, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The moving average checkpoint ``path`` holds for the trainable ``params``, on
    their devices and dtypes."""
    file = path / EMA_FILE
    if not file.is_file():
        raise TrainingError(f"{file}: missing; the run was not started with train.ema_decay")
    saved = load_file(str(file))
    if saved.keys() != params.keys():
        raise TrainingError(f"{file}: holds other parameters than the model trains")
    return {n: saved[n].to(params[n].device, params[n].dtype) for n in params}


# --- the run folder -----------------------------------------------------------------------


def _normalised(tree: dict | None) -> dict | None:
    """A recorded config tree with the fields added since it was written at their
    defaults (so a run of an older version resumes); None when it no longer parses."""
    try:
        return RunConfig.from_dict(tree).to_dict()
    except (CxrError, TypeError, ValueError, KeyError):
        return None


def resume_point(out: Path, config: RunConfig, resume: bool) -> tuple[bool, Path | None]:
    """``(resume, checkpoint)``: whether run folder ``out`` continues a run of ``config``
    and from which checkpoint (None: from the beginning). Without a run record there is
    nothing to resume (a new run).

    Raises
    ------
    TrainingError
        On resume, a run record of another config; else an ``out`` that is not empty.
    """
    record = run_config_path(out)
    if not resume:
        if out.exists() and any(out.iterdir()):
            raise TrainingError(f"{out}: not empty; give a new --out, or --resume to continue it")
        return False, None
    if not record.is_file():
        log.warning("%s: nothing to resume (no run record); starting a new run", out)
        return False, None
    stored = json.loads(record.read_text())
    if _normalised(stored.get("config")) != config.to_dict():
        raise TrainingError(
            f"{record}: the run was started with another config; resume with "
            "the same profile, --config and options (or use a new --out)"
        )
    last = out / CHECKPOINTS / "last"
    if last.is_dir():
        return True, last
    log.warning("%s: no checkpoint yet; starting from the beginning", out)
    return True, None


def weights_sha256(model: ReportModel) -> str:
    """sha256 (hex) of every tensor of the model's state, in name order."""
    import hashlib

    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def write_rank_record(
    out: Path, rank: int, world_size: int, first_epoch_ids: list[str], model: ReportModel
) -> None:
    """``out/rank-<rank>.json`` of a multi-process run: the image ids this process saw in
    the first epoch and the sha256 of its final weights (the DDP test compares them)."""
    record = {
        "rank": rank,
        "world_size": world_size,
        "first_epoch_image_ids": first_epoch_ids,
        "weights_sha256": weights_sha256(model),
    }
    (out / f"rank-{rank}.json").write_text(json.dumps(record))
