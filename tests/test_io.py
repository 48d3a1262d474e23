"""nnae_utils.io: the one atomic write (fsync, mode 0644, rename), the folder swap, the JSON cleaner,
and the files of the modules that now write through it."""
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from nnae_utils import io, layer_codes
from nnae_utils.decoded import json_ready
from nnae_utils.evolution import ComputeClock, RunState
from nnae_utils.policies import Network, NetworkSpec, load_network, save_network, write_index
from nnae_utils.td3 import ReplayBuffer, TwinCritic, save_critic


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.fixture
def private_umask():
    """A umask that would make every new file private: the mode must come from io, not from the umask."""
    old = os.umask(0o077)
    yield
    os.umask(old)


def test_atomic_write_fsyncs_sets_one_mode_and_replaces(tmp_path, monkeypatch, private_umask):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(io.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    path = tmp_path / "deep" / "x.bin"
    io.atomic_write(path, lambda f: f.write(b"one"))
    io.atomic_write(path, lambda f: f.write(b"two"))
    assert path.read_bytes() == b"two" and mode(path) == io.FILE_MODE == 0o644
    assert len(synced) == 2
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.bin"]  # no temp file left behind


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    path = io.write_text(tmp_path / "x.txt", "old")

    def half_then_crash(f):
        f.write(b"ne")
        raise KeyboardInterrupt  # BaseException too: a run interrupted mid-write

    with pytest.raises(KeyboardInterrupt):
        io.atomic_write(path, half_then_crash)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_network_critic_index_buffer_and_evolution_files_are_0644(tmp_path, private_umask):
    """Network files (and autoencoder checkpoints) were left at mkstemp's 0600 before io: now all share one mode."""
    spec = NetworkSpec(11, 3, (4,))
    net = Network.random(spec, seed=0)
    paths = [save_network(tmp_path / "n0.safetensors", net),
             write_index(tmp_path, [{"id": "n0", "return_mean": np.float32(1.5), "return_std": 0.0, "episodes": np.int64(2),
                                     "max_episode_steps": 1000,
                                     "eval_seeds": np.arange(2), "provenance": {}}]),
             save_critic(tmp_path / "critic.safetensors", TwinCritic(11, 3, (8,))),
             ReplayBuffer(11, 3, 8).save(tmp_path / "buffer.npz")]
    RunState(rng=np.random.default_rng(0)).save(tmp_path / "state.npz", "fp")
    paths.append(tmp_path / "state.npz")
    pca = layer_codes.PCALayerCode.fit([Network.random(spec, seed=s) for s in range(3)], 0, "flat", k=2)
    paths.append(layer_codes.save_pca(tmp_path / "pca.safetensors", pca))
    assert {p.name: mode(p) for p in paths} == {p.name: 0o644 for p in paths}
    assert load_network(paths[0]).spec == spec
    assert json.loads(paths[1].read_text())[0]["return_mean"] == 1.5


def test_swap_folder_replaces_the_whole_folder_and_clears_a_stale_old_one(tmp_path):
    final = tmp_path / "stage"
    io.write_text(final / "gone.txt", "earlier run")
    io.write_text(tmp_path / "stage.old" / "x", "left by a crash")
    io.write_text(tmp_path / "stage.partial" / "new.txt", "this run")
    assert io.swap_folder(tmp_path / "stage.partial", final) == final
    assert [p.name for p in final.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage"]


def test_swap_folder_crash_between_renames_leaves_the_old_folder(tmp_path, monkeypatch):
    final = tmp_path / "ckpt"
    io.write_text(final / "a", "old")
    io.write_text(tmp_path / "ckpt.tmp" / "a", "new")
    real_replace, calls = os.replace, []

    def crash_on_second(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("power cut")
        real_replace(src, dst)

    monkeypatch.setattr(io.os, "replace", crash_on_second)
    with pytest.raises(OSError):
        io.swap_folder(tmp_path / "ckpt.tmp", final)
    assert (tmp_path / "ckpt.old" / "a").read_text() == "old"


SAMPLE = {"i": np.int64(3), "f32": np.float32(0.1), "f64": np.float64(1 / 3), "arr": np.arange(3.0),
          "nested": [(1, np.int32(2)), {"p": Path("a/b")}], "nan": float("nan"), "s": "x", "none": None, 7: "int key"}


def test_jsonable_writes_the_same_text_as_the_old_default_hook():
    """td3, policies and evolution wrote ``json.dumps(x, default=json_default)``; through jsonable the
    text is the same (checkpoint metadata and provenance files must not change), NaN included."""
    assert json.dumps(io.jsonable(SAMPLE), indent=1) == json.dumps(SAMPLE, indent=1, default=io.json_default)
    back = json.loads(json.dumps(io.jsonable({"nan": np.float64("nan")})))
    assert math.isnan(back["nan"])  # a resumed run reads its NaN back, not None


def _old_json_ready(obj):  # decoded.json_ready as it was before io, for the comparison below
    if isinstance(obj, dict):
        return {str(k): _old_json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_old_json_ready(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if not np.isfinite(obj) else round(float(obj), 6)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def test_json_ready_is_jsonable_with_rounding_and_null_nan_as_before():
    """Notebook 03's summary.json (``StageOutput.commit(json_ready(summary))``, written with default=str)
    has the same text as before; only paths are strings one step earlier."""
    sample = {k: v for k, v in SAMPLE.items() if k != "arr"}
    sample.update(inf=-np.inf, flag=np.bool_(False), tiny=np.float32(1e-9), big=123456.7891234)
    assert json.dumps(json_ready(sample), indent=1, default=str) == json.dumps(_old_json_ready(sample), indent=1, default=str)
    assert json_ready(sample)["big"] == 123456.789123 and json_ready(sample)["inf"] is None
    assert json_ready({"arr": np.array([0.1234567, np.nan])}) == {"arr": [0.123457, None]}  # arrays are lists now


def test_unknown_objects_are_left_for_json_to_refuse():
    with pytest.raises(TypeError):
        json.dumps(io.jsonable({"s": {1, 2}}))
    with pytest.raises(TypeError):
        io.json_default(object())


def test_compute_clock_file_is_compact_json(tmp_path):
    clock = ComputeClock([])
    clock.paths, clock.seconds = {"r": tmp_path / "r" / "compute.json"}, {"r": 1.23456}
    clock.save()
    assert (tmp_path / "r" / "compute.json").read_text() == '{"wall_seconds": 1.235}'


def test_doctests():
    import doctest

    assert doctest.testmod(io, raise_on_error=False).failed == 0
