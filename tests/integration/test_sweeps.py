"""Real Hydra multiruns: W&B offline runs per job, local parallel launcher, submitit, Optuna, failure summary."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest
import yaml

TINY = ["total_env_steps=256", "env.num_envs=2", "collector.num_steps=64", "eval.enabled=false",
        "checkpoint.enabled=false", "trainer.enable_progress_bar=false"]


def _multirun(tmp_path, *overrides: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    proc = subprocess.run([sys.executable, "-m", "pglab.run.train", "-m", *TINY, *overrides,
                           f"hydra.sweep.dir={tmp_path}"], env=env, capture_output=True, text=True, timeout=timeout)
    return proc


def _wandb_config_value(run_dir, key: str):
    """A top-level config value from an offline W&B run file.

    wandb ≥ 0.2x writes offline configs only into its binary transaction log (files/config.yaml appears at
    sync). Config items are protobuf messages {1: key, 16: value_json}: b"\\n" len key b"\\x82\\x01" len json."""
    data = next(run_dir.glob("run-*.wandb")).read_bytes()
    encoded = key.encode()
    match = re.search(re.escape(b"\n" + bytes([len(encoded)]) + encoded + b"\x82\x01") + rb"(.)", data, re.DOTALL)
    assert match, f"{key} not in the W&B run's config"
    start = match.end()
    return json.loads(data[start:start + match.group(1)[0]])


def _job_dirs(tmp_path):
    return sorted(p.parent.parent for p in tmp_path.glob("*/.hydra/overrides.yaml"))


def test_two_job_multirun_gives_two_wandb_runs_with_their_configs(tmp_path):
    proc = _multirun(tmp_path, "seed=3,4", "logger=wandb")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = _job_dirs(tmp_path)
    assert len(jobs) == 2
    seeds, run_ids = [], []
    for job in jobs:
        runs = list((job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, f"{job} should hold exactly one W&B run"
        run_ids.append(runs[0].name.rsplit("-", 1)[-1])
        seeds.append(_wandb_config_value(runs[0], "seed"))
        assert _wandb_config_value(runs[0], "total_env_steps") == 256
        assert (job / "csv" / "metrics.csv").exists()
    assert sorted(seeds) == [3, 4]
    assert len(set(run_ids)) == 2
    assert "2 of 2 jobs succeeded" in proc.stderr


def test_failing_job_is_reported_and_others_still_run(tmp_path):
    proc = _multirun(tmp_path, "lam=1.5,0.9", "logger=csv")
    jobs = _job_dirs(tmp_path)
    assert len(jobs) == 2
    assert "1 of 2 jobs succeeded" in proc.stderr
    assert "lam must lie in [0, 1], got 1.5" in proc.stderr
    ok = [job for job in jobs if not (job / "FAILED").exists()]
    assert len(ok) == 1 and (ok[0] / "csv" / "metrics.csv").exists()


def test_joblib_launcher_runs_jobs_in_parallel_processes(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    proc = _multirun(tmp_path, "seed=0,1", "logger=csv", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [(job / "csv" / "metrics.csv").exists() for job in _job_dirs(tmp_path)] == [True, True]


def test_submitit_local_executor(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    proc = _multirun(tmp_path, "seed=0,1", "logger=csv", "hydra/launcher=submitit_local",
                     "hydra.launcher.timeout_min=5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [(job / "csv" / "metrics.csv").exists() for job in _job_dirs(tmp_path)] == [True, True]


def test_slurm_launcher_config_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose, initialize_config_dir

    from pglab.run.train import CONFIG_DIR

    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.cpus_per_task == 2


@pytest.mark.skipif(importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None,
                    reason="Optuna sweeper is an optional extra: pip install 'pglab[optuna]'")
def test_optuna_search_runs_trials_and_reports_best(tmp_path):
    proc = _multirun(tmp_path, "hparams_search=ppo_optuna", "hydra.sweeper.n_trials=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(_job_dirs(tmp_path)) == 2
    best = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert "best_params" in best and "learner.lr" in best["best_params"]
