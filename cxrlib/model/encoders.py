"""Image encoders: any transformers vision model that yields a grid of patch features.

The report model reads an image as P patch tokens of width E, row-major over a
``grid x grid`` patch grid, and the anatomical prior is computed on that same grid. Both
come from the encoder, never from a constant:

- **ViTs** with a CLS token (and register tokens): DINOv3 (``dinov3_vit``, the published
  ViT-S/16), DINOv2 (``dinov2``; RAD-DINO, a chest X-ray DINOv2, is one) and DINOv2
  with registers (``dinov2_with_registers``). Patch tokens are the last hidden state
  after CLS and registers; the patch side in px is the config's ``patch_size``.
- **Backbones** through ``AutoBackbone`` (``convnext``, ``resnet``, DINOv3's
  ``dinov3_convnext``, any model type transformers has a backbone for): the last
  feature map it returns (B, C, h, w), flattened row-major; a patch's side in px is the
  backbone's output stride (image side / h), measured once by a forward pass.

An encoder source is what :class:`~cxrlib.model.config.ModelConfig.encoder` holds: a hub
id or a local folder (the folder's ``config.json`` names the model type), or a dict of
config fields with an optional ``model_type`` (default ``dinov3_vit``) for a randomly
initialised encoder. Every encoder takes (B, 3, S, S) ImageNet-normalised pixels.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig

from cxrlib.base.errors import CxrError
from cxrlib.model.config import DEFAULT_ENCODER_TYPE
from cxrlib.model.hub import load_from_hub

VIT_TYPES = ("dinov3_vit", "dinov2", "dinov2_with_registers")
"""Model types read as CLS (+ registers) + patch tokens; every other type is a backbone."""

# train-mode RoPE augmentation of DINOv3 (shift / jitter / rescale of patch positions)
ROPE_AUGMENTATION = ("pos_embed_shift", "pos_embed_jitter", "pos_embed_rescale")


def is_vit(encoder: nn.Module) -> bool:
    """Whether ``encoder`` is read as CLS (+ registers) + patch tokens."""
    return encoder.config.model_type in VIT_TYPES


def encoder_config(source: dict[str, Any], image_size: int, patch_size: int | None):
    """The transformers config of a config-built encoder (``source``: fields + model_type)."""
    fields = dict(source)
    model_type = fields.pop("model_type", DEFAULT_ENCODER_TYPE)
    if model_type in VIT_TYPES:
        if patch_size is not None:
            fields.setdefault("patch_size", patch_size)
        fields["image_size"] = image_size
    try:
        return AutoConfig.for_model(model_type, **fields)
    except ValueError as err:
        raise CxrError(f"ModelConfig.encoder: {err}") from None


def encoder_from_config(config: PretrainedConfig) -> nn.Module:
    """A randomly initialised encoder of ``config`` (a ViT model or a backbone)."""
    if config.model_type in VIT_TYPES:
        return AutoModel.from_config(config)
    if not getattr(config, "out_features", None):
        stages = getattr(config, "stage_names", None)
        if not stages:
            raise CxrError(f"encoder model type {config.model_type!r} is no backbone")
        config.out_features = [stages[-1]]
    return _backbone_class(config)(config)


def build_encoder(
    source: str | dict[str, Any], image_size: int, patch_size: int | None, token: str | None
) -> nn.Module:
    """The encoder of a source: config fields (random weights), a hub id or a folder
    (through :func:`~cxrlib.model.hub.load_from_hub`; ``token`` default ``HF_TOKEN``)."""
    if isinstance(source, dict):
        return encoder_from_config(encoder_config(source, image_size, patch_size))
    config = load_from_hub("encoder", source, AutoConfig.from_pretrained, token)
    kwargs = {"dtype": torch.float32, "use_safetensors": True}
    if config.model_type in VIT_TYPES:
        return load_from_hub("encoder", source, AutoModel.from_pretrained, token, **kwargs)
    if not getattr(config, "out_features", None):
        config.out_features = [config.stage_names[-1]]
    # the backbone class itself: AutoBackbone.from_pretrained asks the hub first
    loader = _backbone_class(config).from_pretrained
    return load_from_hub("encoder", source, loader, token, config=config, **kwargs)


def _backbone_class(config: PretrainedConfig) -> type:
    from transformers.models.auto.modeling_auto import MODEL_FOR_BACKBONE_MAPPING

    try:
        return MODEL_FOR_BACKBONE_MAPPING[type(config)]
    except KeyError:
        raise CxrError(f"encoder model type {config.model_type!r} has no backbone") from None


def encoder_from_dict(data: dict[str, Any]) -> nn.Module:
    """Rebuild an encoder from its saved ``config.to_dict()`` (no weights, no network)."""
    from transformers import CONFIG_MAPPING

    model_type = data.get("model_type", DEFAULT_ENCODER_TYPE)
    return encoder_from_config(CONFIG_MAPPING[model_type].from_dict(data))


def disable_rope_augmentation(encoder: nn.Module) -> None:
    """Switch DINOv3's train-mode RoPE augmentation off (deterministic features)."""
    for name in ROPE_AUGMENTATION:
        if hasattr(encoder.config, name):
            setattr(encoder.config, name, None)


def encoder_width(encoder: nn.Module) -> int:
    """E: the width of one patch feature."""
    if is_vit(encoder):
        return int(encoder.config.hidden_size)
    return int(encoder.channels[-1])


def prefix_tokens(encoder: nn.Module) -> int:
    """Tokens before the patches in a ViT's output: CLS + registers (0 for a backbone)."""
    if not is_vit(encoder):
        return 0
    return 1 + int(getattr(encoder.config, "num_register_tokens", 0) or 0)


def encoder_patches(encoder: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, P, E) patch features, row-major over the patch grid."""
    if is_vit(encoder):
        hidden = encoder(pixel_values=pixel_values).last_hidden_state  # (B, 1+R+P, E)
        return hidden[:, prefix_tokens(encoder) :]
    feature_map = encoder(pixel_values=pixel_values).feature_maps[-1]  # (B, E, h, w)
    return feature_map.flatten(2).transpose(1, 2)


def encoder_stride(encoder: nn.Module, image_size: int) -> int:
    """Pixels per patch side: a ViT's patch size, or a backbone's output stride.

    A backbone's stride is measured by one forward pass of a blank image (no gradients,
    eval mode restored afterwards), once per encoder and image size (building a model
    asks twice: for the decoder's positions, then to check the parts); the image side
    must be a multiple of it.
    """
    if is_vit(encoder):
        return int(encoder.config.patch_size)
    measured = encoder.__dict__.setdefault("_cxrlib_strides", {})
    if image_size not in measured:
        measured[image_size] = _measure_stride(encoder, image_size)
    return measured[image_size]


def _measure_stride(encoder: nn.Module, image_size: int) -> int:
    was_training = encoder.training
    encoder.eval()
    param = next(encoder.parameters())
    blank = torch.zeros(1, 3, image_size, image_size, dtype=param.dtype, device=param.device)
    with torch.no_grad():
        height = encoder(pixel_values=blank).feature_maps[-1].shape[-1]
    encoder.train(was_training)
    if image_size % height:
        raise CxrError(
            f"encoder gives a {height}x{height} feature map at {image_size} px: the image side "
            "must be a multiple of the output grid"
        )
    return image_size // height


def encoder_blocks(encoder: nn.Module) -> tuple[nn.ModuleList, list[nn.Module]]:
    """(blocks, final norms): what ``encoder_trainable="last_n"`` unfreezes, in order."""
    if encoder.config.model_type == "dinov3_vit":
        return encoder.model.layer, [encoder.norm]
    if is_vit(encoder):
        return encoder.encoder.layer, [encoder.layernorm]
    stages = encoder.encoder.stages
    norms = [encoder.hidden_states_norms] if hasattr(encoder, "hidden_states_norms") else []
    return stages, norms
