"""Publishing a long run's small results into the repository, and reading them back for the book."""
import doctest
import json

import pytest

from nnae_utils import published


def _fake_stage(run, folder, summary, extra=()):
    stage = run / folder
    (stage / "champions").mkdir(parents=True)
    (stage / "summary.json").write_text(json.dumps(summary))
    (stage / "stage.json").write_text(json.dumps({"params": {"budget_steps": summary.get("budget_steps")}}))
    (stage / "runs.csv").write_text("run_id,final_return\na,1.0\n")
    (stage / "champions" / "index.json").write_text("[]")
    (stage / "champions" / "a.safetensors").write_bytes(b"\0" * 16)
    for name, data in extra:
        (stage / name).write_bytes(data)
    return stage


SUMMARY = {
    "n_seeds": 5, "budget_steps": 300000, "code_revision": "abc123",
    "results": {"finetune|ga/weights": {"runs": 5, "iqm": {"point": 12.3, "low": 1.0, "high": 20.0},
                                        "mean": {"point": 11.0, "low": 2.0, "high": 19.0},
                                        "steps_to gain >= 10%": {"median": None, "reached": 1, "runs": 5,
                                                                 "text": "not reached (1/5 runs)"}}},
}


def test_publish_copies_tables_and_networks_only(tmp_path):
    run = tmp_path / "runs" / "long"
    _fake_stage(run, "04_latent_evolution", SUMMARY, extra=[("states.npz", b"x" * 100)])
    (run / "timings.json").write_text(json.dumps({"latent_evolution": {"wall_seconds": 7200.0}}))
    root = tmp_path / "results"
    written = published.publish(run, root=root, command="python -m nnae_utils.published runs/long")
    assert [p.name for p in written] == ["04_latent_evolution"]  # stage 5 has not finished: skipped
    dest = root / "long" / "04_latent_evolution"
    assert sorted(p.name for p in dest.iterdir()) == ["champions", "published.json", "runs.csv", "stage.json",
                                                     "summary.json"]
    assert sorted(p.name for p in (dest / "champions").iterdir()) == ["a.safetensors", "index.json"]
    stage = published.load("long", "04_latent_evolution", root=root)
    assert stage.meta["code_revision"] == "abc123" and stage.meta["published_by_revision"]  # the run's, and ours
    assert "computed by code revision `abc123`" in stage.caption()
    assert stage.params == {"budget_steps": 300000}
    assert stage.meta["stage_wall_seconds"] == 7200.0
    caption = stage.caption()
    assert "`long`" in caption and "5 seeds" in caption and "300,000 env steps" in caption and "2.0 h" in caption
    table = published.results_table(stage.summary)
    assert table.loc[("finetune", "ga/weights"), "IQM [95% CI]"] == "12 [1, 20]"
    assert table.loc[("finetune", "ga/weights"), "gain >= 10%"] == "not reached (1/5 runs)"
    assert published.load("long", "05_cerl_comparison", root=root) is None
    assert stage.title() == "profile long: 5 seeds, 300,000 env steps per run"
    assert published.beside_sentence("long", stage).startswith(caption)
    assert "has been published" in published.beside_sentence("long", None)
    assert "shows no other profile" in published.beside_sentence("", None)


def test_stage_2_publishes_what_later_stages_load_and_a_new_machine_restores_it(tmp_path):
    run, new_machine, root = tmp_path / "old" / "long", tmp_path / "new" / "long", tmp_path / "results"
    stage = run / "02_layer_autoencoders"
    for folder in ("autoencoders", "pca", "models", "aligned"):
        (stage / folder).mkdir(parents=True)
        (stage / folder / "layer0_flat.safetensors").write_bytes(folder.encode())
    (stage / "summary.json").write_text(json.dumps({"best_layer": {"flat": 1}}))
    (stage / "stage.json").write_text(json.dumps({"key": "k2", "params": {"main_ratio": 10.0}}))
    assert published.publish(run, root=root, command="c") == []  # not among the stages published by default
    [dest] = published.publish(run, stages=["layer_autoencoders"], root=root, command="c")
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == [
        "autoencoders/layer0_flat.safetensors", "pca/layer0_flat.safetensors", "published.json", "stage.json",
        "summary.json"]  # no sweep models, no alignment: nothing later stages read
    assert published.restore(new_machine, root=root) == [new_machine / "02_layer_autoencoders"]
    restored = new_machine / "02_layer_autoencoders"
    assert (restored / "autoencoders" / "layer0_flat.safetensors").read_bytes() == b"autoencoders"
    assert json.loads((restored / "stage.json").read_text())["key"] == "k2"  # its own key: later stages' upstream


def test_publish_replaces_an_earlier_publication_whole(tmp_path):
    run = tmp_path / "long"
    stage = _fake_stage(run, "04_latent_evolution", SUMMARY, extra=[("old.csv", b"a\n1\n")])
    root = tmp_path / "results"
    published.publish(run, root=root, command="c")
    (stage / "old.csv").unlink()
    published.publish(run, root=root, command="c")
    assert not (root / "long" / "04_latent_evolution" / "old.csv").exists()


def test_a_resumed_stage_publishes_no_stage_wall_time(tmp_path):
    run = tmp_path / "long"
    stage_dir = _fake_stage(run, "04_latent_evolution", SUMMARY)
    # the stage record is the stage's own account; timings.json is written only when the pipeline ends
    (stage_dir / "stage.json").write_text(json.dumps({"params": {}, "wall_seconds": 600.0}))
    (run / "timings.json").write_text(json.dumps({"latent_evolution": {"wall_seconds": 999.0}}))
    root = tmp_path / "results"
    published.publish(run, root=root, command="c", resumed=True)
    stage = published.load("long", "04_latent_evolution", root=root)
    assert stage.meta["stage_wall_seconds"] is None and stage.meta["last_session_wall_seconds"] == 600.0
    caption = stage.caption()
    assert "no stage wall time was measured" in caption and "last session took 10 min" in caption
    assert "stage wall time 10 min" not in caption and "summed over every session" not in caption
    summary = {**SUMMARY, "n_runs": 5, "runs_with_compute_seconds": 5, "evolution_all_sessions_seconds": 9000.0}
    (run / "04_latent_evolution" / "summary.json").write_text(json.dumps(summary))
    published.publish(run, root=root, command="c", resumed=True)
    caption = published.load("long", "04_latent_evolution", root=root).caption()
    assert "evolution time summed over every session 2.5 h" in caption
    summary["runs_with_compute_seconds"] = 4  # one run's cost unknown: no total is claimed
    (run / "04_latent_evolution" / "summary.json").write_text(json.dumps(summary))
    published.publish(run, root=root, command="c", resumed=True)
    assert "summed over every session" not in published.load("long", "04_latent_evolution", root=root).caption()


def test_publish_refuses_oversized_stages_before_writing(tmp_path, monkeypatch):
    run = tmp_path / "long"
    _fake_stage(run, "04_latent_evolution", SUMMARY, extra=[("curves.csv", b"x" * 2000)])
    monkeypatch.setattr(published, "MAX_BYTES", 1000)
    with pytest.raises(ValueError, match="MiB to publish"):
        published.publish(run, root=tmp_path / "results", command="c")
    assert not (tmp_path / "results").exists()


def test_publish_names_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="unknown stage"):
        published.publish(tmp_path, stages=["nope"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        published.publish(tmp_path / "missing")


def _fake_cerl_run(work, name, done):
    import numpy as np

    from nnae_utils.evolution import RunState

    checkpoint = work / name / "checkpoint"
    RunState(rng=np.random.default_rng(0), generation=3, env_steps=900, done=done,
             curve=[{"env_steps": 900}]).save(checkpoint / "state.npz", "fp")
    (checkpoint / "log.json").write_text(json.dumps({"wall_s": 12.0}))
    (checkpoint / "learners.pt").write_bytes(b"l" * 64)  # what only continuing the run needs
    (checkpoint / "buffer.npz").write_bytes(b"b" * 64)
    (work / name / "migrants").mkdir()
    (work / name / "migrants" / "g0002_learner0_actor.safetensors").write_bytes(b"\0" * 16)


def test_a_stage_still_computing_carries_its_finished_runs_to_a_new_machine(tmp_path):
    old_machine, new_machine, root = tmp_path / "old" / "long", tmp_path / "new" / "long", tmp_path / "results"
    _fake_stage(old_machine, "04_latent_evolution", SUMMARY)
    published.publish(old_machine, stages=["latent_evolution"], root=root, command="test")
    work = old_machine / "_work" / "cerl_comparison"
    _fake_cerl_run(work, "cerl-weights-finetune-s0-aaaa", done=True)
    _fake_cerl_run(work, "cerl-weights-finetune-s1-bbbb", done=False)
    dest = published.carry(old_machine, root=root)
    assert dest == root / "long" / "_carried" / "05_cerl_comparison"
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == [
        "cerl-weights-finetune-s0-aaaa/checkpoint/log.json", "cerl-weights-finetune-s0-aaaa/checkpoint/state.npz",
        "cerl-weights-finetune-s0-aaaa/migrants/g0002_learner0_actor.safetensors"]  # finished only; no learners, buffer
    assert published.digest("long", "05_cerl_comparison", root=root) == ""  # carried runs are not a publication

    restored = published.restore(new_machine, root=root)
    assert restored == [new_machine / "04_latent_evolution", new_machine / "_work/cerl_comparison/cerl-weights-finetune-s0-aaaa"]
    record = json.loads((new_machine / "04_latent_evolution" / "stage.json").read_text())
    assert record["restored_from"] and record["published_digest"] == published.digest("long", "04_latent_evolution", root=root)
    assert json.loads((new_machine / "04_latent_evolution" / "summary.json").read_text()) == SUMMARY
    from nnae_utils.cerl import finished_runs

    assert [p.name for p in finished_runs(new_machine / "_work" / "cerl_comparison")] == ["cerl-weights-finetune-s0-aaaa"]
    assert published.restore(new_machine, root=root) == []  # nothing twice
    assert published.publish(new_machine, root=root, command="test") == []  # a restored copy is not published again
    assert published.carry(tmp_path / "empty" / "long", root=root) is None  # nothing finished: nothing carried
    # once the stage finishes and is published, its carried runs are dropped
    _fake_stage(new_machine, "05_cerl_comparison", SUMMARY)
    assert [p.name for p in published.publish(new_machine, root=root, command="test")] == ["05_cerl_comparison"]
    assert not dest.exists()
    with pytest.raises(ValueError, match="no runs to carry"):
        published.carry(old_machine, stage="latent_evolution", root=root)
    with pytest.raises(FileNotFoundError, match="nothing is published"):
        published.restore(tmp_path / "x" / "paper", root=root)


def test_doctests():
    assert doctest.testmod(published, raise_on_error=False).failed == 0
