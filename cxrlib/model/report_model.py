"""The report model: encoder patches -> MLP bridge -> prefix tokens of GPT-2.

Data flow (shapes for a batch of B images, P patches, T text tokens, L decoder layers)::

    pixel_values (B, 3, H, W) --encoder (cxrlib.model.encoders)--> (B, P, E)
        a ViT (DINOv3 as published, DINOv2 / RAD-DINO): drop CLS + R register tokens;
        a backbone (ConvNeXt, ResNet): its last feature map, flattened row-major
        [or image_features (B, P, E) from a feature cache]
    --bridge MLP--> prefix (B, P, D)
    [prefix ; wte(input_ids)] (B, P + T, D) + learned positions 0 .. P + T - 1
    --GPT-2, anatomical attention in every layer (cxrlib.model.attention)-->
    text hidden states (B, T, D) --lm_head--> logits (B, T, V)

The prior ``priors`` (B, L, P) in [0, 1] enters every layer's attention as a
(L, B, 1, 1, P) bias (see :mod:`cxrlib.model.attention` for the modes). The position
scheme is documented in :mod:`cxrlib.model.config`. Greedy and beam search live in
:mod:`cxrlib.model.generation`; :meth:`ReportModel.generate` calls them.

Save / load: ``config.json`` (the :class:`ModelConfig` plus the encoder's and decoder's
own configs, so loading needs no hub), ``model.safetensors`` (written to a temporary
file, then renamed), ``tokenizer.json`` + ``tokenizer_config.json``. No pickle.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model
from torch import nn
from transformers import DynamicCache, GPT2Config, GPT2LMHeadModel

from cxrlib.base.errors import CxrError
from cxrlib.base.io import write_atomic
from cxrlib.model import generation
from cxrlib.model.attention import IMPLEMENTATIONS, AnatomicalPrior
from cxrlib.model.config import ModelConfig
from cxrlib.model.encoders import (
    build_encoder,
    disable_rope_augmentation,
    encoder_blocks,
    encoder_from_dict,
    encoder_patches,
    encoder_stride,
    encoder_width,
)
from cxrlib.model.hub import hub_token, load_from_hub
from cxrlib.model.tokenizer import ReportTokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "cxrlib.ReportModel"
FORMAT_VERSION = 1


@dataclass
class ReportModelOutput:
    """What :meth:`ReportModel.forward` returns.

    Attributes
    ----------
    logits : torch.Tensor
        (B, T, V) next-token logits at the text positions.
    loss : torch.Tensor or None
        Mean cross-entropy of the text tokens (labels shifted by one; -100 ignored).
    attentions : tuple of torch.Tensor or None
        One (B, heads, P + T, P + T) weight tensor per decoder layer, when asked.
    """

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class ReportModel(nn.Module):
    """Image encoder + MLP bridge + GPT-2 decoder with anatomical attention.

    Build with :meth:`from_config` or :meth:`from_pretrained`; the constructor only
    assembles parts that already agree with ``config``.
    """

    def __init__(
        self,
        config: ModelConfig,
        encoder: nn.Module,
        decoder: GPT2LMHeadModel,
        tokenizer: ReportTokenizer,
    ):
        super().__init__()
        # a copy (set_attn_implementation edits it); the patch grid comes from the encoder
        self.config = _with_patch_size(config, encoder)
        self.encoder = encoder
        self.decoder = decoder
        self.tokenizer = tokenizer
        enc_width, dec_width = encoder_width(encoder), decoder.config.n_embd
        hidden = config.bridge_hidden_size or dec_width
        self.bridge = nn.Sequential(
            nn.Linear(enc_width, hidden), nn.GELU(), nn.Linear(hidden, dec_width)
        )
        if config.learn_prior_strength:
            strength = torch.full((self.num_decoder_layers,), float(config.prior_strength))
            self.prior_strength = nn.Parameter(strength)  # (L,)
        else:
            self.prior_strength = None
        if not config.encoder_rope_augmentation:
            disable_rope_augmentation(encoder)
        self._check_parts()
        self._set_encoder_trainable()
        self.set_attn_implementation(config.attn_implementation)
        self.train(False)

    # --- construction ----------------------------------------------------------------

    @classmethod
    def from_config(
        cls,
        config: ModelConfig,
        tokenizer: ReportTokenizer | None = None,
        texts: list[str] | None = None,
    ) -> ReportModel:
        """Build the model: pretrained parts from hub ids or folders, the rest from configs.

        Parameters
        ----------
        config : ModelConfig
        tokenizer : ReportTokenizer, optional
            Default: a pretrained decoder's own tokenizer; for a config-built decoder a
            byte-level BPE trained on ``texts`` (with ``texts=None``: the 256 bytes and
            the specials only, no merges).
        texts : list of str, optional
            Training Findings for the BPE (config-built decoder, no ``tokenizer``).
        """
        token = hub_token()
        if tokenizer is None:
            if isinstance(config.decoder, dict):
                tokenizer = ReportTokenizer.train(texts or [], config.tokenizer_vocab_size)
            else:
                tokenizer = ReportTokenizer.from_pretrained(config.decoder, token=token)
        encoder = build_encoder(config.encoder, config.image_size, config.patch_size, token)
        config = _with_patch_size(config, encoder)
        decoder = _build_decoder(config, tokenizer, token)
        return cls(config, encoder, decoder, tokenizer)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> ReportModel:
        """Load a model written by :meth:`save_pretrained` (no network, no pickle)."""
        folder = Path(path)
        config_path = folder / CONFIG_FILE
        if not config_path.is_file():
            raise FileNotFoundError(f"{config_path}: no model config")
        data = json.loads(config_path.read_text())
        if data.get("format") != FORMAT:
            raise CxrError(f"{config_path}: not a {FORMAT} folder")
        config = ModelConfig.from_dict(data["model_config"])
        encoder = encoder_from_dict(data["encoder_config"])
        decoder = GPT2LMHeadModel._from_config(
            GPT2Config.from_dict(data["decoder_config"]),
            attn_implementation=IMPLEMENTATIONS[config.attn_implementation],
        )
        model = cls(config, encoder, decoder, ReportTokenizer.load(folder))
        load_model(model, folder / WEIGHTS_FILE, strict=True)
        return model

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write ``config.json``, ``model.safetensors`` and the tokenizer files to ``path``."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        data = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model_config": self.config.to_dict(),
            "encoder_config": self.encoder.config.to_dict(),
            "decoder_config": self.decoder.config.to_dict(),
        }
        write_atomic(folder / CONFIG_FILE, lambda tmp: tmp.write_text(json.dumps(data, indent=2)))
        write_atomic(
            folder / WEIGHTS_FILE,
            lambda tmp: save_model(self, str(tmp), metadata={"format": "pt"}),
        )
        self.tokenizer.save(folder)

    def _check_parts(self) -> None:
        cfg, dec = self.config, self.decoder.config
        if dec.n_positions < cfg.num_positions:
            raise CxrError(
                f"decoder position table has {dec.n_positions} rows; the prefix and text need "
                f"{cfg.num_positions} (num_patches {cfg.num_patches} + max_text_tokens "
                f"{cfg.max_text_tokens})"
            )
        if len(self.tokenizer) > dec.vocab_size:
            raise CxrError(
                f"tokenizer has {len(self.tokenizer)} tokens, the decoder only {dec.vocab_size}"
            )

    def _set_encoder_trainable(self) -> None:
        how = self.config.encoder_trainable
        self.encoder.requires_grad_(how == "all")
        if how == "last_n":
            blocks, norms = encoder_blocks(self.encoder)
            n = self.config.encoder_trainable_blocks
            if n > len(blocks):
                raise CxrError(
                    f"ModelConfig.encoder_trainable_blocks={n}, the encoder has {len(blocks)}"
                )
            for block in blocks[len(blocks) - n :]:
                block.requires_grad_(True)
            for norm in norms:
                norm.requires_grad_(True)

    def set_attn_implementation(self, name: str) -> None:
        """Switch the attention backend (``"sdpa"`` or ``"eager"``); weights unchanged."""
        if name not in IMPLEMENTATIONS:
            raise ValueError(f"attn_implementation: expected sdpa or eager (got {name!r})")
        self.decoder.set_attn_implementation(IMPLEMENTATIONS[name])
        self.config.attn_implementation = name

    def train(self, mode: bool = True) -> ReportModel:
        """Train/eval mode; a frozen encoder always stays in eval mode."""
        super().train(mode)
        if self.config.encoder_trainable == "frozen":
            self.encoder.eval()
        return self

    # --- sizes -------------------------------------------------------------------------

    @property
    def num_patches(self) -> int:
        """P: image prefix tokens (row-major over the patch grid)."""
        return self.config.num_patches

    @property
    def num_decoder_layers(self) -> int:
        """L: decoder layers, the second axis of ``priors``."""
        return self.decoder.config.n_layer

    @property
    def encoder_width(self) -> int:
        """E: the width of one patch feature."""
        return encoder_width(self.encoder)

    @property
    def device(self) -> torch.device:
        return self.bridge[0].weight.device

    # --- image -> prefix ---------------------------------------------------------------

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Encoder patch features (a ViT's without CLS and register tokens).

        Parameters
        ----------
        pixel_values : (B, 3, S, S) float, ImageNet-normalised, S = ``image_size``

        Returns
        -------
        (B, P, E) float: patch tokens, row-major over the patch grid.
        """
        size = self.config.image_size
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[-2:]) != (size, size):
            raise ValueError(
                f"pixel_values: expected (B, 3, {size}, {size}), got {tuple(pixel_values.shape)}"
            )
        trainable = self.config.encoder_trainable != "frozen"
        with torch.set_grad_enabled(torch.is_grad_enabled() and trainable):
            patches = encoder_patches(self.encoder, pixel_values)  # (B, P, E)
        if patches.shape[1] != self.num_patches:
            raise ValueError(
                f"encoder gave {patches.shape[1]} patch tokens, expected {self.num_patches}"
            )
        return patches

    def embed_prefix(
        self, pixel_values: torch.Tensor | None = None, image_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Prefix tokens: (B, P, D) from ``pixel_values`` or cached ``image_features``."""
        if (pixel_values is None) == (image_features is None):
            raise ValueError("give exactly one of pixel_values and image_features")
        if image_features is None:
            image_features = self.encode_images(pixel_values)
        width = self.encoder_width
        if image_features.ndim != 3 or image_features.shape[1:] != (self.num_patches, width):
            raise ValueError(
                f"image_features: expected (B, {self.num_patches}, {width}), got "
                f"{tuple(image_features.shape)}"
            )
        return self.bridge(image_features.to(self.bridge[0].weight.dtype))  # (B, P, D)

    def prior_state(
        self, priors: torch.Tensor | None, batch_size: int, need_weights: bool = False
    ) -> AnatomicalPrior:
        """Check ``priors`` (B, L, P) in [0, 1] (None: uniform) and build the layers' state."""
        if priors is not None:
            expected = (batch_size, self.num_decoder_layers, self.num_patches)
            if tuple(priors.shape) != expected:
                raise ValueError(
                    f"priors: expected shape (B, L, P) = {expected}, got {tuple(priors.shape)}"
                )
            if not priors.is_floating_point():
                raise ValueError(f"priors: expected floating point values, got {priors.dtype}")
            lo, hi = torch.aminmax(priors.detach())
            if not (lo >= 0 and hi <= 1):  # NaN fails too
                raise ValueError(
                    f"priors: values must lie in [0, 1] (got min {lo.item()}, max {hi.item()})"
                )
            dtype = torch.promote_types(priors.dtype, torch.float32)
            priors = priors.to(device=self.device, dtype=dtype)
        strength = self.prior_strength
        if strength is None:
            strength = float(self.config.prior_strength)
        return AnatomicalPrior.build(
            priors, self.config.mode, strength, self.num_patches, need_weights=need_weights
        )

    # --- the decoder ---------------------------------------------------------------------

    def run_decoder(
        self,
        embeds: torch.Tensor,
        text_mask: torch.Tensor | None,
        position_ids: torch.Tensor,
        prior: AnatomicalPrior,
        cache: DynamicCache | None = None,
        output_attentions: bool = False,
    ):
        """GPT-2 over ``embeds`` (B, Tq, D); ``text_mask`` (B, T) covers the whole text so far."""
        full_mask = None
        if text_mask is not None:
            ones = text_mask.new_ones(text_mask.shape[0], self.num_patches)
            full_mask = torch.cat([ones, text_mask], dim=1)  # (B, P + T)
        prior.applied.clear()
        out = self.decoder.transformer(
            inputs_embeds=embeds,
            attention_mask=full_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=cache is not None,
            output_attentions=output_attentions,
            anatomical_prior=prior,
        )
        missing = sorted(set(range(self.num_decoder_layers)) - prior.applied)
        if missing:
            raise RuntimeError(
                f"the anatomical prior was not applied in decoder layers {missing}: the "
                f"decoder's attention implementation is "
                f"{self.decoder.config._attn_implementation!r}, expected one of "
                f"{sorted(IMPLEMENTATIONS.values())}"
            )
        return out

    def text_positions(self, text_mask: torch.Tensor | None, batch: int, length: int):
        """(B, T) positions of the text tokens: P, P + 1, ... counting real tokens only."""
        if text_mask is None:
            pos = torch.arange(length, device=self.device) + self.num_patches
            return pos.expand(batch, length)
        return self.num_patches + (text_mask.long().cumsum(-1) - 1).clamp(min=0)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        priors: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> ReportModelOutput:
        """Teacher-forced pass over image prefix + text.

        Parameters
        ----------
        pixel_values : (B, 3, S, S), optional
        image_features : (B, P, E), optional
            Encoder patch features (feature cache); exactly one of the two.
        input_ids : (B, T) int64
            ``BOS text EOS`` and padding (see :meth:`ReportTokenizer.batch`).
        attention_mask : (B, T), optional
            1 = token, 0 = padding (left or right); None: no padding. With right
            padding only, the logits at padding positions are unspecified (the
            decoder then runs causal without a padding mask; see the code).
        priors : (B, L, P) in [0, 1], optional
            Per-layer anatomical prior; None: uniform (no bias).
        labels : (B, T) int64, optional
            Targets aligned with ``input_ids`` (shifted inside), -100 = ignore.
        output_attentions : bool
            Also return each layer's (B, heads, P + T, P + T) attention weights.
        """
        if input_ids is None:
            raise ValueError("input_ids: required (at least BOS)")
        batch, length = input_ids.shape
        if length > self.config.max_text_tokens:
            raise ValueError(
                f"input_ids: {length} tokens, the position table holds "
                f"max_text_tokens={self.config.max_text_tokens}"
            )
        prefix = self.embed_prefix(pixel_values, image_features)  # (B, P, D)
        if prefix.shape[0] != batch:
            raise ValueError(f"batch sizes differ: images {prefix.shape[0]}, text {batch}")
        prior = self.prior_state(priors, batch, need_weights=output_attentions)
        text = self.decoder.transformer.wte(input_ids)  # (B, T, D)
        embeds = torch.cat([prefix.to(text.dtype), text], dim=1)  # (B, P + T, D)
        # Right padding only (training batches): under causal attention no real token sees
        # a later pad, so the padding mask changes nothing but the outputs at padding
        # positions (ignored: labels -100). Without it SDPA keeps its causal fused kernels
        # (FlashAttention / cuDNN, and the bias kernels of cxrlib.model.attention). The
        # pads then take the next positions too: repeated position ids would make
        # transformers read packed sequences and build a block mask.
        decoder_mask = None if _right_padded(attention_mask) else attention_mask
        prefix_pos = torch.arange(self.num_patches, device=self.device).expand(batch, -1)
        position_ids = torch.cat([prefix_pos, self.text_positions(decoder_mask, batch, length)], 1)
        out = self.run_decoder(
            embeds, decoder_mask, position_ids, prior, output_attentions=output_attentions
        )
        hidden = out.last_hidden_state[:, self.num_patches :]  # (B, T, D)
        logits = self.decoder.lm_head(hidden)  # (B, T, V)
        loss = None
        if labels is not None:
            upcast = torch.promote_types(logits.dtype, torch.float32)
            loss = nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).to(upcast),
                labels[:, 1:].reshape(-1),
                ignore_index=-100,
            )
        attentions = tuple(out.attentions) if output_attentions else None
        return ReportModelOutput(logits=logits, loss=loss, attentions=attentions)

    # --- generation (cxrlib.model.generation) ------------------------------------------

    def generate_ids(self, *args, **kwargs) -> torch.Tensor:
        """Generated token ids (B, T_new): :func:`cxrlib.model.generation.generate_ids`."""
        return generation.generate_ids(self, *args, **kwargs)

    def generate(self, *args, **kwargs) -> list[str]:
        """Generated Findings as text, one string per image (arguments of :meth:`generate_ids`)."""
        ids = self.generate_ids(*args, **kwargs)
        return [self.tokenizer.decode(row) for row in ids.tolist()]


# --- builders ----------------------------------------------------------------------------


def _right_padded(mask: torch.Tensor | None) -> bool:
    """Whether every row of the (B, T) ``mask`` is ones then zeros (or None)."""
    if mask is None:
        return True
    lengths = mask.sum(-1, keepdim=True)
    positions = torch.arange(mask.shape[-1], device=mask.device)
    return bool(torch.equal(mask.bool(), positions < lengths))


def _with_patch_size(config: ModelConfig, encoder: nn.Module) -> ModelConfig:
    """A copy of ``config`` whose ``patch_size`` is the encoder's (a given one must agree)."""
    stride = encoder_stride(encoder, config.image_size)
    if config.patch_size is not None and config.patch_size != stride:
        raise CxrError(
            f"ModelConfig.patch_size={config.patch_size} but the encoder's patch size "
            f"(output stride) is {stride}"
        )
    return config.replace(patch_size=stride)


def _build_decoder(
    config: ModelConfig, tokenizer: ReportTokenizer, token: str | None
) -> GPT2LMHeadModel:
    impl = IMPLEMENTATIONS[config.attn_implementation]
    specials = {
        "bos_token_id": tokenizer.bos_id,
        "eos_token_id": tokenizer.eos_id,
        "pad_token_id": tokenizer.pad_id,
    }
    if isinstance(config.decoder, dict):
        fields = dict(config.decoder)
        fields["vocab_size"] = max(int(fields.get("vocab_size", 0)), len(tokenizer))
        fields["n_positions"] = max(int(fields.get("n_positions", 0)), config.num_positions)
        fields.update(specials)
        return GPT2LMHeadModel._from_config(GPT2Config(**fields), attn_implementation=impl)
    decoder = load_from_hub(
        "decoder",
        config.decoder,
        GPT2LMHeadModel.from_pretrained,
        token,
        attn_implementation=impl,
        dtype=torch.float32,
        use_safetensors=True,  # never unpickle a checkpoint
    )
    for name, value in specials.items():
        setattr(decoder.config, name, value)
    _extend_positions(decoder, config.num_positions)
    return decoder


def _extend_positions(decoder: GPT2LMHeadModel, rows: int) -> None:
    """Grow GPT-2's position table to ``rows`` by tiling it (row n_old + j <- row j)."""
    old = decoder.transformer.wpe.weight
    if old.shape[0] >= rows:
        return
    index = torch.arange(rows, device=old.device) % old.shape[0]
    wpe = nn.Embedding(rows, old.shape[1], device=old.device, dtype=old.dtype)
    with torch.no_grad():
        wpe.weight.copy_(old[index])
    decoder.transformer.wpe = wpe
    decoder.config.n_positions = rows
