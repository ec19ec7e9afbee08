"""Rollout storage and the two collectors (fixed-length segments; whole episodes in groups).

Storage is preallocated, time-major tensors; the hot loop writes one row per step and touches the env's
``info`` dict only on steps where some episode finished.

Bootstrapping: ``values`` has T+1 rows. Row t holds V(obs_t) from the policy call that chose a_t; row T
holds V(obs_T) from one extra value call after the loop. Under next-step autoreset (see ``pglab.envs.make``) the
observation after an ending step is that episode's real final observation, so ``values[t+1]`` is exactly
the truncation bootstrap of step t and, at the segment end, the cut bootstrap: ``next_values = values[1:]``.
Termination is handled by the estimators, which drop the bootstrap where ``terminated``.
"""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from pglab.core.types import ActOutput, Rollout

__all__ = ["Rollout", "SegmentCollector", "EpisodeCollector"]

Policy = Callable[[Tensor], ActOutput]
ValueFn = Callable[[Tensor], Tensor]


class _Buffers:
    """Preallocated [capacity, N] storage reused across collections.

    What the policy returns is written into torch tensors; what the env returns (observations, rewards, flags)
    into numpy arrays, converted once per rollout instead of once per step."""

    def __init__(self, capacity: int, num_envs: int, obs_shape: tuple[int, ...], action_shape: tuple[int, ...],
                 action_dtype: torch.dtype, param_dim: int) -> None:
        T, N = capacity, num_envs
        self.obs = np.zeros((T, N, *obs_shape), dtype=np.float32)
        self.actions = torch.zeros((T, N, *action_shape), dtype=action_dtype)
        self.logp = torch.zeros(T, N)
        self.values = torch.zeros(T + 1, N)
        self.dist_params = torch.zeros(T, N, param_dim)
        self.rewards = np.zeros((T, N), dtype=np.float32)
        self.terminated = np.zeros((T, N), dtype=bool)
        self.done = np.zeros((T, N), dtype=bool)
        self.valid = np.zeros((T, N), dtype=bool)
        # row views made once: `rows[t].copy_(x)` is several times cheaper per call than `tensor[t] = x`
        self._policy_rows = list(zip(self.actions.unbind(0), self.logp.unbind(0), self.values[:T].unbind(0),
                                     self.dist_params.unbind(0), strict=True))
        self._obs_rows = [torch.from_numpy(row) for row in self.obs]  # zero-copy tensors over the numpy rows

    def snapshot(self, length: int, episode_returns: list, episode_lengths: list) -> Rollout:
        """A Rollout of the first ``length`` rows (copies, so the buffers can be refilled)."""
        sl = slice(0, length)
        return Rollout(
            obs=torch.from_numpy(self.obs[sl].copy()), actions=self.actions[sl].clone(), logp=self.logp[sl].clone(),
            values=self.values[sl].clone(), next_values=self.values[1 : length + 1].clone(),
            rewards=torch.from_numpy(self.rewards[sl].copy()),
            terminated=torch.from_numpy(self.terminated[sl].copy()), done=torch.from_numpy(self.done[sl].copy()),
            valid=torch.from_numpy(self.valid[sl].copy()), dist_params=self.dist_params[sl].clone(),
            episode_returns=np.concatenate(episode_returns) if episode_returns else np.zeros(0),
            episode_lengths=np.concatenate(episode_lengths) if episode_lengths else np.zeros(0, dtype=np.int64),
        )

    def write_policy(self, t: int, out: ActOutput) -> None:
        actions, logp, values, dist_params = self._policy_rows[t]
        actions.copy_(out.actions)
        logp.copy_(out.logp)
        values.copy_(out.values)
        dist_params.copy_(out.dist_params)

    def obs_tensor(self, t: int) -> Tensor:
        """Row t of the observation buffer as a tensor sharing its memory. [N, *obs_shape]"""
        return self._obs_rows[t]


def _spaces(envs: gym.vector.VectorEnv) -> tuple[tuple[int, ...], tuple[int, ...], torch.dtype]:
    obs_shape = envs.single_observation_space.shape
    space = envs.single_action_space
    if isinstance(space, gym.spaces.Discrete):
        return obs_shape, (), torch.int64
    return obs_shape, tuple(space.shape), torch.float32


def _finished_episodes(info: dict, returns: list, lengths: list, mask: np.ndarray | None = None) -> None:
    """Append the raw returns/lengths of episodes that ended this step (RecordEpisodeStatistics); ``mask`` [N]
    picks which envs' episodes count (default: every env whose episode ended)."""
    episode = info.get("episode")
    if episode is None:
        return
    if mask is None:
        mask = info.get("_episode", np.ones(len(episode["r"]), dtype=bool))
    returns.append(np.asarray(episode["r"])[mask].astype(np.float64))
    lengths.append(np.asarray(episode["l"])[mask].astype(np.int64))


class SegmentCollector:
    """T steps × N envs per collection; episodes continue across collections (PPO/A2C style)."""

    def __init__(self, envs: gym.vector.VectorEnv, num_steps: int, param_dim: int, seed: int) -> None:
        if num_steps < 1:
            raise ValueError(f"collector.num_steps must be >= 1, got {num_steps}")
        self.envs, self.num_steps, self.seed = envs, num_steps, seed
        obs_shape, action_shape, action_dtype = _spaces(envs)
        self.buffers = _Buffers(num_steps, envs.num_envs, obs_shape, action_shape, action_dtype, param_dim)
        self.obs: Tensor | None = None
        self.prev_done = np.zeros(envs.num_envs, dtype=bool)

    def collect(self, policy: Policy, value_fn: ValueFn) -> Rollout:
        if self.obs is None:
            obs, _ = self.envs.reset(seed=self.seed)
            self.obs = np.asarray(obs, dtype=np.float32)
        b = self.buffers
        returns: list = []
        lengths: list = []
        obs, prev_done = self.obs, self.prev_done
        for t in range(self.num_steps):
            b.obs[t] = obs
            out = policy(b.obs_tensor(t))
            b.write_policy(t, out)
            obs, b.rewards[t], terminated, truncated, info = self.envs.step(out.actions.numpy())
            done = terminated | truncated
            b.terminated[t], b.done[t] = terminated, done
            b.valid[t] = ~prev_done  # the step after a done is an autoreset row
            if done.any():
                _finished_episodes(info, returns, lengths)
            prev_done = done
        self.obs, self.prev_done = np.asarray(obs, dtype=np.float32), prev_done
        b.values[self.num_steps] = value_fn(torch.from_numpy(self.obs))
        return b.snapshot(self.num_steps, returns, lengths)


class EpisodeCollector:
    """One whole episode per env: ``num_groups`` groups × ``group_size`` episodes sharing a start state.

    Envs of one group are reset with the same seed, so they start from the same state (the GRPO setting:
    G samples of the same prompt). Column n holds episode n, padded (``valid = False``) after it ends.
    An episode still running after ``max_steps`` is cut there and bootstrapped like a segment end.
    Needs a vector env that accepts one seed per env (sync or async).
    """

    def __init__(self, envs: gym.vector.VectorEnv, num_groups: int, group_size: int, max_steps: int,
                 param_dim: int, seed: int) -> None:
        if num_groups < 1 or group_size < 1:
            raise ValueError(f"collector.num_groups and collector.group_size must be >= 1, got {num_groups}, "
                             f"{group_size}")
        if envs.num_envs != num_groups * group_size:
            raise ValueError(f"the episode collector needs num_groups × group_size = {num_groups * group_size} "
                             f"envs, got {envs.num_envs}")
        self.envs, self.num_groups, self.group_size, self.max_steps = envs, num_groups, group_size, max_steps
        obs_shape, action_shape, action_dtype = _spaces(envs)
        self.buffers = _Buffers(max_steps, envs.num_envs, obs_shape, action_shape, action_dtype, param_dim)
        self.rng = np.random.default_rng(seed)
        self.group_ids = torch.arange(envs.num_envs) // group_size

    def collect(self, policy: Policy, value_fn: ValueFn) -> Rollout:
        group_seeds = self.rng.integers(0, 2**31 - 1, size=self.num_groups)
        obs, _ = self.envs.reset(seed=[int(s) for s in np.repeat(group_seeds, self.group_size)])
        b = self.buffers
        returns: list = []
        lengths: list = []
        finished = np.zeros(self.envs.num_envs, dtype=bool)
        length = self.max_steps
        for t in range(self.max_steps):
            b.obs[t] = obs
            out = policy(b.obs_tensor(t))
            b.write_policy(t, out)
            obs, reward, terminated, truncated, info = self.envs.step(out.actions.numpy())
            live = ~finished
            done = (terminated | truncated) & live
            b.rewards[t] = np.where(live, reward, 0.0)
            b.terminated[t], b.done[t], b.valid[t] = terminated & live, done, live
            if done.any():
                # only the first episode of each env counts; later ones are autoreset continuations
                _finished_episodes(info, returns, lengths, mask=done)
            finished |= done
            if finished.all():
                length = t + 1
                break
        # V(obs after the last row): the final observation of the env that ended last (its truncation
        # bootstrap) and, for an episode cut at max_steps, V(s_T).
        b.values[length] = value_fn(torch.as_tensor(obs, dtype=torch.float32))
        rollout = b.snapshot(length, returns, lengths)
        rollout.group_ids = self.group_ids.clone()
        return rollout
