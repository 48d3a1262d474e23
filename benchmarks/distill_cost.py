"""What one more zoo network costs once a TD3 run solves Hopper: another TD3 snapshot, or a DAgger
student of an admitted one (``nnae_utils.distill``), in CPU-seconds per network at or above the bar.

    python benchmarks/distill_cost.py                 # ~5 min; writes benchmarks/results/distill_cost.json
    python benchmarks/distill_cost.py --teachers 1 --students 1 --out /tmp/x.json   # a quick look

Both costs are measured in the same run, on one torch thread, as CPU seconds of this process
(``time.process_time``), so a busy machine changes wall time but hardly the ratio.

- **Student.** Teachers are snapshots of the zoo's committed TD3 runs (``zoo/training``) whose
  in-training return reached the bar and whose return on the admission seeds reaches
  ``--teacher-min-return``, spread over the runs' training time. Each teacher gets
  ``--students`` students with the zoo profile's DAgger settings (``DistillConfig()``, seeds 0, 1,
  ...). A student counts when its mean return over 10 fresh episodes (the zoo's admission seeds)
  reaches the bar. Cost per admitted student = CPU-s per student / share admitted.
- **TD3 snapshot (baseline).** After its first pass a run snapshots every 5k steps; a snapshot is a
  candidate when its in-training return reaches the bar. Cost per candidate = 5,000 x CPU-s of one
  TD3 update (the zoo's settings: actor 64-64, critic 256-256, batch 256; measured here on a
  random replay buffer, as ``benchmarks/td3_cost.py`` does) / the share of evaluations after each
  run's first pass that reach the bar (from the committed curves). Environment steps and evaluations
  are left out, and candidates still face admission: both make the true TD3 cost higher, so the
  ratio below understates what students save.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nnae_utils.distill import DistillConfig, distill  # noqa: E402
from nnae_utils.policies import load_network  # noqa: E402
from nnae_utils.provenance import code_revision, machine, runtime_versions  # noqa: E402
from nnae_utils.rollouts import evaluate  # noqa: E402
from nnae_utils.seeds import eval_seeds  # noqa: E402
from nnae_utils.td3 import ReplayBuffer, TD3Config, TD3Learner  # noqa: E402

BAR = 2500.0
SNAPSHOT_EVERY = 5000


def td3_update_cpu_seconds(updates: int, seed: int = 0) -> float:
    """CPU seconds of one update of the zoo's TD3 learner (after a short warm-up)."""
    rng = np.random.default_rng(seed)
    n = 100_000
    buf = ReplayBuffer(11, 3, n)
    buf.add_batch(rng.normal(size=(n, 11)), rng.uniform(-1, 1, (n, 3)), rng.normal(size=n),
                  rng.normal(size=(n, 11)), rng.uniform(size=n) < 0.005)
    torch.manual_seed(seed)
    learner = TD3Learner.from_config(TD3Config(actor_hidden=(64, 64), critic_hidden=(256, 256)), 11, 3)
    for _ in range(50):
        learner.update(buf.sample(256, rng))
    t0 = time.process_time()
    for _ in range(updates):
        learner.update(buf.sample(256, rng))
    return (time.process_time() - t0) / updates


def pass_rate_after_first_pass(curves: list[Path]) -> dict:
    """Share of a run's evaluations at or above the bar, from its first pass on (all runs pooled)."""
    passed = total = 0
    per_run = {}
    for path in curves:
        c = pd.read_csv(path).sort_values("step")
        hit = np.flatnonzero(c["return_mean"].to_numpy() >= BAR)
        if not len(hit):
            continue
        after = c.iloc[hit[0]:]
        per_run[path.parent.name] = {"first_pass_step": int(after["step"].iloc[0]), "evaluations": len(after),
                                     "at_or_above_bar": int((after["return_mean"] >= BAR).sum())}
        passed += per_run[path.parent.name]["at_or_above_bar"]
        total += len(after)
    return {"rate": passed / total if total else float("nan"), "runs": per_run}


def pick_teachers(curves: list[Path], n: int, min_return: float, seeds: np.ndarray) -> list[tuple[str, Path, float]]:
    """As the zoo picks them: snapshots whose in-training return reaches the bar, re-scored on the
    admission seeds; those reaching ``min_return`` there are teachers. ``n`` of them, spread out."""
    rows = []
    for path in curves:
        c = pd.read_csv(path)
        for r in c[c["return_mean"] >= BAR].itertuples():
            snap = path.parent / "snapshots" / f"step_{int(r.step):07d}.safetensors"
            if snap.is_file():
                rows.append((f"{path.parent.name}/step_{int(r.step):07d}", snap))
    if not rows:
        raise SystemExit("no committed snapshot reaches the bar yet: nothing to distill")
    admission = evaluate([load_network(p) for _, p in rows], seeds, nthread=1).returns.mean(axis=1)
    rows = sorted((name, p, float(a)) for (name, p), a in zip(rows, admission) if a >= min_return)
    if not rows:
        raise SystemExit(f"no snapshot reaches {min_return} on the admission seeds")
    picks = np.unique(np.linspace(0, len(rows) - 1, min(n, len(rows))).round().astype(int))
    return [rows[i] for i in picks]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--training", default="zoo/training", help="folder of the zoo's TD3 runs")
    ap.add_argument("--teachers", type=int, default=4)
    ap.add_argument("--teacher-min-return", type=float, default=3000.0,
                    help="a teacher's admission return must reach this (the zoo profile's teacher_min_return)")
    ap.add_argument("--students", type=int, default=2, help="students per teacher")
    ap.add_argument("--td3-updates", type=int, default=2000)
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/distill_cost.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    curves = sorted((ROOT / args.training).glob("*/seed_*/curve.csv"))
    seeds = eval_seeds("zoo_admission", args.episodes)
    teachers = pick_teachers(curves, args.teachers, args.teacher_min_return, seeds)
    cfg = DistillConfig()
    rows = []
    for name, path, teacher_return in teachers:
        teacher = load_network(path)
        for s in range(args.students):
            t0 = time.process_time()
            student = distill(teacher, DistillConfig(**{**cfg.__dict__, "seed": s}), teacher_id=name).network
            cpu = time.process_time() - t0
            ret = float(evaluate(student, seeds, nthread=1).returns.mean())
            rows.append({"teacher": name, "teacher_return": teacher_return,
                         "student_seed": s, "student_return": ret, "cpu_s": cpu})
            print(f"{name} (teacher {teacher_return:.0f}) student {s}: {ret:.0f} in {cpu:.1f} CPU-s", flush=True)
    students = pd.DataFrame(rows)
    admitted = float((students["student_return"] >= BAR).mean())
    student_cost = float(students["cpu_s"].mean()) / admitted if admitted else float("inf")
    update_s = td3_update_cpu_seconds(args.td3_updates)
    passing = pass_rate_after_first_pass(curves)
    td3_cost = SNAPSHOT_EVERY * update_s / passing["rate"]
    result = {
        "command": " ".join(["python benchmarks/distill_cost.py", *(argv if argv is not None else sys.argv[1:])]),
        "bar": BAR,
        "teacher_min_return": args.teacher_min_return,
        "distill_config": cfg.__dict__,
        "students": rows,
        "student_cpu_s_mean": float(students["cpu_s"].mean()),
        "student_share_at_or_above_bar": admitted,
        "student_return_median": float(students["student_return"].median()),
        "cpu_s_per_admitted_student": student_cost,
        "td3_update_cpu_s": update_s,
        "td3_pass_rate_after_first_pass": passing,
        "cpu_s_per_td3_candidate_lower_bound": td3_cost,
        "td3_over_student_cost": td3_cost / student_cost,
        "versions": runtime_versions(), "code_revision": code_revision(), "machine": machine(),
    }
    print(f"student: {students['cpu_s'].mean():.1f} CPU-s, {admitted:.0%} at or above {BAR:.0f} "
          f"-> {student_cost:.1f} CPU-s per admitted student")
    print(f"TD3: {update_s * 1e3:.2f} ms/update, {passing['rate']:.0%} of evaluations pass after the first "
          f"-> >= {td3_cost:.0f} CPU-s per candidate snapshot; ratio {td3_cost / student_cost:.1f}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
