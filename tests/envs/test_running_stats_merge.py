"""merge_running_stats: per-rank normalisation statistics merged equal one RunningMeanStd fed every rank's data."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium.wrappers.utils import RunningMeanStd

from pglab.envs.make import merge_running_stats


@pytest.mark.parametrize("ranks, shape", [(2, (3,)), (4, (5,)), (3, ())])
def test_merge_equals_one_statistic_over_all_data(ranks, shape):
    rng = np.random.default_rng(0)
    shared = RunningMeanStd(shape=shape)
    shared.update(rng.normal(2.0, 3.0, size=(50, *shape)))  # the state every rank starts the rollout from
    start = (shared.mean.copy(), shared.var.copy(), float(shared.count))
    per_rank, everything = [], RunningMeanStd(shape=shape)
    everything.mean, everything.var, everything.count = shared.mean.copy(), shared.var.copy(), shared.count
    for r in range(ranks):
        local = RunningMeanStd(shape=shape)
        local.mean, local.var, local.count = shared.mean.copy(), shared.var.copy(), shared.count
        for _ in range(3):  # several updates per rollout, of different sizes and distributions per rank
            batch = rng.normal(r - 1.0, 1.0 + r, size=(int(rng.integers(1, 20)), *shape))
            local.update(batch)
            everything.update(batch)
        per_rank.append((local.mean, local.var, local.count))
    mean, var, count = merge_running_stats(start, per_rank)
    assert count == pytest.approx(everything.count)
    np.testing.assert_allclose(mean, everything.mean, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(var, everything.var, rtol=1e-9, atol=1e-10)


def test_ranks_without_new_data_change_nothing():
    start = (np.array([1.0, -1.0]), np.array([2.0, 0.5]), 10.0)
    mean, var, count = merge_running_stats(start, [start, start])
    np.testing.assert_allclose(mean, start[0])
    np.testing.assert_allclose(var, start[1])
    assert count == 10.0
