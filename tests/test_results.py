"""nnae_utils.results (the tables of stages 4 and 5) and nnae_utils.critics (the zoo critics' choice), on tiny
synthetic scores and curves whose answers are known by hand."""
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from nnae_utils import critics, published, results, stats
from nnae_utils.td3 import TwinCritic, save_critic


def curves(rows):
    """A curve frame from (start, label, run_id, env_steps, champion_return[, gain, start_return]) tuples."""
    cols = ["start", "label", "run_id", "env_steps", "champion_return", "gain", "start_return"]
    return pd.DataFrame([tuple(r) + (np.nan,) * (len(cols) - len(r)) for r in rows], columns=cols)


def test_final_scores_keep_the_keys_order_and_match_the_statistics():
    scores = {("scratch", "b"): [4.0, 1.0, 3.0, 2.0], ("finetune", "a"): [10.0, 10.0, 10.0, 100.0]}
    table = results.final_scores(scores, n_boot=300, seed=1, extra={("scratch", "b"): {"env_used": 7.0}})
    assert list(zip(table.start, table.label)) == list(scores)
    b, a = table.iloc[0], table.iloc[1]
    assert b.point == stats.iqm([1.0, 2.0, 3.0, 4.0]) == 2.5 and b["mean"].point == 2.5 and b.env_used == 7.0
    assert a.point == 10.0 and a["mean"].point == 32.5 and np.isnan(a.env_used)  # IQM drops the outlier, the mean does not
    assert b.iqm == stats.interval(np.array([4.0, 1.0, 3.0, 2.0]), "iqm", n_boot=300, seed=1)
    assert list(results.score_dots(scores).value) == [4.0, 1.0, 3.0, 2.0, 10.0, 10.0, 10.0, 100.0]


def test_reach_table_counts_runs_that_never_reach_a_level_as_infinitely_slow():
    c = curves([("scratch", "ga", "r0", 0, 0.0), ("scratch", "ga", "r0", 100, 900.0), ("scratch", "ga", "r0", 200, 1500.0),
                ("scratch", "ga", "r1", 0, 0.0), ("scratch", "ga", "r1", 300, 1200.0),
                ("scratch", "ga", "r2", 0, 0.0), ("scratch", "ga", "r2", 400, 800.0),
                ("finetune", "ga", "f0", 0, 100.0, 0.0, -100.0), ("finetune", "ga", "f0", 50, 115.0, 15.0, -100.0)])
    levels = {"scratch": results.reach_levels([1000.0, 1400.0]), "finetune": results.reach_levels(gain=0.1)}
    reach = results.reach_table(c, [("scratch", "ga"), ("finetune", "ga"), ("scratch", "missing")], levels)
    assert list(reach.index) == [("scratch", "ga"), ("finetune", "ga")]  # a key without curves is skipped
    at_1000, at_1400 = reach.loc[("scratch", "ga"), "return >= 1000"], reach.loc[("scratch", "ga"), "return >= 1400"]
    assert (at_1000.median_steps, at_1000.reached, at_1000.runs) == (300.0, 2, 3)  # 200, 300, inf
    assert math.isinf(at_1400.median_steps) and at_1400.reached == 1
    gain = reach.loc[("finetune", "ga"), "gain >= 10%"]  # 15 / |-100| reaches 10% at step 50
    assert (gain.median_steps, gain.reached) == (50.0, 1)
    shown = results.reach_display(reach, "scratch")
    assert list(shown.columns) == ["return >= 1000", "return >= 1400"] and shown.loc["ga", "return >= 1000"] == "300 (2/3 runs)"
    assert list(results.reach_display(reach, "finetune").columns) == ["gain >= 10%"]
    assert results.reach_dict(at_1400) == {"median": None, "reached": 1, "runs": 3, "text": "not reached (1/3 runs)"}


def test_curve_bands_carry_each_runs_champion_forward_and_summarise_by_iqm():
    c = curves([("scratch", "ga", "a", 0, 1.0), ("scratch", "ga", "a", 10, 5.0), ("scratch", "ga", "b", 0, 3.0),
                ("finetune", "td3", "c", 5, 0.0, 2.0)])
    bands = results.curve_bands(c, {"scratch": "champion_return", "finetune": "gain"}, [0, 10, 20], n_boot=50)
    ga = bands[bands.label == "ga"]
    assert ga.point.tolist() == [2.0, 4.0, 4.0]  # (1, 3), then (5, 3) carried to the end of the grid
    assert (ga.low <= ga.point).all() and (ga.point <= ga.high).all()
    td3 = bands[bands.label == "td3"]
    assert np.isnan(td3.point.iloc[0]) and td3.point.iloc[1:].tolist() == [2.0, 2.0]  # nothing recorded before step 5


def test_comparisons_apply_the_verdict_rule_with_named_thresholds():
    rng = np.random.default_rng(0)
    base = rng.normal(100.0, 5.0, 12)
    scores = {("f", "latent"): base + 60.0, ("f", "weights"): base, ("f", "pca"): base + rng.normal(0.0, 1.0, 12),
              ("f", "noisy"): base + rng.normal(0.0, 200.0, 12)}
    margins = results.equivalence_margins({"f": [90.0, 100.0, 110.0]}, ["f"], scratch_level=1.0)
    assert margins == {"f": pytest.approx(results.EQUIVALENCE_FRACTION * 100.0)}
    pairs = [("f", "latent", "weights"), ("f", "pca", "weights"), ("f", "noisy", "weights")]
    table = results.comparison_table(scores, pairs, margins, primary=("latent", "weights"), first="latent", n_boot=500)
    assert table.verdict.tolist() == ["better", "equivalent", "inconclusive"]
    assert table.primary.tolist() == [True, False, False] and "P(latent > other) [95% CI]" in table
    assert table.iloc[0]["diff"].difference.confidence == pytest.approx(1 - results.FAMILY_ALPHA / 3)  # Holm, rank 0 of 3
    swapped = results.comparison_table(scores, [("f", "weights", "latent")], margins, primary=("latent", "weights"), n_boot=500)
    assert swapped.verdict.tolist() == ["worse"] and not swapped.primary.any()
    records = results.comparison_records(table)
    assert len(records) == 3 and "diff" not in records[0] and json.dumps(records)
    row = results.comparison_row(table, "f", "latent", "weights", column="latent")
    assert results.comparison_row(table, "f", "weights", "latent", column="latent") is None
    sentence = results.verdict_sentence(row, title="fine-tuning", context="both exact", unit="gain", family_size=3, n_seeds=12,
                                        budget_steps=5000, heads=results.verdict_heads("the latent GA", "the weight-space GA"))
    assert sentence.startswith("Fine-tuning, primary comparison (both exact), the latent GA beat the weight-space GA: ")
    assert f"differs by {row['diff'].difference.point:+.0f}" in sentence and "over 12 seeds at 5,000 env steps." in sentence
    assert results.primary_row(row)["difference"]["point"] == row["diff"].difference.point
    counts = results.verdict_counts_sentence(table)
    assert "over 3 comparisons, 1 favour the latent genome, 0 its comparator, 1 are equivalent" in counts


def test_champion_records_are_one_shape_for_every_kind_of_run():
    from types import SimpleNamespace

    from nnae_utils.evolution import EvolutionConfig

    row = SimpleNamespace(run_id="ga-s0", final_return=np.float64(12.5), final_return_std=1.5, start="finetune",
                          replicate=np.int64(2), start_network="run01_step1", start_return=np.float64(10.0),
                          gain=np.float64(2.5), env_steps=np.int64(900), generations=3, report_env_steps=40)
    cfg = EvolutionConfig(seed=11, sigma=0.2)
    rec = results.champion_record(row, stage="04_latent_evolution", method="ga", encoding="weights", config=cfg,
                                  episode_returns=[12.0004, 13.0], eval_seeds=[5, 6], budget_steps=1000,
                                  max_episode_steps=1000, run_dir="runs/x", code_revision="abc", sigma=cfg.sigma)
    assert (rec["id"], rec["return_mean"], rec["episodes"], rec["episode_returns"]) == ("ga-s0", 12.5, 2, [12.0, 13.0])
    prov = rec["provenance"]
    assert (prov["seed"], prov["replicate"], prov["gain"], prov["sigma"], prov["config"]["sigma"]) == (11, 2, 2.5, 0.2, 0.2)
    assert prov["max_episode_steps"] == 1000 and prov["env_steps"] == 900 and prov["stage"] == "04_latent_evolution"
    scratch = SimpleNamespace(**{**vars(row), "start": "scratch", "start_return": np.nan, "gain": np.nan})
    prov = results.champion_record(scratch, stage="s", method="td3", encoding=None, config=cfg, episode_returns=[1.0],
                                   eval_seeds=[5], budget_steps=1, max_episode_steps=1, run_dir="r", code_revision=None)["provenance"]
    assert prov["start_return"] is None and prov["gain"] is None and prov["encoding"] is None
    json.dumps(rec)  # every field is plain JSON


def test_the_summary_block_is_nested_by_start_and_label_and_reads_back_in_both_forms():
    final = {("finetune", "ga/weights"): [1.0, 2.0, 3.0], ("scratch", "ga/weights"): [4.0, 5.0, 6.0]}
    table = results.final_scores(final, n_boot=50)
    reach = pd.DataFrame([{"start": "finetune", "label": "ga/weights", "gain >= 10%": stats.Reach(200.0, 2, 3)},
                          {"start": "scratch", "label": "ga/weights", "gain >= 10%": np.nan}]).set_index(["start", "label"])
    block = results.label_summary(table, reach, extra={("scratch", "ga/weights"): {"mean_env_steps": 9.0}})
    assert set(block) == {"finetune", "scratch"} and block["finetune"]["ga/weights"]["steps_to gain >= 10%"]["median"] == 200.0
    assert "steps_to gain >= 10%" not in block["scratch"]["ga/weights"] and block["scratch"]["ga/weights"]["mean_env_steps"] == 9.0
    legacy = {f"{s}|{label}": entry for s, by_label in block.items() for label, entry in by_label.items()}
    assert list(results.iter_results(block)) == list(results.iter_results(legacy))
    new, old = published.results_table({"results": block}), published.results_table({"results": legacy})
    pd.testing.assert_frame_equal(new, old)
    assert list(new.index) == [("finetune", "ga/weights"), ("scratch", "ga/weights")]
    assert results.nest({("a", "x"): 1.0, ("b", "x"): 2.0}, lambda v: v * 2) == {"a": {"x": 2.0}, "b": {"x": 4.0}}


def test_choose_critics_loads_a_zoo_critic_only_with_the_learners_widths(tmp_path):
    data_dir, run_root = tmp_path / "run" / "01_data", tmp_path / "run"
    data_dir.mkdir(parents=True)
    (data_dir / "stage.json").write_text(json.dumps({"params": {"training_dir": str(tmp_path / "training"),
                                                                "critic_hidden": [16, 16]}}))
    torch.manual_seed(0)
    path = save_critic(tmp_path / "training" / "abc" / "seed_1" / "critic.safetensors", TwinCritic(3, 2, (16, 16)), {"step": "70"})
    records = [{"id": "run01", "provenance": {"run": 1, "settings": "abc", "step": 50}},
               {"id": "run02", "provenance": {"run": 2, "settings": "abc", "step": 60}}]
    choice = critics.choose_critics(records, data_dir, run_root)
    assert choice.hidden == [16, 16] and choice.paths == [path, None] and choice.n_loaded == 1
    assert choice.table().loc["run01", "critic step"] == 70 and choice.table().loc["run02", "critic"].startswith("no critic file")
    narrow = critics.choose_critics(records, data_dir, run_root, hidden=[8])
    assert narrow.paths == [None, None] and narrow.rows[0]["critic"] == "critic is [16, 16], learners use [8]: fresh critic"
    off = critics.choose_critics(records, data_dir, run_root, enabled=False)
    assert off.paths == [None, None] and {r["critic"] for r in off.rows} == {"zoo_critics is off"}


def test_best_label_reads_either_summary_form_and_skips_ineligible_labels():
    block = {"finetune": {"ga/weights": {"iqm": {"point": 5.0}}, "ga/weights@latent:all": {"iqm": {"point": 50.0}},
                          "ga/latent:all": {"iqm": {"point": 7.0}}},
             "scratch": {"ga/weights": {"iqm": {"point": 99.0}}}}
    legacy = {f"{s}|{label}": e for s, by_label in block.items() for label, e in by_label.items()}
    eligible = lambda label: "@" not in label  # noqa: E731
    assert results.best_label(block, "finetune", eligible) == results.best_label(legacy, "finetune", eligible) == ("ga/latent:all", 7.0)
    assert results.best_label(block, "finetune") == ("ga/weights@latent:all", 50.0)
    assert results.best_label(block, "finetune_train") is None


def test_zoo_cost_and_calibration_states():
    from nnae_utils.states import StateDataset

    cost = results.zoo_cost({}, {"all_training_wall_seconds": 360.0}, pd.DataFrame({"run": [0, 1, 1], "step": [7, 3, 9]}))
    assert cost["env_steps"] == 16 and np.isnan(cost["td3_core_hours"]) and cost["autoencoder_core_hours"] == pytest.approx(0.1)
    d = StateDataset(np.arange(20.0).reshape(10, 2), np.zeros(10, bool), np.zeros(10, int))
    a, b = d.sample(4, seed=3), d.sample(4, seed=3)
    assert a.shape == (4, 2) and np.array_equal(a, b) and np.all(np.diff(a[:, 0]) > 0)  # reproducible, in dataset order
    assert not np.array_equal(a, d.sample(4, seed=4)) and len(d.sample(99, seed=0)) == 10


def test_score_at_budget_scores_the_champion_known_at_the_budget():
    runs = pd.DataFrame({"run_id": ["a", "b"], "env_steps": [130, 90]})
    curves = pd.DataFrame({"run_id": ["a", "a", "a", "b", "b"], "env_steps": [0, 100, 130, 0, 90],
                           "champion_return": [1.0, 2.0, 3.0, 4.0, 5.0]})
    scored = results.score_at_budget(runs, curves, 100)
    assert scored.return_at_budget.tolist() == [2.0, 5.0] and scored.steps_at_budget.tolist() == [100, 90]
    assert scored.overrun_steps.tolist() == [30, -10] and "overrun_steps" not in runs  # the input is left alone


def test_beside_says_what_is_shown_and_notes_a_run_that_predates_exact_starts(tmp_path):
    assert published.beside("", "04_latent_evolution", root=tmp_path) == (
        "This chapter shows no other profile's run (`shown_beside` is empty).", None)
    sentence, stage = published.beside("long", "04_latent_evolution", root=tmp_path, predates="Old run.")
    assert stage is None and sentence.startswith("No run of the `long` profile") and "Old run." not in sentence
    folder = tmp_path / "long" / "04_latent_evolution"
    folder.mkdir(parents=True)
    (folder / published.META_FILE).write_text("{}")
    for summary, noted in [({"n_seeds": 3, "verdicts": {"finetune": "V."}}, True), ({"n_seeds": 3, "primary": {}}, False)]:
        (folder / "summary.json").write_text(json.dumps(summary))
        sentence, stage = published.beside("long", "04_latent_evolution", root=tmp_path, predates="Old run.")
        assert stage is not None and sentence.endswith(" Old run.") == noted


def test_random_policy_table_summary_and_sentence():
    returns = {"weights": [5.0, 10.0, 20.0, 15.0], "latent:all": [100.0, 400.0, 250.0, 300.0]}
    table = results.random_policy_table(returns, bar=200.0, n_boot=200, seed=0)
    assert table.genome.tolist() == ["weights", "latent:all"]
    row = table.set_index("genome").loc["latent:all"]
    assert row["median"] == 275.0 and row["above_bar"] == 0.75 and row["best"] == 400.0
    assert row["iqm"] == stats.interval(returns["latent:all"], "iqm", n_boot=200, seed=0)
    block = results.random_policy_summary(table, bar=200.0, episodes=3, env_steps=1234, seconds=2.04)
    assert block["genomes"]["weights"]["above_bar"] == 0.0 and block["env_steps"] == 1234
    json.dumps(block)  # plain values only
    sentence = results.random_policy_sentence(table, 200.0)
    assert "share above 200" in sentence and f"{row['iqm_point'] - table.iqm_point[0]:+.0f} over random weights" in sentence


def test_the_results_module_examples_hold():
    import doctest

    assert doctest.testmod(results, optionflags=doctest.ELLIPSIS).failed == 0


def test_stage4_family_pairs_each_latent_genome_with_its_controls_and_ablation():
    labels_of = {"finetune": ["ga/weights", "ga/latent:all", "ga/pca:all", "ga/random:all", "ga/latent:all~decoded",
                              "ga/weights@latent:all", "ga/pca:all~decoded"],
                 "scratch": ["ga/weights", "ga/latent:all", "ga/dct:all"]}
    pairs = results.latent_comparison_pairs(labels_of)
    assert [p for p in pairs if p[0] == "finetune" and p[1] == "ga/latent:all"] == [
        ("finetune", "ga/latent:all", "ga/weights"), ("finetune", "ga/latent:all", "ga/pca:all"),
        ("finetune", "ga/latent:all", "ga/random:all"), ("finetune", "ga/latent:all", "ga/latent:all~decoded")]
    assert [p[2] for p in pairs if p[1] == "ga/latent:all~decoded"] == ["ga/weights", "ga/weights@latent:all",
                                                                         "ga/pca:all~decoded"]
    assert [p[2] for p in pairs if p[0] == "scratch"] == ["ga/weights", "ga/dct:all"]  # no ablation from scratch


def test_the_primary_comparison_is_read_from_the_family_in_one_place():
    y = np.arange(8.0)
    scores = {("finetune", "a"): y + 40, ("finetune", "b"): y, ("finetune", "c"): y + 1}
    table = results.comparison_table(scores, [("finetune", "a", "b"), ("finetune", "c", "b")], {"finetune": 5.0},
                                     primary=("a", "b"), n_boot=200)
    block = results.primary_summary(table, ["finetune", "scratch"], ("a", "b"), ("a", "b"), {"finetune": 5.0})
    row = table.iloc[0]
    assert block["family_size"] == 2 and list(block["rows"]) == ["finetune"]  # not measured from scratch
    assert block["rows"]["finetune"]["difference"] == results.interval_dict(row["diff"].difference)
    verdicts = results.primary_verdicts(table, ["finetune", "scratch"], ("a", "b"), heads=results.verdict_heads("A", "B"),
                                        context={"finetune": "exact", "scratch": "-"},
                                        titles={"finetune": "fine-tuning", "scratch": "from scratch"},
                                        missing="no runs", n_seeds=8, budget_steps=100)
    assert verdicts["finetune"].startswith("Fine-tuning, primary comparison (exact), A beat B")
    assert verdicts["scratch"] == "From scratch: not measured (no runs)."
    drawn = results.paired_comparison(scores, table, ["finetune"], ("a", "b")).iloc[0]
    assert (drawn.low, drawn.high, drawn.verdict) == (row["diff"].difference.low, row["diff"].difference.high, "better")
    assert list(drawn.first_scores - drawn.other_scores) == [40.0] * 8  # paired by replicate
