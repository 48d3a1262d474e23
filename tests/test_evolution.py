"""GA and CMA-ES on every genome: budgets counted exactly, seeds kept apart, resuming equals not stopping.

Tiny populations and 30-step episodes (``max_steps``) keep every run to a fraction of a second.
"""
import time

import numpy as np
import pandas as pd
import pytest
import torch

from nnae_utils import evolution as evo
from nnae_utils import genomes as gen
from nnae_utils.rollouts import evaluate
from nnae_utils.seeds import eval_seeds
from nnae_utils.stages import LatentEvolutionParams, ParameterError


torch.set_num_threads(1)
CAP = 30  # episode cap of every test run


def config(method="ga", **kw):
    base = dict(method=method, budget_steps=700, pop_size=4, truncation=2, sigma=0.3, elite_candidates=2,
                elite_episodes=1, report_episodes=2, max_steps=CAP, seed=7, fitness_seed_offset=2_000_000)
    return evo.EvolutionConfig(**{**base, **kw})


def make_run(zoo, stage2, method, genome_name, start, run_id="run", checkpoint_dir=None, **kw):
    g = gen.build_genome(genome_name, train=zoo["train"], stage2_dir=stage2, best_layer=1)
    z0 = None
    if start == "finetune":
        g = g.with_base(zoo["test"][0])
        z0 = g.encode(zoo["test"][0])[0]
    sigma = 0.02 if genome_name == "weights" else 0.3
    return evo.Run(run_id, config(method, sigma=sigma, **kw), g, z0, checkpoint_dir, {"start": start})


def drive(run, stop_after=None, close_after_requests=None):
    """Run one run alone, evaluating each request directly; log (request, result) pairs."""
    proc = run.process(stop_after)
    log = []
    try:
        request = next(proc)
        while True:
            if close_after_requests is not None and len(log) >= close_after_requests:
                proc.close()  # the process dies mid-generation
                return None, log
            result = evaluate(request.networks, request.seeds, max_steps=run.config.max_steps)
            log.append((request, result))
            request = proc.send(result)
    except StopIteration as stop:
        return stop.value, log


GRID = [("ga", g) for g in ("weights", "latent:all", "latent:best", "pca:all", "random:all", "dct:all")] + \
       [("cma", g) for g in ("latent:all", "latent:best", "pca:all", "random:all", "dct:all")]


@pytest.mark.parametrize("start", ["finetune", "scratch"])
@pytest.mark.parametrize("method,genome_name", GRID, ids=[f"{m}-{g}" for m, g in GRID])
def test_every_algorithm_and_genome_respects_the_budget_counting_elite_episodes(zoo, stage2, method, genome_name, start):
    run = make_run(zoo, stage2, method, genome_name, start)
    state, log = drive(run)
    cfg = run.config
    counted = sum(res.env_steps for req, res in log if req.counted)
    assert state.env_steps == counted  # fitness and elite episodes, every step
    assert state.env_steps <= cfg.budget_steps
    assert state.env_steps + cfg.generation_cost_bound() > cfg.budget_steps  # it stopped only when the next could overrun
    assert state.stop_reason == "budget" and state.generation >= 2
    purposes = [req.purpose for req, _ in log]
    assert purposes.count("fitness") == state.generation and purposes.count("elite") == state.generation
    assert all(req.counted == (req.purpose != "report") for req, _ in log)
    assert state.report_steps == sum(res.env_steps for req, res in log if not req.counted)
    # the curve: the champion's fresh-seed return after every generation (and the start, when fine-tuning)
    assert len(state.curve) == state.generation + (start == "finetune")
    steps = [row["env_steps"] for row in state.curve]
    assert steps == sorted(steps) and steps[-1] == state.env_steps
    assert state.champion.shape == (run.genome.dim,)
    np.testing.assert_allclose(state.champion_returns.mean(), state.curve[-1]["champion_return"])


def test_seeds_fitness_elite_and_report_never_mix(zoo, stage2):
    run = make_run(zoo, stage2, "ga", "weights", "finetune")
    state, log = drive(run)
    report = eval_seeds("champion_report", run.config.report_episodes)
    used = []
    for req, _ in log:
        if req.purpose == "report":
            np.testing.assert_array_equal(req.seeds, report)  # every champion is reported on the same fresh seeds
        else:
            used += req.seeds.tolist()
    assert len(used) == len(set(used))  # every fitness / elite episode has its own seed
    expected = eval_seeds("evolution_fitness", state.seed_cursor, offset=run.config.fitness_seed_offset)
    np.testing.assert_array_equal(sorted(used), expected)
    assert not set(used) & set(report.tolist())


def test_ga_keeps_its_champion_and_does_not_rescore_it(zoo, stage2):
    run = make_run(zoo, stage2, "ga", "dct:all", "scratch", budget_steps=2000)
    state, log = drive(run)
    fitness_pops = [req for req, _ in log if req.purpose == "fitness"]
    champions = []
    for req, res in log:
        if req.purpose == "elite":
            champions.append(req.networks[int(np.argmax(res.returns.mean(axis=1)))])
    for champ, next_pop in zip(champions, fitness_pops[1:]):
        np.testing.assert_array_equal(next_pop.networks[0].flat(), champ.flat())  # elitism: unchanged
    n_reports = sum(req.purpose == "report" for req, _ in log)
    distinct = len({c.flat().tobytes() for c in champions})
    assert n_reports <= distinct < len(champions) + 1


@pytest.mark.parametrize("method,genome_name", [("ga", "weights"), ("ga", "latent:all"), ("cma", "latent:all"), ("cma", "dct:best")])
def test_resume_from_checkpoint_equals_an_uninterrupted_run(zoo, stage2, tmp_path, method, genome_name):
    full, _ = drive(make_run(zoo, stage2, method, genome_name, "finetune", checkpoint_dir=tmp_path / "a", budget_steps=1200))
    # killed after two generations, then resumed
    partial, _ = drive(make_run(zoo, stage2, method, genome_name, "finetune", checkpoint_dir=tmp_path / "b", budget_steps=1200), stop_after=2)
    assert partial.generation == 2 and not partial.done
    # killed in the middle of a generation (after its fitness request), then resumed
    drive(make_run(zoo, stage2, method, genome_name, "finetune", checkpoint_dir=tmp_path / "b", budget_steps=1200), close_after_requests=2)
    resumed, _ = drive(make_run(zoo, stage2, method, genome_name, "finetune", checkpoint_dir=tmp_path / "b", budget_steps=1200))
    assert resumed.generation == full.generation >= 3
    assert resumed.curve == full.curve
    for name in ("env_steps", "report_steps", "seed_cursor", "stop_reason"):
        assert getattr(resumed, name) == getattr(full, name), name
    np.testing.assert_array_equal(resumed.champion, full.champion)
    np.testing.assert_array_equal(resumed.population, full.population)
    assert resumed.rng.bit_generator.state == full.rng.bit_generator.state
    # a finished run resumes to its final state without evaluating anything
    again, log = drive(make_run(zoo, stage2, method, genome_name, "finetune", checkpoint_dir=tmp_path / "b", budget_steps=1200))
    assert log == [] and again.curve == full.curve


def test_a_checkpoint_of_another_run_is_refused(zoo, stage2, tmp_path):
    drive(make_run(zoo, stage2, "ga", "weights", "scratch", checkpoint_dir=tmp_path), stop_after=1)
    other = make_run(zoo, stage2, "ga", "weights", "scratch", checkpoint_dir=tmp_path, pop_size=3)
    with pytest.raises(ValueError, match="belongs to another run"):
        drive(other)


def test_lockstep_batching_gives_the_same_runs_as_running_alone(zoo, stage2):
    specs = [("ga", "weights", "finetune"), ("cma", "pca:all", "scratch"), ("ga", "latent:best", "finetune")]
    runs = [make_run(zoo, stage2, m, g, s, run_id=f"{m}-{g}-{s}") for m, g, s in specs]
    together = evo.run_lockstep(runs, nthread=2)
    for run in runs:
        alone, _ = drive(make_run(zoo, stage2, *run.run_id.split("-"), run_id=run.run_id))
        assert together[run.run_id].curve == alone.curve
        np.testing.assert_array_equal(together[run.run_id].champion, alone.champion)


def test_lockstep_keeps_each_runs_wall_seconds_across_sessions(zoo, stage2, tmp_path):
    specs = [("ga", "weights", "finetune"), ("cma", "pca:all", "scratch")]

    def runs(**kw):
        return [make_run(zoo, stage2, m, g, s, run_id=f"{m}-{g}-{s}", checkpoint_dir=tmp_path / f"{m}-{g}-{s}", **kw)
                for m, g, s in specs]

    started = time.perf_counter()
    evo.run_lockstep(runs(), nthread=1, stop_after=2)  # a session killed after two generations
    first = {r.run_id: evo.compute_seconds_at(r.checkpoint_dir / evo.COMPUTE_FILE) for r in runs()}
    assert all(v > 0 for v in first.values()) and sum(first.values()) <= time.perf_counter() - started
    resumed = runs()
    results = evo.run_lockstep(resumed, nthread=1)  # the next session finishes them
    table = evo.run_table(resumed, results)
    assert (table.set_index("run_id")["compute_seconds"] > pd.Series(first)).all()  # the sessions add up
    # a run checkpointed before compute.json existed: its cost is unknown (NaN), never a fresh zero
    (resumed[0].checkpoint_dir / evo.COMPUTE_FILE).unlink()
    again = evo.run_lockstep(resumed, nthread=1)
    assert not (resumed[0].checkpoint_dir / evo.COMPUTE_FILE).exists()
    assert np.isnan(evo.run_table(resumed, again)["compute_seconds"].iloc[0])
    no_checkpoint = make_run(zoo, stage2, "ga", "weights", "scratch", budget_steps=300)
    assert np.isnan(evo.run_table([no_checkpoint], evo.run_lockstep([no_checkpoint]))["compute_seconds"].iloc[0])


def test_selection_crossover_and_mutation_operators():
    rng = np.random.default_rng(0)
    fitness = np.array([5.0, 1.0, 9.0, 3.0, 7.0])
    np.testing.assert_array_equal(evo.top_k(fitness, 3), [2, 4, 0])
    assert set(evo.truncation_parents(fitness, 200, 2, rng)) == {2, 4}
    winners = evo.tournament_parents(fitness, 500, 5, rng)
    assert np.bincount(winners, minlength=5).argmax() == 2  # the best wins most tournaments
    assert fitness[winners].mean() > fitness.mean()
    entrants_best = evo.tournament_parents(np.array([0.0, 1.0]), 100, 50, rng)
    assert set(entrants_best) == {1}  # a tournament of 50 draws almost surely contains the best
    a, b = np.zeros(6), np.ones(6)
    groups = np.array([0, 0, 1, 1, 2, 2])
    child = evo.crossover(a, b, groups, rng)
    assert all(child[2 * i] == child[2 * i + 1] for i in range(3))  # groups are inherited whole
    g = gen.WeightGenome(gen.NetworkSpec(obs_dim=11, act_dim=3, hidden=(3,)))
    pop = np.stack([g.centre + i for i in range(4)])
    cfg = evo.EvolutionConfig(pop_size=4, truncation=2, sigma=0.1, crossover_prob=1.0, selection="tournament")
    nxt = evo.next_population(pop, np.arange(4.0), pop[3], cfg, g, rng)
    assert nxt.shape == pop.shape
    np.testing.assert_array_equal(nxt[0], pop[3])
    z = gen.mutate(np.zeros((2000, 3)), 0.5, np.array([1.0, 2.0, 0.0]), rng)
    np.testing.assert_allclose(z.std(axis=0), [0.5, 1.0, 0.0], atol=0.05)


def test_config_checks():
    with pytest.raises(ValueError):
        evo.EvolutionConfig(method="es")
    with pytest.raises(ValueError):
        evo.EvolutionConfig(pop_size=4, truncation=5)
    assert evo.EvolutionConfig(pop_size=2, truncation=1, elite_candidates=1, elite_episodes=2, max_steps=10).generation_cost_bound() == (2 + 2 * 2) * 10
    assert evo.run_seed(0, "ga/weights", "finetune", 1) == evo.run_seed(0, "ga/weights", "finetune", 1) != evo.run_seed(0, "ga/weights", "finetune", 2)


def test_stage_parameters_are_validated():
    p = LatentEvolutionParams.from_mapping({"grid": ["ga/dct:0+2", "cma/latent:best"], "starts": ["scratch"]})
    assert p.grid == ["ga/dct:0+2", "cma/latent:best"]
    assert LatentEvolutionParams.from_mapping({"starts": ["finetune_train", "finetune"]}).starts == ["finetune_train", "finetune"]
    assert LatentEvolutionParams.from_mapping({"grid": ["ga/weights@latent:all", "ga/weights@pca:0+2"]}).grid[0] == "ga/weights@latent:all"
    bad = [
        {"grid": ["ga/latent:all@pca:all"]},  # only weight space starts from another genome's decoding
        {"grid": ["ga/weights@weights"]},
        {"grid": ["cma/weights@latent:all"]},
        {"grid": ["ga/weights@nothing"]},
        {"starts": ["finetune", "finetune"]},
        {"starts": []},
        {"grid": ["cma/weights"]},
        {"grid": ["ga/autoencoder"]},
        {"grid": ["ga"]},
        {"grid": ["ga/weights", "ga/weights"]},
        {"starts": ["warm"]},
        {"selection": "roulette"},
        {"budget_steps": 10_000},  # below one generation's worst case
        {"truncation": 64},
        {"crossover_prob": 1.5},
    ]
    for values in bad:
        with pytest.raises(ParameterError):
            LatentEvolutionParams.from_mapping(values)


@pytest.mark.parametrize("module", [gen, evo], ids=lambda m: m.__name__)
def test_docstring_examples(module):
    import doctest

    assert doctest.testmod(module, raise_on_error=False).failed == 0


def test_sample_policies_scores_each_genomes_scratch_distribution_like_evaluate(zoo, stage2):
    """The random-policy sampler: each genome's random codes, decoded, scored by evaluate on the same seeds;
    reproducible from the master seed, and each genome's draws independent of the others in the batch."""
    genomes = {name: gen.build_genome(name, train=zoo["train"], stage2_dir=stage2, best_layer=1)
               for name in ("weights", "latent:all", "pca:all")}
    seeds = eval_seeds("champion_report", 2)
    sample = evo.sample_policies(genomes, 4, seeds, master_seed=7, max_steps=30)
    assert list(sample.returns) == list(genomes) and all(r.shape == (4,) for r in sample.returns.values())
    assert 0 < sample.env_steps <= 3 * 4 * 2 * 30 and sample.seconds > 0
    for name, genome in genomes.items():  # by hand: the genome's own draws, decoded and evaluated
        codes = genome.random_codes(4, np.random.default_rng(evo.run_seed(7, "policy_sample", name)))
        alone = evaluate(genome.decode(codes), seeds, max_steps=30).returns.mean(axis=1)
        np.testing.assert_array_equal(sample.returns[name], alone)
    again = evo.sample_policies({"latent:all": genomes["latent:all"]}, 4, seeds, master_seed=7, max_steps=30)
    np.testing.assert_array_equal(again.returns["latent:all"], sample.returns["latent:all"])
    with pytest.raises(ValueError):
        evo.sample_policies(genomes, 0, seeds)


def test_grid_runs_builds_every_entry_start_and_replicate_as_stage_4_did(zoo, stage2):
    """evolution.grid_runs with genomes.GenomeGrid: run ids, seeds, starts and fingerprints as the notebook's own
    loop built them; fine-tune-only names get no scratch runs; exact starts hold their network bitwise."""
    grid = ["ga/weights", "ga/latent:all", "ga/latent:all~decoded", "ga/weights@latent:all"]
    names = [e.split("/", 1)[1] for e in grid]
    genome_grid = gen.GenomeGrid(names, train=zoo["train"], stage2_dir=stage2, best_layer=1)
    assert sorted(genome_grid.built) == ["latent:all", "weights"]
    assert genome_grid.fine_tune_only == {"latent:all~decoded", "weights@latent:all"}
    start_of = {("finetune", r): (f"net{r}", zoo["test"][r]) for r in range(2)}
    sigmas = {(n, s): 0.1 for n in names for s in ("finetune", "scratch")}
    runs = evo.grid_runs(grid, ["finetune", "scratch"], 2, genome_grid, sigmas, start_of=start_of, master_seed=3,
                         config_for=lambda **kw: config(**kw))
    assert len(runs) == 4 * 2 + 2 * 2
    by_id = {r.run_id: r for r in runs}
    assert set(by_id) >= {"ga-weights_via_latent_all-finetune-s1", "ga-latent_all_decoded-finetune-s0", "ga-latent_all-scratch-s1"}
    for run in runs:
        entry, start, r = run.info["label"], run.info["start"], run.info["replicate"]
        method, name = entry.split("/", 1)
        assert run.config.seed == evo.run_seed(3, entry, start, r)
        assert run.config.fitness_seed_offset == r * evo.SEEDS_PER_REPLICATE
        if start == "scratch":
            assert run.start is None and run.info["start_network"] is None and run.genome is genome_grid.genomes[name]
            continue
        net = zoo["test"][r]
        genome, z0 = genome_grid.fine_tune(name, net)
        assert run.info["start_network"] == f"net{r}" and np.array_equal(run.start, z0)
        assert run.fingerprint == evo.run_fingerprint(run.config, genome, z0, run.info)
        if genome_grid.start_mode[name] == "exact":
            assert run.genome.decode(run.start).flat().tobytes() == net.flat().tobytes()


def test_genome_grid_calibrates_as_calibrate_sigma_per_name_and_start(zoo, stage2):
    names = ["weights", "latent:all", "latent:all~decoded"]
    genome_grid = gen.GenomeGrid(names, train=zoo["train"], stage2_dir=stage2, best_layer=1)
    states = np.random.default_rng(0).normal(size=(16, zoo["train"][0].spec.obs_dim))
    pools = {"finetune": zoo["test"][:2]}
    sigmas = genome_grid.calibrate(["finetune", "scratch"], pools, states, 0.05, seed=2)
    assert set(sigmas) == {(n, "finetune") for n in names} | {("weights", "scratch"), ("latent:all", "scratch")}
    per, parents = zip(*[genome_grid.fine_tune("latent:all~decoded", net) for net in pools["finetune"]])
    assert sigmas[("latent:all~decoded", "finetune")] == gen.calibrate_sigma(list(per), np.stack(parents), states, 0.05, seed=2)
    g = genome_grid.genomes["latent:all"]
    assert sigmas[("latent:all", "scratch")] == gen.calibrate_sigma(g, g.random_codes(4, np.random.default_rng(2)), states, 0.05, seed=2)
