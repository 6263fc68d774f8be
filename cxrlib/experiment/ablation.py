"""The ablation: anatomical attention none / soft / strict x seeds, same data and budget.

``run_ablation(config, out, modes, seeds)`` (notebook 05):

1. prepares what every run shares, once: the manifest, the pretrained frozen encoder
   (:mod:`cxrlib.training.pretrain`), its cached patch features and the priors of every image
   (so the runs only read the caches);
2. trains every (mode, seed) with :func:`cxrlib.training.train.train` in its own process
   (``cxr train``; ``parallel`` at a time, each on ``threads`` threads), into
   ``out/train/<mode>-seed<seed>/``; a finished run (``summary.json``) is reused, an
   interrupted one resumed;
3. generates Findings for the evaluation split with each run and with the two
   baselines, and evaluates them all the same way (:mod:`cxrlib.evaluate`);
4. writes ``out/ablation/``: ``ablation.csv`` (one row per system, seed and metric),
   ``ablation_summary.csv`` (per system and metric, :func:`summarise`: the per-seed
   values, their mean and between-seed sd, and a 95% interval that counts the variance
   between training runs as well as the test set's, named in its ``interval`` column),
   ``paired_tests.csv`` (soft and strict against none, paired by seed and by study, on
   each tested metric, with the SD of the paired differences beside the SD independent
   runs would give), the summary as ``ablation.md`` and ``ablation.tex`` (with the
   interval method under the table), and ``ablation.json`` (settings and the seconds
   of each stage).

The intervals (``docs/evaluation.md``, "Intervals of the ablation"): a mode's value is
the mean over its seeds of the metric on all test studies. Its uncertainty has two
parts: which runs training happened to give (the between-seed variance over the number
of seeds) and which studies the test set happened to hold (the variance of the seed
mean over study resamples, every run rescored on each resample, the runs held fixed).
The interval is ``mean +- t(df) x sqrt(both)`` with Welch-Satterthwaite degrees of
freedom, clipped to the metric's range ([0, 1] for rates; clipping loses no coverage).
A difference between modes uses the per-seed differences (seed ``s`` gives every mode
the same initialisation and batch order) and the paired study resamples. A bootstrap
over studies alone, with the trained models held fixed (the method before issue 25),
measures only the test set's noise: in ``tests/evaluate/test_stats.py``'s simulation it
covers the true difference far less often than 95%, while this interval covers it in
93-97% of 600 simulated ablations. Deterministic baselines (no training variance) keep
the percentile bootstrap over studies.

Every run differs only in ``model.mode`` and ``seed`` (initialisation of the bridge and
decoder, batch order, dropout); the encoder, its features, the data, the priors and the
budget (epochs, steps, learning rate) are the same.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlib.base.errors import CxrError
from cxrlib.base.io import write_atomic
from cxrlib.base.provenance import provenance
from cxrlib.base.stats import RunSamples, resample_runs
from cxrlib.base.vocabulary import MODES
from cxrlib.data.manifest import CHEXPERT_LABELS, Manifest, read_manifest, text_cell
from cxrlib.evaluate.attention_grounding import ablation_attention
from cxrlib.evaluate.baselines import baseline_generations
from cxrlib.evaluate.evaluate import HEADLINE_KEYS, evaluate_generations
from cxrlib.metrics.clinical import ClinicalData
from cxrlib.metrics.grounding import GroundingData, has_ground_truth_sides
from cxrlib.metrics.labeler import LABELER_NAME, label_reports
from cxrlib.metrics.lexical import LexicalCorpus
from cxrlib.training.config import PROFILES, RunConfig
from cxrlib.training.generate import generate_split, reference_nll_split
from cxrlib.training.inputs import (
    resolve_manifest,
    resolve_model_config,
    split_frame,
    warm_caches,
)
from cxrlib.training.model_card import write_card
from cxrlib.training.runs import (
    ablation_folder,
    ablation_metrics,
    ablation_record,
    evaluation_folder,
    generations_path,
    run_checkpoint,
    run_config_path,
    run_name,
    training_run,
)

log = logging.getLogger(__name__)

BASELINES = ("retrieval", "most_frequent")
NLL_KEY = "likelihood.nll"
"""The teacher-forced negative log-likelihood of the reference Findings per token, mean
over the test images (:func:`cxrlib.training.generate.reference_nll`; lower is better)."""
ABLATION_KEYS = (*HEADLINE_KEYS, NLL_KEY)
"""Metrics the ablation tables report (any key of ``metrics.json``, and the NLL)."""
TESTED_KEYS: tuple[str, ...] = (
    "clinical.uncertain_as_negative.micro_14",
    "clinical.uncertain_as_negative.macro_14",
    "lexical.cider",
    "grounding.uncertain_as_negative.laterality_accuracy",
    NLL_KEY,
)
"""Metrics of the paired tests against ``none``."""


def interval_method(n_bootstrap: int) -> str:
    """How the summary's intervals were drawn, as every table names it."""
    if n_bootstrap <= 0:
        return "no intervals (no bootstrap resamples)"
    return (
        "95% t interval over seeds and studies (between-seed variance / seeds + variance "
        f"of the seed mean over {n_bootstrap} study resamples; Welch-Satterthwaite df; "
        "clipped to the metric's range)"
    )


@dataclass
class AblationResult:
    """Where the ablation wrote its tables, and the tables."""

    folder: Path
    results: pd.DataFrame  # ablation.csv
    summary: pd.DataFrame  # ablation_summary.csv
    tests: pd.DataFrame  # paired_tests.csv
    seconds: float


def prepare_shared(config: RunConfig, split: str, progress: bool = True, runs: int = 1) -> Path:
    """Build once what all runs read: manifest, pretrained encoder, features, priors.

    Each run then finds them in the caches (the same keys), so parallel runs only read
    and every run uses exactly the same encoder. ``runs``: how many runs will read the
    features (what ``train.feature_cache="auto"`` weighs). Returns the manifest.
    """
    manifest = resolve_manifest(config)
    model_config = resolve_model_config(config, manifest, progress)
    frames = [split_frame(manifest, s) for s in dict.fromkeys(("train", "validate", split))]
    frame = frames[0].subset(pd.concat([f.frame for f in frames]))
    warm_caches(config, model_config, frame, progress, runs)
    return manifest


def _train_command(
    config_path: Path, run_dir: Path, resume: bool, launcher: str = "", profile: str = "smoke"
) -> list[str]:
    # the --config file holds the whole tree; it is merged over the run's own profile, so
    # no field of another profile's (an encoder config dict, say) can leak into it
    start = shlex.split(launcher) if launcher else [sys.executable]
    cmd = [*start, "-m", "cxrlib.cli", "train", "--profile", profile]
    cmd += ["--config", str(config_path), "--out", str(run_dir), "--no-progress"]
    return cmd + (["--resume"] if resume else [])


def _known_profile(config: RunConfig) -> str:
    return config.profile if config.profile in PROFILES else "smoke"


def train_runs(
    config: RunConfig,
    out: Path,
    modes: tuple[str, ...],
    seeds: tuple[int, ...],
    parallel: int = 2,
    threads: int = 1,
    progress: bool = True,
    launcher: str = "",
) -> dict[tuple[str, int], Path]:
    """Train every (mode, seed) run in subprocesses, ``parallel`` at a time.

    ``launcher`` replaces the Python interpreter in front of ``-m cxrlib.cli train``,
    e.g. ``"accelerate launch --num_processes 4"`` to train each run on 4 GPUs.
    """
    from tqdm.auto import tqdm

    configs = ablation_folder(out) / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    todo, runs = [], {}
    for seed in seeds:
        for mode in modes:
            run_dir = training_run(out, mode, seed)
            runs[(mode, seed)] = run_dir
            if (run_dir / "summary.json").is_file():
                continue
            tree = config.replace(seed=seed, model=config.model.replace(mode=mode)).to_dict()
            path = configs / f"{run_name(mode, seed)}.json"
            path.write_text(json.dumps(tree, indent=2))
            todo.append((mode, seed, path, run_dir))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    running: list[tuple[subprocess.Popen, str, Path]] = []
    bar = tqdm(total=len(todo), desc="ablation runs", unit="run", disable=not progress)
    pending = list(todo)
    failures = []
    while pending or running:
        while pending and len(running) < parallel:
            mode, seed, path, run_dir = pending.pop(0)
            resume = run_config_path(run_dir).is_file()
            log_path = ablation_folder(out) / f"{run_name(mode, seed)}.log"
            with open(log_path, "w") as log_file:
                proc = subprocess.Popen(
                    _train_command(path, run_dir, resume, launcher, _known_profile(config)),
                    env=env,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                )
            running.append((proc, run_name(mode, seed), log_path))
        time.sleep(0.5)
        for item in list(running):
            proc, name, log_path = item
            if proc.poll() is None:
                continue
            running.remove(item)
            bar.update(1)
            if proc.returncode != 0:
                tail = log_path.read_text().strip().splitlines()[-1:] or ["(no output)"]
                failures.append(f"{name}: exit {proc.returncode}: {tail[0]} (log: {log_path})")
    bar.close()
    if failures:
        raise CxrError("ablation runs failed: " + "; ".join(failures))
    return runs


def run_ablation(
    config: RunConfig,
    out: str | os.PathLike,
    modes: tuple[str, ...] = MODES,
    seeds: tuple[int, ...] = (0, 1, 2),
    split: str = "test",
    n_bootstrap: int = 1000,
    parallel: int = 2,
    threads: int = 1,
    progress: bool = True,
    launcher: str = "",
    attention_studies: int | None = 100,
) -> AblationResult:
    """Train, generate and evaluate every (mode, seed); write the tables (module doc).

    ``parallel`` runs train at once with ``threads`` threads each (CPU); on GPUs use
    ``parallel=1`` and a ``launcher`` such as ``"accelerate launch --num_processes 4"``.
    With lung masks in the manifest, each run's attention grounding too, on at most
    ``attention_studies`` studies per run (None: all; 0: skipped):
    ``grounding_attention.csv`` (:func:`cxrlib.evaluate.attention_grounding.ablation_attention`).
    """
    clock = _Stages()
    out = Path(out)
    folder = ablation_folder(out)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = prepare_shared(config, split, progress, len(modes) * len(seeds))
    clock.lap("shared_inputs")
    runs = train_runs(config, out, modes, seeds, parallel, threads, progress, launcher)
    clock.lap("training")
    ref = read_manifest(manifest, check_files=False)
    ref_labels = "manifest" if has_ground_truth_sides(ref.frame) else "labeler"
    generations = generate_all(runs, out, manifest, split, progress)
    clock.lap("generation")
    results, per_obs = evaluate_all(generations, ref, ref_labels, split, n_bootstrap, out)
    per_obs.to_csv(folder / "per_observation.csv", index=False)
    refresh_model_cards(runs)
    samples = score_runs(generations, ref.frame, ref_labels, n_bootstrap, progress=progress)
    summary = summarise(results, generations, ref.frame, ref_labels, n_bootstrap, samples=samples)
    n_studies = int(results["n_studies"].iloc[0]) if len(results) else 0
    tests_df = pd.DataFrame(paired_tests(samples, modes, seeds, n_bootstrap, n_studies))
    clock.lap("evaluation")
    attention = None
    if attention_studies != 0:
        named = {run_name(m, s): (m, s, run_dir) for (m, s), run_dir in runs.items()}
        attention = ablation_attention(
            named,
            {run_name(m, s): generations[(m, s)] for (m, s) in runs},
            ref,
            folder,
            max_studies=attention_studies,
            n_bootstrap=n_bootstrap,
        )
    clock.lap("attention_grounding")
    note = write_tables(folder, results, summary, tests_df, n_bootstrap)
    clock.lap("tables")
    seconds = clock.total()
    record = {
        "modes": list(modes),
        "seeds": list(seeds),
        "split": split,
        "reference_labels": ref_labels,
        "n_bootstrap": n_bootstrap,
        "interval": note,
        "manifest": str(manifest),
        "config": config.to_dict(),
        "seconds": seconds,
        "stages": clock.stages,
        "attention_grounding": attention,
        "provenance": provenance(),
    }
    write_atomic(ablation_record(out), lambda tmp: tmp.write_text(json.dumps(record, indent=2)))
    return AblationResult(folder, results, summary, tests_df, seconds)


class _Stages:
    """Seconds of each stage of the ablation (``ablation.json``'s ``stages``)."""

    def __init__(self):
        self.started = self.mark = time.perf_counter()
        self.stages: dict[str, float] = {}

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.stages[stage], self.mark = round(now - self.mark, 1), now

    def total(self) -> float:
        return round(time.perf_counter() - self.started, 1)


def generate_all(
    runs: dict[tuple[str, int], Path],
    out: Path,
    manifest: Path,
    split: str,
    progress: bool = True,
) -> dict[tuple[str, int], pd.DataFrame]:
    """Each run's generated Findings of ``split`` (read back when the ablation wrote them
    before: :func:`~cxrlib.training.runs.generations_path`), then the baselines', seed -1
    (deterministic: one "seed"), fitted on the first run's training split."""
    generations: dict[tuple[str, int], pd.DataFrame] = {}
    for (mode, seed), run_dir in runs.items():
        path = generations_path(out, run_name(mode, seed))
        if path.is_file():
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
            if "nll" not in frame.columns:  # written before the reference NLL existed
                scores = reference_nll_split(run_dir, manifest, split, progress=progress)
                frame = frame.merge(scores.astype({"image_id": str}), on="image_id", how="left")
                write_atomic(path, lambda tmp, frame=frame: frame.to_csv(tmp, index=False))
            generations[(mode, seed)] = frame
            continue
        result = generate_split(run_dir, manifest, split, out=path, progress=progress)
        generations[(mode, seed)] = result.frame
    first_run = next(iter(runs.values()))
    for name, frame in baseline_generations(first_run, manifest, split, progress=progress).items():
        generations[(name, -1)] = frame
    return generations


def evaluate_all(
    generations: dict[tuple[str, int], pd.DataFrame],
    ref: Manifest,
    ref_labels: str,
    split: str,
    n_bootstrap: int,
    out: Path,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Evaluate every system and seed (each written to its
    :func:`~cxrlib.training.runs.evaluation_folder`); returns the long metric table
    (``ablation.csv``) and the per-observation F1 of every system and seed."""
    rows, per_obs = [], []
    for (system, seed), frame in generations.items():
        ev = evaluate_generations(
            frame,
            ref,
            ref_labels=ref_labels,
            split=split,
            n_bootstrap=n_bootstrap,
            seed=0,
            progress=False,
            out=evaluation_folder(out, run_name(system, seed) if seed >= 0 else system),
        )
        for key, r in ev.metrics.items():
            rows.append(
                {
                    "system": system,
                    "seed": seed if seed >= 0 else "",
                    "metric": key,
                    "value": r.value,
                    "ci_low": r.ci_low,
                    "ci_high": r.ci_high,
                    "n_studies": ev.counts["n_studies"],
                }
            )
        if "nll" in frame.columns:
            rows.append(
                {
                    "system": system,
                    "seed": seed if seed >= 0 else "",
                    "metric": NLL_KEY,
                    "value": float(pd.to_numeric(frame["nll"], errors="coerce").mean()),
                    "ci_low": math.nan,
                    "ci_high": math.nan,
                    "n_studies": ev.counts["n_studies"],
                }
            )
        per_obs.append(ev.per_observation.assign(system=system, seed=seed))
    return pd.DataFrame(rows), pd.concat(per_obs)


def write_tables(
    folder: Path,
    results: pd.DataFrame,
    summary: pd.DataFrame,
    tests: pd.DataFrame,
    n_bootstrap: int,
) -> str:
    """``ablation.csv``, ``ablation_summary.csv``, ``paired_tests.csv`` and the summary
    table as ``ablation.md`` / ``ablation.tex``, each written atomically; returns the
    tables' interval note."""
    for frame, name in (
        (results, "ablation.csv"),
        (summary, "ablation_summary.csv"),
        (tests, "paired_tests.csv"),
    ):
        write_atomic(folder / name, lambda tmp, frame=frame: frame.to_csv(tmp, index=False))
    table, note = summary_table(summary), interval_method(n_bootstrap)
    write_atomic(folder / "ablation.md", lambda tmp: tmp.write_text(markdown_table(table, note)))
    write_atomic(folder / "ablation.tex", lambda tmp: tmp.write_text(latex_table(table, note)))
    return note


def metric_bounds(key: str) -> tuple[float, float]:
    """The range of a metric of ``ablation.csv``: CIDEr in [0, 10], the NLL in [0, inf),
    every other metric (F1, BLEU, ROUGE, rates, accuracies) in [0, 1]; intervals are
    clipped to it."""
    if key == NLL_KEY:
        return (0.0, math.inf)
    return (0.0, 10.0) if key == "lexical.cider" else (0.0, 1.0)


def _difference_bounds(key: str) -> tuple[float, float]:
    low, high = metric_bounds(key)
    return low - high, high - low


def score_runs(
    generations: dict[tuple[str, int], pd.DataFrame],
    ref: pd.DataFrame,
    ref_labels: str,
    n_bootstrap: int,
    seed: int = 0,
    progress: bool = False,
) -> RunSamples:
    """Every run of every system scored on all test studies and on the same
    ``n_bootstrap`` study resamples (:func:`cxrlib.base.stats.resample_runs`).

    A system's runs are ordered by seed, so run ``i`` of every mode has the same seed
    (paired by seed index). Every run must have generated for the same images.
    """
    systems: dict[str, list[tuple[int, pd.DataFrame]]] = {}
    for (system, run_seed), frame in generations.items():
        systems.setdefault(system, []).append((run_seed, frame))
    first = next(iter(generations.values()))
    ids = first["image_id"].astype(str).tolist()
    truth, groups, refs, truth_labels = _reference(ref, ids, ref_labels)
    stack = ExitStack()
    with stack:
        scorers = {
            system: [
                _run_scorer(f, ids, truth, refs, truth_labels, ref_labels, system, stack)
                for _, f in sorted(runs, key=lambda r: r[0])
            ]
            for system, runs in systems.items()
        }
        return resample_runs(
            scorers,
            len(ids),
            n_resamples=max(n_bootstrap, 1),
            seed=seed,
            groups=groups,
            progress=progress,
            desc="bootstrap over studies, every run",
        )


def paired_tests(
    samples: RunSamples,
    modes: tuple[str, ...],
    seeds: tuple[int, ...],
    n_bootstrap: int,
    n_studies: int,
) -> list[dict]:
    """Each mode against ``none`` on :data:`TESTED_KEYS`, paired by seed (run ``i`` of
    both modes share seed ``seeds[i]``) and by study: the mean of the per-seed
    differences with the :func:`interval_method` interval and its t-test p-value.

    Each row also holds ``sd_paired`` (SD of the per-seed differences) and
    ``sd_independent`` (``sqrt(sd_mode^2 + sd_none^2)``): what pairing by seed saves.
    """
    if "none" not in modes or n_bootstrap <= 0:
        return []
    tests = []
    for mode in [m for m in modes if m != "none"]:
        for key in TESTED_KEYS:
            if key not in samples.keys(mode):
                continue
            t = samples.difference(mode, "none", key, paired=True, bounds=_difference_bounds(key))
            tests.append(
                {
                    "comparison": f"{mode} - none",
                    "metric": key,
                    "delta": t.value,
                    "ci_low": t.ci_low,
                    "ci_high": t.ci_high,
                    "p_value": t.p_value,
                    "sd_paired": t.sd_runs,
                    "sd_independent": t.sd_independent,
                    "se_runs": t.se_runs,
                    "se_studies": t.se_studies,
                    "df": t.df,
                    "n_items": samples.n,
                    "n_studies": n_studies,
                    "seeds": t.n_runs,
                    "test": f"paired by seed and study: {interval_method(n_bootstrap)}",
                }
            )
    return tests


def _reference(
    ref: pd.DataFrame, ids: list[str], ref_labels: str
) -> tuple[pd.DataFrame, np.ndarray, list[str], pd.DataFrame]:
    """The manifest rows of ``ids`` (in order), their study ids, reference texts and
    reference labels (the manifest's or the labeler's, as ``ref_labels`` says)."""
    truth = ref.set_index("image_id").loc[ids].reset_index()
    groups = truth["study_id"].map(text_cell).to_numpy()
    refs = truth["findings"].map(text_cell).tolist()
    if ref_labels == "manifest":
        labels = truth[list(CHEXPERT_LABELS)].apply(pd.to_numeric, errors="coerce")
    else:
        labels = label_reports(refs)
    return truth, groups, refs, labels.reset_index(drop=True)


def summarise(
    results: pd.DataFrame,
    generations: dict[tuple[str, int], pd.DataFrame],
    ref: pd.DataFrame,
    ref_labels: str,
    n_bootstrap: int,
    seed: int = 0,
    progress: bool = False,
    samples: RunSamples | None = None,
) -> pd.DataFrame:
    """``ablation_summary.csv``: every system and metric over its seeds.

    Parameters
    ----------
    results : DataFrame
        ``ablation.csv``: ``system, seed, metric, value, ..., n_studies`` (one row per
        system, seed and metric; a baseline's seed is empty).
    generations : dict
        ``(system, seed) -> image_id, generated`` frame (a baseline's seed is -1, and a
        baseline is deterministic); every run generated for the same images.
    ref, ref_labels
        The manifest of the references and where their labels come from (``manifest``
        or ``labeler``), as in :func:`cxrlib.evaluate.evaluate.evaluate_generations`.
    n_bootstrap, seed : int
        Study resamples (0: no intervals) and generator seed: every system and run is
        resampled on the same studies.
    samples : RunSamples, optional
        :func:`score_runs` of these generations, when the caller has them already.

    Returns
    -------
    DataFrame
        ``system, metric, mean, sd, ci_low, ci_high, n_seeds, n_studies, seed_values,
        se_runs, se_studies, df, interval``: ``seed_values`` the per-seed values (JSON
        list, seeds in order), ``mean`` and ``sd`` (ddof 1, the between-seed SD; NaN for
        one seed) over them; ``ci_low``, ``ci_high`` the interval ``interval`` names:
        for a trained system :func:`interval_method` (between-seed and test-set
        variance, ``se_runs`` and ``se_studies``, ``df`` degrees of freedom), for a
        deterministic baseline the percentile bootstrap over studies; a trained system
        with one seed has no interval (its training variance is unknown), nor has a
        metric not rescored here (RadGraph). A seed where a metric is undefined (NaN,
        e.g. laterality accuracy without sided findings) is left out of its mean; a
        metric undefined for every seed has no row.
    """
    method = interval_method(n_bootstrap)
    if samples is None and n_bootstrap > 0:
        samples = score_runs(generations, ref, ref_labels, n_bootstrap, seed, progress)
    elif samples is None:  # still check that every run generated for the same images
        score_runs(generations, ref, ref_labels, 0, seed)
    deterministic = {system for system, s in generations if s < 0}
    rows = []
    for system in dict.fromkeys(system for system, _ in generations):
        part = results[results["system"] == system]
        for metric, values in part.groupby("metric", sort=False):
            finite = values["value"].dropna()
            if finite.empty:
                continue
            named, r = method, None
            if n_bootstrap > 0 and metric not in samples.keys(system):
                named = "none: not rescored"
            elif n_bootstrap > 0 and system in deterministic:
                r = samples.percentile(system, metric)
                named = f"95% percentile bootstrap over studies, {n_bootstrap} resamples"
            elif n_bootstrap > 0:
                r = samples.mean(system, metric, bounds=metric_bounds(metric))
                if r.n_runs < 2:
                    named = "none: one run (its training variance is unknown)"
            rows.append(
                {
                    "system": system,
                    "metric": metric,
                    "mean": float(finite.mean()),
                    "sd": float(finite.std(ddof=1)) if len(finite) > 1 else math.nan,
                    "ci_low": math.nan if r is None else r.ci_low,
                    "ci_high": math.nan if r is None else r.ci_high,
                    "n_seeds": len(finite),
                    "n_studies": int(values["n_studies"].iloc[0]),
                    "seed_values": json.dumps(
                        [None if math.isnan(v) else v for v in values["value"]]
                    ),
                    "se_runs": getattr(r, "se_runs", math.nan),
                    "se_studies": getattr(r, "se_studies", math.nan),
                    "df": getattr(r, "df", math.nan),
                    "interval": named,
                }
            )
    return pd.DataFrame(rows)


def _run_scorer(
    frame: pd.DataFrame,
    ids: list[str],
    truth: pd.DataFrame,
    refs: list[str],
    truth_labels: pd.DataFrame,
    ref_labels: str,
    system: str,
    stack: ExitStack,
) -> Callable[[np.ndarray], dict[str, float]]:
    """``metric(idx) -> {key: value}`` of one run's Findings, items in the order of
    ``ids`` (``truth``, ``refs`` and ``truth_labels`` from :func:`_reference`): the
    clinical, lexical and (with drawn ground truth) grounding metrics, scored as
    :func:`cxrlib.evaluate.evaluate.evaluate_generations` scores them."""
    by_id = frame.assign(image_id=frame["image_id"].astype(str)).set_index("image_id")
    if sorted(by_id.index) != sorted(ids):
        raise CxrError(f"the runs of {system} generated for different images")
    generated = by_id.loc[ids, "generated"].map(text_cell).tolist()
    labels = label_reports(generated)
    source = "manifest" if ref_labels == "manifest" else LABELER_NAME
    clinical = ClinicalData.build(
        labels, truth_labels, labeler=LABELER_NAME, reference_source=source
    )
    grounding = None
    if ref_labels == "manifest" and has_ground_truth_sides(truth):
        grounding = GroundingData.build(labels, truth)
    lexical = stack.enter_context(LexicalCorpus.build(generated, refs))
    nll = None
    if "nll" in by_id.columns:
        nll = pd.to_numeric(by_id.loc[ids, "nll"], errors="coerce").to_numpy(dtype=float)

    def metric(idx: np.ndarray) -> dict[str, float]:
        values = dict(clinical.scores(idx))
        values.update({f"lexical.{k}": v for k, v in lexical.scores(idx).items()})
        if grounding is not None:
            values.update(grounding.scores(idx))
        if nll is not None:
            drawn = nll[idx]
            drawn = drawn[np.isfinite(drawn)]
            values[NLL_KEY] = float(drawn.mean()) if drawn.size else math.nan
        return values

    return metric


SHORT_NAMES = {
    "clinical.uncertain_as_negative.micro_14": "micro-F1 14 (unc. neg.)",
    "clinical.uncertain_as_negative.macro_14": "macro-F1 14 (unc. neg.)",
    "clinical.uncertain_as_positive.micro_14": "micro-F1 14 (unc. pos.)",
    "clinical.uncertain_as_negative.micro_5": "micro-F1 5 (unc. neg.)",
    "lexical.bleu_4": "BLEU-4",
    "lexical.rouge_l": "ROUGE-L",
    "lexical.cider": "CIDEr",
    "grounding.uncertain_as_negative.hallucination_rate": "hallucination rate",
    "grounding.uncertain_as_negative.omission_rate": "omission rate",
    "grounding.uncertain_as_negative.laterality_accuracy": "laterality accuracy",
    NLL_KEY: "NLL of the reference (per token)",
}


def summary_table(summary: pd.DataFrame, keys: tuple[str, ...] = ABLATION_KEYS) -> pd.DataFrame:
    """Systems x metrics of ``mean [ci_low, ci_high]`` (the mean over seeds and the
    summary's interval; the mean alone where there is no interval)."""

    def cell(r) -> str:
        if math.isnan(r["ci_low"]) or math.isnan(r["ci_high"]):
            return f"{r['mean']:.3f}"
        return f"{r['mean']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"

    part = summary[summary["metric"].isin(keys)]
    cells = part.assign(cell=part.apply(cell, axis=1))
    wide = cells.pivot(index="system", columns="metric", values="cell")
    order = [s for s in (*MODES, *BASELINES) if s in wide.index]
    metrics = [k for k in keys if k in wide.columns]
    wide = wide.loc[order, metrics].fillna("n/a")
    seeds = part.groupby("system")["n_seeds"].max()
    wide.index = [f"{s} ({seeds[s]} seed{'s' if seeds[s] > 1 else ''})" for s in wide.index]
    wide.columns = [SHORT_NAMES.get(k, k) for k in wide.columns]
    return wide


def markdown_table(table: pd.DataFrame, note: str = "") -> str:
    """A Markdown table (first column: system), then ``note`` (e.g. the interval
    method, :func:`interval_method`) as a paragraph when given."""
    head = "| system | " + " | ".join(table.columns) + " |"
    rule = "| --- |" + " ---: |" * len(table.columns)
    body = [
        "| " + " | ".join([idx, *row]) + " |"
        for idx, row in zip(table.index, table.to_numpy().tolist(), strict=True)
    ]
    tail = ["", f"Intervals: {note}."] if note else []
    return "\n".join([head, rule, *body, *tail]) + "\n"


def latex_table(table: pd.DataFrame, note: str = "") -> str:
    """A booktabs LaTeX tabular of the same table, with ``note`` in its last row."""

    def esc(text: str) -> str:
        return str(text).replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")

    cols = "l" + "r" * len(table.columns)
    lines = [
        rf"\begin{{tabular}}{{{cols}}}",
        r"\toprule",
        "system & " + " & ".join(esc(c) for c in table.columns) + r" \\",
        r"\midrule",
    ]
    for idx, row in zip(table.index, table.to_numpy().tolist(), strict=True):
        lines.append(" & ".join(esc(v) for v in [idx, *row]) + r" \\")
    lines.append(r"\bottomrule")
    if note:
        width = len(table.columns) + 1
        lines.append(rf"\multicolumn{{{width}}}{{l}}{{\footnotesize Intervals: {esc(note)}.}} \\")
    lines += [r"\end{tabular}", ""]
    return "\n".join(lines)


def refresh_model_cards(runs: dict[tuple[str, int], Path]) -> None:
    """Rewrite the model card of each run's best (else last) checkpoint with the test
    metrics the ablation measured (``ablation/evaluation/<run>/metrics.json``)."""
    for run_dir in runs.values():
        checkpoint = run_checkpoint(run_dir)
        write_card(checkpoint, run_dir, checkpoint, ablation_metrics(run_dir))
