"""Neuroevolution on any genome at a fixed budget of environment steps: a Deep-GA-style genetic
algorithm and CMA-ES, written so that many runs share one batched evaluation.

**How an algorithm is written.** Each algorithm is a Python generator that reads top to bottom
like a plain loop. Where it needs episodes it yields an :class:`EvalRequest` (networks and
reset seeds) and receives the :class:`~nnae_utils.rollouts.EvalResult`::

    result = yield EvalRequest(genome.decode(population), seeds, counted=True, purpose="fitness")

A driver (:func:`run_lockstep`) advances many runs together and answers all their pending
requests with **one** call of :func:`nnae_utils.rollouts.evaluate`, the suite's only evaluation
function. That function is pure (results do not depend on what else is in the batch), so a run
gives the same numbers alone, batched with others, or resumed from a checkpoint. A later
CERL-like stage reuses the pieces: the operators (:func:`truncation_parents`,
:func:`tournament_parents`, :func:`crossover`, :func:`~nnae_utils.genomes.mutate`), the champion
rule (:func:`choose_champion`), the budget and seed bookkeeping (:class:`RunState`) and the driver.

**The fairness rules, enforced here.**

- *Budget in environment steps, every step counted*: fitness episodes *and* the episodes that
  re-evaluate elite candidates (``EvalResult.env_steps``). A generation starts only if its worst
  case (every episode running to ``max_steps``) fits in what is left, so a run never overspends;
  what it leaves unspent is recorded.
- *A champion's reported return never comes from the score that selected it*: fitness and
  elite episodes use the ``evolution_fitness`` reset seeds; each generation's champion is scored
  on ``champion_report`` seeds, which never select anything (reporting episodes are not part of
  the budget, and are listed separately).
- *Paired seeds*: within a generation every individual plays the same fitness seeds, and every
  elite candidate the same re-evaluation seeds; all runs with the same replicate index draw the
  same fitness seeds, and every champion is reported on the same seeds.

**Deep GA** (Such et al. 2017): truncation selection (parents drawn uniformly from the top ``T``),
Gaussian mutation, no crossover, one elite carried unchanged into the next generation and chosen
among the top candidates by extra episodes. CERL's (Khadka et al. 2019) tournament selection and
crossover are options. **CMA-ES** is pycma's (``cma``), driven by ask/tell, with the same champion
rule.

**Checkpoints** (``.npz``, no pickles) are written after every generation: population, champion,
RNG state, counters, the curve, and, for CMA-ES, the fitness values of every generation: pycma's
state is rebuilt on resume by replaying ``ask``/``tell`` with its own seeded sampler, which
reproduces it exactly without pickling it.

Example:
    >>> from nnae_utils.genomes import WeightGenome
    >>> from nnae_utils.policies import NetworkSpec
    >>> g = WeightGenome(NetworkSpec(obs_dim=11, act_dim=3, hidden=(4,)))
    >>> cfg = EvolutionConfig(method="ga", budget_steps=400, pop_size=3, truncation=2, sigma=0.05,
    ...                       elite_candidates=1, elite_episodes=1, report_episodes=1, max_steps=20)
    >>> state = run_lockstep([Run("demo", cfg, g, start=None)])["demo"]
    >>> state.env_steps <= 400, state.generation >= 1
    (True, True)
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generator, Sequence

import numpy as np

from . import backends
from .io import atomic_write, jsonable, write_json
from .genomes import Genome, mutate
from .policies import Network
from .rollouts import EvalResult
from .seeds import eval_seeds

METHODS = ("ga", "cma")
SELECTIONS = ("truncation", "tournament")
CHECKPOINT_FILE = "state.npz"
COMPUTE_FILE = "compute.json"
"""Beside a run's checkpoint: the wall seconds spent advancing it, summed over every session that did."""
SEEDS_PER_REPLICATE = 1_000_000
"""Fitness reset seeds reserved for one replicate index (its runs draw them in order)."""


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class GASettings:
    """The population's settings, shared by evolution alone (:class:`EvolutionConfig`) and CERL's
    population (:class:`nnae_utils.cerl.CERLConfig`): the operators and the champion rule below read them."""

    pop_size: int = 32
    """Individuals per generation (GA) or CMA-ES's lambda."""
    sigma: float = 0.1
    """GA: mutation std; CMA-ES: initial step size. Both in units of the genome's per-coordinate ``scale``."""
    truncation: int = 8
    """GA, truncation selection: parents are drawn uniformly from the top ``truncation`` individuals."""
    selection: str = "truncation"
    """GA parent selection: 'truncation' (Deep GA) or 'tournament' (CERL)."""
    tournament_size: int = 3
    """GA, tournament selection: individuals per tournament (CERL: 3)."""
    crossover_prob: float = 0.0
    """GA: probability that a child is the uniform crossover of two parents (over the genome's groups) before mutation (Deep GA: 0)."""
    fitness_episodes: int = 1
    """Episodes per individual per generation; every individual plays the same reset seeds."""
    elite_candidates: int = 3
    """Top individuals by fitness that compete for champion (with the previous champion) each generation."""
    elite_episodes: int = 2
    """Extra episodes per champion candidate (counted in the budget); the champion is the best by them alone."""
    report_episodes: int = 5
    """Fresh episodes (champion_report seeds) that score each new champion; never used to select, never counted."""

    def check_population(self, owner: str) -> None:
        """Range checks of these settings (``pop_size`` 0 passes: a run with no population)."""
        if self.selection not in SELECTIONS:
            raise ValueError(f"{owner}.selection must be one of {SELECTIONS}, got {self.selection!r}")
        for name in ("truncation", "tournament_size", "fitness_episodes", "elite_candidates", "elite_episodes",
                     "report_episodes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{owner}.{name} must be > 0, got {getattr(self, name)!r}")
        if self.pop_size < 0:
            raise ValueError(f"{owner}.pop_size must be >= 0, got {self.pop_size}")
        if self.pop_size and (self.truncation > self.pop_size or self.elite_candidates > self.pop_size):
            raise ValueError(f"{owner}: truncation and elite_candidates must not exceed pop_size")
        if not self.sigma > 0:
            raise ValueError(f"{owner}.sigma must be > 0, got {self.sigma}")
        if not 0.0 <= self.crossover_prob <= 1.0:
            raise ValueError(f"{owner}.crossover_prob must lie in [0, 1], got {self.crossover_prob}")


@dataclass(frozen=True)
class EvolutionConfig(GASettings):
    """One run's algorithm and evaluation settings (the genome and the start are given separately)."""

    method: str = "ga"
    """'ga' (Deep-GA-style genetic algorithm) or 'cma' (CMA-ES, ask/tell)."""
    budget_steps: int = 300_000
    """Environment steps the run may spend on fitness and elite re-evaluation episodes."""
    max_steps: int = 1000
    """Episode cap (Hopper-v5's time limit is 1000)."""
    cma_full_max_dim: int = 2000
    """CMA-ES adapts a full covariance up to this genome size and a diagonal one above it (sep-CMA-ES: the
    full matrix has dim^2 entries and an O(dim^3) eigendecomposition)."""
    seed: int = 0
    """Seed of the run's random numbers (initial population, mutations, selection, CMA-ES's sampler)."""
    fitness_seed_offset: int = 0
    """Where in the evolution_fitness seed range this run's fitness seeds start (one block per replicate)."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        self.check_population("EvolutionConfig")
        for name in ("budget_steps", "pop_size", "max_steps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"EvolutionConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.method == "ga" and self.pop_size < 2:
            raise ValueError("the GA needs pop_size >= 2 (one elite and at least one child)")

    def generation_cost_bound(self) -> int:
        """Most env steps one generation can spend: every fitness and elite episode at the cap."""
        episodes = self.pop_size * self.fitness_episodes + (self.elite_candidates + 1) * self.elite_episodes
        return episodes * self.max_steps


# --------------------------------------------------------------------------- requests and state


@dataclass
class EvalRequest:
    """Episodes an algorithm needs: every network plays every seed (paired evaluation)."""

    networks: list[Network]
    seeds: np.ndarray
    """(E,) reset seeds shared by every network."""
    counted: bool
    """Whether these episodes count towards the budget (fitness, elite) or are measurement (report)."""
    purpose: str = ""
    """'fitness', 'elite' or 'report' (for logs and tests)."""


@dataclass
class RunState:
    """Everything a run needs to continue: what a checkpoint holds."""

    rng: np.random.Generator
    generation: int = 0
    """Generations completed."""
    env_steps: int = 0
    """Counted env steps spent (fitness + elite re-evaluation)."""
    report_steps: int = 0
    """Env steps of reporting episodes (not counted in the budget)."""
    seed_cursor: int = 0
    """Fitness seeds used so far (the next one is fitness_seed_offset + seed_cursor)."""
    population: np.ndarray | None = None
    champion: np.ndarray | None = None
    """Genome vector of the current champion."""
    champion_returns: np.ndarray | None = None
    """Report-episode returns of the champion."""
    reported: np.ndarray | None = None
    """The vector ``champion_returns`` belong to (a champion kept from the last generation is not re-scored: evaluation is pure)."""
    fitness_history: list[np.ndarray] = field(default_factory=list)
    """CMA-ES: every generation's fitness values, in ask order (replayed on resume)."""
    curve: list[dict[str, Any]] = field(default_factory=list)
    """One record per generation (plus the start, when fine-tuning)."""
    done: bool = False
    stop_reason: str = ""

    # -- seeds
    def take_fitness_seeds(self, cfg: EvolutionConfig, n: int) -> np.ndarray:
        """The next ``n`` fitness seeds of this run's replicate block."""
        if self.seed_cursor + n > SEEDS_PER_REPLICATE:
            raise RuntimeError("a run used up its replicate's block of fitness seeds")
        seeds = eval_seeds("evolution_fitness", n, offset=cfg.fitness_seed_offset + self.seed_cursor)
        self.seed_cursor += n
        return seeds

    # -- checkpoint
    def save(self, path: Path, fingerprint: str) -> None:
        """Write the state atomically (temp file + rename) as one .npz: arrays, and the rest as a JSON string."""
        meta = {
            "fingerprint": fingerprint, "generation": self.generation, "env_steps": self.env_steps,
            "report_steps": self.report_steps, "seed_cursor": self.seed_cursor, "curve": self.curve,
            "done": self.done, "stop_reason": self.stop_reason, "rng": self.rng.bit_generator.state,
        }
        arrays = {"meta": np.array(json.dumps(jsonable(meta)))}
        for name in ("population", "champion", "champion_returns", "reported"):
            value = getattr(self, name)
            if value is not None:
                arrays[name] = np.asarray(value)
        if self.fitness_history:
            arrays["fitness_history"] = np.stack(self.fitness_history)
        atomic_write(path, lambda f: np.savez(f, **arrays))

    @staticmethod
    def read_meta(path: Path) -> dict[str, Any]:
        """A saved state's counters, curve and fingerprint (no arrays), whichever run wrote it."""
        with np.load(path, allow_pickle=False) as f:
            return json.loads(str(f["meta"]))

    @classmethod
    def load(cls, path: Path, fingerprint: str) -> "RunState | None":
        """The saved state, or None if there is none; an error if it belongs to another run."""
        if not path.is_file():
            return None
        meta = cls.read_meta(path)
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k].copy() for k in f.files if k != "meta"}
        if meta["fingerprint"] != fingerprint:
            raise ValueError(f"checkpoint {path} belongs to another run (fingerprint {meta['fingerprint']} != {fingerprint})")
        rng = np.random.default_rng()
        rng.bit_generator.state = meta["rng"]
        history = list(arrays.pop("fitness_history")) if "fitness_history" in arrays else []
        return cls(rng=rng, generation=meta["generation"], env_steps=meta["env_steps"], report_steps=meta["report_steps"],
                   seed_cursor=meta["seed_cursor"], population=arrays.get("population"), champion=arrays.get("champion"),
                   champion_returns=arrays.get("champion_returns"), reported=arrays.get("reported"),
                   fitness_history=history, curve=meta["curve"], done=meta["done"], stop_reason=meta["stop_reason"])



def run_fingerprint(cfg: EvolutionConfig, genome: Genome, start: np.ndarray | None, extra: Any = None) -> str:
    """A hash of everything that determines a run: a checkpoint is resumed only by the run that wrote it."""
    h = hashlib.sha256()
    h.update(json.dumps(dataclasses.asdict(cfg), sort_keys=True).encode())
    h.update(genome.fingerprint().encode())
    h.update(b"scratch" if start is None else np.ascontiguousarray(start, np.float64).tobytes())
    h.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- operators


def top_k(fitness: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` best, best first (ties: the lower index first, so results are reproducible)."""
    return np.argsort(-np.asarray(fitness), kind="stable")[:k]


def truncation_parents(fitness: np.ndarray, n: int, truncation: int, rng: np.random.Generator) -> np.ndarray:
    """Deep GA: ``n`` parents drawn uniformly, with replacement, from the top ``truncation``."""
    return top_k(fitness, truncation)[rng.integers(0, truncation, size=n)]


def tournament_parents(fitness: np.ndarray, n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """CERL: each parent is the best of ``size`` individuals drawn uniformly (with replacement)."""
    entrants = rng.integers(0, len(fitness), size=(n, size))
    return entrants[np.arange(n), np.argmax(np.asarray(fitness)[entrants], axis=1)]


def crossover(a: np.ndarray, b: np.ndarray, groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Uniform crossover over groups: each group of coordinates (a weight row with its bias, or one latent
    coordinate) comes from ``a`` or ``b`` with probability 1/2 (CERL swaps rows of weight matrices)."""
    take_b = rng.random(int(groups.max()) + 1) < 0.5
    return np.where(take_b[groups], b, a)


def next_population(population: np.ndarray, fitness: np.ndarray, champion: np.ndarray, cfg: EvolutionConfig,
                    genome: Genome, rng: np.random.Generator) -> np.ndarray:
    """The GA's next generation: the champion unchanged (elitism), then ``pop_size - 1`` children.

    A child: a parent (truncation or tournament selection), crossed with a second parent with
    probability ``crossover_prob``, then mutated by ``sigma * scale * N(0, 1)``.
    """
    return bred_population(population, fitness, champion, cfg, genome, rng)[0]


def bred_population(population: np.ndarray, fitness: np.ndarray, champion: np.ndarray, cfg: EvolutionConfig,
                    genome: Genome, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`next_population` with each row's parents: ``(population, parent, mate)``, where ``parent[i]``
    is the index (in the old population) of row ``i``'s parent and ``mate[i]`` that of its crossover
    partner, -1 where there is none (row 0, the champion, has neither). It draws the same random numbers
    as :func:`next_population`, so either gives the same population (CERL uses the parents to follow
    which individuals descend from migrants).

    Example:
        >>> from nnae_utils.genomes import WeightGenome
        >>> from nnae_utils.policies import NetworkSpec
        >>> g = WeightGenome(NetworkSpec(obs_dim=11, act_dim=3, hidden=(4,)))
        >>> cfg = EvolutionConfig(pop_size=4, truncation=1, elite_candidates=1)
        >>> pop = g.random_codes(4, np.random.default_rng(0))
        >>> new, parent, mate = bred_population(pop, np.array([0.0, 5.0, 1.0, 2.0]), pop[1], cfg, g, np.random.default_rng(1))
        >>> parent.tolist(), mate.tolist()      # truncation 1: every child's parent is the fittest, row 1
        ([-1, 1, 1, 1], [-1, -1, -1, -1])
    """
    n = cfg.pop_size - 1
    pick = truncation_parents if cfg.selection == "truncation" else tournament_parents
    arg = cfg.truncation if cfg.selection == "truncation" else cfg.tournament_size
    parent_idx = pick(fitness, n, arg, rng)
    parents = population[parent_idx]
    mate_idx = np.full(n, -1)
    if cfg.crossover_prob > 0:
        drawn = pick(fitness, n, arg, rng)
        mates = population[drawn]
        crossed = rng.random(n) < cfg.crossover_prob
        for i in np.flatnonzero(crossed):
            parents[i] = crossover(parents[i], mates[i], genome.groups, rng)
        mate_idx = np.where(crossed, drawn, -1)
    children = mutate(parents, cfg.sigma, genome.scale, rng)
    return (np.vstack([champion[None], children]), np.concatenate([[-1], parent_idx]).astype(np.int64),
            np.concatenate([[-1], mate_idx]).astype(np.int64))


# --------------------------------------------------------------------------- shared steps


def choose_champion(state: RunState, cfg: EvolutionConfig, genome: Genome,
                    candidates: np.ndarray) -> Generator[EvalRequest, EvalResult, int]:
    """Re-evaluate ``candidates`` (rows: genome vectors) on ``elite_episodes`` fresh fitness seeds,
    the same for all; return the index of the best by those episodes alone (Deep GA's elite rule:
    the episode that put a candidate in the top is not reused, it is biased upwards)."""
    seeds = state.take_fitness_seeds(cfg, cfg.elite_episodes)
    result = yield EvalRequest(list(genome.decode(candidates)), seeds, counted=True, purpose="elite")
    state.env_steps += result.env_steps
    return int(np.argmax(result.returns.mean(axis=1)))


def report_champion(state: RunState, cfg: EvolutionConfig, genome: Genome) -> Generator[EvalRequest, EvalResult, None]:
    """Score the champion on the champion_report seeds, unless it is the one already scored."""
    if state.reported is not None and np.array_equal(state.reported, state.champion):
        return
    seeds = eval_seeds("champion_report", cfg.report_episodes)
    result = yield EvalRequest([genome.decode(state.champion)], seeds, counted=False, purpose="report")
    state.report_steps += result.env_steps
    state.champion_returns = result.returns[0].copy()
    state.reported = state.champion.copy()


def curve_row(state: RunState, fitness: np.ndarray | None, **extra: Any) -> dict[str, Any]:
    """One curve record: generations done, counted steps, the champion's report return and the
    population's fitness, then the algorithm's own columns (``extra``). The one home of a curve
    row: GA, CMA-ES and the CERL hybrid (:mod:`nnae_utils.cerl`) all record with it."""
    row = {
        "generation": state.generation,
        "env_steps": state.env_steps,
        "champion_return": float(state.champion_returns.mean()),
        "champion_return_std": float(state.champion_returns.std()),
        # None (JSON null), not NaN, for the start's row: it has no fitness, and records must compare equal
        "best_fitness": float(np.max(fitness)) if fitness is not None else None,
        "median_fitness": float(np.median(fitness)) if fitness is not None else None,
    }
    return {**row, **extra}


def score_start(state: RunState, cfg: EvolutionConfig, genome: Genome, start: np.ndarray,
                **extra: Any) -> Generator[EvalRequest, EvalResult, None]:
    """Fine-tuning: the start (a genome vector of ``genome``) becomes the champion, is scored on the
    report seeds and is the curve's first record, at 0 steps. The one home of a run's start: GA,
    CMA-ES and the CERL hybrid (which scores its start network as a weight vector)."""
    state.champion = np.asarray(start, np.float64).copy()
    yield from report_champion(state, cfg, genome)
    state.curve.append(curve_row(state, None, **extra))


def first_population(cfg: GASettings, genome: Genome, start: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """A GA's first population: ``pop_size`` random codes, or, fine-tuning, the start's code (row 0)
    and ``pop_size - 1`` mutants of it. The one home of this rule: the GA and the CERL hybrid."""
    if start is None:
        return genome.random_codes(cfg.pop_size, rng)
    mutants = mutate(np.repeat(start[None], cfg.pop_size - 1, axis=0), cfg.sigma, genome.scale, rng)
    return np.vstack([start[None], mutants])


def _record(state: RunState, fitness: np.ndarray | None, **extra: Any) -> None:
    state.curve.append(curve_row(state, fitness, **extra))


def _out_of_budget(state: RunState, cfg: EvolutionConfig) -> bool:
    if state.env_steps + cfg.generation_cost_bound() > cfg.budget_steps:
        state.done, state.stop_reason = True, "budget"
        return True
    return False


# --------------------------------------------------------------------------- the algorithms


def genetic_algorithm(cfg: EvolutionConfig, genome: Genome, start: np.ndarray | None,
                      checkpoint: Path | None = None, fingerprint: str = "",
                      stop_after: int | None = None) -> Generator[EvalRequest, EvalResult, RunState]:
    """Deep-GA-style genetic algorithm (see the module docstring), one generation per loop.

    ``start``: the genome vector to fine-tune (the first population is it and ``pop_size - 1``
    mutants of it), or None to start from ``genome.random_codes``. ``stop_after``: return after that
    many generations (as if killed; tests use it to check resuming).
    """
    state = RunState.load(checkpoint, fingerprint) if checkpoint else None
    if state is None:
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0]))
        state = RunState(rng=rng)
        start = None if start is None else np.asarray(start, np.float64)
        state.population = first_population(cfg, genome, start, rng)
        if start is not None:
            yield from score_start(state, cfg, genome, start)  # the start's return, at 0 steps
        _save(state, checkpoint, fingerprint)
    rng = state.rng

    while not state.done and not _out_of_budget(state, cfg):
        if stop_after is not None and state.generation >= stop_after:
            return state
        population = state.population
        # 1. fitness: every individual plays the same fresh fitness seeds
        seeds = state.take_fitness_seeds(cfg, cfg.fitness_episodes)
        result = yield EvalRequest(list(genome.decode(population)), seeds, counted=True, purpose="fitness")
        state.env_steps += result.env_steps
        fitness = result.returns.mean(axis=1)

        # 2. champion: the top candidates and individual 0 (the champion carried over) get extra episodes
        candidates = top_k(fitness, cfg.elite_candidates)
        if 0 not in candidates:
            candidates = np.append(candidates, 0)
        winner = yield from choose_champion(state, cfg, genome, population[candidates])
        state.champion = population[candidates[winner]].copy()

        # 3. report it on fresh seeds (measurement only: never feeds back into selection)
        yield from report_champion(state, cfg, genome)
        state.generation += 1
        _record(state, fitness, elite_index=int(candidates[winner]))

        # 4. breed: the champion unchanged, then mutated children of selected parents
        state.population = next_population(population, fitness, state.champion, cfg, genome, rng)
        _save(state, checkpoint, fingerprint)

    _save(state, checkpoint, fingerprint)
    return state


def _cma_options(cfg: EvolutionConfig, genome: Genome, sampler: np.random.Generator) -> dict[str, Any]:
    """pycma options: our population size and coordinate scales, our seeded sampler (never numpy's global
    one), no files, no messages, and no termination: the budget ends the run."""
    return {
        "popsize": cfg.pop_size, "CMA_stds": genome.scale.tolist(), "CMA_diagonal": genome.dim > cfg.cma_full_max_dim,
        "randn": lambda lam, n: sampler.standard_normal((lam, n)), "seed": float("nan"),
        "verbose": -9, "verb_log": 0, "verb_disp": 0,
        "tolx": 0, "tolfun": 0, "tolfunhist": 0, "tolflatfitness": math.inf, "tolstagnation": math.inf,
        "tolconditioncov": math.inf, "tolupsigma": math.inf, "maxiter": math.inf, "maxfevals": math.inf,
    }


def cma_es(cfg: EvolutionConfig, genome: Genome, start: np.ndarray | None, checkpoint: Path | None = None,
           fingerprint: str = "", stop_after: int | None = None) -> Generator[EvalRequest, EvalResult, RunState]:
    """CMA-ES (pycma, ask/tell) from ``start`` (or a random code), with the GA's champion rule.

    The champion of a generation is chosen among the ``elite_candidates`` best samples and the
    previous champion, by ``elite_episodes`` extra episodes each (counted), exactly as in the GA.
    """
    import cma

    init_rng, sampler = (np.random.default_rng(s) for s in np.random.SeedSequence([cfg.seed, 1]).spawn(2))
    x0 = np.asarray(start, np.float64) if start is not None else genome.random_codes(1, init_rng)[0]
    es = cma.CMAEvolutionStrategy(x0.tolist(), cfg.sigma, _cma_options(cfg, genome, sampler))

    state = RunState.load(checkpoint, fingerprint) if checkpoint else None
    if state is None:
        state = RunState(rng=init_rng)
        if start is not None:
            yield from score_start(state, cfg, genome, x0, sigma=float(es.sigma))
        _save(state, checkpoint, fingerprint)
    else:
        # rebuild pycma's state: the same sampler asked again gives the same samples; tell the stored fitness
        for fitness in state.fitness_history:
            samples = np.asarray(es.ask())
            es.tell(list(samples), (-fitness).tolist())
        if state.population is not None and state.fitness_history and not np.array_equal(samples, state.population):
            raise RuntimeError("replaying the CMA-ES checkpoint did not reproduce its last population")

    while not state.done and not _out_of_budget(state, cfg):
        if stop_after is not None and state.generation >= stop_after:
            return state
        # 1. fitness of lambda samples; pycma minimises, so it is told the negated returns
        samples = np.asarray(es.ask())
        seeds = state.take_fitness_seeds(cfg, cfg.fitness_episodes)
        result = yield EvalRequest(list(genome.decode(samples)), seeds, counted=True, purpose="fitness")
        state.env_steps += result.env_steps
        fitness = result.returns.mean(axis=1)
        es.tell(list(samples), (-fitness).tolist())
        state.fitness_history.append(fitness)
        state.population = samples

        # 2. champion among the best samples and the previous champion
        candidates = samples[top_k(fitness, cfg.elite_candidates)]
        if state.champion is not None:
            candidates = np.vstack([candidates, state.champion[None]])
        winner = yield from choose_champion(state, cfg, genome, candidates)
        state.champion = candidates[winner].copy()

        # 3. report, record, checkpoint
        yield from report_champion(state, cfg, genome)
        state.generation += 1
        _record(state, fitness, sigma=float(es.sigma))
        _save(state, checkpoint, fingerprint)

    _save(state, checkpoint, fingerprint)
    return state


ALGORITHMS = {"ga": genetic_algorithm, "cma": cma_es}


def run_seed(master: int, *labels: Any) -> int:
    """A run's seed from the stage's master seed and its labels (method, genome, start, replicate)."""
    digest = hashlib.sha256(json.dumps([master, *labels], default=str).encode()).digest()
    return int.from_bytes(digest[:4], "little")


@dataclass
class PolicySample:
    """Random policies drawn from genomes' scratch distributions, scored (:func:`sample_policies`)."""

    returns: dict[str, np.ndarray]
    """genome name -> (n,) each policy's mean return over the episodes."""
    env_steps: int
    """Env steps the sample played (not part of any run's budget)."""
    seconds: float
    """Wall seconds of decoding and scoring."""


def sample_policies(genomes: dict[str, Genome], n: int, seeds: Sequence[int] | np.ndarray, *, master_seed: int = 0,
                    max_steps: int = 1000, nthread: int | None = None, backend=None) -> PolicySample:
    """The return of ``n`` random policies of each genome: what its space holds before any search.

    Each genome draws ``n`` vectors from its scratch distribution (``Genome.random_codes``: for the
    weight genome freshly initialised networks, for the zoo-based genomes random codes around the
    zoo's centre with the zoo's spread, the starts of evolution from scratch) with a generator
    seeded by ``run_seed(master_seed, "policy_sample", name)``, decodes them, and every policy plays
    the same reset ``seeds`` (paired) in one batched evaluation. The Policy Manifold Search
    question: do decoded random codes act better than random weights?

    Example:
        >>> from nnae_utils.genomes import WeightGenome
        >>> from nnae_utils.policies import NetworkSpec
        >>> g = WeightGenome(NetworkSpec(obs_dim=11, act_dim=3, hidden=(4,)))
        >>> s = sample_policies({"weights": g}, 3, [0, 1], max_steps=20)
        >>> s.returns["weights"].shape, 0 < s.env_steps <= 3 * 2 * 20
        ((3,), True)
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    seeds = np.asarray(seeds, np.int64)
    backend = backends.resolve(backend)
    start = time.perf_counter()
    networks = []
    for name, genome in genomes.items():
        codes = genome.random_codes(n, np.random.default_rng(run_seed(master_seed, "policy_sample", name)))
        decoded = genome.decode(codes)
        networks.extend([decoded] if not isinstance(decoded, list) else decoded)
    result = backend.evaluate(networks, seeds, max_steps=max_steps, nthread=nthread)
    means = result.returns.mean(axis=1)
    returns = {name: means[k * n:(k + 1) * n] for k, name in enumerate(genomes)}
    return PolicySample(returns, int(result.lengths.sum()), time.perf_counter() - start)


def run_tag(name: str) -> str:
    """A genome name as it appears in a run id: ``weights@latent:all`` -> ``weights_via_latent_all``."""
    return name.replace(":", "_").replace("+", "p").replace("@", "_via_").replace("~", "_")


def grid_runs(grid: Sequence[str], starts: Sequence[str], n_seeds: int, genomes, sigmas: dict, *,
              start_of: dict, config_for, checkpoint_dir_of=None, master_seed: int = 0) -> list[Run]:
    """Stage 4's runs: every ``method/genome`` of ``grid``, start condition and replicate (in that order).

    Args:
        grid: ``method/genome`` entries.
        starts: start conditions; ``scratch`` has no start network (and no runs of fine-tune-only names).
        n_seeds: replicates per entry and start.
        genomes: a :class:`~nnae_utils.genomes.GenomeGrid` of the grid's genome names.
        sigmas: ``(genome name, start) -> sigma``.
        start_of: ``(start, replicate) -> (network id, Network)`` for every fine-tuning start.
        config_for: ``config_for(method=..., sigma=..., seed=..., fitness_seed_offset=...)`` -> :class:`EvolutionConfig`
            (the stage's parameters fill in the rest).
        checkpoint_dir_of: ``checkpoint_dir_of(run)`` -> the run's checkpoint folder, or None.
        master_seed: the stage's seed, from which every run's seed derives (:func:`run_seed`).
    """
    runs = []
    for entry in grid:
        method, name = entry.split("/", 1)
        for start in starts:
            if start == "scratch" and name in genomes.fine_tune_only:
                continue
            for r in range(n_seeds):
                genome, z0, net_id = genomes.genomes[name], None, None
                if start != "scratch":
                    net_id, net = start_of[(start, r)]
                    genome, z0 = genomes.fine_tune(name, net)
                cfg = config_for(method=method, sigma=sigmas[(name, start)], seed=run_seed(master_seed, entry, start, r),
                                 fitness_seed_offset=r * SEEDS_PER_REPLICATE)
                info = {"label": entry, "start": start, "replicate": r,
                        "start_mode": genomes.start_mode[name] if start != "scratch" else None, "start_network": net_id}
                run = Run(f"{method}-{run_tag(name)}-{start}-s{r}", cfg, genome, z0, info=info)
                if checkpoint_dir_of is not None:
                    run.checkpoint_dir = checkpoint_dir_of(run)
                runs.append(run)
    return runs


def start_rows(runs: Sequence[Run], outcomes: dict[str, RunState], start_of: dict, start_return: dict) -> list[dict[str, Any]]:
    """What every fine-tuning run held at its first record (its start vector, before any step), for
    :func:`nnae_utils.results.start_check`: whether it decodes to its start network's bytes, and its return
    beside the start network's. ``start_of`` and ``start_return`` are keyed by ``(start, replicate)``."""
    rows = []
    for run in runs:
        start, r = run.info["start"], run.info["replicate"]
        if start == "scratch":
            continue
        at0 = outcomes[run.run_id].curve[0]  # the start vector, reported before any step
        rows.append({"start": start, "label": run.info["label"], "start mode": run.info["start_mode"],
                     "bitwise": run.genome.decode(run.start).flat().tobytes() == start_of[(start, r)].flat().tobytes(),
                     "return at δ = 0": at0["champion_return"], "start network's return": start_return[(start, r)]})
    return rows


def _save(state: RunState, checkpoint: Path | None, fingerprint: str) -> None:
    if checkpoint is not None:
        state.save(checkpoint, fingerprint)


# --------------------------------------------------------------------------- the driver


@dataclass
class Run:
    """One evolution run: its algorithm settings, genome, start and where it checkpoints."""

    run_id: str
    config: EvolutionConfig
    genome: Genome
    start: np.ndarray | None = None
    """Genome vector to fine-tune, or None for a start from scratch."""
    checkpoint_dir: Path | None = None
    """Folder of the run's checkpoint (None: no checkpoint)."""
    info: dict[str, Any] = field(default_factory=dict)
    """Labels carried to the results (method, genome, start condition, replicate, ...)."""

    @property
    def fingerprint(self) -> str:
        return run_fingerprint(self.config, self.genome, self.start, self.info)

    def process(self, stop_after: int | None = None) -> Generator[EvalRequest, EvalResult, RunState]:
        path = None if self.checkpoint_dir is None else Path(self.checkpoint_dir) / CHECKPOINT_FILE
        algorithm = ALGORITHMS[self.config.method]
        return algorithm(self.config, self.genome, self.start, path, self.fingerprint if path else "", stop_after)


def run_lockstep(runs: Sequence[Run], *, nthread: int | None = None, stop_after: int | None = None,
                 progress: bool = False, on_round=None, backend=None) -> dict[str, RunState]:
    """Advance every run until it ends; each round answers all pending requests with one ``evaluate`` call.

    A request of P networks and E seeds becomes P x E single-episode rows (network p with seed e),
    so requests of any sizes share one batch; results are cut back per request. ``stop_after``
    stops every run after that many generations (as if the process were killed). ``on_round`` is
    called after every round with the pending runs' ids (for progress display). ``backend``
    (:mod:`nnae_utils.backends`; None: the current one) evaluates each round's batch, on this
    machine or spread over a Ray cluster in chunks of rows, with the same results.
    """
    backend = backends.resolve(backend)
    ids = [r.run_id for r in runs]
    if len(set(ids)) != len(ids):
        raise ValueError("run ids must be unique")
    max_steps = {r.config.max_steps for r in runs}
    if len(max_steps) > 1:
        raise ValueError(f"runs batched together must share max_steps, got {sorted(max_steps)}")
    cap = max_steps.pop() if runs else 1000
    clock = ComputeClock(runs)
    processes = {r.run_id: r.process(stop_after) for r in runs}
    results: dict[str, RunState] = {}
    pending: dict[str, EvalRequest] = {}
    for run_id, proc in processes.items():
        _advance(run_id, proc, None, pending, results)
    bar = _bar(progress, sum(r.config.budget_steps for r in runs))
    round_start, round_cpu = time.perf_counter(), time.process_time()
    try:
        while pending:
            order = list(pending)
            networks, seeds, sizes = [], [], []
            for run_id in order:
                req = pending[run_id]
                for net in req.networks:
                    for s in req.seeds:
                        networks.append(net)
                        seeds.append(int(s))
                sizes.append((len(req.networks), len(req.seeds)))
            batch = backend.evaluate(networks, np.asarray(seeds, np.int64)[:, None], max_steps=cap, nthread=nthread)
            steps_of, offset = {}, 0
            for run_id, (p, e) in zip(order, sizes):
                rows = slice(offset, offset + p * e)
                offset += p * e
                answer = EvalResult(batch.returns[rows, 0].reshape(p, e), batch.lengths[rows, 0].reshape(p, e),
                                    batch.terminated[rows, 0].reshape(p, e))
                steps_of[run_id] = float(answer.lengths.sum())
                if pending[run_id].counted:
                    bar.update(int(steps_of[run_id]))
                del pending[run_id]
                _advance(run_id, processes[run_id], answer, pending, results)
            now, cpu = time.perf_counter(), time.process_time()
            clock.charge(steps_of, now - round_start, cpu - round_cpu)  # the round: its batch and advancing its runs
            round_start, round_cpu = now, cpu
            if on_round is not None:
                on_round(list(pending))
    finally:
        bar.close()
        clock.save()
    return results


class ComputeClock:
    """Wall and CPU seconds spent advancing each run, summed over sessions, kept in ``<checkpoint>/compute.json``.

    Runs advance in lockstep, so a round's wall time (and this process's CPU time in it) is shared
    among the runs it answered in proportion to their env steps in the round's batch; the shares of
    all runs add up to the evolution's time. A resumed stage, or a forced rerun that finds its runs
    finished, therefore still knows what its runs cost in all: the file is rewritten every ``every``
    seconds and when the rounds end, so a killed session loses at most that much. Runs without a
    checkpoint folder are not kept; nor is a run that has a checkpoint but no file (it advanced
    before the suite kept them): its cost stays unknown, never zero. The same for CPU seconds of a
    file written before they were kept (wall seconds only). CPU seconds are this process's: with a
    Ray backend the cluster's work is not in them (its wall seconds are).
    """

    def __init__(self, runs: Sequence[Run], every: float = 30.0):
        paths = {r.run_id: Path(r.checkpoint_dir) / COMPUTE_FILE for r in runs if r.checkpoint_dir is not None}
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}
        for run_id, path in paths.items():
            known = _read_compute(path)
            if known is not None or not (path.parent / CHECKPOINT_FILE).is_file():
                self.seconds[run_id] = known["wall_seconds"] if known else 0.0
                if known is None or "cpu_seconds" in known:
                    self.cpu_seconds[run_id] = known["cpu_seconds"] if known else 0.0
        self.paths = {run_id: paths[run_id] for run_id in self.seconds}
        self.every, self.saved = every, time.perf_counter()

    def charge(self, steps_of: dict[str, float], seconds: float, cpu_seconds: float = 0.0) -> None:
        total = sum(steps_of.values())
        for run_id, steps in steps_of.items():
            if total > 0 and run_id in self.seconds:
                self.seconds[run_id] += seconds * steps / total
            if total > 0 and run_id in self.cpu_seconds:
                self.cpu_seconds[run_id] += cpu_seconds * steps / total
        if time.perf_counter() - self.saved >= self.every:
            self.save()

    def save(self) -> None:
        for run_id, path in self.paths.items():
            record = {"wall_seconds": round(self.seconds[run_id], 3)}
            if run_id in self.cpu_seconds:
                record["cpu_seconds"] = round(self.cpu_seconds[run_id], 3)
            write_json(path, record, indent=None)
        self.saved = time.perf_counter()


def _compute_seconds(run: Run, key: str = "wall_seconds") -> float:
    known = None if run.checkpoint_dir is None else _read_compute(Path(run.checkpoint_dir) / COMPUTE_FILE)
    return float("nan") if known is None or key not in known else float(known[key])


def _read_compute(path: Path) -> dict[str, float] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def compute_seconds_at(path: Path) -> float | None:
    """The wall seconds a ``compute.json`` holds, or None where there is none (a run checkpointed
    before the suite kept them)."""
    known = _read_compute(path)
    return None if known is None else known["wall_seconds"]


def cpu_seconds_at(path: Path) -> float | None:
    """The CPU seconds a ``compute.json`` holds, or None where there are none (written before they were kept)."""
    known = _read_compute(path)
    return None if known is None else known.get("cpu_seconds")


def _advance(run_id, proc, answer, pending, results) -> None:
    try:
        pending[run_id] = proc.send(answer) if answer is not None else next(proc)
    except StopIteration as stop:
        results[run_id] = stop.value


def _bar(enabled: bool, total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="evolution (counted env steps)", unit="step", disable=not enabled, mininterval=10)


# --------------------------------------------------------------------------- results as tables


def run_table(runs: Sequence[Run], results: dict[str, RunState]):
    """One row per run: its labels (``Run.info``), what it spent and its final champion's fresh-seed return."""
    import pandas as pd

    rows = []
    for run in runs:
        st = results[run.run_id]
        rows.append({
            "run_id": run.run_id, **run.info, "method": run.config.method, "genome": run.genome.name,
            "dim": run.genome.dim, "sigma": run.config.sigma, "generations": st.generation,
            "env_steps": st.env_steps, "unspent_steps": run.config.budget_steps - st.env_steps,
            "report_env_steps": st.report_steps, "final_return": float(st.champion_returns.mean()),
            "final_return_std": float(st.champion_returns.std()), "stop_reason": st.stop_reason,
            "compute_seconds": _compute_seconds(run), "cpu_seconds": _compute_seconds(run, "cpu_seconds"),
        })
    return pd.DataFrame(rows)


def curve_table(runs: Sequence[Run], results: dict[str, RunState]):
    """Every run's curve (one row per generation, plus the start when fine-tuning), with the run's labels."""
    import pandas as pd

    frames = [pd.DataFrame(results[r.run_id].curve).assign(run_id=r.run_id, **r.info) for r in runs]
    return pd.concat(frames, ignore_index=True)
