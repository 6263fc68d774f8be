"""Generation for a split with a trained run, and the baselines, on a smoke run."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from cxrlib.base.errors import CxrError
from cxrlib.cli import main
from cxrlib.data.dataset import Collate, model_inputs
from cxrlib.data.manifest import read_manifest
from cxrlib.evaluate.attention_grounding import SUMMARY_COLUMNS
from cxrlib.evaluate.baselines import baseline_generations
from cxrlib.evaluate.evaluate import compare, evaluate_generations, format_compare
from cxrlib.model import ReportModel
from cxrlib.training.generate import generate_split, reference_nll, reference_nll_split
from cxrlib.training.inputs import resolve_manifest, split_dataset, split_frame
from cxrlib.training.runs import run_checkpoint, run_config
from tests import trained_smoke_run
from tests.numerics import assert_rounding_close


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out, config = trained_smoke_run(tmp_path_factory)
    return out, resolve_manifest(config), Path(config.data.cache_dir)


def test_generate_split_matches_the_model(run):
    out, manifest, cache = run
    result = generate_split(out, manifest, "test", progress=False)
    df = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    test_ids = df[df["split"] == "test"]["image_id"].tolist()
    assert result.frame["image_id"].tolist() == test_ids
    assert result.checkpoint == out / "checkpoints" / "best"
    # the same text as calling the model on the cached features and priors directly
    model = ReportModel.from_pretrained(result.checkpoint)
    dataset, bad = split_dataset(run_config(out), model, split_frame(manifest, "test"))
    assert not bad
    first = dataset[0]
    with torch.no_grad():
        text = model.generate(
            image_features=first["image_features"][None].float(), priors=first["priors"][None]
        )
    assert result.frame["generated"].iloc[0] == text[0]


def test_reference_nll_is_the_models_loss_per_image(run):
    out, manifest, _ = run
    model = ReportModel.from_pretrained(run_checkpoint(out))
    model.eval()
    dataset, _ = split_dataset(run_config(out), model, split_frame(manifest, "test"))
    items = [dataset[i] for i in range(3)]
    nll = reference_nll(model, items)
    # the token-weighted mean of the per-image values is the batch's loss
    collate = Collate(model.tokenizer, model.config.max_text_tokens)
    batch = model_inputs(collate(items), "cpu")
    with torch.no_grad():
        loss = model(**batch).loss.item()
    tokens = (batch["labels"][:, 1:] != -100).sum(1).tolist()
    weighted = sum(v * t for v, t in zip(nll, tokens, strict=True)) / sum(tokens)
    assert_rounding_close(torch.tensor(weighted), torch.tensor(loss))
    # one image alone gives its own value (nothing leaks between rows), and no text: NaN
    assert_rounding_close(torch.tensor(reference_nll(model, items[1:2])), torch.tensor(nll[1:2]))
    assert math.isnan(reference_nll(model, [{**items[0], "text": ""}])[0])
    # the split's NLL without generating is the generations' nll column
    scores = reference_nll_split(out, manifest, "test", progress=False)
    generated = generate_split(out, manifest, "test", progress=False).frame
    assert scores["image_id"].tolist() == generated["image_id"].tolist()
    assert_rounding_close(torch.tensor(scores["nll"]), torch.tensor(generated["nll"]))


def test_cli_generate_writes_csv(run, tmp_path, capsys):
    out, manifest, _ = run
    csv = tmp_path / "gen.csv"
    code = main(
        ["generate", "--run", str(out), "--manifest", str(manifest), "--out", str(csv)]
        + ["--max-images", "2", "--no-progress"]
    )
    assert code == 0
    frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    assert list(frame.columns) == ["image_id", "generated", "nll"] and len(frame) == 2
    assert "2 Findings generated" in capsys.readouterr().out


def test_not_a_run_is_a_clear_error(tmp_path):
    with pytest.raises(CxrError, match="no checkpoints/best or checkpoints/last"):
        run_checkpoint(tmp_path)


def test_baselines(run):
    out, manifest, _ = run
    frames = baseline_generations(out, manifest, "test", progress=False)
    df = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    train_texts = set(df[df["split"] == "train"]["findings"])
    for name in ("most_frequent", "retrieval"):
        frame = frames[name]
        assert frame["image_id"].tolist() == df[df["split"] == "test"]["image_id"].tolist()
        assert set(frame["generated"]) <= train_texts  # both return training reports
    assert frames["most_frequent"]["generated"].nunique() == 1


def test_evaluate_phantom_generations_has_grounding(run, tmp_path):
    import json

    out, manifest, _ = run
    frame = generate_split(out, manifest, "test", progress=False).frame
    ref = read_manifest(manifest, check_files=False)
    ev = evaluate_generations(
        frame, ref, ref_labels="manifest", n_bootstrap=20, progress=False, out=tmp_path / "ev"
    )
    data = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    for key in (
        "clinical.uncertain_as_negative.micro_14",
        "grounding.uncertain_as_negative.omission_rate",
        "grounding.uncertain_as_positive.laterality_accuracy",
    ):
        assert key in data["metrics"]
    table = format_compare(compare({"model": ev}))
    assert table.columns.tolist() == [f"model (n={ev.counts['n_studies']})"]
    # with labels from the labeler there is no drawn truth: grounding is unavailable
    ev2 = evaluate_generations(frame, ref, n_bootstrap=0, progress=False)
    assert "grounding.uncertain_as_negative.omission_rate" in ev2.unavailable


def test_cli_evaluate_with_run_measures_attention_grounding(run, tmp_path, capsys):
    import json

    out, manifest, _ = run
    csv = tmp_path / "gen.csv"
    assert (
        main(["generate", "--run", str(out), "--manifest", str(manifest), "--out", str(csv)]) == 0
    )
    # a smoke model's one-epoch text rarely names a side: read a text that does, as the
    # model would have written it
    text = "Small left pleural effusion. The heart is normal. Right lower lobe atelectasis."
    pd.read_csv(csv).assign(generated=text).to_csv(csv, index=False)
    assert (
        main(
            ["evaluate", "--pred", str(csv), "--ref", str(manifest), "--out", str(tmp_path / "e")]
            + ["--ref-labels", "manifest", "--bootstrap", "20", "--run", str(out)]
            + ["--attention-studies", "2", "--no-progress"]
        )
        == 0
    )
    assert "attention_grounding.csv" in capsys.readouterr().out
    summary = pd.read_csv(tmp_path / "e" / "attention_grounding.csv")
    assert list(summary.columns) == list(SUMMARY_COLUMNS)
    assert set(summary["target"]) == {"side_lung", "region"}
    ok = summary["n_sentences"] > 0
    assert ok.any()
    for c in ("mean", "ci_low", "ci_high", "chance"):
        assert summary.loc[ok, c].between(0, 1).all(), c
    data = json.loads((tmp_path / "e" / "metrics.json").read_text())
    settings = data["attention_grounding"]["settings"]
    assert (settings["max_studies"], settings["n_used"], settings["capped"]) == (2, 2, True)
    assert (summary.loc[summary["target"] == "side_lung", "n_sentences"] == 4).all()
    model = ReportModel.from_pretrained(run_checkpoint(out))
    assert settings["grid"] == model.config.grid_size  # from the model, not 14x14
    assert "## Attention grounding" in (tmp_path / "e" / "metrics.md").read_text()
    sentences = pd.read_csv(tmp_path / "e" / "attention_sentences.csv")
    assert sentences["image_id"].nunique() == settings["n_used"]
    # a manifest without lung masks: one line naming it
    df = read_manifest(manifest, check_files=False).frame
    bare = tmp_path / "bare" / "manifest.csv"
    bare.parent.mkdir()
    cut = df.drop(columns=["left_lung_mask_path"]).assign(image_path="")
    cut.to_csv(bare, index=False)
    code = main(
        ["evaluate", "--pred", str(csv), "--ref", str(bare), "--out", str(tmp_path / "f")]
        + ["--run", str(out), "--bootstrap", "0", "--no-progress"]
    )
    assert code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs left_lung_mask_path" in err[0] and str(bare) in err[0]
