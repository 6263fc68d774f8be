"""Faults during writes: a full disk, a read-only folder, no permission.

A write the system refuses must leave the previous file, checkpoint or cache entry in
place and loadable, remove its temporary files and stop with one line (a
:class:`~cxrlib.base.io.WriteError`, a CxrError) that names the path and the cause.

The failures are simulated by making the lowest write call Python can reach raise:
``safetensors.torch.save_file`` / ``save_model`` (whose Rust writer reports a full
disk as ``SafetensorError('... I/O error: No space left on device (os error 28)')``,
seen on a full tmpfs), ``Path.write_text`` and ``os.replace`` / ``Path.rename``. A
read-only folder is made with chmod too, but root writes there regardless, so those
variants skip when the tests run as root (the monkeypatched EROFS / EACCES variants
cover the same code paths).
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
from safetensors import SafetensorError

import cxrlib.base.io as io_module
import cxrlib.model.report_model as report_model_module
import cxrlib.training.checkpoint as checkpoint_module
from cxrlib.anatomy.cache import PriorCache
from cxrlib.anatomy.priors import PriorConfig, layer_priors
from cxrlib.base.errors import CxrError
from cxrlib.base.io import WriteError, os_error, write_atomic, write_json_atomic
from cxrlib.data.phantom import write_phantom
from cxrlib.model import ReportModel
from cxrlib.training.checkpoint import CRASH_ENV, read_checkpoint, write_checkpoint
from cxrlib.training.features import FeatureCache
from cxrlib.training.train import train
from tests.model import TEXTS, one_thread, small_config  # noqa: F401  (one_thread: fixture)
from tests.test_features import ids_paths, make_model, manifest
from tests.test_train import ENV, _args, _smoke

ROOT_WRITES_ANYWHERE = pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0,
    reason="running as root: chmod read-only does not stop root's writes "
    "(the monkeypatched EROFS/EACCES tests cover this path)",
)
NO_SPACE = "no space left on device"


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def erofs(*args, **kwargs):
    raise OSError(errno.EROFS, os.strerror(errno.EROFS))


def eacces(*args, **kwargs):
    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))


def safetensors_full(*args, **kwargs):
    """What safetensors raises on a full disk (not an OSError)."""
    raise SafetensorError(
        "Error while serializing: I/O error: No space left on device (os error 28)"
    )


def leftovers(folder: Path) -> list[str]:
    """Temporary files and folders of atomic writes under ``folder``."""
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.name.endswith(".tmp") or p.name.startswith((".tmp-", ".old-"))
    )


def check_message(err: pytest.ExceptionInfo, path: Path, cause: str) -> None:
    """One line naming ``path`` and ``cause``, raised as a CxrError."""
    assert isinstance(err.value, CxrError) and isinstance(err.value, WriteError)
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith(f"{path}: cannot write") and text.endswith(cause), text
    assert err.value.path == path


@pytest.fixture(scope="module")
def data_cache(tmp_path_factory) -> Path:
    """The phantom / prior / feature cache of the training run."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Six 64 px phantom images with a manifest (read-only for the tests)."""
    out = tmp_path_factory.mktemp("phantom")
    write_phantom(out, n=6, seed=0, size=64, workers=1, progress=False)
    return out


@pytest.fixture
def read_only(tmp_path):
    """A folder with chmod 555 (restored after the test so it can be deleted)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    yield folder
    folder.chmod(stat.S_IRWXU)


# --- write_atomic ---------------------------------------------------------------------


def _fails_after_half(error):
    def write(tmp: Path) -> None:
        tmp.write_text("half a fi")  # a partial temporary file, then the failure
        error()

    return write


@pytest.mark.parametrize(
    ("patch", "writer", "cause"),
    [
        (None, _fails_after_half(enospc), NO_SPACE),  # disk full while writing
        (None, _fails_after_half(safetensors_full), NO_SPACE),  # safetensors' full disk
        ("replace", lambda tmp: tmp.write_text("new"), "read-only file system"),
        ("replace-eacces", lambda tmp: tmp.write_text("new"), "permission denied"),
    ],
    ids=["enospc", "safetensors-enospc", "rename-erofs", "rename-eacces"],
)
def test_write_atomic_keeps_the_old_file(tmp_path, monkeypatch, patch, writer, cause):
    path = tmp_path / "record.json"
    write_json_atomic(path, {"version": 1})
    if patch:
        monkeypatch.setattr(io_module.os, "replace", erofs if patch == "replace" else eacces)
    with pytest.raises(WriteError) as err:
        write_atomic(path, writer)
    monkeypatch.undo()
    check_message(err, path, cause)
    assert json.loads(path.read_text()) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]


def test_write_json_atomic_reports_a_full_disk(tmp_path, monkeypatch):
    path = tmp_path / "index.json"
    monkeypatch.setattr(Path, "write_text", enospc)  # the lowest write of the JSON text
    with pytest.raises(WriteError) as err:
        write_json_atomic(path, {"a": 1})
    check_message(err, path, NO_SPACE)
    assert list(tmp_path.iterdir()) == []


def test_other_errors_pass_unchanged_and_leave_no_temporary(tmp_path):
    def broken(tmp: Path) -> None:
        tmp.write_text("x")
        raise ValueError("a bug, not the disk")

    with pytest.raises(ValueError, match="a bug"):
        write_atomic(tmp_path / "f.txt", broken)
    assert list(tmp_path.iterdir()) == []
    assert os_error(ValueError("no os error")) is None
    assert os_error(SafetensorError("x (os error 30)")).errno == errno.EROFS


@ROOT_WRITES_ANYWHERE
def test_write_atomic_in_a_read_only_folder(read_only):
    path = read_only / "record.json"
    write_json_atomic(path, {"version": 1})
    read_only.chmod(stat.S_IRUSR | stat.S_IXUSR)
    with pytest.raises(WriteError) as err:
        write_json_atomic(path, {"version": 2})
    check_message(err, path, "permission denied")
    assert json.loads(path.read_text()) == {"version": 1}
    assert [p.name for p in read_only.iterdir()] == ["record.json"]


# --- training checkpoints -------------------------------------------------------------


def _write(folder: Path, model: ReportModel, step: int) -> Path:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    rng = [checkpoint_module.rng_state()]
    return write_checkpoint(folder, "last", model, optimizer, {"step": step}, rng, [0])


def _fail_when(method: str, error, test):
    """``Path.<method>`` raising ``error`` when ``test(path)`` holds."""
    real = getattr(Path, method)

    def patched(self, *args, **kwargs):
        if test(self):
            error()
        return real(self, *args, **kwargs)

    return patched


CHECKPOINT_FAULTS = {
    # model.safetensors: safetensors' own full-disk error
    "weights": (report_model_module, "save_model", safetensors_full, NO_SPACE),
    # optimizer.safetensors: an OSError
    "optimizer": (checkpoint_module, "save_file", enospc, NO_SPACE),
    # trainer_state.json
    "state": (
        Path,
        "write_text",
        _fail_when("write_text", enospc, lambda p: p.name == "trainer_state.json"),
        NO_SPACE,
    ),
    # the temporary folder cannot be made: no permission
    "mkdir": (
        Path,
        "mkdir",
        _fail_when("mkdir", eacces, lambda p: p.name.startswith(".tmp-")),
        "permission denied",
    ),
    # the old checkpoint cannot be renamed away
    "rename-old": (
        Path,
        "rename",
        _fail_when("rename", erofs, lambda p: p.name == "last"),
        "read-only file system",
    ),
    # the new one cannot be renamed into place after the old was renamed away
    "rename-new": (
        Path,
        "rename",
        _fail_when("rename", erofs, lambda p: p.name.startswith(".tmp-")),
        "read-only file system",
    ),
}


@pytest.mark.parametrize("fault", sorted(CHECKPOINT_FAULTS))
def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch, fault):
    owner, name, error, cause = CHECKPOINT_FAULTS[fault]
    folder = tmp_path / "run" / "checkpoints"
    torch.manual_seed(0)
    model = ReportModel.from_config(small_config(), texts=TEXTS)
    last = _write(folder, model, step=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    with monkeypatch.context() as patch, pytest.raises(WriteError) as err:
        patch.setattr(owner, name, error)
        _write(folder, model, step=2)
    check_message(err, last, cause)
    assert "cannot write the checkpoint:" in str(err.value)
    assert leftovers(folder) == [] and sorted(p.name for p in folder.iterdir()) == ["last"]
    state, _, _ = read_checkpoint(last, 0)
    assert state["step"] == 1
    loaded = ReportModel.from_pretrained(last).state_dict()
    assert all(torch.equal(loaded[k], before[k]) for k in before)
    _write(folder, model, step=3)  # the disk is back: the next write succeeds
    assert read_checkpoint(last, 0)[0]["step"] == 3 and leftovers(folder) == []


def test_training_stops_on_a_full_disk_and_keeps_the_last_checkpoint(
    data_cache, tmp_path, monkeypatch
):
    """A smoke run (checkpoint every 2 steps): ``last`` of step N exists, writing the
    next ``last`` fails with ENOSPC; the run stops, ``last`` still loads with step N."""
    out = tmp_path / "run"
    last = out / "checkpoints" / "last"
    real_save = checkpoint_module.save_file
    kept: list[int] = []

    def save_file(tensors, path, *args, **kwargs):
        if ".tmp-last" in str(path) and last.is_dir() and not kept:
            kept.append(json.loads((last / "trainer_state.json").read_text())["step"])
            enospc()
        return real_save(tensors, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module, "save_file", save_file)
    with pytest.raises(WriteError) as err:
        train(_smoke(data_cache), out, progress=False)
    monkeypatch.undo()
    check_message(err, last, NO_SPACE)
    assert kept and kept[0] >= 1
    state, _, _ = read_checkpoint(last, 0)
    assert state["step"] == kept[0]
    ReportModel.from_pretrained(last)
    assert leftovers(out) == []
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]


@pytest.mark.slow  # two training processes
def test_two_processes_stop_together_on_a_full_disk(data_cache, tmp_path):
    """DDP: the main process cannot write its 2nd checkpoint (ENOSPC raised by the
    test hook of ``CXR_CRASH_AT`` while writing its files); both processes stop with the
    reason (no rank left waiting at a barrier), and the 1st checkpoint (``last``) stays
    loadable."""
    out = tmp_path / "ddp"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    env = {**ENV, CRASH_ENV: "files:2:enospc"}
    proc = subprocess.run(
        [*torchrun, *_args(out, data_cache)[1:]],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0
    # rank 1 says why (torchrun may stop rank 0 before it prints its own line)
    folder = out / "checkpoints"
    said = re.search(
        rf"cxr: error: {re.escape(str(folder))}/(last|best): cannot write the checkpoint: "
        rf"{NO_SPACE} \(on the main process\)",  # the two ranks' lines may interleave
        proc.stderr,
    )
    assert said, proc.stderr[-3000:]
    last = folder / "last"
    state, _, _ = read_checkpoint(last, 1)
    assert state["step"] >= 1 and state["world_size"] == 2
    ReportModel.from_pretrained(last)
    assert leftovers(out) == []


# --- the encoder feature cache ----------------------------------------------------------


def _feature_cache_of_two(phantom_dir: Path, folder: Path):
    """A cache holding the first two images (shard-00000 and the index)."""
    model = make_model()
    ids, paths = ids_paths(manifest(phantom_dir))
    cache = FeatureCache(folder, model)
    cache.build(ids[:2], paths[:2], batch_size=2, shard_size=2, progress=False)
    return model, ids, paths, cache


def _assert_feature_cache_as_before(folder: Path, model, ids, index_before: str, old):
    cache = FeatureCache(folder, model)
    assert cache.index_path.read_text() == index_before
    assert leftovers(folder) == []
    assert sorted(p.name for p in cache.folder.iterdir()) == [
        "index.json",
        "shard-00000.safetensors",
    ]
    assert cache.missing(ids) == ids[2:]
    assert torch.equal(cache.load(ids[:2]), old)


@pytest.mark.parametrize(
    "fault", ["shard-enospc", "shard-safetensors", "shard-rename-erofs", "index-enospc"]
)
def test_failed_feature_write_keeps_the_cached_features(images, tmp_path, monkeypatch, fault):
    model, ids, paths, cache = _feature_cache_of_two(images, tmp_path)
    index_before, old = cache.index_path.read_text(), cache.load(ids[:2])
    shard = cache.folder / "shard-00001.safetensors"
    with monkeypatch.context() as patch, pytest.raises(WriteError) as err:
        if fault == "shard-enospc":
            patch.setattr(safetensors.torch, "save_file", enospc)
        elif fault == "shard-safetensors":
            patch.setattr(safetensors.torch, "save_file", safetensors_full)
        elif fault == "shard-rename-erofs":
            patch.setattr(io_module.os, "replace", erofs)
        else:  # the shard is written, then the index fails
            index_tmp = _fail_when("write_text", enospc, lambda p: p.name.startswith(".index"))
            patch.setattr(Path, "write_text", index_tmp)
        cache.build(ids, paths, batch_size=2, shard_size=2, progress=False)
    failed = cache.index_path if fault == "index-enospc" else shard
    cause = "read-only file system" if "erofs" in fault else NO_SPACE
    check_message(err, failed, cause)
    _assert_feature_cache_as_before(tmp_path, model, ids, index_before, old)
    assert cache.missing(ids) == ids[2:]  # the object that failed forgot the lost shard
    report = cache.build(ids, paths, batch_size=2, shard_size=2, progress=False)
    assert (report.computed, report.reused) == (4, 2) and leftovers(tmp_path) == []


@ROOT_WRITES_ANYWHERE
def test_feature_cache_in_a_read_only_folder(images, read_only):
    model, ids, paths, cache = _feature_cache_of_two(images, read_only)
    index_before, old = cache.index_path.read_text(), cache.load(ids[:2])
    cache.folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(WriteError) as err:
            cache.build(ids, paths, batch_size=2, shard_size=2, progress=False)
    finally:
        cache.folder.chmod(stat.S_IRWXU)
    check_message(err, cache.folder / "shard-00001.safetensors", "permission denied")
    _assert_feature_cache_as_before(read_only, model, ids, index_before, old)


# --- the prior cache --------------------------------------------------------------------

PRIORS = PriorConfig(image_size=64, patch_size=8, schedule="thesis")  # 8x8 grid


def _prior_entries(n: int):
    gen = torch.Generator().manual_seed(0)
    grids = (torch.rand(n, 8, 8, generator=gen) > 0.5).float()
    return [f"img{i}" for i in range(n)], layer_priors(grids, PRIORS), grids


PRIOR_FAULTS = {
    "enospc": (safetensors.torch, "save_file", enospc, NO_SPACE),
    "safetensors-enospc": (safetensors.torch, "save_file", safetensors_full, NO_SPACE),
    "rename-erofs": (io_module.os, "replace", erofs, "read-only file system"),
    "rename-eacces": (io_module.os, "replace", eacces, "permission denied"),
}


@pytest.mark.parametrize("fault", sorted(PRIOR_FAULTS))
def test_failed_prior_write_keeps_the_cached_priors(tmp_path, monkeypatch, fault):
    owner, name, error, cause = PRIOR_FAULTS[fault]
    ids, priors, grids = _prior_entries(4)
    cache = PriorCache(tmp_path, PRIORS)
    (path,) = cache.put(ids[:2], priors[:2], grids[:2], fingerprints=["a", "b"])
    before = path.read_bytes()
    with monkeypatch.context() as patch, pytest.raises(WriteError) as err:
        patch.setattr(owner, name, error)
        cache.put(ids[2:], priors[2:], grids[2:], fingerprints=["c", "d"])
    check_message(err, cache.path / "shard-00000001.safetensors", cause)
    names = sorted(p.name for p in cache.path.iterdir())
    assert path.read_bytes() == before and names == [path.name, "shards.lock"]
    again = PriorCache(tmp_path, PRIORS)
    got, got_grids = again.get(ids[:2], fingerprints=["a", "b"])
    assert torch.equal(got, priors[:2]) and torch.equal(got_grids, grids[:2])
    assert again.get(ids) is None and cache.get(ids) is None
    cache.put(ids[2:], priors[2:], grids[2:])  # the disk is back
    assert torch.equal(cache.get(ids)[0], priors)


@ROOT_WRITES_ANYWHERE
def test_prior_cache_in_a_read_only_folder(read_only):
    ids, priors, grids = _prior_entries(4)
    cache = PriorCache(read_only, PRIORS)
    (path,) = cache.put(ids[:2], priors[:2], grids[:2])
    before = path.read_bytes()
    cache.path.chmod(stat.S_IRUSR | stat.S_IXUSR)
    with pytest.raises(WriteError) as err:
        cache.put(ids[2:], priors[2:], grids[2:])
    check_message(err, cache.path / "shard-00000001.safetensors", "permission denied")
    names = sorted(p.name for p in cache.path.iterdir())
    assert path.read_bytes() == before and names == [path.name, "shards.lock"]
