"""The lean update (pglab.accel.lean) against references computed another way.

- Loss, every parameter gradient and every diagnostic against autograd through the reference loss
  (``pglab.learner.loss``: the network's ``evaluate``, the surrogate class, ``value_loss``), over heads, trunk
  layouts, depths, activations, surrogates, value clipping, normalisation, entropy and padding — on batches whose
  log-ratios span [−3.5, 3.5] with advantages of both signs, so every branch of the clip formula is taken (a changed
  formula fails: ``test_a_changed_clip_formula_is_seen``).
- The hand-derived gradient against central finite differences of the lean loss itself, in float64.
- ``fused_adam_step`` against ``torch.optim.Adam.step`` (bit for bit), and its fallbacks.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from pglab.accel.lean import LeanUpdate, clip_flat_, fused_adam_step, unsupported
from pglab.core.surrogates import GRPO, Clip, Importance, KLPenalty, Reinforce
from pglab.core.types import Batch
from pglab.learner.module import PolicyGradientModule
from pglab.models.mlp import ActorCritic


def _batch(policy: ActorCritic, obs_dim: int, kind: str, size: int, n: int = 24, pad: int = 5,
           dtype=torch.float32) -> Batch:
    """A minibatch whose old policy is ``policy`` shifted by log-ratios spread evenly over [−3.5, 3.5] (ratios e^±3.5,
    far outside the clip range on both sides), advantages alternating in sign, old values ±1 around V (the value
    clip active on some rows), and ``pad`` padding rows at the end."""
    g = torch.Generator().manual_seed(1)
    obs = torch.randn(n, obs_dim, generator=g, dtype=dtype)
    if kind == "discrete":
        actions = torch.randint(0, size, (n,), generator=g)
    else:
        actions = torch.randn(n, size, generator=g, dtype=dtype)
    with torch.no_grad():
        out = policy.evaluate(obs, actions)
    mask = torch.ones(n, dtype=dtype)
    mask[n - pad:] = 0
    log_ratio = torch.linspace(-3.5, 3.5, n, dtype=dtype)[torch.randperm(n, generator=g)]
    signs = torch.where(torch.arange(n) % 2 == 0, 1.0, -1.0).to(dtype)
    return Batch(obs=obs, actions=actions, logp_old=out.logp - log_ratio,
                 values_old=out.values + torch.linspace(-1.0, 1.0, n, dtype=dtype)[torch.randperm(n, generator=g)],
                 dist_params_old=out.dist_params,
                 advantages=signs * (torch.rand(n, generator=g, dtype=dtype) * 2 + 0.2),
                 targets=out.values + torch.randn(n, generator=g, dtype=dtype), mask=mask,
                 episode_ids=torch.arange(n) % 3, num_episodes=3)


def _pair(obs_dim, space, hidden, activation, layout, surrogate, **learner):
    torch.manual_seed(0)
    policy = ActorCritic(obs_dim, space, hidden=hidden, activation=activation, shared=layout == "shared",
                         value_head=layout != "no_value", log_std_init=-0.3)
    if space[0] == "continuous":  # a log-std away from its initial value, so its gradient terms all matter
        with torch.no_grad():
            policy.head.log_std.copy_(torch.linspace(-0.5, 0.2, space[1]))
    module = PolicyGradientModule(policy, surrogate, **learner)
    lean = LeanUpdate(policy, surrogate, vf_coef=module.hparams.vf_coef, ent_coef=module.hparams.ent_coef,
                      value_clip=module.hparams.value_clip,
                      normalize_advantages=module.hparams.normalize_advantages)
    return policy, module, lean


CASES = [
    # (space, hidden, activation, layout)
    *[(space, hidden, "tanh", layout)
      for space, hidden, layout in itertools.product([("discrete", 3), ("continuous", 2)], [(), (16,), (16, 8, 6)],
                                                     ["separate", "shared", "no_value"])],
    (("discrete", 2), (64, 64), "relu", "separate"),
    (("continuous", 1), (64, 64), "relu", "shared"),
    (("continuous", 3), (64, 64), "tanh", "separate"),
]
SURROGATES = {"clip": lambda: Clip(0.2), "clip_higher": lambda: Clip(0.1, 0.3), "importance": Importance,
              "reinforce": Reinforce, "reinforce_episode_sum": lambda: Reinforce(aggregation="episode_sum")}
LEARNERS = [dict(vf_coef=0.5, ent_coef=0.0, value_clip=None, normalize_advantages=True),
            dict(vf_coef=0.7, ent_coef=0.05, value_clip=0.2, normalize_advantages=True),
            dict(vf_coef=1.0, ent_coef=0.01, value_clip=None, normalize_advantages=False)]


@pytest.mark.parametrize("space, hidden, activation, layout", CASES)
@pytest.mark.parametrize("surrogate", list(SURROGATES))
@pytest.mark.parametrize("learner", range(len(LEARNERS)))
def test_loss_gradient_and_diagnostics_match_autograd(space, hidden, activation, layout, surrogate, learner):
    policy, module, lean = _pair(5, space, hidden, activation, layout, SURROGATES[surrogate](), **LEARNERS[learner])
    batch = _batch(policy, 5, *space)

    params = [p for p in policy.parameters() if p.requires_grad]
    for p in params:
        p.grad = None
    loss_ref, stats_ref = module.loss_and_stats(batch)
    grads_ref = torch.autograd.grad(loss_ref, params, allow_unused=True)

    with torch.no_grad():
        ratio = (policy.evaluate(batch.obs, batch.actions).logp - batch.logp_old).exp()[batch.mask > 0]
    assert float(ratio.min()) < 0.05 and float(ratio.max()) > 20  # e^±3: far outside any clip range
    loss, diagnostics = lean(batch)
    stats = lean.named(diagnostics)
    torch.testing.assert_close(loss, loss_ref.detach(), rtol=1e-5, atol=1e-6)
    for (name, _), p, ref in zip(policy.named_parameters(), params, grads_ref, strict=True):
        ref = torch.zeros_like(p) if ref is None else ref
        torch.testing.assert_close(p.grad, ref, rtol=1e-4, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")
    assert sorted(lean.keys) == sorted(stats_ref), "the lean update logs the autograd update's diagnostics"
    for key, value in stats.items():
        torch.testing.assert_close(value, stats_ref[key].float(), rtol=1e-5, atol=1e-6,
                                   msg=lambda m, k=key: f"{k}: {m}")


@pytest.mark.parametrize("space, layout", [(("discrete", 3), "separate"), (("continuous", 2), "shared")])
def test_gradient_matches_finite_differences(space, layout):
    """Independent of autograd: the derivative of the lean loss along random directions, float64."""
    torch.manual_seed(0)
    policy = ActorCritic(4, space, hidden=(8, 8), shared=layout == "shared", log_std_init=-0.2).double()
    surrogate = Clip(0.2)
    lean = LeanUpdate(policy, surrogate, vf_coef=0.5, ent_coef=0.05, value_clip=0.3, normalize_advantages=True)
    batch = _batch(policy, 4, *space, dtype=torch.float64)
    lean(batch)
    params = [p for p in policy.parameters() if p.requires_grad]
    grad = torch.cat([p.grad.flatten() for p in params])
    g = torch.Generator().manual_seed(3)
    for _ in range(4):
        direction = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in params]
        h = 1e-6
        with torch.no_grad():
            for p, d in zip(params, direction, strict=True):
                p.add_(h * d)
            up = float(lean(batch)[0])
            for p, d in zip(params, direction, strict=True):
                p.sub_(2 * h * d)
            down = float(lean(batch)[0])
            for p, d in zip(params, direction, strict=True):
                p.add_(h * d)
        numeric = (up - down) / (2 * h)
        analytic = float(grad @ torch.cat([d.flatten() for d in direction]))
        assert abs(numeric - analytic) <= 1e-6 * max(1.0, abs(numeric)), (numeric, analytic)


def test_flat_gradient_is_every_parameters_grad():
    torch.manual_seed(0)
    policy = ActorCritic(4, ("discrete", 2))
    lean = LeanUpdate(policy, Clip(0.2), vf_coef=0.5, ent_coef=0.0, value_clip=None, normalize_advantages=True)
    lean(_batch(policy, 4, "discrete", 2))
    params = list(policy.parameters())
    # every parameter and its gradient is a view of the flat buffers, which hold nothing else
    flat_grad_storage = lean.flat_grad.untyped_storage().data_ptr()
    assert all(p.grad.untyped_storage().data_ptr() == flat_grad_storage for p in params)
    assert all(p.untyped_storage().data_ptr() == lean.flat_param.untyped_storage().data_ptr() for p in params)
    assert sum(p.numel() for p in params) == lean.flat_grad.numel() == lean.flat_param.numel()
    assert sorted(lean.flat_grad.tolist()) == sorted(torch.cat([p.grad.flatten() for p in params]).tolist())
    reference = torch.nn.utils.get_total_norm([p.grad for p in params])
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for copy, p in zip(copies, params, strict=True):
        copy.grad = p.grad.clone()
    torch.nn.utils.clip_grad_norm_(copies, 0.01)
    _, norm = clip_flat_(lean.flat_grad, 0.01, torch.zeros(()))
    assert norm == pytest.approx(float(reference), rel=1e-6)
    for copy, p in zip(copies, params, strict=True):  # clipping the flat buffer clipped every .grad
        torch.testing.assert_close(copy.grad, p.grad)
    assert float(lean.flat_grad.norm()) == pytest.approx(0.01, rel=1e-4)


def test_fused_adam_step_equals_adam_step():
    torch.manual_seed(0)
    shapes = [(2, 4, 8), (2, 1, 8), (3,)]
    a = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    opt_a = torch.optim.Adam(a, lr=1e-2, eps=1e-5, fused=True)
    opt_b = torch.optim.Adam(b, lr=1e-2, eps=1e-5, fused=True)
    for step in range(4):
        for p, q in zip(a, b, strict=True):
            p.grad = torch.randn(p.shape)
            q.grad = p.grad.clone()
        opt_a.param_groups[0]["lr"] = opt_b.param_groups[0]["lr"] = 1e-2 / (step + 1)
        opt_a.step()
        fused_adam_step(opt_b)  # the first call initialises the state through opt_b.step()
        for p, q in zip(a, b, strict=True):
            assert torch.equal(p, q)
    assert all(torch.equal(opt_a.state[p]["step"], opt_b.state[q]["step"]) for p, q in zip(a, b, strict=True))


def test_fused_adam_step_defers_to_step_with_hooks_or_other_optimizers():
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3)
    calls = []
    opt = torch.optim.Adam([p], lr=0.1, fused=True)
    opt.register_step_pre_hook(lambda *_: calls.append("hook"))
    fused_adam_step(opt)
    fused_adam_step(opt)
    assert calls == ["hook", "hook"]
    sgd = torch.optim.SGD([p], lr=0.1)
    fused_adam_step(sgd)
    torch.testing.assert_close(p.detach(), torch.ones(3) - 0.2 - 0.1, atol=0.02, rtol=0)  # two Adam steps + SGD


class DualClip(Clip):
    """Dual-clip PPO (Ye et al. 2020): for A < 0 the objective is also bounded below by c·A (c = 3). It claims the
    clip formula, as a careless fork would: the lean update does not implement it, and the batches above must show
    that (ratios beyond c on negative advantages)."""

    lean_formula = "clip"

    def per_token(self, batch, ratio):
        loss, stats = super().per_token(batch, ratio)
        dual = torch.minimum(loss, -3.0 * batch.advantages)  # loss = −objective: max(obj, c·A) for A < 0
        return torch.where(batch.advantages < 0, dual, loss), stats


def test_a_changed_clip_formula_is_seen():
    """The test batches reach the region where dual-clip and clip differ: the lean update must disagree there."""
    policy, module, lean = _pair(5, ("discrete", 3), (16,), "tanh", "separate", DualClip(0.2))
    batch = _batch(policy, 5, "discrete", 3)
    loss_ref, _ = module.loss_and_stats(batch)
    loss, _ = lean(batch)
    assert abs(float(loss) - float(loss_ref)) > 1e-3


@pytest.mark.parametrize("surrogate, fragment", [
    (KLPenalty(), "KLPenalty"), (GRPO(beta=0.1), "GRPO"), (Clip(0.2, aggregation="episode_mean"), "episode_mean")])
def test_unsupported_combinations_are_named(surrogate, fragment):
    reason = unsupported(ActorCritic(4, ("discrete", 2)), surrogate)
    assert reason is not None and fragment in reason
    with pytest.raises(ValueError, match="learner.gradients=lean does not cover"):
        PolicyGradientModule(ActorCritic(4, ("discrete", 2)), surrogate, gradients="lean")
    # a subclass does not inherit the declaration: it must claim the formula itself (and is then verified)
    assert "declares no lean_formula" in unsupported(ActorCritic(4, ("discrete", 2)), type("MyClip", (Clip,), {})())
    assert unsupported(ActorCritic(4, ("discrete", 2), activation="gelu"), Clip()) is not None
    assert unsupported(ActorCritic(4, ("discrete", 2)), Clip(), clip_per_group=True) is not None


def _adam_pair(space=("continuous", 2), shared=False):
    """A network the lean update lays out flat (and its Adam bound to flat moments), and an untouched copy stepped
    by torch's own ``Adam.step`` on the same gradients."""
    torch.manual_seed(0)
    policy = ActorCritic(4, space, hidden=(8, 6), shared=shared)
    twin = ActorCritic(4, space, hidden=(8, 6), shared=shared)
    twin.load_state_dict(policy.state_dict())
    lean = LeanUpdate(policy, Clip(0.2), vf_coef=0.5, ent_coef=0.01, value_clip=0.2, normalize_advantages=True)
    opt = torch.optim.Adam(policy.parameters(), lr=1e-2, eps=1e-5, fused=True)
    opt_twin = torch.optim.Adam(twin.parameters(), lr=1e-2, eps=1e-5, fused=True)
    return policy, twin, lean, opt, opt_twin


def _step_both(policy, twin, lean, opt, opt_twin, batch, lr):
    lean.rebind()
    bound = lean.bind_optimizer(opt)
    lean(batch)
    for p, q in zip(policy.parameters(), twin.parameters(), strict=True):
        q.grad = p.grad.clone()
    opt.param_groups[0]["lr"] = opt_twin.param_groups[0]["lr"] = lr
    lean.adam_step(opt)
    opt_twin.step()
    return bound


def _assert_adam_close(policy, twin):
    """Equal up to float rounding: the CPU fused-Adam kernel runs a tensor's elements through its vectorised body
    and the last few through a scalar tail, which round differently — one flat tensor puts elements that were in
    a small tensor's tail in the body (1 ulp, compounding over steps). The first step is bit-equal."""
    for (name, p), q in zip(policy.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=2e-6, atol=1e-8, msg=lambda m, name=name: f"{name}: {m}")


def _sync(twin, opt_twin, policy, opt):
    """The twin (parameters and Adam state) set to the lean side's, so one step is compared without compounding."""
    with torch.no_grad():
        for p, q in zip(policy.parameters(), twin.parameters(), strict=True):
            q.copy_(p)
            if p in opt.state:
                opt_twin.state[q] = {k: v.clone() for k, v in opt.state[p].items()}


@pytest.mark.parametrize("space, shared", [(("continuous", 2), False), (("discrete", 3), False),
                                           (("discrete", 3), True)])
def test_flat_adam_equals_adam_step(space, shared):
    """One fused-Adam call on the flat buffers gives torch's per-parameter ``Adam.step`` (bit for bit from a fresh
    state, to float rounding after), with the learning rate changing between steps; the optimiser's state stays
    per parameter and equal to torch's."""
    policy, twin, lean, opt, opt_twin = _adam_pair(space, shared)
    batch = _batch(policy, 4, *space)
    assert _step_both(policy, twin, lean, opt, opt_twin, batch, 1e-2)
    assert all(torch.equal(p, q) for p, q in zip(policy.parameters(), twin.parameters(), strict=True))
    for step in range(1, 5):
        _sync(twin, opt_twin, policy, opt)
        assert _step_both(policy, twin, lean, opt, opt_twin, batch, 1e-2 / (step + 1))
        _assert_adam_close(policy, twin)
    for p, q in zip(policy.parameters(), twin.parameters(), strict=True):
        assert torch.equal(opt.state[p]["step"], opt_twin.state[q]["step"])
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(opt.state[p][key], opt_twin.state[q][key], rtol=2e-6, atol=1e-10)


def test_flat_layout_survives_checkpoints_and_device_moves(tmp_path):
    """A saved and loaded optimiser state (new tensors) is laid out again and stepping stays torch's; parameters
    replaced by ``.to()`` / ``.data =`` are laid out again; a state_dict of views saves and loads (weights only)."""
    policy, twin, lean, opt, opt_twin = _adam_pair()
    batch = _batch(policy, 4, "continuous", 2)
    for _ in range(2):
        _sync(twin, opt_twin, policy, opt)
        _step_both(policy, twin, lean, opt, opt_twin, batch, 1e-2)
    torch.save({"model": policy.state_dict(), "opt": opt.state_dict()}, tmp_path / "c.pt")
    saved = torch.load(tmp_path / "c.pt", weights_only=True)
    _sync(twin, opt_twin, policy, opt)
    _step_both(policy, twin, lean, opt, opt_twin, batch, 1e-2)  # moves on: the saved state is now an older one
    opt.load_state_dict(saved["opt"])  # new state tensors: the flat moments are stale
    policy.load_state_dict(saved["model"])  # in place: the flat parameters stay
    assert all(p.untyped_storage().data_ptr() == lean.flat_param.untyped_storage().data_ptr()
               for p in policy.parameters())
    assert float(lean._adam[3][0]) == 3 and float(opt.state[lean.params[0]]["step"]) == 2
    assert not any(opt.state[p]["exp_avg"] is m for p, m in zip(lean.params, lean._adam[4], strict=True))
    opt_twin.load_state_dict(saved["opt"])
    twin.load_state_dict(saved["model"])
    for _ in range(2):
        _sync(twin, opt_twin, policy, opt)
        assert _step_both(policy, twin, lean, opt, opt_twin, batch, 1e-3)
        _assert_adam_close(policy, twin)
    first = next(policy.parameters())
    first.data = first.data.clone()  # storage replaced: the next step lays everything out again
    _sync(twin, opt_twin, policy, opt)
    assert _step_both(policy, twin, lean, opt, opt_twin, batch, 1e-3)
    assert first.untyped_storage().data_ptr() == lean.flat_param.untyped_storage().data_ptr()
    _assert_adam_close(policy, twin)


def test_flat_adam_steps_aside_for_other_optimisers_and_partial_groups():
    policy, _, lean, _, _ = _adam_pair()
    assert not lean.bind_optimizer(torch.optim.SGD(policy.parameters(), lr=0.1))
    params = list(policy.parameters())
    assert not lean.bind_optimizer(torch.optim.Adam(params[:-1], lr=0.1, fused=True))
    assert not lean.bind_optimizer(torch.optim.Adam(params, lr=0.1, fused=False))
    assert lean.bind_optimizer(torch.optim.Adam(params, lr=0.1, fused=True))
