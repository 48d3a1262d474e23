"""The policy zoo: TD3 training runs, snapshot selection, fresh-seed scores, splits, and a loader.

A zoo is a folder of networks in the suite's format (see :mod:`nnae_utils.policies`) with an
``index.json`` and a ``splits.json``. How a snapshot gets in:

1. a TD3 run evaluates its actor every ``snapshot_every`` steps on its *selection* seeds and
   saves the snapshot (:func:`nnae_utils.td3.train_td3`);
2. snapshots whose selection return reaches the threshold are candidates, at most
   ``max_per_run`` per run, spread evenly over training time;
3. each candidate is scored on fresh *admission* seeds; those that reach the threshold again go on;
4. they are scored once more on fresh *report* seeds, and join if they reach it a third time: that
   is the return ``index.json`` reports.

Example:
    >>> records = [{"id": f"r{r}_{k}", "provenance": {"run": r}} for r in range(4) for k in range(2)]
    >>> s = split_zoo(records, by="run", validation=1, test=1, seed=0)
    >>> sorted(len(v) for v in s["splits"].values())
    [2, 2, 4]
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from . import backends
from .io import write_json
from .policies import Network, load_network, read_index, save_network, write_index
from .rollouts import evaluate
from .seeds import eval_seeds

SPLITS = ("train", "validation", "test")
SPLITS_FILE = "splits.json"
EPISODE_CAP = 1000  # zoo scores are whole Hopper-v5 episodes (its TimeLimit)


# --------------------------------------------------------------------------- training runs


@dataclass(frozen=True)
class EnoughCandidates:
    """A TD3 run's stopping rule: done once ``count`` of its evaluations at or after ``min_step``
    reached ``threshold``, i.e. once it holds enough candidate snapshots for the zoo, and (when
    ``strong_count`` > 0) ``strong_count`` of them reached ``strong_threshold``: snapshots strong
    enough to teach DAgger students (:func:`top_up_with_students`).

    A run that keeps training after that only adds candidates that
    :func:`select_candidates` would thin out again, at about two core-hours per million steps.

    Example:
        >>> rule = EnoughCandidates(threshold=2500.0, count=2, min_step=100)
        >>> rule([{"step": "50", "return_mean": "3000"}, {"step": "100", "return_mean": "2600"}])
        False
        >>> rule([{"step": "100", "return_mean": "2600"}, {"step": "105", "return_mean": "2500"}])
        True
        >>> strong = EnoughCandidates(threshold=2500.0, count=2, min_step=100, strong_threshold=3000.0, strong_count=1)
        >>> strong([{"step": "100", "return_mean": "2600"}, {"step": "105", "return_mean": "2500"}])
        False
    """

    threshold: float
    count: int
    min_step: int = 0
    strong_threshold: float = float("inf")
    strong_count: int = 0

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> bool:
        late = [float(r["return_mean"]) for r in rows if int(r["step"]) >= self.min_step]
        return (sum(x >= self.threshold for x in late) >= self.count
                and sum(x >= self.strong_threshold for x in late) >= self.strong_count)


def run_folder(training_root: str | os.PathLike, settings: str, run_seed: int) -> Path:
    """Where a TD3 run lives: ``<training root>/<settings digest>/seed_<run seed>`` (its
    checkpoints, curve, snapshots, provenance and final critic)."""
    return Path(training_root) / str(settings) / f"seed_{int(run_seed)}"


def ensemble_folder(training_root: str | os.PathLike, cfg: Any, k: int) -> Path:
    """Where the members of a K-member TD3 ensemble (:mod:`nnae_utils.td3_ensemble`) of ``cfg``'s
    settings live: ``<training root>/<settings digest>_ens<K>``, each in ``seed_<run seed>`` below it
    (never confused with single-learner runs of the same settings)."""
    return Path(training_root) / f"{settings_digest(cfg)}_ens{int(k)}"


def ensemble_run_dirs(training_root: str | os.PathLike, configs: Sequence[Any]) -> list[Path]:
    """The members' folders of one ensemble of ``configs`` (K = ``len(configs)``)."""
    parent = ensemble_folder(training_root, configs[0], len(configs))
    return [parent / f"seed_{int(c.seed)}" for c in configs]


def _train_one(cfg, run_dir: str, done_when) -> str:
    from .td3 import train_td3

    train_td3(cfg, Path(run_dir), progress=False, done_when=done_when)
    return run_dir


def _train_ensemble(configs, run_dirs: list[str], done_when) -> list[str]:
    from .td3_ensemble import train_td3_ensemble

    train_td3_ensemble(configs, [Path(d) for d in run_dirs], progress=False, done_when=done_when)
    return run_dirs


def train_runs(
    configs: Sequence[Any], work_root: Path, *, jobs: int = 2, progress: bool = True,
    done_when: EnoughCandidates | None = None,
    backend=None,
    ensembles: Sequence[Sequence[Any]] = (),
) -> list[Path]:
    """Train (or resume) one TD3 run per config, ``jobs`` processes at a time, one torch thread each.

    Run ``i`` lives in ``work_root/<settings digest>/seed_<cfg.seed>``, so runs of other settings
    never collide, and a finished run is resumed (a no-op) rather than retrained. ``done_when``
    (for example :class:`EnoughCandidates`) may end a run before ``cfg.total_steps``.
    The progress bar follows the runs' ``curve.csv`` files, so it works across processes.
    ``backend`` (:mod:`nnae_utils.backends`; None: the current one) may run them as Ray tasks
    instead (``work_root`` must then be on a file system every node shares).
    ``ensembles``: further runs, trained as K-member ensembles in one process each
    (:func:`nnae_utils.td3_ensemble.train_td3_ensemble`), one list of configs per ensemble, in
    :func:`ensemble_run_dirs`; they are submitted first. Returns every run's folder (the single
    runs', then the ensembles' members').
    """
    backend = backends.resolve(backend)
    run_dirs = [run_folder(work_root, settings_digest(cfg), cfg.seed) for cfg in configs]
    ens_dirs = [ensemble_run_dirs(work_root, group) for group in ensembles]
    total = sum(cfg.total_steps for cfg in configs) + sum(c.total_steps for group in ensembles for c in group)
    # locally: spawned processes (fork would copy torch's thread pools into the children)
    with backend.executor(jobs) as pool, tqdm(
        total=total, desc="TD3 runs", unit="step", disable=not progress, mininterval=5
    ) as bar:
        futures = [pool.submit(_train_ensemble, list(group), [str(d) for d in dirs], done_when)
                   for group, dirs in zip(ensembles, ens_dirs)]
        futures += [pool.submit(_train_one, cfg, str(d), done_when) for cfg, d in zip(configs, run_dirs)]
        every = run_dirs + [d for dirs in ens_dirs for d in dirs]
        while True:
            done, _ = cf.wait(futures, timeout=5)
            bar.n = sum(_last_step(d) for d in every)
            bar.set_postfix(best=f"{max((_best_return(d) for d in every), default=float('nan')):.0f}")
            bar.refresh()
            if len(done) == len(futures):
                break
        for fut in futures:
            fut.result()  # re-raise a run's error here, naming it
    return every


@dataclass(frozen=True)
class RunGroup:
    """Runs of one learner in the growth plan (``zoo/growth.yaml``): one TD3 config per seed."""

    name: str
    seeds: tuple[int, ...]
    critic_hidden: tuple[int, ...]
    actor_init_seed: int = -1
    """>= 0: every run of the group starts from the actor this seed draws (shared initialisation)."""
    ensemble: int = 1
    """Runs trained together in one process (:mod:`nnae_utils.td3_ensemble`), the seeds taken K at a
    time in order; 1: each run alone (:func:`nnae_utils.td3.train_td3`)."""


@dataclass(frozen=True)
class GrowthPlan:
    """The grown zoo's runs, read from ``zoo/growth.yaml``: the shipped zoo's TD3 protocol, a
    stopping rule (``candidates`` evaluations at or above ``bar`` at or after ``min_snapshot_step``),
    a step cap (a run that hits it without enough candidates failed), and groups of seeds per learner.
    A group whose learner is ``chosen`` uses the critic (and ensemble size) that the learner benchmark
    chose. A group's ``ensemble: K`` (default 1) trains its seeds K at a time in one process
    (:mod:`nnae_utils.td3_ensemble`), in ``<settings digest>_ens<K>/seed_<seed>`` (:meth:`run_dirs`)."""

    training_dir: Path
    bar: float
    min_snapshot_step: int
    candidates: int
    step_cap: int
    td3: Mapping[str, Any]
    groups: Mapping[str, Mapping[str, Any]]

    @classmethod
    def read(cls, path: str | os.PathLike) -> "GrowthPlan":
        import yaml

        data = yaml.safe_load(Path(path).read_text())
        return cls(training_dir=Path(data["training_dir"]), bar=float(data["bar"]),
                   min_snapshot_step=int(data["min_snapshot_step"]), candidates=int(data["candidates"]),
                   step_cap=int(data["step_cap"]), td3=dict(data["td3"]), groups=dict(data["groups"]))

    def group(self, name: str, chosen_critic: Sequence[int] | None = None, chosen_ensemble: int = 1) -> RunGroup:
        if name not in self.groups:
            raise ValueError(f"no group {name!r} in the growth plan; it has {sorted(self.groups)}")
        g = self.groups[name]
        if g.get("learner") == "chosen":
            if chosen_critic is None:
                raise ValueError(f"group {name!r} trains the chosen learner, and none is chosen yet "
                                 "(run benchmarks/zoo_learners.py first)")
            critic = tuple(chosen_critic)
            ensemble = int(g.get("ensemble", chosen_ensemble))
        else:
            critic = tuple(g["critic_hidden"])
            ensemble = int(g.get("ensemble", 1))
        seeds = tuple(int(s) for s in g["seeds"])
        if ensemble < 1 or len(seeds) % ensemble:
            raise ValueError(f"group {name!r}: ensemble must be >= 1 and divide its {len(seeds)} seeds, got {ensemble}")
        return RunGroup(name, seeds, critic, int(g.get("actor_init_seed", -1)), ensemble)

    def configs(self, group: RunGroup) -> list[Any]:
        from .td3 import TD3Config

        return [TD3Config(seed=s, total_steps=self.step_cap, critic_hidden=group.critic_hidden,
                          actor_init_seed=group.actor_init_seed, **self.td3) for s in group.seeds]

    def ensembles(self, group: RunGroup) -> list[list[Any]]:
        """The group's configs K = ``group.ensemble`` at a time, in seed order (one list per process)."""
        configs = self.configs(group)
        return [configs[i:i + group.ensemble] for i in range(0, len(configs), group.ensemble)]

    def run_dirs(self, group: RunGroup, training_root: str | os.PathLike) -> list[Path]:
        """Where the group's runs live, in seed order: ``<digest>/seed_<s>``, or for an ensemble
        group ``<digest>_ens<K>/seed_<s>`` (:func:`ensemble_run_dirs`)."""
        if group.ensemble == 1:
            return [run_folder(training_root, settings_digest(c), c.seed) for c in self.configs(group)]
        return [d for configs in self.ensembles(group) for d in ensemble_run_dirs(training_root, configs)]

    @property
    def done_when(self) -> EnoughCandidates:
        return EnoughCandidates(self.bar, self.candidates, self.min_snapshot_step)


def prune_snapshots(run_dir: str | os.PathLike, *, keep_steps: Iterable[int], up_to: int | None = None) -> tuple[int, int]:
    """Delete a run's snapshots other than the initial actor (step 0) and those at ``keep_steps``
    (its candidates: nothing else can join the zoo), at or below step ``up_to`` (None: all).
    Safe beside a training process, which never reads a snapshot back. Returns (removed, kept)."""
    keep = {0, *(int(s) for s in keep_steps)}
    removed = kept = 0
    for p in sorted((Path(run_dir) / "snapshots").glob("step_*.safetensors")):
        step = int(p.stem.split("_")[1])
        if step in keep or (up_to is not None and step > up_to):
            kept += 1
        else:
            p.unlink()
            removed += 1
    return removed, kept


def compact_finished_run(run_dir: str | os.PathLike, *, keep_steps: Iterable[int]) -> dict[str, int]:
    """Shrink a finished run to what the zoo needs: its curve, provenance, final critic, the initial
    actor (step 0) and the snapshots at ``keep_steps``; the optimizer checkpoint and every other
    snapshot go. :func:`nnae_utils.td3.train_td3` then returns such a run as finished without
    training it again. Returns how many files were removed and kept."""
    from .td3 import CHECKPOINT_FILE, CRITIC_FILE, PROVENANCE_FILE

    run_dir = Path(run_dir)
    prov = json.loads((run_dir / PROVENANCE_FILE).read_text())
    if not prov.get("finished") or not (run_dir / CRITIC_FILE).is_file():
        raise ValueError(f"{run_dir} has not finished (no final critic): it needs its checkpoint to resume")
    removed, kept = prune_snapshots(run_dir, keep_steps=keep_steps)
    for name in (CHECKPOINT_FILE, "buffer.npz"):
        if (run_dir / name).is_file():
            (run_dir / name).unlink()
            removed += 1
    return {"removed": removed, "kept_snapshots": kept}


def settings_digest(cfg: Any) -> str:
    """A short hash of a run's settings other than its seed, its length and its thread count
    (a run may be extended, or resumed with more threads, and stays the same run)."""
    import hashlib

    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("seed", "total_steps", "torch_threads")}
    if settings.get("actor_init_seed", -1) == -1:
        settings.pop("actor_init_seed", None)  # added later: runs without a shared initialisation keep their folder
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _curve(run_dir: Path) -> pd.DataFrame:
    path = Path(run_dir) / "curve.csv"
    if not path.is_file():
        return pd.DataFrame(columns=["step", "return_mean"])
    try:
        return pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError):
        return pd.DataFrame(columns=["step", "return_mean"])


def _last_step(run_dir: Path) -> int:
    curve = _curve(run_dir)
    return int(curve["step"].max()) if len(curve) else 0


def _best_return(run_dir: Path) -> float:
    curve = _curve(run_dir)
    return float(curve["return_mean"].max()) if len(curve) else float("nan")


def training_curves(run_dirs: Iterable[Path]) -> pd.DataFrame:
    """All runs' in-training evaluations, with a ``run`` column (the run's seed)."""
    frames = []
    for d in run_dirs:
        curve = _curve(Path(d))
        if len(curve):
            frames.append(curve.assign(run=int(Path(d).name.split("_")[-1])))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# --------------------------------------------------------------------------- selection and scoring


@dataclass(frozen=True)
class Candidate:
    """A network that may join the zoo: a TD3 snapshot, or a DAgger student of an admitted one."""

    run: int
    """The TD3 run it comes from (a student's is its teacher's), which decides its split."""
    step: int
    """The training step of the snapshot (a student's: its teacher's)."""
    selection_return: float | None
    """The in-training return that made the snapshot a candidate (None for a student)."""
    path: Path
    student: int | None = None
    """For a DAgger student: its number within its run."""
    teacher: str = ""
    """For a DAgger student: its teacher's zoo id."""
    distill: Mapping[str, Any] | None = None
    """For a DAgger student: its distillation settings and seed."""
    learner: str = ""
    """The TD3 learner that trained the run (``critic 256-256`` ...), read from its provenance."""
    actor_init_seed: int = -1
    """>= 0: the run started from the actor this seed draws, shared with other runs."""

    @property
    def id(self) -> str:
        base = f"run{self.run:02d}_step{self.step:07d}"
        return base if self.student is None else f"{base}_student{self.student:03d}"

    @property
    def kind(self) -> str:
        return "td3_snapshot" if self.student is None else "dagger_student"

    def provenance(self) -> dict[str, Any]:
        """What ``index.json`` records of where this network comes from."""
        out: dict[str, Any] = {"kind": self.kind, "run": self.run, "step": self.step}
        if self.learner:
            out["learner"] = self.learner
        if self.actor_init_seed >= 0:
            out["actor_init_seed"] = self.actor_init_seed
        if self.student is None:
            out["selection_return"] = round(float(self.selection_return), 3)
        else:
            out.update(teacher=self.teacher, distill=dict(self.distill or {}))
        return out


def run_learner(run_dir: Path) -> tuple[str, int]:
    """A run's learner (``"td3 critic 256-256"``, or ``"td3 critic 64-64, ensemble of 4"`` for a member
    of a :mod:`nnae_utils.td3_ensemble` run) and actor_init_seed, from its provenance ("", -1 if unknown)."""
    path = Path(run_dir) / "provenance.json"
    if not path.is_file():
        return "", -1
    prov = json.loads(path.read_text())
    return learner_name(prov), int(prov.get("config", {}).get("actor_init_seed", -1))


def learner_name(record: Mapping[str, Any]) -> str:
    """The learner of a run's provenance record (its ``config`` and ``ensemble``), as :func:`run_learner`
    names it: ``"td3 critic 256-256"``, ``"td3 critic 64-64, ensemble of 4"``; "" without a critic."""
    critic = "-".join(str(w) for w in (record.get("config") or {}).get("critic_hidden", []))
    if not critic:
        return ""
    ensemble = record.get("ensemble")
    return f"td3 critic {critic}" + (f", ensemble of {int(ensemble['k'])}" if isinstance(ensemble, Mapping) else "")


def select_candidates(
    run_dirs: Iterable[Path], *, threshold: float, min_step: int = 0, max_per_run: int = 40
) -> list[Candidate]:
    """Snapshots whose selection return reaches ``threshold``, spread evenly over each run."""
    chosen: list[Candidate] = []
    for d in run_dirs:
        d = Path(d)
        curve = _curve(d)
        run = int(d.name.split("_")[-1])
        ok = curve[(curve["return_mean"] >= threshold) & (curve["step"] >= min_step)].sort_values("step")
        rows = [r for r in ok.itertuples() if (d / "snapshots" / f"step_{int(r.step):07d}.safetensors").is_file()]
        if len(rows) > max_per_run:
            picks = np.unique(np.linspace(0, len(rows) - 1, max_per_run).round().astype(int))
            rows = [rows[i] for i in picks]
        learner, init = run_learner(d)
        chosen += [
            Candidate(run, int(r.step), float(r.return_mean), d / "snapshots" / f"step_{int(r.step):07d}.safetensors",
                      learner=learner, actor_init_seed=init)
            for r in rows
        ]
    return chosen


def plan_students(
    records: Sequence[Mapping[str, Any]], *, fill_to: int, config: Any, zoo_dir: Path, work_dir: Path,
    teacher_min_return: float = -np.inf, first: Mapping[int, int] | None = None,
) -> tuple[list[Any], list[Candidate]]:
    """DAgger students that top every run up to ``fill_to`` zoo networks.

    A run's teachers are its admitted TD3 snapshots whose reported return reaches
    ``teacher_min_return`` (a student rarely beats its teacher, and students of a marginal one
    often fall below the bar: ``benchmarks/distill_cost.py``), taken in turn in order of training
    step, so that the students spread over the run's training time as its snapshots do. A run with
    no teacher gets no students. Student ``k`` of run ``r`` has seed
    ``1000 * r + k`` (with ``config``'s other settings), so every student of the zoo has its own;
    ``first[r]`` is run r's first ``k`` (students numbered below it were planned before).

    Returns the :class:`nnae_utils.distill.StudentJob` list (files in ``work_dir``) and the
    matching zoo candidates.
    """
    from .distill import StudentJob, config_record

    jobs, candidates = [], []
    for run in sorted({int(r["provenance"]["run"]) for r in records}):
        teachers = sorted(
            (r for r in records if int(r["provenance"]["run"]) == run and r["return_mean"] >= teacher_min_return
             and r["provenance"].get("kind", "td3_snapshot") == "td3_snapshot"),
            key=lambda r: int(r["provenance"]["step"]),
        )
        members = sum(int(r["provenance"]["run"]) == run for r in records)
        start = int((first or {}).get(run, 0))
        if start + fill_to - members >= 1000:
            raise ValueError(f"run {run}: student numbers would pass 999 (seeds are 1000 * run + k)")
        for k in range(start, start + max(0, fill_to - members) if teachers else start):
            teacher = teachers[k % len(teachers)]
            cfg = dataclasses.replace(config, seed=1000 * run + k)
            step = int(teacher["provenance"]["step"])
            path = Path(work_dir) / f"run{run:02d}_student{k:03d}_of_step{step:07d}.safetensors"
            jobs.append(StudentJob(Path(zoo_dir) / f"{teacher['id']}.safetensors", teacher["id"], cfg, path))
            candidates.append(Candidate(run, step, None, path, student=k, teacher=teacher["id"],
                                        distill={**config_record(cfg), "seed": cfg.seed}))
    return jobs, candidates


def top_up_with_students(
    records: Sequence[Mapping[str, Any]], *, fill_to: int, config: Any, zoo_dir: Path, work_dir: Path,
    teacher_min_return: float, threshold: float, episodes: int, provenance: Mapping[str, Any],
    workers: int = 2, waves: int = 3, progress: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Distill students (:func:`plan_students`), admit them as any candidate (:func:`build_zoo`),
    and try again for runs still short of ``fill_to``, at most ``waves`` times: a student
    sometimes falls below the bar even when its teacher does not.

    Returns the whole zoo's records, and a report: students distilled and admitted, and the CPU
    seconds all of them took (admitted or not, as each file records it).
    """
    from .distill import CPU_SECONDS_KEY, distill_many

    records = list(records)
    planned: dict[int, int] = {}
    distilled: list[Path] = []
    for _ in range(waves):
        jobs, candidates = plan_students(records, fill_to=fill_to, config=config, zoo_dir=zoo_dir, work_dir=work_dir,
                                         teacher_min_return=teacher_min_return, first=planned)
        if not jobs:
            break
        distilled += distill_many(jobs, workers=workers, progress=progress)
        records = build_zoo(candidates, zoo_dir, threshold=threshold, episodes=episodes, provenance=provenance,
                            progress=progress, append=True)
        for c in candidates:
            planned[c.run] = max(planned.get(c.run, 0), c.student + 1)
    cpu = sum(float(load_network(p).extra_metadata.get(CPU_SECONDS_KEY, "nan")) for p in distilled)
    report = {"students_distilled": len(distilled),
              "students_admitted": sum(r["provenance"].get("kind") == "dagger_student" for r in records),
              "distill_cpu_s": round(cpu, 3)}
    return records, report


def build_zoo(
    candidates: Sequence[Candidate],
    out_dir: Path,
    *,
    threshold: float,
    episodes: int,
    provenance: Mapping[str, Any],
    progress: bool = True,
    append: bool = False,
) -> list[dict[str, Any]]:
    """Score candidates on fresh admission seeds and keep those reaching ``threshold``; score those on
    fresh report seeds and keep those reaching it again; write them with ``index.json`` into ``out_dir``.

    A member thus reaches the bar on two independent sets of ``episodes`` fresh episodes, and its
    reported return (the report seeds') reaches it by construction; an unsteady network (one that
    sometimes falls) rarely passes both.

    ``append``: add the new members to the zoo already in ``out_dir`` (for students of its members).
    Returns the records of the whole zoo.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    existing = read_index(out_dir) if append else []
    if not candidates:
        write_index(out_dir, existing)
        return existing
    nets = [load_network(c.path) for c in candidates]
    admission_seeds = eval_seeds("zoo_admission", episodes)
    admitted = evaluate(nets, admission_seeds, max_steps=EPISODE_CAP, progress=progress).returns.mean(axis=1)
    keep = [i for i in range(len(nets)) if admitted[i] >= threshold]
    report_seeds = eval_seeds("zoo_report", episodes)
    records = []
    if keep:
        report = evaluate([nets[i] for i in keep], report_seeds, max_steps=EPISODE_CAP, progress=progress)
        for j, i in enumerate(keep):
            if report.returns[j].mean() < threshold:
                continue
            c = candidates[i]
            save_network(out_dir / f"{c.id}.safetensors", nets[i])
            records.append(
                {
                    "id": c.id,
                    "return_mean": float(report.returns[j].mean()),
                    "return_std": float(report.returns[j].std()),
                    "episodes": int(episodes),
                    "eval_seeds": report_seeds.tolist(),
                    "max_episode_steps": EPISODE_CAP,
                    "episode_returns": report.returns[j].round(3).tolist(),
                    "provenance": {
                        **provenance,
                        **c.provenance(),
                        "admission_return": round(float(admitted[i]), 3),
                        "admission_seeds": admission_seeds.tolist(),
                    },
                }
            )
    records = [*existing, *records]
    write_index(out_dir, records)
    return records


# --------------------------------------------------------------------------- splits and loading


def split_zoo(
    records: Sequence[Mapping[str, Any]], *, by: str = "run", validation: int = 1, test: int = 1, seed: int = 0
) -> dict[str, Any]:
    """Assign every network to train / validation / test.

    ``by="run"``: whole runs go to one split (``validation`` and ``test`` runs, drawn at random with
    ``seed``; the rest train), so snapshots of one run never straddle two splits.
    ``by="network"``: networks are shuffled and split in the same proportions.
    """
    rng = np.random.default_rng(seed)
    shared = [r for r in records if int(r["provenance"].get("actor_init_seed", -1)) >= 0]
    records = [r for r in records if int(r["provenance"].get("actor_init_seed", -1)) < 0]
    ids = [r["id"] for r in records]
    if by == "run":
        runs = sorted({int(r["provenance"]["run"]) for r in records})
        if len(runs) < validation + test + 1:
            raise ValueError(
                f"a split by run needs at least {validation + test + 1} runs with zoo members, got {len(runs)}: {runs}. "
                "Train more runs, lower the return threshold, or split by network."
            )
        order = [int(x) for x in rng.permutation(runs)]
        assign = {run: "test" for run in order[:test]}
        assign.update({run: "validation" for run in order[test : test + validation]})
        splits = {s: [r["id"] for r in records if assign.get(int(r["provenance"]["run"]), "train") == s] for s in SPLITS}
        runs_of = {s: sorted({int(r["provenance"]["run"]) for r in records if r["id"] in set(splits[s])}) for s in SPLITS}
    elif by == "network":
        n_runs = max(len({int(r["provenance"]["run"]) for r in records}), 1)
        order = list(rng.permutation(len(ids)))
        n_test = max(1, round(len(ids) * test / n_runs)) if test else 0
        n_val = max(1, round(len(ids) * validation / n_runs)) if validation else 0
        if n_test + n_val >= len(ids):
            raise ValueError(f"too few networks ({len(ids)}) for a validation and a test split")
        splits = {
            "test": [ids[i] for i in order[:n_test]],
            "validation": [ids[i] for i in order[n_test : n_test + n_val]],
            "train": [ids[i] for i in order[n_test + n_val :]],
        }
        runs_of = {s: sorted({int(r["provenance"]["run"]) for r in records if r["id"] in set(splits[s])}) for s in SPLITS}
    else:
        raise ValueError(f"split by 'run' or 'network', got {by!r}")
    out = {"rule": by, "seed": seed, "splits": splits, "runs": runs_of}
    if shared:  # one initialisation, several runs: a study of their own, never in train, validation or test
        out["shared_init"] = {"ids": [r["id"] for r in shared],
                              "runs": sorted({int(r["provenance"]["run"]) for r in shared})}
    return out


def run_folds(train_runs: Sequence[int], sizes: Sequence[int], per_size: int = 3, seed: int = 0) -> list[dict[str, Any]]:
    """Leave-runs-out folds for a learning curve over the number of train runs: for each size ``k``,
    ``per_size`` subsets of ``k`` train runs drawn with ``seed`` (distinct subsets where there are
    that many; a size above the number of runs is skipped, and the full set is one fold). Every fold
    is tested on the same held-out runs (the zoo's validation and test runs).

    Example:
        >>> folds = run_folds([3, 5, 7, 9], sizes=[2, 4, 8], per_size=3, seed=0)
        >>> [(f["k"], len(f["runs"])) for f in folds]
        [(2, 2), (2, 2), (2, 2), (4, 4)]
        >>> len({tuple(f["runs"]) for f in folds if f["k"] == 2})
        3
    """
    import math

    runs = sorted(int(r) for r in train_runs)
    rng = np.random.default_rng(seed)
    folds: list[dict[str, Any]] = []
    for k in sorted({int(k) for k in sizes}):
        if not 0 < k <= len(runs):
            continue
        want = min(per_size, math.comb(len(runs), k))
        seen: set[tuple[int, ...]] = set()
        while len(seen) < want:
            subset = tuple(sorted(int(x) for x in rng.choice(runs, size=k, replace=False)))
            if subset not in seen:
                seen.add(subset)
                folds.append({"k": k, "fold": len(seen) - 1, "runs": list(subset)})
    return folds


def write_splits(zoo_dir: Path, splits: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> Path:
    """Write ``splits.json`` and record each network's split in ``index.json``."""
    zoo_dir = Path(zoo_dir)
    where = {i: s for s, members in splits["splits"].items() for i in members}
    where.update({i: "shared_init" for i in splits.get("shared_init", {}).get("ids", [])})
    for rec in records:
        rec["provenance"]["split"] = where[rec["id"]]
    write_index(zoo_dir, records)
    return write_json(zoo_dir / SPLITS_FILE, splits)


@dataclass
class Zoo:
    """A loaded zoo: index records, their networks, and the split of each."""

    directory: Path
    records: list[dict[str, Any]]
    networks: list[Network]
    splits: dict[str, list[str]]

    def ids(self, split: str | None = None) -> list[str]:
        return [r["id"] for r in self.records] if split is None else list(self.splits[split])

    def select(self, split: str) -> "Zoo":
        """The networks of one split as a zoo with that split only (its members in the split file's order)."""
        return self._take(self.splits[split], {split: self.ids(split)})

    def subset(self, ids: Sequence[str], name: str) -> "Zoo":
        """The networks of ``ids`` (in zoo order) as a zoo with one split, ``name``."""
        missing = set(ids) - {r["id"] for r in self.records}
        if missing:
            raise KeyError(f"zoo {self.directory} has no networks {sorted(missing)}")
        picked = self._take(ids, {})
        picked.splits[name] = picked.ids()
        return picked

    def sample(self, n: int, *, per_run: int = 0, seed: int = 0, stratum: Sequence[str] = ()) -> "Zoo":
        """At most ``n`` networks, runs first, then snapshots evenly over each run's training steps
        (:func:`sample_indices`); every network when ``n`` is 0 or covers the zoo. The result keeps
        zoo order, and each split lists its sampled members.

        ``stratum``: ids (e.g. the train snapshots stage 2 held out) sampled apart from the others,
        in proportion to their share of the zoo and at least one, so that a cap keeps some of them.
        """
        frame = self.frame()
        inside = frame["id"].isin(set(stratum)).to_numpy()
        if n and n < len(frame) and 0 < inside.sum() < len(frame):
            n_in = min(max(1, round(n * inside.mean())), n - 1)
            keep = set()
            for part, k in ((inside, n_in), (~inside, n - n_in)):
                sub = frame[part]
                keep |= {sub["id"].iloc[i] for i in sample_indices(sub["run"].tolist(), sub["step"].tolist(), k,
                                                                   per_run=per_run, seed=seed)}
            return self._take(sorted(keep), {s: [i for i in m if i in keep] for s, m in self.splits.items()})
        idx = sample_indices(frame["run"].tolist(), frame["step"].tolist(), n, per_run=per_run, seed=seed)
        keep = {self.records[i]["id"] for i in idx}
        return self._take(sorted(keep), {s: [i for i in m if i in keep] for s, m in self.splits.items()})

    def _take(self, ids: Sequence[str], splits: dict[str, list[str]]) -> "Zoo":
        keep = set(ids)
        idx = [i for i, r in enumerate(self.records) if r["id"] in keep]
        return Zoo(self.directory, [self.records[i] for i in idx], [self.networks[i] for i in idx], splits)

    def holdout_snapshots(self, every: int) -> list[str]:
        """Ids of every ``every``-th snapshot of each train run, in step order, starting at ``every // 2``:
        the train-run networks stage 2 holds out of autoencoder training (``stop_on: train_holdout``).

        >>> zoo.holdout_snapshots(5)  # doctest: +SKIP
        ['run01_step0505000', 'run01_step0535000', ...]
        """
        if every < 2:
            raise ValueError(f"every must be >= 2 (1 would hold out every train network), got {every}")
        frame = self.frame()
        held: list[str] = []
        for _, run_frame in frame[frame.split == "train"].sort_values("step").groupby("run"):
            held += run_frame["id"].tolist()[every // 2 :: every]
        return sorted(held)

    def returns(self) -> np.ndarray:
        return np.array([r["return_mean"] for r in self.records])

    def frame(self) -> pd.DataFrame:
        """One row per network: id, split, run, step, kind (td3_snapshot or dagger_student), teacher
        (a student's), return_mean, return_std."""
        where = {i: s for s, members in self.splits.items() for i in members}
        return pd.DataFrame(
            {
                "id": r["id"],
                "split": where.get(r["id"], "unassigned"),
                "run": r["provenance"].get("run"),
                "step": r["provenance"].get("step"),
                "kind": r["provenance"].get("kind", "td3_snapshot"),
                "teacher": r["provenance"].get("teacher", ""),
                "return_mean": r["return_mean"],
                "return_std": r["return_std"],
            }
            for r in self.records
        )


def sample_indices(runs: Sequence[Any], steps: Sequence[Any], n: int, *, per_run: int = 0, seed: int = 0) -> list[int]:
    """Indices of at most ``n`` networks: runs first, then snapshots evenly over each run's steps.

    Runs weigh the same whatever their number of snapshots. ``k`` runs are drawn (all of them
    when they fit: ``k = min(runs, n)``, or ``ceil(n / per_run)`` with ``per_run``), without
    replacement by a generator seeded with ``seed``; the ``n`` places go round-robin over the drawn
    runs in run order (at most ``per_run`` or the run's size each); within a run the ``m`` picks
    are evenly spaced over its snapshots in step order (``linspace(0, size - 1, m)``, rounded), so
    a single run gives :func:`nnae_utils.decoded.spread_subset`'s choice. ``n`` 0, or at least
    the number of networks without a binding ``per_run``: every index. Sorted ascending.

    Example:
        >>> runs = [0] * 6 + [1] * 6 + [2] * 3
        >>> sample_indices(runs, list(range(6)) * 2 + [0, 1, 2], 6, seed=0)   # two per run
        [0, 5, 6, 11, 12, 14]
        >>> sample_indices(runs, list(range(15)), 4, per_run=2, seed=0)      # two of the three runs, seeded
        [6, 11, 12, 14]
        >>> sample_indices(runs, list(range(15)), 0) == list(range(15))
        True
    """
    if len(runs) != len(steps):
        raise ValueError(f"runs and steps differ in length ({len(runs)} and {len(steps)})")
    if n < 0 or per_run < 0:
        raise ValueError(f"n and per_run must be >= 0, got {n} and {per_run}")
    if not n:
        return list(range(len(runs)))
    members: dict[Any, list[int]] = {}
    for i in sorted(range(len(runs)), key=lambda i: (steps[i] is None, steps[i] or 0, i)):   # a student: no step
        members.setdefault(runs[i], []).append(i)
    names = sorted(members, key=lambda r: (not isinstance(r, (int, np.integer)), r if isinstance(r, (int, np.integer)) else 0, str(r)))
    cap = {r: min(len(members[r]), per_run) if per_run else len(members[r]) for r in names}
    if n >= len(runs) and all(cap[r] == len(members[r]) for r in names):
        return list(range(len(runs)))
    k = min(len(names), n if not per_run else -(-n // per_run))
    if k < len(names):
        drawn = np.random.default_rng(seed).choice(len(names), size=k, replace=False)
        names = [names[j] for j in sorted(drawn)]
    take = dict.fromkeys(names, 0)
    left = n
    while left:
        open_runs = [r for r in names if take[r] < cap[r]]
        if not open_runs:
            break
        for r in open_runs[:left]:
            take[r] += 1
        left -= min(left, len(open_runs))
    picked: list[int] = []
    for r in names:
        if take[r]:
            pos = np.unique(np.linspace(0, len(members[r]) - 1, take[r]).round().astype(int))
            picked += [members[r][p] for p in pos]
    return sorted(picked)


def sample_sentence(sample: "Zoo", population: "Zoo", *, what: str = "networks", seed: int | None = None) -> str:
    """How ``sample`` was drawn from ``population``, for a chapter's text.

    Example:
        >>> z = Zoo(Path("."), [{"id": f"r{r}_{s}", "provenance": {"run": r, "step": s}, "return_mean": 0.0,
        ...      "return_std": 0.0} for r in range(3) for s in range(4)], [None] * 12, {"test": []})
        >>> print(sample_sentence(z.sample(4, seed=0), z, what="test networks", seed=0))
        scored 4 of 12 test networks (3 of 3 runs), sampled by run then spread evenly over each run's training steps (seed 0)
        >>> sample_sentence(z, z)
        'scored all 12 networks (3 runs)'
    """
    runs_of = lambda z: len({r["provenance"].get("run") for r in z.records})  # noqa: E731
    n, m, rs, rm = len(sample.records), len(population.records), runs_of(sample), runs_of(population)
    if n == m:
        return f"scored all {m} {what} ({rm} run{'s' if rm != 1 else ''})"
    how = "sampled by run then spread evenly over each run's training steps"
    return f"scored {n} of {m} {what} ({rs} of {rm} run{'s' if rm != 1 else ''}), {how}" + (f" (seed {seed})" if seed is not None else "")


def replicate_starts(n_networks: int, n_replicates: int, seed: int) -> list[int]:
    """Index of the network each replicate fine-tunes: replicate ``r`` takes ``order[r % n_networks]`` of a
    permutation drawn with ``seed``, so every method of a stage, and stages 4 and 5, start replicate ``r``
    from the same network (paired comparisons).

    >>> replicate_starts(3, 5, seed=0)
    [2, 0, 1, 2, 0]
    """
    if n_networks < 1:
        raise ValueError("no networks to start from")
    order = np.random.default_rng(seed).permutation(n_networks)
    return [int(order[r % n_networks]) for r in range(n_replicates)]


def load_zoo(directory: str | os.PathLike, split: str | None = None) -> Zoo:
    """Load a zoo folder (``index.json`` + ``splits.json`` + network files), optionally one split."""
    directory = Path(directory)
    records = read_index(directory)
    splits_path = directory / SPLITS_FILE
    if not splits_path.is_file():
        raise FileNotFoundError(f"zoo {directory} has no {SPLITS_FILE}")
    splits = json.loads(splits_path.read_text())["splits"]
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    zoo = Zoo(directory, records, [load_network(directory / f"{r['id']}.safetensors") for r in records], splits)
    return zoo.select(split) if split else zoo


def copy_zoo(source: str | os.PathLike, destination: Path) -> Path:
    """Copy a shipped zoo (network files, index.json, splits.json, curves) after validating it."""
    import shutil

    source = Path(source)
    if not source.is_dir():
        raise FileNotFoundError(f"zoo_source {source} is not a folder (use 'train' to train a zoo)")
    load_zoo(source)  # every file present, readable and consistent before anything is copied
    shutil.copytree(source, destination)
    return destination


SHIPPED_PROVENANCE = "provenance.json"


def ship_zoo(stage_dir: str | os.PathLike, destination: str | os.PathLike, *, command: str) -> Path:
    """Write the zoo a data stage built as a *shipped* zoo, which any profile can load (``zoo_source``).

    ``destination`` gets the network files, ``index.json`` and ``splits.json``, the stage's
    ``training_curves.csv``, and a ``provenance.json``: the ``command`` that trained the zoo, the
    stage's parameters and summary (returns, core-hours, versions, code revision), and each
    training run's own record (steps, core-seconds, sessions, early stop, buffer refills), read from
    the run folders, whose final critics stage 5 loads. Every record's provenance names that
    folder (``training_dir``). Refuses to overwrite an existing destination.
    """
    import shutil

    from . import td3

    stage_dir, destination = Path(stage_dir), Path(destination)
    stage = json.loads((stage_dir / "stage.json").read_text())
    params = stage["params"]
    if params.get("zoo_source", "train") != "train":
        raise ValueError(f"{stage_dir} loaded a shipped zoo ({params['zoo_source']}); only a trained zoo can be shipped")
    if not params.get("training_dir"):
        raise ValueError(f"{stage_dir}: its TD3 runs are in the run folder's scratch space; ship a zoo trained with "
                         "data.training_dir set to a folder that is committed with it (the zoo profile's zoo/training)")
    if destination.exists():
        raise FileExistsError(f"{destination} exists; remove it first to ship a new zoo there")
    source = load_zoo(stage_dir / "zoo")  # complete and consistent before anything is written
    training_dir = Path(params["training_dir"])
    runs = {}
    for rec in source.records:
        prov = rec["provenance"]
        run_dir = run_folder(training_dir, prov["settings"], prov["run"])
        if str(prov["run"]) not in runs:
            run_prov = json.loads((run_dir / td3.PROVENANCE_FILE).read_text())
            runs[str(prov["run"])] = {
                "folder": str(run_dir), "critic": (run_dir / td3.CRITIC_FILE).is_file(),
                **{k: run_prov.get(k) for k in ("step", "finished", "done_early", "core_seconds", "total_wall_s",
                                                "buffer_refilled_at_steps", "start_time", "end_time", "config", "versions")},
                "sessions": len(run_prov.get("sessions", [])),
            }
    staging = destination.with_name(destination.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    shutil.copytree(stage_dir / "zoo", staging)
    shutil.copy2(stage_dir / "training_curves.csv", staging / "training_curves.csv")
    records = [{**r, "provenance": {**r["provenance"], "training_dir": str(training_dir)}} for r in source.records]
    write_index(staging, records)
    summary = json.loads((stage_dir / "summary.json").read_text())
    training = sum(r["core_seconds"] or 0.0 for r in runs.values()) / 3600
    distilling = summary.get("students", {}).get("distill_cpu_s", 0.0) / 3600
    provenance = {
        "command": command, "stage_key": stage["key"], "params": params, "summary": summary, "runs": runs,
        "training_core_hours": round(training, 3), "distill_core_hours": round(distilling, 3),
        "core_hours": round(training + distilling, 3),
    }
    (staging / SHIPPED_PROVENANCE).write_text(json.dumps(provenance, indent=1, default=str))
    os.replace(staging, destination)
    return destination


def run_record(run_dir: Path) -> dict[str, Any]:
    """What a shipped zoo's provenance records of one TD3 run, read from its folder."""
    from . import td3

    run_prov = json.loads((Path(run_dir) / td3.PROVENANCE_FILE).read_text())
    return {
        "folder": str(run_dir), "critic": (Path(run_dir) / td3.CRITIC_FILE).is_file(),
        **{k: run_prov.get(k) for k in ("step", "finished", "done_early", "core_seconds", "total_wall_s",
                                        "buffer_refilled_at_steps", "buffer_refill_env_steps", "start_time",
                                        "end_time", "config", "versions", "ensemble")},
        "sessions": len(run_prov.get("sessions", [])),
    }


# --------------------------------------------------------------------------- growing a shipped zoo

SPLIT_WEIGHTS = {"train": 3, "validation": 1, "test": 1}
"""The grown zoo's target shares of independent runs (60/20/20), as integers so ties are exact."""
SHARED_INIT = "shared_init"
"""The split of runs sharing an actor initialisation: never train, validation or test (:func:`split_zoo`)."""
FOLD_SIZES = (1, 2, 4, 8, 16)
"""Numbers of train runs of a grown zoo's leave-runs-out folds (:func:`run_folds`): those of
``benchmarks/learning_curve.py``'s curve; stage 2 takes the folds of its ``learning_curve_k`` from them
(the smoke profile's k = 1 included)."""


def run_order_key(run: int, seed: int) -> str:
    """Where a new run queues for its split: a hash of ``(seed, run)``, so that the queue depends on
    neither the order runs are listed in nor the order they finished in."""
    import hashlib

    return hashlib.sha256(f"{int(seed)}:{int(run)}".encode()).hexdigest()


def next_split(counts: Mapping[str, int], weights: Mapping[str, int] = SPLIT_WEIGHTS) -> str:
    """The split furthest below its share once one more run joins (ties in :data:`SPLITS` order).

    Example:
        >>> next_split({"train": 2, "validation": 1, "test": 1}), next_split({"train": 4, "validation": 1, "test": 1})
        ('train', 'validation')
    """
    n, total = sum(counts.get(s, 0) for s in SPLITS) + 1, sum(weights[s] for s in SPLITS)
    return max(SPLITS, key=lambda s: (weights[s] * n - total * counts.get(s, 0), -SPLITS.index(s)))


def assign_runs(
    previous: Mapping[int, str], new_runs: Iterable[int], *, shared: Iterable[int] = (), seed: int = 0,
    weights: Mapping[str, int] = SPLIT_WEIGHTS,
) -> dict[int, str]:
    """Every run's split: ``previous``'s runs keep theirs (sticky: a test run stays unseen), and each
    new run, queued by :func:`run_order_key`, joins the split furthest below its share of the
    independent runs (:func:`next_split`); a run in ``shared`` (one actor initialisation with others)
    goes to :data:`SHARED_INIT`. A pure function of its arguments.

    Example:
        >>> a = assign_runs({1: "train", 3: "train", 0: "validation", 2: "test"}, [10, 11, 20, 21, 60], shared=[60])
        >>> sorted(a.values()).count("train"), a[60], a[2]
        (5, 'shared_init', 'test')
    """
    assignment = {int(r): s for r, s in previous.items()}
    shared = {int(r) for r in shared}
    counts = {s: sum(v == s for v in assignment.values()) for s in SPLITS}
    for run in sorted({int(r) for r in new_runs} - set(assignment), key=lambda r: run_order_key(r, seed)):
        if run in shared:
            assignment[run] = SHARED_INIT
            continue
        split = next_split(counts, weights)
        assignment[run] = split
        counts[split] += 1
    return assignment


def previous_assignment(splits: Mapping[str, Any]) -> dict[int, str]:
    """Each run's split in a zoo's ``splits.json`` (shared-initialisation runs: :data:`SHARED_INIT`)."""
    if splits.get("rule", "run") != "run":
        raise ValueError(f"the zoo is split by {splits.get('rule')!r}; only a zoo split by run can grow with sticky splits")
    out = {int(r): s for s in SPLITS for r in splits.get("runs", {}).get(s, [])}
    out.update({int(r): SHARED_INIT for r in splits.get(SHARED_INIT, {}).get("runs", [])})
    return out


def splits_by_assignment(records: Sequence[Mapping[str, Any]], assignment: Mapping[int, str]) -> dict[str, Any]:
    """``splits.json``'s body, in :func:`split_zoo`'s form, for ``records`` whose runs are assigned."""
    missing = sorted({int(r["provenance"]["run"]) for r in records} - {int(k) for k in assignment})
    if missing:
        raise KeyError(f"runs {missing} have no split")
    split_of = {r["id"]: assignment[int(r["provenance"]["run"])] for r in records}
    run_of = {r["id"]: int(r["provenance"]["run"]) for r in records}
    members = {s: [i for i, v in split_of.items() if v == s] for s in (*SPLITS, SHARED_INIT)}
    out: dict[str, Any] = {"rule": "run", "splits": {s: members[s] for s in SPLITS},
                           "runs": {s: sorted({run_of[i] for i in members[s]}) for s in SPLITS}}
    if members[SHARED_INIT]:
        out[SHARED_INIT] = {"ids": members[SHARED_INIT], "runs": sorted({run_of[i] for i in members[SHARED_INIT]})}
    return out


def grown_splits(
    previous: Mapping[str, Any], records: Sequence[Mapping[str, Any]], *, shipment: Mapping[str, Any],
    seed: int = 0, fold_sizes: Sequence[int] = FOLD_SIZES, folds_per_size: int = 3,
) -> dict[str, Any]:
    """The new ``splits.json`` of a zoo whose ``records`` now include new runs: earlier runs keep
    their split, new ones are assigned by :func:`assign_runs`; leave-runs-out folds are drawn anew
    over the current train runs (``folds_from`` says from which shipment and runs); ``shipments``
    gains ``shipment`` (date, command) with the runs it added per split. A pure function.
    """
    before = previous_assignment(previous)
    runs = {int(r["provenance"]["run"]) for r in records}
    shared = {int(r["provenance"]["run"]) for r in records if int(r["provenance"].get("actor_init_seed", -1)) >= 0}
    assignment = assign_runs(before, runs, shared=shared, seed=seed)
    out = splits_by_assignment(records, assignment)
    history = list(previous.get("shipments") or [_first_shipment(before)])
    added = {s: sorted(r for r, v in assignment.items() if v == s and r not in before) for s in (*SPLITS, SHARED_INIT)}
    history.append({**shipment, "shipment": len(history), "runs_added": {s: v for s, v in added.items() if v}})
    train = out["runs"]["train"]
    out.update(seed=seed, weights=dict(SPLIT_WEIGHTS), shipments=history,
               folds=run_folds(train, fold_sizes, folds_per_size, seed=seed),
               folds_from={"shipment": len(history) - 1, "n_runs": len(runs), "train_runs": list(train)})
    return out


def _first_shipment(assignment: Mapping[int, str]) -> dict[str, Any]:
    """The zoo as first shipped, split at random by :func:`split_zoo`, as shipment 0."""
    by_split = {s: sorted(r for r, v in assignment.items() if v == s) for s in (*SPLITS, SHARED_INIT)}
    return {"shipment": 0, "date": None, "command": "the zoo as first shipped (split_zoo)",
            "runs_added": {s: v for s, v in by_split.items() if v}}


def shipped_runs(zoo_dir: str | os.PathLike) -> set[int]:
    """Runs a shipped zoo has already taken in: those with members, and grown runs admitted with none
    kept (scoring them again would give the same result)."""
    zoo_dir = Path(zoo_dir)
    prov_path = zoo_dir / SHIPPED_PROVENANCE
    growth = json.loads(prov_path.read_text()).get("growth", {}) if prov_path.is_file() else {}
    return {int(r["provenance"]["run"]) for r in read_index(zoo_dir)} | {int(r) for r in growth.get("runs", {})}


def runs_to_ship(run_dirs: Mapping[str, Sequence[Path]], have: Iterable[int]) -> tuple[dict[str, list[Path]], dict[str, str]]:
    """The runs a shipment admits, per group: finished by their stopping rule (``done_early``: the
    plan's candidates before the step cap) and not in ``have``; and why each other run is skipped.
    Reads only the runs' ``provenance.json``, so a caller can refuse before any rollout."""
    have = {int(r) for r in have}
    admit: dict[str, list[Path]] = {}
    skipped: dict[str, str] = {}
    for group, dirs in run_dirs.items():
        for run_dir in map(Path, dirs):
            run = int(run_dir.name.split("_")[-1])
            prov_path = run_dir / "provenance.json"
            prov = json.loads(prov_path.read_text()) if prov_path.is_file() else {}
            if run in have:
                skipped[str(run)] = "already in the zoo"
            elif not prov.get("done_early"):
                skipped[str(run)] = "failed (step cap)" if prov.get("finished") else "not finished"
            else:
                admit.setdefault(group, []).append(run_dir)
    return admit, skipped


def admit_run(run_dir: Path, staging: Path, *, group: str, plan: GrowthPlan, episodes: int, progress: bool) -> dict[str, Any]:
    """Score one finished run's first ``plan.candidates`` candidates into the zoo at ``staging``
    (:func:`build_zoo`, appended); returns the run's record for the zoo's provenance."""
    import time

    t0 = time.time()
    cands = select_candidates([run_dir], threshold=plan.bar, min_step=plan.min_snapshot_step,
                              max_per_run=10_000)[: plan.candidates]
    before = len(read_index(staging))
    records = build_zoo(cands, staging, threshold=plan.bar, episodes=episodes, append=True, progress=progress,
                        provenance={"settings": run_dir.parent.name, "group": group,
                                    "training_dir": str(plan.training_dir)})
    # the folder as the plan names it (relative to the checkout), as ship_zoo records the first runs'
    folder = str(Path(plan.training_dir) / run_dir.parent.name / run_dir.name)
    return {**run_record(run_dir), "folder": folder, "group": group, "candidates": len(cands),
            "kept": len(records) - before, "admission_wall_s": round(time.time() - t0, 1)}


def grow_shipped_zoo(
    zoo_dir: str | os.PathLike, run_dirs: Mapping[str, Sequence[Path]], *, plan: GrowthPlan, command: str,
    fold_sizes: Sequence[int] = FOLD_SIZES, folds_per_size: int = 3,
    seed: int = 0, episodes: int = 10, progress: bool = True, date: str | None = None,
) -> dict[str, Any]:
    """Add finished runs of the growth plan to a shipped zoo; earlier runs keep their split.

    ``run_dirs`` maps a group name of ``plan`` to its run folders. A run joins when it finished by
    its stopping rule and was not shipped before (:func:`runs_to_ship`; none: ValueError before any
    work); its candidates go through the zoo's admission and report seeds (:func:`admit_run`,
    appended to the members already there, which stay as they are). ``splits.json`` is grown by
    :func:`grown_splits`: sticky splits, new runs toward 60/20/20 train/validation/test by run,
    shared-initialisation runs apart, folds drawn anew over the train runs, and the shipment
    recorded (``date``: now, UTC, unless given). ``provenance.json``'s ``growth`` block gains each
    run's record and the shipment. Written in a staging folder and swapped in whole.
    Returns the new splits.
    """
    import datetime
    import shutil

    from .io import swap_folder

    zoo_dir = Path(zoo_dir)
    load_zoo(zoo_dir)  # complete and consistent before anything is written
    admit, skipped = runs_to_ship(run_dirs, shipped_runs(zoo_dir))
    if not admit:
        raise ValueError(f"no finished run to add to {zoo_dir}: {skipped or 'no runs named'}")
    previous = json.loads((zoo_dir / SPLITS_FILE).read_text())
    previous_assignment(previous)  # a zoo split by network cannot grow: refuse before the rollouts
    date = date or datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    staging = zoo_dir.with_name(zoo_dir.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    shutil.copytree(zoo_dir, staging)
    todo = [(group, d) for group, dirs in admit.items() for d in dirs]
    runs: dict[str, Any] = {}
    with tqdm(todo, desc="admitting runs", unit="run", disable=not progress) as bar:
        for group, run_dir in bar:
            bar.set_postfix(run=f"{group}/{run_dir.name}")
            runs[run_dir.name.split("_")[-1]] = admit_run(run_dir, staging, group=group, plan=plan,
                                                          episodes=episodes, progress=progress)
    # a run that reached the step cap is part of what the zoo cost, though none of its networks ships
    failed = {run_dir.name.split("_")[-1]: {**run_record(run_dir), "group": group}
              for group, dirs in run_dirs.items() for run_dir in map(Path, dirs)
              if skipped.get(run_dir.name.split("_")[-1]) == "failed (step cap)"}
    records = read_index(staging)
    shipment = {"date": date, "command": command}
    splits = grown_splits(previous, records, shipment=shipment, seed=seed, fold_sizes=fold_sizes,
                          folds_per_size=folds_per_size)
    write_splits(staging, splits, records)
    curves = [read_shipped_curves(zoo_dir)] if (zoo_dir / "training_curves.csv").is_file() else []
    curves += [training_curves([Path(d)]) for _, d in todo]
    pd.concat(curves, ignore_index=True).to_csv(staging / "training_curves.csv", index=False)
    shipped = json.loads((zoo_dir / SHIPPED_PROVENANCE).read_text())
    shipped.update(grown_provenance(shipped, runs, skipped, plan=plan, splits=splits, failed=failed))
    (staging / SHIPPED_PROVENANCE).write_text(json.dumps(shipped, indent=1, default=str))
    swap_folder(staging, zoo_dir)
    return splits


def grown_provenance(
    shipped: Mapping[str, Any], runs: Mapping[str, Any], skipped: Mapping[str, str], *, plan: GrowthPlan,
    splits: Mapping[str, Any], failed: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The keys of a shipped zoo's ``provenance.json`` that a shipment changes: its ``growth`` block
    (every grown run's record, every run that failed at the step cap, this shipment's command, date,
    runs added and skipped, the core-hours) and the zoo's training core-hours, which stage 1 reports:
    the first shipment's, plus the grown runs', plus the failed runs' (they were spent to grow it)."""
    growth = dict(shipped.get("growth", {}))
    every_run = {**growth.get("runs", {}), **runs}
    every_failure = {**growth.get("failed_runs", {}), **(failed or {})}
    core_h = round(sum((r.get("core_seconds") or 0.0) for r in every_run.values()) / 3600, 3)
    failed_h = round(sum((r.get("core_seconds") or 0.0) for r in every_failure.values()) / 3600, 3)
    shipment = splits["shipments"][-1]
    history = [*growth.get("shipments", []),
               {**shipment, "kept": {k: r["kept"] for k, r in runs.items()}, "skipped": dict(skipped)}]
    base = growth.get("base_training_core_hours", shipped.get("training_core_hours", 0.0)) or 0.0
    distill = shipped.get("distill_core_hours", 0.0) or 0.0
    growth.update(command=shipment["command"], plan=dataclasses.asdict(plan), runs=every_run, skipped=dict(skipped),
                  failed_runs=every_failure, failed_core_hours=failed_h,
                  shipments=history, core_hours=core_h, base_training_core_hours=base,
                  independent_runs=sorted(r for s in SPLITS for r in splits["runs"][s]),
                  shared_init_runs=splits.get(SHARED_INIT, {}).get("runs", []))
    return {"growth": growth, "training_core_hours": round(base + core_h + failed_h, 3),
            "core_hours": round(base + core_h + failed_h + distill, 3)}


def learner_table(zoo_dir: str | os.PathLike) -> pd.DataFrame:
    """What each TD3 learner gave a shipped zoo, one row per learner: its independent and
    shared-initialisation runs, runs per split, runs that failed at the step cap, networks, and the
    core-hours of all its runs (failures included) per run that shipped.

    Reads ``index.json``, ``splits.json`` and ``provenance.json`` (the first shipment's ``runs`` and
    the ``growth`` block's ``runs`` and ``failed_runs``); a network recorded without a learner takes
    its run's critic from the run's config.
    """
    zoo_dir = Path(zoo_dir)
    prov = json.loads((zoo_dir / SHIPPED_PROVENANCE).read_text()) if (zoo_dir / SHIPPED_PROVENANCE).is_file() else {}
    growth = prov.get("growth", {})
    splits = json.loads((zoo_dir / SPLITS_FILE).read_text())
    split_of = {int(r): s for s in (*SPLITS, SHARED_INIT)
                for r in (splits.get("runs", {}).get(s, []) if s in SPLITS else splits.get(s, {}).get("runs", []))}

    runs = {int(k): v for k, v in {**prov.get("runs", {}), **growth.get("runs", {})}.items()}
    learner = {r: learner_name(v) for r, v in runs.items()}
    rows = [{"run": int(rec["provenance"]["run"]),
             "learner": rec["provenance"].get("learner") or learner.get(int(rec["provenance"]["run"]), "unknown")}
            for rec in read_index(zoo_dir)]
    nets = pd.DataFrame(rows)
    learner.update(nets.drop_duplicates("run").set_index("run")["learner"].to_dict())
    failed = {int(k): v for k, v in growth.get("failed_runs", {}).items()}
    table = []
    for name in sorted(set(learner.values()) | {learner_name(v) for v in failed.values()}):
        mine = [r for r, n in learner.items() if n == name]
        lost = [r for r, v in failed.items() if learner_name(v) == name]
        core_h = sum((runs.get(r, {}).get("core_seconds") or 0.0) for r in mine) + sum(
            (failed[r].get("core_seconds") or 0.0) for r in lost)
        row = {"learner": name, "independent runs": sum(split_of.get(r) in SPLITS for r in mine),
               "shared-init runs": sum(split_of.get(r) == SHARED_INIT for r in mine)}
        row.update({f"{s} runs": sum(split_of.get(r) == s for r in mine) for s in SPLITS})
        row.update({"failed runs": len(lost), "networks": int(nets["learner"].eq(name).sum()),
                    "core-h": round(core_h / 3600, 2), "core-h per shipped run": round(core_h / 3600 / max(len(mine), 1), 2)})
        table.append(row)
    return pd.DataFrame(table).set_index("learner")


def read_shipped_curves(source: str | os.PathLike) -> pd.DataFrame:
    """The training curves a shipped zoo carries (``training_curves.csv``), if any."""
    path = Path(source) / "training_curves.csv"
    if not path.is_file():
        raise FileNotFoundError(f"shipped zoo {source} has no training_curves.csv")
    return pd.read_csv(path)
