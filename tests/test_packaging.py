"""The project's metadata agrees with itself: pins, notebooks, profiles."""
import re
import sys
import typing
from pathlib import Path

import nbformat
import papermill
import pytest
import yaml

from nnae_utils.pipeline import load_profile, list_profiles, resolve_params
from nnae_utils.stages import STAGES, MissingInputError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from notebook_parameters import render_parameters_cell  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _pyproject_pins():
    import tomllib

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    deps = data["project"]["dependencies"] + data["project"]["optional-dependencies"]["test"]
    return dict(re.match(r"([A-Za-z0-9_.-]+)==(.+)", d).groups() for d in deps)


def test_environment_yml_has_the_same_pins_as_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    env_pins = dict(re.match(r"([A-Za-z0-9_.-]+)==(.+)", d).groups() for d in pip if "==" in d)
    assert env_pins == _pyproject_pins()
    assert "python=3.11" in env["dependencies"]


def test_every_dependency_is_pinned_exactly():
    import tomllib

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert all("==" in d for d in data["project"]["dependencies"])
    assert _pyproject_pins()["jupyter-book"].startswith("1.")  # JB1 reads _config.yml / _toc.yml
    assert _pyproject_pins()["torch"] == "2.13.0"


def test_profiles_resolve_and_paper_is_marked_not_run_here(tmp_path):
    names = list_profiles()
    assert {"smoke", "default", "long", "paper"} <= set(names)
    for name in names:
        profile = load_profile(name)
        source = profile.stages.get("data", {}).get("zoo_source", "train")
        if source != "train" and not (ROOT / source / "index.json").is_file():
            # a profile built on the shipped zoo says so before anything runs while the zoo is not there
            with pytest.raises(MissingInputError, match=source):
                resolve_params(profile, {}, tmp_path)
            resolve_params(profile, {"data": {"zoo_source": "train"}}, tmp_path)  # the other stages' parameters
        else:
            resolve_params(profile, {}, tmp_path)  # validates every stage's parameters
    assert load_profile("paper").run_here is False


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_notebook_parameters_mirror_the_stage_dataclass_and_default_profile(stage):
    nb = nbformat.read(ROOT / stage.notebook, as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit notebooks without outputs"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    inferred = papermill.inspect_notebook(str(ROOT / stage.notebook))
    assert list(inferred) == stage.params.field_names()
    hints = typing.get_type_hints(stage.params)
    default = resolve_params(load_profile("default"), {}, Path("runs/default"))[stage.name].to_dict()
    assert tagged[0].source == render_parameters_cell(stage), "run: python tools/notebook_parameters.py --write"
    namespace: dict = {}
    exec(tagged[0].source, namespace)
    for name, info in inferred.items():
        expected_type = "list" if typing.get_origin(hints[name]) is list else hints[name].__name__
        assert info["inferred_type_name"] == expected_type, name
        assert info["help"], f"parameter {name} needs a comment"
        assert namespace[name] == default[name], f"{name}: notebook default differs from profiles/default.yaml"


def test_code_passes_ruff():
    """pyflakes and pycodestyle's errors (the selection in pyproject.toml) over the whole repository."""
    import subprocess

    out = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]


def test_every_notebook_cell_that_draws_a_figure_has_a_caption():
    """The browser check finds an uncaptioned figure only after a full smoke build; this finds it in a second."""
    draws = re.compile(r"\bfig\s*=|plt\.(subplots|figure)\(")
    uncaptioned = []
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for index, cell in enumerate(nbformat.read(path, as_version=4).cells):
            caption = cell.metadata.get("mystnb", {}).get("figure", {}).get("caption")
            if cell.cell_type == "code" and draws.search(cell.source) and not caption:
                uncaptioned.append(f"{path.name} cell {index}")
    assert not uncaptioned, f"cells that draw a figure without mystnb figure metadata: {uncaptioned}"
