"""The book of the smoke run, opened page by page in a real browser, offline.

Headless Chromium (Debian's ``chromium``, driven by Playwright from npm's ``playwright-core``, which
downloads no browser) loads every HTML page of the book from a local HTTP server on 127.0.0.1 and
fails the test on: console errors and uncaught exceptions, failed requests, any request to another
host (blocked, as it would fail for an offline reader), images that did not load, internal links to
a missing page or anchor, math that MathJax did not typeset, and saved widgets that did not render.
On the explorer's page (stage 3's chapter) its widget controls must be there, and moving the static
explorer's slider must change its image (two screenshots differ; its controls are linked to
precomputed images in the browser, with no kernel). Every chapter's code
cells are folded (none shown without a click), and the landing page opens with its "results at a
glance" table, one row per question, each row linking to a page of the book that exists. The
landing page and the explorer are saved as screenshots under ``runs/test-artifacts/``, and each
page's height at 1280 px wide is written to ``runs/test-artifacts/page-heights.txt``.

The check itself is ``tests/book_browser_check.cjs`` (it also runs alone, e.g. on the default
profile's book). Without Chromium the test is skipped, except under CI (``CI=true``), where a
missing browser is a failure: ``.ci/run`` installs it.
"""
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from nnae_utils.book import NODE_MODULES
from nnae_utils.pipeline import PROJECT_ROOT
from nnae_utils.stages import STAGES

CHECK_SCRIPT = PROJECT_ROOT / "tests" / "book_browser_check.cjs"
ARTIFACTS = PROJECT_ROOT / "runs" / "test-artifacts"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
BROWSER_BUDGET_S = 240  # the whole browser check of the smoke book; it takes about 40 s on 2 busy cores


def _missing(what: str) -> None:
    """Skip, or fail under CI, where everything the test needs is installed by .ci/run and make."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what} (CI=true: the browser check must run in CI)")
    pytest.skip(what)


def find_chromium() -> str | None:
    """``$CHROMIUM``, or the first Chromium on PATH."""
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


def explorer_page(html: Path) -> str:
    """Stage 3's chapter (the widget explorer), relative to the book's root; '' if the book has none."""
    stage3 = next((s for s in STAGES if s.folder.startswith("03_")), None)
    if stage3 is None or not (html / "notebooks" / f"{stage3.folder}.html").is_file():
        return ""
    return f"notebooks/{stage3.folder}.html"


@pytest.mark.slow
def test_every_page_of_the_smoke_book_works_offline_in_chromium(smoke_book, capsys):
    html, _, build = smoke_book
    assert build.returncode == 0, "the smoke book did not build (see test_pipeline's book test)\n" + build.stderr[-3000:]
    chromium = find_chromium()
    if chromium is None:
        _missing("Chromium is not installed (apt-get install chromium), so the book was not checked in a browser")
    node = shutil.which("node")
    if node is None or not (NODE_MODULES / "playwright-core" / "package.json").is_file():
        _missing("node or book_assets/node_modules/playwright-core is missing: run `make book-assets`")

    explorer = explorer_page(html)
    if ARTIFACTS.exists():
        shutil.rmtree(ARTIFACTS)
    ARTIFACTS.mkdir(parents=True)
    report_file = ARTIFACTS / "browser-report.json"
    start = time.time()
    proc = subprocess.run(
        [node, str(CHECK_SCRIPT), "--root", str(html), "--chromium", chromium, "--node-modules", str(NODE_MODULES),
         "--shots", str(ARTIFACTS), "--explorer", explorer, "--report", str(report_file)],
        capture_output=True, text=True, timeout=BROWSER_BUDGET_S + 120,
    )
    elapsed = time.time() - start
    assert proc.returncode in (0, 1) and report_file.is_file(), f"the browser check could not run:\n{proc.stderr[-4000:]}"
    report = json.loads(report_file.read_text())

    pages = [p["page"] for p in report["pages"]]
    uncaptioned = {p["page"]: len(p["uncaptionedFigures"]) for p in report["pages"] if p.get("uncaptionedFigures")}
    with capsys.disabled():
        print(f"\n[book browser check] {len(pages)} pages checked in Chromium in {elapsed:.0f} s "
              f"({report['seconds']:.0f} s in the browser); explorer page: {explorer or 'none in this book'}")
        for name, path in sorted(report["screenshots"].items()):
            print(f"[book browser check] screenshot {name}: {path}")
        print(f"[book browser check] report: {report_file}")
        if uncaptioned:
            print(f"[book browser check] figures without a caption: {uncaptioned}")
    heights = ARTIFACTS / "page-heights.txt"
    heights.write_text("".join(f"{p['page']}\t{p.get('height')}\n" for p in report["pages"]))

    assert not report["problems"], "the book has problems in a browser:\n" + "\n".join(report["problems"][:60])
    assert not uncaptioned, f"every figure a notebook draws has a caption (mystnb figure metadata); without: {uncaptioned}"
    for page in ["index.html", "book/intro.html", "book/reproduce.html", "book/api/index.html", "notebooks/01_data.html"]:
        assert page in pages, page
    assert "landing" in report["screenshots"] and Path(report["screenshots"]["landing"]).is_file()
    landing = next(p for p in report["pages"] if p["page"] == "book/intro.html")
    chapters = [s for s in STAGES if (html / "notebooks" / f"{s.folder}.html").is_file()]
    questions = len(yaml.safe_load((PROJECT_ROOT / "book" / "findings" / "glance.yaml").read_text())["rows"])
    assert landing["glanceRows"] == questions and landing["glanceLinks"] >= questions, landing
    for stage in chapters:
        chapter = next(p for p in report["pages"] if p["page"] == f"notebooks/{stage.folder}.html")
        assert chapter["codeCells"] > 0 and chapter["visibleCodeCells"] == 0, chapter
    if explorer:
        explorer_report = next(p for p in report["pages"] if p["page"] == explorer)
        assert explorer_report["widgetControls"] > 0 and explorer_report["widgetsRendered"] > 0
        assert Path(report["screenshots"]["explorer"]).is_file()
        # the static explorer's slider changes its image in the browser, without a kernel
        assert explorer_report.get("staticExplorer") and explorer_report["staticExplorer"]["changed"], explorer_report
        assert Path(report["screenshots"]["staticBefore"]).is_file() and Path(report["screenshots"]["staticAfter"]).is_file()
    # the saved widgets of any page (progress bars, the explorer) rendered, from the book's own files
    assert sum(p.get("widgetsRendered", 0) for p in report["pages"]) > 0
    assert elapsed < BROWSER_BUDGET_S, f"the browser check took {elapsed:.0f} s"


def test_the_book_config_loads_nothing_from_a_cdn():
    """Fast and browser-free: the configuration points MathJax and the widget manager at the
    book's own files, and those come from the npm lockfile."""
    import yaml

    config = yaml.safe_load((PROJECT_ROOT / "_config.yml").read_text())["sphinx"]["config"]
    assert "://" not in config["mathjax_path"]
    assert config["nb_ipywidgets_js"] and all("://" not in path for path in config["nb_ipywidgets_js"])
    lock = json.loads((PROJECT_ROOT / "book_assets" / "package-lock.json").read_text())["packages"]
    html_manager = lock["node_modules/@jupyter-widgets/html-manager"]["version"]
    assert html_manager.startswith("1."), "ipywidgets 8 needs @jupyter-widgets/html-manager 1.x"
    assert lock["node_modules/mathjax"]["version"].startswith("3.")
