"""nnae_utils: the logic behind the "Neural Network Autoencoders for Compressed Neuroevolution" suite.

One module per concept; data flows one way, stage to stage, through files on disk:

- ``policies``: MLP actors and the open network file format (safetensors + index.json)
- ``rollouts``: Hopper-v5, batched population evaluation, the gymnasium reference path
- ``td3``: a CleanRL-style TD3 learner with resumable checkpoints
- ``zoo``: training runs, snapshots, the zoo's index and its splits
- ``states``: the state dataset the functional loss is computed on
- ``autoencoders``: layer autoencoders (flat and neuron-token), the functional loss, PCA baseline
- ``layer_study``: stage 2's tables, files and verdicts (what it saves, tabulates and says)
- ``decoded``: paired scores of input and decoded networks, retention
- ``explorer``: the widget layer explorer
- ``genomes``: genome encodings (weights, AE latent, PCA, random subspace, DCT)
- ``evolution``: the GA and CMA-ES, run in lockstep through the one evaluation function
- ``cerl``: the CERL-like hybrid of TD3 learners and a GA population
- ``seeds`` / ``provenance``: reset-seed namespaces; versions and revisions recorded with results
- ``io``: atomic file writes, the folder swap, the JSON cleaner
- ``stats`` / ``plots``: statistics and figures
- ``backends``: where work runs: this machine, or a Ray cluster (population evaluation, independent runs)
- ``stages``: each stage's typed parameters and artifact layout
- ``pipeline``: profiles, caching and the papermill runner (command line)
- ``book``: the book built from a run folder (not part of the stage cache keys)
"""

__version__ = "0.1.0"
