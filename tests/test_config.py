"""The config tree: profiles, JSON/YAML round trips, partial files, --set, errors."""

from __future__ import annotations

import json

import pytest

from cxrlib.base.errors import CxrError
from cxrlib.data.dataset import epoch_batches, epoch_order
from cxrlib.experiment.ablation import _known_profile, _train_command
from cxrlib.model import ReportModel
from cxrlib.training.config import (
    PROFILES,
    RunConfig,
    TrainConfig,
    load_config,
    merge,
    parse_assignment,
    profile_config,
)


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_profiles_round_trip_through_json(name):
    config = profile_config(name)
    assert config.profile == name
    again = RunConfig.from_dict(json.loads(config.to_json()))
    assert again == config


def test_profile_sizes():
    smoke, default, full = (profile_config(n) for n in ("smoke", "default", "full"))
    assert smoke.model.image_size == 64 and smoke.data.phantom_n < 100
    assert default.model.image_size == 128 and default.data.phantom_n == 6000
    assert full.model.image_size == 512 and full.model.encoder.startswith("facebook/dinov3")
    assert full.model.decoder == "gpt2"


def test_yaml_file_is_merged_over_the_profile(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("seed: 7\ntrain:\n  epochs: 3\nmodel:\n  mode: strict\n")
    config = load_config("smoke", path)
    base = profile_config("smoke")
    assert (config.seed, config.train.epochs, config.model.mode) == (7, 3, "strict")
    assert config.train.batch_size == base.train.batch_size  # untouched fields kept
    assert config.model.decoder == base.model.decoder


def test_json_file_and_overrides_in_order(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"train": {"lr": 0.01, "epochs": 2}}))
    config = load_config("smoke", path, [parse_assignment("train.epochs=5")])
    assert (config.train.lr, config.train.epochs) == (0.01, 5)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("train.epochs=3", {"train": {"epochs": 3}}),
        ("data.manifest=/x/m.csv", {"data": {"manifest": "/x/m.csv"}}),
        ("train.patience=null", {"train": {"patience": None}}),
        ("seed=4", {"seed": 4}),
        ("train.feature_cache=false", {"train": {"feature_cache": False}}),
    ],
)
def test_parse_assignment(text, expected):
    assert parse_assignment(text) == expected


def test_errors_name_the_key(tmp_path):
    with pytest.raises(CxrError, match=r"config.train: unknown key\(s\) epoch\b"):
        load_config("smoke", overrides=[{"train": {"epoch": 3}}])
    with pytest.raises(CxrError, match="config: unknown key"):
        load_config("smoke", overrides=[{"trian": {}}])
    with pytest.raises(CxrError, match=r"config.model: unknown key\(s\) moed"):
        load_config("smoke", overrides=[{"model": {"moed": "soft"}}])
    with pytest.raises(CxrError, match="train.lr"):
        TrainConfig(lr=-1)
    with pytest.raises(CxrError, match="unknown profile"):
        profile_config("huge")
    with pytest.raises(CxrError, match="KEY=VALUE"):
        parse_assignment("train.epochs")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(CxrError, match=r"bad.yaml: not valid yaml"):
        load_config("smoke", bad)
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_config("smoke", tmp_path / "missing.yaml")


def test_merge_is_recursive_and_does_not_mutate():
    base = {"a": {"b": 1, "c": 2}, "d": 3}
    out = merge(base, {"a": {"b": 5}})
    assert out == {"a": {"b": 5, "c": 2}, "d": 3}
    assert base["a"]["b"] == 1


def test_epoch_order_is_seeded_disjoint_and_complete():
    a = epoch_order(10, seed=0, epoch=0)
    assert sorted(a) == list(range(10))
    assert a == epoch_order(10, seed=0, epoch=0)
    assert a != epoch_order(10, seed=0, epoch=1)
    assert a != epoch_order(10, seed=1, epoch=0)
    ranks = [epoch_order(11, 0, 2, world_size=3, rank=r) for r in range(3)]
    assert [len(r) for r in ranks] == [3, 3, 3]  # 11 - 11 % 3 = 9 dealt
    assert len(set().union(*ranks)) == 9
    batches = epoch_batches(10, 4, 0, 0)
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sum(batches, []) == a


def test_the_default_profile_trains_the_cpu_preset_on_an_8x8_grid():
    config = profile_config("default")
    assert config.model.encoder["model_type"] == "resnet" and config.model.patch_size is None
    assert config.pretrain.enabled and config.pretrain.dense_weight > 0
    model = ReportModel.from_config(config.model, texts=["No acute findings."])
    # the grid comes from the ResNet's stride-16 feature map at 128 px
    assert model.config.patch_size == 16 and model.num_patches == 64
    assert model.encoder_width == config.model.encoder["hidden_sizes"][-1]


def test_an_encoder_of_another_kind_replaces_the_profiles_encoder_whole(tmp_path):
    """The ablation writes whole trees and trains them with ``--config`` over a profile:
    a ResNet encoder must not pick up the smoke profile's DINOv3 fields."""
    resnet = {"model_type": "resnet", "embedding_size": 8, "depths": [1], "hidden_sizes": [8]}
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"model": {"encoder": resnet}}))
    assert load_config("smoke", path).model.encoder == resnet
    # the same kind still merges field by field
    config = load_config("smoke", overrides=[{"model": {"encoder": {"hidden_size": 48}}}])
    assert config.model.encoder["hidden_size"] == 48
    assert (
        config.model.encoder["num_hidden_layers"]
        == profile_config("smoke").model.encoder["num_hidden_layers"]
    )
    dinov3 = {"model_type": "dinov3_vit", "hidden_size": 48}
    config = load_config("smoke", overrides=[{"model": {"encoder": dinov3}}])
    assert config.model.encoder["num_register_tokens"] == 2  # merged into the smoke ViT


def test_ablation_runs_train_over_their_own_profile(tmp_path):
    assert _known_profile(profile_config("default")) == "default"
    cmd = _train_command(tmp_path / "c.json", tmp_path / "r", False, profile="default")
    assert cmd[cmd.index("--profile") + 1] == "default"
