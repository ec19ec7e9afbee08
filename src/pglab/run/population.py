"""``population=P`` (or a list of seeds): P independent runs trained in one process, vectorised over seeds.

Member k has seed ``seed + k`` (or the k-th listed seed); its envs, initial weights, minibatch shuffles, Adam state,
learning-rate schedule, target-KL early stop and non-finite guard are its own (``pglab.learner.population``,
``pglab.rollout.population``). The plain MLP acts and updates through the stacked fast path
(``pglab.accel.population``, checked against the vmapped reference at start-up); any other network, or
``learner.gradients=autograd``, runs the vmapped reference; the first line says which.

Each member writes ``<run>/member-<k>/`` as a single run with that seed would: ``csv/metrics.csv`` (x-axis
``env_steps``), ``.hydra/config.yaml`` (its own seed, ``population: 1``: the command that reproduces it alone) and
``checkpoints/last.ckpt`` (read by ``pglab.tools.evaluate``), so ``pglab.tools.plot`` counts members as seeds.

Not covered (refused at start-up or said at start-up): DDP (one process trains the whole population), resume,
the episode collector, surrogates with state or a reference policy, eval callbacks, W&B per member.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import lightning as L
import torch
from gymnasium.wrappers import vector as vw
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from pglab.envs.make import EnvConfig, check_env_api, find_wrapper, make_vector_env, rms_state
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
from pglab.run.checks import ConfigError, check_combination, check_types

__all__ = ["population_seeds", "check_population", "build_population", "run_population", "Population"]


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
    value = cfg.get("population", 1)
    return isinstance(value, (list, tuple, ListConfig)) or value != 1


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
    if cfg.ckpt_path is not None:
        problems.append("ckpt_path: a population cannot be resumed yet; resume a member alone from "
                        "<run>/member-<k>/checkpoints/last.ckpt with population=1")
    if cfg.collector.kind != "segments":
        problems.append("collector.kind=episodes: a population collects segments only (collector.kind=segments)")
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
        self.member_dirs = [out / f"member-{k}" for k in range(len(seeds))]
        self.loggers = []
        self.returns20: list[list[float]] = [[] for _ in seeds]
        self.rollouts = 0

    # -- outputs ---------------------------------------------------------------------------------------
    def member_config(self, k: int) -> dict:
        """The resolved config of member k as a run of its own: its seed, ``population: 1``, its folder."""
        cfg = self.cfg.copy()
        OmegaConf.set_struct(cfg, False)
        cfg.seed, cfg.population = self.seeds[k], 1
        cfg.paths = {"output_dir": str(self.member_dirs[k])}
        config = OmegaConf.to_container(cfg, resolve=True)
        config.pop("hydra", None)
        return config

    def open_outputs(self) -> None:
        from pglab.run.loggers import CSVLogger

        overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
        kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in ("population", "seed")]
        for k, d in enumerate(self.member_dirs):
            (d / ".hydra").mkdir(parents=True, exist_ok=True)
            OmegaConf.save(OmegaConf.create(self.member_config(k)), d / ".hydra" / "config.yaml")
            OmegaConf.save(OmegaConf.create([*kept, f"seed={self.seeds[k]}"]), d / ".hydra" / "overrides.yaml")
            parent_hydra = self.out / ".hydra" / "hydra.yaml"
            if parent_hydra.is_file():  # the Hydra choices (algo=..., env=...) that plot groups by
                (d / ".hydra" / "hydra.yaml").write_text(parent_hydra.read_text())
            # the member's CSV always (what pglab.tools.plot reads), and every other logger its config names,
            # instantiated from its own resolved config: W&B named by its seed, in its population's group
            member_loggers = [CSVLogger(save_dir=str(d), name="csv", version="")]
            config = self.member_config(k)
            for logger_cfg in (config.get("logger") or {}).values():
                target = str(logger_cfg.get("_target_", ""))
                if target.endswith("CSVLogger"):
                    continue
                logger = instantiate(logger_cfg)
                if type(logger).__name__ == "WandbLogger":
                    logger = _own_wandb_run(logger)
                    logger.experiment.define_metric("env_steps")
                    logger.experiment.define_metric("*", step_metric="env_steps")
                logger.log_hyperparams(config)
                member_loggers.append(logger)
            self.loggers.append(member_loggers)

    def save_member(self, k: int) -> Path:
        """``member-<k>/checkpoints/last.ckpt``: the member's weights and config as ``pglab.tools.evaluate`` reads a
        single run's checkpoint (not resumable: no optimizer or loop state)."""
        path = self.member_dirs[k] / "checkpoints" / "last.ckpt"
        path.parent.mkdir(parents=True, exist_ok=True)
        config = self.member_config(k)
        state = {f"policy.{n}": v for n, v in self.learner.member_parameters(k).items()}
        state["env_steps"] = torch.tensor(self.learner.members[k].env_steps)
        normalization = {}
        # a member with statistics of its own has a vector env of its own (merged envs have none)
        obs_norm = find_wrapper(self.envs[k], vw.NormalizeObservation) if len(self.envs) == len(self.seeds) else None
        if obs_norm is not None:
            normalization["obs_rms"] = rms_state(obs_norm.obs_rms)
        ckpt = {"state_dict": state, "OnPolicyDataModule": normalization,
                "pglab": {"config": config, "population_member": k, "updates": self.learner.members[k].updates}}
        tmp = path.with_suffix(".tmp")
        torch.save(ckpt, tmp)
        tmp.replace(path)
        return path

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
            rows.append(metrics)
        self.rollouts += 1
        return rows

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
        for envs in self.envs:
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
    from pglab.run.train import _SignalState

    return _SignalState.signum


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
    """Train the population to every member's budget; (the last metrics of member 0, exit code). Exit 3 when a
    member stopped on a non-finite value (the others trained on), 128 + signal when stopped by one."""
    pop = build_population(cfg)
    P = len(pop.seeds)
    network = type(pop.learner.base).__name__
    print(f"pglab: population of {P} (seeds {pop.seeds}) of {network}; {pop.learner.describe()}; "
          f"outputs in {pop.out}/member-<k>/ (per member: CSV, the configured loggers and checkpoints; eval "
          "callbacks are not run for populations)", flush=True)
    pop.open_outputs()
    last: list[dict] = [{} for _ in range(P)]
    reported: set[int] = set()
    code = 0
    try:
        while not all(not t for t in pop.learner.trainable()):
            rows = pop.iteration()
            pop.log(rows)
            last = [r or old for r, old in zip(rows, last, strict=True)]
            for k, m in enumerate(pop.learner.members):
                if m.failed and k not in reported:
                    reported.add(k)
                    print(f"pglab: {m.failed}; the other members go on", file=sys.stderr, flush=True)
            if _stop_signal() is not None:
                code = 128 + int(_stop_signal())
                print(f"pglab: stopped by {signal.Signals(_stop_signal()).name}; metrics flushed, member "
                      "checkpoints written (populations cannot be resumed yet)", file=sys.stderr)
                break
    finally:
        if cfg.checkpoint.enabled:
            for k in range(P):
                pop.save_member(k)
        pop.close()
    hint = pop.wandb_hint()
    if hint:
        print(f"pglab: the members' W&B runs are offline; upload them with: {hint}")
    failed = [m for m in pop.learner.members if m.failed]
    for k, m in enumerate(pop.learner.members):
        ret = last[k].get("rollout/episode_return", float("nan"))
        state = "STOPPED (" + m.failed + ")" if m.failed else "finished"
        print(f"pglab: member {k} seed={m.seed}: {state}: {m.env_steps} env steps, last mean episode return "
              f"{ret:.1f}; {pop.member_dirs[k]}")
    if failed and code == 0:
        code = 3
    return {k: float(v) for k, v in last[0].items()}, code
