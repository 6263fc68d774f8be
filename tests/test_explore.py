"""Dataset exploration: data.explore, experiment.figures and notebook 01 on a tiny manifest."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import nbformat
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from PIL import Image

from cxrlib.base.errors import CxrError
from cxrlib.base.images import load_image
from cxrlib.base.masks import load_mask
from cxrlib.data import explore
from cxrlib.data.manifest import CHEXPERT_LABELS, Manifest, read_manifest, write_manifest
from cxrlib.experiment import figures

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "01_dataset_exploration.ipynb"
FIGURE_NAMES = (
    "01_split_view_counts",
    "01_label_prevalence",
    "01_findings_lengths",
    "01_top_sentences",
    "01_mask_overlays",
)

# (study_id, image_id, view, split, findings); s1 has two images sharing one report.
ROWS = [
    (
        "s1",
        "i1",
        "PA",
        "train",
        "Heart size is normal. There is a 1.5 cm nodule in the right upper lobe. No pneumothorax.",
    ),
    (
        "s1",
        "i2",
        "LATERAL",
        "train",
        "Heart size is normal. There is a 1.5 cm nodule in the right upper lobe. No pneumothorax.",
    ),
    ("s2", "i3", "PA", "train", "No pneumothorax.  Small left pleural effusion!"),
    ("s3", "i4", "AP", "train", ""),
    ("s4", "i5", "PA", "test", "Heart size is normal.\nNo pneumothorax. No pneumothorax?"),
    ("s5", "i6", "AP", "test", "Is there effusion? Lines  and tubes   unchanged"),
]
WORDS = [17, 17, 6, 0, 8, 7]
# Study-level labels (both images of s1 carry s1's labels); other observations blank.
CARDIOMEGALY = {"s1": 1.0, "s2": 0.0, "s3": -1.0, "s4": 1.0, "s5": np.nan}
EFFUSION = {"s1": np.nan, "s2": 1.0, "s3": np.nan, "s4": 0.0, "s5": -1.0}


def _write_png(path: Path, array: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return f"{path.parent.name}/{path.name}"


def _box(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros((32, 32), np.uint8)
    mask[y0:y1, x0:x1] = 255
    return mask


def _frame(text_only: bool = False) -> pd.DataFrame:
    records = []
    for study, image, view, split, findings in ROWS:
        record = {
            "study_id": study,
            "image_id": image,
            "image_path": "" if text_only else f"images/{image}.png",
            "view": view,
            "split": split,
            "findings": findings,
        }
        record.update({label: np.nan for label in CHEXPERT_LABELS})
        record["Cardiomegaly"] = CARDIOMEGALY[study]
        record["Pleural Effusion"] = EFFUSION[study]
        records.append(record)
    return pd.DataFrame.from_records(records)


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """A 6-image manifest: PNGs; split lung + heart masks on i1, union lung + heart on i3."""
    root = tmp_path / "tiny"
    df = _frame()
    gradient = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1))
    for image in df["image_id"]:
        _write_png(root / "images" / f"{image}.png", gradient)
    masks = {
        # The patient's left lung is on the image's right.
        "left_lung_mask_path": _write_png(root / "masks" / "left.png", _box(4, 26, 18, 28)),
        "right_lung_mask_path": _write_png(root / "masks" / "right.png", _box(4, 26, 4, 14)),
        "lung_mask_path": _write_png(root / "masks" / "lungs.png", _box(4, 26, 4, 28)),
        "heart_mask_path": _write_png(root / "masks" / "heart.png", _box(16, 28, 10, 22)),
    }
    for column in masks:
        df[column] = ""
    for column, rel in masks.items():
        df.loc[df["image_id"] == "i1", column] = rel
    df.loc[df["image_id"] == "i3", "lung_mask_path"] = masks["lung_mask_path"]
    df.loc[df["image_id"] == "i3", "heart_mask_path"] = masks["heart_mask_path"]
    return write_manifest(df, root / "manifest.csv")


@pytest.fixture
def text_only(tmp_path: Path) -> Path:
    """The same reports and labels with no images (every image_path empty)."""
    return write_manifest(_frame(text_only=True), tmp_path / "text" / "manifest.csv")


@pytest.fixture
def manifest(tiny: Path) -> Manifest:
    return read_manifest(tiny)


@pytest.fixture
def df(manifest: Manifest) -> pd.DataFrame:
    return manifest.frame


# --- explore ---------------------------------------------------------------------------


def test_split_view_counts(df):
    counts = explore.split_view_counts(df)
    expected = pd.DataFrame(
        [[2, 1, 1, 4], [1, 1, 0, 2], [3, 2, 1, 6]],
        index=pd.Index(["train", "test", "total"], name="split"),
        columns=pd.Index(["PA", "AP", "LATERAL", "total"], name="view"),
    )
    pd.testing.assert_frame_equal(counts, expected)


def test_split_view_counts_orders_splits_and_names_blank_views():
    df = pd.DataFrame(
        {"split": ["test", "validate", "train", "train"], "view": ["PA", "", "PA", "AP"]}
    )
    counts = explore.split_view_counts(df)
    assert list(counts.index) == ["train", "validate", "test", "total"]
    assert list(counts.columns) == ["PA", "(blank)", "AP", "total"]
    assert counts.loc["validate", "(blank)"] == 1
    assert counts.loc["total", "total"] == 4


def test_label_prevalence_per_study(df):
    prev = explore.label_prevalence(df)
    assert list(prev.columns) == [
        "observation",
        "split",
        "positive",
        "uncertain",
        "negative",
        "blank",
        "n",
        "positive_fraction",
        "positive_or_uncertain_fraction",
    ]
    assert len(prev) == 14 * 2
    assert list(prev["observation"].unique()) == list(CHEXPERT_LABELS)
    rows = prev.set_index(["observation", "split"])
    counts = ["positive", "uncertain", "negative", "blank", "n"]
    assert rows.loc[("Cardiomegaly", "train"), counts].tolist() == [1, 1, 1, 0, 3]
    assert rows.loc[("Cardiomegaly", "test"), counts].tolist() == [1, 0, 0, 1, 2]
    assert rows.loc[("Pleural Effusion", "train"), counts].tolist() == [1, 0, 0, 2, 3]
    assert rows.loc[("Pleural Effusion", "test"), counts].tolist() == [0, 1, 1, 0, 2]
    assert rows.loc[("Edema", "train"), counts].tolist() == [0, 0, 0, 3, 3]
    assert rows.loc[("Cardiomegaly", "train"), "positive_fraction"] == pytest.approx(1 / 3)
    assert rows.loc[("Cardiomegaly", "train"), "positive_or_uncertain_fraction"] == pytest.approx(
        2 / 3
    )
    assert rows.loc[("Pleural Effusion", "test"), "positive_or_uncertain_fraction"] == 0.5
    assert rows.loc[("Edema", "test"), "positive_fraction"] == 0.0


def test_label_prevalence_per_image(df):
    rows = explore.label_prevalence(df, per_study=False).set_index(["observation", "split"])
    counts = ["positive", "uncertain", "negative", "blank", "n"]
    assert rows.loc[("Cardiomegaly", "train"), counts].tolist() == [2, 1, 1, 0, 4]
    assert rows.loc[("Cardiomegaly", "train"), "positive_fraction"] == 0.5


def test_prevalence_wide(df):
    wide = explore.prevalence_wide(explore.label_prevalence(df), "positive")
    assert list(wide.index) == list(CHEXPERT_LABELS)
    assert list(wide.columns) == ["train", "test"]
    assert wide.loc["Cardiomegaly"].tolist() == [1, 1]


def test_findings_lengths(df):
    lengths = explore.findings_lengths(df)
    assert lengths.name == "words"
    assert lengths.tolist() == WORDS
    assert list(lengths.index) == list(df.index)
    odd = pd.DataFrame({"findings": ["", "   ", None, np.nan, "one\ttwo\nthree"]})
    assert explore.findings_lengths(odd).tolist() == [0, 0, 0, 0, 3]


def test_findings_lengths_by_split_counts_each_study_once(df):
    table = explore.findings_lengths_by_split(df)
    assert table["study_id"].tolist() == ["s1", "s2", "s3", "s4", "s5"]
    assert table["split"].tolist() == ["train", "train", "train", "test", "test"]
    assert table["words"].tolist() == [17, 6, 0, 8, 7]


def test_split_sentences_keeps_decimals():
    text = "There is a 1.5 cm  nodule.No change!  Size 2.0.\nIs it   new?? yes"
    assert explore.split_sentences(text) == [
        "there is a 1.5 cm nodule",
        "no change",
        "size 2.0",
        "is it new",
        "yes",
    ]
    assert explore.split_sentences("") == []
    assert explore.split_sentences(None) == []


def test_sentence_frequencies(df):
    freqs = explore.sentence_frequencies(df)
    assert list(freqs.columns) == ["sentence", "count", "fraction_of_reports"]
    # 4 non-empty reports (s3 is empty; s1's report is counted once for its 2 images).
    assert freqs.to_dict("records") == [
        {"sentence": "no pneumothorax", "count": 4, "fraction_of_reports": 0.75},
        {"sentence": "heart size is normal", "count": 2, "fraction_of_reports": 0.5},
        {"sentence": "is there effusion", "count": 1, "fraction_of_reports": 0.25},
        {"sentence": "lines and tubes unchanged", "count": 1, "fraction_of_reports": 0.25},
        {"sentence": "small left pleural effusion", "count": 1, "fraction_of_reports": 0.25},
        {
            "sentence": "there is a 1.5 cm nodule in the right upper lobe",
            "count": 1,
            "fraction_of_reports": 0.25,
        },
    ]
    top2 = explore.sentence_frequencies(df, top=2)
    assert top2["sentence"].tolist() == ["no pneumothorax", "heart size is normal"]
    empty = explore.sentence_frequencies(df.assign(findings=""))
    assert list(empty.columns) == ["sentence", "count", "fraction_of_reports"]
    assert len(empty) == 0


def test_load_image_and_mask(tiny, tmp_path):
    root = tiny.parent
    image = load_image(root / "images" / "i1.png")
    assert image.dtype == np.uint8 and image.shape == (32, 32)
    assert image[0, 0] == 0 and image[0, -1] == 248
    mask = load_mask(root / "masks" / "heart.png")
    assert mask.dtype == bool and mask.shape == (32, 32)
    assert int(mask.sum()) == 12 * 12
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.full((4, 5, 3), 200, np.uint8)).save(rgb)
    assert load_image(rgb).shape == (4, 5)
    deep = tmp_path / "deep.png"
    Image.fromarray(np.array([[0, 1000], [2000, 4000]], np.uint16)).save(deep)
    assert load_image(deep).tolist() == [[0, 64], [128, 255]]


@pytest.mark.parametrize("loader", [load_image, load_mask])
def test_load_errors_name_the_file(loader, tmp_path):
    missing = tmp_path / "nothing.png"
    with pytest.raises(CxrError, match=r"nothing\.png.*does not exist"):
        loader(missing)
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not a png")
    with pytest.raises(CxrError, match=r"garbage\.png.*not a readable"):
        loader(garbage)
    truncated = tmp_path / "truncated.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(CxrError, match=r"truncated\.png.*not a readable"):
        loader(truncated)


def test_sample_rows_is_deterministic(df):
    a = explore.sample_rows(df, 3, seed=1)
    b = explore.sample_rows(df, 3, seed=1)
    assert len(a) == 3
    assert list(a.index) == list(b.index)
    assert list(a.index) == sorted(a.index)
    assert explore.sample_rows(df, 10, seed=1).equals(df)
    assert len(explore.sample_rows(df, 0, seed=1)) == 0
    with pytest.raises(ValueError):
        explore.sample_rows(df, -1, seed=1)


# --- figures ---------------------------------------------------------------------------


def test_figures_return_figures_and_save(manifest, tmp_path):
    with matplotlib.rc_context():  # set_theme changes global rcParams: undo afterwards
        figures.set_theme()
        _check_figures(manifest, tmp_path)


def _check_figures(manifest: Manifest, tmp_path: Path) -> None:
    df = manifest.frame
    made = {
        "counts": figures.plot_split_view_counts(explore.split_view_counts(df)),
        "prev": figures.plot_label_prevalence(explore.label_prevalence(df)),
        "lengths": figures.plot_findings_lengths(explore.findings_lengths_by_split(df)),
        "sentences": figures.plot_top_sentences(explore.sentence_frequencies(df)),
        "masks": figures.plot_mask_overlays(manifest, n=8, seed=0),
        "empty": figures.plot_top_sentences(explore.sentence_frequencies(df.assign(findings=""))),
    }
    for fig in made.values():
        assert isinstance(fig, Figure)
    # 6 images in a grid of 4 columns; legend shows split lungs, union lungs and heart.
    masks = made["masks"]
    assert sum(ax.get_images() != [] for ax in masks.axes) == 6
    labels = [t.get_text() for t in masks.legends[0].get_texts()]
    assert labels == ["lung (patient's left)", "lung (patient's right)", "lungs", "heart"]

    out = tmp_path / "figs" / "nested"
    paths = figures.save_figure(made["prev"], out, "prev")
    assert paths == [out / "prev.png", out / "prev.pdf"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths[1].read_bytes()[:5] == b"%PDF-"
    with Image.open(paths[0]) as png:
        dpi = png.info["dpi"]
    assert math.isclose(dpi[0], 300, abs_tol=0.5)
    first = [p.read_bytes() for p in paths]
    figures.save_figure(made["prev"], out, "prev")
    assert [p.read_bytes() for p in paths] == first  # byte-stable rerun
    with pytest.raises(ValueError):
        figures.save_figure(made["prev"], out, "prev.png")


def test_mask_overlays_without_mask_columns(manifest):
    plain = manifest.subset(
        manifest.frame.drop(
            columns=[
                "lung_mask_path",
                "left_lung_mask_path",
                "right_lung_mask_path",
                "heart_mask_path",
            ]
        )
    )
    fig = figures.plot_mask_overlays(plain, n=3, seed=0)
    assert sum(ax.get_images() != [] for ax in fig.axes) == 3
    assert fig.legends == []


def test_mask_overlays_refuse_text_only(text_only):
    df = read_manifest(text_only)
    with pytest.raises(CxrError, match="text-only"):
        figures.plot_mask_overlays(df)


# --- notebook 01 -----------------------------------------------------------------------


def _run_notebook(manifest: Path, tmp_path: Path) -> tuple[Path, Path]:
    import papermill

    figures_dir = tmp_path / "figures"
    out = tmp_path / "01_out.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOK),
        str(out),
        parameters={
            "manifest": str(manifest),
            "figures_dir": str(figures_dir),
            "seed": 0,
            "n_overlay": 4,
        },
        cwd=str(tmp_path),
        kernel_name="python3",
        progress_bar=False,
    )
    return figures_dir, out


@pytest.mark.slow
def test_notebook_runs_on_tiny_manifest(tiny, tmp_path):
    figures_dir, out = _run_notebook(tiny, tmp_path)
    for name in FIGURE_NAMES:
        assert (figures_dir / f"{name}.png").is_file(), name
        assert (figures_dir / f"{name}.pdf").is_file(), name
    executed = nbformat.read(out, as_version=4)
    shown = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs if "data" in o]
    assert sum("image/png" in o["data"] for o in shown) == 5  # each figure shown once


@pytest.mark.slow
def test_notebook_runs_on_text_only_manifest(text_only, tmp_path):
    figures_dir, out = _run_notebook(text_only, tmp_path)
    for name in FIGURE_NAMES[:4]:
        assert (figures_dir / f"{name}.png").is_file(), name
    assert not (figures_dir / "01_mask_overlays.png").exists()
    executed = nbformat.read(out, as_version=4)
    printed = "".join(
        o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs
    )
    assert "Text-only manifest" in printed
