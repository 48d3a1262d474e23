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


def test_doctests():
    assert doctest.testmod(published, raise_on_error=False).failed == 0
