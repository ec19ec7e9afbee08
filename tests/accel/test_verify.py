"""The start-up check (pglab.accel.verify): it accepts the fast paths where they compute the reference's function,
whatever the weights; its synthetic batch reaches every branch; and it names a difference when there is one."""

from __future__ import annotations

import itertools

import pytest
import torch

from pglab.accel.verify import synthetic_batch, verify_fused_actor, verify_lean_update
from pglab.core.surrogates import Clip, Importance, Reinforce
from pglab.learner.loss import LossSettings
from pglab.models.mlp import ActorCritic


@pytest.mark.parametrize("space, shared, value_clip, surrogate",
                         list(itertools.product([("discrete", 2), ("continuous", 3)], [False, True],
                                                [None, 0.2, 0.1], [Clip(0.2), Importance(), Reinforce()])))
def test_correct_fast_paths_pass_for_any_weights(space, shared, value_clip, surrogate):
    """Five initialisations each: a check that refused correct code for some weights (e.g. a synthetic row sitting
    on the value clip's kink, where either side is right) would send runs to the slow path at random."""
    settings = LossSettings(value_clip=value_clip, ent_coef=0.01)
    for seed in range(5):
        torch.manual_seed(seed)
        policy = ActorCritic(4, space, hidden=(16, 16), shared=shared)
        assert verify_lean_update(policy, surrogate, settings).problem is None, seed
        assert verify_fused_actor(policy).problem is None, seed


@pytest.mark.parametrize("value_clip", [None, 0.2])
def test_the_synthetic_batch_reaches_every_branch(value_clip):
    torch.manual_seed(0)
    policy = ActorCritic(4, ("discrete", 2), hidden=(16, 16)).double()
    for rows, padded in ((16, 3), (9, 0)):
        batch = synthetic_batch(policy, 4, torch.Generator().manual_seed(0), value_clip, rows_per_episode=rows,
                                padded_per_episode=padded)
        real = batch.mask > 0
        with torch.no_grad():
            now = policy.evaluate(batch.obs, batch.actions)
        log_ratio = (now.logp - batch.logp_old)[real]
        assert log_ratio.min() <= -3.0 and log_ratio.max() >= 3.0  # ratios e^±3: both sides of any clip range
        adv = batch.advantages[real]
        for outside in (log_ratio < -0.5, log_ratio > 0.5):  # both signs where the clip is active on each side
            assert (adv[outside] > 0).any() and (adv[outside] < 0).any()
        moved = (now.values - batch.values_old)[real].abs()
        clip = value_clip if value_clip is not None else 0.2
        assert (moved > clip).any() and (moved < clip).any()
        assert float((moved - clip).abs().min()) > 1e-6  # never on the kink
        assert (~real).sum() == padded * 4
        assert batch.num_episodes == 4


def test_a_wrong_gradient_is_named(monkeypatch):
    """A lean update whose value gradient is off by 1% is refused, naming the first parameter that differs."""
    from pglab.accel import lean

    original = lean.LeanUpdate.__call__

    def off(self, batch, prepared=None):
        loss, diagnostics = original(self, batch, prepared)
        self.value_out_grads[0].mul_(1.01)
        return loss, diagnostics

    monkeypatch.setattr(lean.LeanUpdate, "__call__", off)
    problem = verify_lean_update(ActorCritic(4, ("discrete", 2)), Clip(0.2), LossSettings()).problem
    assert problem is not None and "value_out.weight" in problem
