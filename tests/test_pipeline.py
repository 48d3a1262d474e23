"""The pipeline end to end on the smoke profile: papermill, caching, failures, the book."""
import json
import os
import platform
import subprocess
import sys

import pytest

from nnae_utils.backends import NATIVE_KERNELS_VAR, PORTABLE_KERNELS, kernel_environment
from nnae_utils.pipeline import PROJECT_ROOT, main
from nnae_utils.stages import STAGES

SMOKE_BUDGET_S = 300  # issue 2: the smoke profile runs the whole pipeline in 5 minutes or less


def cli(*args, cwd=PROJECT_ROOT, timeout=900):
    return subprocess.run([sys.executable, "-m", "nnae_utils.pipeline", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


# smoke_run and smoke_book: session fixtures in tests/conftest.py, shared with tests/test_book_browser.py


@pytest.mark.slow
def test_smoke_pipeline_runs_every_stage_within_budget(smoke_run):
    run_dir, elapsed, _ = smoke_run
    assert elapsed < SMOKE_BUDGET_S, f"smoke pipeline took {elapsed:.0f} s"
    for stage in STAGES:
        folder = run_dir / stage.folder
        assert (folder / "summary.json").is_file() and (folder / "stage.json").is_file()
        assert (run_dir / "executed" / f"{stage.folder}.ipynb").is_file()
        assert not folder.with_name(folder.name + ".partial").exists()
        if platform.machine() == "x86_64":  # each stage's kernel ran with torch's kernels capped at AVX2
            record = json.loads((folder / "stage.json").read_text())
            assert sorted(record["cpu_kernels"]) == sorted(PORTABLE_KERNELS), record["cpu_kernels"]
    summary = json.loads((run_dir / "01_data" / "summary.json").read_text())
    assert summary["n_networks"] > 0 and summary["n_runs"] == 3
    assert (run_dir / "01_data" / "zoo" / "index.json").is_file()
    assert (run_dir / "01_data" / "states.npz").is_file()


@pytest.mark.slow
def test_every_scored_network_rescores_exactly_with_numpy_and_gymnasium_alone(smoke_run):
    """The suite's standard: each network a stage reports a score for is in the open format, and a
    fresh process that knows only numpy, safetensors and gymnasium gets the same returns."""
    run_dir, _, _ = smoke_run
    indexes = sorted(str(p.relative_to(run_dir)) for p in run_dir.glob("0*/**/index.json"))
    assert indexes == ["01_data/zoo/index.json", "03_decoded_evaluation/decoded/index.json",
                       "04_latent_evolution/champions/index.json", "05_cerl_comparison/champions/index.json",
                       "05_cerl_comparison/migrants/index.json"]
    for index in indexes:
        proc = subprocess.run([sys.executable, str(PROJECT_ROOT / "scripts" / "rescore_network.py"), "--index",
                               str(run_dir / index)], capture_output=True, text=True, timeout=300)
        summary = json.loads(proc.stdout.splitlines()[-1])
        assert proc.returncode == 0 and summary["agree"] and summary["networks"] > 0, (index, summary)


@pytest.mark.slow
def test_second_run_recomputes_nothing(smoke_run):
    run_dir, _, _ = smoke_run
    before = (run_dir / "01_data" / "stage.json").read_text()
    proc = cli("--profile", "smoke", "--run-dir", str(run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    recomputed = [s.name for s in STAGES if f"stage {s.name}: cached" not in proc.stdout]
    assert not recomputed, f"recomputed {recomputed} (was nnae_utils edited during the test?)\n{proc.stdout}"
    assert (run_dir / "01_data" / "stage.json").read_text() == before


@pytest.mark.slow
def test_a_failing_stage_names_notebook_and_cell_and_keeps_earlier_artifacts(smoke_run, tmp_path):
    run_dir, _, _ = smoke_run
    summary_before = (run_dir / "01_data" / "summary.json").read_text()
    broken = tmp_path / "zoo_without_splits"
    broken.mkdir()
    (broken / "index.json").write_text("[]")  # passes the up-front check, fails when the zoo is loaded
    proc = cli("--profile", "smoke", "--run-dir", str(run_dir), "-p", f"data.zoo_source={broken}")
    assert proc.returncode == 1
    assert "stage 'data' failed in notebooks/01_data.ipynb, cell" in proc.stderr
    assert "splits.json" in proc.stderr
    assert (run_dir / "executed" / "01_data.failed.ipynb").is_file()
    # the finished artifacts of the earlier successful run are untouched
    assert (run_dir / "01_data" / "summary.json").read_text() == summary_before


@pytest.mark.slow
def test_book_builds_from_smoke_outputs_with_warnings_as_errors(smoke_book):
    html, _, proc = smoke_book
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    for page in ["index.html", "book/intro.html", "notebooks/01_data.html", "book/network_format.html",
                 "book/reproduce.html", "book/bibliography.html"]:
        assert (html / page).is_file(), page
    chapter = (html / "notebooks" / "01_data.html").read_text()
    assert "What this stage found" in chapter and "networks from" in chapter
    assert "01_data" in (html / "book" / "reproduce.html").read_text()  # measured run times table
    assert "This run" in chapter and "good enough to learn from" in chapter  # the chapter opens with its question
    assert "Results at a glance" in (html / "book" / "intro.html").read_text()
    assert (html / "book" / "limitations.html").is_file()


def test_book_folds_code_cells_glue_cells_and_long_tables():
    """The book's copy of an executed notebook: code behind a toggle, glue cells without their code,
    a long table folded; the parameters cell dropped."""
    import nbformat

    from nnae_utils.book import LONG_TABLE_ROWS, _book_tags

    def cell(source, outputs=(), tags=()):
        c = nbformat.v4.new_code_cell(source)
        c.outputs = [nbformat.from_dict(o) for o in outputs]
        c.metadata["tags"] = list(tags)
        return c

    table = "<table>" + "<tr><td>1</td></tr>" * (LONG_TABLE_ROWS + 5) + "</table>"
    html_out = {"output_type": "display_data", "data": {"text/html": table, "text/plain": "t"}, "metadata": {}}
    printed = {"output_type": "stream", "name": "stdout", "text": "stage artifacts: ..."}
    glued = {"output_type": "display_data", "data": {"text/plain": "'3'"},
             "metadata": {"scrapbook": {"name": "n_runs", "mime_prefix": ""}}}
    assert _book_tags(cell("x = 1", tags=["parameters"])) == ["remove-cell"]
    assert _book_tags(cell("x = 2", tags=["injected-parameters"])) == ["hide-input"]
    assert _book_tags(cell("fig = plot()")) == ["hide-input"]
    assert _book_tags(cell("frame", [html_out])) == ["hide-input", "hide-output"]
    assert _book_tags(cell('glue("n_runs", "3", display=False)\nprint(1)', [glued, printed])) == ["remove-input", "hide-output"]
    assert _book_tags(cell('glue("n_runs", "3", display=False)', [glued])) == ["remove-input"]
    assert _book_tags(cell('glue("n_runs", "3", display=False)\nframe', [glued, html_out])) == ["hide-input", "hide-output"]


def test_the_book_module_is_not_part_of_the_stage_cache_key(tmp_path):
    """Editing the book's assembly (nnae_utils/book.py) leaves every stage's cache key as it was;
    editing any other module of the package changes it."""
    import shutil

    from nnae_utils.pipeline import PACKAGE_DIR, source_hash

    package = tmp_path / PACKAGE_DIR.name
    shutil.copytree(PACKAGE_DIR, package, ignore=shutil.ignore_patterns("__pycache__"))
    before = source_hash(package)
    assert before == source_hash()  # the copy hashes as the package does
    with (package / "book.py").open("a") as book_source:
        book_source.write("\n# a sentence of the book edited\n")
    assert source_hash(package) == before
    with (package / "stats.py").open("a") as stats_source:
        stats_source.write("\n# a stage's code edited\n")
    assert source_hash(package) != before


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.bogus=1", "unknown parameter"),
        ("data.n_runs=abc", "n_runs must be an integer"),
        ("data.n_runs=-2", "n_runs must be > 0"),
        ("data.steps_per_run=0", "steps_per_run must be > 0"),
        ("data.env_id=NoSuchEnv-v0", "unknown environment id"),
        ("nostage.x=1", "unknown stage"),
        ("data.zoo_source=/no/such/zoo", "zoo_source"),
        ("layer_autoencoders.stop_on=validation", "starts lists finetune_train"),  # a cross-stage check
    ],
)
def test_bad_overrides_fail_before_anything_runs(tmp_path, capsys, override, message):
    code = main(["--profile", "smoke", "--run-dir", str(tmp_path / "run"), "-p", override])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing half-written


def test_unknown_profile_and_unrun_profile(tmp_path, capsys):
    assert main(["--profile", "nope", "--run-dir", str(tmp_path)]) == 2
    assert "unknown profile" in capsys.readouterr().err
    assert main(["--profile", "paper", "--run-dir", str(tmp_path / "p")]) == 2
    assert "not run on this kind of machine" in capsys.readouterr().err


@pytest.mark.slow
def test_plain_papermill_validates_parameters_in_the_first_cells(tmp_path):
    out = tmp_path / "out.ipynb"
    proc = subprocess.run(
        [sys.executable, "-m", "papermill", "notebooks/01_data.ipynb", str(out),
         "-p", "run_dir", str(tmp_path / "run"), "-p", "n_runs", "0"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode != 0
    assert "n_runs must be > 0" in proc.stderr
    assert not (tmp_path / "run" / "01_data").exists()


def test_benchmark_page_reads_the_committed_results_and_says_what_is_missing(tmp_path, monkeypatch):
    from nnae_utils import book

    page = book.benchmarks_markdown(tmp_path)
    for heading in ("Our TD3 against stable-baselines3", "Batched Hopper-v5 rollouts", "What a zoo network costs",
                    "DAgger students against snapshots, in weight space", "The functional loss",
                    "Training with the functional loss: learning rate and variants",
                    "Which TD3 learner grows the zoo", "Symmetry options of the layer autoencoders",
                    "How many training runs a layer autoencoder needs"):
        assert f"## {heading}" in page
    assert "No committed result" not in page  # every benchmark has a committed result
    assert (tmp_path / "td3_vs_sb3.png").is_file()
    monkeypatch.setattr(book, "BENCHMARK_RESULTS", tmp_path / "nothing")
    assert book.benchmarks_markdown(tmp_path).count("No committed result") == 9


@pytest.mark.slow
def test_the_shipped_zoo_loads_and_stage_1_writes_what_a_trained_zoo_does(smoke_run, tmp_path):
    """Stages 2-5 read stage 1's files whichever way the zoo came: loading the committed zoo must
    write the same set of files as training one (the smoke run trained its own)."""
    run_dir, _, _ = smoke_run
    shipped = PROJECT_ROOT / "zoo" / "hopper-v5"
    proc = cli("--profile", "smoke", "--only", "data", "--run-dir", str(tmp_path / "run"),
               "-p", f"data.zoo_source={shipped}", "-p", "data.state_episodes=1", "-p", "data.n_states=500")
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded, trained = tmp_path / "run" / "01_data", run_dir / "01_data"
    assert sorted(p.name for p in loaded.iterdir()) == sorted(p.name for p in trained.iterdir())
    summary = json.loads((loaded / "summary.json").read_text())
    assert summary["n_networks"] >= 128 and summary["n_runs"] >= 4 and summary["return_min"] >= 2500


@pytest.mark.slow
def test_stage_3_scores_the_loss_ablation_on_every_extra_split(smoke_run):
    run_dir, _, _ = smoke_run
    stage = run_dir / "03_decoded_evaluation"
    summary = json.loads((stage / "summary.json").read_text())
    assert set(summary["loss_variant_median_retention_by_split"]) == {"train"}  # extra_splits minus the headline
    assert {"functional", "weights", "both", "dagger", "pca"} <= set(summary["loss_variant_median_retention_by_split"]["train"])
    assert (stage / "retention_ablation_train.csv").is_file()


@pytest.mark.skipif(platform.machine() != "x86_64" or "ATEN_CPU_CAPABILITY" in os.environ
                    or NATIVE_KERNELS_VAR in os.environ,
                    reason="the AVX2 cap is for x86-64 kernels; the caller's own choice is kept")
def test_a_stage_kernels_environment_caps_torch_at_avx2_and_native_leaves_it(monkeypatch):
    probe = [sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"]

    def capability(extra):
        env = {**os.environ, **extra}
        return subprocess.run(probe, env=env, capture_output=True, text=True, check=True).stdout.strip()

    native = capability(kernel_environment(native=True))
    assert kernel_environment()["ATEN_CPU_CAPABILITY"] == "avx2"
    assert capability(kernel_environment()) == ("AVX2" if native in ("AVX2", "AVX512") else native)
    monkeypatch.setenv(NATIVE_KERNELS_VAR, "1")
    assert kernel_environment() == {}


NUMPY_PROBE = """
import hashlib, numpy as np
from numpy._core._multiarray_umath import __cpu_features__ as features
rng = np.random.default_rng(0)
x, w = rng.standard_normal((64, 1, 11), np.float32), rng.standard_normal((64, 11, 64), np.float32)
print(hashlib.sha256(np.tanh(x @ w).tobytes()).hexdigest(), features.get("X86_V4", False))
"""


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the AVX2 cap is for x86-64 kernels")
def test_a_stage_kernels_environment_gives_numpy_the_avx2_kernels(monkeypatch):
    """Capped, a float32 product has the bits of OpenBLAS's AVX2 (Haswell) kernel, and numpy's own
    AVX-512 loops are off, whatever the CPU offers."""
    for name in (*PORTABLE_KERNELS, NATIVE_KERNELS_VAR):  # this machine's own choice would be kept
        monkeypatch.delenv(name, raising=False)

    def probe(extra):
        env = {**os.environ, **extra}
        digest, v4 = subprocess.run([sys.executable, "-c", NUMPY_PROBE], env=env, capture_output=True, text=True,
                                    check=True).stdout.split()
        return digest, v4 == "True"

    capped = probe(kernel_environment())
    assert capped == (probe({"OPENBLAS_CORETYPE": "Haswell"})[0], False)


def test_book_glance_table_says_which_questions_this_book_cannot_answer(tmp_path):
    """A row of the landing page's results-at-a-glance table whose stage is not a chapter of the
    book says so, and links to no missing chapter."""
    from nnae_utils.book import glance_markdown

    import yaml

    questions = yaml.safe_load((PROJECT_ROOT / "book" / "findings" / "glance.yaml").read_text())["rows"]
    table = glance_markdown(tmp_path, {s.name: "not run" for s in STAGES}, None)
    assert table.startswith(":::{list-table}") and table.count("\n* - ") == len(questions) + 1  # and the header
    assert table.count("not computed for this book") == len(questions)
    assert "{doc}" not in table and "@" not in table
