"""Stage 2's tables, files and verdicts: what notebook 02 saves, tabulates and says about its layer autoencoders.

:mod:`nnae_utils.autoencoders` trains and plans the autoencoders; this module holds the stage's bookkeeping
around them, as :mod:`nnae_utils.decoded` holds stage 3's:

1. the layers' shapes (:func:`layer_table`);
2. its files and tables: the planned autoencoders saved with ``models.csv``, ``losses.csv`` / ``.json``
   (:func:`save_trained`, :class:`TrainedModels`, :func:`model_row`), the PCA baseline with ``pca.csv``
   (:func:`pca_baseline`), the symmetry options' autoencoders with ``symmetry.csv`` (:func:`save_symmetry_runs`);
3. its summary and sentences: :func:`layer_summaries`, :func:`over_functional`, :func:`symmetry_medians`,
   :func:`spread`, and the verdicts notebook 02 glues (:func:`information_verdict`, :func:`gap_verdict`,
   :func:`symmetry_sentence`, :func:`weights_verdict`, :func:`dagger_verdict`, :func:`token_cap_sentence`,
   :func:`zoo_caveat`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .policies import NetworkSpec, save_network
from .functional_loss import layer_shape
from .layer_codes import FORMS, LayerCode, PCALayerCode, layer_std, save_layer_autoencoder, save_pca
from .autoencoders import LayerData, PlannedRun, SymmetryRun, TrainResult, evaluate_code, mean_layer_loss


def layer_table(spec: NetworkSpec) -> pd.DataFrame:
    """Per layer: shape, parameters, and what the neuron-token form sees (token size, tokens, its largest ratio)."""
    rows = []
    for i in range(spec.n_layers):
        out_units, inputs = layer_shape(spec, i)
        rows.append({"layer": i, "shape (out x in)": f"{out_units} x {inputs}", "parameters": spec.layer_param_count(i),
                     "token size (in + 1)": inputs + 1, "tokens per network": out_units,
                     "token form's largest ratio": f"{inputs + 1}x"})
    return pd.DataFrame(rows).set_index("layer")


# --------------------------------------------------------------------------- stage 2's tables


@dataclass
class TrainedModels:
    """Stage 2's planned autoencoders once trained: ``models.csv``'s rows, every epoch's losses, the models."""

    table: pd.DataFrame
    """One row per model: its config, roles, losses at the epoch kept and the last, timing, checkpoint."""
    history: pd.DataFrame
    """One row per model and epoch."""
    models: dict[str, LayerCode]
    reused: list[str]
    """Names of the models read back from the work folder (trained by an earlier run on the same data and settings)."""

    @property
    def main(self) -> pd.DataFrame:
        """The main autoencoders' rows, indexed by (layer, form)."""
        return self.table[self.table.roles.map(lambda r: "main" in r)].set_index(["layer", "form"]).sort_index()

    def with_role(self, role: str) -> pd.DataFrame:
        return self.table[self.table.roles.map(lambda r: role in r)]

    @property
    def wall_seconds(self) -> float:
        """Training time of every model, read back or not."""
        return float(self.table["wall_seconds"].sum())


def model_row(run: PlannedRun, result: TrainResult) -> dict[str, Any]:
    """``models.csv``'s row of one trained model: config, roles, losses at the epoch kept and the last, timing,
    and its checkpoint in the stage folder (the main ones under ``autoencoders/``, which stages 3 and 4 load)."""
    cfg, best, last = run.config, result.best, result.history[-1]
    folder, stem = ("autoencoders", f"layer{cfg.layer}_{cfg.form}") if "main" in run.roles else ("models", cfg.name)
    return {
        "model": cfg.name, "layer": cfg.layer, "form": cfg.form, "loss": cfg.loss, "symmetry": cfg.symmetry,
        "latent": cfg.latent, "latent_dim": result.model.latent_dim, "ratio": result.model.compression_ratio,
        "requested_ratios": run.requested_ratios, "reachable": run.reachable, "roles": sorted(run.roles),
        "train_functional": best["train_functional"], "val_functional": best["val_functional"],
        "train_functional_last": last["train_functional"], "val_functional_last": last["val_functional"],
        "train_weight_mse": best["train_weight_mse"], "val_weight_mse": best["val_weight_mse"],
        "holdout_functional": best.get("holdout_functional", np.nan),
        "best_epoch": result.best_epoch, "epochs": result.epochs_run, "stopped_early": result.stopped_early,
        "wall_seconds": result.wall_seconds, "dagger_states": result.dagger_states,
        "checkpoint": f"{folder}/{stem}.safetensors",
    }


def save_trained(plan: Sequence[PlannedRun], trained: Sequence[tuple[TrainResult, bool]],
                 stage_dir: str | os.PathLike) -> TrainedModels:
    """Save each trained model of ``plan`` into the stage folder (its row as the checkpoint's info) and
    write ``models.csv``, ``losses.csv`` and ``losses.json``."""
    stage_dir = Path(stage_dir)
    rows, history, models, reused = [], [], {}, []
    for run, (result, was_reused) in zip(plan, trained):
        cfg = run.config
        row = model_row(run, result)
        save_layer_autoencoder(stage_dir / row["checkpoint"], result.model, info=row)
        rows.append(row)
        history += [{**h, "model": cfg.name, "layer": cfg.layer, "form": cfg.form, "loss": cfg.loss} for h in result.history]
        models[cfg.name] = result.model
        reused += [cfg.name] if was_reused else []
    out = TrainedModels(pd.DataFrame(rows), pd.DataFrame(history), models, reused)
    out.table.to_csv(stage_dir / "models.csv", index=False)
    out.history.to_csv(stage_dir / "losses.csv", index=False)
    (stage_dir / "losses.json").write_text(out.history.to_json(orient="records"))
    return out


def pca_baseline(trained: TrainedModels, train: LayerData, val: LayerData, stage_dir: str | os.PathLike) -> tuple[pd.DataFrame, dict[int, float]]:
    """The per-layer PCA baseline at every latent size a functional-loss autoencoder was trained at, and the
    mean layer's validation loss per layer (a code that carries nothing about the network).

    Each layer and form's basis, at the main latent size, is saved as ``pca/layer<i>_<form>.safetensors``
    (stage 4's subspace control); the table (``pca.csv``) has one row per layer, form and latent size,
    ``main`` marking the main latent size.
    """
    stage_dir = Path(stage_dir)
    table, main = trained.table, trained.main
    rows, mean_loss = [], {}
    for layer in range(train.stack.spec.n_layers):
        std = layer_std(train.stack, layer)
        mean_loss[layer] = mean_layer_loss(train, val, layer)
        for form in FORMS:
            main_k = int(main.loc[(layer, form), "latent"])
            basis = PCALayerCode.fit(train.networks, layer, form, k=main_k)
            save_pca(stage_dir / "pca" / f"layer{layer}_{form}.safetensors", basis)
            functional = table[(table.layer == layer) & (table.form == form) & (table.loss == "functional")]
            for k in sorted(set(functional["latent"])):
                code = basis.with_k(k)
                on_train, on_val = evaluate_code(code, train, std), evaluate_code(code, val, std)
                rows.append({"layer": layer, "form": form, "latent": k, "latent_dim": code.latent_dim,
                             "ratio": code.compression_ratio, "rank": basis.rank, "explained_variance": code.explained_variance(),
                             "train_functional": on_train["functional"], "val_functional": on_val["functional"],
                             "val_weight_mse": on_val["weight_mse"], "main": k == main_k})
    pca = pd.DataFrame(rows)
    pca.to_csv(stage_dir / "pca.csv", index=False)
    return pca, mean_loss


def save_symmetry_runs(runs: Mapping[str, SymmetryRun], stage_dir: str | os.PathLike) -> tuple[pd.DataFrame, float, list[str]]:
    """Save every symmetry option's autoencoders (but none's, the main ones) and reference under
    ``symmetry/<option>/`` and write ``symmetry.csv``: (its table, the options' training seconds, the
    names of the models read back). augment keeps no reference: it encodes networks as they are."""
    stage_dir = Path(stage_dir)
    rows, wall, reused = [], 0.0, []
    for option, run in runs.items():
        rows += run.rows()
        if option == "none":  # the main autoencoders, saved under autoencoders/
            continue
        reference_file = f"symmetry/{option}/reference.safetensors" if option != "augment" else None
        if reference_file:
            save_network(stage_dir / reference_file, run.reference)
        for result, was_reused in run.results:
            cfg = result.model.config
            reused += [cfg.name] if was_reused else []
            wall += result.wall_seconds
            save_layer_autoencoder(stage_dir / "symmetry" / option / f"layer{cfg.layer}_{cfg.form}.safetensors", result.model,
                                   info={"symmetry": option, "reference": reference_file,
                                         "val_functional": result.best["val_functional"]})
    table = pd.DataFrame(rows)
    table.to_csv(stage_dir / "symmetry.csv", index=False)
    return table, wall, reused


# --------------------------------------------------------------------------- stage 2's summary


def median(values: Any) -> float:
    return float(np.median(np.asarray(list(values), float)))


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of a few ratios (the summary's loss-ablation entries)."""
    return {"median": median(values), "min": float(min(values)), "max": float(max(values))}


def layer_summaries(spec: NetworkSpec, main: pd.DataFrame, pca_main: pd.DataFrame, mean_loss: Mapping[int, float],
                    onpolicy: Mapping[tuple[int, str, str], float]) -> list[dict[str, Any]]:
    """The summary's ``layers``: per layer its shape and, per form, the main autoencoder's size, losses at the
    epoch kept and the last, training, checkpoint, the PCA's and the on-policy validation loss; and the
    mean layer's validation loss."""
    summaries = []
    for layer in range(spec.n_layers):
        entry = {"layer": layer, "shape": list(layer_shape(spec, layer)), "params": spec.layer_param_count(layer), "forms": {}}
        for form in FORMS:
            r = main.loc[(layer, form)]
            entry["forms"][form] = {
                "latent_per_unit": int(r["latent"]), "latent_dim": int(r["latent_dim"]), "compression_ratio": float(r["ratio"]),
                "train_loss": float(r["train_functional"]), "val_loss": float(r["val_functional"]),
                "holdout_loss": None if np.isnan(r["holdout_functional"]) else float(r["holdout_functional"]),
                "train_loss_last_epoch": float(r["train_functional_last"]), "val_loss_last_epoch": float(r["val_functional_last"]),
                "val_weight_mse": float(r["val_weight_mse"]), "best_epoch": int(r["best_epoch"]), "epochs": int(r["epochs"]),
                "stopped_early": bool(r["stopped_early"]), "wall_seconds": round(float(r["wall_seconds"]), 2),
                "checkpoint": r["checkpoint"], "pca_val_loss": float(pca_main.loc[(layer, form), "val_functional"]),
                "onpolicy_val_loss": onpolicy[(layer, form, "functional")],
            }
        entry["mean_layer_val_loss"] = mean_loss[layer]
        summaries.append(entry)
    return summaries


def over_functional(ablation: pd.DataFrame, loss: str, column: str = "val_functional") -> list[float]:
    """Per layer and form, ``loss``'s ``column`` over the functional loss's (``ablation.csv``'s rows)."""
    by = ablation.set_index(["layer", "form", "loss"])[column]
    layers = sorted(ablation["layer"].unique())
    return [by[(layer, f, loss)] / by[(layer, f, "functional")] for layer in layers for f in FORMS]


def symmetry_medians(symmetry: pd.DataFrame, options: Sequence[str], column: str) -> dict[str, dict[str, float]] | None:
    """{option: {form: median over layers of ``column``}} of ``symmetry.csv``; None if it lacks the column."""
    if column not in symmetry:
        return None
    return {o: {f: median(symmetry[(symmetry.symmetry == o) & (symmetry.form == f)][column]) for f in FORMS} for o in options}


def information_verdict(val_over_mean: float) -> str:
    """How much a main autoencoder's code carries about a held-out network's layer, from its validation
    loss over the mean layer's."""
    return "little" if val_over_mean > 0.7 else "some" if val_over_mean > 0.3 else "much"


def gap_verdict(gap: Mapping[str, float]) -> str:
    """The train / held-out gap, from each form's median validation over train loss."""
    if min(gap.values()) > 2:
        return "The autoencoders fit the train networks far better than held-out ones, as the paper found."
    if max(gap.values()) < 1.5:
        return "Held-out networks are decoded about as well as train networks."
    return "The gap between train and held-out networks differs between the forms."


SYMMETRY_EFFECT = 0.95
"""A symmetry option counts as lowering the validation loss over the mean layer's when it brings it below
this fraction of the option none's."""


def symmetry_sentence(by_run: Mapping[str, Mapping[str, float]], by_network: Mapping[str, Mapping[str, float]] | None,
                      options: Sequence[str]) -> str:
    """What the symmetry options did to the validation loss over the mean layer's (:func:`symmetry_medians`),
    split by run, and split by network when the held-out snapshots were measured."""
    form, best = min(((f, o) for o in options for f in FORMS), key=lambda fo: by_run[fo[1]][fo[0]])
    best_x, none_x = by_run[best][form], by_run["none"][form]
    text = "Validation loss over the mean layer's (median over layers, flat / token) by symmetry option: " + "; ".join(
        f"{o} {by_run[o]['flat']:.2f} / {by_run[o]['token']:.2f}" for o in options) + ". "
    if best_x > SYMMETRY_EFFECT * none_x:
        text += ("No symmetry option lowers it by more than 5% against none: separate training runs find different "
                 "solutions, whatever the order and scale of their units.")
    else:
        text += (f"{best} lowers it most ({form} form: {best_x:.2f} against {none_x:.2f} without), "
                 + ("so the order and scale of hidden units explain most of the failure to generalise." if best_x < 0.5 else
                    "but the rest lies in how different the solutions of separate training runs are."))
    if by_network:
        text += (f" Split by network instead (held-out snapshots of the train runs, which also chose the epoch kept), the same "
                 f"ratio is {by_network['none']['flat']:.2f} / {by_network['none']['token']:.2f} without symmetry handling.")
    return text


def weights_verdict(weights_over_functional: float) -> str:
    """What training on weights alone did, from its median validation functional loss over the functional loss's."""
    x = weights_over_functional
    if x > 1.5:
        return "Weight reconstruction alone gives much worse-functioning decoded layers, as hyper-representation work found."
    if x > 1.1:
        return ("Weight reconstruction alone gives somewhat worse-functioning decoded layers, in the direction "
                "hyper-representation work found.")
    if x >= 0.9:
        return "Here weight reconstruction alone does about as well as the functional loss."
    return "Here weight reconstruction alone gives *lower* functional validation losses than the functional loss."


def dagger_verdict(dagger_over_functional: float) -> str:
    """What the DAgger-style variant did on the decoded networks' own states, from its median on-policy loss
    over the functional loss's."""
    if dagger_over_functional < 0.9:
        return "so training on the decoded networks' own states lowers the loss where they go."
    if dagger_over_functional > 1.1:
        return "so on this zoo, training on the decoded networks' own states raises the loss where they go."
    return "so on this zoo, training on the decoded networks' own states barely changes the loss where they go."


def token_cap_sentence(limit: float, unreachable: Sequence[float]) -> str:
    """The neuron-token form's ratio limit on layer 0, and the sweep ratios beyond it."""
    if unreachable:
        return (f"The neuron-token form cannot pass {limit:g}x on layer 0 (11 inputs and a bias per token): "
                f"the sweep's {', '.join(f'{r:g}x' for r in unreachable)} gave it {limit:g}x.")
    return (f"The neuron-token form cannot pass {limit:g}x on layer 0 (11 inputs and a bias per token); no ratio asked "
            "for here lies beyond it.")


def zoo_caveat(data_summary: Mapping[str, Any]) -> str:
    """A warning when some of the zoo's networks do not solve Hopper (stage 1's summary), else nothing."""
    solved, n_zoo = data_summary.get("solved", {}), data_summary.get("n_networks")
    n_solved = solved.get("n_networks")
    if n_solved is None or n_solved >= n_zoo:
        return ""
    return (f"Only {n_solved} of the zoo's {n_zoo} networks reach a return of {solved['return_bar']:.0f} (median "
            f"{data_summary['return_median']:.0f}, stage 1): these are not the paper's networks that solve Hopper, and "
            "the numbers above say little about compressing those.")
