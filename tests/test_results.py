"""The README's results section: generated from a run folder, replaced between markers."""

import json
import os
import re

import pandas as pd
import pytest

from cxrlib.base.errors import CxrError
from cxrlib.cli import main
from cxrlib.experiment.results import (
    DETAILS_END,
    DETAILS_START,
    END,
    GENERATED,
    START,
    replace_section,
    replicate_markdown,
    results_markdown,
    results_sections,
    seed_set_agreement,
    targets_markdown,
    update_readme,
)

MICRO = "clinical.uncertain_as_negative.micro_14"
METHOD = "95% percentile bootstrap over studies, seeds pooled, 100 resamples"


def _write_csv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)


def _summary_row(system, mean, low, high, n_seeds):
    return {
        "system": system,
        "metric": MICRO,
        "mean": mean,
        "sd": 0.1,
        "ci_low": low,
        "ci_high": high,
        "n_seeds": n_seeds,
        "n_studies": 12,
        "seed_values": "[]",
        "interval": METHOD,
    }


@pytest.fixture
def run(tmp_path):
    """A small fake run folder: what the workbook writes that the section reads."""
    run = tmp_path / "default-20270101-000000"
    cache = tmp_path / "cache"
    encoder = cache / "encoders" / "encoder-0123"
    encoder.mkdir(parents=True)
    recognition = {
        "validate": {
            "auroc": {"Cardiomegaly": 0.99},
            "side_accuracy": {"Pneumothorax": 0.8},
            "n": 30,
        },
        "test": {
            "auroc": {"Cardiomegaly": 0.95, "Edema": None},
            "side_accuracy": {"Pneumothorax": 0.75},
            "n": 29,
        },
    }
    (encoder / "pretrain.json").write_text(
        json.dumps({"seconds": 300.0, "recognition": recognition})
    )
    timings = {
        "phantom_generation": {
            "seconds": 0.2,
            "in_run": False,
            "source": str(cache / "phantom-x"),
            "note": "reused from the cache",
        },
        "encoder_pretraining": {
            "seconds": 300.0,
            "in_run": True,
            "source": str(encoder / "pretrain.json"),
            "note": "pretrained in this run",
        },
        "feature_cache": {"seconds": None, "in_run": None, "source": "", "note": "not recorded"},
        "decoder_runs": {
            "soft-seed0": {
                "seconds": 95.5,
                "in_run": True,
                "source": str(run / "train" / "soft-seed0" / "summary.json"),
                "note": "training loop",
            }
        },
        "ablation": {"training": 500.0},
        "total": {"seconds": 3725.0, "in_run": True, "source": "", "note": "the whole run"},
        "notebooks": {"01_a.ipynb": 12.0},
    }
    record = {
        "profile": {"name": "default", "parameters": {"epochs": 1}},
        "manifest": str(cache / "phantom-n30" / "manifest.csv"),
        "provenance": {"git_commit": "0123456789abcdef"},
        "started": "2027-01-01T00:00:00+00:00",
        "finished": "2027-01-01T01:02:05+00:00",
        "cache_dir": str(cache),
        "notebooks": [],
        "timings": timings,
    }
    run.mkdir()
    (run / "run.json").write_text(json.dumps(record))
    ablation = run / "ablation"
    ablation.mkdir()
    settings = {
        "modes": ["none", "soft"],
        "seeds": [0, 1],
        "split": "test",
        "reference_labels": "manifest",
        "n_bootstrap": 100,
    }
    (ablation / "ablation.json").write_text(json.dumps(settings))
    _write_csv(
        ablation / "ablation_summary.csv",
        [
            _summary_row("none", 0.25, 0.2, 0.3, 2),
            _summary_row("soft", 0.35, 0.3, 0.4, 2),
            _summary_row("retrieval", 0.4, 0.35, 0.45, 1),
        ],
    )
    _write_csv(
        ablation / "ablation.csv",
        [
            {"system": s, "seed": seed, "metric": MICRO, "value": v, "n_studies": 12}
            for s, seed, v in [
                ("none", 0, 0.2),
                ("none", 1, 0.3),
                ("soft", 0, 0.3),
                ("soft", 1, 0.4),
                ("retrieval", "", 0.4),
            ]
        ],
    )
    _write_csv(
        ablation / "paired_tests.csv",
        [
            {
                "comparison": "soft - none",
                "metric": MICRO,
                "delta": 0.1,
                "ci_low": 0.05,
                "ci_high": 0.15,
                "p_value": 0.002,
                "n_items": 24,
                "n_studies": 12,
                "seeds": 2,
                "test": "paired bootstrap over studies, seeds pooled",
            }
        ],
    )
    metrics = ablation / "evaluation" / "soft-seed0" / "metrics.json"
    metrics.parent.mkdir(parents=True)
    metrics.write_text(json.dumps({"labeler": "cxrlib-rule-v3"}))
    _write_csv(
        ablation / "grounding_attention.csv",
        [{"mode": "soft", "target": "side_lung", "mean": 0.61234, "n_studies": 12}],
    )
    return run


README = (
    "# Title\n\nIntro kept.\n\n## Results\n\n"
    + START
    + "\nold numbers\n"
    + END
    + "\n\nTail kept.\n"
)


def test_section_lines(run):
    text = results_markdown(run)
    lines = text.splitlines()
    assert lines[0] == GENERATED
    assert lines[2] == (
        "Run `default-20270101-000000` (profile `default`) at commit `0123456`, finished "
        "2027-01-01T01:02:05+00:00 on `phantom-n30/manifest.csv`, 1 epoch per decoder run. "
        "Split `test`, 12 studies, 2 seeds per mode; reference "
        "labels: the manifest's labels (the phantom's drawn ground truth); generated "
        "Findings labelled by `cxrlib-rule-v3`."
    )
    for line in (
        "| system | micro-F1 14 (unc. neg.) |",
        "| none (2 seeds) | 0.250 [0.200, 0.300] |",
        "| soft (2 seeds) | 0.350 [0.300, 0.400] |",
        "| retrieval (1 seed) | 0.400 [0.350, 0.450] |",
        f"Intervals: {METHOD}.",
        "| metric | system | seed 0 | seed 1 | between-seed SD |",
        "| micro-F1 14 (unc. neg.) | soft | 0.300 | 0.400 | 0.071 |",
        "| soft - none | micro-F1 14 (unc. neg.) | +0.100 | [0.050, 0.150] | 0.002 | 12 | 2 "
        "| n/a | n/a |",
        "Tests: paired bootstrap over studies, seeds pooled, 100 resamples.",
        "| finding | train prevalence | validate AUROC | test AUROC | validate side acc. | "
        "test side acc. | target |",
        "| Cardiomegaly | 0.000 | 0.990 | 0.950 |  |  | AUROC >= 0.9 |",
        "| Edema | 0.000 | n/a | n/a |  |  | AUROC >= 0.9 |",
        "| Pneumothorax | 0.000 | n/a | n/a | 0.800 | 0.750 | AUROC >= 0.9, side >= 0.95 |",
        "| mode | target | mean | n_studies |",
        "| soft | side_lung | 0.612 | 12 |",
        "| phantom generation | 0.2 s | no (cached) | reused from the cache; cache: `phantom-x` |",
        "| encoder pretraining | 5 min 0 s | yes | pretrained in this run; "
        "cache: `encoders/encoder-0123/pretrain.json` |",
        "| feature cache | not recorded |  | not recorded |",
        "| decoder run soft-seed0 | 1 min 36 s | yes | training loop; "
        "run: `train/soft-seed0/summary.json` |",
        "| ablation: training | 8 min 20 s | yes | `ablation/ablation.json` |",
        "| total | 1 h 2 min | yes | the whole run |",
        "Wall time of each notebook: `01_a.ipynb` 12.0 s.",
    ):
        assert line in lines, line
    assert text.endswith("\n") and not text.endswith("\n\n")


def test_optional_tables_are_left_out_when_absent(run):
    (run / "ablation" / "grounding_attention.csv").unlink()
    record = json.loads((run / "run.json").read_text())
    pretrain = record["timings"]["encoder_pretraining"]["source"]
    with open(pretrain, "w") as f:
        json.dump({"seconds": 300.0}, f)  # no "recognition"
    text = results_markdown(run)
    assert "**Attention grounding**" not in text
    assert "**Encoder recognition**" not in text
    assert "**Where the time went**" in text


def test_readme_section_replaced_exactly_between_markers(run, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(README)
    with pytest.raises(CxrError, match="results section differs"):
        update_readme(run, readme, check=True)
    assert readme.read_text() == README  # --check writes nothing
    assert update_readme(run, readme) is True
    body = results_markdown(run)
    expected = "# Title\n\nIntro kept.\n\n## Results\n\n" + START + "\n" + body + END
    assert readme.read_text() == expected + "\n\nTail kept.\n"
    assert update_readme(run, readme) is False  # already up to date
    assert update_readme(run, readme, check=True) is False


def test_details_page_beside_the_readme_gets_the_long_tables(run, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(README)
    page = tmp_path / "docs" / "results.md"
    page.parent.mkdir()
    page_text = "# Results\n\n" + DETAILS_START + "\nold\n" + DETAILS_END + "\n\nNotes kept.\n"
    page.write_text(page_text)
    with pytest.raises(CxrError, match="results section differs"):
        update_readme(run, readme, check=True)
    assert (readme.read_text(), page.read_text()) == (README, page_text)
    assert update_readme(run, readme) is True
    head, details = results_sections(run)
    assert head + details.split("\n", 1)[1] == results_markdown(run)  # the same text, cut
    assert "**Targets**" in head and "**Per seed**" not in head
    assert details.startswith(GENERATED + "\n\n**Per seed**")
    assert "**Where the time went**" in details and "**Targets**" not in details
    intro = "# Title\n\nIntro kept.\n\n## Results\n\n"
    assert readme.read_text() == intro + START + "\n" + head + END + "\n\nTail kept.\n"
    expected = "# Results\n\n" + DETAILS_START + "\n" + details + DETAILS_END + "\n\nNotes kept.\n"
    assert page.read_text() == expected
    assert update_readme(run, readme) is False
    assert update_readme(run, readme, check=True) is False
    page.write_text(page_text)  # the page alone out of date: --check names it
    with pytest.raises(CxrError, match=f"^{re.escape(str(page))}: the results section differs"):
        update_readme(run, readme, check=True)
    page.write_text("no markers\n")  # a page without its markers: nothing is written
    readme.write_text(README)
    with pytest.raises(CxrError, match=re.escape(f"{page}: no '{DETAILS_START}' marker")):
        update_readme(run, readme)
    assert readme.read_text() == README


def test_replace_section_keeps_every_other_byte():
    text = "a\r\n  x " + START + " y\nold\n" + END + " z\n\n"
    assert replace_section(text, "new") == "a\r\n  x " + START + "\nnew\n" + END + " z\n\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("no markers\n", f"README.md: no '{START}' marker line(s); expected exactly one"),
        (
            f"{START}\n{START}\n{END}\n",
            f"README.md: 2 '{START}' marker line(s); expected exactly one",
        ),
        (f"{END}\n{START}\n", f"README.md: '{END}' comes before '{START}'"),
    ],
)
def test_bad_markers(text, message):
    with pytest.raises(CxrError) as err:
        replace_section(text, "x")
    assert str(err.value) == message


@pytest.mark.parametrize(
    "name",
    [
        "run.json",
        "ablation/ablation.json",
        "ablation/ablation_summary.csv",
        "ablation/ablation.csv",
        "ablation/paired_tests.csv",
    ],
)
def test_missing_file_is_one_line_naming_it(run, tmp_path, capsys, name):
    readme = tmp_path / "README.md"
    readme.write_text(README)
    (run / name).unlink()
    assert main(["workbook", "readme", str(run), "--readme", str(readme)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"cxr: error: {run / name}: file does not exist (")
    assert readme.read_text() == README


def test_missing_evaluations_and_bad_files(run):
    (run / "ablation" / "evaluation" / "soft-seed0" / "metrics.json").unlink()
    with pytest.raises(CxrError) as err:
        results_markdown(run)
    evaluation = run / "ablation" / "evaluation"
    assert (
        str(err.value) == f"{evaluation}: no */metrics.json (written by notebook 05, the ablation)"
    )
    summary = run / "ablation" / "ablation_summary.csv"
    pd.read_csv(summary).drop(columns=["ci_low"]).to_csv(summary, index=False)
    with pytest.raises(CxrError) as err:
        results_markdown(run)
    assert str(err.value) == f"{summary}: missing column(s) ci_low"
    (run / "run.json").write_text("{not json")
    with pytest.raises(CxrError, match=f"^{run / 'run.json'}: not valid JSON"):
        results_markdown(run)
    with pytest.raises(CxrError, match="not a folder"):
        results_markdown(run / "absent")


@pytest.mark.parametrize("command", ["readme", "report"])  # report: the old name
def test_cli_readme_and_check(run, tmp_path, capsys, command):
    readme = tmp_path / "README.md"
    readme.write_text(README)
    assert main(["workbook", command, str(run), "--readme", str(readme), "--check"]) == 1
    assert "results section differs" in capsys.readouterr().err
    assert main(["workbook", command, str(run), "--readme", str(readme)]) == 0
    assert capsys.readouterr().out.strip() == f"{readme}: results section regenerated from {run}"
    assert main(["workbook", command, str(run), "--readme", str(readme), "--check"]) == 0
    assert main(["workbook", command, str(run), "--readme", str(tmp_path / "none.md")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"cxr: error: {tmp_path / 'none.md'}: file does not exist"]


def test_timings_are_collected_when_run_json_has_none(run):
    record = json.loads((run / "run.json").read_text())
    del record["timings"]
    record["notebooks"] = [{"notebook": "06_figures.ipynb", "seconds": 70.0, "parameters": {}}]
    (run / "run.json").write_text(json.dumps(record))
    summary = run / "train" / "none-seed1" / "summary.json"
    summary.parent.mkdir(parents=True)
    summary.write_text(json.dumps({"seconds": 12.5}))
    os.utime(summary, (0, 0))  # written before the run started: reused
    lines = results_markdown(run).splitlines()
    assert "| figures | 1 min 10 s | yes | notebook 06_figures.ipynb |" in lines
    assert (
        "| decoder run none-seed1 | 12.5 s | no (cached) | training loop; "
        "run: `train/none-seed1/summary.json` |"
    ) in lines


def test_targets_name_the_best_mode_and_each_gap():
    summary = pd.DataFrame(
        [
            ("none", "clinical.uncertain_as_negative.micro_14", 0.70),
            ("soft", "clinical.uncertain_as_negative.micro_14", 0.90),
            ("soft", "grounding.uncertain_as_negative.hallucination_rate", 0.25),
            ("soft", "grounding.uncertain_as_negative.omission_rate", 0.125),
            ("retrieval", "clinical.uncertain_as_negative.micro_14", 0.80),
        ],
        columns=["system", "metric", "mean"],
    )
    recognition = {
        "targets_validate": {
            "Edema": {"metric": "auroc", "value": 0.99, "target": 0.97, "met": True},
            "Fracture": {"metric": "auroc", "value": 0.8, "target": 0.9, "met": False},
        }
    }
    lines = targets_markdown(summary, ["none", "soft"], recognition, {"total": {"seconds": 1500}})
    assert lines[1] == "**Targets** (best mode `soft`, the highest mean micro-F1; mean over seeds):"
    for line in (
        "| micro-F1 14 (unc. neg.) | 0.900 | >= 0.850 | met |",
        "| macro-F1 14 (unc. neg.) | n/a | >= 0.600 | not measured |",
        "| hallucination rate | 0.250 | <= 0.200 | **missed** by 0.050 |",
        "| omission rate | 0.125 | <= 0.200 | met |",
        "| micro-F1 over retrieval | 0.100 | >= 0.080 | met |",
        "| encoder recognition (validate) | 1 of 2 | all "
        "| **missed**: Fracture 0.800 (goal 0.90) |",
        "| wall time of the run (venv not included) | 25 min 0 s | <= 45 min 0 s | met |",
    ):
        assert line in lines, line
    assert targets_markdown(summary, ["strict"], None, {}) == []


def _replicate(run, tmp_path, seeds, delta, low, high):
    """A copy of ``run`` on other seeds, with another soft - none test."""
    import shutil

    other = tmp_path / f"replicate-{seeds[0]}"
    shutil.copytree(run, other)
    settings = json.loads((other / "ablation" / "ablation.json").read_text())
    (other / "ablation" / "ablation.json").write_text(json.dumps({**settings, "seeds": seeds}))
    tests = pd.read_csv(other / "ablation" / "paired_tests.csv")
    tests.loc[0, ["delta", "ci_low", "ci_high"]] = [delta, low, high]
    tests.to_csv(other / "ablation" / "paired_tests.csv", index=False)
    return other


def test_disjoint_seed_sets_agree_or_say_where_not(run, tmp_path):
    # run: soft - none +0.100 [0.050, 0.150], higher
    same = _replicate(run, tmp_path, [100, 101], 0.08, 0.02, 0.14)
    table = seed_set_agreement(run, same)
    row = table.iloc[0]
    assert (row["verdict_a"], row["verdict_b"]) == ("higher", "higher")
    assert row["verdicts_agree"] and row["a_inside_b"] and row["b_inside_a"]
    lines = replicate_markdown(run, same)
    assert "Every verdict agrees and each estimate lies inside the other run's interval." in lines
    assert (
        "Between-seed SD of micro-F1 14 (unc. neg.): none 0.100 (A), 0.100 (B); soft "
        in (lines[-1])
    )
    # an interval that crosses 0 is "no difference", and the run's +0.100 lies outside it
    other = _replicate(run, tmp_path, [200, 201], -0.01, -0.04, 0.02)
    row = seed_set_agreement(run, other).iloc[0]
    assert row["verdict_b"] == "no difference" and not row["verdicts_agree"]
    assert not row["a_inside_b"] and not row["b_inside_a"]
    text = results_markdown(run, replicate=other)
    assert "**The two seed sets disagree** where a row says no." in text
    assert "| soft - none | micro-F1 14 (unc. neg.) | +0.100 [0.050, 0.150] | higher | " in text
    # a replicate must not reuse the run's seeds
    overlapping = _replicate(run, tmp_path, [1, 2], 0.1, 0.05, 0.15)
    with pytest.raises(CxrError, match="overlap"):
        seed_set_agreement(run, overlapping)


def test_the_paired_tests_say_how_many_seeds_a_tight_interval_needs(run):
    tests = pd.read_csv(run / "ablation" / "paired_tests.csv")
    tests = tests.assign(sd_paired=0.03, se_studies=0.005, sd_independent=0.04)
    tests.to_csv(run / "ablation" / "paired_tests.csv", index=False)
    text = results_markdown(run)
    assert (
        "soft - none, micro-F1 14: half-width +-0.050 with 2 seeds; +-0.025 would need 10 seed "
        "pairs at this run's SD of paired differences (0.030) and test-set error (0.005)."
    ) in text
    assert "| 0.030 | 0.040 |" in text


def test_the_commit_at_which_the_tables_were_written_is_named_when_it_differs(run):
    path = run / "ablation" / "ablation.json"
    settings = json.loads(path.read_text())
    path.write_text(json.dumps({**settings, "provenance": {"git_commit": "fedcba9876543210"}}))
    assert "at commit `0123456` (git HEAD at `fedcba9` when its ablation tables were written)" in (
        results_markdown(run)
    )
    path.write_text(json.dumps({**settings, "provenance": {"git_commit": "0123456789abcdef"}}))
    assert "when its ablation tables were written" not in results_markdown(run)
