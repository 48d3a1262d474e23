"""Benchmark: Hopper-v5 env-steps/s of ``nnae_utils.rollouts.evaluate`` against the physics limit
and gymnasium, at P = 1, 16, 64, 256 random 64-64 relu policies, on 1 and 2 cores.

    python benchmarks/rollouts.py              # full run (~3-4 minutes), writes benchmarks/results/rollouts.json
    python benchmarks/rollouts.py --quick      # sanity run (~30 s), writes nothing unless --out is given
    python benchmarks/rollouts.py --seconds 5  # longer measurements

Every method runs the same kind of work: whole Hopper-v5 episodes of random-init policies (they
terminate early, ~40 steps on average), one episode per policy at a time, and we count env steps
(control steps of one env, = 4 MuJoCo substeps) per wall-clock second. "N cores" means the process
(and its threads and child processes) is pinned to N CPUs with sched_setaffinity.

- raw:     the physics limit. The exact episodes ``ours`` ran (same initial states, same recorded
           action sequences, same lengths) replayed open loop with ``mj_step(m, d, nstep=4)`` on one
           MjData per thread, one Python thread per core (MuJoCo releases the GIL), episodes split
           evenly between threads; no policy, observation, reward or synchronisation.
- gym:     one ``gymnasium.make("Hopper-v5")``, ``Network.act`` per step (single process).
- sync:    ``gymnasium.vector.SyncVectorEnv`` with n = P envs, batched policy forward.
- async:   ``gymnasium.vector.AsyncVectorEnv`` with n = min(P, 16) envs (fork), batched forward.
- ours:    ``evaluate(policies, seeds, nthread=N)`` called repeatedly with fresh seeds (setup included).

``--engines`` additionally compares physics engines for closed-loop stepping at P=64 (fixed step
budget, no termination): mujoco.batch.Batch.step, a Python thread pool over per-env MjData, and
mujoco.rollout one control step per call (which restarts the solver's warmstart every call).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

import gymnasium as gym
import mujoco
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nnae_utils import __version__ as nnae_version  # noqa: E402
from nnae_utils.policies import Network, NetworkSpec, forward, stack_params  # noqa: E402
from nnae_utils.provenance import cpu_model  # noqa: E402
from nnae_utils.rollouts import HOPPER_ENV_ID, BatchedHopper, evaluate, hopper_model, reset_states  # noqa: E402

SPEC = NetworkSpec(obs_dim=11, act_dim=3, hidden=(64, 64), activation="relu")
METHODS = ("raw", "gym", "sync", "async", "ours")


def policies(p: int, offset: int = 0) -> list[Network]:
    return [Network.random(SPEC, seed=offset + i) for i in range(p)]


def timed_loop(seconds: float, body) -> tuple[int, float]:
    """Call body() (which returns env steps done) until `seconds` have passed; (steps, elapsed)."""
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        steps += body()
    return steps, time.perf_counter() - start


# --------------------------------------------------------------------------- methods


def measure_ours(nets, cores, seconds):
    seed = iter(range(10**6, 10**9))
    return timed_loop(seconds, lambda: evaluate(nets, [next(seed)], nthread=cores).env_steps)


def record_workload(nets, n_calls=3):
    """Episodes of ``nets`` as ours runs them: initial states and applied actions, for the raw replay."""
    episodes = []
    for call in range(n_calls):
        seeds = [10**6 + call]
        res = evaluate(nets, seeds, record="transitions")
        qpos, qvel = reset_states(np.repeat(seeds, len(nets)))
        bounds = np.concatenate([[0], np.cumsum(res.lengths.ravel())])
        for k in range(len(nets)):
            episodes.append((qpos[k], qvel[k], res.actions[bounds[k] : bounds[k + 1]].astype(np.float64)))
    return episodes


def measure_raw(episodes, cores, seconds):
    """Replay recorded episodes open loop, one thread per core, until `seconds` have passed."""
    model = hopper_model()
    shares = [[] for _ in range(cores)]  # balance by steps: longest first onto the lightest thread
    for ep in sorted(episodes, key=lambda e: -len(e[2])):
        min(shares, key=lambda s: sum(len(e[2]) for e in s)).append(ep)
    counts = [0] * cores
    deadline = time.perf_counter() + seconds

    def work(i):
        d = mujoco.MjData(model)
        while time.perf_counter() < deadline:
            for qpos, qvel, actions in shares[i]:
                if time.perf_counter() >= deadline:
                    break
                mujoco.mj_resetData(model, d)
                d.qpos[:], d.qvel[:] = qpos, qvel
                mujoco.mj_forward(model, d)
                for a in actions:
                    d.ctrl[:] = a
                    mujoco.mj_step(model, d, 4)
                counts[i] += len(actions)

    start = time.perf_counter()
    threads = [threading.Thread(target=work, args=(i,)) for i in range(cores)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return sum(counts), time.perf_counter() - start


def measure_gym(nets, seconds):
    env = gym.make(HOPPER_ENV_ID)
    episode = iter(range(10**9))

    def one_episode():
        k = next(episode)
        net = nets[k % len(nets)]
        obs, _ = env.reset(seed=k)
        steps, done = 0, False
        while not done:
            obs, _, term, trunc, _ = env.step(net.act(obs).astype(np.float32))
            steps, done = steps + 1, term or trunc
        return steps

    out = timed_loop(seconds, one_episode)
    env.close()
    return out


def measure_vector(venv, nets, seconds):
    """Step a vector env (same-step autoreset: every env step is a real one) with batched inference."""
    n = venv.num_envs
    _, params = stack_params(nets[:n])
    obs, _ = venv.reset(seed=list(range(n)))

    def one_step():
        nonlocal obs
        actions = forward(SPEC, params, obs[:, None, :])[:, 0]
        obs, *_ = venv.step(actions)
        return n

    return timed_loop(seconds, one_step)


def make_vector(kind: str, n: int):
    fns = [lambda: gym.make(HOPPER_ENV_ID)] * n
    mode = gym.vector.AutoresetMode.SAME_STEP
    if kind == "sync":
        return gym.vector.SyncVectorEnv(fns, autoreset_mode=mode)
    return gym.vector.AsyncVectorEnv(fns, autoreset_mode=mode, context="fork")


# --------------------------------------------------------------------------- engine candidates


def engine_candidates(cores, n_env=64, n_steps=150, seconds=2.0):
    """Closed-loop physics only: n_env envs, one control step (4 substeps) per call, state read back
    into a numpy array after every step (what an evaluator needs), zero actions, no termination."""
    model = hopper_model()
    qpos0, qvel0 = reset_states(np.arange(n_env))
    results = {}

    def batch_engine():
        env = BatchedHopper(n_env, nthread=cores)
        env.set_state(qpos0, qvel0)
        ids = np.arange(n_env, dtype=np.int32)
        for _ in range(n_steps):
            env.ctrl[:] = 0.0
            env.batch.step(ids, nstep=4)
            _ = env.batch.state[:, 1:13].copy()
        return n_env * n_steps

    def thread_engine():
        from concurrent.futures import ThreadPoolExecutor

        datas = [mujoco.MjData(model) for _ in range(n_env)]
        for d, q, v in zip(datas, qpos0, qvel0):
            d.qpos[:], d.qvel[:] = q, v
            mujoco.mj_forward(model, d)
        out = np.empty((n_env, 12))
        chunks = np.array_split(np.arange(n_env), cores)

        def run(chunk):
            for i in chunk:
                d = datas[i]
                d.ctrl[:] = 0.0
                mujoco.mj_step(model, d, 4)
                out[i, :6], out[i, 6:] = d.qpos, d.qvel

        with ThreadPoolExecutor(cores) as pool:
            for _ in range(n_steps):
                list(pool.map(run, chunks))
        return n_env * n_steps

    def rollout_engine():
        from mujoco import rollout

        nstate = mujoco.mj_stateSize(model, mujoco.mjtState.mjSTATE_FULLPHYSICS.value)
        state = np.zeros((n_env, nstate))
        state[:, 1:7], state[:, 7:13] = qpos0, qvel0
        control = np.zeros((n_env, 4, model.nu))
        out = np.empty((n_env, 4, nstate))
        datas = [mujoco.MjData(model) for _ in range(cores)]
        models = [model] * n_env
        with rollout.Rollout(nthread=cores if cores > 1 else 0) as r:
            for _ in range(n_steps):
                r.rollout(models, datas, state, control, nstep=4, state=out)
                state = out[:, -1].copy()
        return n_env * n_steps

    for name, fn in [("mujoco.batch", batch_engine), ("threadpool+MjData", thread_engine), ("mujoco.rollout", rollout_engine)]:
        steps, elapsed = timed_loop(seconds, fn)
        results[name] = steps / elapsed
    return results


def rollout_warmstart_drift():
    """Max |obs difference| vs gymnasium after 1000 steps when warmstart is dropped between control
    steps (as closed-loop mujoco.rollout does) vs kept (as mujoco.batch does)."""
    from mujoco import rollout

    model = hopper_model()
    env = gym.make(HOPPER_ENV_ID)
    obs, _ = env.reset(seed=0)
    qpos, qvel = reset_states([0])
    nstate = mujoco.mj_stateSize(model, mujoco.mjtState.mjSTATE_FULLPHYSICS.value)
    state = np.zeros((1, nstate))
    state[0, 1:7], state[0, 7:13] = qpos[0], qvel[0]
    data = mujoco.MjData(model)
    batched = BatchedHopper(1, nthread=1)
    batched.reset([0])
    worst_rollout = worst_batch = 0.0
    for t in range(1000):
        action = np.clip(-10 * obs[2:5] - 0.5 * obs[8:11], -1, 1).astype(np.float32)  # stands for 1000 steps
        obs, _, term, _, _ = env.step(action)
        out, _ = rollout.rollout(model, data, state, np.tile(action.astype(np.float64), (1, 4, 1)))
        state = out[:, -1].copy()
        r_obs = np.concatenate([state[0, 2:7], np.clip(state[0, 7:13], -10, 10)])
        b_obs, _, _ = batched.step(action[None])
        worst_rollout = max(worst_rollout, float(np.abs(r_obs - obs).max()))
        worst_batch = max(worst_batch, float(np.abs(b_obs[0] - obs).max()))
        if term:
            break
    env.close()
    return {"steps": t + 1, "rollout_no_warmstart_max_abs_obs_diff": worst_rollout, "batch_max_abs_obs_diff": worst_batch}


# --------------------------------------------------------------------------- main


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each measurement")
    parser.add_argument("--quick", action="store_true", help="sanity run: P=1,16, short measurements, no json")
    parser.add_argument("--ps", type=int, nargs="+", default=None, help="population sizes (default 1 16 64 256)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per measurement")
    parser.add_argument("--cores", type=int, nargs="+", default=[1, 2], help="core counts to pin to")
    parser.add_argument("--engines", action="store_true", help="also compare physics engines at P=64")
    parser.add_argument("--out", type=Path, default=None, help="json path (default benchmarks/results/rollouts.json)")
    args = parser.parse_args(argv)
    ps = args.ps or ([1, 16] if args.quick else [1, 16, 64, 256])
    seconds = min(args.seconds, 0.5) if args.quick else args.seconds
    out = args.out or (None if args.quick else Path(__file__).parent / "results" / "rollouts.json")
    cores_available = len(os.sched_getaffinity(0))
    if max(args.cores) > cores_available:
        parser.error(f"only {cores_available} cores available")
    all_cpus = os.sched_getaffinity(0)
    load_before = os.getloadavg()
    started = time.perf_counter()
    rows, engines = [], {}
    evaluate(policies(2), [0])  # warm-up: imports, model compilation
    for cores in args.cores:
        os.sched_setaffinity(0, set(sorted(all_cpus)[:cores]))
        async_envs = {}
        for p in ps:
            nets = policies(p)
            workload = record_workload(nets)
            sync = make_vector("sync", p)
            n_async = min(p, 16)
            if n_async not in async_envs:
                async_envs[n_async] = make_vector("async", n_async)
            run = {
                "raw": lambda s: measure_raw(workload, cores, s),
                "gym": lambda s: measure_gym(nets, s),
                "sync": lambda s: measure_vector(sync, nets, s),
                "async": lambda s: measure_vector(async_envs[n_async], nets, s),
                "ours": lambda s: measure_ours(nets, cores, s),
            }
            # Rounds of short measurements, method order rotating, so that a change in the machine's
            # load (other users) hits every method alike; per-round ratios are kept too.
            totals = {m: [0, 0.0] for m in METHODS}
            per_round = []
            for r in range(args.rounds):
                rates = {}
                for method in METHODS[r % len(METHODS):] + METHODS[: r % len(METHODS)]:
                    steps, elapsed = run[method](seconds / args.rounds)
                    totals[method][0] += steps
                    totals[method][1] += elapsed
                    rates[method] = steps / elapsed
                per_round.append({"ours/raw": rates["ours"] / rates["raw"], "ours/sync": rates["ours"] / rates["sync"],
                                  "load": os.getloadavg()[0]})
            sync.close()
            for method in METHODS:
                steps, elapsed = totals[method]
                rows.append({"cores": cores, "P": p, "method": method, "env_steps": int(steps),
                             "seconds": round(elapsed, 3), "steps_per_s": round(steps / elapsed, 1)})
            rows[-1]["rounds"] = [{k: round(v, 3) for k, v in pr.items()} for pr in per_round]
            print_rows([r for r in rows if r["cores"] == cores and r["P"] == p])
        for venv in async_envs.values():
            venv.close()
        if args.engines:
            engines[cores] = engine_candidates(cores, seconds=seconds)
            print(f"engines, {cores} core(s): " + ", ".join(f"{k} {v:,.0f} steps/s" for k, v in engines[cores].items()))
    os.sched_setaffinity(0, all_cpus)
    drift = rollout_warmstart_drift() if args.engines else None
    if drift:
        print("warmstart:", drift)
    load_after = os.getloadavg()
    ratios = summarise(rows)
    print(f"\nload average before {load_before[0]:.2f}, after {load_after[0]:.2f}; total {time.perf_counter() - started:.0f} s")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({
            "benchmark": "benchmarks/rollouts.py",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "versions": {"python": platform.python_version(), "numpy": np.__version__, "mujoco": mujoco.__version__,
                         "gymnasium": gym.__version__, "nnae_utils": nnae_version},
            "machine": {"cpu_count": os.cpu_count(), "cores_available": cores_available, "cpu": cpu_model(),
                        "platform": platform.platform(), "loadavg_before": load_before, "loadavg_after": load_after},
            "settings": {"seconds": seconds, "ps": ps, "cores": args.cores, "policy": "64-64 relu, Network.random",
                         "episodes_per_policy_per_call": 1},
            "results": rows, "ratios": ratios, "engines": engines, "warmstart": drift,
        }, indent=1))
        print(f"wrote {out}")


def print_rows(rows):
    for r in rows:
        print(f"cores={r['cores']} P={r['P']:>3} {r['method']:>5}: {r['steps_per_s']:>9,.0f} env-steps/s"
              f"  ({r['env_steps']} steps in {r['seconds']:.1f} s)")


def summarise(rows):
    table = {(r["cores"], r["P"], r["method"]): r["steps_per_s"] for r in rows}
    rounds = {(r["cores"], r["P"]): r["rounds"] for r in rows if "rounds" in r}
    ratios = []
    print("\nenv-steps/s (all rounds pooled); ratios pooled and [median of per-round ratios]")
    print("cores    P " + "".join(f"{m:>10}" for m in METHODS) + "      ours/raw         ours/sync    load")
    for cores, p in sorted({(r["cores"], r["P"]) for r in rows}):
        rate = {m: table[(cores, p, m)] for m in METHODS}
        per_round = rounds.get((cores, p), [])
        ratio = {"cores": cores, "P": p, "ours/raw": round(rate["ours"] / rate["raw"], 3),
                 "ours/sync": round(rate["ours"] / rate["sync"], 3),
                 "ours/raw_median_round": round(float(np.median([r["ours/raw"] for r in per_round])), 3),
                 "ours/sync_median_round": round(float(np.median([r["ours/sync"] for r in per_round])), 3),
                 "loadavg_1min": [r["load"] for r in per_round]}
        ratios.append(ratio)
        print(f"{cores:>5} {p:>4} " + "".join(f"{rate[m]:>10,.0f}" for m in METHODS)
              + f"  {ratio['ours/raw']:>5.2f} [{ratio['ours/raw_median_round']:.2f}]"
              + f"  {ratio['ours/sync']:>6.2f} [{ratio['ours/sync_median_round']:.2f}]"
              + f"  {np.mean(ratio['loadavg_1min']):5.1f}")
    return ratios


if __name__ == "__main__":
    main()
