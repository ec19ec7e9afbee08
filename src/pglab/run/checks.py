"""Start-up validation: impossible component combinations are refused before the first env step.

Each message names the conflict and the fix. Unknown keys and unknown group options are already refused by
Hydra itself (the composed config is in struct mode; a group lists its valid options).
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig, OmegaConf

from pglab.core.components import REQUIRED, component_name, parameter_names, requirement
from pglab.core.surrogates import Surrogate

__all__ = ["ConfigError", "check_combination", "check_types", "check_budgets"]



class ConfigError(ValueError):
    """A configuration that cannot run; the message says why and what to change."""


# key → (accepted types, may be null); checked first so no later check or component sees e.g. seed="abc"
_INT, _NUM, _BOOL = (int,), (int, float), (bool,)
_TYPES: dict[str, tuple[tuple[type, ...], bool]] = {
    "seed": (_INT, False), "total_env_steps": (_INT, False), "torch_threads": (_INT, False),
    "gamma": (_NUM, False), "lam": (_NUM, False), "nstep_k": (_INT, False),
    "env.id": ((str,), False), "env.num_envs": (_INT, False), "env.max_episode_steps": (_INT, True),
    "env.normalize_obs": (_BOOL, False), "env.normalize_reward": (_BOOL, False), "env.flatten_obs": (_BOOL, False),
    "collector.num_steps": (_INT, False), "collector.num_groups": (_INT, False),
    "collector.group_size": (_INT, False), "collector.max_episode_steps": (_INT, True),
    "learner.epochs": (_INT, False), "learner.num_minibatches": (_INT, False), "learner.lr": (_NUM, False),
    "learner.adam_eps": (_NUM, False), "learner.anneal_lr": (_BOOL, False), "learner.vf_coef": (_NUM, False),
    "learner.ent_coef": (_NUM, False), "learner.value_clip": (_NUM, True),
    "learner.normalize_advantages": (_BOOL, False), "learner.target_kl": (_NUM, True),
    "learner.reference_refresh_every": (_INT, False), "learner.max_grad_norm": (_NUM, True),
    "learner.minibatches_per_step": (_INT, True), "learner.lightning_optimizer": (_BOOL, False),
    "learner.nonfinite": ((str,), False),
    "learner.compile": (_BOOL, False), "learner.clip_per_group": (_BOOL, False), "learner.gradients": ((str,), False),
    "eval.enabled": (_BOOL, False), "eval.every_n_epochs": (_INT, False), "eval.episodes": (_INT, False),
    "eval.num_envs": (_INT, False), "eval.video": (_BOOL, False),
    "checkpoint.enabled": (_BOOL, False), "checkpoint.every_n_epochs": (_INT, False),
}


def check_types(cfg: DictConfig) -> None:
    """Raise ConfigError naming every setting of the wrong type (``seed=abc``, ``learner.lr=fast``, ...) and every
    ``learner.*`` key the learner does not take (``+learner.lrr=1``). An integer setting given as a float that is
    an integer (``total_env_steps=1e5``, which YAML and Hydra read as 100000.0) is turned into that integer."""
    problems = _unknown_learner_keys(cfg)
    for key, (types, nullable) in _TYPES.items():
        if OmegaConf.select(cfg, key, default="<absent>") == "<absent>":
            continue
        value = OmegaConf.select(cfg, key)
        if value is None and nullable:
            continue
        if types is _INT and isinstance(value, float) and value.is_integer():
            OmegaConf.update(cfg, key, int(value), force_add=False)
            continue
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if not ok:
            kind = {_INT: "an integer", _NUM: "a number", _BOOL: "true or false"}.get(types, "a string")
            problems.append(f"{key} must be {kind}{' or null' if nullable else ''}, got {value!r}")
    if problems:
        raise ConfigError("this configuration cannot run:\n  - " + "\n  - ".join(problems))


def _unknown_learner_keys(cfg: DictConfig) -> list[str]:
    """``learner.*`` keys that are neither the learner's constructor arguments nor the update schedule: Hydra's own
    hint for an unknown key (``+learner.lrr=1``) would otherwise end in a TypeError from the constructor."""
    import difflib
    import inspect

    learner = cfg.get("learner") if isinstance(cfg, DictConfig) else None
    if not isinstance(learner, DictConfig):
        return []
    from pglab.learner.module import PolicyGradientModule
    from pglab.run.train import SCHEDULE_KEYS  # the learner.* keys the DataModule reads

    params = inspect.signature(PolicyGradientModule.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return []
    accepted = (set(params) - {"self", "policy", "surrogate", "total_env_steps"}) | set(SCHEDULE_KEYS)
    problems = []
    for key in sorted(set(learner.keys()) - accepted):
        close = difflib.get_close_matches(key, sorted(accepted), n=3, cutoff=0.6)
        hint = f" (did you mean {' or '.join('learner.' + c for c in close)}?)" if close else ""
        problems.append(f"learner.{key} is not a learner setting{hint}; the learner's settings: "
                        f"{', '.join(sorted(accepted))}")
    return problems


def check_budgets(cfg: DictConfig, whole_episodes: bool) -> list[str]:
    """Sizes that make training a no-op or meaningless (they would run without an error and learn nothing)."""
    problems = []
    env, col, learner = cfg.env, cfg.collector, cfg.learner
    if env.num_envs < 1:
        problems.append(f"env.num_envs must be >= 1, got {env.num_envs}")
    for key in ("env.max_episode_steps", "collector.max_episode_steps"):
        value = OmegaConf.select(cfg, key)
        if value is not None and value < 1:
            problems.append(f"{key} must be >= 1 or null (the env's own limit), got {value}: with {value} every "
                            "episode ends before it starts")
    episodic = col.kind == "episodes"
    if episodic:
        if col.num_groups < 1 or col.group_size < 1:
            problems.append(f"collector.num_groups and collector.group_size must be >= 1, got {col.num_groups} and "
                            f"{col.group_size}")
            return problems
        units, unit = col.num_groups * col.group_size, "episodes"
    else:
        if col.num_steps < 1:
            problems.append(f"collector.num_steps must be >= 1, got {col.num_steps}")
            return problems
        units, unit = env.num_envs * col.num_steps, "rows"
    if env.num_envs < 1 or learner.num_minibatches < 1:
        return problems
    per_minibatch = units // learner.num_minibatches
    need = 1 if (episodic and whole_episodes) else 2
    if episodic and not whole_episodes:
        unit = "episodes (of >= 1 row each)"
    if learner.normalize_advantages and units < need:
        sizes = "collector.num_groups × collector.group_size" if episodic else "env.num_envs × collector.num_steps"
        problems.append(f"a rollout of {units} {unit.split()[0]} with per-minibatch advantage normalisation makes "
                        f"every advantage 0 and nothing is learned: make {sizes} >= {need}, or set "
                        "learner.normalize_advantages=false")
    elif learner.normalize_advantages and per_minibatch < need:
        problems.append(
            f"learner.num_minibatches={learner.num_minibatches} splits a rollout of {units} {unit} into minibatches "
            f"of fewer than {need} {unit.split()[0]}; per-minibatch advantage normalisation then makes every "
            f"advantage 0 and nothing is learned: use learner.num_minibatches <= {max(1, units // need)}, or "
            "learner.normalize_advantages=false")
    if cfg.eval.enabled and min(cfg.eval.every_n_epochs, cfg.eval.episodes, cfg.eval.num_envs) < 1:
        problems.append("eval.every_n_epochs, eval.episodes and eval.num_envs must be >= 1 (or eval.enabled=false)")
    if cfg.checkpoint.enabled and cfg.checkpoint.every_n_epochs < 1:
        problems.append(f"checkpoint.every_n_epochs must be >= 1, got {cfg.checkpoint.every_n_epochs}")
    if learner.get("nonfinite", "stop") not in ("stop", "skip"):
        problems.append(f"learner.nonfinite must be stop or skip, got {learner.nonfinite!r}")
    if cfg.torch_threads < 1:
        problems.append(f"torch_threads must be >= 1, got {cfg.torch_threads}")
    return problems


def _label(group: str, component) -> str:
    """``group=<choice>`` as the user typed it (the Hydra choice), else the component's own name."""
    try:
        from hydra.core.hydra_config import HydraConfig

        choice = HydraConfig.get().runtime.choices.get(group) if HydraConfig.initialized() else None
    except (ValueError, AttributeError):
        choice = None
    name = getattr(getattr(component, "func", component), "__name__", type(component).__name__)
    return f"{group}={choice or name}"


def check_combination(cfg: DictConfig, estimator, baseline, surrogate: Surrogate) -> None:
    """Raise ConfigError for every combination of settings that cannot run (all problems at once).

    Reads only what the components declare (``requirement``: estimators' needs_whole_episodes,
    bootstraps_from_value and gives_episode_return; baselines' inputs; surrogates' needs_whole_episodes) — never a
    component's name or class, so a component defined outside pglab is validated the same way."""
    problems: list[str] = []
    est, base = _label("estimator", estimator), _label("baseline", baseline)
    inputs = requirement(baseline, "inputs", ())
    kind = cfg.collector.kind
    has_value = bool(cfg.model.value_head)
    if kind not in ("segments", "episodes"):
        problems.append(f"collector.kind={kind!r} is not a collector; use segments or episodes")
    episodic = kind == "episodes"
    if requirement(estimator, "bootstraps_from_value") and not has_value:
        problems.append(f"{est} bootstraps from V(s) but model.value_head=false: set model.value_head=true, or use "
                        "estimator=return|reward_to_go")
    if "values" in inputs and not has_value:
        problems.append(f"{base} needs a value head but model.value_head=false: set model.value_head=true, or use "
                        "baseline=none|mean|group")
    if "group_ids" in inputs:
        if not episodic:
            problems.append(f"{base} compares episodes that share a start state, which only the episode collector "
                            "makes: set collector.kind=episodes (and collector.group_size >= 2)")
        elif cfg.collector.group_size < 2:
            problems.append(f"{base} needs groups of at least 2 episodes, got collector.group_size="
                            f"{cfg.collector.group_size}: set collector.group_size=8 (for example)")
    if "episode_scores" in inputs and not requirement(estimator, "gives_episode_return"):
        problems.append(f"{base} scores each episode by its return R(τ), so it needs estimator=return (an estimator "
                        f"that gives every step its episode's return), got {est}")
    if surrogate.needs_whole_episodes and not episodic:
        problems.append(f"surrogate={type(surrogate).__name__.lower()} with aggregation={surrogate.aggregation} "
                        "needs minibatches of whole episodes, which the segment collector cuts: set "
                        "collector.kind=episodes, or aggregation=token_mean")
    if requirement(estimator, "needs_whole_episodes") and not episodic:
        problems.append(f"{est} gives every step its whole episode's return R(τ), but segments cut episodes: set "
                        "collector.kind=episodes, or use estimator=reward_to_go|nstep|gae")
    elif not episodic and not has_value:
        problems.append(f"{est} on segments must bootstrap the cut at the segment end from V(s), but "
                        "model.value_head=false: set model.value_head=true or collector.kind=episodes")
    problems += _numeric_problems(cfg, estimator, baseline)
    problems += check_budgets(cfg, surrogate.needs_whole_episodes)
    if cfg.learner.epochs < 1 or cfg.learner.num_minibatches < 1:
        problems.append(f"learner.epochs and learner.num_minibatches must be >= 1, got {cfg.learner.epochs} and "
                        f"{cfg.learner.num_minibatches}")
    if cfg.total_env_steps < 1:
        problems.append(f"total_env_steps must be >= 1, got {cfg.total_env_steps}")
    if problems:
        raise ConfigError("this configuration cannot run:\n  - " + "\n  - ".join(problems))


def _numeric_problems(cfg: DictConfig, estimator, baseline) -> list[str]:
    """Out-of-range numbers, found before any env step instead of in the first update."""
    problems = []
    learner = cfg.learner
    if cfg.trainer.get("gradient_clip_val") is not None:
        problems.append("trainer.gradient_clip_val does not apply (pglab's updates use manual optimisation): set "
                        "learner.max_grad_norm instead")
    strategy = str(cfg.trainer.get("strategy") or "auto")
    if strategy.startswith(("ddp_spawn", "ddp_fork", "ddp_notebook", "fsdp", "deepspeed")):
        problems.append(f"trainer.strategy={strategy} is not supported: the spawn/fork strategies pickle or fork the "
                        "DataModule's environments, and sharded strategies do not fit pglab's manual optimisation; "
                        "use trainer=ddp (one process per device, each with its own envs)")
    hidden = cfg.model.get("hidden")
    if isinstance(hidden, (list, tuple)) or OmegaConf.is_list(hidden):
        if any(not isinstance(h, int) or isinstance(h, bool) or h < 1 for h in hidden):
            problems.append(f"model.hidden sizes must be integers >= 1, got {list(hidden)}: a layer of width 0 cuts "
                            "the observation off and the policy ignores its input (model.hidden=[] is a linear "
                            "policy)")
    if learner.max_grad_norm is not None and learner.max_grad_norm <= 0:
        problems.append(f"learner.max_grad_norm must be > 0 or null, got {learner.max_grad_norm}")
    if learner.minibatches_per_step is not None and learner.minibatches_per_step < 1:
        problems.append(f"learner.minibatches_per_step must be >= 1 or null, got {learner.minibatches_per_step}")
    if not learner.lr > 0:
        problems.append(f"learner.lr must be > 0, got {learner.lr}")
    for key in ("vf_coef", "ent_coef", "adam_eps"):
        if learner[key] < 0:
            problems.append(f"learner.{key} must be >= 0, got {learner[key]}")
    if learner.target_kl is not None and learner.target_kl <= 0:
        problems.append(f"learner.target_kl must be > 0 or null, got {learner.target_kl}")
    if learner.value_clip is not None and learner.value_clip < 0:
        problems.append(f"learner.value_clip must be >= 0 or null, got {learner.value_clip}")
    return problems + _component_problems(estimator, baseline)


def _component_problems(estimator, baseline) -> list[str]:
    """Run the estimator and the baseline once on a dummy rollout: they check their own arguments (γ, λ, k, eps),
    and what they declare is checked against what they do.

    - ``bootstraps_from_value`` must be declared: absent, a value-less configuration would silently give a
      bootstrapping estimator V ≡ 0. Declared False, the estimator must not read V inside episodes: on episodes
      that terminate (nothing to bootstrap), its targets must not change when V does.
    - a baseline's declared ``inputs`` are passed by keyword, so each must be one of its parameter names."""
    problems = []
    est, base = _label("estimator", estimator), _label("baseline", baseline)
    zeros = torch.zeros(2, 2)
    flags = torch.zeros(2, 2, dtype=torch.bool)
    valid = torch.ones(2, 2, dtype=torch.bool)
    try:
        declared = requirement(estimator, "bootstraps_from_value", REQUIRED)
    except AttributeError:
        declared = None
        problems.append(f"{est} ({component_name(estimator)}) does not declare bootstraps_from_value: set "
                        "<function>.bootstraps_from_value = True if its targets read V(s) inside episodes (values / "
                        "next_values where an episode goes on), else False")
    targets = None
    try:
        targets = estimator(zeros, zeros, zeros, flags, flags, valid)
    except Exception as err:  # noqa: BLE001 - any failure of a component here is reported, naming the component
        problems.append(f"{est} ({component_name(estimator)}) raised on a dummy rollout: {type(err).__name__}: {err} "
                        "(check gamma, lam, nstep_k and the estimator's own arguments)")
    if targets is not None and declared is False:
        # one episode per column that terminates at its last row: nothing to bootstrap anywhere, so targets that
        # do not read V(s) inside episodes are the same for any V
        ends = torch.zeros(3, 2, dtype=torch.bool)
        ends[-1] = True
        rewards, all_valid = torch.arange(6.0).reshape(3, 2), torch.ones(3, 2, dtype=torch.bool)
        some_values = torch.linspace(-50.0, 70.0, 6).reshape(3, 2)
        try:
            reads_values = not torch.equal(
                estimator(rewards, torch.zeros(3, 2), torch.zeros(3, 2), ends, ends, all_valid),
                estimator(rewards, some_values, some_values.flip(0), ends, ends, all_valid))
        except Exception:  # noqa: BLE001 - a failure here shows in the dummy call above
            reads_values = False
        if reads_values:
            problems.append(f"{est} ({component_name(estimator)}) declares bootstraps_from_value = False, but its "
                            "targets depend on V(s) even where every step is terminal: declare it True (it needs a "
                            "value head)")
    inputs = tuple(requirement(baseline, "inputs", ()))
    accepted = parameter_names(baseline)
    unknown = [name for name in inputs if "*" not in accepted and name not in accepted]
    if unknown:
        problems.append(f"{base} ({component_name(baseline)}) declares inputs {list(unknown)} that are not among "
                        f"its parameters {sorted(accepted)}: inputs are passed by keyword, so name each parameter "
                        "after the input it receives (values, episode_scores, group_ids)")
    elif targets is not None:
        dummy = {"values": zeros, "episode_scores": targets[0], "group_ids": torch.zeros(2, dtype=torch.long)}
        try:
            baseline(targets, valid, **{name: dummy[name] for name in inputs if name in dummy})
        except Exception as err:  # noqa: BLE001 - reported, naming the component
            problems.append(f"{base} ({component_name(baseline)}) raised on a dummy rollout: {type(err).__name__}: "
                            f"{err} (check the baseline's own arguments)")
    return problems
