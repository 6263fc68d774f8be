"""The project's figure theme, figure saving, and the dataset-exploration figures.

Call :func:`set_theme` once (at the top of a notebook or script) and every figure of
the workbook looks the same: seaborn "ticks" style, the colour-blind-safe "colorblind"
palette, fonts sized for a thesis page (text width :data:`PAGE_WIDTH` inches). Save
with :func:`save_figure`: PNG at 300 dpi and PDF, byte-identical on a rerun.

Figure functions build a :class:`matplotlib.figure.Figure` directly (not through
``pyplot``), so they work with any backend, never pop up a window and never pile up
open figures. In Jupyter (after ``%matplotlib inline``, which registers the PNG
formatter) a returned figure shows once, when it is a cell's last expression.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from PIL import Image

from cxrlib.base.errors import CxrError
from cxrlib.base.images import load_image
from cxrlib.base.masks import load_mask
from cxrlib.data import explore
from cxrlib.data.manifest import Manifest, is_text_only, resolve
from cxrlib.model.explain import group_label

PAGE_WIDTH = 6.3
"""Text width of a thesis page in inches: the width of a full-width figure."""

DPI = 300
"""Resolution of saved PNGs."""

PALETTE = "colorblind"
"""The seaborn palette of every figure (Okabe-Ito-like, safe for colour blindness)."""

_FONT_RC = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "legend.title_fontsize": 8,
    "figure.titlesize": 11,
}

_THEME_RC = {
    **_FONT_RC,
    "figure.figsize": (PAGE_WIDTH, PAGE_WIDTH * 0.6),
    "figure.dpi": 100,
    "savefig.dpi": DPI,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.5,
    "legend.frameon": False,
    "image.cmap": "gray",
    "pdf.fonttype": 42,  # embed TrueType: text stays text in the PDF
    "ps.fonttype": 42,
    "svg.hashsalt": "cxrlib",
}

# Mask overlay colours, from the theme palette: (colour index, legend label).
_MASK_STYLE = {
    "left_lung": (0, "lung (patient's left)"),
    "right_lung": (1, "lung (patient's right)"),
    "lungs": (9, "lungs"),
    "heart": (2, "heart"),
}
_THUMBNAIL_SIDE = 512  # longest side of images drawn in a grid, px


def set_theme() -> None:
    """Apply the project's figure theme to matplotlib (global rcParams).

    Seaborn style "ticks" with a light grid, palette :data:`PALETTE`, fonts of 8-11 pt
    (readable at :data:`PAGE_WIDTH` inches), PNGs at :data:`DPI` dpi, TrueType fonts
    embedded in PDFs. Idempotent.
    """
    sns.set_theme(context="paper", style="ticks", palette=PALETTE, rc=_THEME_RC)


def colors(n: int | None = None) -> list[tuple[float, float, float]]:
    """The theme's colours as RGB tuples (10 when ``n`` is None)."""
    return sns.color_palette(PALETTE, n_colors=n or 10)


def save_figure(fig: Figure, folder: str | os.PathLike, name: str) -> list[Path]:
    """Write ``fig`` as ``folder/name.png`` (300 dpi) and ``folder/name.pdf``.

    Metadata that changes between runs (software version string in the PNG, creation
    date in the PDF) is left out, so saving the same figure again gives the same bytes.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        The figure.
    folder : path-like
        Output folder; created when missing.
    name : str
        File name without extension, e.g. ``"01_label_prevalence"``.

    Returns
    -------
    list of pathlib.Path
        The PNG and the PDF path, in that order.
    """
    if not name or Path(name).name != name or Path(name).suffix in (".png", ".pdf"):
        raise ValueError(f"name must be a bare file name without extension, got {name!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    png, pdf = folder / f"{name}.png", folder / f"{name}.pdf"
    # settle the constrained layout first (an outside legend moves on the first draws),
    # so that saving the same figure twice gives the same bytes
    for _ in range(2):
        fig.draw_without_rendering()
    fig.savefig(png, dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    fig.savefig(pdf, bbox_inches="tight", metadata={"CreationDate": None, "Producer": None})
    return [png, pdf]


def _new_figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def _empty(fig: Figure, message: str) -> Figure:
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)
    return fig


def plot_split_view_counts(counts: pd.DataFrame) -> Figure:
    """Grouped bars: images per split (x) and view (colour).

    Parameters
    ----------
    counts : pandas.DataFrame
        The table of :func:`cxrlib.data.explore.split_view_counts` (its ``"total"`` row
        and column are left out of the bars).

    Returns
    -------
    matplotlib.figure.Figure
    """
    table = counts.drop(index=explore.TOTAL, columns=explore.TOTAL, errors="ignore")
    fig = _new_figure(PAGE_WIDTH, PAGE_WIDTH * 0.45)
    if table.size == 0:
        return _empty(fig, "no images")
    ax = fig.add_subplot()
    views = list(table.columns)
    palette = colors(len(views))
    width = 0.8 / len(views)
    x = np.arange(len(table.index))
    for i, view in enumerate(views):
        bars = ax.bar(
            x + (i - (len(views) - 1) / 2) * width,
            table[view].to_numpy(),
            width=width,
            color=palette[i],
            label=str(view),
        )
        ax.bar_label(bars, fontsize=7, padding=1)
    ax.set_xticks(x, [str(s) for s in table.index])
    ax.set_xlabel("split")
    ax.set_ylabel("images")
    ax.margins(y=0.12)
    ax.grid(axis="x", visible=False)
    ax.legend(title="view", loc="upper right")
    return fig


def plot_label_prevalence(prev: pd.DataFrame) -> Figure:
    """Horizontal bars: share of studies positive or uncertain per observation and split.

    The full bar is positive + uncertain; its darker part is positive alone, so the
    lighter tip is the uncertain share.

    Parameters
    ----------
    prev : pandas.DataFrame
        The table of :func:`cxrlib.data.explore.label_prevalence`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    observations = list(dict.fromkeys(prev["observation"]))
    splits = list(dict.fromkeys(prev["split"]))
    fig = _new_figure(PAGE_WIDTH, max(2.5, 0.12 * len(observations) * max(len(splits), 2) + 0.8))
    if not observations or not splits:
        return _empty(fig, "no labels")
    ax = fig.add_subplot()
    palette = colors(len(splits))
    height = 0.8 / len(splits)
    y = np.arange(len(observations))
    table = prev.set_index(["observation", "split"])
    for i, split in enumerate(splits):
        rows = table.xs(split, level="split").reindex(observations)
        offset = y + (i - (len(splits) - 1) / 2) * height
        either = rows["positive_or_uncertain_fraction"].fillna(0).to_numpy()
        positive = rows["positive_fraction"].fillna(0).to_numpy()
        ax.barh(offset, either, height=height, color=palette[i], alpha=0.4, linewidth=0)
        ax.barh(offset, positive, height=height, color=palette[i], linewidth=0)
    ax.set_yticks(y, observations)
    ax.invert_yaxis()
    ax.set_xlabel("fraction of studies (dark: positive, light: uncertain)")
    largest = prev["positive_or_uncertain_fraction"].max(skipna=True)
    ax.set_xlim(0, max(0.05, 0.0 if pd.isna(largest) else float(largest)) * 1.05)
    ax.xaxis.set_major_formatter(mpl.ticker.PercentFormatter(xmax=1, decimals=0))
    ax.grid(axis="y", visible=False)
    handles = [Patch(color=palette[i], label=s) for i, s in enumerate(splits)]
    # legend outside the axes: no bar can hide behind it
    fig.legend(handles=handles, title="split", loc="outside right upper")
    return fig


def plot_findings_lengths(lengths_by_split: pd.DataFrame) -> Figure:
    """Histogram of words per report, one outline per split, each normalised to 1.

    Parameters
    ----------
    lengths_by_split : pandas.DataFrame
        Columns ``split`` and ``words``, as from
        :func:`cxrlib.data.explore.findings_lengths_by_split`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig = _new_figure(PAGE_WIDTH, PAGE_WIDTH * 0.45)
    if len(lengths_by_split) == 0:
        return _empty(fig, "no reports")
    ax = fig.add_subplot()
    splits = list(dict.fromkeys(lengths_by_split["split"]))
    words = lengths_by_split["words"].to_numpy()
    top = int(words.max())
    binwidth = max(1, math.ceil((top + 1) / 40))
    sns.histplot(
        data=lengths_by_split,
        x="words",
        hue="split",
        hue_order=splits,
        palette=colors(len(splits)),
        stat="proportion",
        common_norm=False,
        element="step",
        fill=False,
        binwidth=binwidth,
        binrange=(0, top + binwidth),
        ax=ax,
    )
    ax.set_xlabel("words per report (Findings)")
    ax.set_ylabel("fraction of reports")
    ax.yaxis.set_major_formatter(mpl.ticker.PercentFormatter(xmax=1, decimals=0))
    legend = ax.get_legend()
    if legend is not None:
        legend.set_frame_on(False)
    return fig


def plot_top_sentences(freqs: pd.DataFrame, *, width: int = 60) -> Figure:
    """Horizontal bars: share of reports containing each of the most frequent sentences.

    Parameters
    ----------
    freqs : pandas.DataFrame
        The table of :func:`cxrlib.data.explore.sentence_frequencies`.
    width : int
        Sentences longer than this many characters are shortened with "...".

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig = _new_figure(PAGE_WIDTH, max(2.0, 0.2 * len(freqs) + 0.8))
    if len(freqs) == 0:
        return _empty(fig, "no findings text")
    ax = fig.add_subplot()
    labels = [textwrap.shorten(s, width=width, placeholder="...") for s in freqs["sentence"]]
    y = np.arange(len(freqs))
    ax.barh(y, freqs["fraction_of_reports"].to_numpy(), color=colors(1)[0], linewidth=0)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_xlabel("fraction of reports containing the sentence")
    ax.xaxis.set_major_formatter(mpl.ticker.PercentFormatter(xmax=1, decimals=0))
    ax.grid(axis="y", visible=False)
    return fig


def _cell(row: pd.Series, column: str) -> str:
    value = row.get(column, "")
    return value.strip() if isinstance(value, str) else ""


def _thumbnail(image: np.ndarray, side: int) -> np.ndarray:
    h, w = image.shape
    scale = side / max(h, w)
    if scale >= 1:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))


def _fit_mask(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if mask.shape == shape:
        return mask
    resized = Image.fromarray(mask.astype(np.uint8) * 255).resize(
        (shape[1], shape[0]), Image.Resampling.NEAREST
    )
    return np.asarray(resized) > 127


def _row_masks(row: pd.Series, root: str | os.PathLike) -> dict[str, str]:
    """Mask kinds to draw for one row -> mask path (split lungs preferred to the union)."""
    left, right = _cell(row, "left_lung_mask_path"), _cell(row, "right_lung_mask_path")
    masks: dict[str, str] = {}
    if left or right:
        if left:
            masks["left_lung"] = left
        if right:
            masks["right_lung"] = right
    elif _cell(row, "lung_mask_path"):
        masks["lungs"] = _cell(row, "lung_mask_path")
    if _cell(row, "heart_mask_path"):
        masks["heart"] = _cell(row, "heart_mask_path")
    return {kind: str(resolve(root, p)) for kind, p in masks.items()}


def _image_grid(n: int, ncols: int) -> tuple[Figure, np.ndarray]:
    """A page-wide figure of square image panels, ``ncols`` per row, room for a legend."""
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig = _new_figure(PAGE_WIDTH, PAGE_WIDTH / ncols * nrows + 0.5)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _short_id(image_id: object) -> str:
    ident = str(image_id)
    return ident if len(ident) <= 22 else "…" + ident[-21:]  # long ids (DICOM UIDs)


def _mask_handles(kinds: Sequence[str]) -> list[Line2D]:
    palette = colors()
    return [
        Line2D([], [], color=palette[_MASK_STYLE[k][0]], lw=2, label=_MASK_STYLE[k][1])
        for k in _MASK_STYLE
        if k in kinds
    ]


def outline_masks(ax, masks: dict[str, np.ndarray], linewidth: float = 0.6) -> None:
    """Outline organ masks (``left_lung``, ``right_lung``, ``lungs``, ``heart``: (H, W)
    bool, the size of the image drawn on ``ax``) in the colours of the mask overlays."""
    palette = colors()
    for kind, mask in masks.items():
        mask = np.asarray(mask, dtype=bool)
        if kind in _MASK_STYLE and mask.any() and not mask.all():
            color = palette[_MASK_STYLE[kind][0]]
            ax.contour(mask.astype(float), levels=[0.5], colors=[color], linewidths=linewidth)


def plot_mask_overlays(
    manifest: Manifest,
    n: int = 8,
    seed: int = 0,
    *,
    ncols: int = 4,
) -> Figure:
    """Grid of sample images with their lung and heart masks outlined and tinted.

    Lungs are drawn in two colours (patient's left and right; the patient's left is the
    image's right) when the manifest has ``left_lung_mask_path`` and
    ``right_lung_mask_path``, else as one ``lung_mask_path``; the heart in a third
    colour. Rows without mask cells (or manifests without mask columns) show the plain
    image. Masks of another size than their image are resized (nearest neighbour).

    Parameters
    ----------
    manifest : Manifest
        Rows with an image are sampled with :func:`cxrlib.data.explore.sample_rows`;
        relative paths resolve against its root.
    n : int
        Number of images (fewer when the manifest has fewer).
    seed : int
        Sampling seed.
    ncols : int
        Images per grid row.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    CxrError
        On a text-only manifest (no images), or when an image or mask is unreadable.
    """
    if n < 1 or ncols < 1:
        raise ValueError(f"n and ncols must be >= 1, got n={n}, ncols={ncols}")
    df, root = manifest.frame, manifest.root
    if len(df) == 0 or is_text_only(df):
        raise CxrError("the manifest has no images (text-only): no mask overlays to draw")
    with_image = df[df["image_path"].fillna("").astype(str).str.strip() != ""]
    rows = explore.sample_rows(with_image, n, seed)
    fig, axes = _image_grid(len(rows), ncols)
    palette = colors()
    drawn: list[str] = []
    for ax, (_, row) in zip(axes.flat, rows.iterrows(), strict=False):
        path = resolve(root, row["image_path"].strip())
        image = _thumbnail(load_image(path), _THUMBNAIL_SIDE)
        ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="bilinear")
        for kind, mask_path in _row_masks(row, root).items():
            mask = _fit_mask(load_mask(mask_path), image.shape)
            color = palette[_MASK_STYLE[kind][0]]
            tint = np.zeros((*mask.shape, 4))
            tint[mask] = (*color, 0.25)
            ax.imshow(tint, interpolation="nearest")
            if mask.any() and not mask.all():
                ax.contour(mask.astype(float), levels=[0.5], colors=[color], linewidths=0.8)
            if kind not in drawn:
                drawn.append(kind)
        view = _cell(row, "view")
        ax.set_title(_short_id(row["image_id"]) + (f" ({view})" if view else ""), fontsize=7)
    for ax in axes.flat:
        ax.set_axis_off()
    if drawn:
        handles = _mask_handles(drawn)
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles))
    return fig


# --- anatomy (notebook 02) -------------------------------------------------------------


def plot_training_curve(metrics: pd.DataFrame) -> Figure:
    """Segmenter training: loss per epoch (train, held-out) and held-out Dice per organ.

    Parameters
    ----------
    metrics : pandas.DataFrame
        ``metrics.csv`` of a segmenter run: ``epoch, split, loss, dice_<organ>...``.
    """
    fig = _new_figure(PAGE_WIDTH, 2.4)
    ax_loss, ax_dice = fig.subplots(1, 2)
    palette = colors()
    for i, (split, part) in enumerate(metrics.groupby("split", sort=False)):
        ax_loss.plot(part["epoch"], part["loss"], color=palette[i], label=split)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss (BCE + 1 - soft Dice)")
    ax_loss.legend()
    held = metrics[metrics["split"] == "held_out"]
    organs = [
        c[len("dice_") :] for c in metrics.columns if c.startswith("dice_") and c != "dice_mean"
    ]
    for organ in organs:
        style = _MASK_STYLE.get(organ, (9, organ))
        ax_dice.plot(held["epoch"], held[f"dice_{organ}"], color=palette[style[0]], label=style[1])
    ax_dice.set_xlabel("epoch")
    ax_dice.set_ylabel("held-out Dice (network size)")
    ax_dice.set_ylim(0, 1)
    if len(held):
        ax_dice.legend(loc="lower right")
    return fig


def plot_report_model_training(metrics: pd.DataFrame) -> Figure:
    """Report model training: loss per step (train, validation) and the learning rate.

    Parameters
    ----------
    metrics : pandas.DataFrame
        ``metrics.csv`` of a :func:`cxrlib.training.train.train` run: ``step, epoch, split, loss,
        lr, ...``; validation rows sit at the step that ended their epoch.
    """
    fig = _new_figure(PAGE_WIDTH, 2.4)
    ax_loss, ax_lr = fig.subplots(1, 2)
    palette = colors()
    train = metrics[metrics["split"] == "train"]
    val = metrics[metrics["split"] == "validate"]
    ax_loss.plot(train["step"], train["loss"], color=palette[0], label="train")
    ax_loss.plot(val["step"], val["loss"], "o-", color=palette[1], label="validation")
    ax_loss.set_xlabel("optimizer step")
    ax_loss.set_ylabel("cross-entropy per token")
    ax_loss.legend()
    ax_lr.plot(train["step"], train["lr"], color=palette[2])
    ax_lr.set_xlabel("optimizer step")
    ax_lr.set_ylabel("learning rate")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    return fig


def plot_segmentation_examples(examples: list[dict], ncols: int = 4) -> Figure:
    """Radiographs with true (solid) and predicted (dashed) organ outlines.

    Parameters
    ----------
    examples : list of dict
        Each with ``image`` (H, W) uint8, ``true`` and ``pred`` (dicts organ -> bool
        (H, W)) and ``image_id``, as from
        :func:`cxrlib.anatomy.segmenter.example_predictions`.
    """
    if not examples:
        raise ValueError("no examples to draw")
    fig, axes = _image_grid(len(examples), ncols)
    palette = colors()
    for ax, ex in zip(axes.flat, examples, strict=False):
        image = _thumbnail(ex["image"], _THUMBNAIL_SIDE)
        ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="bilinear")
        for organ in ex["true"]:
            color = palette[_MASK_STYLE[organ][0]]
            for masks, style in ((ex["true"], "solid"), (ex["pred"], "dashed")):
                mask = _fit_mask(masks[organ], image.shape)
                if mask.any() and not mask.all():
                    ax.contour(mask.astype(float), levels=[0.5], colors=[color],
                               linewidths=0.8, linestyles=style)  # fmt: skip
        ax.set_title(_short_id(ex["image_id"]), fontsize=7)
    for ax in axes.flat:
        ax.set_axis_off()
    handles = _mask_handles(list(examples[0]["true"]))
    handles += [
        Line2D([], [], color="0.3", lw=1, ls="solid", label="manual"),
        Line2D([], [], color="0.3", lw=1, ls="dashed", label="predicted"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles))
    return fig


def plot_ctr_scatter(per_image: pd.DataFrame) -> Figure:
    """Predicted vs reference cardiothoracic ratio, identity line and MAE.

    Parameters
    ----------
    per_image : pandas.DataFrame
        ``ctr_pred`` and ``ctr_true`` per image (from
        :func:`cxrlib.anatomy.segmenter.evaluate`).
    """
    fig = _new_figure(PAGE_WIDTH * 0.5, PAGE_WIDTH * 0.5)
    ax = fig.add_subplot()
    x, y = per_image["ctr_true"].to_numpy(float), per_image["ctr_pred"].to_numpy(float)
    ok = np.isfinite(x) & np.isfinite(y)
    ax.scatter(x[ok], y[ok], s=10, color=colors()[0], alpha=0.8, linewidths=0)
    lo = float(np.nanmin(np.r_[x[ok], y[ok], 0.35])) - 0.02
    hi = float(np.nanmax(np.r_[x[ok], y[ok], 0.6])) + 0.02
    ax.plot([lo, hi], [lo, hi], color="0.4", lw=0.8, ls="--")
    ax.axhline(0.5, color="0.7", lw=0.6)
    ax.axvline(0.5, color="0.7", lw=0.6)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    ax.set_xlabel("reference CTR")
    ax.set_ylabel("CTR from predicted masks")
    mae = float(np.abs(x[ok] - y[ok]).mean()) if ok.any() else float("nan")
    ax.set_title(f"n = {int(ok.sum())}, MAE = {mae:.3f}")
    return fig


def plot_prior_stack(
    priors: np.ndarray, image: np.ndarray | None = None, title: str = "", ncols: int | None = None
) -> Figure:
    """One panel per decoder layer: the anatomical prior on the patch grid.

    Parameters
    ----------
    priors : ndarray, shape (L, g, g) or (L, g*g)
        One image's priors in [0, 1], layer 0 first.
    image : ndarray (H, W) uint8, optional
        The radiograph, drawn first for reference.
    title : str
        Figure title (e.g. the schedule).
    ncols : int, optional
        Panels per row; default: two rows.
    """
    priors = np.asarray(priors, dtype=float)
    if priors.ndim == 2:
        g = math.isqrt(priors.shape[1])
        if g * g != priors.shape[1]:
            raise ValueError(f"priors of shape {priors.shape}: P is not a square grid")
        priors = priors.reshape(priors.shape[0], g, g)
    panels = priors.shape[0] + (image is not None)
    ncols = min(ncols or math.ceil(panels / 2), panels)  # default: two rows
    nrows = math.ceil(panels / ncols)
    side = PAGE_WIDTH / ncols
    fig = _new_figure(PAGE_WIDTH, side * nrows + (0.35 if title else 0.1))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    flat = list(axes.flat)
    if image is not None:
        ax = flat.pop(0)
        ax.imshow(_thumbnail(image, 256), cmap="gray", vmin=0, vmax=255)
        ax.set_title("image", fontsize=7)
    for layer, ax in enumerate(flat[: priors.shape[0]]):
        ax.imshow(priors[layer], cmap="magma", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"layer {layer + 1}", fontsize=7)  # counted from 1, as group_label
    for ax in axes.flat:
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def plot_per_observation_f1(per_observation: pd.DataFrame) -> Figure:
    """Per-observation clinical F1 by system (uncertain as negative).

    Parameters
    ----------
    per_observation : pandas.DataFrame
        ``system, observation, convention, f1`` rows (each system's
        ``per_observation.csv`` with a ``system`` column).
    """
    import seaborn as sns

    data = per_observation[per_observation["convention"] == "uncertain_as_negative"]
    fig = _new_figure(PAGE_WIDTH, 3.4)
    ax = fig.subplots()
    systems = list(dict.fromkeys(data["system"]))
    sns.barplot(
        data=data,
        y="observation",
        x="f1",
        hue="system",
        hue_order=systems,
        palette=colors(len(systems)),
        ax=ax,
        orient="h",
    )
    ax.set_xlim(0, 1)
    ax.set_xlabel("F1 (uncertain as negative)")
    ax.set_ylabel("")
    ax.legend(title=None, loc="lower right", fontsize="small")
    return fig


def plot_ablation_bars(summary: pd.DataFrame, metrics: Sequence[str], labels: dict) -> Figure:
    """Ablation: one panel per metric, one bar per system, 95% interval over seeds.

    Parameters
    ----------
    summary : pandas.DataFrame
        ``ablation_summary.csv``: ``system, metric, mean, ci_low, ci_high, n_seeds``.
    metrics : sequence of str
        Metric keys, one panel each.
    labels : dict
        Metric key -> panel title.
    """
    systems = list(dict.fromkeys(summary["system"]))
    palette = colors(len(systems))
    ncols = min(3, len(metrics))
    nrows = -(-len(metrics) // ncols)
    fig = _new_figure(PAGE_WIDTH, 1.9 * nrows + 0.4)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, key in zip(axes, metrics, strict=False):
        part = summary[summary["metric"] == key].set_index("system").reindex(systems)
        x = np.arange(len(systems))
        mean = part["mean"].to_numpy(dtype=float)
        low = (mean - part["ci_low"].to_numpy(dtype=float)).clip(min=0)
        high = (part["ci_high"].to_numpy(dtype=float) - mean).clip(min=0)
        err = np.nan_to_num(np.vstack([low, high]))
        ax.bar(x, mean, color=palette, yerr=err, capsize=2, error_kw={"lw": 0.8})
        ax.set_title(labels.get(key, key), fontsize="small")
        ax.set_xticks(x, systems, rotation=35, ha="right", fontsize="x-small")
        ax.set_ylim(
            0,
            max(1.0, np.nanmax(mean + err[1]) * 1.05)
            if key.startswith(("clinical", "grounding", "lexical.bleu", "lexical.rouge"))
            else None,
        )
    for ax in axes[len(metrics) :]:
        ax.set_visible(False)
    return fig


def plot_observation_heatmap(per_observation: pd.DataFrame) -> Figure:
    """Per-observation F1 (uncertain as negative) by system, mean over seeds.

    Parameters
    ----------
    per_observation : pandas.DataFrame
        ``system, seed, observation, convention, f1`` rows.
    """
    import seaborn as sns

    data = per_observation[per_observation["convention"] == "uncertain_as_negative"]
    systems = list(dict.fromkeys(data["system"]))
    table = data.pivot_table(index="observation", columns="system", values="f1", aggfunc="mean")
    order = list(dict.fromkeys(data["observation"]))
    table = table.loc[order, systems]
    fig = _new_figure(PAGE_WIDTH, 3.8)
    ax = fig.subplots()
    sns.heatmap(
        table,
        vmin=0,
        vmax=1,
        cmap="viridis",
        annot=True,
        fmt=".2f",
        annot_kws={"fontsize": 6},
        cbar_kws={"label": "F1 (uncertain as negative)"},
        ax=ax,
    )
    ax.set_xlabel("")
    ax.set_ylabel("")
    return fig


def plot_sentence_attention(
    image: np.ndarray,
    attention,
    max_sentences: int = 4,
    captions: Sequence[Sequence[str]] | None = None,
) -> Figure:
    """Each generated sentence (rows) and layer group (columns): the image with the
    sentence's mean attention to each patch overlaid (heads and tokens averaged).

    Parameters
    ----------
    image : (H, W) uint8
        The radiograph (any size; the patch grid is stretched over it).
    attention : cxrlib.model.explain.SentenceAttention
    captions : list of list of str, optional
        ``captions[s][g]`` under the panel of sentence ``s`` and layer group ``g``, e.g.
        the attention grounding's ``"left lung 0.62, region 0.31"``
        (:func:`cxrlib.evaluate.attention_grounding.sentence_captions`); "" for none.
    """
    n = min(max_sentences, len(attention.sentences))
    groups = attention.groups
    fig = _new_figure(min(PAGE_WIDTH, 1.55 * len(groups) + 0.9), 1.55 * n + 0.3)
    axes = fig.subplots(n, len(groups), squeeze=False)
    h, w = image.shape
    for s in range(n):
        vmax = float(attention.maps[s].max()) or 1.0
        for g, layers in enumerate(groups):
            ax = axes[s, g]
            ax.imshow(image, cmap="gray", extent=(0, w, h, 0))
            ax.imshow(
                attention.maps[s, g],
                cmap="magma",
                alpha=0.55,
                vmin=0,
                vmax=vmax,
                extent=(0, w, h, 0),
                interpolation="bilinear",
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if s == 0:
                ax.set_title(group_label(layers), fontsize="small")
            if g == 0:
                text = attention.sentences[s]
                ax.set_ylabel(text if len(text) <= 38 else text[:36] + "…", fontsize=6)
            if captions is not None and s < len(captions) and captions[s][g]:
                ax.set_xlabel(captions[s][g], fontsize=5.5)
    return fig


def plot_runs_training(curves: pd.DataFrame) -> Figure:
    """Validation loss per epoch of every ablation run, coloured by mode.

    Parameters
    ----------
    curves : pandas.DataFrame
        ``mode, seed, epoch, split, loss`` (the runs' ``metrics.csv`` rows).
    """
    val = curves[curves["split"] == "validate"]
    train = curves[curves["split"] == "train"]
    modes = list(dict.fromkeys(curves["mode"]))
    palette = dict(zip(modes, colors(len(modes)), strict=True))
    fig = _new_figure(PAGE_WIDTH, 2.4)
    ax_train, ax_val = fig.subplots(1, 2)
    for (mode, seed), part in train.groupby(["mode", "seed"], sort=False):
        ax_train.plot(
            part["step"],
            part["loss"],
            color=palette[mode],
            lw=0.7,
            alpha=0.8,
            label=mode if seed == part["seed"].min() else None,
        )
    for (mode, _seed), part in val.groupby(["mode", "seed"], sort=False):
        ax_val.plot(part["step"], part["loss"], "o-", color=palette[mode], ms=3, lw=0.8)
    ax_train.set_xlabel("optimizer step")
    ax_train.set_ylabel("train loss")
    ax_val.set_xlabel("optimizer step")
    ax_val.set_ylabel("validation loss")
    handles = [Line2D([], [], color=palette[m], label=m) for m in modes]
    ax_train.legend(handles=handles, fontsize="small")
    return fig
