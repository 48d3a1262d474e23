"""Genome encodings: round trips, centring on the zoo's mean network, controls of the same size, calibration.

A synthetic zoo and a synthetic stage-2 folder (untrained autoencoders, a fitted PCA) stand in for
stages 1 and 2, so these tests need no artifacts.
"""
import json

import numpy as np
import pytest
import scipy.fft
import torch

from nnae_utils import autoencoders as ae
from nnae_utils import genomes as gen
from nnae_utils.policies import Network, NetworkSpec

from synthetic import LATENTS, SPEC

torch.set_num_threads(1)  # as the stage runs: tiny decoders are slower with more threads on a shared machine


def build(name, zoo, stage2, **kw):
    return gen.build_genome(name, train=zoo["train"], stage2_dir=stage2, best_layer=1, **kw)


def test_names_parse_and_bad_names_fail():
    assert gen.parse_genome_name("weights") == ("weights", "all")
    assert gen.parse_genome_name("latent") == ("latent", "all")
    assert gen.parse_genome_name("pca:0+2") == ("pca", "0+2")
    for bad in ("weights:1", "autoencoder:all", "dct:first", "latent:1+x"):
        with pytest.raises(ValueError):
            gen.parse_genome_name(bad)
    assert gen.resolve_layers("0+2", 3, None) == (0, 2)
    with pytest.raises(ValueError):
        gen.resolve_layers("best", 3, None)
    with pytest.raises(ValueError):
        gen.resolve_layers("3", 3, None)


@pytest.mark.parametrize("kind", ["pca", "random", "dct"])
def test_subspaces_are_centred_on_the_zoo_mean_and_round_trip(kind, zoo, stage2):
    g = build(f"{kind}:all", zoo, stage2)
    mean = gen.mean_network(zoo["train"])
    assert g.dim == sum(LATENTS.values())  # the same size as the autoencoders' latent, layer by layer
    np.testing.assert_allclose(g.decode(np.zeros(g.dim)).flat(), mean.flat(), atol=1e-6)
    np.testing.assert_array_equal(g.centre, np.zeros(g.dim))
    z = g.scale * np.random.default_rng(0).normal(size=g.dim)
    if kind == "pca":  # 6 train networks span 5 directions per layer: the rest of the basis is zero
        z = np.where(g._live, z, 0.0)
    np.testing.assert_allclose(g.encode(g.decode(z))[0], z, atol=1e-4)
    nets = g.decode(np.stack([z, 2 * z]))
    assert len(nets) == 2 and all(n.spec == SPEC for n in nets)


def test_pca_is_stage_two_basis_and_reports_its_rank(zoo, stage2):
    g = build("pca:all", zoo, stage2)
    assert g.effective_dim == 5 + 5 + 3  # rank of 6 centred networks is 5; layer 2 keeps its 3 numbers
    codes = ae.load_layer_codes(stage2, "flat", "pca")
    net = zoo["test"][0]
    np.testing.assert_allclose(g.decode(g.encode(net)[0]).flat(), ae.decode_network(net, codes).flat(), atol=1e-5)


def test_latent_genome_decodes_like_stage_two(zoo, stage2):
    g = build("latent:all", zoo, stage2)
    codes = ae.load_layer_codes(stage2, "flat", "autoencoder")
    assert g.dim == sum(c.latent_dim for c in codes.values())
    net = zoo["test"][1]
    np.testing.assert_allclose(g.decode(g.encode(net)[0]).flat(), ae.decode_network(net, codes).flat(), atol=1e-5)
    train_codes = g.encode(zoo["train"])
    np.testing.assert_allclose(g.centre, train_codes.mean(axis=0))
    np.testing.assert_allclose(g.scale, np.maximum(train_codes.std(axis=0), 1e-3 * train_codes.std(axis=0).max()))
    assert g.uses_zoo


def test_single_layer_genomes_keep_the_base_networks_other_layers(zoo, stage2):
    start = zoo["test"][2]
    for name in ("latent:best", "pca:1", "dct:best", "random:best"):
        g = build(name, zoo, stage2).with_base(start)
        assert g.layers == (1,) and g.dim == LATENTS[1]
        net = g.decode(g.centre + g.scale)
        for i in (0, 2):
            np.testing.assert_array_equal(net.layer(i)[0], start.layer(i)[0])
            np.testing.assert_array_equal(net.layer(i)[1], start.layer(i)[1])
        assert not np.array_equal(net.layer(1)[0], start.layer(1)[0])
    # from scratch the base is the zoo's mean network
    g = build("dct:best", zoo, stage2)
    np.testing.assert_allclose(g.decode(np.zeros(g.dim)).flat(), gen.mean_network(zoo["train"]).flat(), atol=1e-6)


def test_weight_genome_round_trip_groups_and_scratch_starts(zoo):
    g = gen.WeightGenome(SPEC, centre=gen.mean_network(zoo["train"]))
    net = zoo["test"][0]
    np.testing.assert_array_equal(g.decode(g.encode(net)[0]).flat(), net.flat())
    np.testing.assert_allclose(g.decode(g.centre).flat(), gen.mean_network(zoo["train"]).flat())
    np.testing.assert_array_equal(g.scale, np.ones(SPEC.n_params))
    assert not g.uses_zoo
    # a crossover unit is a weight row with its bias: rows are inherited whole
    w_rows = SPEC.layer_sizes[1]
    n0 = SPEC.layer_sizes[1] * SPEC.layer_sizes[0]
    assert len(np.unique(g.groups[:n0])) == w_rows
    assert g.groups[n0] == g.groups[0] and g.groups[n0 + 1] == g.groups[SPEC.obs_dim]
    # scratch starts are freshly initialised networks, not zoo-based codes
    codes = g.random_codes(2, np.random.default_rng(0))
    bound = 1 / np.sqrt(SPEC.obs_dim)
    assert np.abs(codes[:, :n0]).max() <= bound and not np.allclose(codes[0], codes[1])


def test_dct_code_matches_scipy_and_orders_by_frequency():
    assert [tuple(p) for p in zip(*gen.dct_positions(3, 4, 6))] == [(0, 0), (0, 1), (1, 0), (0, 2), (1, 1), (2, 0)]
    spec = NetworkSpec(obs_dim=11, act_dim=3, hidden=(4,))
    n_out, n_in = 3, 4
    code = gen.DCTCode(spec, 1, np.zeros(n_out * (n_in + 1)), k=1)
    w, b = code.decode(np.array([1.0]))  # the DC coefficient alone: a constant matrix
    np.testing.assert_allclose(w, np.full((n_out, n_in), 1 / np.sqrt(n_out * (n_in + 1))), rtol=1e-6)
    m = np.random.default_rng(0).normal(size=(n_out, n_in + 1))
    vec = np.concatenate([m[:, :-1].ravel(), m[:, -1]])
    full = gen.DCTCode(spec, 1, np.zeros(vec.size), k=vec.size)
    coef = scipy.fft.dctn(m, norm="ortho")
    np.testing.assert_allclose(full.encode(vec), coef[full.rows, full.cols])


def test_random_subspace_is_orthonormal_and_seeded():
    spec = NetworkSpec(obs_dim=11, act_dim=3, hidden=(8,))
    a = gen.RandomSubspaceCode(spec, 0, np.zeros(96), k=7, seed=3)
    np.testing.assert_allclose(a.basis @ a.basis.T, np.eye(7), atol=1e-10)
    np.testing.assert_array_equal(a.basis, gen.RandomSubspaceCode(spec, 0, np.zeros(96), k=7, seed=3).basis)
    assert not np.allclose(a.basis, gen.RandomSubspaceCode(spec, 0, np.zeros(96), k=7, seed=4).basis)


def test_best_layer_is_relative_to_the_mean_layer():
    summary = {"layers": [
        {"layer": 0, "forms": {"flat": {"val_loss": 0.10}}, "mean_layer_val_loss": 0.12},
        {"layer": 1, "forms": {"flat": {"val_loss": 0.20}}, "mean_layer_val_loss": 0.80},
        {"layer": 2, "forms": {"flat": {"val_loss": 0.05}}, "mean_layer_val_loss": 0.06},
    ]}
    assert gen.best_layer_from_summary(json.loads(json.dumps(summary))) == 1


def test_calibrated_sigma_hits_the_action_change_target(zoo, stage2):
    states = np.random.default_rng(0).normal(size=(64, 11)).astype(np.float32)
    for name in ("weights", "latent:all", "dct:all"):
        g = build(name, zoo, stage2)
        parents = g.encode(zoo["train"][:2])
        s_small = gen.calibrate_sigma(g, parents, states, 0.02, seed=1)
        s_large = gen.calibrate_sigma(g, parents, states, 0.08, seed=1)
        assert s_small < s_large
        rng = np.random.default_rng(1)
        eps = rng.standard_normal((2, 8, g.dim))
        kids = (parents[:, None, :] + s_small * g.scale * eps).reshape(-1, g.dim)
        parent_nets = [n for n in g.decode(parents) for _ in range(8)]
        got = gen.action_distance(parent_nets, g.decode(kids), states).mean()
        assert got == pytest.approx(0.02, rel=0.02)
    # one genome per parent (fine-tuning several networks with a single-layer genome)
    g = build("latent:best", zoo, stage2)
    per = [g.with_base(n) for n in zoo["test"][:2]]
    z = np.stack([p.encode(n)[0] for p, n in zip(per, zoo["test"][:2])])
    assert gen.calibrate_sigma(per, z, states, 0.05) > 0


def test_the_weight_control_starts_where_the_compressed_genome_starts(zoo, stage2):
    assert gen.split_start_through("weights@latent:all") == ("weights", "latent:all")
    assert gen.split_start_through("latent:best") == ("latent:best", None)
    for bad in ("latent:all@pca:all", "weights@weights", "weights@nothing"):
        with pytest.raises(ValueError):
            gen.split_start_through(bad)
    assert [gen.is_start_control(x) for x in ("ga/weights@latent:all", "finetune|ga/weights@pca:all",
                                              "ga/latent:all", "weights")] == [True, True, False, False]
    net = zoo["test"][0]
    latent = build("latent:best", zoo, stage2)
    start = gen.decoded_start(latent, net)
    based = latent.with_base(net)
    np.testing.assert_allclose(start.flat(), based.decode(based.encode(net)[0]).flat())
    assert not np.allclose(start.flat(), net.flat())  # untrained autoencoders: the decoding moves the network
    weights = build("weights", zoo, stage2).with_base(start)
    np.testing.assert_allclose(weights.decode(weights.encode(start)[0]).flat(), start.flat(), atol=1e-6)


# --------------------------------------------------------------------------- exact starts (issue 30)

FINE_TUNED = ["weights", "latent:all", "latent:best", "pca:all", "random:all", "dct:all"]


@pytest.mark.parametrize("name", FINE_TUNED)
def test_exact_start_is_the_start_network_bitwise_and_scores_its_return(name, zoo, stage2):
    from nnae_utils.rollouts import evaluate

    start = Network(SPEC, {k: v.copy() for k, v in zoo["test"][0].params.items()})
    start.params["layers.1.bias"][0] = -0.0  # a signed zero: a float round trip (-0.0 + 0.0) would lose it
    g, z0 = gen.fine_tuning_start(build(name, zoo, stage2), start, "exact")
    net = g.decode(z0)
    assert net.flat().tobytes() == start.flat().tobytes()
    for key, arr in start.params.items():
        assert net.params[key].tobytes() == arr.tobytes(), key
    batch = g.decode(np.stack([z0, z0]))  # batched decoding keeps it too
    assert all(n.flat().tobytes() == start.flat().tobytes() for n in batch)
    seeds = np.array([11, 12])
    ours, theirs = evaluate([net, start], seeds, max_steps=25, nthread=1).returns
    np.testing.assert_array_equal(ours, theirs)
    assert g.name == name


@pytest.mark.parametrize("kind", ["pca", "random", "dct"])
def test_exact_linear_subspace_moves_by_the_basis_alone(kind, zoo, stage2):
    start = zoo["test"][1]
    inner = build(f"{kind}:all", zoo, stage2)
    g = inner.around(start)
    delta = g.scale * np.random.default_rng(3).normal(size=g.dim)
    moved = g.decode(delta)
    # B delta is the inner genome's decoding of delta minus its decoding of zero (both centred on the mean)
    expected = start.flat().astype(np.float64) + inner.decode(delta).flat() - inner.decode(np.zeros(g.dim)).flat()
    np.testing.assert_allclose(moved.flat(), expected, atol=1e-5)
    assert not np.allclose(moved.flat(), inner.with_base(start).decode(delta).flat(), atol=1e-3)  # not around the mean
    np.testing.assert_allclose(g.encode(moved)[0][g.inner._live], delta[g.inner._live], atol=1e-4)
    assert np.all(g.encode(start)[0] == 0.0)


def test_exact_latent_moves_by_the_decoders_difference(zoo, stage2):
    start = zoo["test"][2]
    inner = build("latent:all", zoo, stage2)
    g = inner.around(start)
    z_start = inner.encode(start)[0]
    delta = g.scale * np.random.default_rng(4).normal(size=g.dim)
    moved = g.decode(delta)
    expected = (start.flat().astype(np.float64) + inner.with_base(start).decode(z_start + delta).flat()
                - inner.with_base(start).decode(z_start).flat())
    np.testing.assert_allclose(moved.flat(), expected, atol=1e-5)
    # only the layers whose block moves change; the rest are the start's own arrays
    only_first = np.zeros(g.dim)
    only_first[g.slices[0]] = delta[g.slices[0]]
    part = g.decode(only_first)
    assert part.params["layers.2.weight"] is start.params["layers.2.weight"]
    assert not np.array_equal(part.params["layers.0.weight"], start.params["layers.0.weight"])
    assert g.with_base(zoo["test"][0]).decode(np.zeros(g.dim)).flat().tobytes() == zoo["test"][0].flat().tobytes()


def test_decoded_start_is_the_papers_reading_kept_as_an_ablation(zoo, stage2):
    start = zoo["test"][0]
    for name in ("latent:all", "pca:all", "random:all", "dct:all"):
        g, z0 = gen.fine_tuning_start(build(name, zoo, stage2), start, "decoded")
        assert g.name == f"{name}~decoded"
        np.testing.assert_array_equal(g.decode(z0).flat(), gen.decoded_start(build(name, zoo, stage2), start).flat())
        assert not np.allclose(g.decode(z0).flat(), start.flat(), atol=1e-4)  # lossy: the start is not held
    w, z0 = gen.fine_tuning_start(build("weights", zoo, stage2), start, "decoded")
    assert w.decode(z0).flat().tobytes() == start.flat().tobytes()  # weights hold every weight in either mode
    with pytest.raises(ValueError):
        gen.fine_tuning_start(build("dct:all", zoo, stage2), start, "approximate")


def test_start_markers_parse_and_bad_markers_fail():
    assert gen.split_start_mode("latent:all~decoded") == ("latent:all", "decoded")
    assert gen.split_start_mode("latent:all~exact") == ("latent:all", "exact")
    assert gen.split_start_mode("pca:0+2") == ("pca:0+2", "exact")
    assert gen.parse_genome_name("dct:best~decoded") == ("dct", "best")
    for bad in ("latent:all~approx", "weights~decoded", "weights@latent:all~decoded", "latent:all~"):
        with pytest.raises(ValueError):
            gen.parse_genome_name(bad)
    with pytest.raises(ValueError):
        gen.split_start_through("weights@latent:all~decoded")
    assert not gen.is_start_control("ga/latent:all~decoded")


@pytest.mark.parametrize("kind", ["latent", "pca", "random", "dct"])
def test_anchored_population_holds_start_and_migrants_bitwise(kind, zoo, stage2):
    inner = build(f"{kind}:all", zoo, stage2)
    start, migrant = zoo["test"][0], zoo["test"][1]
    g = gen.AnchoredGenome(inner).with_base(start)
    z_start, z_migrant = g.encode(start)[0], g.anchor(migrant)
    assert (z_start[0], z_migrant[0]) == (1.0, 2.0) and np.all(z_start[1:] == 0.0)
    delta = np.concatenate([[0.0], g.scale[1:] * np.random.default_rng(5).normal(size=g.dim - 1)])
    scratch = np.concatenate([[0.0], inner.centre])
    nets = g.decode(np.stack([z_start, z_migrant, z_migrant + delta, scratch]))  # one batch, three anchors
    assert nets[0].flat().tobytes() == start.flat().tobytes() and nets[1].flat().tobytes() == migrant.flat().tobytes()
    np.testing.assert_allclose(nets[2].flat(), inner.around(migrant).decode(delta[1:]).flat())  # a move around the migrant
    np.testing.assert_allclose(nets[3].flat(), inner.decode(inner.centre).flat())  # anchor 0: an ordinary code
    assert g.scale[0] == 0.0 and gen.mutate(z_migrant, 1.0, g.scale, np.random.default_rng(0))[0] == 2.0  # never moved
    fresh = g.without_migrants()
    assert len(fresh.anchors) == 1 and len(g.anchors) == 2 and fresh.fingerprint() == g.fingerprint()
    with pytest.raises(ValueError):
        g.decode(np.concatenate([[3.0], np.zeros(g.dim - 1)]))  # no such anchor
