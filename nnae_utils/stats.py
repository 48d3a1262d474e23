"""Statistics for comparing optimisers over a handful of seeds.

Following Agarwal et al. (NeurIPS 2021, "Deep RL at the edge of the statistical precipice", the
method behind the ``rliable`` library), a method's result is summarised by its **interquartile mean**
(IQM: the mean of the middle 50% of runs, robust to one lucky or unlucky seed) or its mean, each
with a **95% stratified-bootstrap confidence interval**, and two methods are compared by the
**probability of improvement** P(X > Y).

The bootstrap is implemented here, in numpy, rather than taken from ``rliable`` (archived in 2025):

- scores come as a matrix ``(n_runs, n_tasks)`` (a vector is one task);
- one bootstrap replicate resamples, *independently within every task*, ``n_runs`` runs with
  replacement (the stratification: every replicate keeps every task, in its proportion);
- the statistic is computed on the resampled matrix, and the interval is the percentile interval
  of ``n_boot`` replicates, as ``rliable``'s default.

This suite has one task (Hopper-v5), so within one start condition the stratified bootstrap is the
plain percentile bootstrap over seeds; the task axis is kept so that the functions stay correct
when scores of several tasks (or start networks with several runs each) are pooled.

**Verdicts with a stated error rate** (:func:`compare_family`). A table of comparisons is one
family: each comparison's two-sided p-value is read off its bootstrap replicates (the p at which
the percentile interval just touches zero, :func:`bootstrap_p_value`), and Holm's step-down
procedure (:func:`holm_adjust`, :func:`holm_levels`) keeps the family-wise error at ``alpha``;
each difference is shown with its interval at its Holm level. "No effect" is never read from an
interval that merely covers zero: it is claimed only by an **equivalence test** (two one-sided
tests, TOST: the ``1 - 2 alpha`` percentile interval inside ``(-margin, +margin)``, with a margin
declared before looking), Holm-adjusted as its own family. Each comparison ends in one word
(:func:`verdict`): ``better``, ``worse``, ``equivalent`` or ``inconclusive``. Every bootstrap
resamples runs (seeds), never episodes or snapshots of one run; where each run has several
scores (snapshots), :func:`hierarchical_interval` and :func:`hierarchical_ratio_interval` resample
runs, then the scores within each.

A caveat that the error rate is only as good as the bootstrap: with few runs the percentile
bootstrap is too narrow. Five paired runs whose differences all share a sign give every replicate
that sign, hence p = 0, where an exact sign test gives 2/32 = 0.0625; so with 5 seeds a "better" or
"worse" is weaker evidence than its nominal level, and the ``long`` profile's 10 seeds per primary
comparison are the ones to read.

Sample-efficiency curves are step functions of the environment steps a run has spent (the champion
known after ``s`` steps); :func:`align_curves` puts runs that record at different steps on one grid.

Example:
    >>> iqm([1, 2, 3, 4, 5, 6, 7, 8])        # mean of 3, 4, 5, 6
    4.5
    >>> ci = interval([1.0, 2.0, 3.0, 4.0, 5.0], "mean", n_boot=1000, seed=0)
    >>> ci.point, ci.low <= ci.point <= ci.high
    (3.0, True)
    >>> probability_of_improvement([3, 4], [1, 2])
    1.0
    >>> ratio_interval([9.0, 11.0], [10.0, 10.0], n_boot=200).point   # paired ratio of means
    1.0
    >>> steps_to_threshold([10, 20, 30], [5.0, 12.0, 9.0], 10.0)
    20.0
    >>> holm_adjust([0.01, 0.04, 0.03]).round(2).tolist()
    [0.03, 0.06, 0.06]
    >>> verdict(0.5, 0.01, sign=1.0)   # cannot tell them apart, but the difference lies within the margin
    'equivalent'
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import scipy.stats

Statistic = Callable[..., np.ndarray]


# --------------------------------------------------------------------------- point statistics


def iqm(scores, axis=None):
    """Interquartile mean: the mean after cutting 25% of the scores off each end (scipy's trim_mean).

    With ``axis=None`` all scores are pooled (runs and tasks), as rliable's aggregate IQM does.
    scipy cuts ``int(0.25 * n)`` scores from each end: of 5 seeds, the best and the worst.
    """
    out = scipy.stats.trim_mean(np.asarray(scores, float), 0.25, axis=axis)
    return float(out) if axis is None else out


def mean(scores, axis=None):
    """The plain mean (pooled over runs and tasks when ``axis`` is None)."""
    out = np.mean(np.asarray(scores, float), axis=axis)
    return float(out) if axis is None else out


STATISTICS: dict[str, Statistic] = {"iqm": iqm, "mean": mean, "median": lambda s, axis=None: np.median(s, axis=axis)}


def _statistic(statistic: str | Statistic) -> Statistic:
    if callable(statistic):
        return statistic
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {sorted(STATISTICS)} or a callable, got {statistic!r}")
    return STATISTICS[statistic]


# --------------------------------------------------------------------------- bootstrap


@dataclass(frozen=True)
class Interval:
    """A point estimate and its bootstrap confidence interval."""

    point: float
    low: float
    high: float
    confidence: float = 0.95

    def excludes(self, value: float = 0.0) -> bool:
        """Whether ``value`` lies outside the interval (e.g. a difference whose CI excludes zero)."""
        return bool(value < self.low or value > self.high)

    def format(self, fmt: str = ".0f") -> str:
        """``'123 [100, 140]'``."""
        return f"{self.point:{fmt}} [{self.low:{fmt}}, {self.high:{fmt}}]"


def _as_matrix(scores) -> np.ndarray:
    x = np.asarray(scores, float)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"scores must be (n_runs,) or (n_runs, n_tasks) with n_runs >= 1, got shape {np.shape(scores)}")
    if not np.all(np.isfinite(x)):
        raise ValueError("scores must be finite")
    return x


def stratified_resample_indices(n_runs: int, n_tasks: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n_runs, n_tasks) run indices: each task's runs resampled with replacement, independently."""
    return rng.integers(0, n_runs, size=(n_boot, n_runs, n_tasks))


def _resample(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """x (n_runs, n_tasks) resampled by idx (n_boot, n_runs, n_tasks) -> (n_boot, n_runs * n_tasks)."""
    tasks = np.arange(x.shape[1])[None, None, :]
    return x[idx, tasks].reshape(len(idx), -1)


def _percentile_interval(point: float, replicates: np.ndarray, confidence: float) -> Interval:
    alpha = (1.0 - confidence) / 2.0
    low, high = np.percentile(replicates, [100 * alpha, 100 * (1 - alpha)])
    return Interval(float(point), float(low), float(high), confidence)


def interval(scores, statistic: str | Statistic = "iqm", *, n_boot: int = 2000, confidence: float = 0.95,
             seed: int = 0) -> Interval:
    """``statistic`` of ``scores`` and its stratified-bootstrap percentile interval.

    Args:
        scores: (n_runs,) or (n_runs, n_tasks).
        statistic: "iqm", "mean", "median" or a callable ``f(array, axis=...)``.
        n_boot: bootstrap replicates.
        confidence: e.g. 0.95.
        seed: seed of the resampling (the interval is a pure function of its inputs).

    Example:
        >>> interval([[0.0, 10.0], [0.0, 10.0]], "mean", n_boot=50)   # stratified: each task keeps its weight
        Interval(point=5.0, low=5.0, high=5.0, confidence=0.95)
    """
    stat = _statistic(statistic)
    x = _as_matrix(scores)
    rng = np.random.default_rng(seed)
    idx = stratified_resample_indices(x.shape[0], x.shape[1], n_boot, rng)
    replicates = stat(_resample(x, idx), axis=1)
    return _percentile_interval(float(stat(x.ravel())), replicates, confidence)


def _groups(groups, what: str = "groups") -> list[np.ndarray]:
    members = [np.asarray(g, float).ravel() for g in groups]
    if not members or any(m.size == 0 for m in members):
        raise ValueError(f"a two-level bootstrap needs at least one group, and no empty group ({what})")
    if not all(np.all(np.isfinite(m)) for m in members):
        raise ValueError("scores must be finite")
    return members


def _two_level_means(samples: Sequence[list[np.ndarray]], n_boot: int, seed: int) -> list[np.ndarray]:
    """(n_boot, n_groups) means of each paired sample's drawn groups, all resampled with the same indices."""
    first = samples[0]
    n_groups = len(first)
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, n_groups, size=(n_boot, n_groups))          # level 1: groups
    slot_means = [np.empty((n_boot, n_groups)) for _ in samples]
    for j in range(n_groups):                                           # level 2: members of the group in slot j
        for g, m in enumerate(first):
            idx = rng.integers(0, m.size, size=(n_boot, m.size))
            where = drawn[:, j] == g
            for sample, out in zip(samples, slot_means):
                out[where, j] = sample[g][idx[where]].mean(axis=1)
    return slot_means


def hierarchical_interval(groups: Sequence[Sequence[float]], statistic: str | Statistic = "mean", *, n_boot: int = 2000,
                          confidence: float = 0.95, seed: int = 0) -> Interval:
    """A two-level bootstrap: resample the groups with replacement, then the members within each drawn group.

    For scores that come in groups which are not independent inside (snapshots of one training run,
    episodes of one network), the runs are the units of replication: each replicate draws as many
    groups as there are, with replacement, then within every drawn group as many members as it has,
    with replacement; each drawn group is summarised by the mean of its drawn members (every group
    weighs the same, whatever its size), and ``statistic`` is taken over those group means. The
    point estimate is ``statistic`` of the groups' own means. A one-level bootstrap over the pooled
    members treats the members of a group as independent and gives intervals that are too narrow
    when groups differ.

    One random stream: the group draws come first (none with one group), then the member draws,
    so with one group the interval is :func:`interval` of the members with ``"mean"``, and with
    identical members inside every group it is :func:`interval` of the group means (same seed).

    Args:
        groups: one sequence of scores per group (sizes may differ; none empty).
        statistic: over group means: "iqm", "mean", "median" or a callable ``f(array, axis=...)``.
        n_boot, confidence, seed: as :func:`interval`.

    Example:
        >>> ci = hierarchical_interval([[1.0, 1.2], [2.0, 2.2, 2.4], [3.0]], "mean", n_boot=500)
        >>> round(ci.point, 2), ci.low <= ci.point <= ci.high
        (2.1, True)
        >>> hierarchical_interval([[5.0, 5.0], [5.0]], n_boot=50).format()   # nothing varies
        '5 [5, 5]'
    """
    stat = _statistic(statistic)
    members = _groups(groups)
    (slot_means,) = _two_level_means([members], n_boot, seed)
    point = float(stat(np.array([m.mean() for m in members])))
    return _percentile_interval(point, stat(slot_means, axis=1), confidence)


def hierarchical_ratio_interval(numerator: Sequence[Sequence[float]], denominator: Sequence[Sequence[float]], *,
                                n_boot: int = 2000, confidence: float = 0.95, seed: int = 0) -> Interval:
    """:func:`ratio_interval` (paired, ratio of means) with the two-level resampling of :func:`hierarchical_interval`.

    ``numerator[g][i]`` and ``denominator[g][i]`` belong together (a decoded network and its input
    network, ``g`` their training run): both are resampled with the same group and member indices.
    The ratio is the mean over groups of the numerator's group means over the same of the
    denominator's (each run weighs the same); a replicate whose denominator is not positive is
    dropped, and a non-positive denominator gives NaN, as in :func:`ratio_interval`. With one group
    it is :func:`ratio_interval` of the members, same seed (stage 3's retention, resampling runs then
    networks).

    Example:
        >>> hierarchical_ratio_interval([[2.0, 4.0], [6.0]], [[1.0, 2.0], [3.0]], n_boot=100).format(".2f")
        '2.00 [2.00, 2.00]'
    """
    num, den = _groups(numerator, "numerator"), _groups(denominator, "denominator")
    if [m.size for m in num] != [m.size for m in den]:
        raise ValueError("paired samples must have groups of the same sizes")
    point_den = float(np.mean([m.mean() for m in den]))
    if not point_den > 0:
        nan = float("nan")
        return Interval(nan, nan, nan, confidence)
    point = float(np.mean([m.mean() for m in num])) / point_den
    slot_num, slot_den = _two_level_means([num, den], n_boot, seed)
    top, bottom = slot_num.mean(axis=1), slot_den.mean(axis=1)
    ok = bottom > 0
    if not ok.any():
        return Interval(point, float("nan"), float("nan"), confidence)
    return _percentile_interval(point, top[ok] / bottom[ok], confidence)


def difference_interval(x, y, statistic: str | Statistic = "iqm", *, paired: bool = True, n_boot: int = 2000,
                        confidence: float = 0.95, seed: int = 0) -> Interval:
    """``statistic(x) - statistic(y)`` with a stratified-bootstrap interval.

    ``paired=True``: run ``i`` of ``x`` and run ``i`` of ``y`` share something (here: the replicate
    index, hence the start network and the fitness reset seeds), so the same run indices are drawn
    for both. ``paired=False`` resamples them independently.

    Example:
        >>> difference_interval([4.0, 5.0, 9.0], [1.0, 2.0, 6.0], "mean", n_boot=100).format(".1f")
        '3.0 [3.0, 3.0]'
    """
    point, replicates = difference_replicates(x, y, statistic, paired=paired, n_boot=n_boot, seed=seed)
    return _percentile_interval(point, replicates, confidence)


def difference_replicates(x, y, statistic: str | Statistic = "iqm", *, paired: bool = True, n_boot: int = 2000,
                          seed: int = 0) -> tuple[float, np.ndarray]:
    """``statistic(x) - statistic(y)`` and its ``n_boot`` stratified-bootstrap replicates (runs resampled;
    the same run indices for both when ``paired``). :func:`difference_interval` is their percentile interval.

    Example:
        >>> point, reps = difference_replicates([4.0, 5.0, 9.0], [1.0, 2.0, 6.0], "mean", n_boot=100)
        >>> point, reps.shape, bool(np.allclose(reps, 3.0))
        (3.0, (100,), True)
    """
    stat = _statistic(statistic)
    a, b = _as_matrix(x), _as_matrix(y)
    if paired and a.shape != b.shape:
        raise ValueError(f"paired samples must have the same shape, got {a.shape} and {b.shape}")
    if a.shape[1] != b.shape[1]:
        raise ValueError("x and y must have the same number of tasks")
    rng = np.random.default_rng(seed)
    ia = stratified_resample_indices(a.shape[0], a.shape[1], n_boot, rng)
    ib = ia if paired else stratified_resample_indices(b.shape[0], b.shape[1], n_boot, rng)
    replicates = stat(_resample(a, ia), axis=1) - stat(_resample(b, ib), axis=1)
    return float(stat(a.ravel()) - stat(b.ravel())), np.asarray(replicates, float)


def ratio_interval(numerator, denominator, statistic: str | Statistic = "mean", *, n_boot: int = 2000,
                   confidence: float = 0.95, seed: int = 0) -> Interval:
    """``statistic(numerator) / statistic(denominator)`` of *paired* samples, with a percentile bootstrap interval.

    Item ``i`` of both samples belongs together (e.g. a decoded network and its input network, scored
    on the same reset seeds): one replicate draws item indices with replacement and uses the same
    indices for both, so the pairing survives resampling. With the mean, the point estimate is the
    ratio of means (not the mean of per-item ratios), which stays defined when some denominators are
    near zero. A replicate whose denominator statistic is not positive gives no ratio and is dropped;
    if the denominator's own statistic is not positive, every number of the interval is NaN.

    Example:
        >>> ratio_interval([2.0, 4.0, 6.0], [1.0, 2.0, 3.0], n_boot=100).format(".2f")   # every pair keeps 2:1
        '2.00 [2.00, 2.00]'
    """
    stat = _statistic(statistic)
    a, b = _as_matrix(numerator), _as_matrix(denominator)
    if a.shape != b.shape:
        raise ValueError(f"paired samples must have the same shape, got {a.shape} and {b.shape}")
    point_den = float(stat(b.ravel()))
    if not point_den > 0:
        nan = float("nan")
        return Interval(nan, nan, nan, confidence)
    rng = np.random.default_rng(seed)
    idx = stratified_resample_indices(a.shape[0], a.shape[1], n_boot, rng)
    num, den = stat(_resample(a, idx), axis=1), stat(_resample(b, idx), axis=1)
    ok = den > 0
    point = float(stat(a.ravel())) / point_den
    if not ok.any():
        return Interval(point, float("nan"), float("nan"), confidence)
    return _percentile_interval(point, num[ok] / den[ok], confidence)


def probability_of_improvement(x, y) -> float:
    """P(X > Y) + P(X = Y) / 2 for a random run X of one method and Y of another, averaged over tasks.

    This is the Mann-Whitney U statistic of ``x`` against ``y`` divided by ``len(x) * len(y)``
    (rliable's definition, per task).
    """
    a, b = _as_matrix(x), _as_matrix(y)
    if a.shape[1] != b.shape[1]:
        raise ValueError("x and y must have the same number of tasks")
    per_task = []
    for t in range(a.shape[1]):
        diff = a[:, t][:, None] - b[:, t][None, :]
        per_task.append(float(np.mean((diff > 0) + 0.5 * (diff == 0))))
    return float(np.mean(per_task))


def probability_of_improvement_interval(x, y, *, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0) -> Interval:
    """P(X > Y) with a stratified-bootstrap interval (x and y resampled independently, as rliable does)."""
    a, b = _as_matrix(x), _as_matrix(y)
    rng = np.random.default_rng(seed)
    ia = stratified_resample_indices(a.shape[0], a.shape[1], n_boot, rng)
    ib = stratified_resample_indices(b.shape[0], b.shape[1], n_boot, rng)
    tasks = np.arange(a.shape[1])[None, None, :]
    ra, rb = a[ia, tasks], b[ib, tasks]  # (n_boot, n_runs, n_tasks)
    diff = ra[:, :, None, :] - rb[:, None, :, :]
    replicates = np.mean((diff > 0) + 0.5 * (diff == 0), axis=(1, 2)).mean(axis=1)
    return _percentile_interval(probability_of_improvement(a, b), replicates, confidence)


# --------------------------------------------------------------------------- tests with a stated error rate

VERDICTS = ("better", "worse", "equivalent", "inconclusive")


def bootstrap_p_value(replicates, null: float = 0.0) -> float:
    """Two-sided p-value of ``null`` from bootstrap replicates: the largest ``1 - confidence`` at which
    the percentile interval still excludes ``null`` (twice the smaller tail fraction, at most 1).

    Example:
        >>> bootstrap_p_value([1.0, 2.0, 3.0, -1.0])   # one replicate in four at or below zero
        0.5
        >>> bootstrap_p_value([0.0, 0.0])
        1.0
    """
    r = np.asarray(replicates, float)
    tail = min(np.mean(r <= null), np.mean(r >= null))
    return float(min(1.0, 2.0 * tail))


def equivalence_p_value(replicates, margin: float) -> float:
    """TOST p-value that the difference lies within ``(-margin, +margin)``: the larger of the two one-sided
    bootstrap p-values (the fractions of replicates at or beyond each bound). It is below ``alpha``
    exactly when the ``1 - 2 alpha`` percentile interval lies inside the margin.

    Example:
        >>> equivalence_p_value([-5.0, 0.0, 5.0, 30.0], margin=20.0)   # one replicate in four beyond +20
        0.25
    """
    if not margin > 0:
        raise ValueError(f"the equivalence margin must be positive, got {margin}")
    r = np.asarray(replicates, float)
    return float(max(np.mean(r <= -margin), np.mean(r >= margin)))


def holm_adjust(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values: reject comparison ``i`` at family-wise level ``alpha`` iff
    ``adjusted[i] <= alpha``. Sorted ascending, ``p_(k) * (m - k)`` (k from 0), made non-decreasing, capped at 1.

    Example:
        >>> holm_adjust([0.01, 0.02, 0.5]).tolist()   # 0.01 * 3, 0.02 * 2, 0.5 * 1
        [0.03, 0.04, 0.5]
    """
    p = np.asarray(p_values, float)
    m = len(p)
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate(p[order] * (m - np.arange(m)))
    out = np.empty(m)
    out[order] = np.minimum(stepped, 1.0)
    return out


def holm_levels(p_values, alpha: float = 0.05) -> np.ndarray:
    """Per-comparison confidence levels of Holm-adjusted intervals, step-down.

    The comparison of rank ``k`` (p-values ascending, from 0) gets ``1 - alpha / (m - k)`` while every
    comparison before it was rejected; from the first that is not, it and every later one keep that
    first level (a wider interval than its own rank would give), so an interval excludes zero exactly
    when Holm's procedure rejects (up to the bootstrap's ties). Bonferroni's ``1 - alpha / m`` is the
    level of the smallest p-value.

    Example:
        >>> holm_levels([0.001, 0.04, 0.02], alpha=0.05).round(4).tolist()   # all three rejected: 0.05/3, 0.05/2, 0.05/1
        [0.9833, 0.95, 0.975]
        >>> holm_levels([0.03, 0.04], alpha=0.05).tolist()                # 0.03 > 0.025: stop at the first
        [0.975, 0.975]
    """
    p = np.asarray(p_values, float)
    m = len(p)
    levels = np.empty(m)
    stop = None
    for rank, i in enumerate(np.argsort(p, kind="stable")):
        a = alpha / (m - rank) if stop is None else stop
        if stop is None and p[i] > a:
            stop = a  # Holm stops here: this and every later comparison are not rejected
        levels[i] = 1.0 - a
    return levels


def verdict(p_difference: float, p_equivalence: float, sign: float, alpha: float = 0.05) -> str:
    """One word for a comparison from its (adjusted) p-values: ``better``/``worse`` when the difference is
    significant (``sign`` gives its direction), else ``equivalent`` when the equivalence test is, else
    ``inconclusive`` (too few runs to say either).

    Example:
        >>> verdict(0.01, 0.9, sign=-1.0), verdict(0.3, 0.2, sign=1.0)
        ('worse', 'inconclusive')
    """
    if p_difference <= alpha:
        return "better" if sign > 0 else "worse"
    if p_equivalence <= alpha:
        return "equivalent"
    return "inconclusive"


@dataclass(frozen=True)
class Comparison:
    """One comparison of a family: the difference with its Holm-level interval, the TOST interval, the
    p-values (raw and Holm-adjusted), the margin and the verdict."""

    difference: Interval
    """``statistic(x) - statistic(y)`` with its percentile interval at the comparison's Holm level."""
    equivalence: Interval
    """The same difference with its ``1 - 2 alpha_k`` interval (alpha_k: its equivalence test's Holm level)."""
    margin: float
    p: float
    p_adjusted: float
    p_equivalence: float
    p_equivalence_adjusted: float
    verdict: str


def compare_family(pairs: Sequence[tuple], margins, statistic: str | Statistic = "iqm", *, alpha: float = 0.05,
                   paired: bool = True, n_boot: int = 2000, seed: int = 0) -> list[Comparison]:
    """Compare each ``(x, y)`` of a family at family-wise error ``alpha`` (Holm), with an equivalence test.

    Args:
        pairs: ``(x, y)`` score vectors per comparison (runs; paired by index when ``paired``).
        margins: the equivalence margin of each comparison (one number for all), in the scores' units,
            declared before the data are seen.
        statistic, paired, n_boot, seed: as :func:`difference_interval` (resampling runs).
        alpha: family-wise error of the difference tests, and separately of the equivalence tests.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> y = rng.normal(100.0, 5.0, 10)
        >>> out = compare_family([(y + 50.0, y), (y + rng.normal(0, 3.0, 10), y), (y + rng.normal(0, 80.0, 10), y)],
        ...                      20.0, "mean", n_boot=1000)
        >>> [c.verdict for c in out]
        ['better', 'equivalent', 'inconclusive']
    """
    pairs = list(pairs)
    m = len(pairs)
    margins = np.broadcast_to(np.asarray(margins, float), (m,))
    draws = [difference_replicates(x, y, statistic, paired=paired, n_boot=n_boot, seed=seed) for x, y in pairs]
    p = np.array([bootstrap_p_value(reps) for _, reps in draws])
    p_eq = np.array([equivalence_p_value(reps, margin) for (_, reps), margin in zip(draws, margins)])
    p_adj, p_eq_adj = holm_adjust(p), holm_adjust(p_eq)
    levels, eq_levels = holm_levels(p, alpha), holm_levels(p_eq, alpha)
    out = []
    for k, (point, reps) in enumerate(draws):
        sign = float(np.mean(reps > 0) - np.mean(reps < 0)) or point
        out.append(Comparison(
            difference=_percentile_interval(point, reps, levels[k]),
            equivalence=_percentile_interval(point, reps, 2.0 * eq_levels[k] - 1.0),
            margin=float(margins[k]), p=float(p[k]), p_adjusted=float(p_adj[k]), p_equivalence=float(p_eq[k]),
            p_equivalence_adjusted=float(p_eq_adj[k]), verdict=verdict(p_adj[k], p_eq_adj[k], sign, alpha)))
    return out


# --------------------------------------------------------------------------- curves


def align_curves(steps: Sequence[Sequence[float]], values: Sequence[Sequence[float]], grid) -> np.ndarray:
    """Runs' curves on a common step grid: (n_runs, len(grid)).

    Run ``i`` recorded ``values[i][j]`` after ``steps[i][j]`` environment steps (increasing). Its
    value at a grid point ``s`` is the last value recorded at a step <= s (the champion known
    then), NaN before its first record. After its last record the value is carried to the end of
    the grid: a run that stopped early keeps its final champion and spends nothing more.

    Example:
        >>> align_curves([[10, 30]], [[1.0, 2.0]], [0, 10, 20, 30, 40])
        array([[nan,  1.,  1.,  2.,  2.]])
    """
    grid = np.asarray(grid, float)
    out = np.full((len(steps), len(grid)), np.nan)
    for i, (s, v) in enumerate(zip(steps, values)):
        s, v = np.asarray(s, float), np.asarray(v, float)
        if len(s) != len(v):
            raise ValueError(f"run {i}: {len(s)} steps but {len(v)} values")
        if len(s) == 0:
            continue
        if np.any(np.diff(s) < 0):
            raise ValueError(f"run {i}: steps must be non-decreasing")
        pos = np.searchsorted(s, grid, side="right") - 1  # last record at or before each grid point
        ok = pos >= 0
        out[i, ok] = v[pos[ok]]
    return out


def curve_intervals(aligned: np.ndarray, grid, statistic: str | Statistic = "iqm", *, n_boot: int = 1000,
                    confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Point estimate and bootstrap interval at every grid point (NaN where any run has no value yet).

    Returns a frame with columns ``steps, point, low, high``.
    """
    stat = _statistic(statistic)
    aligned = np.asarray(aligned, float)
    grid = np.asarray(grid, float)
    rows = []
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, aligned.shape[0], size=(n_boot, aligned.shape[0]))  # one draw of runs for every column
    alpha = (1.0 - confidence) / 2.0
    for j, s in enumerate(grid):
        col = aligned[:, j]
        if np.isnan(col).any():
            rows.append((s, np.nan, np.nan, np.nan))
            continue
        reps = stat(col[idx], axis=1)
        low, high = np.percentile(reps, [100 * alpha, 100 * (1 - alpha)])
        rows.append((s, float(stat(col)), float(low), float(high)))
    return pd.DataFrame(rows, columns=["steps", "point", "low", "high"])


def steps_to_threshold(steps: Sequence[float], values: Sequence[float], threshold: float) -> float:
    """Environment steps at the first record whose value reaches ``threshold``; ``inf`` if none does."""
    s, v = np.asarray(steps, float), np.asarray(values, float)
    hit = np.flatnonzero(v >= threshold)
    return float(s[hit[0]]) if len(hit) else float("inf")


@dataclass(frozen=True)
class Reach:
    """How a method's runs reached a threshold: median steps (inf: at most half reached it) and how many did."""

    median_steps: float
    reached: int
    runs: int

    def format(self) -> str:
        """``'120k (4/5 runs)'`` or ``'not reached (1/5 runs)'``."""
        head = format_steps(self.median_steps) if np.isfinite(self.median_steps) else "not reached"
        return f"{head} ({self.reached}/{self.runs} runs)"


def summarize_reach(per_run_steps: Sequence[float]) -> Reach:
    """Median over runs of the steps to a threshold, runs that never reached it counting as infinite.

    Example:
        >>> summarize_reach([100_000.0, float("inf"), 300_000.0]).format()
        '300k (2/3 runs)'
        >>> summarize_reach([float("inf"), float("inf"), 300.0]).format()
        'not reached (1/3 runs)'
    """
    x = np.asarray(per_run_steps, float)
    if len(x) == 0:
        return Reach(float("inf"), 0, 0)
    srt = np.sort(x)
    n = len(srt)
    # the median with infinities: the middle value (the lower middle's and upper middle's mean if even)
    med = srt[n // 2] if n % 2 else (srt[n // 2 - 1] + srt[n // 2]) / 2
    return Reach(float(med), int(np.isfinite(x).sum()), n)


def format_steps(steps: float) -> str:
    """Environment steps for a table: ``'950'``, ``'120k'``, ``'1.25M'``; ``'not reached'`` for inf."""
    if not np.isfinite(steps):
        return "not reached"
    if steps < 10_000:
        return f"{steps:.0f}"
    if steps < 1_000_000:
        return f"{steps / 1e3:.0f}k"
    return f"{steps / 1e6:.2f}M"
