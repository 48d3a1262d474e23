"""Layer autoencoders: shapes, the batched functional loss, PCA, training, checkpoints, the loader API.

Every test builds a synthetic zoo (``Network.random`` plus per-snapshot perturbations), so none
needs stage 1's artifacts.
"""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from nnae_utils import autoencoders as ae, layer_study
from nnae_utils.policies import Network, NetworkFormatError, NetworkSpec, load_network, save_network
from nnae_utils.pipeline import PROJECT_ROOT
from nnae_utils.stages import LayerAEParams, MissingInputError, ParameterError

import synthetic

SPEC = NetworkSpec(obs_dim=11, act_dim=3, hidden=(16, 12))
SPECS = [
    SPEC,
    NetworkSpec(11, 3, (8, 8), activation="elu", layer_norm="after", obs_norm=True),
    NetworkSpec(11, 3, (8,), activation="tanh", layer_norm="before"),
]


def synthetic_zoo(spec=SPEC, runs=3, per_run=4, seed=0):
    return synthetic.synthetic_zoo(spec, runs=runs, per_run=per_run, seed=seed, base_seed=1000 * seed)


def states(n=128, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 11)).astype(np.float32)


def tiny_config(**kw):
    base = dict(layer=1, form="flat", latent=4, hidden=32, max_epochs=3, steps_per_epoch=3, networks_per_batch=8,
                states_per_batch=16)
    return ae.LayerAEConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def zoo():
    return synthetic_zoo()


@pytest.fixture(scope="module")
def data(zoo):
    """Train on three snapshots of every run, validate on the fourth (a held-out *run* would arrive in a
    hidden-unit order the flat form has never seen: see the stage notebook)."""
    pool = states(512)
    train = [n for i, n in enumerate(zoo) if i % 4 != 3]
    val = [n for i, n in enumerate(zoo) if i % 4 == 3]
    return ae.LayerData.build(train, pool, 128, 0), ae.LayerData.build(val, pool, 128, 1)


# --------------------------------------------------------------------------- shapes and round trips


@pytest.mark.parametrize("form", ae.FORMS)
@pytest.mark.parametrize("layer", [0, 1, 2])
def test_shapes_and_latent_sizes(zoo, form, layer):
    cfg = tiny_config(layer=layer, form=form, latent=3)
    model = ae.LayerAutoencoder.create(cfg, SPEC, ae.StackedNetworks.from_networks(zoo))
    out, inp = ae.layer_shape(SPEC, layer)
    expected_dim = 3 * out if form == "token" else 3
    assert model.latent_dim == expected_dim
    assert model.compression_ratio == pytest.approx(out * (inp + 1) / expected_dim)
    z_one, z_many = model.encode(zoo[0]), model.encode(zoo[:5])
    assert z_one.shape == (expected_dim,) and z_many.shape == (5, expected_dim) and z_many.dtype == np.float32
    np.testing.assert_allclose(z_many[0], z_one, rtol=1e-5, atol=1e-6)
    # the same codes from (W, b) pairs and from layer vectors
    w, b = zoo[0].layer(layer)
    np.testing.assert_allclose(model.encode((w, b)), z_one, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.encode(ae.layer_vectors(zoo[:5], layer)), z_many, rtol=1e-5, atol=1e-6)
    w_hat, b_hat = model.decode(z_one)
    assert w_hat.shape == (out, inp) and b_hat.shape == (out,)
    w_many, b_many = model.decode(z_many)
    assert w_many.shape == (5, out, inp) and b_many.shape == (5, out)
    np.testing.assert_allclose(w_many[0], w_hat, rtol=1e-5, atol=1e-6)


def test_layer_vector_round_trip(zoo):
    for layer in range(SPEC.n_layers):
        vec = ae.layer_vector(zoo[0], layer)
        w, b = ae.split_layer_vector(vec, *ae.layer_shape(SPEC, layer))
        np.testing.assert_array_equal(w, zoo[0].layer(layer)[0])
        np.testing.assert_array_equal(b, zoo[0].layer(layer)[1])
    vecs = ae.layer_vectors(zoo[:3], 1)
    np.testing.assert_array_equal(ae.tokens_to_vecs(ae.vecs_to_tokens(vecs, 12, 16), 12, 16), vecs)


def test_token_form_is_equivariant_to_the_order_of_output_neurons(zoo):
    model = ae.LayerAutoencoder.create(tiny_config(form="token", latent=2), SPEC, ae.StackedNetworks.from_networks(zoo))
    w, b = zoo[0].layer(1)
    perm = np.random.default_rng(0).permutation(len(b))
    z, z_perm = model.encode((w, b)).reshape(len(b), 2), model.encode((w[perm], b[perm])).reshape(len(b), 2)
    np.testing.assert_allclose(z_perm, z[perm], rtol=1e-5, atol=1e-6)


def test_ratio_to_latent_and_the_token_forms_cap():
    spec = NetworkSpec(11, 3, (64, 64))
    assert ae.latent_for_ratio(spec, 1, "flat", 10) == (416, 10.0)
    k, achieved = ae.latent_for_ratio(spec, 0, "token", 32)
    assert (k, achieved) == (1, 12.0)  # 11 inputs + 1 bias per token: 12x at most on the first layer
    runs, skipped = ae.plan_experiments(spec, main_ratio=10, sweep_ratios=[4, 10, 32], max_flat_latent=512,
                                        flat_hidden=64, token_hidden=16)
    names = [r.config.name for r in runs]
    assert len(names) == len(set(names))  # coinciding runs are trained once
    token0 = next(r for r in runs if r.config.name == "layer0_token_functional_k1")
    assert {"main", "sweep", "ablation"} <= token0.roles and not token0.reachable
    assert skipped == [{"layer": 1, "form": "flat", "ratio": 4, "latent": 1040}]
    assert sum("main" in r.roles for r in runs) == 6 and sum("ablation" in r.roles for r in runs) == 24


# --------------------------------------------------------------------------- the functional loss


@pytest.mark.parametrize("spec", SPECS, ids=["relu", "elu-ln-after-obsnorm", "tanh-ln-before"])
def test_batched_functional_loss_equals_the_per_network_reference(spec):
    nets = synthetic_zoo(spec, runs=2, per_run=3)
    stack = ae.StackedNetworks.from_networks(nets)
    rng = np.random.default_rng(1)
    for layer in range(spec.n_layers):
        w, b = stack.layer(layer)
        w_hat = w + 0.1 * torch.from_numpy(rng.normal(size=w.shape).astype(np.float32))
        b_hat = b + 0.1 * torch.from_numpy(rng.normal(size=b.shape).astype(np.float32))
        per_net_states = states(len(nets) * 20, seed=layer).reshape(len(nets), 20, 11)
        batched = ae.functional_loss(stack, layer, w_hat, b_hat, per_net_states, reduce=False).numpy()
        reference = [ae.functional_loss_reference(n, layer, w_hat[p].numpy(), b_hat[p].numpy(), per_net_states[p])
                     for p, n in enumerate(nets)]
        np.testing.assert_allclose(batched, reference, rtol=1e-4, atol=1e-6)
        shared = ae.functional_loss(stack, layer, w_hat, b_hat, per_net_states[0])  # (B, obs) shared by all
        ref_shared = np.mean([ae.functional_loss_reference(n, layer, w_hat[p].numpy(), b_hat[p].numpy(), per_net_states[0])
                              for p, n in enumerate(nets)])
        assert float(shared) == pytest.approx(ref_shared, rel=1e-4)


def test_stacked_actions_match_network_act():
    nets = synthetic_zoo(SPECS[1], runs=1, per_run=3)
    x = states(10)
    acts = ae.stacked_actions(ae.StackedNetworks.from_networks(nets), x).numpy()
    for p, n in enumerate(nets):
        np.testing.assert_allclose(acts[p], n.act(x), rtol=1e-5, atol=1e-6)


def test_loss_is_zero_with_a_finite_gradient_when_the_decoded_layer_is_the_input(zoo):
    stack = ae.StackedNetworks.from_networks(zoo[:4])
    for layer in range(SPEC.n_layers):
        w, b = (t.clone().requires_grad_(True) for t in stack.layer(layer))
        loss = ae.functional_loss(stack, layer, w, b, states(32))
        assert loss.item() == 0.0
        loss.backward()
        assert torch.isfinite(w.grad).all() and torch.isfinite(b.grad).all()


# --------------------------------------------------------------------------- PCA


@pytest.mark.parametrize("form", ae.FORMS)
def test_pca_with_full_rank_reconstructs_exactly(zoo, form):
    train = zoo[:6]
    layer = 1
    full = ae.PCALayerCode.fit(train, layer, form, k=1)
    full = full.with_k(full.rank)
    w, b = full.decode(full.encode(train))
    np.testing.assert_allclose(w, np.stack([n.layer(layer)[0] for n in train]), atol=1e-5)
    np.testing.assert_allclose(b, np.stack([n.layer(layer)[1] for n in train]), atol=1e-5)
    if form == "token":  # 6 networks x 12 tokens span the whole 17-d token space: any network is exact
        w, b = full.decode(full.encode(zoo[-1]))
        np.testing.assert_allclose(w, zoo[-1].layer(layer)[0], atol=1e-5)
    # fewer components lose information, and the explained variance says how much is kept
    small = full.with_k(1)
    assert small.explained_variance() < 1.0 and full.explained_variance() == pytest.approx(1.0)
    assert small.latent_dim == (12 if form == "token" else 1)


def test_pca_beyond_its_rank_pads_with_empty_directions(zoo):
    pca = ae.PCALayerCode.fit(zoo[:3], 0, "flat", k=10)
    assert pca.rank == 3 and pca.encode(zoo[0]).shape == (10,)
    assert np.allclose(pca.encode(zoo[0])[3:], 0)


# --------------------------------------------------------------------------- training


@pytest.mark.parametrize("form", ae.FORMS)
def test_training_reduces_validation_loss_and_stops_early(data, form):
    train, val = data
    cfg = tiny_config(form=form, latent=4 if form == "flat" else 3, lr=3e-3, max_epochs=200, steps_per_epoch=4,
                      patience=2, min_delta=0.05)
    untrained = ae.evaluate_code(ae.LayerAutoencoder.create(cfg, SPEC, train.stack), val, 1.0)["functional"]
    res = ae.train_layer_autoencoder(cfg, train, val)
    assert res.best["val_functional"] < 0.8 * untrained
    assert res.stopped_early and res.epochs_run < cfg.max_epochs
    assert res.best_epoch == res.epochs_run - cfg.patience
    # the returned model is the best epoch's, not the last one's
    assert ae.evaluate_code(res.model, val, 1.0)["functional"] == pytest.approx(res.best["val_functional"], rel=1e-5)
    assert {"train_functional", "val_functional", "val_weight_mse", "train_objective"} <= set(res.history[0])


def test_stopping_networks_decide_the_epoch_kept_and_validation_is_still_recorded(data):
    train, val = data
    cfg = tiny_config(lr=3e-3, max_epochs=12, steps_per_epoch=3, patience=3, min_delta=0.0)
    # stopping on the train networks themselves: their loss keeps falling, so training runs longer
    # than it would on validation, and the kept epoch is the best on them, not on validation
    res = ae.train_layer_autoencoder(cfg, train, val, stop_on=train)
    stop = [h["holdout_objective"] for h in res.history]
    assert res.best_epoch == 1 + int(np.argmin(stop))
    assert all(np.isfinite(h["val_functional"]) for h in res.history)
    assert ae.evaluate_code(res.model, train, 1.0)["functional"] == pytest.approx(res.best["holdout_functional"], rel=1e-5)
    plain = ae.train_layer_autoencoder(cfg, train, val)
    assert "holdout_objective" not in plain.history[0]
    assert [h["val_functional"] for h in plain.history[: len(res.history)]] == \
        [h["val_functional"] for h in res.history[: len(plain.history)]]  # the same training, another stopping rule


def test_training_is_seeded(data):
    train, val = data
    a = ae.train_layer_autoencoder(tiny_config(max_epochs=2), train, val)
    b = ae.train_layer_autoencoder(tiny_config(max_epochs=2), train, val)
    assert [h["val_functional"] for h in a.history] == [h["val_functional"] for h in b.history]


def test_a_saved_training_is_read_back_equal_and_only_for_the_same_settings_and_data(tmp_path, data, zoo, monkeypatch):
    train, val = data
    cfg = tiny_config(max_epochs=2)
    first, reused = ae.train_or_reuse_layer_autoencoder(cfg, train, val, stop_on=val, save_dir=tmp_path)
    assert not reused
    direct = ae.train_layer_autoencoder(cfg, train, val, stop_on=val)
    assert [h["val_functional"] for h in direct.history] == [h["val_functional"] for h in first.history]

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(ae, "train_layer_autoencoder", no_training)
    again, reused = ae.train_or_reuse_layer_autoencoder(cfg, train, val, stop_on=val, save_dir=tmp_path)
    assert reused
    assert again.history == first.history
    assert (again.best_epoch, again.epochs_run, again.stopped_early, again.wall_seconds, again.dagger_states) == (
        first.best_epoch, first.epochs_run, first.stopped_early, first.wall_seconds, first.dagger_states)
    for key, value in first.model.state_dict().items():
        assert torch.equal(again.model.state_dict()[key], value), key

    # another setting, other stopping networks, or other data: trained, never read back
    other_val = ae.LayerData.build(list(zoo[3::4]), states(512), 128, seed=7)
    for args, kwargs in [((tiny_config(max_epochs=3), train, val), {"stop_on": val}),
                         ((cfg, train, val), {"stop_on": None}),
                         ((cfg, train, other_val), {"stop_on": val})]:
        with pytest.raises(AssertionError, match="trained again"):
            ae.train_or_reuse_layer_autoencoder(*args, **kwargs, save_dir=tmp_path)


def test_autoencoders_trained_in_parallel_processes_equal_those_trained_one_after_another(tmp_path, data):
    train, val = data
    configs = [tiny_config(max_epochs=2), tiny_config(max_epochs=2, form="token", latent=2), tiny_config(max_epochs=2, layer=0)]
    one = ae.train_many_layer_autoencoders(configs, train, val, stop_on=val, save_dir=tmp_path / "one", jobs=1,
                                           progress=False, backend="local")
    two = ae.train_many_layer_autoencoders(configs, train, val, stop_on=val, save_dir=tmp_path / "two", jobs=2,
                                           progress=False, backend="local")
    assert [reused for _, reused in one + two] == [False] * 6
    for (a, _), (b, _), cfg in zip(one, two, configs):
        assert b.model.config == cfg
        assert [h["val_functional"] for h in a.history] == [h["val_functional"] for h in b.history]
        for key, value in a.model.state_dict().items():
            assert torch.equal(b.model.state_dict()[key], value), key
    # a parallel rerun reads back what the sequential run saved (the same thread count: the same fingerprint)
    again = ae.train_many_layer_autoencoders(configs, train, val, stop_on=val, save_dir=tmp_path / "one", jobs=2,
                                             progress=False, backend="local")
    assert [reused for _, reused in again] == [True] * 3


@pytest.mark.parametrize("loss", ["weights", "both"])
def test_weight_losses_train(data, loss):
    train, val = data
    res = ae.train_layer_autoencoder(tiny_config(loss=loss, max_epochs=2), train, val)
    assert res.epochs_run == 2 and np.isfinite(res.best["val_objective"])


def test_dagger_variant_rolls_out_decoded_networks(data):
    train, val = data
    cfg = tiny_config(loss="dagger", max_epochs=2, dagger_every=1, dagger_networks=2, dagger_max_steps=8)
    res = ae.train_layer_autoencoder(cfg, train, val)
    assert 0 < res.dagger_states <= 2 * 2 * 8
    per_net = ae.onpolicy_functional_loss(res.model, val.networks[:2], max_steps=8, states_per_network=16)
    assert per_net.shape == (2,) and np.all(per_net >= 0)


def test_split_states_keeps_held_out_networks_states_apart():
    s = np.arange(20, dtype=np.float32)[:, None].repeat(11, 1)
    owner = np.array([0] * 5 + [1] * 5 + [2] * 5 + [-1] * 5)
    is_random = owner < 0
    out = ae.split_states(s, is_random, owner, ["train", "validation", "test"], seed=0)
    assert set(out["train"][:, 0]) >= set(range(5)) and not set(out["train"][:, 0]) & set(range(5, 15))
    assert set(out["validation"][:, 0]) >= set(range(5, 10)) and len(out["train"]) + len(out["validation"]) == 15


# --------------------------------------------------------------------------- checkpoints and the loader API


@pytest.mark.parametrize("form", ae.FORMS)
def test_checkpoint_round_trip(tmp_path, data, zoo, form):
    train, val = data
    res = ae.train_layer_autoencoder(tiny_config(form=form, max_epochs=1, latent=2), train, val)
    path = ae.save_layer_autoencoder(tmp_path / "ae.safetensors", res.model, info={"val_functional": 0.5})
    back = ae.load_layer_autoencoder(path)
    assert back.config == res.model.config and back.spec == SPEC and not back.training
    np.testing.assert_array_equal(back.encode(zoo), res.model.encode(zoo))
    z = res.model.encode(zoo[0])
    for a, b in zip(back.decode(z), res.model.decode(z)):
        np.testing.assert_array_equal(a, b)
    info = ae.checkpoint_info(path)
    assert info["info"] == {"val_functional": 0.5} and info["config"]["form"] == form


def test_pca_checkpoint_round_trip(tmp_path, zoo):
    pca = ae.PCALayerCode.fit(zoo[:6], 2, "flat", k=3)
    back = ae.load_pca(ae.save_pca(tmp_path / "p.safetensors", pca))
    np.testing.assert_array_equal(back.encode(zoo), pca.encode(zoo))
    assert ae.load_pca(tmp_path / "p.safetensors", k=5).latent_dim == 5


def test_decoded_networks_are_valid_network_files(tmp_path, data, zoo):
    train, val = data
    codes = {}
    for layer in range(SPEC.n_layers):
        model = ae.train_layer_autoencoder(tiny_config(layer=layer, max_epochs=1), train, val).model
        ae.save_layer_autoencoder(tmp_path / "stage" / "autoencoders" / f"layer{layer}_flat.safetensors", model)
    codes = ae.load_layer_codes(tmp_path / "stage", "flat")
    assert sorted(codes) == [0, 1, 2]
    one = ae.decode_network(zoo[0], codes[1])  # one layer replaced
    np.testing.assert_array_equal(one.layer(0)[0], zoo[0].layer(0)[0])
    assert not np.array_equal(one.layer(1)[0], zoo[0].layer(1)[0])
    every = ae.decode_network(zoo[0], codes)  # every layer replaced
    assert json.loads(every.extra_metadata["decoded_layers"]) == [0, 1, 2]
    back = load_network(save_network(tmp_path / "decoded.safetensors", every))
    np.testing.assert_array_equal(back.flat(), every.flat())
    # a latent genome plus a base network: what stage 4 will evolve
    z = codes[2].encode(zoo[3]) + 0.1
    net = ae.network_from_latents(zoo[3], codes, {2: z})
    np.testing.assert_allclose(net.layer(2)[0], codes[2].decode(z)[0])
    # PCA codes work through the same helpers
    pca = ae.PCALayerCode.fit(zoo[:8], 1, "token", k=2)
    assert ae.decode_network(zoo[0], pca).spec == SPEC


# --------------------------------------------------------------------------- errors


def test_error_cases(tmp_path, zoo, data):
    train, val = data
    with pytest.raises(ValueError, match="form must be one of"):
        tiny_config(form="graph")
    with pytest.raises(ValueError, match="loss must be one of"):
        tiny_config(loss="vibes")
    with pytest.raises(ValueError, match="latent must be > 0"):
        tiny_config(latent=0)
    with pytest.raises(ValueError, match="layer must lie in"):
        ae.latent_for_ratio(SPEC, 5, "flat", 10)
    with pytest.raises(ValueError, match="compression ratio is >= 1"):
        ae.latent_for_ratio(SPEC, 0, "flat", 0.5)
    with pytest.raises(ValueError, match="does not exist"):
        ae.train_layer_autoencoder(tiny_config(layer=3), train, val)
    model = ae.LayerAutoencoder.create(tiny_config(), SPEC, train.stack)
    with pytest.raises(ValueError, match="latent codes of this autoencoder have 4"):
        model.decode(np.zeros(5))
    with pytest.raises(ValueError, match="numbers"):
        model.encode(np.zeros(7))
    with pytest.raises(ValueError, match="differs"):
        model.encode([Network.random(NetworkSpec(11, 3, (8, 8)))])
    with pytest.raises(ValueError, match="states must be"):
        ae.functional_loss(train.stack, 0, *train.stack.layer(0), np.zeros((3, 2, 11), np.float32))
    with pytest.raises(ValueError, match="no code given for layer"):
        ae.decode_network(zoo[0], model, layers=[0])
    with pytest.raises(ValueError, match="without networks"):
        ae.LayerData.build([], states(4), 2, 0)
    # files: missing, corrupt, of another kind
    with pytest.raises(ae.AutoencoderFormatError, match="not found"):
        ae.load_layer_autoencoder(tmp_path / "none.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(ae.AutoencoderFormatError, match="cannot read"):
        ae.load_layer_autoencoder(tmp_path / "bad.safetensors")
    net_path = save_network(tmp_path / "net.safetensors", zoo[0])
    with pytest.raises(ae.AutoencoderFormatError, match="not a nnae-layer-autoencoder"):
        ae.load_layer_autoencoder(net_path)
    with pytest.raises(ae.AutoencoderFormatError, match="no autoencoder checkpoints"):
        ae.load_layer_codes(tmp_path, "flat")
    with pytest.raises(NetworkFormatError):  # a decoded layer must still fit the network it replaces
        zoo[0].with_layer(1, np.zeros((3, 3)), np.zeros(3))


@pytest.mark.parametrize(
    "values, message",
    [
        ({"main_ratio": 0.5}, "compression ratios must be >= 1"),
        ({"sweep_ratios": [10.0, 0.2]}, "compression ratios must be >= 1"),
        ({"sweep_ratios": []}, "sweep_ratios must be > 0"),
        ({"max_epochs": 0}, "max_epochs must be > 0"),
        ({"dagger_fraction": 1.5}, "dagger_fraction must lie in"),
        ({"min_delta": 1.0}, "min_delta must lie in"),
        ({"lr": -1.0}, "lr must be > 0"),
        ({"weight_loss_coef": -1.0}, "weight_loss_coef must be >= 0"),
        ({"flat_hidden": "wide"}, "flat_hidden must be an integer"),
        ({"stop_on": "test"}, "stop_on must be validation or train_holdout"),
        ({"stop_on": "train_holdout", "holdout_every": 1}, "holdout_every must be >= 2"),
        ({"symmetry": ["none", "sorted"]}, "symmetry must list distinct options"),
        ({"symmetry": ["align"]}, "'none' among them"),
        ({"symmetry": ["none", "align", "align"]}, "symmetry must list distinct options"),
    ],
)
def test_bad_stage_parameters_are_rejected(values, message):
    with pytest.raises(ParameterError, match=message):
        LayerAEParams.from_mapping(values)


def test_missing_data_stage_is_a_missing_input_naming_it(tmp_path):
    with pytest.raises(MissingInputError, match="stage 'data'"):
        LayerAEParams(run_dir=str(tmp_path)).upstream_dir("data")


# --------------------------------------------------------------------------- hidden-unit alignment


@pytest.mark.parametrize("spec", SPECS, ids=["relu", "elu-ln-after-obsnorm", "tanh-ln-before"])
def test_alignment_keeps_the_function_and_undoes_a_permutation(spec):
    ref, other = synthetic_zoo(spec, runs=2, per_run=1)
    rng = np.random.default_rng(3)
    shuffled = ae.permute_hidden_units(ref, [rng.permutation(h) for h in spec.hidden])
    x = states(16)
    np.testing.assert_allclose(shuffled.act(x), ref.act(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ae.align_hidden_units(shuffled, ref).flat(), ref.flat())
    aligned = ae.align_hidden_units(other, ref)  # another network: reordered, same actions
    np.testing.assert_allclose(aligned.act(x), other.act(x), rtol=1e-5, atol=1e-6)
    assert np.linalg.norm(aligned.flat() - ref.flat()) <= np.linalg.norm(other.flat() - ref.flat())  # never farther
    with pytest.raises(ValueError, match="not a permutation"):
        ae.permute_hidden_units(ref, [np.zeros(h, int) for h in spec.hidden])


# --------------------------------------------------------------------------- symmetry options


def rescaled(net, factors):
    """``net`` with hidden unit j of layer g scaled by ``factors[g][j] > 0`` and the next layer's column
    divided by it: the same function for ReLU units, other weights."""
    params = dict(net.params)
    for g, a in enumerate(factors):
        a = np.asarray(a, np.float32)
        params[f"layers.{g}.weight"] = params[f"layers.{g}.weight"] * a[:, None]
        params[f"layers.{g}.bias"] = params[f"layers.{g}.bias"] * a
        params[f"layers.{g + 1}.weight"] = params[f"layers.{g + 1}.weight"] / a[None, :]
    return Network(net.spec, params)


def test_canonical_form_keeps_the_function_with_unit_norm_units():
    net, ref = synthetic_zoo(runs=2, per_run=1)
    x = states(64)
    for canon in (ae.rescale_hidden_units(net), ae.canonical_form(net), ae.canonical_form(net, ref)):
        np.testing.assert_allclose(canon.act(x), net.act(x), rtol=1e-5, atol=1e-5)
        for g in range(len(SPEC.hidden)):
            w, b = canon.layer(g)
            np.testing.assert_allclose(np.sqrt((w.astype(np.float64) ** 2).sum(1) + b.astype(np.float64) ** 2), 1.0, rtol=1e-5)
    assert not np.allclose(ae.canonical_form(net).flat(), net.flat())


@pytest.mark.parametrize("with_reference", [False, True])
def test_canonical_form_is_invariant_to_a_permutation_and_a_positive_rescaling(with_reference):
    net, ref = synthetic_zoo(runs=2, per_run=1, seed=1)
    rng = np.random.default_rng(7)
    moved = ae.permute_hidden_units(net, [rng.permutation(h) for h in SPEC.hidden])
    moved = rescaled(moved, [rng.uniform(0.2, 5.0, h) for h in SPEC.hidden])
    x = states(64)
    np.testing.assert_allclose(moved.act(x), net.act(x), rtol=1e-4, atol=1e-5)  # the same function ...
    assert not np.allclose(moved.flat(), net.flat(), atol=1e-2)                 # ... in other weights
    reference = ref if with_reference else None
    np.testing.assert_allclose(ae.canonical_form(moved, reference).flat(), ae.canonical_form(net, reference).flat(),
                               rtol=1e-4, atol=1e-5)


def test_runs_are_aligned_with_one_permutation_each_and_keep_their_function():
    nets = synthetic.synthetic_zoo(SPEC, runs=3, per_run=3, seed=4)
    runs = [i // 3 for i in range(9)]
    aligned = ae.align_groups(nets, nets[0], runs)
    x = states(16)
    for before, after in zip(nets, aligned):
        np.testing.assert_allclose(after.act(x), before.act(x), rtol=1e-5, atol=1e-5)
    for r in range(3):  # snapshots of one run keep their differences: one permutation moved them all
        members = [i for i in range(9) if runs[i] == r]
        perm_pairs = [(ae.hidden_unit_matching(aligned[i], nets[i]), ae.hidden_unit_matching(aligned[members[0]], nets[members[0]]))
                      for i in members]
        assert all(all(np.array_equal(a, b) for a, b in zip(p, q)) for p, q in perm_pairs)
    with pytest.raises(ValueError, match="needs the training run"):
        ae.symmetry_networks("align_runs", nets, nets[0])
    with pytest.raises(ValueError, match="one group label per network"):
        ae.align_groups(nets, nets[0], runs[:-1])


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_the_equivariant_form_follows_the_hidden_units_and_trains(tmp_path, data, zoo, layer):
    k, ratio = ae.latent_for_ratio(SPEC, layer, "equivariant", 4.0)
    out, inp = ae.layer_shape(SPEC, layer)
    units = (out if layer < 2 else 0) + (inp if layer > 0 else 0)
    assert ratio == pytest.approx(out * (inp + 1) / (k * units))
    cfg = tiny_config(layer=layer, form="equivariant", latent=k, hidden=16, max_epochs=2)
    model = ae.train_layer_autoencoder(cfg, *data).model
    assert model.latent_dim == k * units and model.compression_ratio == pytest.approx(ratio)
    rng = np.random.default_rng(layer)
    perms = [rng.permutation(h) for h in SPEC.hidden]
    moved = [ae.permute_hidden_units(n, perms) for n in zoo[:4]]
    w, b = model.decode(model.encode(zoo[:4]))
    w_moved, b_moved = model.decode(model.encode(moved))
    if layer < 2:  # its outputs are hidden units: the decoded rows move with them
        w, b = w[:, perms[layer]], b[:, perms[layer]]
    if layer > 0:  # its inputs are hidden units: the decoded columns move with them
        w = w[:, :, perms[layer - 1]]
    np.testing.assert_allclose(w_moved, w, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(b_moved, b, rtol=1e-4, atol=1e-5)
    x = states(16)  # so a permuted network decodes to the same function as the original
    np.testing.assert_allclose(ae.decode_network(moved[0], model).act(x), ae.decode_network(zoo[0], model).act(x),
                               rtol=1e-4, atol=1e-5)
    path = ae.save_layer_autoencoder(tmp_path / "eq.safetensors", model)
    np.testing.assert_allclose(ae.load_layer_autoencoder(path).encode(zoo[:2]), model.encode(zoo[:2]), rtol=1e-6)
    with pytest.raises(ValueError, match="form must be one of"):
        ae.PCALayerCode.fit(zoo, layer, "equivariant", 2)


def test_rescaling_is_refused_where_it_would_change_the_function():
    net = synthetic_zoo(SPECS[1], runs=1, per_run=1)[0]  # elu with LayerNorm
    with pytest.raises(ValueError, match="ReLU units without LayerNorm"):
        ae.canonical_form(net)


def test_augment_permutations_are_seeded_and_keep_every_networks_function(zoo):
    stack = ae.StackedNetworks.from_networks(zoo[:5])
    first = ae.random_hidden_permutations(SPEC, 5, np.random.default_rng(3))
    again = ae.random_hidden_permutations(SPEC, 5, np.random.default_rng(3))
    rng = np.random.default_rng(3)
    ae.random_hidden_permutations(SPEC, 5, rng)
    later = ae.random_hidden_permutations(SPEC, 5, rng)  # the next minibatch's draw
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, later))
    assert [tuple(p.shape) for p in first] == [(5, h) for h in SPEC.hidden]
    assert all(sorted(row.tolist()) == list(range(p.shape[1])) for p in first for row in p)
    permuted = ae.permute_stacked(stack, first)
    x = states(32)
    torch.testing.assert_close(ae.stacked_actions(permuted, x), ae.stacked_actions(stack, x), rtol=1e-5, atol=1e-6)
    assert not torch.equal(permuted.layer(1)[0], stack.layer(1)[0])
    for p in range(5):  # network p moved as permute_hidden_units moves it
        one = ae.permute_hidden_units(zoo[p], [perm[p].numpy() for perm in first])
        np.testing.assert_array_equal(permuted.layer(1)[0][p].numpy(), one.layer(1)[0])


def test_the_mean_over_units_does_not_depend_on_the_order_of_the_train_networks_units(zoo):
    rng = np.random.default_rng(5)
    shuffled = [ae.permute_hidden_units(n, [rng.permutation(h) for h in SPEC.hidden]) for n in zoo[:8]]
    pool = states(128)
    val = ae.LayerData.build(zoo[8:], pool, 64, 1)
    plain, moved = ae.LayerData.build(zoo[:8], pool, 64, 0), ae.LayerData.build(shuffled, pool, 64, 0)
    for layer in range(SPEC.n_layers):
        same = [ae.mean_layer_loss(d, val, layer, over_units=True) for d in (plain, moved)]
        assert same[0] == pytest.approx(same[1], rel=1e-5)
    assert ae.mean_layer_loss(plain, val, 1) != pytest.approx(ae.mean_layer_loss(moved, val, 1), rel=1e-3)


@pytest.mark.parametrize("symmetry", ae.SYMMETRIES)
def test_every_symmetry_option_trains_a_tiny_autoencoder_on_held_out_runs(symmetry):
    nets = synthetic.synthetic_zoo(SPEC, runs=3, per_run=3, seed=0)
    pool = states(256)
    reference = nets[0]
    runs = [i // 3 for i in range(9)]
    train_nets = ae.symmetry_networks(symmetry, nets[:6], reference, runs[:6])   # runs 0 and 1
    val_nets = ae.symmetry_networks(symmetry, nets[6:], reference, runs[6:])     # run 2, held out
    x = states(16)
    for before, after in zip(nets, train_nets + val_nets):
        np.testing.assert_allclose(after.act(x), before.act(x), rtol=1e-5, atol=1e-5)
    train, val = ae.LayerData.build(train_nets, pool, 64, 0), ae.LayerData.build(val_nets, pool, 64, 1)
    cfg = tiny_config(layer=1, symmetry=symmetry, networks_per_batch=4)
    result = ae.train_layer_autoencoder(cfg, train, val)
    again = ae.train_layer_autoencoder(cfg, train, val)
    assert result.history == [{**h, "seconds": r["seconds"]} for h, r in zip(again.history, result.history)]  # seeded
    rows = ae.symmetry_rows(symmetry, [result], train, val)
    assert len(rows) == 1 and rows[0]["symmetry"] == symmetry and np.isfinite(rows[0]["val_over_mean_layer"])
    assert cfg.name == "layer1_flat_functional_k4" + ("" if symmetry == "none" else f"_{symmetry}")
    assert cfg.derived_seed() == replace(cfg, symmetry="none").derived_seed()  # every option starts alike
    if symmetry == "augment":  # the same data and seed without augmentation trains another model
        plain = ae.train_layer_autoencoder(tiny_config(layer=1, networks_per_batch=4), train, val)
        assert plain.history[0]["train_objective"] != result.history[0]["train_objective"]
    with pytest.raises(ValueError, match="symmetry must be one of"):
        tiny_config(symmetry="sorted")


def test_symmetry_options_retrain_the_main_autoencoders_and_none_reads_them_back(tmp_path):
    nets = synthetic.synthetic_zoo(SPEC, runs=3, per_run=3, seed=2)
    split = {"train": nets[:5], "holdout": nets[5:6], "validation": nets[6:]}
    pools = {"train": states(256, 1), "validation": states(256, 2)}
    configs = [tiny_config(layer=0, latent=6), tiny_config(layer=2, form="token", latent=2)]
    train = ae.LayerData.build(split["train"], pools["train"], 64, seed=0)
    val = ae.LayerData.build(split["validation"], pools["validation"], 64, seed=1)
    held = ae.LayerData.build(split["holdout"], pools["train"], 64, seed=2)
    main = ae.train_many_layer_autoencoders(configs, train, val, stop_on=held, save_dir=tmp_path, progress=False)
    groups = {"train": [0, 0, 0, 1, 1], "holdout": [1], "validation": [2, 2, 2]}
    runs = ae.train_symmetry_options(ae.SYMMETRIES, configs, split, pools, nets[0], eval_states=64, seed=0,
                                     save_dir=tmp_path, progress=False, groups=groups)
    assert list(runs) == list(ae.SYMMETRIES)
    assert [reused for _, reused in runs["none"].results] == [True, True]  # the main autoencoders, not retrained
    assert runs["none"].results[0][0].history == main[0][0].history
    assert all(not reused for o in ae.SYMMETRIES[1:] for _, reused in runs[o].results)
    rows = [row for run in runs.values() for row in run.rows()]
    assert len(rows) == 2 * len(ae.SYMMETRIES) and all(np.isfinite(r["val_over_mean_layer"]) for r in rows)
    assert all(np.isfinite(r["holdout_over_mean_layer"]) for r in rows)  # split by network, beside split by run
    canonical = runs["canonical"]
    np.testing.assert_allclose(canonical.reference.flat(), ae.canonical_form(nets[0]).flat())
    # the option's networks compute the same actions: the mean layer moves, the input networks' actions do not
    x = states(16)
    torch.testing.assert_close(ae.stacked_actions(canonical.val.stack, x), ae.stacked_actions(val.stack, x), rtol=1e-4, atol=1e-5)


def test_the_flat_form_trains_on_the_shipped_zoo_with_the_default_learning_rate():
    """Regression test for issue 5's finding (benchmarks/functional_loss_training.py): at Adam lr 1e-3,
    the flat autoencoder of the shipped zoo's 64x64 layer diverges within a few hundred steps (its
    ELU units saturate, the decoded layers blow up and kill hidden units) and stays at the mean
    layer's loss; at the default lr it learns. A real zoo is needed: random networks do not show it."""
    from nnae_utils.rollouts import evaluate
    from nnae_utils.zoo import load_zoo

    shipped = load_zoo(PROJECT_ROOT / "zoo" / "hopper-v5")
    train_ids = set(shipped.splits["train"])
    train_nets = [n for n, r in zip(shipped.networks, shipped.records) if r["id"] in train_ids][::2]
    states = evaluate(train_nets[:4], np.arange(4).reshape(-1, 1), record="observations",
                      max_steps=500, nthread=1).observations.astype(np.float32)
    data = ae.LayerData.build(train_nets, states, 512, seed=0)
    latent, _ = ae.latent_for_ratio(train_nets[0].spec, 1, "flat", 10.0)
    cfg = ae.LayerAEConfig(layer=1, form="flat", latent=latent, hidden=256, max_epochs=15, steps_per_epoch=20,
                           patience=15, networks_per_batch=32, states_per_batch=64)
    torch.set_num_threads(1)
    result = ae.train_layer_autoencoder(cfg, data, data)
    mean_layer = ae.mean_layer_loss(data, data, 1)
    assert result.best["train_functional"] < 0.5 * mean_layer, (result.best, mean_layer)
    assert result.history[-1]["train_weight_mse"] < 10.0  # no blown-up decoded layers at the end either


def test_stage_data_splits_the_zoo_as_notebook_02_trains_on_it(tmp_path):
    """StageData (notebook 02 and the stage-2 benchmarks): the held-out train snapshots are out of the train
    networks, every network is labelled with its run, the reference is the best train network."""
    import shutil

    from nnae_utils.states import StateDataset
    from nnae_utils.zoo import load_zoo

    shutil.copytree(PROJECT_ROOT / "zoo" / "hopper-v5", tmp_path / "zoo")
    zoo = load_zoo(tmp_path / "zoo")
    owner = np.arange(200) % (len(zoo.records) + 1) - 1  # -1: a random state
    StateDataset(states(200), owner < 0, owner).save(tmp_path / "states.npz")
    data = ae.StageData.load(tmp_path, seed=0, holdout_every=3)
    assert data.holdout_ids == set(zoo.holdout_snapshots(3)) and data.holdout_ids
    train_ids = [zoo.records[i]["id"] for i in data.trained["train"]]
    assert set(train_ids) == set(zoo.ids("train")) - data.holdout_ids
    assert len(data.held) == len(data.holdout_ids) and len(data.groups()["holdout"]) == len(data.holdout_ids)
    assert data.labels == [f"run{r['provenance']['run']}" for r in zoo.records]  # TD3 snapshots: their run
    assert data.runs("validation") and not set(data.runs("validation")) & set(data.runs("train"))
    best = max(data.trained["train"], key=lambda i: zoo.records[i]["return_mean"])
    assert data.reference() is data.zoo.networks[best]
    train, val, held = data.layer_data(32, seed=0)
    assert (len(train.networks), len(val.networks), len(held.networks)) == (len(train_ids), len(data.trained["validation"]), len(data.held))
    assert ae.StageData.load(tmp_path, seed=0, holdout_every=None).holdout_ids == set()
    assert list(layer_study.layer_table(data.spec).index) == list(range(data.spec.n_layers))
