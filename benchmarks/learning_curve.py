"""The learning curve over the number of train runs (issue 29, item 2), on a run's zoo.

For every leave-runs-out fold of the zoo's ``splits.json`` (its ``folds``; a zoo without them, such as the
shipped 4-run zoo, gets folds drawn from its train runs with ``--sizes``), stage 2's main autoencoders
(the profile's configs and seeds, one symmetry option) are trained on the fold's train runs only and
measured on the same held-out runs (the validation and test runs): held-out functional loss over the
mean layer's, with an interval that resamples held-out runs, then their snapshots
(:mod:`nnae_utils.learning_curve`). A power law (and a log-linear curve) is fitted per layer and form,
and the ``k`` at which it reaches ``--target`` is reported, or that it is not reached within the fitted
range. Models go to ``<run-dir>/_work/learning_curve`` and are read back by a rerun.

    python -m nnae_utils.pipeline --profile default --run-dir runs/default --only data
    python benchmarks/learning_curve.py --run-dir runs/default --options none align_runs

writes ``benchmarks/results/learning_curve_<profile>.csv`` (one row per fold, option, layer and form),
``..._fit.csv`` and ``..._<profile>.png`` (``--append``: adding to the rows of other options and forms already there); with ``--retention N``, ``..._retention.csv``: N networks of each
held-out run deployed with each layer decoded by each fold's model (stage 3's paired protocol), and the
power-law fit of the retention's shortfall extrapolated to 90% retention. ``--quick`` (flat form, 8 epochs, k in {1, 2}, two folds of
k=1) writes to ``--quick-out`` (default ``/tmp/learning_curve_quick``), never to results/.

Measured: ``--quick`` on the shipped zoo, 70 s wall for 9 models (8 epochs) on 2 loaded cores; 49 s when read
back, with ``--retention 2`` (1 s: held-out decoded networks fall at once). Full run, estimated from stage 2's
own models on the shipped zoo (the 6 main models of one option: about 620 s of one core, epochs capped at
100): the grown zoo's 12 folds (k = 2, 4, 8, 16; 3 each) cost about 2 core-hours per option, both forms.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

from nnae_utils import learning_curve as lc, plots
from stage2_inputs import load_stage2_inputs

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, default=Path("runs/default"), help="a run whose data stage has run")
    parser.add_argument("--profile", default="default", help="profile whose stage-2 parameters are used")
    parser.add_argument("--options", nargs="+", default=["none"], help="symmetry options")
    parser.add_argument("--held-out", nargs="+", default=["validation", "test"], help="splits whose runs every fold is tested on")
    parser.add_argument("--sizes", nargs="+", type=int, default=[1, 2, 4, 8, 16], help="k values when splits.json has no folds")
    parser.add_argument("--per-size", type=int, default=3)
    parser.add_argument("--forms", nargs="+", default=["flat", "token"])
    parser.add_argument("--target", type=float, default=0.1, help="held-out ratio to extrapolate to")
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--retention", type=int, default=0, metavar="N",
                        help="also deploy N networks of each held-out run, each layer decoded by each fold's model (stage 3's paired protocol)")
    parser.add_argument("--episodes", type=int, default=5, help="paired episodes per network (with --retention)")
    parser.add_argument("--append", action="store_true",
                        help="keep the rows of the written files whose (option, form) this run does not compute")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--quick-out", type=Path, default=Path("/tmp/learning_curve_quick"))
    args = parser.parse_args(argv)
    overrides = {"max_epochs": 8, "patience": 3} if args.quick else None
    S = load_stage2_inputs(args.run_dir, args.profile, overrides)
    torch.set_num_threads(S.P.torch_threads)
    if args.quick:
        args.sizes, args.per_size, args.forms = [1, 2], 2, ["flat"]
        args.retention, args.episodes = args.retention or 2, 2
    configs = [c for c in S.configs if c.form in args.forms]
    if "folds" in S.splits and not args.quick:
        folds = [{**f, "runs": [f"run{r}" for r in f["runs"]]} for f in S.splits["folds"]]
        source = "splits.json"
    else:
        folds = lc.folds_from_runs(S.trainable_runs(), args.sizes, args.per_size, seed=S.P.seed)
        source = f"drawn from the train runs {S.trainable_runs()}"
    held = S.runs_of(*args.held_out)
    print(f"{len(folds)} folds ({source}): k = {sorted({f['k'] for f in folds})}; held-out runs {held}; "
          f"{len(configs)} configs x {len(args.options)} options", flush=True)
    start = time.perf_counter()
    models: dict = {}
    tables = [lc.fold_curve(folds, S.zoo.networks, S.labels, held_out_runs=held, configs=configs, pools=S.pools,
                            option=option, stop_mask=S.stop_mask, returns=S.returns, eval_states=S.P.eval_states,
                            seed=S.P.seed, save_dir=args.run_dir / "_work" / "learning_curve", jobs=S.P.jobs,
                            torch_threads=S.P.torch_threads, n_boot=args.n_boot, progress=True, models=models)
              for option in args.options]
    table = pd.concat(tables, ignore_index=True)
    wall = time.perf_counter() - start
    fits = pd.concat([lc.extrapolate(table, args.target, model=m) for m in lc.MODELS], ignore_index=True)
    out_dir = args.quick_out if args.quick else RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"learning_curve_{args.profile}" + ("_quick" if args.quick else "")
    table = _kept(out_dir / f"{stem}.csv", table, args.append)
    table.to_csv(out_dir / f"{stem}.csv", index=False)
    if args.retention:
        t0 = time.perf_counter()
        retention = lc.fold_retention(models, [lab for lab in S.labels if lab in set(held)], per_run=args.retention,
                                      episodes=args.episodes, n_boot=args.n_boot, seed=S.P.seed)
        retention["shortfall"] = 1.0 - retention["run_mean_retention"]
        fits = pd.concat([fits] + [lc.extrapolate(retention, 0.1, model=m, value="shortfall") for m in lc.MODELS], ignore_index=True)
        retention = _kept(out_dir / f"{stem}_retention.csv", retention, args.append)
        retention.to_csv(out_dir / f"{stem}_retention.csv", index=False)
        print(f"retention: {len(models)} models x {retention['networks'].iloc[0]} networks, {args.episodes} episodes: "
              f"{time.perf_counter() - t0:.0f} s")
        print(retention.pivot_table(index=["option", "form", "layer"], columns="k", values="run_mean_retention").round(3).to_string())
    fits = _kept(out_dir / f"{stem}_fit.csv", fits, args.append)
    fits.to_csv(out_dir / f"{stem}_fit.csv", index=False)
    plots.learning_curve(table, fits).savefig(out_dir / f"{stem}.png", dpi=120)
    cpu = table["wall_seconds"].sum()
    print(f"{wall:.0f} s wall; {cpu:.0f} s of model training ({(~table['reused']).sum()} trained, {table['reused'].sum()} read back); "
          f"wrote {out_dir / stem}.csv, _fit.csv, .png")
    print(table.pivot_table(index=["option", "form", "layer"], columns="k", values="ratio").round(3).to_string())
    print(fits[["value", "option", "form", "layer", "model", "k_values", "b", "k_target", "text"]].to_string(index=False))


def _kept(path: Path, new: pd.DataFrame, append: bool) -> pd.DataFrame:
    """``new``, after the rows of the file at ``path`` whose (option, form) ``new`` does not hold (``append``),
    so that runs of other options or forms add up in one file; without ``append``, ``new`` alone."""
    if not append or not path.is_file():
        return new
    old = pd.read_csv(path)
    done = set(zip(new["option"], new["form"]))
    return pd.concat([old[[key not in done for key in zip(old["option"], old["form"])]], new], ignore_index=True)


if __name__ == "__main__":
    main()
