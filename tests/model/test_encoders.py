"""Encoder choice as configuration: ViTs and AutoBackbone CNNs, the patch grid from each."""

from __future__ import annotations

import pytest
import torch
from transformers import ConvNextConfig, Dinov2Config, Dinov2Model

import cxrlib.model.encoders as encoders
from cxrlib.base.errors import CxrError
from cxrlib.model import ModelConfig, ReportModel
from cxrlib.model.encoders import (
    build_encoder,
    encoder_patches,
    encoder_stride,
    encoder_width,
    prefix_tokens,
)
from tests.model import DECODER, ENCODER, TEXTS, one_thread  # noqa: F401

CONVNEXT = {
    "model_type": "convnext",
    "num_stages": 3,
    "depths": [1, 1, 1],
    "hidden_sizes": [8, 16, 24],
}
RESNET = {
    "model_type": "resnet",
    "embedding_size": 8,
    "depths": [1, 1],
    "hidden_sizes": [8, 16],
    "layer_type": "basic",
}
DINOV2 = {
    "model_type": "dinov2",
    "patch_size": 16,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
}


def _config(encoder, image_size=64, patch_size=None, **kw) -> ModelConfig:
    return ModelConfig.tiny(
        encoder=encoder,
        image_size=image_size,
        patch_size=patch_size,
        decoder=dict(DECODER),
        max_text_tokens=24,
        tokenizer_vocab_size=300,
        **kw,
    )


@pytest.mark.parametrize(
    ("encoder", "image_size", "stride", "width"),
    [
        # ConvNeXt: stem 4, then x2 per later stage -> 16 after 3 stages
        (CONVNEXT, 64, 16, 24),
        (CONVNEXT, 128, 16, 24),
        # ResNet: stem 4 (conv 2 + pool 2), the first stage keeps it, the second halves
        (RESNET, 64, 8, 16),
        (DINOV2, 64, 16, 32),
        ({**ENCODER, "model_type": "dinov3_vit"}, 64, 16, 32),
        (ENCODER, 64, 16, 32),  # no model_type: DINOv3, as before
    ],
)
def test_the_patch_grid_comes_from_the_encoder(encoder, image_size, stride, width):
    torch.manual_seed(0)
    model = ReportModel.from_config(_config(encoder, image_size), texts=TEXTS)
    grid = image_size // stride
    assert model.config.patch_size == stride
    assert model.num_patches == grid * grid
    assert model.encoder_width == width
    pixels = torch.randn(2, 3, image_size, image_size)
    patches = model.encode_images(pixels)
    assert patches.shape == (2, grid * grid, width)
    # generation runs over that grid, with a prior of that many patches
    priors = torch.rand(2, model.num_decoder_layers, grid * grid)
    texts = model.generate(pixel_values=pixels, priors=priors, max_new_tokens=3)
    assert len(texts) == 2


def test_backbone_patches_are_its_last_feature_map_row_major():
    torch.manual_seed(0)
    encoder = build_encoder(CONVNEXT, 64, None, None).eval()
    pixels = torch.randn(1, 3, 64, 64)
    fmap = encoder(pixel_values=pixels).feature_maps[-1]  # (1, 24, 4, 4)
    patches = encoder_patches(encoder, pixels)
    assert fmap.shape == (1, 24, 4, 4)
    # patch p = row p // 4, column p % 4
    assert torch.equal(patches[0, 6], fmap[0, :, 1, 2])
    assert prefix_tokens(encoder) == 0 and encoder_width(encoder) == 24


def test_vit_patches_drop_cls_and_registers():
    torch.manual_seed(0)
    encoder = build_encoder(ENCODER, 64, 16, None).eval()
    pixels = torch.randn(1, 3, 64, 64)
    hidden = encoder(pixel_values=pixels).last_hidden_state
    assert prefix_tokens(encoder) == 3  # CLS + 2 registers
    assert torch.equal(encoder_patches(encoder, pixels), hidden[:, 3:])


def test_a_stated_patch_size_must_agree_with_the_encoder():
    with pytest.raises(CxrError, match="patch size"):
        ReportModel.from_config(_config(CONVNEXT, 64, patch_size=8), texts=TEXTS)
    with pytest.raises(ValueError, match="patch_size is None"):
        _ = _config(CONVNEXT, 64).grid_size


def test_unknown_encoder_type_is_a_clear_error():
    with pytest.raises(CxrError, match="ModelConfig.encoder"):
        build_encoder({"model_type": "no-such-model"}, 64, None, None)


@pytest.mark.parametrize("encoder", [CONVNEXT, RESNET, DINOV2])
def test_save_and_load_are_exact_for_every_encoder_kind(tmp_path, encoder):
    torch.manual_seed(0)
    model = ReportModel.from_config(_config(encoder), texts=TEXTS)
    model.save_pretrained(tmp_path / "m")
    again = ReportModel.from_pretrained(tmp_path / "m")
    pixels = torch.randn(2, 3, 64, 64)
    assert again.config.patch_size == model.config.patch_size
    assert torch.equal(again.encode_images(pixels), model.encode_images(pixels))


def test_pretrained_backbone_and_dinov2_load_from_local_folders(tmp_path):
    """The hub path without a download: a folder ``from_pretrained`` reads (RAD-DINO is a
    Dinov2Model folder; a ConvNeXt checkpoint loads as its backbone)."""
    torch.manual_seed(0)
    fields = {k: v for k, v in DINOV2.items() if k != "model_type"}
    Dinov2Model(Dinov2Config(**fields, image_size=64)).save_pretrained(tmp_path / "rad-dino")
    from transformers import ConvNextModel

    cfields = {k: v for k, v in CONVNEXT.items() if k != "model_type"}
    ConvNextModel(ConvNextConfig(**cfields)).save_pretrained(tmp_path / "convnext")
    for folder, width in (("rad-dino", 32), ("convnext", 24)):
        model = ReportModel.from_config(_config(str(tmp_path / folder)), texts=TEXTS)
        assert model.encoder_width == width and model.num_patches == 16
        assert encoder_stride(model.encoder, 64) == 16


def test_last_n_unfreezes_the_last_backbone_stage_only():
    torch.manual_seed(0)
    config = _config(CONVNEXT, encoder_trainable="last_n", encoder_trainable_blocks=1)
    model = ReportModel.from_config(config, texts=TEXTS)
    trained = {n for n, p in model.encoder.named_parameters() if p.requires_grad}
    assert trained and all(
        n.startswith(("encoder.stages.2.", "hidden_states_norms.")) for n in trained
    )
    assert any(n.startswith("hidden_states_norms.") for n in trained)


def test_a_backbone_stride_is_measured_once_per_image_size(monkeypatch):
    torch.manual_seed(0)
    encoder = build_encoder(CONVNEXT, 64, None, None)
    calls = []
    measure = encoders._measure_stride
    monkeypatch.setattr(encoders, "_measure_stride", lambda e, s: calls.append(s) or measure(e, s))
    assert encoder_stride(encoder, 64) == encoder_stride(encoder, 64) == 16
    assert encoder_stride(encoder, 128) == 16
    assert calls == [64, 128]


def test_the_cpu_preset_is_an_8x8_grid_and_trains_without_dropout():
    """The preset the default profile trains: 64 patches at 128 px, and a training-mode
    pass that is a function of its inputs (no dropout masks: two passes agree)."""
    torch.manual_seed(0)
    config = ModelConfig.cpu(max_text_tokens=24, tokenizer_vocab_size=300)
    model = ReportModel.from_config(config, texts=TEXTS)
    assert model.num_patches == 64
    model.train()
    pixels = torch.rand(2, 3, 128, 128)
    batch = model.tokenizer.batch(TEXTS[:2], max_length=24)
    ids = batch["input_ids"]
    losses = [model(pixel_values=pixels, input_ids=ids, labels=ids).loss for _ in range(2)]
    assert losses[0].item() == losses[1].item()
    assert all(not isinstance(m, torch.nn.Dropout) or m.p == 0.0 for m in model.decoder.modules())
