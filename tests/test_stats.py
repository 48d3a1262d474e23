"""Statistics: hand-computed values, and scipy where it computes the same thing."""
import numpy as np
import pytest
import scipy.stats

from nnae_utils import stats


def test_iqm_by_hand_and_against_scipy():
    assert stats.iqm([1, 2, 3, 4, 5, 6, 7, 8]) == pytest.approx(4.5)  # mean of 3, 4, 5, 6
    assert stats.iqm([10, 1, 3, 100, 5]) == pytest.approx(6.0)        # 5 runs: drop 1 and 100, mean of 3, 5, 10
    assert stats.iqm([7.0]) == 7.0
    x = np.random.default_rng(0).normal(size=(13, 3))
    assert stats.iqm(x) == pytest.approx(scipy.stats.trim_mean(x.ravel(), 0.25))
    np.testing.assert_allclose(stats.iqm(x, axis=0), scipy.stats.trim_mean(x, 0.25, axis=0))


def test_percentile_bootstrap_agrees_with_scipy():
    x = np.random.default_rng(1).gamma(2.0, 100.0, size=12)
    ours = stats.interval(x, "mean", n_boot=40_000, seed=0)
    ref = scipy.stats.bootstrap((x,), np.mean, n_resamples=40_000, method="percentile", confidence_level=0.95,
                                random_state=np.random.default_rng(0)).confidence_interval
    assert ours.point == pytest.approx(x.mean())
    assert ours.low == pytest.approx(ref.low, rel=0.02)
    assert ours.high == pytest.approx(ref.high, rel=0.02)
    assert ours.low < ours.point < ours.high


def test_interval_is_exact_for_constant_scores_and_reproducible():
    assert stats.interval([3.0] * 5, "iqm", n_boot=100) == stats.Interval(3.0, 3.0, 3.0)
    x = [1.0, 5.0, 2.0, 8.0, 3.0]
    assert stats.interval(x, n_boot=500, seed=4) == stats.interval(x, n_boot=500, seed=4)


def test_resampling_is_stratified_by_task():
    # task 0 always scores 0, task 1 always 10: any resample that keeps both tasks has mean 5
    scores = np.array([[0.0, 10.0]] * 4)
    assert stats.interval(scores, "mean", n_boot=300) == stats.Interval(5.0, 5.0, 5.0)
    idx = stats.stratified_resample_indices(4, 2, 50, np.random.default_rng(0))
    assert idx.shape == (50, 4, 2) and idx.min() >= 0 and idx.max() < 4


def test_paired_difference_interval():
    y = np.array([1.0, 2.0, 6.0, 3.0, 9.0])
    d = stats.difference_interval(y + 3.0, y, "mean", n_boot=500)
    assert (d.point, d.low, d.high) == pytest.approx((3.0, 3.0, 3.0))  # pairing removes the between-run spread
    u = stats.difference_interval(y + 3.0, y, "mean", paired=False, n_boot=500)
    assert u.point == pytest.approx(3.0) and u.low < 3.0 < u.high
    assert not d.excludes(3.0) and d.excludes(0.0)
    with pytest.raises(ValueError):
        stats.difference_interval([1.0, 2.0], [1.0], paired=True)


def test_probability_of_improvement_is_normalised_mann_whitney():
    assert stats.probability_of_improvement([3, 4], [1, 2]) == 1.0
    assert stats.probability_of_improvement([1, 2], [3, 4]) == 0.0
    assert stats.probability_of_improvement([1, 2], [1, 2]) == 0.5  # ties count one half
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=7), rng.normal(0.5, size=9)
    u = scipy.stats.mannwhitneyu(x, y).statistic
    assert stats.probability_of_improvement(x, y) == pytest.approx(u / (len(x) * len(y)))
    ci = stats.probability_of_improvement_interval(x, y, n_boot=500)
    assert 0.0 <= ci.low <= ci.point <= ci.high <= 1.0


def test_align_curves_is_a_step_function_carried_forward():
    grid = [0, 5, 10, 15, 20, 100]
    out = stats.align_curves([[5, 15], [10]], [[1.0, 3.0], [7.0]], grid)
    np.testing.assert_array_equal(out[0], [np.nan, 1.0, 1.0, 3.0, 3.0, 3.0])
    np.testing.assert_array_equal(out[1], [np.nan, np.nan, 7.0, 7.0, 7.0, 7.0])
    frame = stats.curve_intervals(out, grid, "mean", n_boot=100)
    assert np.isnan(frame.loc[1, "point"]) and frame.loc[3, "point"] == pytest.approx(5.0)
    with pytest.raises(ValueError):
        stats.align_curves([[2, 1]], [[0.0, 1.0]], grid)


def test_steps_to_threshold_and_reach():
    assert stats.steps_to_threshold([0, 100, 200], [50.0, 120.0, 90.0], 100.0) == 100.0
    assert stats.steps_to_threshold([0, 100], [50.0, 60.0], 100.0) == float("inf")
    assert stats.steps_to_threshold([0, 100], [150.0, 60.0], 100.0) == 0.0
    r = stats.summarize_reach([100.0, 300.0, float("inf"), 200.0, float("inf")])
    assert (r.median_steps, r.reached, r.runs) == (300.0, 3, 5)
    assert stats.summarize_reach([float("inf"), float("inf"), 5.0]).format() == "not reached (1/3 runs)"
    assert stats.summarize_reach([20_000.0, 40_000.0]).format() == "30k (2/2 runs)"
    assert stats.format_steps(1_250_000) == "1.25M" and stats.format_steps(950) == "950"


def test_holm_adjusted_p_values_by_hand():
    # sorted 0.01, 0.02, 0.03, 0.2 -> times 4, 3, 2, 1 = 0.04, 0.06, 0.06, 0.2; running max keeps the order
    np.testing.assert_allclose(stats.holm_adjust([0.03, 0.2, 0.01, 0.02]), [0.06, 0.2, 0.04, 0.06])
    np.testing.assert_allclose(stats.holm_adjust([0.5, 0.9]), [1.0, 1.0])  # capped at 1
    np.testing.assert_allclose(stats.holm_adjust([0.04]), [0.04])        # a family of one is not adjusted
    # Holm rejects exactly what its step-down rule rejects
    rng = np.random.default_rng(0)
    for _ in range(200):
        p = rng.uniform(0, 0.1, size=rng.integers(1, 7))
        order, m = np.argsort(p), len(p)
        reject, going = np.zeros(m, bool), True
        for k, i in enumerate(order):
            going = going and p[i] <= 0.05 / (m - k)
            reject[i] = going
        np.testing.assert_array_equal(stats.holm_adjust(p) <= 0.05, reject)


def test_holm_levels_give_intervals_that_exclude_zero_exactly_when_holm_rejects():
    rng = np.random.default_rng(1)
    for _ in range(40):
        m = int(rng.integers(2, 6))
        reps = [rng.normal(rng.uniform(-3, 3), 1.0, size=4000) for _ in range(m)]
        p = np.array([stats.bootstrap_p_value(r) for r in reps])
        levels = stats.holm_levels(p, 0.05)
        rejected = stats.holm_adjust(p) <= 0.05
        for r, level, rej, pk in zip(reps, levels, rejected, p):
            lo, hi = np.percentile(r, [50 * (1 - level), 100 - 50 * (1 - level)])
            if abs(pk - (1 - level)) > 2e-3:  # away from the boundary, where percentile interpolation decides ties
                assert (lo > 0 or hi < 0) == rej
    assert stats.holm_levels([0.2, 0.001], 0.05).tolist() == [0.95, 1 - 0.025]


def test_bootstrap_and_equivalence_p_values_invert_their_intervals():
    reps = np.random.default_rng(2).normal(1.0, 1.0, size=20_000)
    p = stats.bootstrap_p_value(reps)
    assert p == pytest.approx(2 * scipy.stats.norm.cdf(-1.0), abs=0.01)
    for alpha in (0.05, 0.2):
        inside = np.all(np.abs(np.percentile(reps, [100 * alpha, 100 * (1 - alpha)])) < 2.5)  # the 1 - 2 alpha interval
        assert (stats.equivalence_p_value(reps, 2.5) <= alpha) == inside
    assert stats.equivalence_p_value(reps, 10.0) == 0.0 and stats.equivalence_p_value(reps, 0.1) > 0.5
    with pytest.raises(ValueError):
        stats.equivalence_p_value(reps, 0.0)


def test_verdicts_cover_the_four_outcomes():
    assert stats.verdict(0.01, 0.5, sign=1.0) == "better"
    assert stats.verdict(0.01, 0.01, sign=-1.0) == "worse"  # a significant difference is named before equivalence
    assert stats.verdict(0.2, 0.01, sign=1.0) == "equivalent"
    assert stats.verdict(0.2, 0.3, sign=1.0) == "inconclusive"
    y = np.linspace(0.0, 900.0, 10)
    family = stats.compare_family([(y + 400.0, y), (y - 400.0, y), (y + np.tile([-5.0, 5.0], 5), y)], 100.0, "mean",
                                  n_boot=500)
    assert [c.verdict for c in family] == ["better", "worse", "equivalent"]
    assert family[0].difference.low > 0 and family[1].difference.high < 0
    assert -100 < family[2].equivalence.low < family[2].equivalence.high < 100
    assert family[0].difference.confidence == pytest.approx(1 - 0.05 / 3)  # the family's smallest p gets Bonferroni's level


def test_holm_keeps_the_family_wise_error_where_unadjusted_tests_do_not():
    # 6 comparisons of methods with no difference at all: how often does a family claim one?
    rng = np.random.default_rng(3)
    families, claimed_holm, claimed_raw = 150, 0, 0
    for f in range(families):
        pairs = [(rng.normal(size=20), rng.normal(size=20)) for _ in range(6)]
        out = stats.compare_family(pairs, 0.5, "mean", paired=False, n_boot=400, seed=f)
        claimed_holm += any(c.verdict in ("better", "worse") for c in out)
        claimed_raw += any(c.p <= 0.05 for c in out)
    assert claimed_holm / families <= 0.10
    assert claimed_raw / families >= 0.15  # six tests at 5% each: about 1 - 0.95^6 = 26%


def test_docstring_examples():
    import doctest

    assert doctest.testmod(stats, raise_on_error=False).failed == 0


# --------------------------------------------------------------------------- hierarchical bootstrap


def test_hierarchical_one_group_is_the_one_level_bootstrap_over_members():
    members = np.random.default_rng(1).normal(3.0, 1.0, size=17)
    two = stats.hierarchical_interval([members], "mean", n_boot=400, seed=5)
    one = stats.interval(members, "mean", n_boot=400, seed=5)
    assert two == one


def test_hierarchical_identical_members_is_the_bootstrap_over_group_means():
    values = [1.0, 4.0, 2.5, 9.0, 3.0, 3.5]
    groups = [[v] * n for v, n in zip(values, [3, 1, 5, 2, 4, 6])]
    for statistic in ("mean", "iqm", "median"):
        assert (stats.hierarchical_interval(groups, statistic, n_boot=300, seed=2)
                == stats.interval(values, statistic, n_boot=300, seed=2))


def test_hierarchical_is_wider_than_pooling_when_groups_differ():
    rng = np.random.default_rng(0)
    groups = [rng.normal(mu, 0.1, size=30) for mu in (0.0, 1.0, 2.0, 3.0, 4.0)]
    two = stats.hierarchical_interval(groups, "mean", n_boot=2000, seed=0)
    pooled = stats.interval(np.concatenate(groups), "mean", n_boot=2000, seed=0)
    assert two.point == pytest.approx(pooled.point)          # equal sizes: mean of means = pooled mean
    assert (two.high - two.low) > 3 * (pooled.high - pooled.low)


def test_hierarchical_groups_weigh_the_same_and_refuse_bad_input():
    ci = stats.hierarchical_interval([[0.0] * 99, [10.0]], "mean", n_boot=100)
    assert ci.point == 5.0                                   # one group of 99 members does not outweigh the other
    assert stats.hierarchical_interval([[1.0, 2.0]], n_boot=10, seed=3) == stats.hierarchical_interval([[1.0, 2.0]], n_boot=10, seed=3)
    for bad in ([], [[1.0], []], [[1.0, np.nan]]):
        with pytest.raises(ValueError):
            stats.hierarchical_interval(bad)


def test_hierarchical_ratio_with_one_group_is_the_paired_ratio_interval():
    rng = np.random.default_rng(4)
    x = rng.uniform(1000, 3000, size=15)
    y = x * rng.uniform(0.2, 1.1, size=15)
    assert (stats.hierarchical_ratio_interval([y], [x], n_boot=300, seed=1)
            == stats.ratio_interval(y, x, "mean", n_boot=300, seed=1))


def test_hierarchical_ratio_keeps_pairs_and_weighs_runs_alike():
    ci = stats.hierarchical_ratio_interval([[2.0, 4.0, 6.0], [1.0]], [[1.0, 2.0, 3.0], [0.5]], n_boot=200, seed=0)
    assert (ci.point, ci.low, ci.high) == (2.0, 2.0, 2.0)            # every pair keeps 2:1 under resampling
    runs = [np.full(30, 0.5), np.full(30, 1.0)]                    # two runs, each one value
    ones = [np.ones(30), np.ones(30)]
    wide = stats.hierarchical_ratio_interval(runs, ones, n_boot=500, seed=0)
    assert wide.point == 0.75 and wide.low == 0.5 and wide.high == 1.0   # a replicate draws one run twice, or both
    assert np.isnan(stats.hierarchical_ratio_interval([[1.0]], [[0.0]]).point)
    with pytest.raises(ValueError):
        stats.hierarchical_ratio_interval([[1.0, 2.0]], [[1.0]])
