"""Layer autoencoders: one per linear layer of the zoo's policies, trained with the paper's functional loss.

The paper compresses a policy network layer by layer. The autoencoder of layer ``i`` sees that
layer's weights and biases only; every other layer of the network stays as it was. It is trained
with a *functional* loss: the distance between the actions of the input network and the actions
of the same network with layer ``i`` replaced by its decoded version, on a batch of states.

Two encoder forms are trained by stage 2, behind one interface, and a third is available:

``flat`` (the paper's form)
    the layer flattened into one vector ``concat(W.ravel(), b)`` of ``out * (in + 1)`` numbers, an
    MLP encoder to a latent of ``k`` numbers, an MLP decoder back. Its size grows with the layer.
``token`` (scalable, SANE-like)
    each output neuron's incoming weights and bias, ``concat(W[r], b[r])`` (``in + 1`` numbers),
    is one token. One small encoder and decoder, shared by all neurons, map a token to ``k`` numbers
    and back; the layer's latent is the ``out x k`` codes of its tokens. Its size does not depend on
    the layer's width, and every network gives ``out`` training examples. Its compression ratio is
    ``(in + 1) / k``, so it can never pass ``in + 1``: 12x on a Hopper network's first layer.

``equivariant`` (DWSNets / neural-functional style, :class:`EquivariantCodec`; not trained by the stage)
    one code vector per hidden unit, on each side of the layer whose units are hidden, from
    permutation-equivariant mixing of the weight matrix's entries, decoded by ``W[r, c] = f(u_r, v_c)``:
    permuting a network's hidden units permutes its code alike and its decoded layer alike.

A per-layer PCA (:class:`PCALayerCode`) is the linear baseline with the same interface (flat and token).

The functional loss, for ``P`` networks at once (stacked tensors, batched matmuls)::

    L = mean over networks p and states s of || y_D(p, s) - y_I(p, s) ||_2

where the norm runs over the action dimensions. Layers before ``i`` are the same in both networks,
so their activations are computed once, without gradients (:func:`layer_input`).

What later stages use (stage 3 decodes networks, stage 4 evolves latent codes)::

    codes = load_layer_codes(stage2_dir, form="flat")          # {layer: LayerAutoencoder}
    pca = load_layer_codes(stage2_dir, form="flat", kind="pca")  # {layer: PCALayerCode}, same interface
    z = codes[1].encode(net)                                    # (latent_dim,); a list of nets -> (P, latent_dim)
    weight, bias = codes[1].decode(z)                           # numpy, (out, in) and (out,)
    one = decode_network(net, codes[1])                         # layer 1 replaced by its decoded version
    every = decode_network(net, codes)                          # every layer replaced
    child = network_from_latents(net, codes, {1: z + noise})    # a latent genome on a base network

Hidden units have no order (and ReLU units no scale) of their own; :data:`SYMMETRIES` names how an
autoencoder treats that: ``none``, ``align`` (weight matching to a reference; ``align_runs``: one
permutation per training run), ``augment`` (fresh random
permutations in every minibatch) or ``canonical`` (:func:`canonical_form`). Stage 2 saves each option's
autoencoders under ``symmetry/<option>/`` with the reference they use; a network is brought to the
option's form before they encode it:
``symmetry_networks(option, [net], load_network(stage2_dir / f"symmetry/{option}/reference.safetensors"))``
(for canonical, the saved reference is already canonical, and canonical_form of it is itself).

Example:
    >>> from nnae_utils.policies import Network, NetworkSpec
    >>> spec = NetworkSpec(obs_dim=11, act_dim=3, hidden=(8, 8))
    >>> nets = [Network.random(spec, seed=s) for s in range(6)]
    >>> cfg = LayerAEConfig(layer=1, form="token", latent=3, hidden=16, max_epochs=2, steps_per_epoch=2)
    >>> ae = LayerAutoencoder.create(cfg, spec, StackedNetworks.from_networks(nets))
    >>> z = ae.encode(nets)
    >>> z.shape, ae.latent_dim, round(ae.compression_ratio, 2)
    ((6, 24), 24, 3.0)
    >>> weight, bias = ae.decode(z[0])
    >>> weight.shape, bias.shape
    ((8, 8), (8,))
    >>> decode_network(nets[0], ae).spec == spec
    True
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import tempfile
import time
import zlib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol, Sequence

import numpy as np
import torch
from torch import nn

from .policies import Network, NetworkSpec, stack_params
from .stages import LayerAEParams

FORMS = ("flat", "token")
"""Encoder forms stage 2 trains everywhere: the paper's flattened layer, or one token per output neuron."""
AE_FORMS = FORMS + ("equivariant",)
"""Every form a layer autoencoder can take: also ``equivariant`` (:class:`EquivariantCodec`), which PCA does
not have and the stage does not train (``benchmarks/symmetry_options.py --forms`` measures it)."""
LOSSES = ("functional", "weights", "both", "dagger")
"""Training losses: the paper's functional loss; weight reconstruction (normalised MSE) only; their
sum; the functional loss on dataset states mixed with states the decoded networks visit (DAgger-style)."""
SYMMETRIES = LayerAEParams.SYMMETRIES
"""Ways of handling the arbitrary order (and ReLU scale) of hidden units, checked in one place (the stage's
parameters): ``none``; ``align`` (:func:`align_hidden_units` to a reference, network by network);
``align_runs`` (one permutation per training run, :func:`align_groups`); ``augment`` (a fresh random
permutation of every train network in every minibatch, :func:`random_hidden_permutations`); ``canonical``
(:func:`canonical_form`).

An encoder equivariant by construction is a form, not an option: ``equivariant`` (:class:`EquivariantCodec`,
a DWSNets / neural-functional design). The ``token`` form is half of one: like SANE's neuron tokens, one
shared encoder and decoder per output unit make its code equivariant to the order of the layer's
*output* units, but a token's coordinates are the layer's inputs, so on layers 1 and 2 it still sees the
previous layer's run-specific order."""
AE_FORMAT = "nnae-layer-autoencoder"
PCA_FORMAT = "nnae-layer-pca"
FORMAT_VERSION = "1"
DAGGER_SEED_OFFSET = 100_000
"""Rollouts of decoded networks draw their reset seeds from the ``states`` namespace, from this
offset on (stage 1 uses the first few seeds of that range), so they never repeat stage 1's episodes."""


class AutoencoderFormatError(ValueError):
    """A checkpoint that is missing, corrupt, or not a layer autoencoder / PCA file."""


# --------------------------------------------------------------------------- layer vectors


def layer_vector(net: Network, layer: int) -> np.ndarray:
    """Layer ``layer``'s weights and bias as one vector ``concat(W.ravel(), b)`` (the flat form's input)."""
    weight, bias = net.layer(layer)
    return np.concatenate([weight.ravel(), bias]).astype(np.float32)


def layer_vectors(nets: Sequence[Network], layer: int) -> np.ndarray:
    """(P, n_params) layer vectors of several networks."""
    return np.stack([layer_vector(n, layer) for n in nets])


def split_layer_vector(vec: np.ndarray, n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`layer_vector`, for one vector (n,) or a stack (..., n)."""
    vec = np.asarray(vec, np.float32)
    if vec.shape[-1] != n_out * (n_in + 1):
        raise ValueError(f"layer vector has {vec.shape[-1]} numbers, a {n_out}x{n_in} layer needs {n_out * (n_in + 1)}")
    weight = vec[..., : n_out * n_in].reshape(*vec.shape[:-1], n_out, n_in)
    return weight, vec[..., n_out * n_in :]


def layer_shape(spec: NetworkSpec, layer: int) -> tuple[int, int]:
    """(out, in) of linear layer ``layer``."""
    if not 0 <= layer < spec.n_layers:
        raise ValueError(f"layer must lie in [0, {spec.n_layers}), got {layer}")
    sizes = spec.layer_sizes
    return sizes[layer + 1], sizes[layer]


def latent_for_ratio(spec: NetworkSpec, layer: int, form: str, ratio: float) -> tuple[int, float]:
    """The latent size that compresses ``layer`` at least ``ratio``-fold, and the ratio it achieves.

    flat: ``k = floor(n_params / ratio)``; token: ``k = floor((in + 1) / ratio)`` per token. Both at
    least 1, so a ratio beyond a form's reach (the token form's is ``in + 1``) gives its largest
    possible ratio instead: compare the returned ratio with the one asked for.

    Example:
        >>> spec = NetworkSpec(obs_dim=11, act_dim=3, hidden=(64, 64))
        >>> latent_for_ratio(spec, 0, "flat", 10)
        (76, 10.105263157894736)
        >>> latent_for_ratio(spec, 0, "token", 32)   # 11 inputs + a bias per token: 12x at most
        (1, 12.0)
    """
    _check_form(form, AE_FORMS)
    n_out, n_in = layer_shape(spec, layer)
    if ratio < 1:
        raise ValueError(f"a compression ratio is >= 1, got {ratio}")
    if form == "equivariant":  # k numbers per hidden unit on each side
        rows, cols = _hidden_sides(spec, layer)
        n_units = (n_out if rows else 0) + (n_in if cols else 0)
        k = max(1, int(math.floor(n_out * (n_in + 1) / (ratio * n_units))))
        return k, n_out * (n_in + 1) / (k * n_units)
    unit = n_out * (n_in + 1) if form == "flat" else n_in + 1
    k = max(1, int(math.floor(unit / ratio)))
    return k, unit / k


def _check_form(form: str, allowed: tuple[str, ...] = FORMS) -> None:
    if form not in allowed:
        raise ValueError(f"form must be one of {allowed}, got {form!r}")


def _hidden_sides(spec: NetworkSpec, layer: int) -> tuple[bool, bool]:
    """Whether layer ``layer``'s outputs (rows) and inputs (columns) are hidden units."""
    return layer < spec.n_layers - 1, layer > 0


# --------------------------------------------------------------------------- stacked networks in torch


@dataclass
class StackedNetworks:
    """P same-architecture networks as stacked float32 torch tensors (leading axis P), never copied per network.

    Example:
        >>> spec = NetworkSpec(obs_dim=11, act_dim=3, hidden=(8,))
        >>> s = StackedNetworks.from_networks([Network.random(spec, seed=i) for i in range(3)])
        >>> len(s), tuple(s.layer(0)[0].shape), len(s.select([0, 2]))
        (3, (3, 8, 11), 2)
    """

    spec: NetworkSpec
    params: dict[str, torch.Tensor]
    transposed: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)
    """Contiguous (P, in, out) copies of the weights: a batched matmul runs about twice as fast on
    them as on a transposed view (measured on this project's CPUs), so they are made once."""

    @classmethod
    def from_networks(cls, nets: Sequence[Network]) -> "StackedNetworks":
        spec, params = stack_params(list(nets))
        stack = cls(spec, {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in params.items()})
        for j in range(spec.n_layers):
            stack.transposed[j] = stack.params[f"layers.{j}.weight"].transpose(1, 2).contiguous()
        return stack

    def __len__(self) -> int:
        return int(self.params["layers.0.weight"].shape[0])

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight (P, out, in), bias (P, out)) of linear layer i."""
        return self.params[f"layers.{i}.weight"], self.params[f"layers.{i}.bias"]

    def weight_t(self, j: int) -> torch.Tensor:
        """Layer j's weights as (P, in, out), contiguous."""
        if j not in self.transposed:
            self.transposed[j] = self.params[f"layers.{j}.weight"].transpose(1, 2).contiguous()
        return self.transposed[j]

    def select(self, idx: Sequence[int] | np.ndarray) -> "StackedNetworks":
        index = torch.as_tensor(np.asarray(idx, np.int64))
        return StackedNetworks(self.spec, {k: v.index_select(0, index) for k, v in self.params.items()},
                               {j: v.index_select(0, index) for j, v in self.transposed.items()})


def _activation(name: str, x: torch.Tensor) -> torch.Tensor:
    if name == "relu":
        return torch.relu(x)
    if name == "tanh":
        return torch.tanh(x)
    return torch.nn.functional.elu(x)


def _stacked_layer_norm(x: torch.Tensor, gain: torch.Tensor, shift: torch.Tensor, eps: float) -> torch.Tensor:
    # per-network LayerNorm parameters (P, H) broadcast over the state axis, as policies._layer_norm
    mean = x.mean(dim=-1, keepdim=True)
    var = x.var(dim=-1, keepdim=True, unbiased=False)
    return (x - mean) / torch.sqrt(var + eps) * gain[:, None, :] + shift[:, None, :]


def _as_state_batch(states: torch.Tensor | np.ndarray, n_networks: int) -> torch.Tensor:
    s = torch.as_tensor(np.asarray(states, np.float32)) if isinstance(states, np.ndarray) else states.float()
    if s.ndim == 2:  # one batch of states shared by every network
        s = s.unsqueeze(0).expand(n_networks, -1, -1)
    if s.ndim != 3 or s.shape[0] != n_networks:
        raise ValueError(f"states must be (B, obs) or (P={n_networks}, B, obs), got {tuple(s.shape)}")
    return s


def _hidden_tail(spec: NetworkSpec, params: Mapping[str, torch.Tensor], j: int, x: torch.Tensor) -> torch.Tensor:
    """What follows linear layer j's affine map: tanh on the output layer, else [norm] act [norm]."""
    if j == spec.n_layers - 1:
        return torch.tanh(x)
    if spec.layer_norm == "before":
        x = _stacked_layer_norm(x, params[f"layers.{j}.norm.weight"], params[f"layers.{j}.norm.bias"], spec.layer_norm_eps)
    x = _activation(spec.activation, x)
    if spec.layer_norm == "after":
        x = _stacked_layer_norm(x, params[f"layers.{j}.norm.weight"], params[f"layers.{j}.norm.bias"], spec.layer_norm_eps)
    return x


def layer_input(stack: StackedNetworks, layer: int, states: torch.Tensor | np.ndarray) -> torch.Tensor:
    """(P, B, in) activations entering linear layer ``layer`` (no gradient: these layers are not decoded)."""
    spec, params = stack.spec, stack.params
    with torch.no_grad():
        x = _as_state_batch(states, len(stack))
        if spec.obs_norm:
            x = (x - params["obs_mean"][:, None, :]) / params["obs_std"][:, None, :]
        for j in range(layer):
            x = torch.baddbmm(params[f"layers.{j}.bias"][:, None, :], x, stack.weight_t(j))
            x = _hidden_tail(spec, params, j, x)
    return x


def forward_from(
    stack: StackedNetworks, layer: int, x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Actions (P, B, act) from layer ``layer``'s input ``x`` on, optionally with that layer replaced."""
    spec, params = stack.spec, stack.params
    for j in range(layer, spec.n_layers):
        if j == layer and weight is not None:
            w_t, b = weight.transpose(1, 2), bias
        else:
            w_t, b = stack.weight_t(j), params[f"layers.{j}.bias"]
        x = torch.baddbmm(b[:, None, :], x, w_t)
        x = _hidden_tail(spec, params, j, x)
    return x


def stacked_actions(stack: StackedNetworks, states: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Actions (P, B, act) of every network of the stack (the batched ``policies.forward``)."""
    return forward_from(stack, 0, layer_input(stack, 0, states))


def functional_loss(
    stack: StackedNetworks,
    layer: int,
    weight: torch.Tensor,
    bias: torch.Tensor,
    states: torch.Tensor | np.ndarray,
    *,
    reduce: bool = True,
) -> torch.Tensor:
    r"""The paper's loss for P networks at once, with layer ``layer`` replaced by (weight, bias).

    :math:`\mathcal{L} = \frac{1}{PB}\sum_{p,s} \lVert y_D(p,s) - y_I(p,s) \rVert_2`, the L2 norm over
    action dimensions per state, averaged over states and networks. ``states`` is (B, obs), shared by
    all networks, or (P, B, obs). Gradients flow to ``weight`` and ``bias`` only.
    With ``reduce=False`` returns the per-network mean over states, shape (P,).

    Example:
        >>> spec = NetworkSpec(obs_dim=11, act_dim=3, hidden=(8,))
        >>> s = StackedNetworks.from_networks([Network.random(spec, seed=i) for i in range(2)])
        >>> w, b = s.layer(1)
        >>> float(functional_loss(s, 1, w, b, np.zeros((4, 11), np.float32)))
        0.0
    """
    x = layer_input(stack, layer, states)
    with torch.no_grad():
        # the input layer goes through the same code path as the decoded one (a transposed view, not
        # the cached contiguous copy), so equal weights give bitwise-equal actions and a loss of exactly 0
        y_input = forward_from(stack, layer, x, *stack.layer(layer))
    y_decoded = forward_from(stack, layer, x, weight, bias)
    # vector_norm's gradient is defined as 0 where the difference is exactly 0 (no NaN at a perfect fit)
    per_state = torch.linalg.vector_norm(y_decoded - y_input, ord=2, dim=-1)
    return per_state.mean() if reduce else per_state.mean(dim=-1)


def functional_loss_reference(net: Network, layer: int, weight: np.ndarray, bias: np.ndarray, states: np.ndarray) -> float:
    """One network at a time with numpy's ``policies.forward``: the reference the batched loss is tested against."""
    y_input = net.act(states)
    y_decoded = net.with_layer(layer, weight, bias).act(states)
    return float(np.linalg.norm(y_decoded.astype(np.float64) - y_input, axis=-1).mean())


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class LayerAEConfig:
    """Everything that defines one layer autoencoder and how it is trained (stored in its checkpoint)."""

    layer: int
    """Linear layer it compresses, counted from the input side (0 = the layer that reads observations)."""
    form: str = "flat"
    """'flat' (the paper's: whole layer -> k) or 'token' (one token per output neuron -> k each)."""
    latent: int = 8
    """flat: latent size of the whole layer. token: latent size per neuron token (the layer's latent is out x this)."""
    hidden: int = 256
    """Width of the encoder's and the decoder's hidden layer (raised to ``latent`` if smaller)."""
    loss: str = "functional"
    """'functional' (the paper's), 'weights' (normalised MSE), 'both' (their sum), 'dagger' (functional on visited states too)."""
    weight_loss_coef: float = 1.0
    """Weight of the normalised weight MSE in the 'both' loss."""
    lr: float = 3e-4
    """Adam learning rate. At 1e-3 the flat form diverges on a real zoo's 64x64 layer, with either loss:
    its ELU units saturate and it decodes every network alike (benchmarks/functional_loss_training.py)."""
    max_epochs: int = 60
    """Upper bound on epochs; early stopping usually ends training sooner."""
    steps_per_epoch: int = 20
    """Gradient steps between two validations."""
    networks_per_batch: int = 32
    """Networks per gradient step (all train networks if fewer)."""
    states_per_batch: int = 64
    """States per network per gradient step (each network gets its own draw)."""
    patience: int = 8
    """Epochs without a relative validation improvement of ``min_delta`` before training stops."""
    min_delta: float = 1e-3
    """Relative improvement of the validation objective that counts as progress."""
    dagger_every: int = 5
    """'dagger': epochs between refreshes of the states visited by decoded networks."""
    dagger_networks: int = 4
    """'dagger': decoded train networks rolled out (one episode each) per refresh."""
    dagger_fraction: float = 0.5
    """'dagger': share of each state batch drawn from the visited-by-decoded-networks buffer."""
    dagger_max_steps: int = 400
    """'dagger': episode cap of those rollouts."""
    dagger_buffer: int = 20_000
    """'dagger': the buffer keeps this many most recent visited states."""
    seed: int = 0
    """Seed of the initialisation and of every minibatch draw."""
    symmetry: str = "none"
    """The hidden-unit symmetry option it is trained under (:data:`SYMMETRIES`). ``augment`` changes training
    itself (every minibatch's networks get fresh random permutations of their hidden units); ``align``,
    ``align_runs`` and ``canonical`` change the networks it is given (:func:`symmetry_networks`), and it records them so that a
    network is brought to the same form before it is encoded."""

    def __post_init__(self) -> None:
        _check_form(self.form, AE_FORMS)
        if self.symmetry not in SYMMETRIES:
            raise ValueError(f"symmetry must be one of {SYMMETRIES}, got {self.symmetry!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        for name in ("latent", "hidden", "max_epochs", "steps_per_epoch", "networks_per_batch", "states_per_batch",
                     "patience", "dagger_every", "dagger_networks", "dagger_max_steps", "dagger_buffer"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.layer < 0:
            raise ValueError(f"layer must be >= 0, got {self.layer}")
        if not (self.lr > 0 and self.weight_loss_coef >= 0 and self.min_delta >= 0):
            raise ValueError("lr must be > 0, weight_loss_coef and min_delta >= 0")
        if not 0.0 <= self.dagger_fraction <= 1.0:
            raise ValueError(f"dagger_fraction must lie in [0, 1], got {self.dagger_fraction}")

    @property
    def name(self) -> str:
        """A readable id, e.g. ``layer1_flat_functional_k416`` (``..._k416_augment`` under a symmetry option
        other than none)."""
        base = f"layer{self.layer}_{self.form}_{self.loss}_k{self.latent}"
        return base if self.symmetry == "none" else f"{base}_{self.symmetry}"

    def derived_seed(self) -> int:
        """A seed distinct for each (seed, layer, form, loss, latent): runs never share minibatch draws by accident.
        The symmetry option is left out: every option starts from the same initialisation and draws the same
        minibatches (augment also draws its permutations, which shifts its later draws), so options differ
        by how they treat the symmetry alone, and 'none' and 'align' train as they did before the option existed."""
        base = f"layer{self.layer}_{self.form}_{self.loss}_k{self.latent}"
        return (self.seed * 1_000_003 + zlib.crc32(base.encode())) % (2**31)


# --------------------------------------------------------------------------- the models


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ELU(), nn.Linear(hidden, n_out))


class LayerCode(Protocol):
    """What stage 3 and stage 4 rely on: a layer autoencoder and a PCA basis both provide it."""

    layer: int
    form: str
    spec: NetworkSpec

    @property
    def latent_dim(self) -> int: ...
    @property
    def compression_ratio(self) -> float: ...
    def encode(self, x: Any) -> np.ndarray: ...
    def decode(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


def _as_layer_weights(x: Any, spec: NetworkSpec, layer: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """(weight (P, out, in), bias (P, out), was_single) from a Network, a list of them, a (W, b) pair,
    or layer vectors (n,) / (P, n)."""
    n_out, n_in = layer_shape(spec, layer)
    if isinstance(x, Network):
        w, b = x.layer(layer)
        return w[None], b[None], True
    if isinstance(x, (list, tuple)) and x and all(isinstance(n, Network) for n in x):
        for n in x:
            if n.spec != spec:
                raise ValueError(f"network architecture {n.spec} differs from the autoencoder's {spec}")
        return np.stack([n.layer(layer)[0] for n in x]), np.stack([n.layer(layer)[1] for n in x]), False
    if isinstance(x, tuple) and len(x) == 2:
        w, b = (np.asarray(a, np.float32) for a in x)
        single = w.ndim == 2
        w, b = (w[None], b[None]) if single else (w, b)
        if w.shape[1:] != (n_out, n_in) or b.shape[1:] != (n_out,) or len(w) != len(b):
            raise ValueError(f"(weight, bias) of shapes {w.shape}, {b.shape} do not fit a {n_out}x{n_in} layer")
        return w, b, single
    vec = np.asarray(x, np.float32)
    if vec.ndim not in (1, 2):
        raise ValueError(f"expected a Network, networks, (weight, bias) or layer vectors (n,) / (P, n), got shape {vec.shape}")
    single = vec.ndim == 1
    w, b = split_layer_vector(vec[None] if single else vec, n_out, n_in)
    return w, b, single


def _as_codes(z: Any, latent_dim: int, owner: str) -> tuple[np.ndarray, bool]:
    """(codes (P, latent_dim) float32, was_single) from one latent code (latent_dim,) or many (P, latent_dim)."""
    z = np.asarray(z, np.float32)
    single = z.ndim == 1
    z2 = z[None] if single else z
    if z2.ndim != 2 or z2.shape[1] != latent_dim:
        raise ValueError(f"latent codes of this {owner} have {latent_dim} numbers, got shape {z.shape}")
    return z2, single


class LayerAutoencoder(nn.Module):
    """One layer's autoencoder (either form), with the normalisation fitted on the train split.

    Weights are normalised before encoding: ``(v - mean) / std``, ``mean`` per coordinate (of the
    flattened layer, or of a token) and ``std`` one number per layer, both from the train networks.
    Without it, the small biases and the large first-layer weights would weigh unequally in the
    weight loss, and the decoder's outputs would have to span very different scales.

    ``encode`` / ``decode`` work on numpy arrays for one network or many; ``encode_t`` /
    ``decode_t`` are the differentiable torch versions used in training.
    """

    def __init__(self, config: LayerAEConfig, spec: NetworkSpec, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.config, self.spec, self.layer, self.form = config, spec, config.layer, config.form
        self.n_out, self.n_in = layer_shape(spec, config.layer)
        hidden = max(config.hidden, config.latent)
        if self.form == "equivariant":  # one mean for the weights, one for the biases
            unit = 2
            self.codec = EquivariantCodec(self.n_out, self.n_in, *_hidden_sides(spec, config.layer), config.latent, hidden)
        else:
            unit = self.n_out * (self.n_in + 1) if self.form == "flat" else self.n_in + 1
            self.encoder = _mlp(unit, hidden, config.latent)
            self.decoder = _mlp(config.latent, hidden, unit)
        self.register_buffer("norm_mean", mean.reshape(unit).float().clone())
        self.register_buffer("norm_std", std.reshape(()).float().clone())

    @classmethod
    def create(cls, config: LayerAEConfig, spec: NetworkSpec, train: StackedNetworks) -> "LayerAutoencoder":
        """A freshly initialised autoencoder whose normalisation is fitted on ``train``."""
        torch.manual_seed(config.derived_seed())
        mean, std = fit_normalisation(train, config.layer, config.form)
        return cls(config, spec, mean, std)

    # -- sizes
    @property
    def n_params(self) -> int:
        """Weights + biases of the layer it compresses."""
        return self.n_out * (self.n_in + 1)

    @property
    def latent_dim(self) -> int:
        """Numbers in one network's latent code of this layer."""
        if self.form == "equivariant":
            return self.config.latent * self.codec.n_units
        return self.config.latent * (self.n_out if self.form == "token" else 1)

    @property
    def compression_ratio(self) -> float:
        """Layer parameters per latent dimension."""
        return self.n_params / self.latent_dim

    # -- torch
    def _units(self, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        if self.form == "flat":
            return torch.cat([weight.flatten(1), bias], dim=1)  # (P, out*(in+1))
        return torch.cat([weight, bias.unsqueeze(-1)], dim=-1)  # (P, out, in+1): one token per output neuron

    def encode_t(self, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """(P, out, in), (P, out) -> (P, latent_dim)."""
        if self.form == "equivariant":
            return self.codec.encode((weight - self.norm_mean[0]) / self.norm_std, (bias - self.norm_mean[1]) / self.norm_std)
        z = self.encoder((self._units(weight, bias) - self.norm_mean) / self.norm_std)
        return z.flatten(1)

    def decode_t(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(P, latent_dim) -> weight (P, out, in), bias (P, out)."""
        if self.form == "equivariant":
            w, b = self.codec.decode(z)
            return w * self.norm_std + self.norm_mean[0], b * self.norm_std + self.norm_mean[1]
        if self.form == "token":
            z = z.reshape(z.shape[0], self.n_out, self.config.latent)
        units = self.decoder(z) * self.norm_std + self.norm_mean
        if self.form == "flat":
            return units[:, : self.n_out * self.n_in].reshape(-1, self.n_out, self.n_in), units[:, self.n_out * self.n_in :]
        return units[..., :-1], units[..., -1]

    def reconstruct_t(self, weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.decode_t(self.encode_t(weight, bias))

    # -- numpy (what later stages use)
    def encode(self, x: Any) -> np.ndarray:
        """Latent codes of one network's layer (-> (latent_dim,)) or many (-> (P, latent_dim)).

        ``x``: a Network, a list of Networks, a (weight, bias) pair (single or stacked), or layer
        vectors (n_params,) / (P, n_params) as :func:`layer_vector` builds them.
        """
        w, b, single = _as_layer_weights(x, self.spec, self.layer)
        with torch.no_grad():
            z = self.encode_t(torch.from_numpy(np.ascontiguousarray(w)), torch.from_numpy(np.ascontiguousarray(b))).numpy()
        return z[0] if single else z

    def decode(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(weight, bias) from one latent code (latent_dim,) or many (P, latent_dim)."""
        z2, single = _as_codes(z, self.latent_dim, "autoencoder")
        with torch.no_grad():
            w, b = self.decode_t(torch.from_numpy(np.ascontiguousarray(z2)))
        w, b = w.numpy().astype(np.float32), b.numpy().astype(np.float32)
        return (w[0], b[0]) if single else (w, b)

    def extra_repr(self) -> str:
        return f"layer={self.layer}, form={self.form}, latent_dim={self.latent_dim}, ratio={self.compression_ratio:.1f}"


class EquivariantCodec(nn.Module):
    """The ``equivariant`` form's encoder and decoder: a layer code that follows its hidden units by construction.

    Design (DWSNets / neural functionals, for one weight matrix): every entry ``W[r, c]`` gets the features
    ``(W[r, c], b[r], mean_c W[r, :], mean_r W[:, c], mean W)``, the terms a linear layer equivariant to
    permutations of rows and columns can combine (Navon et al.'s DWS layer, Zhou et al.'s NP layer); two
    pointwise MLPs, the second also given the row and column means of the first's output, map them to
    ``hidden`` channels. The code is one ``k``-vector per hidden unit on each side whose units are hidden
    (rows of layers 0 and 1, columns of layers 1 and 2): the mean over that unit's entries, mapped to ``k``.
    The decoder is equivariant too: ``W[r, c] = f(u_r, v_c)`` and ``b[r] = g(u_r, mean_c v_c)``. Sides whose
    order is fixed (observations, actions) carry a learned embedding instead, so those units keep their
    identity. Why this design: permute a network's hidden units and its code permutes alike, and it
    decodes into the network's own order, so a held-out run needs no alignment; an invariant code (pooled
    over units, SANE and hyper-representation style) cannot put a decoded layer back into a network whose
    other layers keep their own order. Its reach is bounded like the token form's: layer 2 (3 actions x 64
    inputs) cannot pass ``n_params / in`` = 3x.
    """

    def __init__(self, n_out: int, n_in: int, rows_hidden: bool, cols_hidden: bool, k: int, hidden: int, embed: int = 4):
        super().__init__()
        self.n_out, self.n_in, self.rows_hidden, self.cols_hidden, self.k = n_out, n_in, rows_hidden, cols_hidden, k
        self.row_embed = None if rows_hidden else nn.Parameter(torch.randn(n_out, embed) * 0.1)
        self.col_embed = None if cols_hidden else nn.Parameter(torch.randn(n_in, embed) * 0.1)
        n_feat = 5 + (0 if rows_hidden else embed) + (0 if cols_hidden else embed)
        self.mix1 = _mlp(n_feat, hidden, hidden)
        self.mix2 = _mlp(3 * hidden, hidden, hidden)
        self.to_u = nn.Linear(hidden, k) if rows_hidden else None
        self.to_v = nn.Linear(hidden, k) if cols_hidden else None
        self.row_code = None if rows_hidden else nn.Parameter(torch.randn(n_out, k) * 0.1)
        self.col_code = None if cols_hidden else nn.Parameter(torch.randn(n_in, k) * 0.1)
        self.dec_w = _mlp(2 * k, hidden, 1)
        self.dec_b = _mlp(2 * k, hidden, 1)

    @property
    def n_units(self) -> int:
        return (self.n_out if self.rows_hidden else 0) + (self.n_in if self.cols_hidden else 0)

    def encode(self, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Normalised (P, out, in), (P, out) -> (P, n_units * k): row codes, then column codes."""
        p, o, i = w.shape
        feats = [w, b[:, :, None].expand(p, o, i), w.mean(2, keepdim=True).expand(p, o, i),
                 w.mean(1, keepdim=True).expand(p, o, i), w.mean((1, 2), keepdim=True).expand(p, o, i)]
        x = torch.stack(feats, -1)
        if self.row_embed is not None:
            x = torch.cat([x, self.row_embed[None, :, None, :].expand(p, o, i, -1)], -1)
        if self.col_embed is not None:
            x = torch.cat([x, self.col_embed[None, None, :, :].expand(p, o, i, -1)], -1)
        h = self.mix1(x)
        h = self.mix2(torch.cat([h, h.mean(2, keepdim=True).expand_as(h), h.mean(1, keepdim=True).expand_as(h)], -1))
        codes = []
        if self.to_u is not None:
            codes.append(self.to_u(h.mean(2)).flatten(1))
        if self.to_v is not None:
            codes.append(self.to_v(h.mean(1)).flatten(1))
        return torch.cat(codes, 1)

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(P, n_units * k) -> normalised weight (P, out, in), bias (P, out)."""
        p, o, i, k = z.shape[0], self.n_out, self.n_in, self.k
        at = 0
        if self.rows_hidden:
            u, at = z[:, : o * k].reshape(p, o, k), o * k
        else:
            u = self.row_code[None].expand(p, o, k)
        v = z[:, at:].reshape(p, i, k) if self.cols_hidden else self.col_code[None].expand(p, i, k)
        pairs = torch.cat([u[:, :, None, :].expand(p, o, i, k), v[:, None, :, :].expand(p, o, i, k)], -1)
        w = self.dec_w(pairs).squeeze(-1)
        b = self.dec_b(torch.cat([u, v.mean(1, keepdim=True).expand(p, o, k)], -1)).squeeze(-1)
        return w, b


def fit_normalisation(train: StackedNetworks, layer: int, form: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-coordinate mean and one per-layer std of the train networks' layer (flat vectors or tokens; the
    equivariant form: one mean of the weights and one of the biases, which no unit order changes)."""
    _check_form(form, AE_FORMS)
    w, b = train.layer(layer)
    if form == "equivariant":
        mean = torch.stack([w.mean(), b.mean()])
        dev = torch.cat([(w - mean[0]).flatten(), (b - mean[1]).flatten()])
        return mean, dev.pow(2).mean().sqrt().clamp_min(1e-8)
    units = torch.cat([w.flatten(1), b], 1) if form == "flat" else torch.cat([w, b.unsqueeze(-1)], -1).flatten(0, 1)
    mean = units.mean(0)
    std = (units - mean).std(unbiased=False).clamp_min(1e-8)
    return mean, std


def layer_std(train: StackedNetworks, layer: int) -> float:
    """The per-layer scale of the weight loss: std of the train networks' layer around its mean network."""
    return float(fit_normalisation(train, layer, "flat")[1])


def weight_mse(weight_hat: torch.Tensor, bias_hat: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, std: float | torch.Tensor) -> torch.Tensor:
    """Mean squared error of the layer's weights and biases, in units of the layer's train std."""
    diff = torch.cat([(weight_hat - weight).flatten(1), bias_hat - bias], 1) / std
    return diff.pow(2).mean()


# --------------------------------------------------------------------------- PCA baseline


class PCALayerCode:
    """Per-layer PCA of the train networks' weights: the linear baseline, with the autoencoders' interface.

    flat: principal components of the flattened layer (``latent_dim = k``). token: principal
    components of the neuron tokens (``latent_dim = out * k``). ``components`` holds every
    component (rows, orthonormal, raw weight units); the first ``k`` are used.

    Example:
        >>> spec = NetworkSpec(obs_dim=11, act_dim=3, hidden=(8,))
        >>> nets = [Network.random(spec, seed=i) for i in range(5)]
        >>> pca = PCALayerCode.fit(nets, layer=1, form="flat", k=4)
        >>> w, b = pca.decode(pca.encode(nets[2]))
        >>> bool(np.allclose(w, nets[2].layer(1)[0], atol=1e-5))   # 5 networks span 4 directions around their mean
        True
    """

    def __init__(self, spec: NetworkSpec, layer: int, form: str, mean: np.ndarray, components: np.ndarray,
                 singular_values: np.ndarray, k: int):
        _check_form(form)
        self.spec, self.layer, self.form = spec, layer, form
        self.n_out, self.n_in = layer_shape(spec, layer)
        self.mean = np.asarray(mean, np.float32)
        self.components = np.asarray(components, np.float32)
        self.singular_values = np.asarray(singular_values, np.float32)
        if not 1 <= k:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = int(k)

    @classmethod
    def fit(cls, nets: Sequence[Network], layer: int, form: str, k: int) -> "PCALayerCode":
        """SVD of the centred train layers (numpy); keeps every component, uses the first ``k``."""
        _check_form(form)
        spec = nets[0].spec
        vecs = layer_vectors(nets, layer).astype(np.float64)
        n_out, n_in = layer_shape(spec, layer)
        data = vecs if form == "flat" else vecs_to_tokens(vecs, n_out, n_in).reshape(-1, n_in + 1)
        mean = data.mean(0)
        _, s, vt = np.linalg.svd(data - mean, full_matrices=False)
        return cls(spec, layer, form, mean, vt, s, k)

    def with_k(self, k: int) -> "PCALayerCode":
        """The same basis, using its first ``k`` components."""
        return PCALayerCode(self.spec, self.layer, self.form, self.mean, self.components, self.singular_values, k)

    @property
    def n_params(self) -> int:
        return self.n_out * (self.n_in + 1)

    @property
    def latent_dim(self) -> int:
        return self.k * (self.n_out if self.form == "token" else 1)

    @property
    def compression_ratio(self) -> float:
        return self.n_params / self.latent_dim

    @property
    def rank(self) -> int:
        """Components available (at most the number of train networks, or tokens, minus one that carry variance)."""
        return int(len(self.components))

    def explained_variance(self) -> float:
        """Share of the train layers' variance the first ``k`` components hold."""
        var = self.singular_values.astype(np.float64) ** 2
        return float(var[: self.k].sum() / max(var.sum(), 1e-30))

    def _basis(self) -> np.ndarray:
        # k beyond the rank: the extra latent numbers have no direction (a zero row), as a rank-deficient PCA has
        basis = np.zeros((self.k, self.components.shape[1]), np.float32)
        m = min(self.k, self.rank)
        basis[:m] = self.components[:m]
        return basis

    def encode(self, x: Any) -> np.ndarray:
        w, b, single = _as_layer_weights(x, self.spec, self.layer)
        vec = np.concatenate([w.reshape(len(w), -1), b], axis=1)
        data = vec if self.form == "flat" else vecs_to_tokens(vec, self.n_out, self.n_in)
        z = (data - self.mean) @ self._basis().T
        z = z.reshape(len(w), -1).astype(np.float32)
        return z[0] if single else z

    def decode(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z2, single = _as_codes(z, self.latent_dim, "PCA")
        if self.form == "flat":
            vec = z2 @ self._basis() + self.mean
        else:
            tokens = z2.reshape(len(z2), self.n_out, self.k) @ self._basis() + self.mean
            vec = tokens_to_vecs(tokens, self.n_out, self.n_in)
        w, b = split_layer_vector(vec.astype(np.float32), self.n_out, self.n_in)
        return (w[0], b[0]) if single else (w, b)


def vecs_to_tokens(vecs: np.ndarray, n_out: int, n_in: int) -> np.ndarray:
    """(P, n_params) layer vectors -> (P, out, in + 1) neuron tokens."""
    w, b = split_layer_vector(vecs, n_out, n_in)
    return np.concatenate([w, b[..., None]], axis=-1)


def tokens_to_vecs(tokens: np.ndarray, n_out: int, n_in: int) -> np.ndarray:
    """(P, out, in + 1) neuron tokens -> (P, n_params) layer vectors."""
    w, b = tokens[..., :-1], tokens[..., -1]
    return np.concatenate([w.reshape(len(w), -1), b], axis=1)


# --------------------------------------------------------------------------- hidden-unit alignment


def permute_hidden_units(net: Network, perms: Sequence[np.ndarray]) -> Network:
    """The same function with hidden layer g's units reordered by ``perms[g]`` (new unit i = old unit perms[g][i]).

    Rows of layer g (and its bias and LayerNorm parameters) and columns of layer g + 1 move together,
    so every action is unchanged: hidden units have no order of their own.
    """
    spec = net.spec
    if len(perms) != len(spec.hidden):
        raise ValueError(f"need one permutation per hidden layer ({len(spec.hidden)}), got {len(perms)}")
    params = dict(net.params)
    for g, perm in enumerate(perms):
        perm = np.asarray(perm)
        if sorted(perm.tolist()) != list(range(spec.hidden[g])):
            raise ValueError(f"perms[{g}] is not a permutation of {spec.hidden[g]} units")
        for name in (f"layers.{g}.weight", f"layers.{g}.bias", f"layers.{g}.norm.weight", f"layers.{g}.norm.bias"):
            if name in params:
                params[name] = params[name][perm]
        params[f"layers.{g + 1}.weight"] = params[f"layers.{g + 1}.weight"][:, perm]
    return Network(spec, params, dict(net.extra_metadata))


def align_hidden_units(net: Network, reference: Network, iterations: int = 20) -> Network:
    """``net`` with its hidden units reordered to match ``reference``'s as closely as possible (weight matching,
    :func:`hidden_unit_matching`).

    Example:
        >>> spec = NetworkSpec(obs_dim=11, act_dim=3, hidden=(8, 8))
        >>> ref = Network.random(spec, seed=0)
        >>> shuffled = permute_hidden_units(ref, [np.random.default_rng(1).permutation(8) for _ in range(2)])
        >>> bool(np.array_equal(align_hidden_units(shuffled, ref).flat(), ref.flat()))
        True
    """
    return permute_hidden_units(net, hidden_unit_matching(net, reference, iterations))


def hidden_unit_matching(net: Network, reference: Network, iterations: int = 20) -> list[np.ndarray]:
    """The permutation of each hidden layer (for :func:`permute_hidden_units`) that matches ``net``'s units to
    ``reference``'s as closely as possible (weight matching).

    Coordinate ascent on sum_l <W_l^ref, P_l W_l P_{l-1}^T> (Ainsworth et al.'s weight matching):
    each hidden layer's permutation in turn is the linear assignment that best matches its incoming
    weights and bias and its outgoing weights to the reference's, the other permutations fixed. The
    result computes exactly the same actions as ``net``; only the order of its hidden units changes.
    """
    from scipy.optimize import linear_sum_assignment

    spec = net.spec
    if reference.spec != spec:
        raise ValueError(f"cannot align networks of different architectures: {spec} vs {reference.spec}")
    ref, x = reference.params, net.params
    perms = [np.arange(h) for h in spec.hidden]

    def incoming(params, g, perm_prev):
        w = params[f"layers.{g}.weight"]
        w = w[:, perm_prev] if perm_prev is not None else w
        extra = [params[f"layers.{g}.bias"][:, None]]
        extra += [params[f"layers.{g}.norm.{k}"][:, None] for k in ("weight", "bias") if f"layers.{g}.norm.{k}" in params]
        return np.concatenate([w, *extra], axis=1).astype(np.float64)  # (units, features)

    for _ in range(iterations):
        changed = False
        for g in range(len(spec.hidden)):
            a_ref = incoming(ref, g, None)
            a_x = incoming(x, g, perms[g - 1] if g > 0 else None)
            out_ref = ref[f"layers.{g + 1}.weight"].astype(np.float64)  # (next, units)
            out_x = x[f"layers.{g + 1}.weight"].astype(np.float64)
            if g + 1 < len(spec.hidden):
                out_x = out_x[perms[g + 1]]
            score = a_ref @ a_x.T + out_ref.T @ out_x  # score[i, j]: reference unit i vs net's unit j
            _, cols = linear_sum_assignment(score, maximize=True)
            if not np.array_equal(cols, perms[g]):
                perms[g], changed = cols, True
        if not changed:
            break
    return perms


def align_groups(nets: Sequence[Network], reference: Network, groups: Sequence[Any]) -> list[Network]:
    """``nets`` aligned to ``reference`` with one permutation per group: the weight matching of the group's
    mean network (its members' parameters averaged) to the reference, applied to every member.

    A group is a training run: its snapshots descend from one initialisation and share one order of hidden
    units, and aligning them one by one breaks that. On the shipped zoo, the 36 train snapshots of run 1
    came out in 36 different orders (42-48% of their units placed as the most common order places them),
    so the train set that the autoencoders fit no longer shares an order within a run.

    Example:
        >>> spec = NetworkSpec(obs_dim=11, act_dim=3, hidden=(8, 8))
        >>> ref, a = Network.random(spec, seed=0), Network.random(spec, seed=1)
        >>> b = Network.from_flat(spec, a.flat() + 0.01)   # a snapshot of the same run
        >>> x, y = align_groups([a, b], ref, ["run1", "run1"])
        >>> bool(np.allclose(y.flat() - x.flat(), 0.01, atol=1e-6))   # one permutation for both
        True
    """
    if len(groups) != len(nets):
        raise ValueError(f"need one group label per network ({len(nets)}), got {len(groups)}")
    members: dict[Any, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    out: list[Network | None] = [None] * len(nets)
    for idx in members.values():
        mean = {k: np.mean([nets[i].params[k] for i in idx], axis=0).astype(np.float32) for k in nets[idx[0]].params}
        perms = hidden_unit_matching(Network(nets[idx[0]].spec, mean), reference)
        for i in idx:
            out[i] = permute_hidden_units(nets[i], perms)
    return out


# --------------------------------------------------------------------------- symmetry options


def random_hidden_permutations(spec: NetworkSpec, n_networks: int, rng: np.random.Generator) -> list[torch.Tensor]:
    """One random permutation per network and hidden layer: ``[(n_networks, hidden[g]) int64 for g]``,
    drawn from ``rng`` (the training's own generator, so a seeded run draws the same ones)."""
    return [torch.from_numpy(np.argsort(rng.random((n_networks, h)), axis=1)) for h in spec.hidden]


def permute_stacked(stack: StackedNetworks, perms: Sequence[torch.Tensor]) -> StackedNetworks:
    """Every network of the stack with its hidden units reordered, network ``p``'s layer ``g`` by ``perms[g][p]``
    (new unit i = old unit ``perms[g][p, i]``), as :func:`permute_hidden_units` does for one network: the
    same actions, other coordinates. The decoder's target under ``augment`` is this permuted order, the
    order the network arrives in: the functional loss puts the decoded layer into the *permuted* network,
    so an autoencoder that decodes into any other order is penalised (a held-out run's units come in an
    order of their own, and nothing else would put its decoded layer back into its network)."""
    spec = stack.spec
    if len(perms) != len(spec.hidden):
        raise ValueError(f"need one permutation per hidden layer ({len(spec.hidden)}), got {len(perms)}")
    params = dict(stack.params)
    for g, perm in enumerate(perms):
        n, h = perm.shape
        if n != len(stack) or h != spec.hidden[g]:
            raise ValueError(f"perms[{g}] has shape {tuple(perm.shape)}, expected ({len(stack)}, {spec.hidden[g]})")
        for name in (f"layers.{g}.weight", f"layers.{g}.bias", f"layers.{g}.norm.weight", f"layers.{g}.norm.bias"):
            if name in params:
                t = params[name]
                params[name] = torch.gather(t, 1, perm.reshape(n, h, *([1] * (t.ndim - 2))).expand(n, h, *t.shape[2:]))
        nxt = params[f"layers.{g + 1}.weight"]  # (P, out, units): its columns move with the units
        params[f"layers.{g + 1}.weight"] = torch.gather(nxt, 2, perm[:, None, :].expand(n, nxt.shape[1], h))
    return StackedNetworks(spec, params)


def rescale_hidden_units(net: Network, norm: float = 1.0) -> Network:
    """The same function with every hidden unit's incoming weights and bias scaled to L2 norm ``norm``,
    the scale folded into the next layer's column: ``relu(a x) = a relu(x)`` for ``a > 0``.

    Layers are taken from the input side, so a unit's incoming row is normalised after the previous
    layer's scales were folded into it; the result is unique whatever positive rescaling the input
    network carried. A dead unit (a zero row) keeps scale 1. Only ReLU units without LayerNorm have this
    symmetry: other networks are refused.
    """
    spec = net.spec
    if spec.activation != "relu" or spec.layer_norm != "none":
        raise ValueError(f"positive rescaling keeps the function of ReLU units without LayerNorm only, "
                         f"got activation={spec.activation}, layer_norm={spec.layer_norm}")
    params = {k: np.asarray(v, np.float64) for k, v in net.params.items()}
    for g in range(len(spec.hidden)):
        w, b = params[f"layers.{g}.weight"], params[f"layers.{g}.bias"]
        scale = np.sqrt((w ** 2).sum(1) + b ** 2) / norm
        scale = np.where(scale > 0, scale, 1.0)
        params[f"layers.{g}.weight"], params[f"layers.{g}.bias"] = w / scale[:, None], b / scale
        params[f"layers.{g + 1}.weight"] = params[f"layers.{g + 1}.weight"] * scale[None, :]
    return Network(spec, {k: v.astype(np.float32) for k, v in params.items()}, dict(net.extra_metadata))


def sort_hidden_units(net: Network) -> Network:
    """The same function with each hidden layer's units in decreasing order of their outgoing weights' norm
    (ties: increasing bias). Both keys move with a unit under any permutation of any layer, so two
    permutations of one network come out alike; after :func:`rescale_hidden_units` the outgoing norm is
    the unit's whole gain, and the order does not depend on a rescaling either."""
    perms = []
    for g in range(len(net.spec.hidden)):
        key = np.linalg.norm(net.params[f"layers.{g + 1}.weight"].astype(np.float64), axis=0)
        perms.append(np.lexsort((net.params[f"layers.{g}.bias"], -key)))
    return permute_hidden_units(net, perms)


def canonical_form(net: Network, reference: Network | None = None, norm: float = 1.0) -> Network:
    """A deterministic canonical form of ``net`` that computes the same actions: ReLU units rescaled to
    incoming norm ``norm`` (:func:`rescale_hidden_units`), ordered by outgoing gain (:func:`sort_hidden_units`)
    and, given a ``reference``, weight-matched (:func:`align_hidden_units`) to the reference's own canonical
    form. Every step's input is already invariant to a permutation and a positive rescaling of ``net``'s
    hidden units (weight matching starts from the sorted order), so the result is too: two networks that
    differ only by those symmetries get the same canonical form, up to float rounding.

    Example:
        >>> spec = NetworkSpec(obs_dim=11, act_dim=3, hidden=(8, 8))
        >>> net, ref = Network.random(spec, seed=0), Network.random(spec, seed=1)
        >>> shuffled = permute_hidden_units(net, [np.random.default_rng(2).permutation(8) for _ in range(2)])
        >>> bool(np.allclose(canonical_form(shuffled, ref).flat(), canonical_form(net, ref).flat(), atol=1e-6))
        True
    """
    out = sort_hidden_units(rescale_hidden_units(net, norm))
    if reference is not None:
        out = align_hidden_units(out, sort_hidden_units(rescale_hidden_units(reference, norm)))
    return out


def symmetry_networks(option: str, nets: Sequence[Network], reference: Network,
                      groups: Sequence[Any] | None = None) -> list[Network]:
    """``nets`` in the form an autoencoder of symmetry ``option`` expects them: aligned to ``reference``
    one by one (align) or one permutation per training run (align_runs: ``groups`` labels each network's
    run, :func:`align_groups`), canonical with ``reference`` (canonical), or as they are (none, augment:
    augmentation happens in training). Every network computes exactly the actions it did."""
    if option not in SYMMETRIES:
        raise ValueError(f"symmetry must be one of {SYMMETRIES}, got {option!r}")
    if option == "align":
        return [align_hidden_units(n, reference) for n in nets]
    if option == "align_runs":
        if groups is None:
            raise ValueError("align_runs needs the training run (group) of every network")
        return align_groups(nets, reference, groups)
    if option == "canonical":
        return [canonical_form(n, reference) for n in nets]
    return list(nets)


def symmetry_reference(option: str, reference: Network) -> Network:
    """The reference network as the option's autoencoders see it (canonical: its canonical form)."""
    return canonical_form(reference) if option == "canonical" else reference


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


# --------------------------------------------------------------------------- decoded networks


def decode_network(
    net: Network,
    codes: LayerCode | Sequence[LayerCode] | Mapping[int, LayerCode],
    layers: Iterable[int] | None = None,
) -> Network:
    """``net`` with the given layers (default: every layer a code is given for) encoded and decoded.

    One code replaces one layer (the paper's per-layer test); a list or {layer: code} of all
    layers replaces all of them. The result is an ordinary :class:`Network` (savable with
    ``save_network``); its metadata names the replaced layers.
    """
    by_layer = _codes_by_layer(codes)
    chosen = sorted(by_layer) if layers is None else sorted(set(layers))
    latents = {i: by_layer[i].encode(net) for i in chosen if i in by_layer}
    if len(latents) != len(chosen):
        raise ValueError(f"no code given for layer(s) {sorted(set(chosen) - set(by_layer))}")
    return network_from_latents(net, by_layer, latents)


def network_from_latents(base: Network, codes: LayerCode | Sequence[LayerCode] | Mapping[int, LayerCode],
                         latents: Mapping[int, np.ndarray]) -> Network:
    """A network whose layers ``latents`` names are decoded from those codes; other layers are ``base``'s.

    This is how a latent genome (stage 4) becomes a policy: ``{layer: z}`` plus a base network.
    """
    by_layer = _codes_by_layer(codes)
    params = dict(base.params)
    for i, z in latents.items():
        if i not in by_layer:
            raise ValueError(f"no code given for layer {i}")
        code = by_layer[i]
        if code.spec != base.spec:
            raise ValueError(f"code of layer {i} was trained on {code.spec}, the base network is {base.spec}")
        w, b = code.decode(np.asarray(z, np.float32))
        if w.ndim != 2:
            raise ValueError(f"latents[{i}] must be one code (latent_dim,), got shape {np.shape(z)}")
        params[f"layers.{i}.weight"], params[f"layers.{i}.bias"] = w, b
    meta = dict(base.extra_metadata)
    meta["decoded_layers"] = json.dumps(sorted(int(i) for i in latents))
    meta["decoded_forms"] = json.dumps({str(i): by_layer[i].form for i in sorted(latents)})
    return Network(base.spec, params, meta)


def _codes_by_layer(codes: Any) -> dict[int, LayerCode]:
    if isinstance(codes, Mapping):
        out = dict(codes)
    elif isinstance(codes, (list, tuple)):
        out = {c.layer: c for c in codes}
        if len(out) != len(codes):
            raise ValueError("two codes for the same layer")
    else:
        out = {codes.layer: codes}
    for i, c in out.items():
        if c.layer != i:
            raise ValueError(f"the code given for layer {i} compresses layer {c.layer}")
    return out


def reconstruct_stack(code: LayerCode, stack: StackedNetworks) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoded (weight, bias) of every network of the stack (no gradient), for any :class:`LayerCode`."""
    w, b = stack.layer(code.layer)
    with torch.no_grad():
        if isinstance(code, LayerAutoencoder):
            return code.reconstruct_t(w, b)
        wd, bd = code.decode(code.encode((w.numpy(), b.numpy())))
        return torch.from_numpy(np.ascontiguousarray(wd)), torch.from_numpy(np.ascontiguousarray(bd))


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


# --------------------------------------------------------------------------- checkpoints


def _atomic_save(tensors: Mapping[str, np.ndarray], path: Path, metadata: Mapping[str, str]) -> Path:
    from safetensors.numpy import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"checkpoint files end in .safetensors, got {path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}, tmp, metadata=dict(metadata))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _read(path: str | os.PathLike, expected_format: str) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise AutoencoderFormatError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors' own errors for truncated or corrupt files
        raise AutoencoderFormatError(f"cannot read checkpoint {path}: {exc}") from exc
    if meta.get("format") != expected_format:
        raise AutoencoderFormatError(f"{path} is not a {expected_format} file (format={meta.get('format')!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise AutoencoderFormatError(f"{path}: unsupported format_version {meta.get('format_version')!r}")
    return meta, tensors


def save_layer_autoencoder(path: str | os.PathLike, model: LayerAutoencoder, info: Mapping[str, Any] | None = None) -> Path:
    """Write the autoencoder (safetensors): its tensors, and its config, the network spec and ``info``
    (training results) as JSON metadata. Atomic, like network files."""
    meta = {
        "format": AE_FORMAT,
        "format_version": FORMAT_VERSION,
        "config": json.dumps(asdict(model.config)),
        "network_spec": json.dumps(model.spec.to_metadata()),
        "latent_dim": str(model.latent_dim),
        "compression_ratio": repr(model.compression_ratio),
        "info": json.dumps(dict(info or {}), default=float),
    }
    return _atomic_save({k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}, Path(path), meta)


def load_layer_autoencoder(path: str | os.PathLike) -> LayerAutoencoder:
    """Read a checkpoint written by :func:`save_layer_autoencoder` (eval mode, numpy ``encode``/``decode`` ready)."""
    meta, tensors = _read(path, AE_FORMAT)
    try:
        cfg_values = json.loads(meta["config"])
        known = {f.name for f in fields(LayerAEConfig)}
        config = LayerAEConfig(**{k: v for k, v in cfg_values.items() if k in known})
        spec = NetworkSpec.from_metadata(json.loads(meta["network_spec"]))
        model = LayerAutoencoder(config, spec, torch.from_numpy(tensors["norm_mean"]), torch.from_numpy(tensors["norm_std"]))
        model.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()}, strict=True)
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise AutoencoderFormatError(f"{path}: inconsistent layer autoencoder checkpoint: {exc}") from exc
    return model.eval()


def checkpoint_info(path: str | os.PathLike) -> dict[str, Any]:
    """The training results stored beside an autoencoder's weights (without building the model)."""
    meta, _ = _read(path, AE_FORMAT)
    return {"config": json.loads(meta["config"]), "info": json.loads(meta.get("info", "{}")),
            "latent_dim": int(meta["latent_dim"]), "compression_ratio": float(meta["compression_ratio"])}


def save_pca(path: str | os.PathLike, pca: PCALayerCode) -> Path:
    """Write a PCA basis: ``mean``, every ``components`` row and ``singular_values``; ``k`` in metadata."""
    meta = {"format": PCA_FORMAT, "format_version": FORMAT_VERSION, "layer": str(pca.layer), "form": pca.form,
            "k": str(pca.k), "network_spec": json.dumps(pca.spec.to_metadata())}
    return _atomic_save({"mean": pca.mean, "components": pca.components, "singular_values": pca.singular_values}, Path(path), meta)


def load_pca(path: str | os.PathLike, k: int | None = None) -> PCALayerCode:
    """Read a PCA basis; ``k`` (default: the stored one) selects how many components the code uses."""
    meta, t = _read(path, PCA_FORMAT)
    try:
        spec = NetworkSpec.from_metadata(json.loads(meta["network_spec"]))
        return PCALayerCode(spec, int(meta["layer"]), meta["form"], t["mean"], t["components"], t["singular_values"],
                            int(k if k is not None else meta["k"]))
    except (KeyError, ValueError, TypeError) as exc:
        raise AutoencoderFormatError(f"{path}: inconsistent PCA checkpoint: {exc}") from exc


def load_layer_codes(directory: str | os.PathLike, form: str = "flat", kind: str = "autoencoder") -> dict[int, LayerCode]:
    """Every layer's code of one form from a stage-2 folder: ``{layer: code}``, ready for :func:`decode_network`.

    ``kind``: 'autoencoder' (the main autoencoders, ``autoencoders/layer<i>_<form>.safetensors``) or
    'pca' (``pca/layer<i>_<form>.safetensors``, at the main latent size).
    """
    _check_form(form)
    sub, loader = {"autoencoder": ("autoencoders", load_layer_autoencoder), "pca": ("pca", load_pca)}[kind]
    paths = sorted(Path(directory, sub).glob(f"layer*_{form}.safetensors"))
    if not paths:
        raise AutoencoderFormatError(f"no {kind} checkpoints of form {form!r} in {Path(directory, sub)}")
    codes = {}
    for p in paths:
        code = loader(p)
        codes[code.layer] = code
    return codes


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
