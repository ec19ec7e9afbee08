"""Issue 18, findings 2 and 3: a killed run keeps its work, and a run never writes into another run's folder.

A real training subprocess is SIGKILLed (no handler can run: the OOM killer, a lost node) at a fixed epoch by a
callback given on its command line, so the kill lands at the same point every time. It is resumed into its own
folder, and its CSV is compared row by row with an uninterrupted run of the same configuration.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pglab.run.checkpoints import load_checkpoint

ENV = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
ENV.update(WANDB_MODE="offline", WANDB_SILENT="true")
BASE = ["logger=csv", "trainer.enable_progress_bar=false", "env.num_envs=2", "collector.num_steps=32",
        "learner.epochs=1", "learner.num_minibatches=2", "checkpoint.every_n_epochs=4", "total_env_steps=900"]
KILL_EPOCH = 10  # killed after 10 epochs: the last periodic checkpoint is the one after epoch 8
WALL_CLOCK = ("perf/", "time")  # columns that measure the machine, not the run


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
                    for logger in trainer.loggers:  # what the CSV logger's 10-s timer would have written
                        logger.save()
                    os.kill(os.getpid(), signal.SIGKILL)
    """))
    return {**ENV, "PYTHONPATH": str(lib)}


def _train(env, *args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pglab.run.train", *BASE, *args], env=env, capture_output=True,
                          text=True, timeout=300, cwd=cwd)


def _rows(out: Path) -> list[dict]:
    with open(out / "csv" / "metrics.csv", newline="") as file:
        return [{k: v for k, v in row.items() if not k.startswith(WALL_CLOCK)} for row in csv.DictReader(file)]


@pytest.mark.parametrize("evaluate", [False, True], ids=["eval_off", "eval_on"])
def test_sigkilled_run_resumes_and_its_csv_matches_an_uninterrupted_run(evaluate, tmp_path, killer):
    extra = ["eval.enabled=true", "eval.every_n_epochs=3", "eval.episodes=2", "eval.num_envs=2"] if evaluate \
        else ["eval.enabled=false"]
    reference = tmp_path / "reference"
    proc = _train(ENV, *extra, f"hydra.run.dir={reference}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]

    out = tmp_path / "killed"
    proc = _train(killer, *extra, f"hydra.run.dir={out}",
                  f"+callbacks.kill={{_target_:killer.KillAt,epoch:{KILL_EPOCH}}}", cwd=tmp_path)
    assert proc.returncode == -9, proc.stderr[-2000:]
    last = out / "checkpoints" / "last.ckpt"
    assert last.is_file(), "a SIGKILLed run left no checkpoint"
    ckpt = load_checkpoint(last)
    assert ckpt["epoch"] == 7  # written at the end of epoch 8 (0-based 7): the periodic schedule, not eval's
    saved = int(ckpt["state_dict"]["env_steps"])
    assert not list(out.glob("checkpoints/*.tmp"))
    killed_rows = _rows(out)
    assert max(float(r["step"]) for r in killed_rows) > saved  # rows the checkpoint does not hold were on disk

    proc = _train(ENV, *extra, f"ckpt_path={last}", f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "dropped" in proc.stdout and "logged after the checkpoint" in proc.stdout
    resumed, expected = _rows(out), _rows(reference)
    # up to the checkpoint, the resumed folder's CSV is the uninterrupted run's, row for row
    assert [r for r in resumed if float(r["step"]) <= saved] == [r for r in expected if float(r["step"]) <= saved]
    # after it the run continues: env steps never go backwards, no row is duplicated, the budget is reached
    steps = [float(r["step"]) for r in resumed]
    assert steps == sorted(steps)
    train_steps = [float(r["step"]) for r in resumed if r.get("train/lr")]
    assert len(train_steps) == len(set(train_steps))
    assert steps[-1] >= 900 and min(s for s in steps if s > saved) > saved
    assert set(resumed[0]) == set(expected[0])  # the same columns


def test_last_ckpt_is_periodic_with_eval_off_and_replaced_atomically(tmp_path, killer):
    out = tmp_path / "run"
    proc = _train(killer, "eval.enabled=false", f"hydra.run.dir={out}", "checkpoint.every_n_epochs=2",
                  "+callbacks.kill={_target_:killer.KillAt,epoch:5}", cwd=tmp_path)
    assert proc.returncode == -9
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["last.ckpt"]  # no best-epoch=*.ckpt
    assert load_checkpoint(out / "checkpoints" / "last.ckpt")["epoch"] == 3


# -- 3. a run never writes into another run's folder ---------------------------------------------------------
def test_a_new_run_in_an_existing_run_folder_is_refused(tmp_path):
    out = tmp_path / "run"
    proc = _train(ENV, "eval.enabled=false", "total_env_steps=128", f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    before = {p: p.read_bytes() for p in [out / ".hydra" / "config.yaml", out / "csv" / "metrics.csv",
                                          out / "checkpoints" / "last.ckpt"]}
    proc = _train(ENV, "eval.enabled=false", "total_env_steps=128", "algo=a2c", f"hydra.run.dir={out}",
                  cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "holds another run" in proc.stderr and "ckpt_path=" in proc.stderr and "Traceback" not in proc.stderr
    assert all(p.read_bytes() == content for p, content in before.items())  # nothing of the old run was touched
    # a checkpoint of a third run does not open the folder either: only resuming the folder's own run does
    other = tmp_path / "other"
    proc = _train(ENV, "eval.enabled=false", "total_env_steps=128", f"hydra.run.dir={other}", cwd=tmp_path)
    assert proc.returncode == 0
    proc = _train(ENV, "eval.enabled=false", "total_env_steps=256", f"ckpt_path={other}/checkpoints/last.ckpt",
                  f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 2 and "holds another run" in proc.stderr
    proc = _train(ENV, "eval.enabled=false", "total_env_steps=256", f"ckpt_path={out}/checkpoints/last.ckpt",
                  f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
