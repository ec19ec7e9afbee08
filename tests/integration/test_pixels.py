"""Pixels end to end: model=cnn trains on a tiny image env through the real config; vector obs are refused;
the Atari preset (when ale-py is installed) composes, builds and steps."""

from __future__ import annotations

import os
import subprocess
import sys

import lightning as L
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from pglab.envs.make import EnvConfig, make_vector_env
from pglab.run.train import build

PIXEL = ["env.id=pglab.envs.atari:pglab/PixelMatch-v0", "env.vectorization=sync", "model=cnn", "model.encoder=small",
         "model.features=32", "eval.enabled=false", "checkpoint.enabled=false"]


class _EpisodeReturns(L.Callback):
    """The raw episode returns of every rollout, in order."""

    def __init__(self) -> None:
        self.per_rollout: list[np.ndarray] = []

    def on_train_epoch_end(self, trainer, module) -> None:
        self.per_rollout.append(np.asarray(module.last_rollout.episode_returns, dtype=np.float64))


def test_cnn_learns_the_pixel_env_end_to_end(make_cfg):
    """PPO + model=cnn on PixelMatch, 3×16×16 uint8 (reward 1 per step for naming the lit side; 8-step episodes):
    a policy that does not read the image scores 4 per episode, one that does 8."""
    cfg = make_cfg(*PIXEL, "algo=ppo", "env.num_envs=4", "collector.num_steps=32", "learner.epochs=4",
                   "learner.num_minibatches=2", "learner.lr=1e-3", "total_env_steps=3072", "seed=0")
    r = build(cfg)
    assert type(r.module.policy).__name__ == "CNNActorCritic"
    obs_space = r.datamodule.make_envs().single_observation_space
    assert obs_space.shape == (3, 16, 16) and obs_space.dtype == np.uint8
    record = _EpisodeReturns()
    r.trainer.callbacks.append(record)
    r.trainer.fit(r.module, datamodule=r.datamodule)
    assert r.module.updates > 0 and r.datamodule.total_env_steps >= 3072
    first = np.concatenate(record.per_rollout[:3]).mean()
    last = np.concatenate(record.per_rollout[-3:]).mean()
    assert first < 5.5 and last > 7.0, (first, last)


def test_cnn_with_vector_observations_is_refused_at_start_up(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    proc = subprocess.run([sys.executable, "-m", "pglab.run.train", "model=cnn", "logger=none",
                           f"hydra.run.dir={tmp_path}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "model=cnn reads images [C, H, W] or [H, W, C]; for vector observations use model=mlp" in proc.stderr
    assert "Traceback" not in proc.stderr


def _atari_available() -> None:
    pytest.importorskip("ale_py", reason="ale-py not installed (pip install 'pglab[atari]')")
    pytest.importorskip("cv2", reason="opencv not installed (pip install 'pglab[atari]')")


@pytest.mark.parametrize("episodic_life", [False, True])
def test_atari_preset_steps_with_next_step_autoreset(make_cfg, episodic_life):
    """env=atari on Breakout: [4, 84, 84] uint8 frame stacks; the step after an episode's end is a reset row."""
    _atari_available()
    cfg = make_cfg("env=atari", "model=cnn", "env.num_envs=2", "env.vectorization=sync",
                   f"env.wrappers.0.episodic_life={str(episodic_life).lower()}")
    envs = make_vector_env(EnvConfig(**OmegaConf.to_container(cfg.env, resolve=True)))
    assert envs.single_observation_space.shape == (4, 84, 84)
    assert envs.single_observation_space.dtype == np.uint8
    obs, _ = envs.reset(seed=0)
    rng = np.random.default_rng(0)
    prev_done = np.zeros(2, dtype=bool)
    ends = 0
    for _ in range(600):
        obs, reward, terminated, truncated, info = envs.step(rng.integers(0, 4, size=2))
        assert set(np.unique(reward)) <= {-1.0, 0.0, 1.0}  # sign-clipped
        assert np.all(reward[prev_done] == 0)
        prev_done = terminated | truncated
        ends += int(prev_done.sum())
    assert ends > 0
    envs.close()


def test_atari_ppo_experiment_builds(make_cfg):
    """experiment=atari_ppo composes into CleanRL's settings and builds a Nature CNN on Breakout's frames."""
    _atari_available()
    cfg = make_cfg("experiment=atari_ppo", "env.num_envs=2", "env.vectorization=sync")
    assert (cfg.collector.num_steps, cfg.learner.epochs, cfg.learner.num_minibatches) == (128, 4, 4)
    assert (cfg.learner.lr, cfg.surrogate.eps_low, cfg.learner.ent_coef, cfg.learner.vf_coef) == (2.5e-4, 0.1, 0.01,
                                                                                                     0.5)
    assert (cfg.gamma, cfg.lam, cfg.learner.max_grad_norm, cfg.learner.anneal_lr) == (0.99, 0.95, 0.5, True)
    r = build(cfg)
    policy = r.module.policy
    assert type(policy).__name__ == "CNNActorCritic" and policy.encoder.out_dim == 512
    out = policy.act(torch.zeros(2, 4, 84, 84))
    assert out.dist_params.shape == (2, 4)
    r.datamodule.make_envs().close()
