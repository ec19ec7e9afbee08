"""Components fail safe: an estimator that forgets (or misstates) ``bootstraps_from_value`` is refused at start-up
instead of running with V ≡ 0; a baseline gets its inputs by parameter name, whatever order it declares them in;
a component that raises on the start-up dummy call is named."""

from __future__ import annotations

import functools

import torch

from pglab.core.baselines import group_baseline
from pglab.core.estimators import gae, trajectory_return
from pglab.core.types import Rollout
from pglab.rollout.advantages import compute_advantages
from pglab.run.checks import _component_problems


def td_forgetful(rewards, values, next_values, terminated, done, valid, gamma=0.99):
    """G = r + γ V(s') — reads V, declares nothing."""
    return rewards + gamma * next_values * (~terminated).float()


def td_misdeclared(rewards, values, next_values, terminated, done, valid, gamma=0.99):
    """G = r + γ V(s') − reads V inside episodes, yet declares it does not."""
    return rewards + gamma * next_values * (~terminated).float()


td_misdeclared.bootstraps_from_value = False


def test_s5_an_undeclared_bootstrap_is_refused_naming_the_fix():
    problems = _component_problems(td_forgetful, group_baseline)
    assert any("does not declare bootstraps_from_value" in p and "td_forgetful" in p for p in problems)


def test_a_misdeclared_bootstrap_is_caught_by_the_dummy_call():
    problems = _component_problems(functools.partial(td_misdeclared, gamma=0.9), group_baseline)
    assert any("declares bootstraps_from_value = False, but its targets depend on V(s)" in p for p in problems)


def test_the_builtin_estimators_pass():
    assert _component_problems(gae, group_baseline) == []
    assert _component_problems(trajectory_return, group_baseline) == []


def swapped_group_baseline(targets, valid, group_ids, episode_scores):
    """group_baseline with its parameters in the other order than its declared inputs."""
    return group_baseline(targets, valid, episode_scores, group_ids)


swapped_group_baseline.inputs = ("episode_scores", "group_ids")


def test_s6_baseline_inputs_travel_by_name():
    T, N = 5, 4
    g = torch.Generator().manual_seed(0)
    rewards = torch.randn(T, N, generator=g)
    done = torch.zeros(T, N, dtype=torch.bool)
    done[-1] = True
    rollout = Rollout(obs=torch.zeros(T, N, 1), actions=torch.zeros(T, N), logp=torch.zeros(T, N),
                      values=torch.zeros(T, N), next_values=torch.zeros(T, N), rewards=rewards, terminated=done,
                      done=done, valid=torch.ones(T, N, dtype=torch.bool), dist_params=torch.zeros(T, N, 2),
                      episode_returns=None, episode_lengths=None, group_ids=torch.tensor([0, 0, 1, 1]))
    targets, advantages = compute_advantages(rollout, trajectory_return, swapped_group_baseline)
    # brute force: each episode's return minus its group's mean return, over the group's std
    returns = rewards.sum(0)
    expected = torch.empty(N)
    for members in ([0, 1], [2, 3]):
        r = returns[members]
        expected[members] = (r - r.mean()) / (r.std(unbiased=False) + 1e-6)
    torch.testing.assert_close(advantages, expected.expand(T, N))
    assert _component_problems(trajectory_return, swapped_group_baseline) == []


def baseline_misnamed(targets, valid, v):
    return targets - v


baseline_misnamed.inputs = ("values",)


def baseline_that_raises(targets, valid):
    raise KeyError("dummy")


baseline_that_raises.inputs = ()


def test_a_declared_input_that_is_not_a_parameter_is_refused():
    problems = _component_problems(gae, baseline_misnamed)
    assert any("declares inputs ['values'] that are not among its parameters" in p for p in problems)


def test_a_component_that_raises_is_named():
    problems = _component_problems(gae, baseline_that_raises)
    assert any("baseline_that_raises" in p and "raised on a dummy rollout: KeyError" in p for p in problems)
