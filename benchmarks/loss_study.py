"""The loss question with power (issue 29, item 5): which training loss keeps decoded networks playing.

Stage 2's main autoencoders (the profile's configs, flat form by default, one per layer) are retrained with
each loss of ``--losses`` (functional: the paper's; weights: normalised weight MSE; both: their sum with
``weight_loss_coef``; dagger: the on-policy functional loss, on dataset states mixed with states the
decoded train networks visit) under ``--seeds`` autoencoder seeds each, and with the functional loss on
state datasets of every ``--random-fractions`` value (a data-stage parameter:
:func:`nnae_utils.states.collect_states` is rerun for each value other than the run's own). Every model
is deployed with stage 3's paired protocol (:func:`nnae_utils.decoded.score_paired`: input and decoded
networks in one batched evaluation on the same reset seeds; :func:`nnae_utils.decoded.retention_table`
for each model's interval over networks) on three groups of networks: the train runs' networks it was
trained on (``train``), the train runs' snapshots held out of training (``train_holdout``, the split by
network) and the validation and test runs' networks (``held_out``, the split by run). The summary pools
the seeds: retention is the ratio of mean returns, and its interval resamples runs, then networks
(:func:`nnae_utils.stats.hierarchical_interval` of per-network retention, seeds averaged); the seeds'
own spread is given beside it.

    python benchmarks/loss_study.py --run-dir runs/default                 # the full study
    python benchmarks/loss_study.py --run-dir runs/default --quick         # layer 2, 2 seeds, 8 epochs, 3 networks per group

writes ``benchmarks/results/loss_study_<profile>.csv`` (summary) and ``..._models.csv`` (one row per model
and group) for a full run; ``--quick`` writes to ``/tmp/loss_study_quick`` only. Models are kept in
``<run-dir>/_work/loss_study`` and read back by a rerun.

Measured: ``--quick`` on the shipped zoo, 106 s wall on 2 loaded cores (10 models, 54 s of training; a state
dataset at random_fraction 0 recollected with 1 episode per network; 90 decoded networks, 109,638 env steps
in 43 s). Full run, estimated: 54 flat models (3 layers x (4 losses + 2 other fractions) x 3 seeds) at about
140 core-seconds each (stage 2's main flat models on the shipped zoo), about 2.1 core-hours, plus two state
datasets and about 4M env steps of deployment (2,500 steps/s on one loaded core): about 3 core-hours; the
token form (``--forms flat token``) adds about 1 core-hour.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from nnae_utils import autoencoders as ae
from nnae_utils import decoded
from nnae_utils.decoded import spread_subset
from nnae_utils.pipeline import load_profile, resolve_params
from nnae_utils.seeds import eval_seeds
from nnae_utils.states import StateDataset, collect_states
from nnae_utils.stats import hierarchical_interval
from stage2_inputs import load_stage2_inputs

RESULTS = Path(__file__).resolve().parent / "results"


def state_dataset(S, run_dir: Path, profile: str, fraction: float, episodes: int | None) -> StateDataset:
    """The run's own dataset at its own random_fraction; otherwise one collected as stage 1 does (every zoo
    network, the data stage's episodes, size and seed), cached under ``_work/loss_study``."""
    D = resolve_params(load_profile(profile), {}, run_dir)["data"]
    episodes = episodes or D.state_episodes
    if abs(fraction - D.random_fraction) < 1e-12 and episodes == D.state_episodes:
        return S.dataset
    path = run_dir / "_work" / "loss_study" / f"states_rf{fraction:g}_ep{episodes}.npz"
    if path.is_file():
        return StateDataset.load(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset = collect_states(S.zoo.networks, episodes=episodes, n_states=D.n_states, random_fraction=fraction,
                             seed=D.seed, progress=False)
    dataset.save(path)
    return dataset


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, default=Path("runs/default"))
    parser.add_argument("--profile", default="default")
    parser.add_argument("--losses", nargs="+", default=list(ae.LOSSES))
    parser.add_argument("--seeds", type=int, default=3, help="autoencoder seeds per loss (the profile's seed, +1, ...)")
    parser.add_argument("--random-fractions", nargs="+", type=float, default=[0.0, 0.2, 0.5])
    parser.add_argument("--layers", nargs="+", type=int, default=None, help="default: every layer")
    parser.add_argument("--forms", nargs="+", default=["flat"])
    parser.add_argument("--networks", type=int, default=8, help="networks per group deployed (spread over the group)")
    parser.add_argument("--episodes", type=int, default=5, help="paired episodes per network")
    parser.add_argument("--state-episodes", type=int, default=None, help="episodes per network of a recollected state dataset")
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    overrides = {"max_epochs": 8, "patience": 3} if args.quick else None
    if args.quick:
        args.seeds, args.layers, args.networks, args.episodes, args.state_episodes = 2, [2], 3, 2, 1
        args.random_fractions = [0.0, 0.2]
    S = load_stage2_inputs(args.run_dir, args.profile, overrides)
    torch.set_num_threads(S.P.torch_threads)
    D = resolve_params(load_profile(args.profile), {}, args.run_dir)["data"]
    layers = args.layers if args.layers is not None else sorted({c.layer for c in S.configs})
    base = [c for c in S.configs if c.layer in layers and c.form in args.forms]
    save_dir = args.run_dir / "_work" / "loss_study"
    nets, split = S.zoo.networks, S.split
    train_idx = [i for i, s in enumerate(split) if s == "train" and not S.stop_mask[i]]
    hold_idx = [i for i, s in enumerate(split) if s == "train" and S.stop_mask[i]]
    out_idx = [i for i, s in enumerate(split) if s in ("validation", "test")]
    groups = {"train": spread_subset(train_idx, args.networks), "held_out": spread_subset(out_idx, args.networks)}
    if hold_idx:
        groups["train_holdout"] = spread_subset(hold_idx, args.networks)
    start = time.perf_counter()
    # (loss, random_fraction) cells: every loss at the run's own fraction, the functional loss at every fraction
    cells = [(loss, D.random_fraction) for loss in args.losses]
    cells += [("functional", f) for f in args.random_fractions if abs(f - D.random_fraction) > 1e-12]
    models = []  # (loss, fraction, seed, TrainResult)
    for fraction in sorted({f for _, f in cells}):
        ds = state_dataset(S, args.run_dir, args.profile, fraction, args.state_episodes if abs(fraction - D.random_fraction) > 1e-12 else None)
        pools = ae.split_states(ds.states, ds.is_random, ds.owner, split, seed=S.P.seed)
        train = ae.LayerData.build([nets[i] for i in train_idx], pools["train"], S.P.eval_states, seed=S.P.seed)
        val = ae.LayerData.build([nets[i] for i in out_idx if split[i] == "validation"], pools["validation"], S.P.eval_states, seed=S.P.seed + 1)
        stop = ae.LayerData.build([nets[i] for i in hold_idx], pools["train"], S.P.eval_states, seed=S.P.seed + 2) if hold_idx else None
        cfgs, keys = [], []
        for loss, f in cells:
            if f != fraction:
                continue
            for s in range(args.seeds):
                for c in base:
                    cfgs.append(replace(c, loss=loss, seed=S.P.seed + s))
                    keys.append((loss, fraction, s))
        results = ae.train_many_layer_autoencoders(cfgs, train, val, stop_on=stop, save_dir=save_dir / f"rf{fraction:g}",
                                                   jobs=S.P.jobs, torch_threads=S.P.torch_threads, progress=False)
        models += [(*key, res) for key, (res, _) in zip(keys, results)]
        print(f"random_fraction {fraction:g}: {len(cfgs)} models, {time.perf_counter() - start:.0f} s so far", flush=True)
    train_s = sum(m[3].wall_seconds for m in models)
    # deployment: one batched paired evaluation of every input and decoded network
    inputs = [i for g in groups.values() for i in g]
    inputs = list(dict.fromkeys(inputs))
    row_of = {i: n for n, i in enumerate(inputs)}
    jobs = [(m, g, i) for m in models for g, idx in groups.items() for i in idx]
    dec = [ae.decode_network(nets[i], m[3].model) for m, _, i in jobs]
    seeds = eval_seeds("decoded_report", args.episodes)
    t0 = time.perf_counter()
    scores = decoded.score_paired([nets[i] for i in inputs], dec, seeds, nthread=1)
    eval_s = time.perf_counter() - t0
    rows = []
    for k, ((loss, fraction, seed, res), group, i) in enumerate(jobs):
        inp, out = scores.input_returns[row_of[i]], scores.decoded_returns[k]
        rows.append({"loss": loss, "random_fraction": fraction, "seed": seed, "layer": res.model.config.layer,
                     "form": res.model.config.form, "group": group, "network": S.zoo.records[i]["id"], "run": S.labels[i],
                     "compression_ratio": res.model.compression_ratio, "input_return": float(inp.mean()),
                     "decoded_return": float(out.mean()), "input_episodes": inp, "decoded_episodes": out})
    frame = pd.DataFrame(rows)
    by = ["loss", "random_fraction", "layer", "form", "group"]
    per_model = decoded.retention_table(frame, by + ["seed"], n_boot=args.n_boot)
    summary = []
    for key, g in frame.groupby(by, sort=False):
        per_net = g.groupby(["run", "network"], sort=False)[["input_return", "decoded_return"]].mean()
        ret = (per_net["decoded_return"] / per_net["input_return"]).groupby(level="run", sort=False).apply(list).tolist()
        ci = hierarchical_interval(ret, "mean", n_boot=args.n_boot, seed=0)
        seeds_ret = per_model.set_index(by + ["seed"]).loc[key, "retention"]
        summary.append({**dict(zip(by, key)), "seeds": g["seed"].nunique(), "networks": len(per_net),
                        "runs": len(ret), "retention": float(g["decoded_return"].mean() / g["input_return"].mean()),
                        "run_mean_retention": ci.point, "low": ci.low, "high": ci.high,
                        "seed_min": float(np.min(seeds_ret)), "seed_max": float(np.max(seeds_ret)),
                        "compression_ratio": float(g["compression_ratio"].iloc[0])})
    summary = pd.DataFrame(summary)
    out_dir = Path("/tmp/loss_study_quick") if args.quick else RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"loss_study_{args.profile}" + ("_quick" if args.quick else "")
    summary.to_csv(out_dir / f"{stem}.csv", index=False)
    per_model.to_csv(out_dir / f"{stem}_models.csv", index=False)
    wall = time.perf_counter() - start
    print(f"{wall:.0f} s wall: {len(models)} models ({train_s:.0f} s of training), {len(dec)} decoded networks, "
          f"{scores.env_steps} env steps in {eval_s:.0f} s; wrote {out_dir / stem}.csv and _models.csv")
    show = summary.assign(ci=[f"{r.run_mean_retention:.2f} [{r.low:.2f}, {r.high:.2f}]" for r in summary.itertuples()],
                          seeds_range=[f"{a:.2f}-{b:.2f}" for a, b in zip(summary.seed_min, summary.seed_max)])
    print(show[by + ["retention", "ci", "seeds_range"]].to_string(index=False))


if __name__ == "__main__":
    main()
