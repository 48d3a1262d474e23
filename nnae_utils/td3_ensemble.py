"""K independent TD3 runs trained in one process, their updates stacked: :class:`TD3Ensemble` and
the resumable trainer :func:`train_td3_ensemble`.

Why: one small TD3 update (batch 256, a 64-64 actor, a 64-64 twin critic) costs mostly Python and
kernel-launch overhead, not arithmetic. Stacking K runs' weights as ``[K, out, in]`` and running
one ``torch.baddbmm`` per layer does K members' updates for little more than the cost of one
(``benchmarks/td3_cost.py`` measures it).

Each member is one independent TD3 run, with exactly what :func:`nnae_utils.td3.train_td3` gives a
run of its config:

- its own Hopper env, reset for training episode ``k`` with ``episode_seed(cfg.seed, k)``;
- its own ``numpy.random.Generator(cfg.seed)`` drawing, in train_td3's order, the warm-up actions,
  the exploration noise and the replay batches; its own :class:`~nnae_utils.td3.ReplayBuffer`;
- its own initial weights: its ``TD3Learner`` is built with ``TD3Learner.from_config`` right after
  ``torch.manual_seed(cfg.seed)`` (so ``actor_init_seed`` is honoured);
- **target-policy noise**: its own ``torch.Generator``, set to the state torch's global generator
  has right after that member's learner was built. train_td3 draws its noise
  (``torch.randn_like(actions)``) from the global generator in that very state, so each member
  draws the same noise stream as a single run of its config: member i's noise at an update is
  ``torch.randn(batch, act, generator=gen_i)``, stacked to ``[K, B, act]``;
- its own selection seeds (``selection_seeds(cfg)``) for the evaluations.

A member therefore follows the single run of its config: the first update agrees with
``train_td3``'s to float rounding (bmm and mm sum in different orders), after which the two drift
apart as any two float computations of a chaotic system do (``tests/test_td3_ensemble.py``
measures it).

Run folders: every member writes train_td3's format (``curve.csv`` with ``td3.CURVE_COLUMNS``,
``snapshots/step_NNNNNNN.safetensors`` with the same metadata, ``provenance.json``, ``buffer.npz``,
and, when it finishes, ``critic.safetensors`` and a ``checkpoint.pt`` in train_td3's own format,
so the finished folder is a train_td3 run that :func:`nnae_utils.zoo.compact_finished_run` can
compact and train_td3 could extend), plus ``"trainer": "nnae_utils.td3_ensemble"`` and
``"ensemble": {"k": K, "members": [seeds]}`` in the provenance. The members' folders must share one
parent (:func:`nnae_utils.zoo.ensemble_folder`: ``<settings digest>_ens<K>``), which also holds the
ensemble's checkpoint ``ensemble_<seed>-<seed>-....pt``.

Accounting: a curve row's ``core_s`` is the CPU seconds of the process charged to that member: the
process CPU time divided equally among the members active at the time, accumulated (over sessions
too). ``update_time_s`` is likewise the member's share of the stacked updates' time (sampling,
stacking and the update), so ``updates_per_s`` is a member's updates per second of its share.

Leaving: a member that is done (``done_when`` on its curve, after each evaluation and on resume)
or reaches ``total_steps`` finishes (critic, checkpoint.pt, provenance) and leaves; the others go on
in a stack **rebuilt** from the remaining members' slices of the weights and of both Adam states
(:meth:`TD3Ensemble.subset`): slicing copies values exactly, so the rest continue as they would
have (to float rounding of a smaller bmm), and no time is spent on finished members.

Checkpoints: at every multiple of ``checkpoint_every`` (after that step's update and evaluations;
mid-episode, with the MuJoCo state of every member's env), whenever a member leaves, and where
``stop_at_step`` stops. Each member's ``buffer.npz`` is written first, then the ensemble checkpoint
(stacked weights, Adam states, n_updates, and per member: numpy and torch generator states, env
state, episode counters, clocks). A run stopped and resumed gives bitwise the same weights and
curves as one never interrupted (same machine, same ``torch_threads``). A lost buffer is refilled
as train_td3 does (``max(learning_starts, batch_size)`` env steps with the current actor, no
updates, recorded in ``buffer_refilled_at_steps``).
"""
from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from .backends import torch_threads
from .io import atomic_write, write_json
from .provenance import runtime_versions
from .td3 import (
    BUFFER_FILE,
    CHECKPOINT_FILE,
    CHECKPOINT_VERSION,
    CRITIC_FILE,
    CURVE_COLUMNS,
    CURVE_FILE,
    PROVENANCE_FILE,
    RESUMABLE_CHANGES,
    SNAPSHOT_DIR,
    ReplayBuffer,
    TD3Config,
    TD3Learner,
    check_env_id,
    env_state,
    episode_seed,
    lock_run_dir,
    save_critic,
    selection_seeds,
    set_env_state,
)

TRAINER = "nnae_utils.td3_ensemble"
ENSEMBLE_CHECKPOINT_VERSION = 1


# --------------------------------------------------------------------------- the stacked learner


class TD3Ensemble:
    """K independent TD3 learners, stacked: TD3Learner.update's math for all K in one set of bmm calls.

    Actor layer j: weight ``[K, out, in]``, bias ``[K, out]``. Critic layer j: ``[2K, out, in]``,
    rows ``0..K-1`` the members' Q1, ``K..2K-1`` their Q2 (so Q1 alone is the slice ``[:K]``).
    Built from K ``TD3Learner``s (their weights copied; they are not used afterwards). Adam is
    elementwise, so one Adam over the stacked tensors is K independent Adams; each member's loss
    depends only on its own slice, so the gradient of the summed loss is each member's own.
    """

    def __init__(self, learners: Sequence[TD3Learner], *, actor_lr: float | None = None,
                 critic_lr: float | None = None):
        l0 = learners[0]
        spec = l0.spec
        if spec.layer_norm != "none" or spec.obs_norm or spec.activation != "relu":
            raise ValueError("TD3Ensemble supports plain ReLU actors only")
        actor_lr = l0.actor_opt.param_groups[0]["lr"] if actor_lr is None else actor_lr
        critic_lr = l0.critic_opt.param_groups[0]["lr"] if critic_lr is None else critic_lr

        def stack(tensors):
            return torch.stack([t.detach().clone() for t in tensors]).contiguous()

        def actor_params(attr):
            out = []
            for j in range(len(l0.actor.layers)):
                out.append(stack([getattr(ln, attr).layers[j].weight for ln in learners]))
                out.append(stack([getattr(ln, attr).layers[j].bias for ln in learners]))
            return out

        def critic_params(attr):
            out = []
            for j in range(len(_linears(getattr(l0, attr).q1))):
                for name in ("weight", "bias"):
                    out.append(stack([getattr(_linears(getattr(getattr(ln, attr), q))[j], name)
                                      for q in ("q1", "q2") for ln in learners]))
            return out

        self._setup(len(learners), spec, dict(gamma=l0.gamma, tau=l0.tau, policy_noise=l0.policy_noise,
                                              noise_clip=l0.noise_clip, policy_delay=l0.policy_delay,
                                              actor_lr=float(actor_lr), critic_lr=float(critic_lr)),
                    actor_params("actor"), actor_params("actor_target"), critic_params("critic"),
                    critic_params("critic_target"))

    def _setup(self, k, spec, hyper, actor, actor_target, critic, critic_target) -> None:
        self.k, self.spec, self.hyper = int(k), spec, dict(hyper)
        self.gamma, self.tau = hyper["gamma"], hyper["tau"]
        self.policy_noise, self.noise_clip, self.policy_delay = hyper["policy_noise"], hyper["noise_clip"], hyper["policy_delay"]
        self.actor = [p.requires_grad_(True) for p in actor]
        self.actor_target = [p.requires_grad_(False) for p in actor_target]
        self.critic = [p.requires_grad_(True) for p in critic]
        self.critic_target = [p.requires_grad_(False) for p in critic_target]
        self.actor_opt = torch.optim.Adam(self.actor, lr=hyper["actor_lr"])
        self.critic_opt = torch.optim.Adam(self.critic, lr=hyper["critic_lr"])
        self.n_updates = 0

    @staticmethod
    def _mlp(params: Sequence[torch.Tensor], x: torch.Tensor, out_fn=None) -> torch.Tensor:
        n = len(params) // 2
        for j in range(n):
            w, b = params[2 * j], params[2 * j + 1]
            x = torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))
            if j < n - 1:
                x = torch.relu(x)
        return out_fn(x) if out_fn is not None else x

    def actor_forward(self, params, obs):
        return self._mlp(params, obs, torch.tanh)

    def q_both(self, params, obs, actions):
        """``[2K, B, 1]``: Q1 of every member, then Q2."""
        x = torch.cat([obs, actions], dim=-1)
        return self._mlp(params, torch.cat([x, x], dim=0))

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Deterministic actions ``[K, act]`` (float32) of every member for its observation ``obs[k]``."""
        with torch.inference_mode():
            x = torch.as_tensor(np.asarray(obs, np.float32)).reshape(self.k, 1, -1)
            return self.actor_forward(self.actor, x)[:, 0].numpy()

    def update(self, obs, actions, rewards, next_obs, terminated, noise: torch.Tensor | None = None) -> torch.Tensor:
        """One TD3 update of every member; tensors ``[K, B, dim]`` (rewards, terminated ``[K, B, 1]``).

        ``noise``: the standard normal draw of the target-policy smoothing, ``[K, B, act]``
        (drawn here from torch's global generator when None). Returns each member's critic loss
        (Q1 MSE + Q2 MSE), ``[K]``.
        """
        k = self.k
        with torch.no_grad():
            if noise is None:
                noise = torch.randn_like(actions)
            noise = (noise * self.policy_noise).clamp(-self.noise_clip, self.noise_clip)
            next_actions = (self.actor_forward(self.actor_target, next_obs) + noise).clamp(-1.0, 1.0)
            q_next = self.q_both(self.critic_target, next_obs, next_actions)
            target = rewards + (1.0 - terminated) * self.gamma * torch.min(q_next[:k], q_next[k:])
        q = self.q_both(self.critic, obs, actions)
        mse = (q - torch.cat([target, target], dim=0)).square().mean(dim=(1, 2))  # [2K]
        self.critic_opt.zero_grad(set_to_none=True)
        mse.sum().backward()
        self.critic_opt.step()
        self.n_updates += 1
        if self.n_updates % self.policy_delay == 0:
            q1_params = [p[:k] for p in self.critic]
            x = torch.cat([obs, self.actor_forward(self.actor, obs)], dim=-1)
            loss = -self._mlp(q1_params, x).mean(dim=(1, 2)).sum()
            self.actor_opt.zero_grad(set_to_none=True)
            loss.backward(inputs=self.actor)
            self.actor_opt.step()
            with torch.no_grad():
                torch._foreach_lerp_(self.critic_target, self.critic, self.tau)
                torch._foreach_lerp_(self.actor_target, self.actor, self.tau)
        return (mse[:k] + mse[k:]).detach()

    # ---- members

    def _rows(self, i: int) -> tuple[list[int], list[int]]:
        """Member i's rows: in the actor tensors, and in the critic tensors in TD3Learner's
        parameter order (TwinCritic.parameters(): all of q1's layers, then q2's)."""
        return [i], [i, self.k + i]

    def member_state(self, i: int) -> dict[str, list[torch.Tensor]]:
        """Member i's weights, in TD3Learner's parameter order."""
        k = self.k

        def critic(ps):
            return [p[i].detach() for p in ps] + [p[k + i].detach() for p in ps]

        return {"actor": [p[i].detach() for p in self.actor], "actor_target": [p[i].detach() for p in self.actor_target],
                "critic": critic(self.critic), "critic_target": critic(self.critic_target)}

    def member_learner_state(self, i: int, shell: TD3Learner) -> dict[str, Any]:
        """Member i as a ``TD3Learner.state_dict()`` (weights, both Adam states, n_updates): loads into
        a TD3Learner of the member's config. ``shell`` (such a learner) is overwritten."""
        self.copy_member_into(i, shell)
        k = self.k

        def opt_state(opt: torch.optim.Adam, params: list[torch.Tensor], critic: bool, template: torch.optim.Adam):
            order = ([(j, i) for j in range(len(params))] + [(j, k + i) for j in range(len(params))]
                     if critic else [(j, i) for j in range(len(params))])
            state = {}
            for n, (j, row) in enumerate(order):
                s = opt.state.get(params[j])
                if s:
                    state[n] = {"step": s["step"].clone(), "exp_avg": s["exp_avg"][row].clone(),
                                "exp_avg_sq": s["exp_avg_sq"][row].clone()}
            return {"state": state, "param_groups": template.state_dict()["param_groups"]}

        out = shell.state_dict()
        out["actor_opt"] = opt_state(self.actor_opt, self.actor, False, shell.actor_opt)
        out["critic_opt"] = opt_state(self.critic_opt, self.critic, True, shell.critic_opt)
        out["n_updates"] = self.n_updates
        return out

    def copy_member_into(self, i: int, learner: TD3Learner) -> TD3Learner:
        """Copy member i's weights (actor, critic and targets) into ``learner`` (its optimizers untouched)."""
        mine = self.member_state(i)
        with torch.no_grad():
            for name, tensors in mine.items():
                for p, t in zip(getattr(learner, name).parameters(), tensors, strict=True):
                    p.copy_(t)
        learner.n_updates = self.n_updates
        return learner

    def state_dict(self) -> dict[str, Any]:
        """Everything :meth:`load_state_dict` needs to continue exactly (loads with weights_only=True)."""
        return {"k": self.k, "actor": [p.detach().clone() for p in self.actor],
                "actor_target": [p.detach().clone() for p in self.actor_target],
                "critic": [p.detach().clone() for p in self.critic],
                "critic_target": [p.detach().clone() for p in self.critic_target],
                "actor_opt": self.actor_opt.state_dict(), "critic_opt": self.critic_opt.state_dict(),
                "n_updates": self.n_updates}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load a :meth:`state_dict` of an ensemble of the same K and sizes (tensors copied)."""
        import copy

        if int(state["k"]) != self.k:
            raise ValueError(f"ensemble state has K={state['k']}, this ensemble K={self.k}")
        state = copy.deepcopy(dict(state))  # optim.load_state_dict would alias the saved moments
        with torch.no_grad():
            for name in ("actor", "actor_target", "critic", "critic_target"):
                for p, t in zip(getattr(self, name), state[name], strict=True):
                    if p.shape != t.shape:
                        raise ValueError(f"ensemble state's {name} has shape {tuple(t.shape)}, expected {tuple(p.shape)}")
                    p.copy_(t)
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.n_updates = int(state["n_updates"])

    def subset(self, keep: Sequence[int]) -> "TD3Ensemble":
        """A new ensemble of members ``keep`` (in that order): their slices of the weights, the
        targets and both Adam states, copied exactly; n_updates kept."""
        keep = [int(i) for i in keep]
        if not keep or len(set(keep)) != len(keep) or not all(0 <= i < self.k for i in keep):
            raise ValueError(f"subset needs distinct members of 0..{self.k - 1}, got {keep}")
        a_rows = torch.tensor(keep)
        c_rows = torch.tensor(keep + [self.k + i for i in keep])

        def take(ps, rows):
            return [p.detach()[rows].clone().contiguous() for p in ps]

        new = TD3Ensemble.__new__(TD3Ensemble)
        new._setup(len(keep), self.spec, self.hyper, take(self.actor, a_rows), take(self.actor_target, a_rows),
                   take(self.critic, c_rows), take(self.critic_target, c_rows))
        for old_opt, new_opt, old_ps, new_ps, rows in ((self.actor_opt, new.actor_opt, self.actor, new.actor, a_rows),
                                                        (self.critic_opt, new.critic_opt, self.critic, new.critic, c_rows)):
            for po, pn in zip(old_ps, new_ps):
                s = old_opt.state.get(po)
                if s:
                    new_opt.state[pn] = {"step": s["step"].clone(), "exp_avg": s["exp_avg"][rows].clone().contiguous(),
                                         "exp_avg_sq": s["exp_avg_sq"][rows].clone().contiguous()}
        new.n_updates = self.n_updates
        return new


def _linears(seq: torch.nn.Module) -> list[torch.nn.Linear]:
    return [m for m in seq if isinstance(m, torch.nn.Linear)]


# --------------------------------------------------------------------------- the trainer


@dataclass
class _Member:
    """One member's run: its env, generators, buffer and counters (what train_td3 keeps in locals)."""

    index: int
    cfg: TD3Config
    run_dir: Path
    shell: TD3Learner
    env: Any = None
    rng: np.random.Generator | None = None
    gen: torch.Generator | None = None
    buffer: ReplayBuffer | None = None
    eval_seeds: np.ndarray | None = None
    lock: Any = None
    prov: dict[str, Any] = field(default_factory=dict)
    episode: int = 0
    obs: np.ndarray | None = None
    ep_return: float = 0.0
    ep_len: int = 0
    update_time: float = 0.0
    updates_at_eval: int = 0
    update_time_at_eval: float = 0.0
    last_return: float = float("nan")
    core_before: float = 0.0  # CPU charged in earlier sessions
    core_session: float = 0.0  # CPU charged in this session
    finished: bool = False
    done_early: bool = False
    need_refill: bool = False

    @property
    def curve_path(self) -> Path:
        return self.run_dir / CURVE_FILE

    @property
    def snap_dir(self) -> Path:
        return self.run_dir / SNAPSHOT_DIR


@dataclass
class EnsembleMemberRun:
    """What :func:`train_td3_ensemble` returns per member."""

    run_dir: Path
    seed: int
    step: int
    finished: bool
    done_early: bool
    final_return: float


def ensemble_checkpoint_path(run_dirs: Sequence[Path], seeds: Sequence[int]) -> Path:
    """The ensemble's checkpoint: in the members' common parent, named by their seeds."""
    return Path(run_dirs[0]).parent / ("ensemble_" + "-".join(str(int(s)) for s in seeds) + ".pt")


def check_ensemble_configs(configs: Sequence[TD3Config]) -> None:
    """Raise ValueError unless the configs are TD3Configs equal in everything but ``seed``, with
    distinct seeds and a plain ReLU actor (what the stacked update computes)."""
    if not configs:
        raise ValueError("an ensemble needs at least one config")
    for c in configs:
        if not isinstance(c, TD3Config):
            raise TypeError(f"configs must be TD3Configs, got {type(c).__name__}")
    base = {k: v for k, v in configs[0].to_dict().items() if k != "seed"}
    for c in configs[1:]:
        other = {k: v for k, v in c.to_dict().items() if k != "seed"}
        diff = sorted(k for k in base if base[k] != other[k])
        if diff:
            detail = ", ".join(f"{k}: {base[k]!r} (seed {configs[0].seed}) vs {other[k]!r} (seed {c.seed})" for k in diff)
            raise ValueError(f"ensemble members must have equal settings except seed; they differ in {detail}")
    seeds = [c.seed for c in configs]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"ensemble members need distinct seeds, got {seeds}")
    if configs[0].actor_activation != "relu":
        raise ValueError(f"TD3Ensemble stacks plain ReLU actors only, got actor_activation={configs[0].actor_activation!r}")


def _check_resumable(saved: Mapping[str, Any], cfg: TD3Config, where: Path) -> None:
    a = {k: v for k, v in TD3Config.from_dict(saved).to_dict().items() if k not in RESUMABLE_CHANGES}
    b = {k: v for k, v in cfg.to_dict().items() if k not in RESUMABLE_CHANGES}
    diff = {k: (a[k], b[k]) for k in a if a[k] != b[k]}
    if diff:
        detail = ", ".join(f"{k}: run has {x!r}, config has {y!r}" for k, (x, y) in sorted(diff.items()))
        raise ValueError(f"{where} belongs to a run with a different config ({detail}); use another folder")


def _read_curve(path: Path) -> list[dict[str, str]]:
    import csv

    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write_curve(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    def write(f) -> None:
        f.write((",".join(CURVE_COLUMNS) + "\n").encode())
        for row in rows:
            f.write((",".join(str(row.get(c, "")) for c in CURVE_COLUMNS) + "\n").encode())

    atomic_write(path, write)


def _append_curve(path: Path, row: Mapping[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(",".join(str(row[c]) for c in CURVE_COLUMNS) + "\n")
        f.flush()


def train_td3_ensemble(
    configs: Sequence[TD3Config],
    run_dirs: Sequence[str | os.PathLike],
    *,
    done_when: Callable[[list[dict[str, str]]], bool] | None = None,
    progress: bool = True,
    stop_at_step: int | None = None,
) -> list[EnsembleMemberRun]:
    """Train (or resume) K independent TD3 runs, ``configs[i]`` in ``run_dirs[i]``, in one process
    with stacked updates; see the module docstring for what each member is and writes.

    The configs must be equal except ``seed`` (checked); the folders must share one parent (the
    ensemble's, e.g. :func:`nnae_utils.zoo.ensemble_folder`). ``done_when`` ends a member early, as
    finished, once it returns True on the member's curve rows; the others continue. ``stop_at_step``
    stops every member (with a checkpoint) after that many env steps, as if interrupted there.
    """
    import gymnasium as gym
    from tqdm import tqdm

    from .rollouts import SUPPORTED_ENV_IDS, evaluate

    # ---- loud checks before anything is built
    configs = list(configs)
    check_ensemble_configs(configs)
    run_dirs = [Path(d) for d in run_dirs]
    if len(run_dirs) != len(configs):
        raise ValueError(f"{len(configs)} configs but {len(run_dirs)} run_dirs")
    if len({d.resolve() for d in run_dirs}) != len(run_dirs):
        raise ValueError("ensemble members need distinct run_dirs")
    if len({d.resolve().parent for d in run_dirs}) != 1:
        raise ValueError(f"ensemble members' folders must share one parent (the ensemble's), got {run_dirs}")
    check_env_id(configs[0].env_id)
    if stop_at_step is not None and not 0 < stop_at_step:
        raise ValueError(f"stop_at_step must be > 0, got {stop_at_step}")
    cfg0 = configs[0]
    seeds = [c.seed for c in configs]
    K = len(configs)
    ens_info = {"k": K, "members": seeds}
    ckpt_path = ensemble_checkpoint_path(run_dirs, seeds)

    members: list[_Member] = []
    try:
        for d in run_dirs:
            d.mkdir(parents=True, exist_ok=True)
        ckpt = None
        if ckpt_path.is_file():
            ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
            if ckpt.get("version") != ENSEMBLE_CHECKPOINT_VERSION or [int(s) for s in ckpt["seeds"]] != seeds:
                raise ValueError(f"{ckpt_path} is not a checkpoint of this ensemble (seeds {seeds})")
            for c, saved in zip(configs, ckpt["configs"]):
                _check_resumable(json.loads(saved), c, ckpt_path)
        for i, (c, d) in enumerate(zip(configs, run_dirs)):
            lock = lock_run_dir(d)
            members.append(_Member(index=i, cfg=c, run_dir=d, shell=None, lock=lock))  # type: ignore[arg-type]
            prov_path = d / PROVENANCE_FILE
            if prov_path.is_file():
                prov = json.loads(prov_path.read_text())
                other = prov.get("ensemble")
                if other is not None and [int(s) for s in other.get("members", [])] != seeds:
                    raise ValueError(f"{d} belongs to another ensemble (members {other.get('members')}), not {seeds}")
                if other is None and (d / CURVE_FILE).is_file():
                    raise ValueError(f"{d} holds a run not trained by an ensemble; use another folder")
                if ckpt is not None:
                    _check_resumable(prov["config"], c, prov_path)
        env0 = gym.make(cfg0.env_id)
        space = env0.action_space
        if not isinstance(space, gym.spaces.Box) or not (np.all(space.low == -1.0) and np.all(space.high == 1.0)):
            env0.close()
            raise ValueError(f"{cfg0.env_id}: the actor's tanh output needs a Box action space in [-1, 1], got {space}")
        obs_dim, act_dim = int(np.prod(env0.observation_space.shape)), int(np.prod(space.shape))
        env0.close()
        if ckpt is not None and ckpt["step"] > min(c.total_steps for c in configs) and ckpt["active"]:
            raise ValueError(f"{ckpt_path} is at step {ckpt['step']}, beyond total_steps={cfg0.total_steps}")
    except BaseException:
        for m in members:
            m.lock.close()
        raise

    cpu_mark, t_session = time.process_time(), time.perf_counter()
    with torch_threads(cfg0.torch_threads):
        try:
            # ---- every member's state, fresh (exactly train_td3's draws) or as checkpointed
            now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            learners = []
            for m in members:
                torch.manual_seed(m.cfg.seed)
                learner = TD3Learner.from_config(m.cfg, obs_dim, act_dim)
                m.gen = torch.Generator()
                m.gen.set_state(torch.get_rng_state())  # the state train_td3 draws its target noise from
                m.rng = np.random.default_rng(m.cfg.seed)
                m.buffer = ReplayBuffer(obs_dim, act_dim, m.cfg.buffer_size)
                m.eval_seeds = selection_seeds(m.cfg)
                m.shell = TD3Learner.from_config(m.cfg, obs_dim, act_dim)  # export target (snapshots, critic)
                m.env = gym.make(m.cfg.env_id)
                learners.append(learner)
            step, next_ckpt = 0, cfg0.checkpoint_every
            wall_offset = 0.0
            if ckpt is None:
                gone = [m.run_dir for m in members if (m.run_dir / PROVENANCE_FILE).is_file()
                        and json.loads((m.run_dir / PROVENANCE_FILE).read_text()).get("finished")]
                if gone:
                    raise ValueError(f"{gone} finished in this ensemble, and its checkpoint {ckpt_path} is missing: "
                                     "restore it (the other members resume from it) or use another folder")
                active = list(range(K))
                ens = TD3Ensemble(learners)
                for m in members:  # leftovers of an attempt that never checkpointed: redone identically
                    for name in (CURVE_FILE, CHECKPOINT_FILE, CRITIC_FILE, BUFFER_FILE, PROVENANCE_FILE):
                        if (m.run_dir / name).exists():
                            (m.run_dir / name).unlink()
                    for p in m.snap_dir.glob("step_*.safetensors") if m.snap_dir.is_dir() else []:
                        p.unlink()
                    _write_curve(m.curve_path, [])
            else:
                step, next_ckpt = int(ckpt["step"]), int(ckpt["next_checkpoint"])
                wall_offset = float(ckpt["wall_s"])
                active = [int(i) for i in ckpt["active"]]
                ens = TD3Ensemble([learners[i] for i in active]) if active else None
                if ens is not None:
                    ens.load_state_dict(ckpt["ensemble"])
                for i, m in enumerate(members):
                    if i not in active:
                        m.finished = True
                        continue
                    s = ckpt["members"][i]
                    m.gen.set_state(s["torch_rng"])
                    m.rng.bit_generator.state = s["numpy_rng"]
                    m.episode = int(s["episode"])
                    m.update_time, m.updates_at_eval = float(s["update_time_s"]), int(s["updates_at_eval"])
                    m.update_time_at_eval, m.last_return = float(s["update_time_at_eval"]), float(s["last_return"])
                    if s["obs"] is not None:  # mid-episode: continue the very same episode
                        m.env.reset(seed=episode_seed(m.cfg.seed, m.episode))
                        set_env_state(m.env, s["env_state"])
                        m.obs = s["obs"].numpy()
                        m.ep_return, m.ep_len = float(s["ep_return"]), int(s["ep_len"])
                    buffer_path = m.run_dir / BUFFER_FILE
                    want = int(s["buffer_n_added"])
                    m.need_refill = True
                    if buffer_path.is_file():
                        loaded = ReplayBuffer.load(buffer_path)
                        if loaded.capacity != m.cfg.buffer_size or (loaded.obs_dim, loaded.act_dim) != (obs_dim, act_dim):
                            raise ValueError(f"{buffer_path} does not match the config (capacity/sizes)")
                        if loaded.n_added == want:
                            m.buffer, m.need_refill = loaded, False
                        elif want < loaded.n_added <= loaded.capacity:  # newer by a crash between the writes
                            loaded.n_added = loaded.size = loaded.ptr = want
                            m.buffer, m.need_refill = loaded, False
                    # a member that finished after this checkpoint is redone identically
                    rows = [r for r in _read_curve(m.curve_path) if int(r["step"]) <= step]
                    _write_curve(m.curve_path, rows)
                    for p in m.snap_dir.glob("step_*.safetensors") if m.snap_dir.is_dir() else []:
                        if int(p.stem.split("_")[1]) > step:
                            p.unlink()
                    for name in (CRITIC_FILE, CHECKPOINT_FILE):
                        if (m.run_dir / name).exists():
                            (m.run_dir / name).unlink()
            del learners
            for i, m in enumerate(members):
                if m.finished:  # left the ensemble in an earlier session: nothing of it changes
                    m.prov = json.loads((m.run_dir / PROVENANCE_FILE).read_text())
                    m.last_return = float(_read_curve(m.curve_path)[-1]["return_mean"])
                    continue
                prov_path = m.run_dir / PROVENANCE_FILE
                prov = json.loads(prov_path.read_text()) if (ckpt is not None and prov_path.is_file()) else {}
                prov.setdefault("start_time", now)
                prov.setdefault("buffer_refilled_at_steps", [])
                prov.setdefault("episodes_cut_at_steps", [])
                prov.setdefault("sessions", [])
                prov.setdefault("core_seconds", 0.0)
                prov.pop("done_early", None)
                prov.update(config=m.cfg.to_dict(), versions=runtime_versions(), eval_seeds=m.eval_seeds.tolist(),
                            finished=False, host=platform.node(), trainer=TRAINER, ensemble=ens_info)
                m.core_before = sum(float(sess.get("core_seconds", 0.0)) for sess in prov["sessions"])
                prov["sessions"].append({"start_time": now, "start_step": step, "torch_threads": m.cfg.torch_threads,
                                         "ensemble_active": len(active)})
                m.prov = prov
            t0 = time.perf_counter() - wall_offset

            def charge() -> None:
                """Share the process CPU since the last charge among the active members."""
                nonlocal cpu_mark
                c = time.process_time()
                if active:
                    share = (c - cpu_mark) / len(active)
                    for i in active:
                        members[i].core_session += share
                cpu_mark = c

            def row_of(i: int) -> int:
                return active.index(i)

            def explore_actions(at_step: int) -> list[np.ndarray]:
                if at_step < cfg0.learning_starts:
                    return [members[i].rng.uniform(space.low, space.high).astype(np.float32) for i in active]
                acts = ens.act(np.stack([members[i].obs for i in active]))
                out = []
                for r, i in enumerate(active):
                    a = acts[r] + members[i].rng.normal(0.0, cfg0.exploration_noise, size=act_dim)
                    out.append(np.clip(a, space.low, space.high).astype(np.float32))
                return out

            # ---- lost buffers (a new machine): refill with the current actor, no updates, not counted
            for i in list(active):
                m = members[i]
                if not m.need_refill:
                    continue
                n_refill = max(cfg0.learning_starts, cfg0.batch_size)
                r = row_of(i)
                for _ in range(n_refill):
                    if m.obs is None:
                        m.obs, _ = m.env.reset(seed=episode_seed(m.cfg.seed, m.episode))
                        m.ep_return, m.ep_len = 0.0, 0
                    if step < cfg0.learning_starts:
                        action = m.rng.uniform(space.low, space.high).astype(np.float32)
                    else:
                        with torch.inference_mode():
                            x = torch.as_tensor(np.asarray(m.obs, np.float32)).reshape(1, 1, -1)
                            mu = ens.actor_forward([p[r:r + 1] for p in ens.actor], x)[0, 0].numpy()
                        a = mu + m.rng.normal(0.0, cfg0.exploration_noise, size=act_dim)
                        action = np.clip(a, space.low, space.high).astype(np.float32)
                    next_obs, reward, terminated, truncated, _ = m.env.step(action)
                    m.buffer.add(m.obs, action, reward, next_obs, terminated)
                    m.obs, m.ep_return, m.ep_len = next_obs, m.ep_return + float(reward), m.ep_len + 1
                    if terminated or truncated:
                        m.episode, m.obs = m.episode + 1, None
                m.prov["buffer_refilled_at_steps"].append(step)
                m.prov["buffer_refill_env_steps"] = m.prov.get("buffer_refill_env_steps", 0) + n_refill
            eval_backend = "batched" if cfg0.env_id in SUPPORTED_ENV_IDS else "gymnasium"

            def evaluate_and_snapshot(i: int) -> None:
                m = members[i]
                ens.copy_member_into(row_of(i), m.shell)
                net = m.shell.actor_network()
                result = evaluate(net, m.eval_seeds, backend=eval_backend, nthread=m.cfg.torch_threads,
                                  max_steps=m.cfg.eval_max_steps)
                returns = np.asarray(result.returns, np.float64).reshape(-1)
                charge()
                d_upd, d_time = ens.n_updates - m.updates_at_eval, m.update_time - m.update_time_at_eval
                row = {
                    "step": step, "return_mean": round(float(returns.mean()), 6), "return_std": round(float(returns.std()), 6),
                    "episodes": len(returns), "wall_s": round(time.perf_counter() - t0, 3),
                    "updates_per_s": round(d_upd / d_time, 3) if d_time > 0 else float("nan"),
                    "train_episodes": m.episode, "updates": ens.n_updates, "update_time_s": round(m.update_time, 4),
                    "core_s": round(m.core_before + m.core_session, 3),
                }
                net.extra_metadata.update({
                    "run_seed": str(m.cfg.seed), "step": str(step), "eval_return_mean": repr(float(returns.mean())),
                    "eval_return_std": repr(float(returns.std())), "eval_seeds": json.dumps(m.eval_seeds.tolist()),
                    "eval_max_steps": str(m.cfg.eval_max_steps), "trainer": TRAINER,
                    "td3_config": json.dumps(m.cfg.to_dict(), sort_keys=True),
                })
                m.snap_dir.mkdir(parents=True, exist_ok=True)
                from .policies import save_network

                save_network(m.snap_dir / f"step_{step:07d}.safetensors", net)
                _append_curve(m.curve_path, row)
                m.last_return, m.updates_at_eval, m.update_time_at_eval = row["return_mean"], ens.n_updates, m.update_time

            def member_state(i: int) -> dict[str, Any]:
                m = members[i]
                mid = m.obs is not None
                return {
                    "torch_rng": m.gen.get_state(), "numpy_rng": m.rng.bit_generator.state, "episode": m.episode,
                    "obs": torch.from_numpy(np.asarray(m.obs, np.float64)) if mid else None,
                    "env_state": env_state(m.env) if mid else None, "ep_return": m.ep_return, "ep_len": m.ep_len,
                    "buffer_n_added": m.buffer.n_added, "update_time_s": m.update_time,
                    "updates_at_eval": m.updates_at_eval, "update_time_at_eval": m.update_time_at_eval,
                    "last_return": m.last_return, "core_session": m.core_session,
                }

            def write_provenance(i: int) -> None:
                m = members[i]
                end = time.strftime("%Y-%m-%dT%H:%M:%S%z")
                m.prov["sessions"][-1].update(end_time=end, end_step=step, wall_s=round(time.perf_counter() - t_session, 3),
                                              core_seconds=round(m.core_session, 3))
                core = sum(float(s.get("core_seconds", 0.0)) for s in m.prov["sessions"])
                m.prov.update(end_time=end, total_wall_s=round(time.perf_counter() - t0, 3), core_seconds=round(core, 3),
                              step=step, updates=ens.n_updates if ens is not None else m.prov.get("updates", 0),
                              train_episodes=m.episode, finished=m.finished)
                write_json(m.run_dir / PROVENANCE_FILE, m.prov)

            last_ckpt_step = None

            def checkpoint() -> None:
                nonlocal last_ckpt_step
                last_ckpt_step = step
                charge()
                for i in active:
                    members[i].buffer.save(members[i].run_dir / BUFFER_FILE)  # first: never older than the checkpoint
                state = {
                    "version": ENSEMBLE_CHECKPOINT_VERSION, "seeds": seeds,
                    "configs": [json.dumps(c.to_dict(), sort_keys=True) for c in configs],
                    "active": list(active), "step": step, "next_checkpoint": next_ckpt,
                    "wall_s": time.perf_counter() - t0,
                    "ensemble": ens.state_dict() if ens is not None else None,
                    "members": {i: member_state(i) for i in active},
                }
                atomic_write(ckpt_path, lambda f: torch.save(state, f))
                for i in active:
                    write_provenance(i)

            def finish(i: int) -> None:
                """Member i is done: train_td3's final files (its checkpoint.pt too), then it leaves."""
                m = members[i]
                r = row_of(i)
                charge()
                learner_state = ens.member_learner_state(r, m.shell)
                m.buffer.save(m.run_dir / BUFFER_FILE)
                mid = m.obs is not None
                single = {
                    "version": CHECKPOINT_VERSION, "config": json.dumps(m.cfg.to_dict(), sort_keys=True),
                    "learner": learner_state, "torch_rng": m.gen.get_state(), "numpy_rng": m.rng.bit_generator.state,
                    "step": step, "episode": m.episode, "next_checkpoint": next_ckpt,
                    "obs": torch.from_numpy(np.asarray(m.obs, np.float64)) if mid else None,
                    "env_state": env_state(m.env) if mid else None, "ep_return": m.ep_return, "ep_len": m.ep_len,
                    "buffer_n_added": m.buffer.n_added, "wall_s": time.perf_counter() - t0,
                    "update_time_s": m.update_time, "updates_at_eval": m.updates_at_eval,
                    "update_time_at_eval": m.update_time_at_eval, "last_return": m.last_return,
                }
                atomic_write(m.run_dir / CHECKPOINT_FILE, lambda f: torch.save(single, f))
                save_critic(m.run_dir / CRITIC_FILE, m.shell.critic, {
                    "td3_config": json.dumps(m.cfg.to_dict(), sort_keys=True), "step": str(step),
                    "run_seed": str(m.cfg.seed)})
                m.finished = True
                if m.done_early:
                    m.prov["done_early"] = {"rule": repr(done_when), "step": step}
                write_provenance(i)

            def leave(done: list[int]) -> None:
                """Finish members ``done`` and rebuild the stack from the others."""
                nonlocal ens, active
                for i in done:
                    finish(i)
                keep = [i for i in active if i not in done]
                ens = ens.subset([active.index(i) for i in keep]) if keep else None
                active = keep

            def is_done(i: int) -> bool:
                m = members[i]
                m.done_early = done_when is not None and done_when(_read_curve(m.curve_path))
                return m.done_early or step >= m.cfg.total_steps

            # ---- the loop
            stop = cfg0.total_steps if stop_at_step is None else min(stop_at_step, cfg0.total_steps)
            bar = tqdm(total=cfg0.total_steps, initial=step, desc=f"TD3 ensemble {seeds}", unit="step",
                       disable=not progress, mininterval=2.0, dynamic_ncols=True)
            resumed_at = step if ckpt is not None else None
            with bar:
                if step == 0 and ckpt is None:
                    for i in active:
                        evaluate_and_snapshot(i)  # the untrained actors: curves start at step 0
                done = [i for i in active if is_done(i)]
                if done:
                    leave(done)
                    checkpoint()
                while step < stop and active:
                    for i in active:
                        m = members[i]
                        if m.obs is None:
                            m.obs, _ = m.env.reset(seed=episode_seed(m.cfg.seed, m.episode))
                            m.ep_return, m.ep_len = 0.0, 0
                    actions = explore_actions(step)
                    ended = []
                    for a, i in zip(actions, active):
                        m = members[i]
                        next_obs, reward, terminated, truncated, _ = m.env.step(a)
                        m.buffer.add(m.obs, a, reward, next_obs, terminated)  # bootstrap through truncation
                        m.obs, m.ep_return, m.ep_len = next_obs, m.ep_return + float(reward), m.ep_len + 1
                        if terminated or truncated:
                            ended.append(i)
                    step += 1
                    if step > cfg0.learning_starts:
                        tu = time.perf_counter()
                        batches = [members[i].buffer.sample(cfg0.batch_size, members[i].rng) for i in active]
                        stacked = [torch.from_numpy(np.stack([b[f] for b in batches])) for f in range(5)]
                        noise = torch.stack([torch.randn(cfg0.batch_size, act_dim, generator=members[i].gen)
                                             for i in active])
                        ens.update(*stacked, noise=noise)
                        share = (time.perf_counter() - tu) / len(active)
                        for i in active:
                            members[i].update_time += share
                    for i in ended:
                        members[i].episode, members[i].obs = members[i].episode + 1, None
                    done = []
                    if step % cfg0.eval_every == 0 or step == cfg0.total_steps:
                        for i in active:
                            evaluate_and_snapshot(i)
                        done = [i for i in active if is_done(i)]
                    if done:
                        leave(done)
                        next_ckpt = max(next_ckpt, (step // cfg0.checkpoint_every + 1) * cfg0.checkpoint_every)
                        checkpoint()
                    elif step >= next_ckpt:
                        next_ckpt = (step // cfg0.checkpoint_every + 1) * cfg0.checkpoint_every
                        checkpoint()
                    bar.update(1)
                if active and last_ckpt_step != step and (resumed_at != step or any(members[i].need_refill for i in active)):
                    checkpoint()  # where the caller stopped us
            charge()
            for i in active:
                write_provenance(i)
            return [EnsembleMemberRun(run_dir=m.run_dir, seed=m.cfg.seed, step=int(m.prov.get("step", step)),
                                      finished=m.finished, done_early="done_early" in m.prov,
                                      final_return=m.last_return) for m in members]
        finally:
            for m in members:
                if m.env is not None:
                    m.env.close()
                m.lock.close()
