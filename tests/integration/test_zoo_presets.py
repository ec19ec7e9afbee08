"""The zoo's tuned presets (benchmarks/zoo.py): each composes, trains two tiny rollouts, and says what rl-zoo3 says.

The training check shrinks the rollout (a few steps per env, two minibatches) so every preset costs seconds; the
translation check compares the composed preset, read back as SB3 PPO arguments by the zoo's own translator, with
rl-zoo3's hyperparams/ppo.yml written out by hand below (SB3's defaults filled in where ppo.yml leaves a key out).
Box2D / MuJoCo / Atari presets skip when their extra is missing.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

from pglab.run.train import build

ZOO_PY = Path(__file__).resolve().parents[2] / "benchmarks" / "zoo.py"
NEEDS = {"lunarlander_ppo": "Box2D", "lunarlander_continuous_ppo": "Box2D", "bipedalwalker_ppo": "Box2D",
         "halfcheetah_ppo": "mujoco", "hopper_ppo": "mujoco", "walker2d_ppo": "mujoco", "ant_ppo": "mujoco",
         "pong_ppo": "ale_py"}
PRESETS = ["acrobot_ppo", "mountaincar_ppo", "mountaincar_continuous_ppo", "pendulum_ppo", *NEEDS]

SB3_DEFAULTS = dict(n_steps=2048, batch_size=64, n_epochs=10, gamma=0.99, gae_lambda=0.95, clip_range=0.2,
                    ent_coef=0.0, vf_coef=0.5, max_grad_norm=0.5, learning_rate=3e-4)
# rl-zoo3 hyperparams/ppo.yml (DLR-RM/rl-baselines3-zoo@208b6fd); the MuJoCo entries are its -v4 ones
RL_ZOO = {
    "acrobot_ppo": dict(normalize=True, n_envs=16, n_steps=256, gae_lambda=0.94, gamma=0.99, n_epochs=4, ent_coef=0.0),
    "mountaincar_ppo": dict(normalize=True, n_envs=16, n_steps=16, gae_lambda=0.98, gamma=0.99, n_epochs=4,
                            ent_coef=0.0),
    # batch_size 256 > the 8-row rollout: SB3 takes the whole rollout as one minibatch
    "mountaincar_continuous_ppo": dict(normalize=True, n_envs=1, batch_size=8, n_steps=8, gamma=0.9999,
                                       learning_rate=7.77e-05, ent_coef=0.00429, clip_range=0.1, n_epochs=10,
                                       gae_lambda=0.9, max_grad_norm=5, vf_coef=0.19),
    "lunarlander_ppo": dict(normalize=False, n_envs=16, n_steps=1024, batch_size=64, gae_lambda=0.98, gamma=0.999,
                            n_epochs=4, ent_coef=0.01),
    "lunarlander_continuous_ppo": dict(normalize=False, n_envs=16, n_steps=1024, batch_size=64, gae_lambda=0.98,
                                       gamma=0.999, n_epochs=4, ent_coef=0.01),
    "bipedalwalker_ppo": dict(normalize=True, n_envs=32, n_steps=2048, batch_size=64, gae_lambda=0.95, gamma=0.999,
                              n_epochs=10, ent_coef=0.0, learning_rate=3e-4, clip_range=0.18),
    "halfcheetah_ppo": dict(normalize=True, n_envs=1, batch_size=64, n_steps=512, gamma=0.98, learning_rate=2.0633e-05,
                            ent_coef=0.000401762, clip_range=0.1, n_epochs=20, gae_lambda=0.92, max_grad_norm=0.8,
                            vf_coef=0.58096, net=[256, 256], activation="relu", log_std_init=-2.0),
    "hopper_ppo": dict(normalize=True, n_envs=1, batch_size=32, n_steps=512, gamma=0.999, learning_rate=9.80828e-05,
                       ent_coef=0.00229519, clip_range=0.2, n_epochs=5, gae_lambda=0.99, max_grad_norm=0.7,
                       vf_coef=0.835671, net=[256, 256], activation="relu", log_std_init=-2.0),
    "walker2d_ppo": dict(normalize=True, n_envs=1, batch_size=32, n_steps=512, gamma=0.99, learning_rate=5.05041e-05,
                         ent_coef=0.000585045, clip_range=0.1, n_epochs=20, gae_lambda=0.95, max_grad_norm=1,
                         vf_coef=0.871923),
    "ant_ppo": dict(normalize=True, n_envs=1),
}


@pytest.fixture(scope="module")
def zoo():
    spec = importlib.util.spec_from_file_location("zoo", ZOO_PY)
    module = importlib.util.module_from_spec(spec)
    sys.modules["zoo"] = module  # its dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    yield module
    del sys.modules["zoo"]


def _needs(preset: str) -> None:
    if preset in NEEDS:
        pytest.importorskip(NEEDS[preset])


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_composes_and_trains_two_rollouts(make_cfg, preset):
    _needs(preset)
    cfg = make_cfg(f"experiment={preset}", "collector.num_steps=8", "learner.num_minibatches=2",
                   "learner.epochs=1", "eval.enabled=false", "checkpoint.enabled=false")
    r = build(cfg)
    r.trainer.fit_loop.max_epochs = 2
    r.trainer.fit(r.module, datamodule=r.datamodule)
    assert r.trainer.current_epoch == 2
    # real transitions: gymnasium's next-step autoreset rows (one per finished episode) are not counted
    assert 0 < int(r.module.env_steps) <= 2 * 8 * cfg.env.num_envs
    for key in ("train/policy_loss", "train/value_loss", "train/entropy"):
        assert math.isfinite(float(r.trainer.callback_metrics[key])), key


@pytest.mark.parametrize("preset", list(RL_ZOO))
def test_preset_is_rl_zoo3s_settings(make_cfg, zoo, preset):
    cfg = make_cfg(f"experiment={preset}")
    got = zoo.sb3_settings(cfg)
    want = {**SB3_DEFAULTS, **RL_ZOO[preset]}
    assert got["n_envs"] == want["n_envs"]
    assert (got["normalize"] is not None) == want["normalize"]
    if want["normalize"]:  # rl-zoo3: VecNormalize(gamma=the algorithm's γ), SB3's clip 10 / 10
        assert got["normalize"] == dict(norm_obs=True, norm_reward=True, clip_obs=10.0, clip_reward=10.0,
                                        gamma=want["gamma"])
    ppo = got["ppo"]
    for key in ("n_steps", "batch_size", "n_epochs", "gamma", "gae_lambda", "clip_range", "ent_coef", "vf_coef",
                "max_grad_norm", "learning_rate"):
        assert ppo[key] == pytest.approx(want[key]), key
    assert ppo["anneal_lr"] is False  # ppo.yml gives these a constant learning rate
    assert ppo["policy_kwargs"]["net_arch"]["pi"] == want.get("net", [64, 64])
    assert ppo["policy_kwargs"]["activation"] == want.get("activation", "tanh")
    assert ppo["policy_kwargs"]["log_std_init"] == want.get("log_std_init", 0.0)


def test_sb3_translation_refuses_what_sb3_cannot_run(make_cfg, zoo):
    cfg = make_cfg("experiment=acrobot_ppo", "model.shared=true")
    with pytest.raises(ValueError, match="model.shared"):
        zoo.sb3_settings(cfg)
