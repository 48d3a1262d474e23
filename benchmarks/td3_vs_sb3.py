"""Our TD3 (nnae_utils.td3) against stable-baselines3's TD3 on Hopper-v5.

Same hyperparameters (TD3Config's defaults), same actor (64-64 ReLU, tanh output), same critic
(two 256-256 ReLU Q-networks), same seeds, and the same evaluation: every 5k steps both actors go
through ``nnae_utils.rollouts.evaluate`` on the run's selection seeds (SB3's ``actor.mu`` is
converted to our ``Network``). Each (implementation, seed) runs as its own process with one torch
thread, at most ``--jobs`` at a time; ours and SB3's of one seed are started side by side, so both
see the same machine load.

    python benchmarks/td3_vs_sb3.py --quick        # 3k steps, checks the plumbing (a few minutes)
    python benchmarks/td3_vs_sb3.py                # 3 seeds x 300k steps (hours; resumable)
    python benchmarks/td3_vs_sb3.py --speed-only   # ~60 s each: update throughput, 1 thread
    python benchmarks/td3_vs_sb3.py --report       # summary.json + curves.png from the CSVs

Outputs (``benchmarks/results/td3_vs_sb3/``, ``.../quick/`` for --quick): ``<impl>_seed<k>.csv``
(step, return, wall_s, updates_per_s, return_std, updates, update_time_s), ``summary.json``,
``curves.png``, ``speed.json``, ``config.json``. Work files (checkpoints, replay buffers, logs) go
to the git-ignored ``runs/bench/td3_vs_sb3/``. Interrupt at any time and rerun the same command:
ours resumes exactly from ``train_td3``'s checkpoints; SB3 resumes from its last ``model.save`` +
replay buffer (written every 25k steps), cutting the episode in progress (SB3 cannot save its env).

Measures (same definitions for both): ``updates_per_s`` = gradient updates / seconds spent sampling
a batch and updating (SB3: inside ``model.train``, which ``learn`` calls once per env step);
``wall_s`` = seconds since the run started, evaluations included.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from nnae_utils.td3 import TD3Config  # noqa: E402

IMPLS = ("ours", "sb3")
RESULTS = REPO / "benchmarks" / "results" / "td3_vs_sb3"
WORK = REPO / "runs" / "bench" / "td3_vs_sb3"
CSV_COLUMNS = ("step", "return", "wall_s", "updates_per_s", "return_std", "updates", "update_time_s")
LAST_K = 5  # final return = mean of the last 5 evaluations of a seed
THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def bench_config(seed: int, steps: int, quick: bool) -> TD3Config:
    """The one config both implementations run (TD3Config's defaults = Fujimoto/CleanRL)."""
    if quick:  # plumbing only: updates must happen within 3k steps
        return TD3Config(seed=seed, total_steps=steps, learning_starts=1_000, eval_every=1_000,
                         checkpoint_every=1_000, torch_threads=1)
    return TD3Config(seed=seed, total_steps=steps, torch_threads=1)


# --------------------------------------------------------------------------- csv helpers


def read_rows(path: Path) -> list[dict[str, float]]:
    import csv

    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def write_rows(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w") as f:
        f.write(",".join(CSV_COLUMNS) + "\n")
        for r in rows:
            f.write(",".join(_fmt(r[c]) for c in CSV_COLUMNS) + "\n")
    os.replace(tmp, path)


def _fmt(x) -> str:
    return str(int(x)) if isinstance(x, (int, np.integer)) or (isinstance(x, float) and x.is_integer() and abs(x) < 1e15) else repr(float(x))


# --------------------------------------------------------------------------- workers (one process each)


def run_ours(cfg: TD3Config, work: Path, out_csv: Path) -> None:
    import pandas as pd

    from nnae_utils.td3 import train_td3

    run_dir = work / f"ours_seed{cfg.seed}"

    def mirror(_row=None) -> None:  # the bench CSV mirrors train_td3's curve.csv (which resumes exactly)
        curve = pd.read_csv(run_dir / "curve.csv")
        rows = [{"step": int(r.step), "return": float(r.return_mean), "wall_s": float(r.wall_s),
                 "updates_per_s": float(r.updates_per_s), "return_std": float(r.return_std),
                 "updates": int(r.updates), "update_time_s": float(r.update_time_s)} for r in curve.itertuples()]
        write_rows(out_csv, rows)

    train_td3(cfg, run_dir, progress=False, on_eval=mirror)
    mirror()


def sb3_actor_network(model, spec):
    """SB3's ``actor.mu`` (Linear, ReLU, ..., Linear, Tanh) as our Network."""
    import torch

    from nnae_utils.policies import Network

    mods = list(model.actor.mu)
    linears = [m for m in mods if isinstance(m, torch.nn.Linear)]
    acts = [type(m).__name__ for m in mods if not isinstance(m, torch.nn.Linear)]
    want = ["ReLU"] * len(spec.hidden) + ["Tanh"]
    if acts != want or len(linears) != spec.n_layers:
        raise ValueError(f"SB3 actor {mods} does not match {spec}")
    params = {}
    for i, lin in enumerate(linears):
        params[f"layers.{i}.weight"] = lin.weight.detach().cpu().numpy().copy()
        params[f"layers.{i}.bias"] = lin.bias.detach().cpu().numpy().copy()
    return Network(spec, params)


def make_sb3(cfg: TD3Config, env, buffer_size: int | None = None):
    """SB3 TD3 with exactly our hyperparameters (everything else at SB3's defaults, which agree)."""
    import torch
    from stable_baselines3 import TD3
    from stable_baselines3.common.noise import NormalActionNoise

    if cfg.actor_lr != cfg.critic_lr:
        raise ValueError("SB3's TD3 has one learning rate for actor and critic")
    act_dim = env.action_space.shape[0]
    return TD3(
        "MlpPolicy", env,
        learning_rate=cfg.actor_lr,
        # capacity >= total steps never wraps, so it acts as 1e6; smaller pickles on save
        buffer_size=min(cfg.buffer_size, buffer_size or cfg.buffer_size),
        learning_starts=cfg.learning_starts, batch_size=cfg.batch_size, tau=cfg.tau, gamma=cfg.gamma,
        train_freq=1, gradient_steps=1,
        action_noise=NormalActionNoise(np.zeros(act_dim), cfg.exploration_noise * np.ones(act_dim)),
        policy_delay=cfg.policy_delay, target_policy_noise=cfg.policy_noise, target_noise_clip=cfg.noise_clip,
        policy_kwargs=dict(net_arch=dict(pi=list(cfg.actor_hidden), qf=list(cfg.critic_hidden)),
                           activation_fn={"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh, "elu": torch.nn.ELU}[cfg.actor_activation],
                           n_critics=2, share_features_extractor=False, optimizer_class=torch.optim.Adam),
        seed=cfg.seed, device="cpu", verbose=0,
    )


def sb3_settings(model) -> dict:
    """What SB3 actually runs with (written to config.json to show it matches)."""
    return {
        "learning_rate": model.learning_rate, "buffer_size": model.buffer_size, "learning_starts": model.learning_starts,
        "batch_size": model.batch_size, "tau": model.tau, "gamma": model.gamma,
        "train_freq": [model.train_freq.frequency, str(model.train_freq.unit.value)], "gradient_steps": model.gradient_steps,
        "policy_delay": model.policy_delay, "target_policy_noise": model.target_policy_noise,
        "target_noise_clip": model.target_noise_clip, "action_noise": repr(model.action_noise),
        "actor": str(model.actor.mu).replace("\n", " "), "critic_q1": str(model.critic.q_networks[0]).replace("\n", " "),
        "n_critics": len(model.critic.q_networks), "optimizer": type(model.actor.optimizer).__name__,
        "optimizer_defaults": {k: v for k, v in model.actor.optimizer.defaults.items() if isinstance(v, (int, float, bool, tuple))},
        "handle_timeout_termination": bool(model.replay_buffer.handle_timeout_termination),
    }


def run_sb3(cfg: TD3Config, work: Path, out_csv: Path) -> None:
    import gymnasium as gym
    import torch
    from stable_baselines3 import TD3
    from stable_baselines3.common.callbacks import BaseCallback

    from nnae_utils.rollouts import evaluate
    from nnae_utils.td3 import lock_run_dir, selection_seeds

    torch.set_num_threads(cfg.torch_threads)
    run_dir = work / f"sb3_seed{cfg.seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = lock_run_dir(run_dir)  # noqa: F841 - held until the process ends
    latest = run_dir / "latest.json"
    env = gym.make(cfg.env_id)
    spec = cfg.actor_spec(env.observation_space.shape[0], env.action_space.shape[0])
    seeds = selection_seeds(cfg)
    state = json.loads(latest.read_text()) if latest.is_file() else None
    if state is None:
        model = make_sb3(cfg, env, buffer_size=cfg.total_steps)
        state = {"step": 0, "wall_s": 0.0, "update_time_s": 0.0, "updates": 0, "dir": None, "resumed_at": []}
        rows: list[dict] = []
    else:
        ckpt = run_dir / state["dir"]
        model = TD3.load(ckpt / "model.zip", env=env, device="cpu")
        model.load_replay_buffer(ckpt / "replay_buffer.pkl")
        if model.num_timesteps != state["step"] or model.replay_buffer.size() != min(state["step"], model.buffer_size):
            raise RuntimeError(f"{ckpt}: model/buffer do not match latest.json")
        model.set_random_seed(cfg.seed + 1000 * (len(state["resumed_at"]) + 1))  # fresh env + RNG streams
        model._last_obs = None  # learn() resets the new env: the episode in progress is cut
        state["resumed_at"].append(state["step"])
        rows = [r for r in read_rows(out_csv) if r["step"] <= state["step"]]
        write_rows(out_csv, rows)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    (out_csv.parent / "config.json").write_text(json.dumps(
        {"ours": cfg.to_dict() | {"seed": "per run"}, "sb3": sb3_settings(model)}, indent=1, default=str))

    timer = {"update_time_s": float(state["update_time_s"]), "updates": int(state["updates"])}
    t0 = time.perf_counter() - float(state["wall_s"])
    marks = {"updates": timer["updates"], "time": timer["update_time_s"]}
    done_steps = {int(r["step"]) for r in rows}
    checked = [False]

    def timed_train(gradient_steps: int, batch_size: int = 100) -> None:
        t = time.perf_counter()
        TD3.train(model, gradient_steps=gradient_steps, batch_size=batch_size)
        timer["update_time_s"] += time.perf_counter() - t
        timer["updates"] += gradient_steps

    def maybe_evaluate(step: int) -> None:
        if step in done_steps or not (step % cfg.eval_every == 0 or step == cfg.total_steps):
            return
        net = sb3_actor_network(model, spec)
        if not checked[0]:  # the conversion is exact up to float rounding
            probe = np.random.default_rng(0).normal(size=(16, spec.obs_dim)).astype(np.float32)
            with torch.no_grad():
                theirs = model.actor(torch.from_numpy(probe)).numpy()
            np.testing.assert_allclose(net.act(probe), theirs, atol=1e-5)
            checked[0] = True
        returns = np.asarray(evaluate(net, seeds, nthread=1, max_steps=cfg.eval_max_steps).returns, float).ravel()
        d_upd, d_time = timer["updates"] - marks["updates"], timer["update_time_s"] - marks["time"]
        rows.append({"step": step, "return": round(float(returns.mean()), 6), "wall_s": round(time.perf_counter() - t0, 3),
                     "updates_per_s": round(d_upd / d_time, 3) if d_time > 0 else float("nan"),
                     "return_std": round(float(returns.std()), 6), "updates": timer["updates"],
                     "update_time_s": round(timer["update_time_s"], 4)})
        marks.update(updates=timer["updates"], time=timer["update_time_s"])
        done_steps.add(step)
        write_rows(out_csv, rows)

    class EvalAtRolloutStart(BaseCallback):
        # With train_freq=1, a rollout starts right after the previous step's gradient update, so
        # the actor evaluated here at num_timesteps = t is in the state ours is in after step t.
        def _on_rollout_start(self) -> None:
            maybe_evaluate(self.model.num_timesteps)

        def _on_step(self) -> bool:
            return True

    callback = EvalAtRolloutStart()
    model.train = timed_train  # instance attribute: learn() calls self.train(...)
    while model.num_timesteps < cfg.total_steps:
        chunk_end = min(cfg.total_steps, (model.num_timesteps // cfg.checkpoint_every + 1) * cfg.checkpoint_every)
        model.learn(total_timesteps=chunk_end - model.num_timesteps, callback=callback, reset_num_timesteps=False)
        maybe_evaluate(model.num_timesteps)  # the chunk's last step (after its update)
        # checkpoint: a new folder, then the pointer, then the old folder goes
        del model.train
        name = f"ckpt_{model.num_timesteps:07d}"
        model.save(run_dir / name / "model.zip")
        model.save_replay_buffer(run_dir / name / "replay_buffer.pkl")
        model.train = timed_train
        old = state["dir"]
        state.update(step=model.num_timesteps, wall_s=time.perf_counter() - t0, dir=name, **timer)
        tmp = latest.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, latest)
        if old and old != name:
            import shutil

            shutil.rmtree(run_dir / old, ignore_errors=True)
    env.close()


# --------------------------------------------------------------------------- speed-only


def speed_only(out_dir: Path, seconds: float, block: float = 10.0) -> dict:
    """Update throughput of ours vs SB3, 1 torch thread, same nets, batch and buffer contents.

    The two alternate in blocks of ``block`` seconds (so a change in machine load hits both) until
    each has run ``seconds``. Ours: ``buffer.sample`` + ``learner.update``; SB3: ``model.train(1, 256)``
    (exactly what ``learn`` calls after each env step with train_freq=1).
    """
    import gymnasium as gym
    import torch

    from nnae_utils.td3 import ReplayBuffer, TD3Learner

    torch.set_num_threads(1)
    cfg = TD3Config(seed=0)
    env = gym.make(cfg.env_id)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    n = 100_000
    rng = np.random.default_rng(0)
    data = dict(obs=rng.normal(size=(n, obs_dim)).astype(np.float32), actions=rng.uniform(-1, 1, (n, act_dim)).astype(np.float32),
                rewards=rng.normal(size=n).astype(np.float32), next_obs=rng.normal(size=(n, obs_dim)).astype(np.float32),
                terminated=(rng.uniform(size=n) < 0.01).astype(np.float32))
    torch.manual_seed(0)
    learner = TD3Learner.from_config(cfg, obs_dim, act_dim)
    buf = ReplayBuffer(obs_dim, act_dim, n)
    buf.add_batch(data["obs"], data["actions"], data["rewards"], data["next_obs"], data["terminated"])
    model = make_sb3(cfg, env, buffer_size=n)
    from stable_baselines3.common.logger import Logger

    model.set_logger(Logger(folder=None, output_formats=[]))  # what learn() would set up (verbose=0)
    rb = model.replay_buffer
    rb.observations[:n, 0], rb.next_observations[:n, 0] = data["obs"], data["next_obs"]
    rb.actions[:n, 0], rb.rewards[:n, 0], rb.dones[:n, 0] = data["actions"], data["rewards"], data["terminated"]
    rb.full, rb.pos = True, 0
    ours_params = sum(p.numel() for p in [*learner.actor.parameters(), *learner.critic.parameters()])
    sb3_params = sum(p.numel() for p in [*model.actor.parameters(), *model.critic.parameters()])
    if ours_params != sb3_params:
        raise AssertionError(f"networks differ: ours {ours_params} parameters, SB3 {sb3_params}")

    def ours_step() -> None:
        learner.update(buf.sample(cfg.batch_size, rng))

    def sb3_step() -> None:
        model.train(gradient_steps=1, batch_size=cfg.batch_size)

    steps = {"ours": ours_step, "sb3": sb3_step}
    for fn in steps.values():  # warm-up
        for _ in range(20):
            fn()
    blocks: dict[str, list[list[float]]] = {k: [] for k in steps}
    spent = {k: 0.0 for k in steps}
    while min(spent.values()) < seconds:
        for name, fn in steps.items():
            count, t = 0, time.perf_counter()
            while time.perf_counter() - t < block:
                fn()
                count += 1
            dt = time.perf_counter() - t
            spent[name] += dt
            blocks[name].append([count, round(dt, 4)])
    rates = {k: sum(c for c, _ in v) / sum(t for _, t in v) for k, v in blocks.items()}
    result = {
        "what": "gradient updates per second, 1 torch thread, batch 256, actor 64-64, critic 2x256-256, "
                "synthetic 100k-transition buffer; the two alternate in blocks",
        "updates_per_s": {k: round(v, 2) for k, v in rates.items()},
        "ratio_ours_over_sb3": round(rates["ours"] / rates["sb3"], 4),
        "block_rates": {k: [round(c / t, 1) for c, t in v] for k, v in blocks.items()},
        "seconds_each": {k: round(v, 1) for k, v in spent.items()},
        "parameters": ours_params,
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "cpu_count": os.cpu_count(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "speed.json").write_text(json.dumps(result, indent=1))
    env.close()
    return result


# --------------------------------------------------------------------------- report


def report(out_dir: Path, steps: int | None = None) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns
    from scipy import stats

    curves: dict[str, dict[int, list[dict]]] = {impl: {} for impl in IMPLS}
    for impl in IMPLS:
        for path in sorted(out_dir.glob(f"{impl}_seed*.csv")):
            rows = sorted(read_rows(path), key=lambda r: r["step"])
            if rows:
                curves[impl][int(path.stem.split("seed")[1])] = rows

    def ci(values: list[float]) -> list[float] | None:
        if len(values) < 2 or np.ptp(values) == 0:
            return None
        res = stats.bootstrap((np.asarray(values),), np.mean, confidence_level=0.95, n_resamples=10_000,
                              method="percentile", rng=np.random.default_rng(0))
        return [round(float(res.confidence_interval.low), 2), round(float(res.confidence_interval.high), 2)]

    summary: dict = {"implementations": {}, "last_k_evaluations": LAST_K,
                     "ci": "95% percentile bootstrap over seeds (scipy.stats.bootstrap, 10k resamples); null below 2 seeds"}
    for impl, by_seed in curves.items():
        finals, aucs, rates, last_steps = {}, {}, {}, {}
        if not by_seed:
            continue
        for seed, rows in by_seed.items():
            s = np.array([r["step"] for r in rows])
            ret = np.array([r["return"] for r in rows])
            finals[seed] = float(ret[-LAST_K:].mean())
            span = s[-1] - s[0]
            aucs[seed] = float(np.trapezoid(ret, s) / span) if span > 0 else float("nan")
            upd, t = rows[-1]["updates"], rows[-1]["update_time_s"]
            rates[seed] = float(upd / t) if t > 0 else float("nan")
            last_steps[seed] = int(s[-1])
        f, a, r = list(finals.values()), list(aucs.values()), [x for x in rates.values() if np.isfinite(x)]
        summary["implementations"][impl] = {
            "seeds": sorted(by_seed), "last_step": last_steps,
            "final_return": {"mean": round(float(np.mean(f)), 2) if f else None, "ci95": ci(f),
                             "per_seed": {k: round(v, 2) for k, v in finals.items()}},
            "auc_mean_return": {"mean": round(float(np.mean(a)), 2) if a else None, "ci95": ci(a),
                                "per_seed": {k: round(v, 2) for k, v in aucs.items()},
                                "what": "trapezoid area under return-vs-step divided by the steps covered"},
            "updates_per_s": {"mean": round(float(np.mean(r)), 2) if r else None,
                              "per_seed": {k: round(v, 2) for k, v in rates.items()},
                              "what": "all updates / all time in sampling + updating, per seed"},
            "env_steps_per_wall_s": {k: round(v[-1]["step"] / v[-1]["wall_s"], 2) for k, v in by_seed.items() if v[-1]["wall_s"] > 0},
        }
    ours, sb3 = (summary["implementations"].get(k, {}) for k in IMPLS)
    # does ours learn like SB3? The difference of means over seeds, with a two-sample bootstrap CI
    # and Welch's t-test: with three seeds a side, only a large difference can show.
    for metric in ("final_return", "auc_mean_return"):
        a = list(ours.get(metric, {}).get("per_seed", {}).values())
        b = list(sb3.get(metric, {}).get("per_seed", {}).values())
        if len(a) >= 2 and len(b) >= 2:
            diff = stats.bootstrap((np.asarray(a), np.asarray(b)), lambda x, y: np.mean(x) - np.mean(y),
                                   confidence_level=0.95, n_resamples=10_000, method="percentile",
                                   rng=np.random.default_rng(0))
            summary.setdefault("ours_minus_sb3", {})[metric] = {
                "difference_of_means": round(float(np.mean(a) - np.mean(b)), 2),
                "ci95": [round(float(diff.confidence_interval.low), 2), round(float(diff.confidence_interval.high), 2)],
                "welch_t_test_p": round(float(stats.ttest_ind(a, b, equal_var=False).pvalue), 4),
                "n": [len(a), len(b)],
            }
    if ours.get("updates_per_s", {}).get("mean") and sb3.get("updates_per_s", {}).get("mean"):
        summary["speed_ratio_ours_over_sb3_in_run"] = round(ours["updates_per_s"]["mean"] / sb3["updates_per_s"]["mean"], 4)
    for speed_dir in (out_dir, out_dir.parent if out_dir.name == "quick" else out_dir):
        if (speed_dir / "speed.json").is_file():
            summary["speed_only"] = json.loads((speed_dir / "speed.json").read_text())
            break
    if (out_dir / "config.json").is_file():
        summary["config"] = json.loads((out_dir / "config.json").read_text())
    complete = steps is not None and all(
        len(curves[i]) > 0 and all(r[-1]["step"] >= steps for r in curves[i].values()) for i in IMPLS)
    summary["complete"] = bool(complete) if steps is not None else None
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    if not any(curves.values()):
        return summary  # nothing to draw yet

    sns.set_theme(context="notebook", style="whitegrid")
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    for ax, impl, title in zip(axes, IMPLS, ("ours (nnae_utils.td3)", "stable-baselines3 TD3")):
        by_seed = curves[impl]
        for seed, rows in sorted(by_seed.items()):
            ax.plot([r["step"] for r in rows], [r["return"] for r in rows], lw=1, alpha=0.6, label=f"seed {seed}")
        if by_seed:
            common = sorted(set.intersection(*[{r["step"] for r in rows} for rows in by_seed.values()]))
            if common:
                mean = [np.mean([next(r["return"] for r in rows if r["step"] == s) for rows in by_seed.values()]) for s in common]
                ax.plot(common, mean, color="k", lw=2, label="mean")
            ax.legend(fontsize=8)
        ax.set(title=title, xlabel="environment steps")
    axes[0].set_ylabel("return (selection seeds, 5 episodes)")
    fig.tight_layout()
    fig.savefig(out_dir / "curves.png", dpi=120)
    plt.close(fig)
    return summary


# --------------------------------------------------------------------------- scheduler


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def schedule(seeds: list[int], steps: int, jobs: int, quick: bool, out_dir: Path, work: Path, impls: list[str]) -> None:
    import signal

    # Ctrl-C, SIGTERM, and SIGINT sent to a background job (where Python inherits it ignored) all
    # stop the workers too; they resume from their checkpoints on the next call.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    work.mkdir(parents=True, exist_ok=True)
    (work / "logs").mkdir(exist_ok=True)
    todo = []
    for seed in seeds:  # ours and SB3 of a seed side by side: same machine load
        for impl in impls:
            rows = read_rows(out_dir / f"{impl}_seed{seed}.csv")
            if (work / f"{impl}_seed{seed}.done").is_file() and rows and rows[-1]["step"] >= steps:
                print(f"{impl} seed {seed}: done")
                continue
            todo.append((impl, seed))
    running: list[tuple[str, int, subprocess.Popen]] = []
    env = {**os.environ, **THREAD_ENV, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    last_print, failed = 0.0, []
    try:
        while todo or running:
            while todo and len(running) < jobs:
                impl, seed = todo.pop(0)
                cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", impl, "--seed", str(seed),
                       "--steps", str(steps), "--out", str(out_dir), "--work", str(work)] + (["--quick"] if quick else [])
                log = open(work / "logs" / f"{impl}_seed{seed}.log", "a")
                running.append((impl, seed, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)))
                print(f"started {impl} seed {seed} (pid {running[-1][2].pid})", flush=True)
            time.sleep(2)
            for item in list(running):
                impl, seed, proc = item
                if proc.poll() is not None:
                    running.remove(item)
                    if proc.returncode != 0:
                        failed.append(f"{impl} seed {seed}")
                        print(f"FAILED {impl} seed {seed} (exit {proc.returncode}); see {work / 'logs'}", flush=True)
                        continue
                    (work / f"{impl}_seed{seed}.done").write_text(time.strftime("%Y-%m-%dT%H:%M:%S%z"))
                    print(f"finished {impl} seed {seed}", flush=True)
            if time.time() - last_print > 60:
                last_print = time.time()
                for impl, seed, _ in running:
                    rows = read_rows(out_dir / f"{impl}_seed{seed}.csv")
                    if rows:
                        r = rows[-1]
                        print(f"  {impl} seed {seed}: step {int(r['step'])}/{steps} return {r['return']:.1f} "
                              f"updates/s {r['updates_per_s']:.1f}", flush=True)
    except BaseException:  # Ctrl-C included: stop the workers (they resume on the next call)
        for _, _, proc in running:
            proc.terminate()
        for _, _, proc in running:
            proc.wait()
        raise
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}; see {work / 'logs'}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=None, help="env steps per run (default 300000; --quick: 3000)")
    ap.add_argument("--seeds", default="3", help="a count N (seeds 0..N-1) or a comma list (default 3)")
    ap.add_argument("--jobs", type=int, default=2, help="processes at a time (default 2)")
    ap.add_argument("--impl", choices=("both", *IMPLS), default="both")
    ap.add_argument("--quick", action="store_true", help="3k steps, learning_starts 1k, eval every 1k: plumbing only")
    ap.add_argument("--report", action="store_true", help="only summarise the CSVs (summary.json, curves.png)")
    ap.add_argument("--speed-only", action="store_true", help="only measure update throughput (~60 s each)")
    ap.add_argument("--speed-seconds", type=float, default=60.0)
    ap.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--worker", choices=IMPLS, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    steps = args.steps or (3_000 if args.quick else 300_000)
    out_dir = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    work = args.work or (WORK / ("quick" if args.quick else "main"))
    if args.worker:
        cfg = bench_config(args.seed, steps, args.quick)
        out_csv = out_dir / f"{args.worker}_seed{args.seed}.csv"
        (run_ours if args.worker == "ours" else run_sb3)(cfg, work, out_csv)
        return
    if args.speed_only:
        res = speed_only(out_dir, args.speed_seconds)
        print(json.dumps({k: res[k] for k in ("updates_per_s", "ratio_ours_over_sb3", "block_rates")}, indent=1))
        report(out_dir, None)  # summary.json carries the speed result even before any training run
        return
    if not args.report:
        seeds = [int(s) for s in args.seeds.split(",")] if "," in args.seeds else list(range(int(args.seeds)))
        impls = list(IMPLS) if args.impl == "both" else [args.impl]
        t = time.perf_counter()
        schedule(seeds, steps, args.jobs, args.quick, out_dir, work, impls)
        print(f"all runs done in {time.perf_counter() - t:.0f} s")
    summary = report(out_dir, steps)
    short = {impl: {k: v[k] for k in ("final_return", "auc_mean_return", "updates_per_s")}
             for impl, v in summary["implementations"].items()}
    print(json.dumps({"implementations": short,
                      "speed_ratio_ours_over_sb3_in_run": summary.get("speed_ratio_ours_over_sb3_in_run"),
                      "speed_only_ratio": summary.get("speed_only", {}).get("ratio_ours_over_sb3")}, indent=1))
    print(f"wrote {out_dir / 'summary.json'} and {out_dir / 'curves.png'}")


if __name__ == "__main__":
    main()
