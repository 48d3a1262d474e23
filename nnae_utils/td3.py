"""A CleanRL-style TD3 (Fujimoto et al. 2018) with exact, resumable checkpoints.

The pieces a later CERL loop reuses are separate: :class:`ReplayBuffer` (numpy, preallocated),
:class:`TwinCritic` and :class:`TD3Learner` (actor, critic, their targets and optimizers, one
``update(batch)``). :func:`train_td3` is the single-learner training loop, written top to bottom
in one place as CleanRL writes it: collect a step, learn, and every so often evaluate and
checkpoint, each phase a method of one run's trainer, on one :class:`TD3State` (learner, RNGs,
counters, clocks), whose ``save`` / ``read`` / ``restore`` are the one home of the checkpoint format.
The pieces of a run's step (its schedule, exploration, buffer refill, evaluation with its curve row
and snapshot metadata, provenance) are :class:`TD3State`'s and this module's, and
:mod:`nnae_utils.td3_ensemble` runs each of its members through the same ones.

What a run leaves in ``run_dir``:

=======================================  ===============================================================
``curve.csv``                            one row per evaluation: step, return_mean, return_std, episodes
                                         (evaluation episodes), wall_s (since the run started, all sessions,
                                         evaluations included), updates_per_s (gradient updates per second of
                                         sampling + update time since the previous row), train_episodes,
                                         updates and update_time_s (cumulative)
``snapshots/step_NNNNNNN.safetensors``   the actor at each evaluation, in the network format
``checkpoint.pt``                        :class:`TD3State`: learner, counters, RNG states, env state (``weights_only``)
``buffer.npz``                           the replay buffer
``provenance.json``                      config, versions, times, core-seconds, buffer refills
``critic.safetensors``                   the final twin critic (written when the run finishes)
=======================================  ===============================================================

Determinism: every source of randomness is explicit. Torch (initialisation, target-policy noise)
is seeded with ``torch.manual_seed(cfg.seed)``; one ``numpy.random.Generator`` draws the warm-up
actions, the exploration noise and the replay batches; training episode ``k`` starts from
``env.reset(seed=episode_seed(cfg.seed, k))``. A checkpoint holds all of it (and, mid-episode,
the MuJoCo integration state), so a run stopped and resumed gives bitwise the same weights and
curve as a run that was never interrupted (same machine, same ``torch_threads``).

Evaluations use the run's *selection* seeds (:func:`nnae_utils.seeds.td3_selection_seeds`); the
zoo re-scores snapshots on fresh seeds.

Example:
    >>> cfg = TD3Config(seed=1, total_steps=300_000)
    >>> cfg.actor_spec(11, 3).hidden
    (64, 64)
    >>> TD3Config(batch_size=0)
    Traceback (most recent call last):
    ...
    ValueError: TD3Config.batch_size must be > 0, got 0
"""
from __future__ import annotations

import copy
import csv
import dataclasses
import json
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .backends import torch_threads
from .io import atomic_write, atomic_write_path, write_json
from .policies import ACTIVATIONS, Network, NetworkSpec, actor_to_network, make_actor, mlp, save_network
from .provenance import runtime_versions

CHECKPOINT_FILE = "checkpoint.pt"
BUFFER_FILE = "buffer.npz"
CURVE_FILE = "curve.csv"
PROVENANCE_FILE = "provenance.json"
CRITIC_FILE = "critic.safetensors"
SNAPSHOT_DIR = "snapshots"
CURVE_COLUMNS = ("step", "return_mean", "return_std", "episodes", "wall_s", "updates_per_s", "train_episodes",
                 "updates", "update_time_s", "core_s")
CHECKPOINT_VERSION = 1
BUFFER_VERSION = 1
CRITIC_FORMAT = "nnae-td3-critic"
TRAINER = "nnae_utils.td3"
MAX_RUN_SEED = 100  # nnae_utils.seeds: td3_selection seeds are 10_000 * run_seed + k, run_seed < 100
MAX_EVAL_EPISODES = 10_000  # so the selection seeds of two runs never overlap


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class TD3Config:
    """Settings of one TD3 run. Defaults: Fujimoto et al. (2018) / CleanRL, with a 64-64 actor."""

    env_id: str = "Hopper-v5"
    """Gymnasium environment id; its action space must be a Box in [-1, 1] (the network format's range)."""
    seed: int = 0
    """Run seed, in [0, 100): seeds torch, the numpy Generator, the episode resets and the selection seeds."""
    total_steps: int = 1_000_000
    """Environment steps of training (warm-up included). May be raised when resuming a run."""
    learning_starts: int = 25_000
    """Steps of uniformly random actions before the first update; updates run at every step after it."""
    batch_size: int = 256
    """Transitions per gradient update."""
    buffer_size: int = 1_000_000
    """Replay buffer capacity (oldest transitions are overwritten beyond it)."""
    actor_hidden: tuple[int, ...] = (64, 64)
    """Hidden widths of the actor (the network the zoo stores)."""
    actor_activation: str = "relu"
    """Hidden activation of the actor: relu, tanh or elu."""
    critic_hidden: tuple[int, ...] = (256, 256)
    """Hidden widths of each of the two Q-networks (ReLU)."""
    actor_lr: float = 3e-4
    """Adam learning rate of the actor."""
    critic_lr: float = 3e-4
    """Adam learning rate of the twin critic."""
    gamma: float = 0.99
    """Discount factor, in [0, 1]."""
    tau: float = 0.005
    """Polyak rate of the target networks, in (0, 1]."""
    policy_noise: float = 0.2
    """Std of the Gaussian noise added to the target policy's action (target smoothing)."""
    noise_clip: float = 0.5
    """Clip of the target-policy noise."""
    policy_delay: int = 2
    """Critic updates per actor (and target) update."""
    exploration_noise: float = 0.1
    """Std of the Gaussian noise added to the actor's action while collecting data."""
    eval_every: int = 5_000
    """Steps between deterministic evaluations (each writes a curve row and a snapshot); also at step 0."""
    eval_episodes: int = 5
    """Episodes per evaluation, on the run's selection seeds (at most 10_000)."""
    eval_max_steps: int = 1_000
    """Step cap of an evaluation episode (Hopper-v5's own time limit is 1000)."""
    checkpoint_every: int = 25_000
    """Steps between checkpoints; each is written at the first episode end after the mark."""
    torch_threads: int = 1
    """torch.set_num_threads for the run (restored afterwards)."""
    actor_init_seed: int = -1
    """Seed of the actor's initial weights alone (-1: drawn from ``seed`` like everything else). Runs
    that share it start from one actor (one hidden-unit order) and differ in every other draw."""

    def __post_init__(self) -> None:
        for name in ("actor_hidden", "critic_hidden"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
                raise ValueError(f"TD3Config.{name} must be a sequence of positive ints, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        types = {f.name: f.type for f in dataclasses.fields(self)}
        for name, kind in types.items():
            value = getattr(self, name)
            if kind == "int" and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
                raise ValueError(f"TD3Config.{name} must be an int, got {value!r}")
            if kind == "float" and (isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer))):
                raise ValueError(f"TD3Config.{name} must be a number, got {value!r}")
            if kind == "int":
                object.__setattr__(self, name, int(value))
            elif kind == "float":
                object.__setattr__(self, name, float(value))
                if not math.isfinite(getattr(self, name)):
                    raise ValueError(f"TD3Config.{name} must be finite, got {value!r}")
        if not isinstance(self.env_id, str) or not self.env_id:
            raise ValueError(f"TD3Config.env_id must be a non-empty string, got {self.env_id!r}")
        if not 0 <= self.seed < MAX_RUN_SEED:
            raise ValueError(
                f"TD3Config.seed must lie in [0, {MAX_RUN_SEED}) (nnae_utils.seeds.td3_selection_seeds), got {self.seed}"
            )
        for name in ("total_steps", "batch_size", "buffer_size", "policy_delay", "eval_every", "eval_episodes",
                     "eval_max_steps", "checkpoint_every", "torch_threads", "actor_lr", "critic_lr", "tau"):
            if getattr(self, name) <= 0:
                raise ValueError(f"TD3Config.{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("learning_starts", "policy_noise", "noise_clip", "exploration_noise"):
            if getattr(self, name) < 0:
                raise ValueError(f"TD3Config.{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("actor_hidden", "critic_hidden"):
            hidden = getattr(self, name)
            if not hidden or any(isinstance(h, bool) or not isinstance(h, (int, np.integer)) or h <= 0 for h in hidden):
                raise ValueError(f"TD3Config.{name} must be a non-empty sequence of positive ints, got {hidden!r}")
            object.__setattr__(self, name, tuple(int(h) for h in hidden))
        if self.actor_init_seed < -1:
            raise ValueError(f"TD3Config.actor_init_seed must be -1 (off) or >= 0, got {self.actor_init_seed}")
        if self.actor_activation not in ACTIVATIONS:
            raise ValueError(f"TD3Config.actor_activation must be one of {ACTIVATIONS}, got {self.actor_activation!r}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"TD3Config.gamma must lie in [0, 1], got {self.gamma}")
        if self.tau > 1.0:
            raise ValueError(f"TD3Config.tau must lie in (0, 1], got {self.tau}")
        if self.eval_episodes > MAX_EVAL_EPISODES:
            raise ValueError(
                f"TD3Config.eval_episodes must be <= {MAX_EVAL_EPISODES} (selection seeds of runs must not overlap), "
                f"got {self.eval_episodes}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TD3Config":
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown TD3Config fields: {sorted(unknown)}")
        return cls(**dict(data))

    def actor_spec(self, obs_dim: int, act_dim: int) -> NetworkSpec:
        """The actor's architecture for an environment with these sizes."""
        return NetworkSpec(obs_dim=obs_dim, act_dim=act_dim, hidden=self.actor_hidden,
                           activation=self.actor_activation, env_id=self.env_id)

    # ---- the schedule of a run (train_td3's and every ensemble member's)

    def learns_at(self, step: int) -> bool:
        """Whether an update follows environment step ``step`` (every step after the warm-up)."""
        return step > self.learning_starts

    def evaluates_at(self, step: int) -> bool:
        """Whether the actor is evaluated (a curve row, a snapshot) after environment step ``step``."""
        return step % self.eval_every == 0 or step == self.total_steps

    def next_checkpoint_after(self, step: int) -> int:
        """The first multiple of ``checkpoint_every`` after ``step``."""
        return (step // self.checkpoint_every + 1) * self.checkpoint_every


# Fields that may differ between a checkpoint and the config that resumes it: a run may be
# extended (nothing in the loop depends on total_steps), and the thread count is a machine setting
# (recorded per session in provenance.json; bitwise equality is only promised for equal counts).
RESUMABLE_CHANGES = ("total_steps", "torch_threads")


def check_env_id(env_id: str) -> None:
    """Raise ValueError unless ``env_id`` is registered in gymnasium (checked before building anything)."""
    import difflib

    import gymnasium

    if env_id not in gymnasium.envs.registry:
        close = difflib.get_close_matches(env_id, list(gymnasium.envs.registry), n=3)
        hint = f"; did you mean {close}?" if close else ""
        raise ValueError(f"unknown gymnasium environment id {env_id!r}{hint}")


def episode_seed(run_seed: int, episode: int) -> int:
    """Reset seed of training episode ``episode`` of run ``run_seed`` (never a selection seed range)."""
    return int(np.random.SeedSequence([int(run_seed), int(episode), 0x7D3]).generate_state(1, np.uint32)[0])


def selection_seeds(cfg: TD3Config) -> np.ndarray:
    """The reset seeds of the run's in-training evaluations (the same at every evaluation)."""
    from .seeds import td3_selection_seeds

    return td3_selection_seeds(cfg.seed, cfg.eval_episodes)


# --------------------------------------------------------------------------- replay buffer


class Batch(NamedTuple):
    """A batch of transitions (float32 numpy; rewards and terminated have shape (B, 1))."""

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_obs: np.ndarray
    terminated: np.ndarray


class ReplayBuffer:
    """A preallocated ring buffer of transitions, in float32 numpy arrays.

    ``terminated`` is gymnasium's terminated flag only: a time-limit truncation is stored as
    not terminated, so the TD target bootstraps through it.

    Example:
        >>> buf = ReplayBuffer(obs_dim=2, act_dim=1, capacity=3)
        >>> for i in range(4):
        ...     buf.add(np.full(2, i), np.zeros(1), float(i), np.full(2, i + 1), False)
        >>> len(buf), buf.n_added, sorted(buf.rewards[:, 0].tolist())
        (3, 4, [1.0, 2.0, 3.0])
        >>> buf.sample(5, np.random.default_rng(0)).obs.shape
        (5, 2)
    """

    def __init__(self, obs_dim: int, act_dim: int, capacity: int):
        if obs_dim <= 0 or act_dim <= 0 or capacity <= 0:
            raise ValueError(f"ReplayBuffer needs positive sizes, got obs_dim={obs_dim}, act_dim={act_dim}, capacity={capacity}")
        self.obs_dim, self.act_dim, self.capacity = int(obs_dim), int(act_dim), int(capacity)
        # np.zeros is lazily backed by the OS: an unused capacity costs no memory.
        self.obs = np.zeros((capacity, obs_dim), np.float32)
        self.actions = np.zeros((capacity, act_dim), np.float32)
        self.rewards = np.zeros((capacity, 1), np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), np.float32)
        self.terminated = np.zeros((capacity, 1), np.float32)
        self.ptr = 0  # next slot to write
        self.size = 0  # filled slots
        self.n_added = 0  # transitions ever added

    def __len__(self) -> int:
        return self.size

    def add(self, obs, action, reward: float, next_obs, terminated: bool) -> None:
        """Append one transition."""
        i = self.ptr
        self.obs[i] = obs
        self.actions[i] = action
        self.rewards[i, 0] = reward
        self.next_obs[i] = next_obs
        self.terminated[i, 0] = float(terminated)
        self.ptr = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)
        self.n_added += 1

    def add_batch(self, obs, actions, rewards, next_obs, terminated) -> None:
        """Append N transitions (arrays with a leading axis N), in order."""
        obs = np.asarray(obs, np.float32).reshape(-1, self.obs_dim)
        n = len(obs)
        actions = np.asarray(actions, np.float32).reshape(n, self.act_dim)
        rewards = np.asarray(rewards, np.float32).reshape(n, 1)
        next_obs = np.asarray(next_obs, np.float32).reshape(n, self.obs_dim)
        terminated = np.asarray(terminated, np.float32).reshape(n, 1)
        if n > self.capacity:  # only the last `capacity` survive, as with n calls to add
            skip = n - self.capacity
            self.ptr = (self.ptr + skip) % self.capacity
            self.n_added += skip
            obs, actions, rewards, next_obs, terminated = (a[skip:] for a in (obs, actions, rewards, next_obs, terminated))
            n = self.capacity
        idx = (self.ptr + np.arange(n)) % self.capacity
        self.obs[idx], self.actions[idx], self.rewards[idx] = obs, actions, rewards
        self.next_obs[idx], self.terminated[idx] = next_obs, terminated
        self.ptr = int((self.ptr + n) % self.capacity)
        self.size = min(self.size + n, self.capacity)
        self.n_added += n

    def sample(self, batch_size: int, rng: np.random.Generator) -> Batch:
        """``batch_size`` transitions drawn uniformly with replacement."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        idx = rng.integers(0, self.size, size=batch_size)
        return Batch(self.obs[idx], self.actions[idx], self.rewards[idx], self.next_obs[idx], self.terminated[idx])

    def save(self, path: str | os.PathLike) -> Path:
        """Write the filled part to ``path`` (.npz, uncompressed) atomically."""
        path = Path(path)
        n = self.size
        arrays = {
            "obs": self.obs[:n], "actions": self.actions[:n], "rewards": self.rewards[:n],
            "next_obs": self.next_obs[:n], "terminated": self.terminated[:n],
            "meta": np.array([BUFFER_VERSION, self.obs_dim, self.act_dim, self.capacity, self.ptr, self.size, self.n_added],
                             np.int64),
        }
        return atomic_write(path, lambda f: np.savez(f, **arrays))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ReplayBuffer":
        """Read a buffer written by :meth:`save` (no pickles are loaded)."""
        with np.load(Path(path), allow_pickle=False) as data:
            version, obs_dim, act_dim, capacity, ptr, size, n_added = (int(x) for x in data["meta"])
            if version != BUFFER_VERSION:
                raise ValueError(f"{path}: unsupported replay buffer version {version}")
            buf = cls(obs_dim, act_dim, capacity)
            for name in ("obs", "actions", "rewards", "next_obs", "terminated"):
                arr = data[name]
                if len(arr) != size:
                    raise ValueError(f"{path}: {name} holds {len(arr)} rows, meta says {size}")
                getattr(buf, name)[:size] = arr
        buf.ptr, buf.size, buf.n_added = ptr, size, n_added
        return buf


# --------------------------------------------------------------------------- networks and learner


class TwinCritic(nn.Module):
    """Two independent Q-networks Q(s, a) = MLP([s, a]) (ReLU), as in TD3's clipped double-Q."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (256, 256)):
        super().__init__()
        self.obs_dim, self.act_dim, self.hidden = int(obs_dim), int(act_dim), tuple(int(h) for h in hidden)
        self.q1 = mlp(obs_dim + act_dim, self.hidden, 1)
        self.q2 = mlp(obs_dim + act_dim, self.hidden, 1)

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([obs, actions], dim=-1)
        return self.q1(x), self.q2(x)

    def q1_value(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Q1 only (the actor's objective)."""
        return self.q1(torch.cat([obs, actions], dim=-1))

    def metadata(self) -> dict[str, str]:
        return {"format": CRITIC_FORMAT, "obs_dim": str(self.obs_dim), "act_dim": str(self.act_dim),
                "hidden": json.dumps(list(self.hidden)), "activation": "relu"}


def save_critic(path: str | os.PathLike, critic: TwinCritic, extra_metadata: Mapping[str, str] | None = None) -> Path:
    """Write the critic's state_dict as plain safetensors (its architecture in the metadata), atomically."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in critic.state_dict().items()}
    meta = {**{k: str(v) for k, v in (extra_metadata or {}).items()}, **critic.metadata()}
    return atomic_write_path(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_critic(path: str | os.PathLike) -> tuple[TwinCritic, dict[str, str]]:
    """Rebuild a :class:`TwinCritic` from :func:`save_critic`'s file; returns (critic, metadata)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if meta.get("format") != CRITIC_FORMAT:
        raise ValueError(f"{path} is not a {CRITIC_FORMAT} file (format={meta.get('format')!r})")
    critic = TwinCritic(int(meta["obs_dim"]), int(meta["act_dim"]), json.loads(meta["hidden"]))
    critic.load_state_dict(tensors)
    return critic, meta


def _polyak(targets: list[torch.Tensor], sources: list[torch.Tensor], tau: float) -> None:
    torch._foreach_lerp_(targets, sources, tau)


class TD3Learner:
    """Actor, twin critic, their targets and Adam optimizers, and the TD3 update.

    The learner draws no random numbers of its own besides torch's global generator (weight
    initialisation, target-policy noise): seed it with ``torch.manual_seed`` before building it.
    ``spec`` may carry a LayerNorm (as CERL's actors do); actions are tanh outputs in [-1, 1].

    Example:
        >>> torch.manual_seed(0) and None
        >>> learner = TD3Learner(NetworkSpec(obs_dim=3, act_dim=2, hidden=(8,)), critic_hidden=(16,))
        >>> buf = ReplayBuffer(3, 2, 100)
        >>> buf.add_batch(np.ones((10, 3)), np.zeros((10, 2)), np.ones(10), np.ones((10, 3)), np.zeros(10))
        >>> sorted(learner.update(buf.sample(4, np.random.default_rng(0))))
        ['actor_loss', 'critic_loss']
        >>> learner.act(np.zeros(3)).shape
        (2,)
    """

    def __init__(
        self,
        spec: NetworkSpec,
        *,
        critic_hidden: Sequence[int] = (256, 256),
        actor_lr: float = 3e-4,
        critic_lr: float = 3e-4,
        gamma: float = 0.99,
        tau: float = 0.005,
        policy_noise: float = 0.2,
        noise_clip: float = 0.5,
        policy_delay: int = 2,
    ):
        self.spec = spec
        self.gamma, self.tau = float(gamma), float(tau)
        self.policy_noise, self.noise_clip, self.policy_delay = float(policy_noise), float(noise_clip), int(policy_delay)
        self.actor = make_actor(spec)
        self.actor_target = make_actor(spec)
        self.actor_target.load_state_dict(self.actor.state_dict())
        self.critic = TwinCritic(spec.obs_dim, spec.act_dim, critic_hidden)
        self.critic_target = TwinCritic(spec.obs_dim, spec.act_dim, critic_hidden)
        self.critic_target.load_state_dict(self.critic.state_dict())
        for p in (*self.actor_target.parameters(), *self.critic_target.parameters()):
            p.requires_grad_(False)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=actor_lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=critic_lr)
        self.n_updates = 0
        self._actor_params = list(self.actor.parameters())
        self._pairs_actor = (list(self.actor_target.parameters()), list(self.actor.parameters()))
        self._pairs_critic = (list(self.critic_target.parameters()), list(self.critic.parameters()))

    @classmethod
    def from_config(cls, cfg: TD3Config, obs_dim: int, act_dim: int) -> "TD3Learner":
        """The learner of a run; with ``cfg.actor_init_seed`` >= 0 its actor (and actor target) start
        from the weights that seed gives, drawn without touching torch's global generator, so every
        other draw of the run is the one it would make without a shared initialisation."""
        learner = cls(cfg.actor_spec(obs_dim, act_dim), critic_hidden=cfg.critic_hidden, actor_lr=cfg.actor_lr,
                      critic_lr=cfg.critic_lr, gamma=cfg.gamma, tau=cfg.tau, policy_noise=cfg.policy_noise,
                      noise_clip=cfg.noise_clip, policy_delay=cfg.policy_delay)
        if cfg.actor_init_seed >= 0:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.actor_init_seed)
                shared = make_actor(cfg.actor_spec(obs_dim, act_dim)).state_dict()
            learner.actor.load_state_dict(shared)
            learner.actor_target.load_state_dict(shared)
        return learner

    def update(self, batch: Batch) -> dict[str, float]:
        """One critic step; every ``policy_delay``-th call also an actor step and the target updates.

        Returns ``critic_loss`` (sum of both Q-networks' MSE) and ``actor_loss`` (NaN when the actor
        was not updated at this call).
        """
        obs = torch.from_numpy(np.ascontiguousarray(batch.obs, np.float32))
        actions = torch.from_numpy(np.ascontiguousarray(batch.actions, np.float32))
        rewards = torch.from_numpy(np.ascontiguousarray(batch.rewards, np.float32)).reshape(-1, 1)
        next_obs = torch.from_numpy(np.ascontiguousarray(batch.next_obs, np.float32))
        not_done = 1.0 - torch.from_numpy(np.ascontiguousarray(batch.terminated, np.float32)).reshape(-1, 1)

        with torch.no_grad():
            noise = (torch.randn_like(actions) * self.policy_noise).clamp(-self.noise_clip, self.noise_clip)
            next_actions = (self.actor_target(next_obs) + noise).clamp(-1.0, 1.0)
            q1_next, q2_next = self.critic_target(next_obs, next_actions)
            target_q = rewards + not_done * self.gamma * torch.min(q1_next, q2_next)
        q1, q2 = self.critic(obs, actions)
        critic_loss = F.mse_loss(q1, target_q) + F.mse_loss(q2, target_q)
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_opt.step()
        self.n_updates += 1

        actor_loss = float("nan")
        if self.n_updates % self.policy_delay == 0:
            loss = -self.critic.q1_value(obs, self.actor(obs)).mean()
            self.actor_opt.zero_grad(set_to_none=True)
            loss.backward(inputs=self._actor_params)  # the critic's weight gradients are not needed here
            self.actor_opt.step()
            actor_loss = loss.item()
            with torch.no_grad():
                _polyak(*self._pairs_critic, self.tau)
                _polyak(*self._pairs_actor, self.tau)
        return {"critic_loss": critic_loss.item(), "actor_loss": actor_loss}

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Deterministic actions (float32, in [-1, 1]) for one observation or a batch."""
        with torch.inference_mode():
            return self.actor(torch.as_tensor(np.asarray(obs, np.float32))).numpy()

    def actor_network(self, extra_metadata: Mapping[str, str] | None = None) -> Network:
        """The current actor as a :class:`~nnae_utils.policies.Network` (a copy)."""
        return actor_to_network(self.spec, self.actor, extra_metadata)

    def load_actor_network(self, net: Network, *, targets: bool = False) -> None:
        """Copy ``net``'s weights into the actor (and its target when ``targets``), e.g. a GA migrant."""
        if net.spec != self.spec:
            raise ValueError(f"network spec {net.spec} differs from the learner's {self.spec}")
        state = {k: torch.from_numpy(v.copy()) for k, v in net.params.items()}
        self.actor.load_state_dict(state)
        if targets:
            self.actor_target.load_state_dict(state)

    def critic_state(self) -> dict[str, torch.Tensor]:
        """A copy of the critic's state_dict."""
        return {k: v.detach().clone() for k, v in self.critic.state_dict().items()}

    def state_dict(self) -> dict[str, Any]:
        """Everything :meth:`load_state_dict` needs to continue exactly (loads with weights_only=True)."""
        return {
            "actor": self.actor.state_dict(),
            "actor_target": self.actor_target.state_dict(),
            "critic": self.critic.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "actor_opt": self.actor_opt.state_dict(),
            "critic_opt": self.critic_opt.state_dict(),
            "n_updates": self.n_updates,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load a :meth:`state_dict`; the tensors are copied, never shared with ``state``."""
        # torch.optim's load_state_dict keeps (does not copy) CPU state tensors of matching dtype, so
        # loading another live learner's state would alias the two learners' Adam moments.
        state = copy.deepcopy(dict(state))
        self.actor.load_state_dict(state["actor"])
        self.actor_target.load_state_dict(state["actor_target"])
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.n_updates = int(state["n_updates"])


# --------------------------------------------------------------------------- files


def read_curve(path: Path) -> list[dict[str, str]]:
    """A run's ``curve.csv`` rows as dicts of strings (no file: none)."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_curve(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    def write(f) -> None:
        f.write((",".join(CURVE_COLUMNS) + "\n").encode())
        for row in rows:
            f.write((",".join(str(row.get(c, "")) for c in CURVE_COLUMNS) + "\n").encode())  # core_s: newer runs

    atomic_write(path, write)


def append_curve(path: Path, row: Mapping[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(",".join(str(row[c]) for c in CURVE_COLUMNS) + "\n")
        f.flush()


def keep_outputs_up_to(run_dir: Path, step: int | None) -> None:
    """``run_dir``'s curve rows and snapshots after ``step`` removed (None: all of them, the curve left with
    its header): what a resume from a checkpoint at ``step`` computes again."""
    curve_path, snap_dir = run_dir / CURVE_FILE, run_dir / SNAPSHOT_DIR
    rows = [r for r in read_curve(curve_path) if step is not None and int(r["step"]) <= step]
    if step is None and curve_path.exists():
        curve_path.unlink()
    write_curve(curve_path, rows)
    for p in snap_dir.glob("step_*.safetensors") if snap_dir.is_dir() else []:
        if step is None or int(p.stem.split("_")[1]) > step:
            p.unlink()


def _unwrap_time_limit(env):
    from gymnasium.wrappers import TimeLimit

    e = env
    while True:
        if isinstance(e, TimeLimit):
            return e
        if not hasattr(e, "env"):
            return None
        e = e.env


def _env_state(env) -> dict[str, Any] | None:
    """MuJoCo integration state of a mid-episode env (None if the env is not MuJoCo)."""
    base = env.unwrapped
    if not (hasattr(base, "model") and hasattr(base, "data")):
        return None
    import mujoco

    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    state = np.empty(mujoco.mj_stateSize(base.model, spec), np.float64)
    mujoco.mj_getState(base.model, base.data, state, spec)
    limit = _unwrap_time_limit(env)
    return {"mj_state": torch.from_numpy(state), "elapsed_steps": int(limit._elapsed_steps) if limit else -1}


def _set_env_state(env, saved: Mapping[str, Any]) -> None:
    import mujoco

    base = env.unwrapped
    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    state = saved["mj_state"].numpy()
    if state.shape != (mujoco.mj_stateSize(base.model, spec),):
        raise ValueError("checkpoint env state does not fit this environment's MuJoCo model")
    mujoco.mj_setState(base.model, base.data, state, spec)  # mj_step recomputes all derived quantities
    limit = _unwrap_time_limit(env)
    if limit is not None and saved["elapsed_steps"] >= 0:
        limit._elapsed_steps = int(saved["elapsed_steps"])


# --------------------------------------------------------------------------- the training loop


@dataclass
class TD3Run:
    """What :func:`train_td3` returns: where the run lives and how far it got."""

    run_dir: Path
    step: int
    """Environment steps done (== cfg.total_steps when finished)."""
    finished: bool
    curve: "Any"
    """curve.csv as a pandas DataFrame."""
    final_return: float
    """Mean return of the last evaluation (selection seeds)."""
    snapshots: list[Path]
    wall_s: float
    """Wall seconds of training over all sessions (evaluations included)."""

    @property
    def critic_path(self) -> Path:
        return self.run_dir / CRITIC_FILE


@dataclass
class TD3State:
    """Everything a run hands from one environment step to the next: what ``checkpoint.pt`` holds.

    :meth:`save` and :meth:`read` / :meth:`restore` are the one place the checkpoint's format
    lives: a dict of tensors and plain values (``torch.load(weights_only=True)``), with the replay
    buffer beside it in ``buffer.npz``, written first, so that a checkpoint never points at a
    buffer older than itself. The format is :data:`CHECKPOINT_VERSION` 1, unchanged since the
    first runs of the zoo.
    """

    learner: TD3Learner
    rng: np.random.Generator
    """Warm-up actions, exploration noise and replay batches (torch's own generator: initialisation, target noise)."""
    step: int = 0
    """Environment steps done."""
    episode: int = 0
    """Training episodes begun before the current one (episode ``k`` resets with ``episode_seed(cfg.seed, k)``)."""
    obs: np.ndarray | None = None
    """The current observation; None between episodes."""
    ep_return: float = 0.0
    ep_len: int = 0
    next_checkpoint: int = 0
    """The periodic checkpoint is written at the first episode end at or after this step."""
    wall_s: float = 0.0
    """Wall seconds of the run, all sessions, when the state was last saved or loaded."""
    update_time_s: float = 0.0
    """Seconds of replay sampling and gradient updates, all sessions."""
    updates_at_eval: int = 0
    update_time_at_eval: float = 0.0
    """``learner.n_updates`` and ``update_time_s`` at the last evaluation (the next row's updates_per_s)."""
    last_return: float = float("nan")
    """Mean return of the last evaluation."""
    env_state: dict[str, Any] | None = None
    """Loaded mid-episode: the env's MuJoCo state (None: between episodes, or not a MuJoCo env)."""
    buffer_n_added: int = 0
    """Loaded: ``n_added`` of the buffer written with the checkpoint."""
    torch_gen: torch.Generator | None = None
    """Where the target-policy noise comes from: None, torch's global generator (train_td3); an ensemble
    member's own generator (:mod:`nnae_utils.td3_ensemble`). Its state is the checkpoint's ``torch_rng``."""

    @classmethod
    def fresh(cls, cfg: TD3Config, obs_dim: int, act_dim: int) -> "TD3State":
        """Step 0: torch seeded with ``cfg.seed`` before the learner is built; one numpy Generator of ``cfg.seed``."""
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        return cls(learner=TD3Learner.from_config(cfg, obs_dim, act_dim), rng=rng, next_checkpoint=cfg.checkpoint_every)

    def run_fields(self, env, buffer: ReplayBuffer) -> dict[str, Any]:
        """The checkpoint's entries of this one run (random generators, episode, env, buffer, clocks), which an
        ensemble's checkpoint holds per member beside its stacked learner."""
        mid_episode = self.obs is not None
        return {
            "torch_rng": torch.get_rng_state() if self.torch_gen is None else self.torch_gen.get_state(),
            "numpy_rng": self.rng.bit_generator.state, "episode": self.episode,
            "obs": torch.from_numpy(np.asarray(self.obs, np.float64)) if mid_episode else None,
            "env_state": _env_state(env) if mid_episode else None, "ep_return": self.ep_return, "ep_len": self.ep_len,
            "buffer_n_added": buffer.n_added, "update_time_s": self.update_time_s,
            "updates_at_eval": self.updates_at_eval, "update_time_at_eval": self.update_time_at_eval,
            "last_return": self.last_return,
        }

    def save(self, run_dir: Path, cfg: TD3Config, env, buffer: ReplayBuffer,
             learner_state: Mapping[str, Any] | None = None) -> None:
        """Write ``buffer.npz``, then ``checkpoint.pt`` (mid-episode: with the env's MuJoCo state);
        ``learner_state``: the learner's ``state_dict()`` when it lives elsewhere (an ensemble's member)."""
        buffer.save(run_dir / BUFFER_FILE)  # first: a checkpoint never points at a buffer older than itself
        saved = {
            "version": CHECKPOINT_VERSION, "config": json.dumps(cfg.to_dict(), sort_keys=True),
            "learner": self.learner.state_dict() if learner_state is None else learner_state,
            "step": self.step, "next_checkpoint": self.next_checkpoint, "wall_s": self.wall_s,
            **self.run_fields(env, buffer),
        }
        atomic_write(run_dir / CHECKPOINT_FILE, lambda f: torch.save(saved, f))

    @staticmethod
    def read(run_dir: Path, cfg: TD3Config) -> dict[str, Any] | None:
        """``run_dir``'s checkpoint as saved, or None; an error if it belongs to another run or lies beyond the config."""
        path = run_dir / CHECKPOINT_FILE
        if not path.is_file():
            return None
        saved = torch.load(path, map_location="cpu", weights_only=True)
        check_same_run(TD3Config.from_dict(json.loads(saved["config"])), cfg, path)
        if saved["step"] > cfg.total_steps:
            raise ValueError(f"{path} is at step {saved['step']}, beyond total_steps={cfg.total_steps}")
        return saved

    @classmethod
    def restore(cls, saved: Mapping[str, Any], cfg: TD3Config, obs_dim: int, act_dim: int) -> "TD3State":
        """The state :meth:`read` returned, exactly: learner, both random generators, counters, clocks."""
        state = cls.fresh(cfg, obs_dim, act_dim)  # the same construction as the run that saved it
        state.learner.load_state_dict(saved["learner"])
        state.step, state.next_checkpoint, state.wall_s = int(saved["step"]), int(saved["next_checkpoint"]), float(saved["wall_s"])
        state.load_run_fields(saved)
        return state

    def load_run_fields(self, saved: Mapping[str, Any]) -> None:
        """Inverse of :meth:`run_fields`."""
        if self.torch_gen is None:
            torch.set_rng_state(saved["torch_rng"])
        else:
            self.torch_gen.set_state(saved["torch_rng"])
        self.rng.bit_generator.state = saved["numpy_rng"]
        self.episode = int(saved["episode"])
        self.obs = None if saved["obs"] is None else saved["obs"].numpy()
        self.ep_return, self.ep_len, self.env_state = float(saved["ep_return"]), int(saved["ep_len"]), saved["env_state"]
        self.update_time_s = float(saved["update_time_s"])
        self.updates_at_eval, self.update_time_at_eval = int(saved["updates_at_eval"]), float(saved["update_time_at_eval"])
        self.last_return, self.buffer_n_added = float(saved["last_return"]), int(saved["buffer_n_added"])

    def restore_buffer(self, run_dir: Path, cfg: TD3Config) -> ReplayBuffer | None:
        """The buffer written with this checkpoint, or None if it is lost (another machine, or a newer one)."""
        path = run_dir / BUFFER_FILE
        if not path.is_file():
            return None
        loaded = ReplayBuffer.load(path)
        spec = self.learner.spec
        if loaded.capacity != cfg.buffer_size or (loaded.obs_dim, loaded.act_dim) != (spec.obs_dim, spec.act_dim):
            raise ValueError(f"{path} does not match the config (capacity/sizes)")
        want = self.buffer_n_added
        if loaded.n_added == want:
            return loaded
        if want < loaded.n_added <= loaded.capacity:  # newer by a crash between the two writes
            loaded.n_added = loaded.size = loaded.ptr = want
            return loaded
        return None

    def resume_episode(self, env, cfg: TD3Config) -> bool:
        """Put the episode a checkpoint stopped in back into ``env`` (its reset, then its MuJoCo state).
        Without a saved env state (not MuJoCo) the episode is cut instead (False): the next one begins."""
        if self.obs is None:
            return True
        env.reset(seed=episode_seed(cfg.seed, self.episode))
        if self.env_state is None:
            self.obs, self.ep_return, self.ep_len, self.episode = None, 0.0, 0, self.episode + 1
            return False
        _set_env_state(env, self.env_state)
        return True

    # ---- the run's own transitions (train_td3's, and each member's of an ensemble)

    def begin_episode(self, env, cfg: TD3Config) -> None:
        """Between episodes: reset ``env`` for training episode ``self.episode``."""
        if self.obs is None:
            self.obs, _ = env.reset(seed=episode_seed(cfg.seed, self.episode))
            self.ep_return, self.ep_len = 0.0, 0

    def explore_action(self, cfg: TD3Config, space, actor: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """Uniform in the action space during warm-up; then ``actor(obs)`` plus clipped Gaussian noise."""
        if self.step < cfg.learning_starts:
            return self.rng.uniform(space.low, space.high).astype(np.float32)
        a = actor(self.obs) + self.rng.normal(0.0, cfg.exploration_noise, size=space.shape)
        return np.clip(a, space.low, space.high).astype(np.float32)

    def env_step(self, env, buffer: ReplayBuffer, action: np.ndarray) -> None:
        """``action`` in ``env``, the transition into ``buffer``; an episode end leaves no observation."""
        next_obs, reward, terminated, truncated, _ = env.step(action)
        buffer.add(self.obs, action, reward, next_obs, terminated)  # terminated only: bootstrap through truncation
        self.obs, self.ep_return, self.ep_len = next_obs, self.ep_return + float(reward), self.ep_len + 1
        if terminated or truncated:
            self.episode, self.obs = self.episode + 1, None

    def collect(self, cfg: TD3Config, env, buffer: ReplayBuffer, actor: Callable[[np.ndarray], np.ndarray]) -> None:
        """One environment step into ``buffer`` (a new episode first, when none is running)."""
        self.begin_episode(env, cfg)
        self.env_step(env, buffer, self.explore_action(cfg, env.action_space, actor))

    def refill_buffer(self, cfg: TD3Config, env, session: "RunSession",
                      actor: Callable[[np.ndarray], np.ndarray]) -> ReplayBuffer:
        """A lost buffer (a new machine): a new one filled by ``actor``, no updates, no steps counted;
        recorded in the provenance (``buffer_refilled_at_steps``, ``buffer_refill_env_steps``)."""
        spec = self.learner.spec
        buffer = ReplayBuffer(spec.obs_dim, spec.act_dim, cfg.buffer_size)
        n_refill = max(cfg.learning_starts, cfg.batch_size)
        for _ in range(n_refill):
            self.collect(cfg, env, buffer, actor)
        prov = session.prov
        prov["buffer_refilled_at_steps"].append(self.step)
        prov["buffer_refill_env_steps"] = prov.get("buffer_refill_env_steps", 0) + n_refill
        return buffer

    def curve_row(self, returns: np.ndarray, session: "RunSession") -> dict[str, Any]:
        """The curve row of an evaluation with these ``returns`` (the session's clocks read now)."""
        d_upd, d_time = self.learner.n_updates - self.updates_at_eval, self.update_time_s - self.update_time_at_eval
        return {
            "step": self.step, "return_mean": round(float(returns.mean()), 6), "return_std": round(float(returns.std()), 6),
            "episodes": len(returns), "wall_s": round(session.wall_s(), 3),
            "updates_per_s": round(d_upd / d_time, 3) if d_time > 0 else float("nan"), "train_episodes": self.episode,
            "updates": self.learner.n_updates, "update_time_s": round(self.update_time_s, 4),
            "core_s": round(session.core_s(), 3),
        }


class RunSession:
    """This process's part of a run: its clocks, and the run's ``provenance.json`` (config, versions,
    sessions, core-seconds over all of them, buffer refills, episodes cut). An ensemble's member
    (:mod:`nnae_utils.td3_ensemble`) overrides :meth:`session_core_s` with its share of the process."""

    def __init__(self, path: Path):
        self.path, self.prov = path, {}
        self.t_start, self.cpu_start = time.perf_counter(), time.process_time()
        self.t0, self.core_before = self.t_start, 0.0

    def begin(self, cfg: TD3Config, state: TD3State, resumed: bool, eval_seeds: np.ndarray,
              extra: Mapping[str, Any] | None = None, session_extra: Mapping[str, Any] | None = None) -> None:
        """Provenance read (resumed) or started, this session appended to it; ``extra`` and
        ``session_extra``: further entries of the provenance and of this session's record."""
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        prov = json.loads(self.path.read_text()) if (resumed and self.path.is_file()) else {}
        prov.setdefault("start_time", now)
        for key in ("buffer_refilled_at_steps", "episodes_cut_at_steps", "sessions"):
            prov.setdefault(key, [])
        prov.setdefault("core_seconds", 0.0)
        prov.update(config=cfg.to_dict(), versions=runtime_versions(), eval_seeds=eval_seeds.tolist(),
                    finished=False, host=platform.node(), **(extra or {}))
        self.core_before = sum(s.get("core_seconds", 0.0) for s in prov["sessions"])  # earlier sessions' CPU
        prov["sessions"].append({"start_time": now, "start_step": state.step, "torch_threads": cfg.torch_threads,
                                 **(session_extra or {})})
        self.prov, self.t0 = prov, time.perf_counter() - state.wall_s  # t0: the run's wall clock, over all sessions

    def wall_s(self) -> float:
        """Wall seconds of the run, all sessions."""
        return time.perf_counter() - self.t0

    def session_core_s(self) -> float:
        """CPU seconds of this session (the process's)."""
        return time.process_time() - self.cpu_start

    def core_s(self) -> float:
        """CPU seconds of the run, all sessions."""
        return self.core_before + self.session_core_s()

    def write(self, state: TD3State, finished: bool) -> None:
        end = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.prov["sessions"][-1].update(end_time=end, end_step=state.step,
                                         wall_s=round(time.perf_counter() - self.t_start, 3),
                                         core_seconds=round(self.session_core_s(), 3))
        core = sum(s.get("core_seconds", 0.0) for s in self.prov["sessions"])
        self.prov.update(end_time=end, total_wall_s=round(self.wall_s(), 3), core_seconds=round(core, 3), step=state.step,
                         updates=state.learner.n_updates, train_episodes=state.episode, finished=finished)
        write_json(self.path, self.prov)


def eval_backend(env_id: str) -> str:
    """How in-training evaluations play: batched (numpy) where :mod:`nnae_utils.rollouts` has the env."""
    from .rollouts import SUPPORTED_ENV_IDS

    return "batched" if env_id in SUPPORTED_ENV_IDS else "gymnasium"


def snapshot_metadata(cfg: TD3Config, step: int, returns: np.ndarray, eval_seeds: np.ndarray,
                      trainer: str) -> dict[str, str]:
    """What a snapshot says of where it came from (beside the network format's own metadata)."""
    return {
        "run_seed": str(cfg.seed), "step": str(step), "eval_return_mean": repr(float(returns.mean())),
        "eval_return_std": repr(float(returns.std())), "eval_seeds": json.dumps(eval_seeds.tolist()),
        "eval_max_steps": str(cfg.eval_max_steps), "trainer": trainer,
        "td3_config": json.dumps(cfg.to_dict(), sort_keys=True),
    }


def evaluate_run(state: TD3State, cfg: TD3Config, run_dir: Path, session: RunSession, eval_seeds: np.ndarray,
                 trainer: str = TRAINER) -> dict[str, Any]:
    """The run's actor (``state.learner``) on its selection seeds: a snapshot (with :func:`snapshot_metadata`)
    and a curve row (returned), and the state's marks of the last evaluation moved here."""
    from .rollouts import evaluate

    net = state.learner.actor_network()
    result = evaluate(net, eval_seeds, backend=eval_backend(cfg.env_id), nthread=cfg.torch_threads,
                      max_steps=cfg.eval_max_steps)
    returns = np.asarray(result.returns, np.float64).reshape(-1)
    row = state.curve_row(returns, session)
    net.extra_metadata.update(snapshot_metadata(cfg, state.step, returns, eval_seeds, trainer))
    save_network(run_dir / SNAPSHOT_DIR / f"step_{state.step:07d}.safetensors", net)
    append_curve(run_dir / CURVE_FILE, row)
    state.last_return, state.updates_at_eval, state.update_time_at_eval = row["return_mean"], state.learner.n_updates, state.update_time_s
    return row


def save_final_critic(run_dir: Path, cfg: TD3Config, state: TD3State) -> None:
    """A finished run's twin critic, with the config and step it was trained to."""
    save_critic(run_dir / CRITIC_FILE, state.learner.critic, {
        "td3_config": json.dumps(cfg.to_dict(), sort_keys=True), "step": str(state.step), "run_seed": str(cfg.seed)})


class _Trainer:
    """The phases of :func:`train_td3`'s loop, on one run's state, env, buffer and files."""

    def __init__(self, cfg: TD3Config, run_dir: Path, env, saved: Mapping[str, Any] | None, session: RunSession):
        self.cfg, self.run_dir, self.env, self.session = cfg, run_dir, env, session
        self.curve_path, self.snap_dir = run_dir / CURVE_FILE, run_dir / SNAPSHOT_DIR
        obs_dim, act_dim = int(np.prod(env.observation_space.shape)), int(np.prod(env.action_space.shape))
        self.eval_seeds = selection_seeds(cfg)
        self.on_eval: Callable[[dict[str, Any]], None] | None = None
        self.bar = None
        if saved is None:
            self.state = TD3State.fresh(cfg, obs_dim, act_dim)
            self.buffer: ReplayBuffer | None = ReplayBuffer(obs_dim, act_dim, cfg.buffer_size)
            keep_outputs_up_to(run_dir, None)  # leftovers of an attempt that never checkpointed: redone identically
            self.last_checkpoint: int | None = None
        else:
            self.state = TD3State.restore(saved, cfg, obs_dim, act_dim)
            self.buffer = self.state.restore_buffer(run_dir, cfg)
            keep_outputs_up_to(run_dir, self.state.step)  # evaluations made after the checkpoint are redone
            self.last_checkpoint = self.state.step if self.buffer is not None else None  # on disk, and current
        session.begin(cfg, self.state, resumed=saved is not None, eval_seeds=self.eval_seeds)
        if not self.state.resume_episode(env, cfg):
            session.prov["episodes_cut_at_steps"].append(self.state.step)

    def curve(self) -> list[dict[str, str]]:
        return read_curve(self.curve_path)

    def collect(self) -> None:
        """One environment step into the buffer (a new episode first, when none is running)."""
        self.state.collect(self.cfg, self.env, self.buffer, self.state.learner.act)

    def refill_buffer(self) -> None:
        """A lost buffer (a new machine): refilled by the current actor, no updates, no steps counted."""
        self.buffer = self.state.refill_buffer(self.cfg, self.env, self.session, self.state.learner.act)

    def learn(self) -> None:
        """One TD3 update on a replay batch (the time spent is the curve's update_time_s)."""
        s = self.state
        tu = time.perf_counter()
        s.learner.update(self.buffer.sample(self.cfg.batch_size, s.rng))
        s.update_time_s += time.perf_counter() - tu

    def evaluate(self) -> None:
        """The actor on the selection seeds: a curve row and a snapshot (its metadata says where it came from)."""
        row = evaluate_run(self.state, self.cfg, self.run_dir, self.session, self.eval_seeds)
        if self.bar is not None:
            self.bar.set_postfix(ret=f"{self.state.last_return:.0f}", refresh=False)
        if self.on_eval is not None:
            self.on_eval(row)

    def checkpoint(self) -> None:
        """Buffer, checkpoint and provenance, as they are now."""
        self.state.wall_s = self.session.wall_s()
        self.state.save(self.run_dir, self.cfg, self.env, self.buffer)
        self.last_checkpoint = self.state.step
        self.session.write(self.state, finished=False)

    def finish(self, done_early: bool, done_when) -> TD3Run:
        """Provenance (and, for a finished run, the critic) written; the run's result."""
        s, cfg = self.state, self.cfg
        finished = s.step >= cfg.total_steps or done_early
        if done_early:
            self.session.prov["done_early"] = {"rule": repr(done_when), "step": s.step}
        if finished:
            save_final_critic(self.run_dir, cfg, s)
        self.session.write(s, finished=finished)
        return run_result(self.run_dir, s.step, finished, s.last_return, self.session.wall_s())

def train_td3(
    cfg: TD3Config,
    run_dir: str | os.PathLike,
    *,
    stop_at_step: int | None = None,
    progress: bool = True,
    on_eval: Callable[[dict[str, Any]], None] | None = None,
    done_when: Callable[[list[dict[str, str]]], bool] | None = None,
) -> TD3Run:
    """Train (or resume) one TD3 run in ``run_dir``; see the module docstring for what it writes.

    Resumes automatically from ``run_dir/checkpoint.pt``. ``stop_at_step`` stops (with a
    checkpoint) after that many env steps, as if interrupted there. ``on_eval`` is called with each
    new curve row (a dict), after it is written. ``done_when`` ends the run early, as finished
    (final checkpoint and critic written), as soon as it returns True on the curve's rows (as read
    from ``curve.csv``, after each evaluation and on resume); it must be picklable for
    :func:`nnae_utils.zoo.train_runs`, and its ``repr`` is recorded in the provenance.
    """
    from tqdm import tqdm

    # ---- loud checks, and the checkpoint read, before anything is built
    if not isinstance(cfg, TD3Config):
        raise TypeError(f"cfg must be a TD3Config, got {type(cfg).__name__}")
    check_env_id(cfg.env_id)
    if stop_at_step is not None and not 0 < stop_at_step:
        raise ValueError(f"stop_at_step must be > 0, got {stop_at_step}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = lock_run_dir(run_dir)  # two processes training into one run_dir would corrupt it
    try:
        saved = TD3State.read(run_dir, cfg)
        compacted = finished_run(cfg, run_dir) if saved is None else None
        if compacted is not None:  # finished, and shipped without its checkpoint: its files are the result
            lock.close()
            return compacted
        env = make_env(cfg)
    except BaseException:
        lock.close()
        raise
    session = RunSession(run_dir / PROVENANCE_FILE)  # this session's clocks start here
    with torch_threads(cfg.torch_threads):
        try:
            # ---- seeding and state: fresh, or exactly as checkpointed (a lost buffer refilled)
            t = _Trainer(cfg, run_dir, env, saved, session)
            t.on_eval, s = on_eval, t.state
            if t.buffer is None:
                t.refill_buffer()
            stop = cfg.total_steps if stop_at_step is None else min(stop_at_step, cfg.total_steps)
            done_early = done_when is not None and done_when(t.curve())
            t.bar = tqdm(total=cfg.total_steps, initial=s.step, desc=f"TD3 seed {cfg.seed}", unit="step",
                         disable=not progress, mininterval=2.0, dynamic_ncols=True)
            with t.bar:
                if saved is None:
                    t.evaluate()  # the untrained actor: curves start at step 0
                # ---- the loop: one env step, one update, and every so often an evaluation and a checkpoint
                while s.step < stop and not done_early:
                    t.collect()
                    s.step += 1
                    if cfg.learns_at(s.step):
                        t.learn()
                    if cfg.evaluates_at(s.step):
                        t.evaluate()
                        done_early = done_when is not None and done_when(t.curve())
                    if s.obs is None and s.step >= s.next_checkpoint:  # at an episode end: no env state to keep
                        s.next_checkpoint = cfg.next_checkpoint_after(s.step)
                        t.checkpoint()
                    t.bar.update(1)
                if t.last_checkpoint != s.step:
                    t.checkpoint()  # at the end, or where the caller stopped us
            return t.finish(done_early, done_when)
        finally:
            env.close()
            lock.close()


def make_env(cfg: TD3Config):
    """The run's gymnasium env; its action space must be the actor's tanh range."""
    import gymnasium as gym

    env = gym.make(cfg.env_id)
    space = env.action_space
    if not isinstance(space, gym.spaces.Box) or not (np.all(space.low == -1.0) and np.all(space.high == 1.0)):
        env.close()
        raise ValueError(f"{cfg.env_id}: the actor's tanh output needs a Box action space in [-1, 1], got {space}")
    return env


def finished_run(cfg: TD3Config, run_dir: Path) -> TD3Run | None:
    """A run without a checkpoint: None if it never reached its first one (it starts over, same config or
    error), or, finished and shipped without its optimizer state (:func:`nnae_utils.zoo.compact_finished_run`),
    its result from curve, snapshots and provenance: only extending it would need the checkpoint."""
    prov_path = run_dir / PROVENANCE_FILE
    if not prov_path.is_file():
        return None
    prov = json.loads(prov_path.read_text())
    check_same_run(TD3Config.from_dict(prov["config"]), cfg, prov_path)
    if not (prov.get("finished") and (run_dir / CRITIC_FILE).is_file()):
        return None
    if cfg.total_steps > int(prov["step"]) and "done_early" not in prov:
        raise ValueError(f"{run_dir} finished at step {prov['step']} and its checkpoint was dropped: "
                         f"it cannot be extended to total_steps={cfg.total_steps}")
    return run_result(run_dir, int(prov["step"]), True, None, float(prov["total_wall_s"]))


def run_result(run_dir: Path, step: int, finished: bool, final_return: float | None, wall_s: float) -> TD3Run:
    """What :func:`train_td3` returns for ``run_dir``'s files (``final_return`` None: the curve's last)."""
    import pandas as pd

    curve = pd.read_csv(run_dir / CURVE_FILE)
    return TD3Run(run_dir=run_dir, step=step, finished=finished, curve=curve,
                  final_return=float(curve["return_mean"].iloc[-1]) if final_return is None else final_return,
                  snapshots=sorted((run_dir / SNAPSHOT_DIR).glob("step_*.safetensors")), wall_s=wall_s)


def lock_run_dir(run_dir: Path):
    """An exclusive, non-blocking lock on ``run_dir/.lock`` (released when the file is closed or the process dies)."""
    f = open(run_dir / ".lock", "a")
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no protection
        return f
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise RuntimeError(f"{run_dir} is in use by another training process (lock {run_dir / '.lock'})") from None
    return f


def check_same_run(saved: TD3Config, cfg: TD3Config, where: Path) -> None:
    """Raise ValueError unless ``saved`` (a run's config) and ``cfg`` differ only in :data:`RESUMABLE_CHANGES`."""
    a = {k: v for k, v in saved.to_dict().items() if k not in RESUMABLE_CHANGES}
    b = {k: v for k, v in cfg.to_dict().items() if k not in RESUMABLE_CHANGES}
    diff = {k: (a[k], b[k]) for k in a if a[k] != b[k]}
    if diff:
        detail = ", ".join(f"{k}: run has {x!r}, config has {y!r}" for k, (x, y) in sorted(diff.items()))
        raise ValueError(f"{where} belongs to a run with a different config ({detail}); use another run_dir")
