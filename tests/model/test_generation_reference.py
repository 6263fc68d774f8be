"""Our greedy decoding and beam search give the token ids of transformers' ``generate``.

:class:`cxrlib.model.ReportModel` decodes with its own loops because the anatomical
prior has to reach every decoder layer at every step. In mode ``none`` there is no
prior, and the decoder is a plain GPT-2 over ``[image prefix ; text]``: the image enters
as P prefix embeddings (the bridge's output) before the text embeddings, with positions
0 .. P - 1 for the patches and P, P + 1, ... for the real text tokens. So a stock
``GPT2LMHeadModel`` with the same weights, given ``inputs_embeds = [prefix ;
wte(prompt)]`` and the attention mask ``[1 ... 1 ; prompt mask]`` (``generate`` derives
the positions from that mask: ``cumsum - 1``, the same numbers), must produce the same
tokens. ``generate`` then returns the new tokens only (no ``input_ids`` were given).

The settings that make ``generate`` equal to ours (see :func:`_reference`):

- ``early_stopping=False`` (transformers' default). Ours stops an image once k
  hypotheses are finished and the worst of them scores at least the best running score
  / (generated length) ** length_penalty; that is transformers' heuristic for
  ``False``. ``True`` would stop as soon as k hypotheses are finished, ``"never"``
  (with length_penalty > 0) would compare with ``max_new_tokens`` as the length.
- ``eos_token_id=None`` for ``stop_at_eos=False`` (EOS is then an ordinary token).
- ``repetition_penalty=1.0``: not compared. Through ``inputs_embeds`` transformers sees
  no prompt ids (ours also penalises the prompt), and in beam search it applies the
  penalty to log-probabilities, ours to the logits.
- Padding: transformers' beam search fills rows that ended early with ``pad_token_id or
  eos_token_id``; our PAD id is 0, so it fills them with EOS. :func:`_reference`
  rewrites everything after a row's first EOS to PAD, as ours returns it.
- transformers casts the logits to float32 before the argmax / log-softmax, ours keeps
  float64 (the models here are float64); no case below comes near a tie.

The random models of :mod:`tests.model` rarely emit EOS, so :func:`_models` raises the
EOS logit (a shift of the final layer norm's bias along the EOS embedding) until some
rows stop early and others run to ``max_new_tokens``;
:func:`test_the_cases_end_at_eos_and_at_max_new_tokens` checks that they do.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from transformers import GPT2LMHeadModel

from cxrlib.model import ReportModel
from tests.model import batch_inputs, one_thread, small_model  # noqa: F401 (autouse)

# model seed -> logit shift towards EOS, chosen so that in the cases below some rows
# stop at EOS and others run to max_new_tokens (see the module docstring)
EOS_BOOST = {0: 2.0, 1: 3.0, 2: 1.5}
SEEDS = tuple(EOS_BOOST)
MAX_NEW = 16


@functools.cache
def _models(seed: int, impl: str = "sdpa") -> tuple[ReportModel, GPT2LMHeadModel]:
    """A mode-``none`` ReportModel (EOS made likely) and a stock GPT-2 with its decoder."""
    model = small_model("none", impl, seed=seed)
    with torch.no_grad():
        eos = model.decoder.transformer.wte.weight[model.tokenizer.eos_id]
        model.decoder.transformer.ln_f.bias += EOS_BOOST[seed] * eos / eos.norm()
    plain = GPT2LMHeadModel._from_config(
        copy.deepcopy(model.decoder.config), attn_implementation=impl
    )
    plain = plain.double().eval()
    plain.load_state_dict(model.decoder.state_dict())
    return model, plain


def _reference(
    model: ReportModel,
    plain: GPT2LMHeadModel,
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int = MAX_NEW,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    stop_at_eos: bool = True,
    early_stopping: bool | str = False,
) -> torch.Tensor:
    """``plain.generate`` on ``model``'s image prefix + a left-padded prompt (default BOS),
    PAD after each row's first EOS; arguments as in :meth:`ReportModel.generate_ids`."""
    tok = model.tokenizer
    with torch.no_grad():
        prefix = model.embed_prefix(pixel_values)  # (B, P, D)
        batch, patches = prefix.shape[:2]
        if input_ids is None:
            input_ids = torch.full((batch, 1), tok.bos_id)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        embeds = torch.cat([prefix, plain.transformer.wte(input_ids)], dim=1)
        mask = torch.cat([attention_mask.new_ones(batch, patches), attention_mask], dim=1)
        ids = plain.generate(
            inputs_embeds=embeds,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            do_sample=False,
            length_penalty=length_penalty,
            early_stopping=early_stopping,
            repetition_penalty=1.0,
            eos_token_id=tok.eos_id if stop_at_eos else None,
            pad_token_id=tok.pad_id,
            bos_token_id=tok.bos_id,
        )
    if stop_at_eos:
        after_eos = (ids == tok.eos_id).long().cumsum(-1).roll(1, -1)
        after_eos[:, 0] = 0
        ids = ids.masked_fill(after_eos > 0, tok.pad_id)
    return ids


def _ours(model: ReportModel, pixel_values: torch.Tensor, **kwargs) -> torch.Tensor:
    kwargs.setdefault("max_new_tokens", MAX_NEW)
    return model.generate_ids(pixel_values=pixel_values, repetition_penalty=1.0, **kwargs)


@pytest.mark.parametrize("beams", [1, 2, 3, 5])
@pytest.mark.parametrize("seed", SEEDS)
def test_greedy_and_beam_search_match_generate(seed, beams):
    model, plain = _models(seed)
    pixels = batch_inputs(model, batch=4, seed=seed + 1)["pixel_values"]
    expected = _reference(model, plain, pixels, num_beams=beams)
    assert torch.equal(_ours(model, pixels, num_beams=beams), expected)


@pytest.mark.parametrize("length_penalty", [-1.0, 0.0, 0.5, 2.0])
@pytest.mark.parametrize("beams", [2, 4])
def test_length_penalty_matches_generate(beams, length_penalty):
    model, plain = _models(2)
    pixels = batch_inputs(model, batch=4, seed=4)["pixel_values"]
    expected = _reference(model, plain, pixels, num_beams=beams, length_penalty=length_penalty)
    ours = _ours(model, pixels, num_beams=beams, length_penalty=length_penalty)
    assert torch.equal(ours, expected)


@pytest.mark.parametrize("early_stopping", [True, "never"])
def test_other_early_stopping_settings_give_other_tokens(early_stopping):
    """Why the reference runs ``early_stopping=False``: with a positive length penalty
    transformers' other stopping rules pick other hypotheses than ours."""
    model, plain = _models(2)
    pixels = batch_inputs(model, batch=4, seed=4)["pixel_values"]
    kwargs = {"num_beams": 2, "length_penalty": 2.0}
    other = _reference(model, plain, pixels, early_stopping=early_stopping, **kwargs)
    assert not torch.equal(_ours(model, pixels, **kwargs), other)


@pytest.mark.parametrize("stop_at_eos", [True, False])
@pytest.mark.parametrize("max_new_tokens", [1, 5, 23])
@pytest.mark.parametrize("beams", [1, 3])
def test_max_new_tokens_and_eos_stopping_match_generate(beams, max_new_tokens, stop_at_eos):
    model, plain = _models(0)
    pixels = batch_inputs(model, batch=4, seed=1)["pixel_values"]
    kwargs = {"num_beams": beams, "max_new_tokens": max_new_tokens, "stop_at_eos": stop_at_eos}
    expected = _reference(model, plain, pixels, **kwargs)
    ours = _ours(model, pixels, **kwargs)
    assert torch.equal(ours, expected)
    if not stop_at_eos:
        assert ours.shape == (4, max_new_tokens)


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("beams", [1, 3])
def test_prompts_of_different_lengths_match_generate(beams, impl, side, use_cache):
    """A batch of prompts of 1, 2, 3, 6 and 2 tokens; ours padded on either side,
    ``generate`` always on the left (what it expects of a decoder-only model)."""
    model, plain = _models(2, impl)
    tok = model.tokenizer
    texts = ("", "No", "Lungs", "The heart", "The")
    prompts = [[tok.bos_id, *tok.encode(text)] for text in texts]
    width = max(len(p) for p in prompts)
    left = torch.full((len(prompts), width), tok.pad_id)
    left_mask = torch.zeros_like(left)
    ours_ids, ours_mask = left.clone(), left_mask.clone()
    for i, prompt in enumerate(prompts):
        left[i, width - len(prompt) :], left_mask[i, width - len(prompt) :] = (
            torch.tensor(prompt),
            1,
        )
        cols = slice(0, len(prompt)) if side == "right" else slice(width - len(prompt), None)
        ours_ids[i, cols], ours_mask[i, cols] = torch.tensor(prompt), 1
    pixels = batch_inputs(model, batch=len(prompts), seed=5)["pixel_values"]
    expected = _reference(model, plain, pixels, left, left_mask, num_beams=beams)
    ours = _ours(
        model,
        pixels,
        input_ids=ours_ids,
        attention_mask=ours_mask,
        num_beams=beams,
        use_cache=use_cache,
    )
    assert torch.equal(ours, expected)


def test_the_cases_end_at_eos_and_at_max_new_tokens():
    """The comparisons above cover rows that stop at EOS and rows that do not."""
    for seed in SEEDS:
        model, _ = _models(seed)
        pixels = batch_inputs(model, batch=4, seed=seed + 1)["pixel_values"]
        for beams in (1, 3):
            ids = _ours(model, pixels, num_beams=beams)
            stopped = (ids == model.tokenizer.eos_id).any(-1)
            assert stopped.any() and not stopped.all(), (seed, beams)
