"""The workbook runner: order, parameters, run folders, failures, and the real notebooks."""

import ast
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from cxrlib.base.errors import CxrError
from cxrlib.data.manifest import read_manifest
from cxrlib.data.phantom import PhantomSpec, prepare_phantom
from cxrlib.experiment.ablation import interval_method
from cxrlib.experiment.workbook import (
    PROFILES,
    collect_timings,
    notebook_paths,
    resume_workbook,
    run_workbook,
)
from cxrlib.training.config import profile_config
from cxrlib.training.profiles import profile_manifest, profile_phantom

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


# a test notebook's body: appends its NAME to run_dir/order.txt (which notebooks ran, in order)
_APPEND_NAME = (
    "from pathlib import Path\n"
    "p = Path(run_dir) / 'order.txt'\n"
    "p.write_text(p.read_text() + NAME if p.exists() else NAME)\n"
)


@pytest.fixture
def manifest(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("placeholder\n")
    return path


def test_another_seed_set_reaches_the_notebooks_and_run_json(tmp_path, manifest):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    body = "from pathlib import Path\nPath(run_dir, 'seeds.txt').write_text(repr(seeds))\n"
    _notebook(nbs / "01_a.ipynb", "run_dir = ''\nseeds = [0, 1, 2]", body)
    run = tmp_path / "run"
    run_workbook("smoke", out=run, notebooks=nbs, manifest=manifest, seeds=[100, 101, 102])
    assert (run / "seeds.txt").read_text() == "[100, 101, 102]"
    record = json.loads((run / "run.json").read_text())
    assert record["parameters"]["seeds"] == [100, 101, 102]
    with pytest.raises(CxrError, match="at least two different seeds"):
        run_workbook("smoke", out=tmp_path / "r2", notebooks=nbs, manifest=manifest, seeds=[1, 1])


def test_runs_in_order_with_declared_parameters_only(tmp_path, manifest):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    body = _APPEND_NAME
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
    timings = record["timings"]
    assert list(timings) == [
        "phantom_generation",
        "segmenter_training",
        "encoder_pretraining",
        "feature_cache",
        "decoder_runs",
        "ablation",
        "evaluation",
        "figures",
        "notebooks",
        "total",
    ]
    assert timings["phantom_generation"]["note"] == "not used: the run read its --manifest"
    assert timings["decoder_runs"] == {} and timings["ablation"] == {}
    assert timings["evaluation"] == {
        "seconds": None,
        "in_run": None,
        "source": "",
        "note": "not run",
    }
    assert list(timings["notebooks"]) == ["01_a.ipynb", "02_b.ipynb"]
    assert isinstance(timings["total"]["seconds"], float)


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


def test_resume_continues_a_failed_run_from_its_first_unfinished_notebook(tmp_path, manifest):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    body = _APPEND_NAME
    _notebook(nbs / "01_a.ipynb", "run_dir = ''\nNAME = 'a'", body)
    _notebook(nbs / "02_b.ipynb", "run_dir = ''\nNAME = 'b'", body + "raise RuntimeError('lid')")
    _notebook(nbs / "03_c.ipynb", "run_dir = ''\nNAME = 'c'", body)
    run = tmp_path / "run"
    with pytest.raises(CxrError, match="02_b.ipynb failed"):
        run_workbook("smoke", out=run, notebooks=nbs, manifest=manifest)
    assert (run / "order.txt").read_text() == "ab"
    _notebook(nbs / "02_b.ipynb", "run_dir = ''\nNAME = 'b'", body)  # the cause mended
    with pytest.raises(CxrError, match="not empty.*--resume"):
        run_workbook("smoke", out=run, notebooks=nbs, manifest=manifest)
    result = resume_workbook(run)
    assert (run / "order.txt").read_text() == "abbc"  # 01 kept, 02 and 03 ran
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "complete"
    assert [n["notebook"] for n in record["notebooks"]] == [
        "01_a.ipynb",
        "02_b.ipynb",
        "03_c.ipynb",
    ]
    assert [n["status"] for n in record["notebooks"]] == ["ok", "ok", "ok"]
    attempts = record["attempts"]
    assert [(a["from"], a["kept"], a["status"]) for a in attempts] == [
        ("01_a.ipynb", [], "failed"),
        ("02_b.ipynb", ["01_a.ipynb"], "complete"),
    ]
    assert list(record["timings"]["notebooks"]) == ["01_a.ipynb", "02_b.ipynb", "03_c.ipynb"]
    spent = round(sum(a["seconds"] for a in attempts), 1)  # each rounded to 0.1 s
    assert record["timings"]["total"]["seconds"] >= spent - 0.1
    assert result.run_dir == run.resolve()
    assert resume_workbook(run).notebooks == result.notebooks  # complete: nothing runs
    assert (run / "order.txt").read_text() == "abbc"
    assert len(json.loads((run / "run.json").read_text())["attempts"]) == 2


def test_resume_reruns_a_notebook_whose_executed_copy_is_gone(tmp_path, manifest):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    _notebook(nbs / "01_a.ipynb", "run_dir = ''", "open(run_dir + '/a', 'a').write('a')")
    _notebook(nbs / "02_b.ipynb", "run_dir = ''", "raise RuntimeError('oom')")
    run = tmp_path / "run"
    with pytest.raises(CxrError):
        run_workbook("smoke", out=run, notebooks=nbs, manifest=manifest)
    (run / "notebooks" / "01_a.ipynb").unlink()
    _notebook(nbs / "02_b.ipynb", "run_dir = ''", "x = 1")
    resume_workbook(run)
    assert (run / "a").read_text() == "aa"


def test_resume_refuses_what_it_cannot_continue(tmp_path):
    with pytest.raises(CxrError, match="no readable run.json"):
        resume_workbook(tmp_path)
    (tmp_path / "run.json").write_text(json.dumps({"status": "failed", "notebooks": []}))
    with pytest.raises(CxrError, match="made before --resume existed"):
        resume_workbook(tmp_path)
    live = {
        "status": "running",
        "notebooks": [],
        "parameters": {},
        "notebooks_dir": str(tmp_path),
        "profile": {"name": "smoke"},
        "attempts": [{"pid": os.getpid(), "host": socket.gethostname()}],
    }
    (tmp_path / "run.json").write_text(json.dumps(live))
    with pytest.raises(CxrError, match=f"still running in process {os.getpid()}"):
        resume_workbook(tmp_path)


def test_phantom_generation_is_timed_and_marked_reused(tmp_path):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    _notebook(nbs / "01_a.ipynb", "x = 1", "y = x")
    cache = tmp_path / "cache"
    notes = []
    for name in ("first", "second"):
        run_workbook("smoke", out=tmp_path / name, notebooks=nbs, cache=cache)
        record = json.loads((tmp_path / name / "run.json").read_text())
        entry = record["timings"]["phantom_generation"]
        assert entry["source"] == str((cache / profile_phantom("smoke").name).resolve())
        assert isinstance(entry["seconds"], float)
        notes.append((entry["in_run"], entry["note"]))
    assert notes == [(True, "generated"), (False, "reused from the cache")]


def test_timings_come_from_each_stage_record(tmp_path):
    import os
    from datetime import UTC, datetime

    run, cache = tmp_path / "run", tmp_path / "cache"
    started = datetime.now(UTC).timestamp() - 60
    manifest = str(tmp_path / "m.csv")
    segmenter = cache / "segmenters" / "segmenter-ab"
    segmenter.mkdir(parents=True)
    (segmenter / "config.json").write_text(json.dumps({"seconds": 480.0}))
    os.utime(segmenter / "config.json", (started - 3600, started - 3600))  # an earlier run's
    executed = run / "notebooks" / "02_masks.ipynb"
    run.mkdir()
    (run / "segmenter.json").write_text(json.dumps({"path": str(segmenter)}))  # notebook 02's
    model = {"encoder": {"hidden_size": 32}, "image_size": 64, "patch_size": 16}
    pretrain = {"enabled": True, "epochs": 1, "seed": 0}
    for name, seed in (("encoder-1", 0), ("encoder-2", 1)):  # encoder-2: another seed
        key = {"manifest": [manifest, 1, 2], **model, "settings": {**pretrain, "seed": seed}}
        (cache / "encoders" / name).mkdir(parents=True)
        (cache / "encoders" / name / "pretrain.json").write_text(
            json.dumps({"seconds": 300.0 + seed, "key": {**key, "seed": seed}})
        )
    tree = {"data": {"manifest": manifest}, "model": model, "pretrain": pretrain}
    train = run / "train" / "soft-seed0"
    train.mkdir(parents=True)
    inputs = {"encoder": {"path": str(cache / "encoders" / "encoder-1")}}
    (train / "run_config.json").write_text(json.dumps({"config": tree, "inputs": inputs}))
    (train / "summary.json").write_text(json.dumps({"seconds": 4.5}))
    stages = {"shared_inputs": 1.0, "training": 60.0, "generation": 10.0, "evaluation": 25.0}
    (run / "ablation").mkdir()
    (run / "ablation" / "ablation.json").write_text(json.dumps({"seconds": 96.0, "stages": stages}))
    record = {
        "started": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
        "finished": datetime.fromtimestamp(started + 200, UTC).isoformat(timespec="seconds"),
        "cache_dir": str(cache),
        "manifest": manifest,
        "phantom": {"seconds": 0.1, "in_run": False, "source": "p", "note": "reused"},
        "notebooks": [
            {"notebook": "02_masks.ipynb", "executed": str(executed), "seconds": 500.0},
            {"notebook": "04_evaluate.ipynb", "seconds": 20.0},
            {"notebook": "06_figures.ipynb", "seconds": 30.0},
        ],
    }
    (cache / "features" / "features-abc").mkdir(parents=True)
    (cache / "features" / "features-abc" / "index.json").write_text('{"build_seconds": 12.5}')
    seg_json, enc_json = segmenter / "config.json", cache / "encoders/encoder-1/pretrain.json"
    assert collect_timings(run, record) == {
        "phantom_generation": {"seconds": 0.1, "in_run": False, "source": "p", "note": "reused"},
        "segmenter_training": {
            "seconds": 480.0,
            "in_run": False,
            "source": str(seg_json),
            "note": "reused from the cache (trained by an earlier run)",
        },
        "encoder_pretraining": {
            "seconds": 300.0,
            "in_run": True,
            "source": str(enc_json),
            "note": "pretrained in this run",
        },
        "feature_cache": {
            "seconds": 12.5,
            "in_run": True,
            "source": f"{cache / 'features'}: features-abc",
            "note": "encoder features computed",
        },
        "decoder_runs": {
            "soft-seed0": {
                "seconds": 4.5,
                "in_run": True,
                "source": str(train / "summary.json"),
                "note": "training loop",
            }
        },
        "ablation": {**stages, "total": 96.0},
        "evaluation": {
            "seconds": 55.0,
            "in_run": True,
            "source": "",
            "note": "notebook 04_evaluate.ipynb + ablation generation + ablation evaluation",
        },
        "figures": {
            "seconds": 30.0,
            "in_run": True,
            "source": "",
            "note": "notebook 06_figures.ipynb",
        },
        "notebooks": {"02_masks.ipynb": 500.0, "04_evaluate.ipynb": 20.0, "06_figures.ipynb": 30.0},
        "total": {
            "seconds": 200.0,
            "in_run": True,
            "source": "",
            "note": "the whole run: data preparation and every notebook",
        },
    }


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


def _declared_parameters() -> dict[str, dict]:
    import papermill as pm

    return {p.name: pm.inspect_notebook(str(p)) for p in notebook_paths(ROOT_NOTEBOOKS)}


def test_the_workbook_runs_every_numbered_notebook_in_order():
    paths = notebook_paths(ROOT_NOTEBOOKS)
    on_disk = sorted(p.name for p in ROOT_NOTEBOOKS.glob("*.ipynb"))
    assert [p.name for p in paths] == on_disk  # every notebook, none left out
    assert [int(p.name[:2]) for p in paths] == list(range(1, len(paths) + 1))
    # the README's table of notebooks lists the same ones in the same order
    readme = (ROOT_NOTEBOOKS.parent / "README.md").read_text()
    listed = [
        line.split("`")[1].removeprefix("notebooks/")
        for line in readme.splitlines()
        if line.startswith("| `notebooks/")
    ]
    assert listed == on_disk


def test_every_offered_parameter_is_a_papermill_parameter_of_a_notebook():
    declared = _declared_parameters()
    # what run_workbook offers besides the profile's parameters
    runner = (
        "profile",
        "manifest",
        "figures_dir",
        "run_dir",
        "wingspan",
        "segmenter_cache",
        "cache_dir",
        "interactive",
    )
    for name in sorted(runner):
        assert any(name in d for d in declared.values()), name
    for profile in PROFILES.values():
        for key, value in profile.parameters.items():
            takers = {nb: d[key] for nb, d in declared.items() if key in d}
            assert takers, f"{profile.name}: no notebook declares {key!r}"
            for nb, spec in takers.items():
                default = ast.literal_eval(spec["default"])
                if default is not None and value is not None:
                    # papermill injects the value in place of the default: same kind
                    assert type(value) is type(default), (profile.name, key, nb)


HF_TOKEN = "hf_dummyTokenThatMustNeverBeWritten0123456789"


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc): the papermill kernel, the ablation's
    training processes."""
    parent = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        kids = [p for p, pp in parent.items() if pp in frontier]
        found += kids
        frontier = kids
    return found


def _kill_tree(proc: subprocess.Popen) -> None:
    """kill -9 of the workbook and everything it started (the lid closes, the OOM killer).

    The tree is frozen first (SIGSTOP until no new process appears), so that nothing it
    starts in the meantime escapes, then killed."""
    frozen: set[int] = set()
    while True:
        tree = {proc.pid, *_descendants(proc.pid)}
        if tree <= frozen:
            break
        for pid in tree - frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        frozen |= tree
    for pid in frozen:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()


def _killed_during_the_ablation_then_resumed(tmp_path: Path, cache: Path) -> Path:
    """A workbook of notebook 05 alone, kill -9'd once its first training run finished
    (others in flight), then ``cxr workbook run --resume``; returns the run folder."""
    nbs = tmp_path / "nbs05"
    nbs.mkdir()
    shutil.copy(ROOT_NOTEBOOKS / "05_ablations.ipynb", nbs)
    run = tmp_path / "killed"
    cxr = [sys.executable, "-m", "cxrlib.cli", "workbook", "run"]
    env = {**os.environ, "CXR_CACHE": str(cache)}
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env}
    proc = subprocess.Popen(
        [*cxr, "--profile", "smoke", "--out", str(run), "--notebooks", str(nbs)], **quiet
    )
    deadline = time.monotonic() + 900
    while not list(run.glob("train/*/summary.json")):
        assert proc.poll() is None, "the workbook ended before it could be killed"
        assert time.monotonic() < deadline, "no training run finished in 15 minutes"
        time.sleep(0.5)
    _kill_tree(proc)
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "running"  # killed: nothing marked it
    assert not (run / "ablation" / "ablation_summary.csv").exists()
    done = subprocess.run(
        [*cxr, "--resume", str(run)], env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return run


@pytest.mark.slow
def test_smoke_profile_runs_the_real_notebooks_on_a_phantom_set(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", HF_TOKEN)  # a user's token: never written anywhere
    # Training is bit-identical only at the same thread count. Notebook 03 trains
    # soft-seed0 in the kernel (all cores by default), the ablation's runs one thread
    # each, and the killed run below (notebook 05 alone) trains soft-seed0 itself: on
    # CPUs whose kernels differ by thread count (e.g. this AMD EPYC) the last bits of its
    # NLL would differ. One thread everywhere makes the comparison hold on every CPU.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
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
    trained = summary[summary["system"].isin(["none", "soft", "strict"])]
    assert set(trained["interval"]) == {interval_method(50)}
    baselines = summary[summary["system"].isin(["retrieval", "most_frequent"])]
    assert set(baselines["interval"]) == {"95% percentile bootstrap over studies, 50 resamples"}
    # the explorer, headless: one static view per mode of the same study
    explorer = nbformat.read(run / "notebooks" / "07_explorer.ipynb", as_version=4)
    html = [
        o["data"]["text/html"]
        for c in explorer.cells
        for o in c.get("outputs", [])
        if "cxr-explorer-view" in o.get("data", {}).get("text/html", "")
    ]
    assert [h.split('data-mode="')[1].split('"')[0] for h in html] == ["none", "soft", "strict"]
    assert len({h.split('data-study="')[1].split('"')[0] for h in html}) == 1
    timings = record["timings"]
    runs = {f"{m}-seed{s}" for m in ("none", "soft", "strict") for s in (0, 1, 2)}
    assert set(timings["decoder_runs"]) == runs
    for stage in ("segmenter_training", "encoder_pretraining", "evaluation", "figures"):
        assert timings[stage]["seconds"] is not None, stage
    # the token was in every notebook's environment: in no log, record, config or notebook
    leaks = [
        str(path)
        for folder in (run, tmp_path / "cache")
        for path in folder.rglob("*")
        if path.is_file() and HF_TOKEN.encode() in path.read_bytes()
    ]
    assert not leaks
    # killed during notebook 05 and resumed: the same tables as the run above
    resumed = _killed_during_the_ablation_then_resumed(tmp_path, tmp_path / "cache")
    record = json.loads((resumed / "run.json").read_text())
    assert record["status"] == "complete"
    assert [a["from"] for a in record["attempts"]] == ["05_ablations.ipynb"] * 2
    assert [a["status"] for a in record["attempts"]] == ["interrupted", "complete"]
    for name in ("ablation.csv", "ablation_summary.csv", "paired_tests.csv"):
        pd.testing.assert_frame_equal(
            pd.read_csv(resumed / "ablation" / name), pd.read_csv(ablation / name), obj=name
        )


def test_full_profile_needs_a_manifest(tmp_path):
    with pytest.raises(CxrError, match="give --manifest"):
        run_workbook("full", out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_notebook_01_default_manifest_is_the_smoke_profiles_phantom_set(tmp_path):
    import papermill as pm

    declared = pm.inspect_notebook(str(ROOT_NOTEBOOKS / "01_dataset_exploration.ipynb"))
    assert declared["manifest"]["default"] == "None"  # resolved from the profile
    assert declared["profile"]["default"].strip("\"'") == "smoke"
    default = profile_manifest("smoke", tmp_path)
    assert default == tmp_path / profile_phantom("smoke").name / "manifest.csv"


def test_every_notebook_defaults_to_the_smoke_workbook():
    """Run by hand in order, notebooks 01-06 read the smoke profile's data and take the
    smoke workbook's parameters, so they give what `cxr workbook run --profile smoke`
    gives."""
    import ast

    import papermill as pm

    offered = {**PROFILES["smoke"].parameters, "profile": "smoke", "manifest": None}
    for path in notebook_paths(ROOT_NOTEBOOKS)[:6]:
        declared = pm.inspect_notebook(str(path))
        assert "manifest" in declared and "profile" in declared, path.name
        for name, value in offered.items():
            if name in declared:
                default = ast.literal_eval(declared[name]["default"])
                assert default == value, f"{path.name}: {name} = {default!r}, smoke: {value!r}"


def test_workbook_profiles_are_the_config_profiles():
    from cxrlib.training.config import PROFILES as CONFIG_PROFILES

    assert set(PROFILES) == set(CONFIG_PROFILES)
    for name, profile in PROFILES.items():
        data = profile_config(name).data
        assert profile.name == name
        assert profile_phantom(name) == PhantomSpec(
            data.phantom_n, data.phantom_seed, data.phantom_size
        )
