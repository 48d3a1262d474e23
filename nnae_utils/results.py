"""Results of the search stages (4 and 5) as tables, shaped like rliable's API: scores per method in, tables out.

Stages 4 and 5 compare methods run over several seeds. Everything they report is computed here, once,
from plain inputs: a mapping ``(start, label) -> per-run scores`` (runs in replicate order, so that
comparisons can pair them), and the runs' curves as a frame of records. The notebooks hold the runs,
the prose, and these calls.

- :func:`final_scores`: IQM and mean per method with stratified-bootstrap intervals (a frame);
- :func:`reach_levels`, :func:`reach_table`: env steps each method's runs needed to reach each level (median, count);
- :func:`curve_bands`: IQM curves with bootstrap bands on a common env-step grid;
- :func:`equivalence_margins`: the declared "no difference" margin of each start condition;
- :func:`comparison_table`: a Holm family of paired comparisons with the verdict rule;
- :func:`verdict_sentence`: the sentence a primary comparison's row reads as;
- :func:`random_policy_table`, :func:`random_policy_summary`, :func:`random_policy_sentence`: random policies of each genome's scratch distribution;
- :func:`champion_record`: a champion's ``index.json`` record (stages 4 and 5, every kind of run);
- :func:`label_summary`: the ``results`` block of a ``summary.json``, ``{start: {label: entry}}``;
- :func:`iter_results`: reads that block back, in its current or its older ``"start|label"`` form.

The thresholds the verdicts turn on are named here (:data:`FAMILY_ALPHA`, :data:`EQUIVALENCE_FRACTION`,
:data:`CONFIDENCE`), declared before any run; the statistics themselves live in :mod:`nnae_utils.stats`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from . import genomes as gen, stats
from .policies import load_network, save_network, write_index

FAMILY_ALPHA = 0.05
"""Family-wise error rate of a comparisons table (Holm): the chance of any false "better" or "worse" in it."""
EQUIVALENCE_FRACTION = 0.10
"""Equivalence margin: this fraction of the start networks' median return (fine-tuning), or of the
highest return level (from scratch). "No difference" is claimed only within it."""
CONFIDENCE = 0.95
"""Confidence level of every interval of a final score and of the curve bands."""

Key = tuple[str, str]
"""``(start, label)``: a start condition (``finetune``, ``scratch``, ...) and a method label."""


# --------------------------------------------------------------------------- final scores


def interval_dict(i: stats.Interval) -> dict[str, float]:
    """An interval as the summary stores it.

    Example:
        >>> interval_dict(stats.Interval(1.0, 0.5, 2.0))
        {'point': 1.0, 'low': 0.5, 'high': 2.0}
    """
    return {"point": i.point, "low": i.low, "high": i.high}


def final_scores(scores: Mapping[Key, Sequence[float]], *, n_boot: int = 2000, seed: int = 0,
                 extra: Mapping[Key, Mapping[str, Any]] | None = None) -> pd.DataFrame:
    """IQM and mean of each method's final scores, with 95% stratified-bootstrap intervals (runs resampled).

    Args:
        scores: ``(start, label) -> per-run final scores``; the frame keeps this order.
        n_boot, seed: the bootstrap's replicates and seed (the same for every method).
        extra: more columns per key (e.g. mean env steps used), appended as given.

    Returns:
        One row per key: ``start, label, runs, point, low, high`` (the IQM's), ``IQM [95% CI]``,
        ``mean [95% CI]`` (text), the ``extra`` columns, and ``iqm``, ``mean`` (:class:`stats.Interval`).

    Example:
        >>> t = final_scores({("scratch", "ga/weights"): [1.0, 2.0, 3.0, 4.0]}, n_boot=200)
        >>> t[["start", "label", "runs", "point"]].to_dict("records")
        [{'start': 'scratch', 'label': 'ga/weights', 'runs': 4, 'point': 2.5}]
    """
    rows = []
    for (start, label), x in scores.items():
        x = np.asarray(x, float)
        i_iqm = stats.interval(x, "iqm", n_boot=n_boot, seed=seed, confidence=CONFIDENCE)
        i_mean = stats.interval(x, "mean", n_boot=n_boot, seed=seed, confidence=CONFIDENCE)
        rows.append({"start": start, "label": label, "runs": len(x), "point": i_iqm.point, "low": i_iqm.low,
                     "high": i_iqm.high, "IQM [95% CI]": i_iqm.format(), "mean [95% CI]": i_mean.format(),
                     **dict((extra or {}).get((start, label), {})), "iqm": i_iqm, "mean": i_mean})
    return pd.DataFrame(rows)


def scores_of(runs: pd.DataFrame, keys: Sequence[Key],
              column_of: Mapping[str, str]) -> tuple[dict[Key, pd.DataFrame], dict[Key, np.ndarray]]:
    """Each ``(start, label)``'s runs in replicate order, and their final scores: the ``scores`` every table here
    takes, paired across labels by replicate. Keys without runs are left out.

    Args:
        runs: one row per run (``start, label, replicate`` and the score columns).
        column_of: per start condition, the score column (e.g. ``gain`` when fine-tuning).

    Example:
        >>> runs = pd.DataFrame({"start": "scratch", "label": "ga", "replicate": [1, 0], "final_return": [5.0, 3.0]})
        >>> scores_of(runs, [("scratch", "ga"), ("scratch", "td3")], {"scratch": "final_return"})[1]
        {('scratch', 'ga'): array([3., 5.])}
    """
    runs_of = {}
    for start, label in keys:
        sub = runs[(runs.start == start) & (runs.label == label)].sort_values("replicate")
        if len(sub):
            runs_of[(start, label)] = sub
    return runs_of, {key: sub[column_of[key[0]]].to_numpy() for key, sub in runs_of.items()}


def score_dots(scores: Mapping[Key, Sequence[float]]) -> pd.DataFrame:
    """One row per run (``start, label, value``): the dots of a final-score figure.

    Example:
        >>> score_dots({("finetune", "td3"): [1.0, 2.0]}).value.tolist()
        [1.0, 2.0]
    """
    return pd.DataFrame([{"start": s, "label": label, "value": v} for (s, label), x in scores.items() for v in x],
                        columns=["start", "label", "value"])


# --------------------------------------------------------------------------- random policies of each genome


def random_policy_table(returns: Mapping[str, Sequence[float]], bar: float, *, n_boot: int = 2000,
                        seed: int = 0) -> pd.DataFrame:
    """Each genome's random policies (their mean returns): median, IQM with its bootstrap interval, share above ``bar``.

    Args:
        returns: genome name -> each random policy's mean return (``evolution.sample_policies``).
        bar: a small return that a policy which does not fall at once passes.
        n_boot, seed: the bootstrap over policies.

    Returns:
        One row per genome: ``genome, policies, median, iqm_point, iqm_low, iqm_high``,
        ``IQM [95% CI]`` (text), ``above_bar`` (the fraction of policies whose return exceeds ``bar``),
        ``best`` and ``iqm`` (:class:`stats.Interval`).

    Example:
        >>> t = random_policy_table({"weights": [1.0, 2.0, 3.0, 40.0]}, bar=10.0, n_boot=100)
        >>> t[["genome", "policies", "median", "above_bar", "best"]].to_dict("records")
        [{'genome': 'weights', 'policies': 4, 'median': 2.5, 'above_bar': 0.25, 'best': 40.0}]
    """
    rows = []
    for name, x in returns.items():
        x = np.asarray(x, float)
        ci = stats.interval(x, "iqm", n_boot=n_boot, seed=seed, confidence=CONFIDENCE)
        rows.append({"genome": name, "policies": len(x), "median": float(np.median(x)), "iqm_point": ci.point,
                     "iqm_low": ci.low, "iqm_high": ci.high, "IQM [95% CI]": ci.format(),
                     "above_bar": float(np.mean(x > bar)), "best": float(x.max()), "iqm": ci})
    return pd.DataFrame(rows)


def random_policy_summary(table: pd.DataFrame, *, bar: float, episodes: int, env_steps: int,
                          seconds: float) -> dict[str, Any]:
    """The ``random_policies`` block of stage 4's summary: the sample's settings and cost, and one entry per genome."""
    genomes = {r.genome: {"policies": int(r.policies), "median": r.median, "iqm": interval_dict(r.iqm),
                          "above_bar": r.above_bar, "best": r.best} for r in table.itertuples()}
    return {"bar": float(bar), "episodes": int(episodes), "env_steps": int(env_steps),
            "wall_seconds": round(float(seconds), 1), "genomes": genomes}


def random_policy_sentence(table: pd.DataFrame, bar: float, reference: str = "weights") -> str:
    """What random policies of each genome return, set against the ``reference`` genome's (random weights).

    Example:
        >>> t = random_policy_table({"weights": [1.0, 2.0], "latent:all": [50.0, 300.0]}, bar=100.0, n_boot=50)
        >>> random_policy_sentence(t, 100.0)
        'Random policies (IQM of their returns, 95% CI; share above 100): weights 2 [1, 2], 0%; latent:all 175 [50, 300], 50% (+174 over random weights).'
    """
    ref = table.set_index("genome")["iqm_point"].get(reference)
    parts = []
    for r in table.itertuples():
        text = f"{r.genome} {r.iqm.format()}, {r.above_bar:.0%}"
        if ref is not None and r.genome != reference:
            text += f" ({r.iqm_point - ref:+.0f} over random weights)"
        parts.append(text)
    return f"Random policies (IQM of their returns, 95% CI; share above {bar:g}): " + "; ".join(parts) + "."


# --------------------------------------------------------------------------- steps to a level


def reach_levels(return_levels: Sequence[float] = (), gain: float | None = None) -> dict[str, tuple[str, float]]:
    """The levels of a reach table: column name -> (curve column, threshold).

    Returns reach ``champion_return >= level`` for each return level, and, with ``gain``, the relative
    gain over the start network (``relative_gain``, see :func:`reach_table`).

    Example:
        >>> reach_levels([1000.0], gain=0.1)
        {'return >= 1000': ('champion_return', 1000.0), 'gain >= 10%': ('relative_gain', 0.1)}
    """
    out = {f"return >= {level:g}": ("champion_return", float(level)) for level in return_levels}
    if gain is not None:
        out[f"gain >= {gain:.0%}"] = ("relative_gain", float(gain))
    return out


def reach_table(curves: pd.DataFrame, keys: Sequence[Key],
                levels_of: Mapping[str, Mapping[str, tuple[str, float]]]) -> pd.DataFrame:
    """Env steps each method's runs needed before their champion first reached each level.

    Args:
        curves: one row per record: ``start, label, run_id, env_steps`` and the value columns the levels
            name; ``relative_gain`` is computed as ``gain / |start_return|`` when a level asks for it.
        keys: the ``(start, label)`` rows of the table, in order (keys without curves are skipped).
        levels_of: per start condition, :func:`reach_levels`.

    Returns:
        A frame indexed by ``(start, label)`` of :class:`stats.Reach` (median over runs, a run that
        never reached a level counting as infinitely slow; NaN where a start has no such level).

    Example:
        >>> c = pd.DataFrame({"start": "scratch", "label": "ga", "run_id": ["a", "a", "b"],
        ...                   "env_steps": [0, 10, 0], "champion_return": [0.0, 5.0, 1.0]})
        >>> reach_table(c, [("scratch", "ga")], {"scratch": reach_levels([5.0])}).iloc[0, 0].format()
        'not reached (1/2 runs)'
    """
    rows = []
    for start, label in keys:
        sub = curves[(curves.start == start) & (curves.label == label)]
        if not len(sub):
            continue
        per_run = [d.sort_values("env_steps") for _, d in sub.groupby("run_id")]
        entry: dict[str, Any] = {"start": start, "label": label}
        for column, (value, threshold) in levels_of[start].items():
            steps = [stats.steps_to_threshold(d["env_steps"], _values(d, value), threshold) for d in per_run]
            entry[column] = stats.summarize_reach(steps)
        rows.append(entry)
    return pd.DataFrame(rows).set_index(["start", "label"])


def _values(run: pd.DataFrame, column: str) -> pd.Series:
    return run["gain"] / run["start_return"].abs() if column == "relative_gain" else run[column]


def reach_display(reach: pd.DataFrame, start: str) -> pd.DataFrame:
    """One start condition's reach table as text (its own levels only).

    Example:
        >>> r = pd.DataFrame([{"start": "s", "label": "a", "x": stats.Reach(1000.0, 2, 2)}]).set_index(["start", "label"])
        >>> reach_display(r, "s").loc["a", "x"]
        '1000 (2/2 runs)'
    """
    return reach.loc[start].dropna(axis=1, how="all").map(lambda r: r.format())


def reach_dict(r: stats.Reach) -> dict[str, Any]:
    """A reach as the summary stores it (``median`` None when at most half the runs reached the level).

    Example:
        >>> reach_dict(stats.Reach(float("inf"), 1, 3))
        {'median': None, 'reached': 1, 'runs': 3, 'text': 'not reached (1/3 runs)'}
    """
    return {"median": r.median_steps if np.isfinite(r.median_steps) else None,
            "reached": r.reached, "runs": r.runs, "text": r.format()}


# --------------------------------------------------------------------------- curves


def curve_bands(curves: pd.DataFrame, value_of: Mapping[str, str], grid, *, n_boot: int = 2000,
                seed: int = 0) -> pd.DataFrame:
    """IQM curve of each ``(start, label)`` over its runs, with its bootstrap band, on ``grid`` (env steps).

    Args:
        curves: one row per record: ``start, label, run_id, env_steps`` and the value columns.
        value_of: per start condition, the column to plot (e.g. ``gain`` when fine-tuning).

    Returns:
        :func:`stats.curve_intervals`' frame (``steps, point, low, high``) of every group, with its
        ``start`` and ``label``, groups in the order they first appear.

    Example:
        >>> c = pd.DataFrame({"start": "scratch", "label": "ga", "run_id": ["a", "b"], "env_steps": [0, 0],
        ...                   "champion_return": [1.0, 1.0]})
        >>> curve_bands(c, {"scratch": "champion_return"}, [0, 10], n_boot=10)[["steps", "point", "label"]].values.tolist()
        [[0.0, 1.0, 'ga'], [10.0, 1.0, 'ga']]
    """
    bands = []
    for (start, label), sub in curves.groupby(["start", "label"], sort=False):
        per_run = [d.sort_values("env_steps") for _, d in sub.groupby("run_id")]
        aligned = stats.align_curves([d["env_steps"] for d in per_run], [d[value_of[start]] for d in per_run], grid)
        band = stats.curve_intervals(aligned, grid, "iqm", n_boot=n_boot, seed=seed, confidence=CONFIDENCE)
        bands.append(band.assign(start=start, label=label))
    return pd.concat(bands, ignore_index=True)


# --------------------------------------------------------------------------- comparisons


def equivalence_margins(start_returns: Mapping[str, Sequence[float]], starts: Sequence[str],
                        scratch_level: float, fraction: float = EQUIVALENCE_FRACTION) -> dict[str, float]:
    """Each start condition's equivalence margin: ``fraction`` of its start networks' median return, or
    of ``scratch_level`` (the highest return level) from scratch.

    Example:
        >>> equivalence_margins({"finetune": [1000.0, 3000.0, 2000.0]}, ["finetune", "scratch"], 2000.0)
        {'finetune': 200.0, 'scratch': 200.0}
    """
    return {s: fraction * (scratch_level if s == "scratch" else float(np.median(list(start_returns[s]))))
            for s in starts}


def comparison_table(scores: Mapping[Key, Sequence[float]], pairs: Sequence[tuple[str, str, str]],
                     margins: Mapping[str, float], *, primary: tuple[str, str], first: str = "first",
                     alpha: float = FAMILY_ALPHA, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """One family of paired comparisons of final scores, with the verdict rule.

    Each ``(start, a, b)`` compares the IQM of ``scores[(start, a)]`` with that of ``scores[(start, b)]``
    (runs paired by replicate); the family's tests are Holm-adjusted at ``alpha``, and "equivalent"
    needs an equivalence test within ``margins[start]`` (:func:`stats.compare_family`, whose verdict
    is ``better``, ``worse``, ``equivalent`` or ``inconclusive``).

    Returns:
        One row per pair: ``start``, ``<first>`` (a), ``vs`` (b), ``primary``, the difference with its
        Holm interval, margin, TOST interval, adjusted p-values, ``P(<first> > other) [95% CI]``,
        ``verdict``, and the objects ``diff`` (:class:`stats.Comparison`) and ``poi`` (:class:`stats.Interval`)
        that :func:`comparison_records` drops.

    Example:
        >>> y = np.arange(10.0)
        >>> t = comparison_table({("s", "a"): y + 50, ("s", "b"): y}, [("s", "a", "b")], {"s": 5.0},
        ...                      primary=("a", "b"), n_boot=200)
        >>> t[["first", "vs", "primary", "verdict"]].values.tolist()
        [['a', 'b', True, 'better']]
    """
    family = stats.compare_family([(scores[(s, a)], scores[(s, b)]) for s, a, b in pairs],
                                  [margins[s] for s, _, _ in pairs], "iqm", alpha=alpha, paired=True,
                                  n_boot=n_boot, seed=seed)
    rows = []
    for (start, a_label, b_label), c in zip(pairs, family):
        poi = stats.probability_of_improvement_interval(scores[(start, a_label)], scores[(start, b_label)],
                                                        n_boot=n_boot, seed=seed)
        rows.append({"start": start, first: a_label, "vs": b_label, "primary": (a_label, b_label) == tuple(primary),
                     "IQM difference [Holm CI]": f"{c.difference.format()} ({c.difference.confidence:.1%})",
                     "margin": f"±{c.margin:.0f}", "TOST interval": f"[{c.equivalence.low:.0f}, {c.equivalence.high:.0f}]",
                     "p (Holm)": round(c.p_adjusted, 4), "p equivalence (Holm)": round(c.p_equivalence_adjusted, 4),
                     f"P({first} > other) [95% CI]": poi.format(".2f"), "verdict": c.verdict, "diff": c, "poi": poi})
    return pd.DataFrame(rows)


def comparison_records(table: pd.DataFrame) -> list[dict[str, Any]]:
    """The comparisons as the summary and ``comparisons.csv`` store them (no objects).

    Example:
        >>> comparison_records(pd.DataFrame())
        []
    """
    return table.drop(columns=["diff", "poi"]).to_dict(orient="records") if len(table) else []


def comparison_row(table: pd.DataFrame, start: str, first: str, other: str, *, column: str = "first"):
    """The row of ``first`` against ``other`` in ``start``, or None.

    Example:
        >>> comparison_row(pd.DataFrame(), "scratch", "a", "b") is None
        True
    """
    if not len(table):
        return None
    rows = table[(table.start == start) & (table[column] == first) & (table.vs == other)]
    return rows.iloc[0] if len(rows) else None


def primary_row(row) -> dict[str, Any]:
    """A comparison row as the summary's ``primary.rows`` stores it: plain values, its difference and level."""
    plain = {k: v.item() if isinstance(v, np.generic) else v for k, v in row.items() if k not in ("diff", "poi")}
    return plain | {"difference": interval_dict(row["diff"].difference), "confidence": row["diff"].difference.confidence}


def verdict_heads(first: str, other: str) -> dict[str, str]:
    """What each verdict says of ``first`` against ``other``.

    Example:
        >>> verdict_heads("the latent GA", "the weight-space GA")["worse"]
        'the weight-space GA beat the latent GA'
    """
    return {"better": f"{first} beat {other}", "worse": f"{other} beat {first}",
            "equivalent": f"{first} and {other} were equivalent within the margin",
            "inconclusive": f"{first} and {other} could not be told apart, nor shown equivalent"}


def verdict_sentence(row, *, title: str, context: str, heads: Mapping[str, str], unit: str, family_size: int,
                     n_seeds: int, budget_steps: int) -> str:
    """The sentence a primary comparison's row reads as: its verdict, difference, Holm interval, margin and
    probability of improvement.

    Example:
        >>> d = stats.Comparison(stats.Interval(12.0, 2.0, 20.0, 0.975), stats.Interval(12.0, 4.0, 18.0), 10.0,
        ...                      0.01, 0.02, 0.5, 0.5, "better")
        >>> verdict_sentence({"diff": d, "poi": stats.Interval(0.8, 0.6, 1.0)}, title="from scratch", context="both GAs",
        ...                  heads=verdict_heads("A", "B"), unit="return", family_size=3, n_seeds=5, budget_steps=1000)[:62]
        'From scratch, primary comparison (both GAs), A beat B: the IQM'
    """
    c = row["diff"]
    d = c.difference
    return (f"{title.capitalize()}, primary comparison ({context}), {heads[c.verdict]}: the IQM of the "
            f"final {unit} differs by {d.point:+.0f} (Holm-adjusted {d.confidence:.1%} CI {d.low:+.0f} to {d.high:+.0f}, "
            f"family of {family_size}; equivalence margin ±{c.margin:.0f}; P(latent > weights) = {row['poi'].point:.2f}) "
            f"over {n_seeds} seeds at {budget_steps:,} env steps.")


def verdict_counts_sentence(table: pd.DataFrame, *, alpha: float = FAMILY_ALPHA, first: str = "the latent genome",
                            other: str = "its comparator") -> str:
    """How a family's verdicts split.

    Example:
        >>> verdict_counts_sentence(pd.DataFrame({"verdict": ["better", "inconclusive"]}))
        'with the family-wise error held at 5% (Holm) over 2 comparisons, 1 favour the latent genome, 0 its comparator, 0 are equivalent within the margin and 1 are inconclusive'
    """
    counts = table["verdict"].value_counts() if len(table) else pd.Series(dtype=int)
    return (f"with the family-wise error held at {alpha:.0%} (Holm) over {len(table)} comparisons, "
            f"{int(counts.get('better', 0))} favour {first}, {int(counts.get('worse', 0))} {other}, "
            f"{int(counts.get('equivalent', 0))} are equivalent within the margin and "
            f"{int(counts.get('inconclusive', 0))} are inconclusive")


def latent_comparison_pairs(labels_of: Mapping[str, Sequence[str]]) -> list[tuple[str, str, str]]:
    """Stage 4's family: every latent genome's run against each of its comparators in the same start condition.

    The comparators of an exact-start latent label are the weight-space GA, the PCA, random and DCT controls of
    the same method and layers (exact starts too) and its own decoded-start ablation (fine-tuning only); those
    of a decoded-start label are the weight-space GA, the weight-space GA from the same decoded network
    (``ga/weights@<genome>``) and the decoded controls. Comparators not in ``labels_of[start]`` are left out.

    Args:
        labels_of: per start condition, the labels that ran there.

    Returns:
        ``(start, latent label, comparator)`` triples, in the order of ``labels_of``.

    Example:
        >>> latent_comparison_pairs({"finetune": ["ga/weights", "ga/latent:all", "ga/pca:all", "ga/latent:all~decoded"]})
        [('finetune', 'ga/latent:all', 'ga/weights'), ('finetune', 'ga/latent:all', 'ga/pca:all'), ('finetune', 'ga/latent:all', 'ga/latent:all~decoded'), ('finetune', 'ga/latent:all~decoded', 'ga/weights')]
    """
    def comparators(label: str, start: str) -> list[str]:
        method, name = label.split("/", 1)
        genome, mode = gen.split_start_mode(name)
        layers = gen.parse_genome_name(genome)[1]
        marker = "" if mode == "exact" else "~decoded"
        out = ["ga/weights"] + ([f"ga/weights@{genome}"] if mode == "decoded" else [])
        out += [f"{method}/{kind}:{layers}{marker}" for kind in ("pca", "random", "dct")]
        out += [f"{label}~decoded"] if mode == "exact" and start != "scratch" else []  # what decoding the start costs
        return [c for c in out if c in labels_of[start] and c != label]

    return [(start, label, other) for start, labels in labels_of.items() for label in labels
            if not gen.is_start_control(label) and gen.parse_genome_name(label.split("/", 1)[1])[0] == "latent"
            for other in comparators(label, start)]


def hybrid_pairs(variants: Sequence[str], primary: tuple[str, str], scores: Mapping[Key, Any]) -> list[tuple[str, str, str]]:
    """Stage 5's family, in every start condition where both sides have ``scores``: the latent hybrid (the primary
    one, else the first ``cerl/latent...`` variant) against the weight-space hybrid, TD3 alone and evolution alone;
    every other latent hybrid (e.g. ``~decoded``) against the weight-space hybrid; the weight-space hybrid against
    TD3 alone and evolution alone.

    Returns:
        ``(start, first, other)`` triples, start by start.

    Example:
        >>> scores = {("s", v): [] for v in ["cerl/weights", "cerl/latent:all", "cerl/latent:all~decoded", "td3"]}
        >>> hybrid_pairs([v for _, v in scores], ("cerl/latent:all", "cerl/weights"), scores)[:3]
        [('s', 'cerl/latent:all', 'cerl/weights'), ('s', 'cerl/latent:all', 'td3'), ('s', 'cerl/latent:all~decoded', 'cerl/weights')]
    """
    latent = hybrid_latent_label(variants, primary)
    pairs = [(latent, other) for other in ("cerl/weights", "td3", "evolution")] if latent else []
    pairs += [(v, "cerl/weights") for v in variants if v.startswith("cerl/latent") and v != latent]
    pairs += [("cerl/weights", "td3"), ("cerl/weights", "evolution")]
    starts = dict.fromkeys(start for start, _ in scores)
    return [(s, a, b) for s in starts for a, b in pairs if (s, a) in scores and (s, b) in scores]


def hybrid_latent_label(variants: Sequence[str], primary: tuple[str, str]) -> str | None:
    """The latent hybrid stage 5's verdicts are about: the primary comparison's, else the first latent hybrid run.

    Example:
        >>> hybrid_latent_label(["cerl/weights", "cerl/latent:all~decoded"], ("cerl/latent:all", "cerl/weights"))
        'cerl/latent:all~decoded'
    """
    return primary[0] if primary[0] in variants else next((v for v in variants if v.startswith("cerl/latent")), None)


def primary_verdicts(table: pd.DataFrame, starts: Sequence[str], pair: tuple[str, str], *, heads: Mapping[str, str],
                     context: Mapping[str, str], titles: Mapping[str, str], missing: str, n_seeds: int,
                     budget_steps: int, column: str = "first") -> dict[str, str]:
    """The primary comparison's verdict sentence (:func:`verdict_sentence`) in each start condition, or that it was
    not measured there.

    Args:
        table: the family (:func:`comparison_table`), whose first label sits in ``column``.
        pair: ``(first, other)`` labels of the primary comparison.
        context: per start condition, the comparison's context in prose.
        titles: each start condition's name in prose.
        missing: why it was not measured, in the sentence that says so.

    Example:
        >>> primary_verdicts(pd.DataFrame(), ["scratch"], ("a", "b"), heads={}, context={}, titles={"scratch": "from scratch"},
        ...                  missing="the grid lacks a", n_seeds=5, budget_steps=10)
        {'scratch': 'From scratch: not measured (the grid lacks a).'}
    """
    verdicts = {}
    for start in starts:
        row = comparison_row(table, start, *pair, column=column)
        verdicts[start] = (f"{titles[start].capitalize()}: not measured ({missing})." if row is None else verdict_sentence(
            row, title=titles[start], context=context[start], heads=heads, unit="return" if start == "scratch" else "gain",
            family_size=len(table), n_seeds=n_seeds, budget_steps=budget_steps))
    return verdicts


def primary_summary(table: pd.DataFrame, starts: Sequence[str], pair: tuple[str, str], primary: tuple[str, str],
                    margins: Mapping[str, float], *, column: str = "first") -> dict[str, Any]:
    """The summary's ``primary`` block: the comparison named before running, the thresholds, the margins, the
    family's size and, per start condition where it was measured, the row of ``pair`` (:func:`primary_row`).

    Example:
        >>> primary_summary(pd.DataFrame(), ["scratch"], ("a", "b"), ("a", "b"), {"scratch": 200.0})["rows"]
        {}
    """
    rows = {s: primary_row(r) for s in starts if (r := comparison_row(table, s, *pair, column=column)) is not None}
    return {"comparison": list(primary), "alpha": FAMILY_ALPHA, "equivalence_fraction": EQUIVALENCE_FRACTION,
            "margins": dict(margins), "family_size": len(table), "rows": rows}


def paired_comparison(scores: Mapping[Key, Sequence[float]], table: pd.DataFrame, starts: Sequence[str],
                      pair: tuple[str, str], *, column: str = "first") -> pd.DataFrame:
    """What the primary comparison's figure draws, per start condition where it was measured: both labels' per-run
    final scores (paired by replicate), the IQM difference with its Holm-level interval, the TOST interval, the
    equivalence margin and the verdict, all as the comparisons ``table`` computed them.

    Returns:
        One row per start: ``start, first, other, first_scores, other_scores`` (arrays), ``difference, low, high,
        confidence`` (the Holm interval), ``tost_low, tost_high, margin, verdict``.

    Example:
        >>> y = np.arange(10.0)
        >>> s = {("s", "a"): y + 50, ("s", "b"): y}
        >>> t = comparison_table(s, [("s", "a", "b")], {"s": 5.0}, primary=("a", "b"), n_boot=200)
        >>> f = paired_comparison(s, t, ["s", "other"], ("a", "b"))
        >>> f[["start", "difference", "margin", "verdict"]].values.tolist()
        [['s', 50.0, 5.0, 'better']]
    """
    rows = []
    for start in starts:
        row = comparison_row(table, start, *pair, column=column)
        if row is None:
            continue
        c = row["diff"]
        rows.append({"start": start, "first": pair[0], "other": pair[1],
                     "first_scores": np.asarray(scores[(start, pair[0])], float),
                     "other_scores": np.asarray(scores[(start, pair[1])], float),
                     "difference": c.difference.point, "low": c.difference.low, "high": c.difference.high,
                     "confidence": c.difference.confidence, "tost_low": c.equivalence.low,
                     "tost_high": c.equivalence.high, "margin": c.margin, "verdict": c.verdict})
    return pd.DataFrame(rows)


def best_label(block: Mapping[str, Any], start: str, eligible: Callable[[str], bool] = lambda label: True):
    """The label with the highest final IQM in one start condition of a summary's ``results`` block (either form,
    see :func:`iter_results`), among the ``eligible`` ones; None if there is none.

    Returns:
        ``(label, iqm point)`` or None.

    Example:
        >>> block = {"finetune": {"ga/weights": {"iqm": {"point": 5.0}}, "ga/pca:all": {"iqm": {"point": 9.0}}}}
        >>> best_label(block, "finetune"), best_label(block, "finetune", lambda l: "pca" not in l), best_label(block, "scratch")
        (('ga/pca:all', 9.0), ('ga/weights', 5.0), None)
    """
    scored = {label: entry["iqm"]["point"] for s, label, entry in iter_results(block) if s == start and eligible(label)}
    if not scored:
        return None
    label = max(scored, key=scored.get)
    return label, scored[label]


def evolution_alone(block: Mapping[str, Any], start: str, named: str = "best") -> tuple[str, str]:
    """Stage 5's evolution alone in one start condition, and why: ``named`` when it names a ``method/genome``; else
    stage 4's best exact-start label by final IQM (from its summary's ``results`` block; a ``weights@`` control or a
    decoded-start ablation starts elsewhere, so neither is eligible), or ``ga/weights`` where stage 4 did not run it.

    Example:
        >>> block = {"finetune": {"ga/weights": {"iqm": {"point": 5.0}}, "ga/latent:all~decoded": {"iqm": {"point": 9.0}}}}
        >>> evolution_alone(block, "finetune"), evolution_alone(block, "scratch")[0], evolution_alone(block, "finetune", "cma/pca:all")[0]
        (('ga/weights', "stage 4's best by final IQM (5.0)"), 'ga/weights', 'cma/pca:all')
    """
    if named != "best":
        return named, "named by evolution_alone"
    best = best_label(block, start, lambda label: not gen.is_start_control(label)
                      and gen.split_start_mode(label.rsplit("/", 1)[1])[1] == "exact")
    if best is None:
        return "ga/weights", "stage 4 did not run this start: ga/weights"
    return best[0], f"stage 4's best by final IQM ({best[1]:.1f})"


def zoo_cost(data_summary: Mapping[str, Any], ae_summary: Mapping[str, Any], td3_curves: pd.DataFrame) -> dict[str, Any]:
    """What the zoo and the autoencoders cost before a zoo-based genome's first step: the zoo's TD3 env steps (the
    last step of each run's curve, summed), its core-hours, and the autoencoders' core-hours (training wall time
    times torch threads).

    Example:
        >>> c = zoo_cost({"train_core_hours": 2.0}, {"all_training_wall_seconds": 1800.0, "torch_threads": 2},
        ...              pd.DataFrame({"run": [0, 0, 1], "step": [10, 20, 5]}))
        >>> c["env_steps"], c["td3_core_hours"], c["autoencoder_core_hours"]
        (25, 2.0, 1.0)
    """
    return {"env_steps": int(td3_curves.groupby("run")["step"].max().sum()),
            "td3_core_hours": float(data_summary.get("train_core_hours", float("nan"))),
            "autoencoder_core_hours": float(ae_summary.get("all_training_wall_seconds", float("nan")))
            * ae_summary.get("torch_threads", 1) / 3600}


def zoo_cost_sentence(cost: Mapping[str, Any], *, note: bool = False) -> str:
    """:func:`zoo_cost` in prose: for the text, or, with ``note``, the figure's note of what was paid before step 0.

    Example:
        >>> c = {"env_steps": 25000, "td3_core_hours": 2.0, "autoencoder_core_hours": 1.0}
        >>> zoo_cost_sentence(c)
        '25,000 env steps and 2.00 core-hours of TD3, plus 1.00 core-hours of autoencoder training'
        >>> zoo_cost_sentence(c, note=True)
        'paid before step 0 by every zoo-based genome: the zoo, 25k env steps, 2.00 core-h (TD3); the autoencoders, 1.00 core-h'
    """
    steps, td3, ae = cost["env_steps"], cost["td3_core_hours"], cost["autoencoder_core_hours"]
    if note:
        return (f"paid before step 0 by every zoo-based genome: the zoo, {steps / 1e3:,.0f}k env steps, "
                f"{td3:.2f} core-h (TD3); the autoencoders, {ae:.2f} core-h")
    return f"{steps:,} env steps and {td3:.2f} core-hours of TD3, plus {ae:.2f} core-hours of autoencoder training"


def decoded_start_returns(curves: pd.DataFrame) -> pd.Series:
    """What each fine-tuning label's genome made of the start networks before any step: the median over runs of
    the return at its first record (0 env steps), by ``(start, label)``.

    Example:
        >>> c = pd.DataFrame({"start": ["finetune", "finetune", "scratch"], "label": "ga", "env_steps": [0, 9, 0],
        ...                   "champion_return": [3.0, 5.0, 1.0]})
        >>> decoded_start_returns(c).to_dict()
        {('finetune', 'ga'): 3.0}
    """
    first = curves[(curves.start != "scratch") & (curves.env_steps == 0)]
    return first.groupby(["start", "label"])["champion_return"].median().rename("decoded start return (median)")


# --------------------------------------------------------------------------- gains, cost, sources, migrations


def add_gain(runs: pd.DataFrame, curves: pd.DataFrame, start_return: Mapping[tuple[str, int], float],
             final: str = "final_return") -> tuple[pd.DataFrame, pd.DataFrame]:
    """The run and curve tables with each run's start return and gain over it (NaN from scratch).

    Args:
        runs: one row per run (``run_id, start, replicate`` and the ``final`` column).
        curves: one row per record (``run_id, champion_return``).
        start_return: ``(start, replicate) -> the start network's return`` (fine-tuning starts only).

    Returns:
        ``runs`` with ``start_return``, ``gain`` (``final`` minus it) and ``relative_gain`` (over its magnitude),
        and ``curves`` with ``start_return`` and ``gain``.

    Example:
        >>> runs = pd.DataFrame({"run_id": ["a", "b"], "start": ["finetune", "scratch"], "replicate": [0, 0],
        ...                      "final_return": [150.0, 7.0]})
        >>> curves = pd.DataFrame({"run_id": ["a", "a", "b"], "champion_return": [100.0, 150.0, 7.0]})
        >>> r, c = add_gain(runs, curves, {("finetune", 0): 100.0})
        >>> r.gain.tolist()[0], r.relative_gain.tolist()[0], c.gain.tolist()[:2]
        (50.0, 0.5, [0.0, 50.0])
    """
    runs = runs.copy()
    runs["start_return"] = [start_return.get((s, r), np.nan) for s, r in zip(runs["start"], runs["replicate"])]
    runs["gain"] = runs[final] - runs["start_return"]
    runs["relative_gain"] = runs["gain"] / runs["start_return"].abs()
    curves = curves.merge(runs[["run_id", "start_return"]], on="run_id")
    curves["gain"] = curves["champion_return"] - curves["start_return"]
    return runs, curves


def sessions_sentence(session_wall_seconds: float, compute_seconds: pd.Series) -> tuple[float, str]:
    """The compute of runs that several sessions advanced: the sum of each run's recorded seconds over every
    session (NaN: a run advanced before its times were kept, left out and counted), and the sentence saying so.

    Example:
        >>> sessions_sentence(60.0, pd.Series([120.0, float("nan")]))
        (120.0, 'The evolution took 1.0 min in the session that finished it and 2.0 min summed over every session that advanced its runs (1 runs advanced before the suite kept their times are not counted).')
    """
    accounted = compute_seconds.notna()
    total = float(compute_seconds[accounted].sum())
    missing = int((~accounted).sum())
    return total, (f"The evolution took {session_wall_seconds / 60:.1f} min in the session that finished it and "
                   f"{total / 60:.1f} min summed over every session that advanced its runs"
                   + (f" ({missing} runs advanced before the suite kept their times are not counted)" if missing else "") + ".")


def score_at_budget(runs: pd.DataFrame, curves: pd.DataFrame, budget_steps: int) -> pd.DataFrame:
    """The run table with what each run is scored on: the champion known at ``budget_steps`` (the last curve
    record at or below it: ``steps_at_budget``, ``return_at_budget``), and the steps spent after it
    (``overrun_steps``, never scored).

    Example:
        >>> runs = pd.DataFrame({"run_id": ["a"], "env_steps": [130]})
        >>> curves = pd.DataFrame({"run_id": "a", "env_steps": [0, 60, 130], "champion_return": [1.0, 2.0, 3.0]})
        >>> score_at_budget(runs, curves, 100)[["overrun_steps", "steps_at_budget", "return_at_budget"]].values.tolist()
        [[30.0, 60.0, 2.0]]
    """
    from .cerl import champion_at  # the hybrid's scoring rule

    runs = runs.copy()
    runs["overrun_steps"] = runs["env_steps"] - budget_steps  # spent after the budget: never scored
    at = {rid: champion_at(d.sort_values("env_steps").to_dict("records"), budget_steps) for rid, d in curves.groupby("run_id")}
    runs["steps_at_budget"] = [at[rid]["env_steps"] for rid in runs["run_id"]]
    runs["return_at_budget"] = [at[rid]["champion_return"] for rid in runs["run_id"]]
    return runs


RUN_COLUMNS = ["run_id", "label", "start", "replicate", "start_network", "generations", "env_steps", "report_env_steps",
               "final_return", "final_return_std"]
"""The columns every kind of stage 5 run shares (the hybrid, TD3 alone and evolution alone)."""


def variant_tables(hybrid_runs: pd.DataFrame, hybrid_curves: pd.DataFrame, evolution_runs: pd.DataFrame | None = None,
                   evolution_curves: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stage 5's one run table and one curve table over every variant: the hybrid's and TD3 alone's runs
    (:func:`nnae_utils.cerl.run_table`, ``curve_table``) and evolution alone's (:func:`nnae_utils.evolution.run_table`,
    ``curve_table``), whose champions all come from the population. An evolution run's ``wall_s`` and ``cpu_s`` are
    its share of the lockstep rounds that advanced it over all its sessions (``compute_seconds``, ``cpu_seconds``),
    so a forced rerun that finds it finished still reports what it cost.

    Example:
        >>> h = pd.DataFrame([dict.fromkeys(RUN_COLUMNS, 0) | {"run_id": "h", "wall_s": 1.0, "cpu_s": 2.0, "migrations": 3,
        ...                   "population_steps": 0, "learner_steps": 0, "elite_steps": 0, "probe_env_steps": 0, "buffer_n_added": 0}])
        >>> e = pd.DataFrame([dict.fromkeys(RUN_COLUMNS, 0) | {"run_id": "e", "compute_seconds": 4.0, "cpu_seconds": 5.0}])
        >>> c = pd.DataFrame({"run_id": ["e"], "label": "evolution", "start": "s", "replicate": 0, "generation": 0,
        ...                   "env_steps": 0, "champion_return": 1.0})
        >>> runs, curves = variant_tables(h, c.assign(run_id="h"), e, c)
        >>> runs[["run_id", "wall_s", "cpu_s"]].values.tolist(), curves.champion_source.tolist()
        ([['h', 1.0, 2.0], ['e', 4.0, 5.0]], [nan, 'population'])
    """
    runs = hybrid_runs[RUN_COLUMNS + ["wall_s", "cpu_s", "migrations", "population_steps", "learner_steps", "elite_steps",
                                      "probe_env_steps", "buffer_n_added"]].copy()
    curve_columns = ["run_id", "label", "start", "replicate", "generation", "env_steps", "champion_return"]
    curves = hybrid_curves.reindex(columns=curve_columns + ["champion_source", "champion_lineage"]).copy()  # lineage: where recorded
    if evolution_runs is not None and len(evolution_runs):
        alone = evolution_runs[RUN_COLUMNS].assign(wall_s=evolution_runs["compute_seconds"],
                                                   cpu_s=evolution_runs["cpu_seconds"])
        runs = pd.concat([runs, alone], ignore_index=True)
        curves = pd.concat([curves, evolution_curves[curve_columns].assign(champion_source="population")], ignore_index=True)
    return runs, curves


def cost_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Wall time and core-hours per ``(start, label)`` from the runs' ``wall_s``, ``cpu_s`` and ``env_steps``.

    Example:
        >>> runs = pd.DataFrame({"start": "s", "label": "td3", "run_id": ["a", "b"], "wall_s": [60.0, 120.0],
        ...                      "cpu_s": [3600.0, 3600.0], "env_steps": [1000, 1000]})
        >>> cost_table(runs).loc[("s", "td3"), ["wall min per run", "core-hours", "core-seconds per 1k env steps"]].tolist()
        [1.5, 2.0, 3600.0]
    """
    cost = runs.groupby(["start", "label"], sort=False).agg(runs=("run_id", "count"), wall_s=("wall_s", "sum"),
                                                           cpu_s=("cpu_s", "sum"), mean_env=("env_steps", "mean"))
    cost["wall min (all runs)"] = cost["wall_s"] / 60
    cost["wall min per run"] = cost["wall_s"] / cost["runs"] / 60
    cost["core-hours"] = cost["cpu_s"] / 3600
    cost["core-seconds per 1k env steps"] = cost["cpu_s"] / (cost["runs"] * cost["mean_env"] / 1e3)
    return cost


def champion_sources(curves: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Where each generation's champion came from, and its lineage in the hybrid.

    Args:
        curves: one row per generation (``start, label, generation, champion_source``, and
            ``champion_lineage`` where runs record it); generation 0 (the start) is left out.

    Returns:
        ``shares`` (``start, label, source, n, share``: ``learner 1`` counts as ``learner``) and the
        lineage table (``(start, label)`` by lineage: the share of generations whose champion is of the
        migrant or the population line; hybrid runs, ``cerl/...``, only; empty when none recorded it).

    Example:
        >>> c = pd.DataFrame({"start": "s", "label": "cerl/w", "generation": [0, 1, 2, 3],
        ...                   "champion_source": ["start", "learner 0", "learner 1", "population"],
        ...                   "champion_lineage": [None, "migrant line", "migrant line", "population line"]})
        >>> shares, lineage = champion_sources(c)
        >>> shares.set_index("source").share.round(2).to_dict(), lineage.round(2).values.tolist()
        ({'learner': 0.67, 'population': 0.33}, [[0.67, 0.33]])
    """
    src = curves[curves.generation > 0].copy()
    src["source"] = src["champion_source"].str.replace(r" \d+$", "", regex=True)
    shares = src.groupby(["start", "label", "source"]).size().rename("n").reset_index()
    shares["share"] = shares["n"] / shares.groupby(["start", "label"])["n"].transform("sum")
    if "champion_lineage" not in src:  # hybrid runs record it (evolution alone has no migrants)
        return shares, pd.DataFrame()
    hybrid = src[src.label.str.startswith("cerl/")]
    lineage = (hybrid.groupby(["start", "label"])["champion_lineage"].value_counts(normalize=True)
               .rename("share").reset_index())
    return shares, lineage.pivot_table(index=["start", "label"], columns="champion_lineage", values="share", fill_value=0)


def migration_tables(migrations: pd.DataFrame, mutation_change: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """What migrants lose in each hybrid: per ``(start, label)``, the functional distance between a migrating
    actor and what the population holds, the probed returns, the migrant's fitness rank; and whether it
    entered exactly, with its return before and after (``= before (bitwise)`` where every one entered exactly).

    Args:
        migrations: one row per migration (``start, label, learner, distance, actor_return, decoded_return,
            fitness_rank`` and ``exact`` where recorded; else exact means distance 0).
        mutation_change: the action change of one mutation, the distances' yardstick.

    Example:
        >>> m = pd.DataFrame({"start": "s", "label": "cerl/latent", "learner": [0, 0], "distance": [0.0, 0.1],
        ...                   "actor_return": [10.0, 12.0], "decoded_return": [10.0, 2.0], "fitness_rank": [0, 3]})
        >>> loss, survival = migration_tables(m, 0.05)
        >>> loss.loc[("s", "cerl/latent"), ["distance_max", "return_lost_median", "best_rank_share"]].tolist()
        [0.1, 5.0, 0.5]
        >>> survival.exact_share.tolist()
        [0.5]
    """
    if not len(migrations):
        return pd.DataFrame(), pd.DataFrame()
    migrations = migrations.assign(return_lost=migrations["actor_return"] - migrations["decoded_return"])
    loss = migrations.groupby(["start", "label"]).agg(
        migrations=("distance", "size"), distance_median=("distance", "median"), distance_max=("distance", "max"),
        actor_return=("actor_return", "mean"), decoded_return=("decoded_return", "mean"),
        return_lost_median=("return_lost", "median"),
        best_rank_share=("fitness_rank", lambda r: float((r.dropna() == 0).mean()) if r.notna().any() else np.nan),
        median_rank=("fitness_rank", "median"))
    loss["distance / one mutation"] = loss["distance_median"] / mutation_change
    # the return before and after entering: measured where the encoding is lossy; equal by construction
    # (the population holds the actor bitwise, distance 0) where it is exact
    exact = migrations["exact"] if "exact" in migrations else migrations["distance"] == 0
    survival = migrations.assign(exact=exact.fillna(migrations["distance"] == 0).astype(bool)).groupby(["start", "label"]).agg(
        migrations=("learner", "size"), exact_share=("exact", "mean"),
        return_before=("actor_return", "median"), return_after=("decoded_return", "median"))
    survival["return_after"] = survival["return_after"].astype(object)
    survival.loc[survival.exact_share == 1.0, "return_after"] = "= before (bitwise)"
    return loss, survival


def migration_loss_sentence(migrations: pd.DataFrame, mutation_change: float) -> str:
    """What encoding a migrant into the latent space cost, over the lossy migrations (distance > 0).

    Example:
        >>> m = pd.DataFrame({"distance": [0.0, 0.2], "actor_return": [5.0, 100.0], "decoded_return": [5.0, 40.0]})
        >>> migration_loss_sentence(m, 0.05)
        'Encoding a migrating actor into the latent space moved its actions by a median 0.200 (mean L2 over the stage-1 states; one mutation moves them by 0.05); its return went from 100 to 40 (medians over 1 probed migrants).'
    """
    lossy = migrations[migrations["distance"] > 0] if len(migrations) else migrations
    if not len(lossy):
        return "No lossy migration was measured in this run."
    lost = lossy.dropna(subset=["actor_return", "decoded_return"])
    lost_txt = (f"; its return went from {lost['actor_return'].median():.0f} to {lost['decoded_return'].median():.0f} "
                f"(medians over {len(lost)} probed migrants)" if len(lost) else "")
    return (f"Encoding a migrating actor into the latent space moved its actions by a median "
            f"{lossy['distance'].median():.3f} (mean L2 over the stage-1 states; one mutation moves them by "
            f"{mutation_change:g}){lost_txt}.")


def champion_share_sentence(lineage: pd.DataFrame) -> str:
    """The share of generations whose champion descends from a migrant, per hybrid.

    Example:
        >>> t = pd.DataFrame({"migrant line": [0.25]}, index=pd.MultiIndex.from_tuples([("s", "cerl/w")]))
        >>> champion_share_sentence(t), champion_share_sentence(pd.DataFrame())
        ('Share of generations whose champion descends from a migrant: cerl/w (s) 25%.', 'No champion descended from a migrant.')
    """
    if not len(lineage) or "migrant line" not in lineage:
        return "No champion descended from a migrant."
    shares = "; ".join(f"{label} ({s}) {r.get('migrant line', 0.0):.0%}" for (s, label), r in lineage.to_dict(orient="index").items())
    return f"Share of generations whose champion descends from a migrant: {shares}."


# --------------------------------------------------------------------------- champions


def _none_if_nan(x):
    return None if x is None or (isinstance(x, float) and np.isnan(x)) else x


def finite_or_none(x) -> float | None:
    """A number for JSON: a float, or None where it is missing, NaN or infinite.

    Example:
        >>> finite_or_none(np.float64(2.5)), finite_or_none(float("nan")), finite_or_none(None)
        (2.5, None, None)
    """
    return None if x is None or (isinstance(x, float) and not np.isfinite(x)) else float(x)


def network_record(net_id: str, *, return_mean: float, return_std: float, episode_returns, eval_seeds,
                   max_episode_steps: int, provenance: Mapping[str, Any], episodes: int | None = None) -> dict[str, Any]:
    """One ``index.json`` record of a scored network (:func:`policies.write_index`'s format).

    Example:
        >>> r = network_record("n", return_mean=1.0, return_std=0.5, episode_returns=[0.5, 1.5], eval_seeds=[7, 8],
        ...                    max_episode_steps=1000, provenance={"stage": "x"})
        >>> r["episodes"], r["episode_returns"], r["provenance"]
        (2, [0.5, 1.5], {'stage': 'x'})
    """
    returns = np.asarray(episode_returns, float)
    return {"id": net_id, "return_mean": return_mean, "return_std": return_std,
            "episodes": len(returns) if episodes is None else episodes, "eval_seeds": list(eval_seeds),
            "max_episode_steps": max_episode_steps, "episode_returns": np.round(returns, 3).tolist(),
            "provenance": dict(provenance)}


def champion_record(row, *, stage: str, method: str, encoding: str | None, config, episode_returns, eval_seeds,
                    budget_steps: int, max_episode_steps: int, run_dir: str, code_revision: str | None,
                    **provenance: Any) -> dict[str, Any]:
    """The ``index.json`` record of a run's final champion, the one builder of stages 4 and 5.

    Args:
        row: the run's row of the stage's run table (``run_id, final_return, final_return_std, start,
            replicate, start_network, start_return, gain, env_steps, generations, report_env_steps``).
        config: the run's config (a dataclass; tuples become lists).
        provenance: more provenance fields of this kind of run (e.g. ``champion_source``).

    Example:
        >>> import types, dataclasses
        >>> row = types.SimpleNamespace(run_id="r", final_return=10.0, final_return_std=1.0, start="scratch", replicate=0,
        ...                             start_network=None, start_return=float("nan"), gain=float("nan"), env_steps=900,
        ...                             generations=3, report_env_steps=50)
        >>> @dataclasses.dataclass
        ... class C:
        ...     seed: int = 4
        ...     gammas: tuple = (0.99,)
        >>> rec = champion_record(row, stage="s", method="ga", encoding="weights", config=C(), episode_returns=[10.0],
        ...                       eval_seeds=[1], budget_steps=1000, max_episode_steps=1000, run_dir="runs/x", code_revision=None)
        >>> rec["id"], rec["provenance"]["gain"], rec["provenance"]["seed"], rec["provenance"]["config"]
        ('r', None, 4, {'seed': 4, 'gammas': [0.99]})
    """
    prov = {"stage": stage, "method": method, "encoding": encoding, "start": row.start, "replicate": int(row.replicate),
            "start_network": row.start_network, "start_return": _none_if_nan(row.start_return),
            "gain": _none_if_nan(row.gain), "seed": config.seed, "env_steps": int(row.env_steps),
            "budget_steps": budget_steps, "generations": int(row.generations),
            "report_env_steps": int(row.report_env_steps), "max_episode_steps": max_episode_steps, **provenance,
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(config).items()},
            "run_dir": run_dir, "code_revision": code_revision}
    return network_record(row.run_id, return_mean=row.final_return, return_std=row.final_return_std,
                          episode_returns=episode_returns, eval_seeds=eval_seeds, max_episode_steps=max_episode_steps,
                          provenance=prov)


def genome_table(genomes: Mapping[str, Any], start_mode: Mapping[str, str], sigmas: Mapping[tuple[str, str], float],
                 starts: Sequence[str], n_params: int, *, mode_column: str = "start") -> pd.DataFrame:
    """The genomes of a stage (4 or 5), one row per name: where fine-tuning starts (``mode_column``), size, effective
    size, layers, weights per number (``n_params`` over the size), whether the encoding is built from the zoo, and the
    calibrated ``sigma`` of each start condition (NaN where the name has no runs there).

    Example:
        >>> import types
        >>> g = types.SimpleNamespace(dim=4, effective_dim=3, layers=(0, 2), uses_zoo=True)
        >>> genome_table({"pca:0+2": g}, {"pca:0+2": "exact"}, {("pca:0+2", "finetune"): 0.5}, ["finetune", "scratch"], 40
        ...              ).loc["pca:0+2", ["layers", "weights per number", "sigma (finetune)"]].astype(str).tolist()
        ['0+2', '10.0', '0.5']
    """
    return pd.DataFrame([{
        "genome": name, mode_column: start_mode[name], "size": genome.dim, "effective size": genome.effective_dim,
        "layers": "+".join(map(str, genome.layers)), "weights per number": round(n_params / genome.dim, 1),
        "built from the zoo": genome.uses_zoo, **{f"sigma ({s})": sigmas.get((name, s), np.nan) for s in starts},
    } for name, genome in genomes.items()]).set_index("genome")


def save_champion(folder: str | os.PathLike, net, row, *, metadata: Mapping[str, Any], **record: Any) -> dict[str, Any]:
    """Write a run's final champion ``net`` to ``folder/<run id>.safetensors`` in the network format, ``metadata``
    added to the file's, and return its ``index.json`` record (:func:`champion_record` of ``row`` and ``record``)."""
    net.extra_metadata.update(metadata)
    save_network(Path(folder) / f"{row.run_id}.safetensors", net)
    return champion_record(row, **record)


def migration_summary(loss: pd.DataFrame, survival: pd.DataFrame, lineage: pd.DataFrame) -> dict[str, Any]:
    """The summary's ``migrations``, ``migrant_survival`` and ``champion_lineage`` blocks (:func:`migration_tables`,
    :func:`champion_sources`), each ``{start: {label: entry}}`` with plain numbers (None where missing).

    Example:
        >>> t = pd.DataFrame({"x": [float("nan")]}, index=pd.MultiIndex.from_tuples([("s", "cerl/w")]))
        >>> migration_summary(t, t, pd.DataFrame({"migrant line": [0.5]}, index=t.index))["champion_lineage"]
        {'s': {'cerl/w': {'migrant line': 0.5}}}
    """
    def plain(row):
        return {k: v if isinstance(v, str) else finite_or_none(v) for k, v in row.items()}

    return {"migrations": nest(loss.to_dict(orient="index"), plain),
            "migrant_survival": nest(survival.to_dict(orient="index"), plain),
            "champion_lineage": nest(lineage.to_dict(orient="index"), lambda r: {k: float(v) for k, v in r.items()})}


def save_cerl_champions(folder: str | os.PathLike, runs: Sequence[Any], outcomes: Mapping[str, Any],
                        evolution_runs: Sequence[Any], evolution_outcomes: Mapping[str, Any], run_table: pd.DataFrame, *,
                        spec, **record: Any) -> list[dict[str, Any]]:
    """Stage 5's final champions, written to ``folder`` with an ``index.json``: every hybrid and TD3-alone run (a
    :class:`nnae_utils.cerl.CERLRun`, whose champion is a weight vector; its record names where the champion came
    from and the learners' critic) and every evolution-alone run (its champion a vector of its genome).

    Args:
        outcomes, evolution_outcomes: run id -> :class:`~nnae_utils.cerl.CERLResult` / :class:`~nnae_utils.evolution.RunState`.
        run_table: the stage's run table (``return_at_budget`` and :func:`champion_record`'s columns).
        spec: the networks' architecture (the hybrid's champions are its weight vectors).
        record: :func:`champion_record`'s remaining keyword arguments, shared by every run.

    Returns:
        The records written.
    """
    row_of = {r.run_id: r for r in run_table.itertuples()}
    weights = gen.WeightGenome(spec)
    records = []
    for run in [*runs, *evolution_runs]:
        row, hybrid = row_of[run.run_id], run.run_id in outcomes
        state = outcomes[run.run_id].state if hybrid else evolution_outcomes[run.run_id]
        method = run.info["label"] if hybrid else f"evolution {run.info['evolution']}"
        more = {"return_at_budget": row.return_at_budget}
        if hybrid:  # where the champion came from, and the learners' critic
            more |= {"champion_source": state.curve[-1]["champion_source"] if state.curve else "start",
                     "critic": run.info["critic"]}
        metadata = {"method": method, "start": row.start} | (
            {"champion_source": more["champion_source"]} if hybrid else {"encoding": run.genome.name})
        records.append(save_champion(
            folder, (weights if hybrid else run.genome).decode(state.champion), row, metadata=metadata,
            method=method, encoding=run.genome.name if not hybrid or run.config.pop_size else None, config=run.config,
            episode_returns=state.champion_returns, **record, **more))
    write_index(folder, records)
    return records


def save_migrants(migrations: pd.DataFrame, checkpoint_dirs: Mapping[str, str | os.PathLike], folder: str | os.PathLike,
                  *, probe_seeds, max_episode_steps: int, provenance: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Copy every probed migrant (a learner's actor and its decoded code) of ``migrations`` into ``folder``, in the
    network format with an ``index.json``, so that each network a chapter scores can be re-scored.

    Args:
        migrations: one row per migration (``run_id, generation, learner, env_steps, distance`` and, per role
            ``actor``/``decoded``, ``<role>_file`` in the run's checkpoint folder, ``<role>_return`` and
            ``<role>_episode_returns``); rows without an ``actor_file`` (lossless, or not probed) are skipped.
        checkpoint_dirs: each run's checkpoint folder.
        provenance: fields shared by every record (stage, run folder, code revision).

    Returns:
        The records written (none: no index is written).
    """
    records = []
    for m in migrations.to_dict("records"):
        if not isinstance(m.get("actor_file"), str):
            continue  # a lossless migrant (weight genome), or not probed
        for role in ("actor", "decoded"):
            net_id = f"{m['run_id']}__g{m['generation']:04d}_learner{m['learner']}_{role}"
            save_network(Path(folder) / f"{net_id}.safetensors",
                         load_network(Path(checkpoint_dirs[m["run_id"]]) / m[f"{role}_file"]))
            returns = np.asarray(m[f"{role}_episode_returns"])
            records.append(network_record(
                net_id, return_mean=m[f"{role}_return"], return_std=float(returns.std()), episode_returns=returns,
                eval_seeds=probe_seeds, max_episode_steps=max_episode_steps,
                provenance={"stage": provenance.get("stage"), "role": f"migrant {role}", "run_id": m["run_id"],
                            "generation": int(m["generation"]), "env_steps": int(m["env_steps"]),
                            "learner": int(m["learner"]), "distance": m["distance"],
                            **{k: v for k, v in provenance.items() if k != "stage"}}))
    if records:
        write_index(folder, records)
    return records


def start_check(rows: Sequence[Mapping[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Check that every exact-start run held its start network at delta = 0: bitwise, with the same return.

    Args:
        rows: one per fine-tuning run: ``start, label, start mode`` (``exact`` or ``decoded``), ``bitwise``
            (its start vector decodes to the start network's bytes), ``return at δ = 0`` and ``start network's return``.

    Returns:
        The rows with ``same return``, and a table per ``(start, label, start mode)``: ``runs``, ``bitwise``
        and ``same_return`` (counts), and the median returns at delta = 0 and of the start networks.

    Raises:
        AssertionError: naming the runs where an exact start does not hold its start network.

    Example:
        >>> rows = [{"start": "finetune", "label": "ga/latent:all", "start mode": "exact", "bitwise": True,
        ...          "return at δ = 0": 10.0, "start network's return": 10.0}]
        >>> start_check(rows)[1][["runs", "bitwise", "same_return"]].values.tolist()
        [[1, 1, 1]]
        >>> start_check([{**rows[0], "return at δ = 0": 9.0}])
        Traceback (most recent call last):
        AssertionError: an exact-start genome does not hold its start network at delta = 0: ...
    """
    columns = ["start", "label", "start mode", "bitwise", "return at δ = 0", "start network's return"]
    check = pd.DataFrame(list(rows), columns=columns)
    check["same return"] = check["return at δ = 0"] == check["start network's return"]
    table = check.groupby(["start", "label", "start mode"], sort=False).agg(
        runs=("bitwise", "size"), bitwise=("bitwise", "sum"), same_return=("same return", "sum"),
        median_return_at_0=("return at δ = 0", "median"), median_start_return=("start network's return", "median"))
    exact = check[check["start mode"] == "exact"]
    failed = exact[~(exact["bitwise"].astype(bool) & exact["same return"])]
    if len(failed):
        raise AssertionError("an exact-start genome does not hold its start network at delta = 0: ...\n" + failed.to_string())
    return check, table


def start_check_sentence(check: pd.DataFrame, decoded_start: Mapping[Key, float],
                         start_returns: Mapping[str, Sequence[float]], titles: Mapping[str, str]) -> str:
    """What each genome made of the start networks before the first step: how many exact-start runs held their
    start network (from :func:`start_check`'s rows), and where the GA's decoded-start ablation began.

    Args:
        check: :func:`start_check`'s rows.
        decoded_start: ``(start, label) -> median return at the start vector``.
        start_returns: per fine-tuning start condition, its start networks' returns (in that order).
        titles: each start condition's name in prose.

    Example:
        >>> rows = [{"start": "finetune", "label": "ga/latent:all", "start mode": "exact", "bitwise": True,
        ...          "return at δ = 0": 10.0, "start network's return": 10.0}]
        >>> start_check_sentence(start_check(rows)[0], {("finetune", "ga/latent:all~decoded"): 3.0},
        ...                      {"finetune": [10.0]}, {"finetune": "fine-tuning"})
        'Before the first step, fine-tuning, every exact-start genome held its start network bitwise at δ = 0 in 1 of 1 runs, with its return (median 10), while the decoded-start ablation began at latent:all~decoded 3.'
    """
    lines = []
    for s, returns in start_returns.items():
        exact = check[(check.start == s) & (check["start mode"] == "exact")]
        decoded = {label: v for (st, label), v in decoded_start.items()
                   if st == s and label.startswith("ga/") and label.endswith("~decoded")}
        line = (f"{titles[s]}, every exact-start genome held its start network bitwise at δ = 0 in "
                f"{int((exact['bitwise'] & exact['same return']).sum())} of {len(exact)} runs, with its return "
                f"(median {float(np.median(list(returns))):.0f})")
        if decoded:
            line += ", while the decoded-start ablation began at " + ", ".join(
                f"{label.split('/', 1)[1]} {v:.0f}" for label, v in decoded.items())
        lines.append(line)
    return ("Before the first step, " + "; ".join(lines) + ".") if lines else ""


# --------------------------------------------------------------------------- the summary


def nest(by_key: Mapping[Key, Any], value: Callable[[Any], Any] = lambda v: v) -> dict[str, dict[str, Any]]:
    """``{(start, label): v}`` as the summary stores it: ``{start: {label: value(v)}}``.

    Example:
        >>> nest({("finetune", "ga/weights"): 1, ("scratch", "ga/weights"): 2, ("finetune", "td3"): 3})
        {'finetune': {'ga/weights': 1, 'td3': 3}, 'scratch': {'ga/weights': 2}}
    """
    out: dict[str, dict[str, Any]] = {}
    for (start, label), v in by_key.items():
        out.setdefault(start, {})[label] = value(v)
    return out


def label_summary(final_table: pd.DataFrame, reach: pd.DataFrame, extra: Mapping[Key, Mapping[str, Any]] | None = None,
                  columns: Mapping[str, str] | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    """The summary's ``results`` block: ``{start: {label: {runs, iqm, mean, <columns>, <extra>, "steps_to <level>": ...}}}``,
    ``columns`` naming the entries taken from ``final_table``'s columns (``{entry: column}``; numbers as floats).

    Example:
        >>> t = final_scores({("scratch", "ga"): [1.0, 2.0]}, n_boot=10)
        >>> r = pd.DataFrame([{"start": "scratch", "label": "ga", "return >= 2": stats.Reach(5.0, 1, 2)}]).set_index(["start", "label"])
        >>> block = label_summary(t, r, {("scratch", "ga"): {"mean_env_steps": 9.0}})
        >>> sorted(block["scratch"]["ga"]), block["scratch"]["ga"]["steps_to return >= 2"]["median"]
        (['iqm', 'mean', 'mean_env_steps', 'runs', 'steps_to return >= 2'], 5.0)
    """
    out: dict[Key, dict[str, Any]] = {}
    for row in final_table.itertuples():
        key = (row.start, row.label)
        taken = {name: getattr(row, column) for name, column in (columns or {}).items()}
        entry = {"runs": int(row.runs), "iqm": interval_dict(row.iqm), "mean": interval_dict(row.mean),
                 **{name: v if isinstance(v, str) else float(v) for name, v in taken.items()},
                 **dict((extra or {}).get(key, {}))}
        if key in reach.index:
            for column, r in reach.loc[key].items():
                if isinstance(r, stats.Reach):
                    entry[f"steps_to {column}"] = reach_dict(r)
        out[key] = entry
    return nest(out)


def iter_results(block: Mapping[str, Any]) -> Iterator[tuple[str, str, Mapping[str, Any]]]:
    """``(start, label, entry)`` of a summary's ``results`` block: ``{start: {label: entry}}``, or the older
    ``{"start|label": entry}`` that runs published before it keep.

    Example:
        >>> list(iter_results({"scratch": {"ga": {"runs": 5}}}))
        [('scratch', 'ga', {'runs': 5})]
        >>> list(iter_results({"scratch|ga": {"runs": 5}}))
        [('scratch', 'ga', {'runs': 5})]
    """
    for key, value in block.items():
        if "|" in key:
            start, label = key.split("|", 1)
            yield start, label, value
        else:
            for label, entry in value.items():
                yield key, label, entry
