"""The pipeline's stages: their notebooks, typed parameters, and where their artifacts live.

Each stage notebook has a cell tagged ``parameters`` whose names and defaults mirror one of the
dataclasses below (a test keeps them in step with ``profiles/default.yaml``). The notebook's next
cell validates its parameters through the dataclass, so a bad value fails in the first seconds,
both under the pipeline and under plain ``papermill -p``.

Artifacts of stage ``s`` of a run go to ``<run_dir>/<s.folder>/``. They are written into a
staging folder and moved into place only when the stage finishes (:class:`StageOutput`), so a
failed or interrupted stage never leaves a half-written artifact where a later stage would read it.

Example:
    >>> p = DataParams.from_mapping({"run_dir": "runs/x", "n_runs": 3})
    >>> p.n_runs
    3
    >>> DataParams.from_mapping({"n_runs": 0})
    Traceback (most recent call last):
    ...
    nnae_utils.stages.ParameterError: data: n_runs must be > 0, got 0
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .io import swap_folder

STAGE_RECORD = "stage.json"

START_CONDITIONS = {
    "finetune": "fine-tuning the held-out test networks",
    "finetune_train": "fine-tuning held-out snapshots of the train runs",
    "scratch": "from scratch",
}
"""Where evolution starts (stage 4; stage 5 runs finetune and scratch), with the title of its figures and tables. ``finetune`` starts
from the test split's networks: runs neither the autoencoders nor the PCA saw. ``finetune_train`` starts
from the snapshots of the train runs that stage 2 held out of training (``stop_on: train_holdout``):
networks the autoencoders did not see, from runs they learnt from. ``scratch`` starts from random weights
or random codes. Every start but ``scratch`` reports the gain over its start network."""


def enter_project_root(start: str | os.PathLike | None = None) -> Path:
    """Make relative run folders mean the same thing wherever papermill started the kernel.

    Walks up from ``start`` (the working directory) to the folder holding ``profiles/`` and
    ``notebooks/`` and changes into it; stays put if there is none (an installed package).
    """
    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "profiles").is_dir() and (folder / "notebooks").is_dir():
            os.chdir(folder)
            return folder
    return here


class ParameterError(ValueError):
    """A stage parameter that is unknown, of the wrong type, or out of range."""


class MissingInputError(FileNotFoundError):
    """An artifact that an upstream stage should have written is not there."""


def _check_type(stage: str, name: str, value: Any, annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParameterError(f"{stage}: {name} must be a number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ParameterError(f"{stage}: {name} must be an integer, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ParameterError(f"{stage}: {name} must be true or false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ParameterError(f"{stage}: {name} must be a string, got {value!r}")
        return value
    if origin is list:
        (item,) = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)):
            raise ParameterError(f"{stage}: {name} must be a list, got {value!r}")
        return [_check_type(stage, f"{name}[{i}]", v, item) for i, v in enumerate(value)]
    raise TypeError(f"unsupported parameter annotation {annotation!r}")


@dataclass(frozen=True)
class StageParams:
    """Parameters every stage shares. Subclasses add their own, each with a docstring."""

    run_dir: str = "runs/default"
    """Folder of this run (one per profile); stage artifacts go to its sub-folders."""
    seed: int = 0
    """Master seed of the stage: every random choice derives from it."""

    STAGE: typing.ClassVar[str] = "stage"

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _check_type(self.STAGE, f.name, getattr(self, f.name), hints[f.name]))
        if not self.run_dir:
            raise ParameterError(f"{self.STAGE}: run_dir must not be empty")
        if self.seed < 0:
            raise ParameterError(f"{self.STAGE}: seed must be >= 0, got {self.seed}")
        self.validate()

    def validate(self) -> None:
        """Range checks of the subclass (raise :class:`ParameterError`)."""

    def _positive(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            values = value if isinstance(value, list) else [value]
            if not values or any(v <= 0 for v in values):
                raise ParameterError(f"{self.STAGE}: {name} must be > 0, got {value!r}")

    def _fraction(self, name: str, *, closed_high: bool = False) -> None:
        value = getattr(self, name)
        if not (0.0 <= value < 1.0 or (closed_high and value == 1.0)):
            raise ParameterError(f"{self.STAGE}: {name} must lie in [0, 1), got {value!r}")

    def _check_shown_beside(self) -> None:
        name = self.shown_beside
        if name and (not re.fullmatch(r"[A-Za-z0-9_-]+", name) or name == Path(self.run_dir).name):
            raise ParameterError(f"{self.STAGE}: shown_beside must be another profile's name (or empty), got {name!r} "
                                 f"for the run folder {self.run_dir}")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "StageParams":
        """Build from a mapping (a profile, ``-p`` overrides); unknown names are an error."""
        known = set(cls.field_names())
        unknown = sorted(set(values) - known)
        if unknown:
            raise ParameterError(
                f"{cls.STAGE}: unknown parameter(s) {unknown}; known parameters: {sorted(known)}"
            )
        return cls(**dict(values))

    @classmethod
    def from_namespace(cls, namespace: Mapping[str, Any]) -> "StageParams":
        """Build from a notebook's globals (after the parameters cell and papermill's injection)."""
        return cls(**{name: namespace[name] for name in cls.field_names() if name in namespace})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def settings_for(self, config_cls: type, **overrides: Any) -> Any:
        """An algorithm's config (a dataclass) from the parameters of the same name, then ``overrides``.

        A parameter passes through when the config has a field of its name (lists become tuples),
        so that a setting is named, documented and validated once per stage and never copied by
        hand; ``seed`` never does (the stage's master seed is not a run's). What a config calls
        otherwise, or a run sets itself, goes in ``overrides``.

        Example:
            >>> @dataclass(frozen=True)
            ... class RunConfig:
            ...     pop_size: int = 2
            ...     gammas: tuple = ()
            ...     seed: int = 0
            >>> CERLParams(pop_size=16, gammas=[0.9, 0.99], seed=7).settings_for(RunConfig, seed=3)
            RunConfig(pop_size=16, gammas=(0.9, 0.99), seed=3)
        """
        names = {f.name for f in dataclasses.fields(config_cls)} - {"seed"}
        shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name in names}
        shared = {k: tuple(v) if isinstance(v, list) else v for k, v in shared.items()}
        return config_cls(**{**shared, **overrides})

    @property
    def root(self) -> Path:
        return Path(self.run_dir)

    def stage_dir(self, stage: str) -> Path:
        return self.root / STAGES_BY_NAME[stage].folder

    def upstream_dir(self, stage: str) -> Path:
        """The finished artifact folder of an upstream stage, or a clear error if it is missing."""
        path = self.stage_dir(stage)
        if not (path / STAGE_RECORD).is_file() and not (path / "summary.json").is_file():
            raise MissingInputError(
                f"{self.STAGE} needs the artifacts of stage '{stage}' in {path}, which do not exist. "
                f"Run it first: python -m nnae_utils.pipeline --run-dir {self.run_dir} --only {stage}"
            )
        return path

    def work_dir(self, *parts: str) -> Path:
        """Persistent scratch space of this run (training checkpoints), kept across stage reruns."""
        path = self.root.joinpath("_work", *parts)
        path.mkdir(parents=True, exist_ok=True)
        return path


@dataclass(frozen=True)
class DataParams(StageParams):
    """Stage 1: a policy zoo trained with TD3 on Hopper-v5, its splits, and the state dataset."""

    STAGE: typing.ClassVar[str] = "data"

    env_id: str = "Hopper-v5"
    """Gymnasium environment id (the batched evaluator implements Hopper-v5)."""
    zoo_source: str = "train"
    """'train': train the zoo's TD3 runs now; otherwise a folder holding a shipped zoo (index.json)."""
    n_runs: int = 4
    """Independent TD3 training runs (seeds seed, seed+1, ...)."""
    training_dir: str = ""
    """Folder of the TD3 runs (checkpoints, curves, snapshots); empty: the run folder's _work/td3."""
    steps_per_run: int = 60_000
    """Environment steps of each TD3 run."""
    learning_starts: int = 5_000
    """Random-action steps before TD3's first update."""
    actor_hidden: list[int] = field(default_factory=lambda: [64, 64])
    """Hidden widths of the policy networks (the zoo's architecture)."""
    critic_hidden: list[int] = field(default_factory=lambda: [256, 256])
    """Hidden widths of TD3's twin critics."""
    batch_size: int = 256
    """TD3 minibatch size."""
    snapshot_every: int = 5_000
    """Steps between evaluated snapshots of a run (each a zoo candidate)."""
    selection_episodes: int = 5
    """Episodes of the in-training evaluation that selects candidate snapshots."""
    return_threshold: float = 0.0
    """A snapshot joins the zoo when its selection, admission and report returns all reach this."""
    min_snapshot_step: int = 0
    """Snapshots before this step are never candidates."""
    stop_after_candidates: int = 0
    """A run stops early, as finished, once this many of its evaluations are candidates (0: never)."""
    max_networks_per_run: int = 40
    """At most this many snapshots per run, spread evenly over the qualifying ones."""
    fill_with_students: int = 0
    """Top each run up to this many networks with DAgger students of its admitted snapshots (0: none; students are labelled in index.json)."""
    teacher_min_return: float = -1e9
    """A run's admitted snapshots teach DAgger students only if their reported return reaches this (students of marginal teachers often fall below the bar)."""
    stop_after_teachers: int = 0
    """With stop_after_candidates: a run also trains on until this many of its evaluations reach teacher_min_return (0: no such condition)."""
    distill_rounds: int = 6
    """DAgger rounds of each student (round 0 on the teacher's trajectories, then on the student's own)."""
    distill_episodes: int = 8
    """Episodes rolled out per DAgger round to collect states."""
    distill_epochs: int = 30
    """Training passes over a student's aggregated dataset after each DAgger round."""
    score_episodes: int = 10
    """Fresh-seed episodes for the admission score and, separately, for the reported score."""
    jobs: int = 2
    """Training runs in parallel (one process and one torch thread each)."""
    split_by: str = "run"
    """'run': snapshots of one run never straddle two splits; 'network': a random split."""
    validation_runs: int = 1
    """Runs held out for validation (or, splitting by network, the same share of networks drawn at random)."""
    test_runs: int = 1
    """Runs held out for test (or, splitting by network, the same share of networks drawn at random)."""
    state_episodes: int = 2
    """Episodes each zoo network is deployed for to collect visited states."""
    max_state_networks: int = 0
    """Zoo networks deployed to collect states, sampled by run then evenly over each run's steps (zoo.sample_indices; 0: all); caps the cost on a large zoo."""
    n_states: int = 20_000
    """Size of the state dataset (visited states subsampled, plus random states)."""
    random_fraction: float = 0.2
    """Fraction of the state dataset that is random states (the paper's decorrelated inputs)."""

    def validate(self) -> None:
        self._positive(
            "n_runs", "steps_per_run", "actor_hidden", "critic_hidden", "batch_size", "snapshot_every",
            "selection_episodes", "max_networks_per_run", "score_episodes", "jobs", "state_episodes", "n_states",
            "distill_rounds", "distill_episodes", "distill_epochs",
        )
        if not 0 <= self.fill_with_students < 1000:
            raise ParameterError(f"data: fill_with_students must lie in [0, 1000), got {self.fill_with_students}")
        if min(self.learning_starts, self.min_snapshot_step, self.stop_after_candidates, self.stop_after_teachers) < 0:
            raise ParameterError("data: learning_starts, min_snapshot_step, stop_after_candidates and stop_after_teachers must be >= 0")
        if self.stop_after_teachers and not self.stop_after_candidates:
            raise ParameterError("data: stop_after_teachers adds a condition to stop_after_candidates, which is 0 (never stop early)")
        if self.learning_starts >= self.steps_per_run and self.zoo_source == "train":
            raise ParameterError(
                f"data: learning_starts ({self.learning_starts}) must be below steps_per_run ({self.steps_per_run})"
            )
        self._fraction("random_fraction")
        if self.split_by not in ("run", "network"):
            raise ParameterError(f"data: split_by must be 'run' or 'network', got {self.split_by!r}")
        if self.validation_runs < 0 or self.test_runs < 0:
            raise ParameterError("data: validation_runs and test_runs must be >= 0")
        if self.max_state_networks < 0:
            raise ParameterError(f"data: max_state_networks must be >= 0 (0: all), got {self.max_state_networks}")
        if self.split_by == "run" and self.zoo_source == "train" and self.n_runs < self.validation_runs + self.test_runs + 1:
            raise ParameterError(
                f"data: split_by='run' needs n_runs >= validation_runs + test_runs + 1 "
                f"({self.validation_runs + self.test_runs + 1}), got {self.n_runs}"
            )
        import gymnasium

        if self.env_id not in gymnasium.envs.registry:
            raise ParameterError(f"data: unknown environment id {self.env_id!r}")
        if self.zoo_source != "train" and not (Path(self.zoo_source) / "index.json").is_file():
            raise MissingInputError(
                f"data: zoo_source {self.zoo_source!r} is neither 'train' nor a zoo folder with an index.json"
            )


@dataclass(frozen=True)
class LayerAEParams(StageParams):
    """Stage 2: one autoencoder per layer, flat and neuron-token forms, trained with the functional loss."""

    STAGE: typing.ClassVar[str] = "layer_autoencoders"
    SYMMETRIES: typing.ClassVar[tuple[str, ...]] = ("none", "align", "align_runs", "augment", "canonical")
    """How the hidden units' arbitrary order (and ReLU scale) is handled: the options of ``symmetry``
    (:mod:`nnae_utils.symmetry` implements them and refers to this tuple)."""

    main_ratio: float = 10.0
    """Compression ratio (layer parameters per latent dimension) of the main autoencoders: curves, ablations, and the checkpoints stages 3 and 4 load."""
    sweep_ratios: list[float] = field(default_factory=lambda: [4.0, 10.0, 32.0, 100.0, 320.0])
    """Compression ratios of the latent-size sweep (functional loss); each sets one latent size per layer and form."""
    max_flat_latent: int = 512
    """Sweep runs of the flat form whose latent would exceed this are skipped (cost; the zoo spans far fewer directions)."""
    flat_hidden: int = 256
    """Hidden width of the flat encoder and decoder (raised to the latent size if smaller)."""
    token_hidden: int = 64
    """Hidden width of the shared neuron-token encoder and decoder."""
    lr: float = 3e-4
    """Adam learning rate (at 1e-3 the flat autoencoders diverge on the shipped zoo: benchmarks/functional_loss_training.py)."""
    max_epochs: int = 60
    """Upper bound on epochs per autoencoder (early stopping usually ends training sooner)."""
    steps_per_epoch: int = 20
    """Gradient steps between two validations."""
    stop_on: str = "validation"
    """Networks whose objective decides early stopping and the epoch kept: validation (the validation split: other training runs) or train_holdout (every holdout_every-th snapshot of each train run, not trained on)."""
    holdout_every: int = 5
    """With stop_on: train_holdout, every holdout_every-th network of each train run (in step order) is held out."""
    patience: int = 10
    """Epochs without progress on the validation objective before training stops."""
    min_delta: float = 0.002
    """Relative improvement of the validation objective that counts as progress."""
    networks_per_batch: int = 32
    """Train networks per gradient step (all of them if fewer)."""
    states_per_batch: int = 64
    """States per network per gradient step (each network its own draw)."""
    eval_states: int = 512
    """Fixed states on which every epoch's train and validation losses are computed."""
    weight_loss_coef: float = 1.0
    """Weight of the normalised weight MSE in the both ablation (functional + coef x MSE)."""
    dagger_every: int = 5
    """DAgger variant: epochs between two rollouts of decoded train networks."""
    dagger_networks: int = 4
    """DAgger variant: decoded train networks rolled out (one episode each) per refresh."""
    dagger_fraction: float = 0.5
    """DAgger variant: share of each state batch drawn from states the decoded networks visited."""
    rollout_max_steps: int = 400
    """Episode cap of the rollouts of decoded networks (DAgger refreshes and the on-policy check)."""
    torch_threads: int = 1
    """Torch threads per autoencoder in training (1: the machine has 2 cores, shared; more threads on a busy machine run slower)."""
    jobs: int = 2
    """Autoencoders trained at once, each in its own process (1: one after another, in the process of the notebook); the models do not depend on it."""
    symmetry: list[str] = field(default_factory=lambda: ["none", "align"])
    """Hidden-unit symmetry options the main autoencoders are trained with and compared on the validation run: none (the checkpoints stages 3 and 4 load; required), align (weight matching to the best train network, network by network), align_runs (the same with one permutation per training run, that of its mean network), augment (a fresh random permutation of every train network in every minibatch), canonical (ReLU units rescaled to unit norm, then ordered and weight-matched to the canonical reference)."""
    learning_curve_k: list[int] = field(default_factory=list)
    """Numbers of train runs k of the learning curve (issue 29): for each, the zoo's leave-runs-out folds of k train runs (splits.json; on a zoo without folds, up to 3 subsets drawn from its train runs) retrain the main flat autoencoders (no symmetry option) on those runs only, measured on the validation runs (nnae_utils.learning_curve); empty: no learning curve."""

    def holdout_spacing(self) -> int | None:
        """Every how many snapshots of each train run stage 2 holds out of training: ``holdout_every`` with
        ``stop_on: train_holdout``, None (no snapshot held out) with ``stop_on: validation``."""
        return self.holdout_every if self.stop_on == "train_holdout" else None

    def training_settings(self) -> dict[str, Any]:
        """What every stage-2 autoencoder trains with, as keyword arguments of
        :class:`nnae_utils.layer_codes.LayerAEConfig` (whose ``dagger_max_steps`` this stage calls
        ``rollout_max_steps``; the stage's ``seed`` is each model's, which derives its own from it).
        The one place they are read: notebook 02 and the stage-2 benchmarks build their models from it."""
        return dict(lr=self.lr, max_epochs=self.max_epochs, steps_per_epoch=self.steps_per_epoch,
                    networks_per_batch=self.networks_per_batch, states_per_batch=self.states_per_batch,
                    patience=self.patience, min_delta=self.min_delta, weight_loss_coef=self.weight_loss_coef,
                    dagger_every=self.dagger_every, dagger_networks=self.dagger_networks,
                    dagger_fraction=self.dagger_fraction, dagger_max_steps=self.rollout_max_steps, seed=self.seed)

    def plan_settings(self) -> dict[str, Any]:
        """Keyword arguments of :func:`nnae_utils.autoencoders.plan_experiments`: the main, sweep and
        ablation models' sizes, and :meth:`training_settings`."""
        return dict(main_ratio=self.main_ratio, sweep_ratios=list(self.sweep_ratios), max_flat_latent=self.max_flat_latent,
                    flat_hidden=self.flat_hidden, token_hidden=self.token_hidden, **self.training_settings())

    def validate(self) -> None:
        if any(int(k) != k or k < 1 for k in self.learning_curve_k) or len(set(self.learning_curve_k)) != len(self.learning_curve_k):
            raise ParameterError(f"layer_autoencoders: learning_curve_k must list distinct positive integers, got {self.learning_curve_k!r}")
        self._positive(
            "sweep_ratios", "max_flat_latent", "flat_hidden", "token_hidden", "lr", "max_epochs", "steps_per_epoch",
            "patience", "networks_per_batch", "states_per_batch", "eval_states", "dagger_every", "dagger_networks",
            "rollout_max_steps", "torch_threads", "holdout_every", "jobs",
        )
        if self.stop_on not in ("validation", "train_holdout"):
            raise ParameterError(f"layer_autoencoders: stop_on must be validation or train_holdout, got {self.stop_on!r}")
        if self.stop_on == "train_holdout" and self.holdout_every < 2:
            raise ParameterError("layer_autoencoders: holdout_every must be >= 2 (1 would hold out every train network)")
        if self.main_ratio < 1.0 or any(r < 1.0 for r in self.sweep_ratios):
            raise ParameterError(
                f"layer_autoencoders: compression ratios must be >= 1, got main_ratio={self.main_ratio}, "
                f"sweep_ratios={self.sweep_ratios}"
            )
        self._fraction("min_delta")
        self._fraction("dagger_fraction", closed_high=True)
        if self.weight_loss_coef < 0:
            raise ParameterError(f"layer_autoencoders: weight_loss_coef must be >= 0, got {self.weight_loss_coef}")
        unknown = [s for s in self.symmetry if s not in self.SYMMETRIES]
        if unknown or len(set(self.symmetry)) != len(self.symmetry) or "none" not in self.symmetry:
            raise ParameterError(
                f"layer_autoencoders: symmetry must list distinct options of {list(self.SYMMETRIES)}, 'none' among them "
                f"(its autoencoders are the ones stages 3 and 4 load), got {self.symmetry!r}"
            )


@dataclass(frozen=True)
class DecodedEvalParams(StageParams):
    """Stage 3: decoded networks deployed in Hopper, scored against their input networks on the same reset seeds."""

    STAGE: typing.ClassVar[str] = "decoded_evaluation"

    splits: list[str] = field(default_factory=lambda: ["train", "validation", "test"])
    """Splits whose networks are decoded by the main autoencoders (each layer alone, and all layers together) and scored."""
    extra_splits: list[str] = field(default_factory=lambda: ["test"])
    """Splits also scored with the latent-size sweep, the loss ablation and PCA models (each layer alone; costly)."""
    headline_split: str = "test"
    """Split on which the summary reports the best layer, the compression ratios that keep 98 / 90 percent, and the loss variants."""
    sweep: bool = True
    """Score the stage-2 latent-size sweep (functional loss at other compression ratios)."""
    ablation: bool = True
    """Score the stage-2 loss ablation (weights only, both, DAgger) at the main latent size."""
    pca: bool = True
    """Score the per-layer PCA baseline at every latent size stage 2 evaluated it."""
    max_networks_per_split: int = 0
    """Networks of each split decoded and scored, sampled by run then evenly over each run's steps, seeded by seed (zoo.sample_indices; 0: all); caps the cost on a large zoo."""
    max_extra_networks_per_split: int = 0
    """Of those, the networks the sweep, ablation and PCA variants are scored on, sampled the same way (0: as many as max_networks_per_split); most of the stage's decoded networks."""
    episodes: int = 20
    """Paired episodes per network (the same decoded_report reset seeds for input and decoded networks)."""
    max_episode_steps: int = 1000
    """Episode cap (Hopper-v5: 1000)."""
    resolution: float = 0.02
    """Relative return difference the episode count should resolve at 95 percent; the notebook checks it from the paired differences."""
    thresholds: list[float] = field(default_factory=lambda: [0.98, 0.9])
    """Retention levels for which the highest compression ratio that keeps them is reported."""
    n_boot: int = 2000
    """Bootstrap replicates of every confidence interval."""
    explorer_steps: int = 300
    """Episode cap of the layer explorer rollouts (one short episode per slider move)."""
    explorer_directions: int = 3
    """Latent directions (principal directions of the train networks codes) the explorer offers as sliders."""
    physics_threads: int = 0
    """MuJoCo threads of the batched evaluation; 0 uses every core."""
    torch_threads: int = 1
    """Torch threads (autoencoder encoding and decoding)."""

    def validate(self) -> None:
        self._positive("episodes", "max_episode_steps", "n_boot", "explorer_steps", "explorer_directions",
                       "torch_threads", "thresholds")
        if self.max_networks_per_split < 0:
            raise ParameterError(f"{self.STAGE}: max_networks_per_split must be >= 0 (0: all), got {self.max_networks_per_split}")
        if self.max_extra_networks_per_split < 0:
            raise ParameterError(f"{self.STAGE}: max_extra_networks_per_split must be >= 0 (0: as max_networks_per_split), "
                                 f"got {self.max_extra_networks_per_split}")
        known = ("train", "validation", "test")
        for name in ("splits", "extra_splits"):
            values = getattr(self, name)
            if any(v not in known for v in values) or len(set(values)) != len(values):
                raise ParameterError(f"{self.STAGE}: {name} must list distinct splits among {known}, got {values!r}")
        if not self.splits:
            raise ParameterError(f"{self.STAGE}: splits must name at least one split")
        if self.headline_split not in self.splits:
            raise ParameterError(f"{self.STAGE}: headline_split {self.headline_split!r} must be one of splits {self.splits}")
        if (self.sweep or self.ablation or self.pca) and self.headline_split not in self.extra_splits:
            raise ParameterError(
                f"{self.STAGE}: headline_split {self.headline_split!r} must be in extra_splits {self.extra_splits} "
                "when the sweep, ablation or PCA models are scored (their summary figures are read on it)"
            )
        if self.episodes < 2:
            raise ParameterError(f"{self.STAGE}: episodes must be >= 2 (the paired differences need a variance), got {self.episodes}")
        if not 0.0 < self.resolution < 1.0:
            raise ParameterError(f"{self.STAGE}: resolution must lie in (0, 1), got {self.resolution}")
        if any(t > 1.0 for t in self.thresholds):
            raise ParameterError(f"{self.STAGE}: thresholds are retention levels in (0, 1], got {self.thresholds}")
        if self.physics_threads < 0:
            raise ParameterError(f"{self.STAGE}: physics_threads must be >= 0, got {self.physics_threads}")


@dataclass(frozen=True)
class LatentEvolutionParams(StageParams):
    """Stage 4: neuroevolution in the latent space, against weight space and fair controls, at equal env-step budgets."""

    STAGE: typing.ClassVar[str] = "latent_evolution"

    grid: list[str] = field(default_factory=lambda: ["ga/weights", "ga/latent:all", "ga/pca:all", "cma/latent:all"])
    """Runs to compare, each method/genome: method ga or cma (cma only on the small genomes); genome weights, or latent, pca, random or dct followed by :all, :best or layers such as :0+2, fine-tuning a displacement around the start network held exactly; <genome>~decoded starts from the start network as <genome> decodes it (the papers reading, an ablation; no scratch runs); weights@<genome> fine-tunes that decoded network in weight space (no scratch runs)."""
    starts: list[str] = field(default_factory=lambda: ["finetune"])
    """Start conditions (see START_CONDITIONS): finetune (the held-out test networks), finetune_train (the train runs' snapshots held out of stage 2) and/or scratch (random codes, or random weights)."""
    n_seeds: int = 5
    """Independent runs of every method, genome and start; replicate r fine-tunes one network of its start's pool (drawn with the stage seed, cycling)."""
    budget_steps: int = 300_000
    """Environment steps per run, counting fitness and elite re-evaluation episodes (reporting episodes are extra)."""
    pop_size: int = 32
    """Individuals per generation: the GA population and CMA-ES lambda."""
    truncation: int = 8
    """GA truncation selection: parents are drawn uniformly from the top this many."""
    selection: str = "truncation"
    """GA parent selection: truncation (Deep GA) or tournament (CERL)."""
    tournament_size: int = 3
    """Individuals per tournament when selection is tournament."""
    crossover_prob: float = 0.0
    """GA: probability that a child is a crossover of two parents before mutation (Deep GA: 0; CERL uses crossover)."""
    fitness_episodes: int = 1
    """Episodes per individual per generation (all individuals play the same reset seeds)."""
    elite_candidates: int = 3
    """Best individuals of a generation re-evaluated, with the previous champion, to choose the champion."""
    elite_episodes: int = 2
    """Extra episodes per elite candidate, counted in the budget."""
    report_episodes: int = 5
    """Fresh episodes (champion_report seeds) that score every champion and the start networks; never used to select."""
    max_episode_steps: int = 1000
    """Episode cap (Hopper-v5: 1000)."""
    mutation_action_change: float = 0.05
    """Mutation strength of every genome: sigma is set so that one mutation moves the actions by this much (mean L2 over calibration states)."""
    calibration_states: int = 256
    """States of the stage-1 dataset on which mutation strengths are calibrated."""
    ae_form: str = "flat"
    """Autoencoder form of the latent genomes: flat (the paper) or token."""
    best_layer: int = -1
    """Layer of the :best genomes; -1 takes the layer stage 2 compressed best (validation loss relative to the mean layer)."""
    scratch_levels: list[float] = field(default_factory=lambda: [1000.0, 2000.0])
    """Returns whose first crossing (env steps) is reported for runs from scratch."""
    finetune_gain: float = 0.1
    """Relative gain over the start network whose first crossing (env steps) is reported when fine-tuning."""
    curve_points: int = 60
    """Points of the common env-step grid on which curves are aligned and summarised."""
    sampler_policies: int = 64
    """Random policies drawn from each scratch distribution (weights, and the grid's latent and pca genomes), decoded and scored before any search (the Policy Manifold Search question)."""
    sampler_episodes: int = 3
    """Episodes (champion_report seeds, max_episode_steps each) that score every random policy; not part of any run's budget."""
    sampler_bar: float = 200.0
    """A small return: the share of random policies above it is reported."""
    n_boot: int = 2000
    """Bootstrap replicates of every confidence interval."""
    shown_beside: str = "long"
    """Profile whose published run of this stage (results/<profile>/, see nnae_utils.published) the chapter shows beside its own; empty: none."""
    physics_threads: int = 0
    """MuJoCo threads of the batched evaluation; 0 uses every core."""
    torch_threads: int = 1
    """Torch threads (autoencoder decoding)."""

    def validate(self) -> None:
        from .evolution import METHODS, SELECTIONS
        from .genomes import parse_genome_name, split_start_through

        self._positive("n_seeds", "budget_steps", "pop_size", "truncation", "tournament_size", "fitness_episodes",
                       "elite_candidates", "elite_episodes", "report_episodes", "max_episode_steps",
                       "mutation_action_change", "calibration_states", "curve_points", "n_boot", "torch_threads",
                       "scratch_levels", "finetune_gain", "sampler_policies", "sampler_episodes", "sampler_bar")
        if not self.grid:
            raise ParameterError("latent_evolution: grid must list at least one method/genome")
        if len(set(self.grid)) != len(self.grid):
            raise ParameterError(f"latent_evolution: grid lists a run twice: {self.grid}")
        for entry in self.grid:
            method, _, genome = entry.partition("/")
            if method not in METHODS or not genome:
                raise ParameterError(f"latent_evolution: grid entry {entry!r} must be <method>/<genome>, method one of {METHODS}")
            try:
                kind, _ = parse_genome_name(split_start_through(genome)[0])
            except ValueError as exc:
                raise ParameterError(f"latent_evolution: grid entry {entry!r}: {exc}") from exc
            if method == "cma" and kind == "weights":
                raise ParameterError("latent_evolution: CMA-ES runs only on the small genomes (its covariance has "
                                     f"dim^2 entries); {entry!r} is not allowed")
        if not self.starts or any(s not in START_CONDITIONS for s in self.starts) or len(set(self.starts)) != len(self.starts):
            raise ParameterError(f"latent_evolution: starts must be a non-empty list of {', '.join(START_CONDITIONS)}, "
                                 f"each once; got {self.starts}")
        if self.selection not in SELECTIONS:
            raise ParameterError(f"latent_evolution: selection must be one of {SELECTIONS}, got {self.selection!r}")
        if self.pop_size < 2 or self.truncation > self.pop_size or self.elite_candidates > self.pop_size:
            raise ParameterError("latent_evolution: need pop_size >= 2 and truncation, elite_candidates <= pop_size")
        self._fraction("crossover_prob", closed_high=True)
        if self.ae_form not in ("flat", "token"):
            raise ParameterError(f"latent_evolution: ae_form must be flat or token, got {self.ae_form!r}")
        if self.best_layer < -1 or self.physics_threads < 0:
            raise ParameterError("latent_evolution: best_layer must be >= -1 and physics_threads >= 0")
        self._check_shown_beside()
        if self.n_seeds > 80:
            raise ParameterError("latent_evolution: at most 80 seeds (the evolution_fitness seed range holds 80 replicate blocks)")
        bound = (self.pop_size * self.fitness_episodes + (self.elite_candidates + 1) * self.elite_episodes) * self.max_episode_steps
        if bound > self.budget_steps:
            raise ParameterError(
                f"latent_evolution: budget_steps ({self.budget_steps}) is below the worst case of one generation ({bound}: "
                "every fitness and elite episode at max_episode_steps); no generation could run"
            )


@dataclass(frozen=True)
class CERLParams(StageParams):
    """Stage 5: a CERL-like hybrid (TD3 learners and a GA sharing one replay buffer) with its GA in weight space or in the latent space, against TD3 alone and evolution alone, at equal env-step budgets."""

    STAGE: typing.ClassVar[str] = "cerl_comparison"

    variants: list[str] = field(default_factory=lambda: ["cerl/weights", "cerl/latent:all", "td3", "evolution"])
    """Runs to compare: cerl/<genome> (the hybrid, its GA on that genome: weights, latent:all, pca:all, ...); td3 (the learners alone, through the same loop without a population); evolution (evolution alone, see evolution_alone)."""
    starts: list[str] = field(default_factory=lambda: ["finetune"])
    """Start conditions: finetune (the held-out test networks, learners with their TD3 runs' critics) and/or scratch."""
    n_seeds: int = 5
    """Independent runs of every variant and start; replicate r fine-tunes the same test network as stage 4's replicate r."""
    budget_steps: int = 40_000
    """Env steps at which every run is scored, counting population fitness, learner exploration and elite re-evaluation episodes (reporting and migrant probes are extra); a run stops once it has spent them, its last generation may overrun."""
    max_episode_steps: int = 1000
    """Episode cap (Hopper-v5: 1000); a capped episode is a truncation, bootstrapped through."""
    pop_size: int = 10
    """GA population of the hybrid and of evolution alone (CERL: 10)."""
    selection: str = "tournament"
    """GA parent selection: tournament (CERL) or truncation (Deep GA)."""
    tournament_size: int = 3
    """Individuals per tournament (CERL: 3)."""
    truncation: int = 3
    """Parents are drawn from the top this many when selection is truncation."""
    crossover_prob: float = 0.1
    """Probability that a child is the crossover of two parents (rows of weight matrices, or latent coordinates)."""
    fitness_episodes: int = 1
    """Episodes per individual per generation (all individuals play the same reset seeds)."""
    elite_candidates: int = 3
    """Best individuals of a generation that compete for champion with the elite carried over, every learner actor and the previous champion."""
    elite_episodes: int = 1
    """Extra episodes per champion candidate, counted in the budget."""
    report_episodes: int = 5
    """Fresh episodes (champion_report seeds) that score every champion and the start networks; never used to select."""
    mutation_action_change: float = 0.05
    """Mutation strength of every genome, as in stage 4: one mutation moves the actions by this much (mean L2 over calibration states)."""
    calibration_states: int = 256
    """States of the stage-1 dataset on which mutation strengths are calibrated and migrants' encoding loss is measured."""
    ae_form: str = "flat"
    """Autoencoder form of latent genomes: flat (the paper) or token."""
    best_layer: int = -1
    """Layer of :best genomes; -1 takes the layer stage 2 compressed best."""
    gammas: list[float] = field(default_factory=lambda: [0.99])
    """Discount rate of each TD3 learner, the portfolio (CERL: 0.9, 0.99, 0.997, 0.9995)."""
    learner_episodes: int = 5
    """Learner exploration episodes per generation, shared out by the resource manager."""
    resource_manager: str = "equal"
    """How learner episodes are shared out: equal (round-robin) or ucb (CERL: UCB over the learners, roulette-wheel)."""
    ucb_c: float = 0.9
    """UCB exploration coefficient (CERL: 0.9)."""
    critic_hidden: list[int] = field(default_factory=list)
    """Hidden widths of the learners' critics; empty: those of the zoo's TD3 runs (needed to load their critics)."""
    zoo_critics: bool = True
    """Fine-tuning: start every learner's critic from the final critic of its test network's TD3 run (fresh when the file is missing)."""
    batch_size: int = 256
    """Transitions per TD3 update."""
    buffer_size: int = 1_000_000
    """Capacity of the shared replay buffer (CERL: 1e6)."""
    learning_starts: int = 5_000
    """Transitions the shared buffer must hold before the learners first update."""
    updates_per_step: float = 1.0
    """Gradient updates per learner per env step that reaches the buffer (CERL: 1)."""
    learner_lr: float = 3e-4
    """Adam learning rate of the learners' actors and critics (the zoo's TD3 runs: 3e-4; CERL: 1e-3)."""
    exploration_noise: float = 0.1
    """Std of the Gaussian noise on learner actions during their rollouts (clipped to [-1, 1])."""
    warmup_noise: float = 1.0
    """Exploration std while the buffer holds fewer than learning_starts transitions (stands in for the uniform random warm-up of TD3)."""
    migration_every: int = 1
    """Generations between two migrations of every learner actor into the population (CERL: 5)."""
    probe_episodes: int = 3
    """Fresh episodes (not counted) that score each migrant and its decoded latent code, to measure what the encoding loses."""
    evolution_alone: str = "best"
    """Evolution alone: best (stage 4's best method/genome by final IQM for that start; ga/weights if stage 4 did not run it) or a method/genome."""
    return_levels: list[float] = field(default_factory=lambda: [1000.0, 2000.0, 3000.0])
    """Returns whose first crossing (env steps) is reported."""
    finetune_gain: float = 0.1
    """Relative gain over the start network whose first crossing (env steps) is reported when fine-tuning."""
    curve_points: int = 60
    """Points of the common env-step grid on which curves are aligned and summarised."""
    n_boot: int = 2000
    """Bootstrap replicates of every confidence interval."""
    shown_beside: str = "long"
    """Profile whose published run of this stage (results/<profile>/, see nnae_utils.published) the chapter shows beside its own; empty: none."""
    jobs: int = 2
    """Runs trained in parallel (one process, one torch thread and one physics thread each)."""
    physics_threads: int = 0
    """MuJoCo threads of evolution alone (one process); 0 uses every core."""
    torch_threads: int = 1
    """Torch threads of each run."""

    CONFIG_NAMES: typing.ClassVar[dict[str, tuple[str, ...]]] = {
        "max_episode_steps": ("max_steps",), "learner_lr": ("actor_lr", "critic_lr")}
    """Parameters that reach ``CERLConfig`` fields of other names (:meth:`run_config`); every other one
    reaches the field of its own name, or the notebook (tests/test_parameter_path.py checks both)."""

    def run_config(self, **run: Any) -> Any:
        """One hybrid run's :class:`nnae_utils.cerl.CERLConfig`: the parameters of the same name
        (:meth:`settings_for`), those of :data:`CONFIG_NAMES` (``max_episode_steps`` is ``max_steps``,
        ``learner_lr`` both ``actor_lr`` and ``critic_lr``), then what the run sets itself (``seed``,
        ``sigma``, ``critic_hidden``, ...). :meth:`validate` builds one, so the algorithm's own checks
        are the stage's: written once, in ``CERLConfig.__post_init__``.

        Example:
            >>> P = CERLParams(learner_lr=1e-3, max_episode_steps=500)
            >>> cfg = P.run_config(sigma=0.2, critic_hidden=(64, 64), physics_threads=1)
            >>> cfg.actor_lr, cfg.critic_lr, cfg.max_steps, cfg.migration_every, cfg.warmup_noise
            (0.001, 0.001, 500, 1, 1.0)
        """
        from .cerl import CERLConfig

        renamed = {field: getattr(self, name) for name, fields in self.CONFIG_NAMES.items() for field in fields}
        return self.settings_for(CERLConfig, **{**renamed, **run})

    def validate(self) -> None:
        from .evolution import METHODS
        from .genomes import parse_genome_name

        self._positive("n_seeds", "pop_size", "mutation_action_change", "calibration_states", "return_levels",
                       "finetune_gain", "curve_points", "n_boot", "jobs")
        # the algorithm's checks: a hybrid run, and TD3 alone (no population), as the notebook builds them;
        # the widths, step size and threads stand in for what each run sets (the zoo's critic, calibration)
        placeholders = {"sigma": 1.0, "critic_hidden": tuple(self.critic_hidden) or (256, 256), "physics_threads": 1}
        try:
            self.run_config(**placeholders)
            if "td3" in self.variants:
                self.run_config(**placeholders, pop_size=0)
        except ValueError as exc:  # in the stage's names: "CERLConfig.max_steps must be > 0" -> "max_episode_steps ..."
            message = str(exc).replace("CERLConfig.max_steps", "max_episode_steps").replace("CERLConfig.", "")
            raise ParameterError(f"cerl_comparison: {message.replace('CERLConfig: ', '')}") from exc
        if not self.variants or len(set(self.variants)) != len(self.variants):
            raise ParameterError(f"cerl_comparison: variants must list each run once, got {self.variants}")
        for entry in self.variants:
            kind, _, genome = entry.partition("/")
            if entry in ("td3", "evolution"):
                continue
            if kind != "cerl" or not genome:
                raise ParameterError(f"cerl_comparison: variant {entry!r} must be cerl/<genome>, td3 or evolution")
            try:
                parse_genome_name(genome)
            except ValueError as exc:
                raise ParameterError(f"cerl_comparison: variant {entry!r}: {exc}") from exc
        if self.evolution_alone != "best":
            method, _, genome = self.evolution_alone.partition("/")
            try:
                if method not in METHODS or not genome:
                    raise ValueError(f"must be best or <method>/<genome> with method one of {METHODS}")
                parse_genome_name(genome)
            except ValueError as exc:
                raise ParameterError(f"cerl_comparison: evolution_alone {self.evolution_alone!r}: {exc}") from exc
        if not self.starts or any(s not in ("finetune", "scratch") for s in self.starts) or len(set(self.starts)) != len(self.starts):
            raise ParameterError(f"cerl_comparison: starts must be a non-empty list of finetune and/or scratch, got {self.starts}")
        if self.physics_threads < 0:  # 0: every core, for evolution alone (a hybrid run takes 1)
            raise ParameterError(f"cerl_comparison: physics_threads must be >= 0, got {self.physics_threads}")
        if self.ae_form not in ("flat", "token") or self.best_layer < -1:
            raise ParameterError("cerl_comparison: ae_form must be flat or token, best_layer >= -1")
        self._check_shown_beside()
        if self.n_seeds > 80:
            raise ParameterError("cerl_comparison: at most 80 seeds (the evolution_fitness seed range holds 80 replicate blocks)")


@dataclass(frozen=True)
class PaperFigure3Params(StageParams):
    """Stage 6: the paper's Figure 3 from stages 2 and 3's artifacts, beside each of its claims, with verdicts."""

    STAGE: typing.ClassVar[str] = "paper_figure3"

    form: str = "flat"
    """Autoencoder form whose losses and decoded scores are drawn and judged: flat (the paper's) or token."""
    n_boot: int = 2000
    """Bootstrap replicates of each retention interval of the held-out train-run networks (split by network)."""

    def validate(self) -> None:
        self._positive("n_boot")
        if self.form not in ("flat", "token"):
            raise ParameterError(f"paper_figure3: form must be flat or token, got {self.form!r}")


@dataclass(frozen=True)
class Stage:
    name: str
    """Short name used on the command line (``--only data``)."""
    folder: str
    """Artifact folder and notebook stem (``01_data``)."""
    params: type[StageParams]
    upstream: tuple[str, ...] = ()

    @property
    def notebook(self) -> str:
        return f"notebooks/{self.folder}.ipynb"


STAGES: tuple[Stage, ...] = (
    Stage("data", "01_data", DataParams),
    Stage("layer_autoencoders", "02_layer_autoencoders", LayerAEParams, upstream=("data",)),
    Stage("decoded_evaluation", "03_decoded_evaluation", DecodedEvalParams, upstream=("data", "layer_autoencoders")),
    Stage("latent_evolution", "04_latent_evolution", LatentEvolutionParams, upstream=("data", "layer_autoencoders")),
    Stage("cerl_comparison", "05_cerl_comparison", CERLParams, upstream=("data", "layer_autoencoders", "latent_evolution")),
    Stage("paper_figure3", "06_paper_figure3", PaperFigure3Params, upstream=("layer_autoencoders", "decoded_evaluation")),
)
STAGES_BY_NAME = {s.name: s for s in STAGES}


class StageOutput:
    """Write a stage's artifacts into a staging folder, then move them into place at once.

    Example:
        >>> import tempfile
        >>> root = tempfile.mkdtemp()
        >>> out = StageOutput.begin(DataParams(run_dir=root))
        >>> _ = (out.path / "a.txt").write_text("x")
        >>> final = out.commit({"n": 1})
        >>> sorted(p.name for p in final.iterdir())
        ['a.txt', 'summary.json']
    """

    def __init__(self, final: Path, staging: Path):
        self.final, self.path = final, staging

    @classmethod
    def begin(cls, params: StageParams) -> "StageOutput":
        final = params.stage_dir(params.STAGE)
        staging = final.with_name(final.name + ".partial")
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        return cls(final, staging)

    def commit(self, summary: Mapping[str, Any]) -> Path:
        """Write ``summary.json`` and replace the stage's folder with the staging folder."""
        (self.path / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
        return swap_folder(self.path, self.final)
