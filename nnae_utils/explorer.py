"""The layer explorer: look inside decoded networks, layer by layer, and move along the latent space.

Pick a network (by split), a layer and a code (an autoencoder form and latent size, or PCA); see
the input layer's weights, the decoded layer's weights and their difference as heatmaps, the
actions of both networks along one trajectory, and both returns. Sliders move the network's latent
code along the principal directions of the *train* networks' codes (in units of the train codes'
standard deviation along each direction) and show what that does to the weights, the actions and
the return.

Two layers, so that the logic is testable without a browser:

- :class:`LayerExplorer` holds the networks and codes and computes an :class:`ExplorerView` for a
  choice (pure numpy + one short Hopper episode through :func:`nnae_utils.rollouts.evaluate`).
  Rollouts are cached (the input network's episode once per network, the decoded one per choice),
  so moving a slider back and forth costs nothing, and a new position costs one short episode.
- :class:`ExplorerWidget` wires ipywidgets to it. The figure is written into an ``ipywidgets.Output``
  as an image (its ``outputs`` trait), so the executed notebook's saved widget state carries the
  current figure: the static book shows it, and a live kernel updates it.

The trajectory: both networks' actions are computed on the states the *input* network visits in
its episode (the same states for both, as the functional loss compares them); each network's return
comes from its own episode on the same reset seed.

Example:
    >>> from nnae_utils.policies import Network, NetworkSpec
    >>> from nnae_utils.layer_codes import PCALayerCode
    >>> spec = NetworkSpec(obs_dim=11, act_dim=3, hidden=(8, 8))
    >>> nets = [Network.random(spec, seed=i) for i in range(6)]
    >>> codes = {1: [("PCA k=2", PCALayerCode.fit(nets[:4], 1, "flat", k=2))]}
    >>> ex = LayerExplorer.build({"train": [(f"n{i}", n) for i, n in enumerate(nets[:4])], "test": [("t0", nets[4])]},
    ...                          codes, nets[:4], n_directions=2, seed=4_500_000, max_steps=20)
    >>> v0, v1 = ex.view("test", 0, 1, 0), ex.view("test", 0, 1, 0, offsets=(2.0,))
    >>> v0.weight_decoded.shape, bool((v0.weight_decoded != v1.weight_decoded).any())
    ((8, 9), True)
"""
from __future__ import annotations

import base64
import io
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from .layer_codes import network_from_latents
from .policies import Network
from .rollouts import evaluate


@dataclass
class CodeOption:
    """One code a layer can be decoded with, and the latent directions its sliders move along."""

    label: str
    """What the menu shows, e.g. ``flat k=76 (10.1x)``."""
    code: Any
    """A layer code (:class:`~nnae_utils.layer_codes.LayerAutoencoder` or ``PCALayerCode``)."""
    directions: np.ndarray
    """(D, latent_dim) orthonormal principal directions of the train networks' codes, largest first."""
    scales: np.ndarray
    """(D,) standard deviation of the train codes along each direction (a slider's unit)."""


def latent_directions(code: Any, train_networks: Sequence[Network], n: int) -> tuple[np.ndarray, np.ndarray]:
    """The top ``n`` principal directions of the train networks' codes, and the std along each.

    Directions that carry no variance (more directions asked for than the train codes span) are
    left out, so fewer than ``n`` may come back.
    """
    z = np.asarray(code.encode(list(train_networks)), np.float64)
    if z.ndim != 2 or len(z) < 2:
        return np.zeros((0, code.latent_dim), np.float32), np.zeros(0, np.float32)
    zc = z - z.mean(0)
    _, s, vt = np.linalg.svd(zc, full_matrices=False)
    keep = s > max(1e-9, 1e-6 * (s[0] if len(s) else 0.0))
    k = int(min(n, keep.sum()))
    scales = s[:k] / np.sqrt(len(z) - 1)
    return vt[:k].astype(np.float32), scales.astype(np.float32)


@dataclass
class ExplorerView:
    """Everything the explorer shows for one choice (split, network, layer, code, slider offsets)."""

    split: str
    network_id: str
    layer: int
    code_label: str
    offsets: tuple[float, ...]
    latent: np.ndarray
    """The (moved) latent code that was decoded."""
    latent_dim: int
    compression_ratio: float
    weight_input: np.ndarray
    """(out, in + 1): the input layer's weights, its bias as the last column."""
    weight_decoded: np.ndarray
    """(out, in + 1): the decoded layer's weights and bias."""
    states: np.ndarray
    """(T, obs) the states the input network visits in its episode."""
    actions_input: np.ndarray
    """(T, act) the input network's actions on those states."""
    actions_decoded: np.ndarray
    """(T, act) the decoded network's actions on the same states."""
    return_input: float
    return_decoded: float
    length_input: int
    length_decoded: int
    seed: int
    max_steps: int

    @property
    def difference(self) -> np.ndarray:
        """Decoded minus input weights (and bias, last column)."""
        return self.weight_decoded - self.weight_input

    @property
    def action_distance(self) -> float:
        """Mean L2 distance of the two networks' actions along the input's trajectory."""
        if len(self.states) == 0:
            return float("nan")
        return float(np.linalg.norm(self.actions_decoded.astype(np.float64) - self.actions_input, axis=-1).mean())


def _with_bias(weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    return np.concatenate([weight, bias[:, None]], axis=1)


class LayerExplorer:
    """Decoded networks for any (split, network, layer, code, latent offsets), with cached rollouts.

    ``networks``: {split: [(id, network), ...]}; ``options``: {layer: [CodeOption, ...]}.
    ``seed``: the reset seed of every explorer episode; ``max_steps``: its cap (keep it short: every
    new slider position costs one episode of the decoded network).
    """

    def __init__(self, networks: Mapping[str, Sequence[tuple[str, Network]]], options: Mapping[int, Sequence[CodeOption]],
                 *, seed: int, max_steps: int = 300, cache_size: int = 256, nthread: int | None = 1):
        self.networks = {s: list(v) for s, v in networks.items() if len(v)}
        self.options = {int(k): list(v) for k, v in sorted(options.items()) if len(v)}
        if not self.networks:
            raise ValueError("the explorer needs at least one split with networks")
        if not self.options:
            raise ValueError("the explorer needs at least one layer with a code")
        self.seed, self.max_steps, self.nthread = int(seed), int(max_steps), nthread
        self.cache_size = int(cache_size)
        self._inputs: dict[tuple[str, int], tuple[np.ndarray, float, int]] = {}
        self._views: OrderedDict[tuple, ExplorerView] = OrderedDict()
        self.rollouts = 0
        """Episodes run so far (a cached view runs none)."""

    @classmethod
    def build(cls, networks: Mapping[str, Sequence[tuple[str, Network]]], codes: Mapping[int, Sequence[tuple[str, Any]]],
              train_networks: Sequence[Network], *, n_directions: int = 3, **kwargs: Any) -> "LayerExplorer":
        """An explorer whose sliders move along each code's top ``n_directions`` train-code directions."""
        options = {
            layer: [CodeOption(label, code, *latent_directions(code, train_networks, n_directions)) for label, code in items]
            for layer, items in codes.items()
        }
        return cls(networks, options, **kwargs)

    @property
    def splits(self) -> list[str]:
        return list(self.networks)

    @property
    def layers(self) -> list[int]:
        return list(self.options)

    @property
    def n_directions(self) -> int:
        return max((len(o.scales) for opts in self.options.values() for o in opts), default=0)

    def option(self, layer: int, option: int) -> CodeOption:
        return self.options[layer][option]

    def decoded(self, net: Network, layer: int, option: int, offsets: Sequence[float] = ()) -> tuple[Network, np.ndarray]:
        """``net`` with ``layer`` encoded, moved by ``offsets`` (in train-code stds along the principal
        directions; missing offsets are 0, offsets beyond the available directions are ignored) and decoded."""
        opt = self.option(layer, option)
        z = np.asarray(opt.code.encode(net), np.float32).copy()
        for k, off in enumerate(offsets[: len(opt.scales)]):
            if off:
                z = z + np.float32(off) * opt.scales[k] * opt.directions[k]
        return network_from_latents(net, {layer: opt.code}, {layer: z}), z

    def _input_episode(self, split: str, index: int) -> tuple[np.ndarray, float, int]:
        key = (split, index)
        if key not in self._inputs:
            net = self.networks[split][index][1]
            res = evaluate([net], [self.seed], max_steps=self.max_steps, record="observations", nthread=self.nthread)
            self.rollouts += 1
            self._inputs[key] = (res.observations.astype(np.float64), float(res.returns[0, 0]), int(res.lengths[0, 0]))
        return self._inputs[key]

    def view(self, split: str, index: int, layer: int, option: int, offsets: Sequence[float] = ()) -> ExplorerView:
        """What the explorer shows for one choice; cached (an LRU of ``cache_size`` views)."""
        n_dir = len(self.option(layer, option).scales)
        offs = tuple(round(float(o), 4) for o in list(offsets)[:n_dir])
        offs = offs + (0.0,) * (n_dir - len(offs))
        key = (split, int(index), int(layer), int(option), offs)
        if key in self._views:
            self._views.move_to_end(key)
            return self._views[key]
        source_id, net = self.networks[split][index]
        dec, z = self.decoded(net, layer, option, offs)
        states, ret_in, len_in = self._input_episode(split, index)
        res = evaluate([dec], [self.seed], max_steps=self.max_steps, nthread=self.nthread)
        self.rollouts += 1
        opt = self.option(layer, option)
        view = ExplorerView(
            split=split, network_id=source_id, layer=int(layer), code_label=opt.label, offsets=offs, latent=z,
            latent_dim=int(opt.code.latent_dim), compression_ratio=float(opt.code.compression_ratio),
            weight_input=_with_bias(*net.layer(layer)), weight_decoded=_with_bias(*dec.layer(layer)),
            states=states, actions_input=net.act(states) if len(states) else np.zeros((0, net.spec.act_dim), np.float32),
            actions_decoded=dec.act(states) if len(states) else np.zeros((0, net.spec.act_dim), np.float32),
            return_input=ret_in, return_decoded=float(res.returns[0, 0]), length_input=len_in,
            length_decoded=int(res.lengths[0, 0]), seed=self.seed, max_steps=self.max_steps,
        )
        self._views[key] = view
        if len(self._views) > self.cache_size:
            self._views.popitem(last=False)
        return view


# --------------------------------------------------------------------------- from a run's artifacts


def explorer_seed() -> int:
    """The reset seed of every explorer episode: in the ``decoded_report`` range, far from the paired scores' seeds."""
    from .seeds import eval_seeds

    return int(eval_seeds("decoded_report", 1, offset=500_000)[0])


def explorer_codes(variants: Sequence[Any], n_layers: int) -> dict[int, list[tuple[str, Any]]]:
    """The codes the explorer offers per layer, from stage 3's variants (:func:`nnae_utils.decoded.stage2_variants`):
    the main autoencoders of both forms first, the latent-size sweep's other autoencoders, then PCA at
    the main latent size."""
    main_latent = {(v.form, v.layers[0]): v.latent[v.layers[0]] for v in variants if "main" in v.roles}
    ordered = sorted(variants, key=lambda v: (v.kind != "autoencoder", "main" not in v.roles, v.form, v.compression_ratio))
    codes: dict[int, list[tuple[str, Any]]] = {}
    for layer in range(n_layers):
        items = []
        for v in ordered:
            if v.layers != (layer,) or v.loss not in ("functional", "pca"):
                continue
            if v.kind == "autoencoder" and v.roles & {"main", "sweep"}:
                tag = " main" if "main" in v.roles else ""
                items.append((f"{v.form} k={v.latent[layer]} ({v.compression_ratio:.1f}x){tag}", v.codes[layer]))
            elif v.kind == "pca" and main_latent.get((v.form, layer)) == v.latent[layer]:
                items.append((f"PCA {v.form} k={v.latent[layer]} ({v.compression_ratio:.1f}x)", v.codes[layer]))
        codes[layer] = items
    return codes


def open_explorer(run_dir: str = "runs/default", *, split: str = "test", layer: int = 0, steps: int = 300,
                  directions: int = 3) -> "ExplorerWidget":
    """The explorer on a run's stage-1 zoo and stage-2 codes, for live use without rerunning stage 3.

    In a Jupyter cell::

        from nnae_utils.explorer import open_explorer
        open_explorer("runs/default").ui      # in a Jupyter cell
    """
    from .decoded import stage2_variants
    from .stages import DecodedEvalParams
    from .zoo import load_zoo

    params = DecodedEvalParams(run_dir=str(run_dir))
    zoo = load_zoo(params.upstream_dir("data") / "zoo")
    split_of = zoo.frame().set_index("id")["split"]
    networks = {s: [(r["id"], n) for r, n in zip(zoo.records, zoo.networks) if split_of[r["id"]] == s]
                for s in ("train", "validation", "test")}
    variants = stage2_variants(params.upstream_dir("layer_autoencoders"), sweep=True, ablation=False, pca=True)
    codes = explorer_codes(variants, zoo.networks[0].spec.n_layers)
    explorer = LayerExplorer.build({s: v for s, v in networks.items() if v}, codes, [n for _, n in networks["train"]],
                                   n_directions=directions, seed=explorer_seed(), max_steps=steps, nthread=1)
    return ExplorerWidget(explorer, split=split if networks.get(split) else explorer.splits[0], layer=layer)


# --------------------------------------------------------------------------- widgets


def figure_image(fig, dpi: int = 64, fmt: str = "jpeg") -> tuple[str, str]:
    """A matplotlib figure as (mime type, base64 text), what an Output widget's display_data holds.

    JPEG by default: the explorer's heatmaps and dense action traces make a PNG several times larger,
    and the image is saved in the notebook's widget state, which should stay small.
    """
    buf = io.BytesIO()
    kwargs = {"pil_kwargs": {"quality": 80}} if fmt == "jpeg" else {}
    fig.savefig(buf, format=fmt, dpi=dpi, bbox_inches="tight", **kwargs)
    return f"image/{fmt}", base64.b64encode(buf.getvalue()).decode("ascii")


class ExplorerWidget:
    """ipywidgets around a :class:`LayerExplorer`: menus, latent sliders, a figure and a line of numbers.

    ``ui`` is the widget to display. Every change recomputes the view (cached rollouts) and replaces
    the figure in ``out`` (an ``ipywidgets.Output``, whose ``outputs`` hold one PNG: the saved widget
    state stays small). ``current`` is the last :class:`ExplorerView`; ``image`` the last figure (base64 JPEG).
    """

    SLIDER_RANGE = 3.0

    def __init__(self, explorer: LayerExplorer, *, split: str | None = None, index: int = 0, layer: int | None = None,
                 option: int = 0, dpi: int = 64):
        import ipywidgets as w

        self.explorer, self.dpi = explorer, dpi
        self._busy = False
        split = split if split is not None else explorer.splits[0]
        layer = layer if layer is not None else explorer.layers[0]
        self.split = w.Dropdown(options=explorer.splits, value=split, description="split")
        self.network = w.Dropdown(options=self._network_options(split), value=index, description="network")
        self.layer = w.Dropdown(options=[(f"layer {i}", i) for i in explorer.layers], value=layer, description="layer")
        self.code = w.Dropdown(options=self._code_options(layer), value=option, description="code",
                               layout=w.Layout(width="360px"))
        self.sliders = [
            w.FloatSlider(value=0.0, min=-self.SLIDER_RANGE, max=self.SLIDER_RANGE, step=0.25, description=f"direction {k + 1}",
                          continuous_update=False, readout_format=".2f", style={"description_width": "initial"})
            for k in range(max(explorer.n_directions, 0))
        ]
        self.reset = w.Button(description="sliders to 0")
        self.info = w.HTML()
        self.out = w.Output()
        self.split.observe(self._on_split, names="value")
        self.layer.observe(self._on_layer, names="value")
        for control in (self.network, self.code, *self.sliders):
            control.observe(self._on_change, names="value")
        self.reset.on_click(self._on_reset)
        self.ui = w.VBox([
            w.HBox([self.split, self.network]),
            w.HBox([self.layer, self.code]),
            w.HBox([w.VBox(self.sliders), self.reset]),
            self.info,
            self.out,
        ])
        self.current: ExplorerView | None = None
        self.image: str | None = None
        self.refresh()

    # -- menus
    def _network_options(self, split: str) -> list[tuple[str, int]]:
        return [(source_id, i) for i, (source_id, _) in enumerate(self.explorer.networks[split])]

    def _code_options(self, layer: int) -> list[tuple[str, int]]:
        return [(o.label, i) for i, o in enumerate(self.explorer.options[layer])]

    def _sync_sliders(self) -> None:
        n_dir = len(self.explorer.option(self.layer.value, self.code.value).scales)
        for k, s in enumerate(self.sliders):
            s.disabled = k >= n_dir
            if s.disabled:
                s.value = 0.0

    # -- events
    def _quietly(self, fn) -> None:
        self._busy = True
        try:
            fn()
        finally:
            self._busy = False

    def _on_split(self, change) -> None:
        self._quietly(lambda: (setattr(self.network, "options", self._network_options(change["new"])),
                               setattr(self.network, "value", 0)))
        self.refresh()

    def _on_layer(self, change) -> None:
        def update():
            self.code.options = self._code_options(change["new"])
            self.code.value = 0
            self._sync_sliders()
        self._quietly(update)
        self.refresh()

    def _on_change(self, change) -> None:
        if not self._busy:
            self._quietly(self._sync_sliders)
            self.refresh()

    def _on_reset(self, _button=None) -> None:
        self._quietly(lambda: [setattr(s, "value", 0.0) for s in self.sliders])
        self.refresh()

    # -- output
    def offsets(self) -> tuple[float, ...]:
        return tuple(float(s.value) for s in self.sliders)

    def refresh(self) -> ExplorerView:
        """Recompute the view for the current widget values and redraw."""
        import matplotlib.pyplot as plt

        from . import plots

        view = self.explorer.view(self.split.value, self.network.value, self.layer.value, self.code.value, self.offsets())
        fig = plots.layer_explorer(view)
        mime, self.image = figure_image(fig, self.dpi)
        plt.close(fig)
        self.out.outputs = ({"output_type": "display_data", "metadata": {},
                             "data": {mime: self.image, "text/plain": f"<layer explorer: {view.network_id}, layer {view.layer}>"}},)
        kept = view.return_decoded / view.return_input if view.return_input > 0 else float("nan")
        self.info.value = (
            f"<b>{view.network_id}</b> ({view.split}), layer {view.layer}, {view.code_label}: latent dim {view.latent_dim}, "
            f"{view.compression_ratio:.1f}x. One episode (seed {view.seed}, at most {view.max_steps} steps): "
            f"input return <b>{view.return_input:.1f}</b> ({view.length_input} steps), decoded "
            f"<b>{view.return_decoded:.1f}</b> ({view.length_decoded} steps, {kept:.0%} of the input's). "
            f"Mean action distance on the input's states: {view.action_distance:.3f}."
        )
        self.current = view
        return view


# --------------------------------------------------------------------------- the static explorer


STATIC_POSITIONS = (-2.0, -1.0, 0.0, 1.0, 2.0)
"""Where the static explorer's slider stops along the first latent direction, in train-code stds."""


def static_explorer(explorer: LayerExplorer, choices: Sequence[tuple[str, int, int, int]],
                    positions: Sequence[float] = STATIC_POSITIONS, dpi: int = 56) -> Any:
    """An explorer that works in a static page, without a kernel: every view it can show is computed
    here, and its controls are linked to them on the client.

    For each choice ``(split, network index, layer, code option)`` and each position of the first
    latent direction (``positions``, in train-code stds), the explorer's figure and numbers are
    rendered to an image. A menu picks the choice (its ``index`` linked to a ``Stack`` of the
    choices, with ``ipywidgets.jslink``), and each choice's slider (a ``SelectionSlider``, its
    ``index`` linked to a ``Stack`` of that choice's images) moves along the direction. The links
    live in the saved widget state, so the published book's widget manager runs them in the browser.

    Returns the widget to display (an ``ipywidgets.VBox``).
    """
    import ipywidgets as w
    import matplotlib.pyplot as plt

    from . import plots

    positions = [float(p) for p in positions]
    middle = min(range(len(positions)), key=lambda i: abs(positions[i]))
    labels, pages = [], []
    for split, index, layer, option in choices:
        images = []
        opt = explorer.option(layer, option)
        for p in positions:
            view = explorer.view(split, index, layer, option, offsets=(p,) if len(opt.scales) else ())
            fig = plots.layer_explorer(view)
            mime, data = figure_image(fig, dpi)
            plt.close(fig)
            kept = view.return_decoded / view.return_input if view.return_input > 0 else float("nan")
            caption = w.HTML(
                f"direction 1 at {p:+.1f} sd: input return <b>{view.return_input:.1f}</b>, decoded "
                f"<b>{view.return_decoded:.1f}</b> ({kept:.0%} of the input's); mean action distance "
                f"{view.action_distance:.3f}")
            images.append(w.VBox([caption, w.Image(value=base64.b64decode(data), format=mime.split("/")[1])]))
        stack = w.Stack(children=images, selected_index=middle)
        slider = w.SelectionSlider(options=[f"{p:+.1f} sd" for p in positions], index=middle,
                                   description="direction 1", continuous_update=True,
                                   style={"description_width": "initial"},
                                   disabled=not len(opt.scales))
        w.jslink((slider, "index"), (stack, "selected_index"))
        network_id = explorer.networks[split][index][0]
        labels.append(f"{network_id} ({split}), layer {layer}, {opt.label}")
        pages.append(w.VBox([slider, stack]))
    choice = w.Dropdown(options=[(label, i) for i, label in enumerate(labels)],
                        value=0, description="network, layer, code", style={"description_width": "initial"},
                        layout=w.Layout(width="640px"))
    outer = w.Stack(children=pages, selected_index=0)
    w.jslink((choice, "index"), (outer, "selected_index"))
    note = w.HTML("<b>Static explorer</b>: every view below was computed when the notebook ran; the menu and "
                  "slider switch between them in the browser, with no Python kernel.")
    return w.VBox([note, choice, outer])


def static_choices(explorer: LayerExplorer, split: str, index: int, layer: int, n_networks: int = 2) -> list[tuple[str, int, int, int]]:
    """A few choices for :func:`static_explorer`: ``layer`` of network ``index`` of ``split`` with each of
    its layer's first two codes, and the same layer's first code on up to ``n_networks - 1`` other networks
    of the split and on the first train network."""
    n_options = len(explorer.options[layer])
    choices = [(split, index, layer, o) for o in range(min(2, n_options))]
    others = [i for i in range(len(explorer.networks[split])) if i != index][: max(n_networks - 1, 0)]
    choices += [(split, i, layer, 0) for i in others]
    if split != "train" and explorer.networks.get("train"):
        choices.append(("train", 0, layer, 0))
    return choices
