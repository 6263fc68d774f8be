"""Model inputs (cxrlib.training.inputs): the caches warmed without a report model hold
what a run reads, and one image gets the inputs its manifest row gets."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from cxrlib.anatomy.cache import PriorCache
from cxrlib.base.images import load_image, load_pixels
from cxrlib.base.masks import load_mask
from cxrlib.data.manifest import text_cell
from cxrlib.model import ReportModel
from cxrlib.training.features import FeatureCache
from cxrlib.training.inputs import (
    ImageEncoder,
    image_inputs_for,
    prior_settings,
    resolve_manifest,
    split_dataset,
    split_frame,
    warm_caches,
)
from tests import smoke_config


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    """The smoke config (caches in a fresh folder) with a saved encoder folder, so the
    report model and the cache warmer read the same weights; its test rows."""
    config = smoke_config(tmp_path_factory.mktemp("cache"))
    torch.manual_seed(0)
    model = ReportModel.from_config(config.model, texts=["a b c"])
    folder = tmp_path_factory.mktemp("encoder")
    model.encoder.save_pretrained(folder)
    config = config.replace(model=config.model.replace(encoder=str(folder)))
    rows = split_frame(resolve_manifest(config), "test")
    return config, rows.subset(rows.frame.iloc[:6])


def test_warmed_caches_hold_what_a_run_reads(setting):
    config, rows = setting
    bad = warm_caches(config, config.model, rows, progress=False)
    assert bad == []
    model = ReportModel.from_config(config.model, texts=["a b c"])
    ids = [text_cell(i) for i in rows.frame["image_id"]]
    cache = FeatureCache(config.data.cache_dir + "/features", model)
    assert cache.missing(ids) == []  # the same key: the same encoder, grid and settings
    stored = cache.load(ids[:2]).to(torch.float32)
    encoder = ImageEncoder(config.model)
    pixels = torch.stack([_pixels(rows, i, model) for i in range(2)])
    assert torch.equal(encoder.encode_images(pixels), model.encode_images(pixels))
    torch.testing.assert_close(stored, model.encode_images(pixels), atol=2e-3, rtol=1e-3)
    settings = prior_settings(config, model)
    assert settings == prior_settings(config, encoder)
    priors = PriorCache(
        config.data.cache_dir + "/priors", settings, source=config.priors.source
    ).load()
    assert priors is not None and set(ids) <= set(priors.image_ids)


def _pixels(rows, i, model):
    """The pixel values of row ``i`` as a run without the feature cache reads them."""
    path = rows.resolve(text_cell(rows.frame.iloc[i]["image_path"]))
    return load_pixels(path, model.config.image_size)


def test_one_image_gets_the_inputs_of_its_manifest_row(setting):
    """The single-image path (cxr report, the explorer) and the manifest path (training,
    generation) give an image with manifest masks the same priors."""
    config, rows = setting
    config = config.replace(train=dataclasses.replace(config.train, feature_cache=False))
    model = ReportModel.from_config(config.model, texts=["a b c"])
    dataset, bad = split_dataset(config, model, rows, progress=False)
    assert bad == []
    row = rows.frame.iloc[0]
    gray = load_image(rows.resolve(text_cell(row["image_path"])))
    masks = {
        name: load_mask(rows.resolve(text_cell(row[f"{name}_mask_path"])))[None]
        for name in ("left_lung", "right_lung", "heart")
    }
    pixels, priors = image_inputs_for(
        model, prior_settings(config, model), gray, masks, text_cell(row["image_id"])
    )
    item = dataset[0]
    torch.testing.assert_close(priors[0], item["priors"], atol=1e-6, rtol=0)
    assert pixels.shape == (1, *item["pixel_values"].shape)
