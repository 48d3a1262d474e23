"""Parity of the batched Hopper-v5 evaluator with gymnasium, purity, and argument checks.

Tolerance: none. The batched physics gives gymnasium's observations, rewards and terminations
bit for bit (max abs difference 0.0, over full episodes, both terminating and 1000-step ones), and
``evaluate(backend="batched")`` gives the gymnasium backend's returns, lengths and recorded
transitions bit for bit, because the batched policy forward is computed one observation per policy
per call (the same matrix-vector products ``Network.act`` runs on one observation). The tests
therefore assert exact equality.
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from nnae_utils.policies import Network, NetworkSpec
from nnae_utils.rollouts import (
    HOPPER_ENV_ID,
    SUPPORTED_ENV_IDS,
    BatchedHopper,
    EvalResult,
    evaluate,
    reset_states,
)

SPEC = NetworkSpec(obs_dim=11, act_dim=3, hidden=(64, 64))
KP, KD = 10.0, 0.5  # a joint PD controller that keeps Hopper standing for 1000 steps


def pd_action(obs: np.ndarray) -> np.ndarray:
    return np.clip(-KP * obs[2:5] - KD * obs[8:11], -1, 1).astype(np.float32)


def standing_network() -> Network:
    """A relu network computing tanh(-KP q - KD qdot) exactly (x = relu(x) - relu(-x)): survives."""
    spec = NetworkSpec(obs_dim=11, act_dim=3, hidden=(22, 22))
    eye = np.eye(11, dtype=np.float32)
    gains = np.zeros((3, 11), np.float32)
    gains[:, 2:5] = -KP * np.eye(3)
    gains[:, 8:11] = -KD * np.eye(3)
    params = {
        "layers.0.weight": np.concatenate([eye, -eye]),
        "layers.0.bias": np.zeros(22, np.float32),
        "layers.1.weight": np.eye(22, dtype=np.float32),
        "layers.1.bias": np.zeros(22, np.float32),
        "layers.2.weight": np.concatenate([gains, -gains], axis=1),
        "layers.2.bias": np.zeros(3, np.float32),
    }
    return Network(spec, params)


def gym_episode(seed: int, actions=None, closed_loop_noise: float = 0.0, noise_seed: int = 0):
    """One gymnasium Hopper-v5 episode; open loop (actions given) or PD + uniform noise."""
    env = gym.make(HOPPER_ENV_ID)
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(noise_seed)
    observations, rewards, terms, applied = [obs], [], [], []
    for t in range(1000):
        if actions is not None:
            a = actions[t]
        else:
            a = np.clip(pd_action(obs) + rng.uniform(-closed_loop_noise, closed_loop_noise, 3), -1, 1)
            a = a.astype(np.float32)
        obs, reward, term, trunc, _ = env.step(a)
        observations.append(obs)
        rewards.append(reward)
        terms.append(term)
        applied.append(a)
        if term or trunc:
            break
    env.close()
    return np.array(observations), np.array(rewards), np.array(terms), np.array(applied, np.float32)


def test_reset_states_are_gymnasium_states():
    env = gym.make(HOPPER_ENV_ID)
    seeds = [0, 1, 7, 12345, 2**40]
    qpos, qvel = reset_states(seeds)
    for i, seed in enumerate(seeds):
        env.reset(seed=seed)
        assert np.array_equal(env.unwrapped.data.qpos, qpos[i])
        assert np.array_equal(env.unwrapped.data.qvel, qvel[i])
    env.close()


def test_open_loop_parity_full_episodes():
    """Same initial states, same action sequences: identical observations, rewards, terminations.

    Four episodes stepped together (with compaction as they end, on 2 threads): two PD-controlled
    episodes with noise that reach the 1000-step cap, one with random actions and one with zero
    actions, which both terminate (the zero one after ~140 steps, after falling slowly).
    """
    seeds = [0, 1, 2, 3]
    episodes = [
        gym_episode(0, closed_loop_noise=0.3, noise_seed=10),
        gym_episode(1, closed_loop_noise=0.1, noise_seed=11),
        gym_episode(2, actions=np.random.default_rng(2).uniform(-1, 1, (1000, 3)).astype(np.float32)),
        gym_episode(3, actions=np.zeros((1000, 3), np.float32)),
    ]
    lengths = [len(r) for _, r, _, _ in episodes]
    assert lengths[0] == lengths[1] == 1000 and not episodes[0][2][-1]
    assert lengths[2] < 1000 and lengths[3] < 1000 and episodes[2][2][-1] and episodes[3][2][-1]

    env = BatchedHopper(4, nthread=2)
    obs0 = env.reset(seeds)
    for k, (obs, *_rest) in enumerate(episodes):
        assert np.array_equal(obs0[k], obs[0])
    active = np.arange(4)
    for t in range(1000):
        actions = np.stack([episodes[k][3][t] for k in active])
        obs, rewards, terms = env.step(actions, active)
        for j, k in enumerate(active):
            g_obs, g_rew, g_term, _ = episodes[k]
            assert np.array_equal(obs[j], g_obs[t + 1]), (k, t, np.abs(obs[j] - g_obs[t + 1]).max())
            assert rewards[j] == g_rew[t], (k, t)
            assert terms[j] == g_term[t], (k, t)
        active = active[[t + 1 < lengths[k] for k in active]]
        if len(active) == 0:
            break


def _nets():
    return [
        Network.random(SPEC, seed=1),
        Network.random(SPEC, seed=2),
        Network.random(NetworkSpec(11, 3, (32, 32), activation="tanh", layer_norm="after", obs_norm=True), seed=3),
        Network.random(NetworkSpec(11, 3, (16,), activation="elu", layer_norm="before"), seed=4),
    ]


def _with_obs_norm(net: Network) -> Network:
    if net.spec.obs_norm:
        rng = np.random.default_rng(0)
        net.params["obs_mean"] = rng.normal(0, 0.1, 11).astype(np.float32)
        net.params["obs_std"] = rng.uniform(0.5, 2.0, 11).astype(np.float32)
    return net


def assert_results_equal(a: EvalResult, b: EvalResult):
    for name in a.__dataclass_fields__:
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype and np.array_equal(x, y), name


@pytest.mark.parametrize("net_index", range(4))
def test_evaluate_matches_gymnasium_backend(net_index):
    """Returns are *equal* (not close) between backends, with and without noise."""
    net = _with_obs_norm(_nets()[net_index])
    nets = [net, Network.random(net.spec, seed=99)]
    for kwargs in [{}, dict(action_noise=0.2, noise_seed=5)]:
        a = evaluate(nets, [3, 4], backend="batched", record="transitions", **kwargs)
        b = evaluate(nets, [3, 4], backend="gymnasium", record="transitions", **kwargs)
        assert_results_equal(a, b)


def test_standing_policy_reaches_the_cap_identically():
    stand = standing_network()
    nets = [stand, Network.random(stand.spec, seed=0)]
    a = evaluate(nets, [5, 6], backend="batched", record="transitions")
    b = evaluate(nets, [5, 6], backend="gymnasium", record="transitions")
    assert_results_equal(a, b)
    assert np.array_equal(a.lengths[0], [1000, 1000]) and not a.terminated[0].any()
    assert a.terminated[1].all() and a.env_steps == a.lengths.sum() == len(a.rewards)
    assert a.truncations.sum() == 2 and a.terminations.sum() == 2
    # the flat arrays are ordered by (policy, episode, step) and consistent with each other
    first = np.flatnonzero((a.observation_owner[:, 0] == 0) & (a.observation_owner[:, 1] == 1))
    assert np.array_equal(a.observations[first[1:]], a.next_observations[first[:-1]])
    capped = evaluate(nets, [5, 6], max_steps=50, record="transitions")
    assert np.array_equal(capped.lengths[0], [50, 50]) and not capped.terminated[0].any()
    assert capped.truncations.sum() == 2


def test_pure_across_threads_and_chunks():
    nets = [_with_obs_norm(Network.random(SPEC, seed=s)) for s in range(6)]
    seeds = np.arange(12).reshape(6, 2)
    kw = dict(action_noise=0.3, noise_seed=1, record="transitions")
    one = evaluate(nets, seeds, nthread=1, **kw)
    two = evaluate(nets, seeds, nthread=2, **kw)
    assert_results_equal(one, two)
    parts = [evaluate(nets[:1], seeds[:1], **kw), evaluate(nets[1:4], seeds[1:4], **kw), evaluate(nets[4:], seeds[4:], **kw)]
    for name in ("returns", "lengths", "terminated", "observations", "actions", "rewards", "terminations"):
        assert np.array_equal(getattr(one, name), np.concatenate([getattr(p, name) for p in parts])), name
    owners = np.concatenate([p.observation_owner + [off, 0] for p, off in zip(parts, [0, 1, 4])])
    assert np.array_equal(one.observation_owner, owners)
    # same seeds, same noise seed: same episode; a different noise seed changes it
    again = evaluate(nets, seeds, **kw)
    assert_results_equal(one, again)
    other = evaluate(nets, seeds, action_noise=0.3, noise_seed=2)
    assert not np.array_equal(one.returns, other.returns)


def test_observations_record_and_single_network():
    net = Network.random(SPEC, seed=3)
    res = evaluate(net, [0, 1, 2], record="observations")
    assert res.returns.shape == (1, 3) and res.actions is None
    assert res.observations.shape == (res.env_steps, 11) and res.observations.dtype == np.float64
    assert np.array_equal(np.bincount(res.observation_owner[:, 1]), res.lengths[0])
    assert HOPPER_ENV_ID in SUPPORTED_ENV_IDS


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(seeds=[[0, 1]] * 3), "seeds must have shape"),
        (dict(seeds=[]), "seeds must have shape"),
        (dict(seeds=[0.5]), "integer"),
        (dict(seeds=[-1]), "non-negative"),
        (dict(max_steps=0), "max_steps"),
        (dict(action_noise=-0.1), "action_noise"),
        (dict(action_noise=0.1), "noise_seed"),
        (dict(backend="jax"), "backend"),
        (dict(record="everything"), "record"),
        (dict(nthread=0), "nthread"),
    ],
)
def test_bad_arguments(kwargs, match):
    nets = [Network.random(SPEC, seed=0)] * 2
    args = {"seeds": [0, 1], **kwargs}
    with pytest.raises(ValueError, match=match):
        evaluate(nets, **args)


def test_bad_env_and_dims():
    walker = Network.random(NetworkSpec(11, 3, env_id="Walker2d-v5"), seed=0)
    with pytest.raises(ValueError, match="batched backend supports only"):
        evaluate([walker], [0])
    with pytest.raises(ValueError, match="do not match"):
        evaluate([walker], [0], backend="gymnasium")  # Walker2d-v5 has 17 obs, 6 actions
    with pytest.raises(ValueError, match="unknown gymnasium env id"):
        evaluate([Network.random(NetworkSpec(11, 3, env_id="NoSuchEnv-v0"), seed=0)], [0], backend="gymnasium")
    with pytest.raises(ValueError, match="do not match"):
        evaluate([Network.random(NetworkSpec(12, 3), seed=0)], [0])
    with pytest.raises(ValueError, match="same architecture|share one architecture"):
        evaluate([Network.random(SPEC, seed=0), Network.random(NetworkSpec(11, 3, (8,)), seed=0)], [0])


def test_state_row_layout_matches_mujoco_batch():
    """BatchedHopper reads qpos/qvel/ctrl as columns of mujoco.batch's state rows."""
    env = BatchedHopper(3, nthread=1)
    env.reset([0, 1, 2])
    assert np.array_equal(env.qpos, env.batch.bind("qpos")) and np.array_equal(env.qvel, env.batch.bind("qvel"))
    env.ctrl[:] = [[0.1, 0.2, 0.3]] * 3
    assert np.array_equal(env.batch.bind("ctrl"), env.ctrl)
