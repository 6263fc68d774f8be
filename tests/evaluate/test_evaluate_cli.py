"""``cxr evaluate`` and ``evaluate_generations``: tiny hand-made manifests, exact values,
the output files and keys, and one-line errors."""

import json
import math

import pandas as pd
import pytest

from cxrlib.base.errors import CxrError
from cxrlib.cli import main
from cxrlib.data.manifest import CHEXPERT_LABELS, read_manifest
from cxrlib.evaluate.evaluate import METRIC_KEYS, evaluate_generations
from cxrlib.metrics.clinical import CLINICAL_KEYS
from cxrlib.metrics.labeler import LABELER_NAME
from cxrlib.metrics.lexical import LEXICAL_KEYS
from cxrlib.metrics.radgraph import RADGRAPH_KEYS

from .test_lexical import COCO_BLEU, COCO_CIDER, COCO_ROUGE, HYPS, REFS

LABELS = [
    {"No Finding": "1", "Pleural Effusion": "0"},
    {"Pleural Effusion": "1"},
    {"Edema": "1", "Cardiomegaly": "-1"},
    {"No Finding": "1"},
]


def write_manifest(path):
    rows = []
    for i, (ref, labels) in enumerate(zip(REFS, LABELS, strict=True)):
        row = {
            "study_id": f"s{i + 1}",
            "image_id": f"i{i + 1}",
            "image_path": "",
            "view": "PA",
            "split": "test",
            "findings": ref,
        }
        row.update({obs: labels.get(obs, "") for obs in CHEXPERT_LABELS})
        rows.append(row)
    extra = dict(rows[0], study_id="s9", image_id="i9", split="train")
    pd.DataFrame(rows + [extra]).to_csv(path, index=False)
    return path


@pytest.fixture
def files(tmp_path):
    manifest = write_manifest(tmp_path / "manifest.csv")
    pred = tmp_path / "pred.csv"
    pd.DataFrame({"image_id": ["i1", "i2", "i3", "i4"], "generated": HYPS}).to_csv(
        pred, index=False
    )
    return manifest, pred, tmp_path / "out"


def run(*args):
    return main(["evaluate", *map(str, args), "--no-progress"])


def test_writes_every_output_with_the_documented_keys(files):
    manifest, pred, out = files
    assert run("--pred", pred, "--ref", manifest, "--out", out, "--bootstrap", "30") == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "labels_generated.csv",
        "labels_reference.csv",
        "metrics.json",
        "metrics.md",
        "per_observation.csv",
    ]
    data = json.loads((out / "metrics.json").read_text())
    keys = set(data["metrics"]) | set(data["unavailable"])
    assert keys == set(METRIC_KEYS)
    assert set(CLINICAL_KEYS) <= set(data["metrics"])
    assert {f"lexical.{k}" for k in LEXICAL_KEYS if k != "meteor"} <= set(data["metrics"])
    for key in RADGRAPH_KEYS:  # the radgraph package is not installed here
        assert key in data["unavailable"] or key in data["metrics"]
    for entry in data["metrics"].values():
        assert set(entry) == {"value", "ci_low", "ci_high", "n", "n_studies"}
        assert entry["n"] == 4 and entry["n_studies"] == 4
        assert entry["ci_low"] <= entry["ci_high"]
    assert data["labeler"] == LABELER_NAME and data["reference_labels"] == LABELER_NAME
    assert data["counts"] == {
        "n": 4,
        "n_studies": 4,
        "empty_generated": 1,
        "empty_reference": 0,
        "manifest_rows_without_prediction": 0,
    }
    assert data["bootstrap"]["n_resamples"] == 30 and data["bootstrap"]["unit"] == "studies"
    assert "uncertain_as_positive" in data["conventions"]
    assert "git_commit" in data["provenance"]
    table = pd.read_csv(out / "per_observation.csv")
    assert len(table) == 28
    assert list(table.columns[:7]) == [
        "observation",
        "convention",
        "precision",
        "recall",
        "f1",
        "support",
        "labeler",
    ]
    gen = pd.read_csv(out / "labels_generated.csv", dtype=str, keep_default_na=False)
    assert gen["image_id"].tolist() == ["i1", "i2", "i3", "i4"]
    assert gen.loc[1, "Pleural Effusion"] == "1" and gen.loc[3, "Edema"] == ""
    md = (out / "metrics.md").read_text()
    assert (
        "| metric | value | 95% CI | n |" in md and "clinical.uncertain_as_negative.micro_14" in md
    )


def test_exact_values_with_manifest_labels(files):
    manifest, pred, out = files
    code = run("--pred", pred, "--ref", manifest, "--out", out, "--ref-labels", "manifest")
    assert code == 0
    data = json.loads((out / "metrics.json").read_text())
    m = {k: v["value"] for k, v in data["metrics"].items()}
    assert data["reference_labels"] == "manifest"
    # generated (rule labeler): 1: No Finding 1, Cardiomegaly 0, Effusion 0; 2: Effusion 1;
    # 3: Cardiomegaly 1, Edema 1; 4: blank. Manifest: see LABELS.
    # uncertain as negative: No Finding TP1 FN1, Effusion TP1, Edema TP1, Cardiomegaly FP1
    assert m["clinical.uncertain_as_negative.micro_14"] == pytest.approx(6 / 8)
    assert m["clinical.uncertain_as_negative.macro_14"] == pytest.approx((2 / 3 + 2) / 14)
    assert m["clinical.uncertain_as_negative.micro_5"] == pytest.approx(4 / 5)
    assert m["clinical.uncertain_as_negative.macro_5"] == pytest.approx(2 / 5)
    # uncertain as positive: Cardiomegaly becomes TP1
    assert m["clinical.uncertain_as_positive.micro_14"] == pytest.approx(8 / 9)
    assert m["clinical.uncertain_as_positive.macro_14"] == pytest.approx((2 / 3 + 3) / 14)
    assert m["clinical.uncertain_as_positive.micro_5"] == pytest.approx(1.0)
    assert m["clinical.uncertain_as_positive.macro_5"] == pytest.approx(3 / 5)
    # lexical: the pycocoevalcap-verified values of test_lexical
    for k in range(4):
        assert m[f"lexical.bleu_{k + 1}"] == pytest.approx(COCO_BLEU[k], abs=1e-14)
    assert m["lexical.rouge_l"] == pytest.approx(COCO_ROUGE, abs=1e-14)
    assert m["lexical.cider"] == pytest.approx(COCO_CIDER, abs=1e-12)
    ref = pd.read_csv(out / "labels_reference.csv", dtype=str, keep_default_na=False)
    assert ref.loc[2, "Cardiomegaly"] == "-1" and set(ref["labeler"]) == {"manifest"}


def test_seeded_and_no_bootstrap(files, tmp_path):
    manifest, pred, out = files
    assert run("--pred", pred, "--ref", manifest, "--out", out, "--bootstrap", "20") == 0
    again = tmp_path / "again"
    assert run("--pred", pred, "--ref", manifest, "--out", again, "--bootstrap", "20") == 0
    first = json.loads((out / "metrics.json").read_text())["metrics"]
    assert first == json.loads((again / "metrics.json").read_text())["metrics"]
    none = tmp_path / "none"
    assert run("--pred", pred, "--ref", manifest, "--out", none, "--bootstrap", "0") == 0
    data = json.loads((none / "metrics.json").read_text())
    assert all(v["ci_low"] is None and v["ci_high"] is None for v in data["metrics"].values())
    assert "n/a" in (none / "metrics.md").read_text()


def test_library_call_with_given_radgraph_annotations(files):
    manifest, _pred, _out = files
    ref_df = read_manifest(manifest, check_files=False)
    pred_df = pd.DataFrame({"image_id": ["i2", "i3"], "generated": [HYPS[1], HYPS[2]]})
    entity = {"tokens": "effusion", "label": "OBS-DP", "relations": []}
    ann = {"entities": {"1": entity}}
    result = evaluate_generations(
        pred_df,
        ref_df,
        n_bootstrap=10,
        progress=False,
        meteor=False,
        radgraph_annotations=([ann, None], [ann, ann]),
    )
    assert result.radgraph_model == "given"
    assert result.value("radgraph.simple") == pytest.approx(0.5)  # 1 and 0 (empty)
    assert result.counts["manifest_rows_without_prediction"] == 2
    assert "lexical.meteor" in result.unavailable
    assert result.metrics["radgraph.simple"].n == 2


def error_of(capsys, *args):
    assert run(*args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("cxr: error: ") and "\n" not in err
    return err


def test_one_line_errors(files, capsys, tmp_path, monkeypatch):
    manifest, pred, out = files
    assert "file does not exist" in error_of(
        capsys, "--pred", tmp_path / "no.csv", "--ref", manifest, "--out", out
    )
    bad = tmp_path / "bad.csv"
    bad.write_text("image_id,text\ni1,x\n")
    err = error_of(capsys, "--pred", bad, "--ref", manifest, "--out", out)
    assert "bad.csv" in err and "generated" in err
    bad.write_text("image_id,generated\ni1,x\ni2,y\ni1,z\n")
    err = error_of(capsys, "--pred", bad, "--ref", manifest, "--out", out)
    assert "bad.csv:4" in err and "duplicate image_id 'i1'" in err and "line 2" in err
    bad.write_text("image_id,generated\ni1,x\nnope,y\n")
    err = error_of(capsys, "--pred", bad, "--ref", manifest, "--out", out)
    assert "bad.csv:3" in err and "'nope'" in err and "manifest.csv" in err
    bad.write_text("image_id,generated\ni9,x\n")
    err = error_of(capsys, "--pred", bad, "--ref", manifest, "--out", out)
    assert "split 'train'" in err
    assert run("--pred", bad, "--ref", manifest, "--out", out, "--split", "all") == 0
    capsys.readouterr()
    monkeypatch.delenv("CXR_CHEXBERT", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "c"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    err = error_of(capsys, "--pred", pred, "--ref", manifest, "--out", out, "--labeler", "chexbert")
    assert "chexbert.pth" in err
    blank = tmp_path / "blank.csv"
    frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    for obs in CHEXPERT_LABELS:
        frame[obs] = ""
    frame.to_csv(blank, index=False)
    err = error_of(capsys, "--pred", pred, "--ref", blank, "--out", out, "--ref-labels", "manifest")
    assert "every label" in err


def test_empty_generated_text_is_allowed_and_counted(files):
    manifest, _pred, _out = files
    ref_df = read_manifest(manifest, check_files=False)
    pred_df = pd.DataFrame({"image_id": ["i1", "i2"], "generated": ["", float("nan")]})
    result = evaluate_generations(pred_df, ref_df, n_bootstrap=0, progress=False, meteor=False)
    assert result.counts["empty_generated"] == 2
    assert result.value("lexical.bleu_1") == 0.0
    assert result.value("clinical.uncertain_as_negative.micro_14") == 0.0
    assert math.isnan(result.metrics["lexical.cider"].ci_low)
    with pytest.raises(CxrError, match="ref_labels"):
        evaluate_generations(pred_df, ref_df, ref_labels="other")
