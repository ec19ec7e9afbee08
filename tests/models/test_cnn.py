"""model=cnn: the Nature-DQN encoder's shapes, uint8 scaling, layouts, heads and refusals."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from pglab.models.build import InferenceActor, build_policy
from pglab.models.cnn import CNNActorCritic, image_layout, nature_encoder

ATARI = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)


def test_nature_encoder_maps_4x84x84_to_512():
    enc = nature_encoder(4, 84, 84)
    assert enc(torch.zeros(5, 4, 84, 84)).shape == (5, 512)
    convs = [m for m in enc.conv if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [(32, (8, 8), (4, 4)), (64, (4, 4), (2, 2)),
                                                                          (64, (3, 3), (1, 1))]
    assert enc.fc[0].in_features == 64 * 7 * 7  # 84 → 20 → 9 → 7


def test_interface_and_shapes_discrete():
    policy = build_policy({"_target_": "pglab.models.cnn.CNNActorCritic.from_config"}, ATARI, gym.spaces.Discrete(6))
    obs = torch.randint(0, 256, (3, 4, 84, 84)).float()
    out = policy.act(obs)
    assert out.actions.shape == (3,) and out.logp.shape == (3,) and out.values.shape == (3,)
    assert out.dist_params.shape == (3, policy.head.param_dim) == (3, 6)
    ev = policy.evaluate(obs, out.actions)
    torch.testing.assert_close(ev.logp, out.logp)
    assert ev.entropy.shape == (3,) and policy.value(obs).shape == (3,) and policy.has_value
    assert policy.kl(ev.dist_params, ev.dist_params).abs().max() < 1e-6
    fused = InferenceActor(policy)
    torch.testing.assert_close(fused.value(obs), policy.value(obs).detach())
    assert not fused.act(obs).logp.requires_grad
    # shared trunk by default: one encoder; shared=false adds a second one for V
    assert policy.value_encoder is None
    separate = CNNActorCritic.from_config(ATARI, gym.spaces.Discrete(6), shared=False)
    assert separate.value_encoder is not None


def test_uint8_observations_are_scaled_by_1_over_255():
    policy = CNNActorCritic.from_config(ATARI, gym.spaces.Discrete(2))
    assert policy.scale == pytest.approx(1 / 255)
    raw = torch.randint(0, 256, (2, 4, 84, 84)).float()
    unscaled = CNNActorCritic((4, 84, 84), ("discrete", 2), scale=1.0)
    unscaled.load_state_dict(policy.state_dict())
    torch.testing.assert_close(policy.value(raw), unscaled.value(raw / 255.0))
    float_space = gym.spaces.Box(0.0, 1.0, (4, 84, 84), np.float32)
    assert image_layout(float_space)[2] == 1.0


def test_channels_last_and_grey_layouts():
    hwc = gym.spaces.Box(0, 255, (84, 84, 3), np.uint8)
    assert image_layout(hwc) == ((3, 84, 84), True, 1 / 255)
    policy = CNNActorCritic.from_config(hwc, gym.spaces.Discrete(4))
    img = torch.randint(0, 256, (2, 84, 84, 3)).float()
    chw = CNNActorCritic((3, 84, 84), ("discrete", 4), scale=1 / 255)
    chw.load_state_dict(policy.state_dict())
    torch.testing.assert_close(policy.value(img), chw.value(img.permute(0, 3, 1, 2)))
    grey = gym.spaces.Box(0, 255, (84, 84), np.uint8)
    assert CNNActorCritic.from_config(grey, gym.spaces.Discrete(4)).act(torch.zeros(2, 84, 84)).actions.shape == (2,)


def test_gaussian_head():
    policy = CNNActorCritic.from_config(ATARI, gym.spaces.Box(-1, 1, (3,), np.float32))
    out = policy.act(torch.zeros(2, 4, 84, 84))
    assert out.actions.shape == (2, 3) and policy.head.param_dim == 6


def test_vector_observations_and_small_images_are_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"model=cnn reads images \[C, H, W\] or \[H, W, C\]; for vector "
                                         r"observations use model=mlp"):
        CNNActorCritic.from_config(gym.spaces.Box(-1, 1, (4,), np.float32), gym.spaces.Discrete(2))
    small = gym.spaces.Box(0, 255, (3, 16, 16), np.uint8)
    with pytest.raises(ValueError, match="model.encoder=small"):
        CNNActorCritic.from_config(small, gym.spaces.Discrete(2))
    assert CNNActorCritic.from_config(small, gym.spaces.Discrete(2), encoder="small").encoder.out_dim == 64
    with pytest.raises(ValueError, match="model.encoder must be one of"):
        CNNActorCritic.from_config(ATARI, gym.spaces.Discrete(2), encoder="resnet")
