"""Zoo assembly from fake TD3 runs: selection, fresh-seed admission, splits, loading; state dataset."""
import json

import numpy as np
import pandas as pd
import pytest

from nnae_utils import zoo
from nnae_utils.policies import Network, NetworkSpec, save_network
from nnae_utils.seeds import eval_seeds
from nnae_utils.states import collect_states, product_of_marginals

SPEC = NetworkSpec(11, 3, (8, 8))


def fake_run(root, run, returns, step=500):
    d = root / f"seed_{run}"
    (d / "snapshots").mkdir(parents=True)
    rows = []
    for k, r in enumerate(returns):
        s = (k + 1) * step
        save_network(d / "snapshots" / f"step_{s:07d}.safetensors", Network.random(SPEC, seed=100 * run + k))
        rows.append({"step": s, "return_mean": r})
    pd.DataFrame(rows).to_csv(d / "curve.csv", index=False)
    return d


def test_select_candidates_threshold_min_step_and_spread(tmp_path):
    d = fake_run(tmp_path, 0, [5, 50, 60, 70, 80, 90, 100])
    picked = zoo.select_candidates([d], threshold=40, min_step=1000, max_per_run=3)
    assert [c.step for c in picked] == [1000, 2000, 3500]  # evenly spread over the qualifying six
    assert all(c.selection_return >= 40 for c in picked)
    assert picked[0].id == "run00_step0001000"


def test_build_zoo_scores_on_fresh_seeds_and_splits_by_run(tmp_path):
    runs = [fake_run(tmp_path / "runs", r, [1.0, 2.0]) for r in range(4)]
    cands = zoo.select_candidates(runs, threshold=-1e9)
    records = zoo.build_zoo(cands, tmp_path / "zoo", threshold=-1e9, episodes=2, provenance={"source": "test"}, progress=False)
    assert len(records) == 8
    rec = records[0]
    assert rec["eval_seeds"] == eval_seeds("zoo_report", 2).tolist()
    assert set(rec["eval_seeds"]).isdisjoint(rec["provenance"]["admission_seeds"])
    split = zoo.split_zoo(records, by="run", validation=1, test=1, seed=0)
    zoo.write_splits(tmp_path / "zoo", split, records)
    loaded = zoo.load_zoo(tmp_path / "zoo")
    frame = loaded.frame()
    assert frame.groupby("run")["split"].nunique().max() == 1  # no run straddles two splits
    assert sorted(frame.groupby("split")["run"].nunique().to_dict().items()) == [("test", 1), ("train", 2), ("validation", 1)]
    test_only = zoo.load_zoo(tmp_path / "zoo", split="test")
    assert len(test_only.networks) == 2 and set(test_only.frame()["split"]) == {"test"}


def test_admission_threshold_filters(tmp_path):
    runs = [fake_run(tmp_path / "runs", 0, [1.0, 2.0])]
    cands = zoo.select_candidates(runs, threshold=-1e9)
    assert zoo.build_zoo(cands, tmp_path / "zoo", threshold=1e9, episodes=1, provenance={}, progress=False) == []


def test_split_errors_and_network_split():
    records = [{"id": f"r{r}_{k}", "provenance": {"run": r}} for r in range(2) for k in range(5)]
    with pytest.raises(ValueError, match="at least 3 runs"):
        zoo.split_zoo(records, by="run", validation=1, test=1)
    with pytest.raises(ValueError, match="too few networks"):
        zoo.split_zoo(records, by="network", validation=1, test=1)  # 1 of 2 runs each: nothing left to train
    records = [{"id": f"r{r}_{k}", "provenance": {"run": r}} for r in range(5) for k in range(2)]
    s = zoo.split_zoo(records, by="network", validation=1, test=1, seed=1)
    assert {k: len(v) for k, v in s["splits"].items()} == {"test": 2, "validation": 2, "train": 6}
    assert sorted(sum(s["splits"].values(), [])) == sorted(r["id"] for r in records)


def test_copy_zoo_rejects_a_corrupt_network(tmp_path):
    runs = [fake_run(tmp_path / "runs", r, [1.0]) for r in range(3)]
    records = zoo.build_zoo(zoo.select_candidates(runs, threshold=-1e9), tmp_path / "zoo", threshold=-1e9,
                            episodes=1, provenance={}, progress=False)
    zoo.write_splits(tmp_path / "zoo", zoo.split_zoo(records, validation=1, test=1), records)
    victim = tmp_path / "zoo" / f"{records[0]['id']}.safetensors"
    victim.write_bytes(victim.read_bytes()[:100])
    with pytest.raises(Exception, match="cannot read network file"):
        zoo.copy_zoo(tmp_path / "zoo", tmp_path / "copy")
    assert not (tmp_path / "copy").exists()


def test_state_dataset_mixes_visited_and_random_states(tmp_path):
    nets = [Network.random(SPEC, seed=s) for s in range(3)]
    with pytest.warns(UserWarning, match="visited only"):  # random networks fall within a few dozen steps
        ds = collect_states(nets, episodes=1, n_states=2000, random_fraction=0.25, seed=0, progress=False)
    n_visited = int((~ds.is_random).sum())
    assert 0 < len(ds) < 2000 and ds.is_random.sum() == round(n_visited * 0.25 / 0.75)  # the share is kept
    ds = collect_states(nets, episodes=3, n_states=40, random_fraction=0.25, seed=0, progress=False)
    assert len(ds) == 40 and ds.is_random.sum() == 10
    assert (ds.owner[ds.is_random] == -1).all() and (ds.owner[~ds.is_random] >= 0).all()
    back = type(ds).load(ds.save(tmp_path / "s.npz"))
    np.testing.assert_array_equal(back.states, ds.states)
    again = collect_states(nets, episodes=3, n_states=40, random_fraction=0.25, seed=0, progress=False)
    np.testing.assert_array_equal(again.states, ds.states)


def test_product_of_marginals_breaks_correlation():
    rng = np.random.default_rng(0)
    x = rng.normal(size=5000)
    visited = np.stack([x, x], axis=1)  # perfectly correlated
    r = product_of_marginals(visited, 5000, rng)
    assert abs(np.corrcoef(r.T)[0, 1]) < 0.05
    for j in range(2):  # every random coordinate is a value that coordinate took in a visited state
        assert np.isin(r[:, j], visited[:, j]).all()


def test_ship_zoo_writes_a_loadable_zoo_with_its_provenance_and_refuses_what_it_cannot_vouch_for(tmp_path):
    import json

    from nnae_utils.critics import find_zoo_critic

    training = tmp_path / "training"
    runs = [fake_run(training / "abc123", r, [1.0, 2.0]) for r in range(3)]
    for r, d in enumerate(runs):
        (d / "provenance.json").write_text(json.dumps({"step": 1000, "finished": True, "core_seconds": 3600.0,
                                                       "sessions": [{}, {}], "buffer_refilled_at_steps": [500]}))
    (runs[2] / "critic.safetensors").write_bytes(b"stands in for the run's final critic")
    stage = tmp_path / "runs" / "zoo" / "01_data"
    cands = zoo.select_candidates(runs, threshold=-1e9)
    records = zoo.build_zoo(cands, stage / "zoo", threshold=-1e9, episodes=1, progress=False,
                            provenance={"source": "td3", "settings": "abc123"})
    zoo.write_splits(stage / "zoo", zoo.split_zoo(records, by="run", validation=1, test=1, seed=0), records)
    pd.DataFrame({"run": [0], "step": [500], "return_mean": [1.0]}).to_csv(stage / "training_curves.csv", index=False)
    (stage / "summary.json").write_text(json.dumps({"n_networks": len(records), "students": {"distill_cpu_s": 1800.0}}))
    params = {"zoo_source": "train", "training_dir": str(training), "critic_hidden": [32, 32]}
    (stage / "stage.json").write_text(json.dumps({"key": "k", "params": params}))

    shipped = zoo.ship_zoo(stage, tmp_path / "shipped", command="python -m nnae_utils.pipeline --profile zoo --only data")
    loaded = zoo.load_zoo(shipped)
    assert len(loaded.records) == 6 and not (tmp_path / "shipped.partial").exists()
    assert all(r["provenance"]["training_dir"] == str(training) for r in loaded.records)
    prov = json.loads((shipped / zoo.SHIPPED_PROVENANCE).read_text())
    assert prov["command"].endswith("--profile zoo --only data") and prov["params"] == params
    assert prov["training_core_hours"] == 3.0 and sorted(prov["runs"]) == ["0", "1", "2"]
    assert prov["distill_core_hours"] == 0.5 and prov["core_hours"] == 3.5
    assert prov["runs"]["2"]["critic"] and not prov["runs"]["0"]["critic"]
    assert prov["runs"]["0"]["buffer_refilled_at_steps"] == [500] and prov["runs"]["0"]["sessions"] == 2
    assert len(zoo.read_shipped_curves(shipped)) == 1
    # a profile that loads it (zoo_source) finds each run's critic from the records alone
    copied = zoo.load_zoo(zoo.copy_zoo(shipped, tmp_path / "other_run" / "zoo"))
    rec = next(r for r in copied.records if r["provenance"]["run"] == 2)
    assert find_zoo_critic(rec, [rec["provenance"]["training_dir"]]) == runs[2] / "critic.safetensors"

    with pytest.raises(FileExistsError):
        zoo.ship_zoo(stage, shipped, command="x")
    (stage / "stage.json").write_text(json.dumps({"key": "k", "params": {**params, "training_dir": ""}}))
    with pytest.raises(ValueError, match="committed"):
        zoo.ship_zoo(stage, tmp_path / "elsewhere", command="x")


def test_students_top_runs_up_from_their_own_teachers_and_join_the_zoo(tmp_path):
    from nnae_utils.distill import DistillConfig, distill_many

    runs = [fake_run(tmp_path / "runs", r, [1.0, 2.0][: 2 - (r == 1)]) for r in range(2)]
    zoo_dir = tmp_path / "zoo"
    records = zoo.build_zoo(zoo.select_candidates(runs, threshold=-1e9), zoo_dir, threshold=-1e9, episodes=1,
                            provenance={"source": "test"}, progress=False)
    cfg = DistillConfig(rounds=1, episodes_per_round=1, epochs_per_round=1, max_steps=20)
    jobs, cands = zoo.plan_students(records, fill_to=4, config=cfg, zoo_dir=zoo_dir, work_dir=tmp_path / "students")
    # run 0 has two teachers (two students, one each), run 1 one teacher (three students of it)
    assert [(c.run, c.teacher) for c in cands] == [
        (0, "run00_step0000500"), (0, "run00_step0001000"), (1, "run01_step0000500"), (1, "run01_step0000500"), (1, "run01_step0000500")]
    assert [j.config.seed for j in jobs] == [0, 1, 1000, 1001, 1002]
    assert len({c.id for c in cands}) == 5
    weak = zoo.plan_students(records, fill_to=4, config=cfg, zoo_dir=zoo_dir, work_dir=tmp_path, teacher_min_return=1e9)
    assert weak == ([], [])  # no run has a teacher strong enough: no students at all
    distill_many(jobs, workers=1, progress=False)
    records = zoo.build_zoo(cands, zoo_dir, threshold=-1e9, episodes=1, provenance={"source": "test"},
                            progress=False, append=True)
    assert len(records) == 8
    again, _ = zoo.plan_students(records, fill_to=5, config=cfg, zoo_dir=zoo_dir, work_dir=tmp_path, first={0: 2, 1: 3})
    assert [j.config.seed for j in again] == [2, 1003]  # one more each, numbered after the first wave
    student = next(r for r in records if r["provenance"]["kind"] == "dagger_student")
    assert student["provenance"]["teacher"] == "run00_step0000500" and student["provenance"]["distill"]["seed"] == 0
    assert "selection_return" not in student["provenance"]
    split = zoo.split_zoo(records, by="network", validation=0, test=1, seed=0)
    zoo.write_splits(zoo_dir, split, records)
    assert zoo.load_zoo(zoo_dir).frame()["kind"].value_counts().to_dict() == {"dagger_student": 5, "td3_snapshot": 3}


def test_top_up_retries_runs_left_short(tmp_path):
    from nnae_utils.distill import DistillConfig

    runs = [fake_run(tmp_path / "runs", 0, [1.0])]
    zoo_dir = tmp_path / "zoo"
    records = zoo.build_zoo(zoo.select_candidates(runs, threshold=-1e9), zoo_dir, threshold=-1e9, episodes=1,
                            provenance={}, progress=False)
    cfg = DistillConfig(rounds=1, episodes_per_round=1, epochs_per_round=1, max_steps=20)
    common = dict(fill_to=3, config=cfg, zoo_dir=zoo_dir, work_dir=tmp_path / "s", teacher_min_return=-1e9,
                  episodes=1, provenance={}, workers=1, progress=False)
    # a bar no student passes: every wave distills the whole shortfall again, under new numbers
    records, report = zoo.top_up_with_students(records, threshold=1e9, waves=2, **common)
    assert len(records) == 1 and len(list((tmp_path / "s").glob("*.safetensors"))) == 4
    assert report["students_distilled"] == 4 and report["students_admitted"] == 0 and report["distill_cpu_s"] > 0
    records, report = zoo.top_up_with_students(records, threshold=-1e9, waves=2, **common)
    assert report["students_distilled"] == 2 and report["students_admitted"] == 2
    assert sorted(r["id"] for r in records) == ["run00_step0000500", "run00_step0000500_student000",
                                                 "run00_step0000500_student001"]


def test_a_member_must_reach_the_threshold_on_the_report_seeds_too(tmp_path):
    from nnae_utils.policies import load_network
    from nnae_utils.rollouts import evaluate

    runs = [fake_run(tmp_path / "runs", 0, [1.0] * 6)]
    cands = zoo.select_candidates(runs, threshold=-1e9)
    nets = [load_network(c.path) for c in cands]
    admission = evaluate(nets, eval_seeds("zoo_admission", 2), max_steps=zoo.EPISODE_CAP).returns.mean(axis=1)
    report = evaluate(nets, eval_seeds("zoo_report", 2), max_steps=zoo.EPISODE_CAP).returns.mean(axis=1)
    i = int(np.argmax(admission - report))
    assert admission[i] > report[i]  # a network that does worse on the report seeds
    threshold = (admission[i] + report[i]) / 2
    records = zoo.build_zoo(cands, tmp_path / "zoo", threshold=threshold, episodes=2, provenance={}, progress=False)
    kept = {r["id"] for r in records}
    assert cands[i].id not in kept and all(r["return_mean"] >= threshold for r in records)
    assert kept == {c.id for c, a, r in zip(cands, admission, report) if a >= threshold and r >= threshold}
    assert sorted(p.stem for p in (tmp_path / "zoo").glob("*.safetensors")) == sorted(kept)  # no file left behind


def test_holdout_snapshots_take_every_kth_train_snapshot_by_step_and_subset_keeps_zoo_order(tmp_path):
    runs = [fake_run(tmp_path / "runs", r, [1.0] * 6) for r in range(3)]
    records = zoo.build_zoo(zoo.select_candidates(runs, threshold=-1e9), tmp_path / "zoo", threshold=-1e9, episodes=1,
                            provenance={}, progress=False)
    zoo.write_splits(tmp_path / "zoo", {"by": "run", "seed": 0,
                                        "splits": {"train": [r["id"] for r in records if not r["id"].startswith("run02")],
                                                   "validation": [], "test": [r["id"] for r in records if r["id"].startswith("run02")]}},
                     records)
    z = zoo.load_zoo(tmp_path / "zoo")
    held = z.holdout_snapshots(3)  # steps 500..3000: positions 1 and 4 of each train run
    assert held == ["run00_step0001000", "run00_step0002500", "run01_step0001000", "run01_step0002500"]
    sub = z.subset(list(reversed(held)), "finetune_train")
    assert [r["id"] for r in sub.records] == held and sub.splits == {"finetune_train": held}
    assert all(a is b for a, b in zip(sub.networks, [z.networks[z.ids().index(i)] for i in held]))
    test = z.select("test")
    assert test.ids() == test.ids("test") == z.ids("test") and len(test.networks) == len(z.ids("test")) > 0
    with pytest.raises(ValueError, match=">= 2"):
        z.holdout_snapshots(1)
    with pytest.raises(KeyError, match="no networks"):
        z.subset(["nope"], "x")


def test_replicate_starts_cycle_through_one_seeded_permutation():
    starts = zoo.replicate_starts(4, 10, seed=3)
    assert sorted(starts[:4]) == [0, 1, 2, 3] and starts[4:8] == starts[:4] and starts == zoo.replicate_starts(4, 10, seed=3)
    assert starts != zoo.replicate_starts(4, 10, seed=4)
    with pytest.raises(ValueError):
        zoo.replicate_starts(0, 3, seed=0)


def test_shared_init_runs_stay_out_of_the_three_splits_and_folds_draw_distinct_subsets():
    records = [{"id": f"r{r}_{k}", "provenance": {"run": r}} for r in range(6) for k in range(2)]
    records += [{"id": f"s{r}_{k}", "provenance": {"run": r, "actor_init_seed": 9}} for r in range(60, 63) for k in range(2)]
    split = zoo.split_zoo(records, by="run", validation=1, test=1, seed=0)
    in_splits = {i for ids in split["splits"].values() for i in ids}
    assert in_splits == {r["id"] for r in records[:12]}
    assert split["shared_init"]["runs"] == [60, 61, 62]
    folds = zoo.run_folds(split["runs"]["train"], sizes=[1, 2, 4, 8], per_size=3, seed=1)
    by_k = {}
    for f in folds:
        by_k.setdefault(f["k"], set()).add(tuple(f["runs"]))
        assert set(f["runs"]) <= set(split["runs"]["train"])
    assert {k: len(v) for k, v in by_k.items()} == {1: 3, 2: 3, 4: 1}  # 4 train runs: one subset of 4, none of 8


def test_a_shared_initialisation_starts_runs_from_one_actor_and_a_compacted_run_is_not_retrained(tmp_path):
    from safetensors.numpy import load_file

    from nnae_utils.td3 import TD3Config, train_td3

    cfgs = [TD3Config(seed=s, total_steps=400, learning_starts=200, eval_every=200, eval_episodes=1, eval_max_steps=30,
                      checkpoint_every=200, actor_hidden=(8, 8), critic_hidden=(16,), actor_init_seed=5) for s in (1, 2)]
    for c in cfgs:
        train_td3(c, tmp_path / f"seed_{c.seed}", progress=False)
    first = [load_file(tmp_path / f"seed_{s}" / "snapshots" / "step_0000000.safetensors") for s in (1, 2)]
    last = [load_file(tmp_path / f"seed_{s}" / "snapshots" / "step_0000400.safetensors") for s in (1, 2)]
    assert all(np.array_equal(first[0][k], first[1][k]) for k in first[0])
    assert not all(np.array_equal(last[0][k], last[1][k]) for k in last[0])  # every other draw is the run's own
    unshared = TD3Config(**{**cfgs[0].to_dict(), "actor_init_seed": -1})
    assert zoo.settings_digest(unshared) != zoo.settings_digest(cfgs[0])
    curve_before = (tmp_path / "seed_1" / "curve.csv").read_text()
    assert zoo.compact_finished_run(tmp_path / "seed_1", keep_steps=[200]) == {"removed": 3, "kept_snapshots": 2}  # step 400, checkpoint, buffer
    again = train_td3(cfgs[0], tmp_path / "seed_1", progress=False)
    assert again.finished and again.step == 400 and (tmp_path / "seed_1" / "curve.csv").read_text() == curve_before
    assert not (tmp_path / "seed_1" / "checkpoint.pt").exists()
    with pytest.raises(ValueError, match="cannot be extended"):
        train_td3(TD3Config(**{**cfgs[0].to_dict(), "total_steps": 800}), tmp_path / "seed_1", progress=False)
    cands = zoo.select_candidates([tmp_path / "seed_1"], threshold=-1e9, min_step=200)
    assert cands[0].provenance()["learner"] == "td3 critic 16" and cands[0].provenance()["actor_init_seed"] == 5


def test_the_growth_plan_reads_and_names_its_learners():
    plan = zoo.GrowthPlan.read("zoo/growth.yaml")
    bench = plan.group("c128")
    configs = plan.configs(bench)
    assert [c.seed for c in configs] == list(bench.seeds) and configs[0].critic_hidden == (128, 128)
    assert configs[0].total_steps == plan.step_cap
    with pytest.raises(ValueError, match="none is chosen"):
        plan.group("grow")
    shared = plan.configs(plan.group("shared_init", chosen_critic=[128, 128]))
    assert len({c.actor_init_seed for c in shared}) == 1 and shared[0].actor_init_seed >= 0
    every_seed = [s for name in plan.groups for s in plan.group(name, chosen_critic=[64, 64]).seeds]
    assert len(every_seed) == len(set(every_seed)) and not set(every_seed) & {0, 1, 2, 3}  # the shipped runs' seeds


def test_growing_a_shipped_zoo_admits_finished_runs_only_and_keeps_its_members(tmp_path):
    from nnae_utils.td3 import train_td3

    base_runs = [fake_run(tmp_path / "old", r, [1.0, 2.0]) for r in range(3)]
    records = zoo.build_zoo(zoo.select_candidates(base_runs, threshold=-1e9), tmp_path / "zoo", threshold=-1e9,
                            episodes=1, provenance={"settings": "old"}, progress=False)
    zoo.write_splits(tmp_path / "zoo", zoo.split_zoo(records, by="run", validation=1, test=1), records)
    (tmp_path / "zoo" / "provenance.json").write_text(json.dumps({"command": "old"}))
    plan = zoo.GrowthPlan(training_dir=tmp_path / "training", bar=-1e9, min_snapshot_step=200, candidates=2,
                          step_cap=1000, td3=dict(learning_starts=200, eval_every=200, eval_episodes=1, eval_max_steps=30,
                                                  checkpoint_every=200, actor_hidden=(8, 8), buffer_size=2000),
                          groups={"tiny": {"critic_hidden": [16], "seeds": [10, 11, 12]}})
    configs = plan.configs(plan.group("tiny"))
    dirs = [zoo.run_folder(plan.training_dir, zoo.settings_digest(c), c.seed) for c in configs]
    for c, d in zip(configs[:2], dirs[:2]):
        train_td3(c, d, progress=False, done_when=plan.done_when)  # seed 12 is never trained: "not finished"
    before = json.loads((tmp_path / "zoo" / "splits.json").read_text())["runs"]
    splits = zoo.grow_shipped_zoo(tmp_path / "zoo", {"tiny": dirs}, plan=plan, command="test", episodes=1,
                                  fold_sizes=(1, 2), progress=False)
    grown = zoo.load_zoo(tmp_path / "zoo")
    runs = sorted({int(r["provenance"]["run"]) for r in grown.records})
    assert runs == [0, 1, 2, 10, 11]
    old = {r["id"]: r for r in records}
    assert all(r["return_mean"] == old[r["id"]]["return_mean"] for r in grown.records if r["id"] in old)
    assert sum(len(v) for v in splits["runs"].values()) == 5 and len(splits["runs"]["test"]) == 1
    assert all(set(before[s]) <= set(splits["runs"][s]) for s in zoo.SPLITS)  # the first runs keep their splits
    assert {f["k"] for f in splits["folds"]} == {1, 2}
    prov = json.loads((tmp_path / "zoo" / "provenance.json").read_text())
    assert prov["command"] == "old" and prov["growth"]["skipped"] == {"12": "not finished"}
    assert prov["growth"]["runs"]["10"]["kept"] == 2 and prov["growth"]["runs"]["10"]["config"]["critic_hidden"] == [16]
    new = [r for r in grown.records if r["provenance"]["run"] == 10]
    assert new[0]["provenance"]["learner"] == "td3 critic 16" and new[0]["provenance"]["group"] == "tiny"
    assert not (tmp_path / "zoo.partial").exists()


def test_sample_indices_runs_first_then_snapshots_evenly_and_seeded():
    from nnae_utils.zoo import sample_indices

    runs = [r for r in range(10) for _ in range(8)] + [10] * 36        # ten 8-snapshot runs and one of 36
    steps = [s for _ in range(10) for s in range(8)] + list(range(36))
    assert sample_indices(runs, steps, 0) == list(range(len(runs)))     # 0: every network
    assert sample_indices(runs, steps, 500) == list(range(len(runs)))   # the cap does not bind
    picked = sample_indices(runs, steps, 22, seed=3)
    per_run = np.bincount(np.asarray(runs)[picked], minlength=11)
    assert len(picked) == 22 and per_run.tolist() == [2] * 11          # runs weigh the same, not their sizes
    assert [steps[i] for i in picked if runs[i] == 10] == [0, 35]       # spread over the run's steps
    few = sample_indices(runs, steps, 8, per_run=2, seed=3)
    assert len(few) == 8 and len({runs[i] for i in few}) == 4          # four runs drawn, two snapshots each
    assert few == sample_indices(runs, steps, 8, per_run=2, seed=3)     # deterministic
    assert few != sample_indices(runs, steps, 8, per_run=2, seed=4)     # and seeded
    one_run = sample_indices([0] * 36, list(range(36)), 16)
    assert one_run == np.unique(np.linspace(0, 35, 16).round().astype(int)).tolist()   # = decoded.spread_subset
    with pytest.raises(ValueError):
        sample_indices(runs, steps, -1)


# --------------------------------------------------------------------------- sticky splits of a growing zoo


def run_records(runs, per_run=2, actor_init_seed=-1):
    """Index records of ``per_run`` networks for each of ``runs`` (no files: the split functions read records only)."""
    extra = {"actor_init_seed": actor_init_seed} if actor_init_seed >= 0 else {}
    return [{"id": f"run{r:02d}_step{k:07d}", "provenance": {"run": r, **extra}} for r in runs for k in range(per_run)]


def within_one_run_of_shares(runs_per_split):
    n = sum(len(runs_per_split[s]) for s in zoo.SPLITS)
    total = sum(zoo.SPLIT_WEIGHTS.values())
    return all(abs(len(runs_per_split[s]) - n * zoo.SPLIT_WEIGHTS[s] / total) <= 1 for s in zoo.SPLITS)


FIRST = {1: "train", 3: "train", 0: "validation", 2: "test"}  # the shipped zoo's four runs, as split_zoo split them


def test_assigned_runs_keep_their_split_whatever_comes_after():
    rng = np.random.default_rng(0)
    for _ in range(50):
        previous = dict(zip(rng.permutation(40)[:12].tolist(), rng.choice(list(zoo.SPLITS), 12).tolist()))
        new = rng.permutation(np.arange(40, 80))[: rng.integers(1, 30)].tolist()
        again = zoo.assign_runs(previous, new + list(previous), seed=int(rng.integers(100)))
        assert {r: again[r] for r in previous} == previous and set(again) == set(previous) | set(new)


def test_assignment_of_new_runs_does_not_depend_on_their_order():
    new = list(range(10, 34))
    reference = zoo.assign_runs(FIRST, new, shared=[30, 31], seed=5)
    rng = np.random.default_rng(1)
    for _ in range(10):
        assert zoo.assign_runs(FIRST, rng.permutation(new).tolist(), shared=[31, 30], seed=5) == reference
    records = run_records([0, 1, 2, 3]) + run_records(new)
    shuffled = [records[i] for i in rng.permutation(len(records))]
    previous = zoo.splits_by_assignment(run_records([0, 1, 2, 3]), FIRST)
    a, b = (zoo.grown_splits(previous, recs, shipment={"date": "d", "command": "c"}, seed=5)["runs"]
            for recs in (records, shuffled))
    assert a == b
    assert zoo.assign_runs(FIRST, new, seed=6) != zoo.assign_runs(FIRST, new, seed=5)  # but the seed matters


@pytest.mark.parametrize("batches", [[20], [5, 5, 5, 5], [1] * 20, [3, 7, 1, 9]])
def test_proportions_approach_60_20_20_within_one_run(batches):
    assignment, start = dict(FIRST), 10
    for size in batches:
        assignment = zoo.assign_runs(assignment, range(start, start + size), seed=0)
        start += size
        runs = {s: [r for r, v in assignment.items() if v == s] for s in zoo.SPLITS}
        assert within_one_run_of_shares(runs), runs
    assert {s: len(runs[s]) for s in zoo.SPLITS} in ({"train": 14, "validation": 5, "test": 5},
                                                     {"train": 15, "validation": 5, "test": 4},
                                                     {"train": 15, "validation": 4, "test": 5})


def test_shared_init_runs_are_kept_apart_and_stay_apart():
    shipment = {"date": "2026-12-07", "command": "test"}
    first = zoo.splits_by_assignment(run_records([0, 1, 2, 3]), FIRST)
    records = run_records([0, 1, 2, 3, 10, 11, 12]) + run_records([60, 61], actor_init_seed=1000)
    grown = zoo.grown_splits(first, records, shipment=shipment, fold_sizes=(1, 2, 4))
    assert grown["shared_init"]["runs"] == [60, 61]
    assert set(grown["shared_init"]["ids"]) == {r["id"] for r in records if r["provenance"]["run"] in (60, 61)}
    assert not {60, 61} & {r for s in zoo.SPLITS for r in grown["runs"][s]}
    assert not {60, 61} & {r for f in grown["folds"] for r in f["runs"]}
    records += run_records([13, 14]) + run_records([62], actor_init_seed=1000)
    again = zoo.grown_splits(grown, records, shipment=shipment, fold_sizes=(1, 2, 4))
    assert again["shared_init"]["runs"] == [60, 61, 62]
    assert all(set(grown["runs"][s]) <= set(again["runs"][s]) for s in zoo.SPLITS)
    assert set(again["folds_from"]["train_runs"]) == set(again["runs"]["train"]) and again["folds_from"]["shipment"] == 2
    assert [h["shipment"] for h in again["shipments"]] == [0, 1, 2]
    assert again["shipments"][2]["runs_added"]["shared_init"] == [62]


def fake_finished_run(training, run, returns, *, done=True):
    """A run folder as a finished growth run leaves it: snapshots, curve, and a provenance saying
    whether it stopped by its rule (``done_early``) or at the step cap."""
    d = fake_run(training / "abc123", run, returns, step=100)
    (d / "provenance.json").write_text(json.dumps({
        "finished": True, "done_early": {"rule": "EnoughCandidates", "step": 100 * len(returns)} if done else None,
        "step": 100 * len(returns), "core_seconds": 360.0, "config": {"critic_hidden": [16]}}))
    return d


def test_shipping_twice_keeps_every_earlier_runs_split_and_records_each_shipment(tmp_path):
    base = [fake_run(tmp_path / "old", r, [1.0, 2.0]) for r in range(4)]
    records = zoo.build_zoo(zoo.select_candidates(base, threshold=-1e9), tmp_path / "zoo", threshold=-1e9,
                            episodes=1, provenance={"settings": "old"}, progress=False)
    zoo.write_splits(tmp_path / "zoo", zoo.split_zoo(records, by="run", validation=1, test=1, seed=0), records)
    (tmp_path / "zoo" / "provenance.json").write_text(json.dumps({"command": "old", "training_core_hours": 2.0}))
    plan = zoo.GrowthPlan(training_dir=tmp_path / "training", bar=-1e9, min_snapshot_step=0, candidates=2,
                          step_cap=1000, td3={}, groups={})
    first = [fake_finished_run(plan.training_dir, r, [1.0, 2.0, 3.0]) for r in (10, 11, 12)]
    first.append(fake_finished_run(plan.training_dir, 19, [1.0], done=False))
    grow = lambda dirs, date: zoo.grow_shipped_zoo(tmp_path / "zoo", {"g": dirs}, plan=plan, command="ship g",  # noqa: E731
                                                   episodes=1, fold_sizes=(1, 2), progress=False, date=date)
    one = grow(first, "day 1")
    second = [fake_finished_run(plan.training_dir, r, [1.0, 2.0]) for r in (13, 14, 15, 16, 17, 18)]
    two = grow(first + second, "day 2")
    assert all(set(one["runs"][s]) <= set(two["runs"][s]) for s in zoo.SPLITS)
    assert within_one_run_of_shares(two["runs"]) and sum(len(v) for v in two["runs"].values()) == 13
    loaded = zoo.load_zoo(tmp_path / "zoo")
    assert all(r["provenance"]["split"] == s for s in zoo.SPLITS for r in loaded.select(s).records)
    assert [(h["shipment"], h["date"]) for h in two["shipments"]] == [(0, None), (1, "day 1"), (2, "day 2")]
    assert sorted(r for v in two["shipments"][2]["runs_added"].values() for r in v) == [13, 14, 15, 16, 17, 18]
    assert two["folds_from"] == {"shipment": 2, "n_runs": 13, "train_runs": two["runs"]["train"]}
    prov = json.loads((tmp_path / "zoo" / "provenance.json").read_text())
    assert [h["date"] for h in prov["growth"]["shipments"]] == ["day 1", "day 2"]
    assert prov["growth"]["shipments"][1]["kept"] == {str(r): 2 for r in range(13, 19)}
    assert prov["growth"]["skipped"]["19"] == "failed (step cap)" and prov["growth"]["skipped"]["10"] == "already in the zoo"
    # 2.0 of the first runs, 0.1 for each of the 9 shipped and the 1 failed run (charged once, though named twice)
    assert prov["training_core_hours"] == pytest.approx(3.0) and prov["growth"]["runs"]["10"]["folder"].endswith("abc123/seed_10")
    assert list(prov["growth"]["failed_runs"]) == ["19"] and prov["growth"]["failed_core_hours"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="no finished run"):
        grow(first + second, "day 3")  # nothing new: refused before any rollout
    assert json.loads((tmp_path / "zoo" / "splits.json").read_text()) == two


def test_ship_refuses_an_unknown_group_or_nothing_to_add_before_any_work(tmp_path, capsys):
    import importlib.util
    import shutil

    spec = importlib.util.spec_from_file_location("grow_zoo", "scripts/grow_zoo.py")
    grow_zoo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(grow_zoo)
    (tmp_path / "zoo").mkdir()
    shutil.copy("zoo/growth.yaml", tmp_path / "zoo" / "growth.yaml")
    base = [fake_run(tmp_path / "old", r, [1.0]) for r in range(3)]
    records = zoo.build_zoo(zoo.select_candidates(base, threshold=-1e9), tmp_path / "zoo" / "hopper-v5",
                            threshold=-1e9, episodes=1, provenance={}, progress=False)
    zoo.write_splits(tmp_path / "zoo" / "hopper-v5", zoo.split_zoo(records), records)
    for groups, message in ((["c128", "nope"], "no group 'nope'"), (["c128"], "no finished run of c128"), ([], "name at least one group")):
        with pytest.raises(SystemExit):
            grow_zoo.main(["ship", *groups, "--root", str(tmp_path)])
        assert message in capsys.readouterr().err
    assert not (tmp_path / "zoo" / "hopper-v5.partial").exists()


def test_the_grown_zoo_charges_runs_that_failed_at_the_step_cap_to_its_core_hours():
    plan = zoo.GrowthPlan(training_dir="zoo/training", bar=2500.0, min_snapshot_step=100, candidates=2, step_cap=1000,
                          td3={}, groups={"g": {"critic_hidden": [16], "seeds": [10, 11, 12]}})
    splits = {"shipments": [{"date": "d1", "command": "ship g"}], "runs": {"train": [10], "validation": [], "test": []}}
    shipped = {"training_core_hours": 1.0, "distill_core_hours": 0.0}
    first = zoo.grown_provenance(shipped, {"10": {"core_seconds": 3600.0, "kept": 2}}, {"11": "failed (step cap)"},
                                 plan=plan, splits=splits, failed={"11": {"core_seconds": 1800.0}})
    assert first["training_core_hours"] == 2.5 and first["growth"]["failed_core_hours"] == 0.5
    assert first["growth"]["core_hours"] == 1.0  # the admitted runs' own hours, apart
    # a later shipment keeps the earlier failures and adds its own
    later = zoo.grown_provenance({**shipped, **first}, {}, {"12": "failed (step cap)"}, plan=plan, splits=splits,
                                 failed={"12": {"core_seconds": 720.0}})
    assert set(later["growth"]["failed_runs"]) == {"11", "12"} and later["training_core_hours"] == 2.7


def test_the_learner_table_accounts_for_every_network_run_and_failure_of_the_shipped_zoo(tmp_path):
    import shutil

    shutil.copytree("zoo/hopper-v5", tmp_path / "zoo")
    splits = json.loads((tmp_path / "zoo" / "splits.json").read_text())
    table = zoo.learner_table(tmp_path / "zoo")
    assert table["networks"].sum() == len(zoo.read_index(tmp_path / "zoo"))
    assert table["independent runs"].sum() == sum(len(splits["runs"][s]) for s in zoo.SPLITS)
    assert table.loc["td3 critic 256-256", "independent runs"] == 4  # the first shipment's runs
    prov = json.loads((tmp_path / "zoo" / "provenance.json").read_text())
    before = table.loc["td3 critic 64-64, ensemble of 4", "core-h"]
    failure = {"core_seconds": 3600.0, "config": {"critic_hidden": [64, 64]}, "ensemble": {"k": 4}}
    prov.setdefault("growth", {})["failed_runs"] = {"99": failure}
    (tmp_path / "zoo" / "provenance.json").write_text(json.dumps(prov))
    after = zoo.learner_table(tmp_path / "zoo").loc["td3 critic 64-64, ensemble of 4"]
    assert after["failed runs"] == 1 and after["core-h"] == pytest.approx(before + 1.0, abs=0.01)
