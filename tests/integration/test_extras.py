"""The optional extras work as installed: Optuna with a SQLite study (pglab[optuna]); TensorBoard logging."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from pglab.run.train import run


@pytest.mark.skipif(importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None,
                    reason="Optuna sweeper is an optional extra: pip install 'pglab[optuna]'")
def test_optuna_sweep_with_sqlite_storage(tmp_path):
    # optuna 2.10 (what hydra-optuna-sweeper pins) with SQLAlchemy 2 fails here with an AssertionError
    import optuna

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    proc = subprocess.run(
        [sys.executable, "-m", "pglab.run.train", "-m", "hparams_search=ppo_optuna", "hydra.sweeper.n_trials=2",
         f"hydra.sweeper.storage={url}", "total_env_steps=256", "env.num_envs=2", "collector.num_steps=64",
         "trainer.enable_progress_bar=false", f"hydra.sweep.dir={tmp_path / 'multirun'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = optuna.load_study(study_name="ppo_cartpole", storage=url)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 2
    assert "learner.lr" in study.best_params


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                    reason="TensorBoard is an optional extra: pip install 'pglab[tensorboard]'")
def test_tensorboard_logger_writes_events(make_cfg, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = make_cfg("logger=tensorboard", "total_env_steps=128", "env.num_envs=2", "collector.num_steps=32",
                   "eval.enabled=false", "checkpoint.enabled=false")
    _, code = run(cfg)
    assert code == 0
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events, f"no TensorBoard events file under {tmp_path}"
    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    tags = accumulator.Tags()["scalars"]
    assert "train/policy_loss" in tags and "rollout/episode_return" in tags, tags
    # the x-axis is env steps (pglab logs every metric at step=env_steps)
    steps = [e.step for e in accumulator.Scalars("train/policy_loss")]
    assert steps and steps[-1] >= 128
