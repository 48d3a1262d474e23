"""Stage 2's layer autoencoders: training, the stage's experiments, and the names notebooks use.

One autoencoder per linear layer of the zoo's policies, trained with the paper's functional loss. The
concepts live in their own modules, all re-exported here so that notebooks and benchmarks reach them as
``ae.<name>``:

- :mod:`nnae_utils.functional_loss`: layer vectors, stacked networks, the functional loss;
- :mod:`nnae_utils.symmetry`: hidden-unit permutations, alignment, canonical forms, symmetry options;
- :mod:`nnae_utils.layer_codes`: the autoencoder forms, PCA, decoded networks, checkpoint files.

This module trains them (:func:`train_layer_autoencoder`, resumable and cached by
:func:`training_fingerprint`; :func:`train_many_layer_autoencoders` in parallel), measures them
(:func:`evaluate_code`, :func:`mean_layer_loss`, :func:`symmetry_rows`), plans stage 2's runs
(:func:`plan_experiments`, from ``LayerAEParams.plan_settings``) and loads what they train on (:class:`StageData`,
:class:`LayerData`). What the stage saves, tabulates and says about them lives in :mod:`nnae_utils.layer_study`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .policies import Network, NetworkSpec, layer_vector  # noqa: F401 (layer_vector: re-exported for ``ae.``)
from .states import StateDataset
from .zoo import Zoo, load_zoo

# The concepts' own modules; their names are re-exported for the notebooks' ``ae.`` namespace.
from .functional_loss import (  # noqa: F401
    StackedNetworks,
    forward_from,
    functional_loss,
    functional_loss_reference,
    hidden_sides,
    layer_input,
    layer_shape,
    layer_vectors,
    split_layer_vector,
    stacked_actions,
)
from .symmetry import (  # noqa: F401
    SYMMETRIES,
    align_groups,
    align_hidden_units,
    canonical_form,
    hidden_unit_matching,
    permute_hidden_units,
    permute_stacked,
    random_hidden_permutations,
    rescale_hidden_units,
    sort_hidden_units,
    symmetry_networks,
    symmetry_reference,
)
from .layer_codes import (  # noqa: F401
    AE_FORMAT,
    AE_FORMS,
    AutoencoderFormatError,
    EquivariantCodec,
    FORMAT_VERSION,
    FORMS,
    LOSSES,
    LayerAEConfig,
    LayerAutoencoder,
    LayerCode,
    PCALayerCode,
    PCA_FORMAT,
    _as_layer_weights,
    checkpoint_info,
    decode_network,
    fit_normalisation,
    latent_for_ratio,
    layer_std,
    load_layer_autoencoder,
    load_layer_codes,
    load_pca,
    network_from_latents,
    reconstruct_stack,
    save_layer_autoencoder,
    save_pca,
    tokens_to_vecs,
    vecs_to_tokens,
    weight_mse,
)

DAGGER_SEED_OFFSET = 100_000
"""Rollouts of decoded networks draw their reset seeds from the ``states`` namespace, from this
offset on (stage 1 uses the first few seeds of that range), so they never repeat stage 1's episodes."""


def symmetry_rows(option: str, results: Sequence["TrainResult"], train: "LayerData", val: "LayerData",
                  holdout: "LayerData | None" = None) -> list[dict[str, Any]]:
    """One row per autoencoder of one symmetry option: its epoch kept's train and validation (held-out run)
    functional losses, and the validation loss over the mean layer's, the mean layer taken from the
    option's own train networks: aligned or canonical ones move it; augment's train networks come under
    every permutation, so its mean layer is averaged over hidden units too (``mean_layer_loss(...,
    over_units=True)``), the layer an augmented autoencoder that ignores its input decodes to (measured on
    the shipped zoo's layer 1: both forms' validation loss equal to it, 1.353). The equivariant form's too:
    an equivariant decoder that ignores its code can only output a layer whose units are all alike. A
    ratio near 1 means the code carries no more about a held-out run's layer than the mean layer does.

    With ``holdout`` (held-out snapshots of the train runs), the same for them: the split *by network*
    (unseen networks of seen runs, the paper's likely protocol) beside the split *by run*. Those networks
    chose the epoch kept (early stopping), so their loss is an optimistic estimate.
    """
    rows = []
    for res in results:
        cfg, best = res.model.config, res.best
        over_units = option == "augment" or cfg.form == "equivariant"  # what a code-free output of either looks like
        mean = mean_layer_loss(train, val, cfg.layer, over_units=over_units)
        row = {"symmetry": option, "layer": cfg.layer, "form": cfg.form, "latent_dim": res.model.latent_dim,
               "train_functional": best["train_functional"], "val_functional": best["val_functional"],
               "mean_layer_val": mean, "val_over_mean_layer": best["val_functional"] / mean}
        if holdout is not None:
            mean_ho = mean_layer_loss(train, holdout, cfg.layer, over_units=over_units)
            row.update(holdout_functional=best["holdout_functional"], mean_layer_holdout=mean_ho,
                       holdout_over_mean_layer=best["holdout_functional"] / mean_ho)
        rows.append({**row, "best_epoch": res.best_epoch, "epochs": res.epochs_run, "wall_seconds": res.wall_seconds})
    return rows


def evaluate_code(code: LayerCode, data: "LayerData", std: float) -> dict[str, float]:
    """Functional loss (on ``data.eval_states``) and normalised weight MSE of a code on ``data``'s networks."""
    wd, bd = reconstruct_stack(code, data.stack)
    w, b = data.stack.layer(code.layer)
    x, y_input = data.eval_inputs(code.layer)
    with torch.no_grad():
        y_decoded = forward_from(data.stack, code.layer, x, wd, bd)
        return {
            "functional": float(torch.linalg.vector_norm(y_decoded - y_input, dim=-1).mean()),
            "weight_mse": float(weight_mse(wd, bd, w, b, std)),
        }


def mean_layer_loss(train: "LayerData", data: "LayerData", layer: int, *, over_units: bool = False,
                    per_network: bool = False) -> float | np.ndarray:
    """Functional loss when layer ``layer`` of every network of ``data`` is replaced by the train networks'
    mean layer: the loss of a code that carries no information about the network (a scale for the others).
    ``per_network``: one loss per network of ``data`` (its mean over the eval states), not their mean.

    ``over_units``: the mean over every permutation of the hidden units too (the layer's rows are averaged
    when its outputs are hidden units, its columns when its inputs are): the mean of what ``augment``
    trains on, and the layer an augmented autoencoder that ignores its input decodes to.
    """
    w_mean, b_mean = (t.mean(0, keepdim=True) for t in train.stack.layer(layer))
    if over_units and layer < train.stack.spec.n_layers - 1:  # outputs are hidden units
        w_mean, b_mean = w_mean.mean(1, keepdim=True).expand_as(w_mean), b_mean.mean(1, keepdim=True).expand_as(b_mean)
    if over_units and layer > 0:  # inputs are hidden units
        w_mean = w_mean.mean(2, keepdim=True).expand_as(w_mean)
    x, y_input = data.eval_inputs(layer)
    n = len(data.stack)
    with torch.no_grad():
        y = forward_from(data.stack, layer, x, w_mean.expand(n, -1, -1), b_mean.expand(n, -1))
        per_state = torch.linalg.vector_norm(y - y_input, dim=-1)
        return per_state.mean(dim=-1).numpy().astype(float) if per_network else float(per_state.mean())


def functional_per_network(code: LayerCode, data: "LayerData") -> np.ndarray:
    """(N,) functional loss of ``code`` on each network of ``data`` (mean over ``data.eval_states``): the
    per-network terms whose mean :func:`evaluate_code` reports, for intervals that resample networks or runs."""
    wd, bd = reconstruct_stack(code, data.stack)
    x, y_input = data.eval_inputs(code.layer)
    with torch.no_grad():
        y_decoded = forward_from(data.stack, code.layer, x, wd, bd)
        return torch.linalg.vector_norm(y_decoded - y_input, dim=-1).mean(dim=-1).numpy().astype(float)


# --------------------------------------------------------------------------- training


@dataclass
class LayerData:
    """Networks and states one split contributes to a layer autoencoder's training or validation."""

    stack: StackedNetworks
    """The split's networks, stacked."""
    states: np.ndarray
    """(N, obs) pool minibatches are drawn from."""
    eval_states: np.ndarray
    """(M, obs) fixed states of the end-of-epoch evaluation (the same for every epoch and every model)."""
    networks: list[Network] = field(default_factory=list)
    """The networks as :class:`Network` objects (needed to roll out decoded networks)."""
    _eval_cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)
    _digest: dict[str, str] = field(default_factory=dict, repr=False)

    def eval_inputs(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(input of ``layer``, input networks' actions) on the eval states, computed once per layer:
        every epoch of every model re-uses them, so an evaluation costs one partial forward pass."""
        if layer not in self._eval_cache:
            x = layer_input(self.stack, layer, self.eval_states)
            with torch.no_grad():
                self._eval_cache[layer] = (x, forward_from(self.stack, layer, x, *self.stack.layer(layer)))
        return self._eval_cache[layer]

    def fingerprint(self) -> str:
        """A hash of the networks, the state pool and the evaluation states (computed once)."""
        if "fingerprint" not in self._digest:
            h = hashlib.sha256(json.dumps(self.stack.spec.to_metadata(), sort_keys=True).encode())
            for key in sorted(self.stack.params):
                h.update(key.encode())
                h.update(self.stack.params[key].numpy().tobytes())
            h.update(np.ascontiguousarray(self.states).tobytes())
            h.update(np.ascontiguousarray(self.eval_states).tobytes())
            self._digest["fingerprint"] = h.hexdigest()
        return self._digest["fingerprint"]

    @classmethod
    def build(cls, nets: Sequence[Network], states: np.ndarray, n_eval: int, seed: int) -> "LayerData":
        if not nets:
            raise ValueError("a split without networks cannot train or validate an autoencoder")
        states = np.asarray(states, np.float32)
        rng = np.random.default_rng(seed)
        pick = rng.choice(len(states), size=min(n_eval, len(states)), replace=False)
        return cls(StackedNetworks.from_networks(nets), states, states[np.sort(pick)], list(nets))


@dataclass
class TrainResult:
    """A trained autoencoder (its best-validation weights), its history and how training ended."""

    model: LayerAutoencoder
    history: list[dict[str, Any]]
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    wall_seconds: float
    dagger_states: int = 0

    @property
    def best(self) -> dict[str, Any]:
        return next(h for h in self.history if h["epoch"] == self.best_epoch)


def _objective(cfg: LayerAEConfig, functional: float | torch.Tensor, mse: float | torch.Tensor):
    if cfg.loss in ("functional", "dagger"):
        return functional
    if cfg.loss == "weights":
        return mse
    return functional + cfg.weight_loss_coef * mse


def _draw_states(rng: np.random.Generator, pool: np.ndarray, visited: np.ndarray, n_nets: int, n_states: int,
                 visited_fraction: float) -> torch.Tensor:
    """(P, B, obs) states: each network its own draw, a share of them from the visited buffer."""
    n_visited = int(round(n_states * visited_fraction)) if len(visited) else 0
    parts = [pool[rng.integers(0, len(pool), size=(n_nets, n_states - n_visited))]]
    if n_visited:
        parts.append(visited[rng.integers(0, len(visited), size=(n_nets, n_visited))])
    return torch.from_numpy(np.concatenate(parts, axis=1))


def rollout_decoded_states(model: LayerCode, nets: Sequence[Network], *, seed_offset: int, max_steps: int) -> np.ndarray:
    """States visited by the decoded versions of ``nets`` (layer ``model.layer`` replaced), one episode each."""
    from .rollouts import evaluate  # deferred: the autoencoders need Hopper only for the DAgger variant
    from .seeds import eval_seeds

    decoded = [decode_network(n, model) for n in nets]
    seeds = eval_seeds("states", len(decoded), offset=DAGGER_SEED_OFFSET + seed_offset).reshape(-1, 1)
    result = evaluate(decoded, seeds, record="observations", max_steps=max_steps, nthread=1)
    return result.observations.astype(np.float32)


def train_layer_autoencoder(
    cfg: LayerAEConfig,
    train: LayerData,
    val: LayerData,
    *,
    stop_on: LayerData | None = None,
    progress: bool = False,
) -> TrainResult:
    """Train one layer autoencoder; validate after every epoch; stop early; return the best epoch's model.

    Read top to bottom: set-up, then per epoch (DAgger refresh, gradient steps, evaluation on the
    fixed train and validation states, early stopping), then the best weights are restored.

    ``stop_on``: the networks whose objective decides early stopping and the epoch kept (None: ``val``).
    Validation networks of *other training runs* may never improve after the first epochs while the
    train networks keep improving; held-out networks of the train runs then pick a model that fits
    the runs it learnt from, and ``val`` still measures, every epoch, how far that carries to others.

    Example:
        >>> spec = NetworkSpec(obs_dim=11, act_dim=3, hidden=(8, 8))
        >>> nets = [Network.random(spec, seed=i) for i in range(8)]
        >>> states = np.random.default_rng(0).normal(size=(256, 11)).astype(np.float32)
        >>> tr, va = LayerData.build(nets[:6], states, 64, 0), LayerData.build(nets[6:], states, 64, 1)
        >>> res = train_layer_autoencoder(LayerAEConfig(layer=0, latent=4, hidden=16, max_epochs=3, steps_per_epoch=2), tr, va)
        >>> len(res.history), res.model.latent_dim
        (3, 4)
    """
    from tqdm import tqdm

    start = time.perf_counter()
    spec = train.stack.spec
    if cfg.layer >= spec.n_layers:
        raise ValueError(f"layer {cfg.layer} does not exist: the networks have {spec.n_layers} linear layers")
    rng = np.random.default_rng(cfg.derived_seed())
    model = LayerAutoencoder.create(cfg, spec, train.stack)  # seeds torch, fits the normalisation on train
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    std = layer_std(train.stack, cfg.layer)  # one scale per layer for both forms, so their weight MSEs compare
    uses_states = cfg.loss != "weights"
    visited = np.empty((0, spec.obs_dim), np.float32)  # DAgger buffer: states the decoded networks visited
    refreshes = 0
    best_value, best_state, best_epoch, stale = math.inf, None, 0, 0
    history: list[dict[str, Any]] = []
    n_batch = min(cfg.networks_per_batch, len(train.stack))

    bar = tqdm(range(1, cfg.max_epochs + 1), desc=cfg.name, disable=not progress, mininterval=2, leave=False)
    for epoch in bar:
        # 1. DAgger: roll out a few decoded train networks and keep the states they visit
        if cfg.loss == "dagger" and (epoch - 1) % cfg.dagger_every == 0:
            pick = rng.choice(len(train.networks), size=min(cfg.dagger_networks, len(train.networks)), replace=False)
            fresh = rollout_decoded_states(model.eval(), [train.networks[i] for i in pick],
                                           seed_offset=refreshes * cfg.dagger_networks, max_steps=cfg.dagger_max_steps)
            visited = np.concatenate([visited, fresh])[-cfg.dagger_buffer :]
            refreshes += 1

        # 2. gradient steps on minibatches of train networks, each with its own draw of states
        model.train()
        running = []
        for _ in range(cfg.steps_per_epoch):
            idx = rng.choice(len(train.stack), size=n_batch, replace=False)
            batch = train.stack.select(idx)
            if cfg.symmetry == "augment":  # the same functions in fresh coordinates: the targets do not change
                batch = permute_stacked(batch, random_hidden_permutations(spec, n_batch, rng))
            w, b = batch.layer(cfg.layer)
            w_hat, b_hat = model.reconstruct_t(w, b)
            functional = torch.zeros(())
            if uses_states:
                frac = cfg.dagger_fraction if cfg.loss == "dagger" else 0.0
                states = _draw_states(rng, train.states, visited, n_batch, cfg.states_per_batch, frac)
                functional = functional_loss(batch, cfg.layer, w_hat, b_hat, states)
            mse = weight_mse(w_hat, b_hat, w, b, std) if cfg.loss in ("weights", "both") else torch.zeros(())
            loss = _objective(cfg, functional, mse)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running.append(float(loss.detach()))

        # 3. evaluate on fixed states: the same numbers for every epoch and every loss variant
        model.eval()
        tr = evaluate_code(model, train, std)
        va = evaluate_code(model, val, std)
        val_objective = float(_objective(cfg, va["functional"], va["weight_mse"]))
        record = {
            "epoch": epoch, "train_objective": float(np.mean(running)),
            "train_functional": tr["functional"], "train_weight_mse": tr["weight_mse"],
            "val_functional": va["functional"], "val_weight_mse": va["weight_mse"], "val_objective": val_objective,
        }
        stop_objective = val_objective
        if stop_on is not None:
            ho = evaluate_code(model, stop_on, std)
            stop_objective = float(_objective(cfg, ho["functional"], ho["weight_mse"]))
            record.update(holdout_functional=ho["functional"], holdout_weight_mse=ho["weight_mse"],
                          holdout_objective=stop_objective)
        history.append({**record, "seconds": time.perf_counter() - start})
        bar.set_postfix(val=f"{val_objective:.4g}", stop=f"{stop_objective:.4g}")

        # 4. early stopping (relative improvement of min_delta) on stop_on's objective, else validation's
        if stop_objective < best_value * (1 - cfg.min_delta):
            best_value, best_epoch, stale = stop_objective, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    bar.close()

    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(model, history, best_epoch, len(history), len(history) < cfg.max_epochs,
                       time.perf_counter() - start, len(visited))


TRAINING_VERSION = 1
"""Part of every saved training's fingerprint: raise it when :func:`train_layer_autoencoder` changes what
it computes, and results saved by the older code are trained again instead of read back."""


def training_fingerprint(cfg: LayerAEConfig, train: LayerData, val: LayerData, stop_on: LayerData | None = None) -> str:
    """A hash of everything that determines :func:`train_layer_autoencoder`'s result: the config, the
    three splits' networks and states, the training code's version, and torch's version and thread
    count (a thread count splits reductions differently, which changes the last bits)."""
    config = asdict(cfg)
    if config["symmetry"] == "none":  # the fingerprints saved before the option existed stay valid
        del config["symmetry"]
    h = hashlib.sha256(json.dumps({"config": config, "training_version": TRAINING_VERSION,
                                   "torch": torch.__version__, "threads": torch.get_num_threads()}, sort_keys=True).encode())
    for data in (train, val, stop_on):
        h.update(b"none" if data is None else data.fingerprint().encode())
    return h.hexdigest()[:16]


def train_or_reuse_layer_autoencoder(
    cfg: LayerAEConfig,
    train: LayerData,
    val: LayerData,
    *,
    stop_on: LayerData | None = None,
    save_dir: str | os.PathLike,
) -> tuple[TrainResult, bool]:
    """:func:`train_layer_autoencoder`, its result saved in ``save_dir`` and read back, not trained
    again, by a later call with the same fingerprint (:func:`training_fingerprint`): a stage stopped
    part-way resumes at the first autoencoder it had not finished. Returns the result and whether it
    was read back. The result read back is the one training returned: the same weights, history
    (its ``seconds`` included) and ``wall_seconds``.

    Example:
        >>> import tempfile
        >>> spec = NetworkSpec(obs_dim=11, act_dim=3, hidden=(8, 8))
        >>> nets = [Network.random(spec, seed=i) for i in range(8)]
        >>> states = np.random.default_rng(0).normal(size=(256, 11)).astype(np.float32)
        >>> tr, va = LayerData.build(nets[:6], states, 64, 0), LayerData.build(nets[6:], states, 64, 1)
        >>> cfg, folder = LayerAEConfig(layer=0, latent=4, hidden=16, max_epochs=2, steps_per_epoch=2), tempfile.mkdtemp()
        >>> first, reused = train_or_reuse_layer_autoencoder(cfg, tr, va, save_dir=folder)
        >>> again, reused_again = train_or_reuse_layer_autoencoder(cfg, tr, va, save_dir=folder)
        >>> reused, reused_again, again.history == first.history
        (False, True, True)
    """
    path = Path(save_dir) / f"{cfg.name}-{training_fingerprint(cfg, train, val, stop_on)}.safetensors"
    if path.is_file():
        info = checkpoint_info(path)["info"]
        result = TrainResult(load_layer_autoencoder(path), info["history"], info["best_epoch"], info["epochs_run"],
                             info["stopped_early"], info["wall_seconds"], info["dagger_states"])
        return result, True
    result = train_layer_autoencoder(cfg, train, val, stop_on=stop_on)
    save_layer_autoencoder(path, result.model, info={
        "history": result.history, "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
        "stopped_early": result.stopped_early, "wall_seconds": result.wall_seconds, "dagger_states": result.dagger_states})
    return result, False


def _train_in_child(cfg: LayerAEConfig, train: LayerData, val: LayerData, stop_on: LayerData | None, save_dir: str,
                    torch_threads: int) -> tuple[TrainResult, bool]:
    from .backends import torch_threads as threads

    with threads(torch_threads):
        return train_or_reuse_layer_autoencoder(cfg, train, val, stop_on=stop_on, save_dir=save_dir)


def train_many_layer_autoencoders(
    configs: Sequence[LayerAEConfig],
    train: LayerData,
    val: LayerData,
    *,
    stop_on: LayerData | None = None,
    save_dir: str | os.PathLike,
    jobs: int = 1,
    torch_threads: int = 1,
    desc: str = "layer autoencoders",
    progress: bool = True,
    backend=None,
) -> list[tuple[TrainResult, bool]]:
    """:func:`train_or_reuse_layer_autoencoder` for every config, ``jobs`` processes at a time, each on
    ``torch_threads`` torch threads; the results (and whether each was read back) in the order of
    ``configs``.

    A model is a pure function of its config, its data and the thread count, so the results do not
    depend on ``jobs`` nor on ``backend`` (:mod:`nnae_utils.backends`; None: the current one, which
    may train them as tasks of a Ray cluster, ``save_dir`` then on a file system every node shares).
    With ``jobs=1`` on this machine they train in this process, one after another.
    """
    from .backends import resolve

    n = len(configs)
    # locally with jobs > 1: spawned processes (fork would copy torch's thread pools into the children)
    return resolve(backend).map(_train_in_child, configs, [train] * n, [val] * n, [stop_on] * n, [str(save_dir)] * n,
                                [torch_threads] * n, max_workers=jobs, progress=progress, desc=desc)


@dataclass
class SymmetryRun:
    """The main autoencoders retrained under one symmetry option, and the data they saw."""

    option: str
    reference: Network
    """The network align and canonical bring every other to (canonical: in its canonical form)."""
    train: LayerData
    val: LayerData
    stop_on: LayerData | None
    results: list[tuple[TrainResult, bool]]
    """(result, read back) per config, in the order given."""

    def rows(self) -> list[dict[str, Any]]:
        """:func:`symmetry_rows` of its autoencoders."""
        return symmetry_rows(self.option, [r for r, _ in self.results], self.train, self.val, self.stop_on)


def train_symmetry_options(
    options: Sequence[str],
    configs: Sequence[LayerAEConfig],
    nets: Mapping[str, Sequence[Network]],
    pools: Mapping[str, np.ndarray],
    reference: Network,
    *,
    eval_states: int,
    seed: int,
    save_dir: str | os.PathLike,
    jobs: int = 1,
    torch_threads: int = 1,
    progress: bool = True,
    groups: Mapping[str, Sequence[Any]] | None = None,
) -> dict[str, SymmetryRun]:
    """Train ``configs`` (stage 2's main autoencoders) once per symmetry option, on the same networks and
    states brought to the option's form: ``{option: SymmetryRun}``.

    ``nets``: 'train', 'validation' and, when early stopping is on held-out train snapshots, 'holdout'
    networks; ``pools``: the 'train' and 'validation' state pools. The data are built as stage 2 builds its
    own (eval-state seeds ``seed``, ``seed + 1``, ``seed + 2``), so the 'none' option's autoencoders are
    the main ones, read back from ``save_dir`` rather than trained again. ``groups``: per split, the
    training run of each network (align_runs needs it; a run's held-out snapshots share its label).
    """
    runs = {}
    for option in options:
        if option == "align_runs" and groups is None:
            raise ValueError("align_runs needs groups: the training run of every network")
        if option == "align_runs":  # one permutation per run, over all its splits (train and held-out snapshots)
            labels = [(s, i) for s, v in nets.items() for i in range(len(v))]
            aligned = align_groups([nets[s][i] for s, i in labels], reference, [groups[s][i] for s, i in labels])
            moved = {s: [n for (t, _), n in zip(labels, aligned) if t == s] for s in nets if nets[s]}
        else:
            moved = {s: symmetry_networks(option, v, reference) for s, v in nets.items() if v}
        train = LayerData.build(moved["train"], pools["train"], eval_states, seed=seed)
        val = LayerData.build(moved["validation"], pools["validation"], eval_states, seed=seed + 1)
        stop_on = LayerData.build(moved["holdout"], pools["train"], eval_states, seed=seed + 2) if "holdout" in moved else None
        cfgs = [replace(c, symmetry=option) for c in configs]
        results = train_many_layer_autoencoders(cfgs, train, val, stop_on=stop_on, save_dir=save_dir, jobs=jobs,
                                                torch_threads=torch_threads, desc=f"symmetry: {option}", progress=progress)
        runs[option] = SymmetryRun(option, symmetry_reference(option, reference), train, val, stop_on, results)
    return runs


# --------------------------------------------------------------------------- the stage's experiments


@dataclass
class PlannedRun:
    """One autoencoder to train, and why: ``main`` (curves, checkpoints), ``sweep`` and/or ``ablation``."""

    config: LayerAEConfig
    roles: set[str]
    requested_ratios: list[float]
    achieved_ratio: float

    @property
    def reachable(self) -> bool:
        """Whether the form reaches every ratio this run was planned for (the token form stops at in + 1)."""
        return all(self.achieved_ratio >= r * (1 - 1e-9) for r in self.requested_ratios)


def plan_experiments(spec: NetworkSpec, *, main_ratio: float, sweep_ratios: Sequence[float], max_flat_latent: int,
                     flat_hidden: int, token_hidden: int, **train_kwargs: Any) -> tuple[list[PlannedRun], list[dict[str, Any]]]:
    """Every autoencoder the stage trains, each once, and the sweep runs skipped for size.

    - main: both forms, every layer, functional loss, latent from ``main_ratio``;
    - ablation: the same autoencoders trained with the other losses ('weights', 'both', 'dagger');
    - sweep: the functional loss at every ratio of ``sweep_ratios``.

    Runs that coincide (e.g. the token form's ratio capped at in + 1) are trained once, with all their roles.

    Example:
        >>> spec = NetworkSpec(obs_dim=11, act_dim=3, hidden=(64, 64))
        >>> runs, skipped = plan_experiments(spec, main_ratio=10, sweep_ratios=[10, 32], max_flat_latent=512,
        ...                                  flat_hidden=256, token_hidden=64)
        >>> [(r.config.latent, round(r.achieved_ratio, 1), r.reachable) for r in runs
        ...  if r.config.layer == 0 and r.config.form == "token" and r.config.loss == "functional"]
        [(1, 12.0, False)]
    """
    runs: dict[str, PlannedRun] = {}
    skipped: list[dict[str, Any]] = []

    def add(layer: int, form: str, loss: str, ratio: float, role: str) -> None:
        k, achieved = latent_for_ratio(spec, layer, form, ratio)
        if role == "sweep" and form == "flat" and k > max_flat_latent:
            skipped.append({"layer": layer, "form": form, "ratio": ratio, "latent": k})
            return
        hidden = flat_hidden if form == "flat" else token_hidden
        cfg = LayerAEConfig(layer=layer, form=form, latent=k, hidden=hidden, loss=loss, **train_kwargs)
        run = runs.setdefault(cfg.name, PlannedRun(cfg, set(), [], achieved))
        run.roles.add(role)
        if ratio not in run.requested_ratios:
            run.requested_ratios.append(ratio)

    for layer in range(spec.n_layers):
        for form in FORMS:
            add(layer, form, "functional", main_ratio, "main")
            for loss in LOSSES:
                add(layer, form, loss, main_ratio, "ablation")
            for ratio in sweep_ratios:
                add(layer, form, "functional", ratio, "sweep")
    return list(runs.values()), skipped


# --------------------------------------------------------------------------- on-policy check


def onpolicy_functional_loss(code: LayerCode, nets: Sequence[Network], *, max_steps: int, states_per_network: int = 256,
                             seed_offset: int = 500_000, seed: int = 0) -> np.ndarray:
    """Per-network functional loss on the states each *decoded* network visits itself (one episode).

    The dataset's states are where the input networks go; a decoded network that errs drifts
    elsewhere, where its errors may be larger. This measures the loss there.
    """
    from .rollouts import evaluate
    from .seeds import eval_seeds

    decoded = [decode_network(n, code) for n in nets]
    seeds = eval_seeds("states", len(decoded), offset=DAGGER_SEED_OFFSET + seed_offset).reshape(-1, 1)
    result = evaluate(decoded, seeds, record="observations", max_steps=max_steps, nthread=1)
    owner = result.observation_owner[:, 0]
    rng = np.random.default_rng(seed)
    states = np.stack([
        result.observations[np.flatnonzero(owner == p)][rng.integers(0, int((owner == p).sum()), states_per_network)]
        for p in range(len(nets))
    ]).astype(np.float32)
    stack = StackedNetworks.from_networks(nets)
    wd, bd = reconstruct_stack(code, stack)
    with torch.no_grad():
        return functional_loss(stack, code.layer, wd, bd, states, reduce=False).numpy()


# --------------------------------------------------------------------------- states per split


def split_states(states: np.ndarray, is_random: np.ndarray, owner: np.ndarray, owner_split: Sequence[str],
                 seed: int) -> dict[str, np.ndarray]:
    """States for training and for validation, so that validation states come from held-out networks.

    Visited states go to the split of the network that visited them (``owner`` indexes
    ``owner_split``); random states are shuffled and halved between train and validation. A split
    left without visited states (e.g. a shipped dataset without owners) gets the whole dataset.
    """
    rng = np.random.default_rng(seed)
    owner_split = np.asarray(list(owner_split) + ["random"])
    split_of = owner_split[np.where(owner < 0, len(owner_split) - 1, owner)]
    random_idx = rng.permutation(np.flatnonzero(is_random))
    halves = {"train": random_idx[: len(random_idx) // 2], "validation": random_idx[len(random_idx) // 2 :]}
    out = {}
    for s in ("train", "validation"):
        visited = np.flatnonzero((split_of == s) & ~is_random)
        out[s] = states[np.concatenate([visited, halves[s]])] if len(visited) else states
    return {k: np.asarray(v, np.float32) for k, v in out.items()}


# --------------------------------------------------------------------------- stage 2's data


def run_labels(zoo: Zoo) -> list[str]:
    """Each zoo network's training run, in the zoo's order: ``run<r>`` for a TD3 snapshot (the snapshots of
    one run descend from one initialisation and share its order of hidden units), its own id for a DAgger
    student (an initialisation of its own)."""
    label = {r.id: f"run{r.run}" if r.kind == "td3_snapshot" else r.id for r in zoo.frame().itertuples()}
    return [label[r["id"]] for r in zoo.records]


@dataclass
class StageData:
    """Stage 2's networks and states, split as notebook 02 and the stage-2 benchmarks train on them.

    The train networks are fitted, the validation networks (other training runs) measured every epoch;
    with ``stop_on: train_holdout`` every ``holdout_every``-th snapshot of each train run is held out of
    training and decides early stopping. State pools follow the networks' splits (:func:`split_states`).
    """

    zoo: Zoo
    dataset: StateDataset
    pools: dict[str, np.ndarray]
    """'train' and 'validation' states of ``dataset``."""
    holdout_ids: set[str]
    """The train snapshots held out of training (empty with ``stop_on: validation``)."""
    trained: dict[str, list[int]]
    """Per split ('train', 'validation'): indices into the zoo of the networks it trains or validates on."""
    labels: list[str]
    """Per zoo network: its training run (:func:`run_labels`)."""

    @classmethod
    def load(cls, data_dir: str | os.PathLike, *, seed: int, holdout_every: int | None) -> "StageData":
        """Stage 1's zoo and state dataset from ``data_dir``; the random states shared out between the splits
        with ``seed``; ``holdout_every``: every so many snapshots of each train run held out of training
        (:meth:`~nnae_utils.zoo.Zoo.holdout_snapshots`), None for none."""
        zoo = load_zoo(Path(data_dir) / "zoo")
        dataset = StateDataset.load(Path(data_dir) / "states.npz")
        split_of = zoo.frame().set_index("id")["split"]
        pools = split_states(dataset.states, dataset.is_random, dataset.owner,
                             [split_of[r["id"]] for r in zoo.records], seed=seed)
        holdout_ids = set(zoo.holdout_snapshots(holdout_every)) if holdout_every else set()
        trained = {s: [i for i, r in enumerate(zoo.records) if split_of[r["id"]] == s and r["id"] not in holdout_ids]
                   for s in ("train", "validation")}
        return cls(zoo, dataset, pools, holdout_ids, trained, run_labels(zoo))

    @property
    def spec(self) -> NetworkSpec:
        return self.zoo.networks[0].spec

    @property
    def nets(self) -> dict[str, list[Network]]:
        """{'train', 'validation'}: the networks each split trains or validates on."""
        return {s: [self.zoo.networks[i] for i in idx] for s, idx in self.trained.items()}

    @property
    def held(self) -> list[Network]:
        """The held-out train snapshots, which decide early stopping with ``stop_on: train_holdout``."""
        return [n for n, r in zip(self.zoo.networks, self.zoo.records) if r["id"] in self.holdout_ids]

    def layer_data(self, eval_states: int, seed: int) -> tuple[LayerData, LayerData, LayerData | None]:
        """Train, validation and held-out-snapshot :class:`LayerData` (None without held-out snapshots),
        with the eval-state seeds ``seed``, ``seed + 1``, ``seed + 2`` that :func:`train_symmetry_options` uses too."""
        train = LayerData.build(self.nets["train"], self.pools["train"], eval_states, seed=seed)
        val = LayerData.build(self.nets["validation"], self.pools["validation"], eval_states, seed=seed + 1)
        held = self.held
        return train, val, (LayerData.build(held, self.pools["train"], eval_states, seed=seed + 2) if held else None)

    def groups(self) -> dict[str, list[str]]:
        """The training run of every network of 'train', 'validation' and 'holdout' (align_runs aligns by it)."""
        out = {s: [self.labels[i] for i in idx] for s, idx in self.trained.items()}
        out["holdout"] = [lab for lab, r in zip(self.labels, self.zoo.records) if r["id"] in self.holdout_ids]
        return out

    def reference(self) -> Network:
        """The best network stage 2 trains on (held-out snapshots left out): the reference of align and canonical."""
        return self.zoo.networks[max(self.trained["train"], key=lambda i: self.zoo.records[i]["return_mean"])]

    def runs(self, split: str, trainable: bool = False) -> list[str]:
        """The run labels of a split; ``trainable``: only runs with a network to train on (a student is a run
        of its own, and may be all held out)."""
        ids = set(self.zoo.ids(split))
        return sorted({lab for lab, r in zip(self.labels, self.zoo.records)
                       if r["id"] in ids and not (trainable and r["id"] in self.holdout_ids)})

    def run_numbers(self) -> dict[str, list[int]]:
        """{'train', 'validation'}: the TD3 run numbers of each split's networks."""
        frame = self.zoo.frame()
        return {s: sorted(int(r) for r in frame[frame.split == s]["run"].unique()) for s in self.trained}

    def describe(self) -> str:
        """One line: the architecture, each split's networks, runs and states, and what decides early stopping."""
        runs = self.run_numbers()
        held = len(self.holdout_ids)
        return (f"architecture {self.spec.layer_sizes}, {self.spec.activation}; "
                + "; ".join(f"{s}: {len(idx)} networks from runs {runs[s]}, {len(self.pools[s])} states"
                            for s, idx in self.trained.items()) + "; "
                + (f"early stopping on {held} held-out train-run networks" if held else "early stopping on the validation networks"))
