"""The EnvPool back-end against gymnasium's sync vector env: same actions and start states → same rollout, targets.

EnvPool's start states come from its own generators, so a gymnasium CartPole here is made to start from the
states EnvPool drew (``StartStateCartPole``); from there on both back-ends run the same actions through pglab's
SegmentCollector and must agree on observations, rewards, flags, autoreset rows, episode statistics and GAE
targets — except where an episode terminates on its time-limit step, which EnvPool reports as truncation only
(documented in ``pglab.envs.envpool``; this test finds those episodes independently and checks exactly that).
"""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.envs.classic_control.cartpole import CartPoleEnv

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    envpool = pytest.importorskip("envpool", reason="envpool not installed (pip install 'pglab[envpool]')")

from pglab.core.estimators import gae  # noqa: E402
from pglab.core.types import ActOutput  # noqa: E402
from pglab.envs.envpool import envpool_task_id  # noqa: E402
from pglab.envs.make import EnvConfig, make_vector_env  # noqa: E402
from pglab.rollout.collectors import SegmentCollector  # noqa: E402

N, T, LIMIT, SEED = 4, 300, 15, 7
GAMMA, LAM = 0.9, 0.8
W = torch.tensor([0.5, -1.0, 2.0, 0.25])


class StartStateCartPole(CartPoleEnv):
    """CartPole whose k-th reset of copy i starts from ``start_states[i][k]`` (copy i is told apart by its seed)."""

    def __init__(self, start_states, base_seed: int):
        super().__init__()
        self.start_states, self.base_seed = start_states, base_seed
        self.index, self.count = 0, 0

    def reset(self, *, seed=None, options=None):
        obs, info = super().reset(seed=seed, options=options)
        if seed is not None:  # the vector env seeds copy i with base_seed + i; autoresets pass no seed
            self.index, self.count = seed - self.base_seed, 0
        self.state = np.asarray(self.start_states[self.index][self.count], dtype=np.float64)
        self.count += 1
        return np.array(self.state, dtype=np.float32), info


gym.register("pglab-test/StartStateCartPole-v0", entry_point=StartStateCartPole)


def _value(obs: torch.Tensor) -> torch.Tensor:
    return obs @ W + 3.0


class ScriptedPolicy:
    """The same action table for both back-ends, one row per policy call."""

    def __init__(self, actions: np.ndarray):
        self.actions, self.t = torch.as_tensor(actions), 0

    def __call__(self, obs: torch.Tensor) -> ActOutput:
        a = self.actions[self.t]
        self.t += 1
        return ActOutput(a, torch.zeros(N), _value(obs), torch.zeros(N, 2))


def _collect(cfg: EnvConfig, actions: np.ndarray):
    envs = make_vector_env(cfg)
    collector = SegmentCollector(envs, num_steps=T, param_dim=2, seed=SEED)
    rollout = collector.collect(ScriptedPolicy(actions), _value)
    envs.close()
    return rollout, collector


def _start_states(rollout, collector) -> list[list[np.ndarray]]:
    """Per env, the start states in order: row 0, the row after every autoreset row, the next segment's first obs."""
    obs, valid = rollout.obs.numpy(), rollout.valid.numpy()
    states = [[obs[0, n]] for n in range(N)]
    for t, n in zip(*np.nonzero(~valid), strict=True):
        states[n].append(obs[t + 1, n] if t + 1 < T else collector.obs[n])
    return states


def _brute_force_gae(rollout) -> torch.Tensor:
    """λ-return G_t = V(s_t) + Σ_l (γλ)^l δ_{t+l} summed forward to the episode's last row (or the segment end)."""
    r, v, nv = rollout.rewards.double(), rollout.values.double(), rollout.next_values.double()
    term, done, valid = rollout.terminated, rollout.done, rollout.valid
    out = torch.zeros(T, N, dtype=torch.float64)
    for n in range(N):
        for t in range(T):
            if not valid[t, n]:
                continue
            total, s = 0.0, t
            while True:
                delta = r[s, n] + GAMMA * nv[s, n] * (0.0 if term[s, n] else 1.0) - v[s, n]
                total += (GAMMA * LAM) ** (s - t) * delta
                if done[s, n] or s == T - 1:
                    break
                s += 1
            out[t, n] = v[t, n] + total
    return out


def _targets(rollout) -> torch.Tensor:
    return gae(rollout.rewards, rollout.values, rollout.next_values, rollout.terminated, rollout.done,
               rollout.valid, gamma=GAMMA, lam=LAM)


def test_envpool_cartpole_matches_gymnasium_from_the_same_start_states():
    actions = np.random.default_rng(0).integers(0, 2, size=(T, N))
    pool, collector = _collect(EnvConfig(id="CartPole-v1", num_envs=N, vectorization="envpool",
                                         max_episode_steps=LIMIT), actions)
    starts = _start_states(pool, collector)
    ref, ref_collector = _collect(EnvConfig(id="pglab-test/StartStateCartPole-v0", num_envs=N, vectorization="sync",
                                max_episode_steps=LIMIT, kwargs={"start_states": starts, "base_seed": SEED}), actions)

    # next-step autoreset rows, episode ends, rewards and observations agree row for row
    assert torch.equal(pool.valid, ref.valid) and torch.equal(pool.done, ref.done)
    assert (~pool.valid).sum() > 20 and pool.done.sum() > 20
    assert torch.equal(pool.rewards, ref.rewards)
    assert torch.all(pool.rewards[~pool.valid] == 0)  # EnvPool's reset step: reward 0, flags False
    torch.testing.assert_close(pool.obs, ref.obs, atol=1e-4, rtol=0)
    assert pool.episode_returns.tolist() == ref.episode_returns.tolist()
    assert pool.episode_lengths.tolist() == ref.episode_lengths.tolist()

    # termination: identical except episodes that fail on their time-limit step (gymnasium: terminated and
    # truncated; EnvPool: truncated only). Find those from the episode length and gymnasium's own physics.
    next_obs = torch.cat([ref.obs[1:], torch.as_tensor(ref_collector.obs)[None]])  # obs after row t
    lengths = torch.zeros(N, dtype=torch.long)
    coincide = torch.zeros(T, N, dtype=torch.bool)
    for t in range(T):
        lengths = torch.where(pool.valid[t], lengths + 1, torch.zeros_like(lengths))
        for n in range(N):
            if pool.done[t, n] and lengths[n] == LIMIT:
                x, theta = float(next_obs[t, n, 0]), float(next_obs[t, n, 2])
                coincide[t, n] = abs(x) > 2.4 or abs(theta) > 12 * 2 * np.pi / 360
    assert torch.equal(ref.terminated & ~pool.terminated, coincide)
    assert not (pool.terminated & ~ref.terminated).any()

    # estimator targets: equal across back-ends on every row outside those episodes, and equal to a brute-force
    # forward sum on EnvPool's own rollout everywhere
    affected = torch.zeros(T, N, dtype=torch.bool)
    for n in range(N):
        inside = False
        for t in reversed(range(T)):
            if pool.done[t, n]:
                inside = bool(coincide[t, n])
            affected[t, n] = inside and bool(pool.valid[t, n])
    pool_targets, ref_targets = _targets(pool), _targets(ref)
    keep = pool.valid & ~affected
    assert keep.sum() > 0.8 * pool.valid.sum()
    torch.testing.assert_close(pool_targets[keep], ref_targets[keep], atol=2e-3, rtol=0)
    torch.testing.assert_close(pool_targets.double(), _brute_force_gae(pool), atol=1e-4, rtol=0)


def test_envpool_seeding_and_spaces():
    cfg = EnvConfig(id="CartPole-v1", num_envs=3, vectorization="envpool")
    envs = make_vector_env(cfg)
    assert envs.single_observation_space.shape == (4,) and envs.single_action_space.n == 2
    assert envs.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP
    a, _ = envs.reset(seed=5)
    for _ in range(5):
        envs.step(np.zeros(3, dtype=np.int64))
    b, _ = envs.reset(seed=5)  # rebuilds the pool: the same start states again
    c, _ = envs.reset()  # no seed: every env draws a new start state from its generator
    d, info = envs.reset(seed=[5, 6, 7])  # the list EnvPool's own seeding gives (seed + i) is accepted
    assert np.array_equal(a, b) and np.array_equal(a, d) and not np.array_equal(a, c)
    assert len({tuple(row) for row in a}) == 3  # distinct envs, distinct states (no zero-stride repeats)
    assert info["elapsed_step"].tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="env.vectorization=sync"):
        envs.reset(seed=[5, 5, 6])
    envs.close()


def test_envpool_ids_and_refusals():
    available = list(envpool.list_all_envs())
    assert envpool_task_id("CartPole-v1", available) == "CartPole-v1"
    assert envpool_task_id("Pendulum-v1", available) == "Pendulum-v1"
    assert envpool_task_id("ALE/Breakout-v5", available) == "Breakout-v5"
    assert envpool_task_id("ale_py:ALE/Breakout-v5", available) == "Breakout-v5"
    with pytest.warns(UserWarning, match="HalfCheetah-v4"):
        assert envpool_task_id("HalfCheetah-v5", available) == "HalfCheetah-v4"
    from pglab.envs.envpool import EnvPoolVectorEnv

    cheetah = EnvPoolVectorEnv("HalfCheetah-v4", 2, {})  # builds nothing until reset
    assert cheetah.single_action_space.low.tolist() == [-1.0] * 6 and cheetah.single_action_space.high.max() == 1.0
    with pytest.raises(ValueError, match="env.vectorization=sync"):
        make_vector_env(EnvConfig(id="pglab-test/StartStateCartPole-v0", vectorization="envpool"))
    with pytest.raises(ValueError, match="env.wrappers"):
        make_vector_env(EnvConfig(id="CartPole-v1", vectorization="envpool",
                                  wrappers=["gymnasium.wrappers.TimeAwareObservation"]))
    with pytest.raises(ValueError, match="not options of EnvPool"):
        make_vector_env(EnvConfig(id="CartPole-v1", vectorization="envpool", kwargs={"sutton_barto_reward": True}))


def test_envpool_trains_through_the_cli_config(make_cfg):
    from pglab.run.train import build

    cfg = make_cfg("algo=ppo", "env.vectorization=envpool", "env.num_envs=4", "collector.num_steps=32",
                   "total_env_steps=256", "eval.enabled=false")
    r = build(cfg)
    r.trainer.fit(r.module, datamodule=r.datamodule)
    assert r.datamodule.total_env_steps >= 256
