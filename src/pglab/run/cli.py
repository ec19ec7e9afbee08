"""The ``pglab-train`` console script: signals are handled from process start.

Importing the trainer takes seconds (torch, Lightning). A SIGTERM or SIGINT in that time would otherwise kill the
process with no word; here it ends the process at once with the one line and exit code (143 / 130) of any stop
before training, since nothing has been done that could be saved. ``pglab.run.train`` replaces these handlers with
its recording ones as soon as it is imported (``python -m pglab.run.train`` installs these first too)."""

from __future__ import annotations

import signal
import sys
import threading


def _stop_before_training(signum, frame) -> None:
    name = signal.Signals(signum).name
    print(f"pglab: stopped by {name} before training started; nothing to save", file=sys.stderr, flush=True)
    raise SystemExit(128 + int(signum))


def install_early_signal_handlers() -> None:
    """SIGTERM/SIGINT end the process with one line until ``pglab.run.train`` installs its own (main thread only)."""
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, _stop_before_training)


def main() -> None:
    install_early_signal_handlers()
    from pglab.run.train import install_signal_handlers
    from pglab.run.train import main as train_main

    install_signal_handlers()
    train_main()
