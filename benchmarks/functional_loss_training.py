"""Why does the paper's functional loss train the flat layer autoencoder so badly? (issue 5)

On the shipped zoo, stage 2's flat autoencoders trained with the functional loss stay near the
"mean layer" (a code that carries no information) on layers 0 and 1, while the same architecture
trained on weight MSE reconstructs the train networks almost exactly. This script trains the
flat (and token) autoencoder of one layer under several training variants, each for the same
number of gradient steps on the same minibatches, and reports the functional loss on the train
networks, on held-out snapshots of the train runs, and on the validation run, beside the mean
layer's loss. It separates "the optimiser settings are wrong" from "the loss gives no usable signal".

Variants (all: the stage's architecture, Adam, 64 networks x 128 states per step):

- ``functional``: the paper's loss as stage 2 trains it (lr 1e-3);
- ``functional lr 3e-4`` / ``lr 1e-4`` / ``lr 3e-3``: the learning rate;
- ``functional, zero-init decoder``: the decoder's last layer starts at zero, so every decoded
  layer starts exactly at the train mean (no random first decoding that kills hidden units);
- ``functional, squared``: the squared L2 distance (MSE on actions) instead of the L2 norm;
- ``functional, clip 1``: lr 1e-3 with the gradient's norm clipped at 1;
- ``weights -> functional`` (lr 1e-3, 3e-4): weight MSE for the first third of the steps, then the functional loss;
- ``both``: functional + weight MSE throughout; ``weights``: weight MSE only (the reference).

It also reports the share of the decoded layer's hidden units that are dead (zero on every
evaluation state) in the decoded train networks, against the input networks' own share, and the
share of the autoencoder's own hidden ELU units that are saturated (below -5 for every train network).

Run (about 5 minutes on one core):

    python benchmarks/functional_loss_training.py --run-dir runs/default --layer 1 --steps 1500

writes ``benchmarks/results/functional_loss_training_layer{L}.json``.
"""
from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path

import numpy as np
import torch

from nnae_utils import autoencoders as ae
from nnae_utils.provenance import code_revision, machine, runtime_versions
from nnae_utils.states import StateDataset
from nnae_utils.zoo import load_zoo

VARIANTS = {
    # name: (loss, lr, zero-init decoder, squared functional, weight-MSE warm-up share, gradient-norm clip)
    "functional": ("functional", 1e-3, False, False, 0.0, 0.0),
    "functional lr 3e-3": ("functional", 3e-3, False, False, 0.0, 0.0),
    "functional lr 3e-4": ("functional", 3e-4, False, False, 0.0, 0.0),
    "functional lr 1e-4": ("functional", 1e-4, False, False, 0.0, 0.0),
    "functional, clip 1": ("functional", 1e-3, False, False, 0.0, 1.0),
    "functional, zero-init decoder": ("functional", 1e-3, True, False, 0.0, 0.0),
    "functional, squared": ("functional", 1e-3, False, True, 0.0, 0.0),
    "weights -> functional": ("functional", 1e-3, False, False, 1 / 3, 0.0),
    "weights -> functional lr 3e-4": ("functional", 3e-4, False, False, 1 / 3, 0.0),
    "both": ("both", 1e-3, False, False, 0.0, 0.0),
    "weights": ("weights", 1e-3, False, False, 0.0, 0.0),
    "weights lr 3e-4": ("weights", 3e-4, False, False, 0.0, 0.0),
}


def split_data(run_dir: Path, holdout_every: int, eval_states: int, seed: int):
    """Train / held-out train snapshots / validation, as notebook 02 builds them."""
    data_dir = run_dir / "01_data"
    zoo = load_zoo(data_dir / "zoo")
    dataset = StateDataset.load(data_dir / "states.npz")
    frame = zoo.frame()
    split_of = frame.set_index("id")["split"]
    pools = ae.split_states(dataset.states, dataset.is_random, dataset.owner,
                            [split_of[r["id"]] for r in zoo.records], seed=seed)
    held_ids = set(zoo.holdout_snapshots(holdout_every))
    def pick(keep) -> list:
        return [n for n, r in zip(zoo.networks, zoo.records) if keep(r)]

    train = pick(lambda r: split_of[r["id"]] == "train" and r["id"] not in held_ids)
    held = pick(lambda r: r["id"] in held_ids)
    val = pick(lambda r: split_of[r["id"]] == "validation")
    return (ae.LayerData.build(train, pools["train"], eval_states, seed=seed),
            ae.LayerData.build(held, pools["train"], eval_states, seed=seed + 2),
            ae.LayerData.build(val, pools["validation"], eval_states, seed=seed + 1))


def dead_share(layer: int, data: ae.LayerData, code: ae.LayerCode | None = None) -> float:
    """Share of the layer's output units (hidden layers only) that are zero on every evaluation state,
    in ``data``'s networks (``code``: with the layer decoded by it)."""
    if layer == data.stack.spec.n_layers - 1:
        return float("nan")
    w, b = data.stack.layer(layer) if code is None else ae.reconstruct_stack(code, data.stack)
    x, _ = data.eval_inputs(layer)
    with torch.no_grad():
        pre = torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))  # (P, S, out)
    return float((pre <= 0).all(dim=1).float().mean())


def saturated_share(model: ae.LayerAutoencoder, data: ae.LayerData) -> float:
    """Share of the autoencoder's hidden ELU units (encoder and decoder) below -5 on every train network:
    their gradient is under 1% of a live unit's, and a collapsed autoencoder decodes every input alike."""
    w, b = data.stack.layer(model.layer)
    with torch.no_grad():
        h_enc = model.encoder[0]((model._units(w, b) - model.norm_mean) / model.norm_std)
        z = model.encoder[2](model.encoder[1](h_enc))  # the rest of the encoder, from its hidden layer
        if model.form == "token":
            z = z.reshape(z.shape[0], model.n_out, model.config.latent)
        h_dec = model.decoder[0](z)
    dead = [(h.reshape(-1, h.shape[-1]) < -5).all(dim=0).float() for h in (h_enc, h_dec)]
    return float(torch.cat(dead).mean())


def train_variant(name: str, form: str, layer: int, latent: int, hidden: int, steps: int, train: ae.LayerData,
                  sets: dict[str, ae.LayerData], seed: int, every: int) -> dict:
    loss, lr, zero_init, squared, warmup, clip = VARIANTS[name]
    cfg = ae.LayerAEConfig(layer=layer, form=form, latent=latent, hidden=hidden, loss=loss, lr=lr, seed=seed)
    model = ae.LayerAutoencoder.create(cfg, train.stack.spec, train.stack)
    if zero_init:
        torch.nn.init.zeros_(model.decoder[-1].weight)
        torch.nn.init.zeros_(model.decoder[-1].bias)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    std = ae.layer_std(train.stack, layer)
    rng = np.random.default_rng(seed)  # the same minibatches and states for every variant
    n_batch = min(64, len(train.stack))
    curve, start = [], time.perf_counter()
    for step in range(1, steps + 1):
        idx = rng.choice(len(train.stack), size=n_batch, replace=False)
        batch = train.stack.select(idx)
        states = torch.from_numpy(train.states[rng.integers(0, len(train.states), size=(n_batch, 128))])
        w, b = batch.layer(layer)
        w_hat, b_hat = model.reconstruct_t(w, b)
        mse = ae.weight_mse(w_hat, b_hat, w, b, std)
        if loss == "weights" or step <= warmup * steps:
            objective = mse
        else:
            if squared:  # the one variant of the loss itself; every other variant trains the suite's loss
                x = ae.layer_input(batch, layer, states)
                with torch.no_grad():
                    y_in = ae.forward_from(batch, layer, x, w, b)
                functional = (ae.forward_from(batch, layer, x, w_hat, b_hat) - y_in).pow(2).sum(-1).mean()
            else:
                functional = ae.functional_loss(batch, layer, w_hat, b_hat, states)
            objective = functional + (mse if loss == "both" else 0.0)
        opt.zero_grad(set_to_none=True)
        objective.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if step % every == 0 or step == steps:
            model.eval()
            scores = {k: ae.evaluate_code(model, d, std) for k, d in sets.items()}
            point = {"step": step, **{f"{k}_functional": v["functional"] for k, v in scores.items()},
                     "train_weight_mse": scores["train"]["weight_mse"],
                     "autoencoder_saturated": saturated_share(model, train)}
            model.train()
            curve.append(point)
    model.eval()
    final = scores  # the last step is always evaluated
    best_held = min(p["held_functional"] for p in curve)
    return {"variant": name, "form": form, "layer": layer, "latent_dim": model.latent_dim,
            "ratio": model.compression_ratio, "seconds": time.perf_counter() - start,
            **{f"{k}_functional": v["functional"] for k, v in final.items()},
            **{f"{k}_weight_mse": v["weight_mse"] for k, v in final.items()},
            "best_held_functional": best_held,
            "dead_share_train": dead_share(layer, sets["train"], model),
            "autoencoder_saturated": saturated_share(model, train), "curve": curve}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", default="runs/default", help="a run whose stage 1 (01_data) exists")
    parser.add_argument("--layer", type=int, default=1)
    parser.add_argument("--forms", nargs="+", default=["flat"])
    parser.add_argument("--ratio", type=float, default=10.0)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--every", type=int, default=250)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; known: {list(VARIANTS)}")
    torch.set_num_threads(1)
    train, held, val = split_data(Path(args.run_dir), holdout_every=5, eval_states=2048, seed=args.seed)
    sets = {"train": train, "held": held, "val": val}
    spec = train.stack.spec
    mean = {k: ae.mean_layer_loss(train, d, args.layer) for k, d in sets.items()}
    inputs_dead = dead_share(args.layer, train)
    print(f"layer {args.layer}: {len(train.stack)} train, {len(held.stack)} held-out, {len(val.stack)} validation networks; "
          f"mean layer loss train {mean['train']:.3f} held {mean['held']:.3f} val {mean['val']:.3f}; "
          f"dead units of the input networks {inputs_dead:.2f}")
    rows = []
    for form in args.forms:
        latent, ratio = ae.latent_for_ratio(spec, args.layer, form, args.ratio)
        hidden = 256 if form == "flat" else 64
        for name in args.variants:
            row = train_variant(name, form, args.layer, latent, hidden, args.steps, train, sets, args.seed, args.every)
            rows.append(row)
            print(f"{form:5s} {name:32s} train {row['train_functional']:.3f}  held {row['held_functional']:.3f} "
                  f"(best {row['best_held_functional']:.3f})  val {row['val_functional']:.3f}  "
                  f"weight mse train {row['train_weight_mse']:.3g}  dead {row['dead_share_train']:.2f}  "
                  f"AE saturated {row['autoencoder_saturated']:.2f}  {row['seconds']:.0f}s", flush=True)
    out = Path(args.out or f"benchmarks/results/functional_loss_training_layer{args.layer}.json")
    out.write_text(json.dumps({
        "command": shlex.join(["python", "benchmarks/functional_loss_training.py"] + [
            str(item) for k, v in vars(args).items() if k != "out"
            for item in [f"--{k.replace('_', '-')}", *(v if isinstance(v, list) else [v])]]),
        "zoo": str(Path(args.run_dir) / "01_data" / "zoo"), "mean_layer": mean,
        "input_networks_dead_share": inputs_dead, "rows": rows,
        "code_revision": code_revision(), "machine": machine(), "versions": runtime_versions(),
    }, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
