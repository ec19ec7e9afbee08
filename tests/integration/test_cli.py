"""The real entry point, as a user runs it: refusals before any work, and a tiny training run."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from pglab.run.checks import ConfigError
from pglab.run.train import build


def _run(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    return subprocess.run([sys.executable, "-m", "pglab.run.train", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_conflict_is_refused_with_exit_2_and_no_traceback(tmp_path):
    proc = _run("estimator=gae", "model.value_head=false", f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 2
    assert "estimator=gae bootstraps from V(s)" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_key_and_option_are_refused(tmp_path):
    proc = _run("learner.lrr=0.1", f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode != 0 and "learner.lrr" in proc.stderr
    proc = _run("estimator=gea", f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode != 0 and "Available options" in proc.stderr and "gae" in proc.stderr


def test_tiny_run_with_wandb_offline_prints_sync_command(tmp_path):
    proc = _run("total_env_steps=512", "trainer.enable_progress_bar=false", f"hydra.run.dir={tmp_path}",
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "wandb sync" in proc.stdout
    assert (tmp_path / "csv" / "metrics.csv").exists()
    assert list((tmp_path / "wandb").glob("offline-run-*"))


def test_bad_values_are_refused_before_any_work(tmp_path):
    # one process through the CLI (exit code, no traceback); the other refusals in-process, where they are decided
    proc = _run("ckpt_path=/nonexistent.ckpt", f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "checkpoint not found: /nonexistent.ckpt" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("override, fragment", [("surrogate.eps_low=-0.1", "eps_low must be >= 0"),
                                                ("env.id=CartPole-v9", "env.id='CartPole-v9' is not a registered")])
def test_bad_values_are_refused_by_build(make_cfg, override, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        build(make_cfg(override))
