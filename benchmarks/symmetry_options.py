"""Stage 2's symmetry options on a run's zoo, main autoencoders only (issue 29).

The same data, configs, seeds and early stopping as notebook 02 with the ``default`` profile's stage-2
parameters, without its ablations, latent sweep, PCA and on-policy checks: each option of
``--options`` retrains the six main autoencoders (3 layers x flat / token) through
``autoencoders.train_symmetry_options``, and the table gives, per option, form and layer, the
validation (held-out run) and held-out-snapshot (split by network) functional losses, each over the
option's own mean layer, with each model's training seconds. Models are kept in
``<run-dir>/_work/symmetry_options`` and read back by a rerun.

    python -m nnae_utils.pipeline --profile default --run-dir runs/default --only data
    python benchmarks/symmetry_options.py --run-dir runs/default

writes ``benchmarks/results/symmetry_options_default.csv``. About 16 minutes on 2 loaded cores
(load average 9: two TD3 trainings and other work beside it) for all five options.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

from nnae_utils import autoencoders as ae
from nnae_utils.pipeline import load_profile, resolve_params

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, default=Path("runs/default"), help="a run whose data stage has run")
    parser.add_argument("--profile", default="default", help="profile whose stage-2 parameters are used")
    parser.add_argument("--options", nargs="+", default=list(ae.SYMMETRIES))
    parser.add_argument("--out", type=Path, default=RESULTS / "symmetry_options_default.csv")
    parser.add_argument("--equivariant", action="store_true",
                        help="also the equivariant form's autoencoders (networks as given, no symmetry option), at main_ratio")
    parser.add_argument("--equivariant-hidden", type=int, default=32, help="its channels (per weight entry)")
    args = parser.parse_args(argv)
    P = resolve_params(load_profile(args.profile), {}, args.run_dir)["layer_autoencoders"]
    torch.set_num_threads(P.torch_threads)
    # as notebook 02: the state pools, the held-out train snapshots, the networks each split trains on
    data = ae.StageData.load(args.run_dir / "01_data", seed=P.seed, holdout_every=P.holdout_spacing())
    nets, held, spec = data.nets, data.held, data.spec
    plan, _ = ae.plan_experiments(spec, **P.plan_settings())
    configs = [r.config for r in plan if "main" in r.roles]
    print(f"train {len(nets['train'])}, validation {len(nets['validation'])}, held-out snapshots {len(held)}; "
          f"options {args.options}", flush=True)
    start = time.perf_counter()
    runs = ae.train_symmetry_options(args.options, configs, {**nets, "holdout": held}, data.pools, data.reference(),
                                     eval_states=P.eval_states, seed=P.seed, save_dir=args.run_dir / "_work" / "symmetry_options",
                                     jobs=P.jobs, torch_threads=P.torch_threads, progress=False, groups=data.groups())
    rows = [row for run in runs.values() for row in run.rows()]
    if args.equivariant:
        eq = [ae.LayerAEConfig(layer=layer, form="equivariant", hidden=args.equivariant_hidden,
                               latent=ae.latent_for_ratio(spec, layer, "equivariant", P.main_ratio)[0], **P.training_settings())
              for layer in range(spec.n_layers)]
        eq_run = ae.train_symmetry_options(["none"], eq, {**nets, "holdout": held}, data.pools, data.reference(),
                                           eval_states=P.eval_states,
                                           seed=P.seed, save_dir=args.run_dir / "_work" / "symmetry_options", jobs=P.jobs,
                                           torch_threads=P.torch_threads, progress=False)["none"]
        rows += [{**row, "symmetry": "none (equivariant form)"} for row in eq_run.rows()]
    table = pd.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    print(f"{time.perf_counter() - start:.0f} s; wrote {args.out}")
    print("training seconds per option (sum of its 6 models):")
    print(table.groupby("symmetry", sort=False)["wall_seconds"].sum().round(0).to_string())
    order = pd.MultiIndex.from_tuples([(option, form) for option in args.options for form in ae.FORMS]
                                      + ([("none (equivariant form)", "equivariant")] if args.equivariant else []))
    for col in ("val_over_mean_layer", "holdout_over_mean_layer", "val_functional", "train_functional"):
        if col in table:
            print(col)
            print(table.pivot_table(index=["symmetry", "form"], columns="layer", values=col).reindex(order).round(3).to_string())


if __name__ == "__main__":
    main()
