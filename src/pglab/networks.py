"""Policy and value networks: categorical (Discrete) and diagonal-Gaussian (Box) heads, shared or separate trunks.

The distribution math is written out (log-softmax, closed-form Gaussian log-density) rather than going through
``torch.distributions``: argument validation there costs more than the whole MLP forward at small batch,
and the collection hot path calls ``act`` once per environment step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["ActorCritic", "ActOutput", "EvalOutput", "CategoricalHead", "GaussianHead", "FusedActor", "mlp",
           "build_policy"]

_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU}


def mlp(in_dim: int, hidden: tuple[int, ...], activation: str) -> nn.Sequential:
    """A trunk of Linear+activation layers with orthogonal(√2) init. Output width = hidden[-1]."""
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [_orthogonal(nn.Linear(in_dim, width), math.sqrt(2)), _ACTIVATIONS[activation]()]
        in_dim = width
    return nn.Sequential(*layers)


def _orthogonal(layer: nn.Linear, gain: float) -> nn.Linear:
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


class CategoricalHead(nn.Module):
    """Logits over n actions. Distribution parameters = log-probabilities [B, n]."""

    def __init__(self, in_dim: int, n: int) -> None:
        super().__init__()
        self.linear = _orthogonal(nn.Linear(in_dim, n), 0.01)  # near-uniform initial policy
        self.param_dim = n

    def params(self, features: Tensor) -> Tensor:
        return torch.log_softmax(self.linear(features), dim=-1)

    def sample(self, params: Tensor) -> Tensor:
        # Gumbel-max: argmax(log p − log E), E ~ Exp(1), is an exact sample of p and 3× cheaper than multinomial
        return (params - torch.empty_like(params).exponential_().log()).argmax(-1)

    def mode(self, params: Tensor) -> Tensor:
        return params.argmax(-1)

    def log_prob(self, params: Tensor, actions: Tensor) -> Tensor:
        return params.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)

    def entropy(self, params: Tensor) -> Tensor:
        return -(params.exp() * params).sum(-1)

    def kl(self, params_p: Tensor, params_q: Tensor) -> Tensor:
        """KL(p ‖ q) per row. [B]"""
        return (params_p.exp() * (params_p - params_q)).sum(-1)


class GaussianHead(nn.Module):
    """Diagonal Gaussian with a state-independent log-std. Parameters = [mean, log_std] concatenated [B, 2d]."""

    def __init__(self, in_dim: int, dim: int, log_std_init: float = 0.0) -> None:
        super().__init__()
        self.linear = _orthogonal(nn.Linear(in_dim, dim), 0.01)
        self.log_std = nn.Parameter(torch.full((dim,), float(log_std_init)))
        self.dim = dim
        self.param_dim = 2 * dim

    def params(self, features: Tensor) -> Tensor:
        mean = self.linear(features)
        return torch.cat([mean, self.log_std.expand_as(mean)], dim=-1)

    def _split(self, params: Tensor) -> tuple[Tensor, Tensor]:
        return params[..., : self.dim], params[..., self.dim:]

    def sample(self, params: Tensor) -> Tensor:
        mean, log_std = self._split(params)
        return mean + log_std.exp() * torch.randn_like(mean)

    def mode(self, params: Tensor) -> Tensor:
        return self._split(params)[0]

    def log_prob(self, params: Tensor, actions: Tensor) -> Tensor:
        mean, log_std = self._split(params)
        z = (actions - mean) * torch.exp(-log_std)
        return (-0.5 * z**2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    def entropy(self, params: Tensor) -> Tensor:
        _, log_std = self._split(params)
        return (log_std + 0.5 * math.log(2 * math.pi * math.e)).sum(-1)

    def kl(self, params_p: Tensor, params_q: Tensor) -> Tensor:
        mean_p, log_std_p = self._split(params_p)
        mean_q, log_std_q = self._split(params_q)
        var_p, var_q = (2 * log_std_p).exp(), (2 * log_std_q).exp()
        return (log_std_q - log_std_p + (var_p + (mean_p - mean_q) ** 2) / (2 * var_q) - 0.5).sum(-1)


@dataclass
class ActOutput:
    """What collection needs from one policy call; every tensor has leading dim [N]."""

    actions: Tensor
    logp: Tensor
    values: Tensor
    dist_params: Tensor


@dataclass
class EvalOutput:
    logp: Tensor
    entropy: Tensor
    values: Tensor
    dist_params: Tensor


class ActorCritic(nn.Module):
    """Policy π(a|s) and, optionally, a value head V(s).

    Args:
        obs_dim: flattened observation size.
        action_space: ``("discrete", n)`` or ``("continuous", d)``.
        hidden: trunk widths, e.g. (64, 64).
        shared: one trunk feeding both heads (seed PPO §4) or two separate networks.
        value_head: whether V(s) exists at all (REINFORCE and GRPO need none).
    """

    def __init__(self, obs_dim: int, action_space: tuple[str, int], hidden: tuple[int, ...] = (64, 64),
                 activation: str = "tanh", shared: bool = False, value_head: bool = True,
                 log_std_init: float = 0.0) -> None:
        super().__init__()
        kind, size = action_space
        self.shared = shared
        self.has_value = value_head
        self.discrete = kind == "discrete"
        hidden = tuple(hidden)
        self.policy_trunk = mlp(obs_dim, hidden, activation)
        feat = hidden[-1] if hidden else obs_dim
        if kind == "discrete":
            self.head: CategoricalHead | GaussianHead = CategoricalHead(feat, size)
        elif kind == "continuous":
            self.head = GaussianHead(feat, size, log_std_init)
        else:
            raise ValueError(f"action_space kind must be 'discrete' or 'continuous', got {kind!r}")
        self.value_trunk = None if (shared or not value_head) else mlp(obs_dim, hidden, activation)
        self.value_out = _orthogonal(nn.Linear(feat, 1), 1.0) if value_head else None

    @classmethod
    def from_config(cls, observation_space, action_space, hidden=(64, 64), activation: str = "tanh",
                    shared: bool = False, value_head: bool = True, log_std_init: float = 0.0) -> ActorCritic:
        """The network ``conf/model/mlp.yaml`` describes, sized for gymnasium single-env spaces."""
        return cls(obs_size(observation_space), action_space_spec(action_space), hidden=tuple(hidden),
                   activation=activation, shared=shared, value_head=value_head, log_std_init=log_std_init)

    def _features(self, obs: Tensor) -> tuple[Tensor, Tensor | None]:
        policy_features = self.policy_trunk(obs)
        if self.value_out is None:
            return policy_features, None
        value_features = policy_features if self.value_trunk is None else self.value_trunk(obs)
        return policy_features, self.value_out(value_features).squeeze(-1)

    def value(self, obs: Tensor) -> Tensor:
        """V(s) [B]; zeros when there is no value head."""
        if self.value_out is None:
            return obs.new_zeros(obs.shape[0])
        return self._features(obs)[1]

    def act(self, obs: Tensor, deterministic: bool = False) -> ActOutput:
        """Sample (or take the mode of) π(·|s) for a batch of observations [N, obs_dim]."""
        features, values = self._features(obs)
        params = self.head.params(features)
        actions = self.head.mode(params) if deterministic else self.head.sample(params)
        logp = self.head.log_prob(params, actions)
        if values is None:
            values = obs.new_zeros(obs.shape[0])
        return ActOutput(actions, logp, values, params)

    def evaluate(self, obs: Tensor, actions: Tensor) -> EvalOutput:
        """log π(a|s), entropy, V(s) and distribution parameters for stored (obs, action) pairs [B]."""
        features, values = self._features(obs)
        params = self.head.params(features)
        if values is None:
            values = obs.new_zeros(obs.shape[0])
        return EvalOutput(self.head.log_prob(params, actions), self.head.entropy(params), values, params)

    def kl(self, params_old: Tensor, params_new: Tensor) -> Tensor:
        """Analytic KL(π_old ‖ π_new) per row. [B]"""
        return self.head.kl(params_old, params_new)

    @torch.no_grad()
    def fused_actor(self) -> FusedActor:
        """A frozen snapshot of this network for collection: one matmul per layer for policy *and* value.

        Weights do not change while a rollout is collected, so the two trunks and the two heads are fused once
        (block-diagonal per layer) and every env step then costs L matmuls instead of 2L+2 module calls.
        """
        trunks = [self.policy_trunk] + ([self.value_trunk] if self.value_trunk is not None else [])
        layers = []
        linear_groups = [[m for m in trunk if isinstance(m, nn.Linear)] for trunk in trunks]
        activation = next((m for m in self.policy_trunk if not isinstance(m, nn.Linear)), None)
        for depth, group in enumerate(zip(*linear_groups, strict=True)):
            weights = [layer.weight for layer in group]
            # the first layer reads the same observation: stack; deeper layers read their own trunk: block-diag
            weight = torch.cat(weights, 0) if depth == 0 else torch.block_diag(*weights)
            layers.append((weight.t().contiguous(), torch.cat([layer.bias for layer in group])))
        head = self.head.linear
        out_weight, out_bias = head.weight, head.bias
        if self.value_out is not None:
            if self.value_trunk is None:  # shared trunk: both heads read the same features
                out_weight = torch.cat([head.weight, self.value_out.weight], 0)
            else:
                out_weight = torch.block_diag(head.weight, self.value_out.weight)
            out_bias = torch.cat([head.bias, self.value_out.bias])
        layers.append((out_weight.t().contiguous(), out_bias.clone()))
        return FusedActor(layers, activation, self.head, self.value_out is not None)


class FusedActor:
    """Inference-only policy+value function built by ``ActorCritic.fused_actor`` (see there)."""

    def __init__(self, layers: list[tuple[Tensor, Tensor]], activation: nn.Module | None,
                 head: CategoricalHead | GaussianHead, has_value: bool) -> None:
        self.layers, self.activation, self.head, self.has_value = layers, activation, head, has_value
        self.out_dim = head.param_dim if isinstance(head, CategoricalHead) else head.dim
        if isinstance(head, GaussianHead):
            self.log_std = head.log_std.detach().clone()

    def _forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        x = obs
        last = len(self.layers) - 1
        for i, (weight_t, bias) in enumerate(self.layers):
            x = torch.addmm(bias, x, weight_t)
            if i < last and self.activation is not None:
                x = self.activation(x)
        head_out = x[:, : self.out_dim]
        values = x[:, self.out_dim] if self.has_value else obs.new_zeros(obs.shape[0])
        if isinstance(self.head, CategoricalHead):
            params = torch.log_softmax(head_out, dim=-1)
        else:
            params = torch.cat([head_out, self.log_std.expand_as(head_out)], dim=-1)
        return params, values

    def act(self, obs: Tensor, deterministic: bool = False) -> ActOutput:
        params, values = self._forward(obs)
        actions = self.head.mode(params) if deterministic else self.head.sample(params)
        return ActOutput(actions, self.head.log_prob(params, actions), values, params)

    def value(self, obs: Tensor) -> Tensor:
        return self._forward(obs)[1]


def action_space_spec(space) -> tuple[str, int]:
    """('discrete', n) or ('continuous', d) from a gymnasium single-action space."""
    if hasattr(space, "n"):
        return ("discrete", int(space.n))
    if getattr(space, "shape", None) is not None and len(space.shape) == 1:
        return ("continuous", int(space.shape[0]))
    raise ValueError(f"unsupported action space {space}: pglab handles Discrete and 1-D Box actions")


def obs_size(space) -> int:
    return int(np.prod(space.shape))


def build_policy(model_cfg: dict, observation_space, action_space) -> nn.Module:
    """The policy a ``model`` config describes, for training, evaluation, probes and tests alike.

    ``model_cfg["_target_"]`` names a callable ``(observation_space, action_space, **rest)`` returning a network
    with ActorCritic's interface (``act``, ``evaluate``, ``value``, ``kl``, ``fused_actor``, ``head.param_dim``,
    ``has_value``); without one (checkpoints written before models had targets) it is ``ActorCritic.from_config``.
    """
    cfg = {k: v for k, v in dict(model_cfg).items() if k != "_target_"}
    target = dict(model_cfg).get("_target_", "pglab.networks.ActorCritic.from_config")
    from hydra.utils import get_method

    factory = get_method(target)
    return factory(observation_space, action_space, **cfg)
