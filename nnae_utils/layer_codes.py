"""Layer codes: the layer autoencoders and the PCA baseline behind one interface, and their files.

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

Their checkpoints are safetensors files (:func:`save_layer_autoencoder`, :func:`save_pca`,
:func:`load_layer_codes`); how they are trained is :mod:`nnae_utils.autoencoders`.

What later stages use (stage 3 decodes networks, stage 4 evolves latent codes)::

    codes = load_layer_codes(stage2_dir, form="flat")          # {layer: LayerAutoencoder}
    pca = load_layer_codes(stage2_dir, form="flat", kind="pca")  # {layer: PCALayerCode}, same interface
    z = codes[1].encode(net)                                    # (latent_dim,); a list of nets -> (P, latent_dim)
    weight, bias = codes[1].decode(z)                           # numpy, (out, in) and (out,)
    one = decode_network(net, codes[1])                         # layer 1 replaced by its decoded version
    every = decode_network(net, codes)                          # every layer replaced
    child = network_from_latents(net, codes, {1: z + noise})    # a latent genome on a base network

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

import json
import math
import os
import zlib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol, Sequence

import numpy as np
import torch
from torch import nn

from .functional_loss import StackedNetworks, hidden_sides, layer_shape, layer_vectors, split_layer_vector
from .io import atomic_write_path
from .policies import Network, NetworkSpec, mlp
from .symmetry import SYMMETRIES

FORMS = ("flat", "token")
"""Encoder forms stage 2 trains everywhere: the paper's flattened layer, or one token per output neuron."""
AE_FORMS = FORMS + ("equivariant",)
"""Every form a layer autoencoder can take: also ``equivariant`` (:class:`EquivariantCodec`), which PCA does
not have and the stage does not train (``benchmarks/symmetry_options.py --forms`` measures it)."""
LOSSES = ("functional", "weights", "both", "dagger")
"""Training losses: the paper's functional loss; weight reconstruction (normalised MSE) only; their
sum; the functional loss on dataset states mixed with states the decoded networks visit (DAgger-style)."""
AE_FORMAT = "nnae-layer-autoencoder"
PCA_FORMAT = "nnae-layer-pca"
FORMAT_VERSION = "1"


class AutoencoderFormatError(ValueError):
    """A checkpoint that is missing, corrupt, or not a layer autoencoder / PCA file."""


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
        rows, cols = hidden_sides(spec, layer)
        n_units = (n_out if rows else 0) + (n_in if cols else 0)
        k = max(1, int(math.floor(n_out * (n_in + 1) / (ratio * n_units))))
        return k, n_out * (n_in + 1) / (k * n_units)
    unit = n_out * (n_in + 1) if form == "flat" else n_in + 1
    k = max(1, int(math.floor(unit / ratio)))
    return k, unit / k


def _check_form(form: str, allowed: tuple[str, ...] = FORMS) -> None:
    if form not in allowed:
        raise ValueError(f"form must be one of {allowed}, got {form!r}")


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
            self.codec = EquivariantCodec(self.n_out, self.n_in, *hidden_sides(spec, config.layer), config.latent, hidden)
        else:
            unit = self.n_out * (self.n_in + 1) if self.form == "flat" else self.n_in + 1
            self.encoder = mlp(unit, [hidden], config.latent, "elu")
            self.decoder = mlp(config.latent, [hidden], unit, "elu")
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
        self.mix1 = mlp(n_feat, [hidden], hidden, "elu")
        self.mix2 = mlp(3 * hidden, [hidden], hidden, "elu")
        self.to_u = nn.Linear(hidden, k) if rows_hidden else None
        self.to_v = nn.Linear(hidden, k) if cols_hidden else None
        self.row_code = None if rows_hidden else nn.Parameter(torch.randn(n_out, k) * 0.1)
        self.col_code = None if cols_hidden else nn.Parameter(torch.randn(n_in, k) * 0.1)
        self.dec_w = mlp(2 * k, [hidden], 1, "elu")
        self.dec_b = mlp(2 * k, [hidden], 1, "elu")

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


# --------------------------------------------------------------------------- checkpoints


def _atomic_save(tensors: Mapping[str, np.ndarray], path: Path, metadata: Mapping[str, str]) -> Path:
    from safetensors.numpy import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"checkpoint files end in .safetensors, got {path.name}")
    arrays = {k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}
    return atomic_write_path(path, lambda tmp: save_file(arrays, tmp, metadata=dict(metadata)))


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
