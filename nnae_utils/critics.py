"""The zoo's TD3 critics: where a zoo network's run saved its final critic, and which learners can start from it.

Stage 5 fine-tunes the zoo's test networks with TD3 learners; each learner's critic starts as the
final critic of the TD3 run its start network came from, when that file exists and has the learners'
widths. :func:`choose_critics` makes that choice for a set of start networks, with the reason for
each, from the data stage's folder alone (its ``stage.json`` and, for a shipped zoo, the zoo's
provenance, which name the training folders and the critics' widths).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from .td3 import CRITIC_FILE, TD3Config, load_critic
from .zoo import SHIPPED_PROVENANCE, run_folder


def find_zoo_critic(record: Mapping[str, Any], search_roots: Sequence[str | os.PathLike]) -> Path | None:
    """The final critic of the TD3 run a zoo network came from, or None if no such file exists.

    A zoo record's provenance names the run (``run``) and the settings digest of its training
    folder (``settings``); the run lives in ``<root>/<settings>/seed_<run>/`` under the data
    stage's training folder. ``search_roots`` lists the training folders to try, in order.
    The critic is the run's *final* one: for a snapshot taken earlier in the run, it has seen
    later data than the snapshot's actor (its step is in the critic file's metadata).

    Example:
        >>> find_zoo_critic({"id": "n", "provenance": {}}, ["/nowhere"]) is None   # no run named
        True
    """
    prov = record.get("provenance", {})
    if "run" not in prov or "settings" not in prov:
        return None
    for root in search_roots:
        path = run_folder(root, prov["settings"], prov["run"]) / CRITIC_FILE
        if path.is_file():
            return path
    return None


def critic_step(path: str | os.PathLike) -> int | None:
    """The training step a critic file was saved at (its metadata), if recorded."""
    _, meta = load_critic(path)
    return int(meta["step"]) if "step" in meta else None


@dataclass
class CriticChoice:
    """The learners' critic widths and, per start network, the critic file it starts from (None: fresh)."""

    hidden: list[int]
    paths: list[Path | None]
    rows: list[dict[str, Any]] = field(default_factory=list)
    """One row per start network: its id, snapshot step, critic step and why."""

    @property
    def n_loaded(self) -> int:
        return sum(p is not None for p in self.paths)

    def table(self) -> pd.DataFrame:
        """The rows as a table indexed by test network."""
        return pd.DataFrame(self.rows, columns=["test network", "snapshot step", "critic step", "critic"]).set_index(
            "test network")


def training_roots(data_dir: str | os.PathLike, run_root: str | os.PathLike) -> tuple[list[Path], dict[str, Any]]:
    """Where the zoo's TD3 runs may be (the data stage's training folder, then ``<run_root>/_work/td3``), and
    the parameters the zoo was trained with (a shipped zoo's own, else the data stage's).

    Example:
        >>> roots, params = training_roots("/nowhere/01_data", "runs/x")
        >>> [str(r) for r in roots], params
        (['runs/x/_work/td3'], {})
    """
    data_dir = Path(data_dir)
    stage_json = data_dir / "stage.json"
    data_params = json.loads(stage_json.read_text()).get("params", {}) if stage_json.is_file() else {}
    roots = [Path(data_params["training_dir"])] if data_params.get("training_dir") else []
    roots.append(Path(run_root) / "_work" / "td3")
    shipped = data_dir / "zoo" / SHIPPED_PROVENANCE  # its parameters trained it, not this run's data stage's
    zoo_params = json.loads(shipped.read_text())["params"] if shipped.is_file() else data_params
    return roots, zoo_params


def choose_critics(records: Sequence[Mapping[str, Any]], data_dir: str | os.PathLike, run_root: str | os.PathLike,
                   *, enabled: bool = True, hidden: Sequence[int] = ()) -> CriticChoice:
    """The critic each start network's learners start from: its TD3 run's final critic where one is found
    and has the learners' widths, else a fresh one (each row says why).

    Args:
        records: the start networks' zoo records (``index.json``).
        data_dir, run_root: the data stage's folder and the run folder (see :func:`training_roots`); a
            record's own ``training_dir`` and ``run_dir`` are searched after them.
        enabled: False starts every critic fresh (stage 5's ``zoo_critics``).
        hidden: the learners' critic widths; empty: those the zoo was trained with (TD3's default if unrecorded).

    Example:
        >>> c = choose_critics([{"id": "n", "provenance": {"step": 5}}], "/nowhere/01_data", "runs/x")
        >>> c.hidden == list(TD3Config.critic_hidden), c.paths, c.rows[0]["critic"]
        (True, [None], 'no critic file found: fresh critic')
    """
    roots, zoo_params = training_roots(data_dir, run_root)
    widths = list(hidden or zoo_params.get("critic_hidden") or TD3Config.critic_hidden)
    paths, rows = [], []
    for rec in records:
        prov = rec.get("provenance", {})
        search = list(roots)
        if prov.get("training_dir"):  # a zoo's own record of where its TD3 runs (and their critics) are
            search.append(Path(prov["training_dir"]))
        if prov.get("run_dir"):
            search.append(Path(prov["run_dir"]) / "_work" / "td3")
        path = find_zoo_critic(rec, search) if enabled else None
        why = "loaded" if path else ("zoo_critics is off" if not enabled else "no critic file found: fresh critic")
        if path is not None:
            critic, _ = load_critic(path)
            if list(critic.hidden) != widths:
                path, why = None, f"critic is {list(critic.hidden)}, learners use {widths}: fresh critic"
        paths.append(path)
        rows.append({"test network": rec["id"], "snapshot step": prov.get("step"),
                     "critic step": critic_step(path) if path else None, "critic": why})
    return CriticChoice(widths, paths, rows)
