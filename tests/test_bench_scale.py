"""``cxr bench scale`` and ``cxr bench costs``: what they measure and what they write."""

from __future__ import annotations

import json
import os

import pytest

from cxrlib.base.errors import CxrError
from cxrlib.experiment.bench import costs, scale


def test_disk_bytes_counts_hard_links_once(tmp_path):
    a = tmp_path / "a.bin"
    a.write_bytes(b"x" * 10_000)
    os.link(a, tmp_path / "b.bin")
    (tmp_path / "sub").mkdir()
    os.link(a, tmp_path / "sub" / "c.bin")
    one = scale.disk_bytes(a)
    assert one >= 10_000
    assert scale.disk_bytes(tmp_path) == one
    assert scale.disk_bytes(tmp_path / "missing") == 0


def test_cheap_stages_run_in_their_own_process(tmp_path):
    """Layout, adapter, masks and validation at n=12: rows, disk and RSS reported; the
    masks stage leaves the first ``sample`` train rows to the segmenter."""
    result = scale.bench_scale(
        sizes=(12,), work=tmp_path, sample=2, stages=scale.STAGES[:4] + ("segmentation",)
    )
    rows = {r["stage"]: r for r in result["stages"]}
    assert list(rows) == ["layout", "adapter", "masks", "validation", "segmentation"]
    for r in rows.values():
        assert r["n"] == 12 and r["peak_rss_mb"] >= r["start_rss_mb"] > 0
        assert r["per_image_ms"] > 0
    assert rows["layout"]["disk_bytes"] > 0 and rows["adapter"]["disk_bytes"] > 0
    assert rows["segmentation"]["items"] == 2 and rows["segmentation"]["kind"] == "sample"
    # 2 images x 3 organ masks (lungs, left/right or heart) written
    assert len(list((tmp_path / "n12" / "segmented").iterdir())) >= 4
    from cxrlib.data.manifest import read_manifest

    df = read_manifest(tmp_path / "n12" / "manifest-masks.csv").frame
    assert len(df) == 12
    assert (df["lung_mask_path"].fillna("") == "").sum() == 2
    table = scale.format_scale_table(result)
    assert "| segmentation | 2 of N |" in table


def _scale_file() -> dict:
    def row(stage, n, **kw):
        base = {
            "stage": stage,
            "n": n,
            "items": n,
            "seconds": 1.0,
            "per_image_ms": 1.0,
            "peak_rss_mb": 500.0,
            "start_rss_mb": 400.0,
            "workers_peak_rss_mb": 300.0,
            "disk_bytes": 0,
            "kind": "all",
        }
        return {**base, **kw}

    stages = []
    for n in (10, 100):
        stages += [
            row("adapter", n),
            row("segmentation", n, items=4, per_image_ms=50.0, disk_bytes=4000, kind="sample"),
            row("priors", n, per_image_ms=2.0, disk_bytes=n * 50_000),
            row("loader", n, items=4, per_image_ms=10.0, kind="sample", workers_peak_rss_mb=1024.0),
            row("train", n, items=2, peak_rss_mb=2048.0, checkpoint_bytes=4.8e9, kind="few"),
        ]
    return {
        "sizes": [10, 100],
        "sample": 4,
        "stages": stages,
        "provenance": {"git_commit": "abc1234def"},
    }


GPU = {
    "date": "2026-12-05",
    "device": "H100",
    "transcribed": "from a note",
    "train": {"32": {"soft_ms": 200.0}},
}


def test_cost_rows_follow_their_formulas():
    rows = {what: (values, how) for what, values, how in costs.cost_rows(_scale_file(), GPU)}
    mimic, chexpert = (n for _, n in costs.DATASETS)
    # priors: 50 KB per image (the largest N's disk / items)
    assert rows["disk: prior cache"][0] == [costs._gb(mimic * 50_000), costs._gb(chexpert * 50_000)]
    assert rows["disk: masks (segmenter PNGs)"][0][0] == costs._gb(mimic * 1000)
    assert rows["disk: checkpoints"][0] == ["4.8 GB", "4.8 GB"]
    # 160 images/s on one GPU (32 per 200 ms); loading 100 images/s on 2 cores: 50/core
    assert rows["time per epoch, 1 H100 (features cached)"][0][0] == costs._hours(mimic / 160)
    assert rows["time per epoch, 8 H100s (features cached)"][0][1] == costs._hours(chexpert / 1280)
    assert rows["cores to feed 8 H100s reading images"][0] == ["26", "26"]
    assert rows["RAM: per loader worker"][0] == ["1.0 GiB", "1.0 GiB"]
    assert "projection" in rows["disk: feature cache (when it pays)"][1]


def test_rss_growth_is_kb_per_image_between_the_extreme_sizes():
    rows = [
        {"n": 20_000, "peak_rss_mb": 600.0},
        {"n": 2_000, "peak_rss_mb": 500.0},
        {"n": 100_000, "peak_rss_mb": 1_480.0},
    ]
    assert costs.rss_growth(rows) == 880 * 1024 / 80_000  # 11.264 KB per image
    assert costs.rss_growth(rows[:1]) is None


def test_update_costs_writes_between_markers_and_checks(tmp_path):
    s, g, readme = tmp_path / "s.json", tmp_path / "g.json", tmp_path / "README.md"
    s.write_text(json.dumps(_scale_file()))
    g.write_text(json.dumps(GPU))
    readme.write_text(f"# x\n\n{costs.START}\nold\n{costs.END}\n\ntail\n")
    assert costs.update_costs(s, g, readme) is True
    text = readme.read_text()
    assert "old" not in text and text.endswith(f"{costs.END}\n\ntail\n")
    assert "| priors | all N |" in text and "commit `abc1234`" in text
    assert text.count("+0.00 KB/img |") == 5  # the same peak RSS at both sizes
    assert "last measured (2026-12-05): from a note" in text
    assert costs.update_costs(s, g, readme, check=True) is False
    readme.write_text(text.replace("| priors |", "| priorz |"))
    with pytest.raises(CxrError, match="costs section differs"):
        costs.update_costs(s, g, readme, check=True)
    with pytest.raises(CxrError, match="missing.json: file does not exist"):
        costs.update_costs(tmp_path / "missing.json", g, readme)


def test_readme_costs_are_generated_from_the_committed_files():
    """The README's "Running on MIMIC-CXR" tables are what `cxr bench costs` writes from
    the committed benchmark files (one scale run, the last GPU run)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    results = root / "benchmarks" / "results"
    (scale_file,) = sorted(results.glob("scale-*.json"))
    (gpu_file,) = sorted(results.glob("gpu-*.json"))
    assert costs.update_costs(scale_file, gpu_file, root / "README.md", check=True) is False
