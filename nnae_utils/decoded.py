"""Decoded networks deployed in Hopper: paired scores of input and decoded networks, and retention.

A low functional loss is only a proxy. This module puts the decoded networks where the paper puts
them, in the environment, and compares their returns with their input networks' returns:

1. :class:`Variant`: one way of decoding a network, a code per replaced layer (one layer alone, the
   paper's per-layer test, or every layer together), with its encoder form, loss variant, latent
   size and compression ratio. :func:`stage2_variants` reads every variant stage 2 trained (main
   autoencoders, latent-size sweep, loss ablation, PCA baseline); :class:`IdentityCode` is the
   control that must give a retention of exactly 1.
2. :func:`decode_jobs`: the decoded networks, built with :func:`nnae_utils.layer_codes.decode_network`,
   each input first brought to the hidden-unit symmetry option its variant's codes were trained under
   (stage 2's choice, recorded in their checkpoints: :func:`code_symmetry`).
3. :func:`score_paired`: ONE call of :func:`nnae_utils.rollouts.evaluate` for the input networks and
   every decoded network stacked in one population, all on the same reset seeds (``seeds`` is 1-D,
   so every policy plays exactly the same initial states: the comparison is paired).
4. :func:`retention_table`: per group (layer, split, form, ...) the mean input return, the mean
   decoded return, the retention ``mean(decoded) / mean(input)`` with a 95% bootstrap interval over
   networks (paired: a replicate draws networks, each with its input and its decoded score; see
   :func:`nnae_utils.stats.ratio_interval`), and how well the episode count resolves a difference.
5. :func:`write_decoded`: every scored decoded network in the suite's network format, with an
   ``index.json`` naming its source network, compressed layer(s), form, loss, latent size,
   compression ratio and return.
6. Stage 3's tables and sentences: the ratios that keep each retention level (:func:`kept_levels`), the
   goal (:func:`goal_hits`), the loss ablation (:func:`ablation_retention`), and the text notebook 03 glues.

How many episodes? The networks are deterministic, so the only noise in a network's score is the
reset seed. For a group of ``N`` networks, the paired difference ``d_pe = decoded_pe - input_pe`` has a
within-network variance ``s_p^2`` over episodes, and the episode noise of the group's mean difference
has standard error ``SE = sqrt(sum_p s_p^2 / E) / N``. A relative difference ``r`` is resolved at 95%
when ``1.96 * SE / mean(input) <= r``; :func:`episodes_needed` turns the measured ``s_p`` into the
smallest ``E`` that achieves it.

Example:
    >>> from nnae_utils.policies import Network, NetworkSpec
    >>> net = Network.random(NetworkSpec(obs_dim=11, act_dim=3, hidden=(8, 8)), seed=0)
    >>> ident = identity_variant(net.spec, [1])
    >>> jobs = decode_jobs({"test": [("n0", net)]}, [ident], {ident.name: ["test"]})
    >>> scores = score_paired([net], [j.network for j in jobs], seeds=[4_000_000, 4_000_001], max_steps=20, nthread=1)
    >>> bool((scores.decoded_returns == scores.input_returns).all())   # same network, same seeds
    True
"""
from __future__ import annotations

import ast
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from .functional_loss import layer_shape, split_layer_vector
from .layer_codes import FORMS, _as_layer_weights, decode_network, load_layer_autoencoder, load_layer_codes
from .io import jsonable
from .policies import Network, NetworkSpec, action_distance, load_network, save_network, write_index
from .rollouts import evaluate
from .stats import hierarchical_ratio_interval, ratio_interval
from .symmetry import symmetry_networks

KINDS = ("autoencoder", "pca", "identity")
GOAL_RATIO = 10.0
"""Stage 3's goal: a decoded network keeps :data:`GOAL_RETENTION` of its input's return at this compression
ratio or more (Policy Diffusion's bar is 98% at 13x)."""
GOAL_RETENTION = 0.98
"""The retention (decoded / input return) that :data:`GOAL_RATIO` must keep."""
ROLES = ("main", "main_all", "sweep", "ablation", "pca", "pca_all", "identity")
"""Why a variant is scored: the main autoencoders per layer (``main``) and all layers together
(``main_all``), the latent-size ``sweep``, the loss ``ablation``, the ``pca`` baseline per layer and
all layers together (``pca_all``), and the ``identity`` control."""
Z95 = 1.959963984540054


# --------------------------------------------------------------------------- the identity control


class IdentityCode:
    """A "code" that keeps a layer exactly (latent = the layer vector): the control of the pairing.

    A network decoded with it is bit-for-bit its input, so on the same seeds it must score exactly
    the same, and its retention must be exactly 1.

    Example:
        >>> from nnae_utils.policies import NetworkSpec, Network
        >>> net = Network.random(NetworkSpec(11, 3, (8,)), seed=1)
        >>> code = IdentityCode(net.spec, 0)
        >>> w, b = code.decode(code.encode(net))
        >>> bool((w == net.layer(0)[0]).all()), code.compression_ratio
        (True, 1.0)
    """

    def __init__(self, spec: NetworkSpec, layer: int, form: str = "flat"):
        self.spec, self.layer, self.form = spec, int(layer), form
        self.n_out, self.n_in = layer_shape(spec, layer)

    @property
    def latent_dim(self) -> int:
        return self.n_out * (self.n_in + 1)

    @property
    def compression_ratio(self) -> float:
        return 1.0

    def encode(self, x: Any) -> np.ndarray:
        w, b, single = _as_layer_weights(x, self.spec, self.layer)
        z = np.concatenate([w.reshape(len(w), -1), b], axis=1).astype(np.float32)
        return z[0] if single else z

    def decode(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w, b = split_layer_vector(np.asarray(z, np.float32), self.n_out, self.n_in)
        return w.copy(), b.copy()


# --------------------------------------------------------------------------- variants


def latent_per_unit(code: Any) -> int:
    """The latent size a code was configured with: per layer (flat) or per neuron token (token)."""
    if hasattr(code, "config"):
        return int(code.config.latent)
    if hasattr(code, "k"):
        return int(code.k)
    return int(code.latent_dim)


@dataclass
class Variant:
    """One way of decoding a network: one code per replaced layer, the rest of the network kept."""

    name: str
    """Unique, file-name safe, e.g. ``autoencoder-flat-functional-k76-L0``."""
    kind: str
    """``autoencoder``, ``pca`` or ``identity``."""
    form: str
    """Encoder form: ``flat`` or ``token``."""
    loss: str
    """Training loss of the autoencoder (functional, weights, both, dagger), or ``pca`` / ``identity``."""
    codes: dict[int, Any] = field(repr=False)
    """{layer: code}: the layers this variant replaces."""
    roles: set[str] = field(default_factory=set)
    """Why it is scored (see :data:`ROLES`)."""
    checkpoints: dict[int, str] = field(default_factory=dict)
    """{layer: checkpoint path relative to the stage-2 folder}."""
    symmetry: str = "none"
    """The hidden-unit symmetry option its codes were trained under (stage 2's, recorded in their checkpoints):
    a network is brought to that form (:func:`~nnae_utils.symmetry.symmetry_networks`) before it is encoded."""
    reference: Network | None = field(default=None, repr=False)
    """The network that align, align_runs and canonical bring every other to (stage 2's
    ``symmetry/<option>/reference.safetensors``); None for none and augment."""

    @property
    def spec(self) -> NetworkSpec:
        return next(iter(self.codes.values())).spec

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted(self.codes))

    @property
    def layer_label(self) -> str:
        """``'0'`` for one layer, ``'all'`` for every layer of the network, ``'0+2'`` otherwise."""
        if len(self.layers) == self.spec.n_layers and len(self.layers) > 1:
            return "all"
        return "+".join(str(i) for i in self.layers)

    @property
    def latent(self) -> dict[int, int]:
        """{layer: latent size per unit}: per layer (flat) or per neuron token (token)."""
        return {i: latent_per_unit(self.codes[i]) for i in self.layers}

    @property
    def latent_dim(self) -> int:
        """Numbers in one network's code of the replaced layers."""
        return int(sum(self.codes[i].latent_dim for i in self.layers))

    @property
    def n_params(self) -> int:
        """Weights and biases of the replaced layers."""
        return int(sum(self.spec.layer_param_count(i) for i in self.layers))

    @property
    def compression_ratio(self) -> float:
        """Parameters of the replaced layers per latent dimension."""
        return self.n_params / self.latent_dim

    def describe(self) -> dict[str, Any]:
        """The variant's columns of the score table and of ``index.json``."""
        lat = self.latent
        return {
            "variant": self.name, "kind": self.kind, "form": self.form, "loss": self.loss,
            "layers": self.layer_label, "compressed_layers": list(self.layers),
            "latent": lat[self.layers[0]] if len(lat) == 1 else "+".join(str(v) for v in lat.values()),
            "latent_per_layer": {str(k): v for k, v in lat.items()}, "latent_dim": self.latent_dim,
            "compression_ratio": self.compression_ratio, "roles": sorted(self.roles),
        }


def _variant_name(kind: str, form: str, loss: str, latent: Mapping[int, int], label: str) -> str:
    return f"{kind}-{form}-{loss}-k{'+'.join(str(v) for v in latent.values())}-L{label}"


def make_variant(kind: str, form: str, loss: str, codes: Mapping[int, Any], roles: Iterable[str],
                 checkpoints: Mapping[int, str] | None = None, symmetry: str = "none",
                 reference: Network | None = None) -> Variant:
    """A :class:`Variant` named from its parts."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    bad = set(roles) - set(ROLES)
    if bad:
        raise ValueError(f"unknown role(s) {sorted(bad)}; roles: {ROLES}")
    v = Variant("", kind, form, loss, dict(sorted(codes.items())), set(roles), dict(checkpoints or {}), symmetry, reference)
    v.name = _variant_name(kind, form, loss, v.latent, v.layer_label)
    return v


def identity_variant(spec: NetworkSpec, layers: Sequence[int] | None = None) -> Variant:
    """The control: the given layers (default: all) replaced by themselves."""
    layers = range(spec.n_layers) if layers is None else layers
    return make_variant("identity", "flat", "identity", {i: IdentityCode(spec, i) for i in layers}, {"identity"})


NEEDS_REFERENCE = ("align", "align_runs", "canonical")
"""The symmetry options that bring a network to a reference network before encoding it."""


def code_symmetry(codes: Mapping[int, Any], stage2_dir: str | Path) -> tuple[str, Network | None]:
    """The hidden-unit symmetry option ``codes`` were trained under, as their checkpoints record it (stage 2's
    :class:`~nnae_utils.layer_codes.LayerAEConfig`; a PCA basis: none), and, for the options of
    :data:`NEEDS_REFERENCE`, the reference network stage 2 saved for it."""
    options = {getattr(getattr(code, "config", None), "symmetry", "none") for code in codes.values()}
    if len(options) != 1:
        raise ValueError(f"the codes of one variant must share one symmetry option, got {sorted(options)}")
    option = options.pop()
    if option not in NEEDS_REFERENCE:
        return option, None
    path = Path(stage2_dir) / "symmetry" / option / "reference.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"codes trained under symmetry {option!r} need stage 2's reference network {path}")
    return option, load_network(path)


def _roles_of(text: str) -> set[str]:
    return set(ast.literal_eval(text)) if isinstance(text, str) else set(text)


def stage2_variants(stage2_dir: str | Path, *, sweep: bool = True, ablation: bool = True, pca: bool = True) -> list[Variant]:
    """Every decoding variant stage 2 trained, each once, with all of its roles.

    - ``main``: the main autoencoders (:func:`~nnae_utils.layer_codes.load_layer_codes`), each layer
      alone, both forms; ``main_all``: all layers together;
    - ``sweep``: the functional-loss autoencoders of the latent-size sweep (``models.csv``), each layer alone;
    - ``ablation``: the same layer and latent size trained with the other losses;
    - ``pca``: the per-layer PCA at every latent size stage 2 evaluated (``pca.csv``); ``pca_all``: all
      layers together at the main latent sizes.

    A model that plays several roles (the main autoencoder is also the sweep's and the ablation's
    functional entry) is one variant with several roles. Each variant carries the symmetry option its
    codes were trained under (:func:`code_symmetry`), so that :func:`decode_jobs` encodes a network as
    stage 2 encoded the networks those codes learnt from.
    """
    stage2_dir = Path(stage2_dir)
    models_csv = stage2_dir / "models.csv"
    if not models_csv.is_file():
        raise FileNotFoundError(f"stage 2 folder {stage2_dir} has no models.csv")
    models = pd.read_csv(models_csv)
    variants: dict[str, Variant] = {}

    def add(v: Variant) -> None:
        if v.name in variants:
            variants[v.name].roles |= v.roles
        else:
            variants[v.name] = v

    for form in FORMS:
        codes = load_layer_codes(stage2_dir, form=form)
        ckpt = {i: f"autoencoders/layer{i}_{form}.safetensors" for i in codes}
        for i, code in codes.items():
            row = models[models["checkpoint"] == ckpt[i]]
            extra = (_roles_of(row["roles"].iloc[0]) & {"sweep", "ablation"}) if len(row) else set()
            add(make_variant("autoencoder", form, code.config.loss, {i: code}, {"main"} | extra, {i: ckpt[i]},
                             *code_symmetry({i: code}, stage2_dir)))
        add(make_variant("autoencoder", form, "functional", codes, {"main_all"}, ckpt, *code_symmetry(codes, stage2_dir)))
    wanted = {"sweep"} if sweep else set()
    wanted |= {"ablation"} if ablation else set()
    for row in models.itertuples():
        roles = _roles_of(row.roles) & wanted
        if not roles or "main" in _roles_of(row.roles):
            continue  # main autoencoders are already in, with their roles
        code = load_layer_autoencoder(stage2_dir / row.checkpoint)
        add(make_variant("autoencoder", code.form, code.config.loss, {code.layer: code}, roles, {code.layer: row.checkpoint},
                         *code_symmetry({code.layer: code}, stage2_dir)))
    if pca:
        table = pd.read_csv(stage2_dir / "pca.csv")
        for form in FORMS:
            bases = load_layer_codes(stage2_dir, form=form, kind="pca")
            ckpt = {i: f"pca/layer{i}_{form}.safetensors" for i in bases}
            for row in table[table["form"] == form].itertuples():
                layer = int(row.layer)
                add(make_variant("pca", form, "pca", {layer: bases[layer].with_k(int(row.latent))}, {"pca"},
                                 {layer: ckpt[layer]}))
            add(make_variant("pca", form, "pca", bases, {"pca_all"}, ckpt))
    return list(variants.values())


# --------------------------------------------------------------------------- decoding


@dataclass
class DecodeJob:
    """One decoded network: a source network of a split, decoded by one variant."""

    source_id: str
    split: str
    variant: Variant
    network: Network

    @property
    def id(self) -> str:
        """File name stem of the decoded network: ``<source id>__<variant name>``."""
        return f"{self.source_id}__{self.variant.name}"


def spread_subset(items: Sequence[Any], at_most: int) -> list[Any]:
    """At most ``at_most`` of ``items``, evenly spaced in their order (all when ``at_most`` is 0).

    A zoo's ids sort by run and training step, so the subset spreads over runs and training time.

    Example:
        >>> spread_subset(list("abcdefg"), 3)
        ['a', 'd', 'g']
    """
    items = list(items)
    if not at_most or len(items) <= at_most:
        return items
    return [items[i] for i in np.unique(np.linspace(0, len(items) - 1, at_most).round().astype(int))]


def decode_jobs(networks: Mapping[str, Sequence[tuple[str, Network]]], variants: Sequence[Variant],
                splits_of: Mapping[str, Sequence[str]], runs: Mapping[str, Any] | None = None) -> list[DecodeJob]:
    """Decode the networks of the splits ``splits_of[variant.name]`` with each variant.

    ``networks``: {split: [(id, network), ...]}. Every layer of a variant is encoded from the
    *input* network's own layer (:func:`~nnae_utils.layer_codes.decode_network`), once the network is
    in the form the variant's symmetry option trained its codes on (aligned or canonical; the same
    actions): ``runs`` ({id: training run}) groups the networks of align_runs, one permutation per run.
    """
    jobs = []
    for v in variants:
        for split in splits_of.get(v.name, ()):
            pairs = list(networks.get(split, ()))
            groups = [runs[source_id] for source_id, _ in pairs] if runs is not None else None
            inputs = symmetry_networks(v.symmetry, [net for _, net in pairs], v.reference, groups) if pairs else []
            for (source_id, _), net in zip(pairs, inputs):
                dec = decode_network(net, v.codes)
                dec.extra_metadata.update({"source_network": source_id, "variant": v.name})
                jobs.append(DecodeJob(source_id, split, v, dec))
    return jobs


def splits_for(variants: Sequence[Variant], *, splits: Sequence[str], extra_splits: Sequence[str],
               identity_splits: Sequence[str] = ()) -> dict[str, list[str]]:
    """Which splits each variant is scored on: the main roles on ``splits``, the identity control
    on ``identity_splits``, the sweep, ablation and PCA roles on ``extra_splits``."""
    out = {}
    for v in variants:
        chosen: list[str] = []
        if v.roles & {"main", "main_all"}:
            chosen += list(splits)
        if v.roles & {"sweep", "ablation", "pca", "pca_all"}:
            chosen += list(extra_splits)
        if "identity" in v.roles:
            chosen += list(identity_splits)
        out[v.name] = list(dict.fromkeys(chosen))
    return out


# --------------------------------------------------------------------------- paired scores


@dataclass
class PairedScores:
    """Per-episode returns of input and decoded networks, all on the same reset seeds."""

    seeds: np.ndarray
    """(E,) the reset seeds every policy played, in order."""
    input_returns: np.ndarray
    """(N, E) input networks."""
    input_lengths: np.ndarray
    decoded_returns: np.ndarray
    """(M, E) decoded networks, in the order they were given."""
    decoded_lengths: np.ndarray
    env_steps: int
    wall_seconds: float


def score_paired(inputs: Sequence[Network], decoded: Sequence[Network], seeds: Sequence[int] | np.ndarray, *,
                 max_steps: int = 1000, nthread: int | None = None, progress: bool = False) -> PairedScores:
    """Score input and decoded networks in ONE batched :func:`~nnae_utils.rollouts.evaluate` call.

    ``seeds`` is one list shared by every policy of the population: episode ``e`` of every input
    and every decoded network starts from the same initial state. Deterministic actions, no noise.
    """
    import time

    seeds = np.asarray(seeds, dtype=np.int64)
    if seeds.ndim != 1 or len(seeds) == 0:
        raise ValueError(f"seeds must be a non-empty 1-D list shared by every network, got shape {seeds.shape}")
    population = [*inputs, *decoded]
    start = time.perf_counter()
    res = evaluate(population, seeds, max_steps=max_steps, nthread=nthread, progress=progress)
    wall = time.perf_counter() - start
    n = len(inputs)
    return PairedScores(seeds, res.returns[:n], res.lengths[:n], res.returns[n:], res.lengths[n:], res.env_steps, wall)


def input_trajectories(inputs: Sequence[Network], seed: int, *, max_steps: int = 1000, nthread: int | None = None) -> list[np.ndarray]:
    """The observations each input network acts on in one episode (reset seed ``seed``)."""
    res = evaluate(list(inputs), [int(seed)], max_steps=max_steps, nthread=nthread, record="observations")
    owner = res.observation_owner[:, 0]
    return [res.observations[owner == p] for p in range(len(inputs))]


def score_frame(jobs: Sequence[DecodeJob], inputs: Mapping[str, int], scores: PairedScores,
                trajectories: Sequence[np.ndarray] | None = None, input_networks: Sequence[Network] | None = None) -> pd.DataFrame:
    """One row per decoded network: its variant's columns, its source's and its own returns.

    ``inputs``: {source id: row of ``scores.input_returns``}. ``input_episodes`` and
    ``decoded_episodes`` hold the per-episode returns (arrays), for :func:`retention_table`.
    With ``trajectories`` (one array of states per input row) and ``input_networks``, the column
    ``action_distance`` is the mean L2 action distance on the input network's own states.
    """
    rows = []
    for k, job in enumerate(jobs):
        i = inputs[job.source_id]
        inp, dec = scores.input_returns[i], scores.decoded_returns[k]
        row = {
            "id": job.id, "source_network": job.source_id, "split": job.split, **job.variant.describe(),
            "input_return": float(inp.mean()), "decoded_return": float(dec.mean()),
            "input_return_std": float(inp.std()), "decoded_return_std": float(dec.std()),
            "input_length": float(scores.input_lengths[i].mean()), "decoded_length": float(scores.decoded_lengths[k].mean()),
            "input_episodes": inp, "decoded_episodes": dec,
        }
        if trajectories is not None and input_networks is not None:
            row["action_distance"] = float(action_distance([input_networks[i]], [job.network], trajectories[i])[0])
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- retention


def episode_noise(input_episodes: np.ndarray, decoded_episodes: np.ndarray) -> tuple[float, float]:
    """(standard error of the group's mean paired difference due to episode noise, mean input return).

    ``SE = sqrt(sum_p s_p^2 / E) / N``, ``s_p^2`` the variance over episodes of network p's paired differences.
    """
    x, y = np.asarray(input_episodes, float), np.asarray(decoded_episodes, float)
    n, e = x.shape
    if e < 2:
        return float("nan"), float(x.mean())
    s2 = (y - x).var(axis=1, ddof=1)
    return float(math.sqrt(s2.sum() / e) / n), float(x.mean())


def episodes_needed(se: float, mean_input: float, episodes: int, resolution: float, z: float = Z95) -> int:
    """Smallest episode count at which ``z * SE / mean_input <= resolution`` (SE scales as 1/sqrt(E)).

    Example:
        >>> episodes_needed(se=2.0, mean_input=100.0, episodes=10, resolution=0.02)   # 1.96 * 2% = 3.9% > 2%: need more
        39
    """
    if not (mean_input > 0 and np.isfinite(se)):
        return -1
    rel = z * se / mean_input
    return max(1, int(math.ceil(episodes * (rel / resolution) ** 2 - 1e-9)))


def retention_table(frame: pd.DataFrame, by: Sequence[str], *, n_boot: int = 2000, confidence: float = 0.95,
                    seed: int = 0, resolution: float = 0.02, runs: str | None = None) -> pd.DataFrame:
    """Retention of each group of ``frame`` (rows of :func:`score_frame`), one row per group.

    Columns: ``n_networks``, ``input_mean``, ``decoded_mean``, ``retention`` (= decoded_mean /
    input_mean, the ratio of mean returns), ``low``, ``high`` (its bootstrap interval over networks,
    paired), ``compression_ratio``, ``rel_se`` (episode noise of the mean difference, relative to
    input_mean), ``episodes``, ``episodes_needed`` (to resolve ``resolution`` at 95%), ``resolved``.

    ``runs``: a column of ``frame`` naming each network's training run. Then also ``n_runs`` and
    ``run_retention``, ``run_low``, ``run_high``: the retention with every run weighing the same
    (mean over runs of the decoded run means, over the same of the input run means) and its
    two-level bootstrap interval, runs resampled, then networks within each drawn run, each with its
    input (:func:`~nnae_utils.stats.hierarchical_ratio_interval`): snapshots of one run are not
    independent, so this interval is the one that speaks for other runs. With one run it equals
    ``retention``, ``low``, ``high``.
    """
    rows = []
    for key, g in frame.groupby(list(by), sort=False):
        key = key if isinstance(key, tuple) else (key,)
        x, y = g["input_return"].to_numpy(float), g["decoded_return"].to_numpy(float)
        ci = ratio_interval(y, x, "mean", n_boot=n_boot, confidence=confidence, seed=seed)
        xe, ye = np.stack(g["input_episodes"].to_list()), np.stack(g["decoded_episodes"].to_list())
        se, mean_in = episode_noise(xe, ye)
        e = xe.shape[1]
        need = episodes_needed(se, mean_in, e, resolution)
        row = dict(zip(by, key))
        row.update({
            "n_networks": len(g), "input_mean": float(x.mean()), "decoded_mean": float(y.mean()),
            "retention": ci.point, "low": ci.low, "high": ci.high,
            "compression_ratio": float(g["compression_ratio"].iloc[0]) if g["compression_ratio"].nunique() == 1 else float("nan"),
            "rel_se": se / mean_in if mean_in > 0 else float("nan"), "episodes": e, "episodes_needed": need,
            "resolved": bool(0 < need <= e),
        })
        if "action_distance" in g:
            row["action_distance"] = float(g["action_distance"].mean())
        if runs is not None:
            of_run = [(g[runs] == r).to_numpy() for r in pd.unique(g[runs])]
            hi = hierarchical_ratio_interval([y[m] for m in of_run], [x[m] for m in of_run], n_boot=n_boot,
                                             confidence=confidence, seed=seed)
            row.update({"n_runs": len(of_run), "run_retention": hi.point, "run_low": hi.low, "run_high": hi.high})
        rows.append(row)
    return pd.DataFrame(rows)


def highest_ratio_kept(ratios: Sequence[float], retentions: Sequence[float], threshold: float) -> dict[str, float | None]:
    """The highest compression ratio whose retention reaches ``threshold``.

    ``stays``: the highest ratio r such that every tested ratio <= r reaches it (retention *stays*
    above the level up to r); ``any``: the highest tested ratio that reaches it, whatever lies below.
    Either is None when no ratio qualifies.

    Example:
        >>> highest_ratio_kept([4, 10, 32, 100], [0.99, 0.985, 0.95, 0.99], 0.98)
        {'stays': 10.0, 'any': 100.0}
    """
    order = np.argsort(np.asarray(ratios, float))
    r, ret = np.asarray(ratios, float)[order], np.asarray(retentions, float)[order]
    ok = ret >= threshold
    stays = None
    for ri, oki in zip(r, ok):
        if not oki:
            break
        stays = float(ri)
    return {"stays": stays, "any": float(r[ok].max()) if ok.any() else None}


# --------------------------------------------------------------------------- stage 3's tables and sentences


def percent(x: float | None) -> str:
    """A retention as a whole percentage, ``n/a`` when missing."""
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.0%}"


def format_ratio(ratio: float | None) -> str:
    """A compression ratio as ``10.0x``; ``none`` when no tested ratio qualifies."""
    return "none" if ratio is None else f"{ratio:.1f}x"


def interval_text(row: Mapping[str, Any]) -> str:
    """A group's retention with its interval: ``97% [93%, 101%]``."""
    return f"{percent(row['retention'])} [{percent(row['low'])}, {percent(row['high'])}]"


def zoo_sentence(returns: Sequence[float], solved_return: float) -> str:
    """The zoo's returns for the text, with a warning when fewer than half of its networks solve Hopper."""
    returns = np.asarray(returns, float)
    n_good = int((returns >= solved_return).sum())
    spread_text = f"{returns.min():.0f} and {returns.max():.0f} (median {np.median(returns):.0f})"
    if n_good >= len(returns) / 2:
        return f"The zoo's {len(returns)} networks return between {spread_text}; {n_good} of them reach {solved_return:.0f}."
    return (f"This zoo is weak: its {len(returns)} networks return between {spread_text} on stage 1's fresh seeds, and "
            f"{'none' if n_good == 0 else n_good} of them reach{'es' if n_good == 1 else ''} {solved_return:.0f}, while a good "
            "Hopper policy scores 3000-3700. These are not the paper's networks that solve Hopper: a weak network falls "
            "within a few hundred steps, and a decoded network that merely stands still longer can outscore it. Retention "
            "here says little about compressing networks that hop.")


def sampling_record(sampled: Mapping[str, Any], extra_sampled: Mapping[str, Any], zoo: Any, *, sentence: str,
                    **settings: Any) -> dict[str, Any]:
    """The summary's record of which networks were scored: ``settings`` (the sampling parameters, the sentence),
    and per split the networks scored, of how many, their runs, and the sweep, ablation and PCA variants' share
    (``sampled``, ``extra_sampled``: {split: the :class:`~nnae_utils.zoo.Zoo` sample} of ``zoo``)."""
    def runs(z: Any) -> int:
        return len({r["provenance"].get("run") for r in z.records})
    per_split = {s: {"scored": len(z.records), "of": len(zoo.ids(s)), "runs": runs(z), "runs_of": runs(zoo.select(s)),
                     "extra": len(extra_sampled[s].records)} for s, z in sampled.items()}
    return {**settings, "method": "zoo.sample_indices: runs first, then snapshots evenly over each run's steps",
            "per_split": per_split, "sentence": sentence}


def best_layers(main: pd.DataFrame, split: str) -> dict[str, dict[str, float]]:
    """Per form, the single layer whose main autoencoder retains most on ``split``, with its interval and ratio."""
    best_by_form = {}
    for form, group in main[(main["split"] == split) & (main["layers"] != "all")].groupby("form"):
        group = group.dropna(subset=["retention"])
        if len(group):
            best = group.loc[group["retention"].idxmax()]
            best_by_form[form] = {"layer": int(best.layers), "retention": float(best.retention), "low": float(best.low),
                                  "high": float(best.high), "compression_ratio": float(best.compression_ratio)}
    return best_by_form


def kept_levels(sweep: pd.DataFrame, thresholds: Sequence[float]) -> tuple[dict[str, dict[int, dict[str, Any]]], pd.DataFrame]:
    """Per method and layer of the sweep's retention table, the highest tested ratio that keeps each level of
    ``thresholds`` (:func:`highest_ratio_kept`): ``{method: {layer: {level: {stays, any}}}}``, and as a table."""
    kept: dict[str, dict[int, dict[str, Any]]] = {}
    rows = []
    for (method, layer), group in sweep.groupby(["method", "layer"]):
        for level in thresholds:
            k = highest_ratio_kept(group["compression_ratio"], group["retention"], level)
            kept.setdefault(method, {}).setdefault(int(layer), {})[f"{level:g}"] = k
            rows.append({"layer": int(layer), "method": method, "level": f"{level:.0%}", "stays": format_ratio(k["stays"]),
                         "any": format_ratio(k["any"]),
                         "tested ratios": ", ".join(f"{r:.1f}x" for r in group["compression_ratio"])})
    return kept, pd.DataFrame(rows)


def kept_sentence(kept: Mapping[str, Mapping[int, Mapping[str, Any]]], thresholds: Sequence[float], n_layers: int) -> str:
    """:func:`kept_levels` for the text: per level, layer by layer, each method's highest ratio that stays at it."""
    def at_level(level: float) -> str:
        parts = []
        for layer in range(n_layers):
            items = [f"{m} {format_ratio(kept[m][layer][f'{level:g}']['stays'])}"
                     for m in ("flat", "token", "PCA flat", "PCA token") if m in kept and layer in kept[m]]
            if items:
                parts.append(f"layer {layer}: " + ", ".join(items))
        return "; ".join(parts) if parts else "not measured (no sweep)"
    return "; ".join(f"at {level:.0%} or more, {at_level(level)}" for level in thresholds)


def goal_hits(sweep: pd.DataFrame, methods: Sequence[str], n_layers: int) -> tuple[dict[int, list[str]], int]:
    """Per layer, the sweep's autoencoders (``methods``) that meet stage 3's goal (:data:`GOAL_RETENTION` at
    :data:`GOAL_RATIO` or more), as text; and how many of them retain more than 102% (they beat their inputs)."""
    goal, above = {}, 0
    for layer in range(n_layers):
        hits = [r for r in sweep[(sweep["layer"] == layer) & sweep["method"].isin(methods)].itertuples()
                if r.compression_ratio >= GOAL_RATIO and r.retention >= GOAL_RETENTION]
        goal[layer] = [f"{r.method} {r.compression_ratio:.1f}x ({percent(r.retention)})"
                       for r in sorted(hits, key=lambda r: (r.method, r.compression_ratio))]
        above += sum(r.retention > 1.02 for r in hits)
    return goal, int(above)


def goal_sentence(goal: Mapping[int, Sequence[str]], above: int, split: str) -> str:
    """:func:`goal_hits` for the text."""
    met = [layer for layer, hits in goal.items() if hits]
    where = "no layer" if not met else "layer" + ("s " if len(met) > 1 else " ") + ", ".join(str(layer) for layer in met)
    text = f"The goal, {GOAL_RETENTION:.0%} at {GOAL_RATIO:g}x or more, is met on {where}"
    if met:
        text += " (" + "; ".join(f"layer {layer}: {', '.join(goal[layer])}" for layer in met) + ")"
    text += f" of the {split} networks (point estimates; the intervals above show how uncertain each is)."
    if above:
        text += (f" {above} of these retain more than 102%: their decoded networks do not reproduce their inputs' scores, "
                 "they beat them, by acting differently.")
    return text


def ablation_retention(frame: pd.DataFrame, split: str, networks: Iterable[str], main_latent: Mapping[tuple[str, int], int],
                       **interval: Any) -> pd.DataFrame:
    """Retention of the loss ablation's codes and of PCA at the main latent size (``main_latent``: {(form, layer):
    latent}), each layer alone, on ``split``'s ``networks`` (ids); ``interval``: :func:`retention_table`'s options."""
    part = frame[(frame["split"] == split) & (frame["layers"] != "all") & frame["source_network"].isin(set(networks))].copy()
    part["layer"] = part["layers"].astype(int)
    at_main = np.array([main_latent.get((f, layer)) == k for f, layer, k in zip(part["form"], part["layer"], part["latent"])], bool)
    chosen = part["roles"].map(lambda r: "ablation" in r).to_numpy() | ((part["kind"] == "pca").to_numpy() & at_main)
    return retention_table(part[chosen], ["form", "layer", "loss"], **interval)


def by_loss(table: pd.DataFrame, order: Sequence[str]) -> pd.DataFrame:
    """Retention as a form-and-layer by loss table, the losses in ``order`` (those present)."""
    view = table.pivot_table(index=["form", "layer"], columns="loss", values="retention")
    return view[[loss for loss in order if loss in view.columns]].round(3)


def resolution_sentence(main: pd.DataFrame, episodes: int, resolution: float) -> str:
    """Whether the episode count resolves a difference of ``resolution`` in every group of ``main``."""
    worst = main.loc[main["rel_se"].idxmax()]
    return (f"With {episodes} episodes, {int(main['resolved'].sum())} of {len(main)} groups resolve a {resolution:.0%} "
            f"difference at 95% (largest relative standard error {worst.rel_se:.2%}, {worst.form} layer {worst.layers} on "
            f"{worst.split}; the noisiest group would need {int(main['episodes_needed'].max())} episodes).")


def retention_line(main: pd.DataFrame, form: str, split: str, n_layers: int, column: str | None = None) -> str:
    """One form and split of ``main`` for the text, layer by layer then all layers: each retention with its
    interval, or (``column``, e.g. ``decoded_mean``) that column."""
    rows = main[(main["form"] == form) & (main["split"] == split)].set_index("layers")
    parts = []
    for label in [str(i) for i in range(n_layers)] + ["all"]:
        if label in rows.index:
            value = interval_text(rows.loc[label]) if column is None else f"{rows.loc[label, column]:.0f}"
            parts.append(f"{'all layers' if label == 'all' else f'layer {label}'} {value}")
    return "; ".join(parts)


def significance_sentence(main: pd.DataFrame) -> str:
    """How many groups retain significantly more, or less, than 100% (interval above or below 1)."""
    above, below = int((main["low"] > 1.0).sum()), int((main["high"] < 1.0).sum())
    if not above:
        return f"{below} of {len(main)} groups retain significantly less than 100% (interval below 1)."
    return (f"{above} of {len(main)} groups retain significantly more than 100% (interval above 1) and {below} "
            "significantly less. Retention above 100% is not better compression: on this zoo it means the decoded networks "
            "behave differently (see their action distances), e.g. stand or fall differently, and happen to collect more reward.")


# --------------------------------------------------------------------------- files


def write_decoded(directory: str | Path, jobs: Sequence[DecodeJob], frame: pd.DataFrame, *, seeds: Sequence[int],
                  max_steps: int, provenance: Mapping[str, Any]) -> Path:
    """Write every scored decoded network (network format) and ``index.json``.

    A record names the source network, its split, the compressed layer(s), the encoder form, the
    loss variant, the latent size (per layer), latent dim and compression ratio, the return on the
    paired ``decoded_report`` seeds with its std, episode count and seeds, the input network's return
    on the same seeds, and the provenance (stage, checkpoints, roles).
    """
    directory = Path(directory)
    by_id = frame.set_index("id")
    records = []
    for job in jobs:
        row = by_id.loc[job.id]
        save_network(directory / f"{job.id}.safetensors", job.network)
        v = job.variant
        records.append({
            "id": job.id,
            "source_network": job.source_id,
            "split": job.split,
            "compressed_layers": list(v.layers),
            "encoder_form": v.form,
            "kind": v.kind,
            "loss_variant": v.loss,
            "latent_size": v.latent[v.layers[0]] if len(v.layers) == 1 else {str(k): x for k, x in v.latent.items()},
            "latent_dim": v.latent_dim,
            "compression_ratio": v.compression_ratio,
            "return_mean": float(row["decoded_return"]),
            "return_std": float(row["decoded_return_std"]),
            "episodes": int(len(seeds)),
            "eval_seeds": [int(s) for s in seeds],
            "max_episode_steps": int(max_steps),
            "episode_returns": [round(float(r), 3) for r in row["decoded_episodes"]],
            "input_return_mean": float(row["input_return"]),
            "retention": float(row["decoded_return"] / row["input_return"]) if row["input_return"] > 0 else None,
            "provenance": {**dict(provenance), "variant": v.name, "roles": sorted(v.roles),
                           "checkpoints": {str(k): p for k, p in v.checkpoints.items()}},
        })
    return write_index(directory, records)


def json_ready(obj: Any) -> Any:
    """Floats rounded to 6 decimals for summary.json, NaN as None (JSON has no NaN): :func:`nnae_utils.io.jsonable`.

    Example:
        >>> json_ready({"retention": np.float64(0.98765432), "ci": (np.nan, 1)})
        {'retention': 0.987654, 'ci': [None, 1]}
    """
    return jsonable(obj, digits=6, finite=True)


def dumps(obj: Any) -> str:
    return json.dumps(json_ready(obj), indent=1)
