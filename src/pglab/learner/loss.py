"""The reference minibatch loss: surrogate + c_v·value loss − c_e·entropy through autograd. Pure torch.

This is the loss every update path computes; the autograd updates differentiate it, and the lean update
(``pglab.accel.lean``) is checked against it before it may run (``pglab.accel.verify``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pglab.core.surrogates import Surrogate, SurrogateInput, value_loss
from pglab.core.types import Batch

__all__ = ["LossSettings", "minibatch_loss", "normalize_advantages"]


@dataclass(frozen=True)
class LossSettings:
    """The learner settings the loss reads (``learner.*``)."""

    vf_coef: float = 0.5
    ent_coef: float = 0.0
    value_clip: float | None = None
    normalize_advantages: bool = True


def normalize_advantages(advantages: Tensor, mask: Tensor) -> Tensor:
    """(A − mean)/(std + 1e-8) over the real rows (mask 1) of one minibatch. [B] → [B]"""
    count = mask.sum().clamp_min(1.0)
    mean = (advantages * mask).sum() / count
    std = (((advantages - mean) ** 2 * mask).sum() / (count - 1).clamp_min(1.0)).sqrt()
    return (advantages - mean) / (std + 1e-8)


def minibatch_loss(policy: nn.Module, surrogate: Surrogate, batch: Batch, settings: LossSettings,
                   reference: nn.Module | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """The minibatch loss [] and its diagnostics (detached scalars, by name), without side effects.

    ``reference``: the frozen reference policy of surrogates that need one (GRPO with β > 0)."""
    out = policy.evaluate(batch.obs, batch.actions)
    mask = batch.mask
    count = mask.sum().clamp_min(1.0)
    advantages = normalize_advantages(batch.advantages, mask) if settings.normalize_advantages else batch.advantages
    logp_ref = None
    if reference is not None:
        with torch.no_grad():
            logp_ref = reference.evaluate(batch.obs, batch.actions).logp
    kl_old_new = policy.kl(batch.dist_params_old, out.dist_params) if surrogate.needs_analytic_kl else None
    result = surrogate(SurrogateInput(
        logp=out.logp, logp_old=batch.logp_old, advantages=advantages, mask=mask,
        episode_ids=batch.episode_ids, num_episodes=batch.num_episodes, logp_ref=logp_ref,
        kl_old_new=kl_old_new))
    entropy = (out.entropy * mask).sum() / count
    loss = result.loss - settings.ent_coef * entropy
    stats = {"policy_loss": result.loss.detach(), "entropy": entropy.detach(), **result.stats}
    if policy.has_value:
        v_loss = value_loss(out.values, batch.targets, mask, batch.values_old, settings.value_clip)
        loss = loss + settings.vf_coef * v_loss
        stats["value_loss"] = v_loss.detach()
    return loss, stats
