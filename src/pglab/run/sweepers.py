"""Hydra's Optuna sweeper, ending like every pglab multirun when no trial gives Optuna a value.

hydra-optuna-sweeper asks its study for the best trial once the trials are done; with none completed (every job
failed, or finished without the objective: no episode ended) that raises inside the sweeper ("Record does not
exist" with a storage, "No trials are completed yet" without), a traceback that skips Hydra's end-of-multirun
callbacks, so pglab's failure summary never printed. ``patch_optuna_sweeper`` wraps the plugin's ``OptunaSweeper``:
it records what each launched job returned, and if the sweep then fails and not one job returned a value, it says
so in one line and lets the multirun end normally — ``pglab.run.hydra_callbacks.JobSummary`` prints the summary of
the failed jobs and exits 1. Any other error of the sweeper is left as it was.

Hydra accepts sweepers only from the ``hydra_plugins`` package, so pglab cannot name a subclass in the config; the
wrap is applied to the plugin's class by ``JobSummary.on_multirun_start``, when a multirun uses
``hydra/sweeper=optuna``, before Hydra instantiates it. This module imports the plugin, so it is imported only then.
"""

from __future__ import annotations

import functools
import math
import sys

from hydra.core.utils import JobReturn, JobStatus

__all__ = ["patch_optuna_sweeper", "no_completed_trial", "PLUGIN_TARGET"]

PLUGIN_TARGET = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"


class _Outcome:
    no_completed_trial = False  # set when a sweep ended without one trial Optuna could use (read by JobSummary)


def no_completed_trial() -> bool:
    """Whether the last Optuna sweep of this process ended with no trial that returned an objective."""
    return _Outcome.no_completed_trial


def _objective(ret: JobReturn) -> float | None:
    """The value a job gave Optuna, or None when it gave none (a failed job, a None or non-numeric return)."""
    if ret.status != JobStatus.COMPLETED:
        return None
    try:
        value = float(ret._return_value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def patch_optuna_sweeper() -> None:
    """Wrap hydra-optuna-sweeper's ``OptunaSweeper.setup`` and ``.sweep`` (once per process; see the module
    docstring)."""
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper

    if getattr(OptunaSweeper, "_pglab_patched", False):
        return
    setup, sweep = OptunaSweeper.setup, OptunaSweeper.sweep

    @functools.wraps(setup)
    def recording_setup(self, *, hydra_context, task_function, config) -> None:
        setup(self, hydra_context=hydra_context, task_function=task_function, config=config)
        self._pglab_returns = []
        launcher = self.sweeper.launcher  # the plugin's implementation object holds the launcher
        launch = launcher.launch

        def recording_launch(job_overrides, initial_job_idx: int):
            returns = launch(job_overrides, initial_job_idx=initial_job_idx)
            self._pglab_returns.extend(returns)
            return returns

        launcher.launch = recording_launch

    @functools.wraps(sweep)
    def reporting_sweep(self, arguments):
        _Outcome.no_completed_trial = False
        try:
            return sweep(self, arguments)
        except ValueError:
            returns = getattr(self, "_pglab_returns", [])
            if not returns or any(_objective(r) is not None for r in returns):
                raise  # some trial gave a value: not the failure this wrap explains
            _Outcome.no_completed_trial = True
            print(f"pglab: Optuna sweep: none of the {len(returns)} trials returned an objective (each job failed, "
                  "or finished before any episode ended, so rollout/return_mean20 was never logged): the study has "
                  "no best trial and no optimization_results.yaml was written", file=sys.stderr)
            return None

    OptunaSweeper.setup, OptunaSweeper.sweep = recording_setup, reporting_sweep
    OptunaSweeper._pglab_patched = True
