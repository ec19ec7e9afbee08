"""The MLP actor-critic: the network a researcher edits, in plain PyTorch.

Two ``nn.Sequential`` trunks (or one shared trunk), a policy head (a linear layer and its distribution,
``pglab.core.distributions``) and a value head. Edit anything here — add a LayerNorm to ``mlp``, change ``forward``
— and that is what trains: the fast paths in ``pglab.accel`` are built from an instance of this class only when
its module tree is exactly ``[Linear, Tanh|ReLU]*n`` + heads, are checked against it numerically before the first
env step, and step aside (with one line saying so) for anything else. Pure torch.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from pglab.core.distributions import make_head, orthogonal_
from pglab.core.types import ActOutput, EvalOutput

__all__ = ["ActorCritic", "mlp", "obs_size", "action_space_spec", "ACTIVATIONS"]

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU}


def mlp(in_dim: int, hidden: tuple[int, ...], activation: str) -> nn.Sequential:
    """A trunk of Linear + activation layers with orthogonal(√2) init. [B, in_dim] → [B, hidden[-1]]."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [orthogonal_(nn.Linear(in_dim, width), math.sqrt(2)), ACTIVATIONS[activation]()]
        in_dim = width
    return nn.Sequential(*layers)


class ActorCritic(nn.Module):
    """Policy π(a|s) and, optionally, a value head V(s).

    Args:
        obs_dim: flattened observation size.
        action_space: ``("discrete", n)`` or ``("continuous", d)`` (see ``action_space_spec``).
        hidden: trunk widths, e.g. (64, 64); () is a linear policy (and linear value).
        activation: tanh | relu | elu | gelu.
        shared: one trunk feeding both heads (docs/theory.md §7) or two separate networks.
        value_head: whether V(s) exists at all (REINFORCE and GRPO need none).
        log_std_init: initial log σ of a Gaussian policy (state-independent).

    Initialisation (CleanRL's): orthogonal √2 trunk layers, 0.01 policy head, 1.0 value head, zero biases.
    """

    def __init__(self, obs_dim: int, action_space: tuple[str, int], hidden: tuple[int, ...] = (64, 64),
                 activation: str = "tanh", shared: bool = False, value_head: bool = True,
                 log_std_init: float = 0.0) -> None:
        super().__init__()
        kind, size = action_space
        hidden = tuple(hidden)
        if any(int(width) < 1 for width in hidden):
            raise ValueError(f"model.hidden widths must be >= 1, got {list(hidden)}")
        self.activation, self.shared, self.has_value = activation, shared, value_head
        self.discrete = kind == "discrete"
        self.policy_trunk = mlp(obs_dim, hidden, activation)
        features = hidden[-1] if hidden else obs_dim
        self.head = make_head(kind, size, features, log_std_init)
        # shared: V(s) reads the policy trunk's features; otherwise a trunk of its own
        self.value_trunk = mlp(obs_dim, hidden, activation) if value_head and not shared else None
        self.value_out = orthogonal_(nn.Linear(features, 1), 1.0) if value_head else None

    @classmethod
    def from_config(cls, observation_space, action_space, hidden=(64, 64), activation: str = "tanh",
                    shared: bool = False, value_head: bool = True, log_std_init: float = 0.0) -> ActorCritic:
        """The network ``conf/model/mlp.yaml`` describes, sized for gymnasium single-env spaces."""
        return cls(obs_size(observation_space), action_space_spec(action_space), hidden=tuple(hidden),
                   activation=activation, shared=shared, value_head=value_head, log_std_init=log_std_init)

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """obs [B, obs_dim] → (policy head output [B, P]: logits or Gaussian means, V(s) [B]; 0 without a value
        head)."""
        features = self.policy_trunk(obs)
        head_out = self.head.linear(features)
        if self.value_out is None:
            return head_out, obs.new_zeros(obs.shape[0])
        value_features = features if self.value_trunk is None else self.value_trunk(obs)
        return head_out, self.value_out(value_features).squeeze(-1)

    def value(self, obs: Tensor) -> Tensor:
        """V(s) [B]; zeros when there is no value head."""
        return self(obs)[1]

    def act(self, obs: Tensor, deterministic: bool = False) -> ActOutput:
        """Sample (or take the mode of) π(·|s) for a batch of observations [N, obs_dim]."""
        head_out, values = self(obs)
        params = self.head.params_from_output(head_out)
        actions = self.head.mode(params) if deterministic else self.head.sample(params)
        return ActOutput(actions, self.head.log_prob(params, actions), values, params)

    def evaluate(self, obs: Tensor, actions: Tensor) -> EvalOutput:
        """log π(a|s), entropy, V(s) and distribution parameters for stored (obs, action) pairs [B]."""
        head_out, values = self(obs)
        params = self.head.params_from_output(head_out)
        return EvalOutput(self.head.log_prob(params, actions), self.head.entropy(params), values, params)

    def kl(self, params_old: Tensor, params_new: Tensor) -> Tensor:
        """Analytic KL(π_old ‖ π_new) per row. [B]"""
        return self.head.kl(params_old, params_new)

    def gradient_groups(self) -> tuple[list[Tensor], list[Tensor]]:
        """The current gradients as (policy, value) lists. A shared trunk's gradient mixes both losses; it is
        counted as the policy's, and the value group is the value head alone."""
        def grads(*modules: nn.Module | None) -> list[Tensor]:
            return [p.grad for m in modules if m is not None for p in m.parameters() if p.grad is not None]

        return grads(self.policy_trunk, self.head), grads(self.value_trunk, self.value_out)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        if f"{prefix}out.weight" in state_dict:
            raise RuntimeError(
                "this checkpoint holds an older pglab network layout (fused blocks 'trunk.*' and 'out.*'), which the "
                "plain ActorCritic (policy_trunk.*, head.linear.*, value_trunk.*, value_out.*) does not read: "
                "retrain with this version, or evaluate it with the pglab version that wrote it")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def action_space_spec(space) -> tuple[str, int]:
    """('discrete', n) for a gymnasium ``Discrete`` space, ('continuous', d) for a 1-D ``Box``; anything else is
    refused naming the space (MultiDiscrete and MultiBinary are not a Discrete or a Box)."""
    from gymnasium import spaces  # here, so that importing the model layer does not import gymnasium

    if isinstance(space, spaces.Discrete):
        if int(space.start) != 0:
            raise ValueError(f"Discrete action space {space} starts at {space.start}: pglab's categorical head "
                             "samples 0..n-1; wrap the env so its actions start at 0")
        return ("discrete", int(space.n))
    if isinstance(space, spaces.Box) and len(space.shape) == 1 and space.dtype.kind == "f":
        return ("continuous", int(space.shape[0]))
    raise ValueError(f"unsupported action space {space}: pglab's policies handle Discrete and 1-D float Box "
                     "actions (for MultiDiscrete or MultiBinary, flatten them into one Discrete with a wrapper)")


def obs_size(space) -> int:
    """Input width of an MLP for a 1-D Box observation space (others are refused with the fix)."""
    shape = getattr(space, "shape", None)
    if shape is None or len(shape) != 1:
        raise ValueError(f"the MLP policy reads 1-D observations, got {space}: set env.flatten_obs=true to flatten "
                         "them (images lose their spatial structure that way)")
    return int(shape[0])

