"""The vectorised population learner against references computed another way: one ActorCritic per member, the
reference loss through autograd, torch's clip_grad_norm_ and torch.optim.Adam per member."""

from __future__ import annotations

import copy

import pytest
import torch

from pglab.core.surrogates import Clip
from pglab.core.types import Batch
from pglab.learner.loss import LossSettings, minibatch_loss
from pglab.learner.population import BATCH_FIELDS, PopulationLearner
from pglab.models.mlp import ActorCritic

P, B, OBS, ACTIONS = 3, 16, 4, 2


def policies(seed: int = 0) -> list[ActorCritic]:
    nets = []
    for k in range(P):
        torch.manual_seed(seed + k)
        nets.append(ActorCritic(OBS, ("discrete", ACTIONS), hidden=(8, 8)))
    return nets


def batches(seed: int = 7) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(P, B, ACTIONS, generator=g)
    return {"obs": torch.randn(P, B, OBS, generator=g), "actions": torch.randint(0, ACTIONS, (P, B), generator=g),
            "logp_old": torch.log_softmax(logits, -1)[..., 0] - 0.1, "values_old": torch.randn(P, B, generator=g),
            "dist_params_old": torch.log_softmax(logits, -1), "advantages": torch.randn(P, B, generator=g),
            "targets": torch.randn(P, B, generator=g), "mask": torch.ones(P, B)}


def member_batch(batch: dict, k: int) -> Batch:
    f = {name: batch[name][k] for name in BATCH_FIELDS}
    return Batch(**f, episode_ids=torch.zeros(B, dtype=torch.long), num_episodes=1)


@pytest.fixture(params=["auto", "autograd"])
def gradients(request) -> str:
    """Every test runs on both paths: the stacked fast path (auto) and the vmapped reference (autograd)."""
    return request.param


def learner(nets, gradients, **kw) -> PopulationLearner:
    pop = PopulationLearner(nets, Clip(0.2), seeds=list(range(P)), anneal_lr=False, gradients=gradients, **kw)
    assert pop.path == ("stacked" if gradients == "auto" else "reference"), pop.path_reason
    return pop


def reference_grads(net: ActorCritic, batch: Batch) -> dict[str, torch.Tensor]:
    net = copy.deepcopy(net)
    loss, _ = minibatch_loss(net, Clip(0.2), batch, LossSettings())
    loss.backward()
    return {n: p.grad for n, p in net.named_parameters()}


def test_gradients_equal_each_members_own_autograd(gradients):
    nets = policies()
    pop, batch = learner(nets, gradients), batches()
    grads, losses, stats = pop.gradients(batch)
    for k in range(P):
        ref = reference_grads(nets[k], member_batch(batch, k))
        for n, g in ref.items():
            torch.testing.assert_close(grads[n][k], g, rtol=1e-5, atol=1e-7)
    assert losses.shape == (P,) and stats["approx_kl"].shape == (P,)


def test_member_gradient_independent_of_other_members_loss(gradients):
    pop, batch = learner(policies(), gradients), batches()
    grads, _, _ = pop.gradients(batch)
    scaled = {n: v.clone() for n, v in batch.items()}
    scaled["advantages"][1] *= 10
    scaled["targets"][1] *= 10  # member 1's loss scaled up ...
    scaled["obs"][2] = float("nan")  # ... and member 2's made NaN
    grads2, losses2, _ = pop.gradients(scaled)
    assert not torch.isfinite(losses2[2])
    for n in grads:
        assert torch.equal(grads[n][0], grads2[n][0]), n  # bit for bit
        assert not torch.equal(grads[n][1], grads2[n][1]) or grads[n][1].abs().max() == 0
        assert torch.isfinite(grads2[n][0]).all()


def test_clipping_is_per_member(gradients):
    nets = policies()
    pop, batch = learner(nets, gradients, max_grad_norm=0.05), batches()
    batch["targets"][1] *= 1000  # member 1's gradient is huge: a shared norm would shrink the others' too
    grads, _, _ = pop.gradients(batch)
    norms = pop.clip(grads)
    for k in range(P):
        net = copy.deepcopy(nets[k])
        loss, _ = minibatch_loss(net, Clip(0.2), member_batch(batch, k), LossSettings())
        loss.backward()
        ref_norm = torch.nn.utils.clip_grad_norm_(list(net.parameters()), 0.05, foreach=True)
        torch.testing.assert_close(norms[k], ref_norm, rtol=1e-5, atol=0)
        for n, p in net.named_parameters():
            torch.testing.assert_close(grads[n][k], p.grad, rtol=1e-5, atol=1e-8)
    assert norms[1] > 100 * norms[0]


def test_adam_state_and_skips_per_member(gradients):
    """Three steps; member 1 is inactive in the first: its Adam must be a fresh Adam at the second step (a shared
    step count or shared moments would differ), and the others must equal torch.optim.Adam on their own."""
    nets = policies()
    pop = learner(nets, gradients, lr=1e-2, max_grad_norm=None)
    refs = [copy.deepcopy(n) for n in nets]
    opts = [torch.optim.Adam(r.parameters(), lr=1e-2, eps=1e-5, fused=True) for r in refs]
    for step, active in enumerate(([True, False, True], [True, True, True], [True, True, False])):
        batch = batches(seed=step)
        applied, _ = pop.step(batch, active)
        assert applied == active
        for k in range(P):
            if not active[k]:
                continue
            opts[k].zero_grad()
            loss, _ = minibatch_loss(refs[k], Clip(0.2), member_batch(batch, k), LossSettings())
            loss.backward()
            opts[k].step()
    for k in range(P):
        mine = pop.member_parameters(k)
        for n, p in refs[k].named_parameters():
            torch.testing.assert_close(mine[n], p.detach(), rtol=1e-5, atol=1e-6)
    assert [m.updates for m in pop.members] == [3, 2, 2]


def test_nonfinite_member_stops_alone(gradients):
    nets = policies()
    pop = learner(nets, gradients)
    clean = learner(copy.deepcopy(nets), gradients)
    batch = batches()
    bad = {n: v.clone() for n, v in batch.items()}
    bad["obs"][1] = float("nan")
    applied, _ = pop.step(bad, [True, True, True])
    clean.step(batch, [True, True, True])
    assert applied == [True, False, True]
    assert pop.members[1].failed and "seed=1" in pop.members[1].failed and "non-finite loss" in pop.members[1].failed
    assert pop.trainable() == [True, False, True]
    for k in (0, 2):  # the others' updates are exactly what they are without the NaN member
        for n, v in pop.member_parameters(k).items():
            assert torch.equal(v, clean.member_parameters(k)[n])
    for n, v in pop.member_parameters(1).items():  # the failed member keeps its last finite weights
        assert torch.equal(v, dict(nets[1].named_parameters())[n].detach())


def test_nonfinite_skip_mode_counts_per_member(gradients):
    pop = learner(policies(), gradients, nonfinite="skip")
    bad = batches()
    bad["obs"][0] = float("inf")
    applied, _ = pop.step(bad, [True, True, True])
    assert applied == [False, True, True]
    assert [m.skipped_updates for m in pop.members] == [1, 0, 0] and pop.trainable() == [True, True, True]


def test_acting_uses_each_members_network(gradients):
    nets = policies()
    pop = learner(nets, gradients)
    obs = torch.randn(P, 5, OBS)
    torch.manual_seed(3)
    out = pop.act(obs)
    for k in range(P):
        ev = nets[k].evaluate(obs[k], out.actions[k])
        torch.testing.assert_close(out.logp[k], ev.logp, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out.values[k], ev.values, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(pop.value(obs)[k], nets[k].value(obs[k]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["continuous"])
def test_gaussian_head_log_std_is_per_member(kind, gradients):
    nets = []
    for k in range(2):
        torch.manual_seed(k)
        nets.append(ActorCritic(OBS, (kind, 2), hidden=(8,), log_std_init=-1.0 + k))
    pop = PopulationLearner(nets, Clip(0.2), seeds=[0, 1], gradients=gradients)
    out = pop.act(torch.randn(2, 3, OBS))
    assert torch.allclose(out.dist_params[0, :, 2:], torch.tensor(-1.0))
    assert torch.allclose(out.dist_params[1, :, 2:], torch.tensor(0.0))


def test_adaptive_beta_is_each_members_own():
    """Each member's KL penalty adapts β to its own post-update KL (the PPO paper's rule, as a single run's
    surrogate applies it), and its loss uses its own β: checked against one KLPenalty per member."""
    from pglab.core.surrogates import KLPenalty

    nets = policies()
    pop = PopulationLearner(nets, KLPenalty(beta=1.0, target_kl=0.01), seeds=list(range(P)), anneal_lr=False)
    assert pop.path == "reference"  # no lean formula for the KL penalty
    kls = [0.001, 0.1, None]  # below target/1.5 (β halves), above 1.5·target (β doubles), no update this rollout
    logged = pop.after_rollout(kls)
    singles = [KLPenalty(beta=1.0, target_kl=0.01) for _ in range(P)]
    for single, kl in zip(singles, kls, strict=True):
        if kl is not None:
            single.after_rollout(kl)
    assert [float(s.beta) for s in singles] == [0.5, 2.0, 1.0]
    assert pop.surrogate_buffers["beta"].tolist() == [0.5, 2.0, 1.0]  # shared state would give one value
    assert [d.get("beta") for d in logged] == [0.5, 2.0, None]
    # each member's gradient is its own loss's, with its own β
    batch = batches()
    grads, losses, stats = pop.gradients(batch)
    for k in range(P):
        net = copy.deepcopy(nets[k])
        loss, _ = minibatch_loss(net, singles[k], member_batch(batch, k), LossSettings())
        loss.backward()
        torch.testing.assert_close(losses[k], loss.detach(), rtol=1e-5, atol=1e-7)
        for n, p in net.named_parameters():
            torch.testing.assert_close(grads[n][k], p.grad, rtol=1e-5, atol=1e-7)
    assert stats["beta"].tolist() == [0.5, 2.0, 1.0]
    # and a resumed population goes on from each member's own β
    restored = PopulationLearner(policies(), KLPenalty(beta=1.0, target_kl=0.01), seeds=list(range(P)),
                                 anneal_lr=False)
    restored.load_state_dict(pop.state_dict())
    assert restored.surrogate_buffers["beta"].tolist() == [0.5, 2.0, 1.0]
    assert [float(s.beta) for s in restored.surrogates] == [0.5, 2.0, 1.0]
