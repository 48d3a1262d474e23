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
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import subprocess
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


# --------------------------------------------------------------------------- the book

BOOK_ASSETS = PROJECT_ROOT / "book_assets"
"""npm project (package.json + package-lock.json) of the files the book serves itself; ``make`` runs ``npm ci`` there."""
NODE_MODULES = BOOK_ASSETS / "node_modules"

PLANNED_STAGES = {
    1: "The policy zoo and the state dataset",
    2: "Layer autoencoders with the functional loss",
    3: "Decoded networks deployed in Hopper",
    4: "Evolution in the latent space",
    5: "Latent evolution inside CERL",
    6: "The paper's Figure 3, claim by claim",
}
"""The suite's stages by number (ARCHITECTURE.md). The landing page names each of them: with its
findings when this run computed it, and saying so when it did not run or does not exist yet."""

OFFLINE_ASSETS = (
    # (npm package, path inside it, destination under _static/offline/, files left out)
    ("mathjax", "es5", "mathjax", ("*.map", "node-main.js")),
    ("requirejs", "require.js", "require.js", ()),
    ("@jupyter-widgets/html-manager", "dist", "@jupyter-widgets/html-manager/dist",
     ("*.map", "embed.js", "embed.js.LICENSE.txt", "libembed-amd.js")),
    # the icon fonts again where the bundled @jupyter-widgets/base and /controls modules look for them
    ("@jupyter-widgets/html-manager", "dist", "@jupyter-widgets", ("*.js", "*.map", "*.txt")),
)
"""What the book serves instead of CDNs: MathJax 3, require.js, and the widget manager of ipywidgets 8
with its icon fonts. Copied at assembly time from ``book_assets/node_modules`` (never committed)."""

WIDGETS_SETUP_JS = """\
// Written by nnae_utils.pipeline.assemble_book; loaded between require.js and the widget manager.
// 1. Points require.js' baseUrl at the folder of this file (_static/offline/): the widget manager
//    derives the URL of its icon fonts from its AMD modules' URLs, which require.js resolves against
//    baseUrl; without this they would be fetched relative to each page, and miss.
// 2. Jupyter widgets typeset their labels with MathJax 2's API (MathJax.Hub.Queue); the book loads
//    MathJax 3, which has no Hub, so every widget with a label would throw. The shim hands the
//    label to MathJax 3 instead. (The widgets render on "load", after this DOMContentLoaded hook.)
(function () {
  var src = document.currentScript.src;
  require.config({ baseUrl: src.slice(0, src.lastIndexOf("/") + 1) });
  document.addEventListener("DOMContentLoaded", function () {
    var mj = window.MathJax;
    if (!mj || mj.Hub) return;
    mj.Hub = {
      Queue: function (job) {
        var element = Array.isArray(job) ? job[2] : null;
        var ready = (mj.startup && mj.startup.promise) || Promise.resolve();
        ready.then(function () {
          if (mj.typesetPromise) return mj.typesetPromise(element ? [element] : undefined);
        }).catch(function (err) { console.warn("MathJax could not typeset a widget label:", err); });
      },
    };
  });
})();
"""

STAGE_PLACEHOLDER = "@NOTEBOOK@"
"""Stands for the stage's executed notebook (``/notebooks/<folder>.ipynb``) in ``book/findings/stage<N>.md``."""


def stage_number(stage: Stage) -> int:
    """``01_data`` -> 1."""
    return int(stage.folder.split("_", 1)[0])


def assemble_book(run_dir: Path) -> Path:
    """A book source tree in ``run_dir/book_src``: config, pages, the executed notebooks, the pages
    generated from the run's records, and the offline assets.

    A stage whose executed notebook is not in the run is left out of the table of contents, and the
    landing page says that it did not run.
    """
    run_dir = Path(run_dir)
    src = run_dir / "book_src"
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    shutil.copy2(PROJECT_ROOT / "_config.yml", src / "_config.yml")
    shutil.copytree(PROJECT_ROOT / "book", src / "book")
    generated = src / "book" / "_generated"
    generated.mkdir(exist_ok=True)

    toc = yaml.safe_load((PROJECT_ROOT / "_toc.yml").read_text())
    in_toc = {s.name for s in STAGES if _toc_has(toc, f"notebooks/{s.folder}")}
    ran = {s.name for s in STAGES if (run_dir / "executed" / f"{s.folder}.ipynb").is_file()}
    (src / "notebooks").mkdir()
    for stage in STAGES:
        if stage.name not in in_toc:
            continue
        if stage.name in ran:
            executed = run_dir / "executed" / f"{stage.folder}.ipynb"
            _copy_for_book(executed, src / "notebooks" / f"{stage.folder}.ipynb", chapter_opener(stage, executed))
        else:
            log.warning("the book leaves out stage %s: %s has no executed notebook", stage.name, run_dir)
            _toc_remove(toc, f"notebooks/{stage.folder}")
    (src / "_toc.yml").write_text(yaml.safe_dump(toc, sort_keys=False))
    status = {s.name: ("not run" if s.name not in ran else "chapter" if s.name in in_toc else "not in toc")
              for s in STAGES}

    profile = profile_of_run(run_dir)
    (generated / "findings.md").write_text(findings_markdown(run_dir, status, profile))
    (generated / "profile_note.md").write_text(_profile_note(run_dir, profile) + "\n")
    (generated / "glance.md").write_text(glance_markdown(run_dir, status, profile))
    (generated / "summary_figure.md").write_text(summary_figure_markdown(run_dir, status, generated))
    (generated / "stage_map.md").write_text(stage_map_markdown(status))
    (generated / "run_times.md").write_text(run_times_table(run_dir, profile))
    (generated / "profiles.md").write_text(profiles_table())
    (generated / "benchmarks.md").write_text(benchmarks_markdown(generated))
    write_api_pages(src / "book")
    copy_offline_assets(src / "_assets" / "offline")
    return src


def _toc_entries(node: Any):
    """Every mapping of a _toc.yml (root, parts, chapters, sections), depth first."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _toc_entries(value)
    elif isinstance(node, list):
        for item in node:
            yield from _toc_entries(item)


def _toc_has(toc: Any, file: str) -> bool:
    return any(entry.get("file") == file for entry in _toc_entries(toc))


def _toc_remove(toc: Any, file: str) -> None:
    """Remove the entry of ``file`` (and a part left without chapters)."""
    for entry in list(_toc_entries(toc)):
        for key in ("chapters", "sections"):
            if isinstance(entry.get(key), list):
                entry[key] = [e for e in entry[key] if not (isinstance(e, dict) and e.get("file") == file)]
                if not entry[key]:
                    del entry[key]
    if isinstance(toc.get("parts"), list):
        toc["parts"] = [p for p in toc["parts"] if p.get("chapters")]


LONG_TABLE_ROWS = 15
"""A code cell whose only output is a table of more rows than this is folded in the book too."""


def _book_tags(cell: Any) -> list[str]:
    """The book's tags for one code cell of an executed notebook: its code behind a toggle
    (``hide-input``); a cell that only glues numbers for the text, or keeps the stage's books,
    without its code (``remove-input``), and its printed bookkeeping folded (``hide-output``); a
    cell whose output is a long table, folded."""
    tags = list(cell.metadata.get("tags", []))
    if "parameters" in tags:
        return ["remove-cell"]  # the notebook's defaults: the injected cell holds this run's values
    if "injected-parameters" in tags:
        return ["hide-input"]
    outputs = [o for o in cell.get("outputs", []) if "scrapbook" not in o.get("metadata", {})]
    data = [o.get("data", {}) for o in outputs]
    rich = any(k.startswith("image/") or k in ("text/html", "application/vnd.jupyter.widget-view+json")
               for d in data for k in d)
    new = []
    if "glue(" in cell.source and not rich:
        new.append("remove-input")
        if outputs:
            new.append("hide-output")
    else:
        new.append("hide-input")
        tables = [d["text/html"] for d in data if "text/html" in d]
        html = "".join(t if isinstance(t, str) else "".join(t) for t in tables)
        if (tables and not any(k.startswith("image/") for d in data for k in d)
                and html.count("<tr") > LONG_TABLE_ROWS + 1):
            new.append("hide-output")
    return [t for t in new if t not in tags]


def _copy_for_book(executed: Path, destination: Path, opener: str | None = None) -> None:
    """Copy an executed notebook for the book: code cells folded (:func:`_book_tags`; the
    parameters cell dropped, the injected values this run used kept behind a toggle), and
    ``opener``, the chapter's question and answer, put right under its title."""
    import nbformat

    nb = nbformat.read(executed, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            tags = cell.metadata.setdefault("tags", [])
            tags.extend(_book_tags(cell))
    if opener and nb.cells and nb.cells[0].cell_type == "markdown":
        title, _, rest = nb.cells[0].source.lstrip().partition("\n")
        if title.startswith("# "):
            nb.cells[0].source = f"{title}\n\n{opener.strip()}\n\n{rest.lstrip()}"
        else:
            nb.cells.insert(0, nbformat.v4.new_markdown_cell(opener.strip()))
    nbformat.write(nb, destination)


OPENERS = PROJECT_ROOT / "book" / "openers"
"""``stage<N>.md``: the question and answer that open stage N's chapter (see its README)."""


def chapter_opener(stage: Stage, executed: Path) -> str | None:
    """The admonition that opens the stage's chapter, its numbers glued from the same notebook;
    ``None`` if the stage has none."""
    template = OPENERS / f"stage{stage_number(stage)}.md"
    if not template.is_file():
        return None
    text = template.read_text()
    wanted = set(re.findall(r"\{glue:text\}`([A-Za-z0-9_]+)`", text))
    missing = wanted - glue_keys(executed)
    if missing:
        raise PipelineError(
            f"book/openers/stage{stage_number(stage)}.md pastes {sorted(missing)}, which {stage.notebook} no "
            "longer glues; update the page or the notebook"
        )
    return text


def glue_keys(notebook: Path) -> set[str]:
    """Names the executed notebook glued with ``myst_nb.glue``."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    return {
        output["metadata"]["scrapbook"]["name"]
        for cell in nb.cells if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if "scrapbook" in output.get("metadata", {})
    }


def profile_of_run(run_dir: Path) -> str | None:
    """The profile whose parameters every stage of the run was computed with (``None``: none matches,
    e.g. a run with ``-p`` overrides or with no stage run)."""
    records = {s.name: read_stage_record(run_dir, s) for s in STAGES}
    records = {name: rec for name, rec in records.items() if rec and "params" in rec}
    if not records:
        return None

    def comparable(params: Mapping[str, Any]) -> str:
        return json.dumps({k: v for k, v in params.items() if k != "run_dir"}, sort_keys=True, default=str)

    preferred = [run_dir.name] if run_dir.name in list_profiles() else []
    for name in preferred + [p for p in list_profiles() if p not in preferred]:
        try:
            params = resolve_params(load_profile(name), {}, run_dir)
        except Exception as exc:  # a profile this machine cannot resolve is not the run's profile
            log.debug("profile %s does not resolve: %s", name, exc)
            continue
        if all(comparable(json.loads(json.dumps(params[n].to_dict()))) == comparable(rec["params"])
               for n, rec in records.items()):
            return name
    return None


def findings_markdown(run_dir: Path, status: Mapping[str, str], profile: str | None) -> str:
    """The landing page's findings: one paragraph per planned stage, its numbers glued from the
    stage's executed notebook (``{glue:text}`/notebooks/<folder>::key:s```), a link to its chapter;
    or a sentence saying that the stage did not run here, or does not exist yet."""
    by_number = {stage_number(s): s for s in STAGES}
    parts = []  # the profile note opens the landing page's results (assemble_book writes it apart)
    for number, title in sorted({**PLANNED_STAGES, **{n: s.folder for n, s in by_number.items()
                                                       if n not in PLANNED_STAGES}}.items()):
        stage = by_number.get(number)
        head = f"**Stage {number} · {title}.**"
        if stage is None or not (PROJECT_ROOT / stage.notebook).is_file():
            parts.append(f"{head} Not part of the suite yet: its notebook is being written, so this book has no "
                         "results for it.")
            continue
        if status[stage.name] == "not run":
            parts.append(f"{head} Not run for this book (`{stage.notebook}` has no executed notebook in the run "
                         f"folder); run it with `python -m nnae_utils.pipeline --only {stage.name}`.")
            continue
        if status[stage.name] == "not in toc":
            parts.append(f"{head} Computed, but its notebook `{stage.notebook}` is not in the book's `_toc.yml` "
                         "yet, so this book does not show it.")
            continue
        notebook = f"/notebooks/{stage.folder}"
        template = PROJECT_ROOT / "book" / "findings" / f"stage{number}.md"
        link = f"{{doc}}`chapter {number} <{notebook}>`"
        if not template.is_file():
            parts.append(f"{head} Its findings close its chapter, {link}.")
            continue
        source = f"{notebook}.ipynb"  # myst-nb resolves a glue reference's document by its file name
        text = template.read_text().strip().replace(STAGE_PLACEHOLDER, source)
        wanted = set(re.findall(r"\{glue:text\}`" + re.escape(source) + r"::([A-Za-z0-9_]+)(?::[^`]*)?`", text))
        missing = wanted - glue_keys(run_dir / "executed" / f"{stage.folder}.ipynb")
        if missing:
            raise PipelineError(
                f"book/findings/stage{number}.md pastes {sorted(missing)}, which {stage.notebook} no longer "
                "glues; update the page or the notebook"
            )
        parts.append(f"{head} {text} (From {link}.)")
    return "\n\n".join(parts) + "\n"


def glance_markdown(run_dir: Path, status: Mapping[str, str], profile: str | None) -> str:
    """The landing page's "results at a glance" table (``book/findings/glance.yaml``), a list-table:
    each row's cells glued from the stages it names, a long cell folded behind a dropdown; a row whose
    stages are not chapters of this book says so."""
    template = PROJECT_ROOT / "book" / "findings" / "glance.yaml"
    if not template.is_file():
        return ""
    spec = yaml.safe_load(template.read_text())
    by_number = {stage_number(s): s for s in STAGES}

    def cell(text: str, fold: str | None = None) -> str:
        text = " ".join(str(text).split()) or "n/a"
        return f"::::{{dropdown}} {fold}\n    {text}\n    ::::" if fold else text

    rows = [list(spec["header"])]
    for row in spec["rows"]:
        texts = {key: str(row.get(key, "")) for key in ("answer", "numbers")}
        numbers = {int(n) for n in re.findall(r"@(?:STAGE|CHAPTER)(\d+)@", " ".join(texts.values()))}
        stages = [by_number.get(n) for n in sorted(numbers | {int(row["section"])})]
        if any(s is None or status.get(s.name) != "chapter" for s in stages):
            rows.append([row["question"], "not computed for this book", "n/a", "n/a"])
            continue
        for stage in stages:
            source = f"/notebooks/{stage.folder}.ipynb"
            for key, text in texts.items():
                texts[key] = text = (text.replace(f"@STAGE{stage_number(stage)}@", source)
                                     .replace(f"@CHAPTER{stage_number(stage)}@", f"/notebooks/{stage.folder}"))
                wanted = set(re.findall(r"\{glue:text\}`" + re.escape(source) + r"::([A-Za-z0-9_]+)(?::[^`]*)?`", text))
                missing = wanted - glue_keys(run_dir / "executed" / f"{stage.folder}.ipynb")
                if missing:
                    raise PipelineError(
                        f"book/findings/glance.yaml pastes {sorted(missing)}, which {stage.notebook} no longer glues; "
                        "update the page or the notebook"
                    )
        section = by_number[int(row["section"])]
        rows.append([
            f"{row['question']} ({{doc}}`chapter {row['section']} </notebooks/{section.folder}>`)",
            cell(texts["answer"], row.get("fold_answer")), cell(texts["numbers"], row.get("fold_numbers")),
            " ".join(filter(None, [f"`{profile}`" if profile else "custom parameters", row.get("profile")])),
        ])
    out = [":::{list-table}", ":header-rows: 1"]
    if spec.get("widths"):
        out.append(":widths: " + " ".join(str(w) for w in spec["widths"]))
    out.append("")
    for r in rows:
        out.append(f"* - {r[0]}")
        out += [f"  - {c}" for c in r[1:]]
    return "\n".join(out + [":::"]) + "\n"


SUMMARY_FIGURE = (3, "Retention (decoded / input return) with 95% bootstrap CIs per layer")
"""The landing page's summary figure: the figure of this stage's chapter whose caption starts so."""


def summary_figure_markdown(run_dir: Path, status: Mapping[str, str], figures: Path) -> str:
    """The landing page's one figure, copied from the executed chapter that drew it (its caption and
    a link to the chapter with it); empty if that chapter is not in the book or no longer draws it."""
    import base64

    import nbformat

    number, caption_start = SUMMARY_FIGURE
    stage = next((s for s in STAGES if stage_number(s) == number), None)
    if stage is None or status.get(stage.name) != "chapter":
        return ""
    nb = nbformat.read(run_dir / "executed" / f"{stage.folder}.ipynb", as_version=4)
    for cell in nb.cells:
        caption = cell.metadata.get("mystnb", {}).get("figure", {}).get("caption", "")
        if cell.cell_type != "code" or not caption.startswith(caption_start):
            continue
        for output in cell.get("outputs", []):
            if "image/png" in output.get("data", {}):
                (figures / "summary_figure.png").write_bytes(base64.b64decode(output["data"]["image/png"]))
                return (f"```{{figure}} _generated/summary_figure.png\n:name: fig-summary\n\n{caption} "
                        f"From {{doc}}`chapter {number} </notebooks/{stage.folder}>`.\n```\n")
    log.warning("the landing page has no summary figure: %s draws none captioned %r", stage.notebook, caption_start)
    return ""


def _profile_note(run_dir: Path, profile: str | None) -> str:
    if profile is None:
        return (":::{note}\nThis book was built from the run folder `" + run_dir.name + "`, computed with "
                "parameters that match none of the profiles (`-p` overrides, or stages run with different "
                "profiles); each chapter shows the parameters it ran with. Every number below is pasted from "
                "the chapter that computed it.\n:::")
    description = _plain(load_profile(profile).description)
    kind = "warning" if profile == "smoke" else "note"
    return (f":::{{{kind}}}\nThis book shows a run of the **`{profile}`** profile: {description} Every number "
            "below is pasted from the chapter that computed it.\n:::")


def _plain(text: str) -> str:
    """Free text as one Markdown line whose ``--`` stays two hyphens (smart quotes would make it a dash)."""
    return " ".join(text.split()).replace("--", r"\-\-").replace("|", r"\|")


def stage_map_markdown(status: Mapping[str, str]) -> str:
    """The table of the suite's stages on the landing page, linking the chapters this book has."""
    by_number = {stage_number(s): s for s in STAGES}
    rows = ["| stage | chapter | in this book |", "|---|---|---|"]
    for number, title in sorted(PLANNED_STAGES.items()):
        stage = by_number.get(number)
        if stage is None or not (PROJECT_ROOT / stage.notebook).is_file():
            rows.append(f"| {number} · {title} | (being written) | no |")
        elif status[stage.name] == "chapter":
            rows.append(f"| {number} · {title} | {{doc}}`/notebooks/{stage.folder}` | yes |")
        else:
            rows.append(f"| {number} · {title} | `{stage.notebook}` | {status[stage.name]} |")
    return "\n".join(rows) + "\n"


def run_times_table(run_dir: Path, profile: str | None = None) -> str:
    """A Markdown table of the stage wall times measured in ``run_dir`` (its stage records and ``timings.json``)."""
    timings = run_dir / "timings.json"
    records = {s.name: read_stage_record(run_dir, s) for s in STAGES}
    rows = []
    total = 0.0
    for s in STAGES:
        rec = records[s.name]
        if rec is None:
            rows.append(f"| {s.folder} | `--only {s.name}` | not run | | |")
            continue
        total += rec["wall_seconds"]
        rows.append(f"| {s.folder} | `--only {s.name}` | {rec['wall_seconds'] / 60:.1f} | {rec.get('cores', '?')} "
                    f"| {rec.get('finished', '?')} |")
    rows.append(f"| **all stages** | | **{total / 60:.1f}** | | |")
    book = json.loads(timings.read_text()).get("book") if timings.is_file() else None
    note = (f"The previous build of this book from the same run took {book['wall_seconds']:.0f} s.\n"
            if book else "")
    which = f"a run of the `{profile}` profile" if profile else "a run with custom parameters"
    return (
        f"Measured in the run folder `{run_dir.name}` ({which}) that this book was built from: the wall time "
        "of the last computation of each stage, on a machine with the cores shown.\n\n"
        "| stage | pipeline option | minutes | cores | finished |\n|---|---|---|---|---|\n"
        + "\n".join(rows) + "\n\n" + note
    )


BENCHMARK_RESULTS = PROJECT_ROOT / "benchmarks" / "results"


BENCHMARKS_PAGE = PROJECT_ROOT / "book" / "_ext" / "benchmarks_page.py"
"""Writes the Benchmarks page's prose and tables; kept out of the package so that editing it leaves the stage caches valid."""


def benchmarks_markdown(figures: Path) -> str:
    """The book's page of committed benchmark results (``BENCHMARK_RESULTS``), read when the book
    is built by ``book/_ext/benchmarks_page.py``; a figure a benchmark drew is copied into
    ``figures``. A benchmark with no committed result says so."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("nnae_book_benchmarks_page", BENCHMARKS_PAGE)
    page = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(page)
    return page.markdown(BENCHMARK_RESULTS, figures)


def profiles_table() -> str:
    """A Markdown table of the profiles and their descriptions (``profiles/*.yaml``)."""
    rows = ["| profile | what it is for |", "|---|---|"]
    for name in list_profiles():
        prof = load_profile(name)
        note = "" if prof.run_here else " **Not run on this kind of machine.**"
        rows.append(f"| `{name}` | {_plain(prof.description)}{note} |")
    return "\n".join(rows) + "\n"


def api_modules() -> list[str]:
    """Public modules of ``nnae_utils``, each documented on its own page of the book."""
    import pkgutil

    import nnae_utils

    return [f"nnae_utils.{m.name}" for m in pkgutil.iter_modules(nnae_utils.__path__) if not m.name.startswith("_")]


def write_api_pages(book: Path) -> None:
    """``book/api/<module>.md``: one autodoc page per module (the toc globs them), and the table of
    modules that ``book/api/index.md`` includes."""
    (book / "api").mkdir(exist_ok=True)
    modules = api_modules()
    for module in modules:
        (book / "api" / f"{module}.md").write_text(
            f"# `{module}`\n\n```{{eval-rst}}\n.. automodule:: {module}\n```\n"
        )
    listing = "\n".join(f"   {m}" for m in modules)
    (book / "_generated" / "api_modules.md").write_text(f"```{{eval-rst}}\n.. autosummary::\n\n{listing}\n```\n")


def copy_offline_assets(destination: Path) -> None:
    """Copy MathJax, require.js and the widget manager from ``book_assets/node_modules`` (``make``
    installs them with ``npm ci``) to ``destination``, which the book serves as ``_static/offline``."""
    missing = [pkg for pkg, *_ in OFFLINE_ASSETS if not (NODE_MODULES / pkg / "package.json").is_file()]
    if missing:
        raise PipelineError(
            f"the book serves MathJax, require.js and the widget manager itself, but {missing} are not installed "
            f"in {NODE_MODULES}; run `make book-assets` (npm ci in book_assets/)"
        )
    destination.mkdir(parents=True, exist_ok=True)
    notice = ["Served by the book instead of CDNs; copied from npm packages (book_assets/package-lock.json).", ""]
    for package, inner, target, leave_out in OFFLINE_ASSETS:
        source, out = NODE_MODULES / package / inner, destination / target
        out.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, out, ignore=shutil.ignore_patterns(*leave_out), dirs_exist_ok=True)
        else:
            shutil.copy2(source, out)
        meta = json.loads((NODE_MODULES / package / "package.json").read_text())
        notice.append(f"{package} {meta['version']} ({meta.get('license', '?')}): {target}/")
    (destination / "widgets-setup.js").write_text(WIDGETS_SETUP_JS)
    (destination / "NOTICE.txt").write_text("\n".join(notice) + "\n")


def build_book(run_dir: str | os.PathLike, output_dir: str | os.PathLike | None = None) -> Path:
    """Build the Jupyter Book (Sphinx warnings are errors) from a run's executed notebooks."""
    run_dir = Path(run_dir)
    output_dir = Path(output_dir) if output_dir else run_dir
    start = time.time()
    src = assemble_book(run_dir)
    # a clean build: no page of an earlier build (a stage left out since, a renamed page) survives
    shutil.rmtree(output_dir / "_build", ignore_errors=True)
    cmd = [str(Path(sys.executable).with_name("jupyter-book")), "build", str(src), "--path-output", str(output_dir), "-W", "--keep-going"]
    log.info("building the book: %s", " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise PipelineError(f"the book build failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}")
    html = output_dir / "_build" / "html"
    timings = run_dir / "timings.json"
    old = json.loads(timings.read_text()) if timings.is_file() else {}
    old["book"] = {"wall_seconds": round(time.time() - start, 1), "cached": False}
    write_json(timings, old)
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
            html = build_book(run_dir, args.book_output)
            print(f"book: {html / 'index.html'}")
    except (ParameterError, MissingInputError, PipelineError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, (ParameterError, MissingInputError)) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
