"""Run the workbook: the numbered notebooks in order, headless, under one profile.

A *profile* (:class:`cxrlib.training.config.Profile`) names every setting of a run: its
training part decides the data and the config tree, its notebook part the notebook
parameters (seeds, sizes of figures and intervals, segmenter settings). ``run_workbook``
prepares the data the profile needs (the phantom dataset, cached by its arguments),
then executes each ``notebooks/NN_*.ipynb`` with papermill, passing each notebook only
the parameters its ``parameters`` cell declares. Executed copies, figures and
``run.json`` (profile, parameters, provenance, timings, status) go into the run folder.
The first failing notebook stops the run with its name and failing cell.

``run.json`` ends with ``timings`` (:func:`collect_timings`): where the run's time went,
gathered from what each stage records (the notebooks' wall times here, the segmenter's
``config.json`` (named by notebook 02's ``segmenter.json``), the encoder's
``pretrain.json`` (named by the training runs' records), each training run's ``summary.json``,
``ablation/ablation.json``), each marked as spent in this run or reused from the cache.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tqdm.auto import tqdm

from cxrlib.anatomy.segmenter import recorded_segmenter
from cxrlib.base.errors import CxrError
from cxrlib.base.io import read_json_object, write_json_atomic
from cxrlib.base.provenance import provenance
from cxrlib.training.config import PROFILES, Profile
from cxrlib.training.profiles import profile_manifest, profile_record
from cxrlib.training.runs import ablation_record, recorded_inputs, training_runs

REPO_ROOT = Path(__file__).resolve().parents[2]
"""Root of the source checkout (where ``notebooks/``, ``runs/`` and ``cache/`` live)."""

SHARED_WINGSPAN = REPO_ROOT.parent / "shared" / "data" / "wingspan"
"""Where the open Wingspan data lies beside a checkout, when it does."""


@dataclass
class RunResult:
    """Where a run went and what it did."""

    run_dir: Path
    notebooks: list[dict]
    manifest: Path


def default_run_dir(profile: str, root: Path = REPO_ROOT) -> Path:
    """``runs/<profile>-<UTC timestamp>/`` under the checkout."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return root / "runs" / f"{profile}-{stamp}"


def notebook_paths(folder: Path) -> list[Path]:
    """The workbook's notebooks in execution order: ``NN_*.ipynb`` sorted by name."""
    paths = sorted(p for p in Path(folder).glob("[0-9][0-9]_*.ipynb") if p.is_file())
    if not paths:
        raise CxrError(f"no numbered notebooks (NN_*.ipynb) in {folder}")
    return paths


def run_workbook(
    profile: str,
    out: str | os.PathLike | None = None,
    notebooks: str | os.PathLike | None = None,
    cache: str | os.PathLike | None = None,
    manifest: str | os.PathLike | None = None,
    wingspan: str | os.PathLike | None = None,
    seeds: Sequence[int] | None = None,
) -> RunResult:
    """Execute the workbook's notebooks in order under ``profile``.

    Parameters
    ----------
    profile : str
        A key of :data:`PROFILES`.
    out : path-like, optional
        Run folder; default ``runs/<profile>-<timestamp>/``. Must not exist or be empty:
        a run never overwrites another.
    notebooks : path-like, optional
        Folder of ``NN_*.ipynb`` notebooks; default the checkout's ``notebooks/``.
    cache : path-like, optional
        Where generated datasets are kept; default ``$CXR_CACHE`` or ``cache/``.
    manifest : path-like, optional
        Run on this manifest instead of the profile's phantom dataset.
    wingspan : path-like, optional
        The Wingspan folder the segmenter trains on; default ``../shared/data/wingspan``
        beside the checkout when present, else the notebook falls back to the manifest.
    seeds : sequence of int, optional
        The ablation's seeds instead of the profile's (e.g. a disjoint set, to see
        whether its verdict survives other training runs); recorded in ``run.json``.

    Returns
    -------
    RunResult

    Raises
    ------
    CxrError
        Unknown profile, a non-empty run folder, or a notebook that failed (its name,
        the failing cell and the error, and where the executed copy is).
    """
    if profile not in PROFILES:
        raise CxrError(f"unknown profile {profile!r} (choose from {', '.join(sorted(PROFILES))})")
    prof = PROFILES[profile]
    if manifest is None and prof.needs_manifest:
        raise CxrError(f"profile {profile} runs on your data: give --manifest FILE")
    nb_dir = Path(notebooks) if notebooks is not None else REPO_ROOT / "notebooks"
    notebook_paths(nb_dir)  # refuses an empty folder before anything is written
    run_dir = Path(out) if out is not None else default_run_dir(profile)
    if run_dir.exists() and any(run_dir.iterdir()):
        raise CxrError(
            f"run folder {run_dir} exists and is not empty: a run never overwrites another"
            " (continue a killed or failed run with --resume RUN)"
        )
    run_dir = run_dir.resolve()
    (run_dir / "notebooks").mkdir(parents=True, exist_ok=True)
    cache_dir = Path(cache or os.environ.get("CXR_CACHE") or REPO_ROOT / "cache")
    since, setup_started = time.time(), time.perf_counter()
    record: dict = {
        "profile": profile_record(prof),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "provenance": provenance(),
        "notebooks": [],
        "status": "running",
        "cache_dir": str(cache_dir.resolve()),
        "notebooks_dir": str(nb_dir.resolve()),
        "since": since,
        "attempts": [],
    }
    write_json_atomic(run_dir / "run.json", record, default=str)
    manifest_path, record["phantom"] = run_manifest(prof, manifest, cache_dir, since)
    record["manifest"] = str(manifest_path)
    if seeds is not None:
        seeds = [int(s) for s in seeds]
        if len(seeds) < 2 or len(set(seeds)) != len(seeds):
            raise CxrError(f"--seeds: give at least two different seeds (got {seeds})")
    record["parameters"] = {
        **prof.parameters,
        **({"seeds": seeds} if seeds is not None else {}),
        "profile": prof.name,
        "manifest": str(manifest_path),
        "figures_dir": str(run_dir / "figures"),
        "run_dir": str(run_dir),
        "wingspan": str(Path(wingspan).resolve()) if wingspan else str(SHARED_WINGSPAN),
        "segmenter_cache": str((cache_dir / "segmenters").resolve()),
        "cache_dir": str(cache_dir.resolve()),
        "interactive": False,  # headless: no live widgets (notebook 07)
    }
    record["setup_seconds"] = round(time.perf_counter() - setup_started, 1)
    return _run_notebooks(run_dir, record, prof)


def resume_workbook(run: str | os.PathLike) -> RunResult:
    """Continue the workbook run in folder ``run`` (killed or failed) where it stopped.

    Notebooks that finished (``ok`` in ``run.json`` with their executed copy present) are
    kept; the first one that did not finish and every one after it run again, with the
    parameters the run was started with. ``run.json`` records each attempt (``attempts``:
    when, from which notebook, the notebooks kept, how it ended: ``complete``, ``failed``,
    or ``interrupted`` for one whose process was killed). A complete run is returned as
    it is.

    Raises
    ------
    CxrError
        No ``run.json`` (not a workbook run), one without the parameters of a resumable
        run, a run still executing in a live process, or a notebook that failed again.
    """
    run_dir = Path(run).resolve()
    record = read_json_object(run_dir / "run.json")
    if record is None:
        raise CxrError(f"{run_dir}: no readable run.json: not a workbook run folder")
    if record.get("status") == "complete":
        return RunResult(run_dir, record["notebooks"], Path(record["manifest"]))
    if "parameters" not in record or "notebooks_dir" not in record:
        raise CxrError(f"{run_dir}/run.json: made before --resume existed; start a new run")
    _refuse_live_run(record, run_dir)
    for attempt in record.get("attempts", []):
        if attempt.get("status") == "running":  # its process is gone: killed
            attempt["status"] = "interrupted"
    prof = PROFILES[record["profile"]["name"]]
    return _run_notebooks(run_dir, record, prof)


def _refuse_live_run(record: dict, run_dir: Path) -> None:
    """A CxrError when the run's last attempt is still executing in a live process here."""
    last = (record.get("attempts") or [{}])[-1]
    pid, host = last.get("pid"), last.get("host")
    if record.get("status") != "running" or pid is None or host != socket.gethostname():
        return
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return
    except PermissionError:
        pass
    raise CxrError(f"{run_dir}: still running in process {pid}; resume only a stopped run")


def _run_notebooks(run_dir: Path, record: dict, prof: Profile) -> RunResult:
    """Execute the notebooks of ``record`` not yet finished, in order; one attempt."""
    import papermill as pm

    paths = notebook_paths(Path(record["notebooks_dir"]))
    done = {
        e["notebook"]
        for e in record["notebooks"]
        if e.get("status") == "ok" and Path(e["executed"]).is_file()
    }
    first = next((i for i, src in enumerate(paths) if src.name not in done), len(paths))
    kept = {src.name for src in paths[:first]}
    record["notebooks"] = [e for e in record["notebooks"] if e["notebook"] in kept]
    attempt = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "from": paths[first].name if first < len(paths) else None,
        "kept": sorted(kept),
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "status": "running",
    }
    record["attempts"].append(attempt)
    record["status"] = "running"
    started = time.perf_counter()
    write_json_atomic(run_dir / "run.json", record, default=str)
    offered = record["parameters"]
    try:
        for src in tqdm(paths[first:], desc=f"workbook {prof.name}", unit="notebook"):
            declared = {p for p in pm.inspect_notebook(str(src))}
            params = {k: v for k, v in offered.items() if k in declared}
            attempt["seconds"] = round(time.perf_counter() - started, 1)  # so far
            execute_notebook(src, run_dir / "notebooks" / src.name, params, record, run_dir)
    except CxrError:
        attempt.update(status="failed", seconds=round(time.perf_counter() - started, 1))
        write_json_atomic(run_dir / "run.json", record, default=str)
        raise
    attempt.update(status="complete", seconds=round(time.perf_counter() - started, 1))
    return _finish_run(run_dir, record, prof)


def _finish_run(run_dir: Path, record: dict, prof: Profile) -> RunResult:
    """Mark the run complete, collect its timings, publish the figures."""
    record["status"] = "complete"
    record["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    since = record["since"]  # every run record that gets here has it (with its parameters)
    # an interrupted attempt counts up to the start of the notebook it was killed in
    spent = [record.get("setup_seconds") or 0.0]
    spent += [a.get("seconds") or 0.0 for a in record["attempts"]]
    total = round(sum(spent), 1)
    record["timings"] = collect_timings(run_dir, record, since=since, total=total)
    write_json_atomic(run_dir / "run.json", record, default=str)
    figures_dir = Path(record["parameters"]["figures_dir"])
    if prof.publish_figures and figures_dir.is_dir():
        publish_figures(run_dir, figures_dir, REPO_ROOT / "figures", record)
    return RunResult(run_dir, record["notebooks"], Path(record["manifest"]))


def execute_notebook(src: Path, dst: Path, params: dict, record: dict, run_dir: Path) -> None:
    """Execute notebook ``src`` into ``dst`` with ``params`` (papermill), its entry in
    ``record["notebooks"]`` (status, seconds) written to ``run_dir/run.json`` when it ends.

    Raises
    ------
    CxrError
        When a cell fails: the notebook, the failing cell, the error and the executed copy.
    """
    import papermill as pm

    entry = {"notebook": src.name, "parameters": params, "executed": str(dst)}
    record["notebooks"].append(entry)
    started = time.perf_counter()
    try:
        pm.execute_notebook(
            str(src),
            str(dst),
            parameters=params,
            cwd=str(src.parent),
            kernel_name="python3",
            progress_bar=False,
        )
    except pm.PapermillExecutionError as err:
        entry["status"] = "failed"
        entry["seconds"] = round(time.perf_counter() - started, 1)
        record["status"] = "failed"
        write_json_atomic(run_dir / "run.json", record, default=str)
        raise CxrError(
            f"notebook {src.name} failed at cell {err.exec_count}: {err.ename}: "
            f"{err.evalue.splitlines()[0] if err.evalue else ''} (executed copy: {dst})"
        ) from None
    entry["status"] = "ok"
    entry["seconds"] = round(time.perf_counter() - started, 1)
    write_json_atomic(run_dir / "run.json", record, default=str)


def run_manifest(
    prof: Profile, manifest: str | os.PathLike | None, cache_dir: Path, since: float
) -> tuple[Path, dict]:
    """The manifest a run reads, resolved: ``manifest`` when given, else the profile's
    phantom dataset (generated into ``cache_dir`` or reused); with its
    ``phantom_generation`` timing entry (generated when written after ``since``)."""
    if manifest is not None:
        manifest_path = Path(manifest).resolve()
        if not manifest_path.is_file():
            raise CxrError(f"manifest {manifest_path} does not exist")
        return manifest_path, _entry(None, False, note="not used: the run read its --manifest")
    started = time.perf_counter()
    manifest_path = profile_manifest(prof.name, cache_dir, workers=prof.workers).resolve()
    built = (manifest_path.parent / "phantom.json").stat().st_mtime >= since
    note = "generated" if built else "reused from the cache"
    seconds = round(time.perf_counter() - started, 1)
    return manifest_path, _entry(seconds, built, str(manifest_path.parent), note)


def publish_figures(run_dir: Path, src: Path, dst: Path, record: dict) -> None:
    """Copy a run's figures to ``dst`` with a README naming the run that made them."""
    dst.mkdir(parents=True, exist_ok=True)
    names = sorted(p.name for p in src.iterdir() if p.suffix in (".png", ".pdf"))
    shown = run_dir.relative_to(REPO_ROOT) if run_dir.is_relative_to(REPO_ROOT) else run_dir
    for name in names:
        shutil.copy2(src / name, dst / name)
    lines = [
        "# Figures",
        "",
        "Made by `cxr workbook run` (never edited by hand); regenerate with `make workbook`.",
        "",
        f"- run: `{shown}`",
        f"- profile: `{record['profile']['name']}`",
        f"- commit: `{record['provenance']['git_commit']}`",
        f"- finished: {record.get('finished', '')}",
        "",
        *[f"- `{n}`" for n in names],
        "",
    ]
    (dst / "README.md").write_text("\n".join(lines))


# --- timings ---------------------------------------------------------------------------


def _entry(seconds: float | None, in_run: bool | None, source: str = "", note: str = "") -> dict:
    """One stage of :func:`collect_timings`."""
    return {"seconds": seconds, "in_run": in_run, "source": source, "note": note}


def _built(path: Path, since: float | None) -> bool | None:
    """Whether ``path`` was written during the run (None: the run's start is unknown)."""
    return None if since is None else path.stat().st_mtime >= since


def _cached_stage(meta: Path | None, since: float | None, done: str, missing: str) -> dict:
    """The entry of a stage whose output is cached: the ``seconds`` its record ``meta``
    holds, spent in this run when ``meta`` was written during it, else reused."""
    if meta is None:
        return _entry(None, None, note=missing)
    built = _built(meta, since)
    note = f"{done} in this run" if built else f"reused from the cache ({done} by an earlier run)"
    return _entry((read_json_object(meta) or {}).get("seconds"), built, str(meta), note)


def _notebook_seconds(record: dict, prefix: str) -> tuple[str, float] | None:
    for entry in record.get("notebooks", []):
        if entry.get("notebook", "").startswith(prefix) and entry.get("seconds") is not None:
            return entry["notebook"], float(entry["seconds"])
    return None


def segmenter_folder(run_dir: Path, record: dict | None = None) -> Path | None:
    """The segmenter folder notebook 02 used, as it recorded in ``run_dir/segmenter.json``
    (:func:`cxrlib.anatomy.segmenter.record_segmenter`); None when there is none.
    ``record`` (the run's ``run.json``) is not needed: the file alone says it."""
    return recorded_segmenter(run_dir)


def _encoder_folder(run_dir: Path) -> Path | None:
    """The pretrained encoder the run's training runs read, as their run records name it
    (``inputs.encoder.path``, :func:`cxrlib.training.runs.run_inputs`)."""
    for run in training_runs(run_dir).values():
        path = (recorded_inputs(run).get("encoder") or {}).get("path")
        if path and (Path(path) / "pretrain.json").is_file():
            return Path(path)
    return None


def run_cache_dir(record: dict) -> Path | None:
    """The cache folder of a run (``run.json``): its ``cache_dir``, or for runs that
    predate it, the notebooks' ``cache_dir`` parameter; None when neither is there."""
    if record.get("cache_dir"):
        return Path(record["cache_dir"])
    for entry in record.get("notebooks", []):
        if "cache_dir" in entry.get("parameters", {}):
            return Path(entry["parameters"]["cache_dir"])
    return None


def _feature_cache_stage(cache_dir: Path | None, since: float | None) -> dict:
    """The encoder time of the feature caches this run filled (``build_seconds`` of each
    ``index.json`` written since the run started), or the caches it reused."""
    indexes = sorted((cache_dir / "features").glob("features-*/index.json")) if cache_dir else []
    if not indexes:
        return _entry(None, None, note="not found: no feature cache in the run's cache folder")
    fresh = [p for p in indexes if since is None or p.stat().st_mtime >= since]
    chosen = fresh or indexes
    seconds = sum(float((read_json_object(p) or {}).get("build_seconds") or 0.0) for p in chosen)
    where = ", ".join(str(p.parent.name) for p in chosen)
    note = "encoder features computed" if fresh else "reused from the cache"
    return _entry(seconds, bool(fresh), f"{cache_dir / 'features'}: {where}", note)


def collect_timings(
    run_dir: str | os.PathLike,
    record: dict,
    since: float | None = None,
    total: float | None = None,
) -> dict:
    """Where a workbook run's time went, from what each stage recorded.

    Parameters
    ----------
    run_dir : path-like
        The run folder.
    record : dict
        Its ``run.json`` content (notebook timings, ``phantom``, ``cache_dir``,
        ``manifest``, ``started`` and ``finished``).
    since : float, optional
        When the run started (seconds since the epoch); default ``record["started"]``.
        A cached artifact written before it was reused: its seconds are those of the
        earlier run that built it, not spent in this one.
    total : float, optional
        The run's wall time; default ``finished - started`` of ``record``.

    Returns
    -------
    dict
        ``phantom_generation``, ``segmenter_training``, ``encoder_pretraining``,
        ``feature_cache``, ``evaluation``, ``figures`` and ``total``: each
        ``{"seconds", "in_run", "source", "note"}`` (``seconds`` None where the stage
        records no duration or did not run, ``in_run`` whether it was spent in this run,
        ``source`` the file it was read from); ``decoder_runs``: run name (``soft-seed0``)
        -> such an entry (the training loop, ``summary.json``); ``ablation``: stage ->
        seconds (``ablation.json``); ``notebooks``: notebook -> wall seconds. Nothing
        here raises: a missing or unreadable record gives ``seconds`` None and a note.
    """
    run_dir = Path(run_dir)
    if since is None and record.get("started"):
        since = datetime.fromisoformat(record["started"]).timestamp()
    if total is None and record.get("started") and record.get("finished"):
        start, end = (datetime.fromisoformat(record[k]) for k in ("started", "finished"))
        total = round((end - start).total_seconds(), 1)
    cache_dir = run_cache_dir(record)
    out: dict = {}

    phantom = record.get("phantom")
    if phantom:
        out["phantom_generation"] = _entry(**phantom)
    else:
        out["phantom_generation"] = _entry(None, None, note="not recorded in run.json")

    segmenter = segmenter_folder(run_dir)
    out["segmenter_training"] = _cached_stage(
        None if segmenter is None else segmenter / "config.json",
        since,
        "trained",
        "not found: no segmenter.json (written by notebook 02) in the run folder",
    )
    encoder = _encoder_folder(run_dir)
    out["encoder_pretraining"] = _cached_stage(
        None if encoder is None else encoder / "pretrain.json",
        since,
        "pretrained",
        "not found: no pretrained encoder in the training runs' records",
    )
    out["feature_cache"] = _feature_cache_stage(cache_dir, since)
    runs = {}
    for summary in sorted((run_dir / "train").glob("*/summary.json")):
        seconds = (read_json_object(summary) or {}).get("seconds")
        runs[summary.parent.name] = _entry(
            seconds, _built(summary, since), str(summary), "training loop"
        )
    out["decoder_runs"] = runs

    ablation_json = read_json_object(ablation_record(run_dir)) or {}
    stages = dict(ablation_json.get("stages") or {})
    if "seconds" in ablation_json:
        stages["total"] = ablation_json["seconds"]
    out["ablation"] = stages

    parts, notes = [], []
    nb04 = _notebook_seconds(record, "04_")
    if nb04:
        parts.append(nb04[1])
        notes.append(f"notebook {nb04[0]}")
    for stage in ("generation", "evaluation"):
        if stage in stages:
            parts.append(float(stages[stage]))
            notes.append(f"ablation {stage}")
    out["evaluation"] = _entry(
        round(sum(parts), 1) if parts else None,
        True if parts else None,
        note=" + ".join(notes) or "not run",
    )

    nb06 = _notebook_seconds(record, "06_")
    out["figures"] = _entry(
        nb06[1] if nb06 else None,
        True if nb06 else None,
        note=f"notebook {nb06[0]}" if nb06 else "not run",
    )

    out["notebooks"] = {n["notebook"]: n.get("seconds") for n in record.get("notebooks", [])}
    out["total"] = _entry(total, True, note="the whole run: data preparation and every notebook")
    return out
