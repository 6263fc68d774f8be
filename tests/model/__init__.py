"""Builders shared by the model tests: very small, seeded, float64 models.

A 2-block DINOv3 of width 32 (2 register tokens), a 2-layer GPT-2 of width 32, 64 px
images with patch 16 (16 patches), 24 text tokens. Weights are redrawn with a larger
spread than the library's initialisation so that random models give varied tokens and
clear logit differences; float64 keeps "equal" comparisons meaningful.
"""

from __future__ import annotations

import pytest
import torch

from cxrlib.base.vocabulary import MODES
from cxrlib.model import ModelConfig, ReportModel

__all__ = ["MODES"]  # the tests of this package import it from here

IMPLS = ("sdpa", "eager")

TEXTS = [
    "The heart size is normal. The lungs are clear.",
    "No pleural effusion or pneumothorax.",
    "Mild cardiomegaly. Small left pleural effusion.",
    "There is patchy opacity in the right lower lobe.",
    "Lungs are clear. No focal consolidation.",
    "Stable mediastinal contours. No acute process.",
]

ENCODER = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_register_tokens": 2,
}
DECODER = {"n_layer": 2, "n_head": 2, "n_embd": 32}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Run each model test module on one intra-op thread (restored after).

    These tensors are tiny: extra threads only add synchronisation, and on a busy
    machine (or under ``pytest -n 2``) oversubscribed threads slow the tests tenfold.
    Test modules import this fixture to activate it.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_config(mode: str = "soft", impl: str = "sdpa", **overrides) -> ModelConfig:
    """The test-sized config (16 patches, 2 decoder layers)."""
    fields = {
        "encoder": dict(ENCODER),
        "decoder": dict(DECODER),
        "image_size": 64,
        "patch_size": 16,
        "max_text_tokens": 24,
        "tokenizer_vocab_size": 300,
        "mode": mode,
        "prior_strength": 2.0,
        "attn_implementation": impl,
        "max_new_tokens": 8,
        "repetition_penalty": 1.0,
    }
    fields.update(overrides)
    return ModelConfig(**fields)


def small_model(
    mode: str = "soft", impl: str = "sdpa", seed: int = 0, spread: float = 0.4, **overrides
) -> ReportModel:
    """A seeded float64 model of :func:`small_config`, in eval mode."""
    torch.manual_seed(seed)
    model = ReportModel.from_config(small_config(mode, impl, **overrides), texts=TEXTS)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2 and not name.startswith("encoder."):
                p.normal_(0.0, spread)
    return model.double().eval()


def same_weights(model: ReportModel, **changes) -> ReportModel:
    """A model with ``model``'s weights and tokenizer and a config with ``changes``."""
    torch.manual_seed(0)
    other = ReportModel.from_config(model.config.replace(**changes), tokenizer=model.tokenizer)
    other = other.double().eval()
    missing, unexpected = other.load_state_dict(model.state_dict(), strict=False)
    assert set(missing) <= {"prior_strength"} and set(unexpected) <= {"prior_strength"}
    return other


def batch_inputs(model: ReportModel, batch: int = 2, seed: int = 1) -> dict[str, torch.Tensor]:
    """Images and tokenized texts for ``batch`` images (float64)."""
    gen = torch.Generator().manual_seed(seed)
    size = model.config.image_size
    pixel_values = torch.randn(batch, 3, size, size, generator=gen, dtype=torch.float64)
    texts = [TEXTS[i % len(TEXTS)] for i in range(batch)]
    tokens = model.tokenizer.batch(texts, model.config.max_text_tokens)
    return {"pixel_values": pixel_values, **tokens}


def unpadded_inputs(model: ReportModel, length: int = 6) -> dict[str, torch.Tensor]:
    """:func:`batch_inputs` cut to ``length`` tokens, no attention mask: a causal pass
    without padding, where the fused bias kernels run."""
    inputs = batch_inputs(model)
    inputs["attention_mask"] = None
    inputs["input_ids"] = inputs["input_ids"][:, :length]
    inputs["labels"] = inputs["labels"][:, :length]
    return inputs


def random_priors(
    model: ReportModel, batch: int = 2, seed: int = 2, zero_fraction: float = 0.0
) -> torch.Tensor:
    """(B, L, P) priors in [0, 1]; about ``zero_fraction`` of the entries exactly 0."""
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, model.num_decoder_layers, model.num_patches)
    priors = torch.rand(shape, generator=gen, dtype=torch.float64)
    zero = torch.rand(shape, generator=gen) < zero_fraction
    return priors.masked_fill(zero, 0.0)
