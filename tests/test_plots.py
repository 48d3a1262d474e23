"""The sample-efficiency figure: every label drawn distinguishably, one legend, the zoo's cost outside the panels."""
import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from nnae_utils import plots  # noqa: E402

GRID = [f"{m}/{g}" for m in ("ga", "cma") for g in ("latent:all", "latent:best", "pca:all", "random:all", "dct:all")]
GRID = ["ga/weights", *GRID, "ga/weights@latent:all"]


def _curves():
    rows = []
    for start in ("finetune", "scratch"):
        for i, label in enumerate(GRID):
            if start == "scratch" and "@" in label:
                continue
            for steps in (0, 500, 1000):
                rows.append({"start": start, "label": label, "steps": steps, "point": i + steps / 1000,
                             "low": i - 1.0, "high": i + 2.0})
    return pd.DataFrame(rows)


def test_twelve_labels_get_twelve_distinct_styles_and_one_legend():
    style = plots.label_styles(GRID)
    assert len(set(style.values())) == len(GRID) == 12
    assert style["ga/latent:all"][0] == style["cma/latent:all"][0]  # same genome, same color
    assert style["ga/latent:all"][1] != style["cma/latent:all"][1]  # different method, different line
    fig = plots.sample_efficiency(_curves(), zoo_note="paid before step 0: a test note", levels={"scratch": [5.0, 1e4]})
    axes = fig.axes
    legends = [ax.get_legend() for ax in axes if ax.get_legend() is not None]
    assert len(legends) == 1 and [t.get_text() for t in legends[0].get_texts()] == GRID
    assert [t.get_text() for t in fig.texts] == ["paid before step 0: a test note"]  # once, outside the panels
    assert not any("test note" in t.get_text() for ax in axes for t in ax.texts)
    scratch = axes[1]
    assert any("above the plot" in t.get_text() for t in scratch.texts)  # the 1e4 level is named, not drawn
    assert np.isclose(sorted(line.get_ydata()[0] for line in scratch.get_lines() if line.get_linestyle() == "--"
                             and line.get_label().startswith("_"))[-1], 5.0)
    matplotlib.pyplot.close(fig)
