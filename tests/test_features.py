"""The encoder feature cache: values, keys, reuse, unreadable images, atomic writes."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from cxrlib.base.images import load_pixels
from cxrlib.cli import main
from cxrlib.data.manifest import read_manifest
from cxrlib.data.phantom import write_phantom
from cxrlib.model import ModelConfig, ReportModel
from cxrlib.training.features import (
    FeatureCache,
    LazyFeatures,
    encoder_fingerprint,
    features_for_manifest,
)
from tests.model import TEXTS, one_thread, small_config  # noqa: F401  (one_thread: fixture)
from tests.numerics import assert_rounding_close

# float16 storage: relative rounding 2**-11 (~5e-4) on features of magnitude up to ~3
ATOL, RTOL = 2e-3, 1e-3


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    """Six 64 px phantom images with a manifest (read-only for the tests)."""
    out = tmp_path_factory.mktemp("phantom")
    write_phantom(out, n=6, seed=0, size=64, workers=1, progress=False)
    return out


def make_model(seed: int = 0, spread: float = 0.0, **overrides) -> ReportModel:
    """A float32 test-sized model (64 px, patch 16: 16 patches, encoder width 32).

    ``spread`` > 0 redraws the bridge and decoder matrices with that std (as
    :func:`tests.model.small_model` does) so that logits depend clearly on the features.
    """
    torch.manual_seed(seed)
    model = ReportModel.from_config(small_config(**overrides), texts=TEXTS)
    if spread:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.ndim >= 2 and not name.startswith("encoder."):
                    p.normal_(0.0, spread)
    return model.eval()


def manifest(folder: Path):
    return read_manifest(folder / "manifest.csv", check_files=False)


def ids_paths(df) -> tuple[list[str], list[str]]:
    return list(df.frame["image_id"]), [str(df.root / p) for p in df.frame["image_path"]]


def pixels(model: ReportModel, paths: list[str]) -> torch.Tensor:
    return torch.stack([load_pixels(p, model.config.image_size) for p in paths])


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def test_cached_features_equal_the_encoder(phantom, tmp_path):
    model = make_model()
    df = manifest(phantom)
    ids, paths = ids_paths(df)
    result = features_for_manifest(df, model, tmp_path, batch_size=4, progress=False)
    assert result.image_ids == ids and result.bad == [] and result.rows == list(range(6))
    assert result.report.computed == 6 and result.report.reused == 0
    assert result.features.dtype == torch.float16
    assert result.features.shape == (6, model.num_patches, model.encoder_width)
    with torch.no_grad():
        direct = model.encode_images(pixels(model, paths))  # (6, P, E) float32
    torch.testing.assert_close(result.features.float(), direct, atol=ATOL, rtol=RTOL)
    # a different order (and a repeat) comes back in that order
    cache = FeatureCache(tmp_path, model)
    order = [ids[3], ids[0], ids[3], ids[5]]
    assert torch.equal(cache.load(order), result.features[[3, 0, 3, 5]])
    assert ids[2] in cache and "nope" not in cache and len(cache) == 6


def test_logits_from_cached_features_match_pixels(phantom, tmp_path):
    model = make_model(spread=0.4)
    df = manifest(phantom)
    ids, paths = ids_paths(df)
    FeatureCache(tmp_path, model).build(ids, paths, progress=False)
    features = FeatureCache(tmp_path, model).load(ids[:3])
    tokens = model.tokenizer.batch(TEXTS[:3], model.config.max_text_tokens)
    priors = torch.rand(3, model.num_decoder_layers, model.num_patches)
    with torch.no_grad():
        from_pixels = model(pixel_values=pixels(model, paths[:3]), priors=priors, **tokens)
        from_cache = model(image_features=features, priors=priors, **tokens)
        other = model(image_features=features.roll(1, 0), priors=priors, **tokens)
    # the logits depend on the image: other images' features change them by far more
    # than the float16 rounding of the cache does
    gap = (other.logits - from_pixels.logits).abs().max()
    err = (from_cache.logits - from_pixels.logits).abs().max()
    assert gap > 1.0 and err < 1e-2 * gap
    torch.testing.assert_close(from_cache.logits, from_pixels.logits, atol=2e-2, rtol=1e-2)
    torch.testing.assert_close(from_cache.loss, from_pixels.loss, atol=2e-3, rtol=1e-3)


def test_key_survives_save_and_load(tmp_path):
    model = make_model()
    model.save_pretrained(tmp_path / "model")
    again = ReportModel.from_pretrained(tmp_path / "model")
    assert FeatureCache(tmp_path, again).key == FeatureCache(tmp_path, model).key
    assert FeatureCache(tmp_path, model.double()).key != FeatureCache(tmp_path, again).key


def test_second_build_reuses_everything(phantom, tmp_path):
    model = make_model()
    ids, paths = ids_paths(manifest(phantom))
    first = FeatureCache(tmp_path, model).build(ids, paths, batch_size=4, progress=False)
    assert (first.computed, first.reused) == (6, 0)
    cache = FeatureCache(tmp_path, model)  # a new object finds them on disk
    assert cache.missing(ids) == []
    again = cache.build(ids + ids[:2], paths + paths[:2], progress=False)  # repeats: once
    assert (again.computed, again.reused, again.bad) == (0, 6, [])
    # only the missing ones are computed
    fresh = FeatureCache(tmp_path / "other", model)
    fresh.build(ids[:2], paths[:2], progress=False)
    assert fresh.missing(ids) == ids[2:]
    part = fresh.build(ids, paths, progress=False)
    assert (part.computed, part.reused) == (4, 2)
    # computed in other batches (2 + 4 against 4 + 2): equal up to float32 rounding
    assert_rounding_close(fresh.load(ids), cache.load(ids))


def test_changing_one_encoder_weight_changes_the_key(phantom, tmp_path):
    model = make_model()
    ids, paths = ids_paths(manifest(phantom))
    before = FeatureCache(tmp_path, model)
    before.build(ids, paths, progress=False)
    old_print = encoder_fingerprint(model)
    assert encoder_fingerprint(model) == old_print  # deterministic
    with torch.no_grad():
        model.encoder.embeddings.patch_embeddings.weight[0, 0, 0, 0] += 0.5
    assert encoder_fingerprint(model) != old_print
    with pytest.raises(RuntimeError, match="weights changed"):
        before.build(ids, paths, progress=False)  # never serves features of old weights
    after = FeatureCache(tmp_path, model)
    assert after.key != before.key and after.folder != before.folder
    assert after.missing(ids) == ids
    report = after.build(ids, paths, progress=False)
    assert report.computed == 6
    assert not torch.equal(after.load(ids), before.load(ids))
    with torch.no_grad():
        direct = model.encode_images(pixels(model, paths))
    torch.testing.assert_close(after.load(ids).float(), direct, atol=ATOL, rtol=RTOL)
    # the decoder is not part of the key
    with torch.no_grad():
        model.bridge[0].weight.add_(1.0)
    assert FeatureCache(tmp_path, model).key == after.key


def test_changing_image_size_changes_the_key(phantom, tmp_path):
    ids, paths = ids_paths(manifest(phantom))
    model64, model32 = make_model(), make_model(image_size=32)
    c64, c32 = FeatureCache(tmp_path, model64), FeatureCache(tmp_path, model32)
    assert c64.key != c32.key
    c64.build(ids, paths, progress=False)
    assert c32.missing(ids) == ids
    c32.build(ids, paths, progress=False)
    assert c32.load(ids).shape == (6, 4, 32) and c64.load(ids).shape == (6, 16, 32)


def test_unreadable_images_are_reported(phantom, tmp_path, caplog):
    data = tmp_path / "data"
    shutil.copytree(phantom, data)
    df = manifest(data)
    ids, paths = ids_paths(df)
    Path(paths[1]).write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    Path(paths[4]).unlink()
    model = make_model()
    with caplog.at_level(logging.WARNING, logger="cxrlib.training.features"):
        result = features_for_manifest(df, model, tmp_path / "cache", batch_size=4, progress=False)
    assert [b[0] for b in result.bad] == [ids[1], ids[4]]
    assert result.bad[0][1] == paths[1] and result.bad[1][1] == paths[4]
    assert "not a readable image" in result.bad[0][2] and "not found" in result.bad[1][2]
    assert ids[1] in caplog.text and ids[4] in caplog.text  # logged, not silent
    kept = [ids[i] for i in (0, 2, 3, 5)]
    assert result.image_ids == kept and result.rows == [0, 2, 3, 5]
    assert result.features.shape[0] == 4
    cache = FeatureCache(tmp_path / "cache", model)
    assert cache.missing(ids) == [ids[1], ids[4]]  # not cached: tried again next time
    again = cache.build(ids, paths, progress=False)
    assert (again.computed, again.reused, len(again.bad)) == (0, 4, 2)


def test_trainable_encoder_is_refused(tmp_path):
    for how, extra in (("all", {}), ("last_n", {"encoder_trainable_blocks": 1})):
        model = make_model(encoder_trainable=how, **extra)
        with pytest.raises(ValueError, match="trainable"):
            FeatureCache(tmp_path, model)


def test_load_of_an_unknown_id_names_it(phantom, tmp_path):
    model = make_model()
    ids, paths = ids_paths(manifest(phantom))
    cache = FeatureCache(tmp_path, model)
    cache.build(ids[:2], paths[:2], progress=False)
    with pytest.raises(KeyError, match="no-such-image"):
        cache.load([ids[0], "no-such-image", ids[3]])


def test_killed_build_keeps_a_consistent_index(phantom, tmp_path, monkeypatch):
    model = make_model()
    ids, paths = ids_paths(manifest(phantom))
    cache = FeatureCache(tmp_path, model)
    real_forward = model.encoder.forward
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash in the 2nd batch")
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(model.encoder, "forward", failing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        cache.build(ids, paths, batch_size=2, shard_size=2, progress=False)
    monkeypatch.undo()
    assert no_temp_files(tmp_path)
    index = json.loads(cache.index_path.read_text())
    assert index["cache_key"] == cache.key
    assert index["shards"] == ["shard-00000.safetensors"]  # names only (format 2)
    with safe_open(str(cache.folder / "shard-00000.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["image_ids"]) == ids[:2]
        assert f.metadata()["cache_key"] == cache.key
    # a build killed between writing a shard and the index leaves an orphan shard
    orphan = cache.folder / "shard-00007.safetensors"
    shutil.copy(cache.folder / "shard-00000.safetensors", orphan)
    (cache.folder / ".index.json.999.tmp").write_text("{half")
    again = FeatureCache(tmp_path, model)
    assert again.missing(ids) == ids[2:]
    report = again.build(ids, paths, batch_size=2, shard_size=2, progress=False)
    assert (report.computed, report.reused) == (4, 2)
    assert not orphan.exists() and no_temp_files(tmp_path)
    assert sorted(json.loads(again.index_path.read_text())["shards"]) == [
        f"shard-0000{i}.safetensors" for i in range(3)
    ]
    with torch.no_grad():
        direct = model.encode_images(pixels(model, paths))
    torch.testing.assert_close(again.load(ids).float(), direct, atol=ATOL, rtol=RTOL)


def test_folder_under_another_key_is_rebuilt(phantom, tmp_path, caplog):
    ids, paths = ids_paths(manifest(phantom))
    model_a, model_b = make_model(seed=0), make_model(seed=1)
    cache_a = FeatureCache(tmp_path, model_a)
    cache_a.build(ids, paths, progress=False)
    key_b = FeatureCache(tmp_path, model_b).key
    shutil.copytree(cache_a.folder, tmp_path / f"features-{key_b[:16]}")
    with caplog.at_level(logging.WARNING, logger="cxrlib.training.features"):
        cache_b = FeatureCache(tmp_path, model_b)
    assert "another key" in caplog.text
    assert cache_b.missing(ids) == ids
    assert cache_b.build(ids, paths, progress=False).computed == 6
    with torch.no_grad():
        direct = model_b.encode_images(pixels(model_b, paths))
    torch.testing.assert_close(cache_b.load(ids).float(), direct, atol=ATOL, rtol=RTOL)
    # a shard whose header disagrees with the index is dropped, not served
    shutil.copy(
        cache_a.folder / "shard-00000.safetensors", cache_b.folder / "shard-00000.safetensors"
    )
    with caplog.at_level(logging.WARNING, logger="cxrlib.training.features"):
        assert FeatureCache(tmp_path, model_b).missing(ids) == ids


def test_bench_features_runs(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "features", "--n", "8", "--batch", "4", "--repeats", "1", "--threads", "1"]
    assert main([*argv, "--json", str(out)]) == 0
    assert "uncached / cached" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["benchmark"] == "features" and result["batches_per_epoch"] == 2
    assert set(result["uncached_split_s"]) == {"image_loading", "encoder", "decoder_step"}
    assert result["ratios"]["uncached_vs_cached"] > 0
    assert result["max_abs_diff_cached_vs_encoder"] < 1e-2


def test_lazy_features_equal_the_loaded_ones(tmp_path):
    import pickle

    write_phantom(tmp_path / "ph", n=5, seed=0, size=64, workers=1, progress=False)
    manifest = read_manifest(tmp_path / "ph" / "manifest.csv")
    df = manifest.frame
    config = ModelConfig.tiny(
        encoder={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_register_tokens": 2,
        },
        image_size=64,
        decoder={"n_layer": 1, "n_head": 2, "n_embd": 32},
    )
    model = ReportModel.from_config(config, texts=["a b"])
    loaded = features_for_manifest(manifest, model, tmp_path / "cache", progress=False)
    lazy = features_for_manifest(
        manifest, model, tmp_path / "cache", progress=False, in_memory=False
    )
    assert isinstance(lazy.features, LazyFeatures)
    assert lazy.features.shape == tuple(loaded.features.shape)
    for i in range(len(df)):
        assert torch.equal(lazy.features[i], loaded.features[i])
    subset = pickle.loads(pickle.dumps(lazy.features[[4, 0]]))  # as a DataLoader worker
    assert torch.equal(subset[0], loaded.features[4]) and len(subset) == 2


def test_the_index_keeps_the_encoder_time_of_every_build(phantom, tmp_path):
    model = make_model()
    ids, paths = ids_paths(manifest(phantom))
    cache = FeatureCache(tmp_path, model)
    cache.build(ids[:3], paths[:3], batch_size=2, progress=False)
    first = json.loads(cache.index_path.read_text())["build_seconds"]
    assert first > 0
    cache.build(ids, paths, batch_size=2, progress=False)  # 3 more images
    second = json.loads(cache.index_path.read_text())["build_seconds"]
    assert second > first
    again = FeatureCache(tmp_path, model)  # read back from the index
    again.build(ids, paths, batch_size=2, progress=False)  # nothing to compute
    assert again.build_seconds == pytest.approx(second, abs=0.01)
    assert json.loads(cache.index_path.read_text())["build_seconds"] == second


def _fake_ids(n: int) -> list[str]:
    return [f"img-{i:04d}" for i in range(n)]


def _write_shards(cache: FeatureCache, ids: list[str], per_shard: int) -> torch.Tensor:
    """Write ``ids`` in shards of ``per_shard`` with distinct features; returns them."""
    shape = (len(ids), cache.num_patches, cache.width)
    stored = torch.arange(torch.Size(shape).numel(), dtype=torch.float32).reshape(shape)
    stored = (stored % 2003).to(torch.float16)  # exact in float16
    for start in range(0, len(ids), per_shard):
        cache._write_shard(ids[start : start + per_shard], [stored[start : start + per_shard]])
    return stored


def test_the_index_names_the_shards_only(tmp_path):
    model = make_model()
    ids = _fake_ids(12)
    one = FeatureCache(tmp_path / "one", model)
    _write_shards(one, ids[:6], 1)  # 6 shards of 1 image
    stored = _write_shards(FeatureCache(tmp_path / "two", model), ids, 2)  # 6 shards of 2
    index_path = FeatureCache(tmp_path / "two", model).index_path
    index = json.loads(index_path.read_text())
    assert set(index) == {
        "format",
        "format_version",
        "cache_key",
        "description",
        "settings",
        "num_images",
        "build_seconds",
        "shards",
    }
    assert index["shards"] == [f"shard-0000{i}.safetensors" for i in range(6)]
    assert index["num_images"] == 12 and not any(i in index_path.read_text() for i in ids)
    # twice the images, same shards: only num_images ("6" -> "12") is longer
    assert index_path.stat().st_size - one.index_path.stat().st_size == 1
    again = FeatureCache(tmp_path / "two", model)  # ids from the shard headers
    assert again.image_ids == ids and torch.equal(again.load(ids), stored)
    assert torch.equal(again.load(ids[::-1]), stored.flip(0))


def test_headers_are_read_once_per_shard(tmp_path, monkeypatch):
    model = make_model()
    ids = _fake_ids(12)
    writer, reader = FeatureCache(tmp_path, model), FeatureCache(tmp_path, model)
    reads: list[str] = []
    real = FeatureCache._read_header

    def counted(self, path):
        reads.append(Path(path).name)
        return real(self, path)

    monkeypatch.setattr(FeatureCache, "_read_header", counted)
    for start in range(0, 12, 2):  # 6 shards; the reader refreshes after each
        _write_shards(writer, ids[start : start + 2], 2)
        writer._refresh()
        assert writer.image_ids == ids[: start + 2]
        assert reader.image_ids == ids[: start + 2]
    # the writer knows what it wrote; the reader reads each new header once
    assert sorted(reads) == [f"shard-0000{i}.safetensors" for i in range(6)]
    reads.clear()
    assert FeatureCache(tmp_path, model).image_ids == ids
    assert len(reads) == 6  # a new object reads each header once


def test_a_missing_or_corrupt_shard_is_ignored_and_rebuilt(phantom, tmp_path, caplog):
    model = make_model()
    ids, paths = ids_paths(manifest(phantom))
    cache = FeatureCache(tmp_path, model)
    cache.build(ids, paths, batch_size=2, shard_size=2, progress=False)  # 3 shards
    (cache.folder / "shard-00000.safetensors").unlink()
    (cache.folder / "shard-00002.safetensors").write_bytes(b"\x08\x00garbage")
    with caplog.at_level(logging.WARNING, logger="cxrlib.training.features"):
        again = FeatureCache(tmp_path, model)
    assert "shard-00000.safetensors: listed in the index but missing" in caplog.text
    assert "shard-00002.safetensors: unreadable" in caplog.text
    assert "shard ignored, its images will be rebuilt" in caplog.text
    assert again.missing(ids) == ids[:2] + ids[4:]
    report = again.build(ids, paths, batch_size=2, shard_size=2, progress=False)
    assert (report.computed, report.reused) == (4, 2)
    with torch.no_grad():
        direct = model.encode_images(pixels(model, paths))
    fresh = FeatureCache(tmp_path, model)
    assert sorted(fresh.image_ids) == sorted(ids)
    torch.testing.assert_close(fresh.load(ids).float(), direct, atol=ATOL, rtol=RTOL)
