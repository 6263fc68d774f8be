"""Anatomical attention: the layer's prior applied inside every decoder layer's attention.

This file is the one place the mechanism lives. GPT-2 stays unmodified; two attention
functions are *registered* with transformers' ``AttentionInterface`` and chosen through
``attn_implementation``:

- ``"anatomical_sdpa"`` wraps the stock ``sdpa_attention_forward`` (PyTorch's fused
  ``scaled_dot_product_attention``), giving the layer's bias as its ``position_bias``;
- ``"anatomical_eager"`` computes ``softmax(q k^T * scale + mask + bias) v`` itself, the
  bias added in place to the patch-key columns of the logits.

Each function reads the layer's slice of an :class:`AnatomicalPrior` through
``module.layer_idx``. The prior object travels as a keyword argument of the decoder's
forward (transformers hands unknown keyword arguments down to the attention function),
so nothing is global and nothing rides on a mask argument a backend may drop: the
published code lost its bias because PyTorch SDPA was handed no mask at all. Both names
are also registered with ``AttentionMaskInterface`` (the stock sdpa / eager mask
builders), without which transformers builds no causal or padding mask for an unknown
attention name. Each call records its layer in ``AnatomicalPrior.applied``;
:class:`cxrlib.model.ReportModel` raises if any layer did not apply the prior.

The prior in a layer ``l`` depends on the key (which image patch) only, never on the
query, so it is stored once as a ``(L, B, 1, 1, P)`` bias and broadcast over heads and
queries; no ``(T x T)`` mask per layer is kept. During cached decoding the single new
query still sees every cached patch key, and the bias is added to those keys at every
step (the published code collapsed it to a constant after the first token).

Modes (``priors`` is ``(B, L, P)`` in [0, 1], P patches row-major over the grid):

- ``none``: no bias; the functions run the stock computation unchanged.
- ``soft``: logits towards patch ``p`` in layer ``l`` get ``strength[l] * prior[b, l, p]``
  added, for every query (strength 0 is exactly ``none``).
- ``strict``: patches with ``prior[b, l, p] == 0`` are excluded from attention in layer
  ``l`` for every query: their logits get the dtype's most negative value, so their
  softmax weights are exactly 0. Guards: (1) a layer whose prior is 0 on every patch
  of an image would exclude the whole image, so that layer is left unmasked for that
  image; (2) with the causal prefix, the queries of patches that come before the
  layer's first kept patch (raster order) see only excluded keys; they attend to
  nothing (their attention output is 0, their residual stream passes on unchanged).
  Text queries always see at least one kept key.

``priors=None`` means a uniform prior: no bias in any mode.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

ANATOMICAL_SDPA = "anatomical_sdpa"
ANATOMICAL_EAGER = "anatomical_eager"
# ModelConfig.attn_implementation -> the registered attention name
IMPLEMENTATIONS = {"sdpa": ANATOMICAL_SDPA, "eager": ANATOMICAL_EAGER}


@dataclass
class AnatomicalPrior:
    """The prior state of one forward pass, read by every layer through ``module.layer_idx``.

    Build it with :meth:`build`. At most one of ``bias`` (soft) and ``keep`` (strict) is
    set; neither means no bias (mode ``none`` or ``priors=None``).

    Attributes
    ----------
    num_patches : int
        P, the image prefix length; patch keys are key positions ``0 .. P-1``.
    bias : torch.Tensor or None
        (L, B, 1, 1, P) float: additive logit bias towards each patch key (soft).
    keep : torch.Tensor or None
        (L, B, 1, 1, P) bool: False where a patch is excluded (strict).
    first_kept : torch.Tensor or None
        (L, B) int64: index of the first kept patch per layer and image (strict).
    max_first_kept : int
        The largest of ``first_kept`` (0: no query is left without a kept key).
    need_weights : bool
        Return attention weights; the SDPA backend then computes them explicitly, since
        the fused kernel does not return them.
    applied : set of int
        Layers whose attention ran with this prior (a check, filled by the layers).
    """

    num_patches: int
    bias: torch.Tensor | None = None
    keep: torch.Tensor | None = None
    first_kept: torch.Tensor | None = None
    max_first_kept: int = 0
    need_weights: bool = False
    applied: set[int] = field(default_factory=set)
    _cast: dict[torch.dtype, torch.Tensor] = field(default_factory=dict, repr=False)

    @classmethod
    def build(
        cls,
        priors: torch.Tensor | None,
        mode: str,
        strength: float | torch.Tensor,
        num_patches: int,
        need_weights: bool = False,
    ) -> AnatomicalPrior:
        """The prior state for a batch.

        Parameters
        ----------
        priors : torch.Tensor or None
            (B, L, P) in [0, 1], or None (uniform: no bias).
        mode : {"none", "soft", "strict"}
        strength : float or torch.Tensor
            Soft mode: a number, or (L,) per-layer strengths (may require grad).
        num_patches : int
            P.
        need_weights : bool
            See the class attributes.
        """
        state = cls(num_patches=num_patches, need_weights=need_weights)
        if priors is None or mode == "none":
            return state
        priors_l = priors.transpose(0, 1)[:, :, None, None, :]  # (L, B, 1, 1, P)
        if mode == "soft":
            if isinstance(strength, torch.Tensor):
                strength = strength.to(priors.dtype).view(-1, 1, 1, 1, 1)  # (L, 1, 1, 1, 1)
            state.bias = strength * priors_l  # (L, B, 1, 1, P)
        elif mode == "strict":
            keep = priors_l > 0  # (L, B, 1, 1, P)
            # guard (1): a layer with nothing kept for an image is left unmasked
            keep = keep | ~keep.any(dim=-1, keepdim=True)
            state.keep = keep
            state.first_kept = keep[:, :, 0, 0, :].int().argmax(dim=-1)  # (L, B)
            state.max_first_kept = int(state.first_kept.max())
        else:
            raise ValueError(f"mode: expected none, soft or strict (got {mode!r})")
        return state

    @property
    def active(self) -> bool:
        """Whether any bias is applied."""
        return self.bias is not None or self.keep is not None

    def layer_bias(self, layer_idx: int, dtype: torch.dtype) -> torch.Tensor | None:
        """(B, 1, 1, P) additive bias of layer ``layer_idx`` in ``dtype``, or None."""
        if not self.active:
            return None
        if dtype not in self._cast:
            if self.bias is not None:
                self._cast[dtype] = self.bias.to(dtype)
            else:
                # strict: the most negative finite value, so exp() gives exactly 0 and
                # no row of only excluded keys turns into NaN
                zero = torch.zeros((), dtype=dtype, device=self.keep.device)
                self._cast[dtype] = torch.where(self.keep, zero, torch.finfo(dtype).min)
        return self._cast[dtype][layer_idx]

    def empty_queries(self, layer_idx: int, q_length: int, kv_length: int) -> torch.Tensor | None:
        """(B, q_length) bool: queries that see only excluded keys (strict guard 2), or None.

        The queries are the last ``q_length`` of ``kv_length`` positions; only image
        queries before the layer's first kept patch qualify.
        """
        if self.first_kept is None or kv_length - q_length >= self.max_first_kept:
            return None
        first = self.first_kept[layer_idx]  # (B,)
        positions = torch.arange(kv_length - q_length, kv_length, device=first.device)
        empty = positions[None, :] < first[:, None]  # (B, q)
        return empty

    def select(self, index: torch.Tensor) -> AnatomicalPrior:
        """The state for batch rows ``index`` (beam expansion and reordering)."""
        return AnatomicalPrior(
            num_patches=self.num_patches,
            bias=None if self.bias is None else self.bias.index_select(1, index),
            keep=None if self.keep is None else self.keep.index_select(1, index),
            first_kept=None if self.first_kept is None else self.first_kept.index_select(1, index),
            max_first_kept=self.max_first_kept,
            need_weights=self.need_weights,
        )

    def key_bias(self, layer_idx: int, kv_length: int, dtype: torch.dtype) -> torch.Tensor | None:
        """(B, 1, 1, kv_length): the layer's patch bias followed by zeros for text keys."""
        bias = self.layer_bias(layer_idx, dtype)  # (B, 1, 1, P)
        if bias is None:
            return None
        return nn.functional.pad(bias, (0, kv_length - self.num_patches))


def _prior_of(kwargs: dict) -> AnatomicalPrior:
    prior = kwargs.pop("anatomical_prior", None)
    if not isinstance(prior, AnatomicalPrior):
        raise RuntimeError(
            "anatomical attention called without an AnatomicalPrior: call the decoder "
            "through ReportModel (or pass anatomical_prior=...)"
        )
    return prior


def explicit_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    prior: AnatomicalPrior,
    scaling: float | None = None,
    dropout: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention computed term by term, with the layer's bias added to the patch keys.

    Parameters
    ----------
    query : (B, nh, Tq, hs); key, value : (B, nh, Tk, hs)
        The last Tq of Tk positions are the queries (a KV cache holds the rest).
    attention_mask : torch.Tensor or None
        (B, 1, Tq, Tk) additive float or boolean (True = attend) mask, or None (causal).

    Returns
    -------
    output : (B, Tq, nh, hs)
    weights : (B, nh, Tq, Tk)
    """
    layer = module.layer_idx
    q_len, kv_len, num_patches = query.shape[-2], key.shape[-2], prior.num_patches
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    att = torch.matmul(query, key.transpose(-1, -2)) * scaling  # (B, nh, Tq, Tk)
    lowest = torch.finfo(att.dtype).min
    if attention_mask is None:
        if q_len > 1:  # causal, the queries being the last q_len positions
            causal = torch.ones(q_len, kv_len, dtype=torch.bool, device=att.device)
            att = att.masked_fill(~causal.tril(kv_len - q_len), lowest)
    elif attention_mask.dtype == torch.bool:
        att = att.masked_fill(~attention_mask, lowest)
    else:
        att = att + attention_mask
    bias = prior.layer_bias(layer, att.dtype)  # (B, 1, 1, P)
    if bias is not None:
        att[..., :num_patches] += bias  # broadcast over heads and queries
    att = torch.softmax(att, dim=-1)
    empty = prior.empty_queries(layer, q_len, kv_len)  # (B, Tq)
    if empty is not None:
        att = att.masked_fill(empty[:, None, :, None], 0.0)
    att = att.to(value.dtype)
    att = nn.functional.dropout(att, p=dropout, training=module.training)
    out = torch.matmul(att, value)  # (B, nh, Tq, hs)
    return out.transpose(1, 2), att  # (B, Tq, nh, hs)


def anatomical_eager_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Registered as ``"anatomical_eager"``: :func:`explicit_attention` for every layer.

    Same arguments and returns as transformers' eager attention, plus the keyword
    ``anatomical_prior`` (an :class:`AnatomicalPrior`).
    """
    prior = _prior_of(kwargs)
    prior.applied.add(module.layer_idx)
    return explicit_attention(module, query, key, value, attention_mask, prior, scaling, dropout)


def anatomical_sdpa_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Registered as ``"anatomical_sdpa"``: the stock SDPA with the layer's bias.

    The (B, 1, 1, P) bias, padded with zeros over the text keys, is SDPA's additive
    ``position_bias``; transformers combines it with the causal / padding mask into the
    one float mask the kernel takes. In mode ``none`` the stock call runs unchanged
    (``is_causal``, no mask). With ``need_weights`` the layer runs
    :func:`explicit_attention` instead (the fused kernel returns no weights).
    """
    prior = _prior_of(kwargs)
    prior.applied.add(module.layer_idx)
    if prior.need_weights:
        return explicit_attention(
            module, query, key, value, attention_mask, prior, scaling, dropout
        )
    position_bias = prior.key_bias(module.layer_idx, key.shape[-2], query.dtype)  # (B,1,1,Tk)
    out, _ = sdpa_attention_forward(
        module,
        query,
        key,
        value,
        attention_mask,
        dropout=dropout,
        scaling=scaling,
        position_bias=position_bias,
        **kwargs,
    )  # (B, Tq, nh, hs)
    empty = prior.empty_queries(module.layer_idx, query.shape[-2], key.shape[-2])  # (B, Tq)
    if empty is not None:
        out = out.masked_fill(empty[:, :, None, None], 0.0)
    return out, None


AttentionInterface.register(ANATOMICAL_SDPA, anatomical_sdpa_attention)
AttentionInterface.register(ANATOMICAL_EAGER, anatomical_eager_attention)
AttentionMaskInterface.register(ANATOMICAL_SDPA, sdpa_mask)
AttentionMaskInterface.register(ANATOMICAL_EAGER, eager_mask)
