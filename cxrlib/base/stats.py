"""Uncertainty of evaluation metrics: bootstrap intervals, paired tests, seed aggregation.

Conventions:

- A **metric** here is a function of an index array ``idx`` (int, shape ``(m,)``, values in
  ``0..n-1``, repeats allowed): the metric of the corpus made of those items, in that
  multiplicity. So corpus-level metrics (micro-F1, BLEU, CIDEr) are recomputed on every
  resample, not averaged from per-item values. ``metric(np.arange(n))`` is the observed
  value.
- **Bootstrap** (:func:`bootstrap`): ``n_resamples`` (default 1,000) resamples of the
  items with replacement (or of groups of items, e.g. all images of one study, when
  ``groups`` is given), drawn with ``numpy.random.default_rng(seed)``; the interval is
  the percentile interval: the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2``
  quantiles (numpy's linear interpolation) of the resampled values. Resamples where the
  metric is NaN are left out and counted (``n_nan``).
- **Paired bootstrap test** (:func:`paired_bootstrap_test`): the same resamples for both
  systems; ``delta = metric_a - metric_b``; two-sided p-value of "no difference" from
  the resampled deltas shifted to the null, ``p = (1 + #{|d* - d| >= |d|}) / (B + 1)``
  (Berg-Kirkpatrick et al. 2012, with the add-one correction of Davison & Hinkley);
  identical systems give ``p = 1``.
- **Paired permutation test** (:func:`paired_permutation_test`): each resample swaps
  the two systems' outputs of every item with probability 1/2 (approximate randomisation,
  Noreen 1989); ``p = (1 + #{|d*| >= |d|}) / (B + 1)``, two-sided; identical systems
  give ``p = 1``.
- **Runs and studies** (:func:`resample_runs`, :class:`RunSamples`): a mean over ``k``
  training runs (seeds), or a difference of two such means paired by seed, with an
  interval that counts the variance between runs as well as the test set's:
  ``value +- t(df) sqrt(sd_runs^2 / k + se_studies^2)``, ``se_studies`` the SD of the
  seed mean over study resamples (every run rescored on each), Welch-Satterthwaite df,
  clipped to the metric's range; the ablation's intervals and tests (``docs/evaluation.md``,
  "Intervals of the ablation").
- **Mean of finite values** (:func:`bootstrap_mean_ci`): the mean of the finite entries
  of a 1-D array (per-image Dice, HD95) with :func:`bootstrap`'s interval.
- **Seeds** (:func:`aggregate_seeds`): mean, sample standard deviation (ddof 1) and the
  Student-t interval ``mean +- t_{(1+c)/2, k-1} sd / sqrt(k)`` over ``k`` runs (with
  3 runs of a rate it can leave [0, 1]).

Every result records ``n`` (items, or runs for seeds) and its interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

__all__ = [
    "BootstrapResult",
    "PairedTestResult",
    "SeedSummary",
    "aggregate_seeds",
    "bootstrap",
    "bootstrap_many",
    "bootstrap_mean_ci",
    "RunSamples",
    "RunStudyResult",
    "paired_bootstrap_test",
    "paired_permutation_test",
    "resample_indices",
    "resample_runs",
    "runs_and_studies_interval",
    "seeds_needed",
]

Metric = Callable[[np.ndarray], float]
MultiMetric = Callable[[np.ndarray], Mapping[str, float]]


@dataclass(frozen=True)
class BootstrapResult:
    """A metric value with its bootstrap percentile interval.

    Attributes
    ----------
    value : float
        The metric on all items.
    ci_low, ci_high : float
        Percentile interval bounds (NaN when no resample gave a number).
    n : int
        Items evaluated (rows; with ``groups``, ``n_groups`` tells the resampled units).
    n_resamples, seed : int
        Bootstrap resamples drawn and the generator seed.
    confidence : float
        Interval coverage (0.95).
    n_nan : int
        Resamples left out because the metric was NaN there.
    n_groups : int or None
        Resampled groups (studies) when the items were resampled by group.
    """

    value: float
    ci_low: float
    ci_high: float
    n: int
    n_resamples: int
    seed: int
    confidence: float = 0.95
    n_nan: int = 0
    n_groups: int | None = None
    method: str = "percentile"

    def to_dict(self) -> dict[str, object]:
        """JSON-ready fields."""
        return asdict(self)


@dataclass(frozen=True)
class PairedTestResult:
    """Difference of a metric between two systems on the same items, and its test.

    Attributes
    ----------
    value_a, value_b, delta : float
        The metric of each system on all items and ``value_a - value_b``.
    ci_low, ci_high : float
        Percentile bootstrap interval of ``delta`` (NaN for the permutation test).
    p_value : float
        Two-sided p-value of "no difference", in ``(0, 1]``.
    n, n_resamples, seed : int
        Items, resamples (or permutations) and the generator seed.
    test : str
        ``"paired_bootstrap"`` or ``"paired_permutation"``.
    """

    value_a: float
    value_b: float
    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    n: int
    n_resamples: int
    seed: int
    test: str
    confidence: float = 0.95

    def to_dict(self) -> dict[str, object]:
        """JSON-ready fields."""
        return asdict(self)


@dataclass(frozen=True)
class SeedSummary:
    """A metric over several runs (seeds): mean, sd and Student-t interval.

    ``sd``, ``ci_low`` and ``ci_high`` are NaN with fewer than two runs.
    """

    mean: float
    sd: float
    ci_low: float
    ci_high: float
    n: int
    values: tuple[float, ...]
    confidence: float = 0.95

    def to_dict(self) -> dict[str, object]:
        """JSON-ready fields."""
        return asdict(self)


def _check(n: int, n_resamples: int, confidence: float) -> None:
    if n < 1:
        raise ValueError(f"need at least one item, got n={n}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be positive, got {n_resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def resample_indices(
    n: int,
    n_resamples: int = 1000,
    seed: int = 0,
    groups: Sequence[object] | np.ndarray | None = None,
):
    """Yield ``n_resamples`` bootstrap index arrays over ``n`` items.

    Parameters
    ----------
    n : int
        Number of items.
    n_resamples : int
        Resamples to draw.
    seed : int
        Seed of ``numpy.random.default_rng``: the same arguments give the same arrays.
    groups : sequence of length n, optional
        Group label of every item (e.g. study id): groups are drawn with replacement
        and every item of a drawn group is included (cluster bootstrap).

    Yields
    ------
    numpy.ndarray of int64
        Item indices of one resample (repeats allowed).
    """
    rng = np.random.default_rng(seed)
    if groups is None:
        for _ in range(n_resamples):
            yield rng.integers(0, n, size=n)
        return
    codes, uniques = pd.factorize(pd.Series(list(groups), dtype=object))
    if len(codes) != n:
        raise ValueError(f"groups has {len(codes)} labels for {n} items")
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes, minlength=len(uniques))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    members = [order[s : s + c] for s, c in zip(starts, counts, strict=True)]
    for _ in range(n_resamples):
        drawn = rng.integers(0, len(uniques), size=len(uniques))
        yield np.concatenate([members[g] for g in drawn])


def _progress(iterable, total: int, progress: bool, desc: str):
    if not progress:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False)


def _interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    finite = samples[~np.isnan(samples)]
    if finite.size == 0:
        return math.nan, math.nan
    alpha = (1 - confidence) / 2
    low, high = np.quantile(finite, [alpha, 1 - alpha])
    return float(low), float(high)


def bootstrap_many(
    metric: MultiMetric,
    n: int,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    groups: Sequence[object] | np.ndarray | None = None,
    progress: bool = False,
    desc: str = "bootstrap",
) -> dict[str, BootstrapResult]:
    """Bootstrap intervals of several metrics computed on the same resamples.

    Parameters
    ----------
    metric : callable
        ``metric(idx) -> {name: value}`` for an index array ``idx`` (see the module
        docstring); every call must give the same names.
    n : int
        Number of items.
    n_resamples, seed, confidence, groups
        See :func:`resample_indices`; default 1,000 resamples, seed 0, 95 %.
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    dict of str to BootstrapResult
        One result per metric name.
    """
    _check(n, n_resamples, confidence)
    observed = {k: float(v) for k, v in metric(np.arange(n)).items()}
    samples = {k: np.empty(n_resamples) for k in observed}
    indices = resample_indices(n, n_resamples, seed, groups)
    for b, idx in enumerate(_progress(indices, n_resamples, progress, desc)):
        values = metric(idx)
        for k in observed:
            samples[k][b] = float(values[k])
    n_groups = None if groups is None else int(pd.Series(list(groups), dtype=object).nunique())
    out = {}
    for k, value in observed.items():
        low, high = _interval(samples[k], confidence)
        out[k] = BootstrapResult(
            value=value,
            ci_low=low,
            ci_high=high,
            n=n,
            n_resamples=n_resamples,
            seed=seed,
            confidence=confidence,
            n_nan=int(np.isnan(samples[k]).sum()),
            n_groups=n_groups,
        )
    return out


def bootstrap(
    metric: Metric,
    n: int,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    groups: Sequence[object] | np.ndarray | None = None,
    progress: bool = False,
) -> BootstrapResult:
    """Percentile bootstrap interval of one metric over ``n`` items.

    ``metric(idx) -> float`` is recomputed on every resample (so corpus-level metrics
    are handled exactly); see :func:`bootstrap_many` for the parameters.

    Examples
    --------
    >>> x = np.array([1.0, 0.0, 1.0, 1.0])
    >>> r = bootstrap(lambda idx: x[idx].mean(), len(x), n_resamples=200, seed=0)
    >>> r.value, r.n
    (0.75, 4)
    """
    result = bootstrap_many(
        lambda idx: {"metric": metric(idx)},
        n,
        n_resamples=n_resamples,
        seed=seed,
        confidence=confidence,
        groups=groups,
        progress=progress,
    )
    return result["metric"]


def bootstrap_mean_ci(
    values: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """Mean of the finite ``values`` (1-D; NaN and inf left out) and its interval.

    The interval is :func:`bootstrap`'s (``n_boot`` resamples of the finite values,
    ``seed``, coverage ``level``). Returns ``(mean, low, high)``; NaNs when no value is
    finite.

    Examples
    --------
    >>> bootstrap_mean_ci(np.array([1.0, 1.0, np.nan]))
    (1.0, 1.0, 1.0)
    """
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return math.nan, math.nan, math.nan
    r = bootstrap(
        lambda idx: float(x[idx].mean()), x.size, n_resamples=n_boot, seed=seed, confidence=level
    )
    return r.value, r.ci_low, r.ci_high


def paired_bootstrap_test(
    metric_a: Metric,
    metric_b: Metric,
    n: int,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    groups: Sequence[object] | np.ndarray | None = None,
    progress: bool = False,
) -> PairedTestResult:
    """Paired bootstrap test of ``metric_a - metric_b`` on the same ``n`` items.

    Both metrics take an index array into the same items (system A's and system B's
    outputs for item ``i`` are both at ``i``). See the module docstring for the p-value.
    """
    _check(n, n_resamples, confidence)
    full = np.arange(n)
    a, b = float(metric_a(full)), float(metric_b(full))
    delta = a - b
    deltas = np.empty(n_resamples)
    indices = resample_indices(n, n_resamples, seed, groups)
    for i, idx in enumerate(_progress(indices, n_resamples, progress, "paired bootstrap")):
        deltas[i] = float(metric_a(idx)) - float(metric_b(idx))
    finite = deltas[~np.isnan(deltas)]
    extreme = int(np.sum(np.abs(finite - delta) >= abs(delta) - 1e-12 * max(1.0, abs(delta))))
    low, high = _interval(deltas, confidence)
    return PairedTestResult(
        value_a=a,
        value_b=b,
        delta=delta,
        ci_low=low,
        ci_high=high,
        p_value=(1 + extreme) / (len(finite) + 1),
        n=n,
        n_resamples=n_resamples,
        seed=seed,
        test="paired_bootstrap",
        confidence=confidence,
    )


def _swap(a: object, b: object, mask: np.ndarray) -> tuple[object, object]:
    if isinstance(a, pd.DataFrame) and isinstance(b, pd.DataFrame):
        a2, b2 = a.reset_index(drop=True).copy(), b.reset_index(drop=True).copy()
        rows = np.flatnonzero(mask)
        a2.iloc[rows] = b.iloc[rows].to_numpy()
        b2.iloc[rows] = a.iloc[rows].to_numpy()
        return a2, b2
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        shape = (-1,) + (1,) * (a.ndim - 1)
        m = mask.reshape(shape)
        return np.where(m, b, a), np.where(m, a, b)
    a_list, b_list = list(a), list(b)  # type: ignore[call-overload]
    return (
        [y if s else x for x, y, s in zip(a_list, b_list, mask, strict=True)],
        [x if s else y for x, y, s in zip(a_list, b_list, mask, strict=True)],
    )


def paired_permutation_test(
    metric: Callable[[object], float],
    outputs_a: object,
    outputs_b: object,
    *,
    n_permutations: int = 1000,
    seed: int = 0,
    progress: bool = False,
) -> PairedTestResult:
    """Paired (approximate randomisation) permutation test between two systems.

    Parameters
    ----------
    metric : callable
        ``metric(outputs) -> float`` of one system's per-item outputs, in item order
        (the references are the metric's business, e.g. a closure).
    outputs_a, outputs_b : list, numpy.ndarray (items first) or pandas.DataFrame (rows)
        Per-item outputs of the two systems (texts, label rows, ...), same length.
    n_permutations, seed : int
        Random swaps drawn (``numpy.random.default_rng(seed)``).

    Returns
    -------
    PairedTestResult
        ``delta = metric(a) - metric(b)``; ``p_value`` two-sided (module docstring);
        no interval (NaN).
    """
    n = len(outputs_a)  # type: ignore[arg-type]
    if len(outputs_b) != n:  # type: ignore[arg-type]
        raise ValueError(f"{n} outputs for system A but {len(outputs_b)} for B")  # type: ignore[arg-type]
    _check(n, n_permutations, 0.95)
    a, b = float(metric(outputs_a)), float(metric(outputs_b))
    delta = a - b
    rng = np.random.default_rng(seed)
    extreme = 0
    steps = _progress(range(n_permutations), n_permutations, progress, "permutation test")
    for _ in steps:
        mask = rng.random(n) < 0.5
        sa, sb = _swap(outputs_a, outputs_b, mask)
        d = float(metric(sa)) - float(metric(sb))
        if abs(d) >= abs(delta) - 1e-12 * max(1.0, abs(delta)):
            extreme += 1
    return PairedTestResult(
        value_a=a,
        value_b=b,
        delta=delta,
        ci_low=math.nan,
        ci_high=math.nan,
        p_value=(1 + extreme) / (n_permutations + 1),
        n=n,
        n_resamples=n_permutations,
        seed=seed,
        test="paired_permutation",
    )


def aggregate_seeds(values: Sequence[float], confidence: float = 0.95) -> SeedSummary:
    """Mean, sample sd and Student-t interval of a metric over runs with different seeds.

    Examples
    --------
    >>> s = aggregate_seeds([0.30, 0.32, 0.34])
    >>> round(s.mean, 2), round(s.sd, 2), s.n
    (0.32, 0.02, 3)
    """
    from scipy import stats as sps

    arr = np.asarray(list(values), dtype=float)
    if arr.size == 0:
        raise ValueError("aggregate_seeds needs at least one value")
    mean = float(arr.mean())
    if arr.size < 2:
        return SeedSummary(mean, math.nan, math.nan, math.nan, 1, tuple(arr.tolist()), confidence)
    sd = float(arr.std(ddof=1))
    half = float(sps.t.ppf((1 + confidence) / 2, arr.size - 1)) * sd / math.sqrt(arr.size)
    return SeedSummary(
        mean, sd, mean - half, mean + half, int(arr.size), tuple(arr.tolist()), confidence
    )


# --- runs and studies: intervals that count training variance ------------------------

RUNS_AND_STUDIES = "runs and studies"
"""Name of :func:`runs_and_studies`' method, as the ablation's tables and docs name it."""


@dataclass(frozen=True)
class RunStudyResult:
    """A mean over training runs (or a difference of two such means) with an interval
    that counts both the variance between runs and the test set's.

    Attributes
    ----------
    value : float
        The mean over runs of the metric on all items (a difference: of the two means).
    ci_low, ci_high : float
        ``value +- t_{(1+c)/2, df} se``, clipped to the metric's bounds (clipping loses
        no coverage: the true value lies within them). NaN with fewer than two finite runs.
    p_value : float
        Two-sided p-value of "the true value is 0" (differences; NaN for a mean).
    sd_runs : float
        Sample SD (ddof 1) between runs: of the per-run values, or of the per-seed paired
        differences.
    sd_independent : float
        A difference only: ``sqrt(sd_a^2 + sd_b^2)``, the SD a difference of two
        independent runs would have; compare with ``sd_runs`` to see what pairing by
        seed saves. NaN for a mean.
    se_runs, se_studies, se : float
        Standard errors: between runs (``sd_runs / sqrt(k)``, Welch's for unpaired
        differences), of the test set (SD of the resampled means over runs, runs held
        fixed) and combined, ``sqrt(se_runs^2 + se_studies^2)``.
    df : float
        Welch-Satterthwaite degrees of freedom of ``se`` (the study part counted as
        known: ``se^4 / sum(se_part^4 / df_part)``).
    n_runs : int
        Runs per system (paired: pairs) with a finite value.
    n, n_resamples, seed : int
        Items per run, study resamples and the generator seed.
    """

    value: float
    ci_low: float
    ci_high: float
    p_value: float
    sd_runs: float
    sd_independent: float
    se_runs: float
    se_studies: float
    se: float
    df: float
    n_runs: int
    n: int
    n_resamples: int
    seed: int
    confidence: float = 0.95
    method: str = RUNS_AND_STUDIES

    def to_dict(self) -> dict[str, object]:
        """JSON-ready fields."""
        return asdict(self)


def runs_and_studies_interval(
    estimate: float,
    run_parts: Sequence[np.ndarray],
    resampled: np.ndarray,
    *,
    confidence: float = 0.95,
    bounds: tuple[float, float] = (-math.inf, math.inf),
    difference: bool = False,
) -> tuple[float, float, float, float, float, float, float]:
    """The interval arithmetic of :func:`runs_and_studies`.

    ``run_parts``: the values of each group of runs whose spread counts (one group for a
    mean or a paired difference, two for an unpaired difference); ``resampled``: the
    estimate on study resamples with the runs held fixed. Returns ``(ci_low, ci_high,
    p_value, se_runs, se_studies, se, df)``.
    """
    from scipy import stats as sps

    nan7 = (math.nan,) * 7
    terms = []
    for values in run_parts:
        v = np.asarray(values, dtype=float)
        v = v[np.isfinite(v)]
        if v.size < 2 or not math.isfinite(estimate):
            return nan7
        terms.append((float(v.var(ddof=1)) / v.size, v.size - 1))
    finite = resampled[np.isfinite(resampled)]
    var_studies = float(finite.var(ddof=1)) if finite.size > 1 else 0.0
    var_runs = sum(t for t, _ in terms)
    var = var_runs + var_studies
    se = math.sqrt(var)
    denominator = sum(t * t / d for t, d in terms)
    df = var * var / denominator if denominator > 0 else math.inf
    if se == 0:
        low = high = estimate
        p = (1.0 if estimate == 0 else 0.0) if difference else math.nan
    else:
        q = (
            float(sps.t.ppf((1 + confidence) / 2, df))
            if math.isfinite(df)
            else float(sps.norm.ppf((1 + confidence) / 2))
        )
        low, high = estimate - q * se, estimate + q * se
        p = float(2 * sps.t.sf(abs(estimate) / se, df)) if difference else math.nan
    low, high = max(low, bounds[0]), min(high, bounds[1])
    return low, high, p, math.sqrt(var_runs), math.sqrt(var_studies), se, df


class RunSamples:
    """Every run of every system scored on the same study resamples
    (:func:`resample_runs`); :meth:`mean` and :meth:`difference` give the
    :class:`RunStudyResult` of a system or of a comparison, for any metric key."""

    def __init__(self, observed, samples, n: int, n_resamples: int, seed: int, n_groups):
        self.observed = observed  # system -> key -> (k,) per-run values on all items
        self.samples = samples  # system -> key -> (B, k) per-run values on each resample
        self.n, self.n_resamples, self.seed = n, n_resamples, seed
        self.n_groups = n_groups

    def keys(self, system: str) -> list[str]:
        """The metric names of ``system``."""
        return list(self.observed[system])

    def mean(
        self,
        system: str,
        key: str,
        *,
        confidence: float = 0.95,
        bounds: tuple[float, float] = (-math.inf, math.inf),
    ) -> RunStudyResult:
        """The mean over ``system``'s runs of ``key`` (runs where it is NaN left out)."""
        runs = self.observed[system][key]
        ok = np.isfinite(runs)
        value = float(runs[ok].mean()) if ok.any() else math.nan
        resampled = _nanmean_rows(self.samples[system][key][:, ok])
        low, high, _, se_r, se_s, se, df = runs_and_studies_interval(
            value, [runs[ok]], resampled, confidence=confidence, bounds=bounds
        )
        return RunStudyResult(
            value,
            low,
            high,
            math.nan,
            _finite_sd(runs),
            math.nan,
            se_r,
            se_s,
            se,
            df,
            int(ok.sum()),
            self.n,
            self.n_resamples,
            self.seed,
            confidence,
        )

    def percentile(self, system: str, key: str, confidence: float = 0.95) -> BootstrapResult:
        """The percentile bootstrap interval over studies of a deterministic system (one
        run: nothing varies between runs)."""
        runs = self.observed[system][key]
        if runs.size != 1:
            raise ValueError(f"{system} has {runs.size} runs; a deterministic system has one")
        low, high = _interval(self.samples[system][key][:, 0], confidence)
        return BootstrapResult(
            float(runs[0]),
            low,
            high,
            self.n,
            self.n_resamples,
            self.seed,
            confidence,
            int(np.isnan(self.samples[system][key][:, 0]).sum()),
            self.n_groups,
        )

    def difference(
        self,
        a: str,
        b: str,
        key: str,
        *,
        paired: bool = True,
        confidence: float = 0.95,
        bounds: tuple[float, float] = (-math.inf, math.inf),
    ) -> RunStudyResult:
        """Mean of ``a`` minus mean of ``b`` on ``key``. ``paired``: run ``i`` of ``a``
        and run ``i`` of ``b`` share a seed (initialisation, batch order), so the
        per-seed differences are the runs' unit; else Welch's two groups."""
        ra, rb = self.observed[a][key], self.observed[b][key]
        sa, sb = self.samples[a][key], self.samples[b][key]
        if paired:
            if ra.size != rb.size:
                raise ValueError(f"paired runs: {a} has {ra.size} runs and {b} {rb.size}")
            ok = np.isfinite(ra) & np.isfinite(rb)
            d = ra[ok] - rb[ok]
            value = float(d.mean()) if d.size else math.nan
            resampled = _nanmean_rows(sa[:, ok] - sb[:, ok])
            parts = [d]
            sd = _finite_sd(d)
            k = int(ok.sum())
        else:
            oka, okb = np.isfinite(ra), np.isfinite(rb)
            value = float(ra[oka].mean() - rb[okb].mean()) if oka.any() and okb.any() else math.nan
            resampled = _nanmean_rows(sa[:, oka]) - _nanmean_rows(sb[:, okb])
            parts = [ra[oka], rb[okb]]
            sd = math.nan
            k = int(min(oka.sum(), okb.sum()))
        low, high, p, se_r, se_s, se, df = runs_and_studies_interval(
            value, parts, resampled, confidence=confidence, bounds=bounds, difference=True
        )
        return RunStudyResult(
            value,
            low,
            high,
            p,
            sd,
            math.hypot(_finite_sd(ra), _finite_sd(rb)),
            se_r,
            se_s,
            se,
            df,
            k,
            self.n,
            self.n_resamples,
            self.seed,
            confidence,
        )


def _finite_sd(values: np.ndarray) -> float:
    """Sample SD (ddof 1) of the finite entries; NaN with fewer than two."""
    v = values[np.isfinite(values)]
    return float(v.std(ddof=1)) if v.size > 1 else math.nan


def _nanmean_rows(values: np.ndarray) -> np.ndarray:
    """Row means of a (B, k) array over its finite entries (NaN where a row has none)."""
    ok = np.isfinite(values)
    counts = ok.sum(1)
    totals = np.where(ok, values, 0.0).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, totals / np.maximum(counts, 1), math.nan)


def resample_runs(
    systems: Mapping[str, Sequence[MultiMetric]],
    n: int,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    groups: Sequence[object] | np.ndarray | None = None,
    progress: bool = False,
    desc: str = "bootstrap over studies",
) -> RunSamples:
    """Score every run of every system on all items and on the same study resamples.

    Parameters
    ----------
    systems : mapping
        System name -> one ``metric(idx) -> {name: value}`` per run (seed), every run
        scored on the same ``n`` items in the same order (see the module docstring).
    n, n_resamples, seed, groups, progress
        As for :func:`bootstrap_many`; every system and run sees the same resamples.

    Returns
    -------
    RunSamples
        Ask it for a system's :meth:`~RunSamples.mean` or a comparison's
        :meth:`~RunSamples.difference`.
    """
    _check(n, max(n_resamples, 1), 0.95)
    if not systems or any(len(runs) == 0 for runs in systems.values()):
        raise ValueError("resample_runs needs at least one run per system")
    full = np.arange(n)
    per_run = {name: [run(full) for run in runs] for name, runs in systems.items()}
    observed = {
        name: {key: np.array([float(v[key]) for v in values]) for key in values[0]}
        for name, values in per_run.items()
    }
    samples = {
        name: {key: np.full((n_resamples, len(systems[name])), math.nan) for key in obs}
        for name, obs in observed.items()
    }
    indices = resample_indices(n, n_resamples, seed, groups)
    for b, idx in enumerate(_progress(indices, n_resamples, progress, desc)):
        for name, runs in systems.items():
            for r, run in enumerate(runs):
                for key, value in run(idx).items():
                    if key in samples[name]:
                        samples[name][key][b, r] = float(value)
    n_groups = None if groups is None else int(pd.Series(list(groups), dtype=object).nunique())
    return RunSamples(observed, samples, n, n_resamples, seed, n_groups)


def seeds_needed(
    sd_runs: float,
    se_studies: float,
    half_width: float,
    *,
    confidence: float = 0.95,
    max_seeds: int = 1000,
) -> int | None:
    """The fewest runs per system (or seed pairs) whose runs-and-studies interval is at
    most ``+-half_width``, at a between-run SD ``sd_runs`` and a test-set standard error
    ``se_studies`` (both as measured): the smallest ``k >= 2`` with
    ``t_{(1+c)/2, k-1} sqrt(sd_runs^2 / k + se_studies^2) <= half_width``. None when no
    ``k`` up to ``max_seeds`` reaches it (the test set alone is too noisy, or the SDs
    are not finite).

    Examples
    --------
    >>> seeds_needed(0.033 * math.sqrt(2), 0.0, 0.025)  # two modes' independent runs
    16
    """
    from scipy import stats as sps

    if not (math.isfinite(sd_runs) and math.isfinite(se_studies)) or half_width <= 0:
        return None
    for k in range(2, max_seeds + 1):
        q = float(sps.t.ppf((1 + confidence) / 2, k - 1))
        if q * math.sqrt(sd_runs**2 / k + se_studies**2) <= half_width:
            return k
    return None
