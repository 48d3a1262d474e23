"""The widget layer explorer, without a browser: build it on a tiny synthetic zoo, set widget values,
check that what it shows (decoded weights, actions, returns, the figure) follows them."""
import base64

import numpy as np
import pytest

from nnae_utils import autoencoders as ae
from nnae_utils.explorer import ExplorerWidget, LayerExplorer, latent_directions
from nnae_utils.policies import Network, NetworkSpec

SPEC = NetworkSpec(obs_dim=11, act_dim=3, hidden=(8, 8))


@pytest.fixture(scope="module")
def explorer():
    rng = np.random.default_rng(0)
    base = Network.random(SPEC, seed=0).flat()
    zoo = [Network.from_flat(SPEC, base + 0.3 * rng.normal(size=base.shape).astype(np.float32)) for _ in range(8)]
    train, test = zoo[:6], zoo[6:]
    tiny_ae = ae.LayerAutoencoder.create(ae.LayerAEConfig(layer=0, form="token", latent=2, hidden=8),
                                         SPEC, ae.StackedNetworks.from_networks(train)).eval()
    codes = {
        0: [("token k=2", tiny_ae), ("PCA flat k=3", ae.PCALayerCode.fit(train, 0, "flat", k=3))],
        1: [("PCA flat k=2", ae.PCALayerCode.fit(train, 1, "flat", k=2))],
    }
    networks = {"train": [(f"tr{i}", n) for i, n in enumerate(train)], "test": [(f"te{i}", n) for i, n in enumerate(test)]}
    return LayerExplorer.build(networks, codes, train, n_directions=2, seed=4_500_000, max_steps=30)


def test_latent_directions_are_orthonormal_and_scaled(explorer):
    opt = explorer.option(1, 0)
    d, s = opt.directions, opt.scales
    assert d.shape == (2, opt.code.latent_dim) and np.allclose(d @ d.T, np.eye(2), atol=1e-5)
    assert s[0] >= s[1] > 0
    # more directions than the train codes span: only the ones with variance come back
    d5, s5 = latent_directions(ae.PCALayerCode.fit([Network.random(SPEC, seed=i) for i in range(3)], 1, "flat", k=2),
                               [Network.random(SPEC, seed=i) for i in range(3)], 5)
    assert len(s5) == 2


def test_widget_values_drive_weights_actions_returns_and_figure(explorer):
    w = ExplorerWidget(explorer, split="test", layer=1)
    first, image0 = w.current, w.image
    assert first.network_id == "te0" and first.layer == 1 and first.offsets == (0.0, 0.0)
    assert first.weight_input.shape == first.weight_decoded.shape == (8, 9)  # bias as last column
    assert len(w.out.outputs) == 1 and base64.b64decode(w.out.outputs[0]["data"]["image/jpeg"])[:2] == b"\xff\xd8"
    rollouts = explorer.rollouts

    w.sliders[0].value = 2.0  # move along the first principal direction of the train codes
    moved = w.current
    assert moved.offsets == (2.0, 0.0)
    assert not np.allclose(moved.weight_decoded, first.weight_decoded)
    np.testing.assert_array_equal(moved.weight_input, first.weight_input)
    assert not np.allclose(moved.actions_decoded, first.actions_decoded)
    np.testing.assert_array_equal(moved.actions_input, first.actions_input)
    assert explorer.rollouts == rollouts + 1  # one short episode of the decoded network, the input's is cached
    assert w.image != image0 and w.out.outputs[0]["data"]["image/jpeg"] == w.image and "te0" in w.info.value
    moved_norm = np.linalg.norm(moved.latent - first.latent)
    opt = explorer.option(1, 0)
    assert moved_norm == pytest.approx(2.0 * opt.scales[0], rel=1e-4)

    w.sliders[0].value = 0.0  # back: served from the cache, no new episode
    assert explorer.rollouts == rollouts + 1
    np.testing.assert_array_equal(w.current.weight_decoded, first.weight_decoded)
    assert w.current.return_decoded == first.return_decoded

    w.layer.value = 0  # the code menu follows the layer
    assert [label for label, _ in w.code.options] == ["token k=2", "PCA flat k=3"]
    assert w.current.layer == 0 and w.current.weight_input.shape == (8, 12)
    w.code.value = 1
    assert w.current.code_label == "PCA flat k=3"
    w.split.value = "train"  # the network menu follows the split
    assert [label for label, _ in w.network.options][:2] == ["tr0", "tr1"] and w.current.network_id == "tr0"
    w.network.value = 3
    assert w.current.network_id == "tr3"
    w.sliders[1].value = -1.0
    w.reset.click()
    assert w.offsets() == (0.0, 0.0) and w.current.offsets == (0.0, 0.0)


def test_returns_are_those_of_the_shown_networks(explorer):
    from nnae_utils.rollouts import evaluate

    for offsets in [(), (3.0, -3.0)]:
        v = explorer.view("test", 1, 1, 0, offsets=offsets)
        net = explorer.networks["test"][1][1]
        dec, z = explorer.decoded(net, 1, 0, v.offsets)
        np.testing.assert_array_equal(z, v.latent)
        res = evaluate([net, dec], [explorer.seed], max_steps=explorer.max_steps, nthread=1)
        assert (v.return_input, v.return_decoded) == (res.returns[0, 0], res.returns[1, 0])
        assert (v.length_input, v.length_decoded) == (res.lengths[0, 0], res.lengths[1, 0])
        assert len(v.states) == v.length_input
    assert explorer.view("test", 1, 1, 0, offsets=(3.0, -3.0)).action_distance > explorer.view("test", 1, 1, 0).action_distance


def test_static_explorer_links_its_controls_to_precomputed_views_on_the_client(explorer):
    """The static explorer computes every view it can show, and its menu and sliders switch between
    them through jslink (client-side links in the saved widget state), with no Python callback."""
    import ipywidgets as w

    from nnae_utils.explorer import STATIC_POSITIONS, static_choices, static_explorer

    choices = static_choices(explorer, "test", 0, 1)
    assert choices[0] == ("test", 0, 1, 0) and ("train", 0, 1, 0) in choices
    ui = static_explorer(explorer, choices)
    note, menu, outer = ui.children
    assert isinstance(menu, w.Dropdown) and isinstance(outer, w.Stack) and len(outer.children) == len(choices)
    slider, stack = outer.children[0].children
    assert isinstance(slider, w.SelectionSlider) and len(stack.children) == len(STATIC_POSITIONS)
    images = [page.children[1].value for page in stack.children]
    assert all(img[:2] == b"\xff\xd8" for img in images) and len(set(images)) > 1  # JPEGs that differ along the slider
    assert stack.selected_index == slider.index == STATIC_POSITIONS.index(0.0)
    from ipywidgets.widgets.widget import _instances
    from ipywidgets.widgets.widget_link import Link

    links = [m for m in _instances.values() if isinstance(m, Link)]
    linked = {(link.source[0].model_id, link.source[1], link.target[0].model_id, link.target[1]) for link in links}
    assert (slider.model_id, "index", stack.model_id, "selected_index") in linked
    assert (menu.model_id, "index", outer.model_id, "selected_index") in linked
