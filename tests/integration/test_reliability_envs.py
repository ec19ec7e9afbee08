"""Issue 18, finding 4 (and 6's old-API env and string observations): action spaces are dispatched on their type,
and envs pglab cannot drive are refused at start-up, naming the space or the API and the fix, before any rollout."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from pglab.run.checks import ConfigError
from pglab.run.train import build


class _Base(gym.Env):
    observation_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(3, np.float32), {}

    def step(self, action):
        return np.zeros(3, np.float32), 1.0, False, False, {}


class MultiDiscreteEnv(_Base):
    action_space = gym.spaces.MultiDiscrete([3, 2])


class MultiBinaryEnv(_Base):
    action_space = gym.spaces.MultiBinary(4)


class ShiftedDiscreteEnv(_Base):
    action_space = gym.spaces.Discrete(3, start=1)


class MatrixBoxEnv(_Base):
    action_space = gym.spaces.Box(-1.0, 1.0, (2, 2), np.float32)


class OldApiEnv(_Base):
    """gym < 0.26: reset returns the observation alone, step returns (obs, reward, done, info)."""

    def reset(self, *, seed=None, options=None):
        return np.zeros(3, np.float32)

    def step(self, action):
        return np.zeros(3, np.float32), 1.0, False, {}


class TextObsEnv(_Base):
    observation_space = gym.spaces.Text(8)

    def reset(self, *, seed=None, options=None):
        return "hello", {}

    def step(self, action):
        return "world", 1.0, False, False, {}


class StringsInABoxEnv(_Base):
    """Declares a float Box but returns strings (a buggy or text env)."""

    def reset(self, *, seed=None, options=None):
        return np.array(["a", "b", "c"]), {}

    def step(self, action):
        return np.array(["a", "b", "c"]), 1.0, False, False, {}


for _cls in (MultiDiscreteEnv, MultiBinaryEnv, ShiftedDiscreteEnv, MatrixBoxEnv, OldApiEnv, TextObsEnv,
             StringsInABoxEnv, _Base):
    gym.register(id=f"pglabtest/{_cls.__name__.strip('_')}-v0", entry_point=_cls, max_episode_steps=20)

FAST = ["eval.enabled=false", "checkpoint.enabled=false", "env.vectorization=sync", "env.num_envs=2",
        "collector.num_steps=8", "total_env_steps=64"]


@pytest.mark.parametrize("env, needles", [
    ("MultiDiscreteEnv", ["MultiDiscrete([3 2])", "factorised categorical"]),
    ("MultiBinaryEnv", ["MultiBinary(4)", "Bernoulli"]),
    ("ShiftedDiscreteEnv", ["Discrete(3, start=1)", "starts at 1"]),
    ("MatrixBoxEnv", ["(2, 2)", "1-D float Box"]),
    ("OldApiEnv", ["pre-0.26 gym API", "GymV21CompatibilityV0"]),
    ("TextObsEnv", ["Text(", "Box observation"]),
    ("StringsInABoxEnv", ["dtype <U1", "numeric Box"]),
])
def test_unsupported_env_is_refused_at_start_up_naming_it(env, needles, make_cfg):
    with pytest.raises(ConfigError) as err:
        build(make_cfg(f"env.id=pglabtest/{env}-v0", *FAST))
    for needle in needles:
        assert needle in str(err.value), str(err.value)


def test_text_observations_with_flatten_obs_are_refused_too(make_cfg):
    with pytest.raises(ConfigError, match="Text"):
        build(make_cfg("env.id=pglabtest/TextObsEnv-v0", "env.flatten_obs=true", *FAST))


def test_a_conforming_custom_env_trains(make_cfg):
    r = build(make_cfg("env.id=pglabtest/Base-v0", *FAST))
    r.trainer.fit(r.module, datamodule=r.datamodule)
    assert int(r.module.env_steps) >= 64
