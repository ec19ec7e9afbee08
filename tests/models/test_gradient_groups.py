"""Per-group gradient norms (train/grad_norm_policy, train/grad_norm_value) and per-group clipping.

Reference: with separate trunks the policy loss touches only policy parameters and the value loss only value
parameters, so each group's gradient is the gradient of its own loss alone — computed by a separate backward.
"""

from __future__ import annotations

import pytest
import torch

from pglab.core.surrogates import Clip
from pglab.learner.module import PolicyGradientModule
from pglab.models.mlp import ActorCritic


def _losses(net, obs, actions):
    out = net.evaluate(obs, actions)
    return -(out.logp * torch.linspace(-1, 1, len(obs))).mean(), 50.0 * (out.values - 3.0).pow(2).mean()


def _norm(tensors):
    return float(torch.linalg.vector_norm(torch.stack([t.norm() for t in tensors])))


@pytest.mark.parametrize("kind", [("discrete", 3), ("continuous", 2)])
@pytest.mark.parametrize("hidden", [(8, 8), (8,)])
def test_group_gradients_are_each_losss_own_gradient(kind, hidden):
    torch.manual_seed(0)
    net = ActorCritic(5, kind, hidden=hidden)
    obs = torch.randn(16, 5)
    actions = torch.randint(0, 3, (16,)) if kind[0] == "discrete" else torch.randn(16, 2)
    policy_loss, value_loss = _losses(net, obs, actions)
    policy_loss.backward(retain_graph=True)  # the two losses share the fused forward's graph
    expected_policy = _norm([p.grad for p in net.parameters() if p.grad is not None])
    net.zero_grad(set_to_none=True)
    value_loss.backward()
    expected_value = _norm([p.grad for p in net.parameters() if p.grad is not None])
    net.zero_grad(set_to_none=True)
    policy_loss, value_loss = _losses(net, obs, actions)
    (policy_loss + value_loss).backward()
    policy, value = net.gradient_groups()
    assert _norm(policy) == pytest.approx(expected_policy, rel=1e-5)
    assert _norm(value) == pytest.approx(expected_value, rel=1e-5)
    assert expected_value > 10 * expected_policy  # the case per-group clipping is for


def test_shared_trunk_counts_the_trunk_as_the_policys():
    torch.manual_seed(0)
    net = ActorCritic(5, ("discrete", 3), hidden=(8,), shared=True)
    obs, actions = torch.randn(16, 5), torch.randint(0, 3, (16,))
    policy_loss, value_loss = _losses(net, obs, actions)
    (policy_loss + value_loss).backward()
    policy, value = net.gradient_groups()
    total = _norm([p.grad for p in net.parameters()])
    assert _norm(policy) ** 2 + _norm(value) ** 2 == pytest.approx(total**2, rel=1e-5)
    value_head = net.value_out.weight.grad, net.value_out.bias.grad
    assert _norm(value) == pytest.approx(_norm(value_head), rel=1e-6)


def test_clip_per_group_bounds_each_group_and_keeps_directions():
    torch.manual_seed(0)
    module = PolicyGradientModule(ActorCritic(5, ("discrete", 3), hidden=(8, 8)), Clip(0.2), max_grad_norm=0.5,
                                  clip_per_group=True)
    obs, actions = torch.randn(16, 5), torch.randint(0, 3, (16,))
    policy_loss, value_loss = _losses(module.policy, obs, actions)
    (policy_loss + value_loss).backward()
    before = [g.clone() for g in module.policy.gradient_groups()[0]]
    params = list(module.policy.parameters())
    module._record_group_norms()
    module._grad_norm(params, 0.5)
    policy, value = module.policy.gradient_groups()
    assert _norm(value) == pytest.approx(0.5, rel=1e-4)  # the large value gradient is clipped to the bound
    policy_scale = min(1.0, 0.5 / _norm(before))
    for g, b in zip(policy, before, strict=True):  # the policy's is clipped only by its own norm
        torch.testing.assert_close(g, b * policy_scale)
