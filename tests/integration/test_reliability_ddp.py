"""Issue 18, finding 6: an env that fails on one DDP rank only ends every rank, each with one line that names the
failing rank and its error, the kept last.ckpt and the resume command — no rank left waiting in an all-reduce.

A real 2-process CPU run (gloo, Lightning's launcher starts rank 1); the env is a real wrapper that raises at a
fixed step on rank 1 only, after the first periodic checkpoint.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from pglab.run.checkpoints import load_checkpoint

ENV = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
ENV.update(WANDB_MODE="offline", WANDB_SILENT="true")
DDP = ["trainer=ddp", "trainer.devices=2", "logger=csv", "trainer.enable_progress_bar=false", "env.num_envs=2",
       "collector.num_steps=32", "learner.epochs=1", "learner.num_minibatches=2", "eval.enabled=false",
       "env.vectorization=sync", "checkpoint.every_n_epochs=2", "total_env_steps=100000"]


def test_env_failing_on_rank_1_only_ends_both_ranks_with_one_line_each(tmp_path):
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
                if self.steps == self.at_step and os.environ.get("LOCAL_RANK", "0") == str(self.rank):
                    raise RuntimeError(f"the simulator crashed on rank {self.rank}")
                return self.env.step(action)
    """))
    out = tmp_path / "run"
    # each env of rank 1 raises at its 200th step: epoch 7 of 32-step rollouts, after the epoch-6 checkpoint
    proc = subprocess.run([sys.executable, "-m", "pglab.run.train", *DDP, f"hydra.run.dir={out}",
                           "env.wrappers=[{_target_:breaking.BreakOnRank,rank:1,at_step:200}]"],
                          env={**ENV, "PYTHONPATH": str(lib)}, capture_output=True, text=True, timeout=240,
                          cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("pglab: the run failed")]
    # one line from rank 1 (after its traceback), one from rank 0, which was waiting for rank 1's gradients
    assert len(lines) == 2, proc.stderr[-3000:]
    assert "Traceback (most recent call last)" in proc.stderr and "the simulator crashed on rank 1" in proc.stderr
    last = out / "checkpoints" / "last.ckpt"
    saved = int(load_checkpoint(last, trusted=("breaking.BreakOnRank",))["state_dict"]["env_steps"])
    for line in lines:
        assert line.startswith("pglab: the run failed on rank 1: RuntimeError: the simulator crashed on rank 1"), line
        assert f"the last checkpoint is kept: {last} ({saved} env steps)" in line, line
        assert f"ckpt_path={last}" in line and "trainer=ddp" in line and f"hydra.run.dir={out}" in line, line
    assert any("rank 0 ends too" in line for line in lines)
    assert saved > 0 and sorted(p.name for p in (out / "checkpoints").iterdir()) == ["last.ckpt"]
