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

import copy
import dataclasses
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
from .genomes import AnchoredGenome, Genome, WeightGenome, action_distance, fine_tuning_start, split_start_mode
from .io import swap_folder, write_text
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
    """Resource manager, migrations, step accounting by source, time: :meth:`HybridState.to_log`, ``log.json``."""


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


# --------------------------------------------------------------------------- the run's state and checkpoint


@dataclass
class ResourceManager:
    """CERL's resource manager: which learner plays each of the next generation's learner episodes.

    ``equal`` deals them round-robin (CERL's starting allocation, never changed); ``ucb`` draws
    them by :func:`ucb_allocation` over the learners' moving averages of returns and visit counts.
    """

    allocation: list[int]
    """The learner of each of the next generation's learner episodes."""
    values: list[float | None]
    """Each learner's exponential moving average of its rollout returns (None: no rollout yet)."""
    visits: list[int]
    """Each learner's rollouts, plus one (CERL counts every learner once from the start)."""

    @classmethod
    def start(cls, cfg: CERLConfig) -> "ResourceManager":
        n = cfg.n_learners
        return cls(equal_allocation(n, cfg.learner_episodes).tolist(), [None] * n, [1] * n)

    def record(self, k: int, returns: Sequence[float], value_ema: float) -> None:
        """Learner ``k``'s rollout returns, in order, into its moving average and visit count."""
        for ret in returns:
            v = self.values[k]
            self.values[k] = float(ret) if v is None else value_ema * float(ret) + (1 - value_ema) * v
            self.visits[k] += 1

    def allocate(self, cfg: CERLConfig, rng: np.random.Generator) -> None:
        """The next generation's allocation (``ucb`` with more than one learner draws from ``rng``)."""
        if cfg.resource_manager == "ucb" and cfg.n_learners > 1:
            self.allocation = ucb_allocation(self.values, self.visits, cfg.learner_episodes, cfg.ucb_c, rng).tolist()


@dataclass
class HybridState:
    """What a CERL run keeps beside the population's :class:`nnae_utils.evolution.RunState`, its
    learners and its buffer: the resource manager, the learners' update debt, the env steps by
    source, migrations and lineage, and time. It is ``log.json`` (:meth:`to_log`, :meth:`from_log`),
    and :attr:`CERLResult.log` is that dict."""

    manager: ResourceManager
    updates_owed: float = 0.0
    """Gradient updates per learner earned and not yet made (fractional with updates_per_step < 1)."""
    unpaid_steps: int = 0
    """Env steps added to the buffer since the last updates."""
    buffer_n_added: int = 0
    population_steps: int = 0
    learner_steps: int = 0
    elite_steps: int = 0
    probe_steps: int = 0
    """Counted env steps by source (population fitness, learner rollouts, champion re-evaluation), and the
    uncounted steps of migrant probes."""
    episodes: int = 0
    terminated_episodes: int = 0
    """Counted episodes, and those that ended unhealthy."""
    migrations: list[dict[str, Any]] = field(default_factory=list)
    """One entry per migrant: where it went, its functional distance and, probed, both returns."""
    migrant_slots: list[dict[str, int]] = field(default_factory=list)
    """Last generation's migrants (their entries and slots), ranked at the next fitness evaluation."""
    generations: list[dict[str, Any]] = field(default_factory=list)
    """Per generation: wall seconds since the run began and the updates each learner made."""
    from_migrant: list[bool] | None = None
    """Lineage: whether a migrant is among each individual's ancestors (None: no population)."""
    champion_lineage: str | None = None
    anchors: list[str] = field(default_factory=list)
    """Files of the migrants that became anchors of the population's genome, in order."""
    wall_s: float = 0.0
    cpu_s: float = 0.0
    update_s: float = 0.0
    sessions: int = 0

    _MANAGER = ("allocation", "values", "visits")

    def to_log(self) -> dict[str, Any]:
        """The JSON form (``log.json``): the manager's fields first, then the rest, as always."""
        log: dict[str, Any] = {"version": LOG_VERSION, **dataclasses.asdict(self.manager)}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "manager" or (f.name == "from_migrant" and value is None) or (f.name == "anchors" and not value):
                continue
            log[f.name] = copy.deepcopy(value)
        return log

    @classmethod
    def from_log(cls, log: Mapping[str, Any]) -> "HybridState":
        manager = ResourceManager(*(copy.deepcopy(log[k]) for k in cls._MANAGER))
        known = {f.name for f in dataclasses.fields(cls)} - {"manager"}
        return cls(manager=manager, **{k: copy.deepcopy(v) for k, v in log.items() if k in known})


def save_checkpoint(folder: Path, fingerprint: str, state: evo.RunState, hybrid: HybridState, learners: list,
                    buffer) -> None:
    """A run's checkpoint, its four files written into a fresh folder swapped into place
    (:func:`nnae_utils.io.swap_folder`: a crash leaves the old one whole)."""
    import torch

    staging = folder / f"{CHECKPOINT_DIR}.tmp"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    buffer.save(staging / "buffer.npz")
    torch.save({"learners": [learner.state_dict() for learner in learners], "torch_rng": torch.get_rng_state(),
                "generation": state.generation}, staging / "learners.pt")
    write_text(staging / "log.json", json.dumps(hybrid.to_log()))
    state.save(staging / "state.npz", fingerprint)
    swap_folder(staging, folder / CHECKPOINT_DIR)


def load_checkpoint(folder: Path, fingerprint: str):
    """(state, hybrid state, learners payload, buffer), or None; an error if the checkpoint belongs to another run.

    A finished run gives (state, hybrid, None, None): its learners and buffer are neither read nor needed.
    """
    import torch

    from .td3 import ReplayBuffer

    final, old = folder / CHECKPOINT_DIR, folder / f"{CHECKPOINT_DIR}.old"
    path = final if final.is_dir() else old if old.is_dir() else None  # .old: killed between the two renames
    if path is None:
        return None
    state = evo.RunState.load(path / "state.npz", fingerprint)
    hybrid = HybridState.from_log(json.loads((path / "log.json").read_text()))
    if state.done:
        return state, hybrid, None, None
    payload = torch.load(path / "learners.pt", map_location="cpu", weights_only=True)
    buffer = ReplayBuffer.load(path / "buffer.npz")
    if payload["generation"] != state.generation or buffer.n_added != hybrid.buffer_n_added:
        raise RuntimeError(f"checkpoint {path} is inconsistent (learners, buffer and state differ)")
    return state, hybrid, payload, buffer


def finished_runs(folder: str | os.PathLike) -> list[Path]:
    """The run folders (``checkpoint_dir``) directly under ``folder`` whose checkpoint says they finished."""
    return [state.parent.parent for state in sorted(Path(folder).glob(f"*/{CHECKPOINT_DIR}/state.npz"))
            if evo.RunState.read_meta(state)["done"]]


# --------------------------------------------------------------------------- the loop


def run_cerl(run: CERLRun, *, stop_after: int | None = None, progress: bool = False) -> CERLResult:
    """Train (or resume) one CERL-like run until its budget is spent; see the module docstring.

    ``stop_after``: return after that many generations, as if killed there (tests check resuming).
    """
    cfg = run.config
    with torch_threads(cfg.torch_threads):
        h = _Hybrid(run)  # seeding and state: fresh, or exactly as checkpointed
        state = h.state
        if state.done:  # finished in an earlier session (perhaps on another machine): its result as it was
            return h.result()
        if not h.resumed:
            h.score_start()  # fine-tuning: the start's return, at 0 steps
            h.checkpoint()

        # ---- the loop: one generation per pass
        while not state.done:
            if state.env_steps >= cfg.budget_steps:  # spent: results are read at budget_steps (champion_at)
                state.done, state.stop_reason = True, "budget"
                break
            if stop_after is not None and state.generation >= stop_after:
                return h.result()
            fitness = h.population_fitness()                # 1. no action noise: the GA scores the policies
            learner_returns = h.learner_rollouts()          # 2. with exploration noise, as allocated
            n_updates = h.learner_updates()                 # 3. paid for by the steps added since the last ones
            source, pop_idx = h.choose_champion(fitness)    # 4. by fresh counted episodes, then reported
            migrated = h.next_population(fitness, pop_idx)  # 5. the elite kept, children bred, learners migrate
            h.hybrid.manager.allocate(cfg, state.rng)       # 6. the next generation's learner episodes
            h.record(fitness, source, learner_returns, migrated, n_updates, progress)
            h.checkpoint()
        h.checkpoint()
        return h.result()


class _Hybrid:
    """The phases of :func:`run_cerl`'s generation, on one run: its population state, learners,
    buffer and :class:`HybridState`."""

    def __init__(self, run: CERLRun):
        import torch

        from .td3 import ReplayBuffer

        cfg, spec = run.config, run.genome.spec
        self.run, self.cfg = run, cfg
        self.genome = run.genome
        if isinstance(self.genome, AnchoredGenome):
            self.genome = self.genome.without_migrants()  # this session's own copy: migrants become its anchors
        self.weights = WeightGenome(spec)  # champions are networks (a learner's actor may win): scored as weight vectors
        self.folder = Path(run.checkpoint_dir) if run.checkpoint_dir is not None else None
        self.fingerprint = run.fingerprint
        self.t_session, self.cpu_session = time.perf_counter(), time.process_time()
        self.last: dict[str, EvalResult] = {}  # the latest result per purpose (the elite scores are read from it)
        torch.manual_seed(cfg.seed)
        self.learners = make_learners(cfg, spec, run.start, run.critic)
        saved = load_checkpoint(self.folder, self.fingerprint) if self.folder is not None else None
        self.resumed = saved is not None
        if saved is not None:
            self.state, self.hybrid, payload, self.buffer = saved
            if self.state.done:
                return
            for learner, sd in zip(self.learners, payload["learners"]):
                learner.load_state_dict(sd)
            torch.set_rng_state(payload["torch_rng"])
            for name in self.hybrid.anchors:  # the migrants that became anchors, in order
                self.genome.anchors.append(load_network(self.folder / name))
        else:
            self.state = evo.RunState(rng=np.random.default_rng(np.random.SeedSequence([cfg.seed, 0])))
            self.buffer = ReplayBuffer(spec.obs_dim, spec.act_dim, cfg.buffer_size)
            self.hybrid = HybridState(manager=ResourceManager.start(cfg))
            if cfg.pop_size:  # from scratch, or the start's code and mutants of it, as stage 4 fine-tunes
                start = None if run.start is None else self.genome.encode(run.start)[0]
                self.state.population = evo.first_population(cfg, self.genome, start, self.state.rng)
                self.hybrid.from_migrant = [False] * cfg.pop_size
                self.hybrid.champion_lineage = "start" if run.start is not None else None
        self.hybrid.sessions += 1
        self.wall0, self.cpu0 = self.hybrid.wall_s, self.hybrid.cpu_s

    def result(self) -> CERLResult:
        return CERLResult(self.run.run_id, self.state, self.hybrid.to_log())

    # -- episodes and checkpoints

    def episodes(self, request: evo.EvalRequest, noise: float = 0.0) -> EvalResult:
        """The suite's one evaluation function; counted episodes fill the shared buffer."""
        cfg, hybrid = self.cfg, self.hybrid
        record = "transitions" if request.counted else None
        result = evaluate(request.networks, request.seeds, max_steps=cfg.max_steps, nthread=cfg.physics_threads,
                          action_noise=noise, noise_seed=cfg.seed if noise > 0 else None, record=record)
        if request.counted:
            # terminated only: a time-limit truncation is stored as not done, so TD targets bootstrap through it
            self.buffer.add_batch(result.observations, result.actions, result.rewards, result.next_observations,
                                  result.terminations)
            hybrid.unpaid_steps += result.env_steps
            hybrid.episodes += result.lengths.size
            hybrid.terminated_episodes += int(result.terminated.sum())
        self.last[request.purpose] = result
        return result

    def elite_episodes(self, request: evo.EvalRequest) -> EvalResult:
        result = self.episodes(request)
        if request.counted:
            self.hybrid.elite_steps += result.env_steps
        return result

    def checkpoint(self) -> None:
        hybrid = self.hybrid
        hybrid.buffer_n_added = self.buffer.n_added
        hybrid.wall_s = self.wall0 + time.perf_counter() - self.t_session
        hybrid.cpu_s = self.cpu0 + time.process_time() - self.cpu_session
        if self.folder is not None:
            save_checkpoint(self.folder, self.fingerprint, self.state, hybrid, self.learners, self.buffer)

    def score_start(self) -> None:
        """Fine-tuning: the start network's return, the curve's first record (evolution's rule, as a weight vector)."""
        if self.run.start is not None:
            _answer(evo.score_start(self.state, self.cfg, self.weights, self.run.start.flat(),
                                    **self._row_extra("start", [None] * self.cfg.n_learners, False)), self.episodes)

    def _row_extra(self, source: str, learner_returns: list, migrated: bool) -> dict[str, Any]:
        """The hybrid's own curve columns (deterministic: no times, so a resumed run's curve equals the uninterrupted one's)."""
        return {"champion_source": source, "learner_returns": learner_returns, "buffer_size": len(self.buffer),
                "updates": self.learners[0].n_updates, "migrated": migrated}

    # -- the phases of a generation

    def population_fitness(self) -> np.ndarray | None:
        """1. Every individual plays the same fresh counted episodes; last generation's migrants are ranked."""
        cfg, state, hybrid = self.cfg, self.state, self.hybrid
        if not cfg.pop_size:
            return None
        seeds = state.take_fitness_seeds(cfg, cfg.fitness_episodes)
        result = self.episodes(evo.EvalRequest(self.genome.decode(state.population), seeds, True, "fitness"))
        state.env_steps += result.env_steps
        hybrid.population_steps += result.env_steps
        fitness = result.returns.mean(axis=1)
        for m in hybrid.migrant_slots:  # how did last generation's migrants fare against the rest?
            hybrid.migrations[m["entry"]]["fitness_rank"] = int((fitness > fitness[m["slot"]]).sum())
        hybrid.migrant_slots = []
        return fitness

    def learner_rollouts(self) -> list[float | None]:
        """2. The learners' exploration episodes, as the resource manager allocated them; their mean returns."""
        cfg, state, hybrid = self.cfg, self.state, self.hybrid
        allocation = np.asarray(hybrid.manager.allocation, np.int64)
        learner_returns: list[float | None] = [None] * cfg.n_learners
        if not len(allocation):
            return learner_returns
        seeds = state.take_fitness_seeds(cfg, len(allocation))
        noise = cfg.exploration_noise if len(self.buffer) >= cfg.learning_starts else cfg.warmup_noise
        for k, learner in enumerate(self.learners):
            mine = seeds[allocation == k]
            if len(mine) == 0:
                continue
            result = self.episodes(evo.EvalRequest([learner.actor_network()], mine, True, "learner"), noise)
            state.env_steps += result.env_steps
            hybrid.learner_steps += result.env_steps
            hybrid.manager.record(k, result.returns[0], cfg.value_ema)  # CERL's learner statistics
            learner_returns[k] = float(result.returns.mean())
        return learner_returns

    def learner_updates(self) -> int:
        """3. ``updates_per_step`` gradient steps per learner per env step that reached the buffer since the last
        updates (warm-up steps earn none, as in TD3); the number each learner made."""
        cfg, hybrid = self.cfg, self.hybrid
        if len(self.buffer) >= cfg.learning_starts:
            hybrid.updates_owed += cfg.updates_per_step * hybrid.unpaid_steps
        hybrid.unpaid_steps = 0
        n_updates = int(hybrid.updates_owed)
        hybrid.updates_owed -= n_updates
        tu = time.perf_counter()
        for learner in self.learners:
            for _ in range(n_updates):
                learner.update(self.buffer.sample(cfg.batch_size, self.state.rng))
        hybrid.update_s += time.perf_counter() - tu
        return n_updates

    def choose_champion(self, fitness: np.ndarray | None) -> tuple[str, np.ndarray]:
        """4. The best population candidates (and the elite carried over), every learner's actor and the previous
        champion replay fresh counted episodes; the best by those alone is the champion, then reported.
        Returns the winner's source and the population rows that competed."""
        cfg, state = self.cfg, self.state
        candidates, sources = [], []
        pop_idx = np.zeros(0, np.int64)
        if cfg.pop_size:
            pop_idx = evo.top_k(fitness, cfg.elite_candidates)
            if 0 not in pop_idx:
                pop_idx = np.append(pop_idx, 0)  # the elite carried over
            candidates += [net.flat() for net in self.genome.decode(state.population[pop_idx])]
            sources += [f"population {int(i)}" for i in pop_idx]
        candidates += [learner.actor_network().flat() for learner in self.learners]
        sources += [f"learner {k}" for k in range(cfg.n_learners)]
        if state.champion is not None and not any(np.array_equal(state.champion, c) for c in candidates):
            candidates.append(state.champion)
            sources.append("previous champion")
        winner = _answer(evo.choose_champion(state, cfg, self.weights, np.stack(candidates).astype(np.float64)),
                         self.elite_episodes)
        state.champion = np.asarray(candidates[winner], np.float64).copy()
        _answer(evo.report_champion(state, cfg, self.weights), self.episodes)
        state.generation += 1
        self.hybrid.champion_lineage = _lineage(sources[winner], self.hybrid.from_migrant, self.hybrid.champion_lineage)
        return sources[winner], pop_idx

    def next_population(self, fitness: np.ndarray | None, pop_idx: np.ndarray) -> bool:
        """5. The best population candidate kept, children bred; every ``migration_every`` generations the
        learners' actors take the last children's places (CERL: they replace the weakest). Whether they did."""
        cfg, state, hybrid = self.cfg, self.state, self.hybrid
        if not cfg.pop_size:
            return False
        elite_scores = self.last["elite"].returns.mean(axis=1)[: len(pop_idx)]
        elite_row = int(pop_idx[int(np.argmax(elite_scores))])
        elite = state.population[elite_row]
        state.population, parent, mate = evo.bred_population(state.population, fitness, elite, cfg, self.genome, state.rng)
        before = np.asarray(hybrid.from_migrant or [False] * cfg.pop_size, bool)  # a run checkpointed without it: none known
        after = before[np.maximum(parent, 0)] | ((mate >= 0) & before[np.maximum(mate, 0)])
        after[0] = before[elite_row]
        migrated = state.generation % cfg.migration_every == 0
        if migrated:
            for k, learner in enumerate(self.learners):
                slot = cfg.pop_size - 1 - k  # a child's place: the children are exchangeable draws
                self.migrate(k, learner.actor_network(), slot)
                after[slot] = True
        hybrid.from_migrant = after.tolist()
        return migrated

    def migrate(self, k: int, actor: Network, slot: int) -> None:
        """Learner ``k``'s actor into the population at ``slot``: its encoding's loss measured, its entry logged,
        the networks that let anyone re-score it (and a resumed run decode its descendants) kept."""
        cfg, state, hybrid = self.cfg, self.state, self.hybrid
        z, decoded, distance = migrant_encoding(self.genome, actor, self.run.probe_states)
        state.population[slot] = z
        lossy = not np.array_equal(decoded.flat(), actor.flat())
        entry = {"generation": state.generation, "env_steps": state.env_steps, "learner": k, "slot": slot,
                 "distance": distance, "actor_return": None, "decoded_return": None, "fitness_rank": None,
                 "exact": not lossy}
        if isinstance(self.genome, AnchoredGenome) and self.folder is not None:
            name = f"migrants/anchor_{len(self.genome.anchors):04d}.safetensors"  # the new anchor
            save_network(self.folder / name, actor)
            hybrid.anchors.append(name)
        if lossy and cfg.probe_episodes:  # measurement only: report seeds, not counted
            probe = evaluate([actor, decoded], eval_seeds("champion_report", cfg.probe_episodes),
                             max_steps=cfg.max_steps, nthread=cfg.physics_threads)
            hybrid.probe_steps += probe.env_steps
            entry["actor_return"], entry["decoded_return"] = (float(x) for x in probe.returns.mean(axis=1))
            entry["actor_episode_returns"] = [float(x) for x in probe.returns[0]]
            entry["decoded_episode_returns"] = [float(x) for x in probe.returns[1]]
            if self.folder is not None:  # scored networks are kept, to be re-scored by anyone
                stem = f"migrants/g{state.generation:04d}_learner{k}"
                entry["actor_file"], entry["decoded_file"] = f"{stem}_actor.safetensors", f"{stem}_decoded.safetensors"
                save_network(self.folder / entry["actor_file"], actor)
                save_network(self.folder / entry["decoded_file"], decoded)
        hybrid.migrant_slots.append({"entry": len(hybrid.migrations), "slot": slot})
        hybrid.migrations.append(entry)

    def record(self, fitness, source: str, learner_returns: list, migrated: bool, n_updates: int, progress: bool) -> None:
        """The generation's curve record (evolution's row with the hybrid's columns) and its time."""
        state, hybrid = self.state, self.hybrid
        state.curve.append({**evo.curve_row(state, fitness, **self._row_extra(source, learner_returns, migrated)),
                            "champion_lineage": hybrid.champion_lineage})
        hybrid.generations.append({"generation": state.generation,
                                   "wall_s": self.wall0 + time.perf_counter() - self.t_session, "updates": n_updates})
        if progress:
            print(f"{self.run.run_id}: generation {state.generation}, {state.env_steps:,} steps, champion "
                  f"{state.curve[-1]['champion_return']:.1f} ({source})", flush=True)


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


# --------------------------------------------------------------------------- stage 5's runs


PAPER_HOPPER_STEPS = 1_500_000
"""Env steps of each of CERL's Hopper runs (Khadka et al. 2019, 5 seeds): the scale a reduced comparison is set against."""


def scale_note(budget_steps: int, n_seeds: int) -> tuple[bool, str]:
    """Whether a stage-5 run is a reduced comparison (fewer env steps than CERL's Hopper runs), and the note saying so.

    Example:
        >>> scale_note(30000, 5)
        (True, "30,000 env steps per run and 5 seeds, against CERL's 1.5M steps: a reduced comparison")
    """
    reduced = budget_steps < PAPER_HOPPER_STEPS
    return reduced, (f"{budget_steps:,} env steps per run and {n_seeds} seeds, against CERL's {PAPER_HOPPER_STEPS / 1e6:g}M "
                     f"steps: {'a reduced comparison' if reduced else 'the paper scale'}")


def run_tag(label: str) -> str:
    """A variant or ``method/genome`` label as it appears in a run id: ``cerl/latent:all~decoded`` -> ``cerl-latent_all_decoded``."""
    return evo.run_tag(label).replace("/", "-")


def population_genome(genome: Genome, name: str) -> Genome:
    """The hybrid population's genome for a genome name: anchored (the start and every migrant held exactly,
    :class:`~nnae_utils.genomes.AnchoredGenome`) unless it is the weight genome or a ``~decoded`` ablation."""
    exact = split_start_mode(name)[1] == "exact"
    return AnchoredGenome(genome) if exact and genome.kind != "weights" else genome


def grid_runs(variants: Sequence[str], starts: Sequence[str], n_seeds: int, genomes: Mapping[str, Genome],
              sigmas: Mapping[tuple[str, str], float], *, start_of: Mapping[tuple[str, int], tuple[str, Network]],
              critic_of: Mapping[tuple[str, int], Any], config_for: Callable[..., CERLConfig],
              probe_states: np.ndarray | None = None, checkpoint_dir_of: Callable[[CERLRun], Any] | None = None,
              master_seed: int = 0) -> list[CERLRun]:
    """Stage 5's hybrid and TD3-alone runs: every variant but ``evolution``, start condition and replicate (in that order).

    Args:
        variants: ``cerl/<genome>`` (the hybrid, its population in that genome) and ``td3`` (no population).
        genomes: genome name -> its encoding (``weights`` for TD3 alone); sigmas: ``(genome name, start) -> sigma``.
        start_of: ``(start, replicate) -> (network id, Network)`` for every fine-tuning start; a start without
            entries runs from scratch. ``critic_of``: the same keys -> the critic file its learners start from.
        config_for: ``config_for(hybrid=..., seed=..., fitness_seed_offset=..., sigma=...)`` -> :class:`CERLConfig`
            (the stage's parameters fill in the rest).
        checkpoint_dir_of: ``checkpoint_dir_of(run)`` -> the run's checkpoint folder, or None.
        master_seed: the stage's seed, from which every run's seed derives (:func:`nnae_utils.evolution.run_seed`).
    """
    runs = []
    for start in starts:
        for variant in [v for v in variants if v != "evolution"]:
            hybrid = variant.startswith("cerl/")
            name = variant.split("/", 1)[1] if hybrid else "weights"
            for r in range(n_seeds):
                genome, (net_id, net), critic = population_genome(genomes[name], name), start_of.get((start, r), (None, None)), None
                if net is not None:  # fine-tuning: the population around the start, its learners from its critic
                    genome, critic = genome.with_base(net), critic_of.get((start, r))
                cfg = config_for(hybrid=hybrid, seed=evo.run_seed(master_seed, variant, start, r),
                                 fitness_seed_offset=r * evo.SEEDS_PER_REPLICATE, sigma=sigmas[(name, start)])
                info = {"label": variant, "start": start, "replicate": r, "start_network": net_id,
                        "critic": "zoo" if critic is not None else "fresh"}
                run = CERLRun(f"{run_tag(variant)}-{start}-s{r}", cfg, genome, start=net, critic=critic,
                              probe_states=probe_states, info=info)
                if checkpoint_dir_of is not None:
                    run.checkpoint_dir = checkpoint_dir_of(run)
                runs.append(run)
    return runs


def evolution_alone_runs(label: str, start: str, n_seeds: int, genome: Genome, sigma: float, *,
                         start_of: Mapping[tuple[str, int], tuple[str, Network]], config_for: Callable[..., evo.EvolutionConfig],
                         checkpoint_dir_of: Callable[[evo.Run], Any] | None = None, master_seed: int = 0) -> list[evo.Run]:
    """Stage 5's evolution alone: ``label`` (``method/genome``) in one start condition, ``n_seeds`` replicates, fine-tuning
    as stage 4 does (around the exact start network, or its decoding for ``~decoded``), under the hybrid's budget rule.

    The hybrid starts a generation while fewer than ``budget_steps`` have been spent; evolution starts one only if its
    worst case fits (``env_steps + bound <= budget``). Raising its budget by ``bound - 1`` makes the two rules one.

    Args:
        config_for: ``config_for(method=..., sigma=..., seed=..., fitness_seed_offset=...)`` -> its
            :class:`~nnae_utils.evolution.EvolutionConfig` at the stage's budget.
        start_of, checkpoint_dir_of, master_seed: as :func:`grid_runs`.
    """
    method, name = label.split("/", 1)
    runs = []
    for r in range(n_seeds):
        (net_id, net), vector, run_genome = start_of.get((start, r), (None, None)), None, genome
        if net is not None:
            run_genome, vector = fine_tuning_start(genome, net, split_start_mode(name)[1])
        cfg = config_for(method=method, sigma=sigma, seed=evo.run_seed(master_seed, "evolution", label, start, r),
                         fitness_seed_offset=r * evo.SEEDS_PER_REPLICATE)
        cfg = dataclasses.replace(cfg, budget_steps=cfg.budget_steps + cfg.generation_cost_bound() - 1)
        info = {"label": "evolution", "evolution": label, "start": start, "replicate": r, "start_network": net_id}
        run = evo.Run(f"evolution-{run_tag(label)}-{start}-s{r}", cfg, run_genome, vector, info=info)
        if checkpoint_dir_of is not None:
            run.checkpoint_dir = checkpoint_dir_of(run)
        runs.append(run)
    return runs


def run_evolution_alone(chosen: Mapping[str, tuple[str, Any]], n_seeds: int, genomes: Mapping[str, Genome],
                        sigmas: Mapping[tuple[str, str], float], *, nthread: int | None = None,
                        **build: Any) -> tuple[list[evo.Run], dict[str, evo.RunState], dict[str, dict[str, float]]]:
    """Run (or resume) stage 5's evolution alone: per start condition, its chosen ``method/genome`` label's runs
    (:func:`evolution_alone_runs`, ``build`` its keyword arguments), driven in lockstep, one start after the other.

    Args:
        chosen: start condition -> ``(label, why)`` (only the label is read).
        genomes: genome name -> its encoding; sigmas: ``(genome name, start) -> sigma``.

    Returns:
        The runs, their final states by run id, and each start's ``wall_s`` and ``cpu_s`` in this session.
    """
    runs, states, cost = [], {}, {}
    for start, (label, _) in chosen.items():
        name = label.split("/", 1)[1]
        group = evolution_alone_runs(label, start, n_seeds, genomes[name], sigmas[(name, start)], **build)
        wall, cpu = time.perf_counter(), time.process_time()
        states.update(evo.run_lockstep(group, nthread=nthread))
        cost[start] = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}
        runs += group
    return runs, states, cost


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


def migration_table(runs: Sequence[CERLRun], results: Mapping[str, CERLResult], budget_steps: int | None = None):
    """One row per migrant: its functional distance to its decoded code, both returns, its next fitness rank; with
    ``budget_steps``, whether it migrated ``within_budget`` (a run is scored at the budget: later ones never count)."""
    import pandas as pd

    rows = [{"run_id": r.run_id, **r.info, "genome": r.genome.name, **m}
            for r in runs for m in results[r.run_id].log["migrations"]]
    table = pd.DataFrame(rows)
    if budget_steps is not None and len(table):
        table["within_budget"] = table["env_steps"] <= budget_steps
    return table
