"""The Benchmarks page's generated part (``book/benchmarks.md`` includes it), from the committed
results in ``benchmarks/results``.

Its prose lives here, beside the book's pages and outside the ``nnae_utils`` package, because the
pipeline's stage caches hash that package's files (all but ``book.py``): a sentence edited here
rebuilds the book, not every stage. ``nnae_utils.book.benchmarks_markdown`` loads this file by its path when it
assembles the book; Sphinx never imports it (``_config.yml`` loads only ``book_pages`` from this
folder).
"""
import json
import shutil
from pathlib import Path


def _read_result(results: Path, name: str) -> dict | None:
    path = results / name
    return json.loads(path.read_text()) if path.is_file() else None


def markdown(results: Path, figures: Path) -> str:
    """The generated part of the book's Benchmarks page: the committed results in ``results``
    (``benchmarks/results``), read when the book is built; a figure a benchmark drew is copied into
    ``figures``. A benchmark with no committed result says so."""
    out: list[str] = []
    missing = "_No committed result: run the command above._\n"

    def fmt_ci(ci) -> str:
        return f"[{ci[0]:.0f}, {ci[1]:.0f}]" if ci else "n/a"

    out.append("## Our TD3 against stable-baselines3\n\n`python benchmarks/td3_vs_sb3.py && python benchmarks/td3_vs_sb3.py --report`\n")
    td3 = _read_result(results, "td3_vs_sb3/summary.json")
    if td3 and td3.get("implementations"):
        state = "complete" if td3.get("complete") else "**not complete**: some runs had not reached their last step"
        out.append(f"Same hyperparameters, sizes, seeds and evaluation (see `benchmarks/README.md`); {state}.\n")
        out.append("| implementation | seeds | last step | final return (mean of last 5 evaluations), mean over seeds [95% CI] | area under curve / steps [95% CI] |")
        out.append("|---|---|---|---|---|")
        for impl, r in td3["implementations"].items():
            fr, auc = r["final_return"], r["auc_mean_return"]
            out.append(f"| {impl} | {len(r['seeds'])} | {min(r['last_step'].values()):,} | {fr['mean']:.0f} {fmt_ci(fr['ci95'])} "
                       f"| {auc['mean']:.0f} {fmt_ci(auc['ci95'])} |")
        for metric, d in td3.get("ours_minus_sb3", {}).items():
            out.append(f"\nOurs minus SB3, {metric.replace('_', ' ')}: {d['difference_of_means']:+.0f} "
                       f"(95% bootstrap CI {fmt_ci(d['ci95'])}, Welch's t-test p = {d['welch_t_test_p']:.2f}, seeds {d['n']}).")
        if "speed_ratio_ours_over_sb3_in_run" in td3:
            out.append(f"\nUpdates per second, ours / SB3, in the same run: {td3['speed_ratio_ours_over_sb3_in_run']:.2f}.")
        png = results / "td3_vs_sb3" / "curves.png"
        if png.is_file():
            shutil.copy2(png, figures / "td3_vs_sb3.png")
            out.append("\n```{figure} _generated/td3_vs_sb3.png\n:name: fig-td3-vs-sb3\n\nIn-training return (5 episodes on the run's "
                       "selection seeds, every 5k steps) of our TD3 (left) and stable-baselines3's (right), per seed and "
                       "their mean.\n```\n")
    else:
        out.append(missing)

    out.append("\n## Batched Hopper-v5 rollouts\n\n`python benchmarks/rollouts.py`\n")
    roll = _read_result(results, "rollouts.json")
    if roll:
        out.append("Environment steps per second of `rollouts.evaluate` over raw MuJoCo stepping (the physics "
                   "limit) and over gymnasium's `SyncVectorEnv`, same run (exact equality with gymnasium's Hopper-v5 "
                   "is a test, not a benchmark: `tests/test_rollouts.py`).\n")
        out.append("| cores | policies | ours / raw physics | ours / SyncVectorEnv |\n|---|---|---|---|")
        out += [f"| {r['cores']} | {r['P']} | {r['ours/raw']:.2f} | {r['ours/sync']:.2f} |" for r in roll["ratios"]]
    else:
        out.append(missing)

    out.append("\n## What a zoo network costs\n\n`python benchmarks/td3_cost.py`, `python benchmarks/distill_cost.py`\n")
    cost = _read_result(results, "td3_cost.json")
    if cost:
        out.append("TD3 update throughput per core against the zoo's learner (actor 64-64, critic 256-256), same run; "
                   "core-hours to the bar only where a measured learning curve exists.\n")
        out.append("| candidate | updates / CPU-s vs baseline | core-hours to the bar |\n|---|---|---|")
        for c in cost["candidates"]:
            hours = f"{c['core_hours_to_bar']:.2f}" if c.get("core_hours_to_bar") is not None else "unmeasured"
            out.append(f"| {c['description']} | {c['ratio_vs_baseline_cpu_median_round']:.2f} | {hours} |")
    distill = _read_result(results, "distill_cost.json")
    if distill:
        out.append(f"\nDAgger students of snapshots scoring {distill['teacher_min_return']:.0f} or more: "
                   f"{distill['student_cpu_s_mean']:.1f} CPU-s each, {distill['student_share_at_or_above_bar']:.0%} of "
                   f"{len(distill['students'])} at or above {distill['bar']:.0f} (median {distill['student_return_median']:.0f}); "
                   f"{distill['cpu_s_per_admitted_student']:.0f} CPU-s per admitted student against at least "
                   f"{distill['cpu_s_per_td3_candidate_lower_bound']:.0f} per TD3 candidate snapshot past the bar: "
                   f"{distill['td3_over_student_cost']:.1f}x cheaper.")
    if not cost and not distill:
        out.append(missing)

    out.append("\n## DAgger students against snapshots, in weight space\n\n`python benchmarks/students_vs_snapshots.py`\n")
    far = _read_result(results, "students_vs_snapshots.json")
    if far:
        out.append(f"Relative distance per layer, ||W - W_teacher|| / ||W_teacher||, from a snapshot returning "
                   f"{far['teacher_return']:.0f} ({far['teacher']}), raw and after weight matching (the other network's "
                   "hidden units reordered to best match the teacher's). The shipped zoo has no students for this reason "
                   "(see the Reproduce page).\n")
        out.append("| network | return | raw (layers 0, 1, 2) | matched (layers 0, 1, 2) |\n|---|---|---|---|")
        out += [f"| {r['network']} | {r['return']:.0f} | {', '.join(f'{x:.2f}' for x in r['raw'])} "
                f"| {', '.join(f'{x:.2f}' for x in r['matched'])} |" for r in far["rows"]]
    else:
        out.append(missing)

    out.append("\n## The functional loss\n\n`python benchmarks/functional_loss.py`\n")
    loss = _read_result(results, "functional_loss.json")
    if loss:
        ceiling = loss.get("matmul_ceiling") or [{}]
        out.append(f"Networks x states per second of the batched loss over a per-network loop ({loss['primary']['case']}): "
                   f"**{loss['primary']['speedup']:.1f}x**, against a goal of {loss['goal_speedup']:.0f}x. The same "
                   f"matrix products, batched against looped, gain {ceiling[0].get('ratio', float('nan')):.2f}x: on one CPU "
                   "thread there is little more to win.")
    else:
        out.append(missing)

    out.append("\n## Training with the functional loss: learning rate and variants\n\n"
               "`python benchmarks/functional_loss_training.py --layer 1 --steps 1500`\n")
    runs = [(name, _read_result(results, name)) for name in sorted(p.name for p in results.glob("functional_loss_training_layer*.json"))]
    runs = [(name, r) for name, r in runs if r]
    if runs:
        out.append("The flat (paper's) autoencoder of one layer of the default run's zoo at 10x, trained with one variant "
                   "changed at a time (same minibatches, states and number of Adam steps; lr 1e-3 unless named). Functional "
                   "loss at the last step on the train networks, on held-out snapshots of the train runs and on the "
                   "validation run, beside the mean layer's; the share of the policy's hidden units the decoded layer "
                   "leaves dead, and of the autoencoder's own ELU units that are saturated (see the method page).\n")
        for name, r in runs:
            mean = r["mean_layer"]
            layer = r["rows"][0]["layer"]
            steps = r["rows"][0]["curve"][-1]["step"]
            out.append(f"\n`{name}`: layer {layer}, {steps:,} steps; mean layer: train {mean['train']:.2f}, "
                       f"held-out {mean['held']:.2f}, validation {mean['val']:.2f}. Command: `{r['command']}`.\n")
            out.append("| form | variant | train | held-out | validation | weight MSE (train) | policy units dead | AE units saturated |")
            out.append("|---|---|---|---|---|---|---|---|")
            for row in r["rows"]:
                saturated = row.get("autoencoder_saturated")
                dead = row["dead_share_train"]
                out.append(f"| {row['form']} | {row['variant']} | {row['train_functional']:.3f} | {row['held_functional']:.3f} "
                           f"| {row['val_functional']:.3f} | {row['train_weight_mse']:.3g} "
                           f"| {'n/a' if dead != dead else f'{dead:.0%}'} "
                           f"| {'not measured' if saturated is None else f'{saturated:.0%}'} |")
    else:
        out.append(missing)
    out += _zoo_learners(results, missing)
    out += _symmetry_options(results, missing)
    out += _learning_curve(results, figures, missing)
    return "\n".join(out) + "\n"


def _zoo_learners(results: Path, missing: str) -> list[str]:
    """Which TD3 learner grows the zoo cheapest (issue 27), and the ensemble trainer's own speed."""
    out = ["\n## Which TD3 learner grows the zoo\n\n`python benchmarks/zoo_learners.py`, "
           "`python benchmarks/td3_ensemble_loop.py`\n"]
    learners = _read_result(results, "zoo_learners.json")
    if not learners:
        return out + [missing]
    out.append(f"CPU core-hours of real zoo runs (same protocol: actor 64-64 relu, selection evaluation every 5000 "
               f"steps), to the first evaluation at or above {learners['bar']:.0f} and to the "
               f"{learners['candidates_k']}th candidate (where a grown run stops). A run is admitted when at least "
               f"{learners['min_kept']} of its candidates pass the zoo's admission and report seeds; the cost per "
               "admitted run charges every finished run, failures included, to the admitted ones. An ensemble's run "
               "is charged its share of the process's CPU.\n")
    out.append("| learner | finished runs | admitted | core-h to the bar (median) | core-h per admitted run "
               "| bounds once all its seeds finish |\n|---|---|---|---|---|---|")
    for learner in learners["learners"]:
        label = f"critic {'-'.join(map(str, learner['critic_hidden']))}" + (f", ensemble of {learner['ensemble']}" if learner["ensemble"] > 1 else "")
        per_run = learner.get("core_h_per_admitted_run")
        to_bar = learner.get("median_core_h_to_bar")
        bounds = ", ".join("n/a" if b is None else f"{b:.2f}" for b in learner.get("core_h_per_admitted_run_bounds", [None, None]))
        out.append(f"| {label} | {learner['finished_runs']} of {len(learner['seeds'])} | {learner['admitted_runs']} "
                   f"| {'n/a' if to_bar is None else f'{to_bar:.2f}'} | {'n/a' if per_run is None else f'{per_run:.2f}'} "
                   f"| [{bounds}] |")
    chosen = learners.get("chosen")
    out.append(f"\nChosen learner: **{chosen['name']}**." if chosen else
               f"\nNo learner chosen yet: the rule waits for {learners['min_runs']} finished runs of every learner, or "
               "for the bounds to separate one learner from the others (lower: every unfinished run admitted at no "
               "further cost; upper: every unfinished run failing at the step cap) "
               f"(cheapest so far: {learners.get('leader_so_far') or 'none'}).")
    loop = _read_result(results, "td3_ensemble_loop.json")
    if loop:
        s = loop["summary"]
        out.append(f"\nThe ensemble trainer against single runs in the same run (whole training loop): "
                   f"{s['ratio_cpu']:.2f}x the member-steps per CPU-second, {s['ratio_wall']:.2f}x per wall-second "
                   f"(load average {loop['load_average_before'][0]:.1f} at the start: other work shared the machine).")
    return out


def _symmetry_options(results: Path, missing: str) -> list[str]:
    """Stage 2's symmetry options on a held-out run and on held-out snapshots (issue 29)."""
    out = ["\n## Symmetry options of the layer autoencoders\n\n`python benchmarks/symmetry_options.py`\n"]
    path = results / "symmetry_options_default.csv"
    if not path.is_file():
        return out + [missing]
    import pandas as pd

    table = pd.read_csv(path)
    out.append("Functional loss over the mean layer's (1 = no better than predicting the mean layer), on the "
               "validation run (never trained on) and on held-out snapshots of the train runs, per option, layer and "
               "form, on the default profile's zoo.\n")
    out.append("| option | layer | form | latent | validation run | held-out snapshots |\n|---|---|---|---|---|---|")
    out += [f"| {r.symmetry} | {r.layer} | {r.form} | {r.latent_dim} | {r.val_over_mean_layer:.2f} "
            f"| {r.holdout_over_mean_layer:.2f} |" for r in table.itertuples()]
    return out


def _learning_curve(results: Path, figures: Path, missing: str) -> list[str]:
    """How many independent train runs a layer autoencoder needs (issue 29, item 2)."""
    out = ["\n## How many training runs a layer autoencoder needs\n\n"
           "`python benchmarks/learning_curve.py --run-dir runs/default --forms flat --retention 4`\n"]
    path = results / "learning_curve_default.csv"
    if not path.is_file():
        return out + [missing]
    import pandas as pd

    table = pd.read_csv(path)
    held = int(table["n_held_out_runs"].max()) if "n_held_out_runs" in table else 0
    out.append("Stage 2's main autoencoders (the default profile's settings; symmetry options "
               f"{', '.join(sorted(table['option'].unique()))}; forms {', '.join(sorted(table['form'].unique()))}), each trained on the snapshots of k train runs only "
               "(the zoo's leave-runs-out folds, `splits.json`), all measured on the same held-out runs"
               + (f" ({held}: the validation and test runs)" if held else "") + ". Functional loss over the "
               "train networks' mean layer's (1: no better than the mean layer), mean over held-out runs of the "
               "per-network ratio; per k the mean over folds and, in brackets, the lowest and highest fold's "
               "interval bound (bootstrap over held-out runs, then their snapshots).\n")
    grouped = table.groupby(["option", "form", "layer", "k"]).agg(ratio=("ratio", "mean"), low=("low", "min"), high=("high", "max"),
                                                         folds=("fold", "nunique")).reset_index()
    ks = sorted(grouped["k"].unique())
    out.append("| option | form | layer | " + " | ".join(f"k = {k}" for k in ks) + " |\n|---|---|---|" + "---|" * len(ks))
    for (option, form, layer), g in grouped.groupby(["option", "form", "layer"]):
        cells = {int(r.k): f"{r.ratio:.2f} [{r.low:.2f}, {r.high:.2f}] ({r.folds})" for r in g.itertuples()}
        out.append(f"| {option} | {form} | {layer} | " + " | ".join(cells.get(int(k), "n/a") for k in ks) + " |")
    if {"train_functional", "held_out_functional"} <= set(table):
        medians = table.groupby(["option", "form"])[["train_functional", "held_out_functional"]].median()
        out.append("\nThe same models' functional loss, median over folds and layers, on their own train networks "
                   "and on the held-out runs' networks: " + "; ".join(
                       f"{o} / {f} {r.train_functional:.2f} and {r.held_out_functional:.2f}" for (o, f), r in medians.iterrows()) + ".")
    retention_path = results / "learning_curve_default_retention.csv"
    if retention_path.is_file():
        ret = pd.read_csv(retention_path)
        per_k = ret.groupby(["option", "form", "layer", "k"]).agg(r=("run_mean_retention", "mean"), low=("low", "min"),
                                                         high=("high", "max"), n=("networks", "max")).reset_index()
        out.append(f"\nDeployed retention (return of a held-out network with one layer decoded over its own, stage 3's "
                   f"paired protocol; {int(per_k['n'].max())} networks per fold), mean over folds [lowest, highest "
                   "fold bound]:\n")
        out.append("| option | form | layer | " + " | ".join(f"k = {k}" for k in ks) + " |\n|---|---|---|" + "---|" * len(ks))
        def pct(x: float) -> str:
            return f"{max(x, 0.0):.0%}" if x > -0.005 else f"{x:.0%}"  # no "-0%"

        for (option, form, layer), g in per_k.groupby(["option", "form", "layer"]):
            cells = {int(r.k): f"{pct(r.r)} [{pct(r.low)}, {pct(r.high)}]" for r in g.itertuples()}
            out.append(f"| {option} | {form} | {layer} | " + " | ".join(cells.get(int(k), "n/a") for k in ks) + " |")
    fit_path = results / "learning_curve_default_fit.csv"
    if fit_path.is_file():
        fits = pd.read_csv(fit_path)
        fits = fits[fits["model"] == "power"]
        if len(fits):
            out.append("\nPower-law fits in k, extrapolated (the loss ratio to 0.1; retention's shortfall to 0.1, "
                       "90% retention):\n")
            out += [f"- {r.value}, {r.option} / {r.form}, layer {r.layer}: {r.text}" for r in fits.itertuples()]
    png = results / "learning_curve_default.png"
    if png.is_file():
        shutil.copy2(png, figures / "learning_curve_default.png")
        out.append("\n```{figure} _generated/learning_curve_default.png\n:name: fig-learning-curve-default\n\n"
                   "Held-out functional loss over the mean layer's against the number of train runs k, per fold, "
                   "with the fitted curves.\n```\n")
    return out
