"""Token envs: verifiers against brute-force references, seeding, termination, held-out split, bad settings."""

from __future__ import annotations

import itertools

import gymnasium as gym
import numpy as np
import pytest

from pglab.envs.tokens import AddEnv, ReverseEnv, SortEnv, exact_match, teacher_batch


def _oracle(env, obs: np.ndarray) -> np.ndarray:
    """The perfect policy read off the raw observation [N, S+1] (prompt slots, cursor), written independently of
    ``solution``: Reverse/Sort by Python built-ins, Add by integer arithmetic."""
    P, K = env.prompt_length, env.alphabet_size
    tokens = []
    for row in obs.astype(int):
        prompt, position = list(row[:P]), row[-1] - P  # tokens emitted so far
        if isinstance(env, ReverseEnv):
            answer = prompt[::-1]
        elif isinstance(env, SortEnv):
            answer = sorted(prompt)
        else:
            n = P // 2
            value = sum(d * K**i for i, d in enumerate(prompt[:n])) + sum(d * K**i for i, d in enumerate(prompt[n:]))
            answer = [(value // K**i) % K for i in range(n + 1)]
        tokens.append(answer[position] if position < len(answer) else env.EOS)
    return np.asarray(tokens)


@pytest.mark.parametrize("cls", [ReverseEnv, SortEnv, AddEnv])
def test_solution_matches_brute_force_reference(cls):
    env = cls(prompt_length=4, alphabet_size=3)
    for prompt in itertools.product(range(3), repeat=4):
        prompt = np.asarray(prompt)
        obs = np.stack([env.observation(prompt, env.teacher_tokens(prompt)[:t]) for t in range(env.solution_length())])
        expected = _oracle(env, obs)
        np.testing.assert_array_equal(env.solution(prompt), expected)
        assert env.verify(prompt, expected)
        assert not env.verify(prompt, np.append(expected, 0))  # one symbol too many
        wrong = expected.copy()
        wrong[0] = (wrong[0] + 1) % 3
        assert not env.verify(prompt, wrong)


def test_add_carries():
    env = AddEnv(prompt_length=4, alphabet_size=10)
    # 99 + 1 = 100, digits least significant first: a = [9, 9], b = [1, 0] -> [0, 0, 1]
    np.testing.assert_array_equal(env.solution(np.array([9, 9, 1, 0])), [0, 0, 1])


def _play(env, tokens, seed=0):
    env.reset(seed=seed)
    out = []
    for token in tokens:
        out.append(env.step(token))
        if out[-1][2] or out[-1][3]:
            break
    return out


def test_correct_answer_then_eos_is_rewarded_and_terminates():
    env = ReverseEnv(prompt_length=5, alphabet_size=7)
    env.reset(seed=3)
    answer = list(env.prompt[::-1])
    steps = _play(env, answer + [env.EOS], seed=3)
    assert len(steps) == 6
    assert all(r == 0.0 and not term and not trunc for _, r, term, trunc, _ in steps[:-1])
    _, reward, terminated, truncated, info = steps[-1]
    assert (reward, terminated, truncated, info["correct"], info["answer_length"]) == (1.0, True, False, True, 5)


def test_early_eos_terminates_with_zero_reward():
    env = ReverseEnv(prompt_length=5, alphabet_size=7)
    steps = _play(env, [0, env.EOS])
    assert len(steps) == 2
    _, reward, terminated, truncated, info = steps[-1]
    assert (reward, terminated, truncated, info["correct"]) == (0.0, True, False, False)


def test_max_length_terminates_not_truncates():
    env = SortEnv(prompt_length=3, alphabet_size=4, max_answer_length=5)
    steps = _play(env, [0] * 10)
    assert len(steps) == 5  # five symbols, no EOS: the length cap ends it
    _, reward, terminated, truncated, info = steps[-1]
    assert terminated and not truncated and reward == 0.0 and info["answer_length"] == 5


def test_answer_without_eos_is_accepted_when_max_length_equals_solution_length():
    env = ReverseEnv(prompt_length=4, alphabet_size=5, max_answer_length=4)
    env.reset(seed=1)
    steps = _play(env, list(env.prompt[::-1]), seed=1)
    assert len(steps) == 4 and steps[-1][1] == 1.0 and steps[-1][2]


def test_partial_credit_counts_matching_positions():
    env = ReverseEnv(prompt_length=4, alphabet_size=5, partial_credit=True)
    prompt = np.array([1, 2, 3, 4])
    assert env.score(prompt, [4, 3, 2, 1]) == 1.0
    assert env.score(prompt, [4, 3, 0, 0]) == 2 / 4
    assert env.score(prompt, [4, 3]) == 2 / 4  # too short: over the solution's length
    assert env.score(prompt, [4, 3, 2, 1, 0]) == 4 / 5  # too long: over the answer's length
    assert ReverseEnv(prompt_length=4, alphabet_size=5).score(prompt, [4, 3, 2, 0]) == 0.0


def test_same_seed_same_prompt_and_grouped_vector_reset():
    a, b = ReverseEnv(), ReverseEnv()
    obs_a, _ = a.reset(seed=42)
    obs_b, _ = b.reset(seed=42)
    np.testing.assert_array_equal(obs_a, obs_b)
    # the episode collector's reset: groups of G envs share one seed
    envs = gym.make_vec("pglab/Reverse-v0", num_envs=6, vectorization_mode="sync", split="train")
    obs, _ = envs.reset(seed=[7, 7, 7, 8, 8, 8])
    envs.close()
    assert (obs[:3] == obs[0]).all() and (obs[3:] == obs[3]).all()
    assert not np.array_equal(obs[0], obs[3])


def test_module_prefixed_id_registers_on_import():
    env = gym.make("pglab.envs.tokens:pglab/Sort-v0", prompt_length=3)
    assert env.unwrapped.task == "Sort" and env.action_space.n == 11
    env.close()


def test_splits_are_disjoint_and_cover_the_prompts():
    rng = np.random.default_rng(0)
    train, heldout = ReverseEnv(split="train"), ReverseEnv(split="heldout")
    train_prompts = {tuple(train.sample_prompt(rng)) for _ in range(2000)}
    heldout_prompts = {tuple(heldout.sample_prompt(rng)) for _ in range(300)}
    assert not train_prompts & heldout_prompts
    assert all(heldout.is_heldout(np.array(p)) for p in heldout_prompts)
    # the held-out share of all prompts is about heldout_fraction (0.1): 3 binomial sds at n = 5000 is ±0.013
    share = np.mean([ReverseEnv().is_heldout(rng.integers(0, 10, 6)) for _ in range(5000)])
    assert abs(share - 0.1) < 0.015


def test_teacher_batch_rows_are_the_env_observations():
    env = AddEnv(prompt_length=4, alphabet_size=10, split="train")
    obs, actions, mask = teacher_batch(env, np.random.default_rng(5), 3)
    for i in range(3):
        prompt = obs[i, 0, :4].astype(int)
        env.reset(seed=0)
        env.prompt = prompt  # replay the teacher's answer through step(): same observations, reward 1
        env._obs = env.observation(prompt, [])
        seen = [env._obs.copy()]
        for t in range(int(mask[i].sum())):
            o, r, term, _, _ = env.step(int(actions[i, t]))
            seen.append(o)
        assert term and r == 1.0
        np.testing.assert_array_equal(obs[i, : int(mask[i].sum())], np.stack(seen[:-1]))
        np.testing.assert_array_equal(actions[i, : int(mask[i].sum())], _oracle(env, np.stack(seen[:-1])))


def test_exact_match_of_oracle_and_of_a_wrong_policy():
    env = ReverseEnv(split="heldout")
    assert exact_match(lambda obs: _oracle(env, obs), "pglab/Reverse-v0", {"split": "heldout"}, 20, 10**6) \
        == (1.0, 6.0)
    assert exact_match(lambda obs: np.full(len(obs), 10), "pglab/Reverse-v0", {"split": "heldout"}, 5, 0) \
        == (0.0, 0.0)


@pytest.mark.parametrize(("cls", "kwargs", "fix"), [
    (ReverseEnv, {"alphabet_size": 1}, "alphabet_size=10"),
    (ReverseEnv, {"prompt_length": 0}, "prompt_length=6"),
    (ReverseEnv, {"prompt_length": 6, "max_answer_length": 5}, "max_answer_length=7"),
    (AddEnv, {"prompt_length": 6, "max_answer_length": 3}, "max_answer_length=5"),
    (AddEnv, {"prompt_length": 5}, "prompt_length=6"),
    (SortEnv, {"split": "test"}, "split must be one of"),
    (SortEnv, {"heldout_fraction": 1.5}, "heldout_fraction"),
    (ReverseEnv, {"prompt_length": 2, "alphabet_size": 3, "split": "train"}, "split=all"),
])
def test_bad_settings_are_refused_with_the_fix(cls, kwargs, fix):
    with pytest.raises(ValueError, match=fix):
        cls(**kwargs)


def test_observation_space_holds_every_observation():
    env = ReverseEnv(prompt_length=3, alphabet_size=4, max_answer_length=6)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    for _ in range(6):
        obs, _, terminated, _, _ = env.step(3)
        assert env.observation_space.contains(obs)
    assert terminated
