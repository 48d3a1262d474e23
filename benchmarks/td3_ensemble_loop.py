"""End-to-end cost of a TD3 ensemble against single runs, on the same machine under the same load:
the whole training loop (Hopper-v5 stepping, replay, updates, evaluations, checkpoints), not updates
alone (``benchmarks/td3_cost.py`` measures those).

    python benchmarks/td3_ensemble_loop.py            # writes benchmarks/results/td3_ensemble_loop.json
    python benchmarks/td3_ensemble_loop.py --steps 3000 --out /tmp/x.json

The growth plan's protocol with a critic of ``--critic`` (actor 64-64 relu, batch 256, 5
evaluation episodes every 5000 steps), a short warm-up (``--learning-starts``) so that most steps
update, and ``--steps`` env steps per run. Blocks alternate: single run, ensemble of K, single run,
... (``--rounds`` of each), every run in a fresh temporary folder, one torch thread. For each block:
CPU seconds of this process (``time.process_time``) and wall seconds; rates are member-steps (each
with one update after the warm-up) per CPU second and per wall second.
"""
from __future__ import annotations

# ruff: noqa: E402
import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nnae_utils.io import json_default
from nnae_utils.provenance import code_revision, machine, runtime_versions
from nnae_utils.td3 import TD3Config, train_td3
from nnae_utils.td3_ensemble import train_td3_ensemble


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=6000, help="env steps per run (evaluations at 0 and every 5000)")
    ap.add_argument("--learning-starts", type=int, default=1000)
    ap.add_argument("--critic", type=int, default=64, help="critic width (two hidden layers)")
    ap.add_argument("--k", type=int, default=4, help="ensemble members")
    ap.add_argument("--rounds", type=int, default=1, help="blocks of each kind (single runs one more)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/td3_ensemble_loop.json")
    args = ap.parse_args(argv)
    base = TD3Config(seed=90, total_steps=args.steps, learning_starts=args.learning_starts,
                     critic_hidden=(args.critic, args.critic), buffer_size=max(args.steps, 1000),
                     checkpoint_every=max(args.steps // 2, 1))
    load_before = os.getloadavg()
    blocks = []

    def block(kind: str, fn, members: int) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            c0, t0 = time.process_time(), time.perf_counter()
            fn(Path(tmp))
            cpu, wall = time.process_time() - c0, time.perf_counter() - t0
        steps = members * args.steps
        blocks.append({"kind": kind, "members": members, "member_steps": steps, "cpu_s": round(cpu, 3),
                       "wall_s": round(wall, 3), "member_steps_per_cpu_s": round(steps / cpu, 2),
                       "member_steps_per_wall_s": round(steps / wall, 2), "load1": os.getloadavg()[0]})
        print(blocks[-1], flush=True)

    def single(tmp: Path) -> None:
        train_td3(base, tmp / "seed_90", progress=False)

    def ensemble(tmp: Path) -> None:
        cfgs = [dataclasses.replace(base, seed=90 + i) for i in range(args.k)]
        train_td3_ensemble(cfgs, [tmp / "ens" / f"seed_{c.seed}" for c in cfgs], progress=False)

    for _ in range(args.rounds):
        block("single", single, 1)
        block(f"ensemble_{args.k}", ensemble, args.k)
    block("single", single, 1)

    def rate(kind: str, key: str) -> float:
        return statistics.median(b[key] for b in blocks if b["kind"] == kind)

    ens = f"ensemble_{args.k}"
    summary = {kind: {"member_steps_per_cpu_s": rate(kind, "member_steps_per_cpu_s"),
                      "member_steps_per_wall_s": rate(kind, "member_steps_per_wall_s")} for kind in ("single", ens)}
    summary["ratio_cpu"] = round(summary[ens]["member_steps_per_cpu_s"] / summary["single"]["member_steps_per_cpu_s"], 3)
    summary["ratio_wall"] = round(summary[ens]["member_steps_per_wall_s"] / summary["single"]["member_steps_per_wall_s"], 3)
    print(json.dumps(summary, indent=1))
    record = {"benchmark": "benchmarks/td3_ensemble_loop.py", "what": __doc__.split("\n\n")[0],
              "settings": {**vars(args), "out": str(args.out), "config": base.to_dict()}, "blocks": blocks,
              "summary": summary, "load_average_before": load_before, "load_average_after": os.getloadavg(),
              "machine": machine(), "versions": runtime_versions(), "code_revision": code_revision(),
              "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1, default=json_default) + "\n")
    print("written:", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
