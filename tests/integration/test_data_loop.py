"""The on-policy data loop: one fresh rollout per epoch with the current weights; autoreset and truncation."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from pglab.core.estimators import gae, reward_to_go
from pglab.core.types import ActOutput
from pglab.envs.make import EnvConfig, make_vector_env
from pglab.rollout.collectors import EpisodeCollector, SegmentCollector
from pglab.run.train import build


def _flat_params(module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).clone() for p in module.policy.parameters()])


def test_train_dataloader_called_once_per_epoch_with_current_weights(make_cfg):
    cfg = make_cfg("algo=ppo", "env.num_envs=2", "collector.num_steps=16", "total_env_steps=160")
    r = build(cfg)
    at_collection: list[torch.Tensor] = []
    after_epoch: list[torch.Tensor] = []
    original = r.datamodule.train_dataloader

    def spy():
        at_collection.append(_flat_params(r.module))
        return original()

    r.datamodule.train_dataloader = spy

    class Record(__import__("lightning").Callback):
        def on_train_epoch_end(self, trainer, module):
            after_epoch.append(_flat_params(module))

    r.trainer.callbacks.append(Record())
    r.trainer.fit(r.module, datamodule=r.datamodule)
    epochs = r.trainer.current_epoch
    assert epochs >= 5 and len(at_collection) == epochs and len(after_epoch) == epochs
    for k in range(1, epochs):
        # epoch k collects with exactly the weights epoch k-1 left, and those weights changed
        assert torch.equal(at_collection[k], after_epoch[k - 1])
        assert not torch.equal(at_collection[k], at_collection[k - 1])


class ConstantRewardEnv(gym.Env):
    """Reward 1 per step; obs = [step index]; terminates at step ``terminate_at`` if set (else runs on)."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, terminate_at: int | None = None):
        self.terminate_at = terminate_at
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0], dtype=np.float32), {}

    def step(self, action):
        self.t += 1
        terminated = self.terminate_at is not None and self.t >= self.terminate_at
        return np.array([float(self.t)], dtype=np.float32), 1.0, terminated, False, {}


gym.register("pglab-test/ConstantReward-v0", entry_point=ConstantRewardEnv, max_episode_steps=4)


def _value_of(obs: torch.Tensor) -> torch.Tensor:
    return 100.0 + obs[:, 0]  # V(obs) = 100 + step index: easy to recognise in a target


def _policy(obs: torch.Tensor) -> ActOutput:
    n = obs.shape[0]
    return ActOutput(torch.zeros(n, dtype=torch.long), torch.zeros(n), _value_of(obs), torch.zeros(n, 2))


@pytest.mark.parametrize("terminate_at", [None, 4])
def test_truncation_bootstraps_from_final_obs_and_termination_does_not(terminate_at):
    envs = make_vector_env(EnvConfig(id="pglab-test/ConstantReward-v0", num_envs=1, vectorization="sync",
                                     kwargs={"terminate_at": terminate_at}))
    rollout = SegmentCollector(envs, num_steps=10, param_dim=2, seed=0).collect(_policy, _value_of)
    gamma = 0.9
    # steps 0..3 are episode 1 (ends at row 3), row 4 is the autoreset row, rows 5..8 episode 2, row 9 autoreset
    assert rollout.valid[:, 0].tolist() == [True] * 4 + [False] + [True] * 4 + [False]
    assert rollout.done[3, 0] and rollout.done[8, 0]
    assert bool(rollout.terminated[3, 0]) == (terminate_at is not None)
    targets = reward_to_go(rollout.rewards, rollout.values, rollout.next_values, rollout.terminated, rollout.done,
                           rollout.valid, gamma=gamma)
    final_obs_value = 100.0 + 4.0  # the real final observation of a 4-step episode is [4]
    bootstrap = 0.0 if terminate_at is not None else gamma * final_obs_value
    assert targets[3, 0].item() == pytest.approx(1.0 + bootstrap)
    assert targets[0, 0].item() == pytest.approx(sum(gamma**i for i in range(4)) + gamma**3 * bootstrap)
    # GAE at the last step: δ = r + γ·V(final obs)·(1 − terminated) − V(s_3)
    lam_targets = gae(rollout.rewards, rollout.values, rollout.next_values, rollout.terminated, rollout.done,
                      rollout.valid, gamma=gamma, lam=0.5)
    assert (lam_targets[3, 0] - rollout.values[3, 0]).item() == pytest.approx(1.0 + bootstrap - 103.0)
    # the autoreset row gets no target and no episode was invented
    assert targets[4, 0].item() == 0.0
    assert rollout.episode_returns.tolist() == [4.0, 4.0]


def test_episode_collector_groups_share_start_states_and_pad_after_the_end():
    envs = make_vector_env(EnvConfig(id="CartPole-v1", num_envs=6, vectorization="sync"))
    collector = EpisodeCollector(envs, num_groups=3, group_size=2, max_steps=500, param_dim=2, seed=3)
    rollout = collector.collect(_policy, _value_of)
    first = rollout.obs[0]
    for g in range(3):
        assert torch.equal(first[2 * g], first[2 * g + 1])
    assert not torch.equal(first[0], first[2])
    # each column: valid from row 0 to its single done, padding after; returns match the valid rows
    for n in range(6):
        valid = rollout.valid[:, n]
        length = int(valid.sum())
        assert valid[:length].all() and not valid[length:].any()
        assert rollout.done[length - 1, n] and int(rollout.done[:, n].sum()) == 1
    assert sorted(rollout.episode_lengths.tolist()) == sorted(rollout.valid.sum(0).tolist())
    assert rollout.group_ids.tolist() == [0, 0, 1, 1, 2, 2]


def test_same_seed_same_numbers(make_cfg, tmp_path):
    def metrics(seed, sub):
        cfg = make_cfg("algo=ppo", "logger=csv", "env.num_envs=2", "collector.num_steps=32", "total_env_steps=256",
                       f"seed={seed}", output_dir=tmp_path / sub)
        r = build(cfg)
        r.trainer.fit(r.module, datamodule=r.datamodule)
        lines = (tmp_path / sub / "csv" / "metrics.csv").read_text().splitlines()
        header = lines[0].split(",")
        drop = [i for i, h in enumerate(header) if h.startswith("perf/")]
        return [[v for i, v in enumerate(line.split(",")) if i not in drop] for line in lines], _flat_params(r.module)

    a, pa = metrics(0, "a")
    b, pb = metrics(0, "b")
    c, pc = metrics(1, "c")
    assert a == b and torch.equal(pa, pb)
    assert a != c and not torch.equal(pa, pc)


def test_direct_and_lightning_optimizer_paths_train_identically(make_cfg, tmp_path):
    def params(flag, sub):
        cfg = make_cfg("algo=ppo", "env.num_envs=2", "collector.num_steps=32", "total_env_steps=128",
                       f"learner.lightning_optimizer={flag}", "learner.minibatches_per_step=3",
                       output_dir=tmp_path / sub)
        r = build(cfg)
        r.trainer.fit(r.module, datamodule=r.datamodule)
        return _flat_params(r.module), r.module.updates, r.trainer.global_step

    direct, direct_updates, direct_global = params("false", "a")
    wrapped, wrapped_updates, wrapped_global = params("true", "b")
    torch.testing.assert_close(direct, wrapped, rtol=1e-6, atol=1e-7)
    # 20 updates per rollout (ppo preset), grouped 3 per Lightning step
    assert direct_updates == wrapped_updates == wrapped_global == direct_global > 0
