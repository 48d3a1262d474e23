"""Fixtures shared by several test modules.

``zoo`` and ``stage2`` are synthetic stand-ins for stages 1 and 2 (see tests/synthetic.py), one per module.

The smoke run of the whole pipeline is computed once per test session, whichever module asks for it
first (tests/test_pipeline.py checks the run and its book; tests/test_book_browser.py opens that
book in Chromium), so that CI runs the smoke pipeline and builds its book only once.
"""
import subprocess
import sys
import time

import pytest

from nnae_utils.pipeline import PROJECT_ROOT
from synthetic import make_stage2, synthetic_zoo


def cli(*args, cwd=PROJECT_ROOT, timeout=900):
    """``python -m nnae_utils.pipeline ARGS`` in a subprocess, as a user would run it."""
    return subprocess.run([sys.executable, "-m", "nnae_utils.pipeline", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """``(run_dir, seconds, process)`` of ``--profile smoke`` run into a fresh folder."""
    run_dir = tmp_path_factory.mktemp("smoke")
    start = time.time()
    proc = cli("--profile", "smoke", "--run-dir", str(run_dir))
    elapsed = time.time() - start
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return run_dir, elapsed, proc


@pytest.fixture(scope="session")
def smoke_book(smoke_run):
    """``(html_dir, seconds, process)`` of the book built (``--book-only``) from the smoke run.

    Not asserted here: tests/test_pipeline.py checks that the build succeeded and shows why not.
    """
    run_dir, _, _ = smoke_run
    start = time.time()
    proc = cli("--profile", "smoke", "--run-dir", str(run_dir), "--book-only")
    return run_dir / "_build" / "html", time.time() - start, proc


@pytest.fixture(scope="module")
def zoo():
    """A synthetic zoo of 9 tiny networks from 3 "runs": ``{"train": 6, "test": 3}``."""
    nets = synthetic_zoo()
    return {"train": nets[:6], "test": nets[6:]}


@pytest.fixture(scope="module")
def stage2(zoo, tmp_path_factory):
    """A stage-2 folder (untrained autoencoders, fitted PCA) built on ``zoo["train"]``."""
    return make_stage2(tmp_path_factory.mktemp("stage2"), zoo["train"])
