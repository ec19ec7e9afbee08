"""The evaluation callback: deterministic episodes on a separate env with frozen normalisation statistics."""

from __future__ import annotations

import builtins
import importlib.util

import numpy as np
import pytest
from gymnasium.wrappers import vector as vw

from pglab.envs.make import find_wrapper
from pglab.run.callbacks import EvalCallback
from pglab.run.checks import ConfigError
from pglab.run.loggers import finish_wandb
from pglab.run.train import build


def test_eval_logs_returns_and_uses_frozen_training_statistics(make_cfg):
    cfg = make_cfg("algo=ppo", "env.num_envs=2", "collector.num_steps=32", "total_env_steps=256",
                   "env.normalize_obs=true", "eval.every_n_epochs=2", "eval.episodes=4", "eval.num_envs=2")
    r = build(cfg)
    callback = next(c for c in r.trainer.callbacks if isinstance(c, EvalCallback))
    seen = []
    original = callback._evaluate

    def spy(trainer, module):
        original(trainer, module)
        train_rms = find_wrapper(trainer.datamodule.envs, vw.NormalizeObservation).obs_rms
        eval_wrapper = find_wrapper(callback.envs, vw.NormalizeObservation)
        seen.append((train_rms.mean.copy(), eval_wrapper.obs_rms.mean.copy(), eval_wrapper.update_running_mean))

    callback._evaluate = spy
    r.trainer.fit(r.module, datamodule=r.datamodule)
    metrics = r.trainer.callback_metrics
    for key in ("eval/return_mean", "eval/return_std", "eval/length_mean"):
        assert key in metrics
    # CartPole gives reward 1 per step: the mean return is the mean length
    assert float(metrics["eval/return_mean"]) == pytest.approx(float(metrics["eval/length_mean"]))
    assert seen, "evaluation never ran"
    for train_mean, eval_mean, updating in seen:
        # evaluation ran with the statistics training had then, and did not move them
        np.testing.assert_array_equal(train_mean, eval_mean)
        assert updating is False


def test_video_without_the_extra_is_refused_at_start_up(make_cfg, monkeypatch):
    real_import = builtins.__import__

    def no_moviepy(name, *args, **kwargs):
        if name == "moviepy" or name.startswith("moviepy."):
            raise ImportError("No module named 'moviepy'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_moviepy)  # as on a machine without the extra
    cfg = make_cfg("eval.video=true")
    with pytest.raises(ConfigError, match=r"pip install 'pglab\[video\]'"):
        build(cfg)


@pytest.mark.skipif(importlib.util.find_spec("moviepy") is None, reason="video is an optional extra")
def test_video_is_recorded_and_logged_to_wandb(make_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = make_cfg("logger=wandb", "env.num_envs=2", "collector.num_steps=32", "total_env_steps=128",
                   "eval.video=true", "eval.episodes=2", "eval.num_envs=1", output_dir=tmp_path)
    r = build(cfg)
    try:
        r.trainer.fit(r.module, datamodule=r.datamodule)
    finally:
        finish_wandb()
    videos = list((tmp_path / "videos").glob("*.mp4"))
    assert videos and all(v.stat().st_size > 1000 for v in videos)
    assert list((tmp_path / "wandb").glob("offline-run-*/files/media/videos/eval/*.mp4"))
