"""Distribution heads against torch.distributions (an independent implementation) and sampling frequencies;
the fused ActorCritic against an unfused network built here (outputs, gradients, initialisation, old keys)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.distributions import Categorical, Normal, kl_divergence

from pglab.core.distributions import CategoricalHead, GaussianHead
from pglab.models.mlp import ActorCritic


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


def test_no_value_head_gives_zero_values():
    net = ActorCritic(4, ("continuous", 2), value_head=False)
    out = net.act(torch.randn(5, 4))
    assert torch.equal(out.values, torch.zeros(5)) and out.actions.shape == (5, 2)


# -- the ActorCritic against an independently written network ---------------------------------------------------

class UnfusedReference(nn.Module):
    """The same structure written out independently: nn.Sequential trunks, nn.Linear heads, torch.distributions.

    Its attribute names are the ActorCritic's, so its state_dict loads into one.
    """

    def __init__(self, obs_dim, kind, size, hidden, shared, value_head, orthogonal=False):
        super().__init__()

        def linear(n_in, n_out, gain):
            layer = nn.Linear(n_in, n_out)
            if orthogonal:  # the documented init: orthogonal(gain), zero bias
                nn.init.orthogonal_(layer.weight, gain)
                nn.init.zeros_(layer.bias)
            else:  # generic weights and non-zero biases, so that every parameter shows in outputs and gradients
                nn.init.normal_(layer.weight, 0.0, 0.7)
                nn.init.normal_(layer.bias, 0.0, 0.3)
            return layer

        def trunk():
            layers, width = [], obs_dim
            for h in hidden:
                layers += [linear(width, h, math.sqrt(2)), nn.Tanh()]
                width = h
            return nn.Sequential(*layers)

        self.kind, self.size = kind, size
        feat = hidden[-1] if hidden else obs_dim
        # construction order = the unfused ActorCritic's: policy trunk, head, value trunk, value head
        self.policy_trunk = trunk()
        self.head = nn.Module()
        self.head.linear = linear(feat, size, 0.01)
        if kind == "continuous":
            self.head.log_std = nn.Parameter(torch.zeros(size) if orthogonal else torch.randn(size) * 0.3)
        self.value_trunk = trunk() if (value_head and not shared) else None
        self.value_out = linear(feat, 1, 1.0) if value_head else None

    def forward(self, obs, actions):
        """(log π(a|s) [B], entropy [B], V(s) [B] or None, greedy action [B] / [B, d])."""
        out = self.head.linear(self.policy_trunk(obs))
        if self.kind == "discrete":
            dist = Categorical(logits=out)
            mode = out.argmax(-1)
            logp, entropy = dist.log_prob(actions), dist.entropy()
        else:
            dist = Normal(out, self.head.log_std.exp().expand_as(out))
            mode = out
            logp, entropy = dist.log_prob(actions).sum(-1), dist.entropy().sum(-1)
        values = None
        if self.value_out is not None:
            features = self.policy_trunk(obs) if self.value_trunk is None else self.value_trunk(obs)
            values = self.value_out(features).squeeze(-1)
        return logp, entropy, values, mode


CASES = [(kind, hidden, shared, value_head)
         for kind in ("discrete", "continuous")
         for hidden in ((), (16,), (16, 8), (16, 12, 8))
         for shared, value_head in ((False, True), (True, True), (False, False))]


@pytest.mark.parametrize(("kind", "hidden", "shared", "value_head"), CASES)
def test_network_matches_an_independent_reference(kind, hidden, shared, value_head):
    torch.manual_seed(3)
    obs_dim, size, batch = 5, 3, 32
    ref = UnfusedReference(obs_dim, kind, size, hidden, shared, value_head).double()
    net = ActorCritic(obs_dim, (kind, size), hidden=hidden, shared=shared, value_head=value_head).double()
    net.load_state_dict(ref.state_dict())
    obs = torch.randn(batch, obs_dim, dtype=torch.float64)
    actions = torch.randint(0, size, (batch,)) if kind == "discrete" else torch.randn(batch, size, dtype=torch.float64)
    ref_logp, ref_entropy, ref_values, ref_mode = ref(obs, actions)

    out = net.evaluate(obs, actions)
    torch.testing.assert_close(out.logp, ref_logp)
    torch.testing.assert_close(out.entropy, ref_entropy)
    torch.testing.assert_close(out.values, ref_values if value_head else torch.zeros(batch, dtype=torch.float64))
    torch.testing.assert_close(net.value(obs), out.values)
    greedy = net.act(obs, deterministic=True)
    torch.testing.assert_close(greedy.actions, ref_mode)
    torch.testing.assert_close(greedy.values, out.values)

    # gradients of a loss that weighs every output differently, through both networks
    weights = torch.randn(3, batch, dtype=torch.float64)

    def loss(logp, entropy, values):
        total = (weights[0] * logp).sum() + (weights[1] * entropy).sum()
        return total if values is None else total + (weights[2] * values**2).sum()

    loss(ref_logp, ref_entropy, ref_values).backward()
    loss(out.logp, out.entropy, out.values if value_head else None).backward()
    expected = {name: p.grad if p.grad is not None else torch.zeros_like(p) for name, p in ref.named_parameters()}
    got = {name: p.grad if p.grad is not None else torch.zeros_like(p) for name, p in net.named_parameters()}
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], msg=name)


@pytest.mark.parametrize("kind", ["discrete", "continuous"])
@pytest.mark.parametrize(("hidden", "shared", "value_head"),
                         [((64, 64), False, True), ((64, 64), True, True), ((32,), False, False), ((), False, True)])
def test_initialisation_is_orthogonal_in_construction_order(kind, hidden, shared, value_head):
    """Same seed → the same weights as drawn in construction order (policy trunk, head, value trunk, value head;
    orthogonal √2 trunks, 0.01 / 1.0 heads, zero bias)."""
    torch.manual_seed(7)
    net = ActorCritic(4, (kind, 2), hidden=hidden, shared=shared, value_head=value_head)
    torch.manual_seed(7)
    ref = UnfusedReference(4, kind, 2, hidden, shared, value_head, orthogonal=True)
    expected = ActorCritic(4, (kind, 2), hidden=hidden, shared=shared, value_head=value_head)
    expected.load_state_dict(ref.state_dict())
    for (name, p), q in zip(net.state_dict().items(), expected.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)
    # and the property itself, per block: orthogonal rows/columns scaled by the gain
    for name, p in ref.named_parameters():
        if name.endswith("weight"):
            gain = math.sqrt(2) if "trunk" in name else (1.0 if name.startswith("value_out") else 0.01)
            gram = p @ p.t() if p.shape[0] <= p.shape[1] else p.t() @ p
            torch.testing.assert_close(gram, gain**2 * torch.eye(gram.shape[0]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shared", [True, False])
def test_shared_trunk_means_one_trunk(shared):
    torch.manual_seed(0)
    net = ActorCritic(4, ("discrete", 2), hidden=(8, 8), shared=shared)
    assert (net.value_trunk is None) == shared
    obs = torch.randn(3, 4)
    net.evaluate(obs, torch.zeros(3, dtype=torch.long)).values.sum().backward()
    # with a shared trunk the value loss reaches the policy's weights; with separate ones it does not
    assert (net.policy_trunk[0].weight.grad is not None) == shared
    if not shared:
        assert bool(net.value_trunk[0].weight.grad.abs().sum() > 0)


def test_deepcopy_is_independent():
    """The frozen reference policy is a deepcopy: it must read its own weights."""
    net = ActorCritic(4, ("discrete", 2), hidden=(8,))
    copy_ = copy.deepcopy(net)
    with torch.no_grad():
        net.head.linear.weight[0].add_(1.0)
    obs = torch.randn(6, 4)
    assert not torch.allclose(net.act(obs, True).dist_params, copy_.act(obs, True).dist_params)


def test_an_old_fused_checkpoint_is_refused_with_a_reason():
    state = {"trunk.0.weight": torch.zeros(4, 64), "out.weight": torch.zeros(64, 3)}
    with pytest.raises(RuntimeError, match="older pglab network layout"):
        ActorCritic(4, ("discrete", 2)).load_state_dict(state)
