"""Building a policy from its config, and acting with any policy under no_grad."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pglab.core.types import ActOutput

__all__ = ["build_policy", "InferenceActor", "DEFAULT_MODEL_TARGET"]

DEFAULT_MODEL_TARGET = "pglab.models.mlp.ActorCritic.from_config"


def build_policy(model_cfg: dict, observation_space, action_space) -> nn.Module:
    """The policy a ``model`` config describes, for training, evaluation, probes and tests alike.

    ``model_cfg["_target_"]`` names a callable ``(observation_space, action_space, **rest)`` returning a network
    with ActorCritic's interface (``act``, ``evaluate``, ``value``, ``kl``, ``head.param_dim``, ``has_value``);
    without one it is ``ActorCritic.from_config``.
    """
    cfg = {k: v for k, v in dict(model_cfg).items() if k != "_target_"}
    target = dict(model_cfg).get("_target_", DEFAULT_MODEL_TARGET)
    from hydra.utils import get_method  # here, so that importing the model layer does not import Hydra

    factory = get_method(target)
    return factory(observation_space, action_space, **cfg)


class InferenceActor:
    """``act`` / ``value`` of any policy under ``torch.no_grad``: the reference way to act, and what collection
    uses whenever the fused actor (``pglab.accel.fused_actor``) does not apply."""

    def __init__(self, policy: nn.Module) -> None:
        self.policy, self.head, self.has_value = policy, policy.head, policy.has_value

    @torch.no_grad()
    def act(self, obs: Tensor, deterministic: bool = False) -> ActOutput:
        return self.policy.act(obs, deterministic)

    @torch.no_grad()
    def value(self, obs: Tensor) -> Tensor:
        return self.policy.value(obs)
