"""A fork adds an estimator, a baseline and a surrogate outside pglab: selected by ``_target_``, validated from what
they declare, trained end to end — with no edit to pglab (issue 10, item 1)."""

from __future__ import annotations

import pytest
import torch

from pglab.core.surrogates import Surrogate
from pglab.run.checks import ConfigError
from pglab.run.train import build

HERE = __name__  # pytest imports this file as a top-level module: its functions are _target_s
FAST = ["eval.enabled=false", "checkpoint.enabled=false", "trainer.enable_progress_bar=false",
        "env.num_envs=2", "collector.num_steps=16", "total_env_steps=128"]


def one_step_td(rewards, values, next_values, terminated, done, valid, gamma=0.99, lam=0.95):
    """G_t = r_t + γ·V(s_{t+1}) (no bootstrap after termination). [T, N]"""
    return rewards + gamma * next_values * (~terminated).float()


one_step_td.bootstraps_from_value = True


def median_baseline(targets, valid, values):
    """A = G − max(V, median of the valid targets): reads the values, like baseline=value. [T, N]"""
    return targets - torch.maximum(values, targets[valid].median())


median_baseline.inputs = ("values",)


class CISPO(Surrogate):
    """−sg(clip(ρ, max=1+ε))·A·log π: the clipped ratio is a detached weight (CISPO)."""

    def __init__(self, eps_high: float = 0.2, aggregation=None) -> None:
        super().__init__(aggregation)
        self.eps_high = eps_high

    def per_token(self, batch, ratio):
        return -ratio.detach().clamp(max=1 + self.eps_high) * batch.advantages * batch.logp, {}


CUSTOM = [f"estimator._target_={HERE}.one_step_td", f"baseline._target_={HERE}.median_baseline",
          "surrogate.eps_high=0.2", f"surrogate._target_={HERE}.CISPO", "~surrogate.eps_low"]


def test_custom_components_train_end_to_end(make_cfg):
    r = build(make_cfg(*CUSTOM, *FAST))
    assert isinstance(r.module.surrogate, CISPO)
    before = [p.detach().clone() for p in r.module.policy.parameters()]
    r.trainer.fit(r.module, datamodule=r.datamodule)
    assert r.module.updates > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, r.module.policy.parameters(), strict=True))


def test_custom_bootstrapping_estimator_without_value_head_is_refused(make_cfg):
    with pytest.raises(ConfigError) as err:
        build(make_cfg(*CUSTOM, "model.value_head=false", *FAST))
    message = str(err.value)
    assert "one_step_td bootstraps from V(s)" in message or "estimator=gae bootstraps" in message
    assert "median_baseline needs a value head" in message or "baseline=value needs a value head" in message
