"""``population=P`` (or a list of seeds): P independent runs trained in one process, vectorised over seeds.

Member k has seed ``seed + k`` (or the k-th listed seed); its envs, initial weights, minibatch shuffles, Adam state,
learning-rate schedule, target-KL early stop and non-finite guard are its own (``pglab.learner.population``,
``pglab.rollout.population``). The plain MLP acts and updates through the stacked fast path
(``pglab.accel.population``, checked against the vmapped reference at start-up); any other network, or
``learner.gradients=autograd``, runs the vmapped reference; the first line says which.

Each member writes ``<run>/member-<k>/`` as a single run with that seed would: ``csv/metrics.csv`` (x-axis
``env_steps``), ``.hydra/config.yaml`` (its own seed, ``population: 1``: the command that reproduces it alone) and
``checkpoints/last.ckpt`` (read by ``pglab.tools.evaluate``), so ``pglab.tools.plot`` counts members as seeds.

Checkpoints and resume. Every ``checkpoint.every_n_epochs`` rollouts, at the end and on SIGTERM/SIGINT the loggers are
flushed and each member's ``last.ckpt`` is written, then ``<run>/checkpoints/population.ckpt``: every member's
parameters, Adam state (step counts included), counters, LR-schedule anchor, non-finite status, minibatch generator,
normalisation statistics and episode-return window, with the process's RNG states (the members' shared action-noise
stream) — each file through a temporary file, fsync'd and renamed. ``ckpt_path=<run>/checkpoints/population.ckpt
hydra.run.dir=<run>`` (the command a stopped population prints) resumes every member from it, as a single run resumes:
the checkpoint's algorithm, env and model; each member's CSV rows past its checkpointed env steps dropped; fresh
episodes from seeds moved past the original start; a population of other seeds than the checkpoint's refused.

Not covered (refused at start-up or said at start-up): DDP (one process trains the whole population), the episode
collector, surrogates with a reference policy (GRPO with β > 0) or on whole episodes (GSPO), eval videos. A surrogate
with state of its own (adaptive-β KL penalty) has one per member, adapted to that member's KL. Each member is
evaluated as a single run's EvalCallback evaluates (``eval.*``), into its own ``eval/*`` columns.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from gymnasium.wrappers import vector as vw
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from pglab.envs.make import (
    EnvConfig,
    check_env_api,
    find_wrapper,
    freeze_normalization,
    load_rms,
    make_frozen_envs,
    make_vector_env,
    rms_state,
    run_episodes,
)
from pglab.learner.population import PopulationLearner, population_unsupported
from pglab.models.build import build_policy
from pglab.rollout.advantages import compute_advantages
from pglab.rollout.datamodule import NonFiniteRolloutError, check_rollout_finite
from pglab.rollout.population import (
    MemberMinibatches,
    PopulationCollector,
    all_member_batches,
    columnwise,
    flat_member,
    stack_padded,
)
from pglab.run.checkpoints import truncate_csv
from pglab.run.checks import ConfigError, check_combination, check_types
from pglab.run.hydra_callbacks import mark_failed

__all__ = ["population_seeds", "check_population", "build_population", "run_population", "Population",
           "resume_population", "population_checkpoint", "POPULATION_CKPT"]

POPULATION_CKPT = "population.ckpt"  # <run>/checkpoints/population.ckpt: what a population resumes from


def population_seeds(cfg: DictConfig) -> list[int]:
    """``population: P`` → seed, seed+1, …, seed+P−1; ``population: [s0, s1, …]`` → those seeds (distinct)."""
    value = cfg.get("population", 1)
    if isinstance(value, (list, tuple, ListConfig)):
        seeds = [int(s) for s in value]
        if not seeds or len(set(seeds)) != len(seeds):
            raise ConfigError(f"population={list(value)}: a list of seeds must be non-empty and distinct")
        return seeds
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"population must be an integer >= 1 or a list of seeds, got {value!r}")
    return [int(cfg.seed) + k for k in range(value)]


def is_population(cfg: DictConfig) -> bool:
    """``population`` other than 1, or ``ckpt_path`` naming a population's checkpoint (or one of its members'): a
    resume of a population is the population's to run or to refuse with the fix, whatever ``population`` says."""
    value = cfg.get("population", 1)
    if isinstance(value, (list, tuple, ListConfig)) or value != 1:
        return True
    ckpt = cfg.get("ckpt_path")
    return ckpt is not None and (population_checkpoint(ckpt) is not None or _member_of(ckpt) is not None)


def population_checkpoint(ckpt_path) -> Path | None:
    """The population checkpoint ``ckpt_path`` names: the file (``<run>/checkpoints/population.ckpt``) or the run
    folder that holds one; None when it names another file or a folder without one."""
    path = Path(str(ckpt_path))
    if path.is_dir():
        path = path / "checkpoints" / POPULATION_CKPT
        return path if path.is_file() else None
    return path if path.name == POPULATION_CKPT else None


def _member_of(ckpt_path) -> tuple[int, Path] | None:
    """(k, the population's checkpoint) when ``ckpt_path`` is ``<run>/member-<k>/checkpoints/*.ckpt`` of a population
    that has one."""
    path = Path(str(ckpt_path))
    if len(path.parents) < 3 or path.parent.name != "checkpoints" or not path.parents[1].name.startswith("member-"):
        return None
    own = path.parents[2] / "checkpoints" / POPULATION_CKPT
    k = path.parents[1].name.removeprefix("member-")
    return (int(k), own) if k.isdigit() and own.is_file() else None


def _population_override(value) -> str:
    """``population=8`` / ``population=[0,3,7]``: the override that asks for a checkpoint's population."""
    if isinstance(value, (list, tuple)):
        return "population=[" + ",".join(str(int(s)) for s in value) + "]"
    return f"population={value}"


def resume_population(cfg: DictConfig) -> tuple[DictConfig, dict | None]:
    """For ``ckpt_path=<run>/checkpoints/population.ckpt`` (or ``<run>``): the checkpoint and the config to resume
    with (the single run's ``prepare_resume``: the checkpoint's algorithm, env, model and seed, this command line's
    budget, logging and checkpoint settings). ConfigError, naming the fix, for a single run's or a member's
    checkpoint and for a population of other seeds than the checkpoint's."""
    if cfg.get("ckpt_path") is None:
        return cfg, None
    given = Path(str(cfg.ckpt_path))
    member = _member_of(given)
    if member is not None:
        k, own = member
        raise ConfigError(
            f"ckpt_path={given} is member {k}'s checkpoint of the population in {own.parents[1]}: it holds the "
            "member's weights (for pglab.tools.evaluate and probe), not its optimizer and loop state. Resume the "
            f"whole population: ckpt_path={own} hydra.run.dir={own.parents[1]} with its population= setting")
    path = population_checkpoint(given)
    if path is None and given.is_dir():
        raise ConfigError(f"ckpt_path={given}: no population checkpoint in this folder (a population resumes from "
                          f"<run>/checkpoints/{POPULATION_CKPT}; a stopped population prints it, with the command)")
    if path is None:
        raise ConfigError(
            f"ckpt_path={given}: a population resumes from its own checkpoint, <run>/checkpoints/{POPULATION_CKPT} "
            "(a stopped population prints it, with the command); this is a single run's checkpoint: resume it with "
            "population=1")
    from pglab.run.train import prepare_resume

    cfg = cfg.copy()
    cfg.ckpt_path = str(path)
    resumed, ckpt = prepare_resume(cfg)
    state = (ckpt.get("pglab") or {}).get("population")
    if state is None:
        raise ConfigError(f"ckpt_path={path} is a single run's checkpoint, not a population's: resume it with "
                          "population=1")
    saved, asked = [int(s) for s in state["seeds"]], population_seeds(resumed)
    if asked != saved:
        fix = _population_override(ckpt["pglab"]["config"].get("population", len(saved)))
        raise ConfigError(
            f"ckpt_path={path}: the checkpoint is a population of {len(saved)} with seeds {saved}, and this command "
            f"line asks for {len(asked)} with seeds {asked}: resume with {fix} (the checkpoint's; its seed comes from "
            "the checkpoint), or leave out ckpt_path to start a new population")
    if not torch.isfinite(ckpt["state_dict"]["flat"]).all():
        raise ConfigError(f"ckpt_path={path} has non-finite weights: the population diverged; evaluate an earlier "
                          "member checkpoint")
    return resumed, ckpt


def check_population(cfg: DictConfig, surrogate) -> None:
    """Refuse what a population cannot do yet, with the fix, before any env is built."""
    problems = []
    trainer = cfg.trainer
    strategy = trainer.get("strategy")
    strategy_name = strategy if isinstance(strategy, str) else str((strategy or {}).get("_target_", ""))
    if "ddp" in strategy_name.lower() or "DDP" in strategy_name or int(trainer.get("devices", 1) or 1) > 1 \
            or int(trainer.get("num_nodes", 1) or 1) > 1:
        problems.append("trainer=ddp / several devices: a population trains all its members in one process. Use "
                        "trainer=cpu (or trainer=gpu) with population=P; to use several processes, launch one "
                        "population per process (e.g. -m seed=0,100 population=8)")
    if cfg.collector.kind != "segments":
        problems.append("collector.kind=episodes: a population collects segments only (collector.kind=segments)")
    if cfg.eval.enabled and cfg.eval.get("video"):
        problems.append("eval.video=true: a population evaluates its members but records no video (eval.video=false; "
                        "record a member afterwards with pglab.tools.evaluate video=true ckpt_path=<run>/member-<k>/"
                        "checkpoints/last.ckpt)")
    if cfg.trainer.get("accelerator") not in ("cpu", None):
        problems.append("trainer.accelerator other than cpu: a population runs on the CPU (trainer=cpu)")
    if int(cfg.learner.get("minibatches_per_step") or 0) not in (0,):
        problems.append("learner.minibatches_per_step: a population runs a whole rollout's updates per step "
                        "(learner.minibatches_per_step=null)")
    reason = population_unsupported(surrogate, OmegaConf.to_container(cfg.learner, resolve=True))
    if reason:
        problems.append(reason)
    if problems:
        raise ConfigError("population > 1 cannot run this configuration:\n  - " + "\n  - ".join(problems))


class Population:
    """The built population: members' envs, the learner, the collector and the per-member outputs."""

    def __init__(self, cfg: DictConfig, seeds: list[int], envs: list, learner: PopulationLearner,
                 estimator, baseline, out: Path) -> None:
        self.cfg, self.seeds, self.envs, self.learner = cfg, seeds, envs, learner
        self.estimator, self.baseline = estimator, baseline
        self.collector = PopulationCollector(envs, int(cfg.collector.num_steps), learner.head.param_dim, seeds,
                                             num_envs=int(cfg.env.num_envs))
        self.minibatches = MemberMinibatches(seeds, int(cfg.learner.epochs), int(cfg.learner.num_minibatches))
        # targets and advantages of all members in one call, where that is checked to equal one call per member
        self.columnwise_reason = columnwise(estimator, baseline)
        self.out = out
        self.env_cfg = EnvConfig(**OmegaConf.to_container(cfg.env, resolve=True))
        self.eval_envs: list = [None] * len(seeds)  # each member's eval envs, made at its first evaluation
        self.evaluations = [0] * len(seeds)
        self.member_dirs = [out / f"member-{k}" for k in range(len(seeds))]
        self.loggers = []
        self.returns20: list[list[float]] = [[] for _ in seeds]
        self.rollouts = 0
        self.wandb_ids: list[str | None] = [None] * len(seeds)  # each member's W&B run, continued on resume
        self.pending_rng: dict | None = None  # a resumed population's RNG states, until ``start``
        self.choices: dict | None = None  # the Hydra group choices (algo=..., env=...), kept in the checkpoint
        if HydraConfig.initialized():
            try:
                self.choices = {k: v for k, v in HydraConfig.get().runtime.choices.items()
                                if isinstance(v, str) and not k.startswith("hydra")}
            except Exception:  # noqa: BLE001 - a composed config without runtime choices: nothing to keep
                self.choices = None

    # -- outputs ---------------------------------------------------------------------------------------
    def member_config(self, k: int) -> dict:
        """The resolved config of member k as a run of its own: its seed, ``population: 1``, its folder."""
        cfg = self.cfg.copy()
        OmegaConf.set_struct(cfg, False)
        cfg.seed, cfg.population, cfg.ckpt_path = self.seeds[k], 1, None
        cfg.paths = {"output_dir": str(self.member_dirs[k])}
        config = OmegaConf.to_container(cfg, resolve=True)
        config.pop("hydra", None)
        return config

    def open_outputs(self, resume_steps: list[int] | None = None) -> None:
        """Each member's ``.hydra/`` and loggers (``resume_steps``: a resumed population's members' env steps; each
        member's W&B run and TensorBoard continue from there, as a resumed single run's do)."""
        from pglab.run.loggers import CSVLogger, resume_kwargs

        overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
        kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in ("population", "seed", "ckpt_path")]
        for k, d in enumerate(self.member_dirs):
            (d / ".hydra").mkdir(parents=True, exist_ok=True)
            OmegaConf.save(OmegaConf.create(self.member_config(k)), d / ".hydra" / "config.yaml")
            OmegaConf.save(OmegaConf.create([*kept, f"seed={self.seeds[k]}"]), d / ".hydra" / "overrides.yaml")
            parent_hydra = self.out / ".hydra" / "hydra.yaml"
            if parent_hydra.is_file():  # the Hydra choices (algo=..., env=...) that plot groups by
                (d / ".hydra" / "hydra.yaml").write_text(parent_hydra.read_text())
            # the member's CSV always (what pglab.tools.plot reads), and every other logger its config names,
            # instantiated from its own resolved config: W&B named by its seed, in its population's group
            config = self.member_config(k)
            logger_cfgs = list((config.get("logger") or {}).values())
            flush = next((c.get("flush_seconds") for c in logger_cfgs
                          if str(c.get("_target_", "")).endswith("CSVLogger") and c.get("flush_seconds") is not None),
                         None)
            member_loggers = [CSVLogger(save_dir=str(d), name="csv", version="",
                                        **({"flush_seconds": float(flush)} if flush is not None else {}))]
            for logger_cfg in logger_cfgs:
                target = str(logger_cfg.get("_target_", ""))
                if target.endswith("CSVLogger"):
                    continue
                extra = resume_kwargs(logger_cfg, self.wandb_ids[k], resume_steps[k]) if resume_steps else {}
                logger = instantiate(logger_cfg, **extra)
                if type(logger).__name__ == "WandbLogger":
                    logger = _own_wandb_run(logger)
                    logger.experiment.define_metric("env_steps")
                    logger.experiment.define_metric("*", step_metric="env_steps")
                    self.wandb_ids[k] = logger.experiment.id
                logger.log_hyperparams(config)
                member_loggers.append(logger)
            self.loggers.append(member_loggers)

    @property
    def checkpoint_path(self) -> Path:
        return self.out / "checkpoints" / POPULATION_CKPT

    def member_normalization(self, k: int) -> dict:
        """Member k's observation / reward normalisation statistics (``rms_state``); none for merged envs."""
        if len(self.envs) != len(self.seeds):  # a member with statistics of its own has a vector env of its own
            return {}
        state = {}
        obs_norm = find_wrapper(self.envs[k], vw.NormalizeObservation)
        if obs_norm is not None:
            state["obs_rms"] = rms_state(obs_norm.obs_rms)
        reward_norm = find_wrapper(self.envs[k], vw.NormalizeReward)
        if reward_norm is not None:
            state["return_rms"] = rms_state(reward_norm.return_rms)
        return state

    def save_member(self, k: int) -> Path:
        """``member-<k>/checkpoints/last.ckpt``: the member's weights and config as ``pglab.tools.evaluate`` reads a
        single run's checkpoint (not resumable alone: the population resumes from ``population.ckpt``)."""
        path = self.member_dirs[k] / "checkpoints" / "last.ckpt"
        state = {f"policy.{n}": v for n, v in self.learner.member_parameters(k).items()}
        state["env_steps"] = torch.tensor(self.learner.members[k].env_steps)
        ckpt = {"state_dict": state, "OnPolicyDataModule": self.member_normalization(k),
                "pglab": {"config": self.member_config(k), "choices": self.choices, "population_member": k,
                          "updates": self.learner.members[k].updates}}
        _save_atomic(ckpt, path)
        return path

    def checkpoint(self) -> dict:
        """The whole population's resumable state (module docstring): tensors and plain values only."""
        learner = self.learner.state_dict()
        config = OmegaConf.to_container(self.cfg, resolve=True)
        config.pop("hydra", None)
        return {"state_dict": {"flat": learner.pop("flat"),
                               "env_steps": torch.tensor([m.env_steps for m in self.learner.members])},
                "pglab": {"config": config, "choices": self.choices, "population": {
                    "seeds": list(self.seeds), "rollouts": self.rollouts, "learner": learner,
                    "generators": [g.get_state() for g in self.minibatches.generators],
                    "returns20": [list(r) for r in self.returns20],
                    "normalization": [self.member_normalization(k) for k in range(len(self.seeds))],
                    "rng": _rng_state(), "wandb_ids": list(self.wandb_ids)}}}

    def save(self) -> Path:
        """Flush every member's loggers (the CSVs hold every row up to this point), write each member's
        ``last.ckpt``, then ``population.ckpt`` (what a resume reads), each atomically."""
        for member_loggers in self.loggers:
            for logger in member_loggers:
                logger.save()
        for k in range(len(self.seeds)):
            self.save_member(k)
        _save_atomic(self.checkpoint(), self.checkpoint_path)
        return self.checkpoint_path

    def restore(self, ckpt: dict) -> list[str]:
        """Put a population checkpoint's state (``checkpoint``) into this freshly built population; returns notes
        for the user. Environments are not serialisable: each member starts fresh episodes, from its seed moved past
        its env steps (``seed + 1 + env steps``, as a resumed single run's DataModule reseeds)."""
        state = ckpt["pglab"]["population"]
        notes = self.learner.load_state_dict({**state["learner"], "flat": ckpt["state_dict"]["flat"]})
        for generator, saved in zip(self.minibatches.generators, state["generators"], strict=True):
            generator.set_state(saved)
        self.returns20 = [[float(x) for x in r] for r in state["returns20"]]
        self.rollouts = int(state["rollouts"])
        for k, stats in enumerate(state.get("normalization") or []):
            for wrapper, attribute in ((vw.NormalizeObservation, "obs_rms"), (vw.NormalizeReward, "return_rms")):
                found = find_wrapper(self.envs[k], wrapper) if attribute in stats else None
                if found is not None:
                    load_rms(getattr(found, attribute), stats[attribute])
        self.collector.seeds = [int(s) + 1 + m.env_steps for s, m in zip(self.seeds, self.learner.members,
                                                                          strict=True)]
        self.wandb_ids = list(state.get("wandb_ids") or [None] * len(self.seeds))
        self.pending_rng = state["rng"]  # set just before the first rollout (``start``), after the loggers exist
        return notes

    def start(self) -> None:
        """Before the first rollout: a resumed population's RNG states (the shared action-noise stream) go on from
        its checkpoint's."""
        if self.pending_rng is not None:
            _set_rng_state(self.pending_rng)
            self.pending_rng = None

    # -- one rollout and its updates, for every member --------------------------------------------------
    def iteration(self) -> list[dict[str, float]]:
        learner, P = self.learner, len(self.seeds)
        start = time.perf_counter()
        rollouts = self.collector.collect(learner.act, learner.value)
        # the single run's DataLoaders draw their shared seed (torch.utils.data's _get_shared_seed) from the global
        # torch RNG: once after its first rollout, twice after every later one (Lightning's fit loop iterates the
        # reloaded loader anew). Drawing as many keeps the action-noise stream exactly a single run's
        for _ in range(1 if self.rollouts == 0 else 2):
            torch.empty((), dtype=torch.int64).random_()
        flats, rollout_metrics = [], []
        trainable = learner.trainable()
        together = None
        if self.columnwise_reason is None:  # every member's targets and advantages in one call (``columnwise``)
            with torch.inference_mode():
                together = compute_advantages(self.collector.merged(), self.estimator, self.baseline)
        n = self.collector.n
        for k, rollout in enumerate(rollouts):
            m = learner.members[k]
            if trainable[k]:
                try:
                    check_rollout_finite(rollout, m.env_steps)
                except NonFiniteRolloutError as err:
                    m.failed = f"member seed={m.seed}: {err}"
            usable = trainable[k] and m.failed is None
            cols = slice(k * n, (k + 1) * n)
            flat, metrics = flat_member(rollout, self.estimator, self.baseline,
                                        None if together is None else (together[0][:, cols], together[1][:, cols]))
            if not usable:  # a stopped member's rows take no part in any update
                flat = {n: x[:0] for n, x in flat.items()}
            elif flat["obs"].shape[0] == 0:
                m.skipped_rollouts += 1
            else:
                m.env_steps += flat["obs"].shape[0]
            flats.append(flat)
            rollout_metrics.append(metrics)
        stacked = stack_padded(flats)
        learner.start_rollout()
        stop = [not t or learner.members[k].failed is not None for k, t in enumerate(learner.trainable())]
        target_kl = learner.target_kl
        updates = self.minibatches.draw([f["obs"].shape[0] for f in flats])
        for (_, mask), batch in zip(updates, all_member_batches(stacked, updates) if updates else [], strict=True):
            has_rows = mask.any(1).tolist()
            active = [not stop[k] and has_rows[k] and learner.members[k].failed is None for k in range(P)]
            if not any(active):
                continue
            if _stop_signal() is not None:
                break
            applied, stats = learner.step(batch, active)
            if target_kl is not None and "approx_kl" in stats:
                kls = stats["approx_kl"].tolist()
                for k in range(P):
                    if applied[k] and kls[k] > target_kl:
                        stop[k] = True  # this update happened (as in CleanRL); the rest of the rollout's do not
        learner.check_parameters()
        kl = learner.post_update_kl(stacked).tolist()
        member_stats = learner.take_stats()
        # each member's surrogate adapts to its own KL (adaptive β), as a single run's does after its rollout
        adapted = learner.after_rollout([kl[k] if trainable[k] and learner.members[k].updates > 0
                                         and flats[k]["obs"].shape[0] > 0 else None for k in range(P)])
        elapsed = time.perf_counter() - start
        rows = []
        for k in range(P):
            m = learner.members[k]
            if not trainable[k]:
                rows.append({})
                continue
            metrics = {f"train/{key}": value for key, value in member_stats[k].items()}
            if m.updates > 0 and flats[k]["obs"].shape[0] > 0:
                metrics["train/kl_post_update"] = kl[k]
            metrics.update({f"train/{key}": value for key, value in adapted[k].items()})
            metrics["train/skipped_updates"] = float(m.skipped_updates)
            metrics["train/skipped_rollouts"] = float(m.skipped_rollouts)
            r = rollouts[k]
            if len(r.episode_returns):
                metrics["rollout/episode_return"] = float(r.episode_returns.mean())
                metrics["rollout/episode_length"] = float(r.episode_lengths.mean())
                self.returns20[k] = (self.returns20[k] + [float(x) for x in r.episode_returns])[-20:]
            metrics.update(rollout_metrics[k])
            metrics["train/lr"] = learner.member_lr(k)
            metrics["env_steps"] = float(m.env_steps)
            metrics["perf/sps"] = flats[k]["obs"].shape[0] / elapsed if elapsed > 0 else float("nan")
            if len(self.returns20[k]) >= 20:
                metrics["rollout/return_mean20"] = sum(self.returns20[k]) / 20
            if m.env_steps >= learner.total_env_steps:
                m.finished = True
            if self.cfg.eval.enabled and ((self.rollouts + 1) % int(self.cfg.eval.every_n_epochs) == 0
                                          or m.finished):
                metrics.update(self.evaluate(k))
            rows.append(metrics)
        self.rollouts += 1
        return rows

    def evaluate(self, k: int) -> dict[str, float]:
        """Member k's deterministic policy (the mode of π) on eval envs of its own, frozen at its normalisation
        statistics: ``eval.episodes`` episodes, as a single run's ``EvalCallback`` evaluates (its seed: the member's
        seed + 1,000,000 + the evaluations so far)."""
        if self.eval_envs[k] is None:
            stats = self.member_normalization(k)
            self.eval_envs[k] = make_frozen_envs(self.env_cfg, int(self.cfg.eval.num_envs), stats)
        else:
            freeze_normalization(self.eval_envs[k], self.member_normalization(k))
        network = self.learner.networks[k]  # its parameters are views of the population's: the current weights

        def act(obs):
            return network.act(obs, deterministic=True).actions

        seed = self.seeds[k] + 1_000_000 + self.evaluations[k]
        with torch.inference_mode():
            returns, lengths = run_episodes(self.eval_envs[k], act, int(self.cfg.eval.episodes), seed=seed)
        self.evaluations[k] += 1
        return {"eval/return_mean": float(returns.mean()), "eval/return_std": float(returns.std()),
                "eval/length_mean": float(lengths.mean())}

    def log(self, rows: list[dict[str, float]]) -> None:
        for k, metrics in enumerate(rows):
            if metrics and self.loggers:
                for logger in self.loggers[k]:
                    logger.log_metrics(metrics, step=int(metrics["env_steps"]))

    def close(self) -> None:
        for member_loggers in self.loggers:
            for logger in member_loggers:
                logger.save()
                if type(logger).__name__ == "WandbLogger" and logger._experiment is not None:
                    logger._experiment.finish()
        for envs in self.envs + [e for e in self.eval_envs if e is not None]:
            envs.close()

    def wandb_hint(self) -> str | None:
        """The `wandb sync` command for the members' offline W&B runs (None if there are none)."""
        from pglab.run.loggers import sync_hint

        hints = [sync_hint(str(d)) for d in self.member_dirs]
        runs = [h.removeprefix("wandb sync ") for h in hints if h]
        return "wandb sync " + " ".join(runs) if runs else None


def _own_wandb_run(logger):
    """A W&B run of this member's own: Lightning's WandbLogger reuses whatever run is live in the process (the
    previous member's), so each member's run is created here with ``reinit="create_new"`` from the logger's own
    ``wandb.init`` arguments (its name, group, mode, folder)."""
    import wandb

    previous = logger._experiment
    if previous is not None and previous is not wandb.run:
        return logger  # its own run already
    init = dict(logger._wandb_init)
    init.pop("anonymous", None)
    logger._experiment = wandb.init(**init, reinit="create_new")
    return logger


def _stop_signal() -> int | None:
    """The SIGTERM / SIGINT recorded by pglab's handler. Under ``python -m pglab.run.train`` the handler is
    ``__main__``'s (that module runs as ``__main__``, and ``import pglab.run.train`` is a second copy of it), so both
    copies' records are read."""
    import pglab.run.train

    main = sys.modules.get("__main__")
    main_state = getattr(main, "_SignalState", None) if getattr(getattr(main, "__spec__", None), "name", None) \
        == "pglab.run.train" else None
    for state in (pglab.run.train._SignalState, main_state):
        if state is not None and state.signum is not None:
            return state.signum
    return None


def _save_atomic(obj: dict, path: Path) -> None:
    """``torch.save`` into ``<path>.tmp``, fsync'd, renamed over ``path``: a kill mid-write leaves the previous file
    whole (``pglab.run.checkpoints.save_checkpoint_atomic``'s way)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    with open(tmp, "rb") as file:
        os.fsync(file.fileno())
    os.replace(tmp, path)


def _rng_state() -> dict:
    """The process's torch/numpy/python RNG states (``PolicyGradientModule._rng_state``'s form)."""
    from pglab.learner.module import PolicyGradientModule

    return PolicyGradientModule._rng_state()


def _set_rng_state(rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    name, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(int(x) for x in internal.tolist()), gauss))


def _multirun() -> bool:
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def merges_envs(env_cfg: EnvConfig) -> bool:
    """Whether all members' envs are one vector env of P·N envs (``pglab.rollout.population``): when no wrapper
    keeps statistics a member must own (observation or reward normalisation) and the envs are gymnasium's sync or
    native vector envs (async: one process per env either way; envpool and video: as a single run builds them)."""
    return (not env_cfg.normalize_obs and not env_cfg.normalize_reward and env_cfg.record_video_dir is None
            and env_cfg.vectorization in ("auto", "native", "sync"))


def build_population(cfg: DictConfig, out: Path | None = None) -> Population:
    """Validate, then build each member exactly as a single run with its seed builds itself (its seed set, its
    envs, its network), and stack them."""
    check_types(cfg)
    seeds = population_seeds(cfg)
    torch.set_num_threads(int(cfg.torch_threads))
    from pglab.run.train import plain_partial

    estimator = plain_partial(instantiate(cfg.estimator))
    baseline = plain_partial(instantiate(cfg.baseline))
    surrogate = instantiate(cfg.surrogate)
    check_combination(cfg, estimator, baseline, surrogate)
    check_population(cfg, surrogate)
    env_cfg = EnvConfig(**OmegaConf.to_container(cfg.env, resolve=True))
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    envs, policies, rng_after_first = [], [], None
    merged = merges_envs(env_cfg)
    try:
        for k, seed in enumerate(seeds):
            L.seed_everything(seed, workers=True, verbose=False)
            if not merged or k == 0:
                envs.append(make_vector_env(env_cfg, num_envs=env_cfg.num_envs * (len(seeds) if merged else 1)))
            if k == 0:
                check_env_api(env_cfg)
            policies.append(build_policy(model_cfg, envs[-1].single_observation_space, envs[-1].single_action_space))
            if k == 0:
                rng_after_first = torch.get_rng_state()
    except (ValueError, TypeError, ImportError) as err:
        raise ConfigError(f"this configuration cannot run:\n  - {err}") from err
    # action noise for all members comes from one stream, continuing member 0's: a population of 1 draws exactly
    # what the single run with its seed draws
    torch.set_rng_state(rng_after_first)
    learner_cfg = OmegaConf.to_container(cfg.learner, resolve=True)
    try:
        learner = PopulationLearner(policies, surrogate, seeds, total_env_steps=int(cfg.total_env_steps),
                                    **learner_cfg)
    except ValueError as err:
        raise ConfigError(f"this configuration cannot run:\n  - {err}") from err
    return Population(cfg, seeds, envs, learner, estimator, baseline,
                      out if out is not None else Path(cfg.paths.output_dir))


def run_population(cfg: DictConfig) -> tuple[dict[str, float], int]:
    """Train the population to every member's budget (from ``ckpt_path``'s state when resuming); (the last metrics
    of member 0, exit code). Exit 3 when a member stopped on a non-finite value (the others trained on; under
    multirun the job is marked FAILED for the sweep's summary instead), 128 + signal when stopped by one."""
    cfg, ckpt = resume_population(cfg)
    if ckpt is not None:
        members = ckpt["pglab"]["population"]["learner"]["members"]
        if all(m["failed"] is not None or m["env_steps"] >= int(cfg.total_env_steps) for m in members):
            stopped = "; members stopped on non-finite values stay stopped" if any(m["failed"] for m in members) \
                else ""
            print(f"pglab: {cfg.ckpt_path} is a finished population (members' env steps "
                  f"{[m['env_steps'] for m in members]}, total_env_steps={cfg.total_env_steps}{stopped}); nothing to "
                  "do. To train on, raise total_env_steps")
            return {}, 0
    pop = build_population(cfg)
    P, out = len(pop.seeds), pop.out
    if ckpt is not None:
        try:
            notes = pop.restore(ckpt)
        except (ValueError, KeyError, RuntimeError) as err:
            pop.close()
            raise ConfigError(f"ckpt_path={cfg.ckpt_path}: cannot restore this population from it: "
                              f"{type(err).__name__}: {err}") from err
        pop.choices = ckpt["pglab"].get("choices") or pop.choices
    if _stop_signal() is not None:  # stopped while the envs were being built: nothing trained, nothing lost
        pop.close()
        print(f"pglab: stopped by {signal.Signals(_stop_signal()).name} before training started; nothing to save"
              + (f" (the population can still resume from {cfg.ckpt_path})" if ckpt is not None else ""),
              file=sys.stderr)
        return {}, 128 + int(_stop_signal())
    network = type(pop.learner.base).__name__
    print(f"pglab: population of {P} (seeds {pop.seeds}) of {network}; {pop.learner.describe()}; "
          f"outputs in {pop.out}/member-<k>/ (per member: CSV, the configured loggers, checkpoints and its "
          "evaluations)", flush=True)
    resume_steps = None
    if ckpt is not None:
        resume_steps = [m.env_steps for m in pop.learner.members]
        _resume_outputs(pop, cfg, resume_steps)
        for note in notes:
            print(f"pglab: {note}")
    del ckpt
    pop.open_outputs(resume_steps)
    pop.start()
    last: list[dict] = [{} for _ in range(P)]
    reported: set[int] = {k for k, m in enumerate(pop.learner.members) if m.failed}
    every = int(cfg.checkpoint.every_n_epochs) if cfg.checkpoint.enabled else 0
    code, saved = 0, None
    try:
        while any(pop.learner.trainable()):
            rows = pop.iteration()
            pop.log(rows)
            last = [r or old for r, old in zip(rows, last, strict=True)]
            for k, m in enumerate(pop.learner.members):
                if m.failed and k not in reported:
                    reported.add(k)
                    print(f"pglab: {m.failed}; the other members go on", file=sys.stderr, flush=True)
            if _stop_signal() is not None:
                code = 128 + int(_stop_signal())
                break
            if every and pop.rollouts % every == 0 and any(pop.learner.trainable()):
                pop.save()  # periodic; the final state is saved below
        # at the end and on SIGTERM/SIGINT (at a rollout's end); not on an exception: the state mid-rollout is no
        # rollout boundary, the previous periodic checkpoint is
        if cfg.checkpoint.enabled:
            saved = pop.save()
    finally:
        pop.close()
    hint = pop.wandb_hint()
    if hint:
        print(f"pglab: the members' W&B runs are offline; upload them with: {hint}")
    failed = [m for m in pop.learner.members if m.failed]
    for k, m in enumerate(pop.learner.members):
        ret = last[k].get("rollout/episode_return", float("nan"))
        state = "STOPPED (" + m.failed + ")" if m.failed else "finished" if m.finished else "stopped"
        print(f"pglab: member {k} seed={m.seed}: {state}: {m.env_steps} env steps, last mean episode return "
              f"{ret:.1f}; {pop.member_dirs[k]}")
    if code:
        from pglab.run.train import resume_command

        name = signal.Signals(code - 128).name
        where = (f"checkpoints {saved} (each member's in {out}/member-<k>/checkpoints/last.ckpt); resume: "
                 f"{resume_command(saved, out)}" if saved is not None else "no checkpoint (checkpoint.enabled=false)")
        print(f"pglab: stopped by {name} at rollout {pop.rollouts} (members' env steps "
              f"{[m.env_steps for m in pop.learner.members]}); metrics flushed; {where}", file=sys.stderr, flush=True)
    elif failed:
        if _multirun():
            # the other jobs go on; the sweep's summary names this one (its first line: the first member's reason)
            mark_failed(out, f"NonFiniteError: {len(failed)} of {P} population members stopped on a non-finite "
                             f"value ({failed[0].failed})\n" + "\n".join(m.failed for m in failed)
                        + f"\nthe members' outputs: {out}/member-<k>/")
            print(f"pglab: population job failed: {len(failed)} of {P} members stopped on a non-finite value; the "
                  "sweep goes on and its summary names this job", file=sys.stderr)
            return {}, 0
        code = 3
    return {k: float(v) for k, v in last[0].items()}, code


def kept_checkpoint_note(cfg: DictConfig) -> str:
    """What a population that failed with an exception leaves to resume from (``pglab.run.train``'s failure line):
    its last periodic checkpoint and the command, or that there is none."""
    path = Path(cfg.paths.output_dir) / "checkpoints" / POPULATION_CKPT
    if not (cfg.checkpoint.enabled and path.is_file()):
        return "no population checkpoint was written before it (checkpoint.every_n_epochs sets how often)"
    from pglab.run.train import resume_command

    return f"the last checkpoint is kept: {path}; resume: {resume_command(path, path.parents[1])}"


def _resume_outputs(pop: Population, cfg: DictConfig, steps: list[int]) -> None:
    """A resumed population's folder: ``.hydra/config.yaml`` is the config it trains with (the command line's kept
    as ``config.command_line.yaml``), each member's CSV rows logged after its checkpointed env steps dropped (this
    run logs those steps again), ``resumed_from.json``."""
    out = pop.out
    out.mkdir(parents=True, exist_ok=True)
    hydra_dir = out / ".hydra"
    if (hydra_dir / "config.yaml").is_file():
        (hydra_dir / "config.yaml").replace(hydra_dir / "config.command_line.yaml")
        OmegaConf.save(cfg, hydra_dir / "config.yaml")
    for k, d in enumerate(pop.member_dirs):
        for csv_file in sorted(d.glob("csv/**/metrics.csv")):
            dropped = truncate_csv(csv_file, steps[k])
            if dropped:
                print(f"pglab: dropped {dropped} rows of {csv_file} logged after the checkpoint's {steps[k]} env "
                      "steps (this run logs those steps again)")
    (out / "resumed_from.json").write_text(json.dumps(
        {"ckpt_path": str(Path(cfg.ckpt_path).resolve()), "seeds": pop.seeds, "env_steps": steps}) + "\n")
    stopped = [f"seed={m.seed}" for m in pop.learner.members if m.failed]
    print(f"pglab: resuming the population of {len(pop.seeds)} (seeds {pop.seeds}) from {cfg.ckpt_path} at env "
          f"steps {steps} with its own algorithm, env and model ({cfg.env.id}); outputs in {out}"
          + (f"; members stopped on a non-finite value stay stopped: {', '.join(stopped)}" if stopped else ""),
          flush=True)
