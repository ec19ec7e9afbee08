"""DDP through Lightning on CPU (gloo): replicas stay identical, counters and metrics are global, resume continues.

Each test launches ``python -m pglab.run.train trainer=ddp trainer.devices=2`` (Lightning's subprocess launcher starts
the second rank); ``pglab.run.callbacks.ReplicaCheck`` all-gathers a checksum of the parameters and normalisation
statistics after every step and fails the run if any rank differs.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
import torch

from pglab.run.checkpoints import load_checkpoint
from pglab.run.checks import ConfigError
from pglab.run.train import build

ENV = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
DDP = ["trainer=ddp", "trainer.devices=2", "logger=csv", "trainer.enable_progress_bar=false", "env.num_envs=4",
       "collector.num_steps=32", "learner.epochs=2", "learner.num_minibatches=2", "learner.minibatches_per_step=1"]


def _ddp(tmp_path, name, *extra, timeout=300):
    out = tmp_path / name
    record = out / "replica.json"
    proc = subprocess.run([sys.executable, "-m", "pglab.run.train", *DDP, *extra, f"hydra.run.dir={out}",
                           f"+callbacks.replica={{_target_:pglab.run.callbacks.ReplicaCheck,record:'{record}'}}"],
                          env=ENV, capture_output=True, text=True, timeout=timeout, cwd=tmp_path)
    return proc, out, record


def test_two_ranks_stay_identical_and_count_globally(tmp_path):
    proc, out, record = _ddp(tmp_path, "a", "total_env_steps=2000", "env.normalize_obs=true",
                             "env.normalize_reward=true", "eval.every_n_epochs=4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    checked = json.loads(record.read_text())
    assert checked["world_size"] == 2 and checked["steps_checked"] == checked["updates"] > 0
    # env steps are global: each epoch adds both ranks' real transitions (at most 2 × 4 × 32 rows per epoch)
    rows = [row for row in csv.DictReader(open(out / "csv" / "metrics.csv")) if row.get("train/lr")]
    steps = [float(row["env_steps"]) for row in rows]
    assert all(0 < b - a <= 2 * 4 * 32 for a, b in zip(steps, steps[1:], strict=False))
    assert max(b - a for a, b in zip(steps, steps[1:], strict=False)) > 4 * 32  # more than one rank's rollout
    assert checked["env_steps"] == int(steps[-1]) >= 2000
    assert any(row.get("eval/return_mean") for row in csv.DictReader(open(out / "csv" / "metrics.csv")))
    # rank 0 alone says which paths run and how the run ended
    assert proc.stdout.count("pglab: collection:") == 1
    assert proc.stdout.count(f"{checked['env_steps']} env steps") == 1
    ckpt = load_checkpoint(out / "checkpoints" / "last.ckpt")
    assert len(ckpt["pglab"]["rng_per_rank"]) == 2
    assert len(ckpt["OnPolicyDataModule"]["per_rank"]) == 2
    assert "obs_rms" in ckpt["OnPolicyDataModule"]
    # the two ranks drew different actions from different env seeds: their RNG streams differ
    assert not torch.equal(ckpt["pglab"]["rng_per_rank"][0]["torch"], ckpt["pglab"]["rng_per_rank"][1]["torch"])


def test_two_rank_run_resumes_with_the_same_counters(tmp_path):
    proc, out, _ = _ddp(tmp_path, "first", "total_env_steps=1200", "eval.enabled=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = load_checkpoint(out / "checkpoints" / "last.ckpt")
    proc, out2, record = _ddp(tmp_path, "resumed", f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}",
                              "total_env_steps=2400", "eval.enabled=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = load_checkpoint(out2 / "checkpoints" / "last.ckpt")
    assert resumed["epoch"] > first["epoch"]
    assert resumed["pglab"]["updates"] > first["pglab"]["updates"]
    assert int(resumed["state_dict"]["env_steps"]) >= 2400 > int(first["state_dict"]["env_steps"]) >= 1200
    rows = [row for row in csv.DictReader(open(out2 / "csv" / "metrics.csv")) if row.get("train/lr")]
    assert float(rows[0]["env_steps"]) > int(first["state_dict"]["env_steps"])  # the x-axis continues
    assert json.loads(record.read_text())["steps_checked"] > 0


def test_strategies_that_cannot_work_are_refused(make_cfg):
    with pytest.raises(ConfigError, match="use trainer=ddp"):
        build(make_cfg("trainer.devices=2", "trainer.strategy=ddp_spawn", "eval.enabled=false"))


def test_slurm_multinode_ddp_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from pglab.run.train import CONFIG_DIR

    def launcher_for(*overrides):
        GlobalHydra.instance().clear()
        with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
            cfg = compose("train", overrides=["hydra/launcher=slurm_ddp", "trainer=ddp", *overrides],
                          return_hydra_config=True)
        GlobalHydra.instance().clear()
        assert cfg.trainer.strategy._target_ == "pglab.run.distributed.GradientAllReduceDDP"
        launcher = cfg.hydra.launcher
        assert launcher._target_.endswith("SlurmLauncher")
        return launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node

    # the allocation follows the trainer: one task per device, GPUs only where the trainer uses them
    assert launcher_for("trainer.accelerator=gpu", "trainer.devices=4", "trainer.num_nodes=2") == (2, 4, 4)
    assert launcher_for("trainer.accelerator=gpu", "trainer.devices=2", "trainer.num_nodes=3") == (3, 2, 2)
    assert launcher_for("trainer.devices=2") == (1, 2, 0)  # CPU DDP: two tasks, no GPU
