"""What the ``long`` profile's reruns of stages 3-5 will cost: env steps and core-hours per stage.

    python benchmarks/long_budget.py                  # profiles/long.yaml
    python benchmarks/long_budget.py --profile default --target 2

Nothing is run. Each stage's env steps come from the profile's parameters (runs, seeds, budgets,
episodes), scaled by what past runs spent per unit of budget; core-hours from throughputs already
committed:

- **evaluation** (stages 3 and 4, evolution alone in stage 5): batched Hopper steps per second on
  one core, ``benchmarks/results/rollouts.json`` (``ours``, 1 core, the largest batch), times
  ``--eval-overhead`` for what is not stepping (decoding genomes, selection, checkpoints);
- **learners** (stage 5's hybrids and TD3): core-seconds per gradient update, fitted on the
  published ``long`` run's hybrid and TD3 runs (``results/long/05_cerl_comparison/runs.csv``:
  each run's CPU seconds, less its env steps at the evaluation rate, over its updates), which
  includes the learners' own unbatched rollouts;
- **stage 4's spend per run** (counted steps over budget, reporting steps over counted steps):
  ``results/long/04_latent_evolution/runs.csv``; stage 5's the same from its runs.csv.

Stage 3 is an upper bound: every episode of every input and decoded network is taken to run to
the episode cap (a decoded network that falls costs less), with the variants the published
``long`` stage 2 trained (``results/long/02_layer_autoencoders/summary.json``) and the zoo's
current split sizes (``zoo/hopper-v5/splits.json``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nnae_utils import genomes as gen  # noqa: E402
from nnae_utils.pipeline import load_profile  # noqa: E402
from nnae_utils.stages import STAGES_BY_NAME  # noqa: E402

PUBLISHED = ROOT / "results" / "long"


def eval_rate() -> float:
    """Batched evaluation, env steps per second on one core (the largest batch measured)."""
    rows = json.loads((ROOT / "benchmarks/results/rollouts.json").read_text())["results"]
    ours = [r for r in rows if r["method"] == "ours" and r["cores"] == 1]
    return float(max(ours, key=lambda r: r["P"])["steps_per_s"])


def update_cost(rate: float) -> tuple[float, int]:
    """Core-seconds per learner gradient update, from the published long stage 5 (median over its learner runs)."""
    runs = pd.read_csv(PUBLISHED / "05_cerl_comparison/runs.csv")
    params = json.loads((PUBLISHED / "05_cerl_comparison/stage.json").read_text())["params"]
    learners = runs[runs.label != "evolution"]
    updates = ((learners.buffer_n_added - params["learning_starts"]).clip(lower=0)
               * len(params["gammas"]) * params["updates_per_step"])
    steps = learners.env_steps + learners.report_env_steps + learners.probe_env_steps.fillna(0)
    per_update = (learners.cpu_s - steps / rate) / updates
    return float(per_update.median()), len(learners)


def params_of(profile: str) -> dict:
    prof = load_profile(profile)
    return {name: STAGES_BY_NAME[name].params.from_mapping({**prof.stages[name], "run_dir": f"runs/{profile}"})
            for name in ("decoded_evaluation", "latent_evolution", "cerl_comparison")}


def stage3(p, rate: float, overhead: float) -> dict:
    splits = json.loads((ROOT / "zoo/hopper-v5/splits.json").read_text())["splits"]
    n_of = {s: len(v) for s, v in splits.items()}
    ae = json.loads((PUBLISHED / "02_layer_autoencoders/summary.json").read_text())
    n_layers = 3                                    # the zoo's 64-64 actors: three linear layers
    main = 2 * (n_layers + 1)                       # flat and token forms, each layer and all layers
    extra = max(ae.get("n_autoencoders", main) - main, 0) + 2 * (n_layers + 1)   # sweep/ablation models, PCA
    networks = (main * sum(n_of.get(s, 0) for s in p.splits) + extra * sum(n_of.get(s, 0) for s in p.extra_splits)
                + sum(n_of.values()))           # the decoded networks, and every input network once
    steps = networks * p.episodes * p.max_episode_steps
    return {"stage": "3 decoded_evaluation", "runs": networks, "env_steps": steps,
            "core_hours": steps / rate * overhead / 3600,
            "note": f"upper bound: {networks} networks x {p.episodes} episodes x {p.max_episode_steps} steps"}


def stage4(p, rate: float, overhead: float) -> dict:
    past = pd.read_csv(PUBLISHED / "04_latent_evolution/runs.csv")
    past_params = json.loads((PUBLISHED / "04_latent_evolution/stage.json").read_text())["params"]
    spend = float((past.env_steps / past_params["budget_steps"]).mean())
    report = float((past.report_env_steps / past.env_steps).mean()) * p.report_episodes / past_params["report_episodes"]
    runs = 0
    for entry in p.grid:
        decoded_only = gen.split_start_through(entry.split("/", 1)[1])[1] or entry.endswith("~decoded")
        runs += p.n_seeds * sum(1 for s in p.starts if not (s == "scratch" and decoded_only))
    sampled = len({e.split("/", 1)[1] for e in p.grid if e.split("/", 1)[1].split(":")[0] in ("weights", "latent", "pca")
                   and "~" not in e and "@" not in e})   # the genomes notebook 04 samples random policies of
    sampler = sampled * p.sampler_policies * p.sampler_episodes * p.max_episode_steps   # upper bound
    steps = runs * p.budget_steps * spend * (1 + report) + sampler
    return {"stage": "4 latent_evolution", "runs": runs, "env_steps": steps,
            "core_hours": steps / rate * overhead / 3600,
            "note": f"{runs} runs x {p.budget_steps:,} (spend {spend:.2f}, reporting +{report:.0%}), sampler <= {sampler:,}"}


def stage5(p, rate: float, overhead: float, per_update: float) -> dict:
    past = pd.read_csv(PUBLISHED / "05_cerl_comparison/runs.csv")
    past_params = json.loads((PUBLISHED / "05_cerl_comparison/stage.json").read_text())["params"]
    learners = past[past.label != "evolution"]
    spend = float((learners.env_steps / past_params["budget_steps"]).mean())
    report = float((learners.report_env_steps / learners.env_steps).mean()) * p.report_episodes / past_params["report_episodes"]
    latent = past[past.label.str.startswith("cerl/latent")]
    probe = float((latent.probe_env_steps / latent.env_steps).mean()) * p.probe_episodes / past_params["probe_episodes"]
    n_learner_runs = sum(1 for v in p.variants if v != "evolution") * len(p.starts) * p.n_seeds
    n_latent_runs = sum(1 for v in p.variants if v.startswith("cerl/") and v != "cerl/weights") * len(p.starts) * p.n_seeds
    n_evo_runs = ("evolution" in p.variants) * len(p.starts) * p.n_seeds
    env = p.budget_steps * spend
    learner_steps = n_learner_runs * env * (1 + report) + n_latent_runs * env * probe
    updates = n_learner_runs * max(env - p.learning_starts, 0) * len(p.gammas) * p.updates_per_step
    evo_steps = n_evo_runs * p.budget_steps * (1 + report)
    core_s = learner_steps / rate + updates * per_update + evo_steps / rate * overhead
    return {"stage": "5 cerl_comparison", "runs": n_learner_runs + n_evo_runs, "env_steps": learner_steps + evo_steps,
            "core_hours": core_s / 3600,
            "note": (f"{n_learner_runs} learner runs x {len(p.gammas)} learners x {p.updates_per_step} updates/step "
                     f"({updates / 1e6:.1f}M updates), {n_evo_runs} evolution-alone runs")}


def main(argv=None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="long")
    ap.add_argument("--target", type=float, default=25.0, help="core-hours the reruns of stages 3-5 should fit in")
    ap.add_argument("--eval-overhead", type=float, default=1.3,
                    help="evaluation-bound stages' cost over pure batched stepping (decoding, selection, checkpoints)")
    args = ap.parse_args(argv)
    rate = eval_rate()
    per_update, n_fit = update_cost(rate)
    p = params_of(args.profile)
    rows = [stage3(p["decoded_evaluation"], rate, args.eval_overhead),
            stage4(p["latent_evolution"], rate, args.eval_overhead),
            stage5(p["cerl_comparison"], rate, args.eval_overhead, per_update)]
    table = pd.DataFrame(rows)
    total = {"stage": "total", "runs": int(table.runs.sum()), "env_steps": table.env_steps.sum(),
             "core_hours": table.core_hours.sum(), "note": f"target {args.target:g} core-hours"}
    table = pd.concat([table, pd.DataFrame([total])], ignore_index=True)
    print(f"profile {args.profile}: evaluation {rate:,.0f} env steps/s per core (x{args.eval_overhead} overhead); "
          f"learner update {per_update * 1e3:.2f} core-ms (fitted on {n_fit} published long stage-5 runs)")
    shown = table.assign(env_steps=(table.env_steps / 1e6).map("{:,.1f}M".format), core_hours=table.core_hours.map("{:.1f}".format))
    with pd.option_context("display.max_colwidth", 120, "display.width", 200):
        print(shown.to_string(index=False))
    print(f"wall time on 2 cores: about {total['core_hours'] / 2:.1f} h")
    return table


if __name__ == "__main__":
    main()
