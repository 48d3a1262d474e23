"""Execution backends: a real local Ray cluster gives the local backend's results, bit for bit, and
a worker killed in the middle of an evaluation is retried by Ray without changing them."""
import concurrent.futures as cf
import dataclasses
import doctest
import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from nnae_utils import backends
from nnae_utils.backends import LocalBackend, RayBackend, RaySettings, parse_backend, start_local_ray
from nnae_utils.pipeline import PROJECT_ROOT, check_backend, load_profile
from nnae_utils.policies import Network, NetworkSpec
from nnae_utils.rollouts import evaluate
from nnae_utils.stages import ParameterError

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="ray is not installed (pip install 'nnae-utils[ray]')")

SPEC = NetworkSpec(obs_dim=11, act_dim=3, hidden=(64, 64))
POPULATION = [Network.random(SPEC, seed=i) for i in range(8)]
FIELDS = ("returns", "lengths", "terminated", "observations", "observation_owner", "actions", "rewards",
          "next_observations", "terminations", "truncations")


def assert_same(a, b):
    for name in FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype and np.array_equal(x, y), name  # bitwise, not close


# --------------------------------------------------------------------------- without Ray


def test_backend_names_parse_and_bad_ones_fail_before_anything_runs():
    assert parse_backend("local") == backends.LocalSettings()
    assert parse_backend("ray") == RaySettings(address="auto")
    s = parse_backend("ray:ray://head:10001?chunk_policies=16&retry_exceptions=true")
    assert s == RaySettings(address="ray://head:10001", chunk_policies=16, retry_exceptions=True)
    assert parse_backend(s.spec()) == s
    for bad in ("dask:auto", "ray:local:0", "ray:auto?chunks=3", "ray:auto?max_retries=x", "ray:"):
        with pytest.raises(ValueError):
            parse_backend(bad)
        with pytest.raises(ParameterError):
            check_backend(bad)
    assert load_profile("default").backend == "local"


def test_current_backend_follows_the_environment_variable(monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    assert isinstance(backends.current_backend(), LocalBackend)
    monkeypatch.setenv(backends.ENV_VAR, "ray:local:2")
    backend = backends.resolve(None)
    assert isinstance(backend, RayBackend) and backend.settings.address == "local:2"
    assert backends.resolve("local") is backends.get_backend("local")


def test_local_backend_is_plain_evaluate_and_never_imports_ray():
    code = (
        "import sys, numpy as np\n"
        "from nnae_utils import backends, evolution, pipeline\n"
        "from nnae_utils.policies import Network, NetworkSpec\n"
        "from nnae_utils.rollouts import evaluate\n"
        "nets = [Network.random(NetworkSpec(obs_dim=11, act_dim=3, hidden=(8,)), seed=i) for i in range(3)]\n"
        "a = backends.current_backend().evaluate(nets, [0, 1], max_steps=30)\n"
        "assert np.array_equal(a.returns, evaluate(nets, [0, 1], max_steps=30).returns)\n"
        "assert backends.current_backend().map(abs, [-1, 2]) == [1, 2]\n"
        "assert 'ray' not in sys.modules, 'the local backend imported ray'\n"
    )
    env = {k: v for k, v in os.environ.items() if k != backends.ENV_VAR}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=PROJECT_ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_pipeline_hands_the_backend_to_the_stage_kernel(monkeypatch, tmp_path):
    """run_stage sets NNAE_BACKEND for the kernel papermill starts, records it, and restores the environment."""
    import types

    from nnae_utils import pipeline
    from nnae_utils.stages import STAGES

    stage = STAGES[0]
    seen = {}

    def fake_execute(source, output, **kwargs):
        seen["backend"] = os.environ.get(backends.ENV_VAR)
        (tmp_path / stage.folder).mkdir()
        open(output, "w").close()

    monkeypatch.setitem(sys.modules, "papermill", types.SimpleNamespace(execute_notebook=fake_execute))
    monkeypatch.setenv(backends.ENV_VAR, "local")
    params = stage.params.from_mapping({"run_dir": str(tmp_path)})
    record = pipeline.run_stage(stage, params, tmp_path, "key", backend="ray:auto")
    assert seen["backend"] == "ray:auto" and record["backend"] == "ray:auto"
    assert os.environ[backends.ENV_VAR] == "local"


def test_docstring_examples():
    assert doctest.testmod(backends, raise_on_error=False).failed == 0


# --------------------------------------------------------------------------- on a local Ray cluster


@pytest.fixture(scope="module")
def ray_cluster():
    """A fresh single-machine Ray cluster with 2 CPUs, for this module's tests."""
    import ray
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    start_local_ray(2, object_store_memory=100 * 2**20, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@needs_ray
@pytest.mark.parametrize("settings, n_tasks", [
    (RaySettings(cpus_per_task=2), 1),     # 1 worker at a time: one chunk of all 8 policies
    (RaySettings(), 2),                    # 2 workers: two chunks of 4
    (RaySettings(chunk_policies=3), 3),    # chunks of 3, 3 and 2
    (RaySettings(chunk_policies=1), 8),    # one task per policy
], ids=["1-worker", "2-workers", "chunks-of-3", "chunks-of-1"])
def test_ray_evaluation_is_bitwise_the_local_one(ray_cluster, settings, n_tasks):
    seeds = [3, 7, 11]
    backend = RayBackend(settings)
    assert len(backend.chunks(len(POPULATION))) == n_tasks
    assert_same(backend.evaluate(POPULATION, seeds, max_steps=60), evaluate(POPULATION, seeds, max_steps=60))
    # each chunk carries its own seed rows; noise keyed by (noise seed, reset seed); recorded transitions
    rows = np.arange(24).reshape(8, 3) * 5 + 1
    kwargs = dict(max_steps=40, action_noise=0.2, noise_seed=9, record="transitions")
    assert_same(backend.evaluate(POPULATION, rows, **kwargs), evaluate(POPULATION, rows, **kwargs))


@needs_ray
def test_evolution_gives_the_same_champions_on_ray(ray_cluster):
    from nnae_utils.evolution import EvolutionConfig, Run, run_lockstep
    from nnae_utils.genomes import WeightGenome

    genome = WeightGenome(NetworkSpec(obs_dim=11, act_dim=3, hidden=(4,)))
    cfg = EvolutionConfig(method="ga", budget_steps=600, pop_size=4, truncation=2, sigma=0.05,
                          elite_candidates=1, elite_episodes=1, report_episodes=2, max_steps=20)
    runs = [Run(f"r{i}", dataclasses.replace(cfg, seed=i), genome) for i in range(2)]
    local = run_lockstep(runs, backend="local")
    remote = run_lockstep(runs, backend=RayBackend(RaySettings(chunk_policies=5)))
    for run in runs:
        a, b = local[run.run_id], remote[run.run_id]
        assert a.generation == b.generation >= 1 and a.curve == b.curve
        assert np.array_equal(a.champion, b.champion) and np.array_equal(a.champion_returns, b.champion_returns)


def _square_but_die_once(marker, x):
    """Kills its worker process (as the OOM killer or a lost node would) the first time it runs."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return x * x


@needs_ray
def test_generic_map_and_executor(ray_cluster):
    backend = RayBackend()
    assert backend.map(pow, [2, 3, 4], [2, 2, 2]) == [4, 9, 16]
    with backend.executor(2) as pool:  # the way zoo.train_runs and cerl.run_many use it
        futures = {pool.submit(divmod, n, 3): n for n in range(5)}
        assert {futures[f]: f.result() for f in cf.as_completed(futures)} == {n: divmod(n, 3) for n in range(5)}
        bad = pool.submit(divmod, 1, 0)
        with pytest.raises(ZeroDivisionError):
            bad.result()


@needs_ray
def test_a_dead_worker_is_retried_by_ray(ray_cluster, tmp_path):
    marker = str(tmp_path / "died")
    assert RayBackend(RaySettings(max_retries=2)).map(_square_but_die_once, [marker] * 3, [1, 2, 3]) == [1, 4, 9]
    assert os.path.exists(marker)  # a worker did die
    from ray.exceptions import WorkerCrashedError

    with pytest.raises(WorkerCrashedError):  # without retries, the same fault is an error
        RayBackend(RaySettings(max_retries=0)).map(_square_but_die_once, [str(tmp_path / "again")], [1])


def _descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            return False
        if pid == ancestor:
            return True
    return False


def _running_chunk_workers() -> list[int]:
    """Pids of this test's Ray workers that are executing an evaluation chunk (Ray titles them ray::<task>)."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                title = f.read()
        except OSError:
            continue
        if title.startswith(b"ray::evaluate_chunk") and _descends_from(int(name), os.getpid()):
            pids.append(int(name))
    return pids


@needs_ray
def test_a_worker_killed_mid_evaluation_still_gives_the_right_result(ray_cluster):
    seeds = np.arange(30)  # 8 chunks of 1 policy x 30 episodes: long enough to be caught running
    expected = evaluate(POPULATION, seeds, max_steps=1000)
    backend = RayBackend(RaySettings(chunk_policies=1, max_retries=3))
    for _attempt in range(3):
        out: dict = {}
        worker = threading.Thread(target=lambda: out.update(result=backend.evaluate(POPULATION, seeds, max_steps=1000)))
        worker.start()
        killed = None
        while worker.is_alive() and killed is None:
            running = _running_chunk_workers()
            if running:
                killed = running[0]
                os.kill(killed, signal.SIGKILL)
            time.sleep(0.01)
        worker.join(timeout=120)
        assert "result" in out, "the evaluation did not finish"
        assert_same(out["result"], expected)
        if killed is not None:
            break
    assert killed is not None, "no evaluation task was caught running"
