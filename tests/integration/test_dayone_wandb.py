"""W&B that tells runs apart and plots every metric where the CSV does (a real offline W&B run, read back)."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "run"))
from wandb_log import history_rows, run_config, run_record  # noqa: E402

from pglab.run.train import CONFIG_DIR  # noqa: E402

ENV = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
TINY = ["env.num_envs=2", "collector.num_steps=64", "checkpoint.enabled=false", "trainer.enable_progress_bar=false"]
BOOKKEEPING = {"_step", "_runtime", "_timestamp", "trainer/global_step", "env_steps", "epoch"}


def _csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def test_every_wandb_row_is_at_the_env_step_of_its_csv_row(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "pglab.run.train", *TINY, "total_env_steps=2048",
                           "eval.every_n_epochs=4", "eval.episodes=2", "eval.num_envs=2", f"hydra.run.dir={out}"],
                          env=ENV, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _csv_rows(out / "csv" / "metrics.csv")
    assert rows and all(row["env_steps"] != "" for row in rows), "a CSV row without env_steps"
    assert all(float(row["env_steps"]) == float(row["step"]) for row in rows)
    # (metric, env steps) -> value, from the CSV and from W&B's own transaction log
    from_csv = {(k, float(row["env_steps"])): float(v) for row in rows for k, v in row.items()
                if v != "" and k not in BOOKKEEPING and k != "step"}
    wandb_file = next((out / "wandb").glob("offline-run-*/run-*.wandb"))
    from_wandb = {}
    for row in history_rows(wandb_file):
        assert "env_steps" in row, f"a W&B row without env_steps: {sorted(row)}"
        for key, value in row.items():
            if key not in BOOKKEEPING and isinstance(value, (int, float)):
                from_wandb[(key, float(row["env_steps"]))] = float(value)
    assert set(from_wandb) == set(from_csv)
    for key, value in from_csv.items():
        assert from_wandb[key] == pytest.approx(value, rel=1e-6, nan_ok=True) or \
            (math.isnan(value) and math.isnan(from_wandb[key])), key
    # the callbacks' metrics are among them, at the rollout they describe: eval after the 4th rollout, the running
    # mean of 20 episodes at the same env step as that rollout's own metrics
    evals = sorted(s for k, s in from_csv if k == "eval/return_mean")
    rollouts = sorted(s for k, s in from_csv if k == "rollout/episode_return")
    assert evals and set(evals) <= set(rollouts)
    assert evals[0] == rollouts[3]
    running = {s for k, s in from_csv if k == "rollout/return_mean20"}
    assert running and running <= set(rollouts)
    config = run_config(wandb_file)
    assert config["algo"] == "ppo" and config["experiment"] is None
    assert config["choices"]["estimator"] == "gae" and config["choices"]["env"] == "cartpole"
    run = run_record(wandb_file)
    assert run.run_group.startswith("CartPole-v1-ppo-") and run.display_name == run.run_group + "-seed0"
    assert "total_env_steps=2048" in run.tags and not any(t.startswith(("hydra.", "trainer.")) for t in run.tags)


def _group(*overrides: str) -> str:
    GlobalHydra.instance().clear()
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    try:
        if "wandb" in cfg.logger:
            assert cfg.logger.wandb.group == cfg.run_name
            assert cfg.logger.wandb.name == f"{cfg.run_name}-seed{cfg.seed}"
        return cfg.run_name
    finally:
        GlobalHydra.instance().clear()


def test_groups_differ_by_config_and_not_by_seed():
    base = _group()
    assert base.startswith("CartPole-v1-ppo-")
    assert _group("seed=7") == base
    assert _group("learner.lr=3e-4") != base != _group("learner.lr=1e-4") != _group("learner.lr=3e-4")
    assert _group("trainer.enable_progress_bar=false", "logger=csv") == base  # how a run is watched is not what
    assert _group("total_env_steps=1e5") == _group("total_env_steps=100000")  # one setting, two spellings
    grpo, drgrpo = _group("experiment=reverse_grpo"), _group("experiment=reverse_drgrpo")
    assert grpo.startswith("pglab-Reverse-v0-reverse_grpo-") and drgrpo.startswith("pglab-Reverse-v0-reverse_drgrpo-")
    # the warm start's seed is ${seed}: still one group over seeds
    assert _group("experiment=reverse_grpo", "seed=3") == grpo
    # same preset name, different settings: the digest tells them apart
    assert _group("experiment=reverse_grpo", "baseline.scale=false").rsplit("-", 1)[1] != grpo.rsplit("-", 1)[1]


def test_two_value_lr_sweep_gives_two_wandb_groups(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pglab.run.train", "-m", *TINY, "total_env_steps=128",
                           "eval.enabled=false", "learner.lr=3e-4,1e-4", f"hydra.sweep.dir={tmp_path}"],
                          env=ENV, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = sorted(tmp_path.glob("*/wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 2
    runs = [run_record(f) for f in files]
    assert runs[0].run_group != runs[1].run_group
    lrs = sorted(float(t.split("=")[1]) for r in runs for t in r.tags if t.startswith("learner.lr="))
    assert lrs == [1e-4, 3e-4]
    # each job says, in the sweep's shared log, when it starts and when it ends
    for job in (0, 1):
        lines = [line for line in proc.stdout.splitlines() if line.startswith(f"pglab: job {job} (")]
        assert "learner.lr=" in lines[0] and "): training ppo" in lines[0] and "): finished: " in lines[-1], lines
