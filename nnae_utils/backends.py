"""Where the suite's work runs: on this machine (``local``, the default) or on a Ray cluster.

Two kinds of work can leave the machine, and nothing else changes:

- **Population evaluation.** :meth:`Backend.evaluate` takes the arguments of
  :func:`nnae_utils.rollouts.evaluate`, the suite's one evaluation function. The local backend *is*
  that function. The Ray backend cuts the population into chunks of whole policies, each chunk
  with its own rows of reset seeds, calls ``evaluate`` on every chunk in a Ray task, and
  concatenates the results. ``evaluate`` keys each episode by (policy, reset seed, noise seed)
  alone, so the arrays are bit-identical to a local call, whatever the number of workers or
  chunks.
- **Independent runs** (seeds x methods of stages 4 and 5, the zoo's TD3 runs):
  :meth:`Backend.map` and :meth:`Backend.executor` (a :class:`concurrent.futures.Executor`).
  Locally that is the process pool the stages always used; on Ray, one task per run.

**Faults.** A Ray task whose worker dies (killed, out of memory, node lost) is rerun by Ray itself,
up to :attr:`RaySettings.max_retries` times; :attr:`RaySettings.retry_exceptions` also reruns
tasks that raised. Rerunning is safe: evaluation is pure, and a run resumes from its own
checkpoints, so nothing is lost or counted twice. A killed *driver* (the stage's notebook) takes its
tasks with it; rerunning the stage resumes every run from its checkpoints.

**Choosing a backend.** A backend is named by a string (:func:`parse_backend`)::

    local                    this machine (no Ray needed, nor imported)
    ray:auto                 the Ray cluster this machine belongs to (``ray start`` ran here)
    ray:ray://HEAD:10001     a remote cluster through Ray Client
    ray:HEAD:6379            a cluster's GCS address, from one of its nodes
    ray:local:4              a fresh single-machine Ray with 4 CPUs (tests, benchmarks)

The pipeline takes it from the profile (``backend:``) or ``--backend``, and hands it to the stage
notebooks in the environment variable ``NNAE_BACKEND`` (:data:`ENV_VAR`), which
:func:`current_backend` reads: the notebooks do not change, and since results are identical the
backend is not part of any cache key. Stage functions take ``backend=None`` (the current backend),
a name, or a :class:`Backend`.

Example:
    >>> from nnae_utils.policies import Network, NetworkSpec
    >>> nets = [Network.random(NetworkSpec(obs_dim=11, act_dim=3, hidden=(8,)), seed=i) for i in range(3)]
    >>> local = get_backend("local")
    >>> local.evaluate(nets, seeds=[0, 1], max_steps=20).returns.shape
    (3, 2)
    >>> local.map(pow, [2, 3], [2, 2])
    [4, 9]
    >>> parse_backend("ray:local:2")
    RaySettings(address='local:2', cpus_per_task=1, chunk_policies=0, max_retries=3, retry_exceptions=False)
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import functools
import multiprocessing
import os
import platform
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from .rollouts import EvalResult, evaluate

ENV_VAR = "NNAE_BACKEND"
"""Environment variable naming the backend of the current process (unset: ``local``)."""
DEFAULT_BACKEND = "local"
RAY_HINT = "the ray backend needs Ray: pip install 'nnae-utils[ray]' (or the pinned ray==2.60.0)"

PORTABLE_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
                    "ONEDNN_MAX_CPU_ISA": "AVX2", "OPENBLAS_CORETYPE": "Zen",
                    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR"}
"""Environment that caps the CPU kernels of torch (ATen, oneDNN, MKL), numpy's OpenBLAS and numpy's
own SIMD loops (the names of numpy 2.4, which the suite pins) at AVX2.

Libraries pick their kernels by the instruction set of the CPU, and AVX-512 kernels may round
differently: on an AMD EPYC family 25 model 17 machine (AVX-512) the data stage of the ``long``
profile gave other states than on the machines before it, and every stage after it would have
differed too (Hopper is chaotic: the last bit of an action changes the trajectory). With this
environment it gave the very same bytes as those machines, so a run resumed or rerun on another
x86-64 machine continues the same computation. On an AMD family 26 machine OpenBLAS's own choice
(an AVX-512 kernel) gives other float32 products than ``Zen``, and numpy's AVX-512 ``expm1`` (ELU
networks) other values than its AVX2 one. The libraries read it when loaded, so the pipeline sets it
in the kernels it starts (:func:`kernel_environment`), and ``scripts/rescore_network.py`` sets the
numpy entries before importing numpy, so that it re-scores networks with the kernels that scored
them. :data:`NATIVE_KERNELS_VAR` lifts the cap for both.
"""
NATIVE_KERNELS_VAR = "NNAE_NATIVE_KERNELS"
"""Set to ``1``: the pipeline's kernels and ``scripts/rescore_network.py`` use this CPU's own kernels."""


def kernel_environment(native: bool = False) -> dict[str, str]:
    """Variables to set in a stage's kernel: :data:`PORTABLE_KERNELS` on x86-64 (none with ``native``,
    with ``NNAE_NATIVE_KERNELS=1``, or elsewhere), less any the caller's environment already sets,
    which are kept.

    Example:
        >>> kernel_environment(native=True)
        {}
    """
    if native or os.environ.get(NATIVE_KERNELS_VAR) == "1" or platform.machine() not in ("x86_64", "AMD64"):
        return {}
    return {name: value for name, value in PORTABLE_KERNELS.items() if name not in os.environ}


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class LocalSettings:
    """This machine: evaluation in this process, independent runs in a pool of spawned processes."""

    def spec(self) -> str:
        return "local"


@dataclass(frozen=True)
class RaySettings:
    """A Ray cluster, and how work is cut into tasks for it.

    Example:
        >>> RaySettings(address="ray://head:10001", chunk_policies=32).spec()
        'ray:ray://head:10001?chunk_policies=32'
    """

    address: str = "auto"
    """Cluster to join: ``auto`` (the cluster ``ray start`` made this machine part of), ``ray://HOST:PORT``
    (Ray Client), ``HOST:PORT`` (the head's GCS), or ``local:N`` (start a fresh single-machine Ray with N
    CPUs). If this process is already connected to Ray, that connection is used."""
    cpus_per_task: int = 1
    """CPUs each task reserves; an evaluation chunk steps its physics on that many MuJoCo threads."""
    chunk_policies: int = 0
    """Policies per evaluation task; 0: one chunk per task slot of the cluster (its CPUs divided by
    ``cpus_per_task``), the population split as evenly as whole policies allow."""
    max_retries: int = 3
    """Ray's ``max_retries``: how many times a task is rerun after its worker died."""
    retry_exceptions: bool = False
    """Ray's ``retry_exceptions``: also rerun (up to ``max_retries``) a task that raised an exception."""

    def __post_init__(self) -> None:
        if not self.address:
            raise ValueError("the ray backend needs an address (auto, ray://HOST:PORT, HOST:PORT or local:N)")
        if self.address.startswith("local:"):
            n = self.address.split(":", 1)[1]
            if not n.isdigit() or int(n) < 1:
                raise ValueError(f"ray address local:N needs a positive CPU count N, got {self.address!r}")
        if self.cpus_per_task < 1 or self.chunk_policies < 0 or self.max_retries < 0:
            raise ValueError("need cpus_per_task >= 1, chunk_policies >= 0 and max_retries >= 0")

    def spec(self) -> str:
        """The backend's name, as :func:`parse_backend` reads it."""
        default = RaySettings()
        options = [f"{f.name}={_option_text(getattr(self, f.name))}" for f in dataclasses.fields(self)
                   if f.name != "address" and getattr(self, f.name) != getattr(default, f.name)]
        return f"ray:{self.address}" + (f"?{'&'.join(options)}" if options else "")


def _option_text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def parse_backend(spec: str | None) -> LocalSettings | RaySettings:
    """Settings from a backend name: ``local`` or ``ray:ADDRESS[?option=value&...]``.

    Options are :class:`RaySettings` fields. Nothing is imported or contacted here, so a bad name
    fails in the first second of a pipeline run.

    Example:
        >>> parse_backend("ray:auto?chunk_policies=16&max_retries=5")
        RaySettings(address='auto', cpus_per_task=1, chunk_policies=16, max_retries=5, retry_exceptions=False)
        >>> parse_backend("local")
        LocalSettings()
    """
    spec = (spec or DEFAULT_BACKEND).strip()
    if spec == "local":
        return LocalSettings()
    if spec == "ray":
        return RaySettings()
    if not spec.startswith("ray:"):
        raise ValueError(f"unknown backend {spec!r}: expected local or ray:ADDRESS (e.g. ray:auto, ray:local:4)")
    address, _, query = spec[len("ray:"):].partition("?")
    values: dict[str, Any] = {}
    fields = {f.name: f for f in dataclasses.fields(RaySettings) if f.name != "address"}
    for item in filter(None, query.split("&")):
        name, _, text = item.partition("=")
        if name not in fields:
            raise ValueError(f"backend {spec!r}: unknown option {name!r}; options: {sorted(fields)}")
        if fields[name].type in (bool, "bool"):
            if text.lower() not in ("true", "false"):
                raise ValueError(f"backend {spec!r}: {name} must be true or false")
            values[name] = text.lower() == "true"
        else:
            try:
                values[name] = int(text)
            except ValueError:
                raise ValueError(f"backend {spec!r}: {name} must be an integer, got {text!r}") from None
    return RaySettings(address=address, **values)


# --------------------------------------------------------------------------- backends


class Backend:
    """Runs population evaluations and independent runs; see the module docstring."""

    settings: LocalSettings | RaySettings
    is_local: bool = True

    @property
    def spec(self) -> str:
        """The backend's name (``local``, ``ray:auto``, ...)."""
        return self.settings.spec()

    def evaluate(self, policies, seeds, **kwargs) -> EvalResult:
        """:func:`nnae_utils.rollouts.evaluate`, with the same arguments and the same result."""
        raise NotImplementedError

    def executor(self, max_workers: int) -> cf.Executor:
        """An executor for independent runs (``submit(fn, *args)`` returns a future)."""
        raise NotImplementedError

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], max_workers: int = 1,
            progress: bool = False, desc: str | None = None) -> list[Any]:
        """``[fn(*args) for args in zip(*iterables)]``, the calls spread over the backend's workers.

        ``fn`` and its arguments must pickle (a module-level function). The first error to happen is
        raised, and the calls that have not started are cancelled. ``progress`` shows a bar of
        finished calls, named ``desc`` (default: the function's name).
        """
        calls = list(zip(*iterables))
        with self.executor(max_workers) as pool, _progress_bar(len(calls), progress, desc or _name(fn)) as bar:
            futures = [pool.submit(fn, *args) for args in calls]
            try:
                for fut in cf.as_completed(futures):
                    fut.result()
                    bar.update(1)
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise
            return [f.result() for f in futures]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"


class LocalBackend(Backend):
    """This machine, exactly as the suite runs without a backend setting (Ray is never imported).

    Example:
        >>> LocalBackend().map(abs, [-1, 2])
        [1, 2]
    """

    def __init__(self, settings: LocalSettings | None = None):
        self.settings = settings or LocalSettings()

    def evaluate(self, policies, seeds, **kwargs) -> EvalResult:
        return evaluate(policies, seeds, **kwargs)

    def executor(self, max_workers: int) -> cf.Executor:
        """A process pool of ``max_workers`` spawned processes (fork would copy torch's thread pools)."""
        return cf.ProcessPoolExecutor(max_workers=max_workers, mp_context=multiprocessing.get_context("spawn"))

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], max_workers: int = 1,
            progress: bool = False, desc: str | None = None) -> list[Any]:
        """In this process, one call after another, when ``max_workers`` is 1; else in a process pool."""
        if max_workers <= 1:
            calls = list(zip(*iterables))
            with _progress_bar(len(calls), progress, desc or _name(fn)) as bar:
                results = []
                for args in calls:
                    results.append(fn(*args))
                    bar.update(1)
                return results
        return super().map(fn, *iterables, max_workers=max_workers, progress=progress, desc=desc)


class RayBackend(Backend):
    """A Ray cluster; connects on first use (``ray.init``), or uses the connection this process has.

    Example (not run here: it needs Ray and starts a cluster)::

        backend = get_backend("ray:local:2")
        result = backend.evaluate(networks, seeds, max_steps=1000)   # == rollouts.evaluate(...)
        scores = backend.map(score_one, runs)                         # one task per run
    """

    is_local = False

    def __init__(self, settings: RaySettings | None = None):
        self.settings = settings or RaySettings()
        self._lock = threading.Lock()
        self._tasks: dict[Callable, Any] = {}

    # -- connection
    def ray(self):
        """The ``ray`` module, connected to the cluster."""
        try:
            import ray
        except ImportError as exc:
            raise ImportError(RAY_HINT) from exc
        with self._lock:
            if not ray.is_initialized():
                address = self.settings.address
                if address.startswith("local:"):
                    start_local_ray(int(address.split(":", 1)[1]))
                else:
                    ray.init(address=address, configure_logging=False)
        return ray

    def _task(self, fn: Callable):
        """``fn`` as a Ray remote function with this backend's resources and retry settings."""
        ray = self.ray()
        if fn not in self._tasks:
            s = self.settings
            self._tasks[fn] = ray.remote(num_cpus=s.cpus_per_task, max_retries=s.max_retries,
                                         retry_exceptions=s.retry_exceptions)(fn)
        return self._tasks[fn]

    def slots(self) -> int:
        """Tasks the cluster can run at once: its CPUs divided by ``cpus_per_task`` (at least 1)."""
        cpus = self.ray().cluster_resources().get("CPU", 1)
        return max(1, int(cpus // self.settings.cpus_per_task))

    # -- population evaluation
    def chunks(self, n_policies: int) -> list[slice]:
        """Contiguous slices of whole policies, one per task (see :attr:`RaySettings.chunk_policies`)."""
        size = self.settings.chunk_policies
        if size > 0:
            return [slice(i, min(i + size, n_policies)) for i in range(0, n_policies, size)]
        bounds = np.linspace(0, n_policies, min(n_policies, self.slots()) + 1).round().astype(int)
        return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]

    def evaluate(self, policies, seeds, *, progress: bool = False, nthread: int | None = None, **kwargs) -> EvalResult:
        """:func:`nnae_utils.rollouts.evaluate` in chunks of whole policies, one Ray task each.

        Every chunk carries its own rows of the (P, E) seed array; ``nthread`` is ignored (a task
        steps on ``cpus_per_task`` threads; results do not depend on it); ``progress`` counts chunks.
        """
        from .policies import Network

        policies = [policies] if isinstance(policies, Network) else list(policies)
        seeds = np.asarray(seeds)
        if seeds.ndim == 1 and seeds.dtype != object:
            seeds = np.broadcast_to(seeds, (len(policies), len(seeds)))
        if not policies or seeds.ndim != 2 or len(seeds) != len(policies):
            return evaluate(policies, seeds, **kwargs)  # evaluate's own error, raised here
        task = self._task(evaluate_chunk)
        kwargs["nthread"] = self.settings.cpus_per_task
        refs = [task.remote(policies[c], np.ascontiguousarray(seeds[c]), kwargs) for c in self.chunks(len(policies))]
        parts = self._gather(refs, progress, "evaluate (chunks)")
        return concat_results(parts)

    def _gather(self, refs: list, progress: bool, desc: str) -> list:
        ray = self.ray()
        try:
            if not progress:
                return ray.get(refs)
            with _progress_bar(len(refs), True, desc) as bar:
                pending = list(refs)
                while pending:
                    done, pending = ray.wait(pending, num_returns=1)
                    bar.update(len(done))
            return ray.get(refs)
        except BaseException:
            for ref in refs:
                ray.cancel(ref)
            raise

    # -- independent runs
    def executor(self, max_workers: int | None = None) -> cf.Executor:
        """One Ray task per ``submit``; ``max_workers`` is ignored (the cluster's CPUs bound concurrency)."""
        return _RayExecutor(self)

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], max_workers: int | None = None,
            progress: bool = False, desc: str | None = None) -> list[Any]:
        """One Ray task per call; results in call order. ``max_workers`` is ignored."""
        task = self._task(call)
        return self._gather([task.remote(fn, args) for args in zip(*iterables)], progress, desc or _name(fn))


class _RayExecutor(cf.Executor):
    """A :class:`concurrent.futures.Executor` whose futures are Ray tasks (``ObjectRef.future()``)."""

    def __init__(self, backend: RayBackend):
        self.backend = backend
        self.refs: list = []

    def submit(self, fn, /, *args, **kwargs) -> cf.Future:
        ref = self.backend._task(call).remote(fn, args, kwargs)
        self.refs.append(ref)
        return ref.future()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        ray = self.backend.ray()
        if cancel_futures:
            for ref in self.refs:
                ray.cancel(ref)
        if wait and self.refs:
            ray.wait(self.refs, num_returns=len(self.refs))

    def __exit__(self, exc_type, exc, tb):
        self.shutdown(wait=exc_type is None, cancel_futures=exc_type is not None)
        return False


def _name(fn: Callable) -> str:
    return getattr(fn, "__name__", "map")


def _progress_bar(total: int, progress: bool, desc: str):
    """A tqdm bar over ``total`` calls (``disable``d without ``progress``; it prints at most every 5 s)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not progress, mininterval=5)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """``torch.set_num_threads(n)`` for the block, the previous count restored after it.

    A run's child function sets its threads this way: a spawned process starts with one thread per
    core, and the same function may also run in the caller's process (``map`` with one worker).
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# --------------------------------------------------------------------------- what a task runs


def evaluate_chunk(policies: Sequence, seeds: np.ndarray, kwargs: dict[str, Any]) -> EvalResult:
    """One evaluation task: :func:`nnae_utils.rollouts.evaluate` on a chunk of whole policies."""
    return evaluate(policies, seeds, **kwargs)


def call(fn: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any] | None = None) -> Any:
    """One independent-run task: ``fn(*args, **kwargs)``."""
    return fn(*args, **(kwargs or {}))


def concat_results(parts: Sequence[EvalResult]) -> EvalResult:
    """Results of consecutive chunks of a population as one result, as one ``evaluate`` call gives it.

    Example:
        >>> a = EvalResult(np.zeros((2, 1)), np.ones((2, 1), np.int64), np.zeros((2, 1), bool))
        >>> concat_results([a, a]).returns.shape
        (4, 1)
    """
    out: dict[str, Any] = {}
    offset = 0
    owners = []
    for part in parts:
        if part.observation_owner is not None:
            owner = part.observation_owner.copy()
            owner[:, 0] += offset  # policy indices are the chunk's own: shift them to the population's
            owners.append(owner)
        offset += len(part.returns)
    for f in dataclasses.fields(EvalResult):
        values = [getattr(p, f.name) for p in parts]
        if f.name == "observation_owner":
            out[f.name] = np.concatenate(owners) if owners else None
        elif all(v is None for v in values):
            out[f.name] = None
        else:
            out[f.name] = np.concatenate(values)
    return EvalResult(**out)


# --------------------------------------------------------------------------- a Ray on this machine


def start_local_ray(num_cpus: int, *, attempts: int = 3, **init_kwargs: Any):
    """Start a fresh single-machine Ray cluster with ``num_cpus`` CPUs (no dashboard); return ``ray``.

    Ray gives a new node 30 s to register with its control store; a machine busy with other work may
    need longer, so a start that fails is cleaned up (the processes it left behind are killed, by
    pid) and tried again, ``attempts`` times in all. ``init_kwargs`` go to ``ray.init``.
    Tests and benchmarks start their clusters this way; ``ray.shutdown()`` stops it.
    """
    import ray

    kwargs = dict(include_dashboard=False, configure_logging=False)
    kwargs.update(init_kwargs)
    for attempt in range(attempts):
        try:
            ray.init(address="local", num_cpus=num_cpus, **kwargs)
            return ray
        except Exception:
            ray.shutdown()
            _kill_session_leftovers()
            if attempt == attempts - 1:
                raise
    return ray


def _kill_session_leftovers() -> None:
    """SIGKILL the Ray processes of this process's own session (children, and orphans that name its session folder)."""
    import signal

    me = os.getpid()
    tag = f"_{me}/".encode()  # Ray names a session folder session_<date>_<driver pid>
    if not os.path.isdir("/proc"):
        return
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{name}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if (b"/ray/" in cmd or cmd.startswith(b"ray::")) and (tag in cmd or parent == me):
            try:
                os.kill(int(name), signal.SIGKILL)
            except OSError:
                pass


# --------------------------------------------------------------------------- the current backend


def make_backend(settings: LocalSettings | RaySettings) -> Backend:
    """A backend for settings (no connection is made until it is used)."""
    return LocalBackend(settings) if isinstance(settings, LocalSettings) else RayBackend(settings)


@functools.lru_cache(maxsize=None)
def get_backend(spec: str = DEFAULT_BACKEND) -> Backend:
    """The backend named ``spec`` (one instance per name and process, so a connection is reused)."""
    return make_backend(parse_backend(spec))


def current_backend() -> Backend:
    """The backend named by ``$NNAE_BACKEND`` (the pipeline sets it for its stages), else ``local``."""
    return get_backend(os.environ.get(ENV_VAR) or DEFAULT_BACKEND)


def resolve(backend: Backend | str | None) -> Backend:
    """``None`` -> :func:`current_backend`; a name -> :func:`get_backend`; a backend -> itself."""
    if backend is None:
        return current_backend()
    if isinstance(backend, str):
        return get_backend(backend)
    return backend
