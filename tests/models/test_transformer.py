"""TransformerPolicy: shapes, causal masking, log-probs against torch.distributions, refusal of non-token spaces."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.distributions import Categorical, kl_divergence

from pglab.envs.tokens import ReverseEnv, teacher_batch
from pglab.models.build import InferenceActor, build_policy
from pglab.models.transformer import TransformerPolicy, token_layout


def _policy(env, **kwargs) -> TransformerPolicy:
    torch.manual_seed(0)
    return TransformerPolicy.from_config(env.observation_space, env.action_space, d_model=32, num_layers=2,
                                         num_heads=4, **kwargs)


def _rows(env, n=5, seed=0) -> tuple[torch.Tensor, torch.Tensor]:
    obs, actions, mask = teacher_batch(env, np.random.default_rng(seed), n)
    keep = mask.reshape(-1) > 0
    return torch.from_numpy(obs.reshape(-1, obs.shape[-1])[keep]), torch.from_numpy(actions.reshape(-1)[keep])


def test_layout_and_output_shapes():
    env = ReverseEnv(prompt_length=4, alphabet_size=6)
    assert token_layout(env.observation_space) == (9, 4 + 1 + 5)  # K + 3 tokens; S = P + 1 + M
    policy = _policy(env, value_head=True)
    obs, actions = _rows(env)
    B = obs.shape[0]
    out = policy.act(obs)
    assert out.actions.shape == (B,) and out.logp.shape == (B,) and out.values.shape == (B,)
    assert out.dist_params.shape == (B, 7) and policy.head.param_dim == 7
    ev = policy.evaluate(obs, actions)
    assert ev.logp.shape == ev.entropy.shape == ev.values.shape == (B,) and ev.dist_params.shape == (B, 7)
    assert policy.value(obs).shape == (B,) and policy.has_value
    assert policy.logits(obs[:, :-1].long()).shape == (B, env.seq_len, 7)
    fused = InferenceActor(policy)
    torch.testing.assert_close(fused.act(obs, deterministic=True).actions, out.dist_params.argmax(-1))
    torch.testing.assert_close(fused.value(obs), ev.values)


def test_no_value_head_gives_zero_values():
    env = ReverseEnv(prompt_length=3, alphabet_size=4)
    policy = _policy(env)
    obs, actions = _rows(env, 2)
    assert not policy.has_value
    assert torch.equal(policy.value(obs), torch.zeros(obs.shape[0]))
    assert torch.equal(policy.evaluate(obs, actions).values, torch.zeros(obs.shape[0]))


def test_future_tokens_do_not_change_earlier_logits():
    env = ReverseEnv(prompt_length=4, alphabet_size=6)
    policy = _policy(env)
    torch.manual_seed(1)
    tokens = torch.randint(0, env.vocab_size, (3, env.seq_len))
    base = policy.logits(tokens)
    for j in range(1, env.seq_len):
        changed = tokens.clone()
        changed[:, j] = (changed[:, j] + 1) % env.vocab_size
        other = policy.logits(changed)
        torch.testing.assert_close(other[:, :j], base[:, :j])  # positions before j: unchanged
        assert not torch.allclose(other[:, j], base[:, j])  # position j itself sees the change


def test_policy_reads_the_cursor_position_not_the_padding():
    env = ReverseEnv(prompt_length=4, alphabet_size=6)
    policy = _policy(env)
    obs, _ = _rows(env, 3)
    scrambled = obs.clone()
    for row in scrambled:
        cursor = int(row[-1])
        row[cursor + 1: env.seq_len] = torch.randint(0, env.vocab_size, (env.seq_len - cursor - 1,)).float()
    torch.testing.assert_close(policy.act(scrambled).dist_params, policy.act(obs).dist_params)
    # the cursor's params equal the language-model logits at that position of the full answer's sequence
    full = obs[obs[:, -1] == obs[:, -1].max()][:1].repeat(int(obs[:, -1].max()) - 3, 1)
    full[:, -1] = torch.arange(4, 4 + full.shape[0]).float()
    lm = torch.log_softmax(policy.logits(full[:1, :-1].long())[0, 4: 4 + full.shape[0]], -1)
    torch.testing.assert_close(policy.act(full).dist_params, lm)


def test_log_probs_entropy_and_kl_match_torch_distributions():
    env = ReverseEnv(prompt_length=5, alphabet_size=7)
    policy = _policy(env)
    with torch.no_grad():  # a non-uniform head, so the comparison is not between two near-uniform vectors
        policy.head.linear.weight.normal_(0, 1.0)
    obs, actions = _rows(env, 4)
    ev = policy.evaluate(obs, actions)
    hidden = policy.hidden(obs[:, :-1].long())
    reference = Categorical(logits=policy.head.linear(hidden[torch.arange(len(obs)), obs[:, -1].long()]))
    torch.testing.assert_close(ev.logp, reference.log_prob(actions))
    torch.testing.assert_close(ev.entropy, reference.entropy())
    other = _policy(env)
    ev_other = other.evaluate(obs, actions)
    torch.testing.assert_close(policy.kl(ev.dist_params, ev_other.dist_params),
                               kl_divergence(reference, Categorical(logits=ev_other.dist_params)))
    ev.logp.sum().backward()  # gradients reach the embeddings
    assert policy.token_embedding.weight.grad.abs().sum() > 0


def test_build_policy_from_model_config():
    env = ReverseEnv()
    cfg = {"_target_": "pglab.models.transformer.TransformerPolicy.from_config", "d_model": 16, "num_layers": 1,
           "num_heads": 2, "ff_mult": 2, "value_head": True}
    policy = build_policy(cfg, env.observation_space, env.action_space)
    assert isinstance(policy, TransformerPolicy) and policy.has_value


@pytest.mark.parametrize("space", [
    gym.make("CartPole-v1").observation_space,
    gym.spaces.Box(0.0, 1.0, shape=(4, 4)),
    gym.spaces.Box(-1.0, 5.0, shape=(8,)),
    gym.spaces.Discrete(5),
])
def test_refuses_observations_that_are_not_token_histories(space):
    with pytest.raises(ValueError, match="model=mlp"):
        TransformerPolicy.from_config(space, gym.spaces.Discrete(2))


def test_refuses_bad_sizes():
    env = ReverseEnv()
    with pytest.raises(ValueError, match="num_heads"):
        TransformerPolicy.from_config(env.observation_space, env.action_space, d_model=30, num_heads=4)
    with pytest.raises(ValueError, match="Discrete"):
        TransformerPolicy.from_config(env.observation_space, gym.spaces.Box(-1, 1, shape=(2,)))
