"""The records that travel between layers: what a policy returns, a training minibatch, a rollout's statistics.

Pure torch. Every record is built by keyword and read by field name, so a new field is one line where it is made
and one where it is read — nothing in between unpacks them by position.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from torch import Tensor

__all__ = ["ActOutput", "EvalOutput", "Rollout", "Batch", "RolloutStats"]


@dataclass
class ActOutput:
    """What collection needs from one policy call; every tensor has leading dim [N]."""

    actions: Tensor
    logp: Tensor
    values: Tensor
    dist_params: Tensor


@dataclass
class EvalOutput:
    """log π(a|s) [B], entropy [B], V(s) [B] and the distribution parameters [B, P] of stored (obs, action) pairs."""

    logp: Tensor
    entropy: Tensor
    values: Tensor
    dist_params: Tensor


@dataclass
class Rollout:
    """One collection. Shapes: ``[T, N]`` unless noted.

    obs [T, N, obs_dim]; actions [T, N] (discrete) or [T, N, d]; dist_params [T, N, P];
    values [T, N] = V(s_t); next_values [T, N] = V(true s_{t+1}); valid marks real transitions.
    ``episode_returns`` / ``episode_lengths`` [E] are the raw (unnormalised) episodes that finished.
    ``group_ids`` [N] is set by the episode collector (column n is one episode).
    """

    obs: Tensor
    actions: Tensor
    logp: Tensor
    values: Tensor
    next_values: Tensor
    rewards: Tensor
    terminated: Tensor
    done: Tensor
    valid: Tensor
    dist_params: Tensor
    episode_returns: np.ndarray
    episode_lengths: np.ndarray
    group_ids: Tensor | None = None

    @property
    def num_transitions(self) -> int:
        return int(self.valid.sum())


@dataclass
class Batch:
    """A minibatch, flat [B] (obs [B, obs_dim], actions [B] or [B, d], dist_params_old [B, P]).

    ``mask`` is 1 for real transitions and 0 for padding (whole-episode minibatches are padded to the
    longest episode); ``episode_ids`` [B] index the ``num_episodes`` episodes of the minibatch.
    """

    obs: Tensor
    actions: Tensor
    logp_old: Tensor
    values_old: Tensor
    dist_params_old: Tensor
    advantages: Tensor
    targets: Tensor
    mask: Tensor
    episode_ids: Tensor
    num_episodes: int


@dataclass
class RolloutStats:
    """What one rollout measured. ``metrics`` are logged as they are named (``rollout/…``, ``train/…``): a new
    rollout metric is one entry where the DataModule builds this record. Under several processes the learner sums
    ``env_steps``, gathers the episodes and averages every metric over ranks."""

    env_steps: int
    episode_returns: Tensor  # [episodes finished in this rollout]
    episode_lengths: Tensor  # [episodes finished in this rollout]
    metrics: dict[str, float] = field(default_factory=dict)
