"""A CleanRL-style TD3 (Fujimoto et al. 2018) with exact, resumable checkpoints.

The pieces a later CERL loop reuses are separate: :class:`ReplayBuffer` (numpy, preallocated),
:class:`TwinCritic` and :class:`TD3Learner` (actor, critic, their targets and optimizers, one
``update(batch)``). :func:`train_td3` is the single-learner training loop, written top to bottom
in one place as CleanRL writes it.

What a run leaves in ``run_dir``:

=======================================  ===============================================================
``curve.csv``                            one row per evaluation: step, return_mean, return_std, episodes
                                         (evaluation episodes), wall_s (since the run started, all sessions,
                                         evaluations included), updates_per_s (gradient updates per second of
                                         sampling + update time since the previous row), train_episodes,
                                         updates and update_time_s (cumulative)
``snapshots/step_NNNNNNN.safetensors``   the actor at each evaluation, in the network format
``checkpoint.pt``                        learner state, counters, RNG states, env state (``weights_only``)
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
from .policies import ACTIVATIONS, Network, NetworkSpec, actor_to_network, make_actor, save_network
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


def _mlp(n_in: int, hidden: Sequence[int], n_out: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(n_in, h), nn.ReLU()]
        n_in = h
    layers.append(nn.Linear(n_in, n_out))
    return nn.Sequential(*layers)


class TwinCritic(nn.Module):
    """Two independent Q-networks Q(s, a) = MLP([s, a]) (ReLU), as in TD3's clipped double-Q."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (256, 256)):
        super().__init__()
        self.obs_dim, self.act_dim, self.hidden = int(obs_dim), int(act_dim), tuple(int(h) for h in hidden)
        self.q1 = _mlp(obs_dim + act_dim, self.hidden, 1)
        self.q2 = _mlp(obs_dim + act_dim, self.hidden, 1)

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


def _read_curve(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write_curve(path: Path, rows: list[Mapping[str, Any]]) -> None:
    def write(f) -> None:
        f.write((",".join(CURVE_COLUMNS) + "\n").encode())
        for row in rows:
            f.write((",".join(str(row.get(c, "")) for c in CURVE_COLUMNS) + "\n").encode())  # core_s: newer runs

    atomic_write(path, write)


def _append_curve(path: Path, row: Mapping[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(",".join(str(row[c]) for c in CURVE_COLUMNS) + "\n")
        f.flush()


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
    import gymnasium as gym
    import pandas as pd
    from tqdm import tqdm

    from .rollouts import SUPPORTED_ENV_IDS, evaluate

    # ---- loud checks before anything is built
    if not isinstance(cfg, TD3Config):
        raise TypeError(f"cfg must be a TD3Config, got {type(cfg).__name__}")
    check_env_id(cfg.env_id)
    if stop_at_step is not None and not 0 < stop_at_step:
        raise ValueError(f"stop_at_step must be > 0, got {stop_at_step}")
    run_dir = Path(run_dir)
    ckpt_path, buffer_path = run_dir / CHECKPOINT_FILE, run_dir / BUFFER_FILE
    curve_path, prov_path = run_dir / CURVE_FILE, run_dir / PROVENANCE_FILE
    snap_dir = run_dir / SNAPSHOT_DIR
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = lock_run_dir(run_dir)  # two processes training into one run_dir would corrupt it
    try:
        ckpt = None
        if ckpt_path.is_file():
            ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
            _check_same_run(TD3Config.from_dict(json.loads(ckpt["config"])), cfg, ckpt_path)
            if ckpt["step"] > cfg.total_steps:
                raise ValueError(f"{ckpt_path} is at step {ckpt['step']}, beyond total_steps={cfg.total_steps}")
        elif prov_path.is_file():  # a run that never reached its first checkpoint: same config or error
            prov = json.loads(prov_path.read_text())
            _check_same_run(TD3Config.from_dict(prov["config"]), cfg, prov_path)
            if prov.get("finished") and (run_dir / CRITIC_FILE).is_file():
                # a finished run shipped without its optimizer state (zoo.compact_finished_run): its
                # curve, snapshots and critic are the result; only extending it would need the checkpoint
                if cfg.total_steps > int(prov["step"]) and "done_early" not in prov:
                    raise ValueError(f"{run_dir} finished at step {prov['step']} and its checkpoint was dropped: "
                                     f"it cannot be extended to total_steps={cfg.total_steps}")
                lock.close()
                curve = pd.read_csv(curve_path)
                return TD3Run(run_dir=run_dir, step=int(prov["step"]), finished=True, curve=curve,
                              final_return=float(curve["return_mean"].iloc[-1]),
                              snapshots=sorted(snap_dir.glob("step_*.safetensors")), wall_s=float(prov["total_wall_s"]))
        env = gym.make(cfg.env_id)
        space = env.action_space
        if not isinstance(space, gym.spaces.Box) or not (np.all(space.low == -1.0) and np.all(space.high == 1.0)):
            env.close()
            raise ValueError(f"{cfg.env_id}: the actor's tanh output needs a Box action space in [-1, 1], got {space}")
    except BaseException:
        lock.close()
        raise
    obs_dim, act_dim = int(np.prod(env.observation_space.shape)), int(np.prod(space.shape))
    cpu0, t_session = time.process_time(), time.perf_counter()
    with torch_threads(cfg.torch_threads):
        try:
            # ---- seeding and state (fresh, or exactly as checkpointed)
            torch.manual_seed(cfg.seed)
            rng = np.random.default_rng(cfg.seed)
            learner = TD3Learner.from_config(cfg, obs_dim, act_dim)
            buffer = ReplayBuffer(obs_dim, act_dim, cfg.buffer_size)
            eval_seeds = selection_seeds(cfg)
            eval_backend = "batched" if cfg.env_id in SUPPORTED_ENV_IDS else "gymnasium"
            now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            prov = json.loads(prov_path.read_text()) if (ckpt is not None and prov_path.is_file()) else {}
            prov.setdefault("start_time", now)
            prov.setdefault("buffer_refilled_at_steps", [])
            prov.setdefault("episodes_cut_at_steps", [])
            prov.setdefault("sessions", [])
            prov.setdefault("core_seconds", 0.0)
            prov.update(config=cfg.to_dict(), versions=runtime_versions(), eval_seeds=eval_seeds.tolist(),
                        finished=False, host=platform.node())
            step, episode, ep_return, ep_len, obs = 0, 0, 0.0, 0, None
            next_ckpt = cfg.checkpoint_every
            wall_offset, update_time, updates_at_eval, update_time_at_eval, last_return = 0.0, 0.0, 0, 0.0, float("nan")
            need_refill, last_ckpt_step = False, None
            if ckpt is None:
                if curve_path.exists():
                    curve_path.unlink()  # leftovers of an attempt that never checkpointed: redone identically
                for p in snap_dir.glob("step_*.safetensors") if snap_dir.is_dir() else []:
                    p.unlink()
                _write_curve(curve_path, [])
            else:
                learner.load_state_dict(ckpt["learner"])
                torch.set_rng_state(ckpt["torch_rng"])
                rng.bit_generator.state = ckpt["numpy_rng"]
                step, episode = int(ckpt["step"]), int(ckpt["episode"])
                next_ckpt = int(ckpt["next_checkpoint"])
                wall_offset, update_time = float(ckpt["wall_s"]), float(ckpt["update_time_s"])
                updates_at_eval, update_time_at_eval = int(ckpt["updates_at_eval"]), float(ckpt["update_time_at_eval"])
                last_return = float(ckpt["last_return"])
                if ckpt["obs"] is not None:  # stopped mid-episode: continue the very same episode
                    env.reset(seed=episode_seed(cfg.seed, episode))
                    if ckpt["env_state"] is None:
                        prov["episodes_cut_at_steps"].append(step)  # not a MuJoCo env: the episode restarts
                        episode += 1
                    else:
                        _set_env_state(env, ckpt["env_state"])
                        obs = ckpt["obs"].numpy()
                        ep_return, ep_len = float(ckpt["ep_return"]), int(ckpt["ep_len"])
                # the buffer must be the one written with this checkpoint (it is written first)
                if buffer_path.is_file():
                    loaded = ReplayBuffer.load(buffer_path)
                    if loaded.capacity != cfg.buffer_size or (loaded.obs_dim, loaded.act_dim) != (obs_dim, act_dim):
                        raise ValueError(f"{buffer_path} does not match the config (capacity/sizes)")
                    want = int(ckpt["buffer_n_added"])
                    if loaded.n_added == want:
                        buffer = loaded
                    elif want < loaded.n_added <= loaded.capacity:  # newer by a crash between the two writes
                        loaded.n_added = loaded.size = loaded.ptr = want
                        buffer = loaded
                    else:
                        need_refill = True
                else:
                    need_refill = True
                rows = [r for r in _read_curve(curve_path) if int(r["step"]) <= step]
                _write_curve(curve_path, rows)  # drop evaluations made after the checkpoint
                for p in snap_dir.glob("step_*.safetensors") if snap_dir.is_dir() else []:
                    if int(p.stem.split("_")[1]) > step:
                        p.unlink()
            core_before = sum(s.get("core_seconds", 0.0) for s in prov["sessions"])  # earlier sessions' CPU
            prov["sessions"].append({"start_time": now, "start_step": step, "torch_threads": cfg.torch_threads})
            t0 = time.perf_counter() - wall_offset  # wall clock of the run, over all sessions

            def explore_action(o: np.ndarray, at_step: int) -> np.ndarray:
                if at_step < cfg.learning_starts:
                    return rng.uniform(space.low, space.high).astype(np.float32)
                a = learner.act(o) + rng.normal(0.0, cfg.exploration_noise, size=act_dim)
                return np.clip(a, space.low, space.high).astype(np.float32)

            # ---- lost buffer (a new machine): refill it with the current actor, no updates, not counted
            if need_refill:
                n_refill = max(cfg.learning_starts, cfg.batch_size)
                for _ in range(n_refill):
                    if obs is None:
                        obs, _ = env.reset(seed=episode_seed(cfg.seed, episode))
                        ep_return, ep_len = 0.0, 0
                    action = explore_action(obs, step)
                    next_obs, reward, terminated, truncated, _ = env.step(action)
                    buffer.add(obs, action, reward, next_obs, terminated)
                    obs, ep_return, ep_len = next_obs, ep_return + float(reward), ep_len + 1
                    if terminated or truncated:
                        episode, obs = episode + 1, None
                prov["buffer_refilled_at_steps"].append(step)
                prov.setdefault("buffer_refill_env_steps", 0)
                prov["buffer_refill_env_steps"] += n_refill

            def evaluate_and_snapshot() -> None:
                nonlocal last_return, updates_at_eval, update_time_at_eval
                net = learner.actor_network()
                result = evaluate(net, eval_seeds, backend=eval_backend, nthread=cfg.torch_threads,
                                  max_steps=cfg.eval_max_steps)
                returns = np.asarray(result.returns, np.float64).reshape(-1)
                d_upd, d_time = learner.n_updates - updates_at_eval, update_time - update_time_at_eval
                row = {
                    "step": step, "return_mean": round(float(returns.mean()), 6), "return_std": round(float(returns.std()), 6),
                    "episodes": len(returns), "wall_s": round(time.perf_counter() - t0, 3),
                    "updates_per_s": round(d_upd / d_time, 3) if d_time > 0 else float("nan"), "train_episodes": episode,
                    "updates": learner.n_updates, "update_time_s": round(update_time, 4),
                    "core_s": round(core_before + time.process_time() - cpu0, 3),
                }
                net.extra_metadata.update({
                    "run_seed": str(cfg.seed), "step": str(step), "eval_return_mean": repr(float(returns.mean())),
                    "eval_return_std": repr(float(returns.std())), "eval_seeds": json.dumps(eval_seeds.tolist()),
                    "eval_max_steps": str(cfg.eval_max_steps), "trainer": "nnae_utils.td3",
                    "td3_config": json.dumps(cfg.to_dict(), sort_keys=True),
                })
                save_network(snap_dir / f"step_{step:07d}.safetensors", net)
                _append_curve(curve_path, row)
                last_return, updates_at_eval, update_time_at_eval = row["return_mean"], learner.n_updates, update_time
                bar.set_postfix(ret=f"{last_return:.0f}", refresh=False)
                if on_eval is not None:
                    on_eval(row)

            def checkpoint() -> None:
                nonlocal last_ckpt_step
                last_ckpt_step = step
                mid_episode = obs is not None
                env_state = _env_state(env) if mid_episode else None
                buffer.save(buffer_path)  # first: a checkpoint never points at a buffer older than itself
                state = {
                    "version": CHECKPOINT_VERSION, "config": json.dumps(cfg.to_dict(), sort_keys=True),
                    "learner": learner.state_dict(), "torch_rng": torch.get_rng_state(),
                    "numpy_rng": rng.bit_generator.state, "step": step, "episode": episode,
                    "next_checkpoint": next_ckpt, "obs": torch.from_numpy(np.asarray(obs, np.float64)) if mid_episode else None,
                    "env_state": env_state, "ep_return": ep_return, "ep_len": ep_len, "buffer_n_added": buffer.n_added,
                    "wall_s": time.perf_counter() - t0, "update_time_s": update_time, "updates_at_eval": updates_at_eval,
                    "update_time_at_eval": update_time_at_eval, "last_return": last_return,
                }
                atomic_write(ckpt_path, lambda f: torch.save(state, f))
                write_provenance(finished=False)

            def write_provenance(finished: bool) -> None:
                end = time.strftime("%Y-%m-%dT%H:%M:%S%z")
                session = prov["sessions"][-1]
                session.update(end_time=end, end_step=step, wall_s=round(time.perf_counter() - t_session, 3),
                               core_seconds=round(time.process_time() - cpu0, 3))
                core = sum(s.get("core_seconds", 0.0) for s in prov["sessions"])
                prov.update(end_time=end, total_wall_s=round(time.perf_counter() - t0, 3), core_seconds=round(core, 3),
                            step=step, updates=learner.n_updates, train_episodes=episode, finished=finished)
                write_json(prov_path, prov)

            # ---- the loop
            stop = cfg.total_steps if stop_at_step is None else min(stop_at_step, cfg.total_steps)
            done_early = done_when is not None and done_when(_read_curve(curve_path))
            bar = tqdm(total=cfg.total_steps, initial=step, desc=f"TD3 seed {cfg.seed}", unit="step",
                       disable=not progress, mininterval=2.0, dynamic_ncols=True)
            with bar:
                if step == 0 and ckpt is None:
                    evaluate_and_snapshot()  # the untrained actor: curves start at step 0
                while step < stop and not done_early:
                    if obs is None:
                        obs, _ = env.reset(seed=episode_seed(cfg.seed, episode))
                        ep_return, ep_len = 0.0, 0
                    action = explore_action(obs, step)
                    next_obs, reward, terminated, truncated, _ = env.step(action)
                    buffer.add(obs, action, reward, next_obs, terminated)  # bootstrap through truncation
                    obs, ep_return, ep_len = next_obs, ep_return + float(reward), ep_len + 1
                    step += 1
                    if step > cfg.learning_starts:
                        tu = time.perf_counter()
                        learner.update(buffer.sample(cfg.batch_size, rng))
                        update_time += time.perf_counter() - tu
                    if terminated or truncated:
                        episode, obs = episode + 1, None
                    if step % cfg.eval_every == 0 or step == cfg.total_steps:
                        evaluate_and_snapshot()
                        done_early = done_when is not None and done_when(_read_curve(curve_path))
                    if obs is None and step >= next_ckpt:
                        next_ckpt = (step // cfg.checkpoint_every + 1) * cfg.checkpoint_every
                        checkpoint()
                    bar.update(1)
                if last_ckpt_step != step and (ckpt is None or step != int(ckpt["step"]) or need_refill):
                    checkpoint()  # at the end, or where the caller stopped us
            finished = step >= cfg.total_steps or done_early
            if done_early:
                prov["done_early"] = {"rule": repr(done_when), "step": step}
            if finished:
                save_critic(run_dir / CRITIC_FILE, learner.critic, {
                    "td3_config": json.dumps(cfg.to_dict(), sort_keys=True), "step": str(step), "run_seed": str(cfg.seed)})
            write_provenance(finished=finished)
            curve = pd.read_csv(curve_path)
            return TD3Run(run_dir=run_dir, step=step, finished=finished, curve=curve, final_return=last_return,
                          snapshots=sorted(snap_dir.glob("step_*.safetensors")), wall_s=time.perf_counter() - t0)
        finally:
            env.close()
            lock.close()


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


def _check_same_run(saved: TD3Config, cfg: TD3Config, where: Path) -> None:
    a = {k: v for k, v in saved.to_dict().items() if k not in RESUMABLE_CHANGES}
    b = {k: v for k, v in cfg.to_dict().items() if k not in RESUMABLE_CHANGES}
    diff = {k: (a[k], b[k]) for k in a if a[k] != b[k]}
    if diff:
        detail = ", ".join(f"{k}: run has {x!r}, config has {y!r}" for k, (x, y) in sorted(diff.items()))
        raise ValueError(f"{where} belongs to a run with a different config ({detail}); use another run_dir")
