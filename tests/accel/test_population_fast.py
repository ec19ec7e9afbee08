"""The population's stacked fast paths (pglab.accel.population) against references computed another way.

- ``StackedLean``: every member's loss, every parameter's gradient and every diagnostic against autograd through
  the reference loss (``pglab.learner.loss.minibatch_loss``) on that member's own network, one network at a time
  (no vmap, no stacking), over heads, trunk layouts (separate, shared, no value head, linear policy), activations,
  surrogates (clip, importance, reinforce), value clipping and entropy — on minibatches whose log-ratios span
  [−3.5, 3.5] with advantages of both signs and padded junk rows (``verify.synthetic_batch``), in float64.
- independence: member 0's gradient is bit-identical when member 1's loss is scaled and member 2's made NaN.
- ``StackedActor``: log π, V, distribution parameters and the deterministic action against each member's network.
- ``stacked_adam_step``: against one ``torch.optim.Adam`` per member, with differing learning rates and skips.
- the gate and the start-up check: a LayerNorm member, a surrogate whose claimed formula is false, and
  ``learner.gradients`` choose the vmapped reference with a reason; the fast learner steps as the reference one.
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn

from pglab.accel.population import StackedActor, StackedLean, stacked_adam_step, stacked_layout
from pglab.accel.verify import synthetic_batch
from pglab.core.surrogates import Clip, Importance, Reinforce
from pglab.core.types import Batch
from pglab.learner.loss import LossSettings, minibatch_loss
from pglab.learner.population import BATCH_FIELDS, PopulationLearner
from pglab.models.mlp import ActorCritic

OBS = 5


def members(P, space, hidden=(8, 6), activation="tanh", layout="separate", dtype=torch.float64):
    nets = []
    for k in range(P):
        torch.manual_seed(k)
        net = ActorCritic(OBS, space, hidden=hidden, activation=activation, shared=layout == "shared",
                          value_head=layout != "no_value", log_std_init=-0.3 + 0.2 * k)
        with torch.no_grad():  # weights away from the init's zeros (biases, 0.01 heads) so every term matters
            for p in net.parameters():
                p.add_(0.3 * torch.randn_like(p))
        nets.append(net.to(dtype))
    return nets


def stacked_batch(nets, value_clip, rows=16, padded=3):
    per_member = [synthetic_batch(net, OBS, torch.Generator().manual_seed(100 + k), value_clip,
                                  rows_per_episode=rows, padded_per_episode=padded) for k, net in enumerate(nets)]
    return {f: torch.stack([getattr(b, f) for b in per_member]) for f in BATCH_FIELDS}, per_member


def stacked_params(nets):
    return {n: torch.stack([dict(net.named_parameters())[n].detach() for net in nets])
            for n, _ in nets[0].named_parameters()}


def member_autograd(net, surrogate, batch: Batch, settings):
    net = copy.deepcopy(net)
    loss, stats = minibatch_loss(net, surrogate, batch, settings)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in net.named_parameters()}, stats


CASES = list(itertools.product(
    [("discrete", 3), ("continuous", 2)],
    ["separate", "shared", "no_value"],
    [Clip(0.2), Importance(), Reinforce()],
)) + [(("discrete", 3), "separate", Clip(0.1, eps_high=0.3)), (("continuous", 2), "linear", Clip(0.2))]


@pytest.mark.parametrize("space, layout, surrogate", CASES,
                         ids=[f"{s[0]}-{l}-{type(u).__name__}" for s, l, u in CASES])
@pytest.mark.parametrize("value_clip, ent_coef", [(None, 0.0), (0.2, 0.01)])
def test_stacked_lean_equals_each_members_autograd(space, layout, surrogate, value_clip, ent_coef):
    hidden = () if layout == "linear" else (8, 6)
    nets = members(3, space, hidden=hidden, activation="relu" if layout == "shared" else "tanh",
                   layout="separate" if layout == "linear" else layout)
    settings = LossSettings(vf_coef=0.5, ent_coef=ent_coef, value_clip=value_clip, normalize_advantages=True)
    lean = StackedLean(stacked_params(nets), stacked_layout(nets), surrogate, vf_coef=0.5, ent_coef=ent_coef,
                       value_clip=value_clip, normalize_advantages=True)
    for rows, padded in ((16, 3), (9, 0)):
        batch, per_member = stacked_batch(nets, value_clip, rows, padded)
        grads, losses, diagnostics = lean(batch)
        stats = lean.named(diagnostics)
        for k, net in enumerate(nets):
            ref_loss, ref_grads, ref_stats = member_autograd(net, surrogate, per_member[k], settings)
            torch.testing.assert_close(losses[k], ref_loss, rtol=1e-10, atol=1e-12)
            assert set(stats) == set(ref_stats)
            for key, value in ref_stats.items():
                torch.testing.assert_close(stats[key][k], value, rtol=1e-10, atol=1e-12, msg=key)
            for n, g in ref_grads.items():
                torch.testing.assert_close(grads[n][k], g, rtol=1e-9, atol=1e-12, msg=n)


def test_members_are_independent_bit_for_bit():
    nets = members(3, ("discrete", 3), dtype=torch.float32)
    lean = StackedLean(stacked_params(nets), stacked_layout(nets), Clip(0.2), vf_coef=0.5, ent_coef=0.01,
                       value_clip=0.2, normalize_advantages=True)
    batch, _ = stacked_batch([n.double() for n in copy.deepcopy(nets)], 0.2)
    batch = {n: v.float() if v.is_floating_point() else v for n, v in batch.items()}
    grads, losses, _ = lean(batch)
    other = {n: v.clone() for n, v in batch.items()}
    other["advantages"][1] *= 10
    other["targets"][1] *= 10
    other["obs"][2] = float("nan")
    grads2, losses2, _ = lean(other)
    assert torch.equal(losses[0], losses2[0]) and not torch.isfinite(losses2[2])
    for n in grads:
        assert torch.equal(grads[n][0], grads2[n][0]), n
        assert torch.isfinite(grads2[n][1]).all()


@pytest.mark.parametrize("space", [("discrete", 3), ("continuous", 2)])
@pytest.mark.parametrize("layout", ["separate", "shared", "no_value"])
def test_stacked_actor_acts_as_each_members_network(space, layout):
    nets = members(3, space, layout=layout)
    actor = StackedActor(stacked_params(nets), stacked_layout(nets))
    obs = torch.randn(3, 7, OBS, dtype=torch.float64)
    for deterministic in (False, True):
        out = actor.act(obs, deterministic)
        for k, net in enumerate(nets):
            ev = net.evaluate(obs[k], out.actions[k])
            torch.testing.assert_close(out.logp[k], ev.logp, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(out.values[k], ev.values, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(out.dist_params[k], ev.dist_params, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(actor.value(obs)[k], net.value(obs[k]), rtol=1e-12, atol=1e-12)
            if deterministic:  # the argmax, or the mean (to float64 rounding)
                torch.testing.assert_close(out.actions[k], net.act(obs[k], deterministic=True).actions.detach(),
                                           rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("space", [("discrete", 3), ("continuous", 2)])
def test_stacked_lean_distribution_parameters_are_each_members(space):
    nets = members(3, space)
    lean = StackedLean(stacked_params(nets), stacked_layout(nets), Clip(0.2), vf_coef=0.5, ent_coef=0.0,
                       value_clip=None, normalize_advantages=True)
    obs = torch.randn(3, 9, OBS, dtype=torch.float64)
    params = lean.dist_params(obs)
    for k, net in enumerate(nets):
        ref = net.act(obs[k], deterministic=True).dist_params
        torch.testing.assert_close(params[k], ref.detach(), rtol=1e-12, atol=1e-12)


def test_stacked_actor_is_a_snapshot():
    nets = members(2, ("discrete", 3))
    params = stacked_params(nets)
    actor = StackedActor(params, stacked_layout(nets))
    obs = torch.randn(2, 4, OBS, dtype=torch.float64)
    before = actor.value(obs).clone()
    for p in params.values():
        p.add_(1.0)
    assert torch.equal(actor.value(obs), before)


def test_stacked_adam_equals_torch_adam_per_member():
    P, D = 3, 11
    g = torch.Generator().manual_seed(0)
    flat = torch.randn(P, D, generator=g)
    refs = [flat[k].clone().requires_grad_(True) for k in range(P)]
    opts = [torch.optim.Adam([r], lr=1e-2, eps=1e-5, fused=True) for r in refs]
    grads, exp_avg, exp_avg_sq = torch.zeros_like(flat), torch.zeros_like(flat), torch.zeros_like(flat)
    steps = [torch.zeros(()) for _ in range(P)]
    schedule = [([0, 2], [1e-2, 1e-2, 1e-2]), ([0, 1, 2], [1e-2, 3e-3, 1e-2]), ([1], [5e-3, 2e-3, 1e-3])]
    for rows, lrs in schedule:
        grads.copy_(torch.randn(P, D, generator=g))
        stacked_adam_step(rows, flat, grads, exp_avg, exp_avg_sq, steps, lrs, betas=(0.9, 0.999), eps=1e-5)
        for k in rows:
            opts[k].param_groups[0]["lr"] = lrs[k]
            refs[k].grad = grads[k].clone()
            opts[k].step()
    for k in range(P):
        torch.testing.assert_close(flat[k], refs[k].detach(), rtol=1e-6, atol=1e-7)
    assert [float(s) for s in steps] == [2.0, 2.0, 2.0]


def _population(nets, surrogate=None, **kw):
    return PopulationLearner([copy.deepcopy(n) for n in nets], surrogate or Clip(0.2), seeds=list(range(len(nets))),
                             anneal_lr=False, **kw)


def test_fast_learner_steps_as_the_reference_learner():
    nets = members(3, ("discrete", 3), dtype=torch.float32)
    fast, ref = _population(nets, lr=1e-2, ent_coef=0.01), _population(nets, lr=1e-2, ent_coef=0.01,
                                                                         gradients="autograd")
    assert fast.path == "stacked" and ref.path == "reference" and "autograd" in ref.path_reason
    assert "stacked lean" in fast.describe() and "steps aside" in ref.describe()
    g = torch.Generator().manual_seed(5)
    for active in ([True, False, True], [True, True, True], [False, True, True]):
        logits = torch.randn(3, 16, 3, generator=g)
        batch = {"obs": torch.randn(3, 16, OBS, generator=g), "actions": torch.randint(0, 3, (3, 16), generator=g),
                 "logp_old": torch.log_softmax(logits, -1)[..., 0], "values_old": torch.randn(3, 16, generator=g),
                 "dist_params_old": torch.log_softmax(logits, -1), "advantages": torch.randn(3, 16, generator=g),
                 "targets": torch.randn(3, 16, generator=g), "mask": (torch.rand(3, 16, generator=g) > 0.2).float()}
        assert fast.step(batch, active)[0] == ref.step(batch, active)[0] == active
    for k in range(3):
        for n, v in ref.member_parameters(k).items():
            torch.testing.assert_close(fast.member_parameters(k)[n], v, rtol=1e-5, atol=1e-6)
    # the member networks are live views of the population's parameters
    for k in range(3):
        for n, p in fast.networks[k].named_parameters():
            assert torch.equal(p, fast.member_parameters(k)[n])
    fs, rs = fast.take_stats(), ref.take_stats()
    assert set(fs[0]) == set(rs[0]) and abs(fs[1]["approx_kl"] - rs[1]["approx_kl"]) < 1e-5
    obs = torch.randn(3, 6, OBS)
    torch.testing.assert_close(fast.value(obs), ref.value(obs), rtol=1e-5, atol=1e-6)


def test_fast_path_steps_aside_for_a_layernorm_member():
    nets = members(2, ("discrete", 3), dtype=torch.float32)
    for net in nets:  # (the members of one population share their structure)
        net.policy_trunk[1] = nn.LayerNorm(8)
    assert "LayerNorm" in stacked_layout(nets)
    pop = _population(nets)
    assert pop.path == "reference" and "LayerNorm" in pop.path_reason
    with pytest.raises(ValueError, match="gradients=auto or autograd"):
        _population(nets, gradients="lean")


class DoubledClip(Clip):
    """A surrogate that claims the clip formula but doubles the loss: only the numerical check can see it."""

    lean_formula = "clip"

    def per_token(self, batch, ratio):
        loss, stats = super().per_token(batch, ratio)
        return 2 * loss, stats


def test_start_up_check_catches_a_false_formula_claim():
    nets = members(2, ("discrete", 3), dtype=torch.float32)
    pop = _population(nets, DoubledClip(0.2))
    assert pop.path == "reference" and "disagrees with the vmapped reference" in pop.path_reason
    assert _population(nets).path == "stacked"
