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


def _primary_frame(shift: float, margin: float):
    """A stage's primary comparison on known scores: ``first`` beats ``other`` by ``shift`` on every seed."""
    from nnae_utils import results

    other = np.arange(10.0) * 10
    scores = {("finetune", "ga/latent:all"): other + shift, ("finetune", "ga/weights"): other}
    table = results.comparison_table(scores, [("finetune", "ga/latent:all", "ga/weights")], {"finetune": margin},
                                     primary=("ga/latent:all", "ga/weights"), n_boot=300)
    return results.paired_comparison(scores, table, ["finetune", "scratch"], ("ga/latent:all", "ga/weights")), table


def test_primary_comparison_draws_the_computed_interval_margin_and_verdict():
    frame, table = _primary_frame(shift=50.0, margin=5.0)
    computed = table.iloc[0]["diff"]
    assert list(frame.start) == ["finetune"] and frame.iloc[0].verdict == computed.verdict == "better"
    fig = plots.primary_comparison(frame)
    runs_ax, diff_ax = fig.axes
    holm = next(line for line in diff_ax.get_lines() if line.get_label().startswith("IQM difference"))
    assert np.allclose(holm.get_xdata(), [computed.difference.low, computed.difference.high])
    tost = next(line for line in diff_ax.get_lines() if line.get_label() == "TOST interval")
    assert np.allclose(tost.get_xdata(), [computed.equivalence.low, computed.equivalence.high])
    band = next(p for p in diff_ax.patches if p.get_label().startswith("equivalence margin"))
    assert np.allclose([band.get_x(), band.get_x() + band.get_width()], [-5.0, 5.0])
    assert diff_ax.get_title() == "verdict: better"
    assert len([line for line in runs_ax.get_lines()]) == 10  # one line per seed pair
    matplotlib.pyplot.close(fig)


def test_primary_comparison_labels_an_equal_pair_equivalent_within_a_wide_margin():
    frame, _ = _primary_frame(shift=0.0, margin=100.0)
    fig = plots.primary_comparison(frame)
    assert fig.axes[1].get_title() == "verdict: equivalent"
    matplotlib.pyplot.close(fig)
