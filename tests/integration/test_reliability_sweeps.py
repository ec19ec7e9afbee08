"""Issue 18, findings 3 and 6 for multiruns: a sweep never writes into an earlier sweep's folder, and an Optuna sweep
whose every trial fails ends with pglab's failure summary and exit 1 (not Optuna's "Record does not exist")."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

ENV = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
ENV.update(WANDB_MODE="offline", WANDB_SILENT="true")
TINY = ["total_env_steps=128", "env.num_envs=2", "collector.num_steps=64", "eval.enabled=false",
        "checkpoint.enabled=false", "trainer.enable_progress_bar=false", "logger=csv"]


def _train(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pglab.run.train", *args], env=ENV, capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def test_a_new_sweep_in_an_earlier_sweeps_folder_is_refused(tmp_path):
    sweep = tmp_path / "sweep"
    proc = _train("-m", *TINY, "seed=0,1", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    before = {p: p.read_bytes() for p in sorted(sweep.rglob("*")) if p.is_file()}
    assert any(p.name == "metrics.csv" for p in before)
    proc = _train("-m", *TINY, "seed=5,6", "algo=a2c", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "holds an earlier sweep (2 job folder(s)" in proc.stderr and "Traceback" not in proc.stderr
    assert "leave out hydra.sweep.dir" in proc.stderr
    assert {p: p.read_bytes() for p in sorted(sweep.rglob("*")) if p.is_file()} == before  # nothing touched
    # a folder that exists but holds no sweep (made ahead by a job script) is fine
    empty = tmp_path / "made_ahead"
    empty.mkdir()
    proc = _train("-m", *TINY, "seed=0", f"hydra.sweep.dir={empty}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.skipif(importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None,
                    reason="Optuna sweeper is an optional extra: pip install 'pglab[optuna]'")
@pytest.mark.parametrize("storage", [None, "sqlite"], ids=["in_memory", "sqlite"])
def test_optuna_sweep_whose_trials_all_fail_ends_with_the_summary(storage, tmp_path):
    extra = [f"hydra.sweeper.storage=sqlite:///{tmp_path / 'optuna.db'}"] if storage else []
    # every trial's env id is unknown: each job is refused at start-up, and Optuna gets no value from any
    # (few overrides: each becomes part of the job folder's name, which has a 255-character limit)
    proc = _train("-m", "hparams_search=ppo_optuna", "hydra.sweeper.n_trials=2", "total_env_steps=128", *extra,
                  "env.id=NoSuchEnv-v0", f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Record does not exist" not in proc.stderr
    assert "No trials are completed yet" not in proc.stderr
    assert "pglab: Optuna sweep: none of the 2 trials returned an objective" in proc.stderr
    assert "pglab: multirun finished: 0 of 2 jobs succeeded" in proc.stderr
    assert proc.stderr.count("pglab: job FAILED:") == 2
    # each failure's line in the summary carries its reason, not only "this configuration cannot run:"
    reasons = [line for line in proc.stderr.splitlines() if line.startswith("       ConfigError:")]
    assert len(reasons) == 2 and all("env.id='NoSuchEnv-v0' is not a registered" in r for r in reasons), reasons


def test_job_folder_names_are_capped_so_a_long_sweep_runs():
    from pglab.run.hydra_callbacks import MAX_JOB_DIRNAME, job_dirname

    assert job_dirname(3, "lam=0.9,seed=1") == "3_lam=0.9,seed=1"  # short names: Hydra's own
    assert job_dirname(0, "") == "0"
    long_a, long_b = "x" * 300 + "a", "x" * 300 + "b"
    a, b = job_dirname(12, long_a), job_dirname(12, long_b)
    assert len(a.encode()) == len(b.encode()) == MAX_JOB_DIRNAME and a.startswith("12_xxx")
    assert a != b  # the digest of the whole name tells apart names that share the kept prefix
    assert len(job_dirname(1, "é" * 300).encode()) <= MAX_JOB_DIRNAME  # cut on a character boundary


def test_a_sweep_whose_job_folder_name_would_pass_255_characters_runs(tmp_path):
    # a dozen overrides (each is part of the job folder's name): Hydra's own name failed with "File name too long"
    extra = ["env.normalize_obs=false", "env.normalize_reward=false", "learner.max_grad_norm=0.50000000000001",
             "learner.adam_eps=0.0000100000000000001", "learner.vf_coef=0.50000000000001",
             "learner.lr=0.000250000000000001", "learner.ent_coef=0.0000000000000001", "gamma=0.9900000000001"]
    assert len(",".join(TINY + extra)) > 255
    sweep = tmp_path / "sweep"
    proc = _train("-m", *TINY, *extra, "seed=0", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "File name too long" not in proc.stderr and "1 of 1 jobs succeeded" in proc.stderr
    (job,) = [p.parent.parent for p in sweep.glob("*/.hydra/overrides.yaml")]
    assert job.name.startswith("0_") and len(job.name) <= 200 and (job / "csv" / "metrics.csv").is_file()
