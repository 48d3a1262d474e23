"""How far from a TD3 snapshot, in weight space, lie a DAgger student of it, a later snapshot of
the same run, and a snapshot of another run: raw, and after weight matching (the other network's
hidden units reordered to best match the snapshot's, ``nnae_utils.autoencoders.align_hidden_units``,
as stage 2 aligns networks).

    python benchmarks/students_vs_snapshots.py      # ~2 min; writes results/students_vs_snapshots.json

Why it matters: a flat layer autoencoder sees a layer's weights in the order the units happen to
have. Snapshots of one TD3 run share that order (they descend from one initialisation); a student
starts from its own random weights. Distances are relative, per layer: ||W_other - W_teacher|| /
||W_teacher|| (weights only, biases left out). Students use the zoo profile's settings
(``DistillConfig()``) with seeds 0-2; the teacher is the zoo's seed-0 run at its last step.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nnae_utils.distill import DistillConfig, distill  # noqa: E402
from nnae_utils.autoencoders import align_hidden_units  # noqa: E402
from nnae_utils.policies import load_network  # noqa: E402
from nnae_utils.provenance import code_revision, machine, runtime_versions  # noqa: E402
from nnae_utils.rollouts import evaluate  # noqa: E402
from nnae_utils.seeds import eval_seeds  # noqa: E402

RUNS = ROOT / "zoo" / "training" / "154f9d5fc5cc"
TEACHER = RUNS / "seed_0" / "snapshots" / "step_0410000.safetensors"
SAME_RUN = {"same run, 5k steps earlier": "seed_0/snapshots/step_0405000.safetensors",
            "same run, 20k steps earlier": "seed_0/snapshots/step_0390000.safetensors",
            "same run, 80k steps earlier": "seed_0/snapshots/step_0330000.safetensors",
            "run 1, step 550k": "seed_1/snapshots/step_0550000.safetensors"}


def distances(net, teacher) -> list[float]:
    return [round(float(np.linalg.norm(net.params[f"layers.{i}.weight"] - teacher.params[f"layers.{i}.weight"])
                        / np.linalg.norm(teacher.params[f"layers.{i}.weight"])), 4) for i in range(teacher.spec.n_layers)]


def main() -> int:
    torch.set_num_threads(1)
    teacher = load_network(TEACHER)
    others = {name: load_network(RUNS / rel) for name, rel in SAME_RUN.items()}
    students = {f"DAgger student, seed {s}": distill(teacher, DistillConfig(seed=s), teacher_id="seed_0/step_0410000").network
                for s in range(3)}
    nets = {**others, **students}
    returns = evaluate([teacher, *nets.values()], eval_seeds("zoo_admission", 10), nthread=1).returns.mean(axis=1)
    rows = []
    for (name, net), ret in zip(nets.items(), returns[1:]):
        rows.append({"network": name, "return": round(float(ret), 1), "raw": distances(net, teacher),
                     "matched": distances(align_hidden_units(net, teacher), teacher)})
        print(f"{name:28s} return {ret:6.0f}  raw {rows[-1]['raw']}  matched {rows[-1]['matched']}", flush=True)
    out = {"command": "python benchmarks/students_vs_snapshots.py", "teacher": str(TEACHER.relative_to(ROOT)),
           "teacher_return": round(float(returns[0]), 1), "what": __doc__.split("\n\n")[2], "rows": rows,
           "versions": runtime_versions(), "code_revision": code_revision(), "machine": machine()}
    path = ROOT / "benchmarks" / "results" / "students_vs_snapshots.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
