"""Where each generated sentence looked: attention to the image patches, per layer group.

``sentence_attention(model, text, image_features=..., priors=...)`` re-reads a
(generated) Findings text teacher-forced, with every layer's attention weights
(``output_attentions``, computed term by term with the layer's anatomical bias), and
averages, for each sentence, the weights from its tokens to the P image patches over
the sentence's tokens, the heads and the layers of each group. The result is one
(grid x grid) map per sentence and layer group, each summing to the share of attention
the sentence gave the image (the rest went to text tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cxrlib.base.errors import CxrError
from cxrlib.data.sections import split_sentences


def layer_groups(num_layers: int) -> list[list[int]]:
    """Layers split into 2 groups (<= 4 layers) or 3 (early / middle / late)."""
    k = 2 if num_layers <= 4 else 3
    return [part.tolist() for part in np.array_split(np.arange(num_layers), k)]


def group_label(layers: list[int]) -> str:
    """A layer group's name, counting from 1: ``"layers 1-2"``, or ``"layer 3"``."""
    if len(layers) > 1:
        return f"layers {layers[0] + 1}-{layers[-1] + 1}"
    return f"layer {layers[0] + 1}"


@dataclass
class SentenceAttention:
    """Per sentence and layer group: a (grid, grid) map of mean attention to patches."""

    sentences: list[str]
    groups: list[list[int]]
    maps: np.ndarray  # (S, G, grid, grid)
    image_share: np.ndarray  # (S, G): total attention to image patches


@torch.no_grad()
def sentence_attention(
    model,
    text: str,
    *,
    image_features: torch.Tensor | None = None,
    pixel_values: torch.Tensor | None = None,
    priors: torch.Tensor | None = None,
    groups: list[list[int]] | None = None,
) -> SentenceAttention:
    """Attention of each sentence of ``text`` to the image patches (module doc).

    Parameters
    ----------
    model : ReportModel
    text : str
        A Findings text, e.g. what the model generated for this image.
    image_features : (1, P, E), optional
    pixel_values : (1, 3, S, S), optional
        Exactly one of the two.
    priors : (1, L, P), optional
    groups : list of list of int, optional
        Layer groups (default :func:`layer_groups`).
    """
    tok = model.tokenizer
    sentences = split_sentences(text)
    if not sentences:
        raise CxrError("no sentence to explain (empty text)")
    ids: list[int] = [tok.bos_id]
    spans = []
    for i, sentence in enumerate(sentences):
        piece = tok.encode(sentence if i == 0 else " " + sentence)
        spans.append((len(ids), len(ids) + len(piece)))
        ids += piece
    limit = model.config.max_text_tokens
    if len(ids) > limit:
        raise CxrError(f"text has {len(ids)} tokens, more than max_text_tokens={limit}")
    input_ids = torch.tensor([ids], device=model.device)
    was_training = model.training
    model.eval()
    out = model(
        image_features=image_features,
        pixel_values=pixel_values,
        input_ids=input_ids,
        priors=priors,
        output_attentions=True,
    )
    model.train(was_training)
    p = model.num_patches
    grid = int(round(p**0.5))
    # (L, H, T, P): from text positions to patch keys
    att = torch.stack([a[0, :, p:, :p] for a in out.attentions]).float()
    groups = groups or layer_groups(att.shape[0])
    maps = np.zeros((len(sentences), len(groups), grid, grid), dtype=np.float32)
    share = np.zeros((len(sentences), len(groups)), dtype=np.float32)
    for s, (start, end) in enumerate(spans):
        for g, layers in enumerate(groups):
            # a token attends at the position before it predicts; use positions that
            # read the sentence's tokens as input (start .. end - 1)
            m = att[layers][:, :, start:end].mean(dim=(0, 1, 2))  # (P,)
            maps[s, g] = m.reshape(grid, grid).cpu().numpy()
            share[s, g] = float(m.sum())
    return SentenceAttention(sentences, groups, maps, share)
