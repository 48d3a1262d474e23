"""Run state saved and loaded in one place (TD3State, CERL's HybridState), and each run's total compute
reported by a rerun that finds its runs finished (issue 28)."""
import json

import gymnasium as gym
import numpy as np
import pytest
import torch

from nnae_utils import cerl
from nnae_utils import evolution as evo
from nnae_utils.genomes import WeightGenome
from nnae_utils.policies import NetworkSpec
from nnae_utils.td3 import CHECKPOINT_FILE, TD3Config, TD3State, train_td3

torch.set_num_threads(1)
SPEC = NetworkSpec(obs_dim=11, act_dim=3, hidden=(4,))
TINY = TD3Config(seed=4, total_steps=700, learning_starts=200, batch_size=16, buffer_size=2_000, actor_hidden=(8,),
                 critic_hidden=(16,), eval_every=350, eval_episodes=1, eval_max_steps=30, checkpoint_every=10_000)


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b or (a != a and b != b)  # NaN == NaN here


def test_td3_state_reads_and_writes_the_checkpoint_format_unchanged(tmp_path):
    """A checkpoint read, restored and saved again (mid-episode: with the env's MuJoCo state) is the same file content."""
    train_td3(TINY, tmp_path / "a", stop_at_step=433, progress=False)  # stopped mid-episode
    saved = TD3State.read(tmp_path / "a", TINY)
    assert saved["version"] == 1 and saved["obs"] is not None and saved["env_state"] is not None
    state = TD3State.restore(saved, TINY, 11, 3)
    assert (state.step, state.learner.n_updates) == (433, 433 - TINY.learning_starts)
    env = gym.make(TINY.env_id)
    try:
        assert state.resume_episode(env, TINY)  # the episode, back in a fresh env
        buffer = state.restore_buffer(tmp_path / "a", TINY)
        assert buffer is not None and buffer.n_added == 433
        (tmp_path / "b").mkdir()
        state.save(tmp_path / "b", TINY, env, buffer)
    finally:
        env.close()
    a = torch.load(tmp_path / "a" / CHECKPOINT_FILE, weights_only=True)
    b = torch.load(tmp_path / "b" / CHECKPOINT_FILE, weights_only=True)
    assert sorted(a) == sorted(b) and all(_same(a[k], b[k]) for k in a), [k for k in a if not _same(a[k], b[k])]


def test_td3_state_refuses_another_runs_checkpoint(tmp_path):
    train_td3(TINY, tmp_path, stop_at_step=250, progress=False)
    with pytest.raises(ValueError, match="different config"):
        TD3State.read(tmp_path, TD3Config(**{**TINY.to_dict(), "tau": 0.01}))
    assert TD3State.read(tmp_path / "none", TINY) is None


def test_hybrid_state_is_log_json_both_ways(tmp_path):
    cfg = cerl.CERLConfig(budget_steps=300, pop_size=3, gammas=(0.99,), learner_episodes=1, elite_candidates=1,
                          elite_episodes=1, report_episodes=1, max_steps=20, critic_hidden=(8,), batch_size=8,
                          learning_starts=20, sigma=0.05)
    res = cerl.run_cerl(cerl.CERLRun("r", cfg, WeightGenome(SPEC), checkpoint_dir=tmp_path))
    on_disk = json.loads((tmp_path / cerl.CHECKPOINT_DIR / "log.json").read_text())
    text = json.dumps(on_disk, sort_keys=True)  # as JSON: a migrant's distance is NaN without probe states
    assert json.dumps(res.log, sort_keys=True) == text
    assert json.dumps(cerl.HybridState.from_log(on_disk).to_log(), sort_keys=True) == text
    hybrid = cerl.HybridState.from_log(on_disk)
    assert hybrid.manager.allocation == [0] and hybrid.manager.visits == [1 + res.state.generation]
    assert hybrid.population_steps + hybrid.learner_steps + hybrid.elite_steps == res.state.env_steps
    state, loaded, payload, buffer = cerl.load_checkpoint(tmp_path, cerl.CERLRun("r", cfg, WeightGenome(SPEC)).fingerprint)
    assert state.done and json.dumps(loaded.to_log(), sort_keys=True) == text and payload is None and buffer is None  # finished: state and log alone
    assert not (tmp_path / f"{cerl.CHECKPOINT_DIR}.tmp").exists() and not (tmp_path / f"{cerl.CHECKPOINT_DIR}.old").exists()


def test_a_rerun_that_finds_its_runs_finished_reports_their_total_compute(tmp_path):
    """Stage 5's evolution alone read its cost from the session's clock: a forced rerun reported ~0."""
    cfg = evo.EvolutionConfig(method="ga", budget_steps=400, pop_size=4, truncation=2, sigma=0.3, elite_candidates=2,
                              elite_episodes=1, report_episodes=1, max_steps=20, seed=3)

    def runs():
        return [evo.Run(f"r{i}", cfg, WeightGenome(SPEC), checkpoint_dir=tmp_path / f"r{i}", info={"i": i}) for i in (0, 1)]

    stopped = evo.run_lockstep(runs(), nthread=1, stop_after=2)
    assert not any(s.done for s in stopped.values())
    first = evo.run_table(runs(), evo.run_lockstep(runs(), nthread=1))  # a second session finishes them
    assert (first["compute_seconds"] > 0).all() and (first["cpu_seconds"] > 0).all()
    again = evo.run_table(runs(), evo.run_lockstep(runs(), nthread=1))  # a rerun: nothing left to compute
    for col in ("compute_seconds", "cpu_seconds"):
        np.testing.assert_allclose(again[col], first[col], atol=0.002)
    # a compute.json of before CPU seconds were kept: its CPU cost unknown (NaN), never a fresh zero
    path = tmp_path / "r0" / evo.COMPUTE_FILE
    path.write_text(json.dumps({"wall_seconds": 1.5}))
    table = evo.run_table(runs(), evo.run_lockstep(runs(), nthread=1))
    assert table["compute_seconds"].iloc[0] == 1.5 and np.isnan(table["cpu_seconds"].iloc[0])
    assert json.loads(path.read_text()) == {"wall_seconds": 1.5} and evo.cpu_seconds_at(path) is None
