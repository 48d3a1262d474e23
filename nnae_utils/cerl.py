"""A CERL-like hybrid (Khadka et al. 2019): a GA population and TD3 learners sharing one replay buffer.

CERL couples two optimisers that learn from the same experience. A **population** of actors is
evolved by a genetic algorithm; a portfolio of **TD3 learners** (one per discount rate) trains by
gradient descent on a **shared replay buffer** that every rollout fills, the population's
included; every few generations the learners' actors **migrate** into the population, replacing
its weakest members, so evolution can build on what gradients found. Here the GA can work in
weight space or in any genome of :mod:`nnae_utils.genomes`, the autoencoders' latent space in
particular. In a latent population a migrating actor enters either **exactly**, as its own start
(an :class:`nnae_utils.genomes.AnchoredGenome`: the actor becomes an anchor and the migrant is
``delta = 0`` around it, so it keeps its return, and its descendants search displacements around
it), or, in the paper's reading kept as an ablation (``<genome>~decoded``), as
``genome.encode(actor)``, which decodes to a network close to, but not equal to, the actor. What
an encoding loses is measured at every migration (the functional distance between the actor and
its decoded code, and both networks' returns on fresh seeds), and every generation records
whether its champion descends from a migrant (``champion_lineage``: a population member is of the
*migrant line* when a migrant is among its ancestors, parents and crossover partners alike).

**One generation** of :func:`run_cerl`, top to bottom:

1. *population fitness*: every individual plays ``fitness_episodes`` episodes on the same fresh
   reset seeds, without action noise (the GA scores the policies themselves);
2. *learner rollouts*: ``learner_episodes`` episodes handed out to the learners by the resource
   manager (equal shares, or CERL's UCB over the learners' recent returns), with Gaussian
   exploration noise;
3. *learner updates*: every learner makes ``updates_per_step`` gradient steps per env step added to
   the buffer since its last updates, once the buffer holds ``learning_starts`` transitions;
4. *champion*: the ``elite_candidates`` best individuals (and the elite carried over), every
   learner's actor and the previous champion replay ``elite_episodes`` fresh episodes each; the
   best by those alone is the champion, scored on ``champion_report`` seeds;
5. *next population*: the best population candidate is kept unchanged, the rest are children
   (:func:`nnae_utils.evolution.next_population`); every ``migration_every`` generations the
   learners' actors take the place of the last children (CERL: migrants replace individuals that
   were neither elites nor selected, i.e. the weakest);
6. *resource manager*: the next generation's learner episodes are allocated.

``pop_size=0`` is TD3 alone through the very same loop (steps 2-4 and 6 only).

**Fairness rules** (those of :mod:`nnae_utils.evolution`, but for when a run stops):

- *every env step is counted*: population fitness episodes, learner exploration episodes and
  elite re-evaluation episodes; all of them fill the replay buffer, so ``buffer.n_added ==
  env_steps``.
- *results are read at the budget*: a generation starts while fewer than ``budget_steps`` have
  been spent, so the last one may overrun the budget (by at most
  :meth:`CERLConfig.generation_cost_bound`); a run is scored on the champion known at
  ``budget_steps``, the champion of the last generation that ended within it
  (:func:`champion_at`). Stage 4's rule, a generation starts only if its worst case fits, leaves
  up to one worst-case generation unspent: for a hybrid generation of some twenty episodes that
  is several times what it is for TD3's few episodes, a large and unequal share of a budget when
  episodes are short. :mod:`nnae_utils.evolution` follows the same rule when given
  ``budget_steps + generation_cost_bound() - 1``.
- *reported returns never selected anything*: champions are scored on ``champion_report`` seeds;
  those episodes, and the ones that measure migrants, are listed separately and never counted.
- every counted episode draws its own reset seed from the run's replicate block of
  ``evolution_fitness`` seeds, in order.

**Departures from CERL's code** (public, archived: IntelAI/cerl), on purpose: time-limit
truncation is bootstrapped through (the buffer stores gymnasium's ``terminated`` only; CERL's
``done`` flag did not separate the two); exploration noise is clipped to the actor's own action
range [-1, 1]; one elite chosen by counted re-evaluation episodes (CERL keeps 20% elites chosen by
one episode each, and tests its champion on episodes it does not count); Gaussian mutations
calibrated in action space (stage 4) instead of CERL's weight-proportional ones; rollouts and
updates alternate instead of running in parallel threads; everything runs on CPU.

**Checkpoints** after every generation, in ``<checkpoint_dir>/checkpoint/``, swapped into place as
one folder: ``state.npz`` (:class:`nnae_utils.evolution.RunState`: population, champion, RNG,
counters, curve), ``learners.pt`` (every learner's ``state_dict`` and torch's RNG state,
``torch.load(weights_only=True)``), ``buffer.npz`` (:class:`nnae_utils.td3.ReplayBuffer`) and
``log.json`` (resource manager, migrations, time). A resumed run is bitwise the run that was never
interrupted (same machine, same thread counts). A *finished* run is read back from ``state.npz`` and
``log.json`` alone (:data:`FINISHED_RUN_FILES`, with the networks it kept in ``migrants/``): its
learners and buffer only ever served to continue it, so a run carried to another machine without
them (:func:`nnae_utils.published.carry`) is not recomputed there.

Example:
    >>> from nnae_utils.genomes import WeightGenome
    >>> from nnae_utils.policies import NetworkSpec
    >>> spec = NetworkSpec(obs_dim=11, act_dim=3, hidden=(4,))
    >>> cfg = CERLConfig(budget_steps=400, pop_size=3, gammas=(0.99,), learner_episodes=1, elite_candidates=1,
    ...                  elite_episodes=1, report_episodes=1, max_steps=20, critic_hidden=(8,), batch_size=8,
    ...                  learning_starts=20, sigma=0.05)
    >>> result = run_cerl(CERLRun("demo", cfg, WeightGenome(spec)))
    >>> result.state.env_steps == result.log["buffer_n_added"] <= 400 + cfg.generation_cost_bound()
    True
    >>> champion_at(result.state.curve, 400)["env_steps"] <= 400
    True
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generator, Mapping, Sequence

import numpy as np

from . import evolution as evo
from .backends import torch_threads
from .genomes import AnchoredGenome, Genome, WeightGenome, action_distance, mutate
from .policies import Network, load_network, save_network
from .rollouts import EvalResult, evaluate
from .seeds import eval_seeds

RESOURCE_MANAGERS = ("equal", "ucb")
CHECKPOINT_DIR = "checkpoint"
FINISHED_RUN_FILES = (f"{CHECKPOINT_DIR}/state.npz", f"{CHECKPOINT_DIR}/log.json", "migrants")
"""What a finished run's folder needs to give its result again (files, and a folder that may be absent)."""
LOG_VERSION = 2  # 2: probed migrants' episode returns and network files


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class CERLConfig(evo.GASettings):
    """One run's settings: the population's (:class:`nnae_utils.evolution.GASettings`, which
    evolution's operators and champion rule read, here with CERL's defaults), then the budget, the
    learners, migration and the machine."""

    # ---- budget and evaluation
    budget_steps: int = 40_000
    """Env steps the run is scored at (population fitness, learner exploration and elite re-evaluation episodes);
    generations start while fewer have been spent, so the last one may overrun it."""
    max_steps: int = 1000
    """Episode cap (Hopper-v5's time limit is 1000); a capped episode is a truncation, bootstrapped through."""
    seed: int = 0
    """Seed of the run: torch (learner initialisation, target-policy noise), the numpy Generator (GA, buffer
    batches, resource manager) and the exploration noise."""
    fitness_seed_offset: int = 0
    """Where in the evolution_fitness seed range the run's counted episodes start (one block per replicate)."""
    # ---- the population (GA): evo.GASettings, with CERL's defaults
    pop_size: int = 10
    """Individuals (CERL: 10); 0 runs the learners alone (TD3 alone through the same loop). The
    learners' actors also compete for champion."""
    selection: str = "tournament"
    truncation: int = 3
    elite_episodes: int = 1
    crossover_prob: float = 0.1
    """Probability that a child is the crossover of two parents (Deep GA's 0 is evolution alone's default)."""
    # ---- the learners (TD3)
    gammas: tuple[float, ...] = (0.99,)
    """Discount rate of each TD3 learner: the portfolio (CERL: 0.9, 0.99, 0.997, 0.9995)."""
    learner_episodes: int = 5
    """Learner exploration episodes per generation, shared out by the resource manager."""
    resource_manager: str = "equal"
    """'equal': learner episodes round-robin; 'ucb': CERL's UCB over the learners' returns, roulette-wheel sampled."""
    ucb_c: float = 0.9
    """UCB exploration coefficient (CERL: 0.9)."""
    value_ema: float = 0.2
    """Weight of a new return in a learner's exponential moving average of returns, the UCB value (CERL: 0.2)."""
    critic_hidden: tuple[int, ...] = (256, 256)
    """Hidden widths of each learner's twin Q-networks (a loaded critic must have them)."""
    batch_size: int = 256
    """Transitions per gradient update."""
    buffer_size: int = 1_000_000
    """Capacity of the shared replay buffer (CERL: 1e6)."""
    learning_starts: int = 5_000
    """Transitions the shared buffer must hold before the learners' first update."""
    updates_per_step: float = 1.0
    """Gradient updates per learner per env step added to the buffer (CERL: 1)."""
    actor_lr: float = 3e-4
    """Adam learning rate of the actors."""
    critic_lr: float = 3e-4
    """Adam learning rate of the critics."""
    tau: float = 0.005
    """Polyak rate of the target networks."""
    policy_noise: float = 0.2
    """Target-policy smoothing noise std."""
    noise_clip: float = 0.5
    """Clip of the target-policy noise."""
    policy_delay: int = 2
    """Critic updates per actor update."""
    exploration_noise: float = 0.1
    """Std of the Gaussian noise on learner actions during their rollouts (clipped to [-1, 1])."""
    warmup_noise: float = 1.0
    """Exploration std while the buffer holds fewer than ``learning_starts`` transitions (1.0, clipped, stands in
    for TD3's uniform random warm-up actions when learners start from scratch)."""
    # ---- migration
    migration_every: int = 1
    """Generations between two migrations of every learner's actor into the population (CERL: 5; stage 5: 1)."""
    probe_episodes: int = 3
    """Fresh episodes (champion_report seeds, not counted) on which a migrant and its decoded code are both
    scored, when the genome's encoding is lossy; 0 measures only the functional distance."""
    # ---- machine
    physics_threads: int = 1
    """MuJoCo threads of this run's evaluations."""
    torch_threads: int = 1
    """torch.set_num_threads while the run trains (restored afterwards)."""

    def __post_init__(self) -> None:
        for name in ("gammas", "critic_hidden"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        self.check_population("CERLConfig")
        for name in ("budget_steps", "max_steps", "batch_size", "buffer_size",
                     "policy_delay", "migration_every", "physics_threads", "torch_threads"):
            if getattr(self, name) <= 0:
                raise ValueError(f"CERLConfig.{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("learner_episodes", "learning_starts", "probe_episodes", "seed", "fitness_seed_offset",
                     "exploration_noise", "warmup_noise", "policy_noise", "noise_clip", "updates_per_step"):
            if getattr(self, name) < 0:
                raise ValueError(f"CERLConfig.{name} must be >= 0, got {getattr(self, name)!r}")
        if not self.gammas or any(not 0.0 <= g <= 1.0 for g in self.gammas):
            raise ValueError(f"CERLConfig.gammas must be a non-empty list of discounts in [0, 1], got {self.gammas}")
        if not self.critic_hidden or any(int(h) <= 0 for h in self.critic_hidden):
            raise ValueError(f"CERLConfig.critic_hidden must be positive widths, got {self.critic_hidden}")
        if self.pop_size and self.pop_size < self.n_learners + 2:
            raise ValueError(f"CERLConfig.pop_size must be 0 or at least n_learners + 2 = {self.n_learners + 2} "
                             f"(an elite, a child and one slot per migrant), got {self.pop_size}")
        if self.resource_manager not in RESOURCE_MANAGERS:
            raise ValueError(f"CERLConfig.resource_manager must be one of {RESOURCE_MANAGERS}, got {self.resource_manager!r}")
        if not 0.0 < self.value_ema <= 1.0 or not 0.0 < self.tau <= 1.0:
            raise ValueError("CERLConfig: value_ema and tau must lie in (0, 1]")
        if not (self.actor_lr > 0 and self.critic_lr > 0 and self.ucb_c >= 0):
            raise ValueError("CERLConfig: learning rates must be > 0 and ucb_c >= 0")
        if self.pop_size == 0 and self.learner_episodes == 0:
            raise ValueError("CERLConfig: with no population the learners need learner_episodes > 0 to gather data")

    @property
    def n_learners(self) -> int:
        return len(self.gammas)

    def champion_candidates_bound(self) -> int:
        """Most champion candidates one generation can re-evaluate."""
        population = self.elite_candidates + 1 if self.pop_size else 0
        return population + self.n_learners + 1

    def generation_cost_bound(self) -> int:
        """Most env steps one generation can spend: every counted episode at the cap."""
        episodes = (self.pop_size * self.fitness_episodes + self.learner_episodes
                    + self.champion_candidates_bound() * self.elite_episodes)
        return episodes * self.max_steps


# --------------------------------------------------------------------------- a run and its result


@dataclass
class CERLRun:
    """One run: its settings, the population's genome, the start and where it checkpoints."""

    run_id: str
    config: CERLConfig
    genome: Genome
    """Encoding of the population (ignored with ``pop_size=0``); fine-tuning: built ``with_base(start)``."""
    start: Network | None = None
    """Network to fine-tune (the population's first individual and every learner's actor), or None: from scratch."""
    critic: str | os.PathLike | None = None
    """A :func:`nnae_utils.td3.save_critic` file every learner's critic (and target) starts from; None: fresh."""
    checkpoint_dir: str | os.PathLike | None = None
    """Folder of the run's checkpoint (None: no checkpoint)."""
    probe_states: np.ndarray | None = None
    """States on which a migrant's functional distance to its decoded code is measured (None: not measured)."""
    info: dict[str, Any] = field(default_factory=dict)
    """Labels carried to the results (variant, start condition, replicate, ...)."""

    @property
    def fingerprint(self) -> str:
        critic = None
        if self.critic is not None:
            critic = hashlib.sha256(Path(self.critic).read_bytes()).hexdigest()[:16]
        start = None if self.start is None else self.start.flat()
        return evo.run_fingerprint(self.config, self.genome, start, {"cerl": LOG_VERSION, "critic": critic, "info": self.info})


@dataclass
class CERLResult:
    """What :func:`run_cerl` returns."""

    run_id: str
    state: evo.RunState
    """Population, champion (a flat weight vector: it may be a learner's actor), counters, curve."""
    log: dict[str, Any]
    """Resource manager, migrations, step accounting by source, time."""


# --------------------------------------------------------------------------- pieces


def ucb_allocation(values: Sequence[float | None], visits: Sequence[int], n: int, c: float,
                   rng: np.random.Generator) -> np.ndarray:
    """CERL's resource manager: ``n`` rollouts drawn by roulette wheel over the learners' UCB scores.

    A learner's value is its EMA of rollout returns, shifted and normalised across learners
    (``v - min``, then ``/ (sum + 0.1)``); its score adds ``c * sqrt(log(total visits) / visits)``.
    Scores are shifted positive as CERL does (``s - min + |min|``, so the lowest keeps a chance)
    and normalised into probabilities.

    Example:
        >>> bool(ucb_allocation([10.0, 500.0], [5, 5], 1000, 0.9, np.random.default_rng(0)).mean() > 0.5)
        True
    """
    v = np.array([np.nan if x is None else float(x) for x in values])
    v = np.where(np.isnan(v), np.nanmin(v) if np.isfinite(v).any() else 0.0, v)
    v = v - v.min()
    v = v / (v.sum() + 0.1)
    visits = np.maximum(np.asarray(visits, float), 1.0)
    scores = v + c * np.sqrt(np.log(max(visits.sum(), 1.0)) / visits)
    probs = scores - scores.min() + abs(scores.min())
    probs = probs / probs.sum() if probs.sum() > 0 else np.full(len(probs), 1.0 / len(probs))
    return rng.choice(len(probs), size=n, p=probs)


def equal_allocation(n_learners: int, n: int) -> np.ndarray:
    """``n`` rollouts dealt round-robin (CERL's starting allocation)."""
    return np.arange(n) % n_learners


def migrant_encoding(genome: Genome, actor: Network, states: np.ndarray | None) -> tuple[np.ndarray, Network, float]:
    """A learner's actor as a genome vector: ``(z, decode(z), functional distance)``.

    The distance is the paper's functional loss between the actor and the network its code
    decodes to: the mean over ``states`` of the L2 distance between their actions (NaN without
    states). It is 0 for the weight genome, which holds every weight, and for an anchored genome,
    where the actor enters as a new anchor (``delta = 0`` around itself: the actor, bitwise).
    """
    z = genome.anchor(actor) if isinstance(genome, AnchoredGenome) else genome.encode(actor)[0]
    decoded = genome.decode(z)
    distance = float("nan") if states is None else float(action_distance([actor], [decoded], states)[0])
    return z, decoded, distance


def make_learners(cfg: CERLConfig, spec, start: Network | None, critic: str | os.PathLike | None) -> list:
    """One TD3 learner per discount rate, built from torch's global generator (seed it first).

    Fine-tuning: every actor (and its target) is the start network; every critic (and its target)
    is the loaded one, so a learner starts where the zoo's TD3 run left off. Adam starts fresh.
    """
    from .td3 import TD3Learner, load_critic

    learners = [TD3Learner(spec, critic_hidden=cfg.critic_hidden, actor_lr=cfg.actor_lr, critic_lr=cfg.critic_lr,
                           gamma=g, tau=cfg.tau, policy_noise=cfg.policy_noise, noise_clip=cfg.noise_clip,
                           policy_delay=cfg.policy_delay) for g in cfg.gammas]
    loaded = None
    if critic is not None:
        loaded, _ = load_critic(critic)
        if (loaded.obs_dim, loaded.act_dim, loaded.hidden) != (spec.obs_dim, spec.act_dim, cfg.critic_hidden):
            raise ValueError(f"critic {critic} is {loaded.obs_dim}x{loaded.act_dim} with hidden {loaded.hidden}; the "
                             f"learners need {spec.obs_dim}x{spec.act_dim} with critic_hidden {cfg.critic_hidden}")
    for learner in learners:
        if start is not None:
            learner.load_actor_network(start, targets=True)
        if loaded is not None:
            learner.critic.load_state_dict(loaded.state_dict())
            learner.critic_target.load_state_dict(loaded.state_dict())
    return learners


def _answer(step: Generator[evo.EvalRequest, EvalResult, Any], episodes: Callable[[evo.EvalRequest], EvalResult]) -> Any:
    """Run one of :mod:`nnae_utils.evolution`'s steps (a generator of evaluation requests) to its end."""
    try:
        request = next(step)
        while True:
            request = step.send(episodes(request))
    except StopIteration as stop:
        return stop.value


# --------------------------------------------------------------------------- checkpoints


def _save_checkpoint(folder: Path, state: evo.RunState, fingerprint: str, learners: list, buffer, log: dict) -> None:
    """Write the four files into a fresh folder, then swap it into place (a crash leaves the old one whole)."""
    import torch

    final, tmp, old = folder / CHECKPOINT_DIR, folder / f"{CHECKPOINT_DIR}.tmp", folder / f"{CHECKPOINT_DIR}.old"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    buffer.save(tmp / "buffer.npz")
    torch.save({"learners": [learner.state_dict() for learner in learners], "torch_rng": torch.get_rng_state(),
                "generation": state.generation}, tmp / "learners.pt")
    (tmp / "log.json").write_text(json.dumps(log))
    state.save(tmp / "state.npz", fingerprint)
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def finished_runs(folder: str | os.PathLike) -> list[Path]:
    """The run folders (``checkpoint_dir``) directly under ``folder`` whose checkpoint says they finished."""
    return [state.parent.parent for state in sorted(Path(folder).glob(f"*/{CHECKPOINT_DIR}/state.npz"))
            if evo.RunState.read_meta(state)["done"]]


def _load_checkpoint(folder: Path, fingerprint: str):
    """(state, learners payload, buffer, log), or None; an error if the checkpoint belongs to another run.

    A finished run gives (state, None, None, log): its learners and buffer are neither read nor needed.
    """
    import torch

    from .td3 import ReplayBuffer

    final, old = folder / CHECKPOINT_DIR, folder / f"{CHECKPOINT_DIR}.old"
    path = final if final.is_dir() else old if old.is_dir() else None  # .old: killed between the two renames
    if path is None:
        return None
    state = evo.RunState.load(path / "state.npz", fingerprint)
    log = json.loads((path / "log.json").read_text())
    if state.done:
        return state, None, None, log
    payload = torch.load(path / "learners.pt", map_location="cpu", weights_only=True)
    buffer = ReplayBuffer.load(path / "buffer.npz")
    if payload["generation"] != state.generation or buffer.n_added != log["buffer_n_added"]:
        raise RuntimeError(f"checkpoint {path} is inconsistent (learners, buffer and state differ)")
    return state, payload, buffer, log


# --------------------------------------------------------------------------- the loop


def run_cerl(run: CERLRun, *, stop_after: int | None = None, progress: bool = False) -> CERLResult:
    """Train (or resume) one CERL-like run until its budget is spent; see the module docstring.

    ``stop_after``: return after that many generations, as if killed there (tests check resuming).
    """
    import torch

    from .td3 import ReplayBuffer

    cfg, genome, spec = run.config, run.genome, run.genome.spec
    if isinstance(genome, AnchoredGenome):
        genome = genome.without_migrants()  # this session's own copy: migrants become its anchors
    weights = WeightGenome(spec)  # champions are networks (a learner's actor may win): scored as weight vectors
    folder = Path(run.checkpoint_dir) if run.checkpoint_dir is not None else None
    fingerprint = run.fingerprint
    t_session, cpu_session = time.perf_counter(), time.process_time()
    with torch_threads(cfg.torch_threads):
        # ---- seeding and state (fresh, or exactly as checkpointed)
        torch.manual_seed(cfg.seed)
        learners = make_learners(cfg, spec, run.start, run.critic)
        saved = _load_checkpoint(folder, fingerprint) if folder is not None else None
        if saved is not None:
            state, payload, buffer, log = saved
            if state.done:  # finished in an earlier session (perhaps on another machine): its result as it was
                return CERLResult(run.run_id, state, log)
            for learner, sd in zip(learners, payload["learners"]):
                learner.load_state_dict(sd)
            torch.set_rng_state(payload["torch_rng"])
            for name in log.get("anchors", []):  # the migrants that became anchors, in order
                genome.anchors.append(load_network(folder / name))
        else:
            state = evo.RunState(rng=np.random.default_rng(np.random.SeedSequence([cfg.seed, 0])))
            buffer = ReplayBuffer(spec.obs_dim, spec.act_dim, cfg.buffer_size)
            log = {
                "version": LOG_VERSION, "allocation": equal_allocation(cfg.n_learners, cfg.learner_episodes).tolist(),
                "values": [None] * cfg.n_learners, "visits": [1] * cfg.n_learners,  # CERL counts every learner once
                "updates_owed": 0.0, "unpaid_steps": 0, "buffer_n_added": 0,
                "population_steps": 0, "learner_steps": 0, "elite_steps": 0, "probe_steps": 0,
                "episodes": 0, "terminated_episodes": 0,  # counted episodes, and those that ended unhealthy
                "migrations": [], "migrant_slots": [], "generations": [],
                "wall_s": 0.0, "cpu_s": 0.0, "update_s": 0.0, "sessions": 0,
            }
            if cfg.pop_size:
                if run.start is None:
                    state.population = genome.random_codes(cfg.pop_size, state.rng)
                else:  # the start's code and mutants of it, as stage 4 fine-tunes
                    z0 = genome.encode(run.start)[0]
                    mutants = mutate(np.repeat(z0[None], cfg.pop_size - 1, axis=0), cfg.sigma, genome.scale, state.rng)
                    state.population = np.vstack([z0[None], mutants])
                log["from_migrant"] = [False] * cfg.pop_size  # lineage: whether a migrant is among an individual's ancestors
                log["champion_lineage"] = "start" if run.start is not None else None
        log["sessions"] += 1
        wall0, cpu0 = log["wall_s"], log["cpu_s"]
        last: dict[str, EvalResult] = {}  # the latest result per purpose (the elite scores are read from it)

        def episodes(request: evo.EvalRequest, noise: float = 0.0) -> EvalResult:
            """The suite's one evaluation function; counted episodes fill the shared buffer."""
            record = "transitions" if request.counted else None
            result = evaluate(request.networks, request.seeds, max_steps=cfg.max_steps, nthread=cfg.physics_threads,
                              action_noise=noise, noise_seed=cfg.seed if noise > 0 else None, record=record)
            if request.counted:
                # terminated only: a time-limit truncation is stored as not done, so TD targets bootstrap through it
                buffer.add_batch(result.observations, result.actions, result.rewards, result.next_observations,
                                 result.terminations)
                log["unpaid_steps"] += result.env_steps
                log["episodes"] += result.lengths.size
                log["terminated_episodes"] += int(result.terminated.sum())
            last[request.purpose] = result
            return result

        def elite_episodes(request: evo.EvalRequest) -> EvalResult:
            result = episodes(request)
            if request.counted:
                log["elite_steps"] += result.env_steps
            return result

        def checkpoint() -> None:
            log["buffer_n_added"] = buffer.n_added
            log["wall_s"] = wall0 + time.perf_counter() - t_session
            log["cpu_s"] = cpu0 + time.process_time() - cpu_session
            if folder is not None:
                _save_checkpoint(folder, state, fingerprint, learners, buffer, log)

        if saved is None:
            if run.start is not None:  # the start's return, at 0 steps
                state.champion = run.start.flat().astype(np.float64)
                _answer(evo.report_champion(state, cfg, weights), episodes)
                state.curve.append(_row(state, None, "start", [None] * cfg.n_learners, buffer, learners, False))
            checkpoint()

        # ---- the loop: one generation per pass
        while not state.done:
            if state.env_steps >= cfg.budget_steps:  # spent: results are read at budget_steps (champion_at)
                state.done, state.stop_reason = True, "budget"
                break
            if stop_after is not None and state.generation >= stop_after:
                return CERLResult(run.run_id, state, log)

            # 1. population fitness: no action noise (the GA scores the policies themselves)
            fitness = None
            if cfg.pop_size:
                seeds = state.take_fitness_seeds(cfg, cfg.fitness_episodes)
                result = episodes(evo.EvalRequest(genome.decode(state.population), seeds, True, "fitness"))
                state.env_steps += result.env_steps
                log["population_steps"] += result.env_steps
                fitness = result.returns.mean(axis=1)
                for m in log["migrant_slots"]:  # how did last generation's migrants fare against the rest?
                    log["migrations"][m["entry"]]["fitness_rank"] = int((fitness > fitness[m["slot"]]).sum())
                log["migrant_slots"] = []

            # 2. learner rollouts, with exploration noise, as the resource manager allocated them
            allocation = np.asarray(log["allocation"], np.int64)
            learner_returns: list[float | None] = [None] * cfg.n_learners
            if len(allocation):
                seeds = state.take_fitness_seeds(cfg, len(allocation))
                noise = cfg.exploration_noise if len(buffer) >= cfg.learning_starts else cfg.warmup_noise
                for k, learner in enumerate(learners):
                    mine = seeds[allocation == k]
                    if len(mine) == 0:
                        continue
                    result = episodes(evo.EvalRequest([learner.actor_network()], mine, True, "learner"), noise)
                    state.env_steps += result.env_steps
                    log["learner_steps"] += result.env_steps
                    for ret in result.returns[0]:  # CERL's learner statistics: EMA of returns and visit counts
                        v = log["values"][k]
                        log["values"][k] = float(ret) if v is None else cfg.value_ema * float(ret) + (1 - cfg.value_ema) * v
                        log["visits"][k] += 1
                    learner_returns[k] = float(result.returns.mean())

            # 3. learner updates: updates_per_step per env step that reached the buffer since the last updates
            if len(buffer) >= cfg.learning_starts:
                log["updates_owed"] += cfg.updates_per_step * log["unpaid_steps"]
            log["unpaid_steps"] = 0  # warm-up steps earn no updates, as in TD3
            n_updates = int(log["updates_owed"])
            log["updates_owed"] -= n_updates
            tu = time.perf_counter()
            for learner in learners:
                for _ in range(n_updates):
                    learner.update(buffer.sample(cfg.batch_size, state.rng))
            log["update_s"] += time.perf_counter() - tu

            # 4. champion: population candidates, every learner's actor, the previous champion; by fresh episodes
            candidates, sources = [], []
            pop_idx = np.zeros(0, np.int64)
            if cfg.pop_size:
                pop_idx = evo.top_k(fitness, cfg.elite_candidates)
                if 0 not in pop_idx:
                    pop_idx = np.append(pop_idx, 0)  # the elite carried over
                candidates += [net.flat() for net in genome.decode(state.population[pop_idx])]
                sources += [f"population {int(i)}" for i in pop_idx]
            candidates += [learner.actor_network().flat() for learner in learners]
            sources += [f"learner {k}" for k in range(cfg.n_learners)]
            if state.champion is not None and not any(np.array_equal(state.champion, c) for c in candidates):
                candidates.append(state.champion)
                sources.append("previous champion")
            winner = _answer(evo.choose_champion(state, cfg, weights, np.stack(candidates).astype(np.float64)),
                             elite_episodes)
            state.champion = np.asarray(candidates[winner], np.float64).copy()
            _answer(evo.report_champion(state, cfg, weights), episodes)
            state.generation += 1
            lineage = _lineage(sources[winner], log.get("from_migrant"), log.get("champion_lineage"))
            log["champion_lineage"] = lineage

            # 5. next population: the best population candidate kept, children bred, learners migrate
            migrated = False
            if cfg.pop_size:
                elite_scores = last["elite"].returns.mean(axis=1)[: len(pop_idx)]
                elite_row = int(pop_idx[int(np.argmax(elite_scores))])
                elite = state.population[elite_row]
                state.population, parent, mate = evo.bred_population(state.population, fitness, elite, cfg, genome, state.rng)
                before = np.asarray(log.get("from_migrant") or [False] * cfg.pop_size, bool)  # a run checkpointed without it: none known
                after = before[np.maximum(parent, 0)] | ((mate >= 0) & before[np.maximum(mate, 0)])
                after[0] = before[elite_row]
                if state.generation % cfg.migration_every == 0:
                    migrated = True
                    for k, learner in enumerate(learners):
                        actor = learner.actor_network()
                        z, decoded, distance = migrant_encoding(genome, actor, run.probe_states)
                        slot = cfg.pop_size - 1 - k  # a child's place: the children are exchangeable draws
                        state.population[slot] = z
                        after[slot] = True
                        lossy = not np.array_equal(decoded.flat(), actor.flat())
                        entry = {"generation": state.generation, "env_steps": state.env_steps, "learner": k,
                                 "slot": slot, "distance": distance, "actor_return": None, "decoded_return": None,
                                 "fitness_rank": None, "exact": not lossy}
                        if isinstance(genome, AnchoredGenome) and run.checkpoint_dir is not None:
                            # the new anchor, kept so that a resumed run decodes its descendants
                            name = f"migrants/anchor_{len(genome.anchors):04d}.safetensors"
                            save_network(Path(run.checkpoint_dir) / name, actor)
                            log.setdefault("anchors", []).append(name)
                        if lossy and cfg.probe_episodes:  # measurement only: report seeds, not counted
                            probe = evaluate([actor, decoded], eval_seeds("champion_report", cfg.probe_episodes),
                                             max_steps=cfg.max_steps, nthread=cfg.physics_threads)
                            log["probe_steps"] += probe.env_steps
                            entry["actor_return"], entry["decoded_return"] = (float(x) for x in probe.returns.mean(axis=1))
                            entry["actor_episode_returns"] = [float(x) for x in probe.returns[0]]
                            entry["decoded_episode_returns"] = [float(x) for x in probe.returns[1]]
                            if run.checkpoint_dir is not None:  # scored networks are kept, to be re-scored by anyone
                                stem = f"migrants/g{state.generation:04d}_learner{k}"
                                entry["actor_file"], entry["decoded_file"] = f"{stem}_actor.safetensors", f"{stem}_decoded.safetensors"
                                save_network(Path(run.checkpoint_dir) / entry["actor_file"], actor)
                                save_network(Path(run.checkpoint_dir) / entry["decoded_file"], decoded)
                        log["migrant_slots"].append({"entry": len(log["migrations"]), "slot": slot})
                        log["migrations"].append(entry)
                log["from_migrant"] = after.tolist()

            # 6. resource manager: the next generation's learner episodes
            if cfg.resource_manager == "ucb" and cfg.n_learners > 1:
                log["allocation"] = ucb_allocation(log["values"], log["visits"], cfg.learner_episodes, cfg.ucb_c,
                                                   state.rng).tolist()

            state.curve.append({**_row(state, fitness, sources[winner], learner_returns, buffer, learners, migrated),
                                "champion_lineage": lineage})
            log["generations"].append({"generation": state.generation, "wall_s": wall0 + time.perf_counter() - t_session,
                                       "updates": n_updates})
            if progress:
                print(f"{run.run_id}: generation {state.generation}, {state.env_steps:,} steps, champion "
                      f"{state.curve[-1]['champion_return']:.1f} ({sources[winner]})", flush=True)
            checkpoint()

        checkpoint()
        return CERLResult(run.run_id, state, log)


def _lineage(source: str, from_migrant: Sequence[bool] | None, previous: str | None) -> str | None:
    """Where a generation's champion came from: ``'migrant line'`` (a population member with a migrant
    among its ancestors), ``'population line'`` (one without), ``'learner'`` (a learner's actor, before it
    migrates) or, for the previous champion kept, that champion's own lineage.

    >>> _lineage("population 3", [False, False, False, True], None), _lineage("learner 0", None, None)
    ('migrant line', 'learner')
    >>> _lineage("previous champion", None, "learner"), _lineage("population 0", [False], None)
    ('learner', 'population line')
    """
    if source.startswith("population "):
        i = int(source.split()[1])
        return "migrant line" if from_migrant and from_migrant[i] else "population line"
    if source.startswith("learner"):
        return "learner"
    return previous


def champion_at(curve: Sequence[Mapping[str, Any]], budget_steps: int) -> Mapping[str, Any]:
    """The curve record of the champion known at ``budget_steps``: the last one at or below it."""
    within = [row for row in curve if row["env_steps"] <= budget_steps]
    if not within:
        raise ValueError(f"no record at or below {budget_steps} env steps")
    return within[-1]


def _row(state: evo.RunState, fitness, source: str, learner_returns, buffer, learners, migrated: bool) -> dict[str, Any]:
    """One curve record (deterministic: no times, so a resumed run's curve equals the uninterrupted one's)."""
    return {
        "generation": state.generation, "env_steps": state.env_steps,
        "champion_return": float(state.champion_returns.mean()), "champion_return_std": float(state.champion_returns.std()),
        "champion_source": source,
        "best_fitness": None if fitness is None else float(np.max(fitness)),
        "median_fitness": None if fitness is None else float(np.median(fitness)),
        "learner_returns": learner_returns, "buffer_size": len(buffer), "updates": learners[0].n_updates,
        "migrated": migrated,
    }


# --------------------------------------------------------------------------- many runs


def run_many(runs: Sequence[CERLRun], *, jobs: int = 2, progress: bool = True, backend=None) -> dict[str, CERLResult]:
    """Run (or resume) every run, ``jobs`` processes at a time (TD3 updates are the cost; one process per core).

    Each run is a pure function of its settings, so the results do not depend on ``jobs``, nor on
    ``backend`` (:mod:`nnae_utils.backends`; None: the current one), which may run them as tasks
    of a Ray cluster instead (one task per run, as many at a time as the cluster has slots).
    """
    from .backends import resolve

    ids = [r.run_id for r in runs]
    if len(set(ids)) != len(ids):
        raise ValueError("run ids must be unique")
    # locally with jobs > 1: spawned processes (fork would copy torch's thread pools into the children)
    results = resolve(backend).map(run_cerl, runs, max_workers=jobs, progress=progress, desc="CERL runs")
    return dict(zip(ids, results))


# --------------------------------------------------------------------------- results as tables


def run_table(runs: Sequence[CERLRun], results: Mapping[str, CERLResult]):
    """One row per run: labels, what it spent (by source), its final champion's fresh-seed return, time."""
    import pandas as pd

    rows = []
    for run in runs:
        res = results[run.run_id]
        st, log, cfg = res.state, res.log, run.config
        rows.append({
            "run_id": run.run_id, **run.info, "genome": run.genome.name if cfg.pop_size else None,
            "pop_size": cfg.pop_size, "learners": cfg.n_learners, "generations": st.generation,
            "env_steps": st.env_steps, "overrun_steps": st.env_steps - cfg.budget_steps,
            "population_steps": log["population_steps"], "learner_steps": log["learner_steps"],
            "elite_steps": log["elite_steps"], "report_env_steps": st.report_steps, "probe_env_steps": log["probe_steps"],
            "buffer_n_added": log["buffer_n_added"], "migrations": len(log["migrations"]),
            "updates_per_learner": st.curve[-1]["updates"] if st.curve else 0,
            "final_return": float(st.champion_returns.mean()), "final_return_std": float(st.champion_returns.std()),
            "wall_s": log["wall_s"], "cpu_s": log["cpu_s"], "update_s": log["update_s"], "stop_reason": st.stop_reason,
        })
    return pd.DataFrame(rows)


def curve_table(runs: Sequence[CERLRun], results: Mapping[str, CERLResult]):
    """Every run's curve (one row per generation, plus the start when fine-tuning), with the run's labels."""
    import pandas as pd

    frames = [pd.DataFrame(results[r.run_id].state.curve).assign(run_id=r.run_id, **r.info) for r in runs]
    return pd.concat(frames, ignore_index=True)


def migration_table(runs: Sequence[CERLRun], results: Mapping[str, CERLResult]):
    """One row per migrant: its functional distance to its decoded code, both returns, its next fitness rank."""
    import pandas as pd

    rows = [{"run_id": r.run_id, **r.info, "genome": r.genome.name, **m}
            for r in runs for m in results[r.run_id].log["migrations"]]
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- the zoo's critics


def find_zoo_critic(record: Mapping[str, Any], search_roots: Sequence[str | os.PathLike]) -> Path | None:
    """The final critic of the TD3 run a zoo network came from, or None if no such file exists.

    A zoo record's provenance names the run (``run``) and the settings digest of its training
    folder (``settings``); the run lives in ``<root>/<settings>/seed_<run>/`` under the data
    stage's training folder. ``search_roots`` lists the training folders to try, in order.
    The critic is the run's *final* one: for a snapshot taken earlier in the run, it has seen
    later data than the snapshot's actor (its step is in the critic file's metadata).
    """
    from .td3 import CRITIC_FILE
    from .zoo import run_folder

    prov = record.get("provenance", {})
    if "run" not in prov or "settings" not in prov:
        return None
    for root in search_roots:
        path = run_folder(root, prov["settings"], prov["run"]) / CRITIC_FILE
        if path.is_file():
            return path
    return None


def critic_step(path: str | os.PathLike) -> int | None:
    """The training step a critic file was saved at (its metadata), if recorded."""
    from .td3 import load_critic

    _, meta = load_critic(path)
    return int(meta["step"]) if "step" in meta else None
