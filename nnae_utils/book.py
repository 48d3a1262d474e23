"""The book, built from a run folder: the stage notebooks the pipeline executed, with the pages that
depend on the run (the landing page's findings, results at a glance and summary figure, the stage
map, the measured run times, the profiles, the benchmarks and the API reference), the table of
contents cut to the stages that ran, and the files it serves offline.

:func:`build_book` assembles the source tree (:func:`assemble_book`) in ``<run_dir>/book_src`` and
builds it with ``jupyter-book build -W`` (Sphinx warnings are errors). The command line is the
pipeline's (``python -m nnae_utils.pipeline ... --book`` or ``--book-only``).

Nothing a stage computes depends on this module, so :func:`nnae_utils.pipeline.source_hash` leaves it
out of the stage cache keys: editing a sentence of the book rebuilds the book, not the stages.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import yaml

from .io import write_json
from .pipeline import PROJECT_ROOT, PipelineError, list_profiles, load_profile, read_stage_record, resolve_params
from .stages import STAGES, Stage

log = logging.getLogger("nnae_utils.book")

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
// Written by nnae_utils.book.assemble_book; loaded between require.js and the widget manager.
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
