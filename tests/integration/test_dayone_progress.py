"""Progress a user sees: a live bar that fits 80 columns in a terminal, plain lines in a log file, a first line
saying what runs and where it writes."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios

from pglab.run.callbacks import format_progress, progress_fields

ENV = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
RUN = [sys.executable, "-m", "pglab.run.train", "total_env_steps=6000", "env.num_envs=4", "collector.num_steps=64",
       "learner.epochs=2", "eval.every_n_epochs=3", "eval.episodes=2", "eval.num_envs=2", "checkpoint.enabled=false",
       "logger=csv"]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
COUNTER = re.compile(r"\b(\d{1,3}(?:,\d{3})*)/6,000 env steps\b")
ETA = re.compile(r"ETA (\d+:\d\d:\d\d|-:--:--)$")  # unknown until a rollout was timed


def test_format_progress_keeps_counter_and_eta_whole_at_any_width():
    fields = progress_fields({"rollout/return_mean20": 472.25, "eval/return_mean": 500.0}, 16720, 0, 3.2)
    for width in (120, 100, 80, 60, 50, 45):
        line = format_progress(width, 16720, 60000, fields, eta=8.6)
        assert len(line) <= width, (width, line)
        assert "16,720/60,000 env steps" in line and line.endswith("ETA 0:00:09"), line
    wide = format_progress(160, 16720, 60000, fields, eta=8.6)
    assert "return(20) 472.2" in wide and "eval 500.0" in wide and "steps/s" in wide and "━" in wide
    # the least important fields go first: at 80 columns the return outlives the speed and the elapsed time
    eighty = format_progress(80, 16720, 60000, fields, eta=8.6)
    assert "472.2" in eighty and "elapsed" not in eighty


def _pty_run(args, columns=80):
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {**ENV, "COLUMNS": str(columns), "LINES": "24", "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(args, stdin=terminal, stdout=terminal, stderr=terminal, env=env, close_fds=True)
    os.close(terminal)
    chunks = []
    while True:
        try:
            data = os.read(controller, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(controller)
    assert proc.wait(timeout=300) == 0, b"".join(chunks).decode(errors="replace")[-3000:]
    return b"".join(chunks).decode(errors="replace")


def test_bar_fits_80_columns_with_the_full_counter_and_eta(tmp_path):
    text = _pty_run([*RUN, f"hydra.run.dir={tmp_path / 'run'}"])
    screens = [ANSI.sub("", s).rstrip() for s in re.split(r"[\r\n]", text)]
    bars = [s for s in screens if s.startswith("pglab ") and "env steps" in s]
    assert bars, text[-2000:]
    for line in bars:
        assert len(line) <= 80, line
        assert COUNTER.search(line) and ETA.search(line), line
    assert any("6,000/6,000 env steps" in line for line in bars)
    assert any(re.search(r"\b(ret|return\(20\)) \d", line) for line in bars), bars[-3:]
    messages = [s for s in screens if s.startswith("pglab:")]
    assert messages[0].startswith("pglab: training ppo (gae/value/clip) on CartPole-v1 for 6,000 env steps; "
                                  f"outputs in {tmp_path / 'run'}"), messages[:3]


def test_piped_to_a_file_prints_plain_lines_during_the_run(tmp_path):
    log = tmp_path / "slurm.out"
    with open(log, "w") as file:
        proc = subprocess.run([*RUN, "progress_every_s=0.001", f"hydra.run.dir={tmp_path / 'run'}"],
                              stdout=file, stderr=subprocess.STDOUT, env=ENV, timeout=300)
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert "\r" not in text and "\x1b" not in text and "━" not in text
    lines = text.splitlines()
    assert lines[0].startswith("pglab: training ppo"), lines[:3]
    progress = [line for line in lines if COUNTER.search(line)]
    # one line at each rollout's start after the first (every 0.001 s), and one at the end
    assert len(progress) >= 10, progress
    steps = [int(COUNTER.search(line).group(1).replace(",", "")) for line in progress]
    assert steps == sorted(steps) and steps[-1] == 6000 and steps[0] < 6000
    for line in progress:
        assert re.search(r"\d+ steps/s · elapsed \d+:\d\d:\d\d · ETA \d+:\d\d:\d\d$", line), line
    assert any("return(20)" in line for line in progress) and any("eval " in line for line in progress)
    assert lines.index(progress[0]) < next(i for i, line in enumerate(lines) if "finished:" in line)
