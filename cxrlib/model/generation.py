"""Generation for :class:`~cxrlib.model.report_model.ReportModel`: greedy and beam search,
with or without the KV cache, kept apart from the model as transformers keeps
``generate`` apart from modelling.

Every step runs the model's decoder with the same anatomical prior as
:meth:`ReportModel.forward <cxrlib.model.report_model.ReportModel.forward>`; the model
calls :func:`generate_ids` from its ``generate_ids`` and ``generate`` methods.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import DynamicCache

from cxrlib.model.attention import AnatomicalPrior


def apply_repetition_penalty(
    logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, penalty: float
) -> torch.Tensor:
    """CTRL's repetition penalty on the logits of tokens already in each sequence.

    Parameters
    ----------
    logits : (N, V) float
    tokens : (N, T) int64
        The sequence so far (prompt and generated tokens).
    mask : (N, T) int64
        1 where ``tokens`` holds a token, 0 at padding (not penalised).
    penalty : float
        > 1 discourages repeats: a seen token's positive logit is divided by it, a
        negative one multiplied.
    """
    if penalty == 1.0:
        return logits
    counts = torch.zeros(logits.shape, dtype=torch.long, device=logits.device)
    seen = counts.scatter_add_(1, tokens, mask.long()) > 0  # (N, V)
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


@torch.no_grad()
def generate_ids(
    model: nn.Module,
    pixel_values: torch.Tensor | None = None,
    image_features: torch.Tensor | None = None,
    priors: torch.Tensor | None = None,
    max_new_tokens: int | None = None,
    num_beams: int | None = None,
    use_cache: bool = True,
    repetition_penalty: float | None = None,
    length_penalty: float | None = None,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    stop_at_eos: bool = True,
) -> torch.Tensor:
    """Generate Findings token ids after the image prefix and a prompt (default BOS).

    Parameters
    ----------
    model : ReportModel
    pixel_values, image_features, priors
        As in ``ReportModel.forward``; the prior is applied in every layer at every step.
    max_new_tokens, num_beams, repetition_penalty, length_penalty
        Defaults from the model's config. ``num_beams == 1`` is greedy.
    use_cache : bool
        KV cache (same tokens as full recomputation, faster).
    input_ids, attention_mask : (B, T0), optional
        A prompt, left- or right-padded (mask 0 at padding). Default: BOS.
    stop_at_eos : bool
        Stop a sequence at EOS (False: always ``max_new_tokens``, for benchmarks).

    Returns
    -------
    (B, T_new) int64: generated ids (EOS included), padded with the PAD id.
    """
    cfg = model.config
    max_new = cfg.max_new_tokens if max_new_tokens is None else int(max_new_tokens)
    beams = cfg.num_beams if num_beams is None else int(num_beams)
    penalty = cfg.repetition_penalty if repetition_penalty is None else repetition_penalty
    lp = cfg.length_penalty if length_penalty is None else length_penalty
    if max_new <= 0:
        raise ValueError(f"max_new_tokens: expected > 0 (got {max_new})")
    if beams <= 0:
        raise ValueError(f"num_beams: expected > 0 (got {beams})")
    prefix = model.embed_prefix(pixel_values, image_features)  # (B, P, D)
    batch = prefix.shape[0]
    prior = model.prior_state(priors, batch)
    tokens, text_mask = _prompt(model, input_ids, attention_mask, batch)
    if tokens.shape[1] + max_new > cfg.max_text_tokens:
        raise ValueError(
            f"max_new_tokens: prompt {tokens.shape[1]} + {max_new} new tokens exceed "
            f"max_text_tokens={cfg.max_text_tokens}"
        )
    padded = not bool(text_mask.all())
    args = (prefix, prior, tokens, text_mask, padded, max_new, penalty, use_cache, stop_at_eos)
    if beams == 1:
        return _greedy(model, *args)
    return _beam_search(model, *args, beams, lp)


def _prompt(
    model: nn.Module,
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    batch: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompt tokens and mask (B, T0) on the model's device; None: BOS."""
    if input_ids is None:
        ids = torch.full((batch, 1), model.tokenizer.bos_id, dtype=torch.long)
        return ids.to(model.device), torch.ones_like(ids, device=model.device)
    if input_ids.ndim != 2 or input_ids.shape[0] != batch:
        raise ValueError(f"input_ids: expected ({batch}, T), got {tuple(input_ids.shape)}")
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    if not bool(mask.any(-1).all()):
        raise ValueError("attention_mask: every prompt needs at least one token")
    return input_ids.to(model.device), mask.long().to(model.device)


def _next_logits(
    model: nn.Module,
    prefix: torch.Tensor,
    tokens: torch.Tensor,
    text_mask: torch.Tensor,
    padded: bool,
    prior: AnatomicalPrior,
    cache: DynamicCache | None,
    step: int,
) -> torch.Tensor:
    """(N, V) logits for the token after each row of ``tokens`` (N, T).

    Without a cache (or at step 0) the whole prefix + text is run; with a cache only
    the last token, whose query still meets every cached patch key with its bias.
    """
    n, length = tokens.shape
    wte, p = model.decoder.transformer.wte, model.num_patches
    text_pos = model.text_positions(text_mask, n, length)  # (N, T)
    mask = text_mask if padded else None
    if cache is None or step == 0:
        text = wte(tokens)  # (N, T, D)
        embeds = torch.cat([prefix.to(text.dtype), text], dim=1)  # (N, P + T, D)
        prefix_pos = torch.arange(p, device=model.device).expand(n, -1)
        position_ids = torch.cat([prefix_pos, text_pos], dim=1)  # (N, P + T)
        hidden = model.run_decoder(embeds, mask, position_ids, prior, cache).last_hidden_state
        order = torch.arange(length, device=model.device)
        last = (text_mask * (order + 1)).argmax(-1)  # (N,) last real text token
        h = hidden[torch.arange(n, device=model.device), p + last]  # (N, D)
    else:
        embeds = wte(tokens[:, -1:])  # (N, 1, D)
        hidden = model.run_decoder(embeds, mask, text_pos[:, -1:], prior, cache)
        h = hidden.last_hidden_state[:, -1]  # (N, D)
    logits = model.decoder.lm_head(h)  # (N, V)
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def _greedy(
    model: nn.Module,
    prefix: torch.Tensor,
    prior: AnatomicalPrior,
    tokens: torch.Tensor,
    text_mask: torch.Tensor,
    padded: bool,
    max_new: int,
    penalty: float,
    use_cache: bool,
    stop_at_eos: bool,
) -> torch.Tensor:
    """Greedy decoding of N = B rows; finished rows continue with PAD."""
    n = tokens.shape[0]
    pad, eos = model.tokenizer.pad_id, model.tokenizer.eos_id
    cache = DynamicCache(config=model.decoder.config) if use_cache else None
    finished = torch.zeros(n, dtype=torch.bool, device=model.device)
    out = []
    for step in range(max_new):
        logits = _next_logits(model, prefix, tokens, text_mask, padded, prior, cache, step)
        logits = apply_repetition_penalty(logits, tokens, text_mask, penalty)  # (N, V)
        nxt = logits.argmax(-1).masked_fill(finished, pad)  # (N,)
        out.append(nxt)
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        text_mask = torch.cat([text_mask, text_mask.new_ones(n, 1)], dim=1)
        if stop_at_eos:
            finished |= nxt == eos
            if bool(finished.all()):
                break
    return torch.stack(out, dim=1)


def _beam_search(
    model: nn.Module,
    prefix: torch.Tensor,
    prior: AnatomicalPrior,
    tokens: torch.Tensor,
    text_mask: torch.Tensor,
    padded: bool,
    max_new: int,
    penalty: float,
    use_cache: bool,
    stop_at_eos: bool,
    beams: int,
    length_penalty: float,
) -> torch.Tensor:
    """Beam search: each image keeps ``beams`` running hypotheses; a hypothesis that
    ends with EOS among the top ``beams`` candidates is finished with score
    sum(log p) / length ** length_penalty; an image is done when ``beams``
    hypotheses are finished and no running one can beat the worst of them
    (:func:`_select_beams`). The result is the best hypothesis of each image
    (:func:`_best_hypotheses`)."""
    batch, k, device = prefix.shape[0], beams, model.device
    rows = torch.arange(batch, device=device).repeat_interleave(k)  # (N,)
    # All k beams of an image share its prefix and prior, and a beam only ever
    # continues a beam of its own image: expanded once here, never reordered.
    prefix, tokens, text_mask = prefix[rows], tokens[rows], text_mask[rows]
    prior = prior.select(rows)
    n = batch * k
    cache = DynamicCache(config=model.decoder.config) if use_cache else None
    scores = torch.zeros(batch, k, dtype=torch.float64, device=device)
    scores[:, 1:] = -torch.inf  # the first step expands beam 0 only
    generated = tokens.new_empty(n, 0)
    finished: list[list[tuple[float, torch.Tensor]]] = [[] for _ in range(batch)]
    done = [False] * batch
    special = (model.tokenizer.eos_id, model.tokenizer.pad_id)
    for step in range(max_new):
        logits = _next_logits(model, prefix, tokens, text_mask, padded, prior, cache, step)
        logits = apply_repetition_penalty(logits, tokens, text_mask, penalty)
        logp = torch.log_softmax(logits.double(), dim=-1)  # (N, V)
        candidates = (scores.view(n, 1) + logp).view(batch, -1)  # (B, k * V)
        scores, src, tok = _select_beams(
            candidates, scores, generated, finished, done, stop_at_eos, length_penalty, special
        )
        if all(done):
            break
        beam_idx = (torch.arange(batch, device=device)[:, None] * k + src).view(n)
        generated = torch.cat([generated[beam_idx], tok.view(n, 1)], dim=1)
        tokens = torch.cat([tokens[beam_idx], tok.view(n, 1)], dim=1)
        text_mask = torch.cat([text_mask[beam_idx], text_mask.new_ones(n, 1)], dim=1)
        if cache is not None:
            cache.reorder_cache(beam_idx)
    return _best_hypotheses(finished, done, scores, generated, length_penalty, special[1])


def _select_beams(
    candidates: torch.Tensor,
    scores: torch.Tensor,
    generated: torch.Tensor,
    finished: list[list[tuple[float, torch.Tensor]]],
    done: list[bool],
    stop_at_eos: bool,
    length_penalty: float,
    special: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step of beam search over ``candidates`` (B, k * V): running score + log p.

    For each image not yet done, of its 2k best candidates an EOS among the first k
    finishes its hypothesis (``finished[b]`` keeps the k best, best first) and the k
    best others continue. ``done[b]`` becomes True once k hypotheses are finished
    and the worst of them scores at least the best running score / (generated
    length) ** length_penalty: transformers' ``early_stopping=False``. ``finished``
    and ``done`` are updated in place; an image already done keeps its ``scores``
    (B, k) and continues every beam with PAD. ``special`` is (EOS id, PAD id).

    Returns
    -------
    next_scores : (B, k) float64, next_src : (B, k) int64 the beam each one extends,
    next_tok : (B, k) int64 the token it appends.
    """
    batch, k = scores.shape
    eos, pad = special
    device = candidates.device
    vocab = candidates.shape[1] // k
    length = generated.shape[1] + 1  # of every hypothesis after this step
    top, idx = candidates.topk(2 * k, dim=1)  # (B, 2k) best first
    top_l, src_l, tok_l = top.tolist(), (idx // vocab).tolist(), (idx % vocab).tolist()
    next_scores = scores.clone()
    next_src = torch.arange(k, device=device).repeat(batch, 1)  # (B, k)
    next_tok = torch.full((batch, k), pad, dtype=torch.long, device=device)
    for b in range(batch):
        if done[b]:
            continue
        j = 0
        for r in range(2 * k):
            s, src, tok = top_l[b][r], src_l[b][r], tok_l[b][r]
            if stop_at_eos and tok == eos:
                if r < k:
                    seq = torch.cat([generated[b * k + src], generated.new_tensor([eos])])
                    finished[b].append((s / length**length_penalty, seq))
                continue
            next_scores[b, j], next_src[b, j], next_tok[b, j] = s, src, tok
            j += 1
            if j == k:
                break
        finished[b] = sorted(finished[b], key=lambda h: -h[0])[:k]
        if len(finished[b]) == k:
            best_running = next_scores[b, 0].item() / length**length_penalty
            done[b] = finished[b][-1][0] >= best_running
    return next_scores, next_src, next_tok


def _best_hypotheses(
    finished: list[list[tuple[float, torch.Tensor]]],
    done: list[bool],
    scores: torch.Tensor,
    generated: torch.Tensor,
    length_penalty: float,
    pad: int,
) -> torch.Tensor:
    """(B, T_new) the best hypothesis of each image, padded with ``pad``.

    An image not done when the search ended (``max_new_tokens`` reached) also
    competes its k running beams, ``generated`` (B * k, T) scored ``scores`` (B, k)
    / T ** length_penalty.
    """
    batch, k = scores.shape
    best = []
    for b in range(batch):
        hyps = list(finished[b])
        if not done[b]:
            length = generated.shape[1]
            hyps += [
                (scores[b, j].item() / max(length, 1) ** length_penalty, generated[b * k + j])
                for j in range(k)
            ]
        best.append(max(hyps, key=lambda h: h[0])[1])
    width = max(len(seq) for seq in best)
    out = torch.full((batch, width), pad, dtype=torch.long, device=generated.device)
    for b, seq in enumerate(best):
        out[b, : len(seq)] = seq
    return out
