"""Run the workbook: the numbered notebooks in order, headless, under one profile.

A *profile* names every setting of a run (dataset size, seeds, folders). ``run_workbook``
prepares the data the profile needs (the phantom dataset, cached by its arguments),
then executes each ``notebooks/NN_*.ipynb`` with papermill, passing each notebook only
the parameters its ``parameters`` cell declares. Executed copies, figures and
``run.json`` (profile, parameters, provenance, timings, status) go into the run folder.
The first failing notebook stops the run with its name and failing cell.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from tqdm.auto import tqdm

from cxrlib.errors import CxrError
from cxrlib.io import write_json_atomic
from cxrlib.provenance import provenance

REPO_ROOT = Path(__file__).resolve().parents[1]
"""Root of the source checkout (where ``notebooks/``, ``runs/`` and ``cache/`` live)."""

SHARED_WINGSPAN = REPO_ROOT.parent / "shared" / "data" / "wingspan"
"""Where the open Wingspan data lies beside a checkout, when it does."""


@dataclass(frozen=True)
class PhantomSpec:
    """Arguments of the phantom dataset a profile runs on."""

    n: int
    seed: int = 0
    size: int = 224

    @property
    def name(self) -> str:
        from cxrlib.data.phantom import PHANTOM_VERSION

        return f"phantom-n{self.n}-seed{self.seed}-size{self.size}-v{PHANTOM_VERSION}"


@dataclass(frozen=True)
class Profile:
    """Settings of one workbook run.

    ``parameters`` are offered to every notebook (each takes those its ``parameters``
    cell declares); ``publish_figures`` copies the run's figures to ``figures/``.
    """

    name: str
    phantom: PhantomSpec
    parameters: dict = field(default_factory=dict)
    publish_figures: bool = False
    workers: int = 2
    # the profile runs on a user's manifest (--manifest), not on the phantom
    needs_manifest: bool = False


PROFILES: dict[str, Profile] = {
    # every notebook on tiny settings; CI runs it
    "smoke": Profile(
        "smoke",
        PhantomSpec(n=64, seed=0, size=128),
        {
            "seed": 0,
            "n_overlay": 4,
            "segmenter_epochs": 1,
            "segmenter_image_size": 64,
            "n_examples": 2,
            "n_bootstrap": 50,
            "epochs": 1,
            "seeds": [0, 1, 2],
        },
    ),
    # what `make workbook` runs on the embedded phantom dataset
    "default": Profile(
        "default",
        PhantomSpec(n=3000, seed=0, size=224),
        {
            "seed": 0,
            "n_overlay": 8,
            "segmenter_epochs": 40,
            "segmenter_image_size": 256,
            "n_examples": 4,
            "n_bootstrap": 1000,
            # 9 decoder runs (3 modes x 3 seeds) must fit the 30-minute budget on 2
            # cores: one epoch each (cxr train --profile default trains 4)
            "epochs": 1,
            "seeds": [0, 1, 2],
        },
        publish_figures=True,
    ),
    # the published sizes on a user's manifest (MIMIC-CXR), on GPUs; a --manifest is
    # required; each ablation run on all GPUs with `accelerate launch`
    "full": Profile(
        "full",
        PhantomSpec(n=64, seed=0, size=128),  # not used: --manifest is required
        {
            "seed": 0,
            "n_overlay": 8,
            "segmenter_epochs": 40,
            "segmenter_image_size": 256,
            "n_examples": 4,
            "n_bootstrap": 1000,
            "epochs": None,
            "seeds": [0, 1, 2],
            "parallel": 1,
        },
        needs_manifest=True,
    ),
}


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


def prepare_phantom(spec: PhantomSpec, cache: Path, workers: int = 1) -> Path:
    """The phantom manifest for ``spec``, generated once and reused from ``cache``.

    The cache folder is named by every argument and the generator version; it is reused
    only when its ``phantom.json`` records the same arguments.
    """
    from cxrlib.data.phantom import PHANTOM_VERSION, write_phantom

    folder = Path(cache) / spec.name
    meta_path = folder / "phantom.json"
    if meta_path.is_file() and (folder / "manifest.csv").is_file():
        meta = json.loads(meta_path.read_text())
        same = (meta.get("n"), meta.get("seed"), meta.get("size"), meta.get("phantom_version"))
        if same == (spec.n, spec.seed, spec.size, PHANTOM_VERSION):
            return folder / "manifest.csv"
    write_phantom(folder, n=spec.n, seed=spec.seed, size=spec.size, workers=workers)
    return folder / "manifest.csv"


def run_workbook(
    profile: str,
    out: str | os.PathLike | None = None,
    notebooks: str | os.PathLike | None = None,
    cache: str | os.PathLike | None = None,
    manifest: str | os.PathLike | None = None,
    wingspan: str | os.PathLike | None = None,
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

    Returns
    -------
    RunResult

    Raises
    ------
    CxrError
        Unknown profile, a non-empty run folder, or a notebook that failed (its name,
        the failing cell and the error, and where the executed copy is).
    """
    import papermill as pm

    if profile not in PROFILES:
        raise CxrError(f"unknown profile {profile!r} (choose from {', '.join(sorted(PROFILES))})")
    prof = PROFILES[profile]
    if manifest is None and prof.needs_manifest:
        raise CxrError(f"profile {profile} runs on your data: give --manifest FILE")
    nb_dir = Path(notebooks) if notebooks is not None else REPO_ROOT / "notebooks"
    paths = notebook_paths(nb_dir)
    run_dir = Path(out) if out is not None else default_run_dir(profile)
    if run_dir.exists() and any(run_dir.iterdir()):
        raise CxrError(
            f"run folder {run_dir} exists and is not empty: a run never overwrites another"
        )
    run_dir = run_dir.resolve()
    (run_dir / "notebooks").mkdir(parents=True, exist_ok=True)
    figures_dir = run_dir / "figures"
    cache_dir = Path(cache or os.environ.get("CXR_CACHE") or REPO_ROOT / "cache")

    record: dict = {
        "profile": asdict(prof),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "provenance": provenance(),
        "notebooks": [],
        "status": "running",
    }
    write_json_atomic(run_dir / "run.json", record, default=str)
    if manifest is None:
        manifest_path = prepare_phantom(prof.phantom, cache_dir, workers=prof.workers).resolve()
    else:
        manifest_path = Path(manifest).resolve()
        if not manifest_path.is_file():
            raise CxrError(f"manifest {manifest_path} does not exist")
    offered = {
        **prof.parameters,
        "profile": prof.name,
        "manifest": str(manifest_path),
        "figures_dir": str(figures_dir),
        "run_dir": str(run_dir),
        "wingspan": str(Path(wingspan).resolve()) if wingspan else str(SHARED_WINGSPAN),
        "segmenter_cache": str((cache_dir / "segmenters").resolve()),
        "cache_dir": str(cache_dir.resolve()),
    }
    record["manifest"] = str(manifest_path)

    for src in tqdm(paths, desc=f"workbook {profile}", unit="notebook"):
        declared = {p for p in pm.inspect_notebook(str(src))}
        params = {k: v for k, v in offered.items() if k in declared}
        dst = run_dir / "notebooks" / src.name
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

    record["status"] = "complete"
    record["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    write_json_atomic(run_dir / "run.json", record, default=str)
    if prof.publish_figures and figures_dir.is_dir():
        publish_figures(run_dir, figures_dir, REPO_ROOT / "figures", record)
    return RunResult(run_dir=run_dir, notebooks=record["notebooks"], manifest=manifest_path)


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
