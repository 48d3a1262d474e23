"""DAgger distillation: a student network that acts like a strong teacher, from its own initial weights.

A TD3 run spends most of its cost (260k-375k steps, about an hour of a core here) before its actor
first solves Hopper; after that, a candidate snapshot costs at least 46 CPU-seconds and many dip
below the bar. A student of a strong snapshot costs about 15 CPU-seconds
(``benchmarks/distill_cost.py``), and is a network of its own: other initial weights, so other
hidden-unit order and other weights, acting like its teacher. That is also why the shipped zoo
has none: in weight space a student is as far from its teacher as a network of another run
(``benchmarks/students_vs_snapshots.py``). The zoo labels
students in ``index.json`` (``provenance.kind``) and keeps them in their teacher's run for the splits.

DAgger (Ross, Gordon & Bagnell, 2011): round 0 rolls out the teacher; every later round rolls out
the current student. Every visited state is labelled with the teacher's deterministic action and
added to the dataset, and the student is trained on the whole dataset by mean squared error on
actions. Rolling out the student is what makes this better than plain behaviour cloning: the
student learns what the teacher would do in the states the student's own mistakes lead to.

Example:
    >>> from nnae_utils.policies import Network, NetworkSpec
    >>> teacher = Network.random(NetworkSpec(obs_dim=11, act_dim=3, hidden=(8, 8)), seed=0)
    >>> cfg = DistillConfig(rounds=2, episodes_per_round=1, epochs_per_round=2, max_steps=20, seed=1)
    >>> result = distill(teacher, cfg)
    >>> result.network.spec == teacher.spec, list(result.history.columns)
    (True, ['round', 'states', 'loss', 'rollout_return'])
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from . import backends
from .policies import Network, actor_to_network, load_network, make_actor, save_network
from .rollouts import evaluate
from .seeds import eval_seeds


CPU_SECONDS_KEY = "distill_cpu_s"
"""Metadata key of a student file written by :func:`distill_many`: CPU seconds its distillation took."""


@dataclass(frozen=True)
class DistillConfig:
    """Settings of one DAgger student."""

    rounds: int = 6
    """DAgger rounds: round 0 collects states on the teacher's trajectories, later rounds on the student's."""
    episodes_per_round: int = 8
    """Episodes rolled out per round to collect states (on the ``distill`` reset seeds)."""
    rollout_noise: float = 0.1
    """Std of the Gaussian noise on collecting rollouts' actions, so the data covers states beside the trajectories."""
    epochs_per_round: int = 30
    """Passes over the aggregated dataset after each round."""
    batch_size: int = 256
    """Minibatch size."""
    learning_rate: float = 1e-3
    """Adam's learning rate."""
    max_steps: int = 1000
    """Episode cap of the collecting rollouts."""
    seed: int = 0
    """The student's seed: its initial weights, minibatch order, reset seeds and action noise."""

    def __post_init__(self) -> None:
        for name in ("rounds", "episodes_per_round", "epochs_per_round", "batch_size", "max_steps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"DistillConfig.{name} must be positive, got {getattr(self, name)}")
        if self.rollout_noise < 0 or self.learning_rate <= 0 or self.seed < 0:
            raise ValueError("DistillConfig: rollout_noise must be >= 0, learning_rate > 0 and seed >= 0")

    def reset_seeds(self, round_: int) -> np.ndarray:
        """The reset seeds of round ``round_``: disjoint across rounds and student seeds."""
        return eval_seeds("distill", self.episodes_per_round, offset=(self.seed * self.rounds + round_) * self.episodes_per_round)


@dataclass
class DistillResult:
    network: Network
    """The student, with ``teacher`` and ``distill_seed`` in its file metadata."""
    history: pd.DataFrame
    """One row per round: dataset size, final minibatch loss, mean return of the collecting rollouts."""


def distill(teacher: Network, cfg: DistillConfig, *, teacher_id: str = "") -> DistillResult:
    """Train a student of ``teacher``'s architecture by DAgger (see the module docstring).

    Deterministic for a given ``cfg`` on a given machine and torch build (one torch thread).
    """
    import torch

    cfg.reset_seeds(cfg.rounds - 1)  # fails now, not after the first rounds, if the seeds run out
    spec = teacher.spec
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        student = make_actor(spec)
    order = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.Adam(student.parameters(), lr=cfg.learning_rate)
    states = np.zeros((0, spec.obs_dim), np.float32)
    labels = np.zeros((0, spec.act_dim), np.float32)  # the teacher's actions on ``states``
    rows = []
    for round_ in range(cfg.rounds):
        actor = teacher if round_ == 0 else actor_to_network(spec, student)
        rollout = evaluate(
            actor, cfg.reset_seeds(round_), nthread=1, max_steps=cfg.max_steps, record="observations",
            action_noise=cfg.rollout_noise, noise_seed=cfg.seed if cfg.rollout_noise > 0 else None,
        )
        visited = rollout.observations.astype(np.float32)
        states = np.concatenate([states, visited])
        labels = np.concatenate([labels, teacher.act(visited).astype(np.float32)])  # only the new states
        x, y = torch.from_numpy(states), torch.from_numpy(labels)
        loss = torch.zeros(())
        for _ in range(cfg.epochs_per_round):
            perm = torch.randperm(len(x), generator=order)
            for start in range(0, len(x), cfg.batch_size):
                batch = perm[start : start + cfg.batch_size]
                loss = ((student(x[batch]) - y[batch]) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
        rows.append({"round": round_, "states": len(states), "loss": float(loss.detach()), "rollout_return": float(rollout.returns.mean())})
    meta = {"teacher": teacher_id, "distill_seed": str(cfg.seed)}
    return DistillResult(actor_to_network(spec, student, meta), pd.DataFrame(rows))


def _distill_to_file(teacher_path: str, cfg: DistillConfig, out_path: str, teacher_id: str) -> str:
    import time

    start = time.process_time()
    with backends.torch_threads(1):
        result = distill(load_network(teacher_path), cfg, teacher_id=teacher_id)
    net = result.network
    net.extra_metadata[CPU_SECONDS_KEY] = f"{time.process_time() - start:.3f}"  # what the zoo's provenance sums
    save_network(out_path, net)  # atomic: a killed job leaves no student behind
    return out_path


@dataclass(frozen=True)
class StudentJob:
    """One student to distill: the teacher's file, the settings (with the student's seed), where it goes."""

    teacher_path: Path
    teacher_id: str
    config: DistillConfig
    out_path: Path


def distill_many(jobs: Sequence[StudentJob], *, workers: int = 2, backend=None, progress: bool = True) -> list[Path]:
    """Distill every job's student into its ``out_path``, ``workers`` processes at a time.

    A student whose file exists is kept, so an interrupted call resumes where it stopped.
    """
    todo = [j for j in jobs if not Path(j.out_path).is_file()]
    backends.resolve(backend).map(  # a failed student stops the call, naming its error
        _distill_to_file, [str(j.teacher_path) for j in todo], [j.config for j in todo],
        [str(j.out_path) for j in todo], [j.teacher_id for j in todo],
        max_workers=workers, progress=progress, desc="DAgger students")
    return [Path(j.out_path) for j in jobs]


def config_record(cfg: DistillConfig) -> dict:
    """The settings a student's provenance records (its seed is recorded on its own)."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k != "seed"}
