"""Surrogate losses: (log π_θ, log π_old, log π_ref, A, episode ids) → scalar loss + diagnostics.

Pure tensor math (torch only). Every input is a flat minibatch ``[B]`` with a float ``mask`` [B]
(1 for real transitions, 0 for padding) and ``episode_ids`` [B] in ``[0, num_episodes)``.

Theory map (docs/theory.md):
    ``Reinforce``   §1: −A·log π
    ``Importance``  §9: −ρ·A, ρ = π_θ/π_θ'  (its gradient at θ = θ' equals REINFORCE's)
    ``KLPenalty``   §10: −ρ·A + β·KL(π_θ' ‖ π_θ), fixed or adaptive β
    ``Clip``        §11: −min(ρA, clip(ρ, 1−ε_low, 1+ε_high)·A)
    ``GRPO``        §12: token-level clip + β·k3 KL to a frozen reference policy
    ``GSPO``        §13: sequence ratio s_i = exp(mean_t log ρ_{i,t}), clipped per episode (+ GSPO-token)

How the per-token losses are summed is a separate choice, ``aggregation`` (§14):
    ``token_mean``   Σ_t ℓ / #tokens                         (PPO)
    ``episode_sum``  (1/N) Σ_n Σ_t ℓ                          (REINFORCE's −(1/N) Σ_n Σ_t, §1)
    ``episode_mean`` (1/N) Σ_n (1/|τ_n|) Σ_t ℓ                (GRPO)
    ``constant``     Σ ℓ / (N · L), L a constant length       (Dr. GRPO)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

__all__ = [
    "AGGREGATIONS", "SurrogateInput", "SurrogateOutput", "aggregate", "k3_kl", "value_loss",
    "Surrogate", "Reinforce", "Importance", "KLPenalty", "Clip", "GRPO", "GSPO",
]

AGGREGATIONS = ("token_mean", "episode_sum", "episode_mean", "constant")
# aggregations whose normaliser counts episodes: minibatches must hold whole episodes
EPISODE_AGGREGATIONS = ("episode_sum", "episode_mean", "constant")


@dataclass
class SurrogateInput:
    """One minibatch, flat. Every tensor is [B]; ``kl_old_new`` is the analytic KL(π_old ‖ π_θ) per row when
    the policy's distribution gives one (else None and the k3 estimator is used)."""

    logp: Tensor
    logp_old: Tensor
    advantages: Tensor
    mask: Tensor
    episode_ids: Tensor
    num_episodes: int
    logp_ref: Tensor | None = None
    kl_old_new: Tensor | None = None


@dataclass
class SurrogateOutput:
    loss: Tensor
    stats: dict[str, Tensor] = field(default_factory=dict)


def _check_input(batch: SurrogateInput) -> None:
    shape = batch.logp.shape
    for name in ("logp_old", "advantages", "mask", "episode_ids", "logp_ref", "kl_old_new"):
        tensor = getattr(batch, name)
        if tensor is not None and tensor.shape != shape:
            raise ValueError(f"{name} has shape {tuple(tensor.shape)} but logp has {tuple(shape)}; all must be [B]")


def aggregate(per_token: Tensor, mask: Tensor, episode_ids: Tensor, num_episodes: int, mode: str,
              constant_length: float | None = None) -> Tensor:
    """Reduce per-token losses [B] to a scalar by ``mode`` (see module docstring)."""
    masked = per_token * mask
    if mode == "token_mean":
        return masked.sum() / mask.sum().clamp_min(1.0)
    if mode == "episode_sum":
        return masked.sum() / max(num_episodes, 1)
    if mode == "episode_mean":
        sums = torch.zeros(num_episodes, dtype=per_token.dtype, device=per_token.device)
        lengths = torch.zeros_like(sums)
        sums = sums.index_add(0, episode_ids, masked)
        lengths = lengths.index_add(0, episode_ids, mask)
        return (sums / lengths.clamp_min(1.0)).sum() / max(num_episodes, 1)
    if mode == "constant":
        if constant_length is None:
            lengths = torch.zeros(num_episodes, dtype=per_token.dtype, device=per_token.device)
            constant_length = lengths.index_add(0, episode_ids, mask).max().clamp_min(1.0)
        return masked.sum() / (max(num_episodes, 1) * constant_length)
    raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {mode!r}")


def k3_kl(logp_p: Tensor, logp_q: Tensor) -> Tensor:
    """Per-sample k3 estimator of KL(p ‖ q) for samples drawn from p: (q/p − 1) − log(q/p) ≥ 0. [B]"""
    log_ratio = logp_q - logp_p
    return torch.expm1(log_ratio) - log_ratio


def value_loss(values: Tensor, targets: Tensor, mask: Tensor, values_old: Tensor | None = None,
               clip: float | None = None) -> Tensor:
    """½·masked-mean (V − G)²; with ``clip`` the PPO form max((V−G)², (V_old + clip(V−V_old, ±c) − G)²)."""
    squared = (values - targets) ** 2
    if clip is not None:
        if clip < 0:
            raise ValueError(f"value clip must be >= 0, got {clip}")
        if values_old is None:
            raise ValueError("values_old is required when clip is set")
        clipped = values_old + (values - values_old).clamp(-clip, clip)
        squared = torch.maximum(squared, (clipped - targets) ** 2)
    return 0.5 * (squared * mask).sum() / mask.sum().clamp_min(1.0)


def _check_eps(name: str, value: float) -> None:
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


class Surrogate(nn.Module):
    """Base class. Subclasses define ``per_token`` (or override ``forward``).

    Class attributes tell the training system what the surrogate needs, so impossible combinations are
    refused at start-up and nothing outside branches on a surrogate's class: ``needs_whole_episodes``
    (minibatches made of whole episodes), ``needs_reference`` (a frozen reference policy) and
    ``needs_analytic_kl`` (the per-row KL(π_old ‖ π_θ) in ``SurrogateInput.kl_old_new``). ``after_rollout``
    is called once per rollout with the post-update KL, for whatever the surrogate adapts (β).

    ``lean_formula`` claims that the hand-derived update (``pglab.accel.lean``) implements this class's loss
    (``clip``, ``importance`` or ``reinforce``). It counts only where a class sets it itself — a subclass does not
    inherit it — and the claim is checked numerically at start-up: edit ``per_token`` and the check finds the
    difference, and the autograd update runs instead (one line at start-up says so).
    """

    lean_formula: str | None = None
    needs_whole_episodes = False
    needs_reference = False
    needs_analytic_kl = False
    default_aggregation = "token_mean"

    def __init__(self, aggregation: str | None = None, constant_length: float | None = None) -> None:
        super().__init__()
        aggregation = aggregation or self.default_aggregation
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        if constant_length is not None and constant_length <= 0:
            raise ValueError(f"constant_length must be > 0, got {constant_length}")
        self.aggregation = aggregation
        self.constant_length = constant_length
        if aggregation in EPISODE_AGGREGATIONS:
            self.needs_whole_episodes = True

    def per_token(self, batch: SurrogateInput, ratio: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def after_rollout(self, kl_post_update: float) -> dict[str, float]:
        """Once per rollout, after its last update: adapt coefficients; returns what to log (``train/<key>``).

        ``kl_post_update`` is E[KL(π_old ‖ π_θ)] over the rollout's real rows with the updated θ."""
        return {}

    def forward(self, batch: SurrogateInput) -> SurrogateOutput:
        _check_input(batch)
        log_ratio = batch.logp - batch.logp_old
        ratio = log_ratio.exp()
        per_token, extra = self.per_token(batch, ratio)
        loss = aggregate(per_token, batch.mask, batch.episode_ids, batch.num_episodes, self.aggregation,
                         self.constant_length)
        stats = ratio_stats(log_ratio.detach(), batch.mask)
        stats.update(extra)
        return SurrogateOutput(loss, stats)


@torch.no_grad()
def ratio_stats(log_ratio: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """approx-KL(π_old ‖ π_θ) as k1 = E[−log ρ] and k3 = E[(ρ−1) − log ρ]; ratio mean/min/max over real rows.

    Written without boolean indexing or host syncs, the three means as one product and the extremes as one
    ``aminmax``: it runs on every minibatch."""
    weight = mask / mask.sum().clamp_min(1.0)
    ratio = log_ratio.exp()
    # expm1: no cancellation in k3 for small log-ratios
    k1, k3, ratio_mean = torch.mv(torch.stack([-log_ratio, torch.expm1(log_ratio) - log_ratio, ratio]), weight)
    # padding rows take the mean ratio, which lies within the real rows' [min, max]
    ratio_min, ratio_max = torch.aminmax(torch.where(mask > 0, ratio, ratio_mean))
    return {"approx_kl_k1": k1, "approx_kl": k3, "ratio_mean": ratio_mean, "ratio_min": ratio_min,
            "ratio_max": ratio_max}


class Reinforce(Surrogate):
    """−A·log π_θ (docs/theory.md §1). With ``aggregation='episode_sum'`` it is that section's loss verbatim."""

    lean_formula = "reinforce"

    def per_token(self, batch, ratio):
        return -batch.advantages * batch.logp, {}


class Importance(Surrogate):
    """−ρ·A with ρ = π_θ/π_θ' (docs/theory.md §9): reuses a rollout of π_θ' for several updates."""

    lean_formula = "importance"

    def per_token(self, batch, ratio):
        return -ratio * batch.advantages, {}


class KLPenalty(Surrogate):
    """−ρ·A + β·KL(π_θ' ‖ π_θ) (docs/theory.md §10).

    Args:
        beta: initial penalty coefficient β.
        adaptive: if True, ``update_beta(kl)`` halves β when kl < target_kl/1.5 and doubles it when
            kl > 1.5·target_kl (once per rollout, with the KL measured over it).
        target_kl: the KL the adaptive rule aims for.
    β is a buffer, so it is saved in checkpoints with the module that owns this surrogate.
    """

    needs_analytic_kl = True

    def __init__(self, beta: float = 1.0, adaptive: bool = True, target_kl: float = 0.01,
                 aggregation: str | None = None, constant_length: float | None = None) -> None:
        super().__init__(aggregation, constant_length)
        _check_eps("beta", beta)
        if target_kl <= 0:
            raise ValueError(f"target_kl must be > 0, got {target_kl}")
        self.adaptive = adaptive
        self.target_kl = target_kl
        self.register_buffer("beta", torch.tensor(float(beta)))

    def after_rollout(self, kl_post_update: float) -> dict[str, float]:
        self.update_beta(kl_post_update)
        return {"beta": float(self.beta)}

    def per_token(self, batch, ratio):
        if batch.kl_old_new is not None:
            kl = batch.kl_old_new
        else:
            kl = k3_kl(batch.logp_old, batch.logp)
        return -ratio * batch.advantages + self.beta * kl, {"beta": self.beta.detach().clone()}

    @torch.no_grad()
    def update_beta(self, kl: float) -> None:
        """Adaptive rule of the PPO paper (§4): β ← β/2 if kl < target/1.5, β ← 2β if kl > 1.5·target."""
        if not self.adaptive:
            return
        if kl < self.target_kl / 1.5:
            self.beta.mul_(0.5)
        elif kl > self.target_kl * 1.5:
            self.beta.mul_(2.0)


def _clipped_objective(ratio: Tensor, advantages: Tensor, eps_low: float, eps_high: float) -> tuple[Tensor, Tensor]:
    """−min(ρA, clip(ρ, 1−ε_low, 1+ε_high)A) per element, and where the clipped branch is active."""
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - eps_low, 1.0 + eps_high) * advantages
    return -torch.minimum(unclipped, clipped), (clipped < unclipped)


class Clip(Surrogate):
    """PPO-clip (docs/theory.md §11); ``eps_high`` defaults to ``eps_low`` (set it higher for clip-higher)."""

    lean_formula = "clip"

    def __init__(self, eps_low: float = 0.2, eps_high: float | None = None, aggregation: str | None = None,
                 constant_length: float | None = None) -> None:
        super().__init__(aggregation, constant_length)
        eps_high = eps_low if eps_high is None else eps_high
        _check_eps("eps_low", eps_low)
        _check_eps("eps_high", eps_high)
        if eps_low >= 1:
            raise ValueError(f"eps_low must be < 1 (the ratio is positive), got {eps_low}")
        self.eps_low, self.eps_high = eps_low, eps_high

    def per_token(self, batch, ratio):
        loss, active = _clipped_objective(ratio, batch.advantages, self.eps_low, self.eps_high)
        count = batch.mask.sum().clamp_min(1.0)
        return loss, {"clip_fraction": ((active.float() * batch.mask).sum() / count).detach()}


class GRPO(Clip):
    """Token-level clip + β·k3 KL(π_θ ‖ π_ref) to a frozen reference policy; GRPO aggregation by default.

    β defaults to 0, as in current practice (DAPO, Dr. GRPO); with β > 0 the module keeps a reference
    policy. The k3 estimator is the one of the DeepSeekMath paper: π_ref/π_θ − log(π_ref/π_θ) − 1.
    """

    default_aggregation = "episode_mean"

    def __init__(self, eps_low: float = 0.2, eps_high: float | None = None, beta: float = 0.0,
                 aggregation: str | None = None, constant_length: float | None = None) -> None:
        super().__init__(eps_low, eps_high, aggregation, constant_length)
        _check_eps("beta", beta)
        self.beta = float(beta)
        self.needs_reference = self.beta > 0

    def per_token(self, batch, ratio):
        loss, stats = super().per_token(batch, ratio)
        if self.beta > 0:
            if batch.logp_ref is None:
                raise ValueError("GRPO with beta > 0 needs logp_ref (a reference policy)")
            kl_ref = k3_kl(batch.logp, batch.logp_ref)
            loss = loss + self.beta * kl_ref
            stats["kl_ref"] = ((kl_ref * batch.mask).sum() / batch.mask.sum().clamp_min(1.0)).detach()
        return loss, stats


class GSPO(Surrogate):
    """GSPO: sequence-level ratio s_i = exp((1/|τ_i|) Σ_t log ρ_{i,t}), clipped per episode.

    ``variant='sequence'``: loss_i = −min(s_i Â_i, clip(s_i, 1−ε_low, 1+ε_high) Â_i) with Â_i the
    episode's mean advantage, averaged over episodes.
    ``variant='token'`` (GSPO-token): s_{i,t} = sg[s_i]·π_θ(a_t)/sg[π_θ(a_t)], clipped per token with the
    per-token advantage; equal in value and gradient to the sequence form when A is constant per episode.
    Defaults are the paper's ranges ε_low = 3e-4, ε_high = 4e-4.
    """

    needs_whole_episodes = True

    def __init__(self, eps_low: float = 3e-4, eps_high: float = 4e-4, variant: str = "sequence") -> None:
        super().__init__("episode_mean")
        _check_eps("eps_low", eps_low)
        _check_eps("eps_high", eps_high)
        if variant not in ("sequence", "token"):
            raise ValueError(f"variant must be 'sequence' or 'token', got {variant!r}")
        self.eps_low, self.eps_high, self.variant = eps_low, eps_high, variant
        self.needs_whole_episodes = True

    def sequence_log_ratio(self, batch: SurrogateInput) -> Tensor:
        """(1/|τ_i|) Σ_t log ρ_{i,t} for each episode. [num_episodes]"""
        zeros = batch.logp.new_zeros(batch.num_episodes)
        log_ratio = (batch.logp - batch.logp_old) * batch.mask
        sums = zeros.index_add(0, batch.episode_ids, log_ratio)
        lengths = zeros.index_add(0, batch.episode_ids, batch.mask).clamp_min(1.0)
        return sums / lengths

    def forward(self, batch: SurrogateInput) -> SurrogateOutput:
        _check_input(batch)
        seq_log_ratio = self.sequence_log_ratio(batch)  # [E]
        seq_ratio = seq_log_ratio.exp()
        zeros = batch.logp.new_zeros(batch.num_episodes)
        token_counts = zeros.index_add(0, batch.episode_ids, batch.mask)
        present = token_counts > 0
        lengths = token_counts.clamp_min(1.0)
        if self.variant == "sequence":
            episode_adv = zeros.index_add(0, batch.episode_ids, batch.advantages * batch.mask) / lengths
            loss_e, active = _clipped_objective(seq_ratio, episode_adv, self.eps_low, self.eps_high)
            loss = loss_e.sum() / max(batch.num_episodes, 1)
            clip_fraction = active.float()[present].mean()
        else:
            token_ratio = seq_ratio.detach()[batch.episode_ids] * (batch.logp - batch.logp.detach()).exp()
            loss_t, active = _clipped_objective(token_ratio, batch.advantages, self.eps_low, self.eps_high)
            loss = aggregate(loss_t, batch.mask, batch.episode_ids, batch.num_episodes, "episode_mean")
            clip_fraction = (active.float() * batch.mask).sum() / batch.mask.sum().clamp_min(1.0)
        stats = ratio_stats((batch.logp - batch.logp_old).detach(), batch.mask)
        stats["clip_fraction"] = clip_fraction.detach()
        stats["seq_ratio_mean"] = seq_ratio.detach().mean()
        return SurrogateOutput(loss, stats)
