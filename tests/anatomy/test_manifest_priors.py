"""Priors for the images of a manifest: mask sources, mask files, the segmenter."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from cxrlib.anatomy.manifest_priors import priors_for_manifest
from cxrlib.anatomy.priors import PriorConfig, downsample_to_grid
from cxrlib.base.errors import CxrError
from cxrlib.base.masks import load_mask
from cxrlib.data.manifest import read_manifest
from cxrlib.data.phantom import write_phantom


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom")
    write_phantom(root, n=4, seed=0, size=64, progress=False)
    return root


def test_priors_for_manifest_from_phantom_masks(phantom):
    manifest = read_manifest(phantom / "manifest.csv")
    df = manifest.frame
    config = PriorConfig(image_size=64, patch_size=8)  # 8x8 grid
    ids, priors, info = priors_for_manifest(manifest, config, progress=False)
    assert ids == list(df["image_id"])
    assert priors.shape == (4, 12, 64) and priors.dtype == torch.float32
    assert info.counts == {"manifest": 4, "segmenter": 0, "none": 0}
    assert info.sources == ["manifest"] * 4 and info.empty == []
    assert info.grid_masks.shape == (4, 8, 8)
    assert (priors.amax(dim=-1) == 1.0).all()
    # the grid mask is the area-weighted union of the lung and heart PNGs
    row = df.iloc[0]
    union = load_mask(phantom / row["lung_mask_path"]) | load_mask(phantom / row["heart_mask_path"])
    expected = downsample_to_grid(torch.from_numpy(union[None]), 8)[0]
    assert torch.equal(info.grid_masks[0], expected)


def test_priors_for_manifest_sources(phantom, caplog):
    manifest = read_manifest(phantom / "manifest.csv")
    df = manifest.frame
    df.loc[1, "heart_mask_path"] = ""  # row 1 lacks a heart mask
    config = PriorConfig(image_size=64, patch_size=8)
    with caplog.at_level(logging.WARNING):
        _, priors, info = priors_for_manifest(manifest, config, progress=False)
    assert info.sources == ["manifest", "none", "manifest", "manifest"]
    assert info.counts == {"manifest": 3, "segmenter": 0, "none": 1}
    assert torch.equal(priors[1], torch.ones(12, 64))  # uniform prior
    assert "1 of 4 images have no masks: uniform prior" in caplog.text
    assert "none 1" in info.describe() and "attention unbiased" in info.describe()
    _, _, lungs_only = priors_for_manifest(
        manifest, PriorConfig(image_size=64, patch_size=8, structures=("lungs",)), progress=False
    )
    assert lungs_only.counts["manifest"] == 4  # left + right lungs make "lungs" too
    with pytest.raises(CxrError, match="image 'ph0-000001-frontal': no manifest mask"):
        priors_for_manifest(manifest, config, source="manifest", progress=False)
    _, priors_none, none_info = priors_for_manifest(manifest, config, source="none", progress=False)
    assert torch.equal(priors_none, torch.ones(4, 12, 64)) and none_info.counts["none"] == 4
    with pytest.raises(CxrError, match="needs a segmenter"):
        priors_for_manifest(manifest, config, source="segmenter", progress=False)


class _FakeSegmenter:
    """The Segmenter interface: predict(uint8 (B, H, W)) -> bool masks (B, H, W)."""

    def __init__(self):
        self.calls = 0

    def predict(self, images):
        self.calls += 1
        images = np.asarray(images)
        b, h, w = images.shape
        left = np.zeros((b, h, w), dtype=bool)
        left[:, : h // 2, : w // 2] = True
        return {"left_lung": left, "right_lung": np.zeros_like(left), "heart": np.zeros_like(left)}


def test_priors_for_manifest_falls_back_to_the_segmenter(phantom):
    manifest = read_manifest(phantom / "manifest.csv")
    df = manifest.frame
    df.loc[[0, 2], "lung_mask_path"] = ""
    df.loc[[0, 2], "left_lung_mask_path"] = ""
    seg = _FakeSegmenter()
    config = PriorConfig(image_size=64, patch_size=8)
    _, _, info = priors_for_manifest(manifest, config, segmenter=seg, progress=False)
    assert info.sources == ["segmenter", "manifest", "segmenter", "manifest"]
    assert info.counts == {"manifest": 2, "segmenter": 2, "none": 0}
    assert seg.calls == 1  # both same-size images in one batch
    expected = torch.zeros(8, 8)
    expected[:4, :4] = 1
    assert torch.equal(info.grid_masks[0], expected)


def test_mask_size_mismatch_names_the_image(phantom, tmp_path):
    manifest = read_manifest(phantom / "manifest.csv")
    df = manifest.frame
    wrong = tmp_path / "heart-32.png"
    Image.fromarray(np.full((32, 32), 255, dtype=np.uint8)).save(wrong)
    df.loc[2, "heart_mask_path"] = str(wrong)
    with pytest.raises(
        CxrError,
        match=r"image 'ph0-000002-frontal': heart mask .* is 32x32 px "
        r"but the image is 64x64 px",
    ):
        priors_for_manifest(manifest, PriorConfig(image_size=64, patch_size=8), progress=False)
