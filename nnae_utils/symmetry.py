"""The hidden units' symmetries: permutations, weight matching, canonical forms.

Hidden units have no order (and ReLU units no scale) of their own; :data:`SYMMETRIES` names how an
autoencoder treats that: ``none``, ``align`` (weight matching to a reference; ``align_runs``: one
permutation per training run), ``augment`` (fresh random
permutations in every minibatch) or ``canonical`` (:func:`canonical_form`). Stage 2 saves each option's
autoencoders under ``symmetry/<option>/`` with the reference they use; a network is brought to the
option's form before they encode it:
``symmetry_networks(option, [net], load_network(stage2_dir / f"symmetry/{option}/reference.safetensors"))``
(for canonical, the saved reference is already canonical, and canonical_form of it is itself).

Every permutation and rescaling here leaves a network's actions exactly as they were; the
layer codes (:mod:`nnae_utils.layer_codes`) and their training (:mod:`nnae_utils.autoencoders`) use them.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from .functional_loss import StackedNetworks
from .policies import Network, NetworkSpec
from .stages import LayerAEParams

SYMMETRIES = LayerAEParams.SYMMETRIES
"""Ways of handling the arbitrary order (and ReLU scale) of hidden units, checked in one place (the stage's
parameters): ``none``; ``align`` (:func:`align_hidden_units` to a reference, network by network);
``align_runs`` (one permutation per training run, :func:`align_groups`); ``augment`` (a fresh random
permutation of every train network in every minibatch, :func:`random_hidden_permutations`); ``canonical``
(:func:`canonical_form`).

An encoder equivariant by construction is a form, not an option: ``equivariant`` (:class:`~nnae_utils.layer_codes.EquivariantCodec`,
a DWSNets / neural-functional design). The ``token`` form is half of one: like SANE's neuron tokens, one
shared encoder and decoder per output unit make its code equivariant to the order of the layer's
*output* units, but a token's coordinates are the layer's inputs, so on layers 1 and 2 it still sees the
previous layer's run-specific order."""


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
