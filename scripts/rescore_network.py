"""Re-score networks with plain gymnasium: needs only numpy, safetensors and gymnasium.

    python scripts/rescore_network.py zoo/x.safetensors --seeds 100 101 102
    python scripts/rescore_network.py --index zoo/hopper-v5/index.json
    python scripts/rescore_network.py --index zoo/hopper-v5/index.json --fresh-seeds 7000000 10 --bar 2500
    python scripts/rescore_network.py --index zoo/hopper-v5/index.json --runs 10 11   # those runs' networks only

Rebuilds the MLP from the file (format: nnae_utils/policies.py), runs one gymnasium.make(env_id)
episode per reset seed with deterministic actions, and prints the returns' mean and std as JSON.
With ``--index``, re-scores every network an ``index.json`` lists, on the reset seeds and the
episode cap it records (``eval_seeds``, ``max_episode_steps``), prints one JSON line per network with the recorded and the re-scored mean
return, then a summary line; the exit status is 1 if any re-scored mean differs from the
recorded one by more than ``--tolerance``. With ``--fresh-seeds FIRST N`` it re-scores them on N
other reset seeds instead (FIRST, FIRST+1, ...), an independent check of the recorded returns, and
the summary counts the networks whose fresh mean reaches ``--bar``.

On x86-64 it computes with numpy's kernels capped at AVX2, as the suite's pipeline scores networks
(``nnae_utils.backends.PORTABLE_KERNELS``): an AVX-512 kernel rounds float32 products differently,
and Hopper turns the last bit of an action into another return. A variable already set is kept;
``NNAE_NATIVE_KERNELS=1`` uses this CPU's own kernels (for a run made with ``--native-kernels``).

A file that is missing, truncated, not a network file or inconsistent with its own metadata is
refused in one line on stderr, as the package's loader words it (``NetworkFormatError``), with exit
status 2 (1 is a re-scored mean that disagrees with its record); so is an ``index.json`` that
cannot be read:

    $ python scripts/rescore_network.py notes.txt --seeds 1
    rescore_network: cannot read network file notes.txt: Error while deserializing header: ...
"""
import argparse
import json
import os
import platform
import sys

NUMPY_KERNELS = {"OPENBLAS_CORETYPE": "Zen", "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR"}
if platform.machine() in ("x86_64", "AMD64") and os.environ.get("NNAE_NATIVE_KERNELS") != "1":
    for _name, _value in NUMPY_KERNELS.items():  # read when numpy loads: set before importing it
        os.environ.setdefault(_name, _value)

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
from safetensors import safe_open  # noqa: E402


FORMAT_NAME, FORMAT_VERSION = "nnae-network", "1"  # as nnae_utils/policies.py writes them
ACTIVATIONS = {"relu": lambda v: np.maximum(v, 0.0), "tanh": np.tanh,
               "elu": lambda v: np.where(v > 0, v, np.expm1(np.minimum(v, 0.0)))}


class NetworkFormatError(ValueError):
    """A network file or index that is missing, truncated, foreign or inconsistent (as in nnae_utils.policies)."""


def load(path):
    """The file's metadata and tensors, checked as ``nnae_utils.policies.load_network`` checks them."""
    if not os.path.isfile(path):
        raise NetworkFormatError(f"network file not found: {path}")
    try:
        with safe_open(path, framework="numpy") as f:
            meta, tensors = dict(f.metadata() or {}), {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for truncated or foreign files
        raise NetworkFormatError(f"cannot read network file {path}: {exc}") from exc
    if meta.get("format") != FORMAT_NAME:
        raise NetworkFormatError(f"{path}: not an {FORMAT_NAME} file (metadata format={meta.get('format')!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise NetworkFormatError(f"{path}: unsupported format_version {meta.get('format_version')!r}")
    try:
        sizes = [int(meta["obs_dim"]), *map(int, json.loads(meta["hidden"])), int(meta["act_dim"])]
        float(meta.get("layer_norm_eps", "1e-5"))
        if not meta["env_id"] or meta["activation"] not in ACTIVATIONS:
            raise ValueError(f"activation {meta['activation']!r} or env_id {meta['env_id']!r}")
    except (KeyError, ValueError, TypeError) as exc:
        raise NetworkFormatError(f"{path}: bad network metadata: {exc!r}") from exc
    expected = {}  # the tensors act() reads, with their shapes (NetworkSpec.tensor_shapes)
    for i in range(len(sizes) - 1):
        expected[f"layers.{i}.weight"], expected[f"layers.{i}.bias"] = (sizes[i + 1], sizes[i]), (sizes[i + 1],)
        if meta.get("layer_norm", "none") != "none" and i < len(sizes) - 2:
            expected[f"layers.{i}.norm.weight"] = expected[f"layers.{i}.norm.bias"] = (sizes[i + 1],)
    if meta.get("obs_norm") == "true":
        expected["obs_mean"] = expected["obs_std"] = (sizes[0],)
    for name, shape in expected.items():
        if name not in tensors or tensors[name].shape != shape or tensors[name].dtype != np.float32:
            got = f"{tensors[name].dtype} {tensors[name].shape}" if name in tensors else "nothing"
            raise NetworkFormatError(f"{path}: tensor {name} should be float32 {shape}, got {got}")
    return meta, tensors


def act(meta, t, obs):
    """Linear -> [LayerNorm] -> activation -> [LayerNorm] ... -> Linear -> tanh, in float32."""
    x = np.asarray(obs, np.float32)
    if "obs_mean" in t:
        x = (x - t["obs_mean"]) / t["obs_std"]
    n_layers = len(json.loads(meta["hidden"])) + 1
    norm_at, eps = meta.get("layer_norm", "none"), float(meta.get("layer_norm_eps", "1e-5"))
    for i in range(n_layers):
        x = x @ t[f"layers.{i}.weight"].T + t[f"layers.{i}.bias"]
        if i == n_layers - 1:
            return np.tanh(x)
        if norm_at == "before":
            x = layer_norm(x, t[f"layers.{i}.norm.weight"], t[f"layers.{i}.norm.bias"], eps)
        x = ACTIVATIONS[meta["activation"]](x)
        if norm_at == "after":
            x = layer_norm(x, t[f"layers.{i}.norm.weight"], t[f"layers.{i}.norm.bias"], eps)


def layer_norm(x, weight, bias, eps):
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps) * weight + bias


def rescore(path, seeds, max_steps=None):
    meta, tensors = load(path)
    env = gym.make(meta["env_id"])
    returns = []
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        ret, done, steps = 0.0, False, 0
        while not done:
            obs, reward, terminated, truncated, _ = env.step(act(meta, tensors, obs))
            steps += 1
            ret, done = ret + float(reward), terminated or truncated or steps == max_steps
        returns.append(ret)
    env.close()
    return meta["env_id"], returns


def rescore_index(index_path, tolerance, fresh=None, bar=None, runs=None):
    folder = index_path.rsplit("/", 1)[0] if "/" in index_path else "."
    try:
        with open(index_path) as f:
            records = json.load(f)
    except (OSError, ValueError) as exc:
        raise NetworkFormatError(f"cannot read index {index_path}: {exc}") from exc
    needed = ("id", "return_mean", "eval_seeds", "max_episode_steps")
    if not isinstance(records, list) or not all(isinstance(r, dict) and all(k in r for k in needed) for r in records):
        raise NetworkFormatError(f"{index_path} must hold a list of records, each with {list(needed)}")
    if runs is not None:  # a grown zoo's latest shipment, say: only the networks of these TD3 runs
        wanted = set(runs)
        records = [r for r in records if (r.get("provenance") or {}).get("run") in wanted]
    worst, means = 0.0, []
    for rec in records:
        seeds = list(range(fresh[0], fresh[0] + fresh[1])) if fresh else rec["eval_seeds"]
        _, returns = rescore(f"{folder}/{rec['id']}.safetensors", seeds, rec["max_episode_steps"])
        mean = float(np.mean(returns))
        worst = max(worst, abs(mean - rec["return_mean"]))
        means.append(mean)
        print(json.dumps({"id": rec["id"], "recorded": rec["return_mean"], "fresh" if fresh else "rescored": mean,
                          "episodes": len(returns)}), flush=True)
    summary = {"index": index_path, "networks": len(records), **({"runs": sorted(runs)} if runs is not None else {})}
    if fresh:
        summary.update(fresh_seeds=[fresh[0], fresh[0] + fresh[1] - 1], mean_fresh_minus_recorded=float(
            np.mean(means) - np.mean([r["return_mean"] for r in records])) if means else None)
        if bar is not None:
            summary.update(bar=bar, at_or_above_bar=int(sum(m >= bar for m in means)))
    else:
        summary.update(max_abs_difference=worst, tolerance=tolerance, agree=worst <= tolerance)
    if means:
        summary.update(min=float(np.min(means)), median=float(np.median(means)), max=float(np.max(means)))
    print(json.dumps(summary))
    return 0 if fresh or worst <= tolerance else 1


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("network", nargs="?", help="a .safetensors network file")
    parser.add_argument("--seeds", type=int, nargs="+", help="gymnasium reset seeds, one episode each")
    parser.add_argument("--max-steps", type=int, default=None, help="episode cap (default: the environment's own time limit)")
    parser.add_argument("--index", help="an index.json: re-score every network it lists on its recorded seeds and cap")
    parser.add_argument("--tolerance", type=float, default=1e-6, help="--index: largest accepted |difference| of a mean return")
    parser.add_argument("--fresh-seeds", type=int, nargs=2, metavar=("FIRST", "N"),
                        help="--index: re-score on N other reset seeds from FIRST instead of the recorded ones")
    parser.add_argument("--bar", type=float, help="--fresh-seeds: count the networks whose fresh mean reaches this")
    parser.add_argument("--runs", type=int, nargs="+", help="--index: only the networks of these TD3 runs (provenance.run)")
    args = parser.parse_args(argv)
    try:
        return run(parser, args)
    except NetworkFormatError as exc:  # one line a user can act on, not a traceback
        print(f"rescore_network: {exc}", file=sys.stderr)
        return 2  # 1 means "re-scored, and a mean disagrees with its record"


def run(parser, args):
    if args.index:
        if args.network or args.seeds:
            parser.error("--index takes no network file and no --seeds (each network's seeds are in the index)")
        if args.fresh_seeds and (args.fresh_seeds[0] < 0 or args.fresh_seeds[1] <= 0):
            parser.error("--fresh-seeds takes a first seed >= 0 and a count > 0")
        return rescore_index(args.index, args.tolerance, args.fresh_seeds, args.bar, args.runs)
    if args.fresh_seeds or args.bar is not None or args.runs:
        parser.error("--fresh-seeds, --bar and --runs go with --index")
    if not args.network or not args.seeds:
        parser.error("give a network file and --seeds (or --index)")
    env_id, returns = rescore(args.network, args.seeds, args.max_steps)
    print(json.dumps({"env_id": env_id, "seeds": args.seeds, "returns": returns,
                      "mean": float(np.mean(returns)), "std": float(np.std(returns))}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
