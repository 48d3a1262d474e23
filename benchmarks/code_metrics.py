"""Size metrics of the code a newcomer reads (issue 28): lines of code per stage notebook, each
notebook's longest cell, and the longest functions in ``nnae_utils``.

    python benchmarks/code_metrics.py              # table on stdout
    python benchmarks/code_metrics.py --json       # the same as JSON
    python benchmarks/code_metrics.py --top 10     # the ten longest functions

Two counts per notebook: ``lines``, every line of its code cells (how issue 28 counted: 166-513
per notebook, cells up to 143), and ``loc``, the lines of code among them: neither blank nor only a
comment (``# ...``); IPython magics (``%...``) count. A function's length is its ``ast`` span, ``end_lineno - lineno + 1``,
decorators excluded and docstring included, so nested functions count inside their parent too
(that is what a reader scrolls through). Run it before and after a restructuring to measure it.

Example::

    >>> code_lines("x = 1\\n\\n# why\\ny = 2  # fine\\n")
    2
    >>> longest_functions("def f():\\n    return 1\\n", "m.py")
    [('m.py:f', 1, 2)]
"""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def code_lines(source: str) -> int:
    """Lines of ``source`` that are neither blank nor only a comment."""
    return sum(1 for line in source.splitlines() if line.strip() and not line.strip().startswith("#"))


def notebook_metrics(path: Path) -> dict:
    """Code lines of a notebook's code cells, summed, and the longest cell (its index among all cells)."""
    cells = json.loads(path.read_text())["cells"]
    code = [(i, "".join(c["source"])) for i, c in enumerate(cells) if c["cell_type"] == "code"]
    raw = [(i, len(src.splitlines())) for i, src in code]
    loc = [(i, code_lines(src)) for i, src in code]
    longest_raw = max(raw, key=lambda s: s[1], default=(None, 0))
    longest = max(loc, key=lambda s: s[1], default=(None, 0))
    return {"notebook": path.name, "code_cells": len(code),
            "lines": sum(n for _, n in raw), "longest_cell_lines": longest_raw[1],
            "loc": sum(n for _, n in loc), "longest_cell": longest[1], "longest_cell_index": longest[0]}


def longest_functions(source: str, name: str) -> list[tuple[str, int, int]]:
    """Every function and method of a module as ``(module:qualname, first line, length)``, longest first."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                qual = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    found.append((f"{name}:{qual}", child.lineno, child.end_lineno - child.lineno + 1))
                visit(child, qual + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return sorted(found, key=lambda f: (-f[2], f[0]))


def measure(root: Path = ROOT, top: int = 5) -> dict:
    notebooks = [notebook_metrics(p) for p in sorted((root / "notebooks").glob("*.ipynb"))]
    functions = []
    for path in sorted((root / "nnae_utils").glob("*.py")):
        functions += longest_functions(path.read_text(), f"nnae_utils/{path.name}")
    functions.sort(key=lambda f: (-f[2], f[0]))
    return {"notebooks": notebooks,
            "notebook_lines_total": sum(n["lines"] for n in notebooks),
            "notebook_loc_total": sum(n["loc"] for n in notebooks),
            "longest_cell": max((n["longest_cell"] for n in notebooks), default=0),
            "longest_functions": [{"function": f, "line": line, "lines": n} for f, line, n in functions[:top]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root (default: this checkout)")
    parser.add_argument("--top", type=int, default=5, help="how many of the longest functions to list")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    m = measure(args.root, args.top)
    if args.json:
        print(json.dumps(m, indent=1))
        return
    print(f"{'notebook':32s} {'code cells':>10s} {'lines':>6s} {'longest':>8s} {'LOC':>6s} {'longest (LOC)':>14s}")
    for n in m["notebooks"]:
        print(f"{n['notebook']:32s} {n['code_cells']:10d} {n['lines']:6d} {n['longest_cell_lines']:8d} "
              f"{n['loc']:6d} {n['longest_cell']:8d} (cell {n['longest_cell_index']})")
    print(f"{'total':32s} {'':10s} {m['notebook_lines_total']:6d} {'':8s} {m['notebook_loc_total']:6d}")
    print("\nlongest functions in nnae_utils (lines, ast span):")
    for f in m["longest_functions"]:
        print(f"  {f['lines']:4d}  {f['function']} (line {f['line']})")


if __name__ == "__main__":
    main()
