"""Stage 2's inputs as notebook 02 builds them, for the issue-29 benchmarks (learning_curve.py,
loss_study.py, init_vs_behaviour.py): the zoo of a run's data stage, its state pools, each network's
run label (a DAgger student: its own id), the held-out train snapshots of ``stop_on: train_holdout``,
and the main autoencoders' configs (:func:`nnae_utils.autoencoders.plan_experiments`, role main), all from
:class:`nnae_utils.autoencoders.StageData` and the stage's ``LayerAEParams.plan_settings``, as notebook 02 builds them."""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from nnae_utils import autoencoders as ae
from nnae_utils.pipeline import load_profile, resolve_params
from nnae_utils.states import StateDataset


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


def load_stage2_inputs(run_dir: Path, profile: str = "default", overrides: dict | None = None) -> Stage2Inputs:
    P = resolve_params(load_profile(profile), {}, run_dir)["layer_autoencoders"]
    if overrides:
        P = replace(P, **overrides)
    data_dir = Path(run_dir) / "01_data"
    data = ae.StageData.load(data_dir, seed=P.seed, holdout_every=P.holdout_spacing())
    split_of = data.zoo.frame().set_index("id")["split"]
    plan, _ = ae.plan_experiments(data.spec, **P.plan_settings())
    splits = json.loads((data_dir / "zoo" / "splits.json").read_text())
    return Stage2Inputs(P, data.zoo, data.dataset, splits, [split_of[r["id"]] for r in data.zoo.records], data.labels,
                        [r["id"] in data.holdout_ids for r in data.zoo.records],
                        [float(r["return_mean"]) for r in data.zoo.records], data.pools,
                        [r.config for r in plan if "main" in r.roles], P.training_settings())
