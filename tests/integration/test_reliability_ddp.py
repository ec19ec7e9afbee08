"""Issue 18, finding 6: an env that fails on one DDP rank only ends every rank, each with one line that names the
failing rank and its error, the kept last.ckpt and the resume command — no rank left waiting in an all-reduce.

Real 2-process CPU runs (gloo): one where Lightning's launcher starts rank 1, one with 2 "nodes" started by hand as a
cluster would (``NODE_RANK``; each node its own folder, no Lightning process observer to kill the survivors). The env
is a real wrapper that raises at a fixed step on rank 1 only, after the first periodic checkpoints.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pglab.run.checkpoints import load_checkpoint

ENV = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
ENV.update(WANDB_MODE="offline", WANDB_SILENT="true")
RUN = ["trainer=ddp", "logger=csv", "trainer.enable_progress_bar=false", "env.num_envs=2", "collector.num_steps=32",
       "learner.epochs=1", "learner.num_minibatches=2", "eval.enabled=false", "env.vectorization=sync",
       "checkpoint.every_n_epochs=2", "total_env_steps=100000",
       # each env of rank 1 raises at its 80th step: epoch 3 of 32-step rollouts, after the epoch-2 checkpoint
       "env.wrappers=[{_target_:breaking.BreakOnRank,rank:1,at_step:80}]"]
FAILURE = "the run failed on rank 1: RuntimeError: the simulator crashed on rank 1"


@pytest.fixture
def breaking(tmp_path) -> dict:
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "breaking.py").write_text(textwrap.dedent("""
        import os
        import gymnasium as gym

        class BreakOnRank(gym.Wrapper):
            def __init__(self, env, rank, at_step):
                super().__init__(env)
                self.rank, self.at_step, self.steps = rank, at_step, 0

            def step(self, action):
                self.steps += 1
                rank = os.environ.get("NODE_RANK", "0") if os.environ.get("LOCAL_RANK", "0") == "0" else "1"
                if self.steps == self.at_step and rank == str(self.rank):
                    raise RuntimeError(f"the simulator crashed on rank {self.rank}")
                return self.env.step(action)
    """))
    return {**ENV, "PYTHONPATH": str(lib)}


def _kept(out) -> int:
    last = out / "checkpoints" / "last.ckpt"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["last.ckpt"]
    return int(load_checkpoint(last, trusted=("breaking.BreakOnRank",))["state_dict"]["env_steps"])


def _check_rank_0_line(line: str, out, saved: int) -> None:
    last = out / "checkpoints" / "last.ckpt"
    assert line.startswith(f"pglab: {FAILURE}"), line
    assert f"the last checkpoint is kept: {last} ({saved} env steps)" in line, line
    assert f"ckpt_path={last}" in line and "trainer=ddp" in line and f"hydra.run.dir={out}" in line, line


def test_env_failing_on_rank_1_only_ends_both_ranks_with_one_line_each(tmp_path, breaking):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "pglab.run.train", *RUN, "trainer.devices=2",
                           f"hydra.run.dir={out}"], env=breaking, capture_output=True, text=True, timeout=240,
                          cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("pglab: the run failed")]
    # one line from rank 1 (after its traceback), one from rank 0, which was waiting for rank 1's gradients
    assert len(lines) == 2, proc.stderr[-3000:]
    assert "Traceback (most recent call last)" in proc.stderr and "TCPStore" not in proc.stderr
    saved = _kept(out)
    assert saved > 0
    for line in lines:  # both ranks share the folder here: both name the checkpoint and the command
        _check_rank_0_line(line, out, saved)
    assert any("rank 0 ends too" in line for line in lines)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _two_nodes(tmp_path, env, *args) -> list[tuple[int, str]]:
    """Both nodes' processes, started by hand as a cluster would; (exit code, stderr) of each."""
    port, procs = _free_port(), []
    for node in (0, 1):
        node_env = {**env, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "NODE_RANK": str(node),
                    "WORLD_SIZE": "2"}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "pglab.run.train", *RUN, "trainer.devices=1", "trainer.num_nodes=2", *args,
             f"hydra.run.dir={tmp_path / f'node{node}'}"],
            env=node_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path))
    errs = [proc.communicate(timeout=240)[1] for proc in procs]
    return [(proc.returncode, err) for proc, err in zip(procs, errs, strict=True)]


def _failure_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("pglab: the run failed")]


def test_env_failing_on_node_1_only_ends_both_nodes_with_one_line_each(tmp_path, breaking):
    (code0, err0), (code1, err1) = _two_nodes(tmp_path, breaking)
    assert (code0, code1) == (1, 1), err0[-2000:] + err1[-2000:]
    (node0,), (node1,) = _failure_lines(err0), _failure_lines(err1)
    _check_rank_0_line(node0, tmp_path / "node0", _kept(tmp_path / "node0"))
    assert "rank 0 ends too" in node0
    # node 1 failed: its traceback, then its line; its folder holds no checkpoint, so it points to rank 0's line
    assert "Traceback (most recent call last)" in err1
    assert node1.startswith(f"pglab: {FAILURE}; rank 0 writes the checkpoints"), node1


def test_rank_0_killed_outright_ends_node_1_with_a_line_that_blames_rank_0(tmp_path, breaking):
    lib = Path(breaking["PYTHONPATH"])
    (lib / "killer0.py").write_text(textwrap.dedent("""
        import os, signal
        import lightning as L

        class KillRank0At(L.Callback):
            def __init__(self, epoch):
                self.epoch = epoch

            def on_train_epoch_end(self, trainer, module):
                if trainer.global_rank == 0 and trainer.current_epoch + 1 == self.epoch:
                    os.kill(os.getpid(), signal.SIGKILL)  # the OOM killer, a lost node: no handler runs
    """))
    (code0, _), (code1, err1) = _two_nodes(tmp_path, breaking, "env.wrappers=[]",
                                           "+callbacks.kill={_target_:killer0.KillRank0At,epoch:3}")
    assert (code0, code1) == (-9, 1), err1[-2000:]
    (line,) = _failure_lines(err1)
    assert line.startswith("pglab: the run failed on rank 1, after rank 0 had ended"), line
    assert "rank 0 writes the checkpoints" in line
