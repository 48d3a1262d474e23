"""Seaborn figures shared by the stage notebooks. Each returns its matplotlib Figure.

Example:
    >>> import pandas as pd
    >>> df = pd.DataFrame({"split": ["train", "test"], "return_mean": [1.0, 2.0]})
    >>> fig = zoo_returns_by_split(df)
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

SPLIT_ORDER = ["train", "validation", "test"]
sns.set_theme(context="notebook", style="whitegrid")


def zoo_returns_by_split(frame: pd.DataFrame, threshold: float | None = None):
    """Strip + box plot of the zoo's reported returns, one column per split."""
    order = [s for s in SPLIT_ORDER if s in set(frame["split"])]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    sns.boxplot(data=frame, x="split", y="return_mean", order=order, color="0.9", showfliers=False, ax=ax)
    sns.stripplot(data=frame, x="split", y="return_mean", order=order, hue="split", hue_order=order,
                  palette="deep", size=4, jitter=0.25, legend=False, ax=ax)
    if threshold is not None:
        ax.axhline(threshold, ls="--", color="0.4", lw=1, label=f"threshold {threshold:g}")
        ax.legend(loc="lower right")
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
        if token_limits and layer in token_limits:
            ax.axvline(token_limits[layer], ls=":", color="0.4", lw=1)
            ax.text(token_limits[layer], ax.get_ylim()[1], f" token max {token_limits[layer]:g}x", va="top", ha="left",
                    fontsize=8, color="0.3")
        ax.set(xscale="log", title=f"layer {layer}", xlabel="compression ratio (params / latent dim)")
        ax.xaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.xaxis.set_minor_formatter(mticker.NullFormatter())
    axes[0, 0].set_ylabel("validation functional loss")
    axes[0, -1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def ablation_bars(table: pd.DataFrame, value: str = "val_functional", ylabel: str = "validation functional loss"):
    """Bars of ``value`` per layer and training loss, one panel per form. ``table``: layer, form, loss, value."""
    forms = [f for f in FORM_ORDER if f in set(table["form"])]
    losses = [l for l in [*LOSS_ORDER, "PCA"] if l in set(table["loss"])]
    fig, axes = plt.subplots(1, len(forms), figsize=(5.5 * len(forms), 3.6), sharey=True, squeeze=False)
    for ax, form in zip(axes[0], forms):
        sns.barplot(data=table[table["form"] == form], x="layer", y=value, hue="loss", hue_order=losses,
                    palette="deep", ax=ax, legend=(form == forms[-1]))
        ax.set(title=f"{form} form", ylabel=ylabel)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- stage 4: latent evolution

import numpy as np  # noqa: E402  (stage 4's figures)

START_TITLES = {"finetune": "fine-tuning the held-out test networks", "scratch": "from scratch"}


def sample_efficiency(curves: pd.DataFrame, *, ylabels: dict | None = None, zoo_steps: float | None = None,
                      zoo_note: str | None = None, levels: dict | None = None, statistic: str = "IQM"):
    """Return (or gain) of the champion against env steps: one panel per start condition, one line per
    method/genome (its IQM over seeds) with its bootstrap CI as a band.

    ``curves``: start, label, steps, point, low, high. ``zoo_steps``: env steps that trained the zoo,
    drawn as a dotted line if it falls inside the axis; ``zoo_note`` is written in each panel (the
    zoo's cost, which every genome built from the zoo has paid before its first step).
    ``levels``: {start: [y values]} drawn as thin horizontal lines (the thresholds of the tables).
    """
    starts = [s for s in START_TITLES if s in set(curves["start"])]
    labels = list(dict.fromkeys(curves["label"]))
    palette = dict(zip(labels, sns.color_palette("deep", len(labels))))
    fig, axes = plt.subplots(1, len(starts), figsize=(6.4 * len(starts), 4.0), squeeze=False)
    for ax, start in zip(axes[0], starts):
        sub = curves[curves["start"] == start]
        for label in labels:
            d = sub[sub["label"] == label].sort_values("steps")
            if d["point"].notna().any():
                # a champion holds until the next one is found: step functions, not interpolations
                ax.plot(d["steps"], d["point"], lw=1.8, color=palette[label], label=label, drawstyle="steps-post")
                ax.fill_between(d["steps"], d["low"], d["high"], color=palette[label], alpha=0.18, lw=0, step="post")
        if start == "finetune":
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
        if zoo_note:
            ax.text(0.02, 0.98, zoo_note, transform=ax.transAxes, va="top", ha="left", fontsize=8,
                    bbox=dict(boxstyle="round", fc="white", ec="0.7", alpha=0.9))
        ax.set(title=START_TITLES[start], xlabel="environment steps (fitness + elite re-evaluation)",
               ylabel=(ylabels or {}).get(start, f"champion return ({statistic}, fresh seeds)"))
        ax.xaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v / 1e3:g}k" if v < 1e6 else f"{v / 1e6:g}M"))
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
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
        if start == "finetune":
            ax.axvline(0, color="0.6", lw=0.8)
        ax.set(title=START_TITLES[start], xlabel=(xlabels or {}).get(start, "final champion return"))
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig
