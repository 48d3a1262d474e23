"""Keep each stage notebook's ``parameters`` cell in step with its dataclass and the default profile.

    python tools/notebook_parameters.py --check   # exit 1 if a notebook's cell is out of date
    python tools/notebook_parameters.py --write   # rewrite the cells in place (outputs stay empty)

The cell lists every field of the stage's parameter dataclass (``nnae_utils.stages``) with its
type, its value in ``profiles/default.yaml`` and its docstring as a comment, which is what
``papermill --help-notebook`` shows.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import sys
import textwrap
import typing
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nnae_utils.pipeline import load_profile, resolve_params  # noqa: E402
from nnae_utils.stages import STAGES, Stage  # noqa: E402


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each dataclass field (fields of base classes included)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for node, nxt in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
                docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def render_parameters_cell(stage: Stage) -> str:
    hints = typing.get_type_hints(stage.params)
    values = resolve_params(load_profile("default"), {}, Path("runs/default"))[stage.name]
    docs = field_docs(stage.params)
    lines = [
        "# Parameters (papermill). Defaults = the `default` profile; see profiles/*.yaml.",
        f"# Validated in the next cell by nnae_utils.stages.{stage.params.__name__}.",
    ]
    for f in dataclasses.fields(stage.params):
        type_name = "list" if typing.get_origin(hints[f.name]) is list else hints[f.name].__name__
        value = getattr(values, f.name)
        if f.name == "run_dir":
            value = "runs/default"
        doc = docs.get(f.name, "").replace("'", "").replace('"', "")  # papermill's parser trips on quotes
        lines.append(f"{f.name}: {type_name} = {value!r}  # {doc}")
    return "\n".join(lines)


def parameters_cell(nb) -> nbformat.NotebookNode:
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    if len(tagged) != 1:
        raise ValueError(f"expected exactly one cell tagged 'parameters', found {len(tagged)}")
    return tagged[0]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true")
    mode.add_argument("--write", action="store_true")
    args = parser.parse_args(argv)
    stale = []
    for stage in STAGES:
        path = ROOT / stage.notebook
        nb = nbformat.read(path, as_version=4)
        cell = parameters_cell(nb)
        wanted = render_parameters_cell(stage)
        if cell.source != wanted:
            stale.append(stage.notebook)
            if args.write:
                cell.source = wanted
                nbformat.write(nb, path)
    for name in stale:
        print(("rewrote " if args.write else "out of date: ") + name)
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
