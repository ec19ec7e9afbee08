"""Start-up validation: impossible component combinations are refused before the first env step.

Each message names the conflict and the fix. Unknown keys and unknown group options are already refused by
Hydra itself (the composed config is in struct mode; a group lists its valid options).
"""

from __future__ import annotations

import functools

import torch
from omegaconf import DictConfig

from pglab import baselines as B
from pglab import estimators as E
from pglab.surrogates import Surrogate

__all__ = ["ConfigError", "check_combination", "component_name"]

BOOTSTRAPPING = {E.nstep, E.gae}


class ConfigError(ValueError):
    """A configuration that cannot run; the message says why and what to change."""


def component_name(component, registry: dict) -> str:
    func = component.func if isinstance(component, functools.partial) else component
    for name, candidate in registry.items():
        if candidate is func:
            return name
    raise ConfigError(f"{func!r} is not one of the known components {sorted(registry)}")


def check_combination(cfg: DictConfig, estimator, baseline, surrogate: Surrogate) -> None:
    """Raise ConfigError for every combination of settings that cannot run (all problems at once)."""
    problems: list[str] = []
    est = component_name(estimator, E.ESTIMATORS)
    base = component_name(baseline, B.BASELINES)
    kind = cfg.collector.kind
    has_value = bool(cfg.model.value_head)
    if kind not in ("segments", "episodes"):
        problems.append(f"collector.kind={kind!r} is not a collector; use segments or episodes")
    episodic = kind == "episodes"
    if est in ("nstep", "gae") and not has_value:
        problems.append(f"estimator={est} bootstraps from V(s) but model.value_head=false: set "
                        "model.value_head=true, or use estimator=return|reward_to_go")
    if base == "value" and not has_value:
        problems.append("baseline=value needs a value head but model.value_head=false: set model.value_head=true, "
                        "or use baseline=none|mean|group")
    if base == "group":
        if not episodic:
            problems.append("baseline=group compares episodes that share a start state, which only the episode "
                            "collector makes: set collector.kind=episodes (and collector.group_size >= 2)")
        elif cfg.collector.group_size < 2:
            problems.append(f"baseline=group needs groups of at least 2 episodes, got collector.group_size="
                            f"{cfg.collector.group_size}: set collector.group_size=8 (for example)")
        if est != "return":
            problems.append(f"baseline=group scores each episode by its return R(τ), so it needs estimator=return, "
                            f"got estimator={est}")
    if surrogate.needs_whole_episodes and not episodic:
        problems.append(f"surrogate={type(surrogate).__name__.lower()} with aggregation={surrogate.aggregation} "
                        "needs minibatches of whole episodes, which the segment collector cuts: set "
                        "collector.kind=episodes, or aggregation=token_mean")
    if est == "return" and not episodic:
        problems.append("estimator=return gives every step its whole episode's return R(τ), but segments cut "
                        "episodes: set collector.kind=episodes, or use estimator=reward_to_go|nstep|gae")
    if est == "reward_to_go" and not episodic and not has_value:
        problems.append("estimator=reward_to_go on segments must bootstrap the cut at the segment end from V(s), "
                        "but model.value_head=false: set model.value_head=true or collector.kind=episodes")
    problems += _numeric_problems(cfg, estimator, baseline)
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
    precision = str(cfg.trainer.get("precision") or "32-true")
    devices = cfg.trainer.get("devices", 1)
    if not learner.lightning_optimizer and (precision not in ("32", "32-true") or devices not in (1, "1")):
        problems.append(f"trainer.precision={precision} / trainer.devices={devices} need Lightning's optimizer "
                        "wrappers: set learner.lightning_optimizer=true")
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
    # the estimator and baseline check their own arguments (γ, λ, k, eps): run them once on a dummy rollout
    zeros = torch.zeros(2, 2)
    flags = torch.zeros(2, 2, dtype=torch.bool)
    valid = torch.ones(2, 2, dtype=torch.bool)
    try:
        targets = estimator(zeros, zeros, zeros, flags, flags, valid)
        name = component_name(baseline, B.BASELINES)
        if name == "value":
            baseline(targets, valid, zeros)
        elif name == "group":
            baseline(targets, valid, targets[0], torch.zeros(2, dtype=torch.long))
        else:
            baseline(targets, valid)
    except (ValueError, TypeError) as err:
        problems.append(f"{err} (check gamma, lam, nstep_k and the baseline's settings)")
    return problems
