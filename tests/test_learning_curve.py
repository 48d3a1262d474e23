"""The learning curve over train runs (nnae_utils.learning_curve): fold training on a synthetic zoo, and
the curve fit and extrapolation."""
import math

import numpy as np
import pytest

from nnae_utils import autoencoders as ae
from nnae_utils import learning_curve as lc
from synthetic import SPEC, synthetic_zoo


def _setup(runs=5, per_run=4):
    nets = synthetic_zoo(runs=runs, per_run=per_run, drift=0.05, seed=0)
    labels = [r for r in range(runs) for _ in range(per_run)]
    states = np.random.default_rng(0).normal(size=(400, SPEC.obs_dim)).astype(np.float32)
    pools = {"train": states[:200], "validation": states[200:]}
    configs = [ae.LayerAEConfig(layer=layer, form="flat", latent=3, hidden=16, max_epochs=3, steps_per_epoch=3,
                                networks_per_batch=4, states_per_batch=8, patience=2) for layer in (0, 2)]
    return nets, labels, pools, configs


def test_fold_curve_trains_on_each_folds_runs_and_reads_back(tmp_path):
    nets, labels, pools, configs = _setup()
    folds = lc.folds_from_runs([0, 1, 2], sizes=[1, 2], per_size=2, seed=0)
    assert [f["k"] for f in folds] == [1, 1, 2, 2]
    stop = [i % 4 == 3 for i in range(len(nets))]          # one snapshot per run decides early stopping
    kwargs = dict(held_out_runs=[3, 4], configs=configs, pools=pools, stop_mask=stop, eval_states=32, seed=0,
                  save_dir=tmp_path, n_boot=100)
    table = lc.fold_curve(folds, nets, labels, **kwargs)
    assert len(table) == len(folds) * len(configs)
    assert {"k", "fold", "layer", "option", "ratio", "low", "high"} <= set(table.columns)
    # a fold of k runs trains on its runs' networks only, less the held-out snapshots (3 of 4 per run)
    assert (table["n_train"] == 3 * table["k"]).all()
    assert (table["n_held_out"] == 8).all() and (table["n_held_out_runs"] == 2).all()
    assert np.isfinite(table[["ratio", "low", "high", "ratio_pooled"]].to_numpy()).all()
    assert ((table["low"] <= table["ratio"] + 1e-12) & (table["ratio"] <= table["high"] + 1e-12)).all()
    assert not table["reused"].any()
    again = lc.fold_curve(folds, nets, labels, **kwargs)       # resumable: every model read back, same numbers
    assert again["reused"].all()
    np.testing.assert_allclose(again["ratio"], table["ratio"])


def test_fold_curve_refuses_a_fold_that_trains_on_a_held_out_run(tmp_path):
    nets, labels, pools, configs = _setup()
    with pytest.raises(ValueError, match="held-out run"):
        lc.fold_curve([{"k": 1, "fold": 0, "runs": [3]}], nets, labels, held_out_runs=[3, 4], configs=configs,
                      pools=pools, eval_states=32, save_dir=tmp_path)


def test_ratio_is_the_run_weighted_per_network_ratio(tmp_path):
    nets, labels, pools, configs = _setup()
    table = lc.fold_curve([{"k": 2, "fold": 0, "runs": [0, 1]}], nets, labels, held_out_runs=[3, 4], configs=configs[:1],
                          pools=pools, eval_states=32, save_dir=tmp_path, n_boot=50)
    # recompute by hand: per-network loss over per-network mean-layer loss, mean per run, mean over runs
    train = ae.LayerData.build(nets[:8], pools["train"], 32, seed=0)
    held = ae.LayerData.build(nets[12:], pools["validation"], 32, seed=1)
    model = ae.load_layer_autoencoder(next(tmp_path.glob("*.safetensors")))
    loss = ae.functional_per_network(model, held)
    mean = ae.mean_layer_loss(train, held, 0, per_network=True)
    assert math.isclose(float(np.mean(loss)), ae.evaluate_code(model, held, 1.0)["functional"], rel_tol=1e-5)
    assert math.isclose(float(np.mean(mean)), ae.mean_layer_loss(train, held, 0), rel_tol=1e-5)
    r = loss / mean
    assert math.isclose(table["ratio"].iloc[0], (r[:4].mean() + r[4:].mean()) / 2, rel_tol=1e-6)


def test_power_fit_recovers_the_exponent_and_the_k_for_a_target():
    k = np.array([2, 2, 4, 4, 8, 8, 16, 16])
    ratio = 0.9 * k ** -0.5 * np.exp(np.tile([0.01, -0.01], 4))
    fit = lc.fit_curve(k, ratio, "power")
    assert fit.b == pytest.approx(-0.5, abs=1e-9) and math.exp(fit.a) == pytest.approx(0.9, rel=1e-9)
    inside = lc.k_for_target(fit, 0.9 * 8 ** -0.5)
    assert inside.within_range and inside.k == pytest.approx(8)
    beyond = lc.k_for_target(fit, 0.1)
    assert not beyond.within_range and beyond.k == pytest.approx(81) and "not reached within the fitted range" in beyond.text


def test_a_flat_curve_predicts_no_k():
    fit = lc.fit_curve([2, 4, 8, 16], [0.97, 0.99, 0.96, 0.98], "log")
    ex = lc.k_for_target(fit, 0.5)
    assert math.isinf(ex.k) or not ex.within_range
    assert "not reached" in ex.text


def test_a_nearly_flat_falling_curve_extrapolates_to_no_float():
    """A slope of -0.0005 puts the target beyond any float: said in words, not an OverflowError."""
    fit = lc.fit_curve([1, 2, 4, 8], [1.0, 0.9997, 0.9993, 0.999], "power")
    ex = lc.k_for_target(fit, 0.1)
    assert math.isinf(ex.k) and not ex.within_range and "beyond k = 1e300" in ex.text


def test_log_fit_and_extrapolate_table():
    import pandas as pd
    table = pd.DataFrame({"option": "none", "layer": [0] * 3 + [1], "form": "flat", "k": [1, 2, 4, 1],
                          "ratio": [1.0, 0.8, 0.6, 0.9]})
    out = lc.extrapolate(table, 0.2, model="log").set_index("layer")
    assert out.loc[0, "k_target"] == pytest.approx(16.0)   # ratio = 1 - 0.2885 ln k reaches 0.2 at k = 16
    assert not out.loc[0, "within_range"]
    assert out.loc[1, "text"].startswith("no fit")
    with pytest.raises(ValueError):
        lc.fit_curve([4, 4], [0.5, 0.6])


def test_fold_retention_scores_every_model_on_the_same_held_out_networks(tmp_path):
    nets, labels, pools, configs = _setup()
    models = {}
    folds = [{"k": 1, "fold": 0, "runs": [0]}, {"k": 2, "fold": 0, "runs": [0, 1]}]
    lc.fold_curve(folds, nets, labels, held_out_runs=[3, 4], configs=configs, pools=pools, eval_states=32,
                  save_dir=tmp_path, n_boot=20, models=models)
    assert sorted(models) == [("none", k, 0, layer, "flat") for k in (1, 2) for layer in (0, 2)]
    held_runs = [r for r in labels if r in (3, 4)]
    table = lc.fold_retention(models, held_runs, per_run=1, episodes=1, max_steps=20, n_boot=20)
    assert len(table) == 4 and (table["networks"] == 2).all()
    assert table["input_return"].nunique() == 1          # one set of inputs, paired with every model
    assert np.isfinite(table[["retention", "run_mean_retention", "low", "high"]].to_numpy()).all()


def test_learning_curve_figure_has_a_panel_per_layer():
    import matplotlib
    matplotlib.use("Agg")
    import pandas as pd
    from nnae_utils import plots
    table = pd.DataFrame({"option": "none", "form": "flat", "layer": [0, 0, 0, 1, 1, 1], "k": [1, 2, 4] * 2,
                          "ratio": [1.0, 0.7, 0.5] * 2, "low": [0.9, 0.6, 0.4] * 2, "high": [1.1, 0.8, 0.6] * 2})
    fig = plots.learning_curve(table, lc.extrapolate(table, 0.1))
    assert len(fig.axes) == 2 and all(len(ax.lines) >= 2 for ax in fig.axes)   # points and the fitted line


def test_stage_folds_draws_the_sizes_the_zoos_folds_lack_and_refuses_sizes_above_the_train_runs():
    """A grown zoo's splits.json has folds of some sizes; a stage asking for another size used to get
    no fold at all for it (an empty table, and a KeyError later)."""
    splits = {"folds": [{"k": 2, "fold": 0, "runs": [1, 3]}, {"k": 2, "fold": 1, "runs": [3, 5]}]}
    train = ["run1", "run3", "run5"]
    folds, source = lc.stage_folds(splits, train, [1, 2], per_size=2, seed=0)
    assert sorted(f["k"] for f in folds) == [1, 1, 2, 2]
    assert [f["runs"] for f in folds if f["k"] == 2] == [["run1", "run3"], ["run3", "run5"]]
    assert all(set(f["runs"]) <= set(train) for f in folds)
    assert "splits.json" in source and "subsets" in source
    only_zoo, source = lc.stage_folds(splits, train, [2])
    assert len(only_zoo) == 2 and "subsets" not in source
    with pytest.raises(ValueError, match="exceed the 3 train runs"):
        lc.stage_folds(splits, train, [4])
