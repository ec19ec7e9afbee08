"""Issue 18, finding 9: multi-node DDP tried on one machine, the way a cluster starts it (CPU, gloo).

Two processes, one per "node", each started by hand as a cluster's launcher would: with Lightning's environment
variables (``MASTER_ADDR``, ``MASTER_PORT``, ``NODE_RANK``, ``WORLD_SIZE``; Lightning's ``LightningEnvironment``), and
with the ``SLURM_*`` variables of a 2-node × 1-task allocation (Lightning's ``SLURMEnvironment``; no ``srun`` needed).
Each node gets its own output folder, as two nodes resolving ``${now:...}`` would: only global rank 0 may write
checkpoints and logs, so node 1's folder must stay empty of them. Both then resume from rank 0's checkpoint (a shared
filesystem). On a real cluster: ``hydra/launcher=slurm_ddp trainer=ddp trainer.accelerator=gpu trainer.devices=G
trainer.num_nodes=M`` (README, "Multi-node").
"""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from pglab.run.checkpoints import load_checkpoint

ENV = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
ENV.update(WANDB_MODE="offline", WANDB_SILENT="true")
TWO_NODES = ["trainer=ddp", "trainer.devices=1", "trainer.num_nodes=2", "logger=csv",
             "trainer.enable_progress_bar=false", "env.num_envs=4", "collector.num_steps=32", "learner.epochs=1",
             "learner.num_minibatches=2", "eval.enabled=false", "checkpoint.every_n_epochs=2"]
ROLLOUT = 4 * 32  # one rank's rows per epoch


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(tmp_path: Path, node_env, *args) -> list[subprocess.CompletedProcess]:
    """Both nodes' processes at once (each blocks in the rendezvous until the other joins)."""
    port = _free_port()
    procs = []
    for node in (0, 1):
        env = {**ENV, **node_env(node, port)}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "pglab.run.train", *TWO_NODES, *args, f"hydra.run.dir={tmp_path / f'node{node}'}"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path))
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


def _lightning_env(node: int, port: int) -> dict:
    return {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "NODE_RANK": str(node), "WORLD_SIZE": "2"}


def _slurm_env(node: int, port: int) -> dict:
    return {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "2", "SLURM_PROCID": str(node),
            "SLURM_LOCALID": "0", "SLURM_NODEID": str(node), "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "pglab",
            "SLURM_NODELIST": "127.0.0.1", "MASTER_PORT": str(port)}


def _check_two_node_run(tmp_path: Path, procs, budget: int) -> dict:
    for proc in procs:
        assert proc.returncode == 0, proc.stderr[-3000:]
    node0, node1 = tmp_path / "node0", tmp_path / "node1"
    ckpt = load_checkpoint(node0 / "checkpoints" / "last.ckpt")
    # global rank 0 alone writes checkpoints and logs; node 1 only has Hydra's record of its command line
    written = sorted(str(p.relative_to(node1)) for p in node1.rglob("*") if p.is_file())
    assert all(name.startswith(".hydra/") for name in written), written
    # seeded by global rank: two RNG streams and two DataModule states, and they differ
    assert len(ckpt["pglab"]["rng_per_rank"]) == 2 and len(ckpt["OnPolicyDataModule"]["per_rank"]) == 2
    assert not torch.equal(ckpt["pglab"]["rng_per_rank"][0]["torch"], ckpt["pglab"]["rng_per_rank"][1]["torch"])
    # env steps are global: an epoch adds both nodes' rollouts (more than one rank's, at most two)
    with open(node0 / "csv" / "metrics.csv", newline="") as file:
        steps = [float(row["step"]) for row in csv.DictReader(file) if row.get("train/lr")]
    gaps = [b - a for a, b in zip(steps, steps[1:], strict=False)]
    assert all(0 < gap <= 2 * ROLLOUT for gap in gaps) and max(gaps) > ROLLOUT
    assert int(ckpt["state_dict"]["env_steps"]) == int(steps[-1]) >= budget
    assert "last mean episode return" in procs[0].stdout and "last mean episode return" not in procs[1].stdout
    return ckpt


def test_two_nodes_by_lightning_environment_variables_train_and_resume(tmp_path):
    first = _check_two_node_run(tmp_path, _launch(tmp_path, _lightning_env, "total_env_steps=600"), 600)
    last = tmp_path / "node0" / "checkpoints" / "last.ckpt"
    resumed = _check_two_node_run(tmp_path, _launch(tmp_path, _lightning_env, f"ckpt_path={last}",
                                                    "total_env_steps=1000"), 1000)
    assert resumed["epoch"] > first["epoch"] and resumed["pglab"]["updates"] > first["pglab"]["updates"]
    # the same checkpoint on one process is announced with what changes
    proc = subprocess.run([sys.executable, "-m", "pglab.run.train", f"ckpt_path={last}", "total_env_steps=1600",
                           "logger=csv", "eval.enabled=false", "trainer.enable_progress_bar=false",
                           f"hydra.run.dir={tmp_path / 'one'}"], env=ENV, capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trained on 2 process(es) and this run has 1" in proc.stderr and "global batch" in proc.stderr


def test_two_nodes_by_a_simulated_slurm_allocation_train_and_resume(tmp_path):
    first = _check_two_node_run(tmp_path, _launch(tmp_path, _slurm_env, "total_env_steps=600"), 600)
    last = tmp_path / "node0" / "checkpoints" / "last.ckpt"
    resumed = _check_two_node_run(tmp_path, _launch(tmp_path, _slurm_env, f"ckpt_path={last}",
                                                    "total_env_steps=1000"), 1000)
    assert resumed["epoch"] > first["epoch"]
