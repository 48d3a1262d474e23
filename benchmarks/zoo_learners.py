"""Which TD3 learner makes zoo runs cheapest? Core-hours per admitted run, measured on real runs.

    python benchmarks/zoo_learners.py             # writes benchmarks/results/zoo_learners.json
    python benchmarks/zoo_learners.py --no-admit  # costs only (no admission scoring)

Reads the runs of each learner in ``zoo/growth.yaml`` (the cheaper learners' benchmark groups) and
the shipped zoo's four runs (critic 256-256, the current learner), all trained with the same
protocol (actor 64-64 relu, selection evaluation on 5 seeds every 5000 steps); a group with
``ensemble: K`` trains K runs in one process (``nnae_utils.td3_ensemble``), each run's ``core_s``
being its share of that process's CPU. For every run:

- ``core_h_to_bar``: CPU core-hours to its first evaluation at or above the bar;
- ``core_h_to_k``: to its K-th candidate (an evaluation at or above the bar at or after the plan's
  ``min_snapshot_step``; K = the plan's ``candidates``), where a grown run stops;
- ``admitted``: how many of those K candidates pass the zoo's admission and report seeds
  (:func:`nnae_utils.zoo.build_zoo`, the shipped zoo's own protocol), scored here;
- its outcome: ``admitted`` (K candidates and at least ``--min-kept`` networks kept), ``failed``
  (reached the step cap first, or kept fewer) or ``running`` (not finished: not counted).

Core-hours come from the curve's ``core_s`` column (the run's CPU seconds at each evaluation,
all sessions); the shipped runs predate it, and their CPU seconds at a step are interpolated
within each session's recorded (start_step, end_step, core_seconds). CPU time, not wall time, so
other work sharing the machine changes the figures little. The cost per admitted run charges
every finished run's core-hours, failures included, to the runs that were admitted:
``sum(core_h of admitted and failed runs) / n_admitted``. The learner with the lowest cost per
admitted run is chosen, once every learner has at least ``--min-runs`` finished runs, or earlier once
bounds on every learner's final cost separate it from the others (:func:`cost_bounds`: lower, every
unfinished run admitted at no further cost; upper, every unfinished run failing at the step cap),
so that the full rule could not choose another.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nnae_utils import io, provenance, zoo  # noqa: E402

SHIPPED = {"name": "c256", "folder": "154f9d5fc5cc", "critic_hidden": [256, 256], "seeds": [0, 1, 2, 3],
           "note": "the shipped zoo's runs (profiles/zoo.yaml, stopped after 45 candidates)"}


def core_seconds_at(run_dir: Path, curve: pd.DataFrame) -> np.ndarray:
    """CPU seconds of the run at each curve row."""
    if "core_s" in curve and curve["core_s"].notna().all():
        return curve["core_s"].to_numpy(float)
    prov = json.loads((run_dir / "provenance.json").read_text())
    done, out = 0.0, np.full(len(curve), np.nan)
    for s in prov["sessions"]:
        a, b, c = int(s["start_step"]), int(s.get("end_step", s["start_step"])), float(s.get("core_seconds", 0.0))
        inside = (curve["step"] > a) & (curve["step"] <= b) if b > a else curve["step"] < -1
        out[inside.to_numpy()] = done + c * (curve["step"][inside] - a).to_numpy(float) / max(b - a, 1)
        done += c
    out[curve["step"].to_numpy() == 0] = 0.0
    return out


def measure_run(run_dir: Path, plan: zoo.GrowthPlan) -> dict:
    curve = pd.read_csv(run_dir / "curve.csv")
    prov = json.loads((run_dir / "provenance.json").read_text())
    core = core_seconds_at(run_dir, curve)
    passing = curve["return_mean"] >= plan.bar
    cands = curve[passing & (curve["step"] >= plan.min_snapshot_step)]
    first = curve.index[passing][0] if passing.any() else None
    kth = cands.index[plan.candidates - 1] if len(cands) >= plan.candidates else None
    finished = bool(prov.get("finished"))
    reached_k = kth is not None
    row = {
        "run": int(run_dir.name.split("_")[1]), "folder": str(run_dir.relative_to(ROOT)), "finished": finished,
        "last_step": int(curve["step"].iloc[-1]),
        "step_to_bar": int(curve["step"][first]) if first is not None else None,
        "core_h_to_bar": round(core[first] / 3600, 4) if first is not None else None,
        "step_to_k": int(curve["step"][kth]) if reached_k else None,
        "core_h_to_k": round(core[kth] / 3600, 4) if reached_k else None,
        "core_h_spent": round(float(core[kth] if reached_k else np.nanmax(core)) / 3600, 4),
        "candidate_steps": [int(s) for s in cands["step"][: plan.candidates]],
    }
    row["status"] = "reached_k" if reached_k else ("failed" if finished else "running")
    return row


def admit(run_dir: Path, steps: list[int], plan: zoo.GrowthPlan, episodes: int) -> dict:
    """The zoo's admission and report protocol on the run's first K candidates."""
    cands = [c for c in zoo.select_candidates([run_dir], threshold=plan.bar, min_step=plan.min_snapshot_step,
                                              max_per_run=10_000) if c.step in set(steps)]
    t0 = time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        kept = zoo.build_zoo(cands, Path(tmp), threshold=plan.bar, episodes=episodes, provenance={}, progress=False)
    return {"kept": len(kept), "kept_returns": [round(r["return_mean"], 1) for r in kept],
            "admission_core_h": round((time.process_time() - t0) / 3600, 5)}


def cost_bounds(runs: list[dict], step_cap: int) -> dict:
    """Bounds on the learner's cost per admitted run once all its seeds have finished, from what is known now.

    Lower: every unfinished run is admitted at no further cost. Upper: every unfinished run fails at the
    step cap, a running one costing its core-hours so far scaled to the cap, one not started the
    median finished run's core-hours per step times the cap; ``None`` while no run is admitted.
    """
    done = [r for r in runs if r["status"] in ("admitted", "failed")]
    admitted = sum(r["status"] == "admitted" for r in done)
    running = [r for r in runs if r["status"] == "running"]
    not_started = sum(r["status"] == "not started" for r in runs)
    spent = sum(r["core_h_spent"] for r in done) + sum(r["core_h_spent"] for r in running)
    per_step = [r["core_h_spent"] / r["last_step"] for r in done + running if r.get("last_step")]
    at_cap = (sum(r["core_h_spent"] for r in done) + sum(r["core_h_spent"] * step_cap / r["last_step"] for r in running)
              + not_started * float(np.median(per_step)) * step_cap) if per_step else None
    lower = spent / (admitted + len(running) + not_started) if admitted + len(running) + not_started else None
    upper = at_cap / admitted if admitted and at_cap is not None else None
    return {"core_h_per_admitted_run_bounds": [None if v is None else round(v, 4) for v in (lower, upper)]}


def separated(best: dict, learners: list[dict]) -> bool:
    """Whether ``best`` is the cheapest whatever its and the others' unfinished runs still do: its upper
    bound below every other learner's lower bound (the full rule, on finished runs only, would choose it)."""
    upper = best["core_h_per_admitted_run_bounds"][1]
    others = [learner["core_h_per_admitted_run_bounds"][0] for learner in learners if learner is not best]
    return upper is not None and all(low is not None and upper < low for low in others)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/zoo_learners.json")
    ap.add_argument("--no-admit", action="store_true", help="skip the admission scoring")
    ap.add_argument("--min-kept", type=int, default=6, help="networks a run must keep to count as admitted")
    ap.add_argument("--min-runs", type=int, default=4, help="finished runs each learner needs before one is chosen")
    ap.add_argument("--episodes", type=int, default=10, help="admission and report episodes (the zoo's)")
    args = ap.parse_args(argv)
    plan = zoo.GrowthPlan.read(ROOT / "zoo/growth.yaml")
    learners = [{**SHIPPED, "ensemble": 1}] + [
        {"name": name, "folder": str(plan.run_dirs(plan.group(name), ".")[0].parent),
         "critic_hidden": list(plan.group(name).critic_hidden), "ensemble": plan.group(name).ensemble,
         "seeds": list(plan.group(name).seeds)}
        for name, g in plan.groups.items() if g.get("learner") != "chosen" and g.get("benchmark", True)
    ]  # an ensemble group's runs live in <settings digest>_ens<K>/seed_<seed> (zoo.ensemble_folder)
    results = []
    for learner in learners:
        runs = []
        for seed in learner["seeds"]:
            run_dir = ROOT / plan.training_dir / learner["folder"] / f"seed_{seed}"
            if not (run_dir / "curve.csv").is_file():
                runs.append({"run": seed, "status": "not started"})
                continue
            row = measure_run(run_dir, plan)
            if row["status"] == "reached_k" and not args.no_admit:
                row.update(admit(run_dir, row["candidate_steps"], plan, args.episodes))
                row["core_h_spent"] = round(row["core_h_spent"] + row["admission_core_h"], 4)
            if row["status"] == "reached_k":
                row["status"] = ("admitted" if args.no_admit or row["kept"] >= args.min_kept else "failed")
            runs.append(row)
        done = [r for r in runs if r["status"] in ("admitted", "failed")]
        admitted = [r for r in done if r["status"] == "admitted"]
        entry = {**learner, "runs": runs, "finished_runs": len(done), "admitted_runs": len(admitted),
                 "failed_runs": len(done) - len(admitted), **cost_bounds(runs, plan.step_cap),
                 "core_h_finished_runs": round(sum(r["core_h_spent"] for r in done), 4),
                 "core_h_per_admitted_run": (round(sum(r["core_h_spent"] for r in done) / len(admitted), 4)
                                             if admitted else None),
                 "median_core_h_to_bar": (float(np.median([r["core_h_to_bar"] for r in done if r.get("core_h_to_bar")]))
                                          if any(r.get("core_h_to_bar") for r in done) else None)}
        results.append(entry)
        print(f"{entry['name']:>5}: finished {entry['finished_runs']}, admitted {entry['admitted_runs']}, "
              f"failed {entry['failed_runs']}, core-h per admitted run {entry['core_h_per_admitted_run']}")
    ready = all(r["finished_runs"] >= args.min_runs for r in results)
    costed = [r for r in results if r["core_h_per_admitted_run"] is not None]
    leader = min(costed, key=lambda r: r["core_h_per_admitted_run"]) if costed else None
    ready = ready or bool(leader and separated(leader, results))
    out = {
        "benchmark": "benchmarks/zoo_learners.py", "bar": plan.bar, "candidates_k": plan.candidates,
        "min_snapshot_step": plan.min_snapshot_step, "step_cap": plan.step_cap, "min_kept": args.min_kept,
        "min_runs": args.min_runs, "learners": results,
        "chosen": ({"name": leader["name"], "critic_hidden": leader["critic_hidden"], "ensemble": leader["ensemble"]}
                   if ready and leader else None),
        "leader_so_far": leader["name"] if leader else None,
        "versions": provenance.runtime_versions(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1, default=io.json_default) + "\n")
    print("chosen:", out["chosen"], "| leader so far:", out["leader_so_far"], "->", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
