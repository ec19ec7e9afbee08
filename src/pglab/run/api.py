"""``pglab.train(overrides=[...])``: one training run from Python, as ``pglab-train <overrides>`` would run it.

The config is composed with Hydra's compose API from the packaged ``conf/``; what ``@hydra.main`` does for one run
is done here too — the run folder from ``hydra.run.dir``, ``<run>/.hydra/{config,hydra,overrides}.yaml``, the Hydra
config that ``${hydra:...}`` interpolations read (so no override beyond the command line's is needed) — and the
previous Hydra state (a caller's own ``@hydra.main`` app) is restored afterwards. Lightning's informational lines
("GPU available", tips) are held back for the call, as the command line's disabled job logging holds them back.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["train", "TrainResult"]


@dataclass
class TrainResult:
    """What a run left: its final metrics (``rollout/return_mean20``, ``eval/return_mean``, ``train/*``, ...),
    its folder and its exit code (0, or 130 / 143 when stopped by SIGINT / SIGTERM)."""

    metrics: dict[str, float]
    output_dir: Path
    exit_code: int = 0
    overrides: list[str] = field(default_factory=list)

    @property
    def checkpoint(self) -> Path:
        """``<output_dir>/checkpoints/last.ckpt``: the final state (``pglab.load_policy`` takes it)."""
        return self.output_dir / "checkpoints" / "last.ckpt"


@contextlib.contextmanager
def _quiet_lightning():
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@contextlib.contextmanager
def _own_hydra():
    """A fresh GlobalHydra / HydraConfig for this run; the caller's (if any) is put back afterwards."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    global_hydra = GlobalHydra.instance()
    previous = global_hydra.hydra if global_hydra.is_initialized() else None
    previous_cfg = HydraConfig.instance().cfg
    global_hydra.clear()
    try:
        yield
    finally:
        global_hydra.clear()
        if previous is not None:
            global_hydra.initialize(previous)
        HydraConfig.instance().cfg = previous_cfg


def train(overrides: list[str] | tuple[str, ...] = (), config_name: str = "train") -> TrainResult:
    """Train one configuration; ``overrides`` are the command line's (``["algo=a2c", "total_env_steps=20000"]``).

    Raises ``pglab.run.checks.ConfigError`` for a configuration that cannot run (with the fix) and for a run folder
    (``hydra.run.dir=…``) that holds another run (as the command line refuses it), Hydra's own errors
    for an unknown key or option, and the run's ``NonFiniteError`` when training diverged. Sweeps (``a=1,2``) are
    the command line's ``-m``: call ``train`` once per configuration instead."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict, read_write

    from pglab.run.checks import ConfigError
    from pglab.run.hydra_callbacks import foreign_run
    from pglab.run.train import CONFIG_DIR, run

    overrides = [str(o) for o in overrides]
    with _own_hydra():
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3", job_name="pglab_train"):
            cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
        # as hydra.core.utils.run_job does for one job: the run folder, then the Hydra config that reads it
        HydraConfig.instance().set_config(cfg)
        out = Path(str(cfg.hydra.run.dir)).absolute()
        with read_write(cfg.hydra.runtime), open_dict(cfg.hydra.runtime):
            cfg.hydra.runtime.output_dir = str(out)
        HydraConfig.instance().set_config(cfg)
        task_cfg = copy.deepcopy(cfg)
        with read_write(task_cfg), open_dict(task_cfg):
            del task_cfg["hydra"]
        # the command line's RunFolderGuard, before anything is written: a folder holding another run is refused
        problem = foreign_run(out, OmegaConf.select(task_cfg, "ckpt_path", default=None))
        if problem:
            raise ConfigError(problem)
        out.mkdir(parents=True, exist_ok=True)
        if cfg.hydra.output_subdir is not None:
            hydra_out = out / str(cfg.hydra.output_subdir)
            hydra_out.mkdir(parents=True, exist_ok=True)
            OmegaConf.save(task_cfg, hydra_out / "config.yaml")
            OmegaConf.save(OmegaConf.create({"hydra": cfg.hydra}), hydra_out / "hydra.yaml")
            OmegaConf.save(cfg.hydra.overrides.task, hydra_out / "overrides.yaml")
        with _quiet_lightning():
            metrics, code = run(task_cfg)
    return TrainResult(metrics=metrics, output_dir=out, exit_code=code, overrides=overrides)
