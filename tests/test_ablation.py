"""The ablation on smoke settings: runs, tables, paired tests, reuse of finished runs."""

from __future__ import annotations

import pandas as pd
import pytest

from cxrlib.ablation import latex_table, markdown_table, run_ablation, summary_table
from cxrlib.config import load_config, parse_assignment


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    config = load_config(
        "smoke", overrides=[parse_assignment(f"data.cache_dir={cache}"), {"train": {"epochs": 1}}]
    )
    out = tmp_path_factory.mktemp("run")
    result = run_ablation(config, out, seeds=(0, 1), n_bootstrap=20, progress=False)
    return config, out, result


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
    tests = pd.read_csv(folder / "paired_tests.csv")
    assert set(tests["comparison"]) == {"soft - none", "strict - none"}
    assert tests["p_value"].between(0, 1).all()
    assert "\\toprule" in (folder / "ablation.tex").read_text()


def test_runs_differ_only_in_mode_and_seed(ablation):
    import json

    _, out, _ = ablation
    trees = {
        name: json.loads((out / "train" / name / "config.json").read_text())["config"]
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
