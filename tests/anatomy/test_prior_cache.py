"""The prior cache: round trips, keys, stale files never read, changed masks recomputed."""

import json
import logging
import os
import pickle
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from cxrlib.anatomy import cache as cache_module
from cxrlib.anatomy.cache import (
    PriorCache,
    cached_priors_for_manifest,
    checkpoint_fingerprint,
    mask_fingerprints,
)
from cxrlib.anatomy.manifest_priors import priors_for_manifest
from cxrlib.anatomy.priors import PriorConfig, layer_priors
from cxrlib.data.dataset import Example, ReportDataset
from cxrlib.data.manifest import read_manifest
from cxrlib.data.phantom import write_phantom
from tests.numerics import assert_rounding_close, rounding_close

CONFIG = PriorConfig(image_size=64, patch_size=8, schedule="thesis")  # 8x8 grid


def _entries(n: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    grids = (torch.rand(n, 8, 8, generator=gen) > 0.5).float()
    return [f"img{i}" for i in range(n)], layer_priors(grids, CONFIG), grids


def test_round_trip(tmp_path):
    ids, priors, grids = _entries(3)
    cache = PriorCache(tmp_path, CONFIG)
    assert cache.get(ids) is None  # no file yet
    (path,) = cache.put(ids, priors, grids, sources=["manifest"] * 3, fingerprints=list("abc"))
    assert path == tmp_path / f"priors-{cache.key[:16]}" / "shard-00000000.safetensors"
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, "shards.lock"]
    got_priors, got_grids = PriorCache(tmp_path, CONFIG).get(["img2", "img0"])
    assert torch.equal(got_priors, priors[[2, 0]]) and got_priors.dtype == torch.float32
    assert torch.equal(got_grids, grids[[2, 0]])
    assert cache.get(["img0", "missing"]) is None
    assert cache.get(["img0"], fingerprints=["a"]) is not None
    assert cache.get(["img0"], fingerprints=["changed"]) is None
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["cache_key"] == cache.key
    assert json.loads(meta["image_ids"]) == ids
    assert json.loads(meta["counts"]) == {"manifest": 3}
    assert PriorConfig.from_dict(json.loads(meta["config"])) == CONFIG


def test_put_adds_and_replaces_entries(tmp_path):
    ids, priors, grids = _entries(3)
    cache = PriorCache(tmp_path, CONFIG)
    cache.put(ids[:2], priors[:2], grids[:2])
    cache.put(ids[1:], priors[1:] * 0 + 1, grids[1:])  # replaces img1, adds img2
    got, _ = cache.get(ids)
    assert torch.equal(got[0], priors[0])
    assert torch.equal(got[1:], torch.ones(2, 12, 64))
    assert cache.load().image_ids == ["img0", "img1", "img2"]


def test_float16_storage(tmp_path):
    ids, priors, grids = _entries(2)
    cache = PriorCache(tmp_path, CONFIG, dtype="float16")
    assert cache.key != PriorCache(tmp_path, CONFIG).key
    cache.put(ids, priors, grids)
    got, _ = cache.get(ids)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, priors, atol=2.5e-4, rtol=0)


def test_a_cache_of_other_settings_is_never_read(tmp_path, caplog):
    ids, priors, grids = _entries(2)
    PriorCache(tmp_path, CONFIG).put(ids, priors, grids)
    other = PriorConfig(image_size=64, patch_size=8, schedule="linear")
    stale = PriorCache(tmp_path, other)
    assert stale.path != PriorCache(tmp_path, CONFIG).path
    assert stale.get(ids) is None
    # even a file copied under the other key's name is refused: the key is re-checked
    stale.path.mkdir()
    shutil.copy(PriorCache(tmp_path, CONFIG).shard_paths()[0], stale.path)
    with caplog.at_level(logging.WARNING, logger="cxrlib.anatomy.cache"):
        assert stale.get(ids) is None
    assert "written under another key, ignored" in caplog.text
    for kwargs in ({"source": "none"}, {"segmenter_id": "ckpt-1"}):
        assert PriorCache(tmp_path, CONFIG, **kwargs).get(ids) is None


def test_unreadable_cache_is_ignored(tmp_path):
    cache = PriorCache(tmp_path, CONFIG)
    cache.path.mkdir()
    (cache.path / "shard-00000000.safetensors").write_bytes(b"not a safetensors file")
    assert cache.get(["img0"]) is None
    ids, priors, grids = _entries(1)
    cache.put(ids, priors, grids)  # a new shard, read instead
    assert cache.get(ids) is not None


def test_put_validates_shapes(tmp_path):
    ids, priors, grids = _entries(2)
    cache = PriorCache(tmp_path, CONFIG)
    with pytest.raises(ValueError, match=r"priors must have shape \(2, 12, 64\)"):
        cache.put(ids, priors[:, :6], grids)
    with pytest.raises(ValueError, match="unique"):
        cache.put(["a", "a"], priors, grids)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom")
    write_phantom(root, n=4, seed=0, size=64, progress=False)
    return root


def test_cached_priors_for_manifest(phantom, tmp_path):
    manifest = read_manifest(phantom / "manifest.csv")
    first = cached_priors_for_manifest(manifest, CONFIG, tmp_path, progress=False)
    assert (first.reused, first.computed) == (0, 4)
    _, direct, info = priors_for_manifest(manifest, CONFIG, progress=False)
    assert torch.equal(first.priors.tensor(), direct)
    assert first.info.counts == info.counts == {"manifest": 4, "segmenter": 0, "none": 0}
    second = cached_priors_for_manifest(manifest, CONFIG, tmp_path, progress=False)
    assert (second.reused, second.computed) == (4, 0)
    assert torch.equal(second.priors.tensor(), direct)
    assert torch.equal(second.info.grid_masks.tensor(), info.grid_masks)
    assert "4 reused, 0 computed" in second.describe()
    other = cached_priors_for_manifest(
        manifest, PriorConfig(image_size=64, patch_size=8), tmp_path, progress=False
    )
    assert other.computed == 4 and other.path != first.path


def test_a_changed_mask_is_recomputed(phantom, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(phantom, root)
    manifest = read_manifest(root / "manifest.csv")
    df = manifest.frame
    before = cached_priors_for_manifest(manifest, CONFIG, tmp_path / "cache", progress=False)
    heart = root / df.loc[1, "heart_mask_path"]
    Image.fromarray(np.zeros((64, 64), dtype=np.uint8)).save(heart)
    os.utime(heart, ns=(1, 1))  # a different modification time, whatever the clock
    again = cached_priors_for_manifest(manifest, CONFIG, tmp_path / "cache", progress=False)
    assert (again.reused, again.computed) == (3, 1)
    _, fresh, _ = priors_for_manifest(manifest, CONFIG, progress=False)
    # the recomputed study ran in a batch of one, ``fresh`` in a batch of four: another
    # route through the blur's sums, so equal up to rounding (exact on one CPU, not all)
    assert_rounding_close(again.priors.tensor(), fresh)
    assert not rounding_close(before.priors[1], fresh[1])  # a stale prior would be caught


def test_fingerprints_follow_the_source(phantom):
    manifest = read_manifest(phantom / "manifest.csv")
    df = manifest.frame
    sources, fps = mask_fingerprints(manifest, CONFIG)
    assert sources == ["manifest"] * 4 and len(set(fps)) == 4
    df.loc[0, "heart_mask_path"] = ""
    sources2, fps2 = mask_fingerprints(manifest, CONFIG, has_segmenter=True, segmenter_id="s1")
    assert sources2[0] == "segmenter" and fps2[0] != fps[0] and fps2[1:] == fps[1:]
    _, fps3 = mask_fingerprints(manifest, CONFIG, has_segmenter=True, segmenter_id="s2")
    assert fps3[0] != fps2[0]


def test_segmenter_needs_an_id(phantom, tmp_path):
    manifest = read_manifest(phantom / "manifest.csv")
    with pytest.raises(ValueError, match="segmenter_id is required"):
        cached_priors_for_manifest(manifest, CONFIG, tmp_path, segmenter=object(), progress=False)


def test_checkpoint_fingerprint(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(b"1")
    before = checkpoint_fingerprint(ckpt)
    assert before == checkpoint_fingerprint(ckpt)
    (ckpt / "model.safetensors").write_bytes(b"22")
    assert checkpoint_fingerprint(ckpt) != before
    with pytest.raises(FileNotFoundError, match="does not exist"):
        checkpoint_fingerprint(tmp_path / "nope")


def test_sharded_cache_serves_exact_rows(phantom, tmp_path, monkeypatch):
    monkeypatch.setattr(cache_module, "SHARD_IMAGES", 3)
    ids, priors, grids = _entries(10, seed=1)
    cache = PriorCache(tmp_path, CONFIG)
    assert len(cache.put(ids[:7], priors[:7], grids[:7])) == 3  # shards of 3, 3, 1
    assert len(cache.put(ids[7:], priors[7:], grids[7:])) == 1  # two puts keep both
    got, got_grids = PriorCache(tmp_path, CONFIG).get(ids)
    assert torch.equal(got, priors) and torch.equal(got_grids, grids)
    index = cache.load()
    view = cache.lazy(index, ids[::-1])
    assert view.shape == (10, 12, 64) and torch.equal(view[0], priors[9])
    assert torch.equal(view.rows([3, 3, 0, 9]), priors.flip(0)[[3, 3, 0, 9]])
    clone = pickle.loads(pickle.dumps(view))  # a DataLoader worker reopens the files
    assert torch.equal(clone.tensor(), priors.flip(0))
    cache.put(ids[2:4], priors[2:4] * 0 + 0.5, grids[2:4])  # a later entry wins
    got, _ = cache.get(ids)
    assert torch.equal(got[2:4], torch.full((2, 12, 64), 0.5))
    assert torch.equal(got[:2], priors[:2]) and torch.equal(got[4:], priors[4:])
    assert cache.compact() == []  # 2 superseded rows of 12: nothing to do
    for _ in range(5):
        cache.put(ids, priors, grids)
    assert len(cache.compact()) == 4 and len(cache.shard_paths()) == 4
    assert torch.equal(cache.get(ids)[0], priors)

    manifest = read_manifest(phantom / "manifest.csv")
    folder = tmp_path / "m"
    first = cached_priors_for_manifest(manifest, CONFIG, folder, progress=False)
    _, direct, info = priors_for_manifest(manifest, CONFIG, progress=False)
    # computed a shard's worth (3 images) at a time: the batched smoothing's floats may
    # differ from one batch of 4 in the last bits, the values do not
    torch.testing.assert_close(first.priors.tensor(), direct, rtol=0, atol=1e-6)
    torch.testing.assert_close(first.info.grid_masks.tensor(), info.grid_masks, rtol=0, atol=1e-6)
    shards = PriorCache(folder, CONFIG).shard_paths()
    assert len(shards) == 2
    shards[0].write_bytes(b"corrupt")
    again = cached_priors_for_manifest(manifest, CONFIG, folder, progress=False)
    assert (again.reused, again.computed) == (1, 3)
    assert_rounding_close(again.priors.tensor(), direct)
    examples = [Example(i, "", "") for i in again.image_ids]
    dataset = ReportDataset(examples, 64, torch.zeros(4, 64, 2), again.priors)
    for i in range(4):
        assert torch.equal(dataset[i]["priors"], again.priors.tensor()[i])


def test_shard_by_shard_computation_has_one_bar_and_one_warning(
    phantom, tmp_path, monkeypatch, caplog
):
    monkeypatch.setattr(cache_module, "SHARD_IMAGES", 3)
    bars = []

    class Bar:  # records what the prior cache's one bar is told
        def __init__(self, total, **_):
            self.total, self.done, self.closed = total, 0, False
            bars.append(self)

        def update(self, k=1):
            self.done += k

        def close(self):
            self.closed = True

    monkeypatch.setattr(cache_module, "tqdm", Bar)
    manifest = read_manifest(phantom / "manifest.csv")
    manifest.frame.loc[[0, 3], "heart_mask_path"] = ""  # one unmasked image in each part
    with caplog.at_level(logging.WARNING):
        result = cached_priors_for_manifest(manifest, CONFIG, tmp_path, progress=False)
    assert result.computed == 4 and len(result.priors.paths) == 2  # shards of 3 and 1
    assert [(b.total, b.done, b.closed) for b in bars] == [(4, 4, True)]
    assert caplog.text.count("no masks: uniform prior") == 1
    assert "2 of 4 images have no masks: uniform prior" in caplog.text
