"""When the encoder feature cache pays (cxrlib.training.features.cache_pays), the full
profile's "auto" default, and the disk a run needs, checked before it starts (free space
from a monkeypatched shutil.disk_usage: no big files are written)."""

from __future__ import annotations

import collections
import dataclasses
import logging
import shutil

import pytest

import cxrlib.training.inputs as inputs
from cxrlib.base.errors import CxrError
from cxrlib.training.config import load_config, parse_assignment, profile_config
from cxrlib.training.features import cache_pays
from cxrlib.training.train import train

PUBLISHED = 1024 * 384 * 2  # bytes per image: 1,024 patches x 384 dims, float16
MIMIC = 377_110  # MIMIC-CXR-JPG images
GB = 10**9


def test_published_sizes_make_about_300_gb_for_mimic():
    assert PUBLISHED == 786_432
    decision = cache_pays(True, 10, 1, MIMIC, PUBLISHED, free_bytes=None)
    assert decision.use and decision.need_bytes == MIMIC * PUBLISHED  # 296.6 GB
    assert 290 * GB < decision.need_bytes < 300 * GB
    assert "296.6 GB" in decision.reason


def test_a_trainable_encoder_never_caches():
    decision = cache_pays(False, 10, 3, 1000, PUBLISHED, free_bytes=10**15)
    assert not decision.use and "trains" in decision.reason


def test_one_pass_over_uncached_images_does_not_pay():
    decision = cache_pays(True, 1, 1, 1000, PUBLISHED, free_bytes=10**15)
    assert not decision.use and "recomputing" in decision.reason


def test_several_epochs_or_runs_pay():
    assert cache_pays(True, 10, 1, 1000, PUBLISHED, free_bytes=10**15).use
    assert cache_pays(True, 1, 9, 1000, PUBLISHED, free_bytes=10**15).use


def test_a_complete_cache_pays_even_for_one_pass():
    decision = cache_pays(True, 1, 1, 1000, PUBLISHED, free_bytes=0, cached_images=1000)
    assert decision.use and decision.need_bytes == 0


def test_a_cache_that_does_not_fit_is_not_used():
    decision = cache_pays(True, 10, 1, MIMIC, PUBLISHED, free_bytes=200 * GB)
    assert not decision.use
    assert "296.6 GB" in decision.reason and "200.0 GB free" in decision.reason


def test_slow_disk_against_fast_encoder_does_not_pay():
    decision = cache_pays(True, 10, 1, 1000, PUBLISHED, None, image_seconds=1e-4)
    assert not decision.use


def test_bad_arguments_are_api_errors():
    with pytest.raises(ValueError, match="epochs"):
        cache_pays(True, 0, 1, 10, PUBLISHED, None)


def test_profiles_defaults():
    assert profile_config("full").train.feature_cache == "auto"
    assert profile_config("smoke").train.feature_cache is True
    assert profile_config("default").train.feature_cache is True
    config = load_config("smoke", overrides=[parse_assignment("train.feature_cache=auto")])
    assert config.train.feature_cache == "auto"
    with pytest.raises(CxrError, match="train.feature_cache: expected true, false or auto"):
        load_config("smoke", overrides=[parse_assignment("train.feature_cache=sometimes")])


def _free(monkeypatch, free: int) -> None:
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 * free, 9 * free, free))


def test_check_disk_logs_one_line_and_refuses_when_short(tmp_path, monkeypatch, caplog):
    _free(monkeypatch, 5 * GB)
    with caplog.at_level(logging.INFO, logger="cxrlib.training.inputs"):
        inputs.check_disk({tmp_path / "cache" / "features": (3 * GB, "feature cache")})
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("disk")]
    assert len(lines) == 1 and "3.0 GB" in lines[0] and "5.0 GB free" in lines[0]
    with pytest.raises(CxrError) as err:
        inputs.check_disk(
            {
                tmp_path / "cache" / "features": (3 * GB, "feature cache"),
                tmp_path / "run": (int(2.5 * GB), "checkpoints about"),
            }
        )
    message = str(err.value)
    assert "\n" not in message
    assert str(tmp_path / "cache" / "features") in message
    assert "needs 5.5 GB" in message and "5.0 GB free" in message


def _smoke(tmp_path, feature_cache="true"):
    sets = [f"data.cache_dir={tmp_path / 'cache'}", f"train.feature_cache={feature_cache}"]
    return load_config(
        "smoke",
        overrides=[parse_assignment(s) for s in sets]
        + [{"train": {"epochs": 1}, "pretrain": {"enabled": False}}],
    )


def test_train_refuses_before_it_starts_when_the_disk_is_short(tmp_path, monkeypatch):
    config = _smoke(tmp_path)
    _free(monkeypatch, 1000)
    with pytest.raises(CxrError, match="not enough free disk") as err:
        train(config, tmp_path / "run", progress=False)
    assert "\n" not in str(err.value) and "1.0 KB free" in str(err.value)
    assert not (tmp_path / "cache" / "features").exists()  # nothing encoded
    assert not (tmp_path / "run" / "checkpoints" / "last").exists()


def test_warm_caches_auto_leaves_out_a_cache_that_does_not_fit(tmp_path, monkeypatch, caplog):
    config = _smoke(tmp_path, "auto")
    rows = inputs.split_frame(inputs.resolve_manifest(config), "train")
    _free(monkeypatch, 1000)
    with caplog.at_level(logging.INFO, logger="cxrlib.training.inputs"):
        assert inputs.warm_caches(config, config.model, rows, progress=False, runs=3) == []
    assert "feature cache off" in caplog.text and "1.0 KB free" in caplog.text
    assert not list((tmp_path / "cache").glob("features/features-*/shard-*"))
    forced = config.replace(train=dataclasses.replace(config.train, feature_cache=True))
    with pytest.raises(CxrError, match="not enough free disk"):
        inputs.warm_caches(forced, config.model, rows, progress=False)
    _free(monkeypatch, 10**12)
    assert inputs.warm_caches(config, config.model, rows, progress=False, runs=3) == []
    assert list((tmp_path / "cache").glob("features/features-*/shard-*"))


def test_train_with_auto_logs_the_decision_and_the_disk(tmp_path, caplog):
    config = _smoke(tmp_path, "auto")  # one epoch, nothing cached: one pass does not pay
    with caplog.at_level(logging.INFO, logger="cxrlib.training.inputs"):
        train(config, tmp_path / "run", progress=False)
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("feature cache off: caching costs") for m in messages)
    disk = [m for m in messages if m.startswith("disk needed:")]
    assert len(disk) == 1 and "checkpoints about" in disk[0] and "feature cache" not in disk[0]
    assert not list((tmp_path / "cache").glob("features/features-*/shard-*"))
    assert (tmp_path / "run" / "checkpoints" / "last").is_dir()
