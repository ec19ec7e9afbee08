"""Issue 18, finding 5 (the logs of a resumed run): a run SIGKILLed between two checkpoints and resumed into its own
folder logs those env steps again; TensorBoard must show each step once.

The killed run's event file keeps the rows it wrote after its checkpoint (an event file is append-only); the resumed
run's writer is given ``purge_step`` = the checkpoint's env steps + 1, and TensorBoard's own reader
(``EventAccumulator``, what the TensorBoard UI loads) then drops the old events from that step on.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pglab.run.checkpoints import load_checkpoint

pytest.importorskip("tensorboard")

ENV = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
ENV.update(WANDB_MODE="offline", WANDB_SILENT="true")
BASE = ["trainer.enable_progress_bar=false", "env.num_envs=2", "collector.num_steps=32", "learner.epochs=1",
        "learner.num_minibatches=2", "checkpoint.every_n_epochs=4", "total_env_steps=900", "eval.enabled=false"]


@pytest.fixture
def killer(tmp_path) -> dict:
    """A callback module (on PYTHONPATH) that flushes the loggers, then SIGKILLs its own process."""
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "killer.py").write_text(textwrap.dedent("""
        import os, signal
        import lightning as L

        class KillAt(L.Callback):
            def __init__(self, epoch):
                self.epoch = epoch

            def on_train_epoch_end(self, trainer, module):
                if trainer.current_epoch + 1 == self.epoch:
                    for logger in trainer.loggers:  # what the writers' timers would have flushed
                        logger.save()
                    os.kill(os.getpid(), signal.SIGKILL)
    """))
    return {**ENV, "PYTHONPATH": str(lib)}


def _train(env, *args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pglab.run.train", *BASE, *args], env=env, capture_output=True,
                          text=True, timeout=300, cwd=cwd)


def _raw_steps(path: Path, tag: str) -> list[int]:
    """Every step logged under ``tag`` in one event file, read record by record (no purge applied)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    return [int(event.step) for event in EventFileLoader(str(path)).Load()
            if event.HasField("summary") and any(v.tag == tag for v in event.summary.value)]


def _tensorboard(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_tensorboard_shows_each_step_once_after_a_sigkilled_run_resumes(tmp_path, killer):
    out = tmp_path / "run"
    proc = _train(killer, "logger=tensorboard", f"hydra.run.dir={out}",
                  "+callbacks.kill={_target_:killer.KillAt,epoch:10}", cwd=tmp_path)
    assert proc.returncode == -9, proc.stderr[-2000:]
    last = out / "checkpoints" / "last.ckpt"
    saved = int(load_checkpoint(last)["state_dict"]["env_steps"])  # epoch 8's
    tb = out / "tensorboard"
    (first,) = tb.glob("events.out.tfevents.*")
    killed = _raw_steps(first, "train/lr")
    assert max(killed) > saved  # the killed run wrote rows its checkpoint does not hold (epoch 9's)

    proc = _train(ENV, "logger=tensorboard", f"ckpt_path={last}", f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    files = sorted(tb.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
    assert len(files) == 2 and files[0] == first  # the same folder: the killed run's file is still there, whole
    assert _raw_steps(first, "train/lr") == killed
    resumed = _raw_steps(files[1], "train/lr")
    assert resumed[0] > saved and resumed[-1] >= 900

    acc = _tensorboard(tb)
    tags = acc.Tags()["scalars"]
    assert "train/lr" in tags and "rollout/episode_return" in tags
    for tag in tags:
        steps = [e.step for e in acc.Scalars(tag)]
        assert len(steps) == len(set(steps)), f"{tag}: a step appears twice: {sorted(steps)}"
        assert steps == sorted(steps), f"{tag}: steps go backwards: {steps}"
    # what TensorBoard shows: the killed run's rows up to its checkpoint, then the resumed run's; the rows the
    # killed run logged after the checkpoint (a policy the resumed run never had) are gone
    assert [e.step for e in acc.Scalars("train/lr")] == [s for s in killed if s <= saved] + resumed


def test_a_resumed_run_continuing_a_wandb_run_says_the_rows_after_its_checkpoint_remain():
    from pglab.run.loggers import wandb_resume_notice

    wandb = {"_target_": "pglab.run.loggers.wandb_logger", "mode": None}
    csv = {"_target_": "pglab.run.loggers.CSVLogger"}
    notice = wandb_resume_notice([csv, wandb], "abc123", 488)
    assert notice.startswith("pglab: continuing W&B run abc123 at 488 env steps") and "env_steps > 488" in notice
    assert wandb_resume_notice([csv], "abc123", 488) is None  # no W&B logger this time
    assert wandb_resume_notice([csv, {**wandb, "mode": "disabled"}], "abc123", 488) is None
    assert wandb_resume_notice([csv, wandb], None, 488) is None  # the checkpoint's run never had a W&B run


def test_resuming_a_wandb_run_prints_the_notice(tmp_path):
    out = tmp_path / "run"
    proc = _train(ENV, "logger=wandb", "total_env_steps=128", f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = out / "checkpoints" / "last.ckpt"
    ckpt = load_checkpoint(last)
    wandb_id, steps = ckpt["pglab"]["wandb_id"], int(ckpt["state_dict"]["env_steps"])
    assert wandb_id
    proc = _train(ENV, "logger=wandb", "total_env_steps=256", f"ckpt_path={last}", f"hydra.run.dir={out}",
                  cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"pglab: continuing W&B run {wandb_id} at {steps} env steps" in proc.stderr
