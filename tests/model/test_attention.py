"""The anatomical attention provably acts inside every layer, on both backends.

Every test runs with the SDPA backend (PyTorch's fused kernel, where the published code
silently lost its bias) and the eager backend.
"""

import pytest
import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

import cxrlib.model.attention as attention
from cxrlib.model.attention import (
    ANATOMICAL_EAGER,
    ANATOMICAL_SDPA,
    AnatomicalPrior,
    bias_kernel,
    fused_biased_attention,
    set_bias_kernel,
)
from tests.model import (  # noqa: F401 (one_thread: an autouse fixture)
    IMPLS,
    batch_inputs,
    one_thread,
    random_priors,
    same_weights,
    small_model,
    unpadded_inputs,
)
from tests.numerics import assert_rounding_close, rounding_close


def _logits(model, inputs, priors, **kwargs):
    with torch.no_grad():
        return model(
            pixel_values=inputs["pixel_values"],
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            priors=priors,
            **kwargs,
        )


def test_functions_are_registered_and_used():
    assert AttentionInterface._global_mapping[ANATOMICAL_SDPA].__name__.startswith("anatomical")
    assert AttentionInterface._global_mapping[ANATOMICAL_EAGER].__name__.startswith("anatomical")
    # without a mask builder for the name, transformers would build no causal mask at all
    assert ANATOMICAL_SDPA in AttentionMaskInterface._global_mapping
    assert ANATOMICAL_EAGER in AttentionMaskInterface._global_mapping
    for impl, name in (("sdpa", ANATOMICAL_SDPA), ("eager", ANATOMICAL_EAGER)):
        model = small_model(impl=impl)
        assert model.decoder.config._attn_implementation == name


@pytest.mark.parametrize("impl", IMPLS)
def test_soft_with_strength_zero_equals_none(impl):
    """A zero bias is a no-op; it may still route through another kernel (a masked one)
    whose sums run in another order, so equality is up to float64 rounding."""
    none = small_model("none", impl)
    soft0 = same_weights(none, mode="soft", prior_strength=0.0)
    inputs = batch_inputs(none)
    priors = random_priors(none, zero_fraction=0.3)
    expected = _logits(none, inputs, priors).logits
    assert_rounding_close(_logits(soft0, inputs, priors).logits, expected)


@pytest.mark.parametrize("impl", IMPLS)
def test_priors_change_text_logits_in_soft_mode_only(impl):
    soft = small_model("soft", impl)
    none = same_weights(soft, mode="none")
    inputs = batch_inputs(soft)
    a, b = random_priors(soft, seed=3), random_priors(soft, seed=4)
    assert not torch.allclose(_logits(soft, inputs, a).logits, _logits(soft, inputs, b).logits)
    # exact: mode none never reads the priors, so both calls run the same operations
    assert torch.equal(_logits(none, inputs, a).logits, _logits(none, inputs, b).logits)
    # priors=None means uniform: no bias at all, the same path as mode none (exact)
    assert torch.equal(_logits(soft, inputs, None).logits, _logits(none, inputs, None).logits)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", ["soft", "strict"])
def test_each_layer_applies_its_own_prior(impl, mode):
    model = small_model(mode, impl)
    inputs = batch_inputs(model)
    base = torch.zeros(2, model.num_decoder_layers, model.num_patches, dtype=torch.float64)
    if mode == "strict":
        base += 1.0
    reference = _logits(model, inputs, base).logits
    for layer in range(model.num_decoder_layers):
        priors = base.clone()
        priors[:, layer] = random_priors(model, zero_fraction=0.5)[:, layer]
        changed = _logits(model, inputs, priors).logits
        assert not torch.allclose(changed, reference), f"layer {layer} ignored its prior"


def _materialised_reference(model, inputs, prior_row):
    """Stock transformers eager GPT-2 with a full (B, 1, T, T) additive mask: the bias the
    anatomical attention must equal, for a prior shared by all layers."""
    cfg, patches = model.config, model.num_patches
    with torch.no_grad():
        prefix = model.embed_prefix(inputs["pixel_values"])
        text = model.decoder.transformer.wte(inputs["input_ids"])
        embeds = torch.cat([prefix, text], dim=1)
        batch, total = embeds.shape[:2]
        lowest = torch.finfo(embeds.dtype).min
        causal = torch.ones(total, total, dtype=torch.bool).tril()
        mask = torch.zeros(batch, 1, total, total, dtype=embeds.dtype)
        mask = mask.masked_fill(~causal, lowest)
        if cfg.mode == "soft":
            mask[..., :patches] += cfg.prior_strength * prior_row[:, None, None, :]
        else:
            mask[..., :patches] = mask[..., :patches].masked_fill(
                (prior_row == 0)[:, None, None, :], lowest
            )
        model.decoder.set_attn_implementation("eager")  # the stock one, not ours
        try:
            hidden = model.decoder.transformer(inputs_embeds=embeds, attention_mask=mask)
        finally:
            model.set_attn_implementation(cfg.attn_implementation)
        return model.decoder.lm_head(hidden.last_hidden_state[:, patches:])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", ["soft", "strict"])
def test_bias_equals_a_materialised_mask(impl, mode):
    model = small_model(mode, impl)
    inputs = batch_inputs(model)
    inputs["attention_mask"] = None  # the reference has no padding
    inputs["input_ids"] = inputs["input_ids"][:, :6]
    row = random_priors(model, zero_fraction=0.4)[:, 0]  # (B, P), the same in every layer
    row[:, 0] = 0.5  # keep patch 0: every query has a kept key
    priors = row[:, None, :].expand(-1, model.num_decoder_layers, -1).contiguous()
    expected = _materialised_reference(model, inputs, row)
    actual = _logits(model, inputs, priors).logits
    assert_rounding_close(actual, expected)


@pytest.mark.parametrize("impl", IMPLS)
def test_strict_excluded_patches_get_exactly_zero_weight(impl):
    model = small_model("strict", impl)
    inputs = batch_inputs(model)
    priors = random_priors(model, zero_fraction=0.4)
    priors[0, 0, :3] = 0.0  # the first queries of layer 0 see only excluded keys (guard 2)
    priors[1, 1, 0] = 0.7
    out = _logits(model, inputs, priors, output_attentions=True)
    patches = model.num_patches
    total = patches + inputs["input_ids"].shape[1]
    assert len(out.attentions) == model.num_decoder_layers
    for layer, weights in enumerate(out.attentions):
        assert weights.shape == (2, model.decoder.config.n_head, total, total)
        assert torch.isfinite(weights).all()
        excluded = priors[:, layer] == 0  # (B, P)
        to_patches = weights[..., :patches]  # (B, nh, T, P)
        assert (to_patches.masked_select(excluded[:, None, None, :]) == 0).all()
        # queries before the first kept patch attend to nothing; all others sum to 1
        first = (~excluded).int().argmax(-1)  # (B,)
        sums = weights.sum(-1)  # (B, nh, T)
        for b in range(2):
            torch.testing.assert_close(
                sums[b, :, : first[b]], torch.zeros_like(sums[b, :, : first[b]])
            )
            torch.testing.assert_close(
                sums[b, :, first[b] :], torch.ones_like(sums[b, :, first[b] :])
            )


@pytest.mark.parametrize("impl", IMPLS)
def test_strict_text_logits_ignore_features_of_excluded_patches(impl):
    model = small_model("strict", impl)
    inputs = batch_inputs(model)
    with torch.no_grad():
        features = model.encode_images(inputs["pixel_values"])
    priors = random_priors(model, zero_fraction=0.0).clamp(min=0.05)
    hidden = torch.tensor([0, 1, 5, 6, 10])  # excluded in every layer (0, 1: empty rows)
    priors[:, :, hidden] = 0.0
    kept = 3

    def logits(feats, mode_model=model):
        with torch.no_grad():
            return mode_model(
                image_features=feats,
                input_ids=inputs["input_ids"],
                attention_mask=inputs["attention_mask"],
                priors=priors,
            ).logits

    # The excluded features reach the logits only as weight-0 terms of sums, which MKL
    # may add in another order on another CPU: equal up to float64 rounding, not bit for
    # bit (a 1e-10 relative tolerance, far below any leak; see tests/numerics.py).
    noise = torch.randn_like(features) * 5.0
    perturbed = features.clone()
    perturbed[:, hidden] += noise[:, hidden]
    assert_rounding_close(logits(perturbed), logits(features), "excluded patches leaked:")
    # ... and the tolerance is tight enough to catch a kept patch moved by 1e-6
    nudged = features.clone()
    nudged[:, kept] += 1e-6
    assert not rounding_close(logits(nudged), logits(features))
    touched = features.clone()
    touched[:, kept] += noise[:, kept]
    assert not torch.allclose(logits(touched), logits(features))
    soft = same_weights(model, mode="soft")
    assert not torch.allclose(logits(perturbed, soft), logits(features, soft))


@pytest.mark.parametrize("impl", IMPLS)
def test_strict_layer_with_nothing_kept_is_left_unmasked(impl):
    model = small_model("strict", impl)
    none = same_weights(model, mode="none")
    inputs = batch_inputs(model)
    zeros = torch.zeros(2, model.num_decoder_layers, model.num_patches, dtype=torch.float64)
    assert_rounding_close(_logits(model, inputs, zeros).logits, _logits(none, inputs, zeros).logits)
    priors = random_priors(model, zero_fraction=0.5)
    priors[:, 1] = 0.0  # layer 1: every patch 0 for both images
    weights = _logits(model, inputs, priors, output_attentions=True).attentions[1]
    text_rows = weights[:, :, model.num_patches :, : model.num_patches]  # text -> patches
    real = inputs["attention_mask"].bool()  # padding rows are unspecified
    assert (text_rows.transpose(1, 2)[real] > 0).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_backends_agree(impl):
    for mode in ("none", "soft", "strict"):
        model = small_model(mode, impl)
        other = "eager" if impl == "sdpa" else "sdpa"
        inputs = batch_inputs(model)
        priors = random_priors(model, zero_fraction=0.3)
        expected = _logits(model, inputs, priors).logits
        model.set_attn_implementation(other)
        assert_rounding_close(_logits(model, inputs, priors).logits, expected)


@pytest.mark.parametrize("impl", IMPLS)
def test_learned_strength_receives_gradients(impl):
    model = small_model("soft", impl, learn_prior_strength=True)
    assert model.prior_strength.shape == (model.num_decoder_layers,)
    inputs = batch_inputs(model)
    out = model(**inputs, priors=random_priors(model))
    out.loss.backward()
    grad = model.prior_strength.grad
    assert grad is not None and torch.isfinite(grad).all() and (grad != 0).all()


def test_a_backend_that_drops_the_prior_is_an_error():
    model = small_model("soft", "sdpa")
    model.decoder.set_attn_implementation("sdpa")  # the stock function ignores the prior
    inputs = batch_inputs(model)
    with pytest.raises(RuntimeError, match="not applied"):
        _logits(model, inputs, random_priors(model))


def test_prior_is_stored_per_key_never_per_query_key_pair():
    priors = torch.rand(3, 4, 16)  # (B, L, P)
    soft = AnatomicalPrior.build(priors, "soft", 2.0, num_patches=16)
    assert soft.bias.shape == (4, 3, 1, 1, 16)
    torch.testing.assert_close(soft.bias[:, :, 0, 0], 2.0 * priors.transpose(0, 1))
    assert soft.key_bias(2, kv_length=40, dtype=torch.float32).shape == (3, 1, 1, 40)
    strict = AnatomicalPrior.build(priors.masked_fill(priors < 0.5, 0), "strict", 1.0, 16)
    assert strict.keep.shape == (4, 3, 1, 1, 16) and strict.bias is None
    bias = strict.layer_bias(0, torch.bfloat16)
    assert bias.dtype == torch.bfloat16 and torch.isfinite(bias).all()
    assert AnatomicalPrior.build(priors, "none", 1.0, 16).active is False
    assert AnatomicalPrior.build(None, "soft", 1.0, 16).active is False
    beams = soft.select(torch.tensor([0, 0, 2]))
    torch.testing.assert_close(beams.bias[:, 2], soft.bias[:, 2])


@pytest.fixture
def fold_kernel():
    """The fold bias kernel for one test (auto picks it on CUDA only)."""
    previous = set_bias_kernel("fold")
    yield
    set_bias_kernel(previous)


@pytest.mark.parametrize("mode", ["soft", "strict"])
def test_fold_kernel_equals_the_mask_kernel_forward_and_backward(mode, fold_kernel):
    model = small_model(mode, "sdpa", learn_prior_strength=mode == "soft")
    inputs = unpadded_inputs(model)
    priors = random_priors(model, zero_fraction=0.4)
    priors[0, 1, :3] = 0.0  # strict: layer 1's first kept patch is 3 for image 0 (guard 2)
    priors[0, 1, 3] = 0.7

    def run(kernel):
        set_bias_kernel(kernel)
        model.zero_grad(set_to_none=True)
        out = model(**inputs, priors=priors)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return out.logits.detach(), grads

    logits_fold, grads_fold = run("fold")
    logits_mask, grads_mask = run("mask")
    assert_rounding_close(logits_fold, logits_mask)
    assert grads_fold.keys() == grads_mask.keys() and grads_fold
    for name, grad in grads_mask.items():
        torch.testing.assert_close(grads_fold[name], grad, rtol=1e-9, atol=1e-10, msg=name)
    if mode == "soft":
        assert (grads_fold["prior_strength"] != 0).all()


def test_fold_kernel_runs_only_where_it_applies(fold_kernel, monkeypatch):
    """Left padding, a KV cache and mode none keep the stock path; the fold keeps
    is_causal (right padding drops its mask, see the next test)."""
    calls = []
    real = attention.fused_biased_attention
    model = small_model("soft", "sdpa")
    inputs = unpadded_inputs(model)
    inputs.pop("labels")
    monkeypatch.setattr(
        attention, "fused_biased_attention", lambda *a, **k: calls.append(a[0]) or real(*a, **k)
    )
    priors = random_priors(model)
    _logits(model, inputs, priors)
    assert calls == ["fold"] * model.num_decoder_layers
    calls.clear()
    _logits(model, batch_inputs(model), priors)  # right padding: no mask, fused
    assert calls == ["fold"] * model.num_decoder_layers
    calls.clear()
    left = batch_inputs(model)
    left["attention_mask"] = left["attention_mask"].flip(-1)  # left padding: the mask path
    _logits(model, left, priors)
    _logits(same_weights(model, mode="none"), inputs, priors)
    assert calls == []
    # cached decoding: prefill folds, the single-query steps do not, same tokens as mask
    tokens = model.generate_ids(pixel_values=batch_inputs(model)["pixel_values"], priors=priors)
    assert calls == ["fold"] * model.num_decoder_layers
    set_bias_kernel("mask")
    expected = model.generate_ids(pixel_values=batch_inputs(model)["pixel_values"], priors=priors)
    assert torch.equal(tokens, expected)


def test_bias_kernel_choice():
    cuda = torch.device("cuda")
    assert bias_kernel(torch.device("cpu"), torch.bfloat16) == "mask"
    assert bias_kernel(cuda, torch.float32) == "fold"
    assert bias_kernel(cuda, torch.bfloat16) == "cudnn"
    assert bias_kernel(cuda, torch.bfloat16, head_dim=100) == "fold"
    with pytest.raises(ValueError, match="bias kernel"):
        set_bias_kernel("flash")
    # cuDNN attention gives garbage, not an error, in float32: refused before the call
    q = torch.zeros(1, 1, 4, 8)
    prior = AnatomicalPrior.build(torch.rand(1, 1, 2), "soft", 1.0, num_patches=2)
    with pytest.raises(ValueError, match="bfloat16 or float16"):
        fused_biased_attention("cudnn", q, q, q, prior, 0, scaling=1.0)


@pytest.mark.parametrize("mode", ["none", "soft", "strict"])
def test_right_padded_batch_equals_each_row_alone_and_keeps_the_fused_path(mode, fold_kernel):
    """Training batches are right-padded: the decoder drops the padding mask (causal
    attention never lets a real token see a later pad), so the fused kernels run; every
    real position's logits equal the row's own unpadded forward, and so does the loss."""
    model = small_model(mode, "sdpa")
    inputs = batch_inputs(model, batch=3)
    mask = inputs["attention_mask"]
    assert (mask == 0).any() and attention.bias_kernel(torch.device("cpu")) == "fold"
    priors = random_priors(model, batch=3, zero_fraction=0.3)
    with torch.no_grad():
        out = model(**inputs, priors=priors)
    total, count = 0.0, 0
    for i in range(3):
        n = int(mask[i].sum())
        with torch.no_grad():
            alone = model(
                pixel_values=inputs["pixel_values"][i : i + 1],
                input_ids=inputs["input_ids"][i : i + 1, :n],
                labels=inputs["labels"][i : i + 1, :n],
                priors=priors[i : i + 1],
            )
        assert_rounding_close(out.logits[i, :n], alone.logits[0])
        total, count = total + float(alone.loss) * (n - 1), count + n - 1
    assert_rounding_close(out.loss.double(), torch.tensor(total / count, dtype=torch.float64))
    # left padding (generation prompts) keeps the mask: still equal at real positions
    left = torch.zeros_like(mask)
    left[:, -4:] = 1
    ids = inputs["input_ids"].clone()
    ids[:, -4:] = inputs["input_ids"][:, :4]
    padded = model(pixel_values=inputs["pixel_values"], input_ids=ids, attention_mask=left)
    for i in range(3):
        alone = model(pixel_values=inputs["pixel_values"][i : i + 1], input_ids=ids[i : i + 1, -4:])
        assert_rounding_close(padded.logits[i, -4:], alone.logits[0])
