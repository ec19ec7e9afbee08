"""The population's fast paths: P plain MLP actor-critics as stacked weights [P, out, in], one batched matmul per
layer for all members at once. Pure torch.

Why. A population's members are tiny networks (CartPole: 64×64), so every operator call is dispatch overhead,
not arithmetic (``benchmarks/update_cost.py``). The reference population (``pglab.learner.population``)
vectorises the reference network with ``torch.func.vmap``, whose batching rules cost more per operator than the
operator itself at these sizes (measured figures: docs/performance.md, "Populations"). Here each
operator of the single-network fast paths gets a leading member dim instead, so one call serves all P members:

- ``StackedActor``: the fused collection actor (``pglab.accel.fused_actor``) for P members: per layer one
  ``baddbmm`` over weights [P, in, out] (policy and value trunks block-diagonal side by side, as the fused actor
  lays them out), then the reference head's own ``log_softmax``/``sample``/``log_prob`` over [P, N, ...];
- ``StackedLean``: the lean update (``pglab.accel.lean``, whose module docstring derives the formulas) for P
  members: ``addmm`` → ``baddbmm``, ``mm`` → ``bmm``, reductions over the row dim 1 of [P, B]. Member k's rows
  meet only member k's weights and statistics (advantage normalisation, masked means, ratio extremes), so the
  members are as independent as in the vmapped reference.

Both are built from the population's stacked parameter tensors — the very tensors the member networks'
parameters are views of — and only when every member network is exactly what ``mlp_layout`` accepts
(``stacked_layout``). ``verify_stacked`` checks them against the vmapped reference on float64 copies before the
first env step: every member's loss, every parameter's gradient and every diagnostic on ``synthetic_batch``
minibatches (ratios e^±3.5, both advantage signs, padded junk rows, value clip on and off), and the actor's
log-probabilities, values, distribution parameters and deterministic actions. Anything else runs the reference.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pglab.accel import activations
from pglab.accel.lean import lean_formula, unsupported
from pglab.accel.structure import MLPLayout, mlp_layout
from pglab.accel.verify import Verdict, _differs, synthetic_batch
from pglab.core.surrogates import Surrogate
from pglab.core.types import ActOutput

__all__ = ["StackedLayout", "stacked_layout", "StackedActor", "StackedLean", "fast_unsupported", "verify_stacked",
           "stacked_adam_step"]

# in place, on the fresh output of a baddbmm (tanh_: see accel/activations.py)
_ACTIVATION = {"tanh": activations.tanh_, "relu": torch.relu_}
_ACTIVATION_BACKWARD = {"tanh": torch.ops.aten.tanh_backward,
                        "relu": lambda grad, out: torch.ops.aten.threshold_backward(grad, out, 0)}


@dataclass
class StackedLayout:
    """``MLPLayout`` by parameter name (the names of ``named_parameters()``, which key the stacked tensors): each
    Linear is (weight name, bias name). ``head`` is member 0's head module, whose parameter-free methods
    (``params_from_output`` of a categorical head, ``sample``, ``log_prob``, ``mode``) act on [P, N, ...]."""

    policy: list[tuple[str, str]]
    value: list[tuple[str, str]] | None  # None: V(s) reads the policy trunk (shared trunk or no value head)
    head_linear: tuple[str, str]
    value_out: tuple[str, str] | None
    log_std: str | None
    activation: str | None
    discrete: bool
    head: nn.Module

    @property
    def has_value(self) -> bool:
        return self.value_out is not None


def stacked_layout(networks: list[nn.Module]) -> StackedLayout | str:
    """The layout by name when *every* member network is exactly the plain MLP actor-critic (``mlp_layout``) and
    all members are laid out alike; else the reason (naming the member)."""
    layouts: list[MLPLayout] = []
    for k, net in enumerate(networks):
        layout = mlp_layout(net)
        if isinstance(layout, str):
            return f"member {k}'s network: {layout}"
        layouts.append(layout)
    shapes = [[(n, tuple(p.shape)) for n, p in net.named_parameters()] for net in networks]
    if any(s != shapes[0] for s in shapes[1:]):
        return "the members' networks differ in their parameters' names or shapes"
    layout, net = layouts[0], networks[0]
    name_of = {id(p): n for n, p in net.named_parameters()}

    def names(linears):
        return [(name_of[id(l.weight)], name_of[id(l.bias)]) for l in linears]

    return StackedLayout(policy=names(layout.policy_linears),
                         value=names(layout.value_linears) if layout.value_linears is not None else None,
                         head_linear=names([layout.head.linear])[0],
                         value_out=names([layout.value_out])[0] if layout.value_out is not None else None,
                         log_std=name_of[id(layout.log_std)] if layout.log_std is not None else None,
                         activation=layout.activation, discrete=layout.discrete, head=layout.head)


def fast_unsupported(networks: list[nn.Module], surrogate: Surrogate) -> str | None:
    """Why the stacked lean update cannot run (None: it can, subject to ``verify_stacked``)."""
    layout = stacked_layout(networks)
    if isinstance(layout, str):
        return layout
    reason = unsupported(networks[0], surrogate)
    if reason is not None:
        return reason
    if surrogate.aggregation != "token_mean":
        return f"aggregation={surrogate.aggregation} (the stacked update derives token_mean)"
    return None


class StackedActor:
    """Inference-only policy + value of P members: ``layers`` are (weight [P, in, out], bias [P, 1, out]), the last
    the output layer [P, feat, A (+1)]; column A of the output is V(s) when there is a value head."""

    def __init__(self, params: dict[str, Tensor], layout: StackedLayout) -> None:
        self.head, self.layout = layout.head, layout
        self.activation = _ACTIVATION[layout.activation] if layout.activation is not None else None
        self.width = params[layout.head_linear[0]].shape[1]  # A: the head's outputs
        self.log_std = params[layout.log_std].detach().clone() if layout.log_std is not None else None
        self.layers = self._build(params, layout)

    @staticmethod
    @torch.no_grad()
    def _build(params: dict[str, Tensor], layout: StackedLayout) -> list[tuple[Tensor, Tensor]]:
        """A snapshot (copies) of the members' weights laid out as ``fused_actor`` lays out one network's."""
        def w(name):  # [P, out, in] → [P, in, out]
            return params[name].transpose(1, 2)

        layers = []
        head_w, head_b = layout.head_linear
        if layout.value is not None:  # two trunks side by side: cat on the first layer, block-diagonal deeper
            for depth, ((pw, pb), (vw, vb)) in enumerate(zip(layout.policy, layout.value, strict=True)):
                if depth == 0:
                    weight = torch.cat([w(pw), w(vw)], dim=2)
                else:
                    P, fan_in, fan_out = w(pw).shape
                    weight = params[pw].new_zeros(P, 2 * fan_in, 2 * fan_out)
                    weight[:, :fan_in, :fan_out] = w(pw)
                    weight[:, fan_in:, fan_out:] = w(vw)
                layers.append((weight.contiguous(), torch.cat([params[pb], params[vb]], dim=1).unsqueeze(1)))
            ow, ob = layout.value_out
            P, feat, A = w(head_w).shape
            weight = params[head_w].new_zeros(P, 2 * feat, A + 1)
            weight[:, :feat, :A] = w(head_w)
            weight[:, feat:, A:] = w(ow)
            out = (weight, torch.cat([params[head_b], params[ob]], dim=1))
        else:  # one trunk; the value head (if any) reads the same features
            layers = [(w(pw).contiguous(), params[pb].unsqueeze(1).clone()) for pw, pb in layout.policy]
            if layout.value_out is None:
                out = (w(head_w), params[head_b])
            else:
                ow, ob = layout.value_out
                out = (torch.cat([w(head_w), w(ow)], dim=2), torch.cat([params[head_b], params[ob]], dim=1))
        layers.append((out[0].contiguous().clone(), out[1].unsqueeze(1).clone()))
        return layers

    def _forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        x = obs
        last = len(self.layers) - 1
        for i, (weight, bias) in enumerate(self.layers):
            x = torch.baddbmm(bias, x, weight)
            if i < last:
                x = self.activation(x)
        head_out = x[..., : self.width]
        if self.log_std is None:
            params = self.head.params_from_output(head_out)
        else:  # the Gaussian head's [mean, log σ], with each member's own log σ
            params = torch.cat([head_out, self.log_std.unsqueeze(1).expand_as(head_out)], dim=-1)
        values = x[..., self.width] if self.layout.has_value else obs.new_zeros(obs.shape[:2])
        return params, values

    def act(self, obs: Tensor, deterministic: bool = False) -> ActOutput:
        """obs [P, N, obs_dim] → actions, log π, V, distribution parameters, each [P, N, ...]."""
        params, values = self._forward(obs)
        actions = self.head.mode(params) if deterministic else self.head.sample(params)
        return ActOutput(actions, self.head.log_prob(params, actions), values, params)

    def value(self, obs: Tensor) -> Tensor:
        """obs [P, N, obs_dim] → V(s) [P, N]."""
        return self._forward(obs)[1]


class StackedLean:
    """Loss, diagnostics and gradient of P members' minibatches (``pglab.accel.lean``'s formulas over a leading
    member dim). ``params`` are the stacked tensors [P, ...] by name (read live: Adam's in-place steps show).

    ``__call__(batch)`` takes fields [P, B, ...] (``pglab.learner.population.BATCH_FIELDS``) and returns
    (gradients by name [P, ...], losses [P], diagnostics [P, K] named by ``keys``)."""

    def __init__(self, params: dict[str, Tensor], layout: StackedLayout, surrogate: Surrogate, *, vf_coef: float,
                 ent_coef: float, value_clip: float | None, normalize_advantages: bool) -> None:
        self.params, self.layout, self.kind = params, layout, lean_formula(surrogate)
        self.eps_low = float(getattr(surrogate, "eps_low", 0.0))
        self.eps_high = float(getattr(surrogate, "eps_high", 0.0))
        self.vf_coef, self.ent_coef = float(vf_coef), float(ent_coef)
        self.value_clip, self.normalize = value_clip, normalize_advantages
        self.has_value = layout.has_value
        self.separate = layout.value is not None
        activation = layout.activation or "tanh"  # (no hidden layer: never applied)
        self.act_fn, self.act_backward = _ACTIVATION[activation], _ACTIVATION_BACKWARD[activation]
        # the reference loss's diagnostics, in lean.py's order (the start-up check compares names and values)
        names = ["policy_loss", "entropy", "approx_kl_k1", "approx_kl", "ratio_mean"]
        scale = [1.0, -1.0, -1.0, 1.0, 1.0]  # rows: ℓ, −H, log ρ, k3, ρ
        if self.kind == "clip":
            names.append("clip_fraction")
            scale.append(1.0)
        if self.has_value:
            names.append("value_loss")
            scale.append(0.5)
        self.keys = names + ["ratio_min", "ratio_max"]
        ref = next(iter(params.values()))
        self.scale = torch.tensor(scale + [1.0, 1.0], dtype=ref.dtype)
        self.loss_weights = torch.zeros(len(scale), dtype=ref.dtype)
        self.loss_weights[0], self.loss_weights[1] = 1.0, self.ent_coef
        if self.has_value:
            self.loss_weights[-1] = 0.5 * self.vf_coef

    def _wt(self, name: str) -> Tensor:
        return self.params[name].transpose(1, 2)

    def _trunk_forward(self, obs: Tensor, linears: list[tuple[str, str]]) -> list[Tensor]:
        outputs = [obs]
        for w, b in linears:
            outputs.append(self.act_fn(torch.baddbmm(self.params[b].unsqueeze(1), outputs[-1], self._wt(w))))
        return outputs

    def _trunk_backward(self, grad: Tensor, outputs: list[Tensor], linears: list[tuple[str, str]],
                        grads: dict[str, Tensor]) -> None:
        for depth in range(len(linears) - 1, -1, -1):
            w, b = linears[depth]
            grad = self.act_backward(grad, outputs[depth + 1])
            grads[w] = torch.bmm(grad.transpose(1, 2), outputs[depth])
            grads[b] = grad.sum(1)
            if depth:
                grad = torch.bmm(grad, self.params[w])

    @torch.no_grad()
    def dist_params(self, obs: Tensor) -> Tensor:
        """Every member's distribution parameters [P, R, ·] at ``obs`` [P, R, obs_dim] (the policy trunk and head
        only; the current weights)."""
        hw, hb = self.layout.head_linear
        head_out = torch.baddbmm(self.params[hb].unsqueeze(1), self._trunk_forward(obs, self.layout.policy)[-1],
                                 self._wt(hw))
        if self.layout.log_std is None:
            return self.layout.head.params_from_output(head_out)
        log_std = self.params[self.layout.log_std].unsqueeze(1).expand_as(head_out)
        return torch.cat([head_out, log_std], dim=-1)

    @torch.no_grad()
    def __call__(self, batch: dict[str, Tensor]) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        layout, params = self.layout, self.params
        mask = batch["mask"]  # [P, B]
        count = mask.sum(1, keepdim=True).clamp_min(1.0)
        weight = mask / count
        advantages = batch["advantages"]
        if self.normalize:  # per member: (A − mean)/(std + 1e-8) over its real rows, as the reference loss
            centred = advantages - (advantages * weight).sum(1, keepdim=True)
            std = ((centred * centred * mask).sum(1, keepdim=True) / (count - 1).clamp_min(1.0)).sqrt()
            advantages = centred / (std + 1e-8)
        neg_adv_w = -(advantages * weight)
        real = mask > 0
        grads: dict[str, Tensor] = {}

        # -- forward through the members' own parameters
        obs = batch["obs"]
        policy_outputs = self._trunk_forward(obs, layout.policy)
        features = policy_outputs[-1]
        hw, hb = layout.head_linear
        head_out = torch.baddbmm(params[hb].unsqueeze(1), features, self._wt(hw))  # [P, B, A]
        if self.has_value:
            value_outputs = self._trunk_forward(obs, layout.value) if self.separate else None
            value_features = value_outputs[-1] if self.separate else features
            ow, ob = layout.value_out
            values = torch.baddbmm(params[ob].unsqueeze(1), value_features, self._wt(ow)).squeeze(2)  # [P, B]

        # -- log π(a|s), −H and their derivatives
        if layout.discrete:
            actions = batch["actions"].long().unsqueeze(2)
            log_probs = torch.log_softmax(head_out, -1)
            probs = log_probs.exp()
            logp = log_probs.gather(2, actions).squeeze(2)
            neg_entropy = (probs * log_probs).sum(-1)
        else:
            log_std = params[layout.log_std]  # [P, d]
            inv_std = torch.exp(-log_std).unsqueeze(1)  # [P, 1, d]
            z = (batch["actions"] - head_out) * inv_std
            const = log_std.sum(1, keepdim=True) + 0.5 * log_std.shape[1] * math.log(2 * math.pi)  # [P, 1]
            logp = (z * z).sum(-1).mul_(-0.5).sub_(const)
            neg_entropy = (-const - 0.5 * log_std.shape[1]).expand_as(logp)

        log_ratio = logp - batch["logp_old"]
        ratio = log_ratio.exp()
        rows = []
        if self.kind == "clip":
            unclipped = ratio * advantages
            clipped = ratio.clamp(1.0 - self.eps_low, 1.0 + self.eps_high) * advantages
            clipped_active = clipped < unclipped
            rows.append(-torch.minimum(unclipped, clipped))
            dlogp = (ratio * neg_adv_w).masked_fill_(clipped_active, 0.0)
        elif self.kind == "importance":
            rows.append(-(ratio * advantages))
            dlogp = ratio * neg_adv_w
        else:  # reinforce
            rows.append(-(advantages * logp))
            dlogp = neg_adv_w
        rows += [neg_entropy, log_ratio, torch.expm1(log_ratio).sub_(log_ratio), ratio]
        if self.kind == "clip":
            rows.append(clipped_active.to(ratio.dtype))

        # ∂L/∂(head output)
        if layout.discrete:
            if self.ent_coef:
                d_head = (log_probs - neg_entropy.unsqueeze(2)).mul_((self.ent_coef * weight).unsqueeze(2))
                d_head.sub_(dlogp.unsqueeze(2)).mul_(probs)
            else:
                d_head = probs * dlogp.neg().unsqueeze(2)
            d_head.scatter_add_(2, actions, dlogp.unsqueeze(2))
        else:
            d_head = z * inv_std * dlogp.unsqueeze(2)
            # ∂L/∂ log σ = Σ_i g_i (z_i² − 1) − c_e Σ_i w_i, per member
            grad_log_std = torch.bmm((z * z).sub_(1.0).transpose(1, 2), dlogp.unsqueeze(2)).squeeze(2)
            if self.ent_coef:
                grad_log_std = grad_log_std - self.ent_coef * weight.sum(1, keepdim=True)
            grads[layout.log_std] = grad_log_std

        # -- backward: heads, then trunks
        grads[hw] = torch.bmm(d_head.transpose(1, 2), features)
        grads[hb] = d_head.sum(1)
        d_features = torch.bmm(d_head, params[hw]) if layout.policy else None
        if self.has_value:
            diff = values - batch["targets"]
            squared = diff * diff
            d_value = diff * (self.vf_coef * weight)
            if self.value_clip is not None:
                values_old = batch["values_old"]
                moved = values - values_old
                inside = moved.abs() <= self.value_clip
                diff_clipped = moved.clamp(-self.value_clip, self.value_clip).add_(values_old).sub_(batch["targets"])
                squared_clipped = diff_clipped * diff_clipped
                take_unclipped = squared >= squared_clipped
                d_value = torch.where(take_unclipped, d_value,
                                      torch.where(inside, diff_clipped * (self.vf_coef * weight), 0.0))
                squared = torch.maximum(squared, squared_clipped)
            rows.append(squared)
            value_weight = params[ow]  # [P, 1, feat]
            grads[ow] = torch.bmm(d_value.unsqueeze(1), value_features)
            grads[ob] = d_value.sum(1, keepdim=True)
            if self.separate:
                if layout.value:
                    self._trunk_backward(torch.bmm(d_value.unsqueeze(2), value_weight), value_outputs, layout.value,
                                         grads)
            elif d_features is not None:  # a shared trunk gets both heads' gradients
                d_features = torch.baddbmm(d_features, d_value.unsqueeze(2), value_weight)
        if d_features is not None:
            self._trunk_backward(d_features, policy_outputs, layout.policy, grads)

        # -- diagnostics: every member's masked means in one batched product, its ratio extremes over real rows
        means = torch.bmm(torch.stack(rows, 1), weight.unsqueeze(2)).squeeze(2)  # [P, K]
        losses = means @ self.loss_weights
        # padding rows take the member's mean ratio, which lies within its real rows' [min, max]
        extremes = torch.aminmax(torch.where(real, ratio, means[:, 4:5]), dim=1)
        diagnostics = torch.cat([means, extremes.min.unsqueeze(1), extremes.max.unsqueeze(1)], 1) * self.scale
        return grads, losses, diagnostics

    def named(self, diagnostics: Tensor) -> dict[str, Tensor]:
        """Diagnostics [P, K] → by name, each [P]."""
        return dict(zip(self.keys, diagnostics.unbind(1), strict=True))


def stacked_adam_step(rows: list[int], params: Tensor, grads: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor,
                      steps: list[Tensor], lrs: list[float], *, betas: tuple[float, float], eps: float) -> None:
    """One Adam step of the members ``rows`` of flat tensors [P, D] (member k's parameters, gradient and moments
    are row k), each with its own step count ``steps[k]`` and learning rate ``lrs[k]``: torch's fused Adam kernel
    (``torch.optim.Adam(fused=True)``'s) on the rows, one call per distinct learning rate. Tested equal to one
    ``torch.optim.Adam`` per member."""
    by_lr: dict[float, list[int]] = {}
    for k in rows:
        by_lr.setdefault(float(lrs[k]), []).append(k)
    beta1, beta2 = betas
    for lr, ks in by_lr.items():
        k_steps = [steps[k] for k in ks]
        torch._foreach_add_(k_steps, 1)
        torch._fused_adam_([params[k] for k in ks], [grads[k] for k in ks], [exp_avg[k] for k in ks],
                           [exp_avg_sq[k] for k in ks], [], k_steps, lr=lr, beta1=beta1, beta2=beta2,
                           weight_decay=0.0, eps=eps, amsgrad=False, maximize=False)


@activations.large_tensor_kernels
def verify_stacked(networks64: list[nn.Module], reference_gradients: Callable, reference_act: Callable,
                   surrogate: Surrogate, settings, value_clip: float | None) -> Verdict:
    """Do the stacked fast paths over ``networks64`` (float64 copies of some members, laid out alike) give what
    the vmapped reference gives over the same members?

    ``reference_gradients(batch)`` → (gradients by name [P, ...], losses [P], diagnostics by name [P]) and
    ``reference_act(obs)`` → (distribution parameters, values) [P, N, ...]: the reference population's own calls
    over the same float64 parameters. Member k's minibatch is ``synthetic_batch`` of its own network (its own
    generator), so members' batches differ."""
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        layout = stacked_layout(networks64)
        if isinstance(layout, str):
            return Verdict(layout, time.perf_counter() - start)
        names = [n for n, _ in networks64[0].named_parameters()]
        params = {n: torch.stack([dict(net.named_parameters())[n].detach() for net in networks64]) for n in names}
        fast = StackedLean(params, layout, surrogate, vf_coef=settings.vf_coef, ent_coef=settings.ent_coef,
                           value_clip=settings.value_clip, normalize_advantages=settings.normalize_advantages)
        obs_dim = params[(layout.policy or [layout.head_linear])[0][0]].shape[2]
        problem = None
        for rows, padded in ((16, 3), (9, 0)):
            members = [synthetic_batch(net, obs_dim, torch.Generator().manual_seed(17 * k + rows), value_clip,
                                       rows_per_episode=rows, padded_per_episode=padded)
                       for k, net in enumerate(networks64)]
            batch = {f: torch.stack([getattr(b, f) for b in members]) for f in
                     ("obs", "actions", "logp_old", "values_old", "dist_params_old", "advantages", "targets", "mask")}
            grads, losses, diagnostics = fast(batch)
            ref_grads, ref_losses, ref_stats = reference_gradients(batch)
            fast_stats = fast.named(diagnostics)
            problem = _differs("the members' losses", losses, ref_losses)
            if problem is None and set(fast_stats) != set(ref_stats):
                problem = (f"the diagnostics' names: the reference logs {sorted(ref_stats)}, the stacked update "
                           f"{sorted(fast_stats)}")
            if problem is None:
                for key in sorted(ref_stats):
                    problem = problem or _differs(f"diagnostic {key}", fast_stats[key], ref_stats[key])
                for n in names:
                    problem = problem or _differs(f"the gradient of {n}", grads[n], ref_grads[n])
            if problem is not None:
                break
        if problem is None:  # the actor: sampled and deterministic actions' log π, V, distribution parameters
            actor = StackedActor(params, layout)
            generator = torch.Generator().manual_seed(0)
            obs = torch.randn(len(networks64), 7, obs_dim, generator=generator, dtype=torch.float64) * 1.5
            ref_params, ref_values = reference_act(obs)
            for deterministic in (False, True):
                out = actor.act(obs, deterministic)
                for k, net in enumerate(networks64):
                    ev = net.evaluate(obs[k], out.actions[k])
                    problem = (problem or _differs("log π(a|s)", out.logp[k], ev.logp)
                               or _differs("V(s)", out.values[k], ev.values)
                               or _differs("distribution parameters", out.dist_params[k], ev.dist_params))
                    if deterministic:
                        problem = problem or _differs("deterministic action", out.actions[k].double(),
                                                      net.act(obs[k], deterministic=True).actions.double())
                problem = (problem or _differs("distribution parameters (vmapped reference)", out.dist_params,
                                               ref_params) or _differs("V(s) (vmapped reference)", out.values,
                                                                       ref_values))
            problem = problem or _differs("V(s) (value call)", actor.value(obs), ref_values)
    return Verdict(problem and f"the stacked fast path disagrees with the vmapped reference on {problem}",
                   time.perf_counter() - start)
