"""DAgger distillation: a student learns its teacher's actions, deterministically, and resumes."""
import numpy as np
import pytest

from nnae_utils.distill import DistillConfig, StudentJob, distill, distill_many
from nnae_utils.policies import Network, NetworkSpec, load_network, save_network
from nnae_utils.rollouts import evaluate

SPEC = NetworkSpec(11, 3, (16, 16))
TINY = DistillConfig(rounds=3, episodes_per_round=2, epochs_per_round=15, max_steps=100, batch_size=64, seed=3)


def held_out_states(teacher):
    """States the teacher visits on seeds no DAgger round uses."""
    return evaluate(teacher, np.arange(7_000_000, 7_000_004), max_steps=100, record="observations").observations


def action_mse(a, b, states):
    return float(((a.act(states) - b.act(states)) ** 2).mean())


def test_student_learns_the_teachers_actions():
    teacher = Network.random(SPEC, seed=0)
    result = distill(teacher, TINY, teacher_id="t0")
    states = held_out_states(teacher)
    before = action_mse(Network.random(SPEC, seed=1), teacher, states)
    after = action_mse(result.network, teacher, states)
    assert after < 0.1 * before, (before, after)
    assert list(result.history["round"]) == [0, 1, 2]
    assert result.history["states"].is_monotonic_increasing  # DAgger aggregates, never forgets
    assert result.network.extra_metadata == {"teacher": "t0", "distill_seed": "3"}
    assert not np.allclose(result.network.flat(), teacher.flat())  # its own weights, not a copy


def test_distill_is_deterministic_and_seed_dependent():
    teacher = Network.random(SPEC, seed=0)
    a, b = distill(teacher, TINY).network, distill(teacher, TINY).network
    np.testing.assert_array_equal(a.flat(), b.flat())
    other = distill(teacher, DistillConfig(**{**TINY.__dict__, "seed": 4})).network
    assert not np.allclose(a.flat(), other.flat())


def test_bad_settings_fail_at_once():
    with pytest.raises(ValueError, match="rounds"):
        DistillConfig(rounds=0)
    with pytest.raises(ValueError, match="past its range"):
        distill(Network.random(SPEC), DistillConfig(seed=10**6))


def test_distill_many_writes_students_and_keeps_finished_ones(tmp_path):
    teacher_path = save_network(tmp_path / "teacher.safetensors", Network.random(SPEC, seed=0))
    cfg = DistillConfig(rounds=1, episodes_per_round=1, epochs_per_round=1, max_steps=20)
    jobs = [StudentJob(teacher_path, "t", DistillConfig(**{**cfg.__dict__, "seed": s}), tmp_path / f"s{s}.safetensors")
            for s in range(2)]
    kept = save_network(jobs[0].out_path, Network.random(SPEC, seed=99))
    paths = distill_many(jobs, workers=1, progress=False)
    assert paths == [j.out_path for j in jobs]
    np.testing.assert_array_equal(load_network(kept).flat(), Network.random(SPEC, seed=99).flat())  # not redone
    assert load_network(paths[1]).extra_metadata["teacher"] == "t"
