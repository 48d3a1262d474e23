"""Stage 3: paired scores of input and decoded networks, retention and its CI, decoded network files.

Synthetic networks only (``Network.random``); no stage artifacts needed. Episodes are short.
"""
import itertools
import json

import numpy as np
import pandas as pd
import pytest

from nnae_utils import autoencoders as ae
from nnae_utils import decoded as D
from nnae_utils import stats
from nnae_utils.policies import INDEX_REQUIRED_FIELDS, Network, NetworkSpec, load_network, read_index
from nnae_utils.seeds import eval_seeds
from nnae_utils.stages import DecodedEvalParams, MissingInputError, ParameterError

SPEC = NetworkSpec(obs_dim=11, act_dim=3, hidden=(8, 8))
SEEDS = eval_seeds("decoded_report", 3)


def nets(n=4, seed=0):
    return [Network.random(SPEC, seed=seed + i) for i in range(n)]


def by_split(networks):
    return {"train": [(f"tr{i}", n) for i, n in enumerate(networks[:2])],
            "test": [(f"te{i}", n) for i, n in enumerate(networks[2:])]}


# --------------------------------------------------------------------------- pairing


def test_paired_evaluation_uses_identical_seeds_in_one_call(monkeypatch):
    calls = []
    real = D.evaluate

    def spy(policies, seeds, **kw):
        calls.append((len(policies), np.asarray(seeds).copy()))
        return real(policies, seeds, **kw)

    monkeypatch.setattr(D, "evaluate", spy)
    inputs = nets(3)
    pca = ae.PCALayerCode.fit(inputs, 1, "flat", k=1)
    decoded = [ae.decode_network(n, pca) for n in inputs] + [ae.decode_network(n, D.IdentityCode(SPEC, 0)) for n in inputs]
    scores = D.score_paired(inputs, decoded, SEEDS, max_steps=25, nthread=1)
    assert len(calls) == 1, "input and decoded networks must share one batched evaluate call"
    n_pol, seeds = calls[0]
    assert n_pol == 3 + 6 and seeds.ndim == 1 and list(seeds) == list(SEEDS)  # one seed list for every policy
    assert list(scores.seeds) == list(SEEDS)
    assert scores.input_returns.shape == (3, 3) and scores.decoded_returns.shape == (6, 3)
    # the identity-decoded copies play exactly their inputs' episodes: same seeds, same initial states
    np.testing.assert_array_equal(scores.decoded_returns[3:], scores.input_returns)
    np.testing.assert_array_equal(scores.decoded_lengths[3:], scores.input_lengths)
    with pytest.raises(ValueError, match="1-D"):
        D.score_paired(inputs, decoded, np.stack([SEEDS, SEEDS]), max_steps=5)


# --------------------------------------------------------------------------- retention CI


def test_ratio_interval_matches_the_exact_bootstrap_of_a_hand_example():
    # five networks: decoded returns num, input returns den. Ratio of means = 16 / 9 (not the mean of
    # the per-network ratios, 1.733...). The exact bootstrap distribution: all 5^5 equally likely
    # resamples of network indices, the same indices for both (paired); its 2.5% and 97.5% quantiles
    # (inverse CDF) are 10/9 (CDF 1.8% -> 2.8%) and 19/7 (97.2% -> 98.2%), far from any atom boundary.
    num, den = np.array([1.0, 3.0, 2.0, 6.0, 4.0]), np.array([1.0, 1.0, 2.0, 2.0, 3.0])
    exact = np.sort([num[list(i)].sum() / den[list(i)].sum() for i in itertools.product(range(5), repeat=5)])
    cdf = np.arange(1, len(exact) + 1) / len(exact)
    lo, hi = exact[np.searchsorted(cdf, 0.025)], exact[np.searchsorted(cdf, 0.975)]
    assert (lo, hi) == pytest.approx((10 / 9, 19 / 7))
    ci = stats.ratio_interval(num, den, n_boot=40_000, seed=0)
    assert ci.point == pytest.approx(16 / 9)
    assert (ci.low, ci.high) == pytest.approx((lo, hi))


def test_ratio_interval_keeps_pairs_together():
    # every network's decoded return equals its input's: a paired resample always gives exactly 1,
    # however different the networks are (an unpaired bootstrap would scatter around 1)
    x = [10.0, 300.0, 50.0, 1000.0]
    assert stats.ratio_interval(x, x, n_boot=500) == stats.Interval(1.0, 1.0, 1.0)
    assert stats.ratio_interval([2.0, 4.0, 6.0], [1.0, 2.0, 3.0], n_boot=200) == stats.Interval(2.0, 2.0, 2.0)
    assert np.isnan(stats.ratio_interval([1.0, 2.0], [-1.0, 0.5]).point)  # mean input <= 0: undefined


def test_episode_noise_and_episodes_needed_by_hand():
    x = np.array([[10.0, 10.0, 10.0, 10.0], [20.0, 20.0, 20.0, 20.0]])
    y = x + np.array([[1.0, -1.0, 1.0, -1.0], [0.0, 0.0, 0.0, 0.0]])
    se, mean_in = D.episode_noise(x, y)
    # s_0^2 = var(1,-1,1,-1; ddof=1) = 4/3, s_1^2 = 0: SE = sqrt((4/3) / 4) / 2
    assert se == pytest.approx(np.sqrt(1 / 3) / 2) and mean_in == 15.0
    need = D.episodes_needed(se, mean_in, 4, resolution=0.02)
    assert need == int(np.ceil(4 * (D.Z95 * se / 15.0 / 0.02) ** 2))
    assert D.episodes_needed(0.0, 15.0, 4, 0.02) == 1
    assert D.highest_ratio_kept([10, 4], [0.5, 0.99], 0.98) == {"stays": 4.0, "any": 4.0}
    assert D.highest_ratio_kept([10, 4], [0.5, 0.9], 0.98) == {"stays": None, "any": None}


# --------------------------------------------------------------------------- identity, files


@pytest.fixture(scope="module")
def identity_run():
    networks = nets(4)
    groups = by_split(networks)
    variants = [D.identity_variant(SPEC, [i]) for i in range(SPEC.n_layers)] + [D.identity_variant(SPEC)]
    jobs = D.decode_jobs(groups, variants, {v.name: ["train", "test"] for v in variants})
    inputs = [n for split in groups.values() for _, n in split]
    row = {sid: i for i, (sid, _) in enumerate(x for split in groups.values() for x in split)}
    scores = D.score_paired(inputs, [j.network for j in jobs], SEEDS, max_steps=40, nthread=1)
    trajectories = D.input_trajectories(inputs, int(SEEDS[0]), max_steps=40, nthread=1)
    frame = D.score_frame(jobs, row, scores, trajectories, inputs)
    return jobs, scores, frame


def test_identity_code_gives_retention_exactly_one(identity_run):
    jobs, _, frame = identity_run
    assert len(jobs) == 4 * 4  # 4 networks x (3 layers alone + all together)
    for job in jobs:
        source = dict(x for split in by_split(nets(4)).values() for x in split)[job.source_id]
        for name in source.params:
            np.testing.assert_array_equal(job.network.params[name], source.params[name])
    table = D.retention_table(frame, ["split", "layers"], n_boot=200, seed=0)
    assert set(table["layers"]) == {"0", "1", "2", "all"}
    assert (table["retention"] == 1.0).all() and (table["low"] == 1.0).all() and (table["high"] == 1.0).all()
    assert (table["rel_se"] == 0.0).all() and table["resolved"].all()
    assert (frame["action_distance"] == 0.0).all()
    assert (table["compression_ratio"] == 1.0).all()


def test_decoded_index_records_are_complete_and_files_load(identity_run, tmp_path):
    jobs, _, frame = identity_run
    D.write_decoded(tmp_path, jobs, frame, seeds=SEEDS, max_steps=1000, provenance={"stage": "03_decoded_evaluation"})
    records = read_index(tmp_path)
    assert len(records) == len(jobs) == len({r["id"] for r in records})
    wanted = {"source_network", "split", "compressed_layers", "encoder_form", "loss_variant", "latent_size", "latent_dim",
              "compression_ratio", "input_return_mean", "episode_returns", *INDEX_REQUIRED_FIELDS}
    by_id = {j.id: j for j in jobs}
    for rec in records:
        assert wanted <= set(rec), wanted - set(rec)
        assert rec["eval_seeds"] == [int(s) for s in SEEDS] and rec["episodes"] == len(SEEDS)
        assert rec["provenance"]["stage"] == "03_decoded_evaluation"
        net = load_network(tmp_path / f"{rec['id']}.safetensors")
        job = by_id[rec["id"]]
        assert net.extra_metadata["source_network"] == rec["source_network"] == job.source_id
        assert json.loads(net.extra_metadata["decoded_layers"]) == rec["compressed_layers"] == list(job.variant.layers)
        for name, arr in job.network.params.items():
            np.testing.assert_array_equal(net.params[name], arr)
        assert rec["return_mean"] == pytest.approx(np.mean(rec["episode_returns"]), abs=1e-2)
    assert {tuple(r["compressed_layers"]) for r in records} == {(0,), (1,), (2,), (0, 1, 2)}


# --------------------------------------------------------------------------- stage-2 folder


def _tiny_stage2(tmp_path, train, symmetry="none"):
    """A stage-2 folder in miniature: main autoencoders of both forms, a sweep and an ablation model, PCA;
    every autoencoder trained (here: created) under the hidden-unit ``symmetry`` option."""
    from nnae_utils.autoencoders import LayerAEConfig, LayerAutoencoder, StackedNetworks

    stack = StackedNetworks.from_networks(train)
    rows = []
    for form in ae.FORMS:
        for layer in range(SPEC.n_layers):
            for loss, latent, roles in [("functional", 2, ["ablation", "main", "sweep"]), ("weights", 2, ["ablation"]),
                                        ("functional", 1, ["sweep"])]:
                cfg = LayerAEConfig(layer=layer, form=form, latent=latent, hidden=8, loss=loss, symmetry=symmetry)
                model = LayerAutoencoder.create(cfg, SPEC, stack)
                ckpt = f"autoencoders/layer{layer}_{form}.safetensors" if "main" in roles else f"models/{cfg.name}.safetensors"
                ae.save_layer_autoencoder(tmp_path / ckpt, model)
                rows.append({"model": cfg.name, "layer": layer, "form": form, "loss": loss, "latent": latent,
                             "roles": str(roles), "checkpoint": ckpt})
            basis = ae.PCALayerCode.fit(train, layer, form, k=2)
            ae.save_pca(tmp_path / "pca" / f"layer{layer}_{form}.safetensors", basis)
    pd.DataFrame(rows).to_csv(tmp_path / "models.csv", index=False)
    pca_rows = [{"layer": i, "form": f, "latent": k, "main": k == 2} for i in range(SPEC.n_layers) for f in ae.FORMS for k in (1, 2)]
    pd.DataFrame(pca_rows).to_csv(tmp_path / "pca.csv", index=False)
    return tmp_path


def test_stage2_variants_reads_every_role_once(tmp_path):
    folder = _tiny_stage2(tmp_path, nets(5))
    variants = D.stage2_variants(folder)
    names = [v.name for v in variants]
    assert len(names) == len(set(names))
    roles = {r: [v for v in variants if r in v.roles] for r in D.ROLES}
    assert len(roles["main"]) == 2 * SPEC.n_layers and len(roles["main_all"]) == 2 and len(roles["pca_all"]) == 2
    assert all({"sweep", "ablation"} <= v.roles for v in roles["main"])  # the main model is also the sweep's and ablation's
    assert len(roles["sweep"]) == 2 * 2 * SPEC.n_layers and len(roles["ablation"]) == 2 * 2 * SPEC.n_layers
    assert len(roles["pca"]) == 2 * 2 * SPEC.n_layers
    flat_all = next(v for v in roles["main_all"] if v.form == "flat")
    assert flat_all.layer_label == "all" and flat_all.latent_dim == 6
    assert flat_all.compression_ratio == pytest.approx(sum(SPEC.layer_param_count(i) for i in range(3)) / 6)
    token0 = next(v for v in roles["main"] if v.form == "token" and v.layers == (0,))
    assert token0.latent_dim == 8 * 2 and token0.compression_ratio == pytest.approx(12 / 2)
    only_main = D.stage2_variants(folder, sweep=False, ablation=False, pca=False)
    assert {r for v in only_main for r in v.roles} <= {"main", "main_all", "sweep", "ablation"}
    assert len(only_main) == 2 * SPEC.n_layers + 2
    plan = D.splits_for(variants, splits=["train", "test"], extra_splits=["test"])
    assert plan[flat_all.name] == ["train", "test"] and plan[roles["pca"][0].name] == ["test"]


def test_stage2_variants_carry_the_symmetry_option_of_their_checkpoints(tmp_path):
    """Issue 29: stage 3 encodes a network as stage 2 encoded the networks its codes learnt from."""
    train = nets(5)
    folder = _tiny_stage2(tmp_path, train, symmetry="align")
    with pytest.raises(FileNotFoundError, match="reference network"):  # align without stage 2's reference
        D.stage2_variants(folder)
    from nnae_utils.policies import save_network
    save_network(folder / "symmetry" / "align" / "reference.safetensors", train[0])
    variants = D.stage2_variants(folder)
    autoencoders = [v for v in variants if v.kind == "autoencoder"]
    assert {v.symmetry for v in autoencoders} == {"align"}
    assert all(np.array_equal(v.reference.flat(), train[0].flat()) for v in autoencoders)
    assert {v.symmetry for v in variants if v.kind == "pca"} == {"none"}  # a PCA basis sees networks as they are
    assert {v.symmetry for v in D.stage2_variants(_tiny_stage2(tmp_path / "none", train))} == {"none"}


@pytest.mark.parametrize("option", ["none", "align", "align_runs", "canonical"])
def test_decode_jobs_encode_networks_in_their_codes_symmetry_form(option):
    """The identity code returns the network it encodes: under align, align_runs and canonical that is the
    network brought to the reference's order (and scale), which computes the same actions as its input."""
    networks, reference = nets(3), nets(1, seed=10)[0]
    variant = D.identity_variant(SPEC)
    variant.symmetry, variant.reference = option, (None if option == "none" else reference)
    pairs = {"test": [(f"te{i}", n) for i, n in enumerate(networks)]}
    runs = {"te0": "run1", "te1": "run1", "te2": "run2"}
    jobs = D.decode_jobs(pairs, [variant], {variant.name: ["test"]}, runs=runs)
    expected = ae.symmetry_networks(option, networks, reference, groups=[runs[f"te{i}"] for i in range(3)])
    states = np.random.default_rng(0).normal(size=(16, SPEC.obs_dim)).astype(np.float32)
    for job, net, want in zip(jobs, networks, expected):
        assert np.allclose(job.network.flat(), want.flat())
        assert np.allclose(job.network.act(states), net.act(states), atol=1e-5)
    if option == "align_runs":
        with pytest.raises(ValueError, match="training run"):
            D.decode_jobs(pairs, [variant], {variant.name: ["test"]})


def test_kept_levels_and_the_goal_from_a_sweep_table():
    sweep = pd.DataFrame({"method": ["flat"] * 3, "layer": [0] * 3, "compression_ratio": [4.0, 10.0, 32.0],
                          "retention": [0.995, 0.99, 0.95]})
    kept, table = D.kept_levels(sweep, [0.98, 0.9])
    assert kept["flat"][0] == {"0.98": {"stays": 10.0, "any": 10.0}, "0.9": {"stays": 32.0, "any": 32.0}}
    assert list(table["stays"]) == ["10.0x", "32.0x"] and list(table["level"]) == ["98%", "90%"]
    assert D.kept_sentence(kept, [0.98], n_layers=1) == "at 98% or more, layer 0: flat 10.0x"
    goal, above = D.goal_hits(sweep, ["flat"], n_layers=1)
    assert goal == {0: ["flat 10.0x (99%)"]} and above == 0
    assert D.goal_sentence(goal, above, "test").startswith("The goal, 98% at 10x or more, is met on layer 0 (layer 0: flat")


# --------------------------------------------------------------------------- parameters


def test_parameters_fail_early_with_clear_messages(tmp_path):
    DecodedEvalParams(run_dir=str(tmp_path))
    for bad, match in [({"episodes": 1}, "episodes"), ({"splits": ["train", "nope"]}, "splits"),
                       ({"headline_split": "train"}, "extra_splits"), ({"thresholds": [1.5]}, "thresholds"),
                       ({"resolution": 0.0}, "resolution"), ({"splits": []}, "splits"), ({"n_boot": 0}, "n_boot")]:
        with pytest.raises(ParameterError, match=match):
            DecodedEvalParams(run_dir=str(tmp_path), **bad)
    DecodedEvalParams(run_dir=str(tmp_path), headline_split="train", sweep=False, ablation=False, pca=False)
    with pytest.raises(MissingInputError, match="layer_autoencoders"):
        DecodedEvalParams(run_dir=str(tmp_path)).upstream_dir("layer_autoencoders")


def test_retention_table_runs_interval_resamples_runs_then_networks():
    from nnae_utils.stats import hierarchical_ratio_interval

    rng = np.random.default_rng(0)
    n = 12
    inputs = rng.uniform(2000, 3000, n)
    decoded = inputs * np.repeat([0.5, 0.8, 1.0], 4)                      # three runs, each with its own retention
    frame = pd.DataFrame({"g": "a", "input_return": inputs, "decoded_return": decoded, "run": np.repeat([7, 8, 9], 4),
                          "input_episodes": [rng.uniform(0, 1, 5) for _ in range(n)],
                          "decoded_episodes": [rng.uniform(0, 1, 5) for _ in range(n)], "compression_ratio": 10.0})
    plain = D.retention_table(frame, ["g"], n_boot=300, seed=1)
    table = D.retention_table(frame, ["g"], n_boot=300, seed=1, runs="run")
    assert "run_low" not in plain and table.drop(columns=["n_runs", "run_retention", "run_low", "run_high"]).equals(plain)
    row = table.iloc[0]
    parts = [slice(0, 4), slice(4, 8), slice(8, 12)]
    ci = hierarchical_ratio_interval([decoded[p] for p in parts], [inputs[p] for p in parts], n_boot=300, seed=1)
    assert row.n_runs == 3 and (row.run_retention, row.run_low, row.run_high) == pytest.approx((ci.point, ci.low, ci.high))
    assert row.run_high - row.run_low > row.high - row.low                   # runs differ: wider than over networks
    one = D.retention_table(frame.assign(run=0), ["g"], n_boot=300, seed=1, runs="run").iloc[0]
    assert (one.run_retention, one.run_low, one.run_high) == pytest.approx((one.retention, one.low, one.high))   # one run
