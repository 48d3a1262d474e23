"""Synthetic stand-ins for stages 1 and 2, so that unit tests need no artifacts: a zoo in miniature
(random base networks, each with perturbed "snapshots") and a stage-2 folder of untrained layer
autoencoders and fitted PCA codes, written as the stage writes them."""
import numpy as np

from nnae_utils import autoencoders as ae
from nnae_utils.policies import Network, NetworkSpec

SPEC = NetworkSpec(obs_dim=11, act_dim=3, hidden=(8, 6))
LATENTS = {0: 9, 1: 5, 2: 3}


def synthetic_zoo(spec=SPEC, runs=3, per_run=3, drift=0.05, seed=0, base_seed=100):
    """``runs`` random base networks (seeds ``base_seed + r``), each with ``per_run`` snapshots
    perturbed by Gaussian noise of std ``drift`` (drawn from ``seed``)."""
    rng = np.random.default_rng(seed)
    zoo = []
    for r in range(runs):
        base = Network.random(spec, seed=base_seed + r).flat()
        for _ in range(per_run):
            net = Network.from_flat(spec, base + drift * rng.normal(size=base.shape).astype(np.float32))
            if spec.obs_norm:  # a normaliser's std stays positive
                net.params["obs_std"] = np.abs(net.params["obs_std"]) + 0.5
            zoo.append(net)
    return zoo


def make_stage2(folder, train, latents=LATENTS, form="flat"):
    """A stage-2 folder as the stage writes it: autoencoders/ and pca/ checkpoints, one per layer."""
    stack = ae.StackedNetworks.from_networks(train)
    spec = train[0].spec
    for layer, k in latents.items():
        cfg = ae.LayerAEConfig(layer=layer, form=form, latent=k, hidden=16)
        ae.save_layer_autoencoder(folder / "autoencoders" / f"layer{layer}_{form}.safetensors", ae.LayerAutoencoder.create(cfg, spec, stack))
        ae.save_pca(folder / "pca" / f"layer{layer}_{form}.safetensors", ae.PCALayerCode.fit(train, layer, form, k))
    return folder
