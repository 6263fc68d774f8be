"""Bootstrap intervals, paired tests and seed aggregation: exact small cases."""

import math

import numpy as np
import pandas as pd
import pytest

from cxrlib.base.stats import (
    aggregate_seeds,
    bootstrap,
    bootstrap_many,
    bootstrap_seed_mean,
    paired_bootstrap_test,
    paired_permutation_test,
    resample_indices,
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


def test_seed_mean_bootstrap_exact_small_case():
    # two items; run 0 scores 0 and 1, run 1 scores 1 and 1. Resamples {0,0}, {0,1} and
    # {1,1} give run means (0, 1), (0.5, 1), (1, 1): averages 0.5, 0.75, 1.0
    x = [np.array([0.0, 1.0]), np.array([1.0, 1.0])]
    runs = [lambda idx, v=v: {"acc": float(v[idx].mean())} for v in x]
    r = bootstrap_seed_mean(runs, 2, n_resamples=1000, seed=0)["acc"]
    assert (r.value, r.ci_low, r.ci_high) == (0.75, 0.5, 1.0)
    assert (r.n, r.n_resamples, r.seed, r.n_nan, r.method) == (2, 1000, 0, 0, "percentile")


def test_seed_mean_bootstrap_draws_the_same_resamples_for_every_run():
    x = np.random.default_rng(1).random(9)
    groups = ["a", "a", "b", "c", "c", "c", "d", "e", "e"]

    def metric(idx):
        return {"m": float(x[idx].mean())}

    pooled = bootstrap_seed_mean([metric, metric, metric], 9, n_resamples=40, seed=2, groups=groups)
    single = bootstrap_many(metric, 9, n_resamples=40, seed=2, groups=groups)
    assert pooled == single  # identical runs: the pooled bootstrap is the plain one


def test_seed_mean_bootstrap_leaves_out_undefined_runs():
    # run 1 is undefined (NaN) wherever item 0 is drawn alone; run 0 always 0.2
    def run0(idx):
        return {"m": 0.2}

    def run1(idx):
        return {"m": math.nan if np.all(idx == 0) else 0.6}

    r = bootstrap_seed_mean([run0, run1], 2, n_resamples=500, seed=0)["m"]
    assert r.value == pytest.approx(0.4)
    assert (r.ci_low, r.ci_high) == (pytest.approx(0.2), pytest.approx(0.4))
    assert r.n_nan == 0
    none = bootstrap_seed_mean([lambda idx: {"m": math.nan}], 2, n_resamples=5)["m"]
    assert math.isnan(none.value) and none.n_nan == 5 and math.isnan(none.ci_low)
    with pytest.raises(ValueError, match="at least one run"):
        bootstrap_seed_mean([], 2)


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
