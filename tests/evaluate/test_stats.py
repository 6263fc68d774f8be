"""Bootstrap intervals, paired tests and seed aggregation: exact small cases."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from cxrlib.base.stats import (
    aggregate_seeds,
    bootstrap,
    bootstrap_many,
    paired_bootstrap_test,
    paired_permutation_test,
    resample_indices,
    resample_runs,
    seeds_needed,
)


def test_constant_metric_has_zero_width_interval():
    r = bootstrap(lambda idx: 0.5, 10, n_resamples=50, seed=3)
    assert (r.value, r.ci_low, r.ci_high) == (0.5, 0.5, 0.5)
    assert (r.n, r.n_resamples, r.seed, r.confidence, r.n_nan) == (10, 50, 3, 0.95, 0)
    assert r.method == "percentile"


def test_interval_is_the_percentiles_of_the_seeded_resamples():
    x = np.array([0.0, 1.0, 2.0, 3.0, 10.0])
    r = bootstrap(lambda idx: float(x[idx].mean()), len(x), n_resamples=7, seed=11)
    rng = np.random.default_rng(11)
    means = [x[rng.integers(0, 5, size=5)].mean() for _ in range(7)]
    low, high = np.quantile(means, [0.025, 0.975])
    assert r.value == pytest.approx(3.2)
    assert (r.ci_low, r.ci_high) == (pytest.approx(low), pytest.approx(high))


def test_seeded_reproducibility():
    x = np.random.default_rng(0).normal(size=40)

    def metric(idx):
        return float(x[idx].mean())

    a = bootstrap(metric, 40, n_resamples=200, seed=5)
    b = bootstrap(metric, 40, n_resamples=200, seed=5)
    c = bootstrap(metric, 40, n_resamples=200, seed=6)
    assert a == b
    assert (a.ci_low, a.ci_high) != (c.ci_low, c.ci_high)
    assert a.ci_low < a.value < a.ci_high


def test_corpus_metric_recomputed_per_resample():
    # micro-style ratio of sums: not the mean of per-item ratios
    num, den = np.array([1.0, 0.0, 3.0]), np.array([1.0, 4.0, 3.0])
    r = bootstrap(lambda idx: num[idx].sum() / den[idx].sum(), 3, n_resamples=20, seed=0)
    assert r.value == pytest.approx(0.5)
    rng = np.random.default_rng(0)
    first = rng.integers(0, 3, size=3)
    assert np.array_equal(next(resample_indices(3, 1, seed=0)), first)


def test_group_resampling_keeps_studies_whole():
    groups = ["s1", "s1", "s2", "s3", "s3", "s3"]
    for idx in resample_indices(6, 30, seed=1, groups=groups):
        drawn = pd.Series(idx).map(dict(enumerate(groups)))
        counts = pd.Series(idx).value_counts()
        for study in set(drawn):
            members = [i for i, g in enumerate(groups) if g == study]
            assert len({counts[m] for m in members}) == 1  # all images of a study, equally
    r = bootstrap_many(lambda idx: {"m": float(len(idx))}, 6, n_resamples=5, groups=groups)
    assert r["m"].n_groups == 3 and r["m"].n == 6


def test_nan_resamples_are_left_out_and_counted():
    x = np.array([0.0, 1.0])
    r = bootstrap(
        lambda idx: math.nan if (idx == 0).all() else float(x[idx].mean()),
        2,
        n_resamples=200,
        seed=0,
    )
    assert 0 < r.n_nan < 200
    assert not math.isnan(r.ci_low)


def test_identical_systems_give_p_one():
    x = np.random.default_rng(1).random(20)

    def metric(idx):
        return float(x[idx].mean())

    t = paired_bootstrap_test(metric, metric, 20, n_resamples=100, seed=0)
    assert (t.delta, t.p_value, t.n, t.test) == (0.0, 1.0, 20, "paired_bootstrap")
    texts = ["a", "b", "c"]
    p = paired_permutation_test(lambda out: float(len("".join(out))), texts, list(texts))
    assert (p.delta, p.p_value, p.test) == (0.0, 1.0, "paired_permutation")


def test_clearly_better_system_gives_small_p():
    truth = np.ones(30)
    good, bad = truth.copy(), np.zeros(30)
    t = paired_bootstrap_test(
        lambda idx: float((good[idx] == truth[idx]).mean()),
        lambda idx: float((bad[idx] == truth[idx]).mean()),
        30,
        n_resamples=200,
        seed=0,
    )
    assert t.delta == 1.0
    assert t.p_value == pytest.approx(1 / 201)
    assert (t.ci_low, t.ci_high) == (1.0, 1.0)

    def accuracy(outputs):
        return float((np.asarray(outputs) == truth).mean())

    p = paired_permutation_test(accuracy, good, bad, n_permutations=200, seed=0)
    assert p.delta == 1.0 and p.p_value == pytest.approx(1 / 201)
    # DataFrames swap by rows, lists by items
    fa, fb = pd.DataFrame({"y": good}), pd.DataFrame({"y": bad})
    q = paired_permutation_test(lambda f: accuracy(f["y"]), fa, fb, n_permutations=50, seed=2)
    assert q.p_value == pytest.approx(1 / 51)


def test_permutation_test_is_seeded():
    rng = np.random.default_rng(4)
    a, b = rng.random(25), rng.random(25)
    one = paired_permutation_test(np.mean, a, b, n_permutations=300, seed=9)
    two = paired_permutation_test(np.mean, a, b, n_permutations=300, seed=9)
    assert one == two
    assert 0 < one.p_value <= 1


def test_runs_and_studies_exact_small_case():
    # two runs of one system; run 0 scores 0 and 1 on two items, run 1 scores 1 and 1
    x = [np.array([0.0, 1.0]), np.array([1.0, 1.0])]
    runs = [lambda idx, v=v: {"acc": float(v[idx].mean())} for v in x]
    samples = resample_runs({"soft": runs}, 2, n_resamples=400, seed=0)
    r = samples.mean("soft", "acc", bounds=(0.0, 1.0))
    # mean 0.75; between runs: values 0.5 and 1, sd sqrt(1/8), se_runs sd / sqrt(2)
    assert r.value == 0.75 and r.n_runs == 2
    assert r.sd_runs == pytest.approx(math.sqrt(0.125))
    assert r.se_runs == pytest.approx(0.25)
    # the test set's part is the SD of the seed mean over the study resamples
    drawn = np.array([[x[0][i].mean(), x[1][i].mean()] for i in resample_indices(2, 400, 0)])
    assert r.se_studies == pytest.approx(drawn.mean(1).std(ddof=1))
    assert r.se == pytest.approx(math.hypot(r.se_runs, r.se_studies))
    # Welch-Satterthwaite: the run part has 1 degree of freedom
    assert r.df == pytest.approx(r.se**4 / r.se_runs**4)
    q = scipy_stats.t.ppf(0.975, r.df)
    assert r.ci_low == pytest.approx(max(0.0, 0.75 - q * r.se))
    assert r.ci_high == 1.0  # clipped to the metric's range
    assert math.isnan(r.p_value)


def test_runs_and_studies_paired_difference_and_its_test():
    # three seeds; mode a = mode b + 0.1 + a seed-specific shift; per-item noise shared
    rng = np.random.default_rng(4)
    base = rng.random(50)
    shifts = [0.0, 0.02, -0.02]
    a = [lambda idx, s=s: {"m": float((base[idx] + 0.1 + s).mean())} for s in shifts]
    b = [lambda idx: {"m": float(base[idx].mean())} for _ in shifts]
    samples = resample_runs({"a": a, "b": b}, 50, n_resamples=200, seed=1)
    d = samples.difference("a", "b", "m")
    assert d.value == pytest.approx(0.1)
    # the items cancel in every paired resample: only the seeds' spread is left
    assert d.se_studies == pytest.approx(0.0, abs=1e-12)
    assert d.sd_runs == pytest.approx(0.02)
    assert d.df == pytest.approx(2)
    half = scipy_stats.t.ppf(0.975, 2) * 0.02 / math.sqrt(3)
    assert (d.ci_low, d.ci_high) == (pytest.approx(0.1 - half), pytest.approx(0.1 + half))
    assert d.p_value == pytest.approx(2 * scipy_stats.t.sf(0.1 / (0.02 / math.sqrt(3)), 2))
    # unpaired, Welch: the two groups' SDs (0.02 and 0) and no pairing
    w = samples.difference("a", "b", "m", paired=False)
    assert w.value == pytest.approx(0.1) and w.se_runs == pytest.approx(0.02 / math.sqrt(3))
    # identical systems: nothing to tell apart
    same = samples.difference("b", "b", "m")
    assert (same.value, same.ci_low, same.ci_high, same.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_runs_and_studies_leave_out_undefined_runs_and_need_two():
    runs = [lambda idx: {"m": 0.2}, lambda idx: {"m": math.nan}, lambda idx: {"m": 0.6}]
    r = resample_runs({"s": runs}, 3, n_resamples=20).mean("s", "m")
    assert r.value == pytest.approx(0.4) and r.n_runs == 2
    one = resample_runs({"s": runs[:1]}, 3, n_resamples=20)
    assert math.isnan(one.mean("s", "m").ci_low)  # one run: training variance unknown
    assert one.percentile("s", "m").ci_low == pytest.approx(0.2)  # deterministic system
    with pytest.raises(ValueError, match="at least one run"):
        resample_runs({"s": []}, 2)


def _simulated_ablation(seed: int, k: int = 5, n: int = 200, n_resamples: int = 100):
    """Per-study scores of two modes x k runs with a known truth: a mode mean, a run
    effect (SD 0.03, the measured between-seed SD of micro-F1), a study effect shared by
    the modes, a study-by-mode effect and per-run noise. True soft - none: 0.02."""
    rng = np.random.default_rng(seed)
    shared = rng.normal(0, 0.15, n)
    systems = {}
    for mode, mu in (("none", 0.60), ("soft", 0.62)):
        study_by_mode = rng.normal(0, 0.10, n)
        scores = [
            mu + rng.normal(0, 0.03) + shared + study_by_mode + rng.normal(0, 0.10, n)
            for _ in range(k)
        ]
        systems[mode] = [lambda idx, y=y: {"m": float(y[idx].mean())} for y in scores]
    return systems, n, n_resamples


def test_runs_and_studies_interval_covers_the_true_difference_95_percent():
    # 600 simulated ablations (5 seeds per mode, 200 studies): the runs-and-studies
    # interval covers the true difference in 93-97% of them; the bootstrap over studies
    # with the seeds pooled (the ablation's method before issue 25) in far fewer
    covered, covered_before, width = [], [], []
    for seed in range(600):
        systems, n, b = _simulated_ablation(seed)
        d = resample_runs(systems, n, n_resamples=b, seed=seed).difference("soft", "none", "m")
        covered.append(d.ci_low <= 0.02 <= d.ci_high)
        width.append(d.ci_high - d.ci_low)
        if seed < 200:

            def pooled(runs):
                return lambda idx: float(np.mean([r(idx)["m"] for r in runs]))

            t = paired_bootstrap_test(
                pooled(systems["soft"]), pooled(systems["none"]), n, n_resamples=b, seed=seed
            )
            covered_before.append(t.ci_low <= 0.02 <= t.ci_high)
    coverage, before = float(np.mean(covered)), float(np.mean(covered_before))
    print(f"coverage: runs and studies {coverage:.3f}, studies only {before:.3f}")
    assert 0.93 <= coverage <= 0.97
    assert before < 0.80
    assert np.median(width) < 0.12  # informative, not [-1, 1]


def test_aggregate_seeds_t_interval():
    s = aggregate_seeds([1.0, 2.0, 3.0])
    half = 4.302652729749462 / math.sqrt(3)  # t_{0.975, 2} * sd / sqrt(n), sd = 1
    assert (s.mean, s.sd, s.n) == (2.0, 1.0, 3)
    assert (s.ci_low, s.ci_high) == (pytest.approx(2 - half), pytest.approx(2 + half))
    one = aggregate_seeds([0.4])
    assert one.mean == 0.4 and one.n == 1 and math.isnan(one.sd) and math.isnan(one.ci_low)
    with pytest.raises(ValueError):
        aggregate_seeds([])


def test_bad_arguments():
    with pytest.raises(ValueError):
        bootstrap(lambda idx: 0.0, 0)
    with pytest.raises(ValueError):
        bootstrap(lambda idx: 0.0, 3, n_resamples=0)
    with pytest.raises(ValueError):
        paired_permutation_test(np.mean, [1.0], [1.0, 2.0])


def test_seeds_needed_is_the_fewest_seeds_whose_interval_is_narrow_enough():
    k = seeds_needed(0.03, 0.005, 0.025)
    half = [scipy_stats.t.ppf(0.975, n - 1) * math.sqrt(0.03**2 / n + 0.005**2) for n in (k - 1, k)]
    assert half[0] > 0.025 >= half[1]
    assert seeds_needed(0.0, 0.0, 0.025) == 2
    assert seeds_needed(0.03, 0.02, 0.025) is None  # 1.96 x 0.02 > 0.025: seeds cannot help
    assert seeds_needed(math.nan, 0.0, 0.025) is None
