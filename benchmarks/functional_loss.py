"""Throughput of the functional loss: batched over stacked networks vs a naive per-network loop.

Both compute the same number, the paper's loss for P networks with one layer replaced by a decoded
version, on B states per network, plus its gradient with respect to the decoded layer (what one
training step of a layer autoencoder needs), and, separately, the loss alone (an evaluation):

- batched: :func:`nnae_utils.autoencoders.functional_loss`: the P networks stacked, one
  ``torch.baddbmm`` per layer, the layers before the decoded one computed once without gradients;
- naive: a Python loop over the P networks, each a chain of ``F.linear`` calls on its own tensors,
  input and decoded network both run in full, the P losses averaged.

Throughput = networks x states per second. Both run in one process, interleaved, on one torch
thread (as the stage trains), so a busy machine slows both alike. The elementary step, one 64x64
layer for P networks as one ``baddbmm`` or a loop of ``F.linear``, is timed too, in GFLOP/s: the
ratio the whole loss can reach is bounded by that step's. Usage::

    python benchmarks/functional_loss.py            # writes benchmarks/results/functional_loss.json
    python benchmarks/functional_loss.py --quick    # a few seconds, nothing written
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nnae_utils import autoencoders as ae  # noqa: E402
from nnae_utils.policies import Network, NetworkSpec  # noqa: E402
from nnae_utils.provenance import code_revision, machine, runtime_versions  # noqa: E402


def make_case(n_networks: int, n_states: int, layer: int, seed: int = 0):
    spec = NetworkSpec(obs_dim=11, act_dim=3, hidden=(64, 64))  # the default zoo's architecture
    rng = np.random.default_rng(seed)
    nets = [Network.random(spec, seed=seed * 1000 + p) for p in range(n_networks)]
    stack = ae.StackedNetworks.from_networks(nets)
    w, b = stack.layer(layer)
    w_hat = (w + 0.05 * torch.from_numpy(rng.normal(size=w.shape).astype(np.float32))).requires_grad_(True)
    b_hat = (b + 0.05 * torch.from_numpy(rng.normal(size=b.shape).astype(np.float32))).requires_grad_(True)
    states = torch.from_numpy(rng.normal(size=(n_networks, n_states, 11)).astype(np.float32))
    return spec, stack, w_hat, b_hat, states


def batched(stack, layer, w_hat, b_hat, states, grad: bool):
    if grad:
        w_hat.grad = b_hat.grad = None
        loss = ae.functional_loss(stack, layer, w_hat, b_hat, states)
        loss.backward()
        return float(loss.detach())
    with torch.no_grad():
        return float(ae.functional_loss(stack, layer, w_hat, b_hat, states))


def naive(stack, layer, w_hat, b_hat, states, grad: bool):
    """Network by network, as one would write it without stacking."""
    spec, n = stack.spec, len(stack)
    per_net = [{k: v[p] for k, v in stack.params.items()} for p in range(n)]

    def act(params, x, wi=None, bi=None):
        for j in range(spec.n_layers):
            w, b = params[f"layers.{j}.weight"], params[f"layers.{j}.bias"]
            if j == layer and wi is not None:
                w, b = wi, bi
            x = F.linear(x, w, b)
            x = torch.tanh(x) if j == spec.n_layers - 1 else torch.relu(x)
        return x

    with torch.set_grad_enabled(grad):
        if grad:
            w_hat.grad = b_hat.grad = None
        total = 0.0
        for p in range(n):
            with torch.no_grad():
                y_input = act(per_net[p], states[p])
            y_decoded = act(per_net[p], states[p], w_hat[p], b_hat[p])
            total = total + torch.linalg.vector_norm(y_decoded - y_input, dim=-1).mean()
        loss = total / n
        if grad:
            loss.backward()
        return float(loss.detach())


def matmul_ceiling(n_networks: int, n_states: int, width: int, repeats: int, min_s: float) -> dict:
    """The elementary step both implementations repeat: one (B x width) @ (width x width) layer for
    each of P networks, as one ``torch.baddbmm`` on stacked weights or as P ``F.linear`` calls.
    Its ratio bounds what stacking can gain on this CPU: a loop whose every matmul already runs near
    the core's speed leaves little to win."""
    x, w = torch.randn(n_networks, n_states, width), torch.randn(n_networks, width, width)
    b = torch.randn(n_networks, width)
    w_t, xs = w.transpose(1, 2), list(x.unbind(0))
    t_batched = time_it(lambda: torch.baddbmm(b[:, None, :], x, w_t), repeats, min_s)
    t_loop = time_it(lambda: [F.linear(xs[p], w[p], b[p]) for p in range(n_networks)], repeats, min_s)
    flops = 2.0 * n_networks * n_states * width * width
    return {"networks": n_networks, "states_per_network": n_states, "width": width,
            "batched_seconds": t_batched, "loop_seconds": t_loop, "ratio": t_loop / t_batched,
            "batched_gflop_per_s": flops / t_batched / 1e9, "loop_gflop_per_s": flops / t_loop / 1e9}


def time_it(fn, repeats: int, min_seconds: float) -> float:
    """Median seconds per call over ``repeats`` timed blocks, each at least ``min_seconds`` long."""
    fn()  # warm-up
    n = 1
    while True:
        t = time.perf_counter()
        for _ in range(n):
            fn()
        if time.perf_counter() - t >= min_seconds:
            break
        n *= 2
    samples = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        samples.append((time.perf_counter() - t) / n)
    return statistics.median(samples)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short timings, nothing written")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "functional_loss.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    repeats, min_s = (3, 0.05) if args.quick else (7, 0.3)
    load_before = os.getloadavg()
    # (networks, states per network): the default profile's training step (32 x 64), and larger batches
    cases = [(32, 64), (32, 512), (128, 64)]
    results = []
    for n_nets, n_states in cases:
        for layer in (0, 1, 2):
            spec, stack, w_hat, b_hat, states = make_case(n_nets, n_states, layer)
            # the two implementations compute the same loss and the same gradient
            lb, ln = batched(stack, layer, w_hat, b_hat, states, True), None
            gb = w_hat.grad.clone()
            ln = naive(stack, layer, w_hat, b_hat, states, True)
            assert abs(lb - ln) <= 1e-4 * max(abs(ln), 1e-6), (lb, ln)
            assert torch.allclose(gb, w_hat.grad, rtol=1e-3, atol=1e-7)
            for grad in (True, False):
                tb = time_it(lambda: batched(stack, layer, w_hat, b_hat, states, grad), repeats, min_s)
                tn = time_it(lambda: naive(stack, layer, w_hat, b_hat, states, grad), repeats, min_s)
                row = {
                    "networks": n_nets, "states_per_network": n_states, "layer": layer,
                    "mode": "loss + gradient" if grad else "loss only",
                    "batched_seconds": tb, "naive_seconds": tn,
                    "batched_net_states_per_s": n_nets * n_states / tb, "naive_net_states_per_s": n_nets * n_states / tn,
                    "speedup": tn / tb,
                }
                results.append(row)
                print(f"P={n_nets:4d} B={n_states:4d} layer {layer} {row['mode']:15s} "
                      f"batched {row['batched_net_states_per_s']:12,.0f}/s  naive {row['naive_net_states_per_s']:12,.0f}/s  "
                      f"ratio {row['speedup']:5.1f}x")
    ceilings = [matmul_ceiling(n_nets, n_states, 64, repeats, min_s) for n_nets, n_states in cases]
    for c in ceilings:
        print(f"one 64x64 layer, P={c['networks']:4d} B={c['states_per_network']:4d}: baddbmm {c['batched_gflop_per_s']:5.1f} "
              f"GFLOP/s, loop of F.linear {c['loop_gflop_per_s']:5.1f} GFLOP/s, ratio {c['ratio']:4.1f}x")
    primary = [r for r in results if r["networks"] == 32 and r["states_per_network"] == 64 and r["mode"] == "loss + gradient"]
    ratio = statistics.median(r["speedup"] for r in primary)
    overall = statistics.median(r["speedup"] for r in results)
    print(f"\nthe default profile's training step (32 networks x 64 states, loss + gradient, median over layers): "
          f"batched / naive = {ratio:.1f}x (goal: 10x or more); median over every case: {overall:.1f}x")
    if args.quick:
        return 0
    record = {
        "benchmark": "functional_loss",
        "what": "networks x states per second of the paper's functional loss (one layer decoded), "
                "batched over stacked networks vs a per-network loop, in one process",
        "architecture": [11, 64, 64, 3],
        "primary": {"case": "32 networks x 64 states, loss + gradient, median over layers 0-2", "speedup": ratio},
        "median_speedup_all_cases": overall,
        "goal_speedup": 10.0,
        "results": results,
        "matmul_ceiling": ceilings,
        "torch_threads": args.threads,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "machine": machine(),
        "versions": runtime_versions(),
        "code_revision": code_revision(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
