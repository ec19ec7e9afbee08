"""On-policy LightningDataModule: every epoch collects a fresh rollout with the current policy.

``train_dataloader`` runs once per epoch (``reload_dataloaders_every_n_epochs=1``), so epoch k collects with
the weights left by epoch k−1. It turns the rollout into targets (estimator) and advantages (baseline), then
returns a DataLoader that makes ``update_epochs`` shuffled passes in minibatches: one Lightning epoch is one
rollout iteration. Minibatches are gathered with one index tensor each (no per-sample collation).

The DataModule meets the LightningModule through two calls only: ``module.rollout_policy()`` gives the
(act, value) functions to collect with, and ``module.record_rollout(stats)`` takes what the rollout measured.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import lightning as L
import numpy as np
import torch
from gymnasium.wrappers import vector as vw
from torch import Tensor
from torch.utils.data import DataLoader

from pglab.core.collectives import all_ranks
from pglab.core.types import Batch, Rollout, RolloutStats
from pglab.envs.make import (
    EnvConfig,
    find_wrapper,
    freeze_normalization,
    load_rms,
    make_frozen_envs,
    make_vector_env,
    merge_running_stats,
    rms_state,
)
from pglab.rollout.advantages import compute_advantages, explained_variance
from pglab.rollout.collectors import EpisodeCollector, SegmentCollector
from pglab.rollout.minibatches import MinibatchDataset, MinibatchSampler

__all__ = ["OnPolicyDataModule", "NonFiniteRolloutError", "check_rollout_finite"]


def _identity(batch: Batch) -> Batch:
    return batch


class NonFiniteRolloutError(RuntimeError):
    """The environment returned a NaN/inf observation or reward."""


def check_rollout_finite(rollout: Rollout, env_steps: int) -> None:
    """Refuse a rollout whose real rows hold a non-finite observation or reward, naming the first (t, env)."""
    for name, values in (("observation", rollout.obs), ("reward", rollout.rewards)):
        finite = torch.isfinite(values.reshape(*values.shape[:2], -1)).all(-1) | ~rollout.valid
        if not bool(finite.all()):
            t, env = (int(i) for i in torch.nonzero(~finite)[0])
            raise NonFiniteRolloutError(
                f"the environment returned a non-finite {name} at rollout step {t} of env {env} (after {env_steps} "
                "env steps of training): fix the environment, or wrap it so it returns finite values "
                "(env.normalize_obs=true clips observations but does not remove NaN)")


class OnPolicyDataModule(L.LightningDataModule):
    """Owns the environments, the collector and the rollout-to-batch transform.

    Args:
        env: environment config (``conf/env``).
        collector: ``kind`` (segments | episodes), ``num_steps`` (segments), ``num_groups`` × ``group_size``
            (episodes), ``max_episode_steps`` (episodes; default: the env's time limit).
        estimator: callable (rewards, values, next_values, terminated, done, valid) → targets [T, N].
        baseline: callable (targets, valid, *inputs) → advantages [T, N]; its ``inputs`` attribute names the
            extra tensors it reads (see pglab.core.baselines).
        update_epochs / num_minibatches: K shuffled passes in M minibatches per rollout.
        minibatches_per_step: how many of those K·M minibatches one Lightning training step gets (None: all).
        whole_episodes: minibatches made of whole episodes (GSPO, episode-level aggregation).
        seed: drives env seeding, group start states and minibatch shuffling.
    """

    def __init__(self, env: EnvConfig, collector: dict, estimator: Callable, baseline: Callable,
                 update_epochs: int, num_minibatches: int, whole_episodes: bool,
                 seed: int, minibatches_per_step: int | None = None) -> None:
        super().__init__()
        self.env_cfg = env
        self.collector_cfg = dict(collector)
        self.estimator, self.baseline = estimator, baseline
        self.update_epochs, self.num_minibatches = update_epochs, num_minibatches
        self.minibatches_per_step = minibatches_per_step
        self.whole_episodes = whole_episodes
        self.seed = seed
        self.envs = None
        self.collector: SegmentCollector | EpisodeCollector | None = None
        self.generator = torch.Generator().manual_seed(seed)
        # this rank's own real transitions (the module's env_steps is the global count that drives the budget);
        # checkpointed, so a resumed run reseeds its envs away from the original start states
        self.total_env_steps = 0
        self._normalization_cache: dict = {}  # the statistics at teardown (see there)

    # -- environments --------------------------------------------------------------------------------
    @property
    def episodic(self) -> bool:
        return self.collector_cfg["kind"] == "episodes"

    def make_envs(self):
        if self.envs is None:
            if self.episodic:
                if self.env_cfg.vectorization == "envpool":
                    raise ValueError("collector.kind=episodes resets each group's envs with one seed, which EnvPool "
                                     "cannot do: use env.vectorization=sync")
                n = self.collector_cfg["num_groups"] * self.collector_cfg["group_size"]
                # per-env seeds for grouped resets need a gymnasium vector env, not a native one
                vectorization = "sync" if self.env_cfg.vectorization in ("auto", "native") else None
                self.envs = make_vector_env(self.env_cfg, num_envs=n, vectorization=vectorization)
            else:
                self.envs = make_vector_env(self.env_cfg)
        return self.envs

    @property
    def rank(self) -> int:
        return self.trainer.global_rank if self.trainer is not None else 0

    @property
    def world_size(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    def rank_seed(self, seed: int) -> int:
        """Rank 0 keeps ``seed`` (a one-process run is unchanged); rank r > 0 gets an independent stream."""
        if self.rank == 0:
            return seed
        return int(np.random.SeedSequence([seed, self.rank]).generate_state(1)[0])

    def setup(self, stage: str | None = None) -> None:
        if self.collector is not None:
            return
        if self.rank > 0:
            # each rank collects its own rollouts: other env seeds, other shuffles, other action noise
            self.generator.manual_seed(self.rank_seed(self.seed))
            torch.manual_seed(self.rank_seed(self.seed + 1))
        envs = self.make_envs()
        param_dim = self.trainer.lightning_module.policy.head.param_dim
        if self.episodic:
            max_steps = self.collector_cfg.get("max_episode_steps") or (
                envs.spec.max_episode_steps if envs.spec is not None else None)
            if not max_steps:
                raise ValueError(f"{self.env_cfg.id} has no time limit: set collector.max_episode_steps for the "
                                 "episode collector")
            self.collector = EpisodeCollector(envs, self.collector_cfg["num_groups"],
                                              self.collector_cfg["group_size"], int(max_steps), param_dim,
                                              self.rank_seed(self.seed))
        else:
            # a resumed run's seed is set when its state is loaded (after setup, see _apply_pending_state)
            self.collector = SegmentCollector(envs, self.collector_cfg["num_steps"], param_dim,
                                              self.rank_seed(self.seed))
        self._apply_pending_state()

    def teardown(self, stage: str | None = None) -> None:
        if self.envs is not None:
            # the final checkpoint (last.ckpt) is written after fit, when the envs are closed: keep the statistics
            self._normalization_cache = self._normalization_state()
            self.envs.close()
            self.envs = None
            self.collector = None

    # -- one rollout per epoch -----------------------------------------------------------------------
    def transfer_batch_to_device(self, batch: list[Batch], device: torch.device, dataloader_idx: int) -> list[Batch]:
        """A step's minibatches onto the module's device. Lightning's default walks every field of every Batch
        through ``apply_to_collection``, a per-field cost on every rollout; on the CPU nothing moves at all."""
        if device.type == "cpu":
            return batch
        return [Batch(**{f.name: (v.to(device, non_blocking=True) if isinstance(v := getattr(b, f.name), Tensor)
                                  else v) for f in dataclasses.fields(b)}) for b in batch]

    def train_dataloader(self) -> DataLoader:
        module = self.trainer.lightning_module
        if self.trainer.fit_loop.done:
            # Lightning builds the loader once at fit start even when a resumed run has nothing left to do:
            # collecting then would step the envs and move the counters for nothing
            return DataLoader([], batch_size=None)
        act, value = module.rollout_policy()
        start = self._running_stats() if self.world_size > 1 else None
        with torch.inference_mode():
            rollout = self.collector.collect(act, value)
        if start:
            self._sync_running_stats(start)
        check_rollout_finite(rollout, int(module.env_steps))
        valid = rollout.valid
        self.total_env_steps += rollout.num_transitions
        episode_returns = torch.as_tensor(rollout.episode_returns, dtype=torch.float32)
        episode_lengths = torch.as_tensor(rollout.episode_lengths, dtype=torch.float32)
        if rollout.num_transitions == 0:
            # only autoreset rows (e.g. every env ended on the previous rollout's last step): nothing to learn from;
            # the module counts it (train/skipped_rollouts) and the epoch runs no update
            module.record_rollout(RolloutStats(env_steps=0, episode_returns=episode_returns,
                                               episode_lengths=episode_lengths), None)
            return DataLoader([[]], batch_size=None, collate_fn=_identity)
        with torch.inference_mode():
            targets, advantages = compute_advantages(rollout, self.estimator, self.baseline)
        batch, episode_length = self._flatten(rollout, targets, advantages)
        module.record_rollout(RolloutStats(
            env_steps=rollout.num_transitions,
            episode_returns=episode_returns,
            episode_lengths=episode_lengths,
            metrics={  # a new rollout metric is one line here
                "train/explained_variance": explained_variance(rollout.values[valid], targets[valid]),
                "rollout/advantage_mean": float(advantages[valid].mean()),
                "rollout/advantage_std": float(advantages[valid].std()) if valid.sum() > 1 else 0.0,
            }), batch)
        dataset = MinibatchDataset(batch, episode_length)
        sampler = MinibatchSampler(len(dataset), self.num_minibatches, self.update_epochs, self.generator,
                                   self.minibatches_per_step)
        return DataLoader(dataset, sampler=sampler, batch_size=None, collate_fn=_identity)

    def _flatten(self, rollout: Rollout, targets: Tensor, advantages: Tensor) -> tuple[Batch, int | None]:
        """[T, N] → flat rows. Segments: only the valid rows. Whole episodes: episode-major, padded."""
        fields = (rollout.obs, rollout.actions, rollout.logp, rollout.values, rollout.dist_params, advantages,
                  targets)
        if self.whole_episodes:
            T, N = rollout.valid.shape
            flat = [x.transpose(0, 1).reshape(N * T, *x.shape[2:]) for x in fields]
            mask = rollout.valid.transpose(0, 1).reshape(-1).float()
            episode_ids = torch.arange(N).repeat_interleave(T)
            return Batch(*flat, mask, episode_ids, N), T
        valid = rollout.valid
        flat = [x[valid] for x in fields]
        count = flat[0].shape[0]
        return Batch(*flat, torch.ones(count), torch.zeros(count, dtype=torch.long), 1), None

    # -- normalisation statistics identical on every rank (as one VecNormalize over all ranks' envs) ------
    def _running_stats(self) -> dict:
        """The RunningMeanStd objects of observation and reward normalisation, by name (empty without them)."""
        stats = {}
        obs_norm = find_wrapper(self.envs, vw.NormalizeObservation)
        if obs_norm is not None:
            stats["obs"] = (obs_norm.obs_rms, (obs_norm.obs_rms.mean.copy(), obs_norm.obs_rms.var.copy(),
                                               float(obs_norm.obs_rms.count)))
        reward_norm = find_wrapper(self.envs, vw.NormalizeReward)
        if reward_norm is not None:
            rms = reward_norm.return_rms
            stats["return"] = (rms, (np.copy(rms.mean), np.copy(rms.var), float(rms.count)))
        return stats

    def _sync_running_stats(self, start: dict) -> None:
        """After a rollout: merge every rank's updates since ``start`` into the same statistics on all ranks."""
        mine = {name: (rms.mean, rms.var, float(rms.count)) for name, (rms, _) in start.items()}
        everyone = all_ranks(mine)
        for name, (rms, start_state) in start.items():
            mean, var, count = merge_running_stats(start_state, [ranks[name] for ranks in everyone])
            rms.mean = mean.astype(rms.mean.dtype) if hasattr(rms.mean, "astype") else mean
            rms.var = var.astype(rms.var.dtype) if hasattr(rms.var, "astype") else var
            rms.count = count

    # -- evaluation ----------------------------------------------------------------------------------
    def make_eval_envs(self, num_envs: int, **overrides):
        """A separate vector env for evaluation whose observation normalisation is frozen at the training
        statistics (copied now, not updated by evaluation). Reward normalisation is off: eval reports raw returns."""
        return make_frozen_envs(dataclasses.replace(self.env_cfg, **overrides), num_envs,
                                self._normalization_state())

    def sync_obs_normalization(self, eval_envs) -> None:
        """Copy the training env's current observation statistics into ``eval_envs`` (frozen there)."""
        freeze_normalization(eval_envs, self._normalization_state())

    # -- checkpointed state --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Counters, the shuffling RNG, the group-seed RNG and the normalisation statistics.

        Environments themselves are not serialisable: a resumed run starts fresh episodes."""
        state = {"total_env_steps": self.total_env_steps, "generator": self.generator.get_state()}
        if isinstance(self.collector, EpisodeCollector):
            state["group_rng"] = self.collector.rng.bit_generator.state
        if self.world_size > 1:  # every rank's own shuffling and group-seed streams (rank 0 writes the file)
            state["per_rank"] = all_ranks(
                {k: state[k] for k in ("generator", "group_rng") if k in state})
        state.update(self._normalization_state() if self.envs is not None else self._normalization_cache)
        return state

    def _normalization_state(self) -> dict:
        state = {}
        obs_norm = find_wrapper(self.envs, vw.NormalizeObservation)
        if obs_norm is not None:
            state["obs_rms"] = rms_state(obs_norm.obs_rms)
        reward_norm = find_wrapper(self.envs, vw.NormalizeReward)
        if reward_norm is not None:
            state["return_rms"] = rms_state(reward_norm.return_rms)
        return state

    def load_state_dict(self, state: dict) -> None:
        self.total_env_steps = state["total_env_steps"]
        per_rank = state.get("per_rank")
        if per_rank and self.rank < len(per_rank):
            state = {**state, **per_rank[self.rank]}
        self.generator.set_state(state["generator"])
        self._pending_state = state  # applied once the envs and the collector exist
        if self.collector is not None:
            self._apply_pending_state()

    def _apply_pending_state(self) -> None:
        state = getattr(self, "_pending_state", None)
        if state is None:
            return
        self._pending_state = None
        if isinstance(self.collector, SegmentCollector) and self.collector.obs is None and self.total_env_steps:
            # a resumed run restarts its episodes from other start states than the original start did
            self.collector.seed = self.rank_seed(self.seed + 1 + self.total_env_steps)
        if "group_rng" in state and isinstance(self.collector, EpisodeCollector):
            self.collector.rng.bit_generator.state = state["group_rng"]
        if "obs_rms" in state:
            load_rms(find_wrapper(self.envs, vw.NormalizeObservation).obs_rms, state["obs_rms"])
        if "return_rms" in state:
            load_rms(find_wrapper(self.envs, vw.NormalizeReward).return_rms, state["return_rms"])

