"""Hopper-v5, batched: evaluate a population of policy networks at the speed of the physics.

Everything in the suite that scores a network goes through :func:`evaluate`. It has two backends:

- ``"batched"`` (default): P policies x E episodes stepped together. The physics is MuJoCo's own
  batch stepper (``mujoco.batch.Batch``, C++ threads, one state row per episode), the policy
  forward pass is one stacked numpy call, and observations, rewards and terminations are computed
  vectorised across episodes. Finished episodes leave the active set, so they cost nothing.
- ``"gymnasium"``: the reference, a plain ``gymnasium.make(env_id)`` loop over one env.

The batched backend is *identical* to gymnasium's Hopper-v5, not an approximation of it:

- the model is gymnasium's own ``hopper.xml``;
- reset draws the same noise from the same generator (``gymnasium.utils.seeding.np_random(seed)``)
  and runs ``mj_resetData`` + set qpos/qvel + ``mj_forward`` as ``MujocoEnv.set_state`` does;
- a control step is ``mj_step(m, d, nstep=4)`` from the full integration state, *including*
  ``qacc_warmstart`` (the constraint solver's starting point, which gymnasium's long-lived MjData
  carries from step to step; ``mujoco.rollout`` restarts it from zero every call, which we
  measured to put observations 1e-16 off gymnasium's within a few steps and 3e-6 off after a
  1000-step episode: too far for exact parity);
- reward, observation and termination repeat ``hopper_v5.py``'s arithmetic in the same dtypes
  (the control cost is float32 there, because the action is float32).

Tests check bitwise-equal observations and rewards against gymnasium over full episodes.

Purity: a result is a function of (policies, seeds, max_steps, action_noise, noise_seed) only.
``mujoco.batch`` is bit-identical at any thread count, each episode's action noise comes from its
own generator keyed by (noise_seed, reset seed), and every policy's forward pass is computed one
observation per policy per call (matrix-vector products), which gives the same bits as
``Network.act`` on a single observation, whatever else is in the batch. So results do not depend
on ``nthread``, and a population split into chunks and concatenated gives the same arrays.

Example:
    >>> from nnae_utils.policies import Network, NetworkSpec
    >>> net = Network.random(NetworkSpec(obs_dim=11, act_dim=3), seed=0)
    >>> res = evaluate([net, net], seeds=[0, 1], max_steps=20)
    >>> res.returns.shape, res.lengths.dtype
    ((2, 2), dtype('int64'))
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from nnae_utils.policies import Network, NetworkSpec, forward, stack_params

HOPPER_ENV_ID = "Hopper-v5"
SOLVED_RETURN = 2500.0
"""The return at which a Hopper-v5 policy counts as solving the task (the suite's bar; good policies score 3000-3700):
the zoo's admission bar, and what stages 1 and 3 count their networks against."""
SUPPORTED_ENV_IDS = (HOPPER_ENV_ID,)  # envs the batched backend implements
BACKENDS = ("batched", "gymnasium")
RECORD_MODES = (None, "observations", "transitions")


@dataclass(frozen=True)
class HopperV5:
    """Constants of gymnasium's Hopper-v5 with its default arguments (see ``hopper_v5.py``)."""

    env_id: str = HOPPER_ENV_ID
    xml_file: str = "hopper.xml"
    frame_skip: int = 4
    obs_dim: int = 11
    act_dim: int = 3
    max_episode_steps: int = 1000
    forward_reward_weight: float = 1.0
    ctrl_cost_weight: float = 1e-3
    healthy_reward: float = 1.0
    healthy_state_range: tuple[float, float] = (-100.0, 100.0)
    healthy_z_range: tuple[float, float] = (0.7, float("inf"))
    healthy_angle_range: tuple[float, float] = (-0.2, 0.2)
    reset_noise_scale: float = 5e-3
    obs_velocity_clip: float = 10.0


HOPPER = HopperV5()


def hopper_xml_path() -> Path:
    """gymnasium's own hopper.xml, so that our model is the one ``gymnasium.make`` builds."""
    import gymnasium

    return Path(gymnasium.__file__).parent / "envs" / "mujoco" / "assets" / HOPPER.xml_file


@lru_cache(maxsize=1)
def hopper_model():
    """The compiled MjModel (cached; MjModel is read-only for us, and safe to share across threads)."""
    import mujoco

    return mujoco.MjModel.from_xml_path(str(hopper_xml_path()))


# --------------------------------------------------------------------------- reset


def _check_seed_values(seeds: np.ndarray) -> None:
    if seeds.size and (not np.issubdtype(seeds.dtype, np.integer)):
        raise ValueError(f"seeds must be integers, got dtype {seeds.dtype}")
    if seeds.size and seeds.min() < 0:
        raise ValueError("seeds must be non-negative (gymnasium rejects negative seeds)")
    if seeds.size and seeds.max() > np.iinfo(np.int64).max:
        raise ValueError("seeds must fit in int64")


def reset_states(seeds: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact Hopper-v5 initial states for reset seeds: (qpos (N, 6), qvel (N, 6)), float64.

    ``env.reset(seed=s)`` seeds ``np_random`` with ``Generator(PCG64(SeedSequence(s)))`` and draws
    qpos noise then qvel noise, uniform in +-reset_noise_scale, around the model's qpos0 / zero.
    """
    from gymnasium.utils import seeding

    seeds = np.asarray(seeds)
    if seeds.ndim != 1:
        raise ValueError(f"seeds must be one-dimensional, got shape {seeds.shape}")
    _check_seed_values(seeds)
    model = hopper_model()
    init_qpos, init_qvel = model.qpos0.copy(), np.zeros(model.nv)
    lo, hi = -HOPPER.reset_noise_scale, HOPPER.reset_noise_scale
    qpos = np.empty((len(seeds), model.nq))
    qvel = np.empty((len(seeds), model.nv))
    for i, seed in enumerate(seeds):
        rng, _ = seeding.np_random(int(seed))
        qpos[i] = init_qpos + rng.uniform(low=lo, high=hi, size=model.nq)
        qvel[i] = init_qvel + rng.uniform(low=lo, high=hi, size=model.nv)
    return qpos, qvel


# --------------------------------------------------------------------------- batched physics


class BatchedHopper:
    """n Hopper-v5 environments stepped together; the engine :func:`evaluate` is built on.

    ``reset(seeds, ids)`` and ``step(actions, ids)`` act on the environments ``ids`` (sorted unique
    indices; None = all) and return what gymnasium's ``reset`` / ``step`` would for each of them.
    No time limit here: that is the caller's (TimeLimit's) business.

    Example:
        >>> env = BatchedHopper(2, nthread=1)
        >>> obs = env.reset([0, 1])
        >>> obs, reward, terminated = env.step(np.zeros((2, 3), np.float32))
        >>> obs.shape, reward.shape, terminated.dtype
        ((2, 11), (2,), dtype('bool'))
    """

    def __init__(self, n: int, nthread: int | None = None):
        import mujoco
        import mujoco.batch

        self.n = int(n)
        self.nthread = (os.cpu_count() or 1) if nthread is None else int(nthread)
        self.model = m = hopper_model()
        # One state row per env, holding mjSTATE_INTEGRATION (qpos, qvel, ctrl, qacc_warmstart, ...):
        # exactly what a long-lived gymnasium MjData carries from one step to the next. Batch steps
        # the rows on its own C++ thread pool; results are bit-identical at any thread count.
        self.batch = mujoco.batch.Batch(m, self.n, nthread=self.nthread)
        state = self.batch.state
        q0 = _state_offset(m, mujoco.mjtState.mjSTATE_QPOS)
        c0 = _state_offset(m, mujoco.mjtState.mjSTATE_CTRL)
        # Live views of the rows. qpos and qvel are adjacent, so one gather reads both: qv = (qpos, qvel).
        self.qpos = state[:, q0 : q0 + m.nq]
        self.qvel = state[:, q0 + m.nq : q0 + m.nq + m.nv]
        self.ctrl = state[:, c0 : c0 + m.nu]
        self._qv = state[:, q0 : q0 + m.nq + m.nv]
        self.dt = m.opt.timestep * HOPPER.frame_skip  # computed as MujocoEnv.dt does
        self._stage_none = mujoco.mjtStage.mjSTAGE_NONE.value

    def _ids(self, ids) -> np.ndarray | slice:
        return slice(None) if ids is None else np.asarray(ids, dtype=np.int64)

    def reset(self, seeds: Sequence[int] | np.ndarray, ids=None) -> np.ndarray:
        """Reset envs ``ids`` with gymnasium reset seeds; return their observations (k, 11)."""
        qpos, qvel = reset_states(seeds)
        self.set_state(qpos, qvel, ids)
        return self.observations(ids)

    def set_state(self, qpos: np.ndarray, qvel: np.ndarray, ids=None) -> None:
        """MujocoEnv.set_state after mj_resetData: warmstart, ctrl and time zeroed, then mj_forward."""
        idx = self._ids(ids)
        if len(qpos) != len(self.qpos[idx]):
            raise ValueError(f"{len(qpos)} states for {len(self.qpos[idx])} environments")
        sel = None if ids is None else idx
        self.batch.reset(sel, stage=self._stage_none)  # mj_resetData
        self.qpos[idx] = qpos
        self.qvel[idx] = qvel
        self.batch.forward(sel)  # mj_forward, as set_state does (it leaves qacc_warmstart at zero)

    def observations(self, ids=None) -> np.ndarray:
        """Hopper-v5 observations of envs ``ids``: qpos[1:] and qvel clipped to +-10, (k, 11)."""
        return _observations(self._qv[self._ids(ids)])

    def healthy(self, ids=None) -> np.ndarray:
        """HopperEnv.is_healthy of envs ``ids``, (k,) bool."""
        return _healthy(self._qv[self._ids(ids)])

    def step(self, actions: np.ndarray, ids=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One Hopper-v5 step of envs ``ids``: (observations, rewards, terminated).

        ``actions`` (k, 3) is taken as float32, as gymnasium's action space is; MuJoCo's ctrl is
        float64, so the cast is exact either way.
        """
        idx = self._ids(ids)
        actions = np.asarray(actions, dtype=np.float32)
        x_before = self.qpos[idx, 0]
        if actions.shape != (len(x_before), HOPPER.act_dim):
            raise ValueError(f"actions must have shape ({len(x_before)}, {HOPPER.act_dim}), got {actions.shape}")
        self.ctrl[idx] = actions
        self.batch.step(None if ids is None else idx.astype(np.int32), nstep=HOPPER.frame_skip)
        qv = self._qv[idx]
        x_velocity = (qv[:, 0] - x_before) / self.dt
        healthy = _healthy(qv)
        # Same arithmetic as HopperEnv._get_rew: the control cost is float32 there (float32 action,
        # Python-float weight), so it is here.
        ctrl_cost = HOPPER.ctrl_cost_weight * np.square(actions).sum(axis=1)
        reward = (HOPPER.forward_reward_weight * x_velocity + healthy * HOPPER.healthy_reward) - ctrl_cost
        return _observations(qv), reward, ~healthy



def _state_offset(model, component) -> int:
    """Column of a component in an mjSTATE_INTEGRATION row: rows hold components in bit order."""
    import mujoco

    below = mujoco.mjtState.mjSTATE_INTEGRATION.value & (component.value - 1)
    return mujoco.mj_stateSize(model, below)


def _observations(qv: np.ndarray) -> np.ndarray:
    """HopperEnv._get_obs from (k, 12) rows (qpos, qvel): qpos[1:], then qvel clipped to +-10."""
    obs = qv[:, 1:].copy()
    vel = obs[:, 5:]
    clip = HOPPER.obs_velocity_clip
    np.minimum(np.maximum(vel, -clip, out=vel), clip, out=vel)  # np.clip, without its overhead
    return obs


def _healthy(qv: np.ndarray) -> np.ndarray:
    """HopperEnv.is_healthy from (k, 12) rows (qpos, qvel): open intervals on the unclipped state.

    state_vector()[2:] is (qpos[2:], qvel); the default ranges are symmetric, so lo < s < hi is
    |s| < hi (NaN fails both).
    """
    lo, hi = HOPPER.healthy_state_range
    (z_lo, z_hi), (a_lo, a_hi) = HOPPER.healthy_z_range, HOPPER.healthy_angle_range
    assert lo == -hi and a_lo == -a_hi
    z, angle = qv[:, 1], qv[:, 2]
    return (np.abs(qv[:, 2:]) < hi).all(axis=1) & (z_lo < z) & (z < z_hi) & (np.abs(angle) < a_hi)


# --------------------------------------------------------------------------- result


@dataclass
class EvalResult:
    """Per-episode results of :func:`evaluate`, shaped (P policies, E episodes)."""

    returns: np.ndarray
    """float64 (P, E): undiscounted episode returns."""
    lengths: np.ndarray
    """int64 (P, E): env steps per episode."""
    terminated: np.ndarray
    """bool (P, E): True if the episode ended by unhealthy termination, False if cut by the cap."""
    observations: np.ndarray | None = None
    """record != None: float64 (N, obs_dim), every observation an action was taken on, ordered by
    (policy, episode, step)."""
    observation_owner: np.ndarray | None = None
    """record != None: int64 (N, 2), (policy index, episode index) of each observation."""
    actions: np.ndarray | None = None
    """record == "transitions": float32 (N, act_dim), the action applied (after noise and clipping)."""
    rewards: np.ndarray | None = None
    """record == "transitions": float64 (N,)."""
    next_observations: np.ndarray | None = None
    """record == "transitions": float64 (N, obs_dim)."""
    terminations: np.ndarray | None = None
    """record == "transitions": bool (N,), True only for unhealthy termination."""
    truncations: np.ndarray | None = None
    """record == "transitions": bool (N,), True where the step cap cut the episode."""

    @property
    def env_steps(self) -> int:
        return int(self.lengths.sum())


# --------------------------------------------------------------------------- evaluate


def _validate(policies, seeds, backend, nthread, max_steps, action_noise, noise_seed, record):
    """All argument checks, before any computation. Returns (networks, seeds (P, E))."""
    if isinstance(policies, Network):
        policies = [policies]
    policies = list(policies)
    if not policies or not all(isinstance(p, Network) for p in policies):
        raise ValueError("policies must be a Network or a non-empty sequence of Networks")
    spec = policies[0].spec
    for net in policies[1:]:
        if net.spec != spec:
            raise ValueError(f"all policies must share one architecture: {net.spec} vs {spec}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "batched":
        if spec.env_id not in SUPPORTED_ENV_IDS:
            raise ValueError(
                f"the batched backend supports only {SUPPORTED_ENV_IDS}, the network is for {spec.env_id!r}"
                " (use backend='gymnasium')"
            )
        obs_dim, act_dim = HOPPER.obs_dim, HOPPER.act_dim
    else:
        obs_dim, act_dim = _gym_space_dims(spec.env_id)
    if (spec.obs_dim, spec.act_dim) != (obs_dim, act_dim):
        raise ValueError(
            f"network dims (obs {spec.obs_dim}, act {spec.act_dim}) do not match {spec.env_id}"
            f" (obs {obs_dim}, act {act_dim})"
        )
    seeds = np.asarray(seeds)
    if seeds.dtype == object or not (seeds.size == 0 or np.issubdtype(seeds.dtype, np.integer)):
        raise ValueError(f"seeds must be an integer array, got dtype {seeds.dtype}")
    if seeds.ndim == 1:
        seeds = np.broadcast_to(seeds, (len(policies), seeds.shape[0]))
    if seeds.ndim != 2 or seeds.shape[0] != len(policies) or seeds.shape[1] == 0:
        raise ValueError(
            f"seeds must have shape (E,) or (P, E) with P={len(policies)} and E >= 1, got {np.shape(seeds)}"
        )
    _check_seed_values(seeds)
    if isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer)) or max_steps <= 0:
        raise ValueError(f"max_steps must be a positive integer, got {max_steps!r}")
    if not np.isfinite(action_noise) or action_noise < 0:
        raise ValueError(f"action_noise must be a finite non-negative std, got {action_noise!r}")
    if action_noise > 0 and noise_seed is None:
        raise ValueError("action_noise > 0 needs a noise_seed (results must be a pure function of the inputs)")
    if noise_seed is not None and (not isinstance(noise_seed, (int, np.integer)) or noise_seed < 0):
        raise ValueError(f"noise_seed must be a non-negative int, got {noise_seed!r}")
    if nthread is not None and (not isinstance(nthread, (int, np.integer)) or nthread < 1):
        raise ValueError(f"nthread must be a positive int or None, got {nthread!r}")
    if record not in RECORD_MODES:
        raise ValueError(f"record must be one of {RECORD_MODES}, got {record!r}")
    return policies, np.ascontiguousarray(seeds, dtype=np.int64)


@lru_cache(maxsize=16)
def _gym_space_dims(env_id: str) -> tuple[int, int]:
    import gymnasium as gym

    if env_id not in gym.envs.registry:
        raise ValueError(f"unknown gymnasium env id {env_id!r}")
    env = gym.make(env_id)
    try:
        obs_space, act_space = env.observation_space, env.action_space
    finally:
        env.close()
    if len(obs_space.shape or ()) != 1 or len(act_space.shape or ()) != 1:
        raise ValueError(f"{env_id} must have flat Box observation and action spaces")
    return int(obs_space.shape[0]), int(act_space.shape[0])


class _ActionNoise:
    """Gaussian exploration noise, one generator per episode keyed by (noise_seed, reset seed).

    Keying by the reset seed (not by the episode's position in the batch) is what makes results
    independent of how a population is chunked; policies evaluated on the same reset seed see the
    same noise sequence (common random numbers, as they see the same initial state).
    Draws come in blocks of steps; a generator's stream does not depend on the block size.
    """

    BLOCK = 128

    def __init__(self, std: float, noise_seed: int, seeds: np.ndarray, act_dim: int):
        self.std = np.float32(std)
        self.act_dim = act_dim
        self.rngs = [np.random.Generator(np.random.PCG64(np.random.SeedSequence([noise_seed, int(s)]))) for s in seeds]
        self.blocks = np.zeros((len(seeds), self.BLOCK, act_dim), np.float32)

    def __call__(self, actions: np.ndarray, episodes: np.ndarray, t: int) -> np.ndarray:
        """Noisy actions clip(a + std * N(0, 1), -1, 1) for ``episodes`` at their step ``t``."""
        j = t % self.BLOCK
        if j == 0:
            for k in episodes:
                self.blocks[k] = self.rngs[k].standard_normal((self.BLOCK, self.act_dim), dtype=np.float32)
        noisy = actions + self.std * self.blocks[episodes, j]
        return np.clip(noisy, np.float32(-1.0), np.float32(1.0))


class _Recorder:
    """Collects per-step arrays, then returns them ordered by (policy, episode, step)."""

    def __init__(self, mode: str | None):
        self.mode = mode
        self.parts: list[tuple] = []

    def add(self, episodes, t, obs, actions=None, rewards=None, next_obs=None, terms=None, truncs=None):
        if self.mode == "observations":  # keep only what is returned
            actions = rewards = next_obs = terms = truncs = None
        if self.mode is not None:
            self.parts.append((episodes, np.full(len(episodes), t), obs, actions, rewards, next_obs, terms, truncs))

    def finish(self, n_episodes_per_policy: int, obs_dim: int, act_dim: int) -> dict:
        if self.mode is None:
            return {}
        cols = list(zip(*self.parts)) if self.parts else [[]] * 8
        episodes = np.concatenate(cols[0]) if self.parts else np.zeros(0, np.int64)
        steps = np.concatenate(cols[1]) if self.parts else np.zeros(0, np.int64)
        order = np.lexsort((steps, episodes))  # flat episode index = p * E + e
        owner = np.stack(np.divmod(episodes[order], n_episodes_per_policy), axis=1).astype(np.int64)

        def cat(i, shape, dtype):
            return np.concatenate(cols[i])[order] if self.parts else np.zeros((0, *shape), dtype)

        out = {"observations": cat(2, (obs_dim,), np.float64), "observation_owner": owner}
        if self.mode == "transitions":
            out.update(
                actions=cat(3, (act_dim,), np.float32),
                rewards=cat(4, (), np.float64),
                next_observations=cat(5, (obs_dim,), np.float64),
                terminations=cat(6, (), bool),
                truncations=cat(7, (), bool),
            )
        return out


def evaluate(
    policies: Sequence[Network] | Network,
    seeds: Sequence[int] | np.ndarray,
    *,
    backend: str = "batched",
    nthread: int | None = None,
    max_steps: int = 1000,
    action_noise: float = 0.0,
    noise_seed: int | None = None,
    record: str | None = None,
    progress: bool = False,
) -> EvalResult:
    """Run E episodes of each of P policies (deterministic tanh actions, plus optional noise).

    Args:
        policies: same-architecture networks, or one network.
        seeds: reset seeds, (E,) shared by every policy (paired evaluation) or (P, E).
        backend: "batched" (MuJoCo batch stepping, Hopper-v5 only) or "gymnasium" (reference loop).
        nthread: physics threads for the batched backend (None = os.cpu_count()); results do not
            depend on it. The gymnasium backend runs on one thread.
        max_steps: episode cap (Hopper-v5's TimeLimit is 1000).
        action_noise: std of Gaussian noise added to actions, then clipped to [-1, 1].
        noise_seed: seed of that noise; required when action_noise > 0. An episode's noise stream
            is keyed by (noise_seed, its reset seed), so an episode is a function of (policy,
            reset seed, noise_seed) alone, wherever it sits in the batch.
        record: None, "observations" or "transitions" (see :class:`EvalResult`); flat arrays are
            ordered by (policy, episode, step).
        progress: show a tqdm bar over control steps (batched) or episodes (gymnasium).

    Returns:
        :class:`EvalResult`, with (P, E) returns, lengths and terminated flags.
    """
    policies, seeds = _validate(policies, seeds, backend, nthread, max_steps, action_noise, noise_seed, record)
    run = _evaluate_batched if backend == "batched" else _evaluate_gymnasium
    return run(policies, seeds, nthread, int(max_steps), float(action_noise), noise_seed, record, progress)


def _evaluate_batched(policies, seeds, nthread, max_steps, action_noise, noise_seed, record, progress):
    n_pol, n_ep = seeds.shape
    n = n_pol * n_ep  # episode k = p * E + e lives in state row k
    spec, params = stack_params(policies)
    env = BatchedHopper(n, nthread=nthread)
    noise = _ActionNoise(action_noise, noise_seed, seeds.ravel(), spec.act_dim) if action_noise > 0 else None
    inference = _StackedInference(spec, params, n_pol, n_ep)
    recorder = _Recorder(record)
    returns = np.zeros(n)
    lengths = np.full(n, max_steps, np.int64)
    terminated = np.zeros(n, bool)
    # The active set: episode indices (sorted), with their observations and returns so far in the
    # same order. All episodes start together, so an active episode's length is always t + 1.
    active = np.arange(n)
    obs = env.reset(seeds.ravel())
    ret = np.zeros(n)
    bar = _progress_bar(progress, max_steps, f"evaluate {n_pol}x{n_ep}")
    for t in range(max_steps):
        actions = inference(obs, active)
        if noise is not None:
            actions = noise(actions, active, t)
        next_obs, rewards, term = env.step(actions, active)
        ret += rewards
        if record is not None:
            recorder.add(active, t, obs, actions, rewards, next_obs, term, ~term & (t + 1 == max_steps))
        obs = next_obs
        bar.update(1)
        if term.any():
            # compaction: finished episodes cost no more physics or inference
            done = active[term]
            returns[done], lengths[done], terminated[done] = ret[term], t + 1, True
            keep = ~term
            active, obs, ret = active[keep], obs[keep], ret[keep]
            if len(active) == 0:
                break
    returns[active] = ret  # episodes cut by the cap
    bar.close()
    return EvalResult(
        returns=returns.reshape(n_pol, n_ep),
        lengths=lengths.reshape(n_pol, n_ep),
        terminated=terminated.reshape(n_pol, n_ep),
        **recorder.finish(n_ep, spec.obs_dim, spec.act_dim),
    )


class _StackedInference:
    """Batched policy forward that gives every episode the bits ``Network.act(obs)`` would.

    A matrix-matrix product's rounding depends on how many rows share the call (BLAS picks other
    kernels and blockings), so a batch of 10 observations per policy does not reproduce 10 single
    calls. A matrix-*vector* product per policy does: we call the stacked forward with one
    observation per policy, ``(P', 1, obs_dim)``, once per episode slot e (episode k = p * E + e).
    Per policy that is the same gemv ``Network.act`` runs on one observation, so the batched and
    gymnasium backends agree bitwise and an episode's actions don't depend on the rest of the batch.

    For each slot, the parameters of the policies still running there are gathered, and gathered
    again only when that set shrinks below 3/4 of the gathered one (rows of finished policies are
    computed on zeros and ignored until then): few copies, little wasted arithmetic.
    """

    def __init__(self, spec: NetworkSpec, params: dict, n_pol: int, n_ep: int):
        self.spec, self.params, self.n_ep = spec, params, n_ep
        self.gathered = [(np.arange(n_pol), params) for _ in range(n_ep)]

    def __call__(self, obs: np.ndarray, active: np.ndarray) -> np.ndarray:
        """Actions (k, act_dim) float32 for observations (k, obs_dim) of episodes ``active`` (sorted)."""
        out = np.empty((len(active), self.spec.act_dim), np.float32)
        pol_of, slot_of = np.divmod(active, self.n_ep)
        for e in range(self.n_ep):
            rows = np.flatnonzero(slot_of == e) if self.n_ep > 1 else slice(None)
            pols = pol_of[rows]
            if len(pols) == 0:
                continue
            have, params = self.gathered[e]
            if len(pols) < 0.75 * len(have):
                have, params = pols, {k: v[pols] for k, v in self.params.items()}
                self.gathered[e] = (have, params)
            if len(pols) == len(have):  # every gathered policy is running: no scatter needed
                out[rows] = forward(self.spec, params, obs[rows, None, :])[:, 0]
            else:
                where = np.searchsorted(have, pols)  # both sorted; pols is a subset of have
                x = np.zeros((len(have), 1, self.spec.obs_dim))
                x[where, 0] = obs[rows]
                out[rows] = forward(self.spec, params, x)[where, 0]
        return out


def _progress_bar(enabled: bool, total: int, desc: str):
    if enabled:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit="step")

    class _Null:
        def update(self, n):
            pass

        def close(self):
            pass

    return _Null()


# --------------------------------------------------------------------------- gymnasium reference


def _evaluate_gymnasium(policies, seeds, nthread, max_steps, action_noise, noise_seed, record, progress):
    """The reference: one ``gymnasium.make(env_id)``, episodes one after another, ``Network.act``."""
    import gymnasium as gym

    n_pol, n_ep = seeds.shape
    spec = policies[0].spec
    env = gym.make(spec.env_id, max_episode_steps=max_steps)
    noise = _ActionNoise(action_noise, noise_seed, seeds.ravel(), spec.act_dim) if action_noise > 0 else None
    returns = np.zeros((n_pol, n_ep))
    lengths = np.zeros((n_pol, n_ep), np.int64)
    terminated = np.zeros((n_pol, n_ep), bool)
    recorder = _Recorder(record)
    bar = _progress_bar(progress, n_pol * n_ep, "episodes")
    try:
        for p, net in enumerate(policies):
            for e in range(n_ep):
                k = p * n_ep + e
                obs, _ = env.reset(seed=int(seeds[p, e]))
                ret, t, done = 0.0, 0, False
                while not done:
                    action = net.act(obs).astype(np.float32)
                    if noise is not None:
                        action = noise(action[None], np.array([k]), t)[0]
                    next_obs, reward, term, trunc, _ = env.step(action)
                    ret += float(reward)
                    recorder.add(np.array([k]), t, obs[None], action[None], np.array([float(reward)]),
                                 next_obs[None], np.array([term]), np.array([trunc and not term]))
                    obs, t, done = next_obs, t + 1, term or trunc
                returns[p, e], lengths[p, e], terminated[p, e] = ret, t, term
                bar.update(1)
    finally:
        env.close()
        bar.close()
    return EvalResult(returns, lengths, terminated, **recorder.finish(n_ep, spec.obs_dim, spec.act_dim))
