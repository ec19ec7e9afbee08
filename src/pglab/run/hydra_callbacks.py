"""Hydra callbacks: a multirun ends with a summary that names every failed job and its error; a run never starts
in a folder that holds another run, nor a multirun in a folder that holds another sweep."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

__all__ = ["JobSummary", "RunFolderGuard", "foreign_run", "earlier_sweep", "started_as_other_rank", "mark_failed",
           "FAILED_MARKER", "job_dirname"]

FAILED_MARKER = "FAILED"
_OPTUNA_PLUGIN = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
# what a pglab run leaves in its folder once it has results: checkpoints, each logger's files (a run refused at
# start-up leaves only .hydra/, worth nothing: a corrected command may reuse its folder)
RUN_MARKERS = ("checkpoints", "csv", "tensorboard", "wandb", "resumed_from.json")


def foreign_run(run_dir: str | Path, ckpt_path: str | None) -> str | None:
    """Why a run may not write into ``run_dir`` (None when it may): the folder holds another run's files, and this
    is not that run being resumed (``ckpt_path`` inside ``run_dir``)."""
    run_dir = Path(run_dir)
    found = [name for name in RUN_MARKERS if (run_dir / name).exists()]
    found += sorted(p.name for p in run_dir.glob("member-*") if p.is_dir())[:1]  # a population's members
    if not found:
        return None
    if ckpt_path is not None and run_dir.resolve() in Path(ckpt_path).resolve().parents:
        return None  # resuming the run that lives there
    last, population = run_dir / "checkpoints" / "last.ckpt", run_dir / "checkpoints" / "population.ckpt"
    if population.is_file():
        resume = (f"to continue that population: ckpt_path={population} hydra.run.dir={run_dir} with its "
                  "population= setting")
    elif last.is_file():
        resume = f"to continue that run: ckpt_path={last} hydra.run.dir={run_dir}"
    else:
        resume = "it has no checkpoint to resume from"
    return (f"{run_dir} holds another run ({', '.join(found)}), and a new run there would overwrite its config and "
            f"checkpoints and mix its metrics: {resume}; to start a new run, leave out hydra.run.dir (each launch "
            "gets a new folder) or choose a folder that does not exist yet")


MAX_JOB_DIRNAME = 200  # bytes: file systems refuse names over 255, and a sweep's override list grows without bound


def job_dirname(num, override_dirname: str) -> str:
    """A multirun job's folder name (``hydra.sweep.subdir``): ``<num>_<overrides>``, cut to ``MAX_JOB_DIRNAME``
    bytes with a digest of the whole name appended when longer (the full overrides are in the job's
    ``.hydra/overrides.yaml``). Hydra's own ``${hydra.job.num}_${hydra.job.override_dirname}`` failed with
    "File name too long" (a traceback, no summary) once a sweep had a dozen overrides: an Optuna trial's five
    parameters and the command line's settings."""
    import hashlib

    name = f"{num}_{override_dirname}" if override_dirname else str(num)
    raw = name.encode()
    if len(raw) <= MAX_JOB_DIRNAME:
        return name
    return raw[:MAX_JOB_DIRNAME - 9].decode(errors="ignore") + "-" + hashlib.sha1(raw).hexdigest()[:8]


if not OmegaConf.has_resolver("pglab.job_dir"):  # conf/train.yaml's hydra.sweep.subdir; Hydra imports this module
    OmegaConf.register_new_resolver("pglab.job_dir", job_dirname)  # (callbacks) before any job folder is named


def mark_failed(output_dir: str | Path, message: str) -> None:
    """Leave ``<output_dir>/FAILED`` with the error, for the multirun summary (works across launchers)."""
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    (Path(output_dir) / FAILED_MARKER).write_text(message + "\n")


# set by Lightning's launcher, torchrun, SLURM, and by hand on a multi-node cluster
RANK_VARIABLES = ("LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "RANK", "SLURM_PROCID")


def started_as_other_rank() -> bool:
    """Whether this process was started as a rank other than global rank 0 (known before Lightning's Trainer
    exists: from the launcher's environment variables)."""
    import os

    return any(os.environ.get(name, "0") != "0" for name in RANK_VARIABLES)


class RunFolderGuard(Callback):
    """Refuses (exit 2, before Hydra writes ``.hydra/`` into it) a single run whose output folder holds another run.

    Hydra creates the folder and overwrites ``.hydra/config.yaml`` when the job starts, so the check runs at
    ``on_run_start``, the last moment the old run is intact. A multirun's jobs get their own numbered folders
    inside its sweep folder; a sweep folder that holds an earlier sweep's jobs is refused at ``on_multirun_start``,
    before any job runs."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if started_as_other_rank():
            return
        from hydra.core.hydra_config import HydraConfig

        HydraConfig.instance().set_config(config)
        problem = earlier_sweep(OmegaConf.select(config, "hydra.sweep.dir"))
        if problem:
            print(f"pglab: refusing to start: {problem}", file=sys.stderr)
            sys.exit(2)

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if started_as_other_rank():
            return  # a DDP worker (Lightning's launcher: in rank 0's folder; another node): rank 0 made this check
        from hydra.core.hydra_config import HydraConfig
        from omegaconf import OmegaConf

        HydraConfig.instance().set_config(config)  # hydra.run.dir may read ${hydra:runtime.choices...}
        run_dir = OmegaConf.select(config, "hydra.run.dir")
        problem = foreign_run(run_dir, OmegaConf.select(config, "ckpt_path", default=None))
        if problem:
            print(f"pglab: refusing to start: {problem}", file=sys.stderr)
            sys.exit(2)


def earlier_sweep(sweep_dir: str | Path) -> str | None:
    """Why a multirun may not write into ``sweep_dir`` (None when it may): it holds an earlier sweep's jobs."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        return None
    jobs = sorted(p.parent.parent.name for p in sweep_dir.glob("*/.hydra/overrides.yaml"))
    if not jobs and not (sweep_dir / "multirun.yaml").exists():
        return None
    shown = ", ".join(jobs[:4]) + (", ..." if len(jobs) > 4 else "")
    listed = f": {shown}" if jobs else ""
    return (f"hydra.sweep.dir={sweep_dir} holds an earlier sweep ({len(jobs)} job folder(s){listed}), and a new sweep"
            " there would write its jobs 0, 1, ... over that sweep's and mix both in its summary: "
            "leave out hydra.sweep.dir (each launch gets a new folder) or choose one that does not exist yet (an "
            "Optuna study with a storage continues from its storage, in any folder)")


class JobSummary(Callback):
    """Marks failed jobs (in the job's process, whatever the launcher) and, at the end of a multirun, prints how
    many jobs succeeded and, for each failure, its overrides, error and output directory — so one failing job
    neither hides the others' results nor goes unnoticed."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        import shutil

        launcher = str(OmegaConf.select(config, "hydra.launcher._target_", default="") or "")
        if launcher.endswith("SlurmLauncher") and shutil.which("sbatch") is None:
            # submitit would fail with a traceback from inside its subprocess call
            print("pglab: refusing to start: hydra/launcher=slurm* submits jobs with sbatch, which is not on this "
                  "machine's PATH: launch from a SLURM login node, or use hydra/launcher=joblib (parallel jobs on "
                  "this machine) or the default launcher", file=sys.stderr)
            sys.exit(2)
        if OmegaConf.select(config, "hydra.sweeper._target_", default=None) == _OPTUNA_PLUGIN:
            # a sweep whose trials all fail ends with this summary, not Optuna's "no best trial" traceback (Hydra
            # instantiates the sweeper right after this callback)
            from pglab.run.sweepers import patch_optuna_sweeper

            patch_optuna_sweeper()

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        # the FAILED marker feeds the multirun summary; a single run reports its own failure and leaves none
        multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
        if job_return.status == JobStatus.FAILED and multirun:  # pglab.run.train catches its own: the backstop
            exc = job_return._return_value

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
            lines = [line for line in (job / FAILED_MARKER).read_text().strip().splitlines() if line.strip()]
            # the error, not a traceback's header: a bare traceback ends with the exception's own line
            first_line = (lines[-1] if lines[0].startswith("Traceback (") else lines[0]) if lines else "(no message)"
            if first_line.endswith(":") and first_line == lines[0] and len(lines) > 1:
                first_line += " " + lines[1].strip()  # "this configuration cannot run:" and its first reason
            print(f"pglab: job FAILED: {job.name}\n       {first_line}\n       (details: {job / FAILED_MARKER})",
                  file=sys.stderr)
        no_trial = "pglab.run.sweepers" in sys.modules and sys.modules["pglab.run.sweepers"].no_completed_trial()
        if failed or no_trial:
            sys.exit(1)  # a sweep with failed jobs (or an Optuna study without a result) is not a success
