"""What a profile's stages cost on a 2-core machine, by env steps and measured throughput, for a zoo of a given size.

    python benchmarks/stage_budget.py                                   # default profile, the slow machine, 400 networks
    python benchmarks/stage_budget.py --networks 276 --runs 20          # the shipped zoo, grown to 20 runs
    python benchmarks/stage_budget.py --raw-rate 26000 --slowdown 1.0   # the AVX-512 machine of the 62.6-min run
    python benchmarks/stage_budget.py -p decoded_evaluation.max_extra_networks_per_split=16

Nothing is run. The stages whose cost is env steps (1: states, 3: decoded evaluation, 4: latent
evolution) are estimated from the profile's parameters and the zoo's size, at ``--raw-rate`` (raw
MuJoCo Hopper steps per second on the whole 2-core machine; 14,000 on the slow machines of this
kind without AVX-512) times the batched evaluator's efficiency over raw stepping
(``benchmarks/results/rollouts.json``: ``ours/raw`` on 2 cores, largest batch). The stages whose
cost is not env steps and does not grow with the zoo (2: autoencoder training, 5: TD3 learners,
6 and the book) take their wall time measured on the default run of 2026-12-02 (AMD EPYC family 25
model 17, AVX-512, idle) times ``--slowdown`` (1.5 for the slow machine: its stages 3 and 4 took
1.58x and 1.93x the AVX-512 machine's, and its whole run over 100 min against 62.6).

Stage 1 deploys ``min(max_state_networks, networks)`` networks for ``state_episodes`` full
episodes (zoo networks hop to the episode cap). Stage 3 scores, per split, ``min(max_networks_per_split,
split size)`` input networks (splits: ``--split-shares`` of the runs, spread evenly), decoded by the
main variants (each layer and all layers, both forms) on ``splits``, by the sweep, ablation and PCA
variants on ``max_extra_networks_per_split`` of them on ``extra_splits`` (their number from stage 2's
``models.csv`` and ``pca.csv`` of the published long run, which trains the same sweep), and the
identity control on the headline split, each for ``episodes`` episodes; inputs play the whole cap,
decoded networks ``--decoded-fill`` of it on average (0.26: what makes today's default stage 3 take
the slow machine's measured 17 min). Stage 4 runs ``grid x starts x n_seeds`` runs of
``budget_steps`` (spend and reporting share from the published long run's ``runs.csv``, reporting
scaled to ``report_episodes``) plus the random-policy sample; its cost does not depend on the zoo's
size (the start pools only pick ``n_seeds`` networks).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nnae_utils.pipeline import load_profile  # noqa: E402
from nnae_utils.stages import STAGES_BY_NAME  # noqa: E402

PUBLISHED = ROOT / "results" / "long"
SLOW_RAW_RATE = 14_000.0
"""Raw Hopper steps per second on a 2-core machine of this kind without AVX-512 (the slow ones)."""
SLOW_SLOWDOWN = 1.5
"""The slow machine's wall time over the AVX-512 machine's, for the training-bound stages."""
MEASURED_WALL_S = {"layer_autoencoders": 389.0, "cerl_comparison": 1427.0, "paper_figure3": 10.0, "book": 53.0}
"""Wall seconds of the default run on 2026-12-02 (AMD EPYC family 25 model 17, AVX-512, idle; Reproduce page)."""
MEASURED_SLOW_WALL_S = {"layer_autoencoders": 814.0}
"""Wall seconds measured since on a slow machine (AMD EPYC family 25 model 1, no AVX-512, idle, 2026-12-07), which
replace the entries above (divided by :data:`SLOW_SLOWDOWN`, then times ``--slowdown``): stage 2 on the
grown zoo (276 networks of 20 runs, 123 train networks; its per-epoch evaluation grows with them) with the four
symmetry options of before (none, align_runs, augment, canonical); the default now trains two (none, augment), so
this overestimates it."""
MEASURED_CERL_LEARNER_STEPS = 3 * 5 * 40_000
"""The measured stage 5's learner-bearing runs x env steps: cerl/weights, cerl/latent:all, td3; 5 seeds; 40k."""
BUDGET_MIN = {"data": 1, "layer_autoencoders": 10, "decoded_evaluation": 10, "latent_evolution": 16,
              "cerl_comparison": 16, "paper_figure3": 1, "book": 1}
"""Each stage's share of the default profile's hour on the slow machine (minutes)."""


def evaluator_efficiency() -> float:
    """The batched evaluator's steps per second over raw MuJoCo stepping, 2 cores, the largest batch measured."""
    ratios = json.loads((ROOT / "benchmarks/results/rollouts.json").read_text())["ratios"]
    two = [r for r in ratios if r["cores"] == 2]
    return float(max(two, key=lambda r: r["P"])["ours/raw"])


def variant_counts() -> tuple[int, int]:
    """(main variants, sweep + ablation + PCA variants) that stage 3 scores, from the published long stage 2."""
    models = pd.read_csv(PUBLISHED / "02_layer_autoencoders/models.csv")
    pca = pd.read_csv(PUBLISHED / "02_layer_autoencoders/pca.csv")
    forms = models.form.nunique()
    n_layers = models.layer.nunique()
    main = forms * (n_layers + 1)                                   # each layer alone, and all layers together
    extra = int((~models.roles.str.contains("'main'")).sum()) + len(pca) + forms   # + PCA all layers, per form
    return main, extra


def split_sizes(networks: int, runs: int, shares: tuple[float, float]) -> dict[str, int]:
    """Networks per split when ``runs`` runs of equal size are split by run, ``shares`` to validation and test."""
    held = [max(1, round(runs * s)) for s in shares]
    per_run = networks / runs
    sizes = {"validation": held[0], "test": held[1], "train": runs - sum(held)}
    return {s: int(round(n * per_run)) for s, n in sizes.items()}


def params(profile: str, overrides: list[str]) -> dict:
    prof = load_profile(profile)
    stages = {name: dict(values) for name, values in prof.stages.items()}
    for item in overrides:
        key, value = item.split("=", 1)
        stage, field = key.split(".", 1)
        stages.setdefault(stage, {})[field] = json.loads(value) if value[:1] in "[{0123456789-tf" else value
    return {name: STAGES_BY_NAME[name].params.from_mapping({**values, "run_dir": f"runs/{profile}"})
            for name, values in stages.items() if name in STAGES_BY_NAME}


def estimate(profile: str = "default", *, networks: int = 400, runs: int = 36, shares=(0.2, 0.2),
             raw_rate: float = SLOW_RAW_RATE, slowdown: float = SLOW_SLOWDOWN, decoded_fill: float = 0.26,
             overrides: list[str] = ()) -> pd.DataFrame:
    """One row per stage: env steps, minutes on 2 cores, the minutes budgeted, and how the cost was counted."""
    p = params(profile, list(overrides))
    rate = raw_rate * evaluator_efficiency()
    sizes = split_sizes(networks, runs, shares)
    rows = []

    d = p["data"]
    deployed = min(d.max_state_networks or networks, networks)
    steps = deployed * d.state_episodes * 1000
    rows.append(("data", steps, steps / rate, f"{deployed} of {networks} networks x {d.state_episodes} episodes"))

    slow_s = MEASURED_SLOW_WALL_S["layer_autoencoders"]
    rows.append(("layer_autoencoders", 0, slow_s / SLOW_SLOWDOWN * slowdown,
                 f"measured {slow_s:.0f} s on the slow machine, grown zoo, 4 symmetry options (training; not env steps)"))

    s3 = p["decoded_evaluation"]
    n_main, n_extra = variant_counts()
    scored = {s: min(s3.max_networks_per_split or n, n) for s, n in sizes.items()}
    extra = {s: min(s3.max_extra_networks_per_split or scored[s], scored[s]) for s in sizes}
    inputs = sum(scored[s] for s in set(s3.splits) | set(s3.extra_splits)) + scored[s3.headline_split]   # + identity
    decoded = (n_main * sum(scored[s] for s in s3.splits)
               + (n_extra * sum(extra[s] for s in s3.extra_splits) if (s3.sweep or s3.ablation or s3.pca) else 0))
    steps = (inputs + decoded_fill * decoded) * s3.episodes * s3.max_episode_steps
    rows.append(("decoded_evaluation", steps, steps / rate,
                 f"{'/'.join(str(scored[s]) for s in ('train', 'validation', 'test'))} of "
                 f"{'/'.join(str(sizes[s]) for s in ('train', 'validation', 'test'))} networks (train/val/test), "
                 f"sweep/ablation/PCA on {'/'.join(str(extra[s]) for s in s3.extra_splits)}; "
                 f"{decoded:,} decoded x {s3.episodes} episodes at fill {decoded_fill:g}"))

    s4 = p["latent_evolution"]
    past = pd.read_csv(PUBLISHED / "04_latent_evolution/runs.csv")
    past_params = json.loads((PUBLISHED / "04_latent_evolution/stage.json").read_text())["params"]
    spend = float((past.env_steps / past_params["budget_steps"]).mean())
    report = float((past.report_env_steps / past.env_steps).mean()) * s4.report_episodes / past_params["report_episodes"]
    n_runs = len(s4.grid) * len(s4.starts) * s4.n_seeds
    sampler = 4 * s4.sampler_policies * s4.sampler_episodes * s4.max_episode_steps
    steps = n_runs * s4.budget_steps * spend * (1 + report) + sampler
    rows.append(("latent_evolution", steps, steps / rate,
                 f"{n_runs} runs x {s4.budget_steps:,} (spend {spend:.2f}, reporting +{report:.0%}), sampler <= {sampler:,}"))

    # stage 5's time is its learners' updates: scale the measured run (3 TD3-bearing variants x 5 seeds x
    # 1 start x 40k steps) by the profile's learner runs x budget (evolution alone's env steps are small beside it)
    s5 = p["cerl_comparison"]
    learner_runs = sum(v != "evolution" for v in s5.variants) * s5.n_seeds * len(s5.starts)
    scale = learner_runs * s5.budget_steps / MEASURED_CERL_LEARNER_STEPS
    rows.append(("cerl_comparison", 0, MEASURED_WALL_S["cerl_comparison"] * slowdown * scale,
                 f"measured {MEASURED_WALL_S['cerl_comparison']:.0f} s x {slowdown:g} x {scale:.2f} "
                 f"({learner_runs} learner runs x {s5.budget_steps:,} steps against 15 x 40,000)"))
    for name in ("paper_figure3", "book"):
        rows.append((name, 0, MEASURED_WALL_S[name] * slowdown,
                     f"measured {MEASURED_WALL_S[name]:.0f} s x {slowdown:g} (learners / tables; not zoo-size bound)"))

    table = pd.DataFrame(rows, columns=["stage", "env_steps", "seconds", "how"])
    table["minutes"] = table.seconds / 60
    table["budget_min"] = table.stage.map(BUDGET_MIN)
    return table.drop(columns="seconds")[["stage", "env_steps", "minutes", "budget_min", "how"]]


def main(argv=None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="default")
    ap.add_argument("--networks", type=int, default=400, help="zoo size (networks)")
    ap.add_argument("--runs", type=int, default=36, help="independent runs in the zoo")
    ap.add_argument("--split-shares", type=float, nargs=2, default=(0.2, 0.2), metavar=("VALIDATION", "TEST"))
    ap.add_argument("--raw-rate", type=float, default=SLOW_RAW_RATE, help="raw Hopper steps/s on the whole 2-core machine")
    ap.add_argument("--slowdown", type=float, default=SLOW_SLOWDOWN, help="the machine's wall time over the AVX-512 machine's, for training")
    ap.add_argument("--decoded-fill", type=float, default=0.26, help="share of the episode cap a decoded network plays")
    ap.add_argument("-p", dest="overrides", action="append", default=[], metavar="STAGE.FIELD=VALUE")
    args = ap.parse_args(argv)
    table = estimate(args.profile, networks=args.networks, runs=args.runs, shares=tuple(args.split_shares),
                     raw_rate=args.raw_rate, slowdown=args.slowdown, decoded_fill=args.decoded_fill, overrides=args.overrides)
    eff = evaluator_efficiency()
    print(f"profile {args.profile}, zoo of {args.networks} networks in {args.runs} runs; {args.raw_rate:,.0f} raw steps/s x "
          f"{eff:.3f} (batched evaluator) = {args.raw_rate * eff:,.0f} env steps/s on 2 cores; training stages x {args.slowdown:g}")
    total = table.minutes.sum()
    shown = table.assign(env_steps=table.env_steps.map(lambda s: f"{s / 1e6:.1f}M" if s else "-"),
                         minutes=table.minutes.map("{:.1f}".format))
    with pd.option_context("display.max_colwidth", 140, "display.width", 250):
        print(shown.to_string(index=False))
    print(f"total: {total:.1f} min (budget {sum(BUDGET_MIN.values())} min); env steps {table.env_steps.sum() / 1e6:.1f}M")
    return table


if __name__ == "__main__":
    main()
