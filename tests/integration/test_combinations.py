"""Every estimator × baseline × surrogate × collector either trains one epoch or is refused at start-up.

The expected verdict comes from the design's rules, written out here independently of pglab.run.checks.
"""

from __future__ import annotations

import itertools
import math
import re

import pytest

from pglab.run.checks import ConfigError
from pglab.run.train import build

ESTIMATORS = ["return", "reward_to_go", "nstep", "gae"]
BASELINES = ["none", "mean", "value", "group"]
SURROGATES = ["reinforce", "importance", "kl_penalty", "clip", "grpo", "gspo"]
COLLECTORS = ["segments", "episodes"]


def expected_refusal(estimator: str, baseline: str, surrogate: str, collector: str) -> str | None:
    """A fragment the refusal message must contain, or None if the combination must run."""
    episodic = collector == "episodes"
    if baseline == "group" and not episodic:
        return "baseline=group"
    if baseline == "group" and estimator != "return":
        return "needs estimator=return"
    # grpo's default aggregation (episode_mean) and gspo both need whole episodes
    if surrogate in ("grpo", "gspo") and not episodic:
        return "whole episodes"
    if estimator == "return" and not episodic:
        return "estimator=return"
    return None


CASES = list(itertools.product(ESTIMATORS, BASELINES, SURROGATES, COLLECTORS))


@pytest.mark.parametrize(("estimator", "baseline", "surrogate", "collector"), CASES)
def test_combination_runs_or_is_refused(make_cfg, estimator, baseline, surrogate, collector):
    cfg = make_cfg(
        "algo=ppo", f"estimator={estimator}", f"baseline={baseline}", f"surrogate={surrogate}",
        f"collector.kind={collector}", "collector.num_groups=2", "collector.group_size=2", "env.num_envs=2",
        "collector.num_steps=16", "env.max_episode_steps=12", "learner.epochs=2", "learner.num_minibatches=2",
        "total_env_steps=1",
    )
    refusal = expected_refusal(estimator, baseline, surrogate, collector)
    if refusal is not None:
        with pytest.raises(ConfigError, match=re.escape(refusal)):
            build(cfg)
        return
    r = build(cfg)
    r.trainer.fit(r.module, datamodule=r.datamodule)
    assert r.trainer.current_epoch == 1
    assert math.isfinite(float(r.trainer.callback_metrics["train/policy_loss"]))


@pytest.mark.parametrize(("overrides", "fragment"), [
    (["estimator=gae", "model.value_head=false"], "estimator=gae bootstraps"),
    (["estimator=nstep", "model.value_head=false", "baseline=none"], "estimator=nstep bootstraps"),
    (["baseline=value", "model.value_head=false", "estimator=reward_to_go", "collector.kind=episodes"],
     "baseline=value needs a value head"),
    (["algo=grpo", "collector.group_size=1"], "groups of at least 2"),
    (["algo=ppo", "aggregation=episode_mean"], "whole episodes"),
    (["algo=ppo", "estimator=reward_to_go", "model.value_head=false", "baseline=mean"], "segment end"),
    (["collector.kind=trajectories"], "collector.kind='trajectories'"),
])
def test_conflicts_name_the_problem_and_the_fix(make_cfg, overrides, fragment):
    cfg = make_cfg(*overrides)
    with pytest.raises(ConfigError, match=fragment) as info:
        build(cfg)
    assert "set " in str(info.value) or "use " in str(info.value)
