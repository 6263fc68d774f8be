"""The ablation on smoke settings: runs, tables, paired tests, reuse of finished runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from cxrlib.base.errors import CxrError
from cxrlib.base.stats import aggregate_seeds
from cxrlib.data.manifest import CHEXPERT_LABELS, Manifest, read_manifest
from cxrlib.evaluate.attention_grounding import SUMMARY_COLUMNS, ablation_attention
from cxrlib.evaluate.evaluate import evaluate_generations
from cxrlib.experiment.ablation import (
    NLL_KEY,
    interval_method,
    latex_table,
    markdown_table,
    paired_tests,
    run_ablation,
    score_runs,
    summarise,
    summary_table,
)
from tests import smoke_config


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    config = smoke_config(tmp_path_factory.mktemp("cache"))
    out = tmp_path_factory.mktemp("run")
    result = run_ablation(config, out, seeds=(0, 1), n_bootstrap=20, progress=False)
    return config, out, result


@pytest.mark.slow  # trains every mode and seed (the module fixture)
def test_every_mode_and_seed_is_trained_and_tabled(ablation):
    _, out, result = ablation
    for mode in ("none", "soft", "strict"):
        for seed in (0, 1):
            assert (out / "train" / f"{mode}-seed{seed}" / "summary.json").is_file()
    folder = out / "ablation"
    for name in (
        "ablation.csv",
        "ablation_summary.csv",
        "paired_tests.csv",
        "ablation.md",
        "ablation.tex",
        "per_observation.csv",
    ):
        assert (folder / name).is_file(), name
    results = pd.read_csv(folder / "ablation.csv")
    key = "clinical.uncertain_as_negative.micro_14"
    part = results[results["metric"] == key]
    assert sorted(part["system"].unique()) == [
        "most_frequent",
        "none",
        "retrieval",
        "soft",
        "strict",
    ]
    assert (part[part["system"] == "soft"]["seed"].astype(int).tolist()) == [0, 1]
    summary = pd.read_csv(folder / "ablation_summary.csv")
    row = summary[(summary["system"] == "soft") & (summary["metric"] == key)].iloc[0]
    values = part[part["system"] == "soft"]["value"]
    assert row["mean"] == pytest.approx(values.mean()) and row["n_seeds"] == 2
    assert row["seed_values"] == json.dumps(values.tolist())
    trained = summary[summary["system"].isin(["none", "soft", "strict"])]
    assert set(trained["interval"]) == {interval_method(20)}
    assert interval_method(20).startswith("95% t interval over seeds and studies")
    baselines = summary[summary["system"].isin(["retrieval", "most_frequent"])]
    assert set(baselines["interval"]) == {"95% percentile bootstrap over studies, 20 resamples"}
    rates = summary[~summary["metric"].isin(["lexical.cider", NLL_KEY])]
    assert ((rates["ci_low"] >= 0) & (rates["ci_low"] <= rates["ci_high"])).all()
    assert (rates["ci_high"] <= 1).all()
    # every trained run scored the reference NLL; the baselines have none
    nll = summary[summary["metric"] == NLL_KEY]
    assert sorted(nll["system"]) == ["none", "soft", "strict"]
    assert (nll["mean"] > 0).all() and (nll["ci_low"] <= nll["mean"]).all()
    assert (
        "Intervals: 95% t interval over seeds and studies" in (folder / "ablation.md").read_text()
    )
    record = json.loads((folder / "ablation.json").read_text())
    stages = {"shared_inputs", "training", "generation", "evaluation", "tables"}
    assert stages <= set(record["stages"])
    assert all(isinstance(v, float) and v >= 0 for v in record["stages"].values())
    assert record["interval"] == interval_method(20)
    tests = pd.read_csv(folder / "paired_tests.csv")
    assert set(tests["comparison"]) == {"soft - none", "strict - none"}
    assert NLL_KEY in set(tests["metric"])
    scored = tests[tests["metric"].isin([key, NLL_KEY])]
    assert scored["sd_paired"].notna().all() and (scored["seeds"] == 2).all()
    assert tests["p_value"].dropna().between(0, 1).all()
    assert scored["p_value"].notna().all()  # laterality may be undefined for a seed
    assert "\\toprule" in (folder / "ablation.tex").read_text()


@pytest.mark.slow  # trains every mode and seed (the module fixture)
def test_runs_differ_only_in_mode_and_seed(ablation):
    import json

    _, out, _ = ablation
    trees = {
        name: json.loads((out / "train" / name / "run_config.json").read_text())["config"]
        for name in ("none-seed0", "strict-seed1")
    }
    a, b = trees["none-seed0"], trees["strict-seed1"]
    assert (a["model"]["mode"], b["model"]["mode"], a["seed"], b["seed"]) == (
        "none",
        "strict",
        0,
        1,
    )
    a["model"]["mode"] = b["model"]["mode"]
    a["seed"] = b["seed"]
    assert a == b  # same encoder, data, priors and budget


@pytest.mark.slow  # trains every mode and seed (the module fixture)
def test_finished_runs_are_reused(ablation):
    config, out, result = ablation
    stamp = (out / "train" / "soft-seed0" / "summary.json").stat().st_mtime_ns
    again = run_ablation(config, out, seeds=(0, 1), n_bootstrap=20, progress=False)
    assert (out / "train" / "soft-seed0" / "summary.json").stat().st_mtime_ns == stamp
    pd.testing.assert_frame_equal(again.summary, result.summary)


def test_tables_render():
    summary = pd.DataFrame(
        [
            {
                "system": "soft",
                "metric": "lexical.cider",
                "mean": 0.5,
                "sd": 0.1,
                "ci_low": 0.4,
                "ci_high": 0.6,
                "n_seeds": 3,
                "n_studies": 10,
            },
            {
                "system": "retrieval",
                "metric": "lexical.cider",
                "mean": 0.2,
                "sd": float("nan"),
                "ci_low": float("nan"),
                "ci_high": float("nan"),
                "n_seeds": 1,
                "n_studies": 10,
            },
        ]
    )
    table = summary_table(summary)
    assert table.loc["soft (3 seeds)", "CIDEr"] == "0.500 [0.400, 0.600]"
    assert table.loc["retrieval (1 seed)", "CIDEr"] == "0.200"
    assert markdown_table(table).splitlines()[0] == "| system | CIDEr |"
    assert "retrieval (1 seed) & 0.200" in latex_table(table)
    note = interval_method(1000)
    assert markdown_table(table, note).splitlines()[-2:] == ["", f"Intervals: {note}."]
    assert (
        r"\multicolumn{2}{l}{\footnotesize Intervals: 95\% t interval over seeds and studies "
        r"(between-seed variance / seeds + variance of the seed mean over 1000 study "
        r"resamples; Welch-Satterthwaite df; clipped to the metric's range).} \\"
    ) in latex_table(table, note).splitlines()
    one_seed = summary.assign(ci_low=[0.4, 0.1], ci_high=[0.6, 0.3])
    assert summary_table(one_seed).loc["retrieval (1 seed)", "CIDEr"] == "0.200 [0.100, 0.300]"


def _manifest(rows: list[dict]) -> pd.DataFrame:
    """A test-split manifest frame: one image per study, labels blank unless given."""
    frame = pd.DataFrame(
        [
            {
                "study_id": f"s{i}",
                "image_id": f"i{i}",
                "image_path": f"images/i{i}.png",
                "view": "PA",
                "split": "test",
                "findings": row.get("findings", ""),
                **{obs: row.get(obs, math.nan) for obs in CHEXPERT_LABELS},
                "effusion_side": row.get("effusion_side", ""),
                "pneumothorax_side": row.get("pneumothorax_side", ""),
            }
            for i, row in enumerate(rows)
        ]
    )
    return frame


def _results(generations: dict, ref: pd.DataFrame) -> pd.DataFrame:
    """``ablation.csv`` rows of these generations, scored as run_ablation scores them."""
    rows = []
    for (system, seed), frame in generations.items():
        ev = evaluate_generations(
            frame,
            Manifest(ref, Path.cwd()),
            ref_labels="manifest",
            n_bootstrap=0,
            meteor=False,
            progress=False,
        )
        for key, r in ev.metrics.items():
            rows.append(
                {
                    "system": system,
                    "seed": seed if seed >= 0 else "",
                    "metric": key,
                    "value": r.value,
                    "n_studies": ev.counts["n_studies"],
                }
            )
    return pd.DataFrame(rows)


def _generated(texts: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"image_id": [f"i{i}" for i in range(len(texts))], "generated": texts})


def test_summary_intervals_exact_small_case():
    # study 0: cardiomegaly, study 1: effusion. Seed 0 finds both (micro-F1 1 on every
    # resample); seed 1 finds only the first: resamples {0,0}, {0,1}, {1,1} give it
    # 1, 2/3, 0, so the seed means 1, 5/6, 1/2; observed (1 + 2/3) / 2 = 5/6
    ref = _manifest(
        [
            {"findings": "The heart is enlarged.", "Cardiomegaly": 1.0},
            {"findings": "Small pleural effusion.", "Pleural Effusion": 1.0},
        ]
    )
    generations = {
        ("soft", 0): _generated(["The heart is enlarged.", "There is a pleural effusion."]),
        ("soft", 1): _generated(["The heart is enlarged.", ""]),
    }
    results = _results(generations, ref)
    summary = summarise(results, generations, ref, "manifest", n_bootstrap=1000)
    key = "clinical.uncertain_as_negative.micro_14"
    row = summary[summary["metric"] == key].iloc[0]
    assert json.loads(row["seed_values"]) == [1.0, pytest.approx(2 / 3)]
    assert row["mean"] == pytest.approx(5 / 6)
    assert row["sd"] == pytest.approx(np.std([1.0, 2 / 3], ddof=1))
    # between seeds: sd / sqrt(2); test set: the seed mean over the resamples is 1, 5/6
    # or 1/2 with probabilities 1/4, 1/2, 1/4 (SD 0.1818)
    assert row["se_runs"] == pytest.approx(row["sd"] / np.sqrt(2))
    assert row["se_studies"] == pytest.approx(0.1818, rel=0.1)
    se = np.hypot(row["se_runs"], row["se_studies"])
    assert row["df"] == pytest.approx(se**4 / row["se_runs"] ** 4)
    q = scipy_stats.t.ppf(0.975, row["df"])
    assert (row["ci_low"], row["ci_high"]) == (pytest.approx(5 / 6 - q * se), 1.0)
    assert (row["n_seeds"], row["n_studies"], row["system"]) == (2, 2, "soft")
    assert row["interval"] == interval_method(1000)
    # CIDEr has an interval too (not a rate); every row is named the same way
    cider = summary[summary["metric"] == "lexical.cider"].iloc[0]
    assert cider["ci_low"] <= cider["ci_high"]
    assert set(summary["interval"]) == {interval_method(1000)}
    no_boot = summarise(results, generations, ref, "manifest", n_bootstrap=0)
    assert no_boot["ci_low"].isna().all()
    assert set(no_boot["interval"]) == {"no intervals (no bootstrap resamples)"}


def test_rate_intervals_stay_in_0_1_where_the_t_interval_does_not():
    # 3 seeds as different as they come: all right, all silent, half right and the
    # sides wrong; the Student-t interval over 3 seeds leaves [0, 1] here
    findings = [
        ("The heart is enlarged.", {"Cardiomegaly": 1.0}),
        ("Small left pleural effusion.", {"Pleural Effusion": 1.0, "effusion_side": "left"}),
        ("Right pneumothorax.", {"Pneumothorax": 1.0, "pneumothorax_side": "right"}),
        ("Large right pleural effusion.", {"Pleural Effusion": 1.0, "effusion_side": "right"}),
        ("No acute cardiopulmonary process.", {"No Finding": 1.0}),
        ("Left pneumothorax.", {"Pneumothorax": 1.0, "pneumothorax_side": "left"}),
    ]
    ref = _manifest([{"findings": text, **labels} for text, labels in findings])
    texts = [text for text, _ in findings]
    wrong_side = [
        t.replace("left", "x").replace("right", "left").replace("x", "right") for t in texts
    ]
    generations = {
        ("soft", 0): _generated(texts),
        ("soft", 1): _generated([""] * 6),
        ("soft", 2): _generated(wrong_side[:3] + [""] * 3),
        ("retrieval", -1): _generated(texts[::-1]),
    }
    results = _results(generations, ref)
    summary = summarise(results, generations, ref, "manifest", n_bootstrap=300)
    assert {"clinical", "lexical", "grounding"} == {m.split(".")[0] for m in summary["metric"]}
    rates = summary[summary["metric"] != "lexical.cider"]
    assert rates["ci_low"].notna().all()
    assert ((rates["ci_low"] >= 0) & (rates["ci_low"] <= rates["ci_high"])).all()
    assert (rates["ci_high"] <= 1).all()
    assert (
        (rates["ci_low"] <= rates["mean"] + 1e-12) & (rates["mean"] <= rates["ci_high"] + 1e-12)
    ).all()
    cider = summary[summary["metric"] == "lexical.cider"]
    assert ((cider["ci_low"] >= 0) & (cider["ci_high"] <= 10)).all()
    key = "clinical.uncertain_as_negative.micro_14"
    soft = results[(results["system"] == "soft") & (results["metric"] == key)]["value"]
    t = aggregate_seeds(soft.tolist())
    assert t.ci_low < 0  # what the summary used to report
    row = summary[(summary["system"] == "soft") & (summary["metric"] == key)].iloc[0]
    assert row["mean"] == pytest.approx(t.mean) and row["n_seeds"] == 3
    assert summary[summary["system"] == "retrieval"]["n_seeds"].eq(1).all()


def test_reference_nll_is_summarised_and_tested_paired_by_seed():
    ref = _manifest(
        [
            {"findings": "The heart is enlarged.", "Cardiomegaly": 1.0},
            {"findings": "Small pleural effusion.", "Pleural Effusion": 1.0},
            {"findings": "No acute process.", "No Finding": 1.0},
        ]
    )
    texts = ["The heart is enlarged.", "Small pleural effusion.", "No acute process."]
    # per-image NLL; soft is none - 0.1 at every seed and image, the seeds differ
    none = {0: [1.0, 1.2, 0.8], 1: [1.1, 1.3, 0.9], 2: [0.9, 1.1, 0.7]}
    generations = {}
    for seed, values in none.items():
        for mode, shift in (("none", 0.0), ("soft", -0.1)):
            generations[(mode, seed)] = _generated(texts).assign(
                nll=[str(v + shift) for v in values]
            )
    results = pd.DataFrame(
        [
            {"system": m, "seed": s, "metric": NLL_KEY, "value": np.mean(none[s]) + d,
             "n_studies": 3}
            for s in none
            for m, d in (("none", 0.0), ("soft", -0.1))
        ]
    )  # fmt: skip
    samples = score_runs(generations, ref, "manifest", 200)
    summary = summarise(results, generations, ref, "manifest", 200, samples=samples)
    row = summary[(summary["system"] == "soft") & (summary["metric"] == NLL_KEY)].iloc[0]
    assert row["mean"] == pytest.approx(0.9) and row["sd"] == pytest.approx(0.1)
    assert 0 <= row["ci_low"] < 0.9 < row["ci_high"]
    tests = pd.DataFrame(paired_tests(samples, ("none", "soft"), (0, 1, 2), 200, 3))
    nll = tests[tests["metric"] == NLL_KEY].iloc[0]
    # paired by seed and study the difference is exactly -0.1 everywhere: no spread left
    assert nll["delta"] == pytest.approx(-0.1)
    assert nll["sd_paired"] == pytest.approx(0.0, abs=1e-12)
    assert nll["sd_independent"] == pytest.approx(np.sqrt(2) * 0.1)
    assert (nll["ci_low"], nll["ci_high"]) == (pytest.approx(-0.1), pytest.approx(-0.1))
    assert nll["p_value"] < 1e-6


def test_summary_refuses_runs_of_different_images():
    ref = _manifest([{"findings": "a", "No Finding": 1.0}, {"findings": "b", "Edema": 1.0}])
    generations = {
        ("soft", 0): _generated(["a", "b"]),
        ("soft", 1): _generated(["a"]),
    }
    results = _results(generations, ref)
    with pytest.raises(CxrError, match="the runs of soft generated for different images"):
        summarise(results, generations, ref, "manifest", n_bootstrap=10)


@pytest.mark.slow  # trains every mode and seed (the module fixture)
def test_attention_grounding_per_mode(ablation, tmp_path):
    _, out, _ = ablation
    folder = out / "ablation"
    table = pd.read_csv(folder / "grounding_attention.csv")
    assert list(table.columns) == ["mode", *SUMMARY_COLUMNS, "n_runs", "max_studies", "capped"]
    assert list(dict.fromkeys(table["mode"])) == ["none", "soft", "strict"]
    assert (table["n_runs"] == 2).all() and (table["max_studies"] == 100).all()
    assert set(table["target"]) == {"side_lung", "region"}
    for run in ("none-seed0", "strict-seed1"):
        assert (folder / "evaluation" / run / "attention_grounding.csv").is_file()
    whole = json.loads((folder / "ablation.json").read_text())
    record = whole["attention_grounding"]
    assert record["max_studies"] == 100 and set(record["runs"]) >= {"soft-seed0"}
    assert "attention_grounding" in whole["stages"]
    # the smoke runs' texts rarely name a side: the same tables from texts that do
    manifest = whole["manifest"]
    ref = read_manifest(manifest, check_files=False)
    test_ids = ref.split("test").frame["image_id"].tolist()
    text = "Small left pleural effusion. Right basilar atelectasis. Heart size is normal."
    runs = {
        f"{m}-seed{s}": (m, s, out / "train" / f"{m}-seed{s}")
        for m in ("none", "soft")
        for s in (0, 1)
    }
    generations = {name: pd.DataFrame({"image_id": test_ids, "generated": text}) for name in runs}
    result = ablation_attention(runs, generations, ref, tmp_path, max_studies=2, n_bootstrap=50)
    table = pd.read_csv(tmp_path / "grounding_attention.csv")
    side = table[table["target"] == "side_lung"]
    # 2 seeds x 2 studies x 2 sided sentences per mode and layer group
    assert (side["n_sentences"] == 8).all() and (side["n_studies"] == 2).all()
    assert table["capped"].all() == (len(test_ids) > 2)
    filled = table[table["n_sentences"] > 0]
    for column in ("mean", "ci_low", "ci_high", "chance"):
        assert filled[column].between(0, 1).all(), column
    assert (filled["ci_low"] <= filled["mean"]).all() and (
        filled["mean"] <= filled["ci_high"]
    ).all()
    assert result["seconds_per_run"] is not None


@pytest.mark.slow  # trains every mode and seed (the module fixture)
def test_each_runs_model_card_carries_the_test_metrics_the_ablation_measured(ablation):
    import yaml

    _, out, _ = ablation
    metrics = json.loads(
        (out / "ablation" / "evaluation" / "strict-seed1" / "metrics.json").read_text()
    )
    card = (out / "train" / "strict-seed1" / "checkpoints" / "best" / "README.md").read_text()
    header = yaml.safe_load(card.split("---")[1])
    results = header["model-index"][0]["results"][0]["metrics"]
    key = "clinical.uncertain_as_negative.micro_14"
    value = next(m["value"] for m in results if m["name"] == key)
    assert value == pytest.approx(metrics["metrics"][key]["value"])
    assert "Not measured on a test split yet" not in card
    assert "strict" in card.split("## Attention mode")[1].splitlines()[2]
