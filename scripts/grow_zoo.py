"""Train the grown zoo's TD3 runs (issue 27) from the plan in ``zoo/growth.yaml``, resumably.

    python scripts/grow_zoo.py train c128 c64 --jobs 2       # the learner benchmark's runs
    python scripts/grow_zoo.py train grow shared_init        # with the learner it chose
    python scripts/grow_zoo.py compact                       # finished runs: drop optimizer state, keep candidates
    python scripts/grow_zoo.py ship c128 c64 grow shared_init  # admit finished runs into zoo/hopper-v5 (earlier runs keep their split)

Runs live in ``<training_dir>/<settings digest>/seed_<seed>`` and resume from their checkpoints; a
group with ``ensemble: K`` trains its seeds K at a time in one process (``nnae_utils.td3_ensemble``),
in ``<training_dir>/<settings digest>_ens<K>/seed_<seed>``;
a run stops once it holds the plan's number of candidate snapshots, or at the step cap (a failure).
Start it from a worktree frozen at one commit, with ``--root`` pointing at the checkout whose
``zoo/training`` the runs should fill.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nnae_utils import backends, zoo  # noqa: E402

CHOSEN = Path("benchmarks/results/zoo_learners.json")


def chosen_critic(root: Path) -> list[int] | None:
    path = root / CHOSEN
    chosen = json.loads(path.read_text()).get("chosen") if path.is_file() else None
    return chosen["critic_hidden"] if chosen else None


def chosen_ensemble(root: Path) -> int:
    """The chosen learner's ensemble size (1: single learners; also when none is chosen yet)."""
    path = root / CHOSEN
    chosen = json.loads(path.read_text()).get("chosen") if path.is_file() else None
    return int(chosen.get("ensemble", 1)) if chosen else 1


def ship(ap: argparse.ArgumentParser, names: list[str], plan: zoo.GrowthPlan, root: Path) -> int:
    """Admit the named groups' finished runs into zoo/hopper-v5 (sticky splits). Every refusal (an
    unknown group, a learner not chosen yet, no finished run to add) comes before any rollout."""
    if not names:
        ap.error("name at least one group to ship")
    try:
        groups = {g: plan.group(g, chosen_critic(root), chosen_ensemble(root)) for g in names}
    except ValueError as err:
        ap.error(str(err))
    run_dirs = {g: plan.run_dirs(grp, root / plan.training_dir) for g, grp in groups.items()}
    zoo_dir = root / "zoo/hopper-v5"
    admit, skipped = zoo.runs_to_ship(run_dirs, zoo.shipped_runs(zoo_dir))
    if not admit:
        ap.error(f"no finished run of {', '.join(names)} to add to {zoo_dir}: {skipped}")
    print("admitting", {g: [d.name for d in dirs] for g, dirs in admit.items()}, "skipping", skipped, flush=True)
    command = "python scripts/grow_zoo.py ship " + " ".join(names)
    splits = zoo.grow_shipped_zoo(zoo_dir, run_dirs, plan=plan, command=command)
    print("runs per split:", splits["runs"], "shared_init:", splits.get(zoo.SHARED_INIT, {}).get("runs", []),
          "folds:", len(splits["folds"]))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["train", "compact", "ship"])
    ap.add_argument("groups", nargs="*", help="groups of zoo/growth.yaml to train, in this order (interleaved)")
    ap.add_argument("--root", type=Path, default=Path("."), help="checkout holding zoo/growth.yaml and zoo/training")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args(argv)
    root = args.root.resolve()
    plan = zoo.GrowthPlan.read(root / "zoo/growth.yaml")
    training = root / plan.training_dir
    if args.command == "train":
        if not args.groups:
            ap.error("name at least one group")
        # every error before any training
        groups = [plan.group(g, chosen_critic(root), chosen_ensemble(root)) for g in args.groups]
        # ensemble groups: one process per ensemble of K seeds (nnae_utils.td3_ensemble), submitted first
        ensembles = [e for g in groups if g.ensemble > 1 for e in plan.ensembles(g)]
        per_group = [plan.configs(g) for g in groups if g.ensemble == 1]
        configs = [c for batch in zip(*per_group) for c in batch]  # interleaved: every learner moves early
        if per_group:
            longest = max(len(p) for p in per_group)
            configs += [c for p in per_group for c in p[min(len(q) for q in per_group):longest]]
        zoo.train_runs(configs, training, jobs=args.jobs, done_when=plan.done_when, ensembles=ensembles)
        return 0
    if args.command == "ship":
        return ship(ap, args.groups, plan, root)
    # finished runs keep curve, provenance, critic and candidate snapshots; unfinished ones also keep
    # their checkpoint (what a resume on a new machine needs: the buffer is refilled, and recorded)
    critic, ensemble = chosen_critic(root), chosen_ensemble(root)
    plan_runs = {d for name, g in plan.groups.items() if g.get("learner") != "chosen" or critic
                 for d in plan.run_dirs(plan.group(name, critic, ensemble), training)}
    for prov_path in sorted(training.glob("*/seed_*/provenance.json")):
        run_dir = prov_path.parent
        if run_dir not in plan_runs:
            continue  # the shipped zoo's own runs stay as they were committed
        prov = json.loads(prov_path.read_text())
        curve = zoo.training_curves([run_dir])
        if not len(curve):
            continue
        keep = curve[(curve["return_mean"] >= plan.bar) & (curve["step"] >= plan.min_snapshot_step)]["step"].astype(int)
        if prov.get("finished") and (run_dir / "checkpoint.pt").is_file():
            print(run_dir.relative_to(root), zoo.compact_finished_run(run_dir, keep_steps=keep))
        elif not prov.get("finished"):
            removed, kept = zoo.prune_snapshots(run_dir, keep_steps=keep, up_to=int(curve["step"].max()))
            print(run_dir.relative_to(root), {"removed": removed, "kept_snapshots": kept})
    return 0


if __name__ == "__main__":
    capped = backends.kernel_environment()
    if capped:  # the pipeline's kernel cap, set before torch and numpy load (a resume elsewhere continues bitwise)
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **capped})
    raise SystemExit(main())
