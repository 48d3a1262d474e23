"""Stage 6: the paper's Figure 3 claims, their verdict rule, and the links to the evidence in chapters 2 and 3."""
import doctest
import json
import re

import numpy as np
import pandas as pd
import pytest
from myst_parser.mdit_to_docutils.base import default_slugify

from nnae_utils import figure3 as F
from nnae_utils.pipeline import PROJECT_ROOT


def test_docstring_examples():
    assert doctest.testmod(F, raise_on_error=False).failed == 0


@pytest.mark.parametrize("by_run, by_network, expected", [
    (True, True, "reproduced"), (True, False, "reproduced"), (True, None, "reproduced"),
    (False, True, "reproduced only when split by network"),
    (False, False, "not reproduced"), (False, None, "not reproduced"),
    (None, True, "not measured"), (None, None, "not measured"),
])
def test_verdict(by_run, by_network, expected):
    assert F.verdict(by_run, by_network) == expected
    assert expected in F.VERDICTS


def losses(by_run, by_network, train=0.01, mean=(1.0, 1.0)):
    """A loss_table of three layers: the same loss on every layer."""
    return pd.DataFrame({"train": [train] * 3, "by run": [by_run] * 3, "by network": [by_network] * 3,
                         "mean by run": [mean[0]] * 3, "mean by network": [mean[1]] * 3},
                        index=pd.Index([0, 1, 2], name="layer"))


def retention(rows):
    """A retention_table from (protocol, layers, retention, low, high)."""
    return pd.DataFrame([{"protocol": p, "layers": lay, "n_networks": 4, "retention": r, "low": lo, "high": hi}
                         for p, lay, r, lo, hi in rows])


SEPARATED_BY_NETWORK_ONLY = retention([
    ("by run", "0", 0.9, 0.5, 1.2), ("by run", "1", 0.7, 0.4, 1.0), ("by run", "all", 0.6, 0.3, 0.95),
    ("by network", "0", 1.0, 0.95, 1.05), ("by network", "1", 0.5, 0.4, 0.6), ("by network", "all", 0.3, 0.2, 0.4),
])


def test_a_claim_that_holds_only_on_unseen_networks_of_seen_runs():
    """The suite's finding on the shipped zoo: other runs' layers are encoded no better than by the mean
    layer, held-out snapshots of the train runs are; and layers separate only on the latter."""
    table = F.claim_table(losses(by_run=0.95, by_network=0.3), SEPARATED_BY_NETWORK_ONLY)
    assert list(table.index) == ["a", "a'", "b", "d", "d'"]
    assert table.loc["a", "verdict"] == "reproduced"                       # train 0.01 <= 0.25 x mean 1.0
    assert table.loc["a'", "verdict"] == "reproduced only when split by network"  # 0.95 > 0.8 >= 0.3
    assert table.loc["b", "verdict"] == "reproduced"                       # 95x and 30x the train loss
    assert table.loc["d", "verdict"] == "reproduced only when split by network"
    assert table.loc["d'", "verdict"] == "reproduced only when split by network"
    assert table.loc["d", "by network value"].startswith("layer 0 100% [95%, 105%] vs layer 1 50%")


def test_thresholds_decide_at_their_named_values():
    at = F.claim_table(losses(by_run=F.INFORMATIVE_FRACTION, by_network=0.9, train=F.FIT_FRACTION,
                              mean=(1.0, 1.0)), SEPARATED_BY_NETWORK_ONLY)
    assert at.loc["a", "by run"] and at.loc["a'", "by run"]  # both thresholds are inclusive
    gap = F.claim_table(losses(by_run=F.GAP_FACTOR * 0.1, by_network=0.1, train=0.1), SEPARATED_BY_NETWORK_ONLY)
    assert gap.loc["b", "by run"] and not gap.loc["b", "by network"]
    assert gap.loc["b", "verdict"] == "reproduced"


def test_nothing_held_out_is_not_measured_by_network():
    """stop_on: validation holds no train snapshot out: the by-network columns are NaN, the verdicts rest
    on the split by run alone, and no claim is said to hold by network."""
    table = F.claim_table(losses(by_run=0.95, by_network=np.nan, mean=(1.0, np.nan)),
                          SEPARATED_BY_NETWORK_ONLY[SEPARATED_BY_NETWORK_ONLY["protocol"] == "by run"])
    assert table["by network"].isna().all() and (table["by network value"] == "n/a").all()
    assert table.loc["a'", "verdict"] == "not reproduced" and table.loc["a", "verdict"] == "reproduced"


def test_score_frame_assigns_each_network_its_split():
    rows = []
    for net, split in [("t0", "test"), ("h0", "train"), ("tr0", "train"), ("v0", "validation")]:
        for layers, roles in [("0", "['ablation', 'main', 'sweep']"), ("all", "['main_all']"), ("1", "['sweep']")]:
            for form in ("flat", "token"):
                rows.append({"source_network": net, "split": split, "layers": layers, "roles": roles, "kind": "autoencoder",
                             "form": form, "input_return": 10.0, "decoded_return": 5.0})
    frame = F.score_frame(pd.DataFrame(rows), {"h0"}, "flat")
    assert sorted(map(tuple, frame[["protocol", "source_network", "layers"]].to_numpy())) == [
        ("by network", "h0", "0"), ("by network", "h0", "all"), ("by run", "t0", "0"), ("by run", "t0", "all")]
    table = F.retention_table(frame, n_boot=50)
    assert np.allclose(table["retention"], 0.5) and set(table["protocol"]) == set(F.PROTOCOLS)


def test_the_chapter_links_its_evidence_to_sections_that_exist():
    """Chapter 6 links each claim to a section of chapters 2 and 3 by its heading's anchor (myst_heading_anchors):
    a renamed heading must fail here, not only in the book build."""
    cells = json.loads((PROJECT_ROOT / "notebooks" / "06_paper_figure3.ipynb").read_text())["cells"]
    text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    links = set(re.findall(r"\]\((0\d_\w+)\.ipynb#([\w-]+)\)", text))
    assert {nb for nb, _ in links} == {"02_layer_autoencoders", "03_decoded_evaluation"}
    for notebook, anchor in links:
        cells = json.loads((PROJECT_ROOT / "notebooks" / f"{notebook}.ipynb").read_text())["cells"]
        headings = [line.lstrip("#").strip() for c in cells if c["cell_type"] == "markdown"
                    for line in "".join(c["source"]).splitlines() if re.match(r"#{1,3} ", line)]
        assert anchor in {default_slugify(h) for h in headings}, (notebook, anchor)


def test_the_figure_has_the_papers_four_panels():
    import matplotlib

    matplotlib.use("Agg")
    from nnae_utils import plots

    history = pd.DataFrame([{"epoch": e, "layer": lay, "train": 0.1 / e, "by run": 1.0, "by network": 0.5 if lay else np.nan}
                            for e in (1, 2, 3) for lay in (0, 1)])
    scores = pd.DataFrame([{"protocol": p, "layers": lay, "source_network": f"n{i}", "input_return": 10.0 + i,
                            "decoded_return": 5.0 + i} for p in F.PROTOCOLS for lay in ("0", "1", "all") for i in range(3)])
    fig = plots.paper_figure3(history, scores)
    assert [ax.get_title()[:3] for ax in fig.axes[:4]] == ["(a)", "(b)", "(d)", "(e)"]
    assert len(fig.axes[1].get_lines()) == 3  # both layers by run, layer 1 by network
