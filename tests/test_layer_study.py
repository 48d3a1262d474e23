"""Stage 2's tables, files and verdicts (``nnae_utils.layer_study``): the files notebook 02 writes for its
trained autoencoders and PCA baseline, read back as later stages read them, and the summary's numbers and
sentences. Every test uses a synthetic zoo, so none needs stage 1's artifacts."""
import json

import numpy as np
import pandas as pd
import pytest

from nnae_utils import autoencoders as ae, layer_study

import synthetic


def states(n=128, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 11)).astype(np.float32)


@pytest.fixture(scope="module")
def trained_stage(tmp_path_factory):
    """The main autoencoders of a tiny plan, trained one epoch each and saved as notebook 02 saves them."""
    folder = tmp_path_factory.mktemp("stage2")
    nets = synthetic.synthetic_zoo(runs=3, per_run=3, seed=3)
    train = ae.LayerData.build(nets[:6], states(256, 1), 64, seed=0)
    val = ae.LayerData.build(nets[6:], states(256, 2), 64, seed=1)
    plan, _ = ae.plan_experiments(synthetic.SPEC, main_ratio=4, sweep_ratios=[], max_flat_latent=64, flat_hidden=16,
                                  token_hidden=8, max_epochs=1, steps_per_epoch=2, networks_per_batch=4, states_per_batch=8)
    plan = [run for run in plan if "main" in run.roles]
    results = [(ae.train_layer_autoencoder(run.config, train, val), False) for run in plan]
    return folder, plan, layer_study.save_trained(plan, results, folder), train, val


def test_save_trained_writes_the_checkpoints_and_tables_later_stages_read(trained_stage):
    folder, plan, trained, _, _ = trained_stage
    spec = synthetic.SPEC
    assert len(plan) == spec.n_layers * len(ae.FORMS) and trained.reused == []
    models = pd.read_csv(folder / "models.csv")
    assert list(models["model"]) == [run.config.name for run in plan]
    assert set(models["checkpoint"]) == {f"autoencoders/layer{i}_{f}.safetensors" for i in range(spec.n_layers) for f in ae.FORMS}
    assert list(trained.main.index) == [(i, f) for i in range(spec.n_layers) for f in sorted(ae.FORMS)]
    assert len(pd.read_csv(folder / "losses.csv")) == len(json.loads((folder / "losses.json").read_text())) == len(plan)
    for row in trained.table.itertuples():
        assert ae.load_layer_autoencoder(folder / row.checkpoint).config.name == row.model
        assert ae.checkpoint_info(folder / row.checkpoint)["info"]["val_functional"] == pytest.approx(row.val_functional)
    assert trained.wall_seconds == pytest.approx(float(models["wall_seconds"].sum()))


def pca_keys(spec):
    return [(i, f) for i in range(spec.n_layers) for f in ae.FORMS]


def test_the_pca_baseline_and_the_layer_summaries(trained_stage):
    folder, _, trained, train, val = trained_stage
    spec = synthetic.SPEC
    pca, mean_loss = layer_study.pca_baseline(trained, train, val, folder)
    assert sorted(mean_loss) == list(range(spec.n_layers)) and all(v > 0 for v in mean_loss.values())
    written = pd.read_csv(folder / "pca.csv")
    assert list(written.columns) == list(pca.columns) and len(written) == len(pca) and pca["main"].sum() == len(pca_keys(spec))
    assert all((folder / "pca" / f"layer{i}_{f}.safetensors").is_file() for i, f in pca_keys(spec))
    pca_main = pca[pca["main"]].set_index(["layer", "form"])
    onpolicy = {(i, f, "functional"): 0.5 for i in range(spec.n_layers) for f in ae.FORMS}
    layers = layer_study.layer_summaries(spec, trained.main, pca_main, mean_loss, onpolicy)
    assert [entry["layer"] for entry in layers] == list(range(spec.n_layers))
    assert all(set(entry["forms"]) == set(ae.FORMS) for entry in layers)
    assert layers[1]["forms"]["flat"]["checkpoint"] == "autoencoders/layer1_flat.safetensors"
    assert list(layer_study.layer_table(spec).index) == list(range(spec.n_layers))


def test_the_summarys_ratios_and_sentences():
    ablation = pd.DataFrame([{"layer": layer, "form": form, "loss": loss, "val_functional": value * (layer + 1)}
                             for layer in (0, 1) for form in ae.FORMS
                             for loss, value in (("functional", 1.0), ("weights", 2.0))])
    assert layer_study.over_functional(ablation, "weights") == [2.0] * 4
    assert layer_study.spread([1.0, 2.0, 4.0]) == {"median": 2.0, "min": 1.0, "max": 4.0}
    assert [layer_study.information_verdict(x) for x in (0.9, 0.5, 0.1)] == ["little", "some", "much"]
    assert "far better" in layer_study.gap_verdict({"flat": 3.0, "token": 2.5})
    assert "much worse" in layer_study.weights_verdict(2.0)
    assert "lowers the loss" in layer_study.dagger_verdict(0.5)
    by_run = {"none": {"flat": 1.0, "token": 1.0}, "align": {"flat": 0.4, "token": 0.9}}
    assert "align lowers it most" in layer_study.symmetry_sentence(by_run, None, ["none", "align"])
    close = {"none": {"flat": 1.0, "token": 1.0}, "align": {"flat": layer_study.SYMMETRY_EFFECT + 0.01, "token": 1.0}}
    assert "No symmetry option" in layer_study.symmetry_sentence(close, None, ["none", "align"])
    assert layer_study.zoo_caveat({"n_networks": 4, "solved": {"n_networks": 4, "return_bar": 2500}}) == ""
    assert "Only 2 of" in layer_study.zoo_caveat({"n_networks": 4, "solved": {"n_networks": 2, "return_bar": 2500},
                                                  "return_median": 1200})
