"""Policy and value networks: categorical (Discrete) and diagonal-Gaussian (Box) heads, shared or separate trunks.

The distribution math is written out (log-softmax, closed-form Gaussian log-density) rather than going through
``torch.distributions``: argument validation there costs more than the whole MLP forward at small batch,
and the collection hot path calls ``act`` once per environment step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ActorCritic", "ActOutput", "EvalOutput", "CategoricalHead", "GaussianHead", "FusedActor", "mlp",
           "build_policy", "InferenceActor", "make_head"]

_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU}
_ACTIVATION_FNS = {"tanh": torch.tanh, "relu": torch.relu, "elu": F.elu, "gelu": F.gelu}  # the same, as functions


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
        """features [B, in] → log-probabilities [B, n]."""
        return self.params_from_output(self.linear(features))

    def params_from_output(self, logits: Tensor) -> Tensor:
        """logits [B, n] → log-probabilities [B, n]."""
        return torch.log_softmax(logits, dim=-1)

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
        """features [B, in] → [mean, log_std] [B, 2d]."""
        return self.params_from_output(self.linear(features))

    def params_from_output(self, mean: Tensor) -> Tensor:
        """means [B, d] → [mean, log_std] [B, 2d]."""
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


def make_head(kind: str, size: int, in_dim: int, log_std_init: float = 0.0) -> CategoricalHead | GaussianHead:
    """The distribution head for ``action_space_spec``'s (kind, size): categorical over n, or a d-dim Gaussian."""
    if kind == "discrete":
        return CategoricalHead(in_dim, size)
    if kind == "continuous":
        return GaussianHead(in_dim, size, log_std_init)
    raise ValueError(f"action_space kind must be 'discrete' or 'continuous', got {kind!r}")


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


class _Affine(nn.Module):
    """One fused layer: ``weight`` [G, in, out] and ``bias`` [G, 1, out] for G stacked trunks (G = 2), or
    ``weight`` [in, out] and ``bias`` [out] for a single one. Input-major, so the forward is one ``addmm`` /
    ``baddbmm`` with no transpose."""

    def __init__(self, weight: Tensor, bias: Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone().contiguous())
        self.bias = nn.Parameter(bias.detach().clone().contiguous())

    def forward(self, x: Tensor) -> Tensor:
        """x [B, in] → [B, out], or x [G, B, in] → [G, B, out]."""
        if self.weight.dim() == 3:
            return torch.baddbmm(self.bias, x, self.weight)
        return torch.addmm(self.bias, x, self.weight)


def _stack_blocks(blocks: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """nn.Linear-layout blocks (weight [out, in], bias [out]) → an ``_Affine``'s (weight, bias) (see there)."""
    if len(blocks) == 1:
        weight, bias = blocks[0]
        return weight.t(), bias
    return torch.stack([w.t() for w, _ in blocks]), torch.stack([b for _, b in blocks]).unsqueeze(1)


class _PolicyOutputView:
    """``head.linear`` of an ``ActorCritic``: features [B, feat] → policy head output [B, P], read from the fused
    output layer (the policy's block). For inspection and old call sites; the network itself never calls it."""

    def __init__(self, out: _Affine, width: int) -> None:
        self.out, self.width = out, width

    def __call__(self, features: Tensor) -> Tensor:
        weight, bias = self.out.weight, self.out.bias
        if weight.dim() == 3:
            return torch.addmm(bias[0], features, weight[0])
        return torch.addmm(bias[: self.width], features, weight[:, : self.width])


class ActorCritic(nn.Module):
    """Policy π(a|s) and, optionally, a value head V(s), evaluated as one fused network.

    Args:
        obs_dim: flattened observation size.
        action_space: ``("discrete", n)`` or ``("continuous", d)``.
        hidden: trunk widths, e.g. (64, 64); () is a linear policy (and linear value).
        shared: one trunk feeding both heads (docs/theory.md §7) or two separate networks.
        value_head: whether V(s) exists at all (REINFORCE and GRPO need none).

    Layout. With separate trunks the two MLPs run side by side as one: every layer is a stacked weight
    ``trunk.i.weight`` [2, in, out] (block 0 policy, block 1 value) evaluated by one ``baddbmm`` over
    activations [2, B, width], and the output layer ``out.weight`` [2, feat, P] holds the policy head (block 0)
    and the value head (block 1, column 0). The value block's other P−1 columns are padding so that both heads
    are one ``baddbmm`` (~15% cheaper than two ``addmm`` on this CPU): they start at zero and their outputs are
    never read, so their gradient is exactly 0 and any optimiser leaves them at zero. With a shared trunk, no
    value head or no hidden layer there is one trunk (``trunk.i.weight`` [in, out]) and the output layer
    concatenates both heads: ``out.weight`` [feat, P (+1)]. Either way a forward is one matmul and one
    activation per layer plus one output matmul: for 64-64 separate trunks, 0.57× the operator calls of two
    ``nn.Sequential`` trunks forward + backward (``benchmarks/update_cost.py``). P = ``head`` output width
    (n logits, or the d Gaussian means; ``head.log_std`` stays in the head).

    Initialisation is the unfused network's, block by block and in the same random-number order (orthogonal √2
    trunk layers, 0.01 policy head, 1.0 value head, zero biases): a seed gives the weights it gave before fusion.
    State dicts of the unfused layout (``policy_trunk.*``, ``value_trunk.*``, ``head.linear.*``, ``value_out.*``)
    still load (weights only: an optimiser state saved with them does not fit the fused parameters).
    """

    def __init__(self, obs_dim: int, action_space: tuple[str, int], hidden: tuple[int, ...] = (64, 64),
                 activation: str = "tanh", shared: bool = False, value_head: bool = True,
                 log_std_init: float = 0.0) -> None:
        super().__init__()
        kind, size = action_space
        self.has_value = value_head
        self.discrete = kind == "discrete"
        hidden = tuple(hidden)
        # the unfused layers, built (and so initialised) exactly as before fusion, then copied into fused blocks
        policy_trunk = mlp(obs_dim, hidden, activation)
        feat = hidden[-1] if hidden else obs_dim
        self.head = make_head(kind, size, feat, log_std_init)
        value_trunk = None if (shared or not value_head) else mlp(obs_dim, hidden, activation)
        value_out = _orthogonal(nn.Linear(feat, 1), 1.0) if value_head else None

        self.activation = activation
        self._activation = _ACTIVATION_FNS[activation]
        self.out_width = self.head.linear.out_features  # P
        # two stacked trunks only when there are two trunks with layers; else one trunk (or none) and both heads
        # read the same features
        self.stacked = value_trunk is not None and len(hidden) > 0
        trunks = [policy_trunk] + ([value_trunk] if self.stacked else [])
        linears = [[m for m in trunk if isinstance(m, nn.Linear)] for trunk in trunks]
        self.trunk = nn.ModuleList(_Affine(*_stack_blocks([(layer.weight, layer.bias) for layer in group]))
                                   for group in zip(*linears, strict=True))
        head_block = (self.head.linear.weight, self.head.linear.bias)
        if value_out is None:
            out = _stack_blocks([head_block])
        elif self.stacked:
            pad = self.out_width - 1  # the value block is padded to the policy block's width (see the docstring)
            out = _stack_blocks([head_block, (nn.functional.pad(value_out.weight, (0, 0, 0, pad)),
                                              nn.functional.pad(value_out.bias, (0, pad)))])
        else:
            out = (torch.cat([head_block[0], value_out.weight]).t(), torch.cat([head_block[1], value_out.bias]))
        self.out = _Affine(*out)
        # the head keeps the distribution math (and Gaussian log_std); its linear layer now lives in self.out
        del self.head.linear
        self.head.linear = _PolicyOutputView(self.out, self.out_width)

    @classmethod
    def from_config(cls, observation_space, action_space, hidden=(64, 64), activation: str = "tanh",
                    shared: bool = False, value_head: bool = True, log_std_init: float = 0.0) -> ActorCritic:
        """The network ``conf/model/mlp.yaml`` describes, sized for gymnasium single-env spaces."""
        return cls(obs_size(observation_space), action_space_spec(action_space), hidden=tuple(hidden),
                   activation=activation, shared=shared, value_head=value_head, log_std_init=log_std_init)

    def _forward(self, obs: Tensor) -> tuple[Tensor, Tensor | None]:
        """obs [B, obs_dim] → (policy head output [B, P], V(s) [B] or None without a value head)."""
        x = obs.expand(2, *obs.shape) if self.stacked else obs  # a view: both trunks read the same observation
        for layer in self.trunk:
            x = self._activation(layer(x))
        out = self.out(x)
        if self.stacked:
            return out[0], out[1, :, 0]
        if self.has_value:
            return out[:, : self.out_width], out[:, self.out_width]
        return out, None

    def policy_trunk(self, obs: Tensor) -> Tensor:
        """Policy features [B, feat] alone (the policy block of every layer). For inspection, not the hot path."""
        x = obs
        for layer in self.trunk:
            weight, bias = (layer.weight[0], layer.bias[0]) if self.stacked else (layer.weight, layer.bias)
            x = self._activation(torch.addmm(bias, x, weight))
        return x

    def value(self, obs: Tensor) -> Tensor:
        """V(s) [B]; zeros when there is no value head."""
        values = self._forward(obs)[1] if self.has_value else None
        return obs.new_zeros(obs.shape[0]) if values is None else values

    def act(self, obs: Tensor, deterministic: bool = False) -> ActOutput:
        """Sample (or take the mode of) π(·|s) for a batch of observations [N, obs_dim]."""
        head_out, values = self._forward(obs)
        params = self.head.params_from_output(head_out)
        actions = self.head.mode(params) if deterministic else self.head.sample(params)
        logp = self.head.log_prob(params, actions)
        if values is None:
            values = obs.new_zeros(obs.shape[0])
        return ActOutput(actions, logp, values, params)

    def evaluate(self, obs: Tensor, actions: Tensor) -> EvalOutput:
        """log π(a|s), entropy, V(s) and distribution parameters for stored (obs, action) pairs [B]."""
        head_out, values = self._forward(obs)
        params = self.head.params_from_output(head_out)
        if values is None:
            values = obs.new_zeros(obs.shape[0])
        return EvalOutput(self.head.log_prob(params, actions), self.head.entropy(params), values, params)

    def kl(self, params_old: Tensor, params_new: Tensor) -> Tensor:
        """Analytic KL(π_old ‖ π_new) per row. [B]"""
        return self.head.kl(params_old, params_new)

    def gradient_groups(self) -> tuple[list[Tensor], list[Tensor]]:
        """The current gradients split into (policy, value) pieces (views, so scaling them scales the gradient).

        Separate trunks: block 0 of every stacked layer and of the output layer (+ a Gaussian's log_std) is the
        policy's, block 1 the value's. A shared trunk's gradient mixes both losses; it is counted as the policy's,
        and the value group is the value head alone. Without a value head everything is the policy's."""
        policy, value = [], []
        if self.has_value and not self.stacked:
            # one output layer [feat, P+1]: the last column is the value head
            for grad in (self.out.weight.grad, self.out.bias.grad):
                if grad is not None:
                    policy.append(grad[..., : self.out_width])
                    value.append(grad[..., self.out_width:])
            layers = list(self.trunk)
        else:
            layers = [*self.trunk, self.out]
        for layer in layers:
            for grad in (layer.weight.grad, layer.bias.grad):
                if grad is None:
                    continue
                if self.stacked:
                    policy.append(grad[0])
                    value.append(grad[1])
                else:
                    policy.append(grad)
        log_std = getattr(self.head, "log_std", None)
        if log_std is not None and log_std.grad is not None:
            policy.append(log_std.grad)
        return policy, value

    @torch.no_grad()
    def fused_actor(self) -> FusedActor:
        """A frozen snapshot of this network for collection: one ``addmm`` per layer for policy *and* value.

        At collection batch sizes (a few envs) one block-diagonal matmul beats a batched one, so the stacked
        blocks are laid out block-diagonally once per rollout: first layer [obs_dim, 2·h] (both trunks read
        the observation), deeper layers [2·h, 2·h'], output [2·feat, P + 1]. Copies: later updates do not leak in.
        """
        layers = []
        for depth, layer in enumerate(self.trunk):
            weight, bias = layer.weight, layer.bias
            if self.stacked:
                weight = weight.transpose(0, 1).flatten(1) if depth == 0 else torch.block_diag(*weight)
                bias = bias.flatten()
            layers.append((weight.clone().contiguous(), bias.clone()))
        weight, bias = self.out.weight, self.out.bias
        if self.stacked:  # policy block, then the value block's one live column
            weight, bias = torch.block_diag(weight[0], weight[1, :, :1]), torch.cat([bias[0, 0], bias[1, 0, :1]])
        layers.append((weight.clone().contiguous(), bias.clone()))
        return FusedActor(layers, self._activation if self.trunk else None, self.head, self.has_value)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # checkpoints written before fusion: rewrite their keys in place (children read the same dict afterwards)
        if prefix + "head.linear.weight" in state_dict:
            self._convert_unfused(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _convert_unfused(self, state_dict: dict, prefix: str) -> None:
        """Unfused keys → fused ones, when every key this network needs is there (else left for the load's own
        missing/unexpected-key report)."""
        depth = len(self.trunk)
        names = [f"policy_trunk.{2 * i}" for i in range(depth)] + ["head.linear"]
        if self.stacked:
            names += [f"value_trunk.{2 * i}" for i in range(depth)]
        if self.has_value:
            names.append("value_out")
        if not all(f"{prefix}{name}.{p}" in state_dict for name in names for p in ("weight", "bias")):
            return

        def take(name: str) -> tuple[Tensor, Tensor]:
            return state_dict.pop(f"{prefix}{name}.weight"), state_dict.pop(f"{prefix}{name}.bias")

        for i in range(depth):
            blocks = [take(f"policy_trunk.{2 * i}")] + ([take(f"value_trunk.{2 * i}")] if self.stacked else [])
            state_dict[f"{prefix}trunk.{i}.weight"], state_dict[f"{prefix}trunk.{i}.bias"] = _stack_blocks(blocks)
        head_weight, head_bias = take("head.linear")
        if not self.has_value:
            out = _stack_blocks([(head_weight, head_bias)])
        else:
            value_weight, value_bias = take("value_out")
            if self.stacked:
                pad = head_weight.shape[0] - 1
                out = _stack_blocks([(head_weight, head_bias), (nn.functional.pad(value_weight, (0, 0, 0, pad)),
                                                                nn.functional.pad(value_bias, (0, pad)))])
            else:
                out = torch.cat([head_weight, value_weight]).t(), torch.cat([head_bias, value_bias])
        state_dict[f"{prefix}out.weight"], state_dict[f"{prefix}out.bias"] = (t.contiguous() for t in out)


class FusedActor:
    """Inference-only policy+value function built by ``ActorCritic.fused_actor`` (see there).

    ``layers``: (weight [in, out], bias [out]) per layer, the last one the output [feat, P (+1)];
    ``activation``: the trunk's activation function (None without hidden layers).
    """

    def __init__(self, layers: list[tuple[Tensor, Tensor]], activation: Callable[[Tensor], Tensor] | None,
                 head: CategoricalHead | GaussianHead, has_value: bool) -> None:
        self.layers, self.activation, self.head, self.has_value = layers, activation, head, has_value
        self.out_dim = head.param_dim if isinstance(head, CategoricalHead) else head.dim
        if isinstance(head, GaussianHead):
            self.log_std = head.log_std.detach().clone()

    def _forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        x = obs
        last = len(self.layers) - 1
        for i, (weight, bias) in enumerate(self.layers):
            x = torch.addmm(bias, x, weight)
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


class InferenceActor:
    """``act`` / ``value`` of any policy under ``torch.no_grad`` — the FusedActor interface for policies that have
    no fused form (``CNNActorCritic``, ``TransformerPolicy``): their weights do not change during a rollout."""

    def __init__(self, policy: nn.Module) -> None:
        self.policy, self.head, self.has_value = policy, policy.head, policy.has_value

    @torch.no_grad()
    def act(self, obs: Tensor, deterministic: bool = False) -> ActOutput:
        return self.policy.act(obs, deterministic)

    @torch.no_grad()
    def value(self, obs: Tensor) -> Tensor:
        return self.policy.value(obs)


def action_space_spec(space) -> tuple[str, int]:
    """('discrete', n) or ('continuous', d) from a gymnasium single-action space."""
    if hasattr(space, "n"):
        return ("discrete", int(space.n))
    if getattr(space, "shape", None) is not None and len(space.shape) == 1:
        return ("continuous", int(space.shape[0]))
    raise ValueError(f"unsupported action space {space}: pglab handles Discrete and 1-D Box actions")


def obs_size(space) -> int:
    """Input width of an MLP for a 1-D Box observation space (others are refused with the fix)."""
    shape = getattr(space, "shape", None)
    if shape is None or len(shape) != 1:
        raise ValueError(f"the MLP policy reads 1-D observations, got {space}: set env.flatten_obs=true to flatten "
                         "them (images lose their spatial structure that way)")
    return int(shape[0])


def build_policy(model_cfg: dict, observation_space, action_space) -> nn.Module:
    """The policy a ``model`` config describes, for training, evaluation, probes and tests alike.

    ``model_cfg["_target_"]`` names a callable ``(observation_space, action_space, **rest)`` returning a network
    with ActorCritic's interface (``act``, ``evaluate``, ``value``, ``kl``, ``fused_actor``, ``head.param_dim``,
    ``has_value``); without one (checkpoints written before models had targets) it is ``ActorCritic.from_config``.
    """
    cfg = {k: v for k, v in dict(model_cfg).items() if k != "_target_"}
    target = dict(model_cfg).get("_target_", "pglab.models.mlp.ActorCritic.from_config")
    from hydra.utils import get_method

    factory = get_method(target)
    return factory(observation_space, action_space, **cfg)
