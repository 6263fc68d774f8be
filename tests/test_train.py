"""Training: outputs, exact resume after kill -9, NaN stop, unreadable images, DDP.

Runs whose weights are compared go through subprocesses with one thread each, so that
the uninterrupted and the resumed run do the same arithmetic.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import cxrlib.training.inputs as inputs_module
import cxrlib.training.train as train_module
from cxrlib.model import ReportModel
from cxrlib.training.checkpoint import CRASH_ENV, EMA_FILE, TrainingError, recover_checkpoints
from cxrlib.training.config import load_config, parse_assignment
from cxrlib.training.inputs import resolve_manifest
from cxrlib.training.train import train

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
ENV.pop(CRASH_ENV, None)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One phantom / prior / feature cache for the module."""
    return tmp_path_factory.mktemp("cache")


def _args(out: Path, cache: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "cxrlib.cli",
        "train",
        "--profile",
        "smoke",
        "--out",
        str(out),
        "--no-progress",
        "--set",
        f"data.cache_dir={cache}",
        "--set",
        "train.epochs=3",
        *extra,
    ]


def _run(out: Path, cache: Path, *extra: str, crash: str | None = None, check: bool = True):
    env = dict(ENV)
    if crash:
        env[CRASH_ENV] = crash
    proc = subprocess.run(
        _args(out, cache, *extra), env=env, capture_output=True, text=True, timeout=300
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"cxr train failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def _weights(run: Path, name: str = "last") -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / name / "model.safetensors"))


def _same_weights(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def _deterministic_metrics(run: Path) -> pd.DataFrame:
    df = pd.read_csv(run / "metrics.csv")
    return df.drop(columns=[c for c in ("images_per_s", "elapsed_s") if c in df])


@pytest.fixture(scope="module")
def reference(cache, tmp_path_factory) -> Path:
    """An uninterrupted smoke run (3 epochs, checkpoint every 2 steps)."""
    out = tmp_path_factory.mktemp("runs") / "reference"
    _run(out, cache)
    return out


def test_smoke_run_writes_checkpoints_config_metrics(reference):
    for name in ("last", "best"):
        folder = reference / "checkpoints" / name
        for file in (
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "optimizer.safetensors",
            "rng.safetensors",
            "trainer_state.json",
        ):
            assert (folder / file).is_file(), f"{name}/{file}"
    assert not [p for p in (reference / "checkpoints").iterdir() if p.name.startswith(".")]
    record = json.loads((reference / "run_config.json").read_text())
    assert record["config"]["profile"] == "smoke"
    assert record["config"]["train"]["epochs"] == 3
    assert record["seed"] == 0
    assert "git_commit" in record and record["packages"]["torch"] == torch.__version__
    inputs = record["inputs"]  # what the run resolved, kept as data from its start
    assert (Path(inputs["encoder"]["path"]) / "pretrain.json").is_file()  # pretrained, cached
    assert inputs["segmenter"] is None and inputs["priors"]["source"] == "auto"
    metrics = pd.read_csv(reference / "metrics.csv")
    assert {"step", "epoch", "split", "loss", "lr", "grad_norm"} <= set(metrics.columns)
    val = metrics[metrics["split"] == "validate"]
    assert val["clinical_micro_14"].between(0, 1).all()  # labeler F1 of the samples
    steps = metrics[metrics["split"] == "train"]["step"].tolist()
    assert steps == list(range(1, len(steps) + 1))
    assert (metrics["split"] == "validate").sum() == 3
    assert list(reference.glob("tensorboard/events.out.tfevents.*"))
    samples = pd.read_csv(reference / "samples.csv")
    assert set(samples["epoch"]) == {1, 2, 3}
    state = json.loads((reference / "checkpoints" / "last" / "trainer_state.json").read_text())
    assert state["step"] == steps[-1] and state["epoch"] == 3 and state["batch_in_epoch"] == 0
    summary = json.loads((reference / "summary.json").read_text())
    assert summary["stop_reason"] == "completed" and summary["global_step"] == steps[-1]
    # the checkpoint is a ReportModel folder
    model = ReportModel.from_pretrained(reference / "checkpoints" / "last")
    assert model.config.mode == "soft"
    # the learning rate warms up, then decays to the floor (0) at the last step
    lrs = metrics[metrics["split"] == "train"]["lr"].tolist()
    assert lrs[0] < max(lrs) and lrs[-1] < 0.05 * max(lrs)


@pytest.mark.slow  # kill -9 and resume
@pytest.mark.parametrize("crash", ["files:2", "swap:3", "swap:5"])
def test_kill_during_checkpoint_then_resume_is_exact(reference, cache, tmp_path, crash):
    out = tmp_path / "run"
    proc = _run(out, cache, crash=crash, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not (out / "summary.json").exists()
    _run(out, cache, "--resume")
    assert _same_weights(_weights(out), _weights(reference))
    assert _same_weights(_weights(out, "best"), _weights(reference, "best"))
    pd.testing.assert_frame_equal(_deterministic_metrics(out), _deterministic_metrics(reference))
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]


@pytest.mark.slow  # kill -9 and resume
def test_kill_at_a_random_moment_then_resume(reference, cache, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        _args(out, cache), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while not (out / "checkpoints" / "last").is_dir() and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.15)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _run(out, cache, "--resume")
    assert _same_weights(_weights(out), _weights(reference))
    steps = pd.read_csv(out / "metrics.csv").query("split == 'train'")["step"].tolist()
    assert steps == list(range(1, len(steps) + 1))


def test_recover_checkpoints_puts_back_the_old_one(tmp_path):
    folder = tmp_path / "checkpoints"
    (folder / ".old-last").mkdir(parents=True)
    (folder / ".old-last" / "x").write_text("kept")
    (folder / ".tmp-last").mkdir()
    recover_checkpoints(folder)
    assert (folder / "last" / "x").read_text() == "kept"
    assert sorted(p.name for p in folder.iterdir()) == ["last"]


def test_resume_refuses_another_config(reference, cache, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    proc = _run(out, cache, "--resume", "--set", "train.lr=0.5", check=False)
    assert proc.returncode == 1
    assert "another config" in proc.stderr.splitlines()[-1]
    proc = _run(out, cache, check=False)  # no --resume on a used folder
    assert proc.returncode == 1 and "not empty" in proc.stderr


@pytest.mark.slow  # two training processes
def test_ddp_two_processes_disjoint_data_identical_weights(cache, tmp_path):
    out = tmp_path / "ddp"
    args = _args(out, cache, "--set", "train.epochs=1")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    proc = subprocess.run(
        [*torchrun, *args[1:]], env=ENV, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    seen = [set(r["first_epoch_image_ids"]) for r in ranks]
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    assert len(seen[0]) == len(seen[1])
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    # every train image but at most one (an odd count) is seen once
    assert summary["train_images"] - len(seen[0] | seen[1]) in (0, 1)


# --- in-process ---------------------------------------------------------------------------


def _smoke(cache: Path, *assignments: str):
    overrides = [parse_assignment(f"data.cache_dir={cache}")]
    overrides += [parse_assignment(a) for a in assignments]
    return load_config("smoke", overrides=overrides)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(cache, tmp_path, monkeypatch):
    forward = ReportModel.forward
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        calls["n"] += 1
        if self.training and calls["n"] == 5:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(ReportModel, "forward", poisoned)
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"step 5 .*loss is nan.*step 4"):
        train(_smoke(cache), out, progress=False)
    state = json.loads((out / "checkpoints" / "last" / "trainer_state.json").read_text())
    assert state["step"] == 4
    ReportModel.from_pretrained(out / "checkpoints" / "last")


@pytest.fixture(params=["junk", "truncated"])
def corrupt_manifest(cache, tmp_path, request) -> tuple[Path, str]:
    """A copy of the smoke phantom with one train image overwritten by junk, or cut
    after its header (readable size, undecodable pixels)."""
    src = resolve_manifest(_smoke(cache)).parent
    dst = tmp_path / "phantom"
    shutil.copytree(src, dst)
    df = pd.read_csv(dst / "manifest.csv", dtype=str, keep_default_na=False)
    row = df[df["split"] == "train"].iloc[3]
    path = dst / row["image_path"]
    data = path.read_bytes()
    path.write_bytes(b"not a png" if request.param == "junk" else data[:120])
    return dst / "manifest.csv", row["image_id"]


@pytest.mark.parametrize("feature_cache", [True, False])
def test_unreadable_image_is_counted_and_skipped(cache, tmp_path, corrupt_manifest, feature_cache):
    manifest, bad_id = corrupt_manifest
    config = _smoke(
        tmp_path / "own-cache",
        f"data.manifest={manifest}",
        f"train.feature_cache={str(feature_cache).lower()}",
        "train.epochs=1",
    )
    result = train(config, tmp_path / "run", progress=False)
    assert [image_id for image_id, _ in result.bad_images] == [bad_id]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["bad_images"][0][0] == bad_id
    with pytest.raises(TrainingError, match=rf"1 unreadable images.*{bad_id}"):
        train(
            config.replace(
                data=config.data.__class__(**{**config.data.__dict__, "max_bad_images": 0})
            ),
            tmp_path / "run2",
            progress=False,
        )


def test_features_read_per_item_train_the_same(cache, tmp_path, monkeypatch):
    config = _smoke(cache, "train.epochs=1")
    train(config, tmp_path / "memory", progress=False)
    monkeypatch.setattr(inputs_module, "FEATURES_IN_MEMORY_BYTES", 0)
    train(config, tmp_path / "lazy", progress=False)
    assert _same_weights(_weights(tmp_path / "memory"), _weights(tmp_path / "lazy"))


def test_ema_average_is_written_and_resumes_exactly(cache, tmp_path, monkeypatch):
    """train.ema_decay: checkpoints/ema holds the averaged weights (different from the
    last weights, a model folder), every checkpoint carries the average, and a run
    stopped after a checkpoint and resumed writes the same average."""
    config = _smoke(cache, "train.ema_decay=0.9")
    whole = tmp_path / "whole"
    train(config, whole, progress=False)
    ema = _weights(whole, "ema")
    last = _weights(whole)
    assert set(ema) <= set(last) and ema
    assert not _same_weights(ema, {k: last[k] for k in ema})
    assert (whole / "checkpoints" / "last" / EMA_FILE).is_file()
    ReportModel.from_pretrained(whole / "checkpoints" / "ema")

    step = train_module.Trainer._optimizer_step

    def stop_at_5(self, bar):
        if self.step == 4:
            raise KeyboardInterrupt
        step(self, bar)

    monkeypatch.setattr(train_module.Trainer, "_optimizer_step", stop_at_5)
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train(config, cut, progress=False)
    monkeypatch.setattr(train_module.Trainer, "_optimizer_step", step)
    state = json.loads((cut / "checkpoints" / "last" / "trainer_state.json").read_text())
    assert state["step"] == 4
    train(config, cut, resume=True, progress=False)
    assert _same_weights(_weights(cut, "ema"), ema)
    assert _same_weights(_weights(cut), last)


def test_ema_with_a_tiny_decay_follows_the_weights(cache, tmp_path):
    out = tmp_path / "run"
    train(_smoke(cache, "train.ema_decay=0.000000001"), out, progress=False)
    ema, last = _weights(out, "ema"), _weights(out)
    for name, value in ema.items():
        torch.testing.assert_close(value, last[name], rtol=0, atol=1e-6)
