"""``ModelConfig``: every knob of the report model, one commented default each.

Three presets: :meth:`ModelConfig.tiny` (random-initialised DINOv3 and GPT-2 built from
configs, 224 px, patch 16: the smallest model of the published kind, for tests and
benchmarks), :meth:`ModelConfig.cpu` (what the default profile trains on 2 CPU cores:
a small ResNet at 128 px, 8x8 patches, with the tiny GPT-2) and
:meth:`ModelConfig.published` (DINOv3 ViT-S/16 + GPT-2 small at 512 px, the published
architecture). The config is
plain JSON (:meth:`ModelConfig.to_dict` / :meth:`ModelConfig.from_dict`) and is saved
inside every model folder.

Position scheme (documented once, here): the image patches are prefix tokens before the
text, and GPT-2's learned absolute positions continue over prefix + text: patch ``p``
(row-major over the patch grid) takes position ``p``, text token ``t`` takes position
``num_patches + t``. The position table therefore needs
``n_positions >= num_patches + max_text_tokens`` rows (published: 1024 + 1024 = 2048).
A config-built decoder gets exactly that many; a pretrained table that is shorter is
extended by tiling it (row ``n_old + j`` starts as a copy of row ``j``), so with
``num_patches == n_old`` (the published sizes) text token ``t`` starts from GPT-2's own
position ``t``. The published code stretched the table instead.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrlib.base.errors import CxrError
from cxrlib.base.vocabulary import MODES

ATTN_IMPLEMENTATIONS = ("sdpa", "eager")
ENCODER_TRAINABLE = ("frozen", "last_n", "all")
DEFAULT_ENCODER_TYPE = "dinov3_vit"
"""An encoder config mapping's ``model_type`` when it names none."""

PUBLISHED_ENCODER = "facebook/dinov3-vits16-pretrain-lvd1689m"
PUBLISHED_DECODER = "gpt2"

# DINOv3 ViT-S/16 and GPT-2 small as plain config fields: the published sizes without
# a download (random weights; benchmarks and shape checks use them).
DINOV3_VITS16_FIELDS: dict[str, Any] = {
    "hidden_size": 384,
    "intermediate_size": 1536,
    "num_hidden_layers": 12,
    "num_attention_heads": 6,
    "num_register_tokens": 4,
    "layerscale_value": 1.0,
}
GPT2_SMALL_FIELDS: dict[str, Any] = {
    "n_layer": 12,
    "n_head": 12,
    "n_embd": 768,
    "vocab_size": 50257,
}


# The CPU preset's encoder: a ResNet of three stages of basic blocks (strides 4, 8, 16
# after the 4x stem), widths 32 / 64 / 128, built through AutoBackbone; its last
# feature map is the patch grid (docs/decisions.md, "Choosing the CPU encoder").
CPU_ENCODER_FIELDS: dict[str, Any] = {
    "model_type": "resnet",
    "embedding_size": 32,
    "depths": [2, 2, 2],
    "hidden_sizes": [32, 64, 128],
    "layer_type": "basic",
}

# The CPU preset's decoder: the tiny 4-layer GPT-2 without dropout. The default run
# trains each decoder for one pass over the phantom, far from overfitting, and on CPU
# dropout's random masks cost a third of a training step (docs/decisions.md, "Choosing the CPU
# encoder": 1.4x faster, the same validation micro-F1).
CPU_DECODER_FIELDS: dict[str, Any] = {
    "n_layer": 4,
    "n_head": 4,
    "n_embd": 128,
    "resid_pdrop": 0.0,
    "embd_pdrop": 0.0,
    "attn_pdrop": 0.0,
}


@dataclass
class ModelConfig:
    """Configuration of :class:`cxrlib.model.ReportModel` (encoder + bridge + decoder).

    A source (``encoder``, ``decoder``) is a hub id, a local folder (anything
    ``from_pretrained`` accepts) or a dict of config fields for a randomly initialised
    model. Hub access uses the ``HF_TOKEN`` environment variable only; no token is ever
    stored in a config.
    """

    # --- image encoder (cxrlib.model.encoders): DINOv3, DINOv2, an AutoBackbone -------
    # hub id, local folder, or config fields (dict) for random initialisation, with an
    # optional "model_type" (default "dinov3_vit"; "dinov2", "convnext", "resnet", ...)
    encoder: str | dict[str, Any] = PUBLISHED_ENCODER
    # input side in px (square images); the patch grid is image_size // patch_size
    image_size: int = 512
    # px per patch token: a ViT's patch size or a backbone's output stride. None: taken
    # from the encoder when the model is built; a number must equal it (checked)
    patch_size: int | None = 16
    # "frozen" (no gradients, eval mode), "last_n" (the last encoder_trainable_blocks
    # blocks and the final norm train) or "all"
    encoder_trainable: str = "frozen"
    # number of final encoder blocks that train when encoder_trainable == "last_n"
    encoder_trainable_blocks: int = 0
    # DINOv3's train-mode RoPE shift/jitter/rescale augmentation; off keeps encoder
    # features deterministic in train mode
    encoder_rope_augmentation: bool = False

    # --- bridge: MLP encoder width -> decoder width ---------------------------------
    # hidden width of the two-layer MLP; None uses the decoder width
    bridge_hidden_size: int | None = None

    # --- text decoder: transformers' GPT2LMHeadModel --------------------------------
    # hub id, local folder (pretrained: its own tokenizer is used), or GPT2Config fields
    # (dict) for random initialisation with a byte-level BPE trained on the Findings
    decoder: str | dict[str, Any] = PUBLISHED_DECODER
    # longest text in tokens after the prefix, BOS and EOS included
    max_text_tokens: int = 1024
    # vocabulary size when a byte-level BPE is trained (config-built decoder)
    tokenizer_vocab_size: int = 8192

    # --- anatomical attention --------------------------------------------------------
    # "none" (plain prefix decoder), "soft" (prior added to the logits of patch keys)
    # or "strict" (patches whose prior is 0 are excluded from attention)
    mode: str = "soft"
    # soft: the bias added to the logits towards patch keys is prior_strength * prior
    # (the published value is 1; their later code used 2)
    prior_strength: float = 1.0
    # soft: learn one strength per decoder layer (initialised at prior_strength)
    learn_prior_strength: bool = False
    # attention backend wrapped by the anatomical attention: "sdpa" or "eager"
    attn_implementation: str = "sdpa"

    # --- generation defaults ---------------------------------------------------------
    # most tokens generated after BOS (EOS included)
    max_new_tokens: int = 150
    # 1: greedy; > 1: beam search
    num_beams: int = 1
    # CTRL-style penalty on the logits of tokens already in the sequence (1: none)
    repetition_penalty: float = 1.2
    # beam search: hypothesis score = sum of log-probabilities / length ** length_penalty
    length_penalty: float = 1.0

    # free-form notes kept with the model (data, run id, ...); never read by the code
    notes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> CxrError:
            return CxrError(f"ModelConfig.{name}: {why} (got {getattr(self, name)!r})")

        if self.mode not in MODES:
            raise bad("mode", f"expected one of {', '.join(MODES)}")
        if self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise bad("attn_implementation", f"expected one of {', '.join(ATTN_IMPLEMENTATIONS)}")
        if self.encoder_trainable not in ENCODER_TRAINABLE:
            raise bad("encoder_trainable", f"expected one of {', '.join(ENCODER_TRAINABLE)}")
        if not isinstance(self.encoder, (str, dict)):
            raise bad("encoder", "expected a hub id, a folder or a dict of encoder config fields")
        if not isinstance(self.decoder, (str, dict)):
            raise bad("decoder", "expected a hub id, a folder or a dict of GPT2Config fields")
        for name in ("image_size", "patch_size", "max_text_tokens", "max_new_tokens", "num_beams"):
            value = getattr(self, name)
            if name == "patch_size" and value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise bad(name, "expected a positive integer")
        if self.patch_size is not None and self.image_size % self.patch_size:
            raise bad("image_size", f"must be a multiple of patch_size={self.patch_size}")
        if self.max_text_tokens < 2:
            raise bad("max_text_tokens", "needs room for BOS and EOS (>= 2)")
        if self.encoder_trainable_blocks < 0:
            raise bad("encoder_trainable_blocks", "expected >= 0")
        if self.encoder_trainable == "last_n" and self.encoder_trainable_blocks == 0:
            raise bad("encoder_trainable_blocks", 'must be > 0 with encoder_trainable="last_n"')
        if self.bridge_hidden_size is not None and self.bridge_hidden_size <= 0:
            raise bad("bridge_hidden_size", "expected a positive integer or None")
        if self.tokenizer_vocab_size < 259:
            raise bad("tokenizer_vocab_size", "needs at least 256 bytes + 3 special tokens")
        if not (math.isfinite(self.prior_strength) and self.prior_strength >= 0):
            raise bad("prior_strength", "expected a finite number >= 0")
        if not (math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0):
            raise bad("repetition_penalty", "expected a finite number > 0")
        if not math.isfinite(self.length_penalty):
            raise bad("length_penalty", "expected a finite number")

    # --- derived sizes ------------------------------------------------------------------

    @property
    def grid_size(self) -> int:
        """Patches per image side: ``image_size // patch_size``."""
        if self.patch_size is None:
            raise ValueError(
                "ModelConfig.patch_size is None: it is taken from the encoder when the model "
                "is built (use the built model's config)"
            )
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """Image prefix length P (row-major over the ``grid_size`` x ``grid_size`` grid)."""
        return self.grid_size**2

    @property
    def num_positions(self) -> int:
        """Rows the decoder's position table needs: ``num_patches + max_text_tokens``."""
        return self.num_patches + self.max_text_tokens

    # --- presets ------------------------------------------------------------------------

    @classmethod
    def tiny(cls, mode: str = "soft", **overrides: Any) -> ModelConfig:
        """A CPU-sized model from configs: 224 px, patch 16 (196 patches), a 4-block
        DINOv3 of width 96 with 4 registers, a 4-layer GPT-2 of width 128, 128 text
        tokens. ``overrides`` replace any field."""
        fields: dict[str, Any] = {
            "encoder": {
                "hidden_size": 96,
                "intermediate_size": 384,
                "num_hidden_layers": 4,
                "num_attention_heads": 4,
                "num_register_tokens": 4,
            },
            "image_size": 224,
            "patch_size": 16,
            "decoder": {"n_layer": 4, "n_head": 4, "n_embd": 128},
            "max_text_tokens": 128,
            "tokenizer_vocab_size": 1024,
            "mode": mode,
            "max_new_tokens": 64,
        }
        fields.update(overrides)
        return cls(**fields)

    @classmethod
    def cpu(cls, mode: str = "soft", **overrides: Any) -> ModelConfig:
        """The CPU preset the default profile trains: a small ResNet (AutoBackbone) at
        128 px whose stride-16 feature map is an 8x8 grid (64 patches: a third of the
        decoder's prefix at 224 px), pretrained on the phantom labels and frozen, and the
        tiny preset's 4-layer GPT-2 of width 128 without dropout (:data:`CPU_DECODER_FIELDS`).
        Chosen on the phantom's validation split against a ConvNeXt and the tiny DINOv3
        ViT (docs/decisions.md, "Choosing the CPU encoder").
        ``overrides`` replace any field."""
        fields: dict[str, Any] = {
            "encoder": dict(CPU_ENCODER_FIELDS),
            "image_size": 128,
            "patch_size": None,
            "decoder": dict(CPU_DECODER_FIELDS),
        }
        fields.update(overrides)
        return cls.tiny(mode=mode, **fields)

    @classmethod
    def published(
        cls, mode: str = "soft", pretrained: bool = True, **overrides: Any
    ) -> ModelConfig:
        """The published architecture: DINOv3 ViT-S/16 (frozen) + GPT-2 small, 512 px
        (1024 patches), 1024 text tokens, greedy decoding with repetition penalty 1.2 and
        at most 150 new tokens. ``pretrained=False`` gives the same sizes from configs
        with random weights (no download; what the benchmark uses)."""
        fields: dict[str, Any] = {
            "encoder": PUBLISHED_ENCODER if pretrained else dict(DINOV3_VITS16_FIELDS),
            "image_size": 512,
            "patch_size": 16,
            "decoder": PUBLISHED_DECODER if pretrained else dict(GPT2_SMALL_FIELDS),
            "max_text_tokens": 1024,
            "mode": mode,
            "prior_strength": 1.0,
            "max_new_tokens": 150,
            "repetition_penalty": 1.2,
        }
        fields.update(overrides)
        return cls(**fields)

    # --- JSON ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The config as JSON-ready plain data."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error (no silent typos)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CxrError(f"ModelConfig: unknown field(s) {', '.join(unknown)}")
        return cls(**data)

    def to_json(self, path: str | os.PathLike) -> None:
        """Write the config as indented JSON to ``path``."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> ModelConfig:
        """Read a config written by :meth:`to_json`."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)
