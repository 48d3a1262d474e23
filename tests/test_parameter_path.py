"""One parameter path (issue 28): a stage parameter reaches an algorithm's config by having the name
of one of its fields (``StageParams.settings_for``). A renamed parameter would then be read by
nobody, and the config field it used to fill would silently run at its default. These tests read
every stage notebook and fail on either, and on a stage and its algorithm disagreeing about a default.

A parameter is *consumed* when its notebook reads it (``P.<name>``, outside the papermill parameters
cell), or calls a method of its parameters that reads it (``P.training_settings()`` reads ``self.lr``), or when the notebook builds a config through ``P.settings_for(Config, ...)`` or
``P.run_config(...)`` that has a field of its name (or, for ``run_config``, of the names in
``CONFIG_NAMES``) which that call does not set itself.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import re
from pathlib import Path

import pytest

from nnae_utils import cerl, evolution, stages

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"CERLConfig": cerl.CERLConfig, "EvolutionConfig": evolution.EvolutionConfig}

# Config fields that no stage sets, on purpose: the algorithm's constants, at the values of its paper.
LEFT_AT_THE_ALGORITHMS_DEFAULT = {
    "CERLConfig": {"tau", "policy_noise", "noise_clip", "policy_delay",  # TD3 (Fujimoto et al. 2018)
                   "value_ema"},  # CERL's UCB value (Khadka et al. 2019)
    "EvolutionConfig": {"cma_full_max_dim"},  # CMA-ES goes diagonal above this genome size (pycma's advice)
}
# The config each stage's own parameters describe, so their shared defaults must agree (stage 5's
# evolution alone takes CERL's population settings on purpose, not EvolutionConfig's Deep GA defaults).
OWN_CONFIG = {"latent_evolution": evolution.EvolutionConfig, "cerl_comparison": cerl.CERLConfig}
# Shared names whose stage value means something the config cannot hold; the notebook resolves it.
DIFFERENT_MEANING = {
    ("cerl_comparison", "critic_hidden"): "[] means the zoo's TD3 critic widths, read from its runs",
    ("cerl_comparison", "physics_threads"): "0 means every core, for evolution alone; a hybrid run takes 1",
}


def notebook_code(stage: stages.Stage) -> str:
    """The code of a stage's notebook without its papermill parameters cell (which names every parameter)."""
    cells = json.loads((ROOT / stage.notebook).read_text())["cells"]
    return "\n".join("".join(c["source"]) for c in cells
                     if c["cell_type"] == "code" and "parameters" not in c.get("metadata", {}).get("tags", []))


def config_calls(code: str, params_cls: type) -> list[tuple[type, set[str], set[str]]]:
    """Every ``P.settings_for(Config, **set_here)`` and ``P.run_config(**set_here)`` of the notebook, as
    (config class, fields the call sets itself, fields filled from parameters of another name)."""
    python = "\n".join(line for line in code.splitlines() if not line.lstrip().startswith(("%", "!")))
    calls = []
    for node in ast.walk(ast.parse(python)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        set_here = {k.arg for k in node.keywords}
        if node.func.attr == "settings_for":
            calls.append((CONFIGS[ast.unparse(node.args[0]).rsplit(".", 1)[-1]], set_here, set()))
        elif node.func.attr == "run_config":
            renamed = {f for fields in getattr(params_cls, "CONFIG_NAMES", {}).values() for f in fields}
            calls.append((cerl.CERLConfig, set_here, renamed - set_here))
    return calls


def defaults(cls: type) -> dict[str, object]:
    out = {}
    for f in dataclasses.fields(cls):
        value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        out[f.name] = tuple(value) if isinstance(value, list) else value
    return out


def read_by_methods(params_cls: type, code: str) -> set[str]:
    """Names that the methods of ``params_cls`` the notebook ``code`` calls (``P.<method>(``) read as
    ``self.<name>``, followed through the methods those call on ``self``."""
    called, read = set(), set()
    todo = set(re.findall(r"\bP\.(\w+)\(", code))
    while todo:
        name = todo.pop()
        method = getattr(params_cls, name, None)
        if name in called or not inspect.isfunction(method):
            continue
        called.add(name)
        used = set(re.findall(r"\bself\.(\w+)\b", inspect.getsource(method)))
        read |= used
        todo |= used
    return read


def unconsumed_parameters(params_cls: type, code: str) -> list[str]:
    """Parameters of ``params_cls`` that neither the notebook ``code``, the methods of its parameters it
    calls, nor any config it builds reads."""
    through_configs = read_by_methods(params_cls, code)
    for config, set_here, _ in config_calls(code, params_cls):
        through_configs |= {f.name for f in dataclasses.fields(config)} - set_here - {"seed"}
    renamed = set(getattr(params_cls, "CONFIG_NAMES", {})) if any(
        c[2] for c in config_calls(code, params_cls)) else set()
    return [name for name in defaults(params_cls)
            if not re.search(rf"\bP\.{name}\b", code) and name not in through_configs | renamed]


def silently_defaulted_fields(params_cls: type, code: str) -> list[str]:
    """Config fields that a config the notebook builds fills from no parameter, no argument of the call,
    and no deliberate choice (``LEFT_AT_THE_ALGORITHMS_DEFAULT``): a name that did not match."""
    params = set(defaults(params_cls))
    found = []
    for config, set_here, renamed in config_calls(code, params_cls):
        kept = LEFT_AT_THE_ALGORITHMS_DEFAULT.get(config.__name__, set())
        found += [f"{config.__name__}.{f.name}" for f in dataclasses.fields(config)
                  if f.name not in params | set_here | renamed | kept]
    return found


@pytest.mark.parametrize("stage", stages.STAGES, ids=lambda s: s.name)
def test_every_stage_parameter_is_consumed(stage):
    assert unconsumed_parameters(stage.params, notebook_code(stage)) == []


@pytest.mark.parametrize("stage", stages.STAGES, ids=lambda s: s.name)
def test_no_config_field_takes_its_default_from_a_name_mismatch(stage):
    assert silently_defaulted_fields(stage.params, notebook_code(stage)) == []


@pytest.mark.parametrize("stage_name", sorted(OWN_CONFIG))
def test_a_stage_and_its_algorithm_have_one_set_of_defaults(stage_name):
    """``run_cerl(CERLRun(..., CERLConfig(...)))`` called directly is the algorithm stage 5 runs
    (before issue 28: warmup_noise 0.1 vs 1.0, migration_every 5 vs 1, and three more)."""
    params_cls = stages.STAGES_BY_NAME[stage_name].params
    stage, config = defaults(params_cls), defaults(OWN_CONFIG[stage_name])
    pairs = [(name, name) for name in stage if name in config and name != "seed"]
    pairs += [(name, field) for name, fields in getattr(params_cls, "CONFIG_NAMES", {}).items() for field in fields]
    disagree = {f"{name} {stage[name]!r} vs {field} {config[field]!r}" for name, field in pairs
                if stage[name] != config[field] and (stage_name, name) not in DIFFERENT_MEANING}
    assert disagree == set()


def test_the_checks_catch_a_misnamed_parameter():
    """Rename ``warmup_noise`` in CERLParams (as a refactoring might): both checks must name it."""
    code = notebook_code(stages.STAGES_BY_NAME["cerl_comparison"])
    fields = [(("warmup_std" if f.name == "warmup_noise" else f.name), f.type, f) for f in dataclasses.fields(stages.CERLParams)]
    misnamed = dataclasses.make_dataclass(
        "Misnamed", [(n, t, dataclasses.field(default=f.default, default_factory=f.default_factory)) for n, t, f in fields],
        namespace={"CONFIG_NAMES": stages.CERLParams.CONFIG_NAMES})
    assert unconsumed_parameters(misnamed, code) == ["warmup_std"]
    assert silently_defaulted_fields(misnamed, code) == ["CERLConfig.warmup_noise"]


def test_cerl_params_build_the_run_config_and_validate_with_its_checks():
    P = stages.CERLParams(learner_lr=1e-3, max_episode_steps=500, migration_every=2)
    cfg = P.run_config(sigma=0.2, critic_hidden=(64, 64), physics_threads=1, seed=9)
    assert (cfg.actor_lr, cfg.critic_lr, cfg.max_steps, cfg.migration_every, cfg.seed) == (1e-3, 1e-3, 500, 2, 9)
    with pytest.raises(stages.ParameterError, match="max_episode_steps must be > 0"):
        stages.CERLParams.from_mapping({"max_episode_steps": 0})
    with pytest.raises(stages.ParameterError, match="learner_episodes > 0"):  # TD3 alone's check, from CERLConfig
        stages.CERLParams.from_mapping({"variants": ["td3"], "learner_episodes": 0})


def test_stage2_models_take_their_training_settings_from_the_stage_parameters():
    """One home for stage 2's training settings (``LayerAEParams.training_settings``, used by notebook 02 and
    the stage-2 benchmarks): every field of the models' config is a parameter, set per model by the plan, or
    left at its default on purpose."""
    from nnae_utils import autoencoders as ae
    from nnae_utils.policies import NetworkSpec

    P = stages.LayerAEParams(lr=1e-3, rollout_max_steps=123, dagger_fraction=0.25, seed=4)
    plan, _ = ae.plan_experiments(NetworkSpec(obs_dim=11, act_dim=3, hidden=(8, 8)), **P.plan_settings())
    config = plan[0].config
    assert (config.lr, config.dagger_max_steps, config.dagger_fraction, config.seed) == (1e-3, 123, 0.25, 4)
    per_model = {"layer", "form", "latent", "hidden", "loss"}  # plan_experiments sets them for each model
    on_purpose = {"dagger_buffer", "symmetry"}  # the buffer's size; the option, set by train_symmetry_options
    fields = {f.name for f in dataclasses.fields(ae.LayerAEConfig)}
    assert fields - set(P.training_settings()) - per_model == on_purpose
    assert stages.LayerAEParams(stop_on="validation").holdout_spacing() is None
    assert stages.LayerAEParams(stop_on="train_holdout", holdout_every=3).holdout_spacing() == 3
