"""Hydra entry point: ``python -m pglab.run.train [overrides]`` (or ``pglab-train``).

compose config → (resume: the checkpoint's algorithm, env and model) → validate → DataModule (envs) → networks →
LightningModule → Trainer.fit.

Exit codes: 0 done (or nothing left to do), 2 refused at start-up, 3 stopped on a non-finite value, 130 / 143
stopped by SIGINT / SIGTERM (after saving a checkpoint), 1 anything else.
"""

from __future__ import annotations

import functools
import json
import logging
import signal
import sys
import threading
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

if __name__ == "__main__":  # `python -m pglab.run.train`: signals are handled from before the seconds of imports below
    from pglab.run.cli import install_early_signal_handlers

    install_early_signal_handlers()

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from pglab.envs.make import EnvConfig, check_env_api, require_video_support
from pglab.learner.module import NonFiniteError, PolicyGradientModule
from pglab.models.build import build_policy
from pglab.rollout.datamodule import NonFiniteRolloutError, OnPolicyDataModule
from pglab.run.callbacks import EnvStepProgressBar, EvalCallback, SolveTracker, announce, job_label, last_return
from pglab.run.checkpoints import (
    AtomicModelCheckpoint,
    CheckpointError,
    PeriodicLastCheckpoint,
    check_finite_weights,
    load_checkpoint,
    named_targets,
    resume_config,
    save_checkpoint_atomic,
    truncate_csv,
)
from pglab.run.checks import ConfigError, check_combination, check_types
from pglab.run.distributed import RankFailureWatch, failed_rank_note, not_rank_zero
from pglab.run.hydra_callbacks import mark_failed, started_as_other_rank
from pglab.run.loggers import finish_wandb, resume_kwargs, sync_hint, wandb_resume_notice

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "conf")

# Lightning 2.6's own use of a torch API that torch 2.13 deprecates: printed twice per run, not actionable here
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
# a run resumed into a new folder starts its own best-checkpoint record there: nothing is wrong, nothing to do
warnings.filterwarnings("ignore", message=r"The dirpath has changed from")


class _NoAdverts(logging.Filter):
    """Lightning's "💡 Tip: ... litlogger / litmodels" lines, at every fit: about Lightning's cloud, not the run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡")


for _name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
    logging.getLogger(_name).addFilter(_NoAdverts())

__all__ = ["main", "build", "run", "EnvStepBudget", "GracefulStop", "install_signal_handlers", "resume_command",
           "CONFIG_DIR", "EXIT_REFUSED", "EXIT_NONFINITE"]

EXIT_REFUSED, EXIT_NONFINITE = 2, 3
SCHEDULE_KEYS = ("epochs", "num_minibatches", "minibatches_per_step")  # learner.* keys read by the DataModule


class EnvStepBudget(L.Callback):
    """Stops training once the module has consumed ``total_env_steps`` real transitions."""

    def __init__(self, total_env_steps: int) -> None:
        self.total_env_steps = total_env_steps

    def on_train_epoch_end(self, trainer: L.Trainer, module: PolicyGradientModule) -> None:
        if int(module.env_steps) >= self.total_env_steps:
            trainer.should_stop = True


class _SignalState:
    """The first SIGTERM / SIGINT of the process and the module to pass it to (the handler only records)."""

    signum: int | None = None
    module: PolicyGradientModule | None = None


def _record_signal(signum, frame) -> None:
    _SignalState.signum = signum
    if _SignalState.module is not None:
        _SignalState.module.stop_signal = signum
    # a second signal of the same kind is not graceful: it ends the process at once
    signal.signal(signum, signal.SIG_DFL if signum == signal.SIGTERM else signal.default_int_handler)


def install_signal_handlers() -> dict:
    """pglab's SIGTERM/SIGINT handlers, from the start of a run (before the envs are built and the first rollout
    collected); returns the handlers they replaced. No-op outside the main thread (joblib threads, notebooks)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    if not any(signal.getsignal(signum) is _record_signal for signum in GracefulStop.SIGNALS):
        _SignalState.signum = None  # a new run in this process (installed at import by `python -m`: keep its signal)
    _SignalState.module = None
    previous = {signum: signal.getsignal(signum) for signum in GracefulStop.SIGNALS}
    for signum in GracefulStop.SIGNALS:
        signal.signal(signum, _record_signal)
    return previous


class GracefulStop(L.Callback):
    """SIGTERM and SIGINT stop training at the next update boundary instead of killing it.

    The handler (installed by ``run`` at start-up, ``install_signal_handlers``) only records the signal; the module
    finishes the update it is in and skips the rest of the rollout, the epoch ends normally (metrics logged), and
    ``run`` saves ``last.ckpt``, flushes the loggers, says where and how to resume, and exits 128 + signal
    (143 / 130) so a scheduler sees the job did not finish. A signal during the first rollout is kept for the first
    update boundary. Lightning registers its own SIGTERM handler just before the first rollout (it would end the
    run with exit 0 and no word); at train start this callback puts pglab's back and clears Lightning's flag. A
    second signal of the same kind is not graceful: it ends the process at once.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.previous: dict[int, object] = {}

    def on_train_start(self, trainer: L.Trainer, module: PolicyGradientModule) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread (joblib threads, notebooks)
        _SignalState.module = module
        if _SignalState.signum is not None:  # arrived during the first rollout
            module.stop_signal = _SignalState.signum
            trainer._signal_connector.received_sigterm = False  # pglab's stop, not Lightning's silent exit 0
        for signum in self.SIGNALS:
            self.previous[signum] = signal.getsignal(signum)
            if _SignalState.signum != signum:
                signal.signal(signum, _record_signal)
            else:  # after a first signal, a second ends the process at once
                signal.signal(signum, signal.SIG_DFL if signum == signal.SIGTERM else signal.default_int_handler)

    def on_train_epoch_end(self, trainer: L.Trainer, module: PolicyGradientModule) -> None:
        # under DDP the module agrees on the signal over ranks (PolicyGradientModule.on_train_epoch_end)
        if trainer.world_size == 1 and module.stop_signal is not None:
            trainer.should_stop = True

    def teardown(self, trainer: L.Trainer, module: PolicyGradientModule, stage: str) -> None:
        for signum, handler in self.previous.items():
            if threading.current_thread() is threading.main_thread():
                signal.signal(signum, handler)
        self.previous.clear()
        _SignalState.module = None


def resume_command(last: Path, out: Path) -> str:
    """The command that continues this run: its own command-line overrides (budget, trainer and devices, loggers,
    eval...) with ``ckpt_path`` and the output folder, so the resumed run is the same run in the same folder."""
    import shlex

    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in ("ckpt_path", "hydra.run.dir")]
    return shlex.join(["python", "-m", "pglab.run.train", *kept, f"ckpt_path={last}", f"hydra.run.dir={out}"])


@dataclass
class Built:
    trainer: L.Trainer
    module: PolicyGradientModule
    datamodule: OnPolicyDataModule
    cfg: DictConfig


def plain_partial(component):
    """A ``_partial_: true`` component as a plain ``functools.partial`` of the same target and arguments.

    hydra-core 1.3.8 returns a partial subclass that re-validates its target policy on every call (the estimator
    and the baseline are called once per rollout, so that cost recurs every rollout). The target was validated
    when it was instantiated; what it returns here is a tensor, not a callable to authorise."""
    if isinstance(component, functools.partial) and type(component) is not functools.partial:
        return functools.partial(component.func, *component.args, **component.keywords)
    return component


def build(cfg: DictConfig, wandb_id: str | None = None, resume_steps: int | None = None) -> Built:
    """Everything ``fit`` needs, validated before any environment steps (``resume_steps``: the env steps of the
    checkpoint a resumed run starts from; the loggers continue from there)."""
    check_types(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    torch.set_num_threads(int(cfg.torch_threads))
    try:
        estimator = plain_partial(instantiate(cfg.estimator))
        baseline = plain_partial(instantiate(cfg.baseline))
        surrogate = instantiate(cfg.surrogate)
    except InstantiationException as err:  # e.g. a negative clip range: the component's own ValueError
        raise ConfigError(f"this configuration cannot run:\n  - {err.__cause__ or err}") from err
    check_combination(cfg, estimator, baseline, surrogate)
    if cfg.eval.enabled and cfg.eval.video:
        try:
            require_video_support(cfg.env.id)
        except ImportError as err:
            raise ConfigError(str(err)) from err

    datamodule = OnPolicyDataModule(
        env=EnvConfig(**OmegaConf.to_container(cfg.env, resolve=True)),
        collector=OmegaConf.to_container(cfg.collector, resolve=True),
        estimator=estimator, baseline=baseline,
        update_epochs=cfg.learner.epochs, num_minibatches=cfg.learner.num_minibatches,
        whole_episodes=surrogate.needs_whole_episodes, seed=cfg.seed,
        minibatches_per_step=cfg.learner.minibatches_per_step)
    try:
        envs = datamodule.make_envs()
        check_env_api(datamodule.env_cfg)  # old-API envs and non-numeric observations, before the first rollout
        if cfg.collector.kind == "episodes" and not cfg.collector.max_episode_steps and \
                (envs.spec is None or not envs.spec.max_episode_steps):
            raise ValueError(f"{cfg.env.id} has no time limit, which the episode collector needs to size its "
                             "rollouts: set collector.max_episode_steps (e.g. the longest answer for token envs)")
    except (ValueError, ImportError) as err:  # unknown env id, no native vector env, optional back-end missing
        raise ConfigError(f"this configuration cannot run:\n  - {err}") from err
    try:
        policy = build_policy(OmegaConf.to_container(cfg.model, resolve=True), envs.single_observation_space,
                              envs.single_action_space)
    except (ValueError, TypeError) as err:  # a model that does not fit the env, an unknown model key, ...
        raise ConfigError(f"this configuration cannot run:\n  - model: {err}") from err
    # learner.* are the module's constructor arguments, except the update schedule the DataModule consumes
    learner = {k: v for k, v in OmegaConf.to_container(cfg.learner, resolve=True).items() if k not in SCHEDULE_KEYS}
    try:
        module = PolicyGradientModule(policy, surrogate, total_env_steps=cfg.total_env_steps, **learner)
    except ValueError as err:  # e.g. learner.gradients=lean for a combination it does not cover
        raise ConfigError(f"this configuration cannot run:\n  - {err}") from err
    module.run_config = OmegaConf.to_container(cfg, resolve=True)
    if HydraConfig.initialized():
        module.run_choices = {k: v for k, v in HydraConfig.get().runtime.choices.items()
                              if isinstance(v, str) and not k.startswith("hydra")}

    loggers = []
    for logger_cfg in (cfg.get("logger") or {}).values():
        try:
            logger = instantiate(logger_cfg, **resume_kwargs(logger_cfg, wandb_id, resume_steps))
        except InstantiationException as err:  # e.g. logger=tensorboard without its package
            raise ConfigError(f"this configuration cannot run:\n  - logger: {err.__cause__ or err}") from err
        loggers.append(logger)
    callbacks: list[L.Callback] = [EnvStepBudget(cfg.total_env_steps), SolveTracker(window=20), GracefulStop(),
                                   RankFailureWatch(functools.partial(_resume_note, cfg))]  # DDP: one rank fails
    out = Path(cfg.paths.output_dir)
    if cfg.eval.enabled:
        video_dir = str(out / "videos") if cfg.eval.video else None
        callbacks.append(EvalCallback(every_n_epochs=cfg.eval.every_n_epochs, episodes=cfg.eval.episodes,
                                      num_envs=cfg.eval.num_envs, seed=cfg.seed + 1_000_000, video_dir=video_dir))
    if cfg.checkpoint.enabled:
        # last.ckpt every checkpoint.every_n_epochs whatever eval does (and at the end, and on SIGTERM/SIGINT, in
        # run); not on an exception: the state mid-rollout is no epoch boundary, the previous last.ckpt is
        callbacks.append(PeriodicLastCheckpoint(out / "checkpoints", cfg.checkpoint.every_n_epochs))
        if cfg.eval.enabled:  # the best policy by eval return, judged when an evaluation has just run: at other
            # epochs eval/return_mean is missing (before the first) or an older policy's score
            callbacks.append(AtomicModelCheckpoint(
                dirpath=out / "checkpoints", filename="best-{epoch}", monitor="eval/return_mean", mode="max",
                save_top_k=1, every_n_epochs=cfg.eval.every_n_epochs))
        if cfg.checkpoint.get("snapshots"):
            # keep every periodic checkpoint (early / middle / late policies for pglab.tools.probe)
            callbacks.append(AtomicModelCheckpoint(dirpath=out / "checkpoints", filename="snapshot-{epoch}",
                                                   monitor=None, save_top_k=-1,
                                                   every_n_epochs=cfg.checkpoint.every_n_epochs))
    # extra Lightning callbacks from the config (``callbacks.<name>._target_``), e.g. an experiment's warm start
    for name, callback_cfg in (cfg.get("callbacks") or {}).items():
        try:
            callbacks.append(instantiate(callback_cfg))
        except InstantiationException as err:
            raise ConfigError(f"this configuration cannot run:\n  - callbacks.{name}: {err.__cause__ or err}") from err
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    progress = bool(cfg.trainer.enable_progress_bar)
    if progress:  # a live bar on a terminal; plain lines in a log, and for multirun jobs (they share a terminal)
        callbacks.append(EnvStepProgressBar(cfg.total_env_steps, every_s=float(cfg.get("progress_every_s", 30)),
                                            bar=None if not multirun else False))
    try:
        trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks,
                              enable_checkpointing=bool(cfg.checkpoint.enabled), enable_progress_bar=progress)
    except InstantiationException as err:  # e.g. trainer=gpu on a machine without CUDA
        raise ConfigError(f"this configuration cannot run:\n  - trainer: {err.__cause__ or err} (trainer=cpu runs "
                          "anywhere; trainer=ddp trainer.accelerator=cpu spreads over CPU processes)") from err
    # after the Trainer: it sets the process's global rank, which decides who logs (rank 0 only). Before it, a
    # process of node 1 launched by hand (NODE_RANK=1) took itself for rank 0 and wrote hparams / started W&B
    for logger in loggers:
        logger.log_hyperparams(module.run_config)
        if type(logger).__name__ == "WandbLogger" and trainer.is_global_zero:
            # plot every metric against env steps, not optimizer steps
            logger.experiment.define_metric("env_steps")
            logger.experiment.define_metric("*", step_metric="env_steps")
            module.wandb_id = logger.experiment.id  # a resumed run continues this W&B run
    return Built(trainer, module, datamodule, cfg)


def prepare_resume(cfg: DictConfig) -> tuple[DictConfig, dict | None]:
    """For ``ckpt_path=...``: the checkpoint (loaded weights-only) and the config to resume with — the
    checkpoint's algorithm, env and model, this command line's budget, logging, eval and checkpoint settings."""
    if cfg.ckpt_path is None:
        return cfg, None
    try:
        current = OmegaConf.to_container(cfg, resolve=True)
        # the command line's own config is the user's: a target it names is trusted in the checkpoint's too
        ckpt = load_checkpoint(cfg.ckpt_path, trusted=tuple(name for _, _, name in named_targets(current)))
        check_finite_weights(ckpt, cfg.ckpt_path)  # a diverged run's state: resuming it trains nothing
        overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
        payload = ckpt["pglab"]
        merged = resume_config(current, payload["config"], overrides,
                               payload.get("choices"))
    except CheckpointError as err:
        raise ConfigError(f"ckpt_path={cfg.ckpt_path}: {err}") from err
    resumed = OmegaConf.create(merged)
    OmegaConf.set_struct(resumed, True)
    return resumed, ckpt


def run(cfg: DictConfig) -> tuple[dict[str, float], int]:
    """Train one configuration; returns the final logged metrics (floats) and the exit code (0, or 128 + signal)."""
    previous_handlers = install_signal_handlers()
    try:
        # -- population: population=P > 1 trains P seeds in one process; 1 is the single run below --
        from pglab.run.population import is_population, run_population

        if is_population(cfg):
            return run_population(cfg)
        # -- end population --
        cfg, ckpt = prepare_resume(cfg)
        out = Path(cfg.paths.output_dir)
        check_types(cfg)  # (again in build) before the first line reads the budget: `total_env_steps=abc` is refused
        announce(cfg, out)  # before W&B, envs and network: what runs and where it writes
        wandb_id, ckpt_choices, ckpt_world, resume_steps = None, None, None, None
        if ckpt is not None:
            ckpt_world = len(ckpt["pglab"].get("rng_per_rank") or [None])
            ckpt_choices = {k: v for k, v in (ckpt["pglab"].get("choices") or {}).items()
                            if k in ("algo", "experiment", "env", "model", "estimator", "baseline", "surrogate")}
            steps = int(ckpt["state_dict"].get("env_steps", 0))
            if steps >= cfg.total_env_steps:
                print(f"pglab: {cfg.ckpt_path} is a finished run ({steps} env steps >= total_env_steps="
                      f"{cfg.total_env_steps}); nothing to do. To train on, raise total_env_steps")
                return {}, 0
            wandb_id = ckpt["pglab"].get("wandb_id")
            out.mkdir(parents=True, exist_ok=True)
            hydra_dir = out / ".hydra"
            lead = not started_as_other_rank()  # under DDP rank 0 alone rewrites the run's files
            if hydra_dir.is_dir() and lead:
                # Hydra wrote the command line's config; the run trains with the checkpoint's algorithm, env and
                # model, which is what plots and readers of .hydra/config.yaml must see
                (hydra_dir / "config.yaml").replace(hydra_dir / "config.command_line.yaml")
                OmegaConf.save(cfg, hydra_dir / "config.yaml")
            for csv_file in sorted(out.glob("csv/**/metrics.csv")) if lead else []:
                # resumed into its own folder: rows logged after the checkpoint are logged again by this run
                dropped = truncate_csv(csv_file, steps)
                if dropped:
                    print(f"pglab: dropped {dropped} rows of {csv_file} logged after the checkpoint's {steps} env "
                          "steps (this run logs those steps again)")
            if lead:
                (out / "resumed_from.json").write_text(json.dumps(
                    {"ckpt_path": str(Path(cfg.ckpt_path).resolve()), "env_steps": steps, "wandb_id": wandb_id})
                    + "\n")
                print(f"pglab: resuming {cfg.ckpt_path} at {steps} env steps with its own algorithm, env and model "
                      f"({ckpt['pglab']['config']['env']['id']}); outputs in {out}")
                notice = wandb_resume_notice((cfg.get("logger") or {}).values(), wandb_id, steps)
                if notice:
                    print(notice, file=sys.stderr)
            resume_steps = steps
            del ckpt
        r = build(cfg, wandb_id=wandb_id, resume_steps=resume_steps)
        if _SignalState.signum is not None:  # stopped while the envs were being built: nothing trained, nothing lost
            name = signal.Signals(_SignalState.signum).name
            print(f"pglab: stopped by {name} before training started; nothing to save"
                  + (f" (the run can still resume from {cfg.ckpt_path})" if cfg.ckpt_path else ""), file=sys.stderr)
            return {}, 128 + int(_SignalState.signum)
        if ckpt_world is not None and r.trainer.is_global_zero:
            world = r.trainer.num_devices * r.trainer.num_nodes
            if world != ckpt_world:
                print(f"pglab: the checkpoint was trained on {ckpt_world} process(es) and this run has {world}: each "
                      f"update's global batch becomes {world}/{ckpt_world} of what it was (every process collects its "
                      "own rollout), and processes the checkpoint had no state for start their shuffling and env "
                      f"streams afresh; to continue unchanged, resume with trainer.devices × trainer.num_nodes = "
                      f"{ckpt_world}", file=sys.stderr)
        if ckpt_choices:  # the resumed run's groups are the checkpoint's, whatever this command line defaulted to
            r.module.run_choices = {**(r.module.run_choices or {}), **ckpt_choices}
        # weights_only: a checkpoint is data, never code (see pglab.run.checkpoints)
        try:
            r.trainer.fit(r.module, datamodule=r.datamodule, ckpt_path=cfg.ckpt_path, weights_only=True)
        except ValueError as err:
            if r.module.update is not None:
                raise
            # raised before the module chose its update (fit start, e.g. learner.gradients=lean where it does not
            # apply): nothing has run yet, so it is a refusal like any other start-up check
            raise ConfigError(f"this configuration cannot run:\n  - {err}") from err
        last = out / "checkpoints" / "last.ckpt"
        if cfg.checkpoint.enabled and not r.trainer.interrupted:
            # the periodic checkpoints may predate the last epoch: last.ckpt is always the final state
            save_checkpoint_atomic(r.trainer, last)
        for logger in r.trainer.loggers:
            logger.save()
        metrics = {k: float(v) for k, v in r.trainer.callback_metrics.items()}
        steps = int(r.module.env_steps)
        code = 0
        if not r.trainer.is_global_zero:  # under DDP rank 0 speaks for the run
            return metrics, 128 + int(r.module.stop_signal) if r.module.stop_signal is not None else 0
        if r.module.stop_signal is not None:
            code = 128 + int(r.module.stop_signal)
            name = signal.Signals(r.module.stop_signal).name
            saved = f"checkpoint {last}; resume: {resume_command(last, out)}" if cfg.checkpoint.enabled \
                else "no checkpoint (checkpoint.enabled=false)"
            print(f"pglab: stopped by {name} at {steps} env steps; metrics flushed; {saved}", file=sys.stderr)
        else:
            print(f"pglab: {job_label()}finished: {steps} env steps, {last_return(metrics)} "
                  f"({r.module.update_path} updates); outputs in {out}")
        hint = sync_hint(str(out))
        if hint:
            print(f"pglab: W&B ran offline; to upload: {hint}")
        return metrics, code
    finally:
        finish_wandb()
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)


def _kept_checkpoint(cfg: DictConfig, finite_only: bool = False) -> str | None:
    """``<output>/checkpoints/last.ckpt (N env steps)`` if it exists (and, with ``finite_only``, holds finite policy
    weights), else None: what a failed run's message may promise."""
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    if not (cfg.checkpoint.enabled and last.is_file()):
        return None
    try:
        ckpt = torch.load(last, map_location="cpu", weights_only=True)
        if finite_only:
            check_finite_weights(ckpt, last)
    except Exception:  # noqa: BLE001 - unreadable or non-finite: nothing to promise
        return None
    return f"{last} ({int(ckpt['state_dict'].get('env_steps', 0))} env steps)"


def _resume_note(cfg: DictConfig) -> str:
    """What a failed run leaves to resume from: the kept ``last.ckpt`` and the command, or that there is none."""
    from pglab.run.population import is_population, kept_checkpoint_note

    if is_population(cfg):  # a population's own checkpoint
        return kept_checkpoint_note(cfg)
    kept = _kept_checkpoint(cfg)
    out = Path(cfg.paths.output_dir)
    if not kept and not_rank_zero():  # another node's own folder: rank 0 writes the checkpoints, in its folder
        return "rank 0 writes the checkpoints: its line names the kept one and the resume command"
    return (f"the last checkpoint is kept: {kept}; resume: {resume_command(out / 'checkpoints' / 'last.ckpt', out)}"
            if kept else "no checkpoint was written before it (checkpoint.every_n_epochs sets how often)")


def _fail(cfg: DictConfig, message: str, detail: str, code: int) -> None:
    """Report a failed run: one line (or a refusal) on stderr; under multirun a FAILED file and the sweep goes on."""
    print(f"pglab: {message}", file=sys.stderr)
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        mark_failed(cfg.paths.output_dir, detail)  # the other jobs go on; the sweep summary names this one
        return
    sys.exit(code)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics, code = run(cfg)
    except ConfigError as err:
        return _fail(cfg, str(err), f"ConfigError: {err}", EXIT_REFUSED)
    except (NonFiniteError, NonFiniteRolloutError) as err:
        kept = _kept_checkpoint(cfg, finite_only=True)
        return _fail(cfg, f"stopped: {err}{'; the last finite state is in ' + kept if kept else ''}",
                     f"{type(err).__name__}: {err}\n{traceback.format_exc()}", EXIT_NONFINITE)
    except Exception as err:
        # the first line of the detail is the error itself (the multirun summary shows it), then the traceback
        detail = f"{type(err).__name__}: {err}\n{traceback.format_exc()}"
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            traceback.print_exc()  # the failing code's own traceback (often the env's), then what it means
            return _fail(cfg, f"the run failed{failed_rank_note()}: {type(err).__name__}: {err}; {_resume_note(cfg)}",
                         detail, 1)
        return _fail(cfg, f"job failed: {type(err).__name__}: {err}", detail, 1)
    if code:
        sys.exit(code)
    # the objective for sweepers (Optuna maximises it): the running mean of the last 20 episodes
    return metrics.get("rollout/return_mean20", metrics.get("rollout/episode_return"))


if __name__ == "__main__":
    install_signal_handlers()  # from process start: a signal while Hydra composes is acted on too
    main()
