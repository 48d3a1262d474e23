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
