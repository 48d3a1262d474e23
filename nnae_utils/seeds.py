"""Reset-seed namespaces of the evaluation protocol.

A network's reported return must never come from the episodes that selected it. Every purpose
draws its Hopper reset seeds from its own range, so the ranges can never overlap:

=====================  ===============  ==================================================
purpose                first seed       used for
=====================  ===============  ==================================================
``td3_selection``      0                in-training evaluations (``10_000 * run_seed + k``)
``zoo_admission``      1_000_000        the fresh score that admits a snapshot to the zoo
``zoo_report``         2_000_000        the zoo's reported returns (index.json)
``states``             3_000_000        episodes that collect the state dataset
``decoded_report``     4_000_000        paired scores of input and decoded networks
``distill``            5_000_000        rollouts that collect a DAgger student's states
``evolution_fitness``  10_000_000       fitness episodes during evolution
``champion_report``    90_000_000       fresh episodes that report a champion's return
=====================  ===============  ==================================================

Example:
    >>> eval_seeds("zoo_report", 3)
    array([2000000, 2000001, 2000002])
"""
from __future__ import annotations

import numpy as np

SEED_BASES = {
    "td3_selection": 0,
    "zoo_admission": 1_000_000,
    "zoo_report": 2_000_000,
    "states": 3_000_000,
    "decoded_report": 4_000_000,
    "distill": 5_000_000,
    "evolution_fitness": 10_000_000,
    "champion_report": 90_000_000,
}
_SPAN = 1_000_000  # seeds available to one purpose before the next range starts (fitness has more)


def eval_seeds(purpose: str, n: int, offset: int = 0) -> np.ndarray:
    """``n`` consecutive reset seeds of ``purpose``, starting ``offset`` seeds into its range."""
    if purpose not in SEED_BASES:
        raise ValueError(f"unknown seed purpose {purpose!r}; purposes: {sorted(SEED_BASES)}")
    if n <= 0 or offset < 0:
        raise ValueError(f"need n > 0 and offset >= 0, got n={n}, offset={offset}")
    span = 80_000_000 if purpose == "evolution_fitness" else _SPAN
    if offset + n > span:
        raise ValueError(f"{purpose}: seeds {offset}..{offset + n} run past its range of {span}")
    return np.arange(SEED_BASES[purpose] + offset, SEED_BASES[purpose] + offset + n, dtype=np.int64)


def td3_selection_seeds(run_seed: int, n: int) -> np.ndarray:
    """The in-training evaluation seeds of the TD3 run with seed ``run_seed``."""
    if not 0 <= run_seed < 100:
        raise ValueError(f"run seeds must lie in [0, 100) to stay inside td3_selection's range, got {run_seed}")
    return eval_seeds("td3_selection", n, offset=10_000 * run_seed)
