"""TD3: tiny smoke runs, exact resume, checkpoint/buffer files, the lost-buffer path, validation."""
from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from nnae_utils.policies import load_network
from nnae_utils.td3 import (
    ReplayBuffer,
    TD3Config,
    TD3Learner,
    TwinCritic,
    load_critic,
    selection_seeds,
    train_td3,
)

# Tiny but complete: warm-up, updates (actor and targets too), evaluations, checkpoints.
TINY = TD3Config(
    seed=3, total_steps=1200, learning_starts=300, batch_size=32, buffer_size=5_000,
    actor_hidden=(16, 16), critic_hidden=(32, 32), eval_every=300, eval_episodes=1, eval_max_steps=100,
    checkpoint_every=400,
)


def _actor_state(run_dir):
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["learner"]["actor"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("td3") / "straight"
    run = train_td3(TINY, run_dir, progress=False)
    return run_dir, run


def test_smoke_run_writes_everything(straight):
    run_dir, run = straight
    assert run.finished and run.step == TINY.total_steps
    curve = pd.read_csv(run_dir / "curve.csv")
    assert list(curve["step"]) == [0, 300, 600, 900, 1200]
    assert set(curve.columns) >= {"step", "return_mean", "return_std", "episodes", "wall_s", "updates_per_s"}
    assert (curve["episodes"] == 1).all() and curve["updates_per_s"].iloc[-1] > 0
    snap = load_network(run_dir / "snapshots" / "step_0001200.safetensors")
    assert snap.spec.hidden == (16, 16) and snap.spec.env_id == "Hopper-v5"
    assert snap.extra_metadata["run_seed"] == "3" and snap.extra_metadata["step"] == "1200"
    assert float(snap.extra_metadata["eval_return_mean"]) == pytest.approx(curve["return_mean"].iloc[-1], abs=1e-5)
    assert json.loads(snap.extra_metadata["eval_seeds"]) == selection_seeds(TINY).tolist() == [30_000]
    # the snapshot is the checkpoint's actor
    for name, tensor in _actor_state(run_dir).items():
        np.testing.assert_array_equal(snap.params[name], tensor.numpy())
    critic, meta = load_critic(run_dir / "critic.safetensors")
    assert isinstance(critic, TwinCritic) and json.loads(meta["td3_config"])["seed"] == 3
    prov = json.loads((run_dir / "provenance.json").read_text())
    assert prov["finished"] and prov["config"] == TINY.to_dict() and prov["buffer_refilled_at_steps"] == []
    assert {"torch", "gymnasium", "mujoco", "numpy", "python"} <= set(prov["versions"])
    assert prov["core_seconds"] > 0 and prov["total_wall_s"] > 0 and prov["start_time"] and prov["end_time"]


def test_checkpoint_loads_weights_only(straight):
    run_dir, _ = straight
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == TINY.total_steps
    assert {"actor", "actor_target", "critic", "critic_target", "actor_opt", "critic_opt"} <= set(ckpt["learner"])
    assert ckpt["learner"]["n_updates"] == TINY.total_steps - TINY.learning_starts
    assert ckpt["numpy_rng"]["bit_generator"] == "PCG64" and ckpt["torch_rng"].dtype == torch.uint8
    buf = ReplayBuffer.load(run_dir / "buffer.npz")
    assert buf.n_added == ckpt["buffer_n_added"] == TINY.total_steps


@pytest.mark.parametrize("stop", [500, 757])  # 757: mid-episode (MuJoCo state restored), no checkpoint mark
def test_exact_resume(straight, tmp_path, stop):
    ref_dir, _ = straight
    run_dir = tmp_path / "resumed"
    first = train_td3(TINY, run_dir, stop_at_step=stop, progress=False)
    assert not first.finished and first.step == stop
    assert not (run_dir / "critic.safetensors").exists()
    second = train_td3(TINY, run_dir, progress=False)
    assert second.finished
    ref, res = _actor_state(ref_dir), _actor_state(run_dir)
    for name in ref:
        assert torch.equal(ref[name], res[name]), name
    ref_curve, res_curve = pd.read_csv(ref_dir / "curve.csv"), pd.read_csv(run_dir / "curve.csv")
    assert list(ref_curve["step"]) == list(res_curve["step"])
    np.testing.assert_array_equal(ref_curve["return_mean"].to_numpy(), res_curve["return_mean"].to_numpy())
    prov = json.loads((run_dir / "provenance.json").read_text())
    assert [s["start_step"] for s in prov["sessions"]] == [0, stop]


def test_lost_buffer_refills_and_records(tmp_path):
    cfg = dataclasses.replace(TINY, total_steps=900)
    run_dir = tmp_path / "moved"
    train_td3(cfg, run_dir, stop_at_step=600, progress=False)
    (run_dir / "buffer.npz").unlink()  # a new machine: weights and counters came along, the buffer did not
    run = train_td3(cfg, run_dir, progress=False)
    assert run.finished and list(run.curve["step"]) == [0, 300, 600, 900]
    prov = json.loads((run_dir / "provenance.json").read_text())
    assert prov["buffer_refilled_at_steps"] == [600]
    assert prov["buffer_refill_env_steps"] == cfg.learning_starts
    buf = ReplayBuffer.load(run_dir / "buffer.npz")
    assert buf.n_added == cfg.learning_starts + 300  # refill + the remaining steps, not the lost 600
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert ckpt["learner"]["n_updates"] == 900 - cfg.learning_starts  # refill steps make no updates


def test_other_config_in_run_dir_is_refused(straight, tmp_path):
    run_dir = tmp_path / "copy"
    shutil.copytree(straight[0], run_dir)
    with pytest.raises(ValueError, match="different config.*gamma"):
        train_td3(dataclasses.replace(TINY, gamma=0.9), run_dir, progress=False)
    with pytest.raises(ValueError, match="beyond total_steps"):
        train_td3(dataclasses.replace(TINY, total_steps=600), run_dir, progress=False)


def test_unknown_env_fails_before_building(tmp_path):
    with pytest.raises(ValueError, match="unknown gymnasium environment id 'Hoper-v5'.*Hopper"):
        train_td3(TD3Config(env_id="Hoper-v5"), tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_size": 0}, "batch_size must be > 0"),
        ({"total_steps": -1}, "total_steps must be > 0"),
        ({"learning_starts": -5}, "learning_starts must be >= 0"),
        ({"gamma": 1.5}, r"gamma must lie in \[0, 1\]"),
        ({"tau": 0.0}, "tau must be > 0"),
        ({"tau": 2.0}, r"tau must lie in \(0, 1\]"),
        ({"policy_delay": 0}, "policy_delay must be > 0"),
        ({"actor_hidden": ()}, "actor_hidden must be a non-empty"),
        ({"critic_hidden": (256, -1)}, "critic_hidden must be a non-empty"),
        ({"actor_activation": "gelu"}, "actor_activation must be one of"),
        ({"seed": 100}, r"seed must lie in \[0, 100\)"),
        ({"batch_size": 2.5}, "batch_size must be an int"),
        ({"actor_lr": float("nan")}, "actor_lr must be finite"),
        ({"eval_episodes": 20_000}, "eval_episodes must be <= 10000"),
        ({"env_id": ""}, "env_id must be a non-empty string"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TD3Config(**kwargs)


def test_config_round_trip_and_frozen():
    cfg = TD3Config(actor_hidden=[32, 32], seed=7)
    assert cfg.actor_hidden == (32, 32)
    assert TD3Config.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 1  # type: ignore[misc]
    with pytest.raises(ValueError, match="unknown TD3Config fields"):
        TD3Config.from_dict({"lr": 1.0})


def test_every_config_field_has_a_docstring():
    import ast
    import inspect

    body = ast.parse(inspect.getsource(TD3Config)).body[0].body
    documented = {
        node.target.id
        for node, after in zip(body, body[1:])
        if isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
    }
    assert documented == {f.name for f in dataclasses.fields(TD3Config)}


def test_buffer_round_trip_and_wrap(tmp_path):
    rng = np.random.default_rng(0)
    buf = ReplayBuffer(obs_dim=3, act_dim=2, capacity=10)
    for i in range(7):
        buf.add(rng.normal(size=3), rng.uniform(-1, 1, 2), float(i), rng.normal(size=3), i == 6)
    buf.add_batch(rng.normal(size=(5, 3)), rng.uniform(-1, 1, (5, 2)), np.arange(7, 12), rng.normal(size=(5, 3)),
                  np.zeros(5))
    assert len(buf) == 10 and buf.ptr == 2 and buf.n_added == 12
    assert sorted(buf.rewards[:, 0]) == list(range(2, 12))  # 0 and 1 were overwritten
    buf.save(tmp_path / "b.npz")
    with np.load(tmp_path / "b.npz", allow_pickle=False) as data:
        assert data["obs"].dtype == np.float32
    back = ReplayBuffer.load(tmp_path / "b.npz")
    assert (back.ptr, back.size, back.n_added, back.capacity) == (2, 10, 12, 10)
    for name in ("obs", "actions", "rewards", "next_obs", "terminated"):
        np.testing.assert_array_equal(getattr(back, name), getattr(buf, name))
    a, b = buf.sample(6, np.random.default_rng(1)), back.sample(6, np.random.default_rng(1))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="empty"):
        ReplayBuffer(3, 2, 4).sample(1, rng)


def test_learner_state_round_trip_is_exact():
    torch.manual_seed(0)
    spec = TINY.actor_spec(11, 3)
    a = TD3Learner.from_config(TINY, 11, 3)
    buf = ReplayBuffer(11, 3, 100)
    rng = np.random.default_rng(0)
    buf.add_batch(rng.normal(size=(50, 11)), rng.uniform(-1, 1, (50, 3)), rng.normal(size=50), rng.normal(size=(50, 11)),
                  rng.uniform(size=50) < 0.1)
    for _ in range(3):
        a.update(buf.sample(8, rng))
    b = TD3Learner.from_config(TINY, 11, 3)
    b.load_state_dict(a.state_dict())
    batch = buf.sample(8, rng)
    state = torch.get_rng_state()
    la = a.update(batch)
    torch.set_rng_state(state)
    lb = b.update(batch)
    assert la["critic_loss"] == lb["critic_loss"] and np.isfinite(la["actor_loss"])  # 4th update moves the actor
    np.testing.assert_array_equal(a.actor_network().flat(), b.actor_network().flat())
    assert a.actor_network().spec == spec
    assert a.act(np.zeros(11)).shape == (3,) and np.all(np.abs(a.act(np.ones((4, 11)))) <= 1)
    assert set(a.critic_state()) == set(a.critic.state_dict())


class _Crash(RuntimeError):
    pass


def test_crash_resumes_from_last_episode_boundary_checkpoint(straight, tmp_path):
    """A process killed after a periodic checkpoint: later curve rows and snapshots are redone identically."""
    run_dir = tmp_path / "crashed"

    def crash_at_900(row):
        if row["step"] == 900:
            raise _Crash

    with pytest.raises(_Crash):
        train_td3(TINY, run_dir, progress=False, on_eval=crash_at_900)
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert 800 <= ckpt["step"] < 900 and ckpt["obs"] is None  # written at the first episode end after 800
    assert list(pd.read_csv(run_dir / "curve.csv")["step"]) == [0, 300, 600, 900]
    run = train_td3(TINY, run_dir, progress=False)
    assert run.finished
    ref = pd.read_csv(straight[0] / "curve.csv")
    np.testing.assert_array_equal(ref["return_mean"].to_numpy(), run.curve["return_mean"].to_numpy())
    ref_actor, actor = _actor_state(straight[0]), _actor_state(run_dir)
    assert all(torch.equal(ref_actor[k], actor[k]) for k in ref_actor)


def test_run_dir_in_use_is_refused(tmp_path):
    from nnae_utils.td3 import lock_run_dir

    run_dir = tmp_path / "busy"
    run_dir.mkdir()
    held = lock_run_dir(run_dir)  # as another process training there would hold it
    try:
        with pytest.raises(RuntimeError, match="in use by another training process"):
            train_td3(TINY, run_dir, progress=False)
    finally:
        held.close()
    assert not (run_dir / "checkpoint.pt").exists()


def test_done_when_ends_the_run_as_finished(tmp_path):
    from nnae_utils.zoo import EnoughCandidates

    rule = EnoughCandidates(threshold=-1e9, count=3, min_step=300)  # every evaluation from step 300 on passes
    run_dir = tmp_path / "early"
    run = train_td3(TINY, run_dir, progress=False, done_when=rule)
    assert run.finished and run.step == 900 < TINY.total_steps  # evaluations at 300, 600, 900
    assert list(pd.read_csv(run_dir / "curve.csv")["step"]) == [0, 300, 600, 900]
    assert (run_dir / "critic.safetensors").is_file()
    prov = json.loads((run_dir / "provenance.json").read_text())
    assert prov["finished"] and prov["done_early"]["step"] == 900 and "EnoughCandidates" in prov["done_early"]["rule"]
    again = train_td3(TINY, run_dir, progress=False, done_when=rule)  # resumed: already done, no step taken
    assert again.finished and again.step == 900
    longer = train_td3(TINY, run_dir, progress=False, done_when=EnoughCandidates(-1e9, 4, 300))  # a stricter rule goes on
    assert longer.step == 1200


def test_update_is_stable_baselines3s_update(monkeypatch):
    """Our TD3 update against a reference implementation: stable-baselines3's TD3, built as
    benchmarks/td3_vs_sb3.py builds it, given our initial weights, the same minibatches and the same
    torch seed (target-policy noise), must end up with the same weights after several updates
    (actor steps and target updates included), up to float rounding."""
    import sys

    import gymnasium as gym

    pytest.importorskip("stable_baselines3")
    from stable_baselines3.common.logger import Logger

    from nnae_utils.pipeline import PROJECT_ROOT
    from nnae_utils.td3 import Batch

    monkeypatch.syspath_prepend(str(PROJECT_ROOT))
    monkeypatch.setattr(sys, "argv", ["pytest"])
    from benchmarks.td3_vs_sb3 import make_sb3

    torch.set_num_threads(1)
    cfg = TD3Config(seed=0, actor_hidden=(16, 16), critic_hidden=(32, 32))
    torch.manual_seed(0)
    ours = TD3Learner.from_config(cfg, 11, 3)
    ref = make_sb3(cfg, gym.make(cfg.env_id), buffer_size=1000)
    ref.set_logger(Logger(folder=None, output_formats=[]))

    def linears(seq):
        return [m for m in seq if isinstance(m, torch.nn.Linear)]

    def copy_into(dst, src_pairs):
        for d, (w, b) in zip(linears(dst), src_pairs):
            d.weight.data.copy_(w)
            d.bias.data.copy_(b)

    actor = [(layer.weight.data, layer.bias.data) for layer in ours.actor.layers]
    copy_into(ref.actor.mu, actor)
    copy_into(ref.actor_target.mu, actor)
    for i, q in enumerate([ours.critic.q1, ours.critic.q2]):
        pairs = [(m.weight.data, m.bias.data) for m in linears(q)]
        copy_into(ref.critic.q_networks[i], pairs)
        copy_into(ref.critic_target.q_networks[i], pairs)

    rng = np.random.default_rng(1)
    n = 1000
    obs, next_obs = rng.normal(size=(n, 11)), rng.normal(size=(n, 11))
    act = rng.uniform(-1, 1, (n, 3)).astype(np.float32)
    rew = rng.normal(size=n).astype(np.float32)
    term = (rng.uniform(size=n) < 0.1).astype(np.float32)
    buf = ref.replay_buffer
    buf.observations[:, 0], buf.next_observations[:, 0], buf.actions[:, 0] = obs, next_obs, act
    buf.rewards[:, 0], buf.dones[:, 0], buf.full = rew, term, True

    def max_diff(a, b):
        return max((x - y).abs().max().item() for x, y in zip(a, b))

    for k in range(6):  # policy_delay 2: three actor and target updates
        idx = np.random.default_rng(10 + k).integers(0, n, 256)
        draws = iter([idx, np.zeros(256, int)])  # SB3's buffer draws the batch, then the env of each (one env)
        with monkeypatch.context() as m:
            m.setattr(np.random, "randint", lambda *a, **kw: next(draws))
            torch.manual_seed(100 + k)
            ref.train(gradient_steps=1, batch_size=256)
        torch.manual_seed(100 + k)
        ours.update(Batch(obs[idx].astype(np.float32), act[idx], rew[idx, None], next_obs[idx].astype(np.float32),
                          term[idx, None]))
    assert ref._n_updates == ours.n_updates == 6
    assert max_diff(ours.actor.parameters(), [p for m in linears(ref.actor.mu) for p in (m.weight, m.bias)]) < 1e-5
    assert max_diff(ours.actor_target.parameters(), [p for m in linears(ref.actor_target.mu) for p in (m.weight, m.bias)]) < 1e-5
    assert max_diff(ours.critic.parameters(), ref.critic.parameters()) < 1e-5
    assert max_diff(ours.critic_target.parameters(), ref.critic_target.parameters()) < 1e-5
    assert max_diff(ours.actor.parameters(), [p for m in linears(ref.actor_target.mu) for p in (m.weight, m.bias)]) > 1e-4  # it learned
