"""The network file format: round trips, the forward pass, and every way a file can be broken."""
import json

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from nnae_utils.policies import (
    ACTIVATIONS,
    Network,
    NetworkFormatError,
    NetworkSpec,
    actor_to_network,
    forward,
    load_network,
    load_networks,
    make_actor,
    network_to_actor,
    read_index,
    save_network,
    stack_params,
    write_index,
)

SPECS = [
    NetworkSpec(11, 3, (64, 64)),
    NetworkSpec(11, 3, (16, 8), activation="elu", layer_norm="after", obs_norm=True),
    NetworkSpec(11, 3, (8,), activation="tanh", layer_norm="before", layer_norm_eps=1e-3),
]


@pytest.mark.parametrize("spec", SPECS)
def test_round_trip_is_exact(tmp_path, spec):
    net = Network.random(spec, seed=3)
    net.extra_metadata["run_seed"] = "7"
    path = save_network(tmp_path / "a.safetensors", net)
    back = load_network(path)
    assert back.spec == spec
    assert back.extra_metadata == {"run_seed": "7"}
    for name, value in net.params.items():
        assert back.params[name].dtype == np.float32
        np.testing.assert_array_equal(back.params[name], value)
    obs = np.random.default_rng(0).normal(size=(7, 11))
    np.testing.assert_array_equal(back.act(obs), net.act(obs))


@pytest.mark.parametrize("spec", SPECS)
def test_numpy_forward_matches_torch_actor(spec):
    actor = make_actor(spec)
    net = actor_to_network(spec, actor)
    if spec.obs_norm:
        net.params["obs_mean"][:] = 0.3
        net.params["obs_std"][:] = 2.0
        actor = network_to_actor(net)
    obs = np.random.default_rng(1).normal(size=(32, 11)).astype(np.float32)
    with torch.no_grad():
        expected = actor(torch.from_numpy(obs)).numpy()
    np.testing.assert_allclose(net.act(obs), expected, atol=1e-6)
    assert np.all(np.abs(net.act(obs * 100)) <= 1.0)


def test_stacked_forward_equals_each_network():
    spec = SPECS[1]
    nets = [Network.random(spec, seed=s) for s in range(4)]
    for n in nets:
        n.params["obs_std"][:] = 1.5
    stacked_spec, stacked = stack_params(nets)
    obs = np.random.default_rng(2).normal(size=(4, 5, 11))
    out = forward(stacked_spec, stacked, obs)
    for i, n in enumerate(nets):
        np.testing.assert_allclose(out[i], n.act(obs[i]), atol=1e-6)


def test_flat_round_trip_and_layer_replacement():
    spec = SPECS[0]
    net = Network.random(spec, seed=0)
    assert net.flat().shape == (spec.n_params,) == (11 * 64 + 64 + 64 * 64 + 64 + 64 * 3 + 3,)
    again = Network.from_flat(spec, net.flat())
    np.testing.assert_array_equal(again.flat(), net.flat())
    w, b = net.layer(1)
    changed = net.with_layer(1, np.zeros_like(w), np.zeros_like(b))
    assert not np.array_equal(changed.act(np.ones((1, 11))), net.act(np.ones((1, 11))))
    assert spec.layer_param_count(1) == 64 * 64 + 64


def test_truncated_file_is_a_clear_error(tmp_path):
    path = save_network(tmp_path / "a.safetensors", Network.random(SPECS[0]))
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(NetworkFormatError, match="cannot read network file"):
        load_network(tmp_path / "cut.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(NetworkFormatError):
        load_network(tmp_path / "junk.safetensors")
    with pytest.raises(NetworkFormatError, match="not found"):
        load_network(tmp_path / "missing.safetensors")


def test_inconsistent_files_are_rejected(tmp_path):
    spec = SPECS[0]
    net = Network.random(spec)
    meta = spec.to_metadata()
    tensors = dict(net.params)
    del tensors["layers.2.bias"]
    save_file(tensors, tmp_path / "missing_tensor.safetensors", metadata=meta)
    with pytest.raises(NetworkFormatError, match="missing"):
        load_network(tmp_path / "missing_tensor.safetensors")
    save_file({**net.params, "layers.0.weight": net.params["layers.0.weight"].astype(np.float64)},
              tmp_path / "f64.safetensors", metadata=meta)
    with pytest.raises(NetworkFormatError, match="float32"):
        load_network(tmp_path / "f64.safetensors")
    save_file(net.params, tmp_path / "nometa.safetensors")
    with pytest.raises(NetworkFormatError, match="not an nnae-network"):
        load_network(tmp_path / "nometa.safetensors")
    bad = dict(net.params)
    bad["layers.0.bias"] = np.full(64, np.nan, np.float32)
    save_file(bad, tmp_path / "nan.safetensors", metadata=meta)
    with pytest.raises(NetworkFormatError, match="non-finite"):
        load_network(tmp_path / "nan.safetensors")


def test_spec_validation():
    with pytest.raises(ValueError, match="activation"):
        NetworkSpec(11, 3, (8,), activation="gelu")
    with pytest.raises(ValueError, match="hidden"):
        NetworkSpec(11, 3, (8, 0))
    with pytest.raises(ValueError, match="layer_norm"):
        NetworkSpec(11, 3, (8,), layer_norm="sometimes")
    assert set(ACTIVATIONS) == {"relu", "tanh", "elu"}


def test_index_round_trip_and_checks(tmp_path):
    nets = [Network.random(SPECS[0], seed=s) for s in range(2)]
    for i, n in enumerate(nets):
        save_network(tmp_path / f"n{i}.safetensors", n)
    records = [
        {"id": f"n{i}", "return_mean": np.float64(1.5), "return_std": 0.1, "episodes": 2,
         "eval_seeds": np.array([5, 6]), "max_episode_steps": 1000, "provenance": {"run": i}}
        for i in range(2)
    ]
    write_index(tmp_path, records)
    back = read_index(tmp_path)
    assert back[0]["eval_seeds"] == [5, 6] and back[1]["provenance"] == {"run": 1}
    assert len(load_networks(tmp_path)) == 2
    with pytest.raises(ValueError, match="lacks"):
        write_index(tmp_path, [{"id": "n0"}])
    with pytest.raises(FileNotFoundError):
        write_index(tmp_path, [{**records[0], "id": "ghost"}])
    (tmp_path / "index.json").write_text(json.dumps([{"id": "ghost"}]))
    with pytest.raises(NetworkFormatError, match="no network file"):
        read_index(tmp_path)
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(NetworkFormatError, match="not valid JSON"):
        read_index(tmp_path)


def test_action_distance_is_the_mean_l2_of_each_pairs_actions_and_the_one_genomes_uses():
    """policies.action_distance is the one home (decoded's single-pair copy is gone; genomes imports it)."""
    import doctest

    from nnae_utils import genomes, policies
    from nnae_utils.policies import action_distance

    rng = np.random.default_rng(0)
    for spec in SPECS:
        parents = [Network.random(spec, seed=s) for s in range(3)]
        children = [Network.random(spec, seed=10 + s) for s in range(3)]
        states = rng.normal(size=(50, spec.obs_dim)).astype(np.float32)
        got = action_distance(parents, children, states)
        by_hand = [np.linalg.norm(c.act(states).astype(np.float64) - p.act(states), axis=-1).mean()
                   for p, c in zip(parents, children)]
        assert got.tolist() == by_hand
    assert genomes.action_distance is action_distance
    assert np.isnan(action_distance(parents, children, states[:0])).all()
    assert doctest.testmod(policies, raise_on_error=False).failed == 0
