"""The workbook runner: order, parameters, run folders, failures, and the real notebooks."""

import json

import nbformat
import pandas as pd
import pytest

from cxrlib.data.manifest import read_manifest
from cxrlib.errors import CxrError
from cxrlib.workbook import PROFILES, PhantomSpec, notebook_paths, prepare_phantom, run_workbook

ROOT_NOTEBOOKS = notebook_paths.__globals__["REPO_ROOT"] / "notebooks"


def _notebook(path, params: str, body: str) -> None:
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, path)


@pytest.fixture
def manifest(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("placeholder\n")
    return path


def test_runs_in_order_with_declared_parameters_only(tmp_path, manifest):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    body = (
        "from pathlib import Path\n"
        "p = Path(run_dir) / 'order.txt'\n"
        "p.write_text(p.read_text() + NAME if p.exists() else NAME)\n"
    )
    _notebook(nbs / "02_b.ipynb", "run_dir = ''\nNAME = 'b'", body)
    _notebook(nbs / "01_a.ipynb", "run_dir = ''\nmanifest = ''\nNAME = 'a'", body)
    (nbs / "notes.ipynb").write_text("not a numbered notebook, ignored")
    run = tmp_path / "run"
    result = run_workbook("smoke", out=run, notebooks=nbs, manifest=manifest)
    assert (run / "order.txt").read_text() == "ab"
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "complete"
    assert [n["notebook"] for n in record["notebooks"]] == ["01_a.ipynb", "02_b.ipynb"]
    assert record["notebooks"][0]["parameters"] == {"run_dir": str(run), "manifest": str(manifest)}
    assert record["notebooks"][1]["parameters"] == {"run_dir": str(run)}
    assert {"git_commit", "packages", "python"} <= set(record["provenance"])
    assert (run / "notebooks" / "01_a.ipynb").is_file()
    assert result.run_dir == run


def test_first_failure_stops_the_run_naming_notebook_and_cell(tmp_path, manifest):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    _notebook(nbs / "01_ok.ipynb", "x = 1", "y = x + 1")
    _notebook(nbs / "02_bad.ipynb", "x = 1", "raise RuntimeError('the prior is missing')")
    _notebook(nbs / "03_never.ipynb", "run_dir = ''", "open(run_dir + '/ran', 'w')")
    run = tmp_path / "run"
    with pytest.raises(CxrError) as err:
        run_workbook("smoke", out=run, notebooks=nbs, manifest=manifest)
    message = str(err.value)
    assert message.startswith("notebook 02_bad.ipynb failed at cell 2: RuntimeError")
    assert "the prior is missing" in message
    assert not (run / "ran").exists()
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "failed"
    assert [n["status"] for n in record["notebooks"]] == ["ok", "failed"]


def test_a_run_never_overwrites_another(tmp_path, manifest):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("{}")
    with pytest.raises(CxrError, match="exists and is not empty"):
        run_workbook("smoke", out=run, manifest=manifest)


def test_no_notebooks(tmp_path, manifest):
    with pytest.raises(CxrError, match="no numbered notebooks"):
        run_workbook("smoke", out=tmp_path / "r", notebooks=tmp_path, manifest=manifest)


def test_phantom_cache_is_reused_and_keyed(tmp_path):
    spec = PhantomSpec(n=4, seed=1, size=64)
    first = prepare_phantom(spec, tmp_path)
    stamp = first.stat().st_mtime_ns
    assert prepare_phantom(spec, tmp_path) == first
    assert first.stat().st_mtime_ns == stamp  # reused, not rewritten
    other = prepare_phantom(PhantomSpec(n=5, seed=1, size=64), tmp_path)
    assert other != first
    assert len(read_manifest(other)) == 5


def test_profiles_offer_the_notebook_parameters():
    for profile in PROFILES.values():
        assert "seed" in profile.parameters
    assert PROFILES["default"].publish_figures
    assert not PROFILES["smoke"].publish_figures


@pytest.mark.slow
def test_smoke_profile_runs_the_real_notebooks_on_a_phantom_set(tmp_path):
    run = tmp_path / "run"
    result = run_workbook("smoke", out=run, cache=tmp_path / "cache")
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "complete"
    names = [p.name for p in notebook_paths(ROOT_NOTEBOOKS)]
    assert [n["notebook"] for n in record["notebooks"]] == names
    for name in names:
        executed = nbformat.read(run / "notebooks" / name, as_version=4)
        assert any(c.get("outputs") for c in executed.cells if c.cell_type == "code")
    for fig in (
        "01_label_prevalence",
        "01_mask_overlays",
        "01_split_view_counts",
        "02_segmenter_training",
        "02_segmentation_overlays",
        "02_ctr_scatter",
        "02_prior_stack_thesis",
        "02_prior_stack_linear",
        "training_curves_soft",
        "04_per_observation_f1_soft",
        "06_ablation",
        "06_observation_f1",
        "06_prior_stack",
        "06_attention_1",
        "06_training_curves",
        "06_label_prevalence",
        "06_segmentation_overlays",
    ):
        assert (run / "figures" / f"{fig}.png").is_file()
        assert (run / "figures" / f"{fig}.pdf").is_file()
    assert result.manifest.parent.parent == tmp_path / "cache"
    ablation = run / "ablation"
    for name in ("ablation.csv", "ablation_summary.csv", "paired_tests.csv", "ablation.tex"):
        assert (ablation / name).is_file()
    summary = pd.read_csv(ablation / "ablation_summary.csv")
    assert set(summary["system"]) == {"none", "soft", "strict", "retrieval", "most_frequent"}
    assert summary[summary["system"] == "soft"]["n_seeds"].max() == 3


def test_full_profile_needs_a_manifest(tmp_path):
    with pytest.raises(CxrError, match="give --manifest"):
        run_workbook("full", out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_notebook_01_default_manifest_is_the_smoke_profiles_phantom_set():
    import papermill as pm

    declared = pm.inspect_notebook(str(ROOT_NOTEBOOKS / "01_dataset_exploration.ipynb"))
    default = declared["manifest"]["default"].strip("\"'")
    assert default == f"../cache/{PROFILES['smoke'].phantom.name}/manifest.csv"
