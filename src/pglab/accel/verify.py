"""The start-up check of every fast path against the reference code it is derived from.

Before the first env step the learner asks: does the fused collection actor act exactly as the reference network
does, and does the lean update give the reference loss's value, every parameter's gradient and every diagnostic?
Both run on a float64 copy of the network (so float rounding cannot hide or fake a difference) and on a synthetic
minibatch built to reach every branch of the formulas:

- log-ratios spread evenly over [−3.5, 3.5] (ratios e^±3.5: far outside any clip range on both sides),
- advantages of both signs on every ratio range, so each side of PPO's min() is taken,
- padded rows (mask 0) holding junk, in every episode,
- old values spread ±3 value-clip ranges around V, so the value clip is active on some rows and not on others
  (never exactly at the clip range, where the value loss has a kink),
- several episodes (for per-episode aggregation).

A difference beyond float64 rounding is a reason (naming what differed) and the reference runs instead. Pure torch;
the global RNG is left as it was.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pglab.accel import activations
from pglab.accel.fused_actor import fused_actor
from pglab.accel.lean import LeanUpdate
from pglab.accel.structure import mlp_layout
from pglab.core.surrogates import Surrogate
from pglab.core.types import Batch
from pglab.learner.loss import LossSettings, minibatch_loss

__all__ = ["verify_fused_actor", "verify_lean_update", "synthetic_batch", "float64_copy", "Verdict"]

_RTOL, _ATOL = 1e-7, 1e-9  # float64: the paths agree to ~1e-13 when they compute the same function


@dataclass
class Verdict:
    """``problem`` is None when the fast path agrees with the reference; ``seconds`` is what the check cost."""

    problem: str | None
    seconds: float


def _differs(name: str, fast: Tensor, ref: Tensor) -> str | None:
    fast, ref = torch.as_tensor(fast, dtype=torch.float64), torch.as_tensor(ref, dtype=torch.float64)
    if fast.shape != ref.shape:
        return f"{name}: shape {tuple(fast.shape)} against the reference's {tuple(ref.shape)}"
    both_nan = torch.isnan(fast) & torch.isnan(ref)
    gap = torch.where(both_nan, 0.0, (fast - ref).abs())
    bound = _ATOL + _RTOL * ref.abs().nan_to_num(0.0)
    if bool((gap > bound).any()) or bool(torch.isnan(gap).any()):
        worst = int(torch.argmax(torch.nan_to_num(gap - bound, nan=math.inf)))
        return (f"{name}: {float(fast.flatten()[worst]):.6g} against the reference's {float(ref.flatten()[worst]):.6g}"
                f" (max |Δ| {float(torch.nan_to_num(gap, nan=math.inf).max()):.3g})")
    return None


def float64_copy(policy: nn.Module) -> nn.Module:
    """The network the checks run on: a CPU float64 copy (the checks may lay its parameters out anew). One copy
    serves both checks when passed as ``reference=`` (the fused actor's check only reads it)."""
    return copy.deepcopy(policy).to(device="cpu", dtype=torch.float64)


def synthetic_batch(policy: nn.Module, obs_dim: int, generator: torch.Generator, value_clip: float | None,
                    episodes: int = 4, rows_per_episode: int = 16, padded_per_episode: int = 3) -> Batch:
    """A float64 minibatch for ``policy`` (a float64 network) that reaches every branch (see the module docstring).
    Rows are episode-major: ``episodes`` episodes of ``rows_per_episode`` rows, the last ``padded_per_episode`` of
    each padding."""
    rows = episodes * rows_per_episode
    opts = {"dtype": torch.float64}
    obs = torch.randn(rows, obs_dim, generator=generator, **opts) * 1.5
    head = policy.head
    if hasattr(head, "log_std"):
        actions = torch.randn(rows, head.dim, generator=generator, **opts) * 1.5
    else:
        actions = torch.randint(0, head.param_dim, (rows,), generator=generator)
    with torch.no_grad():
        now = policy.evaluate(obs, actions)
    # log ρ = log π_θ − log π_old spread over [−3.5, 3.5], shuffled; advantages alternate in sign
    log_ratio = torch.linspace(-3.5, 3.5, rows, **opts)[torch.randperm(rows, generator=generator)]
    magnitude = torch.rand(rows, generator=generator, **opts) + 0.2
    advantages = magnitude * torch.where(torch.arange(rows) % 2 == 0, 1.0, -1.0).to(torch.float64)
    clip = value_clip if value_clip is not None else 0.2
    # old values ±3 clip ranges around V on a grid shifted off ±clip itself: at |V − V_old| = clip exactly the value
    # loss has a kink, where the two paths' last-bit differences pick different sides of the clamp
    grid = torch.linspace(-3.0, 3.0, rows, **opts) + 0.1234567 * 6.0 / max(rows - 1, 1)
    values_old = now.values + clip * grid[torch.randperm(rows, generator=generator)]
    targets = now.values + torch.randn(rows, generator=generator, **opts)
    mask = torch.ones(episodes, rows_per_episode, **opts)
    mask[:, rows_per_episode - padded_per_episode:] = 0.0
    mask = mask.reshape(-1)
    junk = 1e3 * (1.0 - mask)  # padding rows carry junk that must not leak into anything
    return Batch(obs=obs, actions=actions, logp_old=now.logp - log_ratio + junk, values_old=values_old + junk,
                 dist_params_old=now.dist_params.detach(), advantages=advantages + junk, targets=targets - junk,
                 mask=mask, episode_ids=torch.arange(episodes).repeat_interleave(rows_per_episode),
                 num_episodes=episodes)


@activations.large_tensor_kernels
def verify_fused_actor(policy: nn.Module, reference: nn.Module | None = None) -> Verdict:
    """Does the fused actor built from ``policy`` give the reference network's actions' log-probabilities,
    values and distribution parameters (sampled and deterministic)? ``reference``: ``float64_copy(policy)`` if
    the caller made one already."""
    start = time.perf_counter()
    problem = None
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        reference = float64_copy(policy) if reference is None else reference
        layout = mlp_layout(reference)
        if isinstance(layout, str):
            return Verdict(layout, time.perf_counter() - start)
        generator = torch.Generator().manual_seed(0)
        obs = torch.randn(7, reference.policy_trunk[0].in_features if layout.policy_linears else
                          layout.head.linear.in_features, generator=generator, dtype=torch.float64) * 1.5
        actor = fused_actor(layout)
        for deterministic in (False, True):
            out = actor.act(obs, deterministic)
            ref = reference.evaluate(obs, out.actions)
            problem = (_differs("log π(a|s)", out.logp, ref.logp) or _differs("V(s)", out.values, ref.values)
                       or _differs("distribution parameters", out.dist_params, ref.dist_params))
            if deterministic and problem is None:
                problem = _differs("deterministic action", out.actions.double(),
                                   reference.act(obs, deterministic=True).actions.double())
            if problem is not None:
                break
        if problem is None:
            problem = _differs("V(s) (value call)", actor.value(obs), reference.value(obs))
    return Verdict(problem and f"the fused actor disagrees with the network on {problem}",
                   time.perf_counter() - start)


@activations.large_tensor_kernels
def verify_lean_update(policy: nn.Module, surrogate: Surrogate, settings: LossSettings,
                       reference: nn.Module | None = None) -> Verdict:
    """Does the lean update give the reference loss (``pglab.learner.loss``), every parameter's gradient and every
    diagnostic (same names, same values) on the synthetic batch? ``reference``: ``float64_copy(policy)`` if the
    caller made one already (it is changed: its parameters are laid out flat)."""
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        reference = float64_copy(policy) if reference is None else reference
        for p in reference.parameters():
            p.grad = None
        lean_surrogate, reference_surrogate = surrogate_for_reference(surrogate), surrogate_for_reference(surrogate)
        try:
            lean = LeanUpdate(reference, lean_surrogate, vf_coef=settings.vf_coef, ent_coef=settings.ent_coef,
                              value_clip=settings.value_clip, normalize_advantages=settings.normalize_advantages)
        except ValueError as err:
            return Verdict(str(err), time.perf_counter() - start)
        obs_dim = (lean.layout.policy_linears[0].in_features if lean.layout.policy_linears
                   else lean.layout.head.linear.in_features)
        generator = torch.Generator().manual_seed(0)
        problem = None
        for rows, padded in ((16, 3), (9, 0)):  # padded episodes; and a minibatch without padding
            batch = synthetic_batch(reference, obs_dim, generator, settings.value_clip, rows_per_episode=rows,
                                    padded_per_episode=padded)
            loss, diagnostics = lean(batch)
            lean_grads = {name: p.grad.clone() for name, p in reference.named_parameters()}
            fast_stats = lean.named(diagnostics)
            params = [p for _, p in reference.named_parameters()]
            with torch.enable_grad():
                ref_loss, ref_stats = minibatch_loss(reference, reference_surrogate, batch, settings)
                ref_grads = torch.autograd.grad(ref_loss, params, allow_unused=True)
            problem = _differs("the loss", loss, ref_loss.detach())
            if problem is None and set(fast_stats) != set(ref_stats):
                only_ref, only_fast = sorted(set(ref_stats) - set(fast_stats)), sorted(set(fast_stats) - set(ref_stats))
                problem = "the diagnostics' names: " + "; ".join(
                    part for part in (f"the reference logs {only_ref} too" if only_ref else "",
                                      f"the lean update logs {only_fast} too" if only_fast else "") if part)
            if problem is None:
                keys = sorted(ref_stats)
                ref_grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, ref_grads, strict=True)]
                # everything in one comparison; only a mismatch is looked up name by name
                names = [n for n, _ in reference.named_parameters()]
                together = _differs("", torch.cat([torch.stack([fast_stats[k] for k in keys]).double(),
                                                   *[lean_grads[n].flatten() for n in names]]),
                                    torch.cat([torch.stack([ref_stats[k] for k in keys]).double(),
                                               *[g.flatten() for g in ref_grads]]))
                if together is not None:
                    named = [(f"diagnostic {k}", fast_stats[k], ref_stats[k]) for k in keys] + \
                        [(f"the gradient of {n}", lean_grads[n], g)
                         for (n, _), g in zip(reference.named_parameters(), ref_grads, strict=True)]
                    problem = next(filter(None, (_differs(*item) for item in named)), together)
            if problem is not None:
                break
    return Verdict(problem and f"the lean update disagrees with the reference loss on {problem}",
                   time.perf_counter() - start)


def surrogate_for_reference(surrogate: Surrogate) -> Surrogate:
    """The surrogate as the reference loss runs it on the float64 copy (its buffers, e.g. β, in float64)."""
    return copy.deepcopy(surrogate).to(device="cpu", dtype=torch.float64)
