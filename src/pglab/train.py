"""Hydra entry point: ``python -m pglab.train [overrides]`` (or ``pglab-train``).

compose config → validate the combination → DataModule (envs) → networks → LightningModule → Trainer.fit.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from omegaconf import DictConfig, OmegaConf

from pglab.baselines import BASELINES
from pglab.callbacks import EvalCallback, SolveTracker
from pglab.checks import ConfigError, check_combination, component_name
from pglab.data import OnPolicyDataModule
from pglab.envs import EnvConfig, require_video_support
from pglab.hydra_callbacks import mark_failed
from pglab.loggers import finish_wandb, sync_hint
from pglab.module import PolicyGradientModule
from pglab.networks import build_policy

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")

__all__ = ["main", "build", "EnvStepBudget", "CONFIG_DIR"]


class EnvStepBudget(L.Callback):
    """Stops training once the module has consumed ``total_env_steps`` real transitions."""

    def __init__(self, total_env_steps: int) -> None:
        self.total_env_steps = total_env_steps

    def on_train_epoch_end(self, trainer: L.Trainer, module: PolicyGradientModule) -> None:
        if int(module.env_steps) >= self.total_env_steps:
            trainer.should_stop = True


@dataclass
class Run:
    trainer: L.Trainer
    module: PolicyGradientModule
    datamodule: OnPolicyDataModule
    cfg: DictConfig


def build(cfg: DictConfig) -> Run:
    """Everything ``fit`` needs, validated before any environment steps."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    torch.set_num_threads(int(cfg.torch_threads))
    try:
        estimator = instantiate(cfg.estimator)
        baseline = instantiate(cfg.baseline)
        surrogate = instantiate(cfg.surrogate)
    except InstantiationException as err:  # e.g. a negative clip range: the component's own ValueError
        raise ConfigError(f"this configuration cannot run:\n  - {err.__cause__ or err}") from err
    check_combination(cfg, estimator, baseline, surrogate)
    if cfg.ckpt_path is not None and not Path(cfg.ckpt_path).is_file():
        raise ConfigError(f"ckpt_path={cfg.ckpt_path} does not exist: pass a .ckpt file, e.g. "
                          "outputs/<algo>/<time>/checkpoints/last.ckpt")
    if cfg.eval.enabled and cfg.eval.video:
        try:
            require_video_support(cfg.env.id)
        except ImportError as err:
            raise ConfigError(str(err)) from err

    datamodule = OnPolicyDataModule(
        env=EnvConfig(**OmegaConf.to_container(cfg.env, resolve=True)),
        collector=OmegaConf.to_container(cfg.collector, resolve=True),
        estimator=estimator, baseline=baseline, baseline_name=component_name(baseline, BASELINES),
        update_epochs=cfg.learner.epochs, num_minibatches=cfg.learner.num_minibatches,
        whole_episodes=surrogate.needs_whole_episodes, seed=cfg.seed,
        minibatches_per_step=cfg.learner.minibatches_per_step)
    try:
        envs = datamodule.make_envs()
    except ValueError as err:  # unknown env id, no native vector env, ...
        raise ConfigError(f"this configuration cannot run:\n  - {err}") from err
    try:
        policy = build_policy(OmegaConf.to_container(cfg.model, resolve=True), envs.single_observation_space,
                              envs.single_action_space)
    except (ValueError, TypeError) as err:  # a model that does not fit the env, an unknown model key, ...
        raise ConfigError(f"this configuration cannot run:\n  - model: {err}") from err
    u = cfg.learner
    module = PolicyGradientModule(
        policy, surrogate, lr=u.lr, adam_eps=u.adam_eps, anneal_lr=u.anneal_lr, total_env_steps=cfg.total_env_steps,
        vf_coef=u.vf_coef, ent_coef=u.ent_coef, value_clip=u.value_clip, normalize_advantages=u.normalize_advantages,
        target_kl=u.target_kl, reference_refresh_every=u.reference_refresh_every, max_grad_norm=u.max_grad_norm,
        lightning_optimizer=u.lightning_optimizer)
    module.run_config = OmegaConf.to_container(cfg, resolve=True)

    loggers = []
    for logger_cfg in (cfg.get("logger") or {}).values():
        logger = instantiate(logger_cfg)
        logger.log_hyperparams(module.run_config)
        if type(logger).__name__ == "WandbLogger":
            # plot every metric against env steps, not optimizer steps
            logger.experiment.define_metric("env_steps")
            logger.experiment.define_metric("*", step_metric="env_steps")
        loggers.append(logger)
    callbacks: list[L.Callback] = [EnvStepBudget(cfg.total_env_steps), SolveTracker(window=20)]
    out = Path(cfg.paths.output_dir)
    if cfg.eval.enabled:
        video_dir = str(out / "videos") if cfg.eval.video else None
        callbacks.append(EvalCallback(every_n_epochs=cfg.eval.every_n_epochs, episodes=cfg.eval.episodes,
                                      num_envs=cfg.eval.num_envs, seed=cfg.seed + 1_000_000, video_dir=video_dir))
    if cfg.checkpoint.enabled:
        # best by eval return when evaluating, plus always the last; also on Ctrl-C / SIGTERM / crash
        callbacks.append(ModelCheckpoint(
            dirpath=out / "checkpoints", filename="best-{epoch}", monitor="eval/return_mean" if cfg.eval.enabled
            else None, mode="max", save_top_k=1 if cfg.eval.enabled else 0, save_last=True,
            every_n_epochs=cfg.checkpoint.every_n_epochs, save_on_exception=True))
        if cfg.checkpoint.get("snapshots"):
            # keep every periodic checkpoint (early / middle / late policies for pglab.probe)
            callbacks.append(ModelCheckpoint(dirpath=out / "checkpoints", filename="snapshot-{epoch}", monitor=None,
                                             save_top_k=-1, every_n_epochs=cfg.checkpoint.every_n_epochs))
    # extra Lightning callbacks from the config (``callbacks.<name>._target_``), e.g. an experiment's warm start
    for callback_cfg in (cfg.get("callbacks") or {}).values():
        callbacks.append(instantiate(callback_cfg))
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    progress = bool(cfg.trainer.enable_progress_bar) and not multirun  # many jobs: no bars
    if progress:
        callbacks.append(RichProgressBar())
    trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks,
                          enable_checkpointing=bool(cfg.checkpoint.enabled), enable_progress_bar=progress)
    return Run(trainer, module, datamodule, cfg)


def run(cfg: DictConfig) -> dict[str, float]:
    """Train one configuration; returns the final logged metrics (floats)."""
    try:
        r = build(cfg)
        r.trainer.fit(r.module, datamodule=r.datamodule, ckpt_path=cfg.ckpt_path)
        if cfg.checkpoint.enabled and not r.trainer.interrupted:
            # the periodic checkpoints may predate the last epoch: last.ckpt is always the final state
            r.trainer.save_checkpoint(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt")
        metrics = {k: float(v) for k, v in r.trainer.callback_metrics.items()}
        out = Path(cfg.paths.output_dir)
        steps = int(r.module.env_steps)
        print(f"pglab: {steps} env steps, last mean episode return "
              f"{metrics.get('rollout/episode_return', math.nan):.1f}; outputs in {out}")
        hint = sync_hint(str(out))
        if hint:
            print(f"pglab: W&B ran offline; to upload: {hint}")
        return metrics
    finally:
        finish_wandb()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics = run(cfg)
    except ConfigError as err:
        print(f"pglab: {err}", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            mark_failed(cfg.paths.output_dir, f"ConfigError: {err}")  # the other jobs go on
            return None
        sys.exit(2)
    # the objective for sweepers (Optuna maximises it): the running mean of the last 20 episodes
    return metrics.get("rollout/return_mean20", metrics.get("rollout/episode_return"))


if __name__ == "__main__":
    main()
