"""Stage 2's inputs as notebook 02 builds them, for the issue-29 benchmarks (learning_curve.py,
loss_study.py, init_vs_behaviour.py): the zoo of a run's data stage, its state pools, each network's
run label (a DAgger student: its own id), the held-out train snapshots of ``stop_on: train_holdout``,
and the main autoencoders' configs (:func:`nnae_utils.autoencoders.plan_experiments`, role main)."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from nnae_utils import autoencoders as ae
from nnae_utils.pipeline import load_profile, resolve_params
from nnae_utils.states import StateDataset
from nnae_utils.zoo import load_zoo


@dataclass
class Stage2Inputs:
    P: Any                    # stage 2's LayerAEParams of the profile
    zoo: Any                  # nnae_utils.zoo.Zoo
    dataset: StateDataset
    splits: dict              # splits.json as written
    split: list[str]          # per network
    labels: list[str]         # per network: run<r> (a TD3 snapshot) or its own id (a student)
    stop_mask: list[bool]     # per network: held out of training, decides early stopping
    returns: list[float]
    pools: dict[str, np.ndarray]
    configs: list[ae.LayerAEConfig]
    train_kwargs: dict

    def runs_of(self, *splits: str) -> list[str]:
        return sorted({lab for lab, s in zip(self.labels, self.split) if s in splits})

    def trainable_runs(self) -> list[str]:
        """Train runs with a network to train on (a student is a run of its own, and may be all held out)."""
        return sorted({lab for lab, s, stop in zip(self.labels, self.split, self.stop_mask) if s == "train" and not stop})


def stage2_plan(P, spec):
    """Notebook 02's experiment plan and training settings from its parameters ``P`` (a LayerAEParams)."""
    train_kwargs = dict(lr=P.lr, max_epochs=P.max_epochs, steps_per_epoch=P.steps_per_epoch,
                        networks_per_batch=P.networks_per_batch, states_per_batch=P.states_per_batch, patience=P.patience,
                        min_delta=P.min_delta, weight_loss_coef=P.weight_loss_coef, dagger_every=P.dagger_every,
                        dagger_networks=P.dagger_networks, dagger_fraction=P.dagger_fraction,
                        dagger_max_steps=P.rollout_max_steps, seed=P.seed)
    plan, _ = ae.plan_experiments(spec, main_ratio=P.main_ratio, sweep_ratios=P.sweep_ratios,
                                  max_flat_latent=P.max_flat_latent, flat_hidden=P.flat_hidden,
                                  token_hidden=P.token_hidden, **train_kwargs)
    return plan, train_kwargs


def load_stage2_inputs(run_dir: Path, profile: str = "default", overrides: dict | None = None) -> Stage2Inputs:
    P = resolve_params(load_profile(profile), {}, run_dir)["layer_autoencoders"]
    if overrides:
        P = replace(P, **overrides)
    data_dir = Path(run_dir) / "01_data"
    Z = load_zoo(data_dir / "zoo")
    dataset = StateDataset.load(data_dir / "states.npz")
    frame = Z.frame()
    split_of = frame.set_index("id")["split"]
    split = [split_of[r["id"]] for r in Z.records]
    pools = ae.split_states(dataset.states, dataset.is_random, dataset.owner, split, seed=P.seed)
    holdout_ids = set(Z.holdout_snapshots(P.holdout_every)) if P.stop_on == "train_holdout" else set()
    lineage = {r.id: f"run{r.run}" if r.kind == "td3_snapshot" else r.id for r in frame.itertuples()}
    plan, train_kwargs = stage2_plan(P, Z.networks[0].spec)
    import json
    splits = json.loads((data_dir / "zoo" / "splits.json").read_text())
    return Stage2Inputs(P, Z, dataset, splits, split, [lineage[r["id"]] for r in Z.records],
                        [r["id"] in holdout_ids for r in Z.records], [float(r["return_mean"]) for r in Z.records],
                        pools, [r.config for r in plan if "main" in r.roles], train_kwargs)
