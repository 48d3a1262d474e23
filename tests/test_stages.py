"""Stage parameters: every bad value fails at once with a message that names it."""
import pytest

from nnae_utils.stages import DataParams, MissingInputError, ParameterError, StageOutput


@pytest.mark.parametrize(
    "values, message",
    [
        ({"bogus": 1}, "unknown parameter"),
        ({"n_runs": "four"}, "n_runs must be an integer"),
        ({"n_runs": 2.5}, "n_runs must be an integer"),
        ({"n_runs": True}, "n_runs must be an integer"),
        ({"n_runs": 0}, "n_runs must be > 0"),
        ({"steps_per_run": -5}, "steps_per_run must be > 0"),
        ({"actor_hidden": [64, 0]}, "actor_hidden must be > 0"),
        ({"actor_hidden": []}, "actor_hidden must be > 0"),
        ({"actor_hidden": 64}, "actor_hidden must be a list"),
        ({"random_fraction": 1.0}, "random_fraction must lie in"),
        ({"random_fraction": "lots"}, "random_fraction must be a number"),
        ({"env_id": "NoSuchEnv-v9"}, "unknown environment id"),
        ({"split_by": "vibes"}, "split_by"),
        ({"n_runs": 2, "validation_runs": 1, "test_runs": 1}, "needs n_runs >= "),
        ({"learning_starts": 70_000, "steps_per_run": 60_000}, "learning_starts"),
        ({"seed": -1}, "seed must be >= 0"),
    ],
)
def test_bad_parameters_are_rejected(values, message):
    with pytest.raises(ParameterError, match=message):
        DataParams.from_mapping(values)


def test_missing_shipped_zoo_is_a_missing_input(tmp_path):
    with pytest.raises(MissingInputError, match="zoo_source"):
        DataParams.from_mapping({"zoo_source": str(tmp_path / "nowhere")})


def test_integral_floats_are_accepted_and_types_normalised():
    p = DataParams.from_mapping({"n_runs": 3.0, "random_fraction": 0, "actor_hidden": (32, 32)})
    assert p.n_runs == 3 and isinstance(p.random_fraction, float) and p.actor_hidden == [32, 32]


def test_upstream_dir_names_the_missing_stage(tmp_path):
    p = DataParams(run_dir=str(tmp_path))
    with pytest.raises(MissingInputError, match="stage 'data'"):
        p.upstream_dir("data")


def test_stage_output_is_atomic(tmp_path):
    p = DataParams(run_dir=str(tmp_path))
    first = StageOutput.begin(p)
    (first.path / "old.txt").write_text("1")
    first.commit({"v": 1})
    second = StageOutput.begin(p)
    (second.path / "new.txt").write_text("2")
    # until commit, the finished folder is untouched and the staging folder is separate
    assert sorted(x.name for x in (tmp_path / "01_data").iterdir()) == ["old.txt", "summary.json"]
    second.commit({"v": 2})
    assert sorted(x.name for x in (tmp_path / "01_data").iterdir()) == ["new.txt", "summary.json"]
    assert not (tmp_path / "01_data.partial").exists()
