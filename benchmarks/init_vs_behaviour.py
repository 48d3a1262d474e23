"""Initialisation or behaviour? (issue 29, item 3): two cheap populations that separate the two.

(a) **DAgger students** (:mod:`nnae_utils.distill`): students of ``--teachers`` strong zoo snapshots (the
best network of as many train runs), each student its own initialisation (its seed), all acting like
their teacher. Stage 2's main autoencoders (the profile's configs and seeds, under each ``--options``
symmetry option) are trained on the students of ``N`` initialisations (``--sizes``, nested: the first
``N`` seeds, spread over the teachers) and measured on held-out students of the same teachers
(``--test-per-teacher`` each): held-out functional loss over the mean layer's, with an interval that
resamples students (:func:`nnae_utils.learning_curve.fold_curve`; each student is its own "run").
Early stopping uses ``--stop-per-teacher`` further students, never the test students. If enough
initialisations make the encoder carry over to unseen students of known behaviour, the cross-run failure
on the zoo is about the symmetry of initialisation; if not, about more than that.

(b) **One initialisation, distinct behaviours**: the zoo's ``shared_init`` runs (``splits.json``'s
``shared_init`` block, written by ``zoo.grow_shipped_zoo``): trained on some of them, measured on the
others (two held out, drawn with the profile's seed; folds of 1, 2, 4 ... of the rest). Skipped, with a
message, on a zoo without that block (the shipped 4-run zoo).

    python benchmarks/init_vs_behaviour.py --run-dir runs/default                      # N in {2, 8, 32, 128}
    python benchmarks/init_vs_behaviour.py --run-dir runs/default --quick              # N in {2, 8}, short students

Students are cached in ``<run-dir>/_work/init_vs_behaviour/students`` (about 18 CPU-seconds each at the
default :class:`nnae_utils.distill.DistillConfig`), models beside them; a full run writes
``benchmarks/results/init_vs_behaviour_<profile>.csv``, ``--quick`` only ``/tmp/init_vs_behaviour_quick``.

Measured: ``--quick`` on the shipped zoo (14 short students, N in {2, 8}, flat, 8 epochs), 63 s wall on 2
loaded cores; (b) skipped. Full run, estimated: 140 students x 18 CPU-s (0.7 core-hours), 4 sizes x 2 options
x 6 models at about 100 core-seconds (1.3 core-hours); (b) on 8 shared-initialisation runs, 9 folds x 2
options x 6 models, about 3 core-hours.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from nnae_utils import learning_curve as lc
from nnae_utils.distill import DistillConfig, StudentJob, distill_many
from nnae_utils.policies import load_network, save_network
from stage2_inputs import load_stage2_inputs

RESULTS = Path(__file__).resolve().parent / "results"


def students(S, work: Path, *, teachers: int, n_train: int, stop_per: int, test_per: int, cfg: DistillConfig, workers: int):
    """Teachers (best network of the first ``teachers`` train runs) and their students: ``n_train`` train
    students (seeds 0..n_train-1 dealt round-robin over the teachers), then per teacher ``stop_per`` stopping
    and ``test_per`` test students; every student a distinct seed, so a distinct initialisation."""
    train_runs = [r for r in S.trainable_runs() if r.startswith("run")][:teachers]
    teacher_idx = [max((i for i, lab in enumerate(S.labels) if lab == run), key=lambda i: S.returns[i]) for run in train_runs]
    work.mkdir(parents=True, exist_ok=True)
    tag = f"r{cfg.rounds}e{cfg.episodes_per_round}p{cfg.epochs_per_round}"
    jobs, roles = [], []
    seed = 0
    plan = [("train", t) for t in range(n_train) for t in [t % len(teacher_idx)]]
    plan += [(role, t) for t in range(len(teacher_idx)) for role, n in (("stop", stop_per), ("test", test_per)) for _ in range(n)]
    for role, t in plan:
        tid = S.zoo.records[teacher_idx[t]]["id"]
        tpath = work / f"teacher_{tid}.safetensors"
        if not tpath.is_file():
            save_network(tpath, S.zoo.networks[teacher_idx[t]])
        jobs.append(StudentJob(tpath, tid, replace(cfg, seed=seed), work / f"student_{tid}_s{seed}_{tag}.safetensors"))
        roles.append((role, t, seed))
        seed += 1
    start = time.perf_counter()
    paths = distill_many(jobs, workers=workers, progress=False)
    return [S.zoo.records[i]["id"] for i in teacher_idx], [load_network(p) for p in paths], roles, time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, default=Path("runs/default"))
    parser.add_argument("--profile", default="default")
    parser.add_argument("--options", nargs="+", default=["none", "align"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[2, 8, 32, 128])
    parser.add_argument("--teachers", type=int, default=2)
    parser.add_argument("--stop-per-teacher", type=int, default=2)
    parser.add_argument("--test-per-teacher", type=int, default=4)
    parser.add_argument("--forms", nargs="+", default=["flat", "token"])
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    overrides = {"max_epochs": 8, "patience": 3} if args.quick else None
    cfg = DistillConfig()
    if args.quick:
        args.sizes, args.options, args.forms, args.test_per_teacher, args.stop_per_teacher = [2, 8], ["none"], ["flat"], 2, 1
        cfg = DistillConfig(rounds=2, episodes_per_round=2, epochs_per_round=5, max_steps=500)
    S = load_stage2_inputs(args.run_dir, args.profile, overrides)
    torch.set_num_threads(S.P.torch_threads)
    configs = [c for c in S.configs if c.form in args.forms]
    work = args.run_dir / "_work" / "init_vs_behaviour"
    out_dir = Path("/tmp/init_vs_behaviour_quick") if args.quick else RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"init_vs_behaviour_{args.profile}" + ("_quick" if args.quick else "")
    start = time.perf_counter()

    # (a) students: distinct initialisations, their teacher's behaviour
    teacher_ids, nets, roles, distill_wall = students(S, work / "students", teachers=args.teachers, n_train=max(args.sizes),
                                                     stop_per=args.stop_per_teacher, test_per=args.test_per_teacher,
                                                     cfg=cfg, workers=S.P.jobs)
    labels = [f"t{t}s{seed}" for _, t, seed in roles]
    stop_mask = [role == "stop" for role, _, _ in roles]
    train_labels = [lab for lab, (role, _, _) in zip(labels, roles) if role == "train"]
    stop_labels = [lab for lab, m in zip(labels, stop_mask) if m]
    test_labels = [lab for lab, (role, _, _) in zip(labels, roles) if role == "test"]
    folds = [{"k": n, "fold": 0, "runs": train_labels[:n] + stop_labels} for n in sorted(args.sizes)]
    workers = S.P.jobs
    print(f"(a) {len(nets)} students of teachers {teacher_ids} ({distill_wall:.0f} s wall to distill, {workers} at a time; cached ones read back); "
          f"train sizes {args.sizes}, {len(test_labels)} test students", flush=True)
    tables = []
    for option in args.options:
        t = lc.fold_curve(folds, nets, labels, held_out_runs=test_labels, configs=configs, pools=S.pools, option=option,
                          stop_mask=stop_mask, eval_states=S.P.eval_states, seed=S.P.seed, save_dir=work / "models",
                          jobs=S.P.jobs, torch_threads=S.P.torch_threads, n_boot=args.n_boot, progress=True)
        tables.append(t.assign(experiment="students", n_train=t["k"]))

    # (b) the zoo's runs of one initialisation
    shared = S.splits.get("shared_init")
    if not shared or len(shared.get("runs", [])) < 3:
        print("(b) skipped: this zoo's splits.json has no shared_init block with 3 or more runs "
              "(the grown zoo writes one: zoo.grow_shipped_zoo); rerun on the grown zoo")
    else:
        ids = set(shared["ids"])
        idx = [i for i, r in enumerate(S.zoo.records) if r["id"] in ids]
        sh_nets = [S.zoo.networks[i] for i in idx]
        sh_labels = [f"run{S.zoo.records[i]['provenance']['run']}" for i in idx]
        steps = [S.zoo.records[i]["provenance"].get("step", 0) for i in idx]
        every = S.P.holdout_every
        sh_stop = [False] * len(idx)
        for run in set(sh_labels):  # every holdout_every-th snapshot of each run, in step order, decides stopping
            order = sorted((j for j, lab in enumerate(sh_labels) if lab == run), key=lambda j: steps[j])
            for j in order[every // 2 :: every]:
                sh_stop[j] = True
        runs = sorted(set(sh_labels))
        held = sorted(np.random.default_rng(S.P.seed).choice(runs, size=2, replace=False).tolist())
        rest = [r for r in runs if r not in held]
        sizes = [k for k in (1, 2, 4, 8) if k <= len(rest)]
        sh_folds = lc.folds_from_runs(rest, sizes, 3, seed=S.P.seed)
        print(f"(b) shared_init: {len(runs)} runs, held out {held}, folds k = {sizes}", flush=True)
        for option in args.options:
            t = lc.fold_curve(sh_folds, sh_nets, sh_labels, held_out_runs=held, configs=configs, pools=S.pools,
                              option=option, stop_mask=sh_stop, returns=[S.returns[i] for i in idx],
                              eval_states=S.P.eval_states, seed=S.P.seed,
                              save_dir=work / "models", jobs=S.P.jobs, torch_threads=S.P.torch_threads,
                              n_boot=args.n_boot, progress=True)
            tables.append(t.assign(experiment="shared_init", n_train=t["n_train"]))
    table = pd.concat(tables, ignore_index=True)
    table.to_csv(out_dir / f"{stem}.csv", index=False)
    print(f"{time.perf_counter() - start:.0f} s wall, {table['wall_seconds'].sum():.0f} s of model training; wrote {out_dir / stem}.csv")
    table["ci"] = [f"{r.ratio:.3f} [{r.low:.3f}, {r.high:.3f}]" for r in table.itertuples()]
    print(table.pivot_table(index=["experiment", "option", "form", "layer"], columns="k", values="ci", aggfunc="first").to_string())


if __name__ == "__main__":
    main()
