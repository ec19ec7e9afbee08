"""A population of P independent learners vectorised over the reference network with ``torch.func``. Pure torch.

The P members' parameters are stacked (``torch.func.stack_module_state``: every tensor gets a leading [P] dim) and
every member computes the reference loss (``pglab.learner.loss.minibatch_loss``) on its own minibatch, in one
``vmap`` of ``functional_call`` over the network the run built — whatever ``nn.Module`` that is. Nothing is shared
between members but the Python loop:

- gradients: ``vmap(grad_and_value(...))``: member k's gradient is a function of member k's parameters and batch
  only (another member's NaN cannot reach it);
- gradient-norm clipping: each member's global norm over its own tensors (``clip_grad_norm_``'s formula);
- Adam: one ``torch.optim.Adam`` whose parameters are the per-member *views* of the stacked tensors, one param group
  per member. Each view has its own Adam state and step count, so a member whose update is skipped (its grad left
  ``None``) keeps its moments and bias correction exactly as a separate run that skipped nothing would — a single
  Adam over the stacked tensors would share the step count;
- learning rate: one param group per member (each anneals by its own env steps);
- target-KL early stop and the non-finite guard: a per-member ``active`` mask; a stopped member's update is not
  applied (grad ``None``), the others go on.

Acting: the vmapped network gives every member's distribution parameters and values in one call; actions are then
sampled from those parameters with the head's (parameter-free) ``sample``/``log_prob`` over the [P, N, ...] tensors
at once, from the process's torch RNG — so a population of 1 draws exactly the numbers a single run draws.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

from pglab.core.surrogates import Surrogate
from pglab.core.types import ActOutput, Batch
from pglab.learner.loss import LossSettings, minibatch_loss

__all__ = ["PopulationLearner", "population_unsupported", "BATCH_FIELDS"]

# the Batch fields a member's minibatch carries into the vmapped loss (each [P, B, ...])
BATCH_FIELDS = ("obs", "actions", "logp_old", "values_old", "dist_params_old", "advantages", "targets", "mask")


def population_unsupported(surrogate: Surrogate, learner: dict) -> str | None:
    """Why a population cannot train this combination yet (None: it can). Each is per-member state the vectorised
    update does not yet carry; refused rather than silently shared."""
    if surrogate.needs_reference:
        return "a surrogate with a frozen reference policy (GRPO with beta > 0): set population=1"
    if surrogate.needs_whole_episodes:
        return "a surrogate on whole-episode minibatches (GSPO, episode aggregation): set population=1"
    if any(True for _ in surrogate.buffers()) or any(True for _ in surrogate.parameters()):
        return (f"a surrogate with state of its own ({type(surrogate).__name__}: e.g. adaptive beta), which would be "
                "shared by the members: set population=1, or a fixed-beta/clip surrogate")
    if learner.get("clip_per_group"):
        return "learner.clip_per_group=true: set it to false (population clipping is per member, jointly)"
    if learner.get("compile"):
        return "learner.compile=true: set it to false"
    if learner.get("lightning_optimizer"):
        return "learner.lightning_optimizer=true: set it to false"
    if learner.get("gradients") == "lean":
        return "learner.gradients=lean (the population differentiates the reference loss): set it to auto or autograd"
    return None


class _Act(nn.Module):
    """policy.act(obs, deterministic=True) as a forward: distribution parameters and values (no randomness, so it
    vmaps; sampling happens outside)."""

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        out = self.policy.act(obs, deterministic=True)
        return out.dist_params, out.values


class _Value(nn.Module):
    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, obs: Tensor) -> Tensor:
        return self.policy.value(obs)


class _Loss(nn.Module):
    """The reference minibatch loss as a forward over one member's Batch fields."""

    def __init__(self, policy: nn.Module, surrogate: Surrogate, settings: LossSettings) -> None:
        super().__init__()
        self.policy = policy
        self._fixed = (surrogate, settings)  # a tuple: the surrogate is no submodule of this (its state is refused)

    def forward(self, obs, actions, logp_old, values_old, dist_params_old, advantages, targets, mask):
        surrogate, settings = self._fixed
        batch = Batch(obs=obs, actions=actions, logp_old=logp_old, values_old=values_old,
                      dist_params_old=dist_params_old, advantages=advantages, targets=targets, mask=mask,
                      episode_ids=torch.zeros(mask.shape, dtype=torch.long), num_episodes=1)
        return minibatch_loss(self.policy, surrogate, batch, settings)


class _KL(nn.Module):
    """Σ KL(π_old ‖ π_θ)·mask over one member's rows (the post-update KL of the single run)."""

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, obs, actions, dist_params_old, mask):
        out = self.policy.evaluate(obs, actions)
        return (self.policy.kl(dist_params_old, out.dist_params) * mask).sum()


@dataclass
class MemberState:
    """What the population tracks for each member beside its parameters and Adam state."""

    seed: int
    env_steps: int = 0
    updates: int = 0
    skipped_updates: int = 0
    skipped_rollouts: int = 0
    failed: str | None = None  # why the member stopped (non-finite), None while it trains
    finished: bool = False  # reached its env-step budget
    stats: dict[str, list[Tensor]] = field(default_factory=dict)


class PopulationLearner:
    """P members built from P networks of identical structure (member k = ``policies[k]``, e.g. built with seed
    ``seed + k``). The networks are not modified; their initial tensors are copied into stacked ones.

    Args mirror ``PolicyGradientModule``'s learner settings (``lr``, ``adam_eps``, ``anneal_lr``, ``total_env_steps``,
    ``vf_coef``, ``ent_coef``, ``value_clip``, ``normalize_advantages``, ``target_kl``, ``max_grad_norm``,
    ``nonfinite``); ``seeds`` name the members in messages and outputs.
    """

    def __init__(self, policies: list[nn.Module], surrogate: Surrogate, seeds: list[int], lr: float = 2.5e-4,
                 adam_eps: float = 1e-5, anneal_lr: bool = True, total_env_steps: int = 100_000,
                 vf_coef: float = 0.5, ent_coef: float = 0.0, value_clip: float | None = None,
                 normalize_advantages: bool = True, target_kl: float | None = None,
                 max_grad_norm: float | None = 0.5, nonfinite: str = "stop", **ignored) -> None:
        if len(policies) != len(seeds) or not policies:
            raise ValueError(f"a population needs one seed per network, got {len(policies)} networks and "
                             f"{len(seeds)} seeds")
        if nonfinite not in ("stop", "skip"):
            raise ValueError(f"learner.nonfinite must be stop or skip, got {nonfinite!r}")
        self.P = len(policies)
        self.surrogate = surrogate
        self.lr, self.anneal_lr, self.total_env_steps = lr, anneal_lr, int(total_env_steps)
        self.target_kl, self.max_grad_norm, self.nonfinite = target_kl, max_grad_norm, nonfinite
        self.settings = LossSettings(vf_coef=vf_coef, ent_coef=ent_coef, value_clip=value_clip,
                                     normalize_advantages=normalize_advantages)
        params, buffers = stack_module_state(policies)
        # plain tensors (not leaves of a graph): torch.func differentiates them functionally
        self.params = {k: v.detach() for k, v in params.items()}
        self.buffers = {k: v.detach() for k, v in buffers.items()}
        self.names = list(self.params)
        # the structure every member shares, on the meta device: functional_call swaps the tensors in
        base = copy.deepcopy(policies[0]).to("meta")
        self.base = base
        self.head = base.head
        self.members = [MemberState(seed=int(s)) for s in seeds]
        # one Adam over every member's views: per-view state and step count = P independent Adams (see module doc)
        self.views = [[self.params[n][k] for n in self.names] for k in range(self.P)]
        self.optimizer = torch.optim.Adam([{"params": views} for views in self.views], lr=lr, eps=adam_eps,
                                          fused=True)
        self._act = self._vmapped(_Act(base))
        self._value = self._vmapped(_Value(base))
        self._kl = self._vmapped(_KL(base))
        loss_module = _Loss(base, surrogate, self.settings)

        def member_loss(p, b, *fields):
            loss, stats = functional_call(loss_module, (self._prefixed(p), self._prefixed(b)), fields)
            return loss, (loss.detach(), stats)

        self._grad = vmap(grad_and_value(member_loss, has_aux=True))

    # -- functional calls -----------------------------------------------------------------------------
    @staticmethod
    def _prefixed(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        return {f"policy.{k}": v for k, v in tensors.items()}

    def _vmapped(self, wrapper: nn.Module):
        def call(p, b, *args):
            return functional_call(wrapper, (self._prefixed(p), self._prefixed(b)), args)

        return vmap(call)

    def member_parameters(self, k: int) -> dict[str, Tensor]:
        """Member k's parameters by the network's own names (a state_dict a single run's policy loads)."""
        return {n: self.params[n][k].clone() for n in self.names} | {n: b[k].clone() for n, b in self.buffers.items()}

    # -- acting -------------------------------------------------------------------------------------
    @torch.no_grad()
    def act(self, obs: Tensor) -> ActOutput:
        """obs [P, N, ...] → every member's actions, log-probabilities, values and distribution parameters
        [P, N, ...]: one vmapped forward, then one draw for all members."""
        dist_params, values = self._act(self.params, self.buffers, obs)
        actions = self.head.sample(dist_params)
        return ActOutput(actions, self.head.log_prob(dist_params, actions), values, dist_params)

    @torch.no_grad()
    def value(self, obs: Tensor) -> Tensor:
        """obs [P, N, ...] → V(s) [P, N]."""
        return self._value(self.params, self.buffers, obs)

    # -- the update ---------------------------------------------------------------------------------
    def lr_fraction(self, k: int) -> float:
        if not self.anneal_lr or self.total_env_steps <= 0:
            return 1.0
        return max(0.0, (self.total_env_steps - self.members[k].env_steps) / self.total_env_steps)

    def start_rollout(self) -> None:
        """Before a rollout's updates: each member's LR from its own env steps; the parameters to roll back to."""
        for k, group in enumerate(self.optimizer.param_groups):
            group["lr"] = self.lr * self.lr_fraction(k)
        self._snapshot = {n: v.clone() for n, v in self.params.items()}

    def trainable(self) -> list[bool]:
        return [m.failed is None and not m.finished for m in self.members]

    def gradients(self, batch: dict[str, Tensor]) -> tuple[dict[str, Tensor], Tensor, dict[str, Tensor]]:
        """Every member's reference-loss gradient on its own minibatch (fields [P, B, ...]): (grads by name, each
        [P, ...]; losses [P]; diagnostics by name, each [P]). Nothing is applied."""
        grads, (_, (losses, stats)) = self._grad(self.params, self.buffers, *(batch[f] for f in BATCH_FIELDS))
        return grads, losses, stats

    def clip(self, grads: dict[str, Tensor]) -> Tensor:
        """Clip each member's gradient to its own global norm ``max_norm`` in place (torch's ``clip_grad_norm_``
        formula, per member); returns the norms before clipping [P]."""
        norms = torch.stack([torch.linalg.vector_norm(g.reshape(self.P, -1), dim=1) for g in grads.values()])
        total = torch.linalg.vector_norm(norms, dim=0)  # [P]
        if self.max_grad_norm is not None:
            coef = (self.max_grad_norm / (total + 1e-6)).clamp(max=1.0)
            for g in grads.values():
                g.mul_(coef.view(-1, *([1] * (g.dim() - 1))))
        return total

    def step(self, batch: dict[str, Tensor], active: list[bool]) -> tuple[list[bool], dict[str, Tensor]]:
        """One update of every ``active`` member on its minibatch. Returns the members whose update was applied and
        the diagnostics [P] by name. A member whose loss or gradient is non-finite is skipped (counted) or stopped
        (``failed`` set, with the message), per ``nonfinite``; the others are unaffected."""
        grads, losses, stats = self.gradients(batch)
        norms = self.clip(grads)
        finite = (torch.isfinite(losses) & torch.isfinite(norms)).tolist()
        applied = []
        for k in range(self.P):
            ok = active[k] and finite[k]
            if active[k] and not finite[k]:
                m = self.members[k]
                what = "loss" if not math.isfinite(float(losses[k])) else "gradient"
                if self.nonfinite == "skip":
                    m.skipped_updates += 1
                else:
                    m.failed = (f"member seed={m.seed}: non-finite {what} ({float(losses[k]):g} loss, "
                                f"{float(norms[k]):g} gradient norm) at update {m.updates + 1} (env step "
                                f"{m.env_steps}); the update was not applied and this member stopped")
            for view, n in zip(self.views[k], self.names, strict=True):
                view.grad = grads[n][k] if ok else None  # None: Adam leaves this member's state untouched
            applied.append(ok)
        if any(applied):
            self.optimizer.step()
        for k, ok in enumerate(applied):
            if ok:
                m = self.members[k]
                m.updates += 1
                for key, value in stats.items():
                    m.stats.setdefault(key, []).append(value[k].detach())
        return applied, stats

    def check_parameters(self) -> None:
        """After a rollout's updates: a member with a non-finite parameter rolls back to the rollout's start and
        stops (the others keep theirs)."""
        bad = torch.zeros(self.P, dtype=torch.bool)
        for v in self.params.values():
            bad |= ~torch.isfinite(v.reshape(self.P, -1)).all(1)
        for k in torch.nonzero(bad).flatten().tolist():
            with torch.no_grad():
                for n, v in self.params.items():
                    v[k].copy_(self._snapshot[n][k])
            m = self.members[k]
            if m.failed is None:
                m.failed = (f"member seed={m.seed}: non-finite parameters after the updates at env step "
                            f"{m.env_steps}: rolled back to the rollout's start and stopped")

    @torch.no_grad()
    def post_update_kl(self, flat: dict[str, Tensor]) -> Tensor:
        """E[KL(π_old ‖ π_θ)] per member over its rollout's real rows (flat fields [P, R, ...]). [P]"""
        sums = self._kl(self.params, self.buffers, flat["obs"], flat["actions"], flat["dist_params_old"], flat["mask"])
        return sums / flat["mask"].sum(1).clamp_min(1.0)
