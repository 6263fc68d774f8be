"""The explorer of notebook 07: one study, or any image, seen by every mode of a run.

``Explorer(run_dir, manifest)`` opens a workbook (or ablation) run, whose training runs
lie in ``run_dir/train/<mode>-seed<seed>/``, or a single training run. For a study of
the evaluation split (picked by id, or among those positive for a finding) or for any
image file, :meth:`Explorer.view` gives a :class:`StudyView`:

- the image and its lung and heart masks (the manifest's; for an image file, the
  segmenter the run used, else none: a uniform prior, said in the view);
- each decoder layer's prior, built with the run's prior settings;
- the Findings the mode's run generated (the ablation's generations when it has them,
  so the explorer shows what was evaluated; else generated now) beside the reference;
- the labels of both, each finding marked **correct**, **wrong side**,
  **hallucinated** or **omitted** with the rules of :mod:`cxrlib.metrics.grounding`
  (positive: 1 only, uncertain as negative; reference labels: the manifest's ground
  truth when it has labels, else the labeler on the reference text);
- where each generated sentence attended, by layer group.

:func:`show_view` displays a view (HTML and figures) in a notebook;
:func:`explorer_widget` is the interactive front (``ipywidgets``): a finding filter, a
study list, an image path box and the mode switch. Without a live kernel (papermill)
the notebook shows the static views of :func:`show_view` for each mode.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlib.anatomy.segmenter import Segmenter
from cxrlib.base.errors import CxrError
from cxrlib.base.masks import load_mask
from cxrlib.base.vocabulary import MODES, SIDE_COLUMNS
from cxrlib.data.manifest import resolve, text_cell
from cxrlib.evaluate import attention_grounding as ag
from cxrlib.experiment.figures import outline_masks, plot_prior_stack
from cxrlib.experiment.inference import (
    MASK_STRUCTURES,
    Reporter,
    label_word,
    read_radiograph,
    run_segmenter,
)
from cxrlib.experiment.inference import attention_figure as draw
from cxrlib.experiment.workbook import REPO_ROOT
from cxrlib.metrics.grounding import FINDINGS, GroundingData
from cxrlib.metrics.labeler import label_report, label_reports, laterality_column
from cxrlib.model.explain import group_label
from cxrlib.training.inputs import image_priors, resolve_manifest, split_frame
from cxrlib.training.runs import generations_path, run_config, run_config_path, training_run

VERDICT_COLORS = {
    "correct": "#d4edda",
    "wrong side": "#fff3cd",
    "hallucinated": "#f8d7da",
    "omitted": "#ffe5b4",
}
"""Background of each verdict in the labels table (green, yellow, red, orange)."""


@dataclass
class StudyView:
    """What the explorer shows of one image under one mode."""

    name: str  # the study's image id, or the image file's name
    mode: str
    run: Path  # the training run that generated
    image: np.ndarray  # (H, W) uint8
    masks: dict[str, np.ndarray] | None  # structure -> (H, W) bool; None: no masks
    mask_source: str
    priors: np.ndarray  # (L, g, g): each layer's prior (uniform without masks)
    generated: str
    generated_source: str  # "ablation generations" or "generated now"
    reference: str | None  # None for an image file
    labels: pd.DataFrame  # finding, generated, reference, verdict (see compare_labels)
    attention: object | None = None  # cxrlib.model.explain.SentenceAttention
    captions: list | None = None  # attention grounding under each panel
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def _word(value: object) -> str:
    return label_word(value) or ""


def compare_labels(generated: pd.Series | dict, truth: pd.Series | dict) -> pd.DataFrame:
    """Each finding positive in the generated text or in the truth, with its verdict.

    Parameters
    ----------
    generated : mapping
        The labeler's output on the generated Findings (14 labels and the laterality
        columns, :func:`cxrlib.metrics.labeler.label_report`).
    truth : mapping
        The reference labels (CheXpert columns) and, for sides, the phantom's drawn-side
        columns (:data:`cxrlib.base.vocabulary.SIDE_COLUMNS`).

    Returns
    -------
    pandas.DataFrame
        One row per such finding (the order of ``FINDINGS``): ``finding``,
        ``generated`` and ``reference`` (label word and side), ``verdict``: correct,
        wrong side, hallucinated or omitted (uncertain counts as negative).
    """
    gen, ref = pd.DataFrame([dict(generated)]), pd.DataFrame([dict(truth)])
    for obs in FINDINGS:
        gen[obs] = gen.get(obs, np.nan)
        ref[obs] = ref.get(obs, np.nan)
    counts = GroundingData.build(gen, ref).counts
    rows = []
    for j, obs in enumerate(FINDINGS):
        c = {k.split(".")[1]: int(v[0, j]) for k, v in counts.items() if "as_negative" in k}
        if c["hall"]:
            verdict = "hallucinated"
        elif c["omit"]:
            verdict = "omitted"
        elif c["both"]:
            verdict = "wrong side" if c["sided"] and not c["correct"] else "correct"
        else:
            continue
        gen_side = gen.get(laterality_column(obs), pd.Series([None]))[0]
        ref_side = ref.get(SIDE_COLUMNS.get(obs, ""), pd.Series([None]))[0]
        rows.append(
            {
                "finding": obs,
                "generated": _with_side(_word(gen[obs][0]), gen_side),
                "reference": _with_side(_word(ref[obs][0]), ref_side),
                "verdict": verdict,
            }
        )
    return pd.DataFrame(rows, columns=["finding", "generated", "reference", "verdict"])


def _with_side(word: str, side: object) -> str:
    side = text_cell(side)
    return f"{word} ({side})" if word and side else word


def latest_run(root: str | os.PathLike | None = None) -> Path:
    """The newest workbook run with training runs under ``root`` (default the checkout's
    ``runs/``): what the explorer opens when no run is named.

    Raises
    ------
    CxrError
        No such run (``make workbook`` makes one).
    """
    root = Path(root) if root is not None else REPO_ROOT / "runs"
    found = [p for p in root.glob("*/train/*/checkpoints") if p.is_dir()]
    if not found:
        raise CxrError(f"no workbook run with trained models under {root}: run `make workbook`")
    return max((p.parents[2] for p in found), key=lambda p: p.stat().st_mtime)


class Explorer:
    """A run's training runs by mode, the evaluation split, and the views of its images.

    Parameters
    ----------
    run_dir : path-like
        A workbook or ablation run (``train/<mode>-seed<seed>/`` inside) or one training
        run (``cxr train --out``).
    manifest : path-like, optional
        The manifest the run was evaluated on; default the one its config names.
    split : str
        The split whose studies are offered (default ``test``).
    seed : int
        Which seed's run of each mode is shown.
    device : str
        ``cpu`` or ``cuda``.

    Raises
    ------
    CxrError
        No training run in ``run_dir``, or an unreadable manifest.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        manifest: str | os.PathLike | None = None,
        *,
        split: str = "test",
        seed: int = 0,
        device: str = "cpu",
    ):
        self.run_dir = Path(run_dir)
        self.seed = seed
        self.device = device
        self.runs = self._find_runs()
        first = next(iter(self.runs.values()))
        config = run_config(first)
        self.manifest = Path(manifest) if manifest else resolve_manifest(config)
        self.split = split
        studies = split_frame(self.manifest, split)
        self.studies_frame, self.root = studies.frame, studies.root
        self.truth_source = "manifest" if self._manifest_has_labels() else "labeler"
        self._reporters: dict = {}
        self._segmenter = None
        self._generations: dict[str, dict[str, str]] = {}

    # --- what there is ----------------------------------------------------------------

    def _find_runs(self) -> dict[str, Path]:
        if run_config_path(self.run_dir).is_file() and (self.run_dir / "checkpoints").is_dir():
            return {run_config(self.run_dir).model.mode: self.run_dir}
        runs = {}
        for mode in MODES:
            folder = training_run(self.run_dir, mode, self.seed)
            if (folder / "checkpoints").is_dir():
                runs[mode] = folder
        if not runs:
            raise CxrError(
                f"{self.run_dir}: no training run (train/<mode>-seed{self.seed}/ with "
                "checkpoints, or a cxr train folder)"
            )
        return runs

    @property
    def modes(self) -> list[str]:
        """The modes with a run, in the order none, soft, strict."""
        return list(self.runs)

    def _manifest_has_labels(self) -> bool:
        labels = self.studies_frame[list(FINDINGS)].apply(pd.to_numeric, errors="coerce")
        return bool(labels.notna().to_numpy().any())

    @cached_property
    def truth_frame(self) -> pd.DataFrame:
        """The reference labels of every study of the split, indexed by image id, read
        once: the manifest's rows, or the labeler's labels of the reference texts with
        each lateral finding's side in the phantom's side columns (see the module doc)."""
        ids = self.studies_frame["image_id"].astype(str).to_numpy()
        if self.truth_source == "manifest":
            return self.studies_frame.set_index(ids)
        labels = label_reports(self.studies_frame["findings"]).set_index(ids)
        for obs, column in SIDE_COLUMNS.items():
            labels[column] = labels[laterality_column(obs)]
        return labels

    def truth(self, image_id: str) -> pd.Series:
        """The reference labels of a study (a row of :attr:`truth_frame`)."""
        self._row(image_id)  # an unknown id fails with its one line
        return self.truth_frame.loc[str(image_id)]

    def _positive(self) -> pd.DataFrame:
        return self.truth_frame[list(FINDINGS)].apply(pd.to_numeric, errors="coerce") == 1

    def findings(self) -> pd.DataFrame:
        """Findings positive in the split's reference labels, with their study counts."""
        counts = self._positive().sum()
        counts = counts[counts > 0]
        return pd.DataFrame({"finding": counts.index, "studies": counts.to_numpy()})

    def studies(self, finding: str | None = None) -> list[str]:
        """Image ids of the split, or of its studies positive for ``finding``."""
        if not finding:
            return self.studies_frame["image_id"].astype(str).tolist()
        positive = self._positive()[finding]
        return positive.index[positive.to_numpy()].tolist()

    def _row(self, image_id: str) -> pd.Series:
        rows = self.studies_frame[self.studies_frame["image_id"].astype(str) == str(image_id)]
        if rows.empty:
            where = f"the {self.split} split of {self.manifest}"
            raise CxrError(f"study {image_id!r} is not in {where}")
        return rows.iloc[0]

    # --- models, masks, generations -----------------------------------------------------

    def reporter(self, mode: str):
        """The loaded run of ``mode`` (a :class:`~cxrlib.experiment.inference.Reporter`), once."""
        if mode not in self.runs:
            raise CxrError(f"no {mode} run in {self.run_dir} (modes: {', '.join(self.modes)})")
        if mode not in self._reporters:
            self._reporters[mode] = Reporter(self.runs[mode], masks="none", device=self.device)
        return self._reporters[mode]

    def _study_masks(self, row: pd.Series) -> dict[str, np.ndarray] | None:
        cells = {name: text_cell(row.get(f"{name}_mask_path")) for name in MASK_STRUCTURES}
        if not all(cells.values()):
            return None
        return {name: load_mask(resolve(self.root, cell)) for name, cell in cells.items()}

    def _segment(self, gray: np.ndarray) -> tuple[dict[str, np.ndarray] | None, str]:
        if self._segmenter is None:
            mode = self.modes[0]
            folder = run_segmenter(self.runs[mode], self.reporter(mode).config)
            if folder is None:
                self._segmenter = False
            else:
                self._segmenter = (Segmenter.from_pretrained(folder), folder)
        if not self._segmenter:
            return None, "none (uniform prior): the run records no segmenter"
        segmenter, folder = self._segmenter
        masks = segmenter.predict(gray[None])
        return {k: v[0] for k, v in masks.items()}, f"segmenter {folder}"

    def _generation(self, mode: str, image_id: str) -> str | None:
        if mode not in self._generations:
            path = generations_path(self.run_dir, self.runs[mode].name)
            table: dict[str, str] = {}
            if path.is_file():
                frame = pd.read_csv(path, dtype=str, keep_default_na=False)
                table = dict(zip(frame["image_id"], frame["generated"], strict=True))
            self._generations[mode] = table
        return self._generations[mode].get(str(image_id))

    # --- views --------------------------------------------------------------------------

    def view(
        self,
        study: str | None = None,
        *,
        image: str | os.PathLike | None = None,
        mode: str | None = None,
        attention: bool = True,
    ) -> StudyView:
        """The view of a study of the split (``study``: its image id) or of an image
        file (``image``) under ``mode`` (default the first of :attr:`modes`).

        Raises
        ------
        CxrError
            Neither or both given, an unknown study or mode, an unreadable image or mask.
        """
        import time

        if (study is None) == (image is None):
            raise CxrError("give a study id or an image path (one of the two)")
        started = time.perf_counter()
        mode = mode or self.modes[0]
        reporter = self.reporter(mode)
        notes: list[str] = []
        if study is not None:
            row = self._row(study)
            name = str(row["image_id"])
            gray = read_radiograph(resolve(self.root, text_cell(row["image_path"])))
            masks = self._study_masks(row)
            source = "manifest" if masks is not None else "none (uniform prior)"
            if masks is None:
                notes.append("the manifest has no lung and heart masks for this study")
            reference: str | None = text_cell(row["findings"])
            truth = self.truth(name)
        else:
            path = Path(image)
            name = path.name
            gray = read_radiograph(path)
            masks, source = self._segment(gray)
            reference, truth = None, {}
        batched = None if masks is None else {k: v[None] for k, v in masks.items()}
        pixels, priors = reporter.inputs(gray, batched, name)
        stored = self._generation(mode, name) if study is not None else None
        if stored is not None:
            findings, generated_source = stored.strip(), "ablation generations (as evaluated)"
        else:
            findings, generated_source = reporter.generate(pixels, priors), "generated now"
        if priors is not None:
            grid = reporter.prior_config.grid
            stack = priors[0].cpu().numpy().reshape(-1, grid, grid)
        else:
            stack = self._prior_stack(reporter, batched, name)
        labels = compare_labels(label_report(findings), truth)
        if reference is None:
            labels = labels.assign(reference="", verdict="")
        view = StudyView(
            name=name,
            mode=mode,
            run=self.runs[mode],
            image=gray,
            masks=masks,
            mask_source=source,
            priors=stack,
            generated=findings,
            generated_source=generated_source,
            reference=reference,
            labels=labels,
            notes=notes,
        )
        if attention and findings.strip():
            view.attention = reporter.attention(findings, pixels, priors)  # no_grad inside
            view.captions = self._captions(view, row if study is not None else None)
        view.seconds = round(time.perf_counter() - started, 2)
        return view

    @staticmethod
    def _prior_stack(reporter, masks, name: str) -> np.ndarray:
        """Each layer's prior (L, g, g) with the run's settings (uniform without masks)."""
        config = reporter.prior_config
        if masks is None:
            return np.ones((reporter.model.num_decoder_layers, config.grid, config.grid))
        priors = image_priors(masks, config, name)[0].numpy()
        return priors.reshape(priors.shape[0], config.grid, config.grid)

    def _captions(self, view: StudyView, row: pd.Series | None) -> list | None:
        if row is None or not ag.has_lung_masks(pd.DataFrame([row])):
            return None
        shares = ag.sentence_shares(view.attention, ag.read_study_masks(row, self.root))
        groups = [group_label(g) for g in view.attention.groups]
        return ag.sentence_captions(shares, len(view.attention.sentences), groups)


# --- display ------------------------------------------------------------------------------


def view_html(view: StudyView) -> str:
    """The text part of a view: heading, generated vs reference, the labels table.

    The outer ``div`` carries ``data-study`` and ``data-mode`` (what the JupyterLab test
    reads).
    """
    esc = html.escape
    reference = "<i>none: an image file</i>" if view.reference is None else esc(view.reference)
    rows = []
    for r in view.labels.itertuples(index=False):
        color = VERDICT_COLORS.get(r.verdict, "transparent")
        rows.append(
            f'<tr style="background:{color}"><td>{esc(r.finding)}</td>'
            f"<td>{esc(r.generated)}</td><td>{esc(r.reference)}</td>"
            f"<td><b>{esc(r.verdict)}</b></td></tr>"
        )
    if not rows:
        rows.append('<tr><td colspan="4"><i>no finding positive in either</i></td></tr>')
    notes = "".join(f"<li>{esc(n)}</li>" for n in view.notes)
    return (
        f'<div class="cxr-explorer-view" data-study="{esc(view.name)}" '
        f'data-mode="{esc(view.mode)}">'
        f"<h4>{esc(view.name)} &middot; mode <code>{esc(view.mode)}</code> "
        f"(run <code>{esc(view.run.name)}</code>) &middot; masks: {esc(view.mask_source)}</h4>"
        '<table style="width:100%;table-layout:fixed"><tr>'
        f'<th style="text-align:left">Generated ({esc(view.generated_source)})</th>'
        '<th style="text-align:left">Reference</th></tr>'
        f'<tr><td style="vertical-align:top;text-align:left">{esc(view.generated)}</td>'
        f'<td style="vertical-align:top;text-align:left">{reference}</td></tr></table>'
        "<table><tr><th>finding</th><th>generated</th><th>reference</th><th>verdict</th></tr>"
        + "".join(rows)
        + "</table>"
        + (f"<ul>{notes}</ul>" if notes else "")
        + f"<small>{view.seconds:.2f} s</small></div>"
    )


def prior_figure(view: StudyView):
    """The image with its masks outlined, then each decoder layer's prior."""
    used = "" if view.mode != "none" else " (not used: mode none)"
    title = f"{view.name}: masks ({view.mask_source.split(':')[0]}) and layer priors{used}"
    ncols = view.priors.shape[0] + 1  # one row: the image, then layer 1 to L
    fig = plot_prior_stack(view.priors, image=view.image, title=title, ncols=ncols)
    if view.masks is not None:
        image_ax = fig.axes[0]
        h, w = view.image.shape
        side = max(h, w)
        scale = min(1.0, 256 / side)  # plot_prior_stack draws a 256 px thumbnail
        small = {
            k: _resize_mask(v, (round(h * scale), round(w * scale))) for k, v in view.masks.items()
        }
        outline_masks(image_ax, small)
    return fig


def _resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    if mask.shape == shape:
        return mask.astype(bool)
    img = Image.fromarray(mask.astype(np.uint8) * 255).resize(
        (shape[1], shape[0]), Image.Resampling.NEAREST
    )
    return np.asarray(img) > 127


def attention_figure(view: StudyView):
    """Where each generated sentence attended, by layer group (None without text)."""
    if view.attention is None:
        return None
    return draw(view.image, view.attention, view.masks, captions=view.captions)


def show_view(view: StudyView) -> None:
    """Display a view in the notebook: its HTML, the prior figure, the attention figure."""
    import matplotlib.pyplot as plt
    from IPython.display import HTML, display

    display(HTML(view_html(view)))
    for fig in (prior_figure(view), attention_figure(view)):
        if fig is not None:
            display(fig)
            plt.close(fig)


def explorer_widget(explorer: Explorer, study: str | None = None, mode: str | None = None):
    """The interactive explorer: finding filter, study list, study id box, image path,
    mode switch.

    Each change redraws the view in the widget's output area; an error (an unreadable
    image path, say) shows as one line there instead of a traceback.
    """
    import ipywidgets as widgets
    from IPython.display import HTML, display

    counts = explorer.findings()
    finding = widgets.Dropdown(
        options=[("any", "")] + [(f"{f} ({n})", f) for f, n in counts.itertuples(index=False)],
        description="finding",
    )
    ids = explorer.studies()
    pick = widgets.Dropdown(
        options=ids, value=study if study in ids else ids[0], description="study"
    )
    typed = widgets.Combobox(
        options=ids, placeholder="or type a study id", ensure_option=True, description="id"
    )
    path = widgets.Text(placeholder="or an image file (PNG, JPEG, DICOM)", description="image")
    report = widgets.Button(description="report image", tooltip="view the image file above")
    modes = widgets.ToggleButtons(
        options=explorer.modes, value=mode if mode in explorer.modes else explorer.modes[0]
    )
    out = widgets.Output()
    shown = {"image": None}

    def redraw(*_):
        with out:
            out.clear_output(wait=True)
            try:
                if shown["image"]:
                    view = explorer.view(image=shown["image"], mode=modes.value)
                else:
                    view = explorer.view(pick.value, mode=modes.value)
                show_view(view)
            except (CxrError, ValueError, OSError) as err:
                message = str(err).splitlines()[0] if str(err) else type(err).__name__
                display(HTML(f'<p class="cxr-explorer-error" style="color:#b00">{message}</p>'))

    def on_finding(change):
        options = explorer.studies(change["new"] or None)
        pick.options = options or explorer.studies()

    def on_study(change):
        if change["new"] is not None:
            shown["image"] = None
            redraw()

    def on_typed(change):
        if change["new"] in ids:
            if change["new"] not in pick.options:
                finding.value = ""  # back to every study
            pick.value = change["new"]

    def on_report(_):
        shown["image"] = path.value.strip() or None
        redraw()

    finding.observe(on_finding, names="value")
    pick.observe(on_study, names="value")
    typed.observe(on_typed, names="value")
    modes.observe(redraw, names="value")
    report.on_click(on_report)
    redraw()
    controls = widgets.VBox(
        [widgets.HBox([finding, pick, typed]), widgets.HBox([path, report]), modes]
    )
    return widgets.VBox([controls, out])
