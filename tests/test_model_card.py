"""Model cards in every checkpoint, and ``cxr export`` of a run, on a smoke run."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml

from cxrlib.anatomy.priors import schedule
from cxrlib.anatomy.segmenter import Segmenter, SegmenterConfig
from cxrlib.base.errors import CxrError
from cxrlib.cli import main
from cxrlib.data.manifest import read_manifest
from cxrlib.evaluate.evaluate import evaluate_generations
from cxrlib.experiment.export import export_run
from cxrlib.experiment.inference import report_images
from cxrlib.model import ReportModel
from cxrlib.training.generate import generate_split, load_run
from cxrlib.training.inputs import resolve_manifest
from cxrlib.training.model_card import CARD_FILE, MODEL_FILES, NOT_MEASURED, model_card
from tests import trained_smoke_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out, config = trained_smoke_run(tmp_path_factory)
    return out, config


@pytest.fixture(scope="module")
def evaluation_file(run, tmp_path_factory):
    """A ``cxr evaluate`` metrics.json of the run on the phantom's test split."""
    out, config = run
    manifest = resolve_manifest(config)
    generated = generate_split(out, manifest, "test", progress=False).frame
    folder = tmp_path_factory.mktemp("evaluation")
    evaluate_generations(
        generated,
        read_manifest(manifest, check_files=False),
        ref_labels="manifest",
        n_bootstrap=20,
        meteor=False,
        progress=False,
        attention_studies=0,
        out=folder,
    )
    return folder / "metrics.json"


def _header(card: str) -> dict:
    assert card.startswith("---\n")
    front, _, _ = card[4:].partition("\n---\n")
    return yaml.safe_load(front)


def _prior_schedule(config, checkpoint):
    model = ReportModel.from_pretrained(checkpoint)
    resolved = config.priors.resolve(
        model.config.image_size, model.config.patch_size, model.num_decoder_layers
    )
    return schedule(resolved)


def test_every_checkpoint_carries_a_card_without_test_metrics(run):
    out, config = run
    for name in ("best", "last"):
        folder = out / "checkpoints" / name
        card = (folder / CARD_FILE).read_text()
        header = _header(card)
        assert header["library_name"] == "cxrlib" and header["license"] == "mit"
        assert header["pipeline_tag"] == "image-to-text"
        assert {"transformers", "chest-x-ray", "attention-mode-soft"} <= set(header["tags"])
        assert header["datasets"] == ["cxrlib-phantom"]
        assert "val_loss" in header["metrics"] and "model-index" not in header
        assert "This model: **soft**" in card
        assert f"checkpoint {name}" in card
        for layer, (kernel, sigma) in enumerate(_prior_schedule(config, folder)):
            assert f"| {layer + 1} | {sigma:.4f} | {kernel} |" in card  # counted from 1
        assert NOT_MEASURED in card
        assert "best val_loss so far" in card  # the validation metric known at the time
        assert "Research only" in card and "Not for clinical use" in card
        record = json.loads((out / "run_config.json").read_text())
        assert record["git_commit"] in card


def test_card_is_deterministic(run, evaluation_file):
    out, _ = run
    assert model_card(out) == model_card(out)
    assert model_card(out, metrics=evaluation_file) == model_card(out, metrics=evaluation_file)


def test_export_with_metrics_loads_and_generates_the_same(run, evaluation_file, tmp_path):
    out, config = run
    exported = export_run(out, tmp_path / "model", metrics=evaluation_file)
    files = sorted(p.name for p in exported.iterdir())
    assert files == sorted([*MODEL_FILES, "run_config.json", CARD_FILE])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    card = (exported / CARD_FILE).read_text()
    header = _header(card)
    measured = json.loads(evaluation_file.read_text())["metrics"]
    key = "clinical.uncertain_as_negative.micro_14"
    m = measured[key]
    assert key in header["metrics"]
    (result,) = header["model-index"][0]["results"]
    assert result["dataset"]["split"] == "test"
    values = {x["type"]: x["value"] for x in result["metrics"]}
    assert values[key] == pytest.approx(m["value"], abs=1e-6)
    assert f"| {key} | {m['value']:.4f} | [{m['ci_low']:.4f}, {m['ci_high']:.4f}] |" in card
    assert "95% percentile bootstrap over studies, 20 resamples" in card
    assert NOT_MEASURED not in card

    original = ReportModel.from_pretrained(out / "checkpoints" / "best")
    copy = ReportModel.from_pretrained(exported)
    pixels = torch.rand(1, 3, original.config.image_size, original.config.image_size)
    with torch.no_grad():
        assert copy.generate(pixel_values=pixels) == original.generate(pixel_values=pixels)
    loaded_config, _, checkpoint = load_run(exported)
    assert checkpoint == exported and loaded_config.to_dict() == config.to_dict()


def test_export_finds_the_ablation_evaluation(run, evaluation_file, tmp_path):
    out, _ = run
    workbook = tmp_path / "workbook"
    shutil.copytree(out, workbook / "train" / "soft-seed0")
    evaluation = workbook / "ablation" / "evaluation" / "soft-seed0"
    evaluation.mkdir(parents=True)
    shutil.copyfile(evaluation_file, evaluation / "metrics.json")
    exported = export_run(workbook / "train" / "soft-seed0", tmp_path / "model")
    card = (exported / CARD_FILE).read_text()
    assert "model-index" in _header(card) and NOT_MEASURED not in card


def test_export_refuses_bad_input(run, tmp_path):
    out, _ = run
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "file.txt").write_text("x")
    with pytest.raises(CxrError, match="not empty"):
        export_run(out, busy)
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copyfile(out / "run_config.json", bare / "run_config.json")
    with pytest.raises(CxrError, match="no checkpoints/best or checkpoints/last"):
        export_run(bare, tmp_path / "a")
    with pytest.raises(CxrError, match="no such training run"):
        export_run(tmp_path / "missing", tmp_path / "b")
    bad = tmp_path / "metrics.json"
    bad.write_text('{"metrics": 3}')
    with pytest.raises(CxrError, match="not a cxr evaluate metrics.json"):
        export_run(out, tmp_path / "c", metrics=bad)
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


def test_cli_export(run, tmp_path, capsys):
    out, _ = run
    target = tmp_path / "model"
    assert main(["export", str(out), "--out", str(target)]) == 0
    said = capsys.readouterr().out
    assert str(target) in said and "no test metrics" in said
    assert (target / CARD_FILE).is_file() and not (target / "optimizer.safetensors").exists()
    assert main(["export", str(out), "--out", str(target)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("cxr: error:") and "not empty" in err and "\n" not in err


def test_an_export_ships_the_segmenter_and_cxr_report_uses_it(run, tmp_path):
    out, config = run
    seg = Segmenter(SegmenterConfig(image_size=32, base_channels=2, depth=2))
    source = seg.save_pretrained(tmp_path / "seg")
    exported = export_run(out, tmp_path / "exported", segmenter=source)
    assert (exported / "segmenter" / "model.safetensors").is_file()
    card = (exported / CARD_FILE).read_text()
    assert "masks from the segmenter in FOLDER/segmenter" in card
    manifest = resolve_manifest(config)
    test = read_manifest(manifest, check_files=False).split("test")
    image = test.resolve(test.frame["image_path"].iloc[0])
    summary = report_images([image], exported, tmp_path / "reports", progress=False)
    assert not summary.failures
    assert summary.reports[0].masks == f"segmenter {exported / 'segmenter'}"
    with pytest.raises(CxrError, match="not a segmenter folder"):
        export_run(out, tmp_path / "again", segmenter=tmp_path)
    assert not (tmp_path / "again").exists()
