"""The explorer of notebook 07: studies, views under each mode, labels, display, widget."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from cxrlib.anatomy.priors import masks_to_priors
from cxrlib.base.errors import CxrError
from cxrlib.base.images import to_pixels
from cxrlib.base.masks import load_mask
from cxrlib.data.manifest import CHEXPERT_LABELS, text_cell
from cxrlib.experiment.explorer import (
    Explorer,
    compare_labels,
    explorer_widget,
    latest_run,
    prior_figure,
    view_html,
)
from cxrlib.experiment.inference import read_radiograph
from cxrlib.metrics.grounding import SIDE_COLUMNS
from cxrlib.metrics.labeler import label_reports, laterality_column
from cxrlib.training.generate import load_run
from cxrlib.training.inputs import resolve_manifest
from cxrlib.training.train import train
from tests import smoke_config

NAN = math.nan


@pytest.fixture(scope="module")
def workbook_run(tmp_path_factory):
    """A run folder like the workbook's: ``train/none-seed0`` and ``train/soft-seed0``."""
    cache = tmp_path_factory.mktemp("cache")
    run = tmp_path_factory.mktemp("run")
    for mode in ("soft", "none"):
        config = smoke_config(cache)
        config.model.mode = mode
        train(config, run / "train" / f"{mode}-seed0", progress=False)
    return run, resolve_manifest(smoke_config(cache))


@pytest.fixture(scope="module")
def explorer(workbook_run):
    run, _ = workbook_run
    return Explorer(run)


def test_modes_studies_and_findings_come_from_the_run_and_its_test_split(explorer, workbook_run):
    _, manifest = workbook_run
    assert explorer.modes == ["none", "soft"]
    assert explorer.manifest == manifest
    df = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    test = df[df["split"] == "test"]
    assert explorer.studies() == test["image_id"].tolist()
    assert explorer.truth_source == "manifest"  # the phantom's exact labels
    counts = dict(explorer.findings().itertuples(index=False))
    for finding, n in counts.items():
        positive = test[pd.to_numeric(test[finding], errors="coerce") == 1]
        assert n == len(positive)
        assert explorer.studies(finding) == positive["image_id"].tolist()


def test_a_study_view_is_what_the_models_say_with_the_manifests_masks(explorer, workbook_run):
    run, manifest = workbook_run
    study = explorer.studies()[0]
    row = explorer.studies_frame.set_index("image_id").loc[study]
    root = manifest.parent
    view = explorer.view(study, mode="soft")
    config, model, _ = load_run(run / "train" / "soft-seed0")
    prior_config = config.priors.resolve(
        model.config.image_size, model.config.patch_size, model.num_decoder_layers
    )
    masks = {
        name: load_mask(root / row[f"{name}_mask_path"])[None]
        for name in ("left_lung", "right_lung", "heart")
    }
    priors = masks_to_priors(masks, prior_config)
    gray = read_radiograph(root / row["image_path"])
    with torch.no_grad():
        pixels = to_pixels(gray, model.config.image_size)[None]
        expected = model.generate(pixel_values=pixels, priors=priors)[0].strip()
    assert view.generated == expected and view.generated_source == "generated now"
    grid = prior_config.grid
    np.testing.assert_array_equal(view.priors, priors[0].numpy().reshape(-1, grid, grid))
    assert view.reference == row["findings"].strip()
    assert view.mask_source == "manifest"
    assert np.array_equal(view.image, gray)
    if expected:
        assert len(view.attention.sentences) == len(view.captions)
    # the none run: its own text, no prior used, but the same priors drawn
    other = explorer.view(study, mode="none")
    assert other.mode == "none" and other.run.name == "none-seed0"
    np.testing.assert_array_equal(other.priors, view.priors)


def test_the_ablations_generations_are_shown_when_the_run_has_them(explorer, workbook_run):
    run, _ = workbook_run
    study = explorer.studies()[1]
    folder = run / "ablation" / "generations"
    folder.mkdir(parents=True, exist_ok=True)
    text = "There is a small left pleural effusion."
    pd.DataFrame({"image_id": [study], "generated": [f" {text}"]}).to_csv(
        folder / "soft-seed0.csv", index=False
    )
    try:
        view = Explorer(run).view(study, mode="soft")
    finally:
        (folder / "soft-seed0.csv").unlink()
    assert view.generated == text
    assert view.generated_source == "ablation generations (as evaluated)"
    effusion = view.labels.set_index("finding").loc["Pleural Effusion"]
    assert effusion["generated"] == "positive (left)"


def test_compare_labels_marks_each_finding_by_the_grounding_rules():
    generated = {
        "Pleural Effusion": 1.0,
        "Pleural Effusion laterality": "left",
        "Pneumothorax": 1.0,
        "Pneumothorax laterality": "right",
        "Edema": 1.0,
        "Cardiomegaly": -1.0,  # uncertain counts as negative
        "Atelectasis": 0.0,
    }
    truth = {
        "Pleural Effusion": 1.0,
        "effusion_side": "right",
        "Pneumothorax": 1.0,
        "pneumothorax_side": "right",
        "Edema": 0.0,
        "Cardiomegaly": 1.0,
        "Atelectasis": NAN,
        "Lung Lesion": NAN,
    }
    table = compare_labels(generated, truth).set_index("finding")
    assert table["verdict"].to_dict() == {
        "Cardiomegaly": "omitted",
        "Edema": "hallucinated",
        "Pneumothorax": "correct",
        "Pleural Effusion": "wrong side",
    }
    assert table.loc["Pleural Effusion", "generated"] == "positive (left)"
    assert table.loc["Pleural Effusion", "reference"] == "positive (right)"
    assert table.loc["Cardiomegaly", "generated"] == "uncertain"
    assert list(table.index) == ["Cardiomegaly", "Edema", "Pneumothorax", "Pleural Effusion"]
    assert compare_labels({}, {}).empty


def test_an_image_file_is_viewed_with_a_uniform_prior_when_the_run_has_no_segmenter(
    explorer, workbook_run
):
    _, manifest = workbook_run
    row = explorer.studies_frame.iloc[0]
    view = explorer.view(image=manifest.parent / row["image_path"], mode="soft")
    assert view.reference is None and view.masks is None
    assert view.mask_source.startswith("none (uniform prior)")
    assert (view.priors == 1).all()
    assert set(view.labels["verdict"]) <= {""}
    assert "<i>none: an image file</i>" in view_html(view)


def test_html_names_study_and_mode_and_escapes_text(explorer):
    view = explorer.view(explorer.studies()[0], mode="none", attention=False)
    view.generated = "<script>alert(1)</script>"
    text = view_html(view)
    assert f'data-study="{view.name}"' in text and 'data-mode="none"' in text
    assert "<script>" not in text and "&lt;script&gt;" in text
    fig = prior_figure(view)
    assert len(fig.axes) >= 1 + view.priors.shape[0]
    assert "not used: mode none" in fig.texts[0].get_text()


def test_bad_requests_fail_with_one_line(explorer, tmp_path):
    with pytest.raises(CxrError, match="not in the test split"):
        explorer.view("no-such-study")
    with pytest.raises(CxrError, match="one of the two"):
        explorer.view()
    with pytest.raises(CxrError, match="no strict run"):
        explorer.view(explorer.studies()[0], mode="strict")
    (tmp_path / "x.png").write_text("not an image")
    with pytest.raises(CxrError, match="x.png"):
        explorer.view(image=tmp_path / "x.png")
    with pytest.raises(CxrError, match="no training run"):
        Explorer(tmp_path)


def test_the_widget_redraws_for_the_study_mode_and_image_picked(explorer, monkeypatch):
    calls = []
    real = explorer.view

    def spy(study=None, **kwargs):
        calls.append((study, kwargs.get("image"), kwargs.get("mode")))
        return real(study, **{**kwargs, "attention": False})

    monkeypatch.setattr(explorer, "view", spy)
    monkeypatch.setattr("cxrlib.experiment.explorer.show_view", lambda view: None)
    box = explorer_widget(explorer, mode="soft")
    controls, _ = box.children
    (finding, pick, typed), (path, button), modes = (
        controls.children[0].children,
        controls.children[1].children,
        controls.children[2],
    )
    first, second = explorer.studies()[:2]
    assert calls == [(first, None, "soft")]
    pick.value = second
    modes.value = "none"
    assert calls[1:] == [(second, None, "soft"), (second, None, "none")]
    path.value = "/no/such/file.png"
    button.click()  # the error is shown in the output area, not raised
    assert calls[-1] == (None, "/no/such/file.png", "none")
    name, count = explorer.findings().iloc[0]
    finding.value = name
    assert list(pick.options) == explorer.studies(name)
    # a typed id outside the filter: back to every study, that one shown
    outside = next(i for i in explorer.studies() if i not in explorer.studies(name))
    typed.value = outside
    assert finding.value == "" and pick.value == outside
    assert calls[-1] == (outside, None, "none")


def test_latest_run_is_the_newest_with_trained_models(workbook_run, tmp_path):
    run, _ = workbook_run
    assert latest_run(run.parent) == run
    with pytest.raises(CxrError, match="make workbook"):
        latest_run(tmp_path)


def test_without_manifest_labels_the_reference_is_labelled_once_by_the_labeler(workbook_run):
    run, manifest = workbook_run
    df = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    df[list(CHEXPERT_LABELS)] = ""  # text only: no label columns filled
    unlabelled = manifest.with_name("manifest_unlabelled.csv")
    df.to_csv(unlabelled, index=False)
    ex = Explorer(run, unlabelled)
    assert ex.truth_source == "labeler"
    test = df[df["split"] == "test"]
    labels = label_reports(test["findings"])
    counts = dict(ex.findings().itertuples(index=False))
    assert counts == {k: int(v) for k, v in (labels[list(counts)] == 1).sum().items()}
    assert counts and all(v > 0 for v in counts.values())
    finding = next(iter(counts))
    assert ex.studies(finding) == test["image_id"][(labels[finding] == 1).to_numpy()].tolist()
    study = test["image_id"].iloc[0]
    truth = ex.truth(study)
    for obs, column in SIDE_COLUMNS.items():
        assert text_cell(truth[column]) == text_cell(labels[laterality_column(obs)].iloc[0])
    with pytest.raises(CxrError, match="not in the test split"):
        ex.truth("no-such-study")
