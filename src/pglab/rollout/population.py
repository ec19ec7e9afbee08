"""Collection and minibatches for a population of P members, each with envs, shuffles and statistics of its own.

Envs. Where a member's envs keep statistics of their own (observation or reward normalisation), member k has a
vector env of its own, built exactly as a single run's and reset with its own seed. Otherwise all members' envs
are one vector env of P·N envs, member k's the k-th block of N (``merged_reset_seeds``): stepping a vector env
costs about as much for 4 envs as for 64 (gymnasium's numpy CartPole: one set of array operations), so one call
instead of P is most of a population's collection speed-up. All members' envs are stepped in lock-step so that
all policies act in one vectorised call per step. Targets and advantages are computed per member, from its own rollout
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

__all__ = ["PopulationCollector", "member_batches", "flat_member", "stack_padded", "MemberMinibatches",
           "merged_reset_seeds", "columnwise", "all_member_batches"]

FLAT_FIELDS = ("obs", "actions", "logp_old", "values_old", "dist_params_old", "advantages", "targets")


def merged_reset_seeds(envs: gym.vector.VectorEnv, seeds: list[int], n: int) -> int | list[int]:
    """The ``reset(seed=...)`` of one vector env holding several members' blocks of ``n`` envs.

    A sync/async vector env seeds each of its envs: member k's env i gets ``seeds[k] + i``, exactly what member
    k's own run gives it. A native vector env (e.g. gymnasium's numpy CartPole) draws all its envs' states from one
    generator, which takes one seed: ``seeds[0]`` — with one member that is the single run's seeding; with several,
    the members' blocks are independent draws of one stream rather than each its own run's."""
    if isinstance(envs.unwrapped, (gym.vector.SyncVectorEnv, gym.vector.AsyncVectorEnv)):
        return [int(s) + i for s in seeds for i in range(n)]
    return int(seeds[0])


class PopulationCollector:
    """T steps × N envs for each of P members, stepped together (the segment collector's semantics per member:
    episodes continue across collections, the step after a done is an autoreset row, one bootstrap value call).

    ``envs``: P vector envs of N envs each (member k's own: its own wrappers and normalisation statistics), or one
    vector env of P·N envs whose block k (envs k·N … (k+1)·N − 1) is member k's (``merged_reset_seeds`` says how
    it is seeded). One set of buffers [T, P·N] holds every member's columns in that order, so a step writes each field
    once for all members and the policies read the observations as one [P, N, ...] tensor."""

    def __init__(self, envs: list[gym.vector.VectorEnv], num_steps: int, param_dim: int, seeds: list[int],
                 num_envs: int | None = None) -> None:
        if num_steps < 1:
            raise ValueError(f"collector.num_steps must be >= 1, got {num_steps}")
        P = len(seeds)
        self.n = num_envs if num_envs is not None else envs[0].num_envs
        if len(envs) not in (1, P) or sum(e.num_envs for e in envs) != P * self.n or \
                any(e.num_envs % self.n for e in envs):
            raise ValueError(f"{len(envs)} vector envs of {[e.num_envs for e in envs]} envs for {P} members of "
                             f"{self.n} envs: give one vector env per member, or one of P·N envs")
        self.envs, self.num_steps, self.seeds = envs, num_steps, list(seeds)
        obs_shape, action_shape, action_dtype = _spaces(envs[0])
        self.obs_shape = obs_shape
        # (vector env, its first member, how many members it holds)
        self.blocks, first = [], 0
        for e in envs:
            self.blocks.append((e, first, e.num_envs // self.n))
            first += e.num_envs // self.n
        self.buffers = _Buffers(num_steps, P * self.n, obs_shape, action_shape, action_dtype, param_dim)
        self.obs: np.ndarray | None = None  # [P·N, ...]
        self.prev_done = np.zeros(P * self.n, dtype=bool)

    def _columns(self, k: int) -> slice:
        return slice(k * self.n, (k + 1) * self.n)

    def _reset(self) -> np.ndarray:
        out = []
        for e, first, count in self.blocks:
            seed = self.seeds[first] if count == 1 else merged_reset_seeds(e, self.seeds[first: first + count], self.n)
            out.append(np.asarray(e.reset(seed=seed)[0], dtype=np.float32))
        return np.concatenate(out)

    def collect(self, act: Callable[[Tensor], ActOutput], value: Callable[[Tensor], Tensor]) -> list[Rollout]:
        """One rollout per member; ``act`` / ``value`` take the stacked observations [P, N, ...]."""
        P, n, b = len(self.seeds), self.n, self.buffers
        if self.obs is None:
            self.obs = self._reset()
        returns: list[list] = [[] for _ in range(P)]
        lengths: list[list] = [[] for _ in range(P)]
        blocks = [(e, first, count, slice(first * n, (first + count) * n)) for e, first, count in self.blocks]
        obs, prev_done = self.obs, self.prev_done
        stacked_shape = (P, n, *self.obs_shape)
        for t in range(self.num_steps):
            b.obs[t] = obs
            out = act(b.obs_tensor(t).view(stacked_shape))
            b.write_policy(t, ActOutput(out.actions.flatten(0, 1), out.logp.flatten(0, 1), out.values.flatten(0, 1),
                                        out.dist_params.flatten(0, 1)))
            actions = out.actions.flatten(0, 1).numpy()
            rewards, terminated, done = b.rewards[t], b.terminated[t], b.done[t]
            next_obs = []
            for e, first, count, cols in blocks:
                o, rewards[cols], term, trunc, info = e.step(actions[cols])
                next_obs.append(o)
                terminated[cols] = term
                done[cols] = term | trunc
                if done[cols].any():
                    if count == 1:
                        _finished_episodes(info, returns[first], lengths[first])
                    elif "episode" in info:  # RecordEpisodeStatistics over all blocks: each ended env's member
                        episode = info["episode"]
                        for i in np.flatnonzero(info.get("_episode", done[cols])).tolist():
                            returns[first + i // n].append(np.asarray(episode["r"][i: i + 1], dtype=np.float64))
                            lengths[first + i // n].append(np.asarray(episode["l"][i: i + 1], dtype=np.int64))
            b.valid[t] = ~prev_done
            prev_done = done.copy()
            obs = np.concatenate(next_obs, dtype=np.float32) if len(next_obs) > 1 else \
                np.asarray(next_obs[0], dtype=np.float32)
        self.obs, self.prev_done = obs, prev_done
        last = value(torch.from_numpy(self.obs).view(stacked_shape))
        b.values[self.num_steps] = last.flatten()
        return [self._snapshot(k, returns[k], lengths[k]) for k in range(P)]

    def merged(self) -> Rollout:
        """The last collection of all members as one Rollout [T, P·N] (views of the buffers: valid until the next
        collection; no episode statistics)."""
        b, T = self.buffers, self.num_steps
        return Rollout(obs=torch.from_numpy(b.obs), actions=b.actions, logp=b.logp, values=b.values[:T],
                       next_values=b.values[1: T + 1], rewards=torch.from_numpy(b.rewards),
                       terminated=torch.from_numpy(b.terminated), done=torch.from_numpy(b.done),
                       valid=torch.from_numpy(b.valid), dist_params=b.dist_params, episode_returns=np.zeros(0),
                       episode_lengths=np.zeros(0, dtype=np.int64))

    def _snapshot(self, k: int, returns: list, lengths: list) -> Rollout:
        """Member k's columns of the buffers as a Rollout [T, N] of its own (copies)."""
        b, T, cols = self.buffers, self.num_steps, self._columns(k)
        return Rollout(
            obs=torch.from_numpy(b.obs[:, cols].copy()), actions=b.actions[:, cols].clone(),
            logp=b.logp[:, cols].clone(), values=b.values[:T, cols].clone(),
            next_values=b.values[1: T + 1, cols].clone(), rewards=torch.from_numpy(b.rewards[:, cols].copy()),
            terminated=torch.from_numpy(b.terminated[:, cols].copy()), done=torch.from_numpy(b.done[:, cols].copy()),
            valid=torch.from_numpy(b.valid[:, cols].copy()), dist_params=b.dist_params[:, cols].clone(),
            episode_returns=np.concatenate(returns) if returns else np.zeros(0),
            episode_lengths=np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64))


def flat_member(rollout: Rollout, estimator: Callable, baseline: Callable,
                precomputed: tuple[Tensor, Tensor] | None = None) -> tuple[dict[str, Tensor], dict]:
    """One member's rollout → its flat real rows (the single run's ``_flatten`` for segments) and its rollout
    metrics (the DataModule's names). ``precomputed``: its (targets, advantages) [T, N], already computed with the
    other members' (``columnwise``)."""
    if precomputed is not None:
        targets, advantages = precomputed
    else:
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


def columnwise(estimator: Callable, baseline: Callable, n: int = 3, steps: int = 12) -> str | None:
    """Why the estimator and baseline cannot run once over all members' columns (None: they can). Checked, not
    assumed: targets and advantages of a random rollout of two blocks of ``n`` columns (episode ends, terminations,
    autoreset rows) computed at once must equal those computed block by block — true of every column-wise
    estimator (GAE, n-step, returns) and of the value baseline, false of a batch-wide one (``baseline=mean``)."""
    g = torch.Generator().manual_seed(0)
    T, N = steps, 2 * n

    def rand(*shape):
        return torch.randn(*shape, generator=g)

    done = torch.rand(T, N, generator=g) < 0.25
    terminated = done & (torch.rand(T, N, generator=g) < 0.5)
    valid = torch.ones(T, N, dtype=torch.bool)
    valid[1:] = ~done[:-1]
    values = rand(T + 1, N)
    whole = Rollout(obs=torch.zeros(T, N, 1), actions=torch.zeros(T, N), logp=torch.zeros(T, N),
                    values=values[:T], next_values=values[1:], rewards=rand(T, N), terminated=terminated, done=done,
                    valid=valid, dist_params=torch.zeros(T, N, 1), episode_returns=np.zeros(0),
                    episode_lengths=np.zeros(0, dtype=np.int64))
    try:
        with torch.inference_mode():
            together = compute_advantages(whole, estimator, baseline)
            for cols in (slice(0, n), slice(n, N)):
                part = Rollout(**{f: (getattr(whole, f)[:, cols] if torch.is_tensor(getattr(whole, f)) and
                                      getattr(whole, f).dim() >= 2 else getattr(whole, f))
                                  for f in whole.__dataclass_fields__})
                alone = compute_advantages(part, estimator, baseline)
                for name, a, b in zip(("targets", "advantages"), together, alone, strict=True):
                    if not torch.allclose(a[:, cols], b, rtol=1e-5, atol=1e-6, equal_nan=True):
                        return f"the {name} of a column depend on other columns"
    except Exception as err:  # noqa: BLE001 — any failure on the synthetic rollout: compute per member
        return f"the check raised {type(err).__name__}: {err}"
    return None


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
        if per_member and all(len(m) == count for m in per_member) and \
                all(len({p.numel() for p in u}) == 1 for u in zip(*per_member, strict=True)):
            # every member has every update, of one width (equal row counts): stacked directly, nothing masked
            return [(torch.stack(picks), torch.ones(len(picks), picks[0].numel()))
                    for picks in zip(*per_member, strict=True)]
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


def all_member_batches(stacked: dict[str, Tensor], updates: list[tuple[Tensor, Tensor]]) -> list[dict[str, Tensor]]:
    """``member_batches`` of every update at once (one gather per field for the whole rollout) when the updates
    share one width; else one by one."""
    if len({index.shape for index, _ in updates}) != 1:
        return [member_batches(stacked, index, mask) for index, mask in updates]
    index = torch.stack([i for i, _ in updates])  # [U, P, B]
    rows = torch.arange(index.shape[1]).view(1, -1, 1)
    gathered = {name: stacked[name][rows, index].unbind(0) for name in FLAT_FIELDS}
    masks = (stacked["mask"][rows, index] * torch.stack([m for _, m in updates])).unbind(0)
    return [{**{name: gathered[name][u] for name in FLAT_FIELDS}, "mask": masks[u]} for u in range(len(updates))]


def member_batches(stacked: dict[str, Tensor], index: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """Gather every member's minibatch rows: fields [P, R, ...] and index [P, B] → [P, B, ...]; ``mask`` is the
    real rows of the rollout AND of the minibatch."""
    rows = torch.arange(index.shape[0]).unsqueeze(1)
    batch = {name: stacked[name][rows, index] for name in FLAT_FIELDS}
    batch["mask"] = stacked["mask"][rows, index] * mask
    return batch
