"""Rollout statistics travel by field name: under several processes a new field of ``RolloutStats`` keeps its
value, episodes are gathered, env steps summed and every rollout metric averaged over ranks."""

from __future__ import annotations

from dataclasses import dataclass

import torch

import pglab.learner.module as module_file
from pglab.core.surrogates import Clip
from pglab.core.types import RolloutStats
from pglab.learner.module import PolicyGradientModule
from pglab.models.mlp import ActorCritic


@dataclass
class StatsWithAField(RolloutStats):
    entropy_of_actions: float = -1.0  # a fork's new field, with a default that must not win


def test_s7_a_new_rollout_field_survives_two_ranks(monkeypatch):
    module = PolicyGradientModule(ActorCritic(4, ("discrete", 2)), Clip())
    other_rank = {"env_steps": 30, "episode_returns": [5.0], "episode_lengths": [7.0],
                  "metrics": {"rollout/advantage_mean": 3.0}, "entropy_of_actions": 0.9}

    def two_ranks(mine):
        return [mine, other_rank]

    monkeypatch.setattr(module_file, "all_ranks", two_ranks)
    monkeypatch.setattr(PolicyGradientModule, "world_size", property(lambda self: 2))
    stats = StatsWithAField(env_steps=20, episode_returns=torch.tensor([1.0, 2.0]),
                            episode_lengths=torch.tensor([3.0, 4.0]), metrics={"rollout/advantage_mean": 1.0},
                            entropy_of_actions=0.7)
    module.record_rollout(stats, None)
    kept = module.last_rollout
    assert isinstance(kept, StatsWithAField) and kept.entropy_of_actions == 0.7  # this rank's, not the default
    assert kept.env_steps == 50 and int(module.env_steps) == 50
    assert kept.episode_returns.tolist() == [1.0, 2.0, 5.0] and kept.episode_lengths.tolist() == [3.0, 4.0, 7.0]
    assert kept.metrics == {"rollout/advantage_mean": 2.0}
