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

Storage: every member's parameters are row k of one flat tensor [P, D]; each stacked tensor [P, ...] is a view of
it, and so is every parameter of the P member networks (``networks``: copies of the networks the run built, whose
parameters are the population's — the networks the fast paths are gated on and checked against).

The fast path (``learner.gradients=auto``, the default): when every member network is exactly the plain MLP
(``pglab.accel.structure.mlp_layout``) and the surrogate declares a lean formula, acting and the update run
``pglab.accel.population``'s stacked actor and stacked lean update (one batched matmul per layer for all members),
checked at construction against the vmapped reference above on float64 copies of the members; Adam is then torch's
fused Adam kernel called per member row (its own step count and learning rate). Otherwise — or with
``learner.gradients=autograd`` — the vmapped reference runs; ``path`` and ``path_reason`` say which and why.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap

from pglab.accel.population import (
    StackedActor,
    StackedLean,
    fast_unsupported,
    stacked_adam_step,
    stacked_layout,
    verify_stacked,
)
from pglab.accel.verify import surrogate_for_reference
from pglab.core.surrogates import Surrogate
from pglab.core.types import ActOutput, Batch
from pglab.learner.loss import LossSettings, minibatch_loss

__all__ = ["PopulationLearner", "population_unsupported", "BATCH_FIELDS", "MemberState"]

# the Batch fields a member's minibatch carries into the vmapped loss (each [P, B, ...])
BATCH_FIELDS = ("obs", "actions", "logp_old", "values_old", "dist_params_old", "advantages", "targets", "mask")


def population_unsupported(surrogate: Surrogate, learner: dict) -> str | None:
    """Why a population cannot train this combination yet (None: it can). Each is per-member state the vectorised
    update does not yet carry; refused rather than silently shared."""
    if surrogate.needs_reference:
        return "a surrogate with a frozen reference policy (GRPO with beta > 0): set population=1"
    if surrogate.needs_whole_episodes:
        return "a surrogate on whole-episode minibatches (GSPO, episode aggregation): set population=1"
    if any(True for _ in surrogate.parameters()):
        return (f"a surrogate with learnable parameters ({type(surrogate).__name__}), which the members' optimisers "
                "do not train: set population=1")
    if learner.get("clip_per_group"):
        return "learner.clip_per_group=true: set it to false (population clipping is per member, jointly)"
    if learner.get("compile"):
        return "learner.compile=true: set it to false"
    if learner.get("lightning_optimizer"):
        return "learner.lightning_optimizer=true: set it to false"
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
        self.surrogate = surrogate  # a submodule: each member's surrogate buffers (adaptive β) are swapped in
        self._settings = settings

    def forward(self, obs, actions, logp_old, values_old, dist_params_old, advantages, targets, mask):
        batch = Batch(obs=obs, actions=actions, logp_old=logp_old, values_old=values_old,
                      dist_params_old=dist_params_old, advantages=advantages, targets=targets, mask=mask,
                      episode_ids=torch.zeros(mask.shape, dtype=torch.long), num_episodes=1)
        return minibatch_loss(self.policy, self.surrogate, batch, self._settings)


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


class PopulationLearner:
    """P members built from P networks of identical structure (member k = ``policies[k]``, e.g. built with seed
    ``seed + k``). The networks passed in are not modified: their initial tensors are copied into the population's
    flat storage, and ``networks`` holds copies whose parameters are views of it.

    Args mirror ``PolicyGradientModule``'s learner settings (``lr``, ``adam_eps``, ``anneal_lr``, ``total_env_steps``,
    ``vf_coef``, ``ent_coef``, ``value_clip``, ``normalize_advantages``, ``target_kl``, ``max_grad_norm``,
    ``nonfinite``, ``gradients``: ``auto`` (the stacked fast path where it applies and agrees with the reference),
    ``lean`` (the stacked fast path or a ValueError saying why not), ``autograd`` (the vmapped reference));
    ``seeds`` name the members in messages and outputs.
    """

    def __init__(self, policies: list[nn.Module], surrogate: Surrogate, seeds: list[int], lr: float = 2.5e-4,
                 adam_eps: float = 1e-5, anneal_lr: bool = True, total_env_steps: int = 100_000,
                 vf_coef: float = 0.5, ent_coef: float = 0.0, value_clip: float | None = None,
                 normalize_advantages: bool = True, target_kl: float | None = None,
                 max_grad_norm: float | None = 0.5, nonfinite: str = "stop", gradients: str = "auto",
                 **ignored) -> None:
        if len(policies) != len(seeds) or not policies:
            raise ValueError(f"a population needs one seed per network, got {len(policies)} networks and "
                             f"{len(seeds)} seeds")
        if nonfinite not in ("stop", "skip"):
            raise ValueError(f"learner.nonfinite must be stop or skip, got {nonfinite!r}")
        if gradients not in ("auto", "lean", "autograd"):
            raise ValueError(f"learner.gradients must be auto, lean or autograd, got {gradients!r}")
        self.P = P = len(policies)
        self.surrogate = surrogate
        self.lr, self.adam_eps, self.anneal_lr, self.total_env_steps = lr, adam_eps, anneal_lr, int(total_env_steps)
        self.target_kl, self.max_grad_norm, self.nonfinite = target_kl, max_grad_norm, nonfinite
        self.settings = LossSettings(vf_coef=vf_coef, ent_coef=ent_coef, value_clip=value_clip,
                                     normalize_advantages=normalize_advantages)
        # -- storage: member k's parameters are row k of one flat [P, D] tensor; params[name] [P, ...] are views
        named = list(policies[0].named_parameters())
        self.names = [n for n, _ in named]
        for k, net in enumerate(policies[1:], 1):
            if [(n, p.shape) for n, p in net.named_parameters()] != [(n, p.shape) for n, p in named]:
                raise ValueError(f"member {k}'s network differs from member 0's in its parameters' names or shapes")
        sizes = [p.numel() for _, p in named]
        ref = named[0][1]
        self.flat = torch.zeros(P, sum(sizes), dtype=ref.dtype, device=ref.device)
        self.params: dict[str, Tensor] = {}
        offset = 0
        for (n, p), size in zip(named, sizes, strict=True):
            self.params[n] = self.flat[:, offset: offset + size].view(P, *p.shape)
            offset += size
        with torch.no_grad():
            for k, net in enumerate(policies):
                for n, p in net.named_parameters():
                    self.params[n][k].copy_(p)
        self.buffers = {n: torch.stack([dict(net.named_buffers())[n].detach().clone() for net in policies])
                        for n, _ in policies[0].named_buffers()}
        # the member networks the fast paths are gated on: copies whose parameters are views of the flat storage
        self.networks = [copy.deepcopy(net) for net in policies]
        for k, net in enumerate(self.networks):
            for n, p in net.named_parameters():
                p.data = self.params[n][k]
        # the structure every member shares, on the meta device: functional_call swaps the tensors in
        base = copy.deepcopy(policies[0]).to("meta")
        self.base = base
        self.head = base.head
        self.members = [MemberState(seed=int(s)) for s in seeds]
        self.lrs = [float(lr)] * P
        # each member's LR schedule: linear from fraction f0 at env step t0 to 0 at the budget; (0, 1.0) unless a
        # resumed member's budget changed (``load_state_dict``: it goes on from the fraction it had reached)
        self.lr_anchors: list[tuple[int, float]] = [(0, 1.0)] * P
        self._act = self._vmapped(_Act(base))
        self._value = self._vmapped(_Value(base))
        self._kl = self._vmapped(_KL(base))
        # each member's own surrogate (its adaptive β, a buffer): stepped by ``after_rollout`` with its own KL, and
        # swapped into the vmapped loss as a stacked buffer [P, ...]
        self.surrogates = [copy.deepcopy(surrogate) for _ in range(P)]
        self.surrogate_buffers: dict[str, Tensor] = {}
        self._stack_surrogate_buffers()
        loss_module = _Loss(base, copy.deepcopy(surrogate), self.settings)

        def member_loss(p, b, sb, *fields):
            tensors = (self._prefixed(p), self._prefixed(b), {f"surrogate.{k}": v for k, v in sb.items()})
            loss, stats = functional_call(loss_module, tensors, fields)
            return loss, (loss.detach(), stats)

        self._grad = vmap(grad_and_value(member_loss, has_aux=True))
        self._stat_rows: list[tuple[Tensor, Tensor]] = []
        self.stat_keys: list[str] | None = None
        self._actor: StackedActor | None = None

        # -- which path: the stacked fast path where it applies and agrees with the reference, else the reference
        self.path, self.path_reason, self.verify_seconds = "reference", None, 0.0
        self.fast: StackedLean | None = None
        if gradients == "autograd":
            self.path_reason = "learner.gradients=autograd"
        else:
            reason = fast_unsupported(self.networks, surrogate)
            if reason is None:
                verdict = self._verify_fast()
                reason, self.verify_seconds = verdict.problem, verdict.seconds
            if reason is None:
                self.layout = stacked_layout(self.networks)
                self.fast = StackedLean(self.params, self.layout, surrogate, vf_coef=vf_coef, ent_coef=ent_coef,
                                        value_clip=value_clip, normalize_advantages=normalize_advantages)
                self.path = "stacked"
            elif gradients == "lean":
                raise ValueError(f"learner.gradients=lean: the population's stacked lean update does not cover this "
                                 f"run ({reason}); set learner.gradients=auto or autograd")
            self.path_reason = reason
        if self.fast is not None:  # torch's fused Adam kernel per member row (see stacked_adam_step)
            self.flat_grad = torch.zeros_like(self.flat)
            self.exp_avg, self.exp_avg_sq = torch.zeros_like(self.flat), torch.zeros_like(self.flat)
            self.adam_steps = [torch.zeros((), dtype=torch.float32) for _ in range(P)]
            self.optimizer = None
        else:
            # one Adam over every member's views: per-view state and step count = P independent Adams (module doc)
            self.views = [[self.params[n][k] for n in self.names] for k in range(P)]
            self.optimizer = torch.optim.Adam([{"params": views} for views in self.views], lr=lr, eps=adam_eps,
                                              fused=True)

    def _verify_fast(self):
        """The stacked fast path against the vmapped reference on float64 copies of (up to 3) members."""
        count = min(self.P, 3)
        nets64 = [copy.deepcopy(self.networks[k]).to(torch.float64) for k in range(count)]
        s = self.settings
        reference = PopulationLearner(nets64, surrogate_for_reference(self.surrogate),
                                      [m.seed for m in self.members[:count]], vf_coef=s.vf_coef,
                                      ent_coef=s.ent_coef, value_clip=s.value_clip,
                                      normalize_advantages=s.normalize_advantages, gradients="autograd")

        def reference_act(obs):
            return reference._act(reference.params, reference.buffers, obs)

        return verify_stacked(nets64, reference.gradients, reference_act, surrogate_for_reference(self.surrogate),
                              s, s.value_clip)

    def describe(self) -> str:
        """One line: which path acts and updates, and why when the fast path stepped aside."""
        if self.path == "stacked":
            return (f"collection: stacked actor; update: stacked lean (verified against the vmapped reference in "
                    f"{1000 * self.verify_seconds:.0f} ms)")
        return (f"collection and update: the vmapped reference network (torch.func; the stacked fast path steps "
                f"aside: {self.path_reason})")

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

    def member_lr(self, k: int) -> float:
        return self.lrs[k]

    # -- acting -------------------------------------------------------------------------------------
    def _stacked_actor(self) -> StackedActor:
        # a snapshot of the current weights, rebuilt after any change to them (an update, a roll-back)
        if self._actor is None:
            self._actor = StackedActor(self.params, self.layout)
        return self._actor

    @torch.no_grad()
    def act(self, obs: Tensor) -> ActOutput:
        """obs [P, N, ...] → every member's actions, log-probabilities, values and distribution parameters
        [P, N, ...]: one vectorised forward, then one draw for all members."""
        if self.fast is not None:
            return self._stacked_actor().act(obs)
        dist_params, values = self._act(self.params, self.buffers, obs)
        actions = self.head.sample(dist_params)
        return ActOutput(actions, self.head.log_prob(dist_params, actions), values, dist_params)

    @torch.no_grad()
    def value(self, obs: Tensor) -> Tensor:
        """obs [P, N, ...] → V(s) [P, N]."""
        if self.fast is not None:
            return self._stacked_actor().value(obs)
        return self._value(self.params, self.buffers, obs)

    # -- the update ---------------------------------------------------------------------------------
    def lr_fraction(self, k: int) -> float:
        if not self.anneal_lr or self.total_env_steps <= 0:
            return 1.0
        t0, f0 = self.lr_anchors[k]
        return _lr_fraction(self.members[k].env_steps, t0, f0, self.total_env_steps)

    def start_rollout(self) -> None:
        """Before a rollout's updates: each member's LR from its own env steps; the parameters to roll back to."""
        self.lrs = [self.lr * self.lr_fraction(k) for k in range(self.P)]
        if self.optimizer is not None:
            for k, group in enumerate(self.optimizer.param_groups):
                group["lr"] = self.lrs[k]
        self._snapshot = self.flat.clone()

    def trainable(self) -> list[bool]:
        return [m.failed is None and not m.finished for m in self.members]

    def gradients(self, batch: dict[str, Tensor]) -> tuple[dict[str, Tensor], Tensor, dict[str, Tensor]]:
        """Every member's loss gradient on its own minibatch (fields [P, B, ...]): (grads by name, each
        [P, ...]; losses [P]; diagnostics by name, each [P]). Nothing is applied."""
        if self.fast is not None:
            grads, losses, diagnostics = self.fast(batch)
            return grads, losses, self.fast.named(diagnostics)
        grads, (_, (losses, stats)) = self._grad(self.params, self.buffers, self.surrogate_buffers,
                                                 *(batch[f] for f in BATCH_FIELDS))
        return grads, losses, stats

    def _stack_surrogate_buffers(self) -> None:
        names = [n for n, _ in self.surrogates[0].named_buffers()]
        self.surrogate_buffers = {n: torch.stack([dict(s.named_buffers())[n].detach().clone()
                                                  for s in self.surrogates]) for n in names}

    def after_rollout(self, kls: list[float | None]) -> list[dict[str, float]]:
        """Each member's surrogate adapts to its own post-update KL (``Surrogate.after_rollout``: adaptive β);
        ``None`` for a member that made no update this rollout. Returns what each member logs (``train/<key>``)."""
        out = [{} if kl is None else self.surrogates[k].after_rollout(kl) for k, kl in enumerate(kls)]
        self._stack_surrogate_buffers()
        return out

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

    def _fast_gradients(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """The stacked update's gradient written into ``flat_grad`` [P, D] and clipped per member (one norm per
        row); (losses [P], norms before clipping [P], diagnostics [P, K])."""
        grads, losses, diagnostics = self.fast(batch)
        torch.cat([grads[n].reshape(self.P, -1) for n in self.names], dim=1, out=self.flat_grad)
        norms = torch.linalg.vector_norm(self.flat_grad, dim=1)
        if self.max_grad_norm is not None:
            self.flat_grad.mul_((self.max_grad_norm / (norms + 1e-6)).clamp_(max=1.0).unsqueeze(1))
        return losses, norms, diagnostics

    def step(self, batch: dict[str, Tensor], active: list[bool]) -> tuple[list[bool], dict[str, Tensor]]:
        """One update of every ``active`` member on its minibatch. Returns the members whose update was applied and
        the diagnostics [P] by name. A member whose loss or gradient is non-finite is skipped (counted) or stopped
        (``failed`` set, with the message), per ``nonfinite``; the others are unaffected."""
        if self.fast is not None:
            losses, norms, diagnostics = self._fast_gradients(batch)
            stats = self.fast.named(diagnostics)
        else:
            grads, losses, stats = self.gradients(batch)
            norms = self.clip(grads)
        loss_values, norm_values = torch.stack([losses.detach().to(norms.dtype), norms]).tolist()
        applied = []
        for k in range(self.P):
            finite = math.isfinite(loss_values[k]) and math.isfinite(norm_values[k])
            ok = active[k] and finite
            if active[k] and not finite:
                m = self.members[k]
                what = "loss" if not math.isfinite(loss_values[k]) else "gradient"
                if self.nonfinite == "skip":
                    m.skipped_updates += 1
                else:
                    m.failed = (f"member seed={m.seed}: non-finite {what} ({loss_values[k]:g} loss, "
                                f"{norm_values[k]:g} gradient norm) at update {m.updates + 1} (env step "
                                f"{m.env_steps}); the update was not applied and this member stopped")
            applied.append(ok)
        rows = [k for k, ok in enumerate(applied) if ok]
        if self.fast is not None:
            if rows:
                stacked_adam_step(rows, self.flat, self.flat_grad, self.exp_avg, self.exp_avg_sq, self.adam_steps,
                                  self.lrs, betas=(0.9, 0.999), eps=self.adam_eps)
                self._actor = None
        else:
            for k, ok in enumerate(applied):
                for view, n in zip(self.views[k], self.names, strict=True):
                    view.grad = grads[n][k] if ok else None  # None: Adam leaves this member's state untouched
            if rows:
                self.optimizer.step()
        for k in rows:
            self.members[k].updates += 1
        if rows:
            if self.stat_keys is None:
                self.stat_keys = list(stats)
            self._stat_rows.append((torch.stack([stats[key].detach() for key in self.stat_keys], 1),
                                    torch.tensor(applied)))
        return applied, stats

    def take_stats(self) -> list[dict[str, float]]:
        """Each member's diagnostics averaged over its applied updates since the last call (by name; empty for a
        member without one), then cleared."""
        if not self._stat_rows:
            return [{} for _ in range(self.P)]
        values = torch.stack([v for v, _ in self._stat_rows]).double()  # [U, P, K]
        applied = torch.stack([a for _, a in self._stat_rows])  # [U, P]
        self._stat_rows = []
        counts = applied.sum(0)
        means = (torch.where(applied.unsqueeze(2), values, 0.0).sum(0) / counts.clamp_min(1).unsqueeze(1)).tolist()
        return [dict(zip(self.stat_keys, means[k], strict=True)) if counts[k] else {} for k in range(self.P)]

    def check_parameters(self) -> None:
        """After a rollout's updates: a member with a non-finite parameter rolls back to the rollout's start and
        stops (the others keep theirs)."""
        bad = ~torch.isfinite(self.flat).all(1)
        for k in torch.nonzero(bad).flatten().tolist():
            with torch.no_grad():
                self.flat[k].copy_(self._snapshot[k])
            self._actor = None
            m = self.members[k]
            if m.failed is None:
                m.failed = (f"member seed={m.seed}: non-finite parameters after the updates at env step "
                            f"{m.env_steps}: rolled back to the rollout's start and stopped")

    @torch.no_grad()
    def post_update_kl(self, flat: dict[str, Tensor]) -> Tensor:
        """E[KL(π_old ‖ π_θ)] per member over its rollout's real rows (flat fields [P, R, ...]). [P]"""
        if self.fast is not None:  # the policy's distribution only: its trunk and head, not the value's
            params = self.fast.dist_params(flat["obs"])
            sums = (self.head.kl(flat["dist_params_old"], params) * flat["mask"]).sum(1)
        else:
            sums = self._kl(self.params, self.buffers, flat["obs"], flat["actions"], flat["dist_params_old"],
                            flat["mask"])
        return sums / flat["mask"].sum(1).clamp_min(1.0)

    # -- checkpoints ------------------------------------------------------------------------------------
    def optimizer_state(self) -> dict[str, Tensor]:
        """Every member's Adam state in one form whichever path runs: first and second moments [P, D] (row k is
        member k's, laid out as ``flat``) and step counts [P] (0: the member has taken no step)."""
        if self.fast is not None:
            return {"exp_avg": self.exp_avg.clone(), "exp_avg_sq": self.exp_avg_sq.clone(),
                    "steps": torch.stack([s.detach().clone().float() for s in self.adam_steps])}
        exp_avg, exp_avg_sq = torch.zeros_like(self.flat), torch.zeros_like(self.flat)
        steps = torch.zeros(self.P, dtype=torch.float32)
        for k, views in enumerate(self.views):
            states = [self.optimizer.state.get(v) for v in views]
            if not all(states):
                continue  # no step taken yet
            steps[k] = float(states[0]["step"])
            exp_avg[k] = torch.cat([s["exp_avg"].reshape(-1) for s in states])
            exp_avg_sq[k] = torch.cat([s["exp_avg_sq"].reshape(-1) for s in states])
        return {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq, "steps": steps}

    def load_optimizer_state(self, state: dict[str, Tensor]) -> None:
        """Inverse of ``optimizer_state`` (either path's state into either path)."""
        exp_avg, exp_avg_sq, steps = state["exp_avg"], state["exp_avg_sq"], state["steps"]
        if exp_avg.shape != self.flat.shape or exp_avg_sq.shape != self.flat.shape or steps.shape != (self.P,):
            raise ValueError(f"the Adam state holds moments of shape {tuple(exp_avg.shape)} and {steps.numel()} step "
                             f"counts; this population has parameters of shape {tuple(self.flat.shape)}")
        if self.fast is not None:
            with torch.no_grad():
                self.exp_avg.copy_(exp_avg)
                self.exp_avg_sq.copy_(exp_avg_sq)
            for k in range(self.P):
                self.adam_steps[k].fill_(float(steps[k]))
            return
        for k, views in enumerate(self.views):
            for v in views:
                self.optimizer.state.pop(v, None)
            if float(steps[k]) == 0:
                continue  # Adam initialises a member's state at its first step
            offset = 0
            for v in views:
                size = v.numel()
                self.optimizer.state[v] = {
                    # fused Adam keeps the step as a float32 scalar on the parameter's device
                    "step": torch.tensor(float(steps[k]), dtype=torch.float32, device=v.device),
                    "exp_avg": exp_avg[k, offset: offset + size].reshape(v.shape).clone().to(v.device),
                    "exp_avg_sq": exp_avg_sq[k, offset: offset + size].reshape(v.shape).clone().to(v.device)}
                offset += size

    def state_dict(self) -> dict:
        """Everything a resumed population's learner needs: the members' parameters (``flat``) and buffers, Adam
        state, counters and status (non-finite stop included), LR-schedule anchors and the budget they were for.
        Tensors and plain values only (``torch.load(weights_only=True)`` reads it)."""
        return {"names": list(self.names), "flat": self.flat.detach().clone(),
                "buffers": {n: b.clone() for n, b in self.buffers.items()},
                "adam": self.optimizer_state(),
                "members": [dataclasses.asdict(m) for m in self.members],
                "lr_anchors": [[int(t0), float(f0)] for t0, f0 in self.lr_anchors],
                "total_env_steps": int(self.total_env_steps),
                "surrogates": {n: b.clone() for n, b in self.surrogate_buffers.items()}}

    def load_state_dict(self, state: dict) -> list[str]:
        """Restore ``state_dict``'s state; returns notes for the user (an LR schedule that had reached 0 under an
        earlier budget). A member whose budget is now larger than its env steps trains on; raises ValueError when
        the members' seeds or networks differ from the checkpoint's."""
        seeds = [int(m["seed"]) for m in state["members"]]
        if seeds != [m.seed for m in self.members]:
            raise ValueError(f"the checkpoint's members have seeds {seeds}, this population's "
                             f"{[m.seed for m in self.members]}")
        if list(state["names"]) != self.names or tuple(state["flat"].shape) != tuple(self.flat.shape):
            raise ValueError(f"the checkpoint's networks differ from this population's (parameters "
                             f"{list(state['names'])[:4]}... of {tuple(state['flat'].shape)}, here {self.names[:4]}... "
                             f"of {tuple(self.flat.shape)})")
        with torch.no_grad():
            self.flat.copy_(state["flat"])
            for n, b in self.buffers.items():
                b.copy_(state["buffers"][n])
            for n, stacked in (state.get("surrogates") or {}).items():  # each member's adaptive β
                for k, s in enumerate(self.surrogates):
                    dict(s.named_buffers())[n].copy_(stacked[k])
        self._stack_surrogate_buffers()
        self.load_optimizer_state(state["adam"])
        fields = {f.name for f in dataclasses.fields(MemberState)}
        for m, saved in zip(self.members, state["members"], strict=True):
            for key, value in saved.items():
                if key in fields:
                    setattr(m, key, value)
        old_total = int(state.get("total_env_steps", self.total_env_steps))
        anchors = [(int(t0), float(f0)) for t0, f0 in state.get("lr_anchors") or [(0, 1.0)] * self.P]
        notes = []
        for k, m in enumerate(self.members):
            anchor = anchors[k]
            if old_total != self.total_env_steps:
                # another budget: go on from the fraction the old schedule had reached, down to 0 at the new one
                reached = _lr_fraction(m.env_steps, *anchor, old_total)
                if reached > 0 or not self.anneal_lr:
                    anchor = (m.env_steps, reached)
                else:  # the old schedule ended at 0: continuing it would train at lr 0, a silent no-op
                    anchor = (0, 1.0)
                    notes.append(f"member seed={m.seed}: the checkpoint's learning rate had annealed to 0 at its "
                                 f"budget of {old_total} env steps; it anneals from "
                                 f"lr·(1 − t/{self.total_env_steps}) instead")
            self.lr_anchors[k] = anchor
            m.finished = m.env_steps >= self.total_env_steps
        self.lrs = [self.lr * self.lr_fraction(k) for k in range(self.P)]
        self._actor = None
        return notes


def _lr_fraction(steps: int, t0: int, f0: float, total: int) -> float:
    """Linear decay from fraction f0 at env step t0 to 0 at ``total`` (``PolicyGradientModule._lr_fraction``)."""
    if total <= t0:
        return 0.0
    return max(0.0, f0 * (total - steps) / (total - t0))
