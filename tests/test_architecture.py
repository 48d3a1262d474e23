"""ARCHITECTURE.md describes the code that is there: its module table lists every module of
nnae_utils in an order no module-level import goes against, and its stage table names every stage
with its notebook and the upstream stages it reads."""
import ast
import re
from pathlib import Path

from nnae_utils import stages

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "ARCHITECTURE.md").read_text()


def layer_order() -> list[str]:
    """The modules of the "package, by layer" table, top to bottom."""
    section = DOC.split("## The package, by layer", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\|[^|]*\| `(\w+)` \|", section, flags=re.M)


def module_level_imports(module: str) -> set[str]:
    tree = ast.parse((ROOT / "nnae_utils" / f"{module}.py").read_text())
    found = set()
    for node in tree.body:  # module level only: imports inside functions are allowed to reach further
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
    return found


def test_every_module_is_in_the_table_once():
    modules = sorted(p.stem for p in (ROOT / "nnae_utils").glob("*.py") if p.stem != "__init__")
    assert sorted(layer_order()) == modules


def test_no_module_imports_one_below_it_at_import_time():
    order = layer_order()
    upward = {m: sorted(i for i in module_level_imports(m) if order.index(i) > order.index(m)) for m in order}
    assert {m: below for m, below in upward.items() if below} == {}


def test_the_stage_table_names_every_stage_its_notebook_and_upstream():
    rows = {m[0]: m for m in re.findall(r"^\| \d \| `(\w+)` \| `(\w+)` \| ([^|]*) \|", DOC, flags=re.M)}
    assert list(rows) == [s.name for s in stages.STAGES]
    for stage in stages.STAGES:
        _, folder, reads = rows[stage.name]
        assert folder == stage.folder and (ROOT / stage.notebook).is_file()
        numbers = {int(n) for n in re.findall(r"(\d):", reads)}
        assert numbers == {[s.name for s in stages.STAGES].index(u) + 1 for u in stage.upstream}, stage.name


def test_the_paths_and_names_it_cites_exist():
    for name in re.findall(r"`((?:nnae_utils|tests|scripts|notebooks)/[\w./]+)`", DOC):
        assert (ROOT / name).exists(), name
    for module, attr in re.findall(r"`(\w+)\.(\w+)`", DOC):
        if (ROOT / "nnae_utils" / f"{module}.py").is_file() and attr not in ("npz", "json", "csv", "safetensors", "ipynb", "py"):
            source = (ROOT / "nnae_utils" / f"{module}.py").read_text()
            assert re.search(rf"^\s*(def|class) {attr}\b|^\s*{attr}\b.*=", source, flags=re.M), f"{module}.{attr}"
