"""Baselines: advantages A = G − b from per-step targets (pure tensor math).

All inputs are time-major ``[T, N]`` with a ``valid`` mask; rows that are not valid get A = 0.
Theory map (docs/theory.md): ``none`` is §1 (no baseline), ``mean``/``value`` §3 B(s_t) and §4
A = Q − V, ``group`` §12, the GRPO advantage (R_i − mean_G)/std_G (Dr. GRPO: without ÷ std).

Per-minibatch advantage normalisation is not a baseline: it lives in the training step.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["no_baseline", "mean_baseline", "value_baseline", "group_baseline", "BASELINES"]


def _check(targets: Tensor, valid: Tensor, **others: Tensor) -> None:
    if targets.shape != valid.shape:
        raise ValueError(f"valid has shape {tuple(valid.shape)} but targets has {tuple(targets.shape)}")
    for name, tensor in others.items():
        if tensor.shape != targets.shape:
            raise ValueError(f"{name} has shape {tuple(tensor.shape)} but targets has {tuple(targets.shape)}")


def _masked(values: Tensor, valid: Tensor) -> Tensor:
    return torch.where(valid, values, torch.zeros_like(values))


def no_baseline(targets: Tensor, valid: Tensor) -> Tensor:
    """A = G (b = 0). [T, N]"""
    _check(targets, valid)
    return _masked(targets, valid)


def mean_baseline(targets: Tensor, valid: Tensor) -> Tensor:
    """A = G − mean(G) over the valid rows of the batch. [T, N]"""
    _check(targets, valid)
    count = valid.sum().clamp_min(1)
    mean = _masked(targets, valid).sum() / count
    return _masked(targets - mean, valid)


def value_baseline(targets: Tensor, valid: Tensor, values: Tensor) -> Tensor:
    """A = G − V(s_t); with G the λ-return this is exactly GAE, with the k-step return A^k. [T, N]"""
    _check(targets, valid, values=values)
    return _masked(targets - values, valid)


def group_baseline(targets: Tensor, valid: Tensor, episode_scores: Tensor, group_ids: Tensor,
                   scale: bool = True, eps: float = 1e-6) -> Tensor:
    """GRPO: A_t = (G_t − mean_g R) / (std_g R + eps) over the G episodes of each group. [T, N]

    Args:
        targets: [T, N] per-step targets; one column per episode (episode collector).
        episode_scores: [N] each episode's score R_i (its trajectory return).
        group_ids: [N] integer group of each column; columns of one group share a start state.
        scale: divide by the group std (GRPO) or not (Dr. GRPO).
        eps: keeps a group whose returns are all equal at A = 0 instead of NaN.

    The std is the population std (÷ G), so the advantages of each group have unit std exactly.
    """
    _check(targets, valid)
    if episode_scores.shape != targets.shape[1:] or group_ids.shape != targets.shape[1:]:
        raise ValueError(f"episode_scores {tuple(episode_scores.shape)} and group_ids {tuple(group_ids.shape)} "
                         f"must both be [N] = [{targets.shape[1]}]")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    episode_scores = episode_scores.to(targets.dtype)
    groups, inverse = torch.unique(group_ids, return_inverse=True)
    num_groups = groups.numel()
    counts = torch.zeros(num_groups, dtype=targets.dtype).index_add_(0, inverse, torch.ones_like(episode_scores))
    means = torch.zeros(num_groups, dtype=targets.dtype).index_add_(0, inverse, episode_scores) / counts
    centred = episode_scores - means[inverse]
    variances = torch.zeros(num_groups, dtype=targets.dtype).index_add_(0, inverse, centred**2) / counts
    advantages = targets - means[inverse].unsqueeze(0)
    if scale:
        denominator = (variances.sqrt() + eps)[inverse].unsqueeze(0)
        # a group whose returns are all equal carries no signal: A = 0 there, even with eps = 0
        advantages = torch.where(denominator > 0, advantages / denominator.clamp_min(1e-30),
                                 torch.zeros_like(advantages))
    return _masked(advantages, valid)


# What each baseline reads besides the targets and the valid mask, by parameter name: the DataModule passes each
# one as a keyword argument of that name (so their order does not matter), and pglab.run.checks refuses a
# configuration that cannot provide them, or a baseline whose declared inputs are not its parameters:
#   values          — V(s_t) [T, N] from the value head
#   episode_scores  — each episode's score R(τ) [N] (the target at its first step)
#   group_ids       — which group each episode (column) belongs to [N] (episode collector, group_size >= 2)
no_baseline.inputs = ()
mean_baseline.inputs = ()
value_baseline.inputs = ("values",)
group_baseline.inputs = ("episode_scores", "group_ids")

BASELINES = {"none": no_baseline, "mean": mean_baseline, "value": value_baseline, "group": group_baseline}
