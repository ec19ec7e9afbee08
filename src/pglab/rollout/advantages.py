"""Rollout → targets and advantages: the estimator and the baseline applied to a time-major rollout. Pure torch.

The estimator sees every rollout tensor ``[T, N]``; the baseline gets the targets, the valid mask and the extra
inputs it declares (``inputs``), each passed as the keyword argument of that name.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from pglab.core.components import requirement
from pglab.core.types import Rollout

__all__ = ["compute_advantages", "baseline_inputs", "explained_variance"]


def explained_variance(predictions: Tensor, targets: Tensor) -> float:
    """1 − Var(G − V)/Var(G): 1 is a perfect critic, ≤ 0 is no better than a constant."""
    var = targets.var(unbiased=False)
    if var <= 0:
        return float("nan")
    return float(1 - (targets - predictions).var(unbiased=False) / var)


def baseline_inputs(rollout: Rollout, targets: Tensor) -> dict[str, Callable[[], Tensor]]:
    """Everything a baseline may declare in ``inputs`` (see pglab.core.baselines), computed on demand."""
    return {"values": lambda: rollout.values,
            # each column of an episode rollout is one episode starting at row 0: its score is the target there
            "episode_scores": lambda: targets[0],
            "group_ids": lambda: rollout.group_ids}


def compute_advantages(rollout: Rollout, estimator: Callable, baseline: Callable) -> tuple[Tensor, Tensor]:
    """(targets, advantages), both [T, N]; the baseline gets the inputs it declares, each by its parameter name."""
    targets = estimator(rollout.rewards, rollout.values, rollout.next_values, rollout.terminated, rollout.done,
                        rollout.valid)
    available = baseline_inputs(rollout, targets)
    extra = {name: available[name]() for name in requirement(baseline, "inputs", ())}
    return targets, baseline(targets, rollout.valid, **extra)
