"""Generation: greedy and beam search, KV cache == full recomputation, EOS, batching."""

import pytest
import torch

from cxrlib.model.generation import apply_repetition_penalty
from tests.model import (  # noqa: F401 (one_thread: an autouse fixture)
    IMPLS,
    MODES,
    batch_inputs,
    one_thread,
    random_priors,
    same_weights,
    small_model,
)


def _priors(model, batch=2):
    priors = random_priors(model, batch=batch, zero_fraction=0.4)
    priors[0, 0, :2] = 0.0  # strict: the first image queries of layer 0 attend to nothing
    return priors


@pytest.mark.parametrize("beams", [1, 3])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", MODES)
def test_cached_decoding_gives_the_same_tokens_as_recomputation(mode, impl, beams):
    model = small_model(mode, impl)
    pixels = batch_inputs(model)["pixel_values"]
    priors = _priors(model)
    kwargs = {"pixel_values": pixels, "priors": priors, "max_new_tokens": 10, "num_beams": beams}
    cached = model.generate_ids(use_cache=True, **kwargs)
    full = model.generate_ids(use_cache=False, **kwargs)
    assert torch.equal(cached, full)
    assert len(set(cached[0].tolist())) > 2  # a varied sequence, not one repeated token


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", ["soft", "strict"])
def test_every_cached_step_applies_the_prior(mode, impl):
    """Greedy tokens from the KV cache are the argmax of the teacher-forced logits (full
    prior on every key) at every step, and different priors give different tokens."""
    model = small_model(mode, impl)
    pixels = batch_inputs(model)["pixel_values"]
    priors = _priors(model)
    ids = model.generate_ids(
        pixel_values=pixels, priors=priors, max_new_tokens=10, stop_at_eos=False
    )
    bos = torch.full((2, 1), model.tokenizer.bos_id)
    with torch.no_grad():
        logits = model(
            pixel_values=pixels, input_ids=torch.cat([bos, ids], 1), priors=priors
        ).logits
    assert torch.equal(logits[:, :-1].argmax(-1), ids)
    other = random_priors(model, seed=9, zero_fraction=0.4)
    again = model.generate_ids(
        pixel_values=pixels, priors=other, max_new_tokens=10, stop_at_eos=False
    )
    assert not torch.equal(again, ids)


@pytest.mark.parametrize("impl", IMPLS)
def test_strict_generation_ignores_patches_excluded_everywhere(impl):
    model = small_model("strict", impl)
    with torch.no_grad():
        features = model.encode_images(batch_inputs(model)["pixel_values"])
    priors = random_priors(model).clamp(min=0.05)
    hidden = torch.tensor([0, 4, 9, 15])
    priors[:, :, hidden] = 0.0
    perturbed = features.clone()
    perturbed[:, hidden] += 10.0 * torch.randn_like(perturbed[:, hidden])
    for beams in (1, 2):
        ids = model.generate_ids(image_features=features, priors=priors, num_beams=beams)
        same = model.generate_ids(image_features=perturbed, priors=priors, num_beams=beams)
        assert torch.equal(ids, same)


@pytest.mark.parametrize("beams", [1, 3])
def test_batched_generation_equals_one_image_at_a_time(beams):
    model = small_model("soft", "sdpa")
    pixels = batch_inputs(model, batch=3)["pixel_values"]
    priors = _priors(model, batch=3)
    together = model.generate_ids(pixel_values=pixels, priors=priors, num_beams=beams)
    for i in range(3):
        alone = model.generate_ids(
            pixel_values=pixels[i : i + 1], priors=priors[i : i + 1], num_beams=beams
        )
        row = together[i]
        assert torch.equal(row[: alone.shape[1]], alone[0])
        assert (row[alone.shape[1] :] == model.tokenizer.pad_id).all()


def test_max_new_tokens():
    model = small_model("soft", "sdpa")
    pixels = batch_inputs(model, batch=3)["pixel_values"]
    ids = model.generate_ids(pixel_values=pixels, max_new_tokens=7, stop_at_eos=False)
    assert ids.shape == (3, 7)
    assert model.generate_ids(pixel_values=pixels, max_new_tokens=7).shape[1] <= 7


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_prompts_continue_like_unpadded_ones(side):
    model = small_model("soft", "eager")
    pixels = batch_inputs(model)["pixel_values"]
    priors = _priors(model)
    tok = model.tokenizer
    long = [tok.bos_id, *tok.encode("The heart")]
    short = [tok.bos_id, *tok.encode("No")]
    alone = model.generate_ids(
        pixel_values=pixels[1:], priors=priors[1:], input_ids=torch.tensor([short])
    )
    ids = torch.full((2, len(long)), tok.pad_id)
    mask = torch.zeros(2, len(long), dtype=torch.long)
    ids[0], mask[0] = torch.tensor(long), 1
    cols = slice(len(long) - len(short), None) if side == "left" else slice(0, len(short))
    ids[1, cols], mask[1, cols] = torch.tensor(short), 1
    both = model.generate_ids(
        pixel_values=pixels, priors=priors, input_ids=ids, attention_mask=mask
    )
    assert torch.equal(both[1, : alone.shape[1]], alone[0])
    for cache in (True, False):  # and the cache changes nothing with padding either
        assert torch.equal(
            both,
            model.generate_ids(
                pixel_values=pixels,
                priors=priors,
                input_ids=ids,
                attention_mask=mask,
                use_cache=cache,
            ),
        )


def test_the_model_learns_to_stop():
    torch.manual_seed(0)
    model = small_model("soft", "sdpa", spread=0.02).float()
    texts = ["No effusion.", "Mild cardiomegaly."]
    batch = model.tokenizer.batch(texts, model.config.max_text_tokens)
    pixels = torch.randn(2, 3, 64, 64)
    priors = torch.rand(2, model.num_decoder_layers, model.num_patches)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=3e-3)
    model.train()
    for _ in range(150):
        loss = model(pixel_values=pixels, priors=priors, **batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    ids = model.generate_ids(pixel_values=pixels, priors=priors, max_new_tokens=20)
    assert ids.shape[1] < 20  # both stopped at EOS
    eos, pad = model.tokenizer.eos_id, model.tokenizer.pad_id
    for row, text in zip(ids.tolist(), texts, strict=True):
        end = row.index(eos)
        assert end == len(model.tokenizer.encode(text))
        assert all(t == pad for t in row[end + 1 :])  # finished rows are padded
    assert model.generate(pixel_values=pixels, priors=priors, max_new_tokens=20) == texts
    beams = model.generate(pixel_values=pixels, priors=priors, max_new_tokens=20, num_beams=3)
    assert beams == texts


def test_repetition_penalty():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    tokens = torch.tensor([[0, 1, 3]])
    mask = torch.tensor([[1, 1, 0]])  # token 3 is padding: not penalised
    out = apply_repetition_penalty(logits, tokens, mask, 2.0)
    torch.testing.assert_close(out, torch.tensor([[1.0, -2.0, 0.5, 3.0]]))
    assert apply_repetition_penalty(logits, tokens, mask, 1.0) is logits
    model = small_model("soft", "sdpa")
    pixels = batch_inputs(model)["pixel_values"]
    plain = model.generate_ids(pixel_values=pixels, max_new_tokens=12, stop_at_eos=False)
    penalised = model.generate_ids(
        pixel_values=pixels, max_new_tokens=12, stop_at_eos=False, repetition_penalty=50.0
    )
    assert not torch.equal(plain, penalised)
    repeats = [len(r) - len(set(r)) for r in plain.tolist()]
    fewer = [len(r) - len(set(r)) for r in penalised.tolist()]
    assert sum(fewer) < sum(repeats)


def test_generate_returns_one_string_per_image():
    model = small_model("none", "sdpa")
    texts = model.generate(pixel_values=batch_inputs(model, batch=3)["pixel_values"])
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate_ids(pixel_values=batch_inputs(model)["pixel_values"], max_new_tokens=100)


def test_none_mode_generation_ignores_priors():
    model = small_model("none", "sdpa")
    soft = same_weights(model, mode="soft")
    pixels = batch_inputs(model)["pixel_values"]
    a, b = random_priors(model, seed=5), random_priors(model, seed=6)
    assert torch.equal(
        model.generate_ids(pixel_values=pixels, priors=a),
        model.generate_ids(pixel_values=pixels, priors=b),
    )
    assert not torch.equal(
        soft.generate_ids(pixel_values=pixels, priors=a, stop_at_eos=False),
        soft.generate_ids(pixel_values=pixels, priors=b, stop_at_eos=False),
    )
