"""The CERL-like hybrid: migration, the shared buffer, latent migrants, step accounting, resuming.

Tiny budgets: 30-step episodes, populations of 4, learners with 16-16 critics and batches of 16,
so every run takes a second or two.
"""
import json

import numpy as np
import pytest
import torch

from nnae_utils import cerl, critics
from nnae_utils import genomes as gen
from nnae_utils.policies import Network, load_network
from nnae_utils.rollouts import evaluate
from nnae_utils.seeds import eval_seeds
from nnae_utils.stages import CERLParams, ParameterError
from nnae_utils.td3 import ReplayBuffer, TwinCritic, save_critic


torch.set_num_threads(1)
CAP = 30  # episode cap of every test run


@pytest.fixture(scope="module")
def probe_states():
    return np.random.default_rng(0).normal(size=(32, 11)).astype(np.float32)


def config(**kw):
    base = dict(budget_steps=900, max_steps=CAP, seed=3, fitness_seed_offset=5_000_000, report_episodes=1,
                pop_size=4, sigma=0.3, elite_candidates=1, elite_episodes=1, gammas=(0.99,), learner_episodes=2,
                critic_hidden=(16, 16), batch_size=16, buffer_size=10_000, learning_starts=50, migration_every=1,
                updates_per_step=0.2)  # few updates: the tests check the plumbing, not learning
    return cerl.CERLConfig(**{**base, **kw})


def make_run(zoo, stage2, genome_name="weights", start=None, run_id="run", checkpoint_dir=None, probe=None, critic=None, **kw):
    g = gen.build_genome(genome_name, train=zoo["train"], stage2_dir=stage2)
    sigma = 0.02 if genome_name == "weights" else 0.3
    if start is not None:
        g = g.with_base(start)
    return cerl.CERLRun(run_id, config(sigma=sigma, **kw), g, start=start, critic=critic, checkpoint_dir=checkpoint_dir,
                        probe_states=probe, info={"variant": genome_name})


def checkpoint_actors(folder, spec):
    """The learners' actors as the last checkpoint holds them."""
    payload = torch.load(folder / cerl.CHECKPOINT_DIR / "learners.pt", weights_only=True)
    return [Network(spec, {k: v.numpy() for k, v in sd["actor"].items()}) for sd in payload["learners"]]


def test_a_learners_actor_migrates_into_the_population(zoo, stage2, probe_states, tmp_path):
    run = make_run(zoo, stage2, "weights", checkpoint_dir=tmp_path, probe=probe_states, gammas=(0.99, 0.9))
    res = cerl.run_cerl(run, stop_after=1)  # migration_every=1: the first generation ends with a migration
    actors = checkpoint_actors(tmp_path, run.genome.spec)
    assert len(res.log["migrations"]) == 2 and res.state.curve[-1]["migrated"]
    for k, actor in enumerate(actors):
        slot = run.config.pop_size - 1 - k
        np.testing.assert_array_equal(res.state.population[slot], run.genome.encode(actor)[0])  # the actor itself
        entry = res.log["migrations"][k]
        assert entry["learner"] == k and entry["slot"] == slot and entry["distance"] == 0.0  # weights: lossless
    # the migrants play the next generation's fitness episodes, and their rank is recorded
    res = cerl.run_cerl(run, stop_after=2)
    assert all(m["fitness_rank"] is not None for m in res.log["migrations"][:2])


def test_the_shared_buffer_holds_every_counted_step_from_population_and_learners(zoo, stage2, tmp_path):
    run = make_run(zoo, stage2, "weights", checkpoint_dir=tmp_path)
    res = cerl.run_cerl(run)
    st, log, cfg = res.state, res.log, run.config
    assert log["population_steps"] > 0 and log["learner_steps"] > 0 and log["elite_steps"] > 0
    assert st.env_steps == log["population_steps"] + log["learner_steps"] + log["elite_steps"]  # every counted step
    buffer = ReplayBuffer.load(tmp_path / cerl.CHECKPOINT_DIR / "buffer.npz")
    assert buffer.n_added == len(buffer) == st.env_steps == log["buffer_n_added"]  # ... and all of it in one buffer
    # the learners trained on it: updates_per_step per step that reached the buffer after learning_starts
    assert 0 < st.curve[-1]["updates"] <= cfg.updates_per_step * st.env_steps
    # time-limit truncation is not termination: only episodes that ended unhealthy store terminated = 1
    assert buffer.terminated.sum() == log["terminated_episodes"] < log["episodes"]


def test_budget_and_report_accounting(zoo, stage2):
    run = make_run(zoo, stage2, "weights", probe=None)
    res = cerl.run_cerl(run)
    st, cfg = res.state, run.config
    assert st.stop_reason == "budget" and cfg.budget_steps <= st.env_steps  # it ran until the budget was spent ...
    assert st.curve[-2]["env_steps"] < cfg.budget_steps  # ... and no longer: the last generation started below it
    assert st.env_steps - st.curve[-2]["env_steps"] <= cfg.generation_cost_bound()  # the overrun is one generation
    at = cerl.champion_at(st.curve, cfg.budget_steps)  # results are read at the budget
    assert at["env_steps"] <= cfg.budget_steps and at is st.curve[-2]
    assert st.report_steps > 0 and res.log["probe_steps"] == 0  # reporting episodes are listed apart, never counted
    steps = [row["env_steps"] for row in st.curve]
    assert steps == sorted(steps) and steps[-1] == st.env_steps and len(st.curve) == st.generation
    np.testing.assert_allclose(st.champion_returns.mean(), st.curve[-1]["champion_return"])
    # every counted episode had its own reset seed: one per fitness episode, learner rollout and elite episode
    n_fitness = st.generation * (cfg.fitness_episodes + cfg.learner_episodes)
    assert n_fitness < st.seed_cursor <= n_fitness + st.generation * cfg.champion_candidates_bound() * cfg.elite_episodes


def test_a_latent_migrant_is_encoded_decoded_and_its_loss_measured(zoo, stage2, probe_states, tmp_path):
    start = zoo["test"][0]
    run = make_run(zoo, stage2, "latent:all", start=start, checkpoint_dir=tmp_path, probe=probe_states, probe_episodes=1)
    res = cerl.run_cerl(run, stop_after=1)
    (actor,) = checkpoint_actors(tmp_path, start.spec)
    z, decoded, distance = cerl.migrant_encoding(run.genome, actor, probe_states)
    slot = run.config.pop_size - 1
    np.testing.assert_allclose(res.state.population[slot], z, rtol=1e-6)  # the migrant entered as its latent code
    assert decoded.spec == actor.spec and np.isfinite(decoded.flat()).all()  # a valid network in the suite's format
    assert z.shape == (run.genome.dim,) and run.genome.dim < actor.flat().size
    (entry,) = res.log["migrations"]
    assert np.isfinite(entry["distance"]) and entry["distance"] > 0  # the encoding loses something, and it is measured
    np.testing.assert_allclose(entry["distance"], distance, rtol=1e-6)
    assert entry["actor_return"] is not None and entry["decoded_return"] is not None
    assert res.log["probe_steps"] > 0 and res.state.env_steps == res.log["buffer_n_added"]  # probes are not counted
    # both probed networks are kept in the suite's format, and re-score to the returns the run reported
    kept = [load_network(tmp_path / entry[f"{role}_file"]) for role in ("actor", "decoded")]
    np.testing.assert_array_equal(kept[0].flat(), actor.flat())
    np.testing.assert_array_equal(kept[1].flat(), decoded.flat())
    again = evaluate(kept, eval_seeds("champion_report", 1), max_steps=CAP).returns
    assert again[:, 0].tolist() == [entry["actor_episode_returns"][0], entry["decoded_episode_returns"][0]]


def make_exact_run(zoo, stage2, start=None, **kw):
    """A latent hybrid whose migrants enter exactly (issue 30): its genome anchors every migrant."""
    g = gen.AnchoredGenome(gen.build_genome("latent:all", train=zoo["train"], stage2_dir=stage2))
    if start is not None:
        g = g.with_base(start)
    run_kw = {k: kw.pop(k) for k in ("run_id", "checkpoint_dir", "probe") if k in kw}
    return cerl.CERLRun(run_kw.get("run_id", "exact"), config(sigma=0.3, **kw), g, start=start,
                        checkpoint_dir=run_kw.get("checkpoint_dir"), probe_states=run_kw.get("probe"),
                        info={"variant": "latent:all exact"})


def test_an_exact_latent_migrant_enters_as_itself_and_keeps_its_return(zoo, stage2, probe_states, tmp_path):
    start = zoo["test"][0]
    run = make_exact_run(zoo, stage2, start, checkpoint_dir=tmp_path, probe=probe_states, probe_episodes=1,
                         gammas=(0.99, 0.9))
    res = cerl.run_cerl(run, stop_after=1)
    actors = checkpoint_actors(tmp_path, start.spec)
    genome = run.genome.without_migrants()
    for name in res.log["anchors"]:
        genome.anchors.append(load_network(tmp_path / name))
    assert len(genome.anchors) == 3 and run.genome.anchors == [start]  # the run's own genome is left as it was
    for k, actor in enumerate(actors):
        slot = run.config.pop_size - 1 - k
        held = genome.decode(res.state.population[slot])
        assert held.flat().tobytes() == actor.flat().tobytes()  # the population holds the actor, bitwise
        entry = res.log["migrations"][k]
        assert entry["exact"] and entry["distance"] == 0.0 and entry["actor_return"] is None  # nothing lost: no probe
        seeds = eval_seeds("champion_report", 2)
        ours, theirs = evaluate([held, actor], seeds, max_steps=CAP).returns
        np.testing.assert_array_equal(ours, theirs)  # so it keeps its return
    assert res.log["from_migrant"][-2:] == [True, True] and not res.log["from_migrant"][0]
    # the start itself is individual 0, bitwise, at generation 0
    assert genome.decode(genome.encode(start)[0]).flat().tobytes() == start.flat().tobytes()


def test_exact_migrants_resume_and_their_lineage_is_followed(zoo, stage2, tmp_path):
    kw = dict(gammas=(0.99, 0.9), budget_steps=1500, crossover_prob=0.5)
    full = cerl.run_cerl(make_exact_run(zoo, stage2, zoo["test"][1], checkpoint_dir=tmp_path / "a", **kw))
    cerl.run_cerl(make_exact_run(zoo, stage2, zoo["test"][1], checkpoint_dir=tmp_path / "b", **kw), stop_after=2)
    resumed = cerl.run_cerl(make_exact_run(zoo, stage2, zoo["test"][1], checkpoint_dir=tmp_path / "b", **kw))
    assert full.state.generation >= 4 and resumed.state.curve == full.state.curve  # anchors come back from their files
    np.testing.assert_array_equal(resumed.state.population, full.state.population)
    assert resumed.log["from_migrant"] == full.log["from_migrant"]
    lineages = [row["champion_lineage"] for row in full.state.curve[1:]]
    assert set(lineages) <= {"migrant line", "population line", "learner", "start"} and len(lineages) == full.state.generation
    # an individual whose anchor is a migrant (anchor >= 2) is of the migrant line
    anchors = full.state.population[:, 0].astype(int)
    assert all(full.log["from_migrant"][i] for i in np.flatnonzero(anchors >= 2))


def test_bred_population_is_next_population_with_its_parents(zoo):
    g = gen.WeightGenome(zoo["train"][0].spec)
    cfg = config(pop_size=6, crossover_prob=0.5, sigma=0.01)
    pop = g.random_codes(6, np.random.default_rng(0))
    fitness = np.arange(6.0)
    a = cerl.evo.next_population(pop, fitness, pop[5], cfg, g, np.random.default_rng(3))
    b, parent, mate = cerl.evo.bred_population(pop, fitness, pop[5], cfg, g, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)  # the same random numbers: the same population
    assert parent[0] == mate[0] == -1 and (parent[1:] >= 0).all() and (mate >= -1).all()
    for i in range(1, 6):  # an uncrossed child is its parent plus a small mutation
        if mate[i] < 0:
            assert np.abs(b[i] - pop[parent[i]]).max() < 0.1


def test_resume_equals_an_uninterrupted_run(zoo, stage2, tmp_path):
    kw = dict(gammas=(0.99, 0.9), resource_manager="ucb", migration_every=2, budget_steps=1200)
    full = cerl.run_cerl(make_run(zoo, stage2, "latent:all", checkpoint_dir=tmp_path / "a", **kw))
    killed = cerl.run_cerl(make_run(zoo, stage2, "latent:all", checkpoint_dir=tmp_path / "b", **kw), stop_after=2)
    assert killed.state.generation == 2 and not killed.state.done
    resumed = cerl.run_cerl(make_run(zoo, stage2, "latent:all", checkpoint_dir=tmp_path / "b", **kw))
    assert resumed.state.generation == full.state.generation >= 4 and len(full.log["migrations"]) >= 2
    assert resumed.state.curve == full.state.curve
    np.testing.assert_array_equal(resumed.state.population, full.state.population)
    np.testing.assert_array_equal(resumed.state.champion, full.state.champion)
    assert resumed.state.rng.bit_generator.state == full.state.rng.bit_generator.state
    def timeless(log):
        return {k: v for k, v in log.items() if k not in ("wall_s", "cpu_s", "update_s", "sessions", "generations")}

    assert json.dumps(timeless(resumed.log), sort_keys=True) == json.dumps(timeless(full.log), sort_keys=True)
    a = torch.load(tmp_path / "a" / cerl.CHECKPOINT_DIR / "learners.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / cerl.CHECKPOINT_DIR / "learners.pt", weights_only=True)
    for la, lb in zip(a["learners"], b["learners"]):
        for part in ("actor", "critic", "critic_target"):
            for key in la[part]:
                assert torch.equal(la[part][key], lb[part][key]), (part, key)
    assert torch.equal(a["torch_rng"], b["torch_rng"])
    # a finished run resumes to its final state without training further, from its state and log alone
    # (as carried to another machine: nnae_utils.published.carry leaves its learners and buffer behind)
    for name in ("learners.pt", "buffer.npz"):
        (tmp_path / "b" / cerl.CHECKPOINT_DIR / name).unlink()
    again = cerl.run_cerl(make_run(zoo, stage2, "latent:all", checkpoint_dir=tmp_path / "b", **kw))
    assert again.state.curve == full.state.curve
    assert json.dumps(again.log, sort_keys=True) == json.dumps(resumed.log, sort_keys=True)  # not even its clock moved
    with pytest.raises(ValueError, match="belongs to another run"):  # a checkpoint of other settings is refused
        cerl.run_cerl(make_run(zoo, stage2, "latent:all", checkpoint_dir=tmp_path / "b", **{**kw, "migration_every": 3}))


def test_td3_alone_is_the_same_loop_without_a_population_and_ucb_shares_out_rollouts(zoo, stage2):
    res = cerl.run_cerl(make_run(zoo, stage2, "weights", pop_size=0, gammas=(0.99, 0.9), learner_episodes=3,
                                 resource_manager="ucb", budget_steps=600))
    st, log = res.state, res.log
    assert log["population_steps"] == 0 and log["migrations"] == [] and st.population is None
    assert st.env_steps == log["learner_steps"] + log["elite_steps"] == log["buffer_n_added"]
    assert sum(log["visits"]) == 2 + st.generation * 3 and len(log["allocation"]) == 3
    assert all(v is not None for v in log["values"])
    assert {row["champion_source"] for row in st.curve} <= {"learner 0", "learner 1", "previous champion"}
    alloc = cerl.ucb_allocation([None, 5.0, 100.0], [1, 3, 3], 500, 0.9, np.random.default_rng(0))
    assert set(alloc) == {0, 1, 2} and np.bincount(alloc)[2] > np.bincount(alloc)[1]


def test_finetuning_starts_learners_from_the_start_network_and_the_zoos_critic(zoo, stage2, tmp_path):
    start = zoo["test"][1]
    torch.manual_seed(5)
    critic = TwinCritic(start.spec.obs_dim, start.spec.act_dim, (16, 16))
    run_dir = tmp_path / "zoo_run" / "abc123" / "seed_2"
    path = save_critic(run_dir / "critic.safetensors", critic, {"step": "60000"})
    record = {"id": "run02_step0010000", "provenance": {"run": 2, "settings": "abc123", "step": 10000}}
    assert critics.find_zoo_critic(record, [tmp_path / "nowhere", tmp_path / "zoo_run"]) == path
    assert critics.find_zoo_critic(record, [tmp_path / "nowhere"]) is None and critics.critic_step(path) == 60000
    cfg = config()
    torch.manual_seed(0)
    (learner,) = cerl.make_learners(cfg, start.spec, start, path)
    np.testing.assert_array_equal(learner.actor_network().flat(), start.flat())
    for a, b in zip(learner.critic.state_dict().values(), critic.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(learner.critic_target.state_dict().values(), critic.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="critic_hidden"):
        cerl.make_learners(config(critic_hidden=(8,)), start.spec, start, path)
    res = cerl.run_cerl(make_run(zoo, stage2, "weights", start=start, critic=path), stop_after=1)
    assert res.state.curve[0]["env_steps"] == 0 and res.state.curve[0]["champion_source"] == "start"
    row0 = res.state.curve[0]
    assert row0["generation"] == 0 and np.isfinite(row0["champion_return"])


def test_config_checks():
    with pytest.raises(ValueError, match="pop_size"):
        config(pop_size=2, gammas=(0.99, 0.9))  # no room for an elite, a child and two migrants
    with pytest.raises(ValueError, match="budget_steps"):
        config(budget_steps=0)
    with pytest.raises(ValueError, match="resource_manager"):
        config(resource_manager="greedy")
    with pytest.raises(ValueError, match="learner_episodes"):
        config(pop_size=0, learner_episodes=0)
    assert config(pop_size=0).generation_cost_bound() == (2 + 2 * 1) * CAP  # learner episodes + (learner + previous) elite


def test_stage_parameters_are_validated():
    p = CERLParams.from_mapping({"variants": ["cerl/weights", "cerl/dct:all", "td3"], "starts": ["scratch"]})
    assert p.variants == ["cerl/weights", "cerl/dct:all", "td3"]
    bad = [
        {"variants": ["cerl/autoencoder"]},
        {"variants": ["erl/weights"]},
        {"variants": ["td3", "td3"]},
        {"variants": []},
        {"starts": ["warm"]},
        {"starts": ["finetune_train"]},  # stage 4 only
        {"evolution_alone": "ga"},
        {"gammas": [1.5]},
        {"resource_manager": "roulette"},
        {"budget_steps": 0},
        {"pop_size": 2},
        {"n_seeds": 81},
    ]
    for values in bad:
        with pytest.raises(ParameterError):
            CERLParams.from_mapping(values)


def test_docstring_examples():
    import doctest

    assert doctest.testmod(cerl, raise_on_error=False).failed == 0
