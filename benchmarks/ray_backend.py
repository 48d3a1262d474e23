"""Benchmark: population evaluation at P = 256 on the local backend and on a Ray cluster of 1 and 2
workers on this machine: Ray's overhead, its scaling from 1 to 2 workers, and its cost per task.

    python benchmarks/ray_backend.py            # full run (a few minutes), writes benchmarks/results/ray_backend.json
    python benchmarks/ray_backend.py --quick    # sanity run (P=32, one round), writes nothing unless --out is given

What is timed (wall clock, whole ``evaluate`` calls, random-init 64-64 relu policies, E fresh reset
seeds per round, episodes capped at 1000 steps; random policies fall after ~40 steps):

- local-1 / local-2: ``rollouts.evaluate(nthread=1 / 2)`` in this process (the local backend);
- ray: ``RayBackend.evaluate`` on a fresh single-machine cluster (``ray.init(num_cpus=W)``, W = 1
  and 2 workers): the population cut into one chunk per worker, one MuJoCo thread each;
- ray-chunked: the same in chunks of ``--chunk`` policies (more tasks: the cost per task shows);
- noop: ``--noop`` empty tasks (``RayBackend.map``), the bare round trip of one task.

Each cluster is warmed up first (workers started, the package imported), then measured in
``--rounds`` rounds, local and Ray alternating so that other load hits both alike. Every Ray result
is checked to equal the local one bit for bit. Ratios are of medians over the rounds:
``ray(W=1)/local-1`` is Ray's overhead on one machine, ``ray(W=1)/ray(W=2)`` its speedup from 1 to 2 workers, and
``(ray-chunked - ray) / (extra tasks)`` the cost of one more task.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nnae_utils import __version__ as nnae_version  # noqa: E402
from nnae_utils.backends import RayBackend, RaySettings, start_local_ray  # noqa: E402
from nnae_utils.policies import Network, NetworkSpec  # noqa: E402
from nnae_utils.rollouts import evaluate  # noqa: E402

SPEC = NetworkSpec(obs_dim=11, act_dim=3, hidden=(64, 64), activation="relu")
RESULTS = Path(__file__).resolve().parent / "results" / "ray_backend.json"


def noop(x):
    return x


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def same(a, b) -> bool:
    return all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("returns", "lengths", "terminated"))


def measure_cluster(workers: int, nets, args) -> dict:
    """Start a W-worker Ray on this machine, warm it up, and time the methods in alternating rounds."""
    import ray

    start = time.perf_counter()
    start_local_ray(workers, object_store_memory=256 * 2**20, log_to_driver=False)
    try:
        init_s = time.perf_counter() - start
        ray_auto = RayBackend(RaySettings())
        ray_chunked = RayBackend(RaySettings(chunk_policies=args.chunk))
        n_auto, n_chunked = len(ray_auto.chunks(len(nets))), len(ray_chunked.chunks(len(nets)))
        # warm-up: every worker started and has imported the package and MuJoCo; so has this process
        _, warm_s = timed(lambda: ray_chunked.evaluate(nets, [10**6], max_steps=args.max_steps))
        evaluate(nets, [10**6], max_steps=args.max_steps, nthread=2)
        times: dict[str, list[float]] = {m: [] for m in ("local-1", "local-2", "ray", "ray-chunked", "noop")}
        steps, loads, identical = [], [], True
        for r in range(args.rounds):
            seeds = np.arange(args.episodes) + 1000 * (r + 1) + 100_000 * workers
            loads.append(os.getloadavg()[0])
            ref, t = timed(lambda: evaluate(nets, seeds, max_steps=args.max_steps, nthread=1))
            times["local-1"].append(t)
            steps.append(ref.env_steps)
            out, t = timed(lambda: ray_auto.evaluate(nets, seeds, max_steps=args.max_steps))
            times["ray"].append(t)
            identical &= same(out, ref)
            out, t = timed(lambda: evaluate(nets, seeds, max_steps=args.max_steps, nthread=2))
            times["local-2"].append(t)
            identical &= same(out, ref)
            out, t = timed(lambda: ray_chunked.evaluate(nets, seeds, max_steps=args.max_steps))
            times["ray-chunked"].append(t)
            identical &= same(out, ref)
            _, t = timed(lambda: ray_auto.map(noop, range(args.noop)))
            times["noop"].append(t)
        med = {m: statistics.median(v) for m, v in times.items()}
        env_steps = statistics.median(steps)
        return {
            "workers": workers, "init_s": round(init_s, 2), "warmup_s": round(warm_s, 2),
            "tasks": {"ray": n_auto, "ray-chunked": n_chunked, "noop": args.noop},
            "seconds": {m: [round(x, 4) for x in v] for m, v in times.items()},
            "median_s": {m: round(v, 4) for m, v in med.items()},
            "env_steps_per_round": steps,
            "steps_per_s": {m: round(env_steps / med[m]) for m in ("local-1", "local-2", "ray", "ray-chunked")},
            "per_task_ms": {
                "noop_round_trip": round(1000 * med["noop"] / args.noop, 3),
                "extra_evaluation_task": round(1000 * (med["ray-chunked"] - med["ray"]) / max(n_chunked - n_auto, 1), 3),
            },
            "identical_to_local": bool(identical),
            "load_avg_1min": loads,
        }
    finally:
        ray.shutdown()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="P=32, 1 episode, 1 round, writes nothing unless --out")
    parser.add_argument("--policies", type=int, default=256, help="population size P (default 256)")
    parser.add_argument("--episodes", type=int, default=4, help="episodes per policy per round (fresh seeds)")
    parser.add_argument("--max-steps", type=int, default=1000, help="episode cap")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per cluster")
    parser.add_argument("--chunk", type=int, default=16, help="policies per task of the ray-chunked method")
    parser.add_argument("--noop", type=int, default=200, help="empty tasks timed per round")
    parser.add_argument("--workers", default="1,2", help="cluster sizes to measure (comma-separated)")
    parser.add_argument("--out", help=f"write the json here (default for a full run: {RESULTS})")
    args = parser.parse_args(argv)
    if args.quick:
        args.policies, args.episodes, args.rounds, args.noop = 32, 1, 1, 20
        args.chunk = min(args.chunk, 8)
    import ray

    nets = [Network.random(SPEC, seed=i) for i in range(args.policies)]
    clusters = []
    for w in (int(x) for x in args.workers.split(",")):
        print(f"cluster of {w} worker(s) ...", flush=True)
        res = measure_cluster(w, nets, args)
        clusters.append(res)
        print(json.dumps({k: res[k] for k in ("workers", "median_s", "steps_per_s", "per_task_ms", "identical_to_local")}),
              flush=True)
    by_w = {c["workers"]: c for c in clusters}
    ratios = {}
    if 1 in by_w:
        c = by_w[1]
        ratios["ray_1_worker_over_local_1_thread_time"] = round(c["median_s"]["ray"] / c["median_s"]["local-1"], 3)
    if 1 in by_w and 2 in by_w:
        ratios["speedup_ray_2_over_1_workers"] = round(by_w[1]["median_s"]["ray"] / by_w[2]["median_s"]["ray"], 3)
        c = by_w[2]
        ratios["ray_2_workers_over_local_2_threads_time"] = round(c["median_s"]["ray"] / c["median_s"]["local-2"], 3)
        ratios["speedup_local_2_over_1_threads"] = round(c["median_s"]["local-1"] / c["median_s"]["local-2"], 3)
    report = {
        "benchmark": "ray_backend", "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "quick": args.quick, "nnae_utils": nnae_version, "ray": ray.__version__,
        "machine": {"cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "settings": {"policies": args.policies, "episodes": args.episodes, "max_steps": args.max_steps,
                     "rounds": args.rounds, "chunk": args.chunk, "noop_tasks": args.noop,
                     "policy": "64-64 relu, Network.random"},
        "ratios": ratios, "clusters": clusters,
        "identical_to_local": all(c["identical_to_local"] for c in clusters),
    }
    print(json.dumps(report["ratios"], indent=1))
    out = args.out or (None if args.quick else RESULTS)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(report, indent=1) + "\n")
        print(f"written to {out}")
    return 0 if report["identical_to_local"] else 1


if __name__ == "__main__":
    sys.exit(main())
