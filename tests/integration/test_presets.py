"""Every algo preset trains on CartPole; a continuous-action run on Pendulum."""

from __future__ import annotations

import math

import pytest

from pglab.run.train import build

PRESETS = ["reinforce", "reinforce_rtg", "reinforce_baseline", "a2c", "ppo_kl", "ppo", "grpo", "gspo"]


def _fit_two_epochs(cfg):
    r = build(cfg)
    r.trainer.fit_loop.max_epochs = 2
    r.trainer.fit(r.module, datamodule=r.datamodule)
    return r


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_runs_two_epochs(make_cfg, preset):
    cfg = make_cfg(f"algo={preset}", "env.max_episode_steps=8", "total_env_steps=100000")
    r = _fit_two_epochs(cfg)
    assert r.trainer.current_epoch == 2
    metrics = r.trainer.callback_metrics
    assert int(r.module.env_steps) > 0
    for key in ("train/policy_loss", "train/entropy", "train/approx_kl", "env_steps"):
        assert key in metrics, f"{preset} did not log {key}"
        assert math.isfinite(float(metrics[key]))
    assert "rollout/episode_return" in metrics
    if cfg.model.value_head:
        assert "train/value_loss" in metrics


def test_pendulum_continuous_actions(make_cfg):
    cfg = make_cfg("env=pendulum", "algo=ppo", "collector.num_steps=64", "env.num_envs=4",
                   "total_env_steps=1024")
    r = build(cfg)
    r.trainer.fit(r.module, datamodule=r.datamodule)
    assert int(r.module.env_steps) >= 1024
    assert r.module.policy.discrete is False
    metrics = r.trainer.callback_metrics
    assert math.isfinite(float(metrics["train/value_loss"]))
    # Pendulum ends only by truncation at 200 steps: the 4th rollout (rows 192-255 of each env) completes them
    assert "rollout/episode_return" in metrics
    assert float(metrics["rollout/episode_return"]) < 0  # Pendulum's rewards are all ≤ 0


def test_budget_stops_training(make_cfg):
    cfg = make_cfg("algo=ppo", "env.num_envs=2", "collector.num_steps=16", "total_env_steps=100")
    r = build(cfg)
    r.trainer.fit(r.module, datamodule=r.datamodule)
    # 32 real transitions per epoch at most; stops at the first epoch reaching 100
    assert 100 <= int(r.module.env_steps) < 100 + 32


@pytest.mark.parametrize("experiment", ["pendulum_ppo", "cartpole_ppo_cleanrl", "cartpole_fast"])
def test_experiment_presets_compose_and_run_an_epoch(make_cfg, experiment):
    cfg = make_cfg(f"experiment={experiment}")
    r = build(cfg)
    r.trainer.fit_loop.max_epochs = 1
    r.trainer.fit(r.module, datamodule=r.datamodule)
    assert int(r.module.env_steps) > 0
