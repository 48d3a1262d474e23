"""Cost of training a Hopper-v5 zoo run: TD3 update throughput per core of each candidate learner
and size, turned into core-hours to the bar (return >= 2500) where a measured learning curve exists.

    python benchmarks/td3_cost.py            # full run (~4-5 min), writes benchmarks/results/td3_cost.json
    python benchmarks/td3_cost.py --quick    # a few seconds per candidate, writes nothing unless --out
    python benchmarks/td3_cost.py --check    # only the ensemble self-check
    python benchmarks/td3_cost.py --only td3_c256 ens4_c256 proc_x1 proc_x2 --seconds 20

sb3-contrib (CrossQ, TQC) is optional and is *not* a dependency of the package. Install it into
the venv, matching the installed stable-baselines3 (``pip show stable-baselines3``)::

    .venv/bin/pip install "sb3-contrib==$(.venv/bin/python -c 'import stable_baselines3 as s; print(s.__version__)')"

Without it the two candidates are skipped with a message.

What is measured (everything on ONE torch thread per process, batch 256, Hopper sizes obs 11 /
act 3, a replay buffer of ``--buffer`` random transitions; no environment is stepped while
updating, so these are pure learner costs):

- ``td3_c256`` (the baseline), ``td3_c128``, ``td3_c64``, ``td3_a256_c256``: our
  ``nnae_utils.td3.TD3Learner`` (actor 64-64, or 256-256 for the last; twin critic of the given
  width), one update = ``learner.update(buffer.sample(256, rng))``, as ``train_td3`` does it.
- ``ens{K}_c{W}``: :class:`nnae_utils.td3_ensemble.TD3Ensemble`, K independent TD3 learners (actor 64-64, twin critic
  W-W) stacked in one process: weights ``[K, out, in]`` (critics ``[2K, out, in]``: Q1s then Q2s),
  one ``torch.baddbmm`` per layer, each member its own minibatch, TD3's exact update math. One call
  is K member-updates. A self-check (run first, always) gives K separate ``TD3Learner``s and the
  ensemble the same initial weights, batches and target-policy noise and requires every weight
  (actors, critics, both targets) to agree to 1e-5 after several updates, actor steps included.
- ``proc_x1`` / ``proc_x2``: the current way, one baseline learner per process: one or two
  ``multiprocessing`` spawn workers (1 torch thread each, own buffer) updating side by side; the
  rate is the sum over workers. ``proc_x2 / proc_x1`` is the 2-process scaling the ensemble competes with.
- ``crossq``, ``tqc``: sb3-contrib's CrossQ and TQC with the library's default settings (CrossQ:
  actor 256-256, critics 2 x 1024-1024 with BatchRenorm, no target nets, policy delay 3, lr 1e-3;
  TQC: actor 256-256, 2 critics x 25 quantiles 256-256, drop 2 per net, lr 3e-4; both batch 256),
  their replay buffer filled with the same random transitions in the spaces of a gymnasium
  Hopper-v5; one gradient step = ``model.train(gradient_steps=1, batch_size=256)``, what
  ``learn`` calls after each env step with ``train_freq=1``.

Each candidate runs in ``--rounds`` rounds of ``seconds / rounds`` seconds, the order rotating
from round to round, so that a change of the machine's load (it is shared) hits all alike; a
worker process runs only while the main process waits for it. Per block we record updates, wall
seconds and CPU seconds (``time.process_time`` of the process doing the work). Rates:

- ``upd/s wall``: member-updates per wall second (for proc_x2: summed over both processes);
- ``upd/CPU-s``: member-updates per CPU second of the process(es) doing them: per-core throughput,
  not counting the time another job held the core (it still counts slowdowns from sharing caches);
- ``vs base``: the median over rounds of (candidate's rate / the baseline's rate in the same round).

Environment stepping is measured too (CPU seconds per env step, single thread): ours = the body of
``train_td3``'s loop without the update (actor forward of a 64-64 ``TD3Learner`` + Gaussian noise,
``env.step`` of gymnasium Hopper-v5, ``ReplayBuffer.add``, resets when episodes end); SB3's =
``model.learn`` with ``gradient_steps=0`` (its whole collection loop, no training). The actors are
untrained, so episodes are short and resets frequent; trained policies run longer episodes.

Core-hours. A run of S env steps with L = 25k warm-up steps costs
``(S * env_s_per_step + (S - L) / updates_per_CPU_s) / 3600`` core-hours (in-training evaluations
not included: a few % at 5 episodes every 5k steps). An ensemble member or a worker process costs
its share of one core. Steps to the bar come only from MEASURED curves:

- ``zoo/training/*/seed_*/curve.csv`` (this project's TD3 runs; their ``provenance.json`` gives the
  sizes): first evaluation with ``return_mean >= 2500``, else "not reached by step X";
- the trial runs in ``../shared/REFERENCES.md`` (:data:`REFERENCE_RUNS`, copied by hand).

The ensemble and the worker processes run the baseline's exact math, so the baseline's curves
apply to them. Candidates with no measured curve (smaller critics, CrossQ, TQC) get "unmeasured"
and only core-hours per 100k steps: no sample-efficiency figure is invented here.
"""
from __future__ import annotations

# ruff: noqa: E402  (thread settings must precede importing torch)
import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before torch is imported; inherited by the spawn workers

import argparse
import csv
import json
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nnae_utils.io import json_default  # noqa: E402
from nnae_utils.provenance import code_revision, machine, runtime_versions  # noqa: E402
from nnae_utils.td3 import Batch, ReplayBuffer, TD3Config, TD3Learner  # noqa: E402
from nnae_utils.td3_ensemble import TD3Ensemble  # noqa: E402

OBS_DIM, ACT_DIM = 11, 3  # Hopper-v5
BATCH = 256
BAR = 2500.0
LEARNING_STARTS = TD3Config().learning_starts  # 25k warm-up steps without updates
BASELINE = "td3_c256"
ZOO_TRAINING = ROOT / "zoo" / "training"

# Measured trial runs from ../shared/REFERENCES.md ("TD3 learning speed on Hopper"): a plain TD3
# with Fujimoto's hyperparameters, 25k random start steps, 256-256 critic, gymnasium 1.4 / MuJoCo 4,
# 5 deterministic episodes every 5k steps. first_bar_step None = not reached by last_step.
REFERENCE_RUNS = (
    {"run": "REFERENCES.md trial, actor 64-64, seed 21", "actor_hidden": [64, 64], "critic_hidden": [256, 256],
     "first_bar_step": 415_000, "last_step": 660_000, "note": "17 of 132 evaluations >= 2500, best 3191"},
    {"run": "REFERENCES.md trial, actor 64-64, seed 22", "actor_hidden": [64, 64], "critic_hidden": [256, 256],
     "first_bar_step": None, "last_step": 250_000, "note": "stopped at 250k, best 703"},
    {"run": "REFERENCES.md trial, actor 256-256, seed 32", "actor_hidden": [256, 256], "critic_hidden": [256, 256],
     "first_bar_step": 385_000, "last_step": 400_000, "note": "3 of 80 evaluations >= 2500, best 2914"},
)


# --------------------------------------------------------------------------- data


def random_transitions(n: int, seed: int) -> dict[str, np.ndarray]:
    """n random Hopper-sized transitions (float32), the same for every candidate of one seed."""
    rng = np.random.default_rng(seed)
    return {"obs": rng.normal(size=(n, OBS_DIM)).astype(np.float32),
            "actions": rng.uniform(-1, 1, (n, ACT_DIM)).astype(np.float32),
            "rewards": rng.normal(size=n).astype(np.float32),
            "next_obs": rng.normal(size=(n, OBS_DIM)).astype(np.float32),
            "terminated": (rng.uniform(size=n) < 0.005).astype(np.float32)}


def filled_buffer(data: dict[str, np.ndarray]) -> ReplayBuffer:
    n = len(data["obs"])
    buf = ReplayBuffer(OBS_DIM, ACT_DIM, n)
    buf.add_batch(data["obs"], data["actions"], data["rewards"], data["next_obs"], data["terminated"])
    return buf


def make_learner(actor=(64, 64), critic=(256, 256), seed: int = 0) -> TD3Learner:
    torch.manual_seed(seed)
    cfg = TD3Config(seed=seed, actor_hidden=actor, critic_hidden=critic)
    return TD3Learner.from_config(cfg, OBS_DIM, ACT_DIM)


# --------------------------------------------------------------------------- the batched ensemble (nnae_utils.td3_ensemble)


def sample_stacked(buf: ReplayBuffer, k: int, rng: np.random.Generator) -> tuple[torch.Tensor, ...]:
    """K independent minibatches of BATCH transitions, as ``[K, B, dim]`` tensors."""
    idx = rng.integers(0, buf.size, size=(k, BATCH))
    return tuple(torch.from_numpy(a[idx]) for a in (buf.obs, buf.actions, buf.rewards, buf.next_obs, buf.terminated))


def ensemble_self_check(k: int = 3, updates: int = 6, critic=(256, 256), tol: float = 1e-5) -> dict:
    """Member i of a TD3Ensemble vs a separate TD3Learner from the same weights, batches and noise."""
    learners = [make_learner(critic=critic, seed=10 + i) for i in range(k)]
    ens = TD3Ensemble(learners)
    buf = filled_buffer(random_transitions(5_000, seed=123))
    rng = np.random.default_rng(7)
    worst_loss = 0.0
    for t in range(updates):
        idx = rng.integers(0, buf.size, size=(k, BATCH))
        noise = []
        sep_losses = []
        for i, learner in enumerate(learners):
            batch = Batch(*(a[idx[i]] for a in (buf.obs, buf.actions, buf.rewards, buf.next_obs, buf.terminated)))
            torch.manual_seed(1000 * t + i)  # TD3Learner.update draws torch.randn_like(actions) first
            noise.append(torch.randn(BATCH, ACT_DIM))
            torch.manual_seed(1000 * t + i)
            sep_losses.append(learner.update(batch)["critic_loss"])
        stacked = tuple(torch.from_numpy(a[idx]) for a in (buf.obs, buf.actions, buf.rewards, buf.next_obs, buf.terminated))
        ens_losses = ens.update(*stacked, noise=torch.stack(noise))
        worst_loss = max(worst_loss, max(abs(float(a) - b) / max(abs(b), 1e-6) for a, b in zip(ens_losses, sep_losses)))
    diffs = {}
    for i, learner in enumerate(learners):
        mine = ens.member_state(i)
        for name in mine:
            ref = list(getattr(learner, name).parameters())
            assert len(ref) == len(mine[name]) and all(a.shape == b.shape for a, b in zip(ref, mine[name])), name
            d = max(float((a.detach() - b).abs().max()) for a, b in zip(ref, mine[name]))
            diffs[name] = max(diffs.get(name, 0.0), d)
    moved = max(float((a - b.detach()).abs().max()) for a, b in
                zip(ens.member_state(0)["actor"], [p for p in make_learner(critic=critic, seed=10).actor.parameters()]))
    ok = max(diffs.values()) <= tol and worst_loss <= 1e-4 and moved > 0
    return {"members": k, "updates": updates, "actor_updates": updates // learners[0].policy_delay,
            "critic_hidden": list(critic), "max_abs_weight_diff": diffs, "max_rel_critic_loss_diff": worst_loss,
            "actor_moved_from_init": moved, "tolerance": tol, "passed": bool(ok)}


# --------------------------------------------------------------------------- candidates (in-process)


class Candidate:
    """A workload: ``step()`` does one call and returns the member-updates it did."""

    def __init__(self, name: str, desc: str, step: Callable[[], int], cores: int = 1, learner: str = "td3",
                 actor=(64, 64), critic=(256, 256), settings: dict | None = None):
        self.name, self.desc, self.step, self.cores, self.learner = name, desc, step, cores, learner
        self.actor, self.critic, self.settings = tuple(actor), tuple(critic), settings or {}

    def measure(self, seconds: float) -> dict:
        n, calls = 0, 0
        c0, t0 = time.process_time(), time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            n += self.step()
            calls += 1
        return {"updates": n, "calls": calls, "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}


def td3_candidate(name, buf, actor, critic, seed=0) -> Candidate:
    learner = make_learner(actor, critic, seed)
    rng = np.random.default_rng(seed)

    def step():
        learner.update(buf.sample(BATCH, rng))
        return 1

    w = lambda h: "-".join(map(str, h))  # noqa: E731
    return Candidate(name, f"TD3Learner, actor {w(actor)}, critic 2x{w(critic)}", step, actor=actor, critic=critic)


def ensemble_candidate(name, buf, k, critic, seed=0) -> Candidate:
    ens = TD3Ensemble([make_learner(critic=critic, seed=seed + i) for i in range(k)])
    rng = np.random.default_rng(seed)

    def step():
        ens.update(*sample_stacked(buf, k, rng))
        return k

    w = "-".join(map(str, critic))
    return Candidate(name, f"TD3Ensemble K={k}, actor 64-64, critic 2x{w}, 1 process", step, critic=critic,
                     settings={"members": k})


def sb3_candidate(name: str, data: dict[str, np.ndarray]):
    """CrossQ / TQC with library defaults, replay buffer filled with ``data``; None if sb3-contrib is missing."""
    try:
        import gymnasium as gym
        import sb3_contrib
        from stable_baselines3.common.logger import Logger
    except ImportError as e:
        print(f"skipping {name}: sb3-contrib not importable ({e}); see the docstring for how to install it")
        return None
    cls = {"crossq": sb3_contrib.CrossQ, "tqc": sb3_contrib.TQC}[name]
    n = len(data["obs"])
    env = gym.make("Hopper-v5")
    model = cls("MlpPolicy", env, buffer_size=n, batch_size=BATCH, seed=0, device="cpu", verbose=0)
    model.set_logger(Logger(folder=None, output_formats=[]))  # what learn() sets up with verbose=0
    rb = model.replay_buffer
    rb.observations[:n, 0], rb.next_observations[:n, 0] = data["obs"], data["next_obs"]
    rb.actions[:n, 0], rb.rewards[:n, 0], rb.dones[:n, 0] = data["actions"], data["rewards"], data["terminated"]
    rb.full, rb.pos = True, 0

    def step():
        model.train(gradient_steps=1, batch_size=BATCH)
        return 1

    arch = model.policy_kwargs.get("net_arch") or getattr(model.policy, "net_arch", None)
    settings = {"library": f"sb3-contrib {sb3_contrib.__version__}", "class": cls.__name__, "net_arch": arch,
                "learning_rate": model.learning_rate, "batch_size": BATCH, "gamma": model.gamma,
                "policy_delay": getattr(model, "policy_delay", None),
                "n_quantiles": getattr(model.critic, "n_quantiles", None),
                "top_quantiles_to_drop_per_net": getattr(model, "top_quantiles_to_drop_per_net", None),
                "actor_params": sum(p.numel() for p in model.actor.parameters()),
                "critic_params": sum(p.numel() for p in model.critic.parameters())}
    actor = tuple(getattr(model.actor, "net_arch", ()) or ())
    desc = f"sb3-contrib {cls.__name__}, library defaults, train(gradient_steps=1, batch_size={BATCH})"
    cand = Candidate(name, desc, step, learner=name, actor=actor, critic=(), settings=settings)
    cand.model, cand.env = model, env
    return cand


# --------------------------------------------------------------------------- worker processes


def _worker(idx: int, n_buffer: int, q_in, q_out) -> None:
    """One baseline learner in its own process (1 torch thread): run timed blocks on request."""
    torch.set_num_threads(1)
    buf = filled_buffer(random_transitions(n_buffer, seed=100 + idx))
    cand = td3_candidate(f"worker{idx}", buf, (64, 64), (256, 256), seed=idx)
    for _ in range(10):
        cand.step()
    q_out.put(("ready", idx))
    while True:
        seconds = q_in.get()
        if seconds is None:
            return
        q_out.put((idx, cand.measure(seconds)))


class Workers:
    def __init__(self, n: int, n_buffer: int):
        ctx = mp.get_context("spawn")
        self.q_in = [ctx.Queue() for _ in range(n)]
        self.q_out = ctx.Queue()
        self.procs = [ctx.Process(target=_worker, args=(i, n_buffer, self.q_in[i], self.q_out), daemon=True)
                      for i in range(n)]
        for p in self.procs:
            p.start()
        for _ in range(n):
            msg = self.q_out.get(timeout=300)
            assert msg[0] == "ready", msg

    def run(self, n: int, seconds: float) -> dict:
        for q in self.q_in[:n]:
            q.put(seconds)
        results = dict(self.q_out.get(timeout=seconds + 120) for _ in range(n))
        per = [results[i] for i in range(n)]
        return {"updates": sum(r["updates"] for r in per), "calls": sum(r["calls"] for r in per),
                "wall_s": max(r["wall_s"] for r in per), "cpu_s": sum(r["cpu_s"] for r in per),
                "rate_wall": sum(r["updates"] / r["wall_s"] for r in per), "per_process": per}

    def close(self) -> None:
        for q in self.q_in:
            q.put(None)
        for p in self.procs:
            p.join(timeout=30)


# --------------------------------------------------------------------------- env stepping


def env_cost_ours(n_steps: int) -> dict:
    """CPU seconds per env step of train_td3's loop without the update (64-64 actor, 1 thread)."""
    import gymnasium as gym

    learner = make_learner()
    env = gym.make("Hopper-v5")
    space = env.action_space
    buf = ReplayBuffer(OBS_DIM, ACT_DIM, n_steps)
    rng = np.random.default_rng(0)
    obs, episodes = None, 0
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(n_steps):
        if obs is None:
            obs, _ = env.reset(seed=episodes)
        a = learner.act(obs) + rng.normal(0.0, 0.1, size=ACT_DIM)
        a = np.clip(a, space.low, space.high).astype(np.float32)
        next_obs, reward, terminated, truncated, _ = env.step(a)
        buf.add(obs, a, reward, next_obs, terminated)
        obs = next_obs
        if terminated or truncated:
            episodes, obs = episodes + 1, None
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    env.close()
    return {"steps": n_steps, "episodes": episodes, "cpu_s": cpu, "wall_s": wall, "cpu_s_per_step": cpu / n_steps}


def env_cost_sb3(name: str, n_steps: int) -> dict | None:
    """CPU seconds per env step of SB3's collection loop: ``learn`` with gradient_steps=0 (no training)."""
    try:
        import gymnasium as gym
        import sb3_contrib
    except ImportError:
        return None
    cls = {"crossq": sb3_contrib.CrossQ, "tqc": sb3_contrib.TQC}[name]
    model = cls("MlpPolicy", gym.make("Hopper-v5"), buffer_size=n_steps + 10, learning_starts=0, gradient_steps=0,
                seed=0, device="cpu", verbose=0)
    c0, t0 = time.process_time(), time.perf_counter()
    model.learn(total_timesteps=n_steps)
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    return {"steps": n_steps, "cpu_s": cpu, "wall_s": wall, "cpu_s_per_step": cpu / n_steps,
            "how": "model.learn(total_timesteps) with learning_starts=0, gradient_steps=0"}


# --------------------------------------------------------------------------- measured curves


def measured_runs() -> list[dict]:
    """First step at or above the bar of every committed TD3 run, and the trial runs of REFERENCES.md."""
    runs = []
    for curve in sorted(ZOO_TRAINING.glob("*/seed_*/curve.csv")):
        prov_path = curve.parent / "provenance.json"
        if not prov_path.is_file():
            continue
        prov = json.loads(prov_path.read_text())
        cfg = prov.get("config", {})
        with open(curve, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows:
            continue
        first = next((r for r in rows if float(r["return_mean"]) >= BAR), None)
        runs.append({
            "run": str(curve.parent.relative_to(ROOT)), "source": str(curve.relative_to(ROOT)),
            "actor_hidden": cfg.get("actor_hidden"), "critic_hidden": cfg.get("critic_hidden"),
            "first_bar_step": int(first["step"]) if first else None, "last_step": int(rows[-1]["step"]),
            "best_return": max(float(r["return_mean"]) for r in rows),
            "evaluations_at_bar": sum(float(r["return_mean"]) >= BAR for r in rows), "evaluations": len(rows),
            # the run's own clocks at the first bar row (1 thread, a loaded machine: wall >= core time)
            "run_wall_s_at_bar": float(first["wall_s"]) if first else None,
            "run_update_time_s_at_bar": float(first["update_time_s"]) if first else None,
        })
    for ref in REFERENCE_RUNS:
        runs.append({**ref, "source": "../shared/REFERENCES.md"})
    return runs


def core_hours(steps: float, env_s: float, upd_per_cpu_s: float, learning_starts: int = LEARNING_STARTS) -> float:
    return (steps * env_s + max(steps - learning_starts, 0) / upd_per_cpu_s) / 3600.0


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds per candidate; nothing written unless --out")
    parser.add_argument("--check", action="store_true", help="only the ensemble self-check")
    parser.add_argument("--seconds", type=float, default=12.0, help="measured seconds per candidate (all rounds)")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds")
    parser.add_argument("--buffer", type=int, default=200_000, help="random transitions in each replay buffer")
    parser.add_argument("--env-steps", type=int, default=5_000, help="env steps for the env-stepping cost")
    parser.add_argument("--ensemble-critics", type=int, nargs="+", default=[256, 128, 64],
                        help="critic widths of the ensemble candidates")
    parser.add_argument("--only", nargs="+", default=None, help="candidate names to run (the baseline always runs)")
    parser.add_argument("--out", type=Path, default=None, help="json path (default benchmarks/results/td3_cost.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.rounds = min(args.seconds, 1.5), min(args.rounds, 2)
        args.buffer, args.env_steps = min(args.buffer, 20_000), min(args.env_steps, 500)
    out = args.out or (None if args.quick else ROOT / "benchmarks" / "results" / "td3_cost.json")
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    started = time.perf_counter()

    check = ensemble_self_check()
    print(f"ensemble self-check (K={check['members']}, {check['updates']} updates, {check['actor_updates']} actor steps): "
          f"max |weight diff| {max(check['max_abs_weight_diff'].values()):.2e}, "
          f"max rel critic-loss diff {check['max_rel_critic_loss_diff']:.2e} -> {'PASS' if check['passed'] else 'FAIL'}")
    if not check["passed"]:
        print(json.dumps(check, indent=1))
        return 1
    if args.check:
        return 0

    want = lambda name: args.only is None or name == BASELINE or name in args.only  # noqa: E731
    data = random_transitions(args.buffer, seed=0)
    buf = filled_buffer(data)
    cands: list[Candidate] = []
    for name, actor, critic in [("td3_c256", (64, 64), (256, 256)), ("td3_c128", (64, 64), (128, 128)),
                                ("td3_c64", (64, 64), (64, 64)), ("td3_a256_c256", (256, 256), (256, 256))]:
        if want(name):
            cands.append(td3_candidate(name, buf, actor, critic))
    for width in args.ensemble_critics:
        for k in (2, 4):
            if want(f"ens{k}_c{width}"):
                cands.append(ensemble_candidate(f"ens{k}_c{width}", buf, k, (width, width)))
    for name in ("crossq", "tqc"):
        if want(name):
            c = sb3_candidate(name, data)
            if c is not None:
                cands.append(c)
    workers = None
    if want("proc_x1") or want("proc_x2"):
        workers = Workers(2, args.buffer)
        for n in (1, 2):
            if want(f"proc_x{n}"):
                c = Candidate(f"proc_x{n}", f"{n} process(es) side by side, one TD3Learner (64-64 / 2x256-256) each",
                              None, cores=n, settings={"processes": n})
                c.measure = (lambda n_: lambda s: workers.run(n_, s))(n)
                cands.append(c)
    for c in cands:  # warm-up
        if c.step is not None:
            for _ in range(5):
                c.step()

    block = args.seconds / args.rounds
    blocks = []
    for r in range(args.rounds):
        order = cands[r % len(cands):] + cands[: r % len(cands)]
        for c in order:
            res = c.measure(block)
            res.setdefault("rate_wall", res["updates"] / res["wall_s"])
            blocks.append({"candidate": c.name, "round": r, "load1": os.getloadavg()[0], **res})
        print(f"round {r + 1}/{args.rounds} done, load {os.getloadavg()[0]:.2f}")
    if workers is not None:
        workers.close()

    env_costs = {"td3": env_cost_ours(args.env_steps)}
    for name in ("crossq", "tqc"):
        if any(c.learner == name for c in cands):
            env_costs[name] = env_cost_sb3(name, args.env_steps)

    runs = measured_runs()
    results = summarise(cands, blocks, env_costs, runs)
    print_table(results, env_costs, runs)
    load_after = os.getloadavg()
    print(f"\nload average before {load_before[0]:.2f}, after {load_after[0]:.2f}; total {time.perf_counter() - started:.0f} s")
    if out is None:
        return 0
    record = {
        "benchmark": "benchmarks/td3_cost.py",
        "what": "per-core TD3 update throughput of candidate learners/sizes (1 torch thread per process, batch 256, "
                "random Hopper-sized replay buffer), env-stepping cost, and core-hours to return >= 2500 from measured curves",
        "bar": BAR, "learning_starts": LEARNING_STARTS, "baseline": BASELINE,
        "settings": {"seconds": args.seconds, "rounds": args.rounds, "buffer": args.buffer, "batch": BATCH,
                     "env_steps": args.env_steps, "ensemble_critics": args.ensemble_critics, "quick": args.quick,
                     "torch_threads": torch.get_num_threads()},
        "ensemble_self_check": check,
        "candidates": results, "env_step_cost": env_costs, "measured_runs": runs, "blocks": blocks,
        "core_hours_formula": "(S * env_cpu_s_per_step + (S - learning_starts) / updates_per_cpu_s) / 3600, "
                              "in-training evaluations not included",
        "load_average_before": load_before, "load_average_after": load_after,
        "machine": machine(), "versions": {**runtime_versions(), **sb3_versions()},
        "code_revision": code_revision(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1, default=json_default))
    print(f"written: {out}")
    return 0


def sb3_versions() -> dict[str, str]:
    out = {}
    for mod in ("stable_baselines3", "sb3_contrib"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            out[mod] = "not installed"
    return out


def summarise(cands, blocks, env_costs, runs) -> list[dict]:
    base_by_round = {b["round"]: b for b in blocks if b["candidate"] == BASELINE}
    results = []
    for c in cands:
        mine = [b for b in blocks if b["candidate"] == c.name]
        n, wall, cpu = sum(b["updates"] for b in mine), sum(b["wall_s"] for b in mine), sum(b["cpu_s"] for b in mine)
        rate_wall = statistics.mean(b["rate_wall"] for b in mine)  # proc_x2: summed over its processes
        rate_cpu = n / cpu  # member-updates per CPU second = per core
        ratio_wall = statistics.median(b["rate_wall"] / base_by_round[b["round"]]["rate_wall"] for b in mine)
        ratio_cpu = statistics.median((b["updates"] / b["cpu_s"]) / (base_by_round[b["round"]]["updates"]
                                                                      / base_by_round[b["round"]]["cpu_s"]) for b in mine)
        env_s = env_costs["td3" if c.learner == "td3" else c.learner]["cpu_s_per_step"]
        matching = [r for r in runs if c.learner == "td3" and r["actor_hidden"] is not None
                    and tuple(r["actor_hidden"]) == c.actor and tuple(r["critic_hidden"] or ()) == c.critic]
        reached = sorted(r["first_bar_step"] for r in matching if r["first_bar_step"] is not None)
        row = {
            "name": c.name, "description": c.desc, "learner": c.learner, "actor_hidden": list(c.actor),
            "critic_hidden": list(c.critic), "cores": c.cores, "settings": c.settings,
            "member_updates": n, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
            "updates_per_s_wall": round(rate_wall, 2), "updates_per_cpu_s": round(rate_cpu, 2),
            "updates_per_s_per_core_wall": round(rate_wall / c.cores, 2),
            "ratio_vs_baseline_wall_median_round": round(ratio_wall, 3),
            "ratio_vs_baseline_cpu_median_round": round(ratio_cpu, 3),
            "env_cpu_s_per_step": env_s,
            "core_hours_per_100k_steps": round(core_hours(100_000, env_s, rate_cpu, learning_starts=0), 4),
            "measured_runs": [r["run"] for r in matching],
            "steps_to_bar": statistics.median(reached) if reached else None,
            "steps_to_bar_all": [r["first_bar_step"] for r in matching],
            "not_reached": [f"not reached by step {r['last_step']}" for r in matching if r["first_bar_step"] is None],
        }
        row["steps_to_bar_note"] = ("unmeasured" if not matching else
                                    f"{len(reached)} of {len(matching)} measured runs reached the bar; steps_to_bar = the median of those")
        row["core_hours_to_bar"] = (round(core_hours(row["steps_to_bar"], env_s, rate_cpu), 3)
                                    if row["steps_to_bar"] is not None else None)
        row["core_hours_to_bar_each_run"] = [round(core_hours(s, env_s, rate_cpu), 3) for s in reached]
        results.append(row)
    return results


def print_table(results, env_costs, runs) -> None:
    print("\nenv stepping (CPU ms per env step, 1 thread): "
          + ", ".join(f"{k} {v['cpu_s_per_step'] * 1e3:.3f}" for k, v in env_costs.items() if v))
    print("\nmeasured curves (first evaluation with return_mean >= 2500):")
    for r in runs:
        sizes = f"actor {'-'.join(map(str, r['actor_hidden'] or []))}, critic {'-'.join(map(str, r['critic_hidden'] or []))}"
        first = f"{r['first_bar_step']:,}" if r["first_bar_step"] is not None else f"not reached by step {r['last_step']:,}"
        extra = f"; the run's own wall clock at the bar {r['run_wall_s_at_bar'] / 3600:.2f} h" if r.get("run_wall_s_at_bar") else ""
        print(f"  {r['run']} ({sizes}): {first}{extra}")
    print("\n(member-)updates/s per core; 'vs base' = median over rounds of the ratio to td3_c256 in the same round")
    head = (f"{'candidate':<15}{'cores':>5}{'upd/s wall':>11}{'/core':>8}{'upd/CPU-s':>10}{'vs base':>8}"
            f"{'(wall)':>7}{'env ms':>7}{'core-h/100k':>12}{'steps to bar':>14}{'core-h to bar':>14}")
    print(head)
    print("-" * len(head))
    for r in results:
        steps = f"{r['steps_to_bar']:,.0f}" if r["steps_to_bar"] is not None else "unmeasured"
        ch = f"{r['core_hours_to_bar']:.2f}" if r["core_hours_to_bar"] is not None else "-"
        print(f"{r['name']:<15}{r['cores']:>5}{r['updates_per_s_wall']:>11.1f}{r['updates_per_s_per_core_wall']:>8.1f}"
              f"{r['updates_per_cpu_s']:>10.1f}{r['ratio_vs_baseline_cpu_median_round']:>8.2f}"
              f"{r['ratio_vs_baseline_wall_median_round']:>7.2f}{r['env_cpu_s_per_step'] * 1e3:>7.3f}"
              f"{r['core_hours_per_100k_steps']:>12.3f}{steps:>14}{ch:>14}")
    for r in results:
        if r["steps_to_bar"] is not None:
            print(f"  {r['name']}: {r['steps_to_bar_note']} ({', '.join(f'{s:,}' for s in r['steps_to_bar_all'] if s)}"
                  f"{'; ' + '; '.join(r['not_reached']) if r['not_reached'] else ''}); core-h to bar per reached run "
                  f"{r['core_hours_to_bar_each_run']}")
    print("core-h = (S * env + (S - 25k) / upd-per-CPU-s) / 3600; evaluations not included; "
          "'unmeasured' = no learning curve of that learner/size here (core-h per 100k steps only)")


if __name__ == "__main__":
    sys.exit(main())
