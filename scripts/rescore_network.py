"""Re-score one network file with plain gymnasium: needs only numpy, safetensors and gymnasium.

    python scripts/rescore_network.py zoo/x.safetensors --seeds 100 101 102

Rebuilds the MLP from the file (format: nnae_utils/policies.py), runs one gymnasium.make(env_id)
episode per reset seed with deterministic actions, and prints the returns' mean and std as JSON.
"""
import argparse
import json

import gymnasium as gym
import numpy as np
from safetensors import safe_open


def load(path):
    with safe_open(path, framework="numpy") as f:
        return dict(f.metadata() or {}), {k: f.get_tensor(k) for k in f.keys()}


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
        x = {"relu": lambda v: np.maximum(v, 0.0), "tanh": np.tanh,
             "elu": lambda v: np.where(v > 0, v, np.expm1(np.minimum(v, 0.0)))}[meta["activation"]](x)
        if norm_at == "after":
            x = layer_norm(x, t[f"layers.{i}.norm.weight"], t[f"layers.{i}.norm.bias"], eps)


def layer_norm(x, weight, bias, eps):
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps) * weight + bias


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("network", help="a .safetensors network file")
    parser.add_argument("--seeds", type=int, nargs="+", required=True, help="gymnasium reset seeds, one episode each")
    args = parser.parse_args(argv)
    meta, tensors = load(args.network)
    env = gym.make(meta["env_id"])
    returns = []
    for seed in args.seeds:
        obs, _ = env.reset(seed=seed)
        ret, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(act(meta, tensors, obs))
            ret, done = ret + float(reward), terminated or truncated
        returns.append(ret)
    env.close()
    print(json.dumps({"env_id": meta["env_id"], "seeds": args.seeds, "returns": returns,
                      "mean": float(np.mean(returns)), "std": float(np.std(returns))}))


if __name__ == "__main__":
    main()
