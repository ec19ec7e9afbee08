"""The reverse_* presets end to end through the CLI; GSPO's sequence ratio on a real padded batch; the warm start."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode
from gymnasium.wrappers import vector as vw

from pglab.core.baselines import group_baseline
from pglab.core.estimators import trajectory_return
from pglab.core.surrogates import GSPO, SurrogateInput
from pglab.envs.make import EnvConfig
from pglab.envs.tokens import ReverseEnv
from pglab.models.build import InferenceActor
from pglab.models.transformer import TransformerPolicy
from pglab.rollout.advantages import compute_advantages
from pglab.rollout.collectors import EpisodeCollector
from pglab.rollout.datamodule import OnPolicyDataModule
from pglab.rollout.minibatches import MinibatchDataset as _MinibatchDataset
from pglab.run.train import build

PRESETS = ["reverse_grpo", "reverse_gspo", "reverse_drgrpo", "reverse_ppo", "reverse_reinforce"]
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_trains_end_to_end_from_the_command_line(preset, tmp_path):
    # two rollouts of 32 answers (≈ 220 env steps each) of a few updates each, a 3-step warm start, held-out
    # accuracy on 16 prompts
    groups = 32 // (8 if preset in ("reverse_grpo", "reverse_gspo", "reverse_drgrpo") else 1)
    cmd = [sys.executable, "-m", "pglab.run.train", f"experiment={preset}", "total_env_steps=300", "logger=csv",
           f"collector.num_groups={groups}",
           "eval.enabled=false", "checkpoint.enabled=false", "trainer.enable_progress_bar=false",
           "callbacks.pretrain.steps=3", "callbacks.heldout.prompts=16", "callbacks.heldout.every_n_epochs=1",
           f"hydra.run.dir={tmp_path}"]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(tmp_path / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))

    def column(key):
        return [float(r[key]) for r in rows if r.get(key) not in (None, "")]

    assert max(column("env_steps")) >= 300
    assert len(column("train/policy_loss")) == 2 and all(math.isfinite(v) for v in column("train/policy_loss"))
    assert column("pretrain/loss")
    accuracies = column("eval/heldout_exact_match")
    assert len(accuracies) == 3 and all(0.0 <= a <= 1.0 for a in accuracies)  # before the first update, 2 epochs
    if preset == "reverse_ppo":
        assert column("train/value_loss")


def test_gspo_sequence_ratio_is_the_geometric_mean_over_each_answers_own_tokens():
    """Answers of different lengths, padded to the longest in the whole-episode layout the DataModule builds."""
    torch.manual_seed(0)
    envs = gym.make_vec("pglab/Reverse-v0", num_envs=6, vectorization_mode="sync",
                        vector_kwargs={"autoreset_mode": AutoresetMode.NEXT_STEP}, prompt_length=4, alphabet_size=5)
    envs = vw.RecordEpisodeStatistics(envs)
    old = TransformerPolicy(vocab_size=8, seq_len=10, num_actions=6, d_model=16, num_layers=1, num_heads=2)
    collector = EpisodeCollector(envs, num_groups=3, group_size=2, max_steps=5, param_dim=6, seed=0)
    actor = InferenceActor(old)
    rollout = collector.collect(actor.act, actor.value)
    envs.close()
    lengths = rollout.valid.sum(0)
    assert len(set(lengths.tolist())) > 1, "the test needs answers of different lengths"
    targets, advantages = compute_advantages(rollout, trajectory_return, group_baseline)
    datamodule = OnPolicyDataModule(EnvConfig(), {"kind": "episodes"}, trajectory_return, group_baseline,
                                    update_epochs=1, num_minibatches=1, whole_episodes=True, seed=0)
    batch, padded_length = datamodule._flatten(rollout, targets, advantages)
    order = [4, 0, 5, 2]
    minibatch = _MinibatchDataset(batch, padded_length).minibatch(torch.tensor(order))
    assert minibatch.mask.numel() == len(order) * padded_length and (minibatch.mask == 0).any()

    new = TransformerPolicy(vocab_size=8, seq_len=10, num_actions=6, d_model=16, num_layers=1, num_heads=2)
    new.load_state_dict(old.state_dict())
    with torch.no_grad():
        new.head.linear.weight.add_(0.5 * torch.randn_like(new.head.linear.weight))
        new.head.linear.bias.add_(0.5 * torch.randn_like(new.head.linear.bias))
    with torch.no_grad():
        logp = new.evaluate(minibatch.obs, minibatch.actions).logp
        ratio = GSPO().sequence_log_ratio(SurrogateInput(
            logp=logp, logp_old=minibatch.logp_old, advantages=minibatch.advantages, mask=minibatch.mask,
            episode_ids=minibatch.episode_ids, num_episodes=minibatch.num_episodes)).exp()

        # by hand: one token at a time from the rollout's own columns, product of ratios, root of the length
        expected, padded_mean = [], []
        for n in order:
            ratios = []
            for t in range(int(lengths[n])):
                obs, action = rollout.obs[t, n].unsqueeze(0), rollout.actions[t, n].unsqueeze(0)
                ratios.append(math.exp(float(new.evaluate(obs, action).logp) - float(rollout.logp[t, n])))
            expected.append(float(np.prod(ratios)) ** (1.0 / len(ratios)))
            rows = slice(order.index(n) * padded_length, (order.index(n) + 1) * padded_length)
            padded_mean.append(math.exp(float((logp[rows] - minibatch.logp_old[rows]).mean())))
    torch.testing.assert_close(ratio, torch.tensor(expected, dtype=ratio.dtype), rtol=1e-5, atol=1e-6)
    # counting the padding would give another number: the padding is really there and really ignored
    assert not np.allclose(padded_mean, expected, rtol=1e-4)


def test_warm_start_lowers_the_teacher_loss_and_zero_steps_leave_the_policy_alone(make_cfg):
    import pglab.envs.tokens  # noqa: F401  registers pglab/Reverse-v0 for the bare id used below

    base = ["experiment=reverse_grpo", "env.id=pglab/Reverse-v0", "env.kwargs.prompt_length=3",
            "env.kwargs.max_answer_length=4", "eval.enabled=false", "checkpoint.enabled=false",
            "callbacks.heldout.prompts=8"]
    r = build(make_cfg(*base, "callbacks.pretrain.steps=60", "callbacks.pretrain.batch_size=32"))
    warm = next(cb for cb in r.trainer.callbacks if type(cb).__name__ == "SupervisedWarmStart")
    r.trainer.fit_loop.max_epochs = 1
    r.trainer.fit(r.module, datamodule=r.datamodule)
    first_loss, last_loss = warm.history[0][1], warm.history[-1][1]
    assert first_loss == pytest.approx(math.log(11), abs=0.05)  # near-uniform over 10 symbols + EOS at the start
    assert last_loss < 0.5 * first_loss
    assert float(r.trainer.callback_metrics["pretrain/loss"]) == pytest.approx(last_loss)

    r = build(make_cfg(*base, "callbacks.pretrain.steps=0"))
    warm = next(cb for cb in r.trainer.callbacks if type(cb).__name__ == "SupervisedWarmStart")
    before = {k: v.clone() for k, v in r.module.policy.state_dict().items()}
    warm.on_fit_start(SimpleNamespace(datamodule=r.datamodule, ckpt_path=None), r.module)
    assert all(torch.equal(before[k], v) for k, v in r.module.policy.state_dict().items())
    assert warm.history == []


def test_warm_start_refuses_an_env_that_is_not_a_token_task(make_cfg):
    from pglab.run.pretrain import SupervisedWarmStart

    r = build(make_cfg("algo=ppo", "eval.enabled=false", "checkpoint.enabled=false"))
    with pytest.raises(ValueError, match="not a pglab.envs.tokens task"):
        SupervisedWarmStart(steps=1).on_fit_start(SimpleNamespace(datamodule=r.datamodule, ckpt_path=None), r.module)


def test_transformer_on_a_non_token_env_is_a_start_up_error(make_cfg):
    from pglab.run.checks import ConfigError

    with pytest.raises(ConfigError, match="model=mlp"):
        build(make_cfg("model=transformer", "eval.enabled=false", "checkpoint.enabled=false"))
    assert ReverseEnv().action_space.n == 11  # (the token env itself builds)
