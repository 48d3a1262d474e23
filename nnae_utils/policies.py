"""Policy networks and the suite's one open network file format.

Every network the suite reports a score for is stored as one ``<id>.safetensors`` file
(float32 tensors + string metadata) beside an ``index.json`` that records its score and
provenance. Nothing but ``safetensors``, ``numpy`` and ``gymnasium`` is needed to rebuild and
re-score a network: see ``scripts/rescore_network.py`` and the book's "Network format" page.

Tensors (layers counted from the input side, as the paper counts them)::

    layers.<i>.weight        (out, in), as in torch.nn.Linear
    layers.<i>.bias          (out,)
    layers.<i>.norm.weight   optional LayerNorm on hidden layer i
    layers.<i>.norm.bias
    obs_mean, obs_std        optional input normalisation: x = (obs - mean) / std

Metadata: ``format`` = ``nnae-network``, ``format_version``, ``activation`` (relu | tanh | elu),
``env_id``, ``obs_dim``, ``act_dim``, ``hidden`` (JSON list), ``layer_norm`` (none | before |
after the activation), ``layer_norm_eps``, ``output_activation`` = ``tanh``.

Example:
    >>> spec = NetworkSpec(obs_dim=11, act_dim=3, hidden=(64, 64))
    >>> net = Network.random(spec, seed=0)
    >>> net.act(np.zeros((2, 11))).shape
    (2, 3)
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .io import atomic_write_path, write_json

FORMAT_NAME = "nnae-network"
FORMAT_VERSION = "1"
ACTIVATIONS = ("relu", "tanh", "elu")
LAYER_NORM_POSITIONS = ("none", "before", "after")
INDEX_FILE = "index.json"
INDEX_REQUIRED_FIELDS = ("id", "return_mean", "return_std", "episodes", "eval_seeds", "max_episode_steps", "provenance")


class NetworkFormatError(ValueError):
    """A network file or index that is missing, truncated, corrupt or inconsistent."""


@dataclass(frozen=True)
class NetworkSpec:
    """Architecture of an MLP actor: everything needed to rebuild it besides its tensors."""

    obs_dim: int
    """Observation size (11 for Hopper-v5)."""
    act_dim: int
    """Action size (3 for Hopper-v5); the output layer is followed by tanh."""
    hidden: tuple[int, ...] = (64, 64)
    """Widths of the hidden layers, from the input side."""
    activation: str = "relu"
    """Hidden activation: relu, tanh or elu."""
    layer_norm: str = "none"
    """LayerNorm on each hidden layer: none, before or after the activation (CERL: after)."""
    layer_norm_eps: float = 1e-5
    """LayerNorm epsilon."""
    obs_norm: bool = False
    """Whether the network carries ``obs_mean`` / ``obs_std`` input normalisation."""
    env_id: str = "Hopper-v5"
    """The gymnasium environment the network acts in."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if self.obs_dim <= 0 or self.act_dim <= 0:
            raise ValueError(f"obs_dim and act_dim must be positive, got {self.obs_dim}, {self.act_dim}")
        if not self.hidden or any(h <= 0 for h in self.hidden):
            raise ValueError(f"hidden sizes must be a non-empty list of positive ints, got {self.hidden}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.layer_norm not in LAYER_NORM_POSITIONS:
            raise ValueError(f"layer_norm must be one of {LAYER_NORM_POSITIONS}, got {self.layer_norm!r}")

    @property
    def layer_sizes(self) -> list[int]:
        """``[obs_dim, *hidden, act_dim]``."""
        return [self.obs_dim, *self.hidden, self.act_dim]

    @property
    def n_layers(self) -> int:
        """Number of linear layers (hidden layers + output layer)."""
        return len(self.hidden) + 1

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Name -> shape of every tensor a network with this spec holds, in file order."""
        sizes = self.layer_sizes
        shapes: dict[str, tuple[int, ...]] = {}
        for i in range(self.n_layers):
            shapes[f"layers.{i}.weight"] = (sizes[i + 1], sizes[i])
            shapes[f"layers.{i}.bias"] = (sizes[i + 1],)
            if self.layer_norm != "none" and i < len(self.hidden):
                shapes[f"layers.{i}.norm.weight"] = (sizes[i + 1],)
                shapes[f"layers.{i}.norm.bias"] = (sizes[i + 1],)
        if self.obs_norm:
            shapes["obs_mean"] = (self.obs_dim,)
            shapes["obs_std"] = (self.obs_dim,)
        return shapes

    def layer_param_count(self, i: int) -> int:
        """Weights + biases of linear layer i (what a layer autoencoder compresses)."""
        sizes = self.layer_sizes
        return sizes[i + 1] * sizes[i] + sizes[i + 1]

    @property
    def n_params(self) -> int:
        return int(sum(math.prod(s) for s in self.tensor_shapes().values()))

    def to_metadata(self) -> dict[str, str]:
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "activation": self.activation,
            "env_id": self.env_id,
            "obs_dim": str(self.obs_dim),
            "act_dim": str(self.act_dim),
            "hidden": json.dumps(list(self.hidden)),
            "layer_norm": self.layer_norm,
            "layer_norm_eps": repr(float(self.layer_norm_eps)),
            "obs_norm": "true" if self.obs_norm else "false",
            "output_activation": "tanh",
        }

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str]) -> "NetworkSpec":
        if meta.get("format") != FORMAT_NAME:
            raise NetworkFormatError(f"not an {FORMAT_NAME} file (metadata format={meta.get('format')!r})")
        if meta.get("format_version") != FORMAT_VERSION:
            raise NetworkFormatError(f"unsupported format_version {meta.get('format_version')!r}")
        if meta.get("output_activation", "tanh") != "tanh":
            raise NetworkFormatError("only tanh output activation is defined by this format")
        try:
            return cls(
                obs_dim=int(meta["obs_dim"]),
                act_dim=int(meta["act_dim"]),
                hidden=tuple(json.loads(meta["hidden"])),
                activation=meta["activation"],
                layer_norm=meta.get("layer_norm", "none"),
                layer_norm_eps=float(meta.get("layer_norm_eps", "1e-5")),
                obs_norm=meta.get("obs_norm", "false") == "true",
                env_id=meta["env_id"],
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise NetworkFormatError(f"bad network metadata: {exc}") from exc


def _activation(name: str, x: np.ndarray) -> np.ndarray:
    if name == "relu":
        return np.maximum(x, 0.0)
    if name == "tanh":
        return np.tanh(x)
    # elu, alpha = 1 as torch.nn.ELU
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0.0)))


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = x.var(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def forward(spec: NetworkSpec, params: Mapping[str, np.ndarray], obs: np.ndarray) -> np.ndarray:
    """Actions of one network (params unbatched) or of a stack of P networks.

    With stacked params (an extra leading axis P on every tensor), ``obs`` has shape (P, N, obs_dim)
    and the result (P, N, act_dim). Computation is in float32, as the tensors are stored.
    """
    x = np.asarray(obs, dtype=np.float32)
    if spec.obs_norm:
        mean, std = params["obs_mean"], params["obs_std"]
        if mean.ndim == 2:  # stacked
            mean, std = mean[:, None, :], std[:, None, :]
        x = (x - mean) / std
    for i in range(spec.n_layers):
        w, b = params[f"layers.{i}.weight"], params[f"layers.{i}.bias"]
        if w.ndim == 3:
            x = np.matmul(x, w.transpose(0, 2, 1)) + b[:, None, :]
        else:
            x = x @ w.T + b
        if i == spec.n_layers - 1:
            return np.tanh(x)
        if spec.layer_norm == "before":
            x = _norm_stacked(spec, params, i, x)
        x = _activation(spec.activation, x)
        if spec.layer_norm == "after":
            x = _norm_stacked(spec, params, i, x)
    raise AssertionError("unreachable")


def _norm_stacked(spec: NetworkSpec, params: Mapping[str, np.ndarray], i: int, x: np.ndarray) -> np.ndarray:
    g, b = params[f"layers.{i}.norm.weight"], params[f"layers.{i}.norm.bias"]
    if g.ndim == 2:
        g, b = g[:, None, :], b[:, None, :]
    return _layer_norm(x, g, b, spec.layer_norm_eps)


@dataclass
class Network:
    """One policy network: its architecture and float32 tensors (numpy), in the file's naming."""

    spec: NetworkSpec
    params: dict[str, np.ndarray]
    extra_metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        expected = self.spec.tensor_shapes()
        missing = set(expected) - set(self.params)
        unknown = set(self.params) - set(expected)
        if missing or unknown:
            raise NetworkFormatError(
                f"tensors do not match the spec: missing {sorted(missing)}, unexpected {sorted(unknown)}"
            )
        for name, shape in expected.items():
            arr = np.asarray(self.params[name], dtype=np.float32)
            if arr.shape != shape:
                raise NetworkFormatError(f"tensor {name} has shape {arr.shape}, spec says {shape}")
            if not np.all(np.isfinite(arr)):
                raise NetworkFormatError(f"tensor {name} holds non-finite values")
            self.params[name] = arr
        self.params = {name: self.params[name] for name in expected}

    @classmethod
    def random(cls, spec: NetworkSpec, seed: int = 0) -> "Network":
        """A network initialised as torch.nn.Linear does (uniform +-1/sqrt(fan_in))."""
        rng = np.random.default_rng(seed)
        params: dict[str, np.ndarray] = {}
        for name, shape in spec.tensor_shapes().items():
            if name.endswith("norm.weight") or name == "obs_std":
                params[name] = np.ones(shape, np.float32)
            elif name.endswith("norm.bias") or name == "obs_mean":
                params[name] = np.zeros(shape, np.float32)
            else:
                i = int(name.split(".")[1])
                bound = 1.0 / math.sqrt(spec.layer_sizes[i])
                params[name] = rng.uniform(-bound, bound, size=shape).astype(np.float32)
        return cls(spec, params)

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Deterministic actions in [-1, 1] for a batch (N, obs_dim) or one observation."""
        return forward(self.spec, self.params, obs)

    def layer(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(weight, bias) of linear layer i, counted from the input side."""
        return self.params[f"layers.{i}.weight"], self.params[f"layers.{i}.bias"]

    def with_layer(self, i: int, weight: np.ndarray, bias: np.ndarray) -> "Network":
        """A copy with linear layer i replaced (e.g. by its decoded version)."""
        params = dict(self.params)
        params[f"layers.{i}.weight"] = np.asarray(weight, np.float32)
        params[f"layers.{i}.bias"] = np.asarray(bias, np.float32)
        return Network(self.spec, params, dict(self.extra_metadata))

    def flat(self) -> np.ndarray:
        """All tensors concatenated in file order (the weight-space genome)."""
        return np.concatenate([p.ravel() for p in self.params.values()])

    @classmethod
    def from_flat(cls, spec: NetworkSpec, flat: np.ndarray) -> "Network":
        flat = np.asarray(flat, np.float32)
        if flat.shape != (spec.n_params,):
            raise ValueError(f"flat vector has shape {flat.shape}, spec needs ({spec.n_params},)")
        params, offset = {}, 0
        for name, shape in spec.tensor_shapes().items():
            n = math.prod(shape)
            params[name] = flat[offset : offset + n].reshape(shape).copy()
            offset += n
        return cls(spec, params)


def save_network(path: str | os.PathLike, net: Network) -> Path:
    """Write ``net`` atomically (:func:`nnae_utils.io.atomic_write_path`: a crash never leaves a truncated
    file; mode 0644, readable by whoever re-scores it)."""
    from safetensors.numpy import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"network files end in .safetensors, got {path.name}")
    meta = {**net.extra_metadata, **net.spec.to_metadata()}
    tensors = {k: np.ascontiguousarray(v, np.float32) for k, v in net.params.items()}
    return atomic_write_path(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_network(path: str | os.PathLike) -> Network:
    """Read and validate a network file; raise :class:`NetworkFormatError` if it is unusable."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise NetworkFormatError(f"network file not found: {path}")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = dict(f.metadata() or {})
            params = {k: f.get_tensor(k) for k in f.keys()}
    except NetworkFormatError:
        raise
    except Exception as exc:  # safetensors raises its own error types for truncated/corrupt headers
        raise NetworkFormatError(f"cannot read network file {path}: {exc}") from exc
    spec = NetworkSpec.from_metadata(meta)
    for name, arr in params.items():
        if arr.dtype != np.float32:
            raise NetworkFormatError(f"{path}: tensor {name} is {arr.dtype}, the format requires float32")
    extra = {k: v for k, v in meta.items() if k not in spec.to_metadata()}
    try:
        return Network(spec, params, extra)
    except NetworkFormatError as exc:
        raise NetworkFormatError(f"{path}: {exc}") from exc


def stack_params(networks: Sequence[Network]) -> tuple[NetworkSpec, dict[str, np.ndarray]]:
    """Stack same-architecture networks: every tensor gets a leading axis of size P."""
    if not networks:
        raise ValueError("need at least one network")
    spec = networks[0].spec
    for net in networks[1:]:
        if net.spec != spec:
            raise ValueError(f"cannot stack networks of different architectures: {net.spec} vs {spec}")
    return spec, {name: np.stack([n.params[name] for n in networks]) for name in spec.tensor_shapes()}


def layer_vector(net: Network, layer: int) -> np.ndarray:
    """Layer ``layer``'s weights and bias as one vector ``concat(W.ravel(), b)`` (float32): the flat
    autoencoders' input and the centre of the subspace genomes."""
    weight, bias = net.layer(layer)
    return np.concatenate([weight.ravel(), bias]).astype(np.float32)


def action_distance(parents: Sequence[Network], children: Sequence[Network], states: np.ndarray) -> np.ndarray:
    """Per pair ``(parents[i], children[i])``, the mean over ``states`` of the L2 distance between the two
    networks' actions: the paper's functional loss, which measures a mutation (parent and child), a
    decoded network (input and decoded) or a migrant (actor and its decoded code). NaN without states.

    Example:
        >>> spec = NetworkSpec(11, 3, (8,))
        >>> a, b = Network.random(spec, seed=0), Network.random(spec, seed=1)
        >>> states = np.zeros((4, 11), np.float32)
        >>> d = action_distance([a, a], [a, b], states)
        >>> float(d[0]), bool(d[1] > 0), action_distance([a], [b], states[:0])
        (0.0, True, array([nan]))
    """
    if len(states) == 0:
        return np.full(len(parents), np.nan)
    spec, pa = stack_params(list(parents))
    _, ch = stack_params(list(children))
    x = np.broadcast_to(np.asarray(states, np.float32), (len(parents), *np.shape(states)))
    ya, yc = forward(spec, pa, x), forward(spec, ch, x)
    return np.linalg.norm(yc.astype(np.float64) - ya, axis=-1).mean(axis=-1)


# --------------------------------------------------------------------------- index.json


def write_index(directory: str | os.PathLike, records: Iterable[Mapping[str, Any]]) -> Path:
    """Write ``index.json`` (a list of records, one per network file in ``directory``)."""
    directory = Path(directory)
    records = [dict(r) for r in records]
    for rec in records:
        missing = [k for k in INDEX_REQUIRED_FIELDS if k not in rec]
        if missing:
            raise ValueError(f"index record {rec.get('id')!r} lacks {missing}")
        if not (directory / f"{rec['id']}.safetensors").is_file():
            raise FileNotFoundError(f"index record {rec['id']!r} has no file {rec['id']}.safetensors in {directory}")
    return write_json(directory / INDEX_FILE, records)


def read_index(directory: str | os.PathLike) -> list[dict[str, Any]]:
    """Read ``index.json`` from a folder of network files, checking that every file exists."""
    directory = Path(directory)
    path = directory / INDEX_FILE
    if not path.is_file():
        raise NetworkFormatError(f"no {INDEX_FILE} in {directory}")
    try:
        records = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise NetworkFormatError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(records, list):
        raise NetworkFormatError(f"{path} must hold a list of records")
    for rec in records:
        if not isinstance(rec, dict) or "id" not in rec:
            raise NetworkFormatError(f"{path}: every record needs an 'id'")
        if not (directory / f"{rec['id']}.safetensors").is_file():
            raise NetworkFormatError(f"{path}: record {rec['id']!r} has no network file")
    return records


def load_networks(directory: str | os.PathLike, ids: Iterable[str] | None = None) -> list[Network]:
    """Load the networks of a folder (all of its index, or the given ids) in index order."""
    directory = Path(directory)
    wanted = [r["id"] for r in read_index(directory)] if ids is None else list(ids)
    return [load_network(directory / f"{i}.safetensors") for i in wanted]



# --------------------------------------------------------------------------- torch actor


def _torch():
    import torch  # deferred: numpy-only users (evaluation, re-scoring) never pay for importing torch

    return torch


def mlp(n_in: int, hidden: Sequence[int], n_out: int, activation: str = "relu"):
    """A plain torch MLP ``Linear -> activation -> ... -> Linear`` with ``hidden`` widths (TD3's critics
    with ReLU, the layer autoencoders' encoders and decoders with ELU).

    Example:
        >>> mlp(4, [8], 2, "elu")
        Sequential(
          (0): Linear(in_features=4, out_features=8, bias=True)
          (1): ELU(alpha=1.0)
          (2): Linear(in_features=8, out_features=2, bias=True)
        )
    """
    nn = _torch().nn
    act = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU}[activation]
    layers = []
    for h in hidden:
        layers += [nn.Linear(n_in, h), act()]
        n_in = h
    layers.append(nn.Linear(n_in, n_out))
    return nn.Sequential(*layers)


def make_actor(spec: NetworkSpec):
    """A torch MLP actor for ``spec`` whose ``state_dict`` names are the file format's names.

    Linear -> [LayerNorm] -> activation -> [LayerNorm] ... -> Linear -> tanh.

    Example:
        >>> spec = NetworkSpec(obs_dim=11, act_dim=3, hidden=(8, 8))
        >>> actor = make_actor(spec)
        >>> net = actor_to_network(spec, actor)
        >>> sorted(net.params)[:2]
        ['layers.0.bias', 'layers.0.weight']
    """
    torch = _torch()
    nn = torch.nn

    class Layer(nn.Module):
        def __init__(self, n_in: int, n_out: int, norm: bool):
            super().__init__()
            self.weight = nn.Parameter(torch.empty(n_out, n_in))
            self.bias = nn.Parameter(torch.empty(n_out))
            bound = 1.0 / math.sqrt(n_in)
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # torch.nn.Linear's initialisation
            nn.init.uniform_(self.bias, -bound, bound)
            self.norm = nn.LayerNorm(n_out, eps=spec.layer_norm_eps) if norm else None

    class Actor(nn.Module):
        def __init__(self):
            super().__init__()
            sizes = spec.layer_sizes
            self.spec = spec
            self.layers = nn.ModuleList(
                Layer(sizes[i], sizes[i + 1], spec.layer_norm != "none" and i < len(spec.hidden))
                for i in range(spec.n_layers)
            )
            if spec.obs_norm:
                self.register_buffer("obs_mean", torch.zeros(spec.obs_dim))
                self.register_buffer("obs_std", torch.ones(spec.obs_dim))
            self.act_fn = {"relu": torch.relu, "tanh": torch.tanh, "elu": torch.nn.functional.elu}[spec.activation]

        def forward(self, obs):
            x = obs
            if spec.obs_norm:
                x = (x - self.obs_mean) / self.obs_std
            for i, layer in enumerate(self.layers):
                x = torch.nn.functional.linear(x, layer.weight, layer.bias)
                if i == len(self.layers) - 1:
                    return torch.tanh(x)
                if spec.layer_norm == "before":
                    x = layer.norm(x)
                x = self.act_fn(x)
                if spec.layer_norm == "after":
                    x = layer.norm(x)
            return x

    return Actor()


def actor_to_network(spec: NetworkSpec, actor, extra_metadata: Mapping[str, str] | None = None) -> Network:
    """Snapshot a torch actor built by :func:`make_actor` as a :class:`Network`."""
    params = {k: v.detach().cpu().numpy().astype(np.float32, copy=True) for k, v in actor.state_dict().items()}
    return Network(spec, params, dict(extra_metadata or {}))


def network_to_actor(net: Network):
    """A torch actor holding ``net``'s tensors."""
    torch = _torch()
    actor = make_actor(net.spec)
    actor.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in net.params.items()})
    return actor
