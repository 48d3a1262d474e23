"""The state dataset on which the functional loss compares the actions of two networks.

As in the paper, it mixes states *visited* by deploying the zoo's networks with a share of
*random* states, which decorrelate the inputs. Random states are drawn from the product of the
visited states' marginals: each coordinate is an independent draw from the values that coordinate
took in the visited states. They therefore stay inside the range Hopper really visits, one
coordinate at a time, while the correlations between coordinates (the posture of a hopping
robot) are broken.

Example:
    >>> visited = np.arange(20.0).reshape(10, 2)
    >>> r = product_of_marginals(visited, 4, np.random.default_rng(0))
    >>> r.shape, bool(np.isin(r[:, 0], visited[:, 0]).all())
    ((4, 2), True)
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .policies import Network
from .rollouts import evaluate
from .seeds import eval_seeds


@dataclass
class StateDataset:
    states: np.ndarray
    """(N, obs_dim) float32 observations."""
    is_random: np.ndarray
    """(N,) bool: True for a random state, False for a visited one."""
    owner: np.ndarray
    """(N,) int: index of the zoo network that visited the state (-1 for random states)."""

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        np.savez_compressed(path, states=self.states, is_random=self.is_random, owner=self.owner)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "StateDataset":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"state dataset not found: {path}")
        with np.load(path, allow_pickle=False) as f:
            return cls(f["states"], f["is_random"], f["owner"])

    def __len__(self) -> int:
        return len(self.states)

    def sample(self, n: int, seed: int) -> np.ndarray:
        """``min(n, len)`` states drawn without replacement with ``seed``, in dataset order: the states on which
        stages 4 and 5 calibrate mutation strengths and measure what encoding a migrant loses.

        Example:
            >>> d = StateDataset(np.arange(10.0)[:, None], np.zeros(10, bool), np.zeros(10, int))
            >>> d.sample(3, seed=0).ravel().tolist() == sorted(d.sample(3, seed=0).ravel().tolist())
            True
            >>> len(d.sample(50, seed=0))
            10
        """
        pick = np.random.default_rng(seed).choice(len(self.states), size=min(n, len(self.states)), replace=False)
        return self.states[np.sort(pick)]


def product_of_marginals(visited: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` states whose coordinates are drawn independently from the visited states' columns."""
    idx = rng.integers(0, len(visited), size=(n, visited.shape[1]))
    return visited[idx, np.arange(visited.shape[1])]


def collect_states(
    networks: Sequence[Network],
    *,
    episodes: int,
    n_states: int,
    random_fraction: float,
    seed: int,
    progress: bool = True,
) -> StateDataset:
    """Deploy every network for ``episodes`` episodes, subsample the visited states, add random ones."""
    if not networks:
        raise ValueError("collect_states needs at least one network")
    if not 0.0 <= random_fraction < 1.0:
        raise ValueError(f"random_fraction must lie in [0, 1), got {random_fraction}")
    rng = np.random.default_rng(seed)
    result = evaluate(list(networks), eval_seeds("states", episodes), record="observations", progress=progress)
    visited, owner = result.observations.astype(np.float32), result.observation_owner[:, 0]
    n_visited = min(n_states - int(round(n_states * random_fraction)), len(visited))
    if n_visited < n_states - int(round(n_states * random_fraction)):
        warnings.warn(
            f"the zoo visited only {len(visited)} states; the dataset shrinks to keep random_fraction={random_fraction}",
            stacklevel=2,
        )
    # keep the requested share of random states even when fewer visited states exist
    n_random = int(round(n_visited * random_fraction / (1.0 - random_fraction)))
    pick = np.sort(rng.choice(len(visited), size=n_visited, replace=False))
    random_states = product_of_marginals(visited, n_random, rng)
    states = np.concatenate([visited[pick], random_states]).astype(np.float32)
    is_random = np.concatenate([np.zeros(n_visited, bool), np.ones(n_random, bool)])
    owners = np.concatenate([owner[pick], -np.ones(n_random, np.int64)])
    return StateDataset(states, is_random, owners)
