"""Run records: their own file name, the older layout still read, and the inputs a run
resolved kept as data (training.runs); the segmenter a workbook's notebooks use."""

from __future__ import annotations

import json

from cxrlib.anatomy.segmenter import SEGMENTER_RECORD, record_segmenter, recorded_segmenter
from cxrlib.training.config import RunConfig, profile_config
from cxrlib.training.runs import (
    RUN_RECORD,
    record_inputs,
    recorded_inputs,
    run_config,
    run_config_path,
    run_folder,
    run_inputs,
    training_run,
    training_runs,
    write_run_record,
)


def _checkpoint(folder):
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"")
    (folder / "config.json").write_text('{"model": "the model config"}')


def test_a_run_record_has_its_own_name(tmp_path):
    run = training_run(tmp_path, "soft", 0)
    run.mkdir(parents=True)
    config = profile_config("smoke")
    path = write_run_record(run, config, world_size=2)
    assert path == run / RUN_RECORD == run_config_path(run)
    record = json.loads(path.read_text())
    assert (record["seed"], record["world_size"]) == (0, 2) and "git_commit" in record
    assert run_config(run) == config
    assert training_runs(tmp_path) == {("soft", 0): run}
    _checkpoint(run / "checkpoints" / "best")
    assert run_folder(run) == run
    assert run_folder(run / "checkpoints" / "best") == run


def test_runs_written_before_keep_their_record_in_config_json(tmp_path):
    run = training_run(tmp_path, "none", 1)
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"config": RunConfig().to_dict()}))
    assert run_config_path(run) == run / "config.json"
    assert run_config(run) == RunConfig()
    assert training_runs(tmp_path) == {("none", 1): run}
    assert recorded_inputs(run) == {}  # older runs recorded no inputs
    _checkpoint(run / "checkpoints" / "last")
    assert run_folder(run) == run
    # a model folder's config.json is the model's, never a run record
    assert run_config_path(run / "checkpoints" / "last").name == RUN_RECORD


def test_an_exported_folder_is_its_own_run(tmp_path):
    _checkpoint(tmp_path / "export")
    (tmp_path / "export" / RUN_RECORD).write_text(json.dumps({"config": RunConfig().to_dict()}))
    assert run_folder(tmp_path / "export") == tmp_path / "export"
    assert run_config(tmp_path / "export") == RunConfig()


def test_a_run_records_the_inputs_it_resolved(tmp_path):
    config = profile_config("smoke")
    segmenter, encoder = tmp_path / "segmenter", tmp_path / "encoder"
    for folder in (segmenter, encoder):
        _checkpoint(folder)
    config.priors.segmenter = str(segmenter)
    model = config.model.replace(encoder=str(encoder), patch_size=16)
    inputs = run_inputs(config, model, 2, tmp_path / "m.csv")
    assert inputs["manifest"] == str((tmp_path / "m.csv").resolve())
    assert inputs["encoder"]["path"] == str(encoder.resolve())
    assert inputs["segmenter"]["path"] == str(segmenter.resolve())
    assert len(inputs["encoder"]["fingerprint"]) == len(inputs["segmenter"]["fingerprint"]) == 16
    prior = config.priors.resolve(model.image_size, 16, 2)
    assert inputs["priors"]["cache_key"] == prior.cache_key()
    assert (inputs["priors"]["source"], inputs["priors"]["mode"]) == ("auto", model.mode)
    assert run_inputs(config, config.model.replace(patch_size=16), 2, "m.csv")["encoder"] == {
        "config": config.model.encoder
    }
    named = config.model.replace(encoder="facebook/dinov3-vits16-pretrain-lvd1689m")
    assert run_inputs(config, named.replace(patch_size=16), 2, "m.csv")["encoder"] == {
        "name": "facebook/dinov3-vits16-pretrain-lvd1689m"
    }

    run = tmp_path / "run"
    run.mkdir()
    write_run_record(run, config, world_size=1)
    record_inputs(run, inputs)
    assert recorded_inputs(run) == inputs
    assert run_config(run) == config


def test_the_segmenter_a_workbook_uses_is_recorded(tmp_path):
    assert recorded_segmenter(tmp_path) is None
    _checkpoint(tmp_path / "cache" / "segmenter-ab")
    path = record_segmenter(tmp_path / "run", tmp_path / "cache" / "segmenter-ab", "phantom")
    assert path == tmp_path / "run" / SEGMENTER_RECORD
    record = json.loads(path.read_text())
    assert record["source"] == "phantom" and len(record["fingerprint"]) == 16
    assert recorded_segmenter(tmp_path / "run") == (tmp_path / "cache" / "segmenter-ab").resolve()
