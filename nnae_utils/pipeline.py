"""Run the stage notebooks in order with papermill, one run folder per profile, with caching.

Command line::

    python -m nnae_utils.pipeline --profile smoke                     # every stage
    python -m nnae_utils.pipeline --profile default --only data -p data.n_runs=3
    python -m nnae_utils.pipeline --profile default --book            # stages, then the book
    python -m nnae_utils.pipeline --list                              # profiles and stages

Parameters come from ``profiles/<profile>.yaml`` plus ``-p [stage.]key=value`` overrides (values
are YAML: ``-p data.actor_hidden=[32,32]``). They are validated by each stage's dataclass in
:mod:`nnae_utils.stages` before anything runs. A stage whose parameters, notebook, package source
and upstream results are unchanged is not recomputed (``--force`` recomputes it). A failing stage
is reported with its notebook and cell; the artifacts of the stages before it are kept.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from .stages import STAGE_RECORD, STAGES, STAGES_BY_NAME, MissingInputError, ParameterError, Stage, StageParams

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PROFILE_DIR = PROJECT_ROOT / "profiles"
KERNEL_NAME = "python3"
log = logging.getLogger("nnae_utils.pipeline")


class PipelineError(RuntimeError):
    """A stage could not run or failed; the message names the notebook and the cell."""


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    run_here: bool
    stages: dict[str, dict[str, Any]]


def list_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def load_profile(name: str) -> Profile:
    path = PROFILE_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ParameterError(f"unknown profile {name!r}; profiles: {list_profiles()}")
    raw = yaml.safe_load(path.read_text()) or {}
    stages = raw.get("stages") or {}
    unknown = sorted(set(stages) - set(STAGES_BY_NAME))
    if unknown:
        raise ParameterError(f"profile {name}: unknown stage(s) {unknown}; stages: {list(STAGES_BY_NAME)}")
    common = raw.get("common") or {}
    merged = {s.name: {**common, **(stages.get(s.name) or {})} for s in STAGES}
    return Profile(name, raw.get("description", ""), bool(raw.get("run_here", True)), merged)


def parse_overrides(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["data.n_runs=3", "seed=1"]`` -> per-stage overrides (an unqualified key goes to every
    stage that has a parameter of that name, and must exist in at least one)."""
    per_stage: dict[str, dict[str, Any]] = {s.name: {} for s in STAGES}
    for item in items:
        if "=" not in item:
            raise ParameterError(f"override {item!r} is not of the form [stage.]key=value")
        key, text = item.split("=", 1)
        value = yaml.safe_load(text) if text.strip() else ""
        if "." in key:
            stage, name = key.split(".", 1)
            if stage not in STAGES_BY_NAME:
                raise ParameterError(f"override {item!r}: unknown stage {stage!r}; stages: {list(STAGES_BY_NAME)}")
            per_stage[stage][name] = value
        else:
            owners = [s.name for s in STAGES if key in s.params.field_names()]
            if not owners:
                raise ParameterError(f"override {item!r}: no stage has a parameter {key!r}")
            for stage in owners:
                per_stage[stage][key] = value
    return per_stage


def source_hash() -> str:
    """Hash of the package's source, part of every cache key: a code fix never reuses stale results."""
    h = hashlib.sha256()
    for path in sorted((PROJECT_ROOT / "nnae_utils").rglob("*.py")):
        h.update(path.relative_to(PROJECT_ROOT).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def cache_key(stage: Stage, params: StageParams, upstream_keys: Mapping[str, str], src_hash: str) -> str:
    notebook = (PROJECT_ROOT / stage.notebook).read_bytes()
    payload = {
        "stage": stage.name,
        "params": {k: v for k, v in params.to_dict().items() if k != "run_dir"},
        "notebook": hashlib.sha256(notebook).hexdigest(),
        "source": src_hash,
        "upstream": dict(upstream_keys),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def read_stage_record(run_dir: Path, stage: Stage) -> dict[str, Any] | None:
    path = run_dir / stage.folder / STAGE_RECORD
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def _failure_message(stage: Stage, exc: Exception, kept: Path | None) -> str:
    cell = getattr(exc, "cell_index", None)
    count = getattr(exc, "exec_count", None)
    ename, evalue = getattr(exc, "ename", type(exc).__name__), getattr(exc, "evalue", str(exc))
    where = f"cell {cell} (execution count {count})" if cell is not None else "before any cell ran"
    msg = f"stage '{stage.name}' failed in {stage.notebook}, {where}: {ename}: {evalue}"
    if kept is not None:
        msg += f"\nThe partly executed notebook is kept at {kept}"
    return msg


def run_stage(stage: Stage, params: StageParams, run_dir: Path, key: str) -> dict[str, Any]:
    """Execute one stage notebook with papermill; return its record (written to stage.json)."""
    import papermill

    executed_dir = run_dir / "executed"
    executed_dir.mkdir(parents=True, exist_ok=True)
    final_nb = executed_dir / f"{stage.folder}.ipynb"
    running_nb = executed_dir / f"{stage.folder}.running.ipynb"
    failed_nb = executed_dir / f"{stage.folder}.failed.ipynb"
    failed_nb.unlink(missing_ok=True)
    log.info("stage %s: running %s", stage.name, stage.notebook)
    start = time.time()
    try:
        papermill.execute_notebook(
            str(PROJECT_ROOT / stage.notebook),
            str(running_nb),
            parameters=params.to_dict(),
            kernel_name=KERNEL_NAME,
            cwd=str(PROJECT_ROOT),
            log_output=True,
            progress_bar=False,
        )
    except Exception as exc:  # papermill raises PapermillExecutionError for a failing cell
        kept = None
        if running_nb.exists():
            os.replace(running_nb, failed_nb)
            kept = failed_nb
        raise PipelineError(_failure_message(stage, exc, kept)) from exc
    wall = time.time() - start
    os.replace(running_nb, final_nb)
    record = {
        "stage": stage.name,
        "key": key,
        "params": params.to_dict(),
        "wall_seconds": round(wall, 1),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "executed_notebook": str(final_nb.relative_to(run_dir)),
        "python": platform.python_version(),
        "cores": os.cpu_count(),
    }
    stage_dir = run_dir / stage.folder
    if not stage_dir.is_dir():
        raise PipelineError(f"stage '{stage.name}' finished but wrote no artifact folder {stage_dir}")
    (stage_dir / STAGE_RECORD).write_text(json.dumps(record, indent=1))
    return record


def resolve_params(profile: Profile, overrides: Mapping[str, Mapping[str, Any]], run_dir: Path) -> dict[str, StageParams]:
    """Every stage's validated parameters (raises ParameterError before anything runs)."""
    resolved = {}
    run_dir = Path(run_dir)
    if run_dir.is_absolute() and run_dir.resolve().is_relative_to(PROJECT_ROOT):
        run_dir = run_dir.resolve().relative_to(PROJECT_ROOT)  # notebooks run in PROJECT_ROOT: keep paths portable
    for stage in STAGES:
        values = {**profile.stages.get(stage.name, {}), **overrides.get(stage.name, {}), "run_dir": str(run_dir)}
        resolved[stage.name] = stage.params.from_mapping(values)
    return resolved


def run_pipeline(
    profile_name: str,
    *,
    only: Sequence[str] | None = None,
    overrides: Sequence[str] = (),
    force: bool = False,
    run_dir: str | os.PathLike | None = None,
    allow_unrun_profile: bool = False,
) -> dict[str, dict[str, Any]]:
    """Run the selected stages (all by default) in order; return each stage's record."""
    profile = load_profile(profile_name)
    if not profile.run_here and not allow_unrun_profile:
        raise ParameterError(
            f"profile {profile.name!r} is not run on this kind of machine ({profile.description.strip()}); "
            "pass --allow-unrun-profile on a machine that affords it"
        )
    run_dir = Path(run_dir) if run_dir else PROJECT_ROOT / "runs" / profile.name
    params = resolve_params(profile, parse_overrides(overrides), run_dir)
    selected = list(only) if only else [s.name for s in STAGES]
    for name in selected:
        if name not in STAGES_BY_NAME:
            raise ParameterError(f"unknown stage {name!r}; stages: {list(STAGES_BY_NAME)}")
    src_hash = source_hash()
    keys: dict[str, str] = {}
    records: dict[str, dict[str, Any]] = {}
    # Upstream inputs are checked for every selected stage before the first one starts.
    for stage in STAGES:
        if stage.name not in selected:
            continue
        for up in stage.upstream:
            if up not in selected and read_stage_record(run_dir, STAGES_BY_NAME[up]) is None:
                raise MissingInputError(
                    f"stage '{stage.name}' needs the artifacts of stage '{up}' in "
                    f"{run_dir / STAGES_BY_NAME[up].folder}, which do not exist; run it first (--only {up})"
                )
    for stage in STAGES:
        if stage.name not in selected:
            rec = read_stage_record(run_dir, stage)
            if rec is not None:
                keys[stage.name] = rec["key"]
            continue
        key = cache_key(stage, params[stage.name], {u: keys.get(u, "") for u in stage.upstream}, src_hash)
        previous = read_stage_record(run_dir, stage)
        if previous and previous.get("key") == key and not force:
            log.info("stage %s: up to date, not recomputed (%s)", stage.name, run_dir / stage.folder)
            records[stage.name] = {**previous, "cached": True}
        else:
            records[stage.name] = {**run_stage(stage, params[stage.name], run_dir, key), "cached": False}
        keys[stage.name] = key
    timings = run_dir / "timings.json"
    old = json.loads(timings.read_text()) if timings.is_file() else {}
    old.update({n: {"wall_seconds": r["wall_seconds"], "cached": r["cached"]} for n, r in records.items()})
    timings.write_text(json.dumps(old, indent=1))
    return records


# --------------------------------------------------------------------------- the book


def assemble_book(run_dir: Path) -> Path:
    """A book source tree in ``run_dir/book_src``: config, pages, and the executed notebooks."""
    src = run_dir / "book_src"
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(PROJECT_ROOT / name, src / name)
    shutil.copytree(PROJECT_ROOT / "book", src / "book")
    (src / "book" / "_generated").mkdir(exist_ok=True)
    (src / "book" / "_generated" / "run_times.md").write_text(run_times_table(run_dir))
    (src / "notebooks").mkdir()
    toc = (PROJECT_ROOT / "_toc.yml").read_text()
    for stage in STAGES:
        if f"notebooks/{stage.folder}" not in toc:
            continue
        executed = run_dir / "executed" / f"{stage.folder}.ipynb"
        if not executed.is_file():
            raise MissingInputError(f"the book needs the executed notebook {executed}; run the stage '{stage.name}' first")
        _copy_for_book(executed, src / "notebooks" / executed.name)
    return src


def _copy_for_book(executed: Path, destination: Path) -> None:
    """Copy an executed notebook, folding away its parameter cells: the book shows the injected
    values this run used behind a toggle, and drops the notebook's defaults."""
    import nbformat

    nb = nbformat.read(executed, as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.setdefault("tags", [])
        if "parameters" in tags:
            tags.append("remove-cell")
        elif "injected-parameters" in tags:
            tags.append("hide-input")
    nbformat.write(nb, destination)


def run_times_table(run_dir: Path) -> str:
    """A Markdown table of the stage wall times measured in ``run_dir`` (its ``timings.json``)."""
    timings = run_dir / "timings.json"
    records = {s.name: read_stage_record(run_dir, s) for s in STAGES}
    rows = [
        f"| {s.folder} | {rec['wall_seconds'] / 60:.1f} | {rec.get('cores', '?')} | {rec.get('finished', '?')} |"
        for s in STAGES
        if (rec := records[s.name]) is not None
    ]
    book = json.loads(timings.read_text()).get("book") if timings.is_file() else None
    note = f"The previous book build of this run took {book['wall_seconds'] / 60:.1f} min.\n" if book else ""
    return (
        f"Measured in the run folder `{run_dir.name}` that this book was built from "
        f"(wall time of the last computation of each stage, on a machine with the cores shown):\n\n"
        "| stage | minutes | cores | finished |\n|---|---|---|---|\n" + "\n".join(rows) + "\n\n" + note
    )


def build_book(run_dir: str | os.PathLike, output_dir: str | os.PathLike | None = None) -> Path:
    """Build the Jupyter Book (Sphinx warnings are errors) from a run's executed notebooks."""
    run_dir = Path(run_dir)
    output_dir = Path(output_dir) if output_dir else run_dir
    src = assemble_book(run_dir)
    cmd = [str(Path(sys.executable).with_name("jupyter-book")), "build", str(src), "--path-output", str(output_dir), "-W", "--keep-going"]
    log.info("building the book: %s", " ".join(cmd))
    start = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise PipelineError(f"the book build failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}")
    html = output_dir / "_build" / "html"
    timings = run_dir / "timings.json"
    old = json.loads(timings.read_text()) if timings.is_file() else {}
    old["book"] = {"wall_seconds": round(time.time() - start, 1), "cached": False}
    timings.write_text(json.dumps(old, indent=1))
    return html


# --------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nnae_utils.pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="default", help="profiles/<name>.yaml (default: default)")
    parser.add_argument("--only", action="append", help="run only this stage (repeatable, or comma-separated)")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="[STAGE.]KEY=VALUE", help="override a parameter")
    parser.add_argument("--force", action="store_true", help="recompute stages even when cached")
    parser.add_argument("--run-dir", help="run folder (default: runs/<profile>)")
    parser.add_argument("--book", action="store_true", help="build the book after the stages")
    parser.add_argument("--book-only", action="store_true", help="build the book from existing executed notebooks")
    parser.add_argument("--book-output", help="folder that receives _build/html (default: the run folder)")
    parser.add_argument("--allow-unrun-profile", action="store_true", help="run a profile marked as not run here")
    parser.add_argument("--list", action="store_true", help="list profiles and stages, then exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.list:
        for name in list_profiles():
            prof = load_profile(name)
            print(f"{name:10s} {'' if prof.run_here else '[not run here] '}{prof.description.strip()}")
        print("stages:", ", ".join(f"{s.name} ({s.notebook})" for s in STAGES))
        return 0
    only = [x for item in (args.only or []) for x in item.split(",") if x]
    run_dir = Path(args.run_dir) if args.run_dir else PROJECT_ROOT / "runs" / args.profile
    try:
        if not args.book_only:
            records = run_pipeline(
                args.profile, only=only, overrides=args.param, force=args.force,
                run_dir=run_dir, allow_unrun_profile=args.allow_unrun_profile,
            )
            for name, rec in records.items():
                state = "cached" if rec["cached"] else f"{rec['wall_seconds']:.0f} s"
                print(f"stage {name}: {state}")
        if args.book or args.book_only:
            html = build_book(run_dir, args.book_output)
            print(f"book: {html / 'index.html'}")
    except (ParameterError, MissingInputError, PipelineError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, (ParameterError, MissingInputError)) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
