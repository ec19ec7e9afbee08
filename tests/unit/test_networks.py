"""Distribution heads against torch.distributions (an independent implementation) and sampling frequencies."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Categorical, Normal, kl_divergence

from pglab.networks import ActorCritic, CategoricalHead, GaussianHead


def test_categorical_matches_torch_distributions():
    torch.manual_seed(0)
    head = CategoricalHead(5, 4)
    features = torch.randn(16, 5)
    params = head.params(features)
    reference = Categorical(logits=head.linear(features))
    actions = reference.sample()
    torch.testing.assert_close(head.log_prob(params, actions), reference.log_prob(actions))
    torch.testing.assert_close(head.entropy(params), reference.entropy())
    other = head.params(torch.randn(16, 5))
    torch.testing.assert_close(head.kl(params, other), kl_divergence(reference, Categorical(logits=other)))


def test_categorical_sampling_frequencies_match_probabilities():
    torch.manual_seed(1)
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    params = probs.log().expand(200_000, 4)
    counts = torch.bincount(CategoricalHead(1, 4).sample(params), minlength=4).double() / 200_000
    # 4 standard errors of a binomial proportion at n = 200k is < 0.005
    torch.testing.assert_close(counts, probs.double(), atol=5e-3, rtol=0)


def test_gaussian_matches_torch_distributions():
    torch.manual_seed(2)
    head = GaussianHead(3, 2, log_std_init=-0.5)
    with torch.no_grad():
        head.log_std.copy_(torch.tensor([-0.5, 0.3]))
    features = torch.randn(10, 3)
    params = head.params(features)
    mean, std = head.linear(features), head.log_std.exp().expand(10, 2)
    reference = Normal(mean, std)
    actions = head.sample(params)
    torch.testing.assert_close(head.log_prob(params, actions), reference.log_prob(actions).sum(-1))
    torch.testing.assert_close(head.entropy(params), reference.entropy().sum(-1))
    other = params + 0.1
    ref_other = Normal(other[:, :2], other[:, 2:].exp())
    torch.testing.assert_close(head.kl(params, other), kl_divergence(reference, ref_other).sum(-1))


@pytest.mark.parametrize("shared", [True, False])
def test_shared_trunk_means_one_trunk(shared):
    net = ActorCritic(4, ("discrete", 2), hidden=(8, 8), shared=shared)
    assert (net.value_trunk is None) == shared
    obs = torch.randn(3, 4)
    loss = net.evaluate(obs, torch.zeros(3, dtype=torch.long)).values.sum()
    loss.backward()
    # with a shared trunk the value loss reaches the policy trunk; with separate ones it does not
    grad = net.policy_trunk[0].weight.grad
    assert (grad is not None and bool(grad.abs().sum() > 0)) == shared


def test_no_value_head_gives_zero_values():
    net = ActorCritic(4, ("continuous", 2), value_head=False)
    out = net.act(torch.randn(5, 4))
    assert torch.equal(out.values, torch.zeros(5)) and out.actions.shape == (5, 2)
