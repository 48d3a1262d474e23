"""scripts/rescore_network.py: standalone (numpy, safetensors, gymnasium only) and in agreement
with ``evaluate(backend="gymnasium")``. It computes the same float32 operations as
``Network.act``, so the returns agree exactly."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nnae_utils.backends import NATIVE_KERNELS_VAR, PORTABLE_KERNELS
from nnae_utils.policies import Network, NetworkSpec, save_network
from nnae_utils.rollouts import evaluate

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "rescore_network.py"
# The script caps numpy's kernels as the pipeline's kernels do; this test process computes with this
# CPU's own, so the script is asked to do the same here (the smoke run checks the capped path).
SAME_KERNELS_AS_HERE = {**os.environ, NATIVE_KERNELS_VAR: "1"}


def test_script_imports_only_numpy_safetensors_gymnasium():
    tree = ast.parse(SCRIPT.read_text())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            modules.add(node.module.split(".")[0])
    assert modules <= {"argparse", "json", "os", "platform", "sys", "numpy", "safetensors", "gymnasium"}, modules


def test_script_caps_numpy_kernels_as_the_pipeline_does():
    tree = ast.parse(SCRIPT.read_text())
    assigned = {node.targets[0].id: node.value for node in tree.body
                if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)}
    script_kernels = ast.literal_eval(assigned["NUMPY_KERNELS"])
    assert script_kernels == {name: PORTABLE_KERNELS[name] for name in ("OPENBLAS_CORETYPE", "NPY_DISABLE_CPU_FEATURES")}
    assert NATIVE_KERNELS_VAR in SCRIPT.read_text()


def test_rescore_agrees_with_gymnasium_backend(tmp_path):
    spec = NetworkSpec(obs_dim=11, act_dim=3, hidden=(32, 32), activation="tanh", layer_norm="after", obs_norm=True)
    net = Network.random(spec, seed=7)
    rng = np.random.default_rng(7)
    net.params["obs_mean"] = rng.normal(0, 0.2, 11).astype(np.float32)
    net.params["obs_std"] = rng.uniform(0.5, 2.0, 11).astype(np.float32)
    net.params["layers.0.norm.weight"] = rng.uniform(0.5, 1.5, 32).astype(np.float32)
    net.params["layers.1.norm.bias"] = rng.normal(0, 0.1, 32).astype(np.float32)
    path = save_network(tmp_path / "net.safetensors", net)
    seeds = [100, 101]
    out = subprocess.run(
        [sys.executable, str(SCRIPT), str(path), "--seeds", *map(str, seeds)],
        capture_output=True, text=True, check=True, timeout=120, env=SAME_KERNELS_AS_HERE,
    )
    report = json.loads(out.stdout)
    expected = evaluate(net, seeds, backend="gymnasium").returns[0]
    assert report["returns"] == expected.tolist()
    assert report["mean"] == float(np.mean(expected)) and report["std"] == float(np.std(expected))


def test_index_mode_rescores_every_network_and_fails_on_a_wrong_record(tmp_path):
    from nnae_utils.policies import write_index

    spec = NetworkSpec(obs_dim=11, act_dim=3, hidden=(8, 8))
    nets = [Network.random(spec, seed=s) for s in (1, 2)]
    seeds = [5, 6]
    result = evaluate(nets, seeds)  # the batched evaluator, as the stages record scores
    records = []
    for i, net in enumerate(nets):
        save_network(tmp_path / f"n{i}.safetensors", net)
        records.append({"id": f"n{i}", "return_mean": float(result.returns[i].mean()), "eval_seeds": seeds,
                        "return_std": float(result.returns[i].std()), "episodes": 2, "max_episode_steps": 1000,
                        "provenance": {}})
    write_index(tmp_path, records)
    def run():
        return subprocess.run([sys.executable, str(SCRIPT), "--index", str(tmp_path / "index.json")],
                              capture_output=True, text=True, timeout=120, env=SAME_KERNELS_AS_HERE)

    out = run()
    assert out.returncode == 0, out.stdout + out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [line["id"] for line in lines[:-1]] == ["n0", "n1"]
    assert lines[-1]["networks"] == 2 and lines[-1]["agree"] and lines[-1]["max_abs_difference"] == 0.0

    records[1]["return_mean"] += 1.0  # a record that does not match its file
    write_index(tmp_path, records)
    out = run()
    assert out.returncode == 1 and not json.loads(out.stdout.splitlines()[-1])["agree"]

    # an independent check on other seeds: never a mismatch, counts the networks at the bar
    fresh = evaluate(nets, [40, 41, 42]).returns.mean(axis=1)
    bar = float(np.sort(fresh)[0]) + 1e-9  # exactly one network below it
    out = subprocess.run([sys.executable, str(SCRIPT), "--index", str(tmp_path / "index.json"), "--fresh-seeds", "40", "3",
                          "--bar", repr(bar)], capture_output=True, text=True, timeout=120, env=SAME_KERNELS_AS_HERE)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [round(line["fresh"], 6) for line in lines[:-1]] == [round(float(x), 6) for x in fresh]
    assert lines[-1]["fresh_seeds"] == [40, 42] and lines[-1]["at_or_above_bar"] == 1

    # --runs: only the networks of the named TD3 runs (a grown zoo's latest shipment)
    records[1]["return_mean"] -= 1.0
    records[0]["provenance"], records[1]["provenance"] = {"run": 3}, {"run": 7}
    write_index(tmp_path, records)
    out = subprocess.run([sys.executable, str(SCRIPT), "--index", str(tmp_path / "index.json"), "--runs", "7"],
                         capture_output=True, text=True, timeout=120, env=SAME_KERNELS_AS_HERE)
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert out.returncode == 0 and [line["id"] for line in lines[:-1]] == ["n1"] and lines[-1]["runs"] == [7]


def _refused(*args):
    """Run the script on bad input: it must say why in one line on stderr and exit 2, no traceback."""
    out = subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=120,
                         env=SAME_KERNELS_AS_HERE)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stdout == "" and "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rescore_network: "), out.stderr
    return lines[0]


def _package_says(path):
    from nnae_utils.policies import NetworkFormatError, load_network

    with pytest.raises(NetworkFormatError) as err:
        load_network(path)
    return str(err.value)


def test_truncated_foreign_or_missing_files_are_refused_in_one_line_as_the_loader_words_it(tmp_path):
    from safetensors.numpy import save_file

    good = save_network(tmp_path / "good.safetensors", Network.random(NetworkSpec(11, 3, (8,)), seed=0))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:100])
    foreign = tmp_path / "foreign.safetensors"  # a valid safetensors file that is not a network (say, a critic)
    save_file({"w": np.zeros((2, 2), np.float32)}, str(foreign), metadata={"kind": "critic"})
    text = tmp_path / "notes.txt"
    text.write_text("not a network")
    for bad in (truncated, foreign, text, tmp_path / "absent.safetensors"):
        line = _refused(bad, "--seeds", 1)
        assert _package_says(bad) in line, (line, _package_says(bad))


def test_a_file_whose_tensors_contradict_its_metadata_is_refused(tmp_path):
    from safetensors.numpy import save_file

    net = Network.random(NetworkSpec(11, 3, (8,)), seed=0)
    params = {**net.params, "layers.1.weight": np.zeros((3, 7), np.float32)}  # the hidden layer has 8 units
    path = tmp_path / "bad.safetensors"
    save_file(params, str(path), metadata=net.spec.to_metadata())
    assert "layers.1.weight" in _refused(path, "--seeds", 1)


def test_an_unreadable_index_is_refused_in_one_line(tmp_path):
    (tmp_path / "index.json").write_text("[{\"id\": \"n0\"")  # cut off mid-write
    assert "index" in _refused("--index", tmp_path / "index.json")
    (tmp_path / "index.json").write_text(json.dumps([{"id": "n0"}]))  # no seeds or recorded return
    assert "eval_seeds" in _refused("--index", tmp_path / "index.json")
