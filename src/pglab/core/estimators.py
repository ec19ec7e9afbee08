"""Per-step targets G_t from a time-major rollout (pure tensor math, no Lightning/Hydra/gymnasium).

Every estimator reads the same tensors, all shaped ``[T, N]`` (T time steps, N parallel columns):

============  =====================================================================================
rewards       r_t, float
values        V(s_t) recorded at collection time, float (zeros when the model has no value head)
next_values   V(true s_{t+1}): for a step that ended by truncation this is V of the *real final
              observation*, for the last row of a segment that ends mid-episode it is V(s_T)
terminated    the episode ended in a terminal state at step t: nothing to bootstrap, bool
done          the episode ended at step t for any reason (terminated or truncated): the
              recursion must not look past t, bool
valid         row t is a real transition (False for next-step autoreset rows and padding), bool
============  =====================================================================================

One rule covers every boundary: at the step where a sum stops (episode end, horizon k, or
segment end) it adds ``gamma * next_values * (1 - terminated)``. A terminated episode therefore
gets no bootstrap, a truncated one gets V(final obs), a cut segment gets V(s_T). Rows that are
not ``valid`` get a target of 0 and must be masked downstream.

Theory map (docs/theory.md): ``trajectory_return`` is §1 R(τ); ``reward_to_go`` §2; ``nstep`` §5 A^k (+V);
``gae`` §6 (λ-return, so G − V is the GAE advantage); the bootstrapping rule above is §8.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["trajectory_return", "reward_to_go", "nstep", "gae", "check_rollout", "ESTIMATORS"]


def _check_unit_interval(name: str, value: float) -> None:
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value}")


def check_rollout(rewards: Tensor, values: Tensor, next_values: Tensor, terminated: Tensor, done: Tensor,
                  valid: Tensor) -> None:
    """Raise ValueError naming the first argument whose shape differs from ``rewards`` [T, N]."""
    if rewards.dim() != 2 or rewards.shape[0] == 0:
        raise ValueError(f"rewards must be time-major [T, N] with T >= 1, got shape {tuple(rewards.shape)}")
    for name, tensor in (("values", values), ("next_values", next_values), ("terminated", terminated),
                         ("done", done), ("valid", valid)):
        if tensor.shape != rewards.shape:
            raise ValueError(f"{name} has shape {tuple(tensor.shape)} but rewards has {tuple(rewards.shape)}; "
                             "all rollout tensors must be [T, N]")
    for name, tensor in (("terminated", terminated), ("done", done), ("valid", valid)):
        if tensor.dtype != torch.bool:
            # ~ on an integer mask is a bitwise NOT (1 → 254): refuse rather than compute nonsense
            raise ValueError(f"{name} must be a torch.bool tensor, got {tensor.dtype}")


def _bootstrap(next_values: Tensor, terminated: Tensor) -> Tensor:
    """V(s_{t+1}) where the episode may continue, 0 where it terminated. [T, N]"""
    return next_values * (~terminated).to(next_values.dtype)


def reward_to_go(rewards: Tensor, values: Tensor, next_values: Tensor, terminated: Tensor, done: Tensor,
                 valid: Tensor, gamma: float = 0.99) -> Tensor:
    """R_t = Σ_{t'≥t} γ^{t'−t} r_t' within the episode, bootstrapped at truncation / segment end. [T, N]"""
    check_rollout(rewards, values, next_values, terminated, done, valid)
    _check_unit_interval("gamma", gamma)
    T = rewards.shape[0]
    boot = _bootstrap(next_values, terminated)
    out = torch.zeros_like(rewards)
    running = boot[T - 1]
    for t in range(T - 1, -1, -1):
        # the last row of the segment, or a row that ends its episode, continues with its bootstrap
        continuation = boot[t] if t == T - 1 else torch.where(done[t], boot[t], running)
        running = rewards[t] + gamma * continuation
        out[t] = running
    return torch.where(valid, out, torch.zeros_like(out))


def trajectory_return(rewards: Tensor, values: Tensor, next_values: Tensor, terminated: Tensor, done: Tensor,
                      valid: Tensor, gamma: float = 1.0) -> Tensor:
    """R(τ) of docs/theory.md §1: every step of an episode gets Σ_t γ^t r_t of the whole episode. [T, N]

    An episode is the run of rows from a start (row 0, or the first valid row after a ``done``) to its
    ``done``; its return is the reward-to-go at its first row (bootstrapped if it is cut or truncated).
    """
    rtg = reward_to_go(rewards, values, next_values, terminated, done, valid, gamma=gamma)
    T = rewards.shape[0]
    out = torch.empty_like(rtg)
    current = rtg[0]
    opens_episode = torch.ones_like(done[0])  # row 0 opens an episode in every column
    for t in range(T):
        current = torch.where(opens_episode & valid[t], rtg[t], current)
        out[t] = current
        # the next valid row after a done opens a new episode; invalid rows keep the flag pending
        opens_episode = torch.where(valid[t], done[t], opens_episode)
    return torch.where(valid, out, torch.zeros_like(out))


def nstep(rewards: Tensor, values: Tensor, next_values: Tensor, terminated: Tensor, done: Tensor,
          valid: Tensor, gamma: float = 0.99, k: int = 5) -> Tensor:
    """k-step return Σ_{i<k} γ^i r_{t+i} + γ^k V(s_{t+k}), stopping early at episode/segment end. [T, N]

    ``nstep(...) - values`` is A^k (docs/theory.md §5); k=1 is TD(0); k ≥ T is the Monte-Carlo return.
    """
    check_rollout(rewards, values, next_values, terminated, done, valid)
    _check_unit_interval("gamma", gamma)
    if int(k) != k or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k}")
    k = int(k)
    T = rewards.shape[0]
    boot = _bootstrap(next_values, terminated)
    out = torch.zeros_like(rewards)
    alive = torch.ones_like(done)  # [T, N]: the sum starting at row t has not stopped yet
    for i in range(min(k, T)):
        # rows t for which t + i exists: [0, T - i)
        idx = slice(0, T - i)
        step = slice(i, T)
        live = alive[idx]
        discount = gamma**i
        out[idx] += torch.where(live, discount * rewards[step], torch.zeros_like(rewards[step]))
        # the sum stops after t+i if the episode ends there, the horizon is reached or the segment ends
        stop_here = done[step] | (i == k - 1)
        stop_here[-1] = True  # row T-1 is the last row of the segment
        add_boot = live & stop_here
        out[idx] += torch.where(add_boot, discount * gamma * boot[step], torch.zeros_like(boot[step]))
        alive[idx] = live & ~stop_here
    return torch.where(valid, out, torch.zeros_like(out))


def gae(rewards: Tensor, values: Tensor, next_values: Tensor, terminated: Tensor, done: Tensor,
        valid: Tensor, gamma: float = 0.99, lam: float = 0.95) -> Tensor:
    """λ-return G^λ_t = A^GAE_t + V(s_t), with A^GAE = (1−λ)(A¹ + λA² + λ²A³ + …) (docs/theory.md §6). [T, N]

    Computed by the usual backward recursion A_t = δ_t + γλ(1 − done_t) A_{t+1},
    δ_t = r_t + γ(1 − terminated_t) V(s_{t+1}) − V(s_t); the tests check it against the explicit λ-series.
    """
    check_rollout(rewards, values, next_values, terminated, done, valid)
    _check_unit_interval("gamma", gamma)
    _check_unit_interval("lam", lam)
    T = rewards.shape[0]
    delta = rewards + gamma * _bootstrap(next_values, terminated) - values
    keep = (~done).to(rewards.dtype) * (gamma * lam)
    adv = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in range(T - 1, -1, -1):
        running = delta[t] + keep[t] * running
        adv[t] = running
    return torch.where(valid, adv + values, torch.zeros_like(adv))


# What each estimator needs from the rest of the system, declared here and read by pglab.run.checks and the
# DataModule:
#   bootstraps_from_value — REQUIRED (True or False): it reads V(s) inside episodes (so it needs a value head). An
#                           estimator that does not declare it is refused at start-up; one that declares False but
#                           whose targets depend on V(s) is caught by the start-up check (NaN values in, NaN out).
#   needs_whole_episodes  — its target for a step depends on the whole episode, which segments cut (absent: False)
#   gives_episode_return  — the target at an episode's first step is that episode's return R(τ) (absent: False)
# Every estimator bootstraps from V at a segment's cut, so on the segment collector all of them need a value head.
trajectory_return.bootstraps_from_value = False
trajectory_return.needs_whole_episodes = True
trajectory_return.gives_episode_return = True
reward_to_go.bootstraps_from_value = False
nstep.bootstraps_from_value = True
gae.bootstraps_from_value = True

ESTIMATORS = {"return": trajectory_return, "reward_to_go": reward_to_go, "nstep": nstep, "gae": gae}
