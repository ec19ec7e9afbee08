"""Collection and minibatches for a population of P members, each with envs, shuffles and statistics of its own.

Member k's vector env is built exactly as a single run's (same wrappers, so observation/reward normalisation
statistics are its own) and reset with its own seed; the envs of all members are stepped in lock-step so that all
policies act in one vectorised call per step. Targets and advantages are computed per member, from its own rollout
alone (a batch-wide baseline such as ``baseline=mean`` must not mix members). Minibatches are drawn per member with
its own generator (seeded as a single run's ``OnPolicyDataModule`` is) and padded with masked rows to the largest
member's size, so they stack into [P, B, ...]: the reference loss reads only rows with mask 1.
"""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from pglab.core.types import ActOutput, Rollout
from pglab.rollout.advantages import compute_advantages, explained_variance
from pglab.rollout.collectors import _Buffers, _finished_episodes, _spaces
from pglab.rollout.minibatches import MinibatchSampler

__all__ = ["PopulationCollector", "member_batches", "flat_member", "stack_padded", "MemberMinibatches"]

FLAT_FIELDS = ("obs", "actions", "logp_old", "values_old", "dist_params_old", "advantages", "targets")


class PopulationCollector:
    """T steps × N envs for each of P members, stepped together (the segment collector's semantics per member:
    episodes continue across collections, the step after a done is an autoreset row, one bootstrap value call)."""

    def __init__(self, envs: list[gym.vector.VectorEnv], num_steps: int, param_dim: int, seeds: list[int]) -> None:
        if num_steps < 1:
            raise ValueError(f"collector.num_steps must be >= 1, got {num_steps}")
        if len(envs) != len(seeds):
            raise ValueError(f"one vector env per member: {len(envs)} envs for {len(seeds)} seeds")
        self.envs, self.num_steps, self.seeds = envs, num_steps, list(seeds)
        obs_shape, action_shape, action_dtype = _spaces(envs[0])
        n = envs[0].num_envs
        self.buffers = [_Buffers(num_steps, n, obs_shape, action_shape, action_dtype, param_dim) for _ in envs]
        self.obs: list[np.ndarray] | None = None
        self.prev_done = [np.zeros(n, dtype=bool) for _ in envs]

    def collect(self, act: Callable[[Tensor], ActOutput], value: Callable[[Tensor], Tensor]) -> list[Rollout]:
        """One rollout per member; ``act`` / ``value`` take the stacked observations [P, N, ...]."""
        if self.obs is None:
            self.obs = [np.asarray(envs.reset(seed=seed)[0], dtype=np.float32)
                        for envs, seed in zip(self.envs, self.seeds, strict=True)]
        P, bufs = len(self.envs), self.buffers
        returns: list[list] = [[] for _ in range(P)]
        lengths: list[list] = [[] for _ in range(P)]
        obs, prev_done = self.obs, self.prev_done
        for t in range(self.num_steps):
            for k in range(P):
                bufs[k].obs[t] = obs[k]
            out = act(torch.from_numpy(np.stack([b.obs[t] for b in bufs])))
            actions = out.actions.numpy()
            for k, (b, envs) in enumerate(zip(bufs, self.envs, strict=True)):
                b.write_policy(t, ActOutput(out.actions[k], out.logp[k], out.values[k], out.dist_params[k]))
                obs[k], b.rewards[t], terminated, truncated, info = envs.step(actions[k])
                done = terminated | truncated
                b.terminated[t], b.done[t] = terminated, done
                b.valid[t] = ~prev_done[k]
                if done.any():
                    _finished_episodes(info, returns[k], lengths[k])
                prev_done[k] = done
        self.obs = [np.asarray(o, dtype=np.float32) for o in obs]
        last = value(torch.from_numpy(np.stack(self.obs)))
        rollouts = []
        for k, b in enumerate(bufs):
            b.values[self.num_steps] = last[k]
            rollouts.append(b.snapshot(self.num_steps, returns[k], lengths[k]))
        return rollouts


def flat_member(rollout: Rollout, estimator: Callable, baseline: Callable) -> tuple[dict[str, Tensor], dict]:
    """One member's rollout → its flat real rows (the single run's ``_flatten`` for segments) and its rollout
    metrics (the DataModule's names)."""
    with torch.inference_mode():
        targets, advantages = compute_advantages(rollout, estimator, baseline)
    valid = rollout.valid
    fields = (rollout.obs, rollout.actions, rollout.logp, rollout.values, rollout.dist_params, advantages, targets)
    flat = {name: x[valid].clone() for name, x in zip(FLAT_FIELDS, fields, strict=True)}
    metrics = {}
    if valid.any():
        metrics = {"train/explained_variance": explained_variance(rollout.values[valid], targets[valid]),
                   "rollout/advantage_mean": float(advantages[valid].mean()),
                   "rollout/advantage_std": float(advantages[valid].std()) if valid.sum() > 1 else 0.0}
    return flat, metrics


def stack_padded(flats: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Members' flat rows [R_k, ...] → [P, max R_k, ...] with ``mask`` 1 on real rows. A padding row repeats the
    member's first row (finite values; mask 0 keeps it out of every sum); a member with no rows is all padding of
    zeros."""
    longest = max(1, max(f["obs"].shape[0] for f in flats))
    out: dict[str, list[Tensor]] = {name: [] for name in (*FLAT_FIELDS, "mask")}
    for f in flats:
        rows = f["obs"].shape[0]
        index = torch.zeros(longest, dtype=torch.long)
        index[:rows] = torch.arange(rows)
        for name in FLAT_FIELDS:
            x = f[name]
            out[name].append(x[index] if rows else x.new_zeros((longest, *x.shape[1:])))
        mask = torch.zeros(longest)
        mask[:rows] = 1.0
        out["mask"].append(mask)
    return {name: torch.stack(xs) for name, xs in out.items()}


class MemberMinibatches:
    """Each member's K shuffled passes in M minibatches, from its own generator (``MinibatchSampler`` exactly as the
    single run's DataModule draws them), stacked per update index into [P, B_max] row indices and masks."""

    def __init__(self, seeds: list[int], update_epochs: int, num_minibatches: int) -> None:
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.update_epochs, self.num_minibatches = update_epochs, num_minibatches

    def draw(self, sizes: list[int]) -> list[tuple[Tensor, Tensor]]:
        """For member row counts ``sizes``: the updates' (index [P, B], mask [P, B]); a member with fewer
        minibatches than another (or no rows) is masked out of the updates it lacks (mask all 0)."""
        per_member = []
        for size, gen in zip(sizes, self.generators, strict=True):
            if size == 0:
                per_member.append([])  # the single run skips such a rollout without drawing
                continue
            sampler = MinibatchSampler(size, self.num_minibatches, self.update_epochs, gen)
            per_member.append([index for chunk in sampler for index in chunk])
        count = max((len(m) for m in per_member), default=0)
        updates = []
        for i in range(count):
            picks = [m[i] if i < len(m) else torch.zeros(0, dtype=torch.long) for m in per_member]
            width = max(1, max(p.numel() for p in picks))
            index = torch.zeros(len(picks), width, dtype=torch.long)
            mask = torch.zeros(len(picks), width)
            for k, p in enumerate(picks):
                index[k, : p.numel()] = p
                mask[k, : p.numel()] = 1.0
            updates.append((index, mask))
        return updates


def member_batches(stacked: dict[str, Tensor], index: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """Gather every member's minibatch rows: fields [P, R, ...] and index [P, B] → [P, B, ...]; ``mask`` is the
    real rows of the rollout AND of the minibatch."""
    rows = torch.arange(index.shape[0]).unsqueeze(1)
    batch = {name: stacked[name][rows, index] for name in FLAT_FIELDS}
    batch["mask"] = stacked["mask"][rows, index] * mask
    return batch
