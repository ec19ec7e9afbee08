"""Issue 18, finding 5: signals are handled from process start, and the printed resume line continues the same run.

The signal is real and sent by the training process to itself from inside an env wrapper given on its command line
(at env creation, or at a fixed step of the first rollout), so it lands at the same point of the run every time.
"""

from __future__ import annotations

import csv
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pglab.run.checkpoints import load_checkpoint

ENV = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
ENV.update(WANDB_MODE="offline", WANDB_SILENT="true")
BASE = ["logger=csv", "trainer.enable_progress_bar=false", "env.num_envs=2", "env.vectorization=sync",
        "collector.num_steps=64", "learner.epochs=1", "eval.enabled=false", "total_env_steps=1000"]


@pytest.fixture
def signaller(tmp_path) -> dict:
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "signaller.py").write_text(textwrap.dedent("""
        import os
        import gymnasium as gym

        def _send(signum, once):
            # once over every env copy and every process (the resumed run must not be stopped again)
            if not os.path.exists(once):
                open(once, "w").close()
                os.kill(os.getpid(), signum)

        class SignalAt(gym.Wrapper):
            def __init__(self, env, signum, once, at_step=0):
                super().__init__(env)
                self.signum, self.once, self.at_step, self.steps = signum, once, at_step, 0
                if at_step == 0:
                    _send(signum, once)

            def step(self, action):
                self.steps += 1
                if self.steps == self.at_step:
                    _send(self.signum, self.once)
                return self.env.step(action)
    """))
    return {**ENV, "PYTHONPATH": str(lib)}


def _train(env, *args, cwd):
    return subprocess.run([sys.executable, "-m", "pglab.run.train", *BASE, *args], env=env, capture_output=True,
                          text=True, timeout=240, cwd=cwd)


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_in_the_first_rollout_stops_saves_and_the_resume_line_continues_the_run(signum, code, tmp_path,
                                                                                        signaller):
    out = tmp_path / "run"
    wrapper = (f"env.wrappers=[{{_target_:signaller.SignalAt,signum:{int(signum)},at_step:10,"
               f"once:'{tmp_path / 'sent'}'}}]")
    proc = _train(signaller, wrapper, f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == code, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("pglab: stopped")]
    assert len(lines) == 1 and f"stopped by {signal.Signals(signum).name}" in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    last = out / "checkpoints" / "last.ckpt"
    assert load_checkpoint(last, trusted=("signaller.SignalAt",))["pglab"]["updates"] == 0  # stopped before any
    command = lines[0].split("resume: ", 1)[1]
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "pglab.run.train"]
    assert "total_env_steps=1000" in argv and f"hydra.run.dir={out}" in argv and f"ckpt_path={last}" in argv
    assert "logger=csv" in argv and "eval.enabled=false" in argv
    # the printed line, run as printed, continues the same run in the same folder to the same budget
    proc = subprocess.run([sys.executable, *argv[1:]], env=signaller, capture_output=True, text=True, timeout=240,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(out / "csv" / "metrics.csv", newline="") as file:
        steps = [float(row["step"]) for row in csv.DictReader(file)]
    assert steps == sorted(steps) and steps[-1] >= 1000
    assert int(load_checkpoint(last, trusted=("signaller.SignalAt",))["state_dict"]["env_steps"]) >= 1000


def test_signal_while_the_envs_are_built_exits_143_with_one_line(tmp_path, signaller):
    out = tmp_path / "run"
    wrapper = f"env.wrappers=[{{_target_:signaller.SignalAt,signum:{int(signal.SIGTERM)},once:'{tmp_path / 's'}'}}]"
    proc = _train(signaller, wrapper, f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 143, proc.stderr[-2000:]
    assert "pglab: stopped by SIGTERM before training started; nothing to save" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (out / "checkpoints").exists()


def _catches_sigterm(pid: int) -> bool:
    """Whether the process has a handler for SIGTERM (the SigCgt mask of /proc/<pid>/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(mask >> (signal.SIGTERM - 1) & 1)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the handler mask from /proc")
@pytest.mark.parametrize("entry", ["module", "console_script"])
def test_signal_during_the_imports_exits_143_with_one_line(tmp_path, entry):
    """SIGTERM as soon as the process handles it — in the seconds of importing torch and Lightning — is a stop
    before training: one line, exit 143, not a silent death."""
    out = tmp_path / "run"
    code = ("from pglab.run.cli import main; import sys; sys.argv[0] = 'pglab-train'; main()"
            if entry == "console_script" else None)
    args = ["-c", code] if code else ["-m", "pglab.run.train"]
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"} | {"WANDB_MODE": "disabled"}
    proc = subprocess.Popen([sys.executable, *args, "total_env_steps=512", "logger=csv", f"hydra.run.dir={out}"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not _catches_sigterm(proc.pid) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert "libtorch" not in Path(f"/proc/{proc.pid}/maps").read_text()  # still importing: torch not loaded yet
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-2000:]
    assert "pglab: stopped by SIGTERM before training started; nothing to save" in stderr
    assert "Traceback" not in stderr
    assert not (out / "checkpoints").exists()
