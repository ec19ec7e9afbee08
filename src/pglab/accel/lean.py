"""The lean learner update: one PPO/PG minibatch update with hand-derived gradients, no autograd.

Why. A CartPole-sized update (two 64-64 MLPs, 128 rows) is tens of microseconds of arithmetic wrapped in hundreds
of eager operator calls (forward, autograd, optimiser bookkeeping), each with a fixed dispatch cost, so the update
costs what its operator count costs (``benchmarks/update_cost.py``). This module computes the same loss and its
exact gradient in a fraction of the operator calls:

- forward: one ``addmm`` + one activation per layer of the reference network's own ``nn.Linear`` parameters;
- the gradient of the loss with respect to the network's outputs in closed form (below), then the network's
  backward as one matmul per weight, one reduction per bias and one ``tanh_backward``/``threshold_backward`` per
  layer, written straight into views of one flat gradient buffer (``out=``);
- every diagnostic as one masked mean (a matrix–vector product of the stacked per-row terms with the row
  weights), min/max of the ratio in one ``aminmax``, no host sync;
- gradient clipping on the flat buffer (one norm, one scale) and the optimiser's fused Adam kernel called
  directly (``Optimizer.step``'s Python wrapper costs more than the kernel here).

The math, per real row i with weight w_i = m_i / Σm (masked means), ρ_i = exp(log π_θ(a_i|s_i) − log π_old):

    L = Σ_i w_i ℓ_i  −  c_e Σ_i w_i H_i  +  c_v · ½ Σ_i w_i (V_i − G_i)²

    ∂L/∂ log π_i = w_i · g_i,  g_i = −Â_i ρ_i [ρ_i Â_i ≤ clip(ρ_i)Â_i] (clip), −Â_i ρ_i (importance), −Â_i (reinforce)
    categorical, logits z:  ∂ log π(a)/∂z = onehot(a) − p,   ∂(−H)/∂z = p ⊙ (log p + H)
    Gaussian, mean μ, log σ: ∂ log π/∂μ = (a − μ)/σ²,  ∂ log π/∂ log σ = z² − 1 (z = (a − μ)/σ),  ∂H/∂ log σ = 1
    value: ∂/∂V_i = c_v w_i (V_i − G_i)   (clipped form: the branch torch.maximum takes, 0 where the clamp is active)

Which surrogate formula applies is the surrogate's own declaration, ``lean_formula`` (``clip``, ``importance`` or
``reinforce``), set on its class itself — a subclass does not inherit it. A declaration is a claim, not proof:
``pglab.accel.verify`` checks loss, every gradient and every diagnostic against the autograd reference before the
first env step, and the reference runs instead when they differ. Which networks: what ``mlp_layout`` accepts.

Pure torch: no Lightning, Hydra or gymnasium here.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.optim import optimizer as optim_module

from pglab.accel import activations
from pglab.accel.structure import MLPLayout, mlp_layout
from pglab.core.surrogates import Surrogate
from pglab.core.types import Batch

__all__ = ["LeanUpdate", "unsupported", "lean_formula", "fused_adam_step", "clip_flat_", "GRADIENT_MODES",
           "LEAN_FORMULAS"]

GRADIENT_MODES = ("auto", "lean", "autograd")
LEAN_FORMULAS = ("clip", "importance", "reinforce")
# the derivative of each activation from its output h: tanh' = 1 − h², relu' = [h > 0]
_ACTIVATION_BACKWARD = {"tanh": torch.ops.aten.tanh_backward,
                        "relu": lambda grad, out: torch.ops.aten.threshold_backward(grad, out, 0)}
_ACTIVATION_FORWARD = {"tanh": activations.tanh_, "relu": torch.relu_}  # tanh_: see accel/activations.py


def lean_formula(surrogate: Surrogate) -> str | None:
    """The formula the surrogate's own class declares the lean update implements (not inherited: a subclass that
    overrides ``per_token`` must declare it again, and is then verified like any other)."""
    return type(surrogate).__dict__.get("lean_formula")


def unsupported(policy, surrogate: Surrogate, *, clip_per_group: bool = False, compile: bool = False) -> str | None:
    """Why the lean update cannot run this configuration (None: it can, subject to the start-up check)."""
    layout = mlp_layout(policy)
    if isinstance(layout, str):
        return layout
    formula = lean_formula(surrogate)
    if formula is None:
        return (f"the {type(surrogate).__name__} surrogate declares no lean_formula (the lean update derives "
                f"{', '.join(LEAN_FORMULAS)})")
    if formula not in LEAN_FORMULAS:
        return f"{type(surrogate).__name__}.lean_formula={formula!r} is not one of {LEAN_FORMULAS}"
    if surrogate.aggregation not in ("token_mean", "episode_sum"):
        return f"aggregation={surrogate.aggregation} (the lean update derives token_mean and episode_sum)"
    if surrogate.needs_reference or surrogate.needs_analytic_kl:
        return "a surrogate with a reference policy or an analytic-KL term"
    if clip_per_group:
        return "learner.clip_per_group=true"
    if compile:
        return "learner.compile=true"
    return None


class LeanUpdate:
    """Loss, diagnostics and gradient of one minibatch for an ``ActorCritic`` (see the module docstring).

    ``__call__(batch, prepared)`` writes the gradient into ``self.flat_grad`` (every parameter's ``.grad`` is a
    view of it) and returns the loss [] and the diagnostics named by ``self.keys`` [K]. ``prepare`` computes the
    data-only constants of several minibatches at once.
    """

    def __init__(self, policy, surrogate: Surrogate, *, vf_coef: float, ent_coef: float,
                 value_clip: float | None, normalize_advantages: bool) -> None:
        reason = unsupported(policy, surrogate)
        if reason is not None:
            raise ValueError(f"the lean update does not cover {reason}")
        layout: MLPLayout = mlp_layout(policy)
        self.policy, self.layout, self.kind = policy, layout, lean_formula(surrogate)
        self.eps_low = float(getattr(surrogate, "eps_low", 0.0))
        self.eps_high = float(getattr(surrogate, "eps_high", 0.0))
        self.vf_coef, self.ent_coef = float(vf_coef), float(ent_coef)
        self.value_clip, self.normalize = value_clip, normalize_advantages
        self.episode_sum = surrogate.aggregation == "episode_sum"
        self.discrete = layout.discrete
        self.has_value = layout.value_out is not None
        # two trunks of one shape (else V reads the policy trunk's features)
        self.separate = layout.value_linears is not None and self.has_value
        activation = layout.activation or "tanh"  # (no hidden layer: never applied)
        self.activation, self.activation_backward = _ACTIVATION_FORWARD[activation], _ACTIVATION_BACKWARD[activation]

        # diagnostics: the rows stacked for one masked mean, then scaled (signs, the ½ of the value loss); the
        # names and order are the reference loss's (``pglab.learner.loss``), which the start-up check compares
        names = ["policy_loss", "entropy", "approx_kl_k1", "approx_kl", "ratio_mean"]
        scale = [1.0, -1.0, -1.0, 1.0, 1.0]  # rows: ℓ, −H, log ρ, k3, ρ
        if self.kind == "clip":
            names.append("clip_fraction")
            scale.append(1.0)
        if self.has_value:
            names.append("value_loss")
            scale.append(0.5)
        self.keys = names + ["ratio_min", "ratio_max"]
        param = next(policy.parameters())
        self.scale = torch.tensor(scale + [1.0, 1.0], dtype=param.dtype, device=param.device)
        # L = ℓ̄ + c_e·(−H)‾ + c_v·½(V−G)²‾ as a dot product with the rows' means (ℓ, −H, …, (V−G)²)
        self.loss_weights = torch.zeros(len(scale), dtype=param.dtype, device=param.device)
        self.loss_weights[0], self.loss_weights[1] = 1.0, self.ent_coef
        if self.has_value:
            self.loss_weights[-1] = 0.5 * self.vf_coef
        self.approx_kl_index = self.keys.index("approx_kl")
        self._flatten()

    def _flatten(self) -> None:
        """Lay the network's parameters and their gradients out in two flat buffers of one layout; every parameter
        (``.data``) and its ``.grad`` become views of them. The network stays the same ``nn.Linear`` modules: only
        where their numbers live changes, so its ``state_dict``, the optimiser and every reader see ordinary
        parameters. Why: the two trunks' layers of one depth sit side by side as one [2, out, in] block (both
        trunks in one ``baddbmm``/``bmm`` per layer), clipping is one norm, and the optimiser steps the whole
        network in one fused-Adam call on one tensor (``bind_optimizer``) instead of one per parameter."""
        layout = self.layout
        groups: list[list[Tensor]] = []  # each group one block; a trunk pair → [2, …]
        if self.separate:
            for p, v in zip(layout.policy_linears, layout.value_linears, strict=True):
                groups += [[p.weight, v.weight], [p.bias, v.bias]]
        else:
            for p in layout.policy_linears:
                groups += [[p.weight], [p.bias]]
        head = layout.head.linear
        groups += [[head.weight], [head.bias]]
        if self.has_value:
            groups += [[layout.value_out.weight], [layout.value_out.bias]]
        if layout.log_std is not None:
            groups.append([layout.log_std])
        params = [p for group in groups for p in group]
        if len({id(p) for p in params}) != len(params) or len(params) != sum(1 for _ in self.policy.parameters()):
            raise ValueError("the network's parameters are not exactly its layers' (mlp_layout should have said so)")
        first = params[0]
        self.flat_param = torch.empty(sum(p.numel() for p in params), dtype=first.dtype, device=first.device)
        self.flat_grad = torch.zeros_like(self.flat_param)
        self._groups = groups
        param_blocks = self._blocks(self.flat_param)
        grad_blocks = self._blocks(self.flat_grad)
        with torch.no_grad():
            for group, block in zip(groups, param_blocks, strict=True):
                for p, row in zip(group, block.unbind(0), strict=True):
                    row.copy_(p)
        self.params = params
        self.param_views = [row for block in param_blocks for row in block.unbind(0)]
        self.grads = [row for block in grad_blocks for row in block.unbind(0)]
        for p, view in zip(params, self.param_views, strict=True):
            p.data = view
        self._adam = None  # Adam's flat moments follow the parameters' layout: bound again (bind_optimizer)
        depth = len(layout.policy_linears)
        if self.separate:
            self.stacked_w = param_blocks[0: 2 * depth: 2]  # [2, out, in]: (policy, value) at each depth
            self.stacked_wt = [w.transpose(1, 2) for w in self.stacked_w]  # [2, in, out] views (Adam shows through)
            self.stacked_b = [b.unsqueeze(1) for b in param_blocks[1: 2 * depth: 2]]  # [2, 1, out]
            self.stacked_grad_w = grad_blocks[0: 2 * depth: 2]
            self.stacked_grad_b = grad_blocks[1: 2 * depth: 2]  # [2, out]
        grad_of = {id(p): g for p, g in zip(params, self.grads, strict=True)}

        def grads(linears):
            return [(grad_of[id(l.weight)], grad_of[id(l.bias)]) for l in linears]

        self.policy_grads = grads(layout.policy_linears)
        self.head_grads = grads([layout.head.linear])[0]
        self.value_out_grads = grads([layout.value_out])[0] if self.has_value else None
        self.grad_log_std = grad_of[id(layout.log_std)] if layout.log_std is not None else None
        # weight.t() is a view: Adam's in-place steps show through it, and the forward saves one view op per layer
        layers = [*([] if self.separate else layout.policy_linears), layout.head.linear,
                  *([layout.value_out] if self.has_value else [])]
        self.weight_t = {id(layer): layer.weight.t() for layer in layers}
        for p, g in zip(params, self.grads, strict=True):
            p.grad = g

    def _blocks(self, flat: Tensor) -> list[Tensor]:
        """``flat`` [D] as the parameter groups' blocks [len(group), *shape], in order."""
        blocks, offset = [], 0
        for group in self._groups:
            size = group[0].numel() * len(group)
            blocks.append(flat[offset: offset + size].view(len(group), *group[0].shape))
            offset += size
        return blocks

    def rebind(self) -> None:
        """Before a training step's updates: lay the parameters out again if something replaced their storage
        (``.to()``, ``.data =``, ``load_state_dict(assign=True)``), and point every ``.grad`` at its view again
        (after something replaced or cleared it)."""
        if any(p.data_ptr() != view.data_ptr() or p.shape != view.shape
               for p, view in zip(self.params, self.param_views, strict=True)):
            self._flatten()
        for p, g in zip(self.params, self.grads, strict=True):
            if p.grad is not g:
                p.grad = g

    def bind_optimizer(self, optimizer: torch.optim.Optimizer) -> bool:
        """Adam's moments (and step counts) as views of flat buffers laid out as the parameters, so ``adam_step``
        is one fused-kernel call on one tensor. Applies to a plain fused Adam over exactly this network's
        parameters (``fused_adam_step``'s conditions) whose state is empty or in step; returns whether it does
        (else ``adam_step`` is ``fused_adam_step``). The optimiser's ``state`` keeps ordinary per-parameter
        entries (views), so its ``state_dict``, ``load_state_dict`` and ``step()`` work as before; a loaded state
        replaces the views, and the next call lays it out again."""
        if self._adam is not None and self._adam[0] is optimizer and all(
                optimizer.state.get(p, {}).get("exp_avg") is m for p, m in zip(self.params, self._adam[4],
                                                                                strict=True)):
            return True
        self._adam = None
        if not _direct_adam_applies(optimizer):
            return False
        group = optimizer.param_groups[0]["params"]
        if len(group) != len(self.params) or {id(p) for p in group} != {id(p) for p in self.params}:
            return False
        states = [optimizer.state.get(p) for p in self.params]
        if any(states) and not all(states):
            return False
        exp_avg, exp_avg_sq = torch.zeros_like(self.flat_param), torch.zeros_like(self.flat_param)
        # the scalar type torch's fused Adam keeps its step counts in
        steps = torch.zeros(len(self.params), dtype=torch.float32, device=self.flat_param.device)
        m_views = [row for block in self._blocks(exp_avg) for row in block.unbind(0)]
        v_views = [row for block in self._blocks(exp_avg_sq) for row in block.unbind(0)]
        if all(states):
            counts = {float(s["step"]) for s in states}
            if len(counts) != 1 or any(set(s) != {"step", "exp_avg", "exp_avg_sq"} for s in states):
                return False
            with torch.no_grad():
                for s, m, v in zip(states, m_views, v_views, strict=True):
                    m.copy_(s["exp_avg"])
                    v.copy_(s["exp_avg_sq"])
            steps.fill_(counts.pop())
        for i, (p, m, v) in enumerate(zip(self.params, m_views, v_views, strict=True)):
            optimizer.state[p] = {"step": steps[i], "exp_avg": m, "exp_avg_sq": v}
        self._adam = (optimizer, exp_avg, exp_avg_sq, steps, m_views)
        return True

    def adam_step(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.step()``: one fused-Adam call on the flat buffers when ``bind_optimizer`` bound them, else
        ``fused_adam_step``. Tested equal to ``torch.optim.Adam.step`` bit for bit."""
        if self._adam is None or self._adam[0] is not optimizer or not _direct_adam_applies(optimizer):
            fused_adam_step(optimizer)
            return
        _, exp_avg, exp_avg_sq, steps, _ = self._adam
        group = optimizer.param_groups[0]
        steps.add_(1)
        beta1, beta2 = group["betas"]
        torch._fused_adam_([self.flat_param], [self.flat_grad], [exp_avg], [exp_avg_sq], [], [steps[0]],
                           lr=float(group["lr"]), beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"],
                           eps=group["eps"], amsgrad=False, maximize=False)

    @torch.no_grad()
    def prepare(self, batches: list[Batch]) -> list[tuple]:
        """Per minibatch: (row weights w [B], (normalised) advantages Â [B], the surrogate's row weights times −Â
        [B], real-row mask [B] bool, and for ``episode_sum`` the surrogate's scale Σm/N [] (else None)).

        They depend on the data only, so a Lightning step computes them for all its minibatches at once (one set
        of [M, B] operations instead of M sets of [B] ones) when the minibatches have one size."""
        if len(batches) > 1 and len({b.mask.shape[0] for b in batches}) > 1:
            return [self.prepare([b])[0] for b in batches]
        mask = torch.stack([b.mask for b in batches])  # [M, B]
        advantages = torch.stack([b.advantages for b in batches])
        count = mask.sum(1, keepdim=True).clamp_min_(1.0)
        weight = mask / count  # each row's weight in a masked mean
        if self.normalize:  # per minibatch (A − mean)/(std + 1e-8) over the real rows, as the autograd loss
            centred = advantages - (advantages * weight).sum(1, keepdim=True)
            std = ((centred * centred * mask).sum(1, keepdim=True) / (count - 1).clamp_min_(1.0)).sqrt_()
            advantages = centred.div_(std.add_(1e-8))
        neg_adv_w = (advantages * weight).neg_()
        if self.episode_sum:
            # the surrogate's rows weigh m/N (N episodes) instead of m/Σm: the same means, scaled by Σm/N
            episodes = torch.tensor([[max(b.num_episodes, 1)] for b in batches], dtype=mask.dtype, device=mask.device)
            scale = count / episodes
            neg_adv_w.mul_(scale)
            scales = scale.view(-1).unbind()
        else:
            scales = [None] * len(batches)
        return list(zip(weight.unbind(), advantages.unbind(), neg_adv_w.unbind(), (mask > 0).unbind(), scales,
                        strict=True))

    def _trunk_forward(self, obs: Tensor, linears) -> list[Tensor]:
        """[input, output of layer 1, …, output of layer n] (post-activation), kept for the backward."""
        outputs = [obs]
        weight_t = self.weight_t
        for layer in linears:
            outputs.append(self.activation(torch.addmm(layer.bias, outputs[-1], weight_t[id(layer)])))
        return outputs

    def _trunk_backward(self, grad: Tensor, outputs: list[Tensor], linears, grads) -> None:
        """grad = ∂L/∂(trunk output) [B, h] → every layer's weight and bias gradient, written in place."""
        for depth in range(len(linears) - 1, -1, -1):
            grad = self.activation_backward(grad, outputs[depth + 1])
            grad_w, grad_b = grads[depth]
            torch.mm(grad.t(), outputs[depth], out=grad_w)
            torch.sum(grad, 0, out=grad_b)
            if depth:
                grad = torch.mm(grad, linears[depth].weight)

    def _stacked_forward(self, obs: Tensor) -> list[Tensor]:
        """Both trunks: [obs (expanded) [2, B, in], output of depth 1 [2, B, h], …], post-activation."""
        outputs = [obs.expand(2, *obs.shape)]
        for weight_t, bias in zip(self.stacked_wt, self.stacked_b, strict=True):
            outputs.append(self.activation(torch.baddbmm(bias, outputs[-1], weight_t)))
        return outputs

    def _stacked_backward(self, grad: Tensor, outputs: list[Tensor]) -> None:
        """grad = ∂L/∂(both trunks' outputs) [2, B, h] → every trunk layer's weight and bias gradient, in place."""
        for depth in range(len(self.stacked_w) - 1, -1, -1):
            grad = self.activation_backward(grad, outputs[depth + 1])
            torch.bmm(grad.transpose(1, 2), outputs[depth], out=self.stacked_grad_w[depth])
            torch.sum(grad, 1, out=self.stacked_grad_b[depth])
            if depth:
                grad = torch.bmm(grad, self.stacked_w[depth])

    @torch.inference_mode()  # cheaper per call than no_grad (no version counters or view tracking)
    def __call__(self, batch: Batch, prepared: tuple | None = None) -> tuple[Tensor, Tensor]:
        """Loss [] and diagnostics [K] (named by ``keys``) of one minibatch; its gradient is written into
        ``flat_grad``. ``prepared``: its entry of ``prepare``."""
        if prepared is None:  # a call outside a training step (the step's start rebinds once for all its updates)
            self.rebind()
        layout = self.layout
        weight, advantages, neg_adv_w, real, surrogate_scale = \
            prepared if prepared is not None else self.prepare([batch])[0]

        # -- forward through the reference network's own parameters
        if self.separate:  # both trunks at once: [2, B, h] through each depth's [2, out, in] block
            trunk_outputs = self._stacked_forward(batch.obs)
            features, value_features = trunk_outputs[-1].unbind(0)
        else:
            policy_outputs = self._trunk_forward(batch.obs, layout.policy_linears)
            features = value_features = policy_outputs[-1]
        head = layout.head.linear
        head_out = torch.addmm(head.bias, features, self.weight_t[id(head)])
        if self.has_value:
            values = torch.addmm(layout.value_out.bias, value_features, self.weight_t[id(layout.value_out)]).squeeze(1)

        # -- log π(a|s), −H and their derivatives
        if self.discrete:
            actions = batch.actions.long().unsqueeze(1)
            log_probs = torch.log_softmax(head_out, -1)  # [B, n]
            probs = log_probs.exp()
            logp = log_probs.gather(1, actions).squeeze(1)
            neg_entropy = (probs * log_probs).sum(-1)  # [B]
        else:
            log_std = layout.log_std  # [d]
            inv_std = torch.exp(-log_std)
            z = (batch.actions - head_out) * inv_std  # [B, d]
            const = log_std.sum() + 0.5 * log_std.numel() * math.log(2 * math.pi)
            logp = (z * z).sum(-1).mul_(-0.5).sub_(const)
            neg_entropy = (-const - 0.5 * log_std.numel()).expand_as(logp)  # H = Σ log σ + d/2·log(2πe)

        log_ratio = logp - batch.logp_old
        ratio = log_ratio.exp()
        rows = []
        if self.kind == "clip":
            unclipped = ratio * advantages
            clipped = ratio.clamp(1.0 - self.eps_low, 1.0 + self.eps_high) * advantages
            # where min() takes the clipped branch, whose gradient is 0 (ties, inside the range: the same gradient)
            clipped_active = clipped < unclipped
            rows.append(torch.minimum(unclipped, clipped).neg_())
            dlogp = (ratio * neg_adv_w).masked_fill_(clipped_active, 0.0)
        elif self.kind == "importance":
            rows.append(-(ratio * advantages))
            dlogp = ratio * neg_adv_w
        else:  # reinforce
            rows.append(-(advantages * logp))
            dlogp = neg_adv_w
        if surrogate_scale is not None:
            rows[0].mul_(surrogate_scale)
        rows += [neg_entropy, log_ratio, torch.expm1(log_ratio).sub_(log_ratio), ratio]
        if self.kind == "clip":
            rows.append(clipped_active.to(ratio.dtype))

        # ∂L/∂(head output)
        if self.discrete:
            # g·(onehot − p) + c_e·w·p⊙(log p + H)  =  p ⊙ (c_e·w·(log p + H) − g)  + g at the taken action
            if self.ent_coef:
                d_head = (log_probs - neg_entropy.unsqueeze(1)).mul_((self.ent_coef * weight).unsqueeze(1))
                d_head.sub_(dlogp.unsqueeze(1)).mul_(probs)
            else:
                d_head = probs * dlogp.neg().unsqueeze(1)
            d_head.scatter_add_(1, actions, dlogp.unsqueeze(1))
        else:
            d_head = z * inv_std * dlogp.unsqueeze(1)
            # ∂L/∂ log σ = Σ_i g_i (z_i² − 1) − c_e Σ_i w_i
            torch.mv((z * z).sub_(1.0).t(), dlogp, out=self.grad_log_std)
            if self.ent_coef:
                self.grad_log_std.sub_(self.ent_coef * weight.sum())

        # -- backward: heads, then trunks, into the flat gradient buffer
        torch.mm(d_head.t(), features, out=self.head_grads[0])
        torch.sum(d_head, 0, out=self.head_grads[1])
        d_features = torch.mm(d_head, head.weight) if layout.policy_linears else None
        if self.has_value:
            diff = values - batch.targets
            squared = diff * diff
            d_value = diff * (self.vf_coef * weight)
            if self.value_clip is not None:
                moved = values - batch.values_old
                inside = moved.abs() <= self.value_clip
                diff_clipped = moved.clamp(-self.value_clip, self.value_clip).add_(batch.values_old).sub_(batch.targets)
                squared_clipped = diff_clipped * diff_clipped
                take_unclipped = squared >= squared_clipped
                d_value = torch.where(take_unclipped, d_value,
                                      torch.where(inside, diff_clipped * (self.vf_coef * weight), 0.0))
                squared = torch.maximum(squared, squared_clipped)
            rows.append(squared)
            value_weight = layout.value_out.weight  # [1, feat]
            torch.mm(d_value.unsqueeze(0), value_features, out=self.value_out_grads[0])
            torch.sum(d_value, 0, keepdim=True, out=self.value_out_grads[1])
            if self.separate:
                self._stacked_backward(torch.stack([d_features, torch.outer(d_value, value_weight[0])]),
                                       trunk_outputs)
            elif d_features is not None:  # a shared trunk gets both heads' gradients
                d_features = torch.addr(d_features, d_value, value_weight[0])
        if d_features is not None and not self.separate:
            self._trunk_backward(d_features, policy_outputs, layout.policy_linears, self.policy_grads)

        # -- diagnostics: masked means in one product, the ratio's extremes over real rows in one aminmax
        means = torch.mv(torch.stack(rows), weight)
        loss = torch.dot(means, self.loss_weights)
        # padding rows take the mean ratio, which lies within the real rows' [min, max]
        extremes = torch.aminmax(torch.where(real, ratio, means[4]))
        return loss, torch.cat([means, torch.stack(extremes)]) * self.scale

    def named(self, diagnostics: Tensor) -> dict[str, Tensor]:
        """``__call__``'s diagnostics [K] by name."""
        return dict(zip(self.keys, diagnostics.unbind(), strict=True))


def clip_flat_(flat_grad: Tensor, max_norm: float | None, loss: Tensor) -> tuple[float, float]:
    """(loss, the gradient's global norm before clipping) as floats, in one host sync (the caller's finite check
    needs both anyway); scales the gradient to ``max_norm`` when larger, as ``torch.nn.utils.clip_grad_norm_``
    (coefficient max_norm / (norm + 1e-6), capped at 1). A non-finite norm leaves the gradient as it is."""
    norm = torch.linalg.vector_norm(flat_grad)
    loss_value, norm_value = torch.stack([loss.detach().to(norm.dtype), norm]).tolist()
    if max_norm is not None and max_norm < norm_value < math.inf:
        flat_grad.mul_(max_norm / (norm_value + 1e-6))
    return loss_value, norm_value


def fused_adam_step(optimizer: torch.optim.Optimizer) -> None:
    """``optimizer.step()`` for a ``torch.optim.Adam(fused=True)`` as one call of its fused kernel.

    ``Optimizer.step``'s Python wrapper (hooks, profiling, grouping by device and dtype) costs more than the
    kernel for a CartPole-sized network (benchmarks/update_cost.py; see docs/performance.md). This calls the same
    ``torch._fused_adam_`` with the group's settings when that is all the step would do (plain Adam, one group, no
    hooks, state initialised); otherwise it calls ``optimizer.step()``. Tested equal to ``optimizer.step()``
    (tests/accel/test_lean_update.py)."""
    if not _direct_adam_applies(optimizer):
        optimizer.step()
        return
    group = optimizer.param_groups[0]
    params = [p for p in group["params"] if p.grad is not None]
    states = [optimizer.state.get(p) for p in params]
    if any(not state for state in states):  # the first step initialises the state
        optimizer.step()
        return
    steps = [state["step"] for state in states]
    torch._foreach_add_(steps, 1)
    beta1, beta2 = group["betas"]
    torch._fused_adam_(params, [p.grad for p in params], [s["exp_avg"] for s in states],
                       [s["exp_avg_sq"] for s in states], [], steps, lr=float(group["lr"]), beta1=beta1,
                       beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"], amsgrad=False,
                       maximize=False)


def _direct_adam_applies(optimizer: torch.optim.Optimizer) -> bool:
    if type(optimizer) is not torch.optim.Adam or len(optimizer.param_groups) != 1:
        return False
    group = optimizer.param_groups[0]
    if not group.get("fused") or group["amsgrad"] or group["maximize"] or group.get("capturable") \
            or group.get("differentiable") or group.get("decoupled_weight_decay") or torch.is_tensor(group["lr"]):
        return False
    return not (optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks
                or optim_module._global_optimizer_pre_hooks or optim_module._global_optimizer_post_hooks)
