"""The CUDA bias kernels (cudnn for bfloat16, fold for float32) equal the mask path.

Skipped without a GPU (CI has none); run on one with
``pytest tests/model/test_attention_cuda.py``.
"""

import pytest
import torch

from cxrlib.model.attention import bias_kernel, set_bias_kernel
from tests.model import random_priors, same_weights, small_model, unpadded_inputs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def auto_kernel():
    previous = set_bias_kernel("auto")
    yield
    set_bias_kernel(previous)


def _cuda_model(mode):
    return small_model(mode, "sdpa").float().cuda()


def _inputs(model):
    inputs = unpadded_inputs(model)  # causal, no padding: the fused path
    inputs["input_ids"] = inputs["input_ids"].cuda()
    inputs["labels"] = inputs["labels"].cuda()
    inputs["pixel_values"] = inputs["pixel_values"].float().cuda()
    return inputs


def _run(model, inputs, priors, kernel, dtype):
    set_bias_kernel(kernel)
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        out = model(**inputs, priors=priors)
    out.loss.backward()
    grads = {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.logits.float().detach(), grads


def test_auto_picks_cudnn_for_half_and_fold_for_float32():
    cuda = torch.device("cuda")
    assert bias_kernel(cuda, torch.bfloat16) == "cudnn"
    assert bias_kernel(cuda, torch.float32) == "fold"
    assert bias_kernel(torch.device("cpu"), torch.bfloat16) == "mask"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("mode", ["soft", "strict"])
def test_auto_kernel_equals_the_mask_kernel(mode, dtype):
    model = _cuda_model(mode)
    inputs = _inputs(model)
    priors = random_priors(model, zero_fraction=0.4).float().cuda()
    priors[0, 1, :3] = 0.0  # strict: queries before layer 1's first kept patch (guard 2)
    priors[0, 1, 3] = 0.7
    logits, grads = _run(model, inputs, priors, "auto", dtype)
    expected, expected_grads = _run(model, inputs, priors, "mask", dtype)
    # the bias matters: dropping it (mode none) moves the logits far more than the kernel
    none, _ = _run(same_weights(model, mode="none").float().cuda(), inputs, priors, "mask", dtype)
    err, dropped = (logits - expected).abs().max(), (none - expected).abs().max()
    assert err < 0.05 * dropped, (err, dropped)
    if dtype == torch.float32:
        torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    for name, grad in expected_grads.items():
        scale = grad.abs().max().clamp(min=1e-6)
        assert (grads[name] - grad).abs().max() <= 0.05 * scale, name


def test_strict_ignores_patches_excluded_in_every_layer_on_cuda():
    model = _cuda_model("strict")
    inputs = _inputs(model)
    priors = random_priors(model, zero_fraction=0.0).float().cuda()
    excluded = torch.zeros(model.num_patches, dtype=torch.bool)
    excluded[5:11] = True
    priors[:, :, excluded] = 0.0
    features = torch.randn(2, model.num_patches, model.encoder_width).cuda()
    changed = features.clone()
    changed[:, excluded] += 3.0
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        a = model(image_features=features, input_ids=inputs["input_ids"], priors=priors).logits
        b = model(image_features=changed, input_ids=inputs["input_ids"], priors=priors).logits
    assert bias_kernel(a.device, torch.bfloat16) == "cudnn"
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["none", "soft", "strict"])
def test_cached_decoding_equals_uncached_on_cuda(mode):
    model = _cuda_model(mode)
    pixels = _inputs(model)["pixel_values"]
    priors = random_priors(model, zero_fraction=0.3).float().cuda()
    cached = model.generate_ids(pixel_values=pixels, priors=priors, use_cache=True)
    uncached = model.generate_ids(pixel_values=pixels, priors=priors, use_cache=False)
    assert torch.equal(cached, uncached)
