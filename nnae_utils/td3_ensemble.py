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

Each member's state is a :class:`~nnae_utils.td3.TD3State` (with its own ``torch_gen``), and it is
stepped, refilled, evaluated and recorded by train_td3's own pieces (``TD3State.collect`` /
``refill_buffer`` / ``run_fields``, ``td3.evaluate_run``, ``td3.RunSession``); only the actions and
the update are stacked.

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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from .backends import torch_threads
from .io import atomic_write
from .td3 import (
    BUFFER_FILE,
    CHECKPOINT_FILE,
    CRITIC_FILE,
    CURVE_FILE,
    PROVENANCE_FILE,
    ReplayBuffer,
    RunSession,
    TD3Config,
    TD3Learner,
    TD3State,
    check_env_id,
    check_same_run,
    evaluate_run,
    finished_run,
    keep_outputs_up_to,
    lock_run_dir,
    make_env,
    read_curve,
    save_final_critic,
    selection_seeds,
)

TRAINER = "nnae_utils.td3_ensemble"
ENSEMBLE_CHECKPOINT_VERSION = 1


# --------------------------------------------------------------------------- the stacked learner


class TD3Ensemble:
    """K independent TD3 learners, stacked: TD3Learner.update's math for all K in one set of bmm calls.

    Actor layer j: weight ``[K, out, in]``, bias ``[K, out]``. Critic layer j: ``[2K, out, in]``,
    rows ``0..K-1`` the members' Q1, ``K..2K-1`` their Q2 (so Q1 alone is the slice ``[:K]``).
    Built from K ``TD3Learner`` objects (their weights copied; they are not used afterwards). Adam is
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


def _check_arguments(configs: list[TD3Config], run_dirs: list[Path], stop_at_step: int | None) -> None:
    check_ensemble_configs(configs)
    if len(run_dirs) != len(configs):
        raise ValueError(f"{len(configs)} configs but {len(run_dirs)} run_dirs")
    if len({d.resolve() for d in run_dirs}) != len(run_dirs):
        raise ValueError("ensemble members need distinct run_dirs")
    if len({d.resolve().parent for d in run_dirs}) != 1:
        raise ValueError(f"ensemble members' folders must share one parent (the ensemble's), got {run_dirs}")
    check_env_id(configs[0].env_id)
    if stop_at_step is not None and not 0 < stop_at_step:
        raise ValueError(f"stop_at_step must be > 0, got {stop_at_step}")


def _read_provenance(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / PROVENANCE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _read_checkpoint(configs: Sequence[TD3Config], run_dirs: Sequence[Path]) -> dict[str, Any] | None:
    """The ensemble's checkpoint, or None; an error if it, or a member's folder, belongs to another run."""
    seeds = [c.seed for c in configs]
    path = ensemble_checkpoint_path(run_dirs, seeds)
    ckpt = torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None
    if ckpt is not None:
        if ckpt.get("version") != ENSEMBLE_CHECKPOINT_VERSION or [int(s) for s in ckpt["seeds"]] != seeds:
            raise ValueError(f"{path} is not a checkpoint of this ensemble (seeds {seeds})")
        for c, saved in zip(configs, ckpt["configs"]):
            check_same_run(TD3Config.from_dict(json.loads(saved)), c, path)
        if ckpt["step"] > min(c.total_steps for c in configs) and ckpt["active"]:
            raise ValueError(f"{path} is at step {ckpt['step']}, beyond total_steps={configs[0].total_steps}")
    for c, d in zip(configs, run_dirs):
        prov = _read_provenance(d)
        if prov is None:
            continue
        other = prov.get("ensemble")
        if other is not None and [int(s) for s in other.get("members", [])] != seeds:
            raise ValueError(f"{d} belongs to another ensemble (members {other.get('members')}), not {seeds}")
        if other is None and (d / CURVE_FILE).is_file():
            raise ValueError(f"{d} holds a run not trained by an ensemble; use another folder")
        if ckpt is not None:
            check_same_run(TD3Config.from_dict(prov["config"]), c, d / PROVENANCE_FILE)
    return ckpt


def _finished_without_checkpoint(configs: Sequence[TD3Config], run_dirs: Sequence[Path]) -> list[EnsembleMemberRun] | None:
    """Without the ensemble's checkpoint: None if no member finished (the ensemble starts over); every
    member's result if all finished (shipped: :func:`nnae_utils.td3.finished_run`); else an error."""
    if not any((_read_provenance(d) or {}).get("finished") for d in run_dirs):
        return None
    runs = [finished_run(c, d) for c, d in zip(configs, run_dirs)]
    if any(r is None for r in runs):
        gone = [r.run_dir for r in runs if r is not None]
        raise ValueError(f"{gone} finished in this ensemble, and its checkpoint "
                         f"{ensemble_checkpoint_path(run_dirs, [c.seed for c in configs])} is missing: "
                         "restore it (the other members resume from it) or use another folder")
    return [EnsembleMemberRun(run_dir=r.run_dir, seed=c.seed, step=r.step, finished=True,
                              done_early="done_early" in _read_provenance(r.run_dir), final_return=r.final_return)
            for c, r in zip(configs, runs)]


class _MemberSession(RunSession):
    """A member's provenance and clocks: the ensemble's wall clock, and as CPU seconds its share of
    the process's (``charged`` by the trainer, which ``charge`` brings up to date)."""

    def __init__(self, path: Path, charge: Callable[[], None]):
        super().__init__(path)
        self.charge, self.charged = charge, 0.0

    def session_core_s(self) -> float:
        self.charge()
        return self.charged


@dataclass
class _Member:
    """One member's run: train_td3's :class:`~nnae_utils.td3.TD3State` (its learner the member's export
    shell: snapshots, critic, checkpoint), env, buffer, provenance and files."""

    cfg: TD3Config
    run_dir: Path
    lock: Any
    state: TD3State | None = None
    torch_learner: TD3Learner | None = None  # built with the state: its weights start the stack
    env: Any = None
    buffer: ReplayBuffer | None = None
    session: _MemberSession | None = None
    prov: dict[str, Any] = field(default_factory=dict)
    eval_seeds: np.ndarray | None = None
    finished: bool = False
    done_early: bool = False


class _EnsembleTrainer:
    """The phases of :func:`train_td3_ensemble`'s loop, on the stacked learner and every member's state."""

    def __init__(self, members: list[_Member], ckpt: Mapping[str, Any] | None, ckpt_path: Path):
        self.members, self.ckpt_path, self.resumed = members, ckpt_path, ckpt is not None
        self.cfg = members[0].cfg
        self.seeds = [m.cfg.seed for m in members]
        self.active: list[int] = list(range(len(members))) if ckpt is None else [int(i) for i in ckpt["active"]]
        self._step, self.next_checkpoint = 0, self.cfg.checkpoint_every
        self.last_checkpoint: int | None = None
        self.refilled, self.bar = False, None
        self.cpu_mark, self.t0 = time.process_time(), time.perf_counter()
        for m in members:
            self._build_member(m)
        learners = [m.torch_learner for m in members]
        self.ens = TD3Ensemble([learners[i] for i in self.active]) if self.active else None
        if ckpt is None:
            self._start_fresh()
        else:
            self._restore(ckpt)
        for m in members:
            m.torch_learner = None
            if not m.finished:
                self._begin_session(m)
        self.resumed_at = self.step if self.resumed else None

    @property
    def step(self) -> int:
        return self._step

    @step.setter
    def step(self, value: int) -> None:
        """The ensemble's step is every active member's."""
        self._step = value
        for i in self.active:
            self.members[i].state.step = value

    def _build_member(self, m: _Member) -> None:
        """Exactly train_td3's fresh draws; the target noise from a generator in the state torch's has here."""
        m.env = make_env(m.cfg)
        obs_dim, act_dim = int(np.prod(m.env.observation_space.shape)), int(np.prod(m.env.action_space.shape))
        m.state = TD3State.fresh(m.cfg, obs_dim, act_dim)
        m.state.torch_gen = torch.Generator()
        m.state.torch_gen.set_state(torch.get_rng_state())  # the state train_td3 draws its target noise from
        m.torch_learner, m.state.learner = m.state.learner, TD3Learner.from_config(m.cfg, obs_dim, act_dim)
        m.buffer = ReplayBuffer(obs_dim, act_dim, m.cfg.buffer_size)
        m.eval_seeds = selection_seeds(m.cfg)

    def _start_fresh(self) -> None:
        """Leftovers of an attempt that never checkpointed removed: it is redone identically."""
        for m in self.members:
            for name in (CHECKPOINT_FILE, CRITIC_FILE, BUFFER_FILE, PROVENANCE_FILE):
                if (m.run_dir / name).exists():
                    (m.run_dir / name).unlink()
            keep_outputs_up_to(m.run_dir, None)

    def _restore(self, ckpt: Mapping[str, Any]) -> None:
        """Every member as checkpointed; one that left the ensemble in an earlier session is left as it is."""
        self.next_checkpoint, self.t0 = int(ckpt["next_checkpoint"]), time.perf_counter() - float(ckpt["wall_s"])
        if self.ens is not None:
            self.ens.load_state_dict(ckpt["ensemble"])
        for i, m in enumerate(self.members):
            if i not in self.active:
                m.finished, m.prov = True, _read_provenance(m.run_dir)
                m.state.last_return = float(read_curve(m.run_dir / CURVE_FILE)[-1]["return_mean"])
                continue
            m.state.load_run_fields(ckpt["members"][i])
            m.state.wall_s = float(ckpt["wall_s"])
            m.buffer = m.state.restore_buffer(m.run_dir, m.cfg)  # None: lost, refilled
            keep_outputs_up_to(m.run_dir, int(ckpt["step"]))  # a member that finished after this checkpoint is redone
            for name in (CRITIC_FILE, CHECKPOINT_FILE):
                if (m.run_dir / name).exists():
                    (m.run_dir / name).unlink()
        self.step = int(ckpt["step"])

    def _begin_session(self, m: _Member) -> None:
        m.session = _MemberSession(m.run_dir / PROVENANCE_FILE, self.charge)
        m.session.begin(m.cfg, m.state, resumed=self.resumed, eval_seeds=m.eval_seeds,
                        extra={"trainer": TRAINER, "ensemble": {"k": len(self.members), "members": self.seeds}},
                        session_extra={"ensemble_active": len(self.active)})
        m.prov = m.session.prov
        m.prov.pop("done_early", None)
        if not m.state.resume_episode(m.env, m.cfg):
            m.prov["episodes_cut_at_steps"].append(self.step)

    def charge(self) -> None:
        """Share the process CPU since the last charge among the active members."""
        c = time.process_time()
        if self.active:
            share = (c - self.cpu_mark) / len(self.active)
            for i in self.active:
                self.members[i].session.charged += share
        self.cpu_mark = c

    def actor(self, i: int) -> Callable[[np.ndarray], np.ndarray]:
        """Member i's deterministic action, from its slice of the stacked actor."""
        r, ens = self.active.index(i), self.ens

        def act(obs: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                x = torch.as_tensor(np.asarray(obs, np.float32)).reshape(1, 1, -1)
                return ens.actor_forward([p[r:r + 1] for p in ens.actor], x)[0, 0].numpy()
        return act

    def refill_lost_buffers(self) -> None:
        """Lost buffers (a new machine): train_td3's refill, with the member's current actor."""
        for i in self.active:
            m = self.members[i]
            if m.buffer is None:
                m.buffer = m.state.refill_buffer(m.cfg, m.env, m.session, self.actor(i))
                self.refilled = True

    def collect(self) -> None:
        """One environment step of every active member (their actors' actions in one stacked call); the step advances."""
        members = [self.members[i] for i in self.active]
        for m in members:
            m.state.begin_episode(m.env, m.cfg)
        acts = self.ens.act(np.stack([m.state.obs for m in members])) if self.step >= self.cfg.learning_starts else None
        for r, m in enumerate(members):
            action = m.state.explore_action(m.cfg, m.env.action_space, lambda _obs, r=r: acts[r])
            m.state.env_step(m.env, m.buffer, action)
        self.step += 1

    def learn(self) -> None:
        """One stacked TD3 update; each member's replay batch and target noise from its own generators."""
        members, cfg = [self.members[i] for i in self.active], self.cfg
        tu = time.perf_counter()
        batches = [m.buffer.sample(cfg.batch_size, m.state.rng) for m in members]
        stacked = [torch.from_numpy(np.stack([b[f] for b in batches])) for f in range(5)]
        act_dim = self.ens.spec.act_dim
        noise = torch.stack([torch.randn(cfg.batch_size, act_dim, generator=m.state.torch_gen) for m in members])
        self.ens.update(*stacked, noise=noise)
        share = (time.perf_counter() - tu) / len(members)
        for m in members:
            m.state.update_time_s += share

    def evaluate_all(self) -> None:
        """Every active member's actor on its selection seeds: train_td3's curve row and snapshot."""
        for i in self.active:
            m = self.members[i]
            self.ens.copy_member_into(self.active.index(i), m.state.learner)
            evaluate_run(m.state, m.cfg, m.run_dir, m.session, m.eval_seeds, TRAINER)

    def leave_done(self, done_when) -> None:
        """Members done (``done_when`` on their curve, or ``total_steps``) finish and leave; the stack is
        rebuilt from the others' slices, and a checkpoint written."""
        done = []
        for i in self.active:
            m = self.members[i]
            m.done_early = done_when is not None and done_when(read_curve(m.run_dir / CURVE_FILE))
            if m.done_early or self.step >= m.cfg.total_steps:
                done.append(i)
        if not done:
            return
        for i in done:
            self.finish_member(i, done_when)
        keep = [i for i in self.active if i not in done]
        self.ens = self.ens.subset([self.active.index(i) for i in keep]) if keep else None
        self.active = keep
        self.next_checkpoint = max(self.next_checkpoint, self.cfg.next_checkpoint_after(self.step))
        self.checkpoint()

    def finish_member(self, i: int, done_when) -> None:
        """Member i is done: train_td3's final files (its checkpoint.pt too)."""
        m = self.members[i]
        self.charge()
        learner_state = self.ens.member_learner_state(self.active.index(i), m.state.learner)
        m.state.wall_s, m.state.next_checkpoint = time.perf_counter() - self.t0, self.next_checkpoint
        m.state.save(m.run_dir, m.cfg, m.env, m.buffer, learner_state=learner_state)
        save_final_critic(m.run_dir, m.cfg, m.state)
        m.finished = True
        if m.done_early:
            m.prov["done_early"] = {"rule": repr(done_when), "step": self.step}
        self.write_provenance(i)

    def write_provenance(self, i: int) -> None:
        m = self.members[i]
        m.state.learner.n_updates = self.ens.n_updates
        m.session.write(m.state, finished=m.finished)

    def checkpoint(self) -> None:
        """Every active member's buffer, then the ensemble's checkpoint, then the provenances."""
        self.last_checkpoint = self.step
        self.charge()
        for i in self.active:
            self.members[i].buffer.save(self.members[i].run_dir / BUFFER_FILE)  # first: never older than the checkpoint
        members = {i: {**self.members[i].state.run_fields(self.members[i].env, self.members[i].buffer),
                       "core_session": self.members[i].session.charged} for i in self.active}
        state = {
            "version": ENSEMBLE_CHECKPOINT_VERSION, "seeds": self.seeds,
            "configs": [json.dumps(m.cfg.to_dict(), sort_keys=True) for m in self.members],
            "active": list(self.active), "step": self.step, "next_checkpoint": self.next_checkpoint,
            "wall_s": time.perf_counter() - self.t0,
            "ensemble": self.ens.state_dict() if self.ens is not None else None, "members": members,
        }
        atomic_write(self.ckpt_path, lambda f: torch.save(state, f))
        for i in self.active:
            self.write_provenance(i)

    def results(self) -> list[EnsembleMemberRun]:
        """The active members' provenance written as they are now; every member's result."""
        self.charge()
        for i in self.active:
            self.write_provenance(i)
        return [EnsembleMemberRun(run_dir=m.run_dir, seed=m.cfg.seed, step=int(m.prov.get("step", self.step)),
                                  finished=m.finished, done_early="done_early" in m.prov,
                                  final_return=m.state.last_return) for m in self.members]


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
    from tqdm import tqdm

    # ---- loud checks, the locks and the checkpoint read, before anything is built
    configs, run_dirs = list(configs), [Path(d) for d in run_dirs]
    _check_arguments(configs, run_dirs, stop_at_step)
    cfg = configs[0]
    members: list[_Member] = []
    try:
        for c, d in zip(configs, run_dirs):
            d.mkdir(parents=True, exist_ok=True)
            members.append(_Member(cfg=c, run_dir=d, lock=lock_run_dir(d)))
        ckpt = _read_checkpoint(configs, run_dirs)
        shipped = _finished_without_checkpoint(configs, run_dirs) if ckpt is None else None
    except BaseException:
        for m in members:
            m.lock.close()
        raise
    if shipped is not None:  # finished, and shipped without the ensemble's checkpoint: its files are the result
        for m in members:
            m.lock.close()
        return shipped
    with torch_threads(cfg.torch_threads):
        try:
            # ---- every member's state: fresh (exactly train_td3's draws), or as checkpointed (lost buffers refilled)
            t = _EnsembleTrainer(members, ckpt, ensemble_checkpoint_path(run_dirs, [c.seed for c in configs]))
            t.refill_lost_buffers()
            stop = cfg.total_steps if stop_at_step is None else min(stop_at_step, cfg.total_steps)
            t.bar = tqdm(total=cfg.total_steps, initial=t.step, desc=f"TD3 ensemble {t.seeds}", unit="step",
                         disable=not progress, mininterval=2.0, dynamic_ncols=True)
            with t.bar:
                if t.step == 0 and ckpt is None:
                    t.evaluate_all()  # the untrained actors: curves start at step 0
                t.leave_done(done_when)
                # ---- the loop: one env step and one stacked update of every member, and every so often
                # evaluations (after which members that are done leave) and a checkpoint
                while t.step < stop and t.active:
                    t.collect()  # every member's env step: the ensemble's step advances
                    if cfg.learns_at(t.step):
                        t.learn()
                    if cfg.evaluates_at(t.step):
                        t.evaluate_all()
                        t.leave_done(done_when)  # moves next_checkpoint past this step when any left
                    if t.step >= t.next_checkpoint:  # mid-episode too: every member's env state is kept
                        t.next_checkpoint = cfg.next_checkpoint_after(t.step)
                        t.checkpoint()
                    t.bar.update(1)
                if t.active and t.last_checkpoint != t.step and (t.resumed_at != t.step or t.refilled):
                    t.checkpoint()  # where the caller stopped us
            return t.results()
        finally:
            for m in members:
                if m.env is not None:
                    m.env.close()
                m.lock.close()
