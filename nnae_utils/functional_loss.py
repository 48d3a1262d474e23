"""The paper's functional loss of a layer code, computed for many networks at once.

A layer autoencoder (:mod:`nnae_utils.layer_codes`) replaces linear layer ``i`` of a policy network by its
decoded version; every other layer stays as it was. The functional loss is the distance between the
actions of the input network and those of the network with the decoded layer, on a batch of states.
This module holds the layers as vectors (:func:`layer_vectors`, :func:`split_layer_vector`,
:func:`layer_shape`), ``P`` same-architecture networks as stacked torch tensors
(:class:`StackedNetworks`), their forward pass from a given layer on (:func:`layer_input`,
:func:`forward_from`, :func:`stacked_actions`) and the loss itself (:func:`functional_loss`, with a
per-network numpy reference :func:`functional_loss_reference`).

The functional loss, for ``P`` networks at once (stacked tensors, batched matmuls)::

    L = mean over networks p and states s of || y_D(p, s) - y_I(p, s) ||_2

where the norm runs over the action dimensions. Layers before ``i`` are the same in both networks,
so their activations are computed once, without gradients (:func:`layer_input`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch

from .policies import Network, NetworkSpec, layer_vector, stack_params


# --------------------------------------------------------------------------- layer vectors


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


def hidden_sides(spec: NetworkSpec, layer: int) -> tuple[bool, bool]:
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
