"""Supervised encoder pretraining: targets from a manifest, a loadable cached encoder."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import DINOv3ViTModel

from cxrlib.base.errors import CxrError
from cxrlib.data.manifest import CHEXPERT_LABELS
from cxrlib.data.phantom import write_phantom
from cxrlib.model import ModelConfig
from cxrlib.training.config import profile_config
from cxrlib.training.pretrain import (
    DENSE_FINDINGS,
    DenseTargets,
    PretrainConfig,
    TargetHeads,
    _shift,
    build_targets,
    encode_targets,
    pretrain_encoder,
    pretrained_encoder,
)


def _frame(rows: list[dict]) -> pd.DataFrame:
    base = {label: "" for label in CHEXPERT_LABELS}
    base.update({"image_id": "x", "image_path": "x.png", "findings": "t", "split": "train"})
    return pd.DataFrame([{**base, **r} for r in rows])


def test_targets_from_labels_categories_and_items():
    df = _frame(
        [
            {"Cardiomegaly": "1", "effusion_side": "left", "devices": "pacemaker"},
            {"Cardiomegaly": "-1", "effusion_side": "", "devices": "pacemaker;enteric tube"},
            {"Cardiomegaly": "0", "effusion_side": "bilateral", "ctr": "0.51"},
        ]
    )
    df["ctr"] = df["ctr"].fillna("")
    df["devices"] = df["devices"].fillna("")
    names, classes, kinds = build_targets(df)
    assert names[:14] == list(CHEXPERT_LABELS)
    assert "ctr" not in names and "findings" not in names  # numeric / text: never targets
    assert names[14:] == ["effusion_side", "devices:enteric tube", "devices:pacemaker"]
    assert classes[14] == ["", "bilateral", "left"]
    y = encode_targets(df, names, classes, kinds)
    card = CHEXPERT_LABELS.index("Cardiomegaly")
    assert y[:, card].tolist() == [1, 2, 0]  # positive, uncertain, not positive
    assert y[:, 14].tolist() == [2, 0, 1]
    assert y[:, 15].tolist() == [0, 1, 0]
    assert y[:, 16].tolist() == [1, 1, 0]
    # a category never seen in train counts as blank
    unseen = _frame([{"effusion_side": "right", "devices": ""}])
    assert encode_targets(unseen, names, classes, kinds)[0, 14].item() == 0


def test_columns_with_too_many_values_are_not_targets():
    df = _frame([{"lesion_size": f"{i}.1 cm"} for i in range(9)])
    df["lesion_size"] = [f"size {i}" for i in range(9)]
    names, _, _ = build_targets(df)
    assert "lesion_size" not in names


def test_heads_pool_over_patches():
    torch.manual_seed(0)
    heads = TargetHeads(8, [["a", "b"], ["a", "b", "c"]])
    out = heads(torch.randn(2, 5, 8))
    assert [tuple(o.shape) for o in out] == [(2, 2), (2, 3)]
    # permuting patches permutes nothing in the output (attention pooling is a set op)
    x = torch.randn(2, 5, 8)
    perm = heads(x[:, torch.randperm(5)])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(heads(x), perm, strict=True))


def test_pretrained_encoder_is_cached_and_loads(tmp_path):
    manifest = write_phantom(tmp_path / "ph", n=24, seed=0, size=64, workers=1, progress=False)
    manifest = tmp_path / "ph" / "manifest.csv"
    model_config = profile_config("smoke").model
    config = PretrainConfig(enabled=True, epochs=2, batch_size=8)
    folder = pretrained_encoder(model_config, manifest, tmp_path / "cache", config, progress=False)
    record = json.loads((folder / "pretrain.json").read_text())
    assert [h["epoch"] for h in record["history"]] == [1, 2]
    assert np.isfinite(record["history"][-1]["train_loss"])
    assert "effusion_side" in record["targets"]
    encoder = DINOv3ViTModel.from_pretrained(folder)
    assert encoder.config.hidden_size == model_config.encoder["hidden_size"]
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    again = pretrained_encoder(model_config, manifest, tmp_path / "cache", config, progress=False)
    assert again == folder and (folder / "model.safetensors").stat().st_mtime_ns == stamp
    other = pretrained_encoder(
        model_config, manifest, tmp_path / "cache", PretrainConfig(enabled=True, epochs=1)
    )
    assert other != folder


def test_pretraining_needs_a_config_built_encoder(tmp_path):
    with pytest.raises(CxrError, match="config-built encoder"):
        pretrain_encoder(
            ModelConfig.published(), tmp_path / "m.csv", tmp_path / "o", PretrainConfig()
        )


def _dense(regions: bool):
    organs = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    organs[0, 0, :, 2:] = 255  # left lung (patient's left: image right), right half
    organs[0, 1, :, :2] = 255  # right lung, left half
    organs[0, 2, 2:, 1:3] = 255  # heart, lower middle
    present = torch.zeros(1, len(DENSE_FINDINGS), dtype=torch.bool)
    sides = np.full((1, len(DENSE_FINDINGS)), "", dtype=object)
    eff = DENSE_FINDINGS.index("Pleural Effusion")
    present[0, eff] = True
    sides[0, eff] = "left"
    bits = None
    if regions:
        bits = torch.zeros(1, 4, 4, dtype=torch.int32)
        bits[0, 3, 3] = 1 << CHEXPERT_LABELS.index("Pleural Effusion")
    return DenseTargets(organs, bits, present, sides), eff


def test_dense_targets_are_area_shares_per_patch():
    dense, eff = _dense(regions=True)
    target = dense.batch(torch.tensor([0]), stride=2)  # a 2x2 grid of 2x2 px patches
    assert target.shape == (1, 16, 4)
    assert target[0, 0].tolist() == [0.0, 1.0, 0.0, 1.0]  # left lung: right column
    assert target[0, 1].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert target[0, 2].tolist() == [0.0, 0.0, 0.5, 0.5]  # heart: half of each lower patch
    assert target[0, 3 + eff].tolist() == [0.0, 0.0, 0.0, 0.25]  # the drawn region's pixel
    assert target[0, 3:].sum() == 0.25  # no other finding anywhere


def test_dense_targets_without_regions_use_the_side_lung():
    dense, eff = _dense(regions=False)
    target = dense.batch(torch.tensor([0]), stride=2)
    assert target[0, 3 + eff].tolist() == [0.0, 1.0, 0.0, 1.0]  # the left lung
    assert target[0, 3:].sum() == 2.0


def test_shifts_move_masks_with_the_image():
    gray = torch.arange(16, dtype=torch.uint8).view(1, 4, 4)
    mask = (gray % 3 == 0).to(torch.uint8)[:, None]  # (1, 1, 4, 4)
    gen = torch.Generator().manual_seed(3)
    g2, m2 = _shift(gray, 2, gen, mask)
    assert not torch.equal(g2, gray)
    assert torch.equal(m2[:, 0], (g2 % 3 == 0).to(torch.uint8))


def test_pretraining_with_dense_targets_measures_recognition(tmp_path):
    write_phantom(tmp_path / "ph", n=40, seed=0, size=64, workers=1, progress=False)
    manifest = tmp_path / "ph" / "manifest.csv"
    model_config = profile_config("smoke").model
    config = PretrainConfig(enabled=True, epochs=1, batch_size=8, dense_weight=1.0)
    folder = pretrained_encoder(model_config, manifest, tmp_path / "cache", config, progress=False)
    record = json.loads((folder / "pretrain.json").read_text())
    assert record["dense_targets"] in ("drawn regions", "side lung proxy")
    assert record["encoder"]["grid"] * record["encoder"]["patch_size"] == 64
    rec = record["recognition"]
    assert set(rec["train_prevalence"]) == set(CHEXPERT_LABELS)
    for split in ("validate", "test"):
        if split in rec:
            assert rec[split]["n"] == record[f"{split}_images"]
            values = [v for v in rec[split]["auroc"].values() if v is not None]
            assert all(0.0 <= v <= 1.0 for v in values)
