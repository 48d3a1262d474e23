"""Seaborn figures shared by the stage notebooks. Each returns its matplotlib Figure.

Example:
    >>> import pandas as pd
    >>> df = pd.DataFrame({"split": ["train", "test"], "return_mean": [1.0, 2.0]})
    >>> fig = zoo_returns_by_split(df)
"""
from __future__ import annotations

import itertools

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

SPLIT_ORDER = ["train", "validation", "test"]
sns.set_theme(context="notebook", style="whitegrid")


def zoo_returns_by_split(frame: pd.DataFrame, threshold: float | None = None):
    """Strip + box plot of the zoo's reported returns, one column per split; when the zoo mixes
    TD3 snapshots and DAgger students (a ``kind`` column), the points are coloured by kind."""
    order = [s for s in SPLIT_ORDER if s in set(frame["split"])]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    sns.boxplot(data=frame, x="split", y="return_mean", order=order, color="0.9", showfliers=False, ax=ax)
    mixed = "kind" in frame and frame["kind"].nunique() > 1
    sns.stripplot(data=frame, x="split", y="return_mean", order=order, hue="kind" if mixed else "split",
                  hue_order=None if mixed else order, palette="deep", size=4, jitter=0.25, legend=mixed, ax=ax)
    if threshold is not None:
        ax.axhline(threshold, ls="--", color="0.4", lw=1, label=f"threshold {threshold:g}")
    if threshold is not None or mixed:
        ax.legend(loc="lower right", fontsize=8)
    ax.set(xlabel="split", ylabel="return (fresh seeds)", title="Zoo networks by split")
    fig.tight_layout()
    return fig


def training_curves(curves: pd.DataFrame, threshold: float | None = None, members: pd.DataFrame | None = None):
    """In-training evaluation return against env steps, one line per TD3 run; zoo members marked."""
    fig, ax = plt.subplots(figsize=(7, 3.8))
    sns.lineplot(data=curves, x="step", y="return_mean", hue="run", palette="tab10", lw=1.2, ax=ax)
    if members is not None and len(members):
        ax.scatter(members["step"], members["selection_return"], s=14, color="k", zorder=3, label="zoo member")
    if threshold is not None:
        ax.axhline(threshold, ls="--", color="0.4", lw=1)
    ax.set(xlabel="environment steps", ylabel="return (selection seeds)", title="TD3 training runs")
    ax.legend(title="run", fontsize=8, ncols=2)
    fig.tight_layout()
    return fig


def state_marginals(states, is_random, names=None, max_dims: int = 11):
    """Histogram per observation coordinate, visited vs random states."""
    n = min(states.shape[1], max_dims)
    cols = 4
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(11, 2.1 * rows))
    df = pd.DataFrame(states[:, :n], columns=names[:n] if names else [f"obs[{i}]" for i in range(n)])
    df["source"] = ["random" if r else "visited" for r in is_random]
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.axis("off")
            continue
        sns.histplot(data=df, x=df.columns[i], hue="source", hue_order=["visited", "random"], bins=40,
                     stat="density", common_norm=False, element="step", fill=False, legend=(i == 0), ax=ax)
        ax.set(ylabel="")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- stage 2: layer autoencoders

import matplotlib.ticker as mticker  # noqa: E402  (stage 2's figures only)

FORM_ORDER = ["flat", "token"]
LOSS_ORDER = ["functional", "weights", "both", "dagger"]


def layer_loss_curves(history: pd.DataFrame, log: bool = True):
    """Train and validation functional loss per epoch, one line per layer (the paper's Fig. 3a / 3b),
    one row of panels per encoder form. ``history``: epoch, layer, form, train_functional, val_functional."""
    forms = [f for f in FORM_ORDER if f in set(history["form"])]
    long = history[["epoch", "layer", "form", "train_functional", "val_functional"]].melt(
        id_vars=["epoch", "layer", "form"], var_name="split", value_name="functional loss")
    long["split"] = long["split"].map({"train_functional": "train", "val_functional": "validation"})
    long["layer"] = long["layer"].map(lambda i: f"layer {i}")
    fig, axes = plt.subplots(len(forms), 2, figsize=(10, 3.2 * len(forms)), sharex=True, sharey=True, squeeze=False)
    for r, form in enumerate(forms):
        for c, split in enumerate(["train", "validation"]):
            ax = axes[r, c]
            sub = long[(long["form"] == form) & (long["split"] == split)]
            sns.lineplot(data=sub, x="epoch", y="functional loss", hue="layer", hue_order=sorted(long["layer"].unique()),
                         palette="deep", lw=1.5, ax=ax, legend=(r == 0 and c == 1))
            ax.set(title=f"{form} form: {split}", ylabel="functional loss" if c == 0 else "")
            if log:
                ax.set_yscale("log")
    fig.tight_layout()
    return fig


def _compression_axis(ax, layer: int, token_limits: dict | None, *, label_limit: bool = False) -> None:
    """A log compression-ratio axis titled by ``layer``; the token form's limit (``token_limits[layer]``) dotted."""
    if token_limits and layer in token_limits:
        ax.axvline(token_limits[layer], ls=":", color="0.4", lw=1)
        if label_limit:
            ax.text(token_limits[layer], ax.get_ylim()[1], f" token max {token_limits[layer]:g}x", va="top", ha="left",
                    fontsize=8, color="0.3")
    ax.set(xscale="log", title=f"layer {layer}", xlabel="compression ratio (params / latent dim)")
    ax.xaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.xaxis.set_minor_formatter(mticker.NullFormatter())


def compression_sweep(sweep: pd.DataFrame, token_limits: dict | None = None):
    """Validation functional loss against compression ratio (log x), one panel per layer; autoencoders solid,
    PCA dashed. ``sweep``: layer, method (flat | token | PCA flat | PCA token), ratio, val_functional.
    ``token_limits``: {layer: in + 1}, drawn as a dotted line: the token form cannot compress further."""
    layers = sorted(sweep["layer"].unique())
    methods = [m for m in ["flat", "token", "PCA flat", "PCA token"] if m in set(sweep["method"])]
    palette = dict(zip(["flat", "token", "PCA flat", "PCA token"], sns.color_palette("deep", 4)))
    fig, axes = plt.subplots(1, len(layers), figsize=(4.2 * len(layers), 3.6), sharey=True, squeeze=False)
    for ax, layer in zip(axes[0], layers):
        sub = sweep[sweep["layer"] == layer].sort_values("ratio")
        for m in methods:
            d = sub[sub["method"] == m]
            ax.plot(d["ratio"], d["val_functional"], marker="o", ms=4, lw=1.5, color=palette[m],
                    ls="--" if m.startswith("PCA") else "-", label=m)
        _compression_axis(ax, layer, token_limits, label_limit=True)
    axes[0, 0].set_ylabel("validation functional loss")
    axes[0, -1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def ablation_bars(table: pd.DataFrame, value: str = "val_functional", ylabel: str = "validation functional loss"):
    """Bars of ``value`` per layer and training loss, one panel per form. ``table``: layer, form, loss, value."""
    forms = [f for f in FORM_ORDER if f in set(table["form"])]
    losses = [name for name in [*LOSS_ORDER, "PCA"] if name in set(table["loss"])]
    fig, axes = plt.subplots(1, len(forms), figsize=(5.5 * len(forms), 3.6), sharey=True, squeeze=False)
    for ax, form in zip(axes[0], forms):
        sns.barplot(data=table[table["form"] == form], x="layer", y=value, hue="loss", hue_order=losses,
                    palette="deep", ax=ax, legend=(form == forms[-1]))
        ax.set(title=f"{form} form", ylabel=ylabel)
    fig.tight_layout()
    return fig


def learning_curve(table: pd.DataFrame, fits: pd.DataFrame | None = None):
    """Held-out loss over the mean layer's against the number of train runs ``k`` (log axis), one panel per
    layer, one point per fold with its run-level interval, and the power-law fit of each option and form
    (dashed, drawn to 4x the largest ``k``). ``table``: :func:`nnae_utils.learning_curve.fold_curve`'s;
    ``fits``: :func:`nnae_utils.learning_curve.extrapolate`'s (model power)."""
    import numpy as np

    layers = sorted(table["layer"].unique())
    fig, axes = plt.subplots(1, len(layers), figsize=(4 * len(layers), 3.4), squeeze=False, sharey=True)
    jitter = np.random.default_rng(0)
    for ax, layer in zip(axes[0], layers):
        for (option, form), g in table[table["layer"] == layer].groupby(["option", "form"], sort=False):
            x = g["k"] * np.exp(0.04 * jitter.standard_normal(len(g)))  # folds of one k side by side
            bars = ax.errorbar(x, g["ratio"], yerr=[g["ratio"] - g["low"], g["high"] - g["ratio"]], fmt="o", ms=4,
                               capsize=2, label=f"{option} / {form}")
            f = pd.DataFrame() if fits is None else fits[(fits["layer"] == layer) & (fits["option"] == option)
                                                         & (fits["form"] == form) & (fits["model"] == "power")]
            if len(f) and np.isfinite(f["a"].iloc[0]):
                ks = np.geomspace(g["k"].min(), max(4 * g["k"].max(), 2), 50)
                ax.plot(ks, np.exp(f["a"].iloc[0] + f["b"].iloc[0] * np.log(ks)), ls="--", lw=1, color=bars[0].get_color())
        ax.axhline(1.0, color="grey", lw=0.8, ls=":")
        ax.set_xscale("log", base=2)
        ax.set(xlabel="train runs k", title=f"layer {layer}")
    axes[0][0].set_ylabel("held-out loss / mean layer's")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- stage 4: latent evolution

import numpy as np  # noqa: E402  (stage 4's figures)

from .stages import START_CONDITIONS as START_TITLES  # noqa: E402


def label_styles(labels) -> dict[str, tuple]:
    """A (color, line style) per ``method/genome`` label: the color names the genome, the line style the
    method, so a grid of many labels stays readable (one color per label runs out of distinct colors
    past ten). A label without ``/`` is its own method and genome.

    >>> s = label_styles(["ga/weights", "ga/latent:all", "cma/latent:all", "td3"])
    >>> s["ga/latent:all"][0] == s["cma/latent:all"][0], s["ga/latent:all"][1], s["cma/latent:all"][1]
    (True, '-', '--')
    """
    parts = [label.split("/", 1) if "/" in label else [label, label] for label in labels]
    genomes = list(dict.fromkeys(g for _, g in parts))
    methods = list(dict.fromkeys(m for m, _ in parts))
    colors = dict(zip(genomes, sns.color_palette("deep" if len(genomes) <= 10 else "husl", len(genomes))))
    dashes = dict(zip(methods, itertools.cycle(["-", "--", ":", "-."])))
    return {label: (colors[g], dashes[m]) for label, (m, g) in zip(labels, parts)}


def sample_efficiency(curves: pd.DataFrame, *, ylabels: dict | None = None, zoo_steps: float | None = None,
                      zoo_note: str | None = None, levels: dict | None = None, statistic: str = "IQM",
                      xlabel: str = "environment steps (fitness + elite re-evaluation)"):
    """Return (or gain) of the champion against env steps: one panel per start condition, one line per
    method/genome (its IQM over seeds) with its bootstrap CI as a band.

    ``curves``: start, label, steps, point, low, high. ``zoo_steps``: env steps that trained the zoo,
    drawn as a dotted line if it falls inside the axis; ``zoo_note`` is written once, under the panels
    (the zoo's cost, which every genome built from the zoo has paid before its first step).
    ``levels``: {start: [y values]} drawn as thin horizontal lines (the thresholds of the tables).
    ``xlabel``: what the env steps count.
    """
    starts = [s for s in START_TITLES if s in set(curves["start"])]
    labels = list(dict.fromkeys(curves["label"]))
    style = label_styles(labels)
    fig, axes = plt.subplots(1, len(starts), figsize=(6.4 * len(starts), 4.0), squeeze=False)
    for ax, start in zip(axes[0], starts):
        sub = curves[curves["start"] == start]
        for label in labels:
            d = sub[sub["label"] == label].sort_values("steps")
            if d["point"].notna().any():
                # a champion holds until the next one is found: step functions, not interpolations
                color, dashes = style[label]
                ax.plot(d["steps"], d["point"], lw=1.8, color=color, ls=dashes, label=label, drawstyle="steps-post")
                ax.fill_between(d["steps"], d["low"], d["high"], color=color, alpha=0.18, lw=0, step="post")
        if start != "scratch":  # fine-tuning: gains, around zero
            ax.axhline(0, color="0.6", lw=0.8)
        top = float(np.nanmax(sub["high"])) if sub["high"].notna().any() else 0.0
        above = []
        for y in (levels or {}).get(start, []):
            if y <= 1.25 * max(top, 1e-9):  # a level far above every curve would only flatten them
                ax.axhline(y, color="0.5", lw=0.8, ls="--")
            else:
                above.append(f"{y:g}")
        if above:
            ax.text(0.98, 0.98, f"levels {', '.join(above)}: above the plot", transform=ax.transAxes,
                    va="top", ha="right", fontsize=8, color="0.35")
        if zoo_steps is not None and 0 < zoo_steps <= sub["steps"].max():
            ax.axvline(zoo_steps, color="0.3", lw=1, ls=":")
        ax.set(title=START_TITLES[start], xlabel=xlabel,
               ylabel=(ylabels or {}).get(start, f"champion return ({statistic}, fresh seeds)"))
        ax.xaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v / 1e3:g}k" if v < 1e6 else f"{v / 1e6:g}M"))
    # one legend for all panels, outside them: inside, a long grid's legend hides the curves
    handles = {h.get_label(): h for ax in axes[0] for h in ax.get_lines() if h.get_label() in style}
    axes[0][-1].legend([handles[lb] for lb in labels if lb in handles], [lb for lb in labels if lb in handles],
                       fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    if zoo_note:  # under the panels, where it cannot hide a curve (inline figures are saved with a tight box)
        fig.text(0.01, 0.0, zoo_note, va="top", ha="left", fontsize=8,
                 bbox=dict(boxstyle="round", fc="white", ec="0.7"))
    return fig


def final_scores(table: pd.DataFrame, runs: pd.DataFrame | None = None, *, xlabels: dict | None = None,
                 statistic: str = "IQM"):
    """Final score per method/genome: the point estimate with its CI as a bar, each seed's run as a dot.

    ``table``: start, label, point, low, high. ``runs``: start, label, value (one row per run).
    """
    starts = [s for s in START_TITLES if s in set(table["start"])]
    fig, axes = plt.subplots(1, len(starts), figsize=(6.0 * len(starts), max(2.4, 0.9 + 0.55 * table["label"].nunique())),
                             squeeze=False)
    for ax, start in zip(axes[0], starts):
        sub = table[table["start"] == start].reset_index(drop=True)
        y = np.arange(len(sub))
        ax.errorbar(sub["point"], y, xerr=[sub["point"] - sub["low"], sub["high"] - sub["point"]], fmt="o",
                    color="k", capsize=4, lw=1.5, label=f"{statistic} and 95% CI")
        if runs is not None:
            r = runs[runs["start"] == start]
            pos = {label: i for i, label in enumerate(sub["label"])}
            jitter = np.random.default_rng(0).uniform(-0.15, 0.15, len(r))
            ax.scatter(r["value"], r["label"].map(pos) + jitter, s=14, color="tab:blue", alpha=0.6, label="runs (seeds)")
        ax.set_yticks(y, sub["label"])
        ax.invert_yaxis()
        if start != "scratch":  # fine-tuning: gains, around zero
            ax.axvline(0, color="0.6", lw=0.8)
        ax.set(title=START_TITLES[start], xlabel=(xlabels or {}).get(start, "final champion return"))
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


VERDICT_COLORS = {"better": "tab:green", "worse": "tab:red", "equivalent": "tab:blue", "inconclusive": "0.4"}
"""The colour of each verdict of the comparison rule (:func:`nnae_utils.results.comparison_table`)."""


def primary_comparison(frame: pd.DataFrame, *, xlabels: dict | None = None):
    """The primary comparison of a stage, one row of panels per start condition, so its verdict can be seen.

    Left: each run's final score of both labels, one dot per seed, a line joining the two runs of a replicate
    (they share the start network and the fitness seeds: the comparison is paired). Right: the IQM difference
    (first minus other) with its Holm-level interval (thick) and its TOST interval (thin), against the
    equivalence margin drawn as a band around zero; the title names the verdict: better or worse when the
    Holm interval excludes zero, equivalent when the TOST interval lies within the margin, else inconclusive.

    ``frame``: :func:`nnae_utils.results.paired_comparison`. ``xlabels``: {start: the score's name}.
    """
    fig, axes = plt.subplots(len(frame), 2, figsize=(11, 1.0 + 2.0 * len(frame)), squeeze=False,
                             gridspec_kw={"width_ratios": [1.2, 1.0]})
    for (ax_runs, ax_diff), row in zip(axes, frame.itertuples()):
        color = VERDICT_COLORS.get(row.verdict, "k")
        first, other = np.asarray(row.first_scores), np.asarray(row.other_scores)
        if len(first) == len(other):  # replicate r of both: drawn as a pair
            for a, b in zip(first, other):
                ax_runs.plot([a, b], [0, 1], color="0.65", lw=0.9, zorder=1)
        ax_runs.scatter(first, np.zeros(len(first)), s=22, color="tab:orange", zorder=2)
        ax_runs.scatter(other, np.ones(len(other)), s=22, color="tab:blue", zorder=2)
        ax_runs.set_yticks([0, 1], [row.first, row.other])
        ax_runs.set(ylim=(1.5, -0.5), title=f"{START_TITLES[row.start]}: runs, paired by seed",
                    xlabel=(xlabels or {}).get(row.start, "final score"))
        ax_diff.axvspan(-row.margin, row.margin, color="0.85", lw=0, label=f"equivalence margin ±{row.margin:.0f}")
        ax_diff.axvline(0, color="0.5", lw=0.8)
        ax_diff.plot([row.low, row.high], [0, 0], color=color, lw=4, solid_capstyle="butt",
                     label=f"IQM difference, Holm {row.confidence:.1%} CI")
        ax_diff.plot([row.tost_low, row.tost_high], [-0.25, -0.25], color=color, lw=1.5, label="TOST interval")
        ax_diff.plot([row.difference], [0], "o", color="k", ms=6)
        span = max(abs(row.low), abs(row.high), abs(row.tost_low), abs(row.tost_high), row.margin) * 1.15
        ax_diff.set(xlim=(-span, span), ylim=(-0.8, 0.6), yticks=[],
                    xlabel=f"IQM of {row.first} minus IQM of {row.other}", title=f"verdict: {row.verdict}")
        ax_diff.title.set_color(color)
        ax_diff.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- stage 3: decoded networks

LAYER_LABEL_ORDER = ["0", "1", "2", "3", "4", "all"]
METHOD_STYLE = {"flat": ("-", 0), "token": ("-", 1), "PCA flat": ("--", 0), "PCA token": ("--", 1)}


def _layer_order(labels) -> list[str]:
    present = list(dict.fromkeys(str(x) for x in labels))
    return [x for x in LAYER_LABEL_ORDER if x in present] + [x for x in present if x not in LAYER_LABEL_ORDER]


def _levels(ax, levels, horizontal: bool = True) -> None:
    for y, style in [(1.0, "-"), *[(t, ":") for t in levels]]:
        (ax.axhline if horizontal else ax.axvline)(y, color="0.45", lw=0.9, ls=style, zorder=0)


def decoded_scores(frame: pd.DataFrame):
    """Mean return of the input networks and of their decoded versions per compressed layer (the paper's
    Fig. 3d against 3e), one panel per encoder form (rows) and split (columns); bars are means with 95%
    bootstrap CIs over networks, dots the networks. ``frame``: form, split, layers, input_return, decoded_return."""
    forms = [f for f in FORM_ORDER if f in set(frame["form"])]
    splits = [s for s in SPLIT_ORDER if s in set(frame["split"])]
    order = _layer_order(frame["layers"])
    long = frame.melt(id_vars=["form", "split", "layers", "source_network"], value_vars=["input_return", "decoded_return"],
                      var_name="network", value_name="return")
    long["network"] = long["network"].map({"input_return": "input", "decoded_return": "decoded"})
    long["layers"] = long["layers"].astype(str)
    fig, axes = plt.subplots(len(forms), len(splits), figsize=(4.3 * len(splits), 3.3 * len(forms)), sharey=True, squeeze=False)
    for r, form in enumerate(forms):
        for c, split in enumerate(splits):
            ax = axes[r, c]
            sub = long[(long["form"] == form) & (long["split"] == split)]
            sns.barplot(data=sub, x="layers", y="return", hue="network", hue_order=["input", "decoded"], order=order,
                        palette=["0.75", sns.color_palette("deep")[0]], errorbar=("ci", 95), n_boot=500, seed=0,
                        capsize=0.1, ax=ax, legend=(r == 0 and c == len(splits) - 1))
            sns.stripplot(data=sub, x="layers", y="return", hue="network", hue_order=["input", "decoded"], order=order,
                          dodge=True, palette=["0.35", "0.1"], size=2.5, alpha=0.6, jitter=0.15, legend=False, ax=ax)
            ax.set(title=f"{form} form, {split} networks", xlabel="compressed layer", ylabel="return" if c == 0 else "")
    fig.tight_layout()
    return fig


def retention_by_layer(table: pd.DataFrame, levels=(0.98, 0.9)):
    """Retention (mean decoded / mean input return) with its 95% CI per compressed layer, one colour per
    split, one panel per form. ``table``: form, split, layers, retention, low, high."""
    forms = [f for f in FORM_ORDER if f in set(table["form"])]
    splits = [s for s in SPLIT_ORDER if s in set(table["split"])]
    order = _layer_order(table["layers"])
    palette = dict(zip(SPLIT_ORDER, sns.color_palette("deep", 3)))
    fig, axes = plt.subplots(1, len(forms), figsize=(5.2 * len(forms), 3.6), sharey=True, squeeze=False)
    width = 0.7 / max(len(splits), 1)
    for ax, form in zip(axes[0], forms):
        _levels(ax, levels)
        for j, split in enumerate(splits):
            d = table[(table["form"] == form) & (table["split"] == split)].set_index("layers").reindex(order)
            x = np.arange(len(order)) + (j - (len(splits) - 1) / 2) * width
            ax.errorbar(x, d["retention"], yerr=[d["retention"] - d["low"], d["high"] - d["retention"]], fmt="o",
                        color=palette[split], capsize=3, lw=1.3, label=split)
        ax.set_xticks(np.arange(len(order)), order)
        ax.set(title=f"{form} form", xlabel="compressed layer", ylabel="retention (decoded / input return)")
    axes[0, -1].legend(fontsize=8, title="split")
    fig.tight_layout()
    return fig


def retention_vs_ratio(table: pd.DataFrame, levels=(0.98, 0.9), token_limits: dict | None = None):
    """Retention against compression ratio (log x), one panel per layer, one line per method (flat, token
    autoencoders solid; PCA dashed), 95% CIs as error bars; dotted lines at the retention ``levels``.
    ``table``: layer, method, compression_ratio, retention, low, high."""
    layers = sorted(table["layer"].unique())
    methods = [m for m in METHOD_STYLE if m in set(table["method"])]
    colors = sns.color_palette("deep", 2)
    fig, axes = plt.subplots(1, len(layers), figsize=(4.3 * len(layers), 3.7), sharey=True, squeeze=False)
    for ax, layer in zip(axes[0], layers):
        _levels(ax, levels)
        sub = table[table["layer"] == layer]
        for m in methods:
            d = sub[sub["method"] == m].sort_values("compression_ratio")
            ls, ci = METHOD_STYLE[m]
            ax.errorbar(d["compression_ratio"], d["retention"], yerr=[d["retention"] - d["low"], d["high"] - d["retention"]],
                        fmt="o", ls=ls, ms=4, lw=1.4, capsize=2.5, color=colors[ci], alpha=0.95 if ls == "-" else 0.6, label=m)
        _compression_axis(ax, layer, token_limits)
    axes[0, 0].set_ylabel("retention (decoded / input return)")
    axes[0, -1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def retention_by_loss(table: pd.DataFrame, levels=(0.98, 0.9)):
    """Retention with 95% CI per layer and training loss (functional, weights, both, dagger; PCA at the same
    latent size), one panel per form. ``table``: form, layer, loss, retention, low, high."""
    forms = [f for f in FORM_ORDER if f in set(table["form"])]
    losses = [name for name in [*LOSS_ORDER, "pca"] if name in set(table["loss"])]
    layers = sorted(table["layer"].unique())
    palette = dict(zip([*LOSS_ORDER, "pca"], sns.color_palette("deep", 5)))
    width = 0.8 / max(len(losses), 1)
    fig, axes = plt.subplots(1, len(forms), figsize=(5.4 * len(forms), 3.6), sharey=True, squeeze=False)
    for ax, form in zip(axes[0], forms):
        _levels(ax, levels)
        for j, loss in enumerate(losses):
            d = table[(table["form"] == form) & (table["loss"] == loss)].set_index("layer").reindex(layers)
            x = np.arange(len(layers)) + (j - (len(losses) - 1) / 2) * width
            ax.errorbar(x, d["retention"], yerr=[d["retention"] - d["low"], d["high"] - d["retention"]], fmt="s" if loss == "pca" else "o",
                        color=palette[loss], capsize=2.5, lw=1.3, ms=4.5, label="PCA" if loss == "pca" else loss)
        ax.set_xticks(np.arange(len(layers)), [f"layer {layer}" for layer in layers])
        ax.set(title=f"{form} form", ylabel="retention (decoded / input return)")
    axes[0, -1].legend(fontsize=8, title="training loss")
    fig.tight_layout()
    return fig


def layer_explorer(view):
    """The layer explorer's figure for one :class:`nnae_utils.explorer.ExplorerView`: input, decoded and
    difference weight heatmaps (bias as the last column), then every action of both networks along the
    input network's trajectory."""
    fig = plt.figure(figsize=(10.5, 6.2))
    grid = fig.add_gridspec(2, 3, height_ratios=[1.15, 1.0])
    w_in, w_dec, diff = view.weight_input, view.weight_decoded, view.difference
    lim = float(max(np.abs(w_in).max(), np.abs(w_dec).max(), 1e-12))
    dlim = float(max(np.abs(diff).max(), 1e-12))
    titles = ["input layer", "decoded layer", "decoded - input"]
    for k, (mat, title) in enumerate(zip([w_in, w_dec, diff], titles)):
        ax = fig.add_subplot(grid[0, k])
        v = dlim if k == 2 else lim
        im = ax.imshow(mat, aspect="auto", cmap="RdBu_r" if k == 2 else "coolwarm", vmin=-v, vmax=v, interpolation="nearest")
        ax.set(title=title, xlabel="input unit (last column: bias)", ylabel="output unit" if k == 0 else "")
        ax.xaxis.set_major_locator(mticker.MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(mticker.MaxNLocator(integer=True))
        ax.grid(False)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    n_act = view.actions_input.shape[1]
    colors = sns.color_palette("deep", 2)
    for j in range(n_act):
        ax = fig.add_subplot(grid[1, j % 3])
        ax.plot(view.actions_input[:, j], color=colors[0], lw=1.1, label="input")
        ax.plot(view.actions_decoded[:, j], color=colors[1], lw=1.1, ls="--", label="decoded")
        ax.set(xlabel="step of the input network's episode", ylabel="action" if j == 0 else "", ylim=(-1.05, 1.05),
               title=f"action {j}")
        if j == 0:
            ax.legend(fontsize=7, loc="lower left")
    fig.suptitle(f"{view.network_id}, layer {view.layer}, {view.code_label}: return of one episode, input "
                 f"{view.return_input:.1f} ({view.length_input} steps), decoded {view.return_decoded:.1f} "
                 f"({view.length_decoded} steps)", fontsize=10)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- stage 5: CERL comparison


def migration_loss(migrations: pd.DataFrame, *, mutation_change: float | None = None):
    """What encoding a migrating learner actor into a genome loses, one colour per variant.

    Left: the functional distance (mean L2 between the actions of the actor and of its decoded
    code) at each migration, against the env steps of the run; a dashed line marks the action
    change of one mutation (``mutation_change``). Right: the decoded code's return against the
    actor's own return (fresh seeds; the diagonal is a lossless encoding), where they were probed.
    ``migrations``: label, env_steps, distance, actor_return, decoded_return.
    """
    labels = list(dict.fromkeys(migrations["label"]))
    palette = dict(zip(labels, sns.color_palette("deep", len(labels))))
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    ax = axes[0]
    for label in labels:
        d = migrations[migrations["label"] == label]
        ax.scatter(d["env_steps"], d["distance"], s=18, alpha=0.7, color=palette[label], label=label)
    if mutation_change:
        ax.axhline(mutation_change, color="0.4", ls="--", lw=1, label="one mutation")
    ax.set(xlabel="environment steps at the migration", ylabel="action distance: actor vs decoded code",
           title="Functional distance of each migrant's encoding")
    ax.xaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v / 1e3:g}k"))
    ax.legend(fontsize=8)
    ax = axes[1]
    probed = migrations.dropna(subset=["actor_return", "decoded_return"])
    if len(probed):
        for label in labels:
            d = probed[probed["label"] == label]
            if len(d):
                ax.scatter(d["actor_return"], d["decoded_return"], s=18, alpha=0.7, color=palette[label], label=label)
        lo = float(min(probed["actor_return"].min(), probed["decoded_return"].min()))
        hi = float(max(probed["actor_return"].max(), probed["decoded_return"].max()))
        ax.plot([lo, hi], [lo, hi], color="0.5", lw=0.8, ls=":")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no lossy encoding was probed", transform=ax.transAxes, ha="center", va="center")
    ax.set(xlabel="learner actor's return (fresh seeds)", ylabel="its decoded code's return",
           title="Return before and after encoding")
    fig.tight_layout()
    return fig


def champion_sources(shares: pd.DataFrame):
    """Stacked bars: the share of generations whose champion came from each source, per run label and start.

    ``shares``: start, label, source (population / learner / previous champion / start), share.
    """
    starts = [s for s in START_TITLES if s in set(shares["start"])]
    order = [s for s in ["population", "learner", "previous champion"] if s in set(shares["source"])]
    colors = dict(zip(["population", "learner", "previous champion"], sns.color_palette("deep", 3)))
    fig, axes = plt.subplots(1, len(starts), figsize=(6.0 * len(starts), max(2.2, 0.8 + 0.5 * shares["label"].nunique())),
                             squeeze=False)
    for ax, start in zip(axes[0], starts):
        sub = shares[shares["start"] == start].pivot_table(index="label", columns="source", values="share", fill_value=0.0)
        sub = sub.reindex(columns=order, fill_value=0.0)
        left = np.zeros(len(sub))
        for source in order:
            ax.barh(sub.index, sub[source], left=left, color=colors[source], label=source)
            left += sub[source].to_numpy()
        ax.invert_yaxis()
        ax.set(xlim=(0, 1), xlabel="share of generations", title=START_TITLES[start])
    axes[0, -1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="champion from")
    fig.tight_layout()
    return fig


def paper_figure3(history: pd.DataFrame, scores: pd.DataFrame, log: bool = True):
    """The paper's Figure 3 from this run: (a) train and (b) unseen networks' functional loss per epoch, one
    colour per layer autoencoder (solid: split by run, dashed: by network); (d) decoded and (e) input
    returns of the unseen networks per compressed layer, bars with 95% bootstrap CIs, one colour per split.

    ``history``: epoch, layer, train, by run, by network (:func:`nnae_utils.figure3.loss_history`);
    ``scores``: protocol, layers, input_return, decoded_return (:func:`nnae_utils.figure3.score_frame`).
    """
    fig, axes = plt.subplots(2, 2, figsize=(10.5, 7.2))
    layers = sorted(history["layer"].unique())
    colors = dict(zip(layers, sns.color_palette("deep", len(layers))))
    for layer, g in history.groupby("layer"):
        axes[0, 0].plot(g["epoch"], g["train"], color=colors[layer], lw=1.5, label=f"layer {layer}")
        axes[0, 1].plot(g["epoch"], g["by run"], color=colors[layer], lw=1.5, label=f"layer {layer}, by run")
        if g["by network"].notna().any():
            axes[0, 1].plot(g["epoch"], g["by network"], color=colors[layer], lw=1.5, ls="--", label=f"layer {layer}, by network")
    axes[0, 0].set(title="(a) train loss", xlabel="epoch", ylabel="functional loss")
    axes[0, 1].set(title="(b) validation loss (unseen networks)", xlabel="epoch", ylabel="")
    axes[0, 1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if log:
        for ax in axes[0]:
            ax.set_yscale("log")
    order = _layer_order(scores["layers"])
    protocols = [p for p in ("by run", "by network") if p in set(scores["protocol"])]
    palette = dict(zip(("by run", "by network"), sns.color_palette("deep", 5)[3:5]))
    for ax, column, title in [(axes[1, 0], "decoded_return", "(d) decoded networks' score"),
                              (axes[1, 1], "input_return", "(e) input networks' score")]:
        sns.barplot(data=scores, x="layers", y=column, hue="protocol", hue_order=protocols, order=order, palette=palette,
                    errorbar=("ci", 95), n_boot=500, seed=0, capsize=0.1, ax=ax, legend=ax is axes[1, 1])
        ax.set(title=title, xlabel="compressed layer", ylabel="return" if ax is axes[1, 0] else "")
    axes[1, 1].sharey(axes[1, 0])
    if axes[1, 1].get_legend() is not None:
        sns.move_legend(axes[1, 1], "upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, title="split")
    fig.tight_layout()
    return fig


def random_policies(returns: dict, bar: float | None = None):
    """Returns of random policies, one row per genome (box and points): what each space holds before any search."""
    frame = pd.DataFrame([{"genome": name, "return": float(v)} for name, x in returns.items() for v in x])
    order = list(returns)
    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.7 * len(order)))
    sns.boxplot(data=frame, y="genome", x="return", order=order, color="0.9", showfliers=False, ax=ax)
    sns.stripplot(data=frame, y="genome", x="return", order=order, hue="genome", hue_order=order, palette="deep",
                  size=3, jitter=0.25, legend=False, ax=ax)
    if bar is not None:
        ax.axvline(bar, ls="--", color="0.4", lw=1, label=f"bar {bar:g}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set(xlabel="return of a random policy (mean over its episodes)", ylabel="",
           title="Random policies of each genome's scratch distribution")
    fig.tight_layout()
    return fig
