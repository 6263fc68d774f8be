"""Two processes filling one cache entry at once: one builds, the other waits and reuses.

For each cache (phantom dataset, segmenter, pretrained encoder, encoder features,
priors) two spawned processes pass a barrier together and ask for the same entry. In
each child the builder is wrapped to count its calls and to sleep a little, so that the
second process reaches the entry while the first is still building (without the lock
both would build). Both must succeed, see byte-identical results, and only one build
may happen. A lock whose holder is killed with SIGKILL must not block the next build:
the lock is an OS lock (``fcntl.flock``) that the kernel releases when its holder dies.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
import torch

import cxrlib.anatomy.cache as prior_cache
import cxrlib.anatomy.segmenter as segmenter
import cxrlib.data.phantom as phantom_module
import cxrlib.training.pretrain as pretrain
from cxrlib.anatomy.priors import PriorConfig
from cxrlib.base.cache import DEFAULT_LOCK_TIMEOUT, build_once, entry_lock, lock_path, lock_timeout
from cxrlib.base.errors import CxrError
from cxrlib.data.manifest import read_manifest
from cxrlib.data.phantom import PhantomSpec, prepare_phantom, write_phantom
from cxrlib.model import ReportModel
from cxrlib.training import features
from cxrlib.training.config import profile_config
from tests.model import TEXTS, small_config

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
HOLD = 1.0  # seconds a child's builder sleeps, so the other child arrives mid-build
_BARRIER = None  # the children's start barrier (set by _init in each child)


def _init(barrier) -> None:
    global _BARRIER
    _BARRIER = barrier
    torch.set_num_threads(1)


def _digest(path: Path) -> str:
    """sha256 of a file, or of a folder's files (relative names and bytes, sorted)."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(str(f.relative_to(path.parent)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def _counted(module, name: str, calls: list) -> None:
    """Wrap ``module.name`` to record each call and hold it :data:`HOLD` s first."""
    inner = getattr(module, name)

    def wrapper(*args, **kwargs):
        calls.append(name)
        time.sleep(HOLD)  # the other process arrives now, before anything is written
        return inner(*args, **kwargs)

    setattr(module, name, wrapper)


def _phantom(root: Path, cache: Path, calls: list) -> str:
    _counted(phantom_module, "write_phantom", calls)
    manifest = prepare_phantom(PhantomSpec(n=8, seed=0, size=64), cache)
    return _digest(manifest.parent)


def _segmenter(root: Path, cache: Path, calls: list) -> str:
    _counted(segmenter, "train_segmenter", calls)
    data = read_manifest(root / "manifest.csv")
    config = segmenter.SegmenterConfig(
        image_size=64, base_channels=4, depth=2, epochs=1, batch_size=4, seed=1
    )
    seg, folder = segmenter.train_or_load(data, config, cache, progress=False)
    weights = hashlib.sha256()
    for name, tensor in sorted(seg.model.state_dict().items()):
        weights.update(name.encode() + tensor.numpy().tobytes())
    return _digest(folder) + weights.hexdigest()  # files, and the segmenter returned


def _pretrain(root: Path, cache: Path, calls: list) -> str:
    _counted(pretrain, "pretrain_encoder", calls)
    config = pretrain.PretrainConfig(enabled=True, epochs=1, batch_size=8)
    model = profile_config("smoke").model
    folder = pretrain.pretrained_encoder(
        model, root / "manifest.csv", cache, config, progress=False
    )
    return _digest(folder)


def _features(root: Path, cache: Path, calls: list) -> str:
    _counted(features.FeatureCache, "_encode", calls)
    torch.manual_seed(0)
    model = ReportModel.from_config(small_config(), texts=TEXTS).eval()
    data = read_manifest(root / "manifest.csv")
    result = features.features_for_manifest(data, model, cache, batch_size=4, progress=False)
    assert result.report.computed + result.report.reused == len(result.image_ids)
    tensor = hashlib.sha256(result.features.numpy().tobytes()).hexdigest()
    return _digest(result.report.folder) + tensor


def _priors(root: Path, cache: Path, calls: list) -> str:
    _counted(prior_cache, "priors_for_manifest", calls)
    config = PriorConfig(image_size=64, patch_size=8, schedule="thesis")
    data = read_manifest(root / "manifest.csv")
    result = prior_cache.cached_priors_for_manifest(data, config, cache, progress=False)
    tensor = hashlib.sha256(result.priors.tensor().numpy().tobytes()).hexdigest()
    return _digest(result.path) + tensor


CACHES = {
    "phantom": _phantom,
    "segmenter": _segmenter,
    "pretrain": _pretrain,
    "features": _features,
    "priors": _priors,
}


def _worker(kind: str, root: str, cache: str) -> dict:
    calls: list = []
    _BARRIER.wait(timeout=300)
    digest = CACHES[kind](Path(root), Path(cache), calls)
    return {"pid": os.getpid(), "builds": len(calls), "digest": digest}


@pytest.fixture(scope="module")
def pool():
    """Two spawned processes sharing a start barrier (started once for the module)."""
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        2, mp_context=ctx, initializer=_init, initargs=(ctx.Barrier(2),)
    ) as executor:
        yield executor


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("inputs")
    write_phantom(root, n=16, seed=0, size=64, progress=False)
    return root


@pytest.mark.parametrize("kind", list(CACHES))
def test_two_processes_build_one_entry_once(kind, pool, phantom, tmp_path):
    cache = tmp_path / "cache"
    futures = [pool.submit(_worker, kind, str(phantom), str(cache)) for _ in range(2)]
    results = [f.result(timeout=300) for f in futures]
    assert results[0]["pid"] != results[1]["pid"]  # really two processes
    assert sorted(r["builds"] for r in results) == [0, 1]  # one built, one reused
    assert results[0]["digest"] == results[1]["digest"]  # the same bytes for both
    assert not [p for p in cache.rglob("*") if p.name.endswith(".tmp")]  # no leftovers


HOLDER = """
import sys, time
from cxrlib.base.cache import entry_lock
with entry_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_a_killed_holder_does_not_block_the_next_build(tmp_path, monkeypatch):
    spec = PhantomSpec(n=2, seed=0, size=32)
    entry = tmp_path / spec.name
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(entry)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        held = pytest.raises(CxrError, match="another process has been building")
        with held, entry_lock(entry, timeout=0.2):  # held: a wait past the timeout says so
            pass
        (tmp_path / f".{spec.name}.{holder.pid}.tmp").mkdir()  # a killed build's leftover
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert lock_path(entry).exists()  # the file stays; the kernel dropped the lock
    monkeypatch.setenv("CXR_CACHE_LOCK_TIMEOUT", "30")  # a hang would fail, not block
    started = time.perf_counter()
    manifest = prepare_phantom(spec, tmp_path)
    assert manifest.is_file() and time.perf_counter() - started < 30
    assert sorted(p.name for p in tmp_path.iterdir()) == [spec.name, lock_path(entry).name]


def test_build_once_checks_again_under_the_lock_and_replaces_an_incomplete_entry(tmp_path):
    entry = tmp_path / "entry"
    entry.mkdir()
    (entry / "partial").write_text("x")  # an interrupted build of an older version

    def complete(folder: Path) -> bool:
        return (folder / "done").is_file()

    def build(tmp: Path) -> None:
        tmp.mkdir()
        (tmp / "done").write_text("1")

    assert build_once(entry, complete, build) is True
    assert sorted(p.name for p in entry.iterdir()) == ["done"]
    assert build_once(entry, complete, build) is False

    def failing(tmp: Path) -> None:
        tmp.mkdir()
        raise RuntimeError("boom")

    other = tmp_path / "other"
    with pytest.raises(RuntimeError, match="boom"):
        build_once(other, complete, failing)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry", "entry.lock", "other.lock"]


def test_lock_timeout_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("CXR_CACHE_LOCK_TIMEOUT", raising=False)
    assert lock_timeout() == DEFAULT_LOCK_TIMEOUT
    monkeypatch.setenv("CXR_CACHE_LOCK_TIMEOUT", "12.5")
    assert lock_timeout() == 12.5
    monkeypatch.setenv("CXR_CACHE_LOCK_TIMEOUT", "soon")
    with pytest.raises(CxrError, match="CXR_CACHE_LOCK_TIMEOUT"):
        lock_timeout()
