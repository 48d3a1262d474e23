"""TD3 ensembles (nnae_utils.td3_ensemble): K independent TD3 runs in one process, each member a run
folder in train_td3's format that follows the single run of its config, exact resume, members
leaving, and the configs it refuses."""
from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from nnae_utils import zoo
from nnae_utils.policies import load_network
from nnae_utils.td3 import CURVE_COLUMNS, TD3Config, TD3Learner, load_critic, train_td3
from nnae_utils.td3_ensemble import TD3Ensemble, ensemble_checkpoint_path, train_td3_ensemble

# test_td3.py's TINY, shorter: warm-up 300, updates (actor and targets too) from 301, evaluations
# every 300, checkpoints every 400
TINY = TD3Config(
    seed=3, total_steps=900, learning_starts=300, batch_size=32, buffer_size=5_000,
    actor_hidden=(16, 16), critic_hidden=(32, 32), eval_every=300, eval_episodes=1, eval_max_steps=100,
    checkpoint_every=400,
)
SEEDS = (3, 4)
RESULT_COLUMNS = ["step", "return_mean", "return_std", "episodes", "train_episodes", "updates"]  # not clocks


def configs(**changes):
    return [dataclasses.replace(TINY, seed=s, **changes) for s in SEEDS]


def dirs(root):
    return [root / "ens" / f"seed_{s}" for s in SEEDS]


def learner_state(run_dir):
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["learner"]


def assert_states_equal(a, b, tol=0.0):
    for net in ("actor", "actor_target", "critic", "critic_target"):
        for name in a[net]:
            if tol == 0.0:
                assert torch.equal(a[net][name], b[net][name]), (net, name)
            else:
                assert float((a[net][name] - b[net][name]).abs().max()) <= tol, (net, name)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    root = tmp_path_factory.mktemp("ens")
    runs = train_td3_ensemble(configs(), dirs(root), progress=False)
    return root, runs


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("single") / "seed_3"
    train_td3(TINY, run_dir, progress=False)
    return run_dir


def test_members_write_train_td3s_format(straight, single):
    root, runs = straight
    assert [(r.seed, r.step, r.finished, r.done_early) for r in runs] == [(3, 900, True, False), (4, 900, True, False)]
    ref_prov = json.loads((single / "provenance.json").read_text())
    ref_snap = load_network(single / "snapshots" / "step_0000900.safetensors")
    for seed, d in zip(SEEDS, dirs(root)):
        curve = pd.read_csv(d / "curve.csv")
        assert tuple(curve.columns) == CURVE_COLUMNS and list(curve["step"]) == [0, 300, 600, 900]
        assert curve["core_s"].is_monotonic_increasing and curve["updates"].iloc[-1] == 600
        snap = load_network(d / "snapshots" / "step_0000900.safetensors")
        assert set(snap.extra_metadata) == set(ref_snap.extra_metadata) and snap.spec == ref_snap.spec
        assert snap.extra_metadata["trainer"] == "nnae_utils.td3_ensemble" and snap.extra_metadata["run_seed"] == str(seed)
        prov = json.loads((d / "provenance.json").read_text())
        assert set(ref_prov) <= set(prov) and prov["config"] == dataclasses.replace(TINY, seed=seed).to_dict()
        assert prov["trainer"] == "nnae_utils.td3_ensemble" and prov["ensemble"] == {"k": 2, "members": list(SEEDS)}
        assert prov["finished"] and prov["buffer_refilled_at_steps"] == [] and prov["step"] == 900
        assert prov["core_seconds"] == pytest.approx(curve["core_s"].iloc[-1], abs=0.5)
        critic, meta = load_critic(d / "critic.safetensors")
        assert json.loads(meta["td3_config"])["seed"] == seed
        # the member's checkpoint.pt is train_td3's: it loads into a TD3Learner whose actor is the last snapshot
        learner = TD3Learner.from_config(prov_cfg := TD3Config.from_dict(prov["config"]), 11, 3)
        learner.load_state_dict(learner_state(d))
        assert learner.n_updates == 600 and prov_cfg.seed == seed
        for name, value in learner.actor.state_dict().items():
            np.testing.assert_array_equal(snap.params[name], value.numpy())
        for name, value in learner.critic.state_dict().items():
            assert torch.equal(critic.state_dict()[name], value)
    assert ensemble_checkpoint_path(dirs(root), SEEDS).is_file()
    cands = zoo.select_candidates(dirs(root), threshold=-1e9, min_step=300)
    assert {c.run for c in cands} == set(SEEDS) and cands[0].provenance()["learner"] == "td3 critic 32-32, ensemble of 2"


def test_members_differ(straight):
    root, _ = straight
    a, b = (learner_state(d) for d in dirs(root))
    assert not torch.equal(a["actor"]["layers.0.weight"], b["actor"]["layers.0.weight"])
    ca, cb = (pd.read_csv(d / "curve.csv") for d in dirs(root))
    assert ca["train_episodes"].iloc[-1] != cb["train_episodes"].iloc[-1] or not ca["return_mean"].equals(cb["return_mean"])


def test_a_member_follows_the_single_run_of_its_config(straight, single):
    """Same initial weights, env resets, warm-up actions, exploration noise, batches and
    target-policy noise as train_td3: before any update the actors are bitwise equal; after 600
    updates (300 actor steps) bmm's and mm's rounding differ by well under 1e-5 (measured: ~6e-7)."""
    root, _ = straight
    member = dirs(root)[0]
    for step in (0, 300):
        a = load_network(member / "snapshots" / f"step_{step:07d}.safetensors")
        b = load_network(single / "snapshots" / f"step_{step:07d}.safetensors")
        for name in a.params:
            np.testing.assert_array_equal(a.params[name], b.params[name])
    assert_states_equal(learner_state(member), learner_state(single), tol=1e-5)
    ca, cb = pd.read_csv(member / "curve.csv"), pd.read_csv(single / "curve.csv")
    assert list(ca["train_episodes"]) == list(cb["train_episodes"])  # the same episodes, step for step
    np.testing.assert_allclose(ca["return_mean"], cb["return_mean"], atol=1e-2)


def test_noise_stream_is_train_td3s():
    """A member's target-policy noise: torch.randn from its own generator, continuing from the global
    state after its learner was built: train_td3's torch.randn_like(actions) draws the same numbers."""
    torch.manual_seed(7)
    TD3Learner.from_config(TINY, 11, 3)
    gen = torch.Generator()
    gen.set_state(torch.get_rng_state())
    ours = torch.randn(32, 3, generator=gen)
    assert torch.equal(ours, torch.randn_like(torch.zeros(32, 3)))


@pytest.mark.parametrize("stop", [500, 600])  # mid-episode between checkpoints; at an evaluation step
def test_exact_resume(straight, tmp_path, stop):
    root, _ = straight
    first = train_td3_ensemble(configs(), dirs(tmp_path), stop_at_step=stop, progress=False)
    assert all(r.step == stop and not r.finished for r in first)
    assert not (dirs(tmp_path)[0] / "critic.safetensors").exists()
    train_td3_ensemble(configs(), dirs(tmp_path), progress=False)
    for a, b in zip(dirs(tmp_path), dirs(root)):
        assert_states_equal(learner_state(a), learner_state(b))
        pd.testing.assert_frame_equal(pd.read_csv(a / "curve.csv")[RESULT_COLUMNS], pd.read_csv(b / "curve.csv")[RESULT_COLUMNS])
        assert sorted(p.name for p in (a / "snapshots").iterdir()) == sorted(p.name for p in (b / "snapshots").iterdir())
        prov = json.loads((a / "provenance.json").read_text())
        assert len(prov["sessions"]) == 2 and prov["sessions"][1]["start_step"] == stop


class _LeaveRule:
    """Done once a run's evaluation at step 600 reached ``threshold`` (picklable, like EnoughCandidates)."""

    def __init__(self, threshold):
        self.threshold = threshold

    def __call__(self, rows):
        return any(int(r["step"]) >= 600 and float(r["return_mean"]) >= self.threshold for r in rows)

    def __repr__(self):
        return f"_LeaveRule({self.threshold})"


def test_done_members_leave_and_the_rest_continue_exactly(straight, tmp_path):
    root, _ = straight
    at_600 = [float(pd.read_csv(d / "curve.csv").set_index("step").loc[600, "return_mean"]) for d in dirs(root)]
    assert at_600[0] != at_600[1]
    rule = _LeaveRule(max(at_600))  # the better member at step 600 is done there; the other goes on
    leaver, stayer = int(np.argmax(at_600)), int(np.argmin(at_600))
    runs = train_td3_ensemble(configs(), dirs(tmp_path / "a"), done_when=rule, progress=False)
    assert runs[leaver].finished and runs[leaver].done_early and runs[leaver].step == 600
    assert runs[stayer].finished and not runs[stayer].done_early and runs[stayer].step == 900
    gone, kept = dirs(tmp_path / "a")[leaver], dirs(tmp_path / "a")[stayer]
    assert list(pd.read_csv(gone / "curve.csv")["step"]) == [0, 300, 600]
    assert json.loads((gone / "provenance.json").read_text())["done_early"] == {"rule": repr(rule), "step": 600}
    assert (gone / "critic.safetensors").is_file() and learner_state(gone)["n_updates"] == 300
    # the rest were rebuilt from their slices (weights and Adam states): the stayer ends where it
    # ends in the full ensemble, to the rounding of a smaller bmm
    assert_states_equal(learner_state(kept), learner_state(dirs(root)[stayer]), tol=1e-5)
    # and a run stopped after the member left resumes exactly
    train_td3_ensemble(configs(), dirs(tmp_path / "b"), done_when=rule, stop_at_step=700, progress=False)
    again = train_td3_ensemble(configs(), dirs(tmp_path / "b"), done_when=rule, progress=False)
    assert [r.step for r in again] == [r.step for r in runs]
    for a, b in zip(dirs(tmp_path / "b"), dirs(tmp_path / "a")):
        assert_states_equal(learner_state(a), learner_state(b))
        pd.testing.assert_frame_equal(pd.read_csv(a / "curve.csv")[RESULT_COLUMNS], pd.read_csv(b / "curve.csv")[RESULT_COLUMNS])
    # resumed once everything finished: nothing is trained again
    before = (dirs(tmp_path / "b")[stayer] / "curve.csv").read_text()
    assert all(r.finished for r in train_td3_ensemble(configs(), dirs(tmp_path / "b"), done_when=rule, progress=False))
    assert (dirs(tmp_path / "b")[stayer] / "curve.csv").read_text() == before


def test_subset_keeps_the_members_state():
    learners = []
    for s in (1, 2, 3):
        torch.manual_seed(s)
        learners.append(TD3Learner.from_config(dataclasses.replace(TINY, seed=s), 11, 3))
    ens = TD3Ensemble(learners)
    rng = np.random.default_rng(0)

    def batch(k):
        return [torch.from_numpy(rng.normal(size=(k, 32, d)).astype(np.float32)) for d in (11, 3, 1, 11)] + [
            torch.zeros(k, 32, 1)]

    for _ in range(4):
        ens.update(*batch(3))
    sub = ens.subset([2, 0])
    assert sub.k == 2 and sub.n_updates == ens.n_updates
    for new, old in ((0, 2), (1, 0)):
        for name, tensors in sub.member_state(new).items():
            assert all(torch.equal(a, b) for a, b in zip(tensors, ens.member_state(old)[name])), name
        a, b = sub.member_learner_state(new, learners[0]), ens.member_learner_state(old, learners[1])
        for opt in ("actor_opt", "critic_opt"):
            for j, s in a[opt]["state"].items():
                assert all(torch.equal(s[key], b[opt]["state"][j][key]) for key in ("step", "exp_avg", "exp_avg_sq"))


def test_lost_buffer_is_refilled_and_recorded(tmp_path):
    cfgs = configs()
    train_td3_ensemble(cfgs, dirs(tmp_path), stop_at_step=500, progress=False)
    (dirs(tmp_path)[1] / "buffer.npz").unlink()
    runs = train_td3_ensemble(cfgs, dirs(tmp_path), progress=False)
    assert all(r.finished for r in runs)
    provs = [json.loads((d / "provenance.json").read_text()) for d in dirs(tmp_path)]
    assert provs[0]["buffer_refilled_at_steps"] == [] and provs[1]["buffer_refilled_at_steps"] == [500]
    assert provs[1]["buffer_refill_env_steps"] == TINY.learning_starts


def test_mismatched_configs_and_folders_are_refused(tmp_path):
    with pytest.raises(ValueError, match="differ in gamma"):
        train_td3_ensemble([TINY, dataclasses.replace(TINY, seed=4, gamma=0.9)], dirs(tmp_path), progress=False)
    with pytest.raises(ValueError, match="distinct seeds"):
        train_td3_ensemble([TINY, TINY], dirs(tmp_path), progress=False)
    with pytest.raises(ValueError, match="share one parent"):
        train_td3_ensemble(configs(), [tmp_path / "x" / "seed_3", tmp_path / "y" / "seed_4"], progress=False)
    with pytest.raises(ValueError, match="ReLU"):
        train_td3_ensemble(configs(actor_activation="tanh"), dirs(tmp_path), progress=False)
    # a folder of a single-learner run is never taken over
    single = tmp_path / "ens" / "seed_3"
    single.mkdir(parents=True)
    (single / "curve.csv").write_text("step\n")
    (single / "provenance.json").write_text(json.dumps({"config": TINY.to_dict()}))
    with pytest.raises(ValueError, match="not trained by an ensemble"):
        train_td3_ensemble(configs(), dirs(tmp_path), progress=False)
    shutil.rmtree(tmp_path / "ens")


def test_the_growth_plan_trains_ensemble_groups_in_their_own_folders():
    plan = zoo.GrowthPlan.read("zoo/growth.yaml")
    group = plan.group("ens4_c64")
    assert group.ensemble == 4 and group.critic_hidden == (64, 64) and plan.group("c64").ensemble == 1
    ens = plan.ensembles(group)
    assert [[c.seed for c in e] for e in ens] == [list(group.seeds)]
    run_dirs = plan.run_dirs(group, "zoo/training")
    assert [d.parent.name for d in run_dirs] == [zoo.settings_digest(ens[0][0]) + "_ens4"] * 4
    assert [d.name for d in run_dirs] == [f"seed_{s}" for s in group.seeds]
    single = plan.run_dirs(plan.group("c64"), "zoo/training")[0]
    assert single.parent.name == zoo.settings_digest(ens[0][0])  # the same settings, another folder
    with pytest.raises(ValueError, match="divide"):
        dataclasses.replace(plan, groups={"bad": {"critic_hidden": [8], "ensemble": 3, "seeds": [1, 2]}}).group("bad")


def test_a_shipped_ensemble_is_its_files_and_a_half_finished_one_needs_its_checkpoint(straight, tmp_path):
    """Without the ensemble's checkpoint (compacted: zoo.compact_finished_run drops each member's
    checkpoint and buffer): all members finished, their files are the result (td3.finished_run, as for
    a single run), nothing is trained; one member finished and another not, the checkpoint is needed."""
    root, runs = straight
    shutil.copytree(root / "ens", tmp_path / "ens")
    ensemble_checkpoint_path(dirs(tmp_path), SEEDS).unlink()
    for d in dirs(tmp_path):
        (d / "checkpoint.pt").unlink()
        (d / "buffer.npz").unlink()
    before = [(d / "curve.csv").read_text() for d in dirs(tmp_path)]
    shipped = train_td3_ensemble(configs(), dirs(tmp_path), progress=False)
    assert [(r.step, r.finished, r.done_early, r.final_return) for r in shipped] == [
        (r.step, r.finished, r.done_early, r.final_return) for r in runs]
    assert [(d / "curve.csv").read_text() for d in dirs(tmp_path)] == before
    assert not any((d / "checkpoint.pt").exists() for d in dirs(tmp_path))
    # a member left at step 600, the other stopped at 700: the ensemble's checkpoint is the others' state
    at_600 = [float(pd.read_csv(d / "curve.csv").set_index("step").loc[600, "return_mean"]) for d in dirs(root)]
    rule = _LeaveRule(max(at_600))
    train_td3_ensemble(configs(), dirs(tmp_path / "half"), done_when=rule, stop_at_step=700, progress=False)
    ensemble_checkpoint_path(dirs(tmp_path / "half"), SEEDS).unlink()
    with pytest.raises(ValueError, match="checkpoint .* is missing"):
        train_td3_ensemble(configs(), dirs(tmp_path / "half"), done_when=rule, progress=False)
