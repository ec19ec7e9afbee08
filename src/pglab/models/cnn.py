"""Convolutional actor-critic for image observations (``model=cnn``): the Nature-DQN encoder.

Encoder (Mnih et al. 2015, as in CleanRL's ppo_atari): conv 32×8×8 stride 4, conv 64×4×4 stride 2,
conv 64×3×3 stride 1, flatten, linear 512, ReLU after each; orthogonal(√2) init, zero biases. uint8 image
spaces are scaled by 1/255 inside the network (the rollout stores observations as float32 of the raw 0..255
values). Observations are ``[C, H, W]`` (channels first, e.g. a frame stack) or ``[H, W, C]`` (channels last, as
most renderers give them; permuted here); the layout is read from the observation space at construction.

Same interface as ``pglab.models.mlp.ActorCritic`` (``act``, ``evaluate``, ``value``, ``kl``,
``head.param_dim``, ``has_value``); the heads are pglab's CategoricalHead / GaussianHead.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from pglab.core.distributions import make_head
from pglab.core.types import ActOutput, EvalOutput
from pglab.models.mlp import action_space_spec

__all__ = ["CNNActorCritic", "nature_encoder", "image_layout"]

_HINT = "model=cnn reads images [C, H, W] or [H, W, C]; for vector observations use model=mlp"


def _orthogonal(layer: nn.Module, gain: float) -> nn.Module:
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


def image_layout(observation_space, min_size: int = 36) -> tuple[tuple[int, int, int], bool, float]:
    """((C, H, W), channels_last, scale) of an image observation Box; ValueError naming the fix otherwise.

    ``[H, W]`` is one grey channel; ``[H, W, C]`` is recognised by a last axis of 1, 3 or 4 smaller than the first;
    scale is 1/255 for uint8 spaces, else 1. ``min_size``: the smallest side the encoder accepts.
    """
    shape = tuple(getattr(observation_space, "shape", None) or ())
    channels_last = len(shape) == 3 and shape[-1] in (1, 3, 4) and shape[0] > shape[-1]
    if len(shape) == 2:
        chw = (1, *shape)
    elif len(shape) == 3:
        chw = (shape[2], shape[0], shape[1]) if channels_last else shape
    else:
        raise ValueError(f"observation space {observation_space}: {_HINT}")
    if min(chw[1:]) < min_size:
        raise ValueError(f"observation space {observation_space}: the encoder needs images of at least "
                         f"{min_size}×{min_size} pixels (model.encoder=small takes images from 7×7)")
    dtype = getattr(observation_space, "dtype", None)
    scale = 1.0 / 255.0 if dtype is not None and np.dtype(dtype) == np.uint8 else 1.0
    return tuple(int(d) for d in chw), channels_last, scale


class ConvEncoder(nn.Module):
    """[B, C, H, W] images → [B, features]: ReLU convolutions (out_channels, kernel, stride), flatten, linear, ReLU."""

    def __init__(self, in_channels: int, height: int, width: int, layers: tuple[tuple[int, int, int], ...],
                 features: int) -> None:
        super().__init__()
        convs: list[nn.Module] = []
        for out_channels, kernel, stride in layers:
            convs += [_orthogonal(nn.Conv2d(in_channels, out_channels, kernel, stride=stride), math.sqrt(2)),
                      nn.ReLU()]
            in_channels = out_channels
        self.conv = nn.Sequential(*convs, nn.Flatten())
        with torch.no_grad():
            flat = self.conv(torch.zeros(1, convs[0].in_channels, height, width)).shape[1]
        self.fc = nn.Sequential(_orthogonal(nn.Linear(flat, features), math.sqrt(2)), nn.ReLU())
        self.out_dim = features

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.conv(x))


def nature_encoder(in_channels: int, height: int, width: int, features: int = 512) -> ConvEncoder:
    """The Nature-DQN stack: conv 32×8×8/4, 64×4×4/2, 64×3×3/1, linear ``features`` (512)."""
    return ConvEncoder(in_channels, height, width, ((32, 8, 4), (64, 4, 2), (64, 3, 1)), features)


def small_encoder(in_channels: int, height: int, width: int, features: int = 64) -> ConvEncoder:
    """For small test images (≥ 7×7): conv 16×3×3/1, 32×3×3/2, linear ``features``."""
    return ConvEncoder(in_channels, height, width, ((16, 3, 1), (32, 3, 2)), features)


_ENCODERS = {"nature": nature_encoder, "small": small_encoder}


class CNNActorCritic(nn.Module):
    """Image encoder → policy head (categorical or Gaussian) and value head.

    Args:
        image_shape: (C, H, W) the network sees (after any channels-last permutation).
        action_space: ``("discrete", n)`` or ``("continuous", d)``.
        shared: one encoder feeding both heads (default, as CleanRL's ppo_atari) or a second encoder for V.
        value_head: whether V(s) exists at all.
        channels_last: observations arrive as [B, H, W, C] and are permuted to [B, C, H, W].
        scale: multiplies observations first (1/255 for uint8 image spaces).
        encoder: ``nature`` (84×84 Atari frames) or ``small`` (tiny test images).
        features: width of the encoder's output layer (512 for Nature).
    """

    def __init__(self, image_shape: tuple[int, int, int], action_space: tuple[str, int], shared: bool = True,
                 value_head: bool = True, channels_last: bool = False, scale: float = 1.0, encoder: str = "nature",
                 features: int | None = None, log_std_init: float = 0.0) -> None:
        super().__init__()
        if encoder not in _ENCODERS:
            raise ValueError(f"model.encoder must be one of {sorted(_ENCODERS)}, got {encoder!r}")
        kind, size = action_space
        c, h, w = image_shape
        make = _ENCODERS[encoder]
        extra = {} if features is None else {"features": int(features)}
        self.encoder = make(c, h, w, **extra)
        self.value_encoder = make(c, h, w, **extra) if (value_head and not shared) else None
        feat = self.encoder.out_dim
        self.head = make_head(kind, size, feat, log_std_init)
        self.has_value, self.shared = value_head, shared
        self.value_out = _orthogonal(nn.Linear(feat, 1), 1.0) if value_head else None
        self.channels_last, self.scale = channels_last, float(scale)
        self.image_shape = (c, h, w)

    @classmethod
    def from_config(cls, observation_space, action_space, shared: bool = True, value_head: bool = True,
                    encoder: str = "nature", features: int | None = None, log_std_init: float = 0.0
                    ) -> CNNActorCritic:
        """The network ``conf/model/cnn.yaml`` describes, sized from gymnasium single-env spaces."""
        image_shape, channels_last, scale = image_layout(observation_space, 36 if encoder == "nature" else 7)
        return cls(image_shape, action_space_spec(action_space), shared=shared, value_head=value_head,
                   channels_last=channels_last, scale=scale, encoder=encoder, features=features,
                   log_std_init=log_std_init)

    def _images(self, obs: Tensor) -> Tensor:
        """obs [B, *obs_shape] → float images [B, C, H, W], scaled."""
        x = obs.float()
        if x.dim() == 3:  # [B, H, W] grey frames
            x = x.unsqueeze(1)
        elif self.channels_last:
            x = x.permute(0, 3, 1, 2)
        return x * self.scale if self.scale != 1.0 else x

    def _forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """obs → (distribution parameters [B, P], V(s) [B], zeros without a value head)."""
        x = self._images(obs)
        features = self.encoder(x)
        params = self.head.params(features)
        if self.value_out is None:
            return params, obs.new_zeros(obs.shape[0], dtype=torch.float32)
        value_features = features if self.value_encoder is None else self.value_encoder(x)
        return params, self.value_out(value_features).squeeze(-1)

    def value(self, obs: Tensor) -> Tensor:
        """V(s) [B]; zeros when there is no value head."""
        if self.value_out is None:
            return obs.new_zeros(obs.shape[0], dtype=torch.float32)
        x = self._images(obs)
        encoder = self.encoder if self.value_encoder is None else self.value_encoder
        return self.value_out(encoder(x)).squeeze(-1)

    def act(self, obs: Tensor, deterministic: bool = False) -> ActOutput:
        """Sample (or take the mode of) π(·|s) for a batch of images [N, *obs_shape]."""
        params, values = self._forward(obs)
        actions = self.head.mode(params) if deterministic else self.head.sample(params)
        return ActOutput(actions, self.head.log_prob(params, actions), values, params)

    def evaluate(self, obs: Tensor, actions: Tensor) -> EvalOutput:
        """log π(a|s), entropy, V(s) and distribution parameters for stored (obs, action) rows [B]."""
        params, values = self._forward(obs)
        return EvalOutput(self.head.log_prob(params, actions), self.head.entropy(params), values, params)

    def kl(self, params_old: Tensor, params_new: Tensor) -> Tensor:
        """Analytic KL(π_old ‖ π_new) per row. [B]"""
        return self.head.kl(params_old, params_new)
