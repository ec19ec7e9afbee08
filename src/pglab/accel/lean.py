"""The lean learner update: one PPO/PG minibatch update with hand-derived gradients, no autograd.

Why. A CartPole-sized update (two 64-64 MLPs, 128 rows) is tens of microseconds of arithmetic wrapped in
550–770 profiled operator calls of eager PyTorch forward, autograd and optimiser bookkeeping
(``benchmarks/update_cost.py``). Each costs a few µs of dispatch, so the update costs what its operator count
costs. This module computes the same loss and its exact gradient in under a third of the operator calls:

- forward: one matmul + one activation per layer of the fused ``ActorCritic`` (both trunks in one ``baddbmm``);
- the gradient of the loss with respect to the network's outputs in closed form (below), then the network's
  backward as one matmul per weight, one reduction per bias and one ``tanh_backward``/``threshold_backward`` per
  layer, written straight into views of one flat gradient buffer (``out=``);
- every diagnostic as one masked mean (a matrix–vector product of the stacked per-row terms with the row
  weights), min/max of the ratio in one ``aminmax``, no host sync;
- gradient clipping on the flat buffer (one norm, one scale) and the optimiser's fused Adam kernel called
  directly (``Optimizer.step``'s Python wrapper costs more than the kernel here).

The math, per real row i with weight w_i = m_i / Σm (masked means), ρ_i = exp(log π_θ(a_i|s_i) − log π_old):

    L = Σ_i w_i ℓ_i  −  c_e Σ_i w_i H_i  +  c_v · ½ Σ_i w_i (V_i − G_i)²

    ∂L/∂ log π_i = w_i · g_i,  g_i = −Â_i ρ_i [ρ_i Â_i ≤ clip(ρ_i)Â_i] (Clip), −Â_i ρ_i (Importance), −Â_i (Reinforce)
    categorical, logits z:  ∂ log π(a)/∂z = onehot(a) − p,   ∂(−H)/∂z = p ⊙ (log p + H)
    Gaussian, mean μ, log σ: ∂ log π/∂μ = (a − μ)/σ²,  ∂ log π/∂ log σ = z² − 1 (z = (a − μ)/σ),  ∂H/∂ log σ = 1
    value: ∂/∂V_i = c_v w_i (V_i − G_i)   (clipped form: the branch torch.maximum takes, 0 where the clamp is active)

Scope: what ``unsupported`` accepts — ``ActorCritic`` (tanh or relu, any depth, shared or separate trunks,
with or without a value head, categorical or Gaussian head) with the ``Clip``, ``Importance`` or ``Reinforce``
surrogate aggregated by token mean or episode sum, optional value clipping and advantage normalisation. Everything else
(KL penalty, GRPO/GSPO, other aggregations, CNN/transformer policies, per-group clipping, ``learner.compile``)
uses the autograd update, which is the reference this one is tested against
(``tests/unit/test_lean_update.py``: loss, every gradient and every diagnostic, to float32 rounding).

Pure torch: no Lightning, Hydra or gymnasium here.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.optim import optimizer as optim_module

from pglab.rollout.datamodule import Batch
from pglab.models.mlp import ActorCritic, CategoricalHead
from pglab.core.surrogates import Clip, Importance, Reinforce, Surrogate

__all__ = ["LeanUpdate", "unsupported", "fused_adam_step", "GRADIENT_MODES"]

GRADIENT_MODES = ("auto", "lean", "autograd")
_SURROGATES = {Clip: "clip", Importance: "importance", Reinforce: "reinforce"}
# the derivative of each activation from its output h: tanh' = 1 − h², relu' = [h > 0]
_ACTIVATION_BACKWARD = {"tanh": torch.ops.aten.tanh_backward,
                        "relu": lambda grad, out: torch.ops.aten.threshold_backward(grad, out, 0)}


def unsupported(policy, surrogate: Surrogate, *, clip_per_group: bool = False, compile: bool = False) -> str | None:
    """Why the lean update cannot run this configuration (None: it can)."""
    if type(policy) is not ActorCritic:
        return f"the policy is a {type(policy).__name__}, not the MLP ActorCritic"
    if policy.activation not in _ACTIVATION_BACKWARD:
        return f"model.activation={policy.activation} (the lean update derives tanh and relu)"
    if type(surrogate) not in _SURROGATES:
        return f"the {type(surrogate).__name__} surrogate (the lean update derives clip, importance and reinforce)"
    if surrogate.aggregation not in ("token_mean", "episode_sum"):
        return f"aggregation={surrogate.aggregation} (the lean update derives token_mean and episode_sum)"
    if surrogate.needs_reference:
        return "a surrogate with a reference policy"
    if clip_per_group:
        return "learner.clip_per_group=true"
    if compile:
        return "learner.compile=true"
    return None


class LeanUpdate:
    """Loss, diagnostics and gradient of one minibatch for an ``ActorCritic`` (see the module docstring).

    ``__call__(batch, prepared)`` writes the gradient into ``self.flat_grad`` (every parameter's ``.grad`` is a
    view of it) and returns the loss [] and the update's raw diagnostics; ``stats`` turns a list of those into the
    means named by ``self.keys`` [K]. ``prepare`` computes the data-only constants of several minibatches at once.
    All parameters must require gradients (the policy's are never frozen in pglab).
    """

    def __init__(self, policy: ActorCritic, surrogate: Surrogate, *, vf_coef: float, ent_coef: float,
                 value_clip: float | None, normalize_advantages: bool) -> None:
        reason = unsupported(policy, surrogate)
        if reason is not None:
            raise ValueError(f"the lean update does not cover {reason}")
        self.policy, self.kind = policy, _SURROGATES[type(surrogate)]
        self.eps_low = getattr(surrogate, "eps_low", 0.0)
        self.eps_high = getattr(surrogate, "eps_high", 0.0)
        self.vf_coef, self.ent_coef = float(vf_coef), float(ent_coef)
        self.value_clip, self.normalize = value_clip, normalize_advantages
        self.episode_sum = surrogate.aggregation == "episode_sum"
        self.discrete = isinstance(policy.head, CategoricalHead)
        self.activation_backward = _ACTIVATION_BACKWARD[policy.activation]
        self.has_value, self.stacked, self.width = policy.has_value, policy.stacked, policy.out_width

        # diagnostics: the rows stacked for one masked mean, then scaled (signs, the ½ of the value loss)
        self.keys = ["policy_loss", "entropy", "approx_kl_k1", "approx_kl", "ratio_mean"]
        scale = [1.0, -1.0, -1.0, 1.0, 1.0]  # rows: ℓ, −H, log ρ, k3, ρ
        if self.kind == "clip":
            self.keys.append("clip_fraction")
            scale.append(1.0)
        if self.has_value:
            self.keys.append("value_loss")
            scale.append(0.5)
        self.keys += ["ratio_min", "ratio_max"]
        param = next(policy.parameters())
        self.scale = torch.tensor(scale, dtype=param.dtype, device=param.device)
        # L = ℓ̄ + c_e·(−H)‾ + c_v·½(V−G)²‾ as a dot product with the first rows' means (ℓ, −H, …, (V−G)²)
        self.loss_weights = torch.zeros_like(self.scale)
        self.loss_weights[0], self.loss_weights[1] = 1.0, self.ent_coef
        if self.has_value:
            self.loss_weights[-1] = 0.5 * self.vf_coef
        self.approx_kl_row = 3  # of the unscaled means ``__call__`` returns (k3 needs no scaling)
        self._bind_gradients()

    def _bind_gradients(self) -> None:
        """One flat gradient buffer; each parameter's ``.grad`` is a view of it (clipping and the optimiser
        see ordinary per-parameter gradients; the clip norm is one reduction over the flat buffer)."""
        params = [p for p in self.policy.parameters() if p.requires_grad]
        self.params = params
        self.flat_grad = torch.zeros(sum(p.numel() for p in params), dtype=params[0].dtype, device=params[0].device)
        views, offset = [], 0
        for p in params:
            views.append(self.flat_grad[offset: offset + p.numel()].view_as(p))
            offset += p.numel()
        self.grads = views
        self.rebind()
        by_param = {id(p): g for p, g in zip(params, views, strict=True)}
        policy = self.policy
        self.grad_w = [by_param[id(layer.weight)] for layer in policy.trunk] + [by_param[id(policy.out.weight)]]
        self.grad_b = [by_param[id(layer.bias)] for layer in policy.trunk] + [by_param[id(policy.out.bias)]]
        log_std = getattr(policy.head, "log_std", None)
        self.grad_log_std = by_param.get(id(log_std)) if log_std is not None else None

    def rebind(self) -> None:
        """Point every ``.grad`` at its view again (after something replaced or cleared it)."""
        for p, g in zip(self.params, self.grads, strict=True):
            if p.grad is not g:
                p.grad = g

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

    @torch.inference_mode()  # ~10% cheaper per call than no_grad (no version counters or view tracking)
    def __call__(self, batch: Batch, prepared: tuple | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Loss [] and diagnostics (masked means [K−2] unscaled — see ``stats`` — and the ratio's (min, max)) of
        one minibatch; its gradient is written into ``flat_grad``. ``prepared``: its entry of ``prepare``."""
        self.rebind()
        policy, stacked = self.policy, self.stacked
        obs = batch.obs
        weight, advantages, neg_adv_w, real, surrogate_scale = \
            prepared if prepared is not None else self.prepare([batch])[0]

        # -- forward: inputs of every layer kept for the backward
        x = obs.expand(2, *obs.shape) if stacked else obs
        inputs = []
        activation = torch.tanh_ if policy.activation == "tanh" else torch.relu_
        for layer in policy.trunk:
            inputs.append(x)
            x = activation(torch.baddbmm(layer.bias, x, layer.weight) if stacked else
                           torch.addmm(layer.bias, x, layer.weight))
        inputs.append(x)
        out = torch.baddbmm(policy.out.bias, x, policy.out.weight) if stacked else \
            torch.addmm(policy.out.bias, x, policy.out.weight)
        if stacked:
            head_out, values = out[0], out[1, :, 0]
        else:
            head_out = out[:, : self.width]
            values = out[:, self.width] if self.has_value else None

        # -- log π(a|s), −H and their derivatives
        if self.discrete:
            actions = batch.actions.long().unsqueeze(1)
            log_probs = torch.log_softmax(head_out, -1)  # [B, n]
            probs = log_probs.exp()
            logp = log_probs.gather(1, actions).squeeze(1)
            neg_entropy = (probs * log_probs).sum(-1)  # [B]
        else:
            log_std = policy.head.log_std  # [d]
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
            if stacked:  # the value block's padding columns get no gradient
                d_out = torch.stack([d_head, torch.nn.functional.pad(d_value.unsqueeze(1), (0, self.width - 1))])
            else:
                d_out = torch.cat([d_head, d_value.unsqueeze(1)], 1)
        else:
            d_out = d_head

        # -- backward through the network, into the flat gradient buffer
        self._backward(d_out, inputs)

        # -- diagnostics: masked means in one product, the ratio's extremes over real rows in one aminmax
        means = torch.mv(torch.stack(rows), weight)
        loss = torch.dot(means, self.loss_weights)
        # padding rows take the mean ratio, which lies within the real rows' [min, max]
        extremes = torch.aminmax(torch.where(real, ratio, means[4]))
        return loss, (means, torch.stack(extremes))

    def stats(self, diagnostics: list[tuple[Tensor, Tensor]]) -> Tensor:
        """The mean over updates of each diagnostic named in ``keys`` [K], from ``__call__``'s second outputs
        (the masked means are scaled here, once: the mean is linear)."""
        means = torch.stack([m for m, _ in diagnostics]).mean(0) * self.scale
        return torch.cat([means, torch.stack([e for _, e in diagnostics]).mean(0)])

    def _backward(self, d_out: Tensor, inputs: list[Tensor]) -> None:
        """d_out [B, out] (or [2, B, out] stacked) → every weight and bias gradient, written in place."""
        policy, stacked = self.policy, self.stacked
        weights = [layer.weight for layer in policy.trunk] + [policy.out.weight]
        grad = d_out
        for depth in range(len(weights) - 1, -1, -1):
            layer_input = inputs[depth]
            if stacked:
                torch.bmm(layer_input.transpose(1, 2), grad, out=self.grad_w[depth])
                torch.sum(grad, 1, keepdim=True, out=self.grad_b[depth])
            else:
                torch.mm(layer_input.t(), grad, out=self.grad_w[depth])
                torch.sum(grad, 0, out=self.grad_b[depth])
            if depth == 0:
                break
            weight_t = weights[depth].transpose(-2, -1)
            grad_input = torch.bmm(grad, weight_t) if stacked else torch.mm(grad, weight_t)
            grad = self.activation_backward(grad_input, layer_input)


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

    ``Optimizer.step``'s Python wrapper (hooks, profiling, grouping by device and dtype) costs ~40 µs, more than
    the kernel for a CartPole-sized network. This calls the same ``torch._fused_adam_`` with the group's settings
    when that is all the step would do (plain Adam, one group, no hooks, state initialised); otherwise it calls
    ``optimizer.step()``. Tested equal to ``optimizer.step()`` (tests/unit/test_lean_update.py)."""
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
