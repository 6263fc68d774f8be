"""Anatomical attention: the layer's prior applied inside every decoder layer's attention.

This file is the one place the mechanism lives. GPT-2 stays unmodified; two attention
functions are *registered* with transformers' ``AttentionInterface`` and chosen through
``attn_implementation``:

- ``"anatomical_sdpa"`` wraps the stock ``sdpa_attention_forward`` (PyTorch's fused
  ``scaled_dot_product_attention``), giving the layer's bias as its ``position_bias``;
  in a causal pass without padding it keeps a causal fused kernel instead (the bias
  kernels ``fold`` and ``cudnn``, :data:`BIAS_KERNELS`), so the prior costs a few
  percent of a training step rather than a switch to a slower masked kernel;
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
    _cast: dict = field(default_factory=dict, repr=False)  # per dtype (and fold) casts

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

    def fold_channel(self, length: int, dtype: torch.dtype, scaling: float) -> torch.Tensor:
        """(L, B, 1, T, 1): every layer's key bias / ``scaling`` as one extra key channel.

        The "fold" kernel's key column (text keys 0); strict excludes with
        :data:`FOLD_EXCLUDED`. Built once per forward pass for all layers.
        """
        cache_key = ("fold", length, dtype, scaling)
        if cache_key not in self._cast:
            if self.bias is not None:
                bias = self.bias  # (L, B, 1, 1, P)
            else:
                zero = torch.zeros((), dtype=torch.float32, device=self.keep.device)
                bias = torch.where(self.keep, zero, FOLD_EXCLUDED)
            bias = nn.functional.pad(bias / scaling, (0, length - self.num_patches))
            self._cast[cache_key] = bias.to(dtype).transpose(-1, -2)  # (L, B, 1, T, 1)
        return self._cast[cache_key]

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


# How a causal layer without padding (training, prefill: where ``none`` runs SDPA with
# ``is_causal`` and no mask) adds the per-key bias; ``cxr bench model`` and
# ``benchmarks/bench_bias_kernels.py`` measure them:
# - "mask": transformers' position_bias, merged with the causal mask into one (B, 1, T, T)
#   float mask (any device and dtype);
# - "fold": the bias as one extra query/key channel (q' = [q, 1, 0..], k' = [k, bias/scale,
#   0..], v zero-padded, head dim rounded up to a multiple of 8), so SDPA keeps
#   ``is_causal`` and no mask (any device and dtype);
# - "cudnn": PyTorch's cuDNN attention called with its own causal flag and the
#   (B, 1, 1, T) bias broadcast over heads and queries as a view (CUDA, bfloat16/float16).
# "auto" picks by device and dtype; see :func:`bias_kernel`.
BIAS_KERNELS = ("auto", "mask", "fold", "cudnn")
_bias_kernel = "auto"
# the logit bias of an excluded key (strict) in the fold: exp(-1e4) is exactly 0 in
# float32, and bias/scale stays finite in bfloat16 and float16
FOLD_EXCLUDED = -1.0e4
_HALF = (torch.bfloat16, torch.float16)


def set_bias_kernel(name: str) -> str:
    """Choose the bias kernel (one of :data:`BIAS_KERNELS`); returns the previous one."""
    global _bias_kernel
    if name not in BIAS_KERNELS:
        raise ValueError(f"bias kernel: expected one of {', '.join(BIAS_KERNELS)} (got {name!r})")
    previous, _bias_kernel = _bias_kernel, name
    return previous


def bias_kernel(
    device: torch.device, dtype: torch.dtype = torch.float32, head_dim: int = 64
) -> str:
    """The bias kernel for queries on ``device`` in ``dtype``: the one set, or for "auto"

    - CUDA, bfloat16/float16, head dim a multiple of 8 up to 128: ``cudnn`` (H200, published
      sizes: training step 1.04x none against 1.12x for ``mask``);
    - CUDA otherwise: ``fold``;
    - elsewhere: ``mask`` (on CPU SDPA costs the same with a mask; 1.00-1.02x none).
    """
    if _bias_kernel != "auto":
        return _bias_kernel
    if device.type != "cuda":
        return "mask"
    cudnn = (
        dtype in _HALF
        and head_dim % 8 == 0
        and head_dim <= 128
        and torch.backends.cuda.cudnn_sdp_enabled()
    )
    return "cudnn" if cudnn else "fold"


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
    one float mask the kernel takes. In a causal pass without padding (no cache, no
    mask) the device's bias kernel runs instead when it is not ``mask``
    (:func:`bias_kernel`, :func:`fused_biased_attention`). In mode ``none`` the stock
    call runs unchanged (``is_causal``, no mask). With ``need_weights`` the layer runs
    :func:`explicit_attention` instead (the fused kernel returns no weights).
    """
    prior = _prior_of(kwargs)
    prior.applied.add(module.layer_idx)
    if prior.need_weights:
        return explicit_attention(
            module, query, key, value, attention_mask, prior, scaling, dropout
        )
    q_len, kv_len = query.shape[-2], key.shape[-2]
    kernel = bias_kernel(query.device, query.dtype, query.shape[-1])
    if (
        kernel != "mask"
        and prior.active
        and attention_mask is None
        and q_len == kv_len
        and q_len > 1
        and getattr(module, "is_causal", True)
    ):
        out = fused_biased_attention(
            kernel,
            query,
            key,
            value,
            prior,
            module.layer_idx,
            scaling=query.shape[-1] ** -0.5 if scaling is None else scaling,
            dropout=dropout if module.training else 0.0,
        )  # (B, nh, Tq, hs)
        out = out.transpose(1, 2)
    else:
        position_bias = prior.key_bias(module.layer_idx, kv_len, query.dtype)  # (B,1,1,Tk)
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
    empty = prior.empty_queries(module.layer_idx, q_len, kv_len)  # (B, Tq)
    if empty is not None:
        out = out.masked_fill(empty[:, :, None, None], 0.0)
    return out, None


def fused_biased_attention(
    kernel: str,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    prior: AnatomicalPrior,
    layer_idx: int,
    scaling: float,
    dropout: float = 0.0,
) -> torch.Tensor:
    """Causal attention with layer ``layer_idx``'s per-key bias, no (T x T) tensor built.

    ``query``, ``key``, ``value`` are (B, nh, T, hs) over the same T positions (no cache,
    no padding mask); ``kernel`` is ``fold`` or ``cudnn`` (see :data:`BIAS_KERNELS`).
    Returns (B, nh, T, hs). Queries that see only excluded keys (strict guard 2) come out
    as garbage here; the caller zeroes them as for the other paths.
    """
    batch, heads, length, head_dim = query.shape
    if kernel == "fold":
        extra = 8 - head_dim % 8  # at least one channel, head dim a multiple of 8
        channel = prior.fold_channel(length, key.dtype, scaling)[layer_idx]  # (B, 1, T, 1)
        channel = channel.expand(-1, heads, -1, -1)
        pad_k = key.new_zeros(()).expand(batch, heads, length, extra - 1)
        ones = query.new_ones(()).expand(batch, heads, length, 1)
        q = torch.cat([query, ones, pad_k], dim=-1)
        k = torch.cat([key, channel, pad_k], dim=-1)
        v = nn.functional.pad(value, (0, extra))
        out = nn.functional.scaled_dot_product_attention(
            q, k, v, dropout_p=dropout, is_causal=True, scale=scaling
        )
        return out[..., :head_dim]
    if kernel != "cudnn":
        raise ValueError(f"bias kernel: expected fold or cudnn (got {kernel!r})")
    if query.dtype not in _HALF:  # cuDNN attention returns garbage, not an error, for float32
        raise ValueError(f"bias kernel cudnn: needs bfloat16 or float16 (got {query.dtype})")
    bias = prior.key_bias(layer_idx, length, query.dtype)  # (B, 1, 1, T)
    aligned = -length % 16  # the kernel reads the bias in rows aligned to 16 elements
    if aligned:
        bias = nn.functional.pad(bias, (0, aligned))[..., :length]
    bias = bias.expand(batch, heads, length, length)  # a view: stride 0 over heads, queries
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value, bias))
    out = torch.ops.aten._scaled_dot_product_cudnn_attention(
        query, key, value, bias, grad, dropout, True, False, scale=scaling
    )
    return out[0]


AttentionInterface.register(ANATOMICAL_SDPA, anatomical_sdpa_attention)
AttentionInterface.register(ANATOMICAL_EAGER, anatomical_eager_attention)
AttentionMaskInterface.register(ANATOMICAL_SDPA, sdpa_mask)
AttentionMaskInterface.register(ANATOMICAL_EAGER, eager_mask)
