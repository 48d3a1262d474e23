"""Run the stage notebooks in order with papermill, one run folder per profile, with caching.

Command line::

    python -m nnae_utils.pipeline --profile smoke                     # every stage
    python -m nnae_utils.pipeline --profile default --only data -p data.n_runs=3
    python -m nnae_utils.pipeline --profile default --book            # stages, then the book
    python -m nnae_utils.pipeline --list                              # profiles and stages
    python -m nnae_utils.pipeline --profile paper --backend ray:auto  # on a Ray cluster

Parameters come from ``profiles/<profile>.yaml`` plus ``-p [stage.]key=value`` overrides (values
are YAML: ``-p data.actor_hidden=[32,32]``). They are validated by each stage's dataclass in
:mod:`nnae_utils.stages` before anything runs. A stage whose parameters, notebook, package source
and upstream results are unchanged is not recomputed (``--force`` recomputes it). A failing stage
is reported with its notebook and cell; the artifacts of the stages before it are kept.

Where the stages compute is the *backend* (:mod:`nnae_utils.backends`): ``local`` (the default) or
a Ray cluster (``ray:ADDRESS``), from the profile's ``backend:`` key or ``--backend``. It reaches
the notebooks through the environment variable ``NNAE_BACKEND``. Results do not depend on it, so
it is not part of any cache key: a stage computed on a cluster is up to date here, and vice versa.

``--book`` and ``--book-only`` build the book from the run folder with :func:`nnae_utils.book.build_book`.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import yaml

from .backends import ENV_VAR as BACKEND_ENV_VAR, PORTABLE_KERNELS, RAY_HINT, RaySettings, kernel_environment, parse_backend
from .io import write_json
from .published import digest as published_digest
from .stages import STAGE_RECORD, STAGES, STAGES_BY_NAME, MissingInputError, ParameterError, Stage, StageParams

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PROFILE_DIR = PROJECT_ROOT / "profiles"
PACKAGE_DIR = PROJECT_ROOT / "nnae_utils"
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
    backend: str = "local"
    """Where the stages compute (``local`` or ``ray:ADDRESS``, see :mod:`nnae_utils.backends`); ``--backend`` overrides it."""


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
    backend = str(raw.get("backend") or "local")
    check_backend(backend, need_ray=False)
    return Profile(name, raw.get("description", ""), bool(raw.get("run_here", True)), merged, backend)


def check_backend(spec: str, *, need_ray: bool = True) -> str:
    """A valid backend name (``local``, ``ray:ADDRESS``), and Ray importable if it names a Ray cluster."""
    import importlib.util

    try:
        settings = parse_backend(spec)
    except ValueError as exc:
        raise ParameterError(f"backend: {exc}") from None
    if need_ray and isinstance(settings, RaySettings) and importlib.util.find_spec("ray") is None:
        raise ParameterError(f"backend {spec!r}: {RAY_HINT}")
    return spec


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


NOT_HASHED = frozenset({"book.py"})
"""Modules of ``nnae_utils`` left out of :func:`source_hash`: the book's assembly (:mod:`nnae_utils.book`)
reads a run's folders after the stages have run, and nothing a stage computes depends on it, so a
sentence edited there must rebuild the book, not every stage."""


def source_hash(package: Path = PACKAGE_DIR) -> str:
    """Hash of the package's source (but :data:`NOT_HASHED`), part of every cache key: a code fix never
    reuses stale results. ``package``: the package folder (another copy of it in the tests)."""
    h = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        if path.relative_to(package).as_posix() in NOT_HASHED:
            continue
        h.update(path.relative_to(package.parent).as_posix().encode())
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
    beside = getattr(params, "shown_beside", "")
    if beside:  # the chapter shows that profile's published run: a new publication recomputes it
        payload["published"] = published_digest(beside, stage.folder)
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


@contextlib.contextmanager
def _environment(variables: Mapping[str, str]) -> Iterator[None]:
    """``variables`` set in ``os.environ`` for the block (the kernels papermill starts inherit them), then restored."""
    previous = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _execute(stage: Stage, params: StageParams, running_nb: Path, failed_nb: Path) -> None:
    import papermill

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


def run_stage(stage: Stage, params: StageParams, run_dir: Path, key: str, backend: str = "local",
              native_kernels: bool = False) -> dict[str, Any]:
    """Execute one stage notebook with papermill; return its record (written to stage.json).

    The notebook's kernel inherits ``NNAE_BACKEND=backend`` (:mod:`nnae_utils.backends`) and, unless
    ``native_kernels``, CPU kernels capped at AVX2 (:data:`nnae_utils.backends.PORTABLE_KERNELS`), so
    that another x86-64 machine computes the same bits; the record says which (``cpu_kernels``). Workers
    of a Ray backend do not inherit it: set it in the cluster's environment.
    """
    executed_dir = run_dir / "executed"
    executed_dir.mkdir(parents=True, exist_ok=True)
    final_nb = executed_dir / f"{stage.folder}.ipynb"
    running_nb = executed_dir / f"{stage.folder}.running.ipynb"
    failed_nb = executed_dir / f"{stage.folder}.failed.ipynb"
    failed_nb.unlink(missing_ok=True)
    log.info("stage %s: running %s", stage.name, stage.notebook)
    start = time.time()
    with _environment({BACKEND_ENV_VAR: backend, **kernel_environment(native_kernels)}):
        cpu_kernels = {name: os.environ[name] for name in PORTABLE_KERNELS if name in os.environ} or "native"
        _execute(stage, params, running_nb, failed_nb)
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
        "backend": backend,
        "cpu_kernels": cpu_kernels,
    }
    stage_dir = run_dir / stage.folder
    if not stage_dir.is_dir():
        raise PipelineError(f"stage '{stage.name}' finished but wrote no artifact folder {stage_dir}")
    write_json(stage_dir / STAGE_RECORD, record)
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
    evolution, autoencoders = resolved["latent_evolution"], resolved["layer_autoencoders"]
    if "finetune_train" in evolution.starts and autoencoders.stop_on != "train_holdout":
        raise ParameterError("latent_evolution: starts lists finetune_train, which fine-tunes the train snapshots stage 2 "
                             "holds out of training, but layer_autoencoders.stop_on is "
                             f"{autoencoders.stop_on!r}; set it to train_holdout")
    return resolved


def run_pipeline(
    profile_name: str,
    *,
    only: Sequence[str] | None = None,
    overrides: Sequence[str] = (),
    force: bool = False,
    run_dir: str | os.PathLike | None = None,
    allow_unrun_profile: bool = False,
    backend: str | None = None,
    native_kernels: bool = False,
) -> dict[str, dict[str, Any]]:
    """Run the selected stages (all by default) in order; return each stage's record.

    ``backend``: where the stages compute (default: the profile's); not part of the cache keys.
    ``native_kernels``: let torch use the CPU's widest kernels instead of AVX2 ones (:func:`run_stage`).
    """
    profile = load_profile(profile_name)
    backend = check_backend(backend or profile.backend)
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
            records[stage.name] = {**run_stage(stage, params[stage.name], run_dir, key, backend, native_kernels),
                                    "cached": False}
        keys[stage.name] = key
    timings = run_dir / "timings.json"
    old = json.loads(timings.read_text()) if timings.is_file() else {}
    old.update({n: {"wall_seconds": r["wall_seconds"], "cached": r["cached"]} for n, r in records.items()})
    write_json(timings, old)
    return records


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
    parser.add_argument("--backend", metavar="local|ray:ADDRESS",
                        help="where stages compute: local, or a Ray cluster (ray:auto, ray:ray://HOST:10001, ray:local:N); "
                             "default: the profile's (local); results and caching do not depend on it")
    parser.add_argument("--native-kernels", action="store_true",
                        help="let torch use the CPU's widest kernels (AVX-512 where there is) instead of AVX2 ones, "
                             "whose results matched bitwise on the x86-64 machines checked (nnae_utils.backends.PORTABLE_KERNELS)")
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
                run_dir=run_dir, allow_unrun_profile=args.allow_unrun_profile, backend=args.backend,
                native_kernels=args.native_kernels,
            )
            for name, rec in records.items():
                state = "cached" if rec["cached"] else f"{rec['wall_seconds']:.0f} s"
                print(f"stage {name}: {state}")
        if args.book or args.book_only:
            from .book import build_book  # the book reads what the stages wrote: it sits below this module

            html = build_book(run_dir, args.book_output)
            print(f"book: {html / 'index.html'}")
    except (ParameterError, MissingInputError, PipelineError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, (ParameterError, MissingInputError)) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
