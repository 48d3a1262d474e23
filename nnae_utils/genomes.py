"""Genome encodings: how the vector that evolution mutates becomes a policy network.

Every encoding is a :class:`Genome`: ``decode`` turns vectors ``z`` (``(dim,)`` or ``(P, dim)``)
into :class:`~nnae_utils.policies.Network` objects, ``encode`` maps networks back where that is
defined, ``scale`` gives each coordinate's natural size (the shape of a mutation), and
``random_codes`` draws the starts of evolution "from scratch".

============  ==========================================  ==============================================
name          the vector                                  decoded layer vector ``concat(W.ravel(), b)``
============  ==========================================  ==============================================
``weights``   every tensor of the network (Deep GA)       the vector itself (``Network.from_flat``)
``latent:L``  stage 2's autoencoder codes of layers L     the autoencoders' decoders (non-linear)
``pca:L``     stage 2's PCA coordinates of layers L       ``mean + z @ components``
``random:L``  coordinates in a random orthonormal basis   ``mean + z @ B`` (Li et al. 2018)
``dct:L``     lowest-frequency 2-D DCT coefficients       ``mean + IDCT(z)`` (Koutnik et al. 2010)
============  ==========================================  ==============================================

``L`` is ``all`` (every layer), ``best`` (the layer stage 2 compressed best) or layer numbers
joined by ``+`` (``0+2``). The controls (``pca``, ``random``, ``dct``) get exactly as many numbers
per layer as the autoencoder's latent code of that layer, so they differ from ``latent`` only in
*which* low-dimensional space they span. They are all centred on the zoo's mean network (the
train split's element-wise mean): the zero vector decodes to it, as the autoencoders' codes are
implicitly centred (their inputs are normalised by the train mean). Layers a genome does not
encode are taken from its ``base`` network: the start network when fine-tuning, the zoo's mean
network from scratch.

A mutation adds ``sigma * scale * N(0, 1)``. ``scale`` is, per coordinate, the spread (std) of the
zoo's train networks encoded in that genome, so a mutation moves every coordinate in proportion
to how much the zoo varies there. The weight genome is isotropic (``scale = 1``), as in Deep GA,
so that evolution in weight space from scratch uses nothing the zoo learned. ``sigma`` itself is
set per genome by :func:`calibrate_sigma`, so that one mutation changes a network's actions by the
same amount in every genome (a fair step size in the units the paper's functional loss uses).

**Where fine-tuning starts: exact or decoded.** A genome name may end in a start marker:

- ``latent:all`` (or ``latent:all~exact``), the default: evolution searches a *displacement* ``δ``
  from the start network, which is held exactly. For a linear subspace (PCA, random, DCT),
  ``θ = θ_start + B δ``; for the autoencoder, per encoded layer,
  ``θ = θ_start + D(z_start + δ) - D(z_start)``, with ``z_start`` the start's own code. At
  ``δ = 0`` the decoded network *is* the start network, bitwise (a layer whose ``δ`` block is zero
  is the start's own arrays, never a float round trip), so every genome begins where weight space
  begins and the comparison measures search alone (Li et al.'s intrinsic-dimension control searches
  ``θ_start + B z`` in the same way). See :class:`ExactStartGenome`.
- ``latent:all~decoded``: the paper's literal reading, kept as a labelled ablation: evolution
  starts from the start network's code, so it starts from the start *as the genome decodes it*
  (which for a network of another run barely hops). ``weights@latent:all`` is the weight-space GA
  started from that same decoded network.

The marker only says where fine-tuning starts (:func:`fine_tuning_start`); from scratch there is no
start network and both read the same (centred on the train mean, as above). The weight genome
holds every weight, so its start is always exact and it takes no marker.

Example:
    >>> from nnae_utils.policies import NetworkSpec
    >>> spec = NetworkSpec(obs_dim=11, act_dim=3, hidden=(8, 8))
    >>> zoo = [Network.random(spec, seed=s) for s in range(6)]
    >>> g = build_genome("dct:all", train=zoo, latent_dims={0: 10, 1: 7, 2: 3}, seed=0)
    >>> g.dim, g.decode(np.zeros(g.dim)).spec == spec
    (20, True)
    >>> bool(np.allclose(g.decode(np.zeros(g.dim)).flat(), mean_network(zoo).flat(), atol=1e-6))
    True
    >>> split_start_mode("dct:all~decoded"), split_start_mode("dct:all")
    (('dct:all', 'decoded'), ('dct:all', 'exact'))
    >>> start = Network.random(spec, seed=99)
    >>> exact, z0 = fine_tuning_start(g, start, "exact")     # z0 is delta = 0 around the start
    >>> bool(np.array_equal(exact.decode(z0).flat(), start.flat())), exact.name
    (True, 'dct:all')
    >>> decoded, z0 = fine_tuning_start(g, start, "decoded")  # the start's DCT code: a lossy decoding
    >>> bool(np.array_equal(decoded.decode(z0).flat(), start.flat())), decoded.name
    (False, 'dct:all~decoded')
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import scipy.fft

from .policies import Network, NetworkSpec, action_distance, layer_vector, stack_params

KINDS = ("weights", "latent", "pca", "random", "dct")
"""Genome kinds: all weights; autoencoder latent; and the three low-dimensional controls."""
LINEAR_KINDS = ("pca", "random", "dct")
MAX_RANDOM_BASIS = 50_000_000
"""Largest random basis (layer parameters x latent size) built as a dense matrix (200 MB of float32)."""


# --------------------------------------------------------------------------- helpers


def mean_network(nets: Sequence[Network]) -> Network:
    """The element-wise mean of same-architecture networks (the centre of every subspace genome)."""
    spec, params = stack_params(list(nets))
    return Network(spec, {k: v.mean(axis=0).astype(np.float32) for k, v in params.items()})


def _layer_vectors(x: Any, spec: NetworkSpec, layer: int) -> np.ndarray:
    """(P, n) layer vectors from a Network, a list of Networks, or vectors (n,) / (P, n)."""
    if isinstance(x, Network):
        return layer_vector(x, layer)[None]
    if isinstance(x, (list, tuple)) and x and isinstance(x[0], Network):
        return np.stack([layer_vector(n, layer) for n in x])
    v = np.asarray(x, np.float64)
    return v[None] if v.ndim == 1 else v


def _is_single(x: Any) -> bool:
    """Whether ``x`` is one network or one layer vector (rather than several)."""
    if isinstance(x, Network):
        return True
    if isinstance(x, (list, tuple)) and x and isinstance(x[0], Network):
        return False
    return np.ndim(x) == 1


def _split(vec: np.ndarray, n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    return vec[..., : n_out * n_in].reshape(*vec.shape[:-1], n_out, n_in), vec[..., n_out * n_in :]


START_MODES = ("exact", "decoded")
"""Where fine-tuning starts: the start network itself (delta = 0 around it), or its decoding (the paper's reading)."""
START_MARKER = "~"
"""Separates a genome name from its start mode: ``latent:all~decoded``."""


def split_start_mode(name: str) -> tuple[str, str]:
    """``'latent:all~decoded'`` -> ``('latent:all', 'decoded')``; no marker -> ``(name, 'exact')``.

    >>> split_start_mode("pca:0+2~exact"), split_start_mode("weights")
    (('pca:0+2', 'exact'), ('weights', 'exact'))
    """
    genome, sep, mode = name.partition(START_MARKER)
    if not sep:
        return name, "exact"
    if mode not in START_MODES:
        raise ValueError(f"genome {name!r}: the start mode after {START_MARKER!r} must be one of {START_MODES}")
    if genome.partition(":")[0] == "weights" or "@" in genome:
        raise ValueError(f"genome {name!r}: the weight genome always starts from the start network itself; "
                         "it takes no start mode (weights@<genome> starts from <genome>'s decoding)")
    return genome, mode


def parse_genome_name(name: str) -> tuple[str, str]:
    """``'latent:best'`` -> ``('latent', 'best')``; ``'weights'`` -> ``('weights', 'all')``; a start marker
    (``'latent:all~decoded'``) is checked and left out (it does not change the encoding)."""
    name = split_start_mode(name)[0]
    kind, _, layers = name.partition(":")
    if kind not in KINDS:
        raise ValueError(f"unknown genome {name!r}: the kind must be one of {KINDS}")
    if kind == "weights":
        if layers not in ("", "all"):
            raise ValueError(f"the weight genome always holds every weight; got {name!r}")
        return kind, "all"
    layers = layers or "all"
    if layers not in ("all", "best") and not all(p.isdigit() for p in layers.split("+")):
        raise ValueError(f"genome {name!r}: layers must be 'all', 'best' or numbers joined by '+' (e.g. '0+2')")
    return kind, layers


def split_start_through(name: str) -> tuple[str, str | None]:
    """``'weights@latent:all'`` -> ``('weights', 'latent:all')``: the weight genome fine-tuning the start
    network as the ``latent:all`` genome decodes it, which is where that genome's own runs start. It is
    the control that hands weight space the same start network; a plain name -> ``(name, None)``.

    >>> split_start_through("weights@latent:all")
    ('weights', 'latent:all')
    >>> split_start_through("pca:0+2")
    ('pca:0+2', None)
    """
    genome, sep, through = name.partition("@")
    if not sep:
        return name, None
    if parse_genome_name(genome)[0] != "weights":
        raise ValueError(f"{name!r}: only the weight genome starts from another genome's decoding")
    if parse_genome_name(through)[0] == "weights":
        raise ValueError(f"{name!r}: the start must be decoded through a compressed genome (latent, pca, random, dct)")
    if START_MARKER in through:
        raise ValueError(f"{name!r}: weights@<genome> always starts from <genome>'s decoding; drop the start mode")
    return genome, through


def is_start_control(label: str) -> bool:
    """Whether a genome name, or a ``method/genome`` label, is a ``weights@<genome>`` control: a run that
    starts from another genome's decoding, so it has no scratch runs and is never a stage's best method.

    >>> is_start_control("ga/weights@latent:all"), is_start_control("ga/latent:all"), is_start_control("pca:all")
    (True, False, False)
    """
    return split_start_through(label.rsplit("/", 1)[-1])[1] is not None


def decoded_start(genome: "Genome", network: Network) -> Network:
    """``network`` as ``genome`` represents it, fine-tuning it: the decoding of its own code."""
    based = genome.with_base(network)
    return based.decode(based.encode(network)[0])


def resolve_layers(token: str, n_layers: int, best_layer: int | None) -> tuple[int, ...]:
    """The layers a genome name's layer token selects."""
    if token == "all":
        return tuple(range(n_layers))
    if token == "best":
        if best_layer is None:
            raise ValueError("genome needs the best layer, but none was given")
        return (int(best_layer),)
    layers = tuple(sorted({int(p) for p in token.split("+")}))
    if any(not 0 <= i < n_layers for i in layers):
        raise ValueError(f"layers {layers} out of range for a network with {n_layers} linear layers")
    return layers


def best_layer_from_summary(summary: Mapping[str, Any], form: str = "flat") -> int:
    """The layer stage 2 compressed best: the lowest validation functional loss *relative to* the loss of
    replacing the layer by the train networks' mean layer (a code that knows nothing about the network).

    Relative, because the layers' raw losses live on different scales (the output layer's errors
    reach the actions directly)."""
    best, best_value = None, math.inf
    for entry in summary["layers"]:
        value = entry["forms"][form]["val_loss"] / max(entry["mean_layer_val_loss"], 1e-12)
        if value < best_value:
            best, best_value = int(entry["layer"]), value
    if best is None:
        raise ValueError("stage 2's summary lists no layers")
    return best


# --------------------------------------------------------------------------- per-layer linear codes


class _LinearLayerCode:
    """What a linear code of one layer's ``[W | b]`` (``n_out`` x ``n_in + 1``) with ``k`` coordinates reports."""

    form = "flat"
    k: int
    n_out: int
    n_in: int

    @property
    def latent_dim(self) -> int:
        return self.k

    @property
    def compression_ratio(self) -> float:
        return self.n_out * (self.n_in + 1) / self.k


class RandomSubspaceCode(_LinearLayerCode):
    """Li et al. (2018)'s random subspace for one layer: ``vec = mean + z @ B``, ``B`` (k, n) orthonormal rows.

    ``B`` is the Q factor of a Gaussian matrix (seeded), so ``encode`` is the orthogonal projection
    ``(vec - mean) @ B.T`` and ``encode(decode(z)) == z``.

    Example:
        >>> spec = NetworkSpec(obs_dim=11, act_dim=3, hidden=(8,))
        >>> code = RandomSubspaceCode(spec, 1, np.zeros(27), k=5, seed=0)
        >>> z = np.arange(5.0)
        >>> bool(np.allclose(code.encode(np.concatenate([*[a.ravel() for a in code.decode(z)]])), z, atol=1e-5))
        True
    """

    def __init__(self, spec: NetworkSpec, layer: int, mean: np.ndarray, k: int, seed: int):
        self.spec, self.layer = spec, int(layer)
        sizes = spec.layer_sizes
        self.n_out, self.n_in = sizes[layer + 1], sizes[layer]
        n = self.n_out * (self.n_in + 1)
        self.mean = np.asarray(mean, np.float64).reshape(n)
        self.k = int(min(k, n))
        if n * self.k > MAX_RANDOM_BASIS:
            raise ValueError(f"a dense random basis of {n} x {self.k} is too large; use a smaller latent or a structured basis")
        gauss = np.random.default_rng(seed).standard_normal((n, self.k))
        q, _ = np.linalg.qr(gauss)
        self.basis = q.T.copy()  # (k, n), orthonormal rows

    def encode(self, x: Any) -> np.ndarray:
        v = _layer_vectors(x, self.spec, self.layer)
        z = (v - self.mean) @ self.basis.T
        return z[0] if _is_single(x) else z

    def decode(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z = np.asarray(z, np.float64)
        vec = z @ self.basis + self.mean
        w, b = _split(vec, self.n_out, self.n_in)
        return w.astype(np.float32), b.astype(np.float32)

    def displacement(self, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``B delta`` in float64 (P, out, in), (P, out): the move of a layer around any start (no mean)."""
        return _split(np.asarray(delta, np.float64) @ self.basis, self.n_out, self.n_in)


def dct_positions(n_rows: int, n_cols: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` lowest-frequency positions of an (n_rows, n_cols) DCT, in Koutnik et al.'s order:
    anti-diagonals ``i + j = 0, 1, 2, ...``, each from the first row down.

    Example:
        >>> dct_positions(3, 3, 4)
        (array([0, 0, 1, 0]), array([0, 1, 0, 2]))
    """
    ii, jj = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
    order = np.lexsort((ii.ravel(), (ii + jj).ravel()))[:k]
    return ii.ravel()[order], jj.ravel()[order]


class DCTCode(_LinearLayerCode):
    """Compressed Network Search (Koutnik et al. 2010) for one layer, centred on the zoo's mean layer.

    The layer is the (out, in + 1) matrix ``[W | b]``; its deviation from the mean layer is
    represented by its ``k`` lowest-frequency coefficients of the orthonormal 2-D DCT-II
    (``scipy.fft.dctn(norm='ortho')``), every other coefficient zero. The transform is orthonormal,
    so ``encode(decode(z)) == z`` and the zero vector decodes to the mean layer.
    """

    def __init__(self, spec: NetworkSpec, layer: int, mean: np.ndarray, k: int):
        self.spec, self.layer = spec, int(layer)
        sizes = spec.layer_sizes
        self.n_out, self.n_in = sizes[layer + 1], sizes[layer]
        self.k = int(min(k, self.n_out * (self.n_in + 1)))
        self.mean = self._as_matrix(np.asarray(mean, np.float64)[None])[0]
        self.rows, self.cols = dct_positions(self.n_out, self.n_in + 1, self.k)

    def _as_matrix(self, vec: np.ndarray) -> np.ndarray:
        w, b = _split(vec, self.n_out, self.n_in)
        return np.concatenate([w, b[..., None]], axis=-1)  # (P, out, in + 1)

    def encode(self, x: Any) -> np.ndarray:
        m = self._as_matrix(_layer_vectors(x, self.spec, self.layer)) - self.mean
        coef = scipy.fft.dctn(m, axes=(1, 2), norm="ortho")
        z = coef[:, self.rows, self.cols]
        return z[0] if _is_single(x) else z

    def decode(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z = np.asarray(z, np.float64)
        z2 = z[None] if z.ndim == 1 else z
        coef = np.zeros((len(z2), self.n_out, self.n_in + 1))
        coef[:, self.rows, self.cols] = z2
        m = scipy.fft.idctn(coef, axes=(1, 2), norm="ortho") + self.mean
        w, b = m[..., :-1].astype(np.float32), m[..., -1].astype(np.float32)
        return (w[0], b[0]) if z.ndim == 1 else (w, b)

    def displacement(self, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``IDCT(delta)`` in float64, (P, out, in) and (P, out): the move of a layer around any start."""
        d = np.atleast_2d(np.asarray(delta, np.float64))
        coef = np.zeros((len(d), self.n_out, self.n_in + 1))
        coef[:, self.rows, self.cols] = d
        m = scipy.fft.idctn(coef, axes=(1, 2), norm="ortho")
        return m[..., :-1], m[..., -1]


# --------------------------------------------------------------------------- genomes


class Genome:
    """The interface evolution sees. Subclasses set the attributes and implement decode / encode."""

    name: str
    """e.g. ``latent:all``."""
    kind: str
    """One of :data:`KINDS`."""
    spec: NetworkSpec
    dim: int
    """Numbers in one genome vector."""
    layers: tuple[int, ...]
    """Linear layers the vector encodes (the rest come from ``base``)."""
    base: Network
    """Network that supplies every tensor the genome does not encode."""
    scale: np.ndarray
    """(dim,) natural size of each coordinate: mutations are ``sigma * scale * N(0, 1)``."""
    centre: np.ndarray
    """(dim,) the code of the zoo's centre: zeros for the subspaces (decodes to the mean network), the
    train networks' mean code for the autoencoders, the mean network's weights for ``weights``."""
    groups: np.ndarray
    """(dim,) crossover units: coordinates with the same id are inherited together."""
    uses_zoo: bool
    """Whether the encoding was learned from, or centred on, the zoo (a start from it is not free)."""

    def decode(self, z: np.ndarray) -> Network | list[Network]:
        raise NotImplementedError

    def _as_batch(self, z, what: str = "vectors") -> tuple[np.ndarray, bool]:
        """``z`` as a (n, dim) float64 batch, and whether it was a single vector; a wrong width is refused."""
        z = np.asarray(z, np.float64)
        single = z.ndim == 1
        z2 = z[None] if single else z
        if z2.shape[1] != self.dim:
            raise ValueError(f"{self.name} {what} have {self.dim} numbers, got shape {z.shape}")
        return z2, single

    def encode(self, nets: Network | Sequence[Network]) -> np.ndarray:
        raise NotImplementedError

    def random_codes(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Starts of evolution from scratch: ``centre + scale * N(0, 1)`` (the zoo's spread around its centre)."""
        return self.centre + self.scale * rng.standard_normal((n, self.dim))

    def with_base(self, base: Network) -> "Genome":
        raise NotImplementedError

    @property
    def effective_dim(self) -> int:
        """Coordinates that change the network (a PCA of few networks has fewer directions than it has numbers)."""
        return self.dim

    def fingerprint(self) -> str:
        """A short hash of everything that defines the encoding (checkpoints of another encoding are never reused)."""
        h = hashlib.sha256()
        h.update(json.dumps([self.name, self.dim, list(self.layers)]).encode())
        for arr in (self.scale, self.centre, self.base.flat()):
            h.update(np.ascontiguousarray(arr, np.float64).tobytes())
        probe = self.centre + self.scale * np.random.default_rng(12345).standard_normal((2, self.dim))
        for net in self.decode(probe):
            h.update(net.flat().tobytes())
        return h.hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "dim": int(self.dim), "effective_dim": int(self.effective_dim),
                "layers": list(self.layers), "uses_zoo": bool(self.uses_zoo)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, dim={self.dim})"


class WeightGenome(Genome):
    """Every tensor of the network, in file order (``Network.flat``): Deep GA's genome.

    ``scale`` is 1 (isotropic mutations); ``random_codes`` are freshly initialised networks
    (``Network.random``, torch.nn.Linear's initialisation), so nothing comes from the zoo;
    crossover units are rows of the weight matrices with their bias (CERL swaps rows).

    Example:
        >>> spec = NetworkSpec(obs_dim=11, act_dim=3, hidden=(4,))
        >>> g = WeightGenome(spec)
        >>> net = Network.random(spec, seed=1)
        >>> bool(np.array_equal(g.decode(g.encode(net)[0]).flat(), net.flat()))
        True
    """

    kind = "weights"
    uses_zoo = False

    def __init__(self, spec: NetworkSpec, centre: Network | None = None):
        self.name, self.spec, self.dim = "weights", spec, spec.n_params
        self.layers = tuple(range(spec.n_layers))
        self.base = centre if centre is not None else Network.random(spec, seed=0)
        self.scale = np.ones(self.dim)
        self.centre = self.base.flat().astype(np.float64)
        groups, offset, gid = np.empty(self.dim, np.int64), 0, 0
        for name, shape in spec.tensor_shapes().items():
            n = math.prod(shape)
            if name.endswith(".weight") and not name.endswith("norm.weight"):
                groups[offset : offset + n] = gid + np.repeat(np.arange(shape[0]), shape[1])
                bias_off = offset + n  # the layer's bias follows its weight in file order
                groups[bias_off : bias_off + shape[0]] = gid + np.arange(shape[0])
                gid += shape[0]
                offset += n + shape[0]
            elif name.endswith(".bias") and not name.endswith("norm.bias") and name.startswith("layers."):
                continue  # handled with its weight
            else:
                groups[offset : offset + n] = gid + np.arange(n)
                gid += n
                offset += n
        self.groups = groups

    def decode(self, z):
        z = np.asarray(z)
        if z.ndim == 1:
            return Network.from_flat(self.spec, z)
        return [Network.from_flat(self.spec, row) for row in z]

    def encode(self, nets):
        nets = [nets] if isinstance(nets, Network) else list(nets)
        return np.stack([n.flat() for n in nets]).astype(np.float64)

    def random_codes(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.stack([Network.random(self.spec, seed=int(rng.integers(2**31))).flat() for _ in range(n)]).astype(np.float64)

    def with_base(self, base: Network) -> "WeightGenome":
        return self  # every tensor is in the genome: there is no base to replace


class LayerCodeGenome(Genome):
    """Genome of per-layer codes (autoencoder, PCA, random subspace, DCT), one block per encoded layer.

    ``codes`` maps a layer to an object with ``latent_dim``, ``encode(networks) -> (P, k)`` and
    ``decode((P, k)) -> (W (P, out, in), b (P, out))``: a stage-2 ``LayerAutoencoder`` or
    ``PCALayerCode``, a :class:`RandomSubspaceCode` or a :class:`DCTCode`. The vector is the
    layers' codes concatenated in layer order.
    """

    uses_zoo = True

    def __init__(self, kind: str, name: str, codes: Mapping[int, Any], base: Network, train: Sequence[Network],
                 scale_floor: float = 1e-3):
        self.kind, self.name, self.spec, self.base = kind, name, base.spec, base
        self.layers = tuple(sorted(codes))
        self.codes = {i: codes[i] for i in self.layers}
        sizes = [int(self.codes[i].latent_dim) for i in self.layers]
        bounds = np.cumsum([0, *sizes])
        self.slices = {i: slice(int(bounds[j]), int(bounds[j + 1])) for j, i in enumerate(self.layers)}
        self.dim = int(bounds[-1])
        self.groups = np.arange(self.dim)
        train_codes = self.encode(list(train))
        spread = train_codes.std(axis=0)
        self._live = spread > 1e-6 * max(float(spread.max()), 1e-30)
        # a floor keeps every coordinate mutable (a dead PCA direction then moves, harmlessly, by a tiny amount)
        self.scale = np.maximum(spread, scale_floor * max(float(spread.max()), 1e-12))
        # linear subspaces are centred on the mean network by construction: their centre is exactly zero
        self.centre = np.zeros(self.dim) if kind in LINEAR_KINDS else train_codes.mean(axis=0)

    @property
    def effective_dim(self) -> int:
        return int(self._live.sum())

    def decode(self, z):
        z2, single = self._as_batch(z)
        decoded = {i: self.codes[i].decode(z2[:, self.slices[i]]) for i in self.layers}  # each layer's block, batched
        nets = []
        for p in range(len(z2)):
            params = dict(self.base.params)
            for i, (w, b) in decoded.items():
                params[f"layers.{i}.weight"], params[f"layers.{i}.bias"] = w[p], b[p]
            nets.append(Network(self.spec, params))
        return nets[0] if single else nets

    def encode(self, nets):
        nets = [nets] if isinstance(nets, Network) else list(nets)
        parts = [np.asarray(self.codes[i].encode(nets), np.float64).reshape(len(nets), -1) for i in self.layers]
        return np.concatenate(parts, axis=1)

    def with_base(self, base: Network) -> "LayerCodeGenome":
        if base.spec != self.spec:
            raise ValueError(f"base network architecture {base.spec} differs from the genome's {self.spec}")
        clone = object.__new__(LayerCodeGenome)
        clone.__dict__.update(self.__dict__)
        clone.base = base
        return clone

    def around(self, start: Network) -> "ExactStartGenome":
        """This encoding searching a displacement from ``start`` (``delta = 0`` is ``start``, bitwise)."""
        return ExactStartGenome(self, start)


class ExactStartGenome(Genome):
    """A per-layer code genome that searches a displacement ``delta`` from a start network held exactly.

    Per encoded layer ``i``: ``θ_i = θ_start,i + Δ_i(delta_i)``, where ``Δ_i`` is ``B delta`` for a linear
    code with a ``displacement`` method (random subspace, DCT: computed without the mean, so no
    rounding of ``mean - mean``) and ``D(z_start + delta) - D(z_start)`` otherwise (the autoencoder;
    PCA, which is linear, gets ``B delta`` up to float32 rounding of its decoder's output). The sum is
    formed in float64 and stored as float32. A layer whose ``delta`` block is exactly zero is the
    start's own arrays (not ``float32(float64(θ) + 0)``, which would turn a ``-0.0`` weight into
    ``+0.0``), so ``decode(zeros)`` is the start network bitwise. Layers the genome does not encode
    are the start's too.

    The vector has the inner genome's size, coordinate scales and crossover groups; its centre is
    zero (the start). ``encode`` returns ``code(net) - code(start)`` (the inverse of ``decode`` for
    the linear codes, within their subspace).

    Example:
        >>> spec = NetworkSpec(obs_dim=11, act_dim=3, hidden=(8,))
        >>> zoo = [Network.random(spec, seed=s) for s in range(4)]
        >>> g = build_genome("random:all", train=zoo, latent_dims={0: 5, 1: 2}).around(zoo[0])
        >>> bool(np.array_equal(g.decode(np.zeros(g.dim)).flat(), zoo[0].flat()))
        True
        >>> moved = g.decode(np.eye(g.dim)[0])          # one step along the first basis vector of layer 0
        >>> bool(np.array_equal(moved.layer(1)[0], zoo[0].layer(1)[0])), bool(np.array_equal(moved.layer(0)[0], zoo[0].layer(0)[0]))
        (True, False)
    """

    def __init__(self, inner: LayerCodeGenome, start: Network):
        if start.spec != inner.spec:
            raise ValueError(f"start network architecture {start.spec} differs from the genome's {inner.spec}")
        self.inner, self.start = inner, start
        self.kind, self.name, self.spec, self.base = inner.kind, split_start_mode(inner.name)[0], inner.spec, start
        self.layers, self.slices, self.dim = inner.layers, inner.slices, inner.dim
        self.scale, self.groups, self.uses_zoo = inner.scale, inner.groups, inner.uses_zoo
        self.centre = np.zeros(self.dim)
        self.z_start = inner.encode(start)[0]
        # D(z_start) once, per layer: the term every decoding subtracts (not needed by codes with a displacement)
        self._decoded_start = {i: tuple(np.asarray(a, np.float64) for a in inner.codes[i].decode(self.z_start[inner.slices[i]]))
                               for i in self.layers if not hasattr(inner.codes[i], "displacement")}

    @property
    def effective_dim(self) -> int:
        return self.inner.effective_dim

    def _displacement(self, layer: int, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(P, out, in), (P, out) float64 move of ``layer`` for the (P, k) blocks ``delta``."""
        code = self.inner.codes[layer]
        if hasattr(code, "displacement"):
            return code.displacement(delta)
        w, b = code.decode(self.z_start[self.slices[layer]] + delta)
        w0, b0 = self._decoded_start[layer]
        return np.asarray(w, np.float64) - w0, np.asarray(b, np.float64) - b0

    def decode(self, z):
        z2, single = self._as_batch(z)
        params = [dict(self.start.params) for _ in range(len(z2))]  # the start's own arrays, until a layer moves
        for i in self.layers:
            block = z2[:, self.slices[i]]
            moved = np.flatnonzero(np.any(block != 0.0, axis=1))
            if not len(moved):
                continue
            dw, db = self._displacement(i, block[moved])
            w0, b0 = self.start.layer(i)
            w = (w0.astype(np.float64) + dw).astype(np.float32)
            b = (b0.astype(np.float64) + db).astype(np.float32)
            for j, p in enumerate(moved):
                params[p][f"layers.{i}.weight"], params[p][f"layers.{i}.bias"] = w[j], b[j]
        nets = [Network(self.spec, p) for p in params]
        return nets[0] if single else nets

    def encode(self, nets):
        return self.inner.encode(nets) - self.z_start

    def with_base(self, base: Network) -> "ExactStartGenome":
        return ExactStartGenome(self.inner, base)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "start": "exact"}


class AnchoredGenome(Genome):
    """A population genome whose individuals are displacements around *anchors*: the start network and
    every network that migrated in (CERL's learners' actors), each held exactly.

    An individual is ``[a, v_1, ..., v_k]``: ``a`` is an anchor index, ``v`` a vector of the inner
    genome. Anchor 0 is the inner genome itself (``v`` is an ordinary code, decoded around the inner
    genome's base: from scratch, random codes around the zoo's centre); an anchor ``a >= 1`` is a
    network ``N_a`` and ``v`` a displacement around it (:class:`ExactStartGenome`), so ``[a, 0, ..., 0]``
    is ``N_a`` bitwise. :meth:`anchor` adds a network and returns its individual: a migrant enters as
    itself and keeps its return. Mutations never move ``a`` (its scale is 0: ``a + sigma * 0 * N(0, 1)
    = a`` exactly); crossover takes ``a`` from one parent (its own crossover unit) and mixes the rest, a
    move of the code applied around that parent's anchor. The anchor of an individual is its lineage:
    ``a >= 2`` descends from a migrant (``a = 1`` is the start when fine-tuning).

    Example:
        >>> spec = NetworkSpec(obs_dim=11, act_dim=3, hidden=(8,))
        >>> zoo = [Network.random(spec, seed=s) for s in range(4)]
        >>> g = AnchoredGenome(build_genome("dct:all", train=zoo, latent_dims={0: 5, 1: 2})).with_base(zoo[0])
        >>> start = g.encode(zoo[0])[0]
        >>> float(start[0]), bool(np.array_equal(g.decode(start).flat(), zoo[0].flat()))
        (1.0, True)
        >>> migrant = Network.random(spec, seed=7)
        >>> z = g.anchor(migrant)
        >>> float(z[0]), bool(np.array_equal(g.decode(z).flat(), migrant.flat())), g.dim
        (2.0, True, 8)
    """

    def __init__(self, inner: LayerCodeGenome):
        if isinstance(inner, (AnchoredGenome, ExactStartGenome, WeightGenome)):
            raise ValueError("an anchored genome wraps a per-layer code genome (latent, pca, random, dct)")
        self.inner = inner
        self.kind, self.name, self.spec, self.base = inner.kind, split_start_mode(inner.name)[0], inner.spec, inner.base
        self.layers, self.dim, self.uses_zoo = inner.layers, inner.dim + 1, inner.uses_zoo
        self.scale = np.concatenate([[0.0], inner.scale])
        self.groups = np.concatenate([[0], inner.groups + 1])
        self.centre = np.concatenate([[0.0], inner.centre])
        self.anchors: list[Network] = []
        """Anchor networks, anchor ``a`` at index ``a - 1``."""
        self.fixed = 0
        """Anchors the genome was built with (1: the start, when fine-tuning); later ones are migrants."""
        self._around: dict[int, ExactStartGenome] = {}

    @property
    def effective_dim(self) -> int:
        return self.inner.effective_dim

    def anchor(self, net: Network) -> np.ndarray:
        """Add ``net`` as a new anchor; its individual ``[a, 0, ..., 0]`` (decodes to ``net`` bitwise)."""
        self.anchors.append(net)
        return np.concatenate([[float(len(self.anchors))], np.zeros(self.inner.dim)])

    def _exact(self, a: int) -> ExactStartGenome:
        if a not in self._around:
            self._around[a] = self.inner.around(self.anchors[a - 1])
        return self._around[a]

    def decode(self, z):
        z2, single = self._as_batch(z, "(anchored) vectors")
        ids = z2[:, 0].astype(np.int64)
        if np.any(ids != z2[:, 0]) or ids.min() < 0 or ids.max() > len(self.anchors):
            raise ValueError(f"anchor indices must be integers in [0, {len(self.anchors)}], got {np.unique(z2[:, 0])}")
        nets: list[Network | None] = [None] * len(z2)
        for a in np.unique(ids):  # one batched decoding per anchor
            rows = np.flatnonzero(ids == a)
            g = self.inner if a == 0 else self._exact(int(a))
            for row, net in zip(rows, g.decode(z2[rows, 1:])):
                nets[row] = net
        return nets[0] if single else nets

    def encode(self, nets):
        """Codes around anchor 1 (the start) when there is one, else ordinary codes (anchor 0)."""
        codes = self._exact(1).encode(nets) if self.anchors else self.inner.encode(nets)
        return np.concatenate([np.full((len(codes), 1), 1.0 if self.anchors else 0.0), codes], axis=1)

    def with_base(self, base: Network) -> "AnchoredGenome":
        """A fresh anchored genome (no migrants yet) whose anchor 1 is ``base``: the start when fine-tuning."""
        clone = AnchoredGenome(self.inner)
        clone.anchor(base)
        clone.fixed = 1
        return clone

    def without_migrants(self) -> "AnchoredGenome":
        """A copy holding only the anchors it was built with (a run's fresh start: migrants are its own)."""
        clone = AnchoredGenome(self.inner)
        clone.anchors, clone.fixed = list(self.anchors[: self.fixed]), self.fixed
        return clone

    def fingerprint(self) -> str:
        """The inner encoding's and the start anchor's: migrants added during a run do not change it."""
        h = hashlib.sha256(f"anchored:{self.inner.fingerprint()}".encode())
        if self.anchors:
            h.update(self.anchors[0].flat().tobytes())
        return h.hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "start": "exact", "anchored": True}


def fine_tuning_start(genome: Genome, start: Network, mode: str = "exact") -> tuple[Genome, np.ndarray]:
    """The genome and the vector with which evolution fine-tunes ``start``.

    ``exact``: a subspace genome searches a displacement around ``start`` (:class:`ExactStartGenome`,
    vector zero); the weight genome holds ``start``'s own weights. ``decoded`` (the paper's reading): the
    genome's code of ``start``, which decodes to ``start`` as the genome represents it; its name gets the
    ``~decoded`` marker. In both, the decoded start vector is what evolution's generation 0 holds.
    """
    if mode not in START_MODES:
        raise ValueError(f"start mode must be one of {START_MODES}, got {mode!r}")
    if isinstance(genome, WeightGenome):
        return genome, genome.encode(start)[0]
    if isinstance(genome, ExactStartGenome):
        genome = genome.inner
    if mode == "exact":
        return genome.around(start), np.zeros(genome.dim)
    based = genome.with_base(start)
    based.name = f"{split_start_mode(genome.name)[0]}{START_MARKER}decoded"
    return based, based.encode(start)[0]


# --------------------------------------------------------------------------- building genomes from stage 2


def build_genome(
    name: str,
    *,
    train: Sequence[Network],
    stage2_dir: str | Path | None = None,
    form: str = "flat",
    best_layer: int | None = None,
    latent_dims: Mapping[int, int] | None = None,
    seed: int = 0,
) -> Genome:
    """A genome by name, its base the zoo's mean network (use ``with_base(start)`` to fine-tune a network).

    Args:
        name: ``weights``, or ``<kind>:<layers>`` (see the module docstring).
        train: the zoo's train networks (the centre, the coordinates' spread).
        stage2_dir: stage 2's artifact folder (autoencoders and PCA); needed for ``latent`` and ``pca``,
            and for the controls' per-layer sizes unless ``latent_dims`` gives them.
        form: the autoencoders' form, ``flat`` (the paper's) or ``token``.
        best_layer: the layer ``best`` stands for.
        latent_dims: {layer: size} for the controls (default: the stage-2 autoencoders' latent sizes).
        seed: seed of the random subspace's basis.
    """
    kind, token = parse_genome_name(name)
    train = list(train)
    spec = train[0].spec
    centre_net = mean_network(train)
    if kind == "weights":
        return WeightGenome(spec, centre=centre_net)
    layers = resolve_layers(token, spec.n_layers, best_layer)
    if kind in ("latent", "pca") or latent_dims is None:
        if stage2_dir is None:
            raise ValueError(f"genome {name!r} needs stage 2's folder (stage2_dir)")
        from .layer_codes import load_layer_codes  # deferred: torch is needed only for these genomes

        ae_codes = load_layer_codes(stage2_dir, form, "autoencoder")
        dims = {i: int(c.latent_dim) for i, c in ae_codes.items()}
    else:
        ae_codes, dims = None, {int(k): int(v) for k, v in latent_dims.items()}
    if kind == "latent":
        codes = {i: ae_codes[i] for i in layers}
    elif kind == "pca":
        from .layer_codes import load_layer_codes

        pca = load_layer_codes(stage2_dir, form, "pca")
        codes = {i: pca[i] for i in layers}
    elif kind == "random":
        codes = {i: RandomSubspaceCode(spec, i, layer_vector(centre_net, i), dims[i], seed=seed * 1000 + i) for i in layers}
    else:  # dct
        codes = {i: DCTCode(spec, i, layer_vector(centre_net, i), dims[i]) for i in layers}
    return LayerCodeGenome(kind, f"{kind}:{token}", codes, centre_net, train)


class GenomeGrid:
    """The genomes a stage's grid names, each encoding built once (stage 4's ``grid`` of ``method/genome``).

    A grid name may carry a start marker (``latent:all~decoded``) or start through another genome's
    decoding (``weights@latent:all``); both share the encoding of the plain name, and only differ where a
    start network exists, so they have no runs from scratch (:attr:`fine_tune_only`).

    Example:
        >>> from nnae_utils.policies import NetworkSpec
        >>> train = [Network.random(NetworkSpec(obs_dim=11, act_dim=3, hidden=(4,)), seed=s) for s in range(3)]
        >>> g = GenomeGrid(["weights", "random:all", "random:all~decoded", "weights@random:all"], train=train,
        ...                latent_dims={0: 2, 1: 2})
        >>> sorted(g.built), sorted(g.fine_tune_only), g.start_mode["weights@random:all"]
        (['random:all', 'weights'], ['random:all~decoded', 'weights@random:all'], 'decoded')
        >>> genome, z0 = g.fine_tune("random:all", train[0])
        >>> bool(np.array_equal(genome.decode(z0).flat(), train[0].flat()))   # the exact start, bitwise
        True
    """

    def __init__(self, names: Sequence[str], *, train: Sequence[Network], **build: Any):
        self.names = list(dict.fromkeys(names))
        self.encoding_of = {n: split_start_mode(split_start_through(n)[0])[0] for n in self.names}
        encodings = dict.fromkeys(split_start_mode(part)[0] for n in self.names for part in split_start_through(n) if part)
        self.built: dict[str, Genome] = {e: build_genome(e, train=train, **build) for e in encodings}
        """Each encoding once, by its plain name."""
        self.genomes: dict[str, Genome] = {n: self.built[self.encoding_of[n]] for n in self.names}
        """Grid name -> the genome of its encoding (from scratch, the genome itself)."""
        self.start_mode: dict[str, str] = {
            n: "decoded" if split_start_through(n)[1] else split_start_mode(n)[1] for n in self.names}
        """Grid name -> where fine-tuning starts: ``exact`` or ``decoded``."""

    @property
    def fine_tune_only(self) -> set[str]:
        """Names without runs from scratch (``<genome>~decoded``, ``weights@<genome>``)."""
        return {n for n in self.names if self.start_mode[n] == "decoded"}

    def fine_tune(self, name: str, start: Network) -> tuple[Genome, np.ndarray]:
        """(genome, start vector) with which ``name`` fine-tunes ``start``: a displacement around it (exact),
        its own code (``<genome>~decoded``), or, in weight space, that decoded network (``weights@<genome>``)."""
        through = split_start_through(name)[1]
        if through:  # self.genomes[name] is the weight genome
            return fine_tuning_start(self.genomes[name], decoded_start(self.built[through], start))
        return fine_tuning_start(self.genomes[name], start, self.start_mode[name])

    def calibrate(self, starts: Sequence[str], pools: Mapping[str, Sequence[Network]], states: np.ndarray,
                  target: float, *, seed: int = 0, every_name_from_scratch: bool = False) -> dict[tuple[str, str], float]:
        """``(name, start) -> sigma`` (:func:`calibrate_sigma`): fine-tuning, around every network of ``pools[start]``
        as that name starts from it; from scratch, around 4 random codes (no scratch entry for fine-tune-only names,
        unless ``every_name_from_scratch``: stage 5's decoded-migrant hybrid runs from scratch too)."""
        sigmas = {}
        for name, genome in self.genomes.items():
            for start in starts:
                if start != "scratch":
                    per, parents = zip(*[self.fine_tune(name, net) for net in pools[start]])
                    per, parents = list(per), np.stack(parents)
                elif name in self.fine_tune_only and not every_name_from_scratch:
                    continue
                else:
                    per, parents = genome, genome.random_codes(4, np.random.default_rng(seed))
                sigmas[(name, start)] = calibrate_sigma(per, parents, states, target, seed=seed)
        return sigmas


# --------------------------------------------------------------------------- mutation strength


def mutate(z: np.ndarray, sigma: float, scale: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gaussian mutation ``z + sigma * scale * N(0, 1)`` of one vector (dim,) or many (P, dim)."""
    z = np.asarray(z, np.float64)
    return z + sigma * scale * rng.standard_normal(z.shape)


def calibrate_sigma(genome: Genome | Sequence[Genome], parents: np.ndarray, states: np.ndarray, target: float, *,
                    children_per_parent: int = 8, seed: int = 0, bounds: tuple[float, float] = (1e-5, 30.0),
                    iterations: int = 24) -> float:
    """The ``sigma`` at which a mutation changes a network's actions by ``target`` on average.

    ``target`` is in action units: the mean over ``states`` of the L2 distance between the actions
    of a parent and of its mutated child, averaged over ``children_per_parent`` children of each
    parent (the rows of ``parents``). ``genome`` may be one genome per parent (the same encoding
    with different base networks, as when fine-tuning several networks). The same noise is used
    at every trial sigma, so the distance grows smoothly with sigma, and a bisection on
    log(sigma) finds it. If even the bounds do not bracket the target, the nearer bound is returned.

    Example:
        >>> spec = NetworkSpec(obs_dim=11, act_dim=3, hidden=(8,))
        >>> g = WeightGenome(spec)
        >>> s = calibrate_sigma(g, g.random_codes(2, np.random.default_rng(0)), np.zeros((16, 11)) + 0.5, 0.05)
        >>> 1e-4 < s < 1.0
        True
    """
    parents = np.atleast_2d(np.asarray(parents, np.float64))
    per_parent = list(genome) if isinstance(genome, (list, tuple)) else [genome] * len(parents)
    if len(per_parent) != len(parents):
        raise ValueError(f"{len(per_parent)} genomes for {len(parents)} parents")
    dim, scale = per_parent[0].dim, per_parent[0].scale
    rng = np.random.default_rng(seed)
    eps = rng.standard_normal((len(parents), children_per_parent, dim))
    parent_nets = [g.decode(z) for g, z in zip(per_parent, parents)]
    parent_rep = [net for net in parent_nets for _ in range(children_per_parent)]

    def distance(sigma: float) -> float:
        kids = parents[:, None, :] + sigma * scale * eps
        children = [net for g, k in zip(per_parent, kids) for net in g.decode(k)]
        return float(action_distance(parent_rep, children, states).mean())

    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    if distance(math.exp(lo)) >= target:
        return float(math.exp(lo))
    if distance(math.exp(hi)) <= target:
        return float(math.exp(hi))
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if distance(math.exp(mid)) < target:
            lo = mid
        else:
            hi = mid
    return float(math.exp((lo + hi) / 2))
