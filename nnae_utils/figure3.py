"""The paper's Figure 3 claims, checked on stages 2 and 3's artifacts: tables and the verdict rule.

The paper (section 3) reads its Figure 3 as: the autoencoders learn the train
networks' parameter distribution well (panel a); validation and test show much more variability
(b, d); layers differ in what compressing them does to the score (d against e); and one layer
compressed alone can do better than all layers compressed. Each claim is measured here under two
ways of splitting the zoo, which stage 2 trains side by side:

- ``by run``: unseen networks of a training run the autoencoders never saw (stage 2's validation
  run for the losses, stage 3's test run for the scores);
- ``by network``: unseen snapshots of the runs they learnt from (the train runs' snapshots that
  stage 2 held out, ``stop_on: train_holdout``; most likely the paper's protocol).

:func:`verdict` turns the two outcomes into one word; the thresholds that decide each outcome are
named below (:data:`FIT_FRACTION`, :data:`GAP_FACTOR`, :data:`INFORMATIVE_FRACTION`).

Example:
    >>> verdict(by_run=False, by_network=True)
    'reproduced only when split by network'
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from .stats import ratio_interval

PROTOCOLS = ("by run", "by network")
"""The two splits: unseen runs, unseen networks of seen runs."""

FIT_FRACTION = 0.25
"""Claim a: the train loss "fits well" when it is at most this fraction of the mean layer's loss on every
layer (the mean layer: the train networks' mean, what a decoder that ignores its code gives)."""
GAP_FACTOR = 2.0
"""Claim b: unseen networks' loss is "significantly higher" when its median over layers is at least this
many times the train loss."""
INFORMATIVE_FRACTION = 0.8
"""Claim a': the autoencoders "learn the distribution" (not just the train networks) when unseen networks'
loss is at most this fraction of the mean layer's on the same networks (median over layers)."""

VERDICTS = ("reproduced", "reproduced only when split by network", "not reproduced", "not measured")


def verdict(by_run: bool | None, by_network: bool | None) -> str:
    """One claim's verdict from whether it holds split by run and split by network (``None``: not measured).

    The split by run is this suite's protocol: a claim that holds there is reproduced, whatever the
    split by network says; one that holds only on unseen networks of seen runs is reproduced only
    when split by network.

    Example:
        >>> [verdict(True, False), verdict(False, True), verdict(False, False), verdict(False, None)]
        ['reproduced', 'reproduced only when split by network', 'not reproduced', 'not reproduced']
        >>> verdict(None, True), verdict(None, None)
        ('not measured', 'not measured')
    """
    if by_run is None:
        return VERDICTS[3]
    if by_run:
        return VERDICTS[0]
    return VERDICTS[1] if by_network else VERDICTS[2]


def loss_table(symmetry: pd.DataFrame, form: str) -> pd.DataFrame:
    """Per layer, the main autoencoders' losses at the epoch kept (stage 2's ``symmetry.csv``, option
    ``none``): ``train``, ``by run`` and ``by network`` functional losses, and the mean layer's loss on
    the same unseen networks (``mean by run``, ``mean by network``); NaN where stage 2 held nothing out."""
    rows = symmetry[(symmetry["symmetry"] == "none") & (symmetry["form"] == form)].sort_values("layer")
    columns = {"train_functional": "train", "val_functional": "by run", "holdout_functional": "by network",
               "mean_layer_val": "mean by run", "mean_layer_holdout": "mean by network"}
    table = rows.set_index("layer").reindex(columns=list(columns)).rename(columns=columns)
    return table.astype(float)


def score_frame(scores: pd.DataFrame, holdout_ids: Iterable[str], form: str, test_split: str = "test") -> pd.DataFrame:
    """Stage 3's paired scores of the main ``form`` autoencoders (each layer alone, and all), one row per
    network and layer label, with ``protocol``: ``by run`` for the ``test_split`` networks, ``by network``
    for the train runs' held-out snapshots that stage 3 scored."""
    roles = scores["roles"].astype(str)
    main = scores[roles.str.contains("'main'|'main_all'") & (scores["kind"] == "autoencoder") & (scores["form"] == form)]
    held = set(holdout_ids)
    protocol = np.where(main["split"] == test_split, PROTOCOLS[0],
                        np.where((main["split"] == "train") & main["source_network"].isin(held), PROTOCOLS[1], ""))
    out = main.assign(protocol=protocol, layers=main["layers"].astype(str))
    return out[out["protocol"] != ""][["protocol", "layers", "source_network", "input_return", "decoded_return"]]


def retention_table(frame: pd.DataFrame, *, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Retention (mean decoded / mean input return, paired bootstrap 95% interval over networks) per
    protocol and compressed layer of a :func:`score_frame`."""
    rows = []
    for (protocol, layers), g in frame.groupby(["protocol", "layers"], sort=False):
        ci = ratio_interval(g["decoded_return"], g["input_return"], "mean", n_boot=n_boot, seed=seed)
        rows.append({"protocol": protocol, "layers": layers, "n_networks": len(g), "retention": ci.point,
                     "low": ci.low, "high": ci.high})
    return pd.DataFrame(rows, columns=["protocol", "layers", "n_networks", "retention", "low", "high"])


def _measured(values: Any) -> bool:
    return bool(np.all(np.isfinite(np.asarray(values, float)))) and np.size(values) > 0


def _loss_claims(losses: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for claim, measure in [
        ("a", f"train loss / mean layer's, worst layer (fits: <= {FIT_FRACTION:g})"),
        ("a'", f"unseen / mean layer's loss, median over layers (learns the distribution: <= {INFORMATIVE_FRACTION:g})"),
        ("b", f"unseen / train loss, median over layers (much higher: >= {GAP_FACTOR:g})"),
    ]:
        row: dict[str, Any] = {"claim": claim, "measure": measure}
        for protocol in PROTOCOLS:
            unseen, mean = losses[protocol], losses[f"mean {protocol}"]
            if claim == "a":
                value = float((losses["train"] / mean).max()) if _measured(mean) else np.nan
                holds = value <= FIT_FRACTION
            elif claim == "a'":
                value = float((unseen / mean).median()) if _measured(unseen) and _measured(mean) else np.nan
                holds = value <= INFORMATIVE_FRACTION
            else:
                value = float((unseen / losses["train"]).median()) if _measured(unseen) else np.nan
                holds = value >= GAP_FACTOR
            row[protocol] = None if np.isnan(value) else bool(holds)
            row[f"{protocol} value"] = "n/a" if np.isnan(value) else f"{value:.3g}"
        out.append(row)
    return out


def _separated(high: Mapping[str, float], low: Mapping[str, float]) -> bool:
    """Whether the interval ``high`` lies wholly above the interval ``low``."""
    return bool(high["low"] > low["high"])


def _score_claims(retention: pd.DataFrame) -> list[dict[str, Any]]:
    d = {"claim": "d", "measure": "retention of the best and the worst single layer (differ: intervals apart)"}
    e = {"claim": "d'", "measure": "retention of the best single layer and of all layers (better: intervals apart)"}
    for protocol in PROTOCOLS:
        sub = retention[(retention["protocol"] == protocol) & retention["retention"].notna()].set_index("layers")
        single = sub.drop(index="all", errors="ignore")
        if len(single) < 2:
            for row in (d, e):
                row[protocol], row[f"{protocol} value"] = None, "n/a"
            continue
        best, worst = single.loc[single["retention"].idxmax()], single.loc[single["retention"].idxmin()]
        d[protocol] = _separated(best, worst)
        d[f"{protocol} value"] = f"layer {best.name} {_ci(best)} vs layer {worst.name} {_ci(worst)}"
        if "all" in sub.index:
            e[protocol] = _separated(best, sub.loc["all"])
            e[f"{protocol} value"] = f"layer {best.name} {_ci(best)} vs all {_ci(sub.loc['all'])}"
        else:
            e[protocol], e[f"{protocol} value"] = None, "n/a"
    return [d, e]


def _ci(row: Mapping[str, float]) -> str:
    return f"{row['retention']:.0%} [{row['low']:.0%}, {row['high']:.0%}]"


def claim_table(losses: pd.DataFrame, retention: pd.DataFrame) -> pd.DataFrame:
    """One row per claim (``a``, ``a'``, ``b``, ``d``, ``d'``): the measure, its value and whether it holds
    split by run and by network (``None``: not measured), and the :func:`verdict`.

    ``losses``: a :func:`loss_table`; ``retention``: a :func:`retention_table`.
    """
    rows = _loss_claims(losses) + _score_claims(retention)
    table = pd.DataFrame(rows).set_index("claim")
    def known(value: Any) -> bool | None:
        return bool(value) if isinstance(value, (bool, np.bool_)) else None

    table["verdict"] = [verdict(known(r[PROTOCOLS[0]]), known(r[PROTOCOLS[1]])) for _, r in table.iterrows()]
    return table[["measure", "by run value", "by run", "by network value", "by network", "verdict"]]


def loss_history(losses: pd.DataFrame, models: pd.DataFrame, form: str) -> pd.DataFrame:
    """Per epoch and layer, the train, ``by run`` and ``by network`` functional losses of the main ``form``
    autoencoders (stage 2's ``losses.csv``, the models ``models.csv`` gives the role ``main``); the
    by-network column is NaN where stage 2 held nothing out."""
    main = models[models["roles"].astype(str).str.contains("'main'") & (models["form"] == form)]["model"]
    history = losses[losses["model"].isin(set(main))]
    columns = {"train_functional": "train", "val_functional": "by run", "holdout_functional": "by network"}
    return history.reindex(columns=["epoch", "layer", *columns]).rename(columns=columns).reset_index(drop=True)
