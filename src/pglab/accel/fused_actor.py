"""The fused collection actor: ``ActorCritic.act`` / ``value`` as one matmul per layer for policy *and* value.

Built per rollout from a reference ``ActorCritic`` whose structure ``mlp_layout`` accepts, as a frozen snapshot of
its current weights. At collection batch sizes (a few envs) one block-diagonal matmul beats two small ones, so the
two trunks are laid out side by side: first layer [obs_dim, 2h] (both trunks read the observation), deeper layers
block-diagonal [2h, 2h'], output [2·feat, P + 1] (policy head block, value head block). With a shared trunk (or no
hidden layer) the output layer concatenates both heads: [feat, P + 1]. The distribution math (log-softmax,
sampling, log-probabilities) is the reference head's own methods. Checked against the reference network before the
first env step (``pglab.accel.verify``). Pure torch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from pglab.accel import activations
from pglab.accel.structure import MLPLayout
from pglab.core.types import ActOutput

__all__ = ["FusedActor", "fused_actor"]

_ACTIVATION_FNS: dict[str, Callable[[Tensor], Tensor]] = {"tanh": activations.tanh, "relu": torch.relu}


class FusedActor:
    """Inference-only policy + value function: ``layers`` are (weight [in, out], bias [out]), the last one the
    output layer [feat, P (+1)]; column P of the output is V(s) when there is a value head."""

    def __init__(self, layers: list[tuple[Tensor, Tensor]], activation: str | None, layout: MLPLayout) -> None:
        self.layers, self.head = layers, layout.head
        self.activation = _ACTIVATION_FNS[activation] if activation is not None else None
        self.has_value = layout.value_out is not None
        self.width = layout.head.linear.out_features  # P

    def _forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        x = obs
        last = len(self.layers) - 1
        for i, (weight, bias) in enumerate(self.layers):
            x = torch.addmm(bias, x, weight)
            if i < last:
                x = self.activation(x)
        params = self.head.params_from_output(x[:, : self.width])
        values = x[:, self.width] if self.has_value else obs.new_zeros(obs.shape[0])
        return params, values

    def act(self, obs: Tensor, deterministic: bool = False) -> ActOutput:
        params, values = self._forward(obs)
        actions = self.head.mode(params) if deterministic else self.head.sample(params)
        return ActOutput(actions, self.head.log_prob(params, actions), values, params)

    def value(self, obs: Tensor) -> Tensor:
        return self._forward(obs)[1]


@torch.no_grad()
def fused_actor(layout: MLPLayout) -> FusedActor:
    """A snapshot of the layout's network for one rollout (copies: later updates do not leak in)."""
    layers: list[tuple[Tensor, Tensor]] = []
    policy, value = layout.policy_linears, layout.value_linears
    head, value_out = layout.head.linear, layout.value_out
    if value is not None:  # two trunks side by side
        for depth, (p, v) in enumerate(zip(policy, value, strict=True)):
            weight = torch.cat([p.weight, v.weight]).t() if depth == 0 else torch.block_diag(p.weight.t(), v.weight.t())
            layers.append((weight.contiguous(), torch.cat([p.bias, v.bias])))
        out = (torch.block_diag(head.weight.t(), value_out.weight.t()), torch.cat([head.bias, value_out.bias]))
    else:  # one trunk; the value head (if any) reads the same features
        layers = [(p.weight.t().contiguous(), p.bias.clone()) for p in policy]
        if value_out is None:
            out = (head.weight.t(), head.bias)
        else:
            out = (torch.cat([head.weight, value_out.weight]).t(), torch.cat([head.bias, value_out.bias]))
    layers.append((out[0].contiguous().clone(), out[1].clone()))
    return FusedActor(layers, layout.activation, layout)
