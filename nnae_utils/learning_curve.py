"""The learning curve over the number of independent train runs (issue 29, item 2).

For each leave-runs-out fold (``splits.json``'s ``folds``, written by :func:`nnae_utils.zoo.run_folds`:
for each ``k``, a few subsets of ``k`` train runs), :func:`fold_curve` trains stage 2's main layer
autoencoders (the same configs and seeds) on the fold's train runs only, under one hidden-unit symmetry
option, and measures them on the same held-out runs. The measure is the held-out functional loss over
that of the fold's own mean layer (1: the code tells nothing about a held-out network beyond the mean
layer; 0: exact). Every fold uses stage 2's train state pool, so only the networks change with ``k``.
Models are trained through :func:`nnae_utils.autoencoders.train_or_reuse_layer_autoencoder`: a rerun
reads back every model it finished (and a fold equal to stage 2's own data reads back stage 2's models
when given stage 2's ``save_dir``).

The interval of each row resamples runs, then networks: the per-network ratio (a held-out network's
loss over the mean layer's loss on that network) goes into :func:`nnae_utils.stats.hierarchical_interval`
with the held-out runs as groups, so each held-out run weighs the same whatever its number of
snapshots. With one or two held-out runs that interval is honest about how little it knows.

:func:`fit_curve` fits the ratio against ``k`` and :func:`k_for_target` says where the fit reaches a
target ratio, or that it is not reached within the fitted range.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from . import autoencoders as ae
from .policies import Network
from .stats import hierarchical_interval

TARGET_RATIO = 0.1
"""The held-out ratio the curve is extrapolated to: a held-out run fitted about as well as the shipped zoo's
train runs are (their functional loss 0.05-0.20 against the mean layer's 1.7-2.0, where decoded layers keep
85-98% of the return)."""

MODELS = ("power", "log")
"""Curve models of :func:`fit_curve`: ``power`` (ratio = c k^-alpha, the default) and ``log`` (ratio = a + b ln k)."""


def folds_from_runs(train_runs: Sequence[Any], sizes: Sequence[int] = (1,), per_size: int = 3, seed: int = 0) -> list[dict[str, Any]]:
    """Folds built from a list of train runs when a zoo's ``splits.json`` has none (the shipped and smoke
    zoos): :func:`nnae_utils.zoo.run_folds` on them (any labels: they are drawn by position)."""
    from .zoo import run_folds

    labels = list(dict.fromkeys(train_runs))
    return [{**f, "runs": [labels[i] for i in f["runs"]]} for f in run_folds(range(len(labels)), sizes, per_size, seed=seed)]


def stage_folds(zoo_splits: Mapping[str, Any], train_runs: Sequence[Any], sizes: Sequence[int], *, per_size: int = 3,
                seed: int = 0) -> tuple[list[dict[str, Any]], str]:
    """Stage 2's learning-curve folds of ``sizes`` train runs, and where they come from: the zoo's
    leave-runs-out folds (``splits.json``, runs labelled ``run<r>``) for the sizes it has, and up to
    ``per_size`` subsets of ``train_runs`` (:func:`folds_from_runs`) for the sizes it has not (all of
    them on a zoo without folds). Raises ``ValueError`` for a size larger than the train runs."""
    too_large = [k for k in sizes if k > len(set(train_runs))]
    if too_large:
        raise ValueError(f"learning_curve_k {too_large} exceed the {len(set(train_runs))} train runs of this zoo")
    zoo_folds = [{**f, "runs": [f"run{r}" for r in f["runs"]]} for f in zoo_splits.get("folds", []) if f["k"] in sizes]
    drawn_sizes = [k for k in sizes if k not in {f["k"] for f in zoo_folds}]
    drawn = folds_from_runs(train_runs, drawn_sizes, per_size=per_size, seed=seed) if drawn_sizes else []
    sources = ([f"the zoo's leave-runs-out folds (splits.json) for k = {sorted({f['k'] for f in zoo_folds})}"] if zoo_folds else []) + \
              ([f"up to {per_size} subsets of the {len(train_runs)} train runs for k = {drawn_sizes}"] if drawn else [])
    return zoo_folds + drawn, "; ".join(sources)


def network_ratios(code: ae.LayerCode, train: ae.LayerData, held: ae.LayerData, *, over_units: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(functional loss, mean-layer loss) of each network of ``held``: the code's, and that of the mean
    layer of ``train``'s networks (``over_units`` as :func:`nnae_utils.autoencoders.mean_layer_loss`)."""
    loss = ae.functional_per_network(code, held)
    mean = ae.mean_layer_loss(train, held, code.layer, over_units=over_units, per_network=True)
    return loss, mean


def run_interval(values: np.ndarray, groups: Sequence[Any], *, n_boot: int = 2000, seed: int = 0):
    """:func:`nnae_utils.stats.hierarchical_interval` of the mean of ``values``, grouped by ``groups`` (runs)."""
    labels = list(dict.fromkeys(groups))
    by_group = [[v for v, g in zip(values, groups) if g == label] for label in labels]
    return hierarchical_interval(by_group, "mean", n_boot=n_boot, seed=seed)


def fold_curve(
    folds: Sequence[Mapping[str, Any]],
    nets: Sequence[Network],
    runs: Sequence[Any],
    *,
    held_out_runs: Sequence[Any],
    configs: Sequence[ae.LayerAEConfig],
    pools: Mapping[str, np.ndarray],
    option: str = "none",
    stop_mask: Sequence[bool] | None = None,
    returns: Sequence[float] | None = None,
    eval_states: int = 512,
    seed: int = 0,
    save_dir,
    jobs: int = 1,
    torch_threads: int = 1,
    n_boot: int = 2000,
    progress: bool = False,
    models: dict | None = None,
) -> pd.DataFrame:
    """Train ``configs`` on each fold's train runs and measure them on ``held_out_runs``: a tidy table.

    Args:
        folds: ``{"k", "fold", "runs"}`` records (``splits.json``'s ``folds``, or :func:`folds_from_runs`).
        nets, runs: every network and the run label of each (a DAgger student: a label of its own).
        held_out_runs: the runs every fold is tested on (never a train run of any fold).
        configs: stage 2's main configs (one per layer and form).
        pools: ``{"train", "validation"}`` state pools (:func:`nnae_utils.autoencoders.split_states`).
        option: the symmetry option (:data:`nnae_utils.autoencoders.SYMMETRIES`).
        stop_mask: per network, True for a snapshot held out of training that decides early stopping
            (stage 2's ``stop_on: train_holdout``); None: early stopping on the held-out runs.
        returns: per network, its return; the option's reference is the fold's best train network
            (the first if None).
        eval_states, seed, save_dir, jobs, torch_threads: as :func:`nnae_utils.autoencoders.train_symmetry_options`.
        models: a dict that receives every trained model, keyed ``(option, k, fold, layer, form)``, with the
            option's form of the networks (for :func:`fold_retention`).

    Returns:
        One row per fold and config: ``k``, ``fold``, ``runs``, ``option``, ``layer``, ``form``,
        ``latent_dim``, ``ratio`` (mean over held-out runs of the mean per-network ratio), ``low``,
        ``high`` (its run-then-network bootstrap interval), ``ratio_pooled`` (the pooled held-out loss
        over the pooled mean-layer loss, stage 2's ``val_over_mean_layer``), ``held_out_functional``,
        ``mean_layer_held_out``, ``train_functional``, ``n_train``, ``n_held_out``,
        ``n_held_out_runs``, ``reused``, ``wall_seconds``.
    """
    runs = list(runs)
    if len(runs) != len(nets):
        raise ValueError(f"{len(nets)} networks but {len(runs)} run labels")
    stop = [False] * len(nets) if stop_mask is None else [bool(s) for s in stop_mask]
    held_set = set(held_out_runs)
    held_idx = [i for i, r in enumerate(runs) if r in held_set]
    if not held_idx:
        raise ValueError(f"no network of the held-out runs {sorted(map(str, held_set))}")
    held_groups = [runs[i] for i in held_idx]
    over_units = option == "augment"
    rows = []
    for fold in folds:
        fold_runs = set(fold["runs"])
        if fold_runs & held_set:
            raise ValueError(f"fold {fold} trains on a held-out run")
        train_idx = [i for i, r in enumerate(runs) if r in fold_runs and not stop[i]]
        stop_idx = [i for i, r in enumerate(runs) if r in fold_runs and stop[i]]
        if not train_idx:
            raise ValueError(f"fold {fold} has no train network")
        best = max(train_idx, key=lambda i: returns[i]) if returns is not None else train_idx[0]
        split_nets = {"train": [nets[i] for i in train_idx], "validation": [nets[i] for i in held_idx]}
        groups = {"train": [runs[i] for i in train_idx], "validation": held_groups}
        if stop_idx:
            split_nets["holdout"] = [nets[i] for i in stop_idx]
            groups["holdout"] = [runs[i] for i in stop_idx]
        start = time.perf_counter()
        run = ae.train_symmetry_options([option], configs, split_nets, pools, nets[best], eval_states=eval_states, seed=seed,
                                        save_dir=save_dir, jobs=jobs, torch_threads=torch_threads, progress=False,
                                        groups=groups)[option]
        for (res, reused), base in zip(run.results, run.rows()):
            loss, mean = network_ratios(res.model, run.train, run.val, over_units=over_units or res.model.config.form == "equivariant")
            ci = run_interval(loss / mean, held_groups, n_boot=n_boot, seed=seed)
            if models is not None:
                cfg = res.model.config
                models[(option, int(fold["k"]), int(fold["fold"]), cfg.layer, cfg.form)] = (res.model, run.val.networks)
            rows.append({
                "k": int(fold["k"]), "fold": int(fold["fold"]), "runs": " ".join(map(str, sorted(fold_runs, key=str))),
                "option": option, "layer": base["layer"], "form": base["form"], "latent_dim": base["latent_dim"],
                "ratio": ci.point, "low": ci.low, "high": ci.high, "ratio_pooled": float(loss.mean() / mean.mean()),
                "held_out_functional": float(loss.mean()), "mean_layer_held_out": float(mean.mean()),
                "train_functional": base["train_functional"], "n_train": len(train_idx), "n_held_out": len(held_idx),
                "n_held_out_runs": len(set(held_groups)), "reused": bool(reused), "wall_seconds": base["wall_seconds"],
            })
        if progress:
            print(f"k={fold['k']} fold {fold['fold']} ({len(train_idx)} networks): {time.perf_counter() - start:.0f} s", flush=True)
    return pd.DataFrame(rows)


def fold_retention(models: Mapping[tuple, tuple[ae.LayerCode, Sequence[Network]]], held_runs: Sequence[Any], *,
                   per_run: int = 2, episodes: int = 3, max_steps: int = 1000, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Deployed retention of held-out networks, one layer decoded, for each model of :func:`fold_curve`'s
    ``models``, with stage 3's paired protocol (:func:`nnae_utils.decoded.score_paired`: every input and
    decoded network in one batched evaluation on the same reset seeds, ``decoded_report`` seeds).

    ``held_runs``: the run of each held-out network, in the order of the models' networks (``fold_curve``'s
    ``held_out_runs`` order); ``per_run`` networks of each run are deployed (spread over the run). Returns one
    row per model: the key's columns, ``retention`` (ratio of mean returns over the networks), and ``low`` /
    ``high``: :func:`nnae_utils.stats.hierarchical_interval` of per-network retention, runs then networks.
    """
    from .decoded import score_paired, spread_subset
    from .seeds import eval_seeds

    if not models:
        return pd.DataFrame()
    held_runs = list(held_runs)
    pick = [i for run in dict.fromkeys(held_runs) for i in spread_subset([j for j, r in enumerate(held_runs) if r == run], per_run)]
    keys = list(models)
    inputs = [models[keys[0]][1][i] for i in pick]  # the option's form of each network acts as the network does
    decoded_nets = [ae.decode_network(models[key][1][i], models[key][0]) for key in keys for i in pick]
    scores = score_paired(inputs, decoded_nets, eval_seeds("decoded_report", episodes), max_steps=max_steps, nthread=1)
    inp = scores.input_returns.mean(axis=1)
    rows = []
    for m, key in enumerate(keys):
        dec = scores.decoded_returns[m * len(pick):(m + 1) * len(pick)].mean(axis=1)
        per_net = dec / inp
        ci = run_interval(per_net, [held_runs[i] for i in pick], n_boot=n_boot, seed=seed)
        rows.append({**dict(zip(("option", "k", "fold", "layer", "form"), key)), "retention": float(dec.mean() / inp.mean()),
                     "run_mean_retention": ci.point, "low": ci.low, "high": ci.high, "networks": len(pick),
                     "episodes": episodes, "input_return": float(inp.mean()), "decoded_return": float(dec.mean())})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- fit and extrapolation


@dataclass
class CurveFit:
    """A curve model fitted to (k, ratio) points, and the range of ``k`` it was fitted on."""

    model: str
    a: float
    """power: ln c; log: the intercept a."""
    b: float
    """power: -alpha (the slope of ln ratio on ln k); log: the slope b of ratio on ln k."""
    k_min: float
    k_max: float
    n_points: int

    def predict(self, k) -> np.ndarray:
        """The fitted ratio at ``k``."""
        lk = np.log(np.asarray(k, float))
        return np.exp(self.a + self.b * lk) if self.model == "power" else self.a + self.b * lk


def fit_curve(k: Sequence[float], ratio: Sequence[float], model: str = "power") -> CurveFit:
    """Least-squares fit of ``ratio`` against ``k`` (every fold a point; folds of one ``k`` together
    weigh as many points as they are).

    ``power`` (the default): ln ratio = ln c - alpha ln k. Learning curves over training-set size are
    commonly power laws (Hestness et al. 2017, "Deep learning scaling is predictable, empirically"), and
    a power law stays positive: the ratio cannot fall below 0. ``log``: ratio = a + b ln k, the simplest
    curve of diminishing returns; it crosses 0 at a finite ``k``, so it predicts sooner than the power law
    when the curve falls. With 3-5 values of ``k`` neither can be told from the other; report both.

    Example:
        >>> fit = fit_curve([2, 4, 8, 16], [0.8, 0.4, 0.2, 0.1])
        >>> round(-fit.b, 3), round(float(fit.predict(32)), 3)
        (1.0, 0.05)
    """
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    k, y = np.asarray(k, float), np.asarray(ratio, float)
    keep = np.isfinite(k) & np.isfinite(y) & (k > 0) & ((y > 0) if model == "power" else True)
    k, y = k[keep], y[keep]
    if len(np.unique(k)) < 2:
        raise ValueError("a curve needs points at two or more values of k")
    x = np.log(k)
    target = np.log(y) if model == "power" else y
    b, a = np.polyfit(x, target, 1)
    return CurveFit(model, float(a), float(b), float(k.min()), float(k.max()), int(len(k)))


@dataclass
class Extrapolation:
    """Where a fitted curve reaches a target ratio."""

    target: float
    k: float
    """The ``k`` at which the fit reaches ``target`` (inf where it never does: a flat or rising curve)."""
    within_range: bool
    """Whether that ``k`` lies within the fitted range (an interpolation, not an extrapolation)."""
    text: str


def k_for_target(fit: CurveFit, target: float) -> Extrapolation:
    """The number of train runs at which ``fit`` reaches ``target`` (a ratio), stated honestly: within the
    fitted range, an extrapolation beyond it, or never (the fitted curve does not fall).

    Example:
        >>> k_for_target(fit_curve([2, 4, 8], [0.8, 0.4, 0.2]), 0.1).text
        'not reached within the fitted range (k = 2-8); the power fit extrapolates to k = 16'
        >>> k_for_target(fit_curve([2, 4, 8], [0.9, 0.9, 0.91]), 0.5).text
        'not reached: the power fit does not fall with k (slope 0.00797)'
    """
    if not target > 0 and fit.model == "power":
        raise ValueError("a power law reaches only targets above 0")
    if fit.b >= 0:
        return Extrapolation(target, math.inf, False, f"not reached: the {fit.model} fit does not fall with k (slope {fit.b:.3g})")
    t = math.log(target) if fit.model == "power" else target
    exponent = (t - fit.a) / fit.b
    if exponent > math.log(1e300):  # a nearly flat fit: no number of runs a float can hold
        return Extrapolation(target, math.inf, False, f"not reached within the fitted range (k = {fit.k_min:g}-{fit.k_max:g}); "
                                                      f"the {fit.model} fit extrapolates beyond k = 1e300 (slope {fit.b:.3g})")
    k = math.exp(exponent)
    if k <= fit.k_min:
        return Extrapolation(target, k, True, f"reached at the smallest k fitted (k = {fit.k_min:g})")
    if k <= fit.k_max:
        return Extrapolation(target, k, True, f"reached within the fitted range, at k = {k:.3g}")
    return Extrapolation(target, k, False, f"not reached within the fitted range (k = {fit.k_min:g}-{fit.k_max:g}); "
                                           f"the {fit.model} fit extrapolates to k = {k:.3g}")


def extrapolate(table: pd.DataFrame, target: float, *, model: str = "power", by: Sequence[str] = ("option", "layer", "form"),
                value: str = "ratio") -> pd.DataFrame:
    """:func:`fit_curve` and :func:`k_for_target` of column ``value`` for each group of a :func:`fold_curve`
    table (one point per fold); a group with a single ``k`` gets no fit and says so. For retention, fit its
    shortfall ``1 - retention`` (90% retention: target 0.1)."""
    rows = []
    for key, g in table.groupby(list(by), sort=False):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(by, key), value=value, model=model, target=target, k_values=" ".join(str(v) for v in sorted(g["k"].unique())))
        try:
            fit = fit_curve(g["k"], g[value], model)
        except ValueError as err:
            rows.append({**row, "a": np.nan, "b": np.nan, "k_target": np.nan, "within_range": False, "text": f"no fit: {err}"})
            continue
        ex = k_for_target(fit, target)
        rows.append({**row, "a": fit.a, "b": fit.b, "k_target": ex.k, "within_range": ex.within_range, "text": ex.text})
    return pd.DataFrame(rows)
