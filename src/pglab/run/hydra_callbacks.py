"""Hydra callbacks: a multirun ends with a summary that names every failed job and its error."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

__all__ = ["JobSummary", "mark_failed", "FAILED_MARKER"]

FAILED_MARKER = "FAILED"


def mark_failed(output_dir: str | Path, message: str) -> None:
    """Leave ``<output_dir>/FAILED`` with the error, for the multirun summary (works across launchers)."""
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    (Path(output_dir) / FAILED_MARKER).write_text(message + "\n")


class JobSummary(Callback):
    """Marks failed jobs (in the job's process, whatever the launcher) and, at the end of a multirun, prints how
    many jobs succeeded and, for each failure, its overrides, error and output directory — so one failing job
    neither hides the others' results nor goes unnoticed."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status == JobStatus.FAILED:  # pglab.run.train catches its own failures; this is the backstop
            exc = job_return._return_value
            from hydra.core.hydra_config import HydraConfig

            # the job's output folder, not its working directory (which is the launch folder: hydra.job.chdir=false)
            output_dir = HydraConfig.get().runtime.output_dir if HydraConfig.initialized() else job_return.working_dir
            mark_failed(output_dir, f"{type(exc).__name__}: {exc}")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = sorted(p.parent.parent for p in sweep_dir.glob("*/.hydra/overrides.yaml"))
        failed = [job for job in jobs if (job / FAILED_MARKER).exists()]
        print(f"pglab: multirun finished: {len(jobs) - len(failed)} of {len(jobs)} jobs succeeded ({sweep_dir})",
              file=sys.stderr)
        for job in failed:
            first_line = (job / FAILED_MARKER).read_text().strip().splitlines()[0]
            print(f"pglab: job FAILED: {job.name}\n       {first_line}\n       (details: {job / FAILED_MARKER})",
                  file=sys.stderr)
        if failed:
            sys.exit(1)  # a sweep with failed jobs is not a success, whatever the launcher
