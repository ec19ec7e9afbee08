"""Estimators (pglab.core.estimators) against brute force from the definitions.

Every reference here is plain Python over nested lists ``[T][N]``: a per-(t, n) scan that sums rewards
until the episode ends / the horizon is reached / the segment ends, and adds γ^j·V where it stops
(unless the episode terminated). GAE is checked against the explicit λ-series of docs/theory.md §6
(1−λ)(A¹ + λA² + λ²A³ + …) built from those brute-force A^k.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pglab.core.estimators import ESTIMATORS, check_rollout, gae, nstep, reward_to_go, trajectory_return

DT = torch.float64
HYP = settings(max_examples=50, deadline=None)
ATOL = 1e-9
RTOL = 1e-9

# --------------------------------------------------------------------------------------------------
# random rollouts that respect the data conventions
# --------------------------------------------------------------------------------------------------

# "step" is more frequent so that episodes of several steps occur
ROW_KINDS = ("step", "step", "step", "terminated", "truncated")
# same_step: a new episode starts on the row right after a done
# next_step: gymnasium next-step autoreset, the row right after a done is not a real transition
# padding:   episode collector, every row after the first done is padding
MODES = ("same_step", "next_step", "padding")


@dataclass(frozen=True)
class Rollout:
    rewards: list[list[float]]  # [T][N]
    values: list[list[float]]
    next_values: list[list[float]]
    terminated: list[list[bool]]
    done: list[list[bool]]
    valid: list[list[bool]]

    @property
    def T(self) -> int:
        return len(self.rewards)

    @property
    def N(self) -> int:
        return len(self.rewards[0])

    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            "rewards": torch.tensor(self.rewards, dtype=DT),
            "values": torch.tensor(self.values, dtype=DT),
            "next_values": torch.tensor(self.next_values, dtype=DT),
            "terminated": torch.tensor(self.terminated, dtype=torch.bool),
            "done": torch.tensor(self.done, dtype=torch.bool),
            "valid": torch.tensor(self.valid, dtype=torch.bool),
        }


def build_rollout(columns: list[tuple[str, list[str], bool]], rng: random.Random) -> Rollout:
    """columns: per column (mode, row kinds [T], first row invalid). Invalid rows hold large garbage."""
    T, N = len(columns[0][1]), len(columns)
    rewards = [[0.0] * N for _ in range(T)]
    values = [[0.0] * N for _ in range(T)]
    next_values = [[0.0] * N for _ in range(T)]
    terminated = [[False] * N for _ in range(T)]
    done = [[False] * N for _ in range(T)]
    valid = [[True] * N for _ in range(T)]
    for n, (mode, kinds, first_invalid) in enumerate(columns):
        ended = False
        for t in range(T):
            invalid = (
                (t == 0 and first_invalid and mode == "next_step")
                or (mode == "next_step" and t > 0 and done[t - 1][n])
                or (mode == "padding" and ended)
            )
            if invalid:
                valid[t][n] = False
                rewards[t][n] = rng.uniform(-1e3, 1e3)
                values[t][n] = rng.uniform(-1e3, 1e3)
                next_values[t][n] = rng.uniform(-1e3, 1e3)
                continue
            rewards[t][n] = rng.uniform(-1.0, 1.0)
            values[t][n] = rng.uniform(-2.0, 2.0)
            terminated[t][n] = kinds[t] == "terminated"
            done[t][n] = kinds[t] != "step"
            ended = ended or done[t][n]
        for t in range(T):
            if not valid[t][n]:
                continue
            if done[t][n] or t == T - 1:
                # V(final obs) at truncation, V(s_T) at the segment end; ignored after termination
                next_values[t][n] = rng.uniform(-2.0, 2.0)
            else:
                assert valid[t + 1][n]
                next_values[t][n] = values[t + 1][n]
    return Rollout(rewards, values, next_values, terminated, done, valid)


@st.composite
def rollouts(draw, max_t: int = 8, max_n: int = 4) -> Rollout:
    T = draw(st.integers(1, max_t))
    N = draw(st.integers(1, max_n))
    columns = []
    for _ in range(N):
        mode = draw(st.sampled_from(MODES))
        kinds = draw(st.lists(st.sampled_from(ROW_KINDS), min_size=T, max_size=T))
        first_invalid = draw(st.booleans())
        columns.append((mode, kinds, first_invalid))
    seed = draw(st.integers(0, 2**32 - 1))
    return build_rollout(columns, random.Random(seed))


unit_floats = st.one_of(st.sampled_from([0.0, 0.5, 0.9, 0.99, 1.0]), st.floats(0.0, 1.0))

# --------------------------------------------------------------------------------------------------
# brute force from the definitions
# --------------------------------------------------------------------------------------------------


def stop_row(ro: Rollout, t: int, n: int, horizon: float = math.inf) -> int:
    """Last row included in the sum that starts at (t, n): episode end, horizon or segment end."""
    j = t
    while True:
        assert ro.valid[j][n], "a sum must never reach a row that is not a real transition"
        if ro.done[j][n] or j == ro.T - 1 or j - t + 1 >= horizon:
            return j
        j += 1


def bootstrap(ro: Rollout, j: int, n: int) -> float:
    return 0.0 if ro.terminated[j][n] else ro.next_values[j][n]


def discounted_sum(ro: Rollout, t: int, n: int, gamma: float, horizon: float = math.inf) -> float:
    e = stop_row(ro, t, n, horizon)
    total = 0.0
    for j in range(t, e + 1):
        total += gamma ** (j - t) * ro.rewards[j][n]
    return total + gamma ** (e - t + 1) * bootstrap(ro, e, n)


def episode_start(ro: Rollout, t: int, n: int) -> int:
    s = t
    while s > 0 and ro.valid[s - 1][n] and not ro.done[s - 1][n]:
        s -= 1
    return s


def grid(ro: Rollout, fn) -> torch.Tensor:
    return torch.tensor(
        [[fn(t, n) if ro.valid[t][n] else 0.0 for n in range(ro.N)] for t in range(ro.T)], dtype=DT
    )


def brute_reward_to_go(ro: Rollout, gamma: float) -> torch.Tensor:
    return grid(ro, lambda t, n: discounted_sum(ro, t, n, gamma))


def brute_nstep(ro: Rollout, gamma: float, k: int) -> torch.Tensor:
    return grid(ro, lambda t, n: discounted_sum(ro, t, n, gamma, horizon=k))


def brute_trajectory_return(ro: Rollout, gamma: float) -> torch.Tensor:
    return grid(ro, lambda t, n: discounted_sum(ro, episode_start(ro, t, n), n, gamma))


def brute_advantage_k(ro: Rollout, gamma: float, k: int, t: int, n: int) -> float:
    """A^k(s_t) = Σ_{i<k} γ^i r_{t+i} + γ^k V(s_{t+k}) − V(s_t), stopped at the episode end (docs/theory.md §5)."""
    return discounted_sum(ro, t, n, gamma, horizon=k) - ro.values[t][n]


def brute_gae_advantage(ro: Rollout, gamma: float, lam: float) -> torch.Tensor:
    """(1−λ)(A¹ + λA² + …) truncated at K = T.

    Every A^k with k ≥ T equals A^T, so the tail (1−λ)Σ_{k≥K} λ^{k−1}A^k sums to λ^{K−1}A^K.
    """
    K = ro.T

    def one(t: int, n: int) -> float:
        series = [brute_advantage_k(ro, gamma, k, t, n) for k in range(1, K + 1)]
        head = sum(lam ** (k - 1) * series[k - 1] for k in range(1, K))
        return (1.0 - lam) * head + lam ** (K - 1) * series[K - 1]

    return grid(ro, one)


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=ATOL)


# --------------------------------------------------------------------------------------------------
# the generator itself (so a broken builder cannot make the tests vacuous)
# --------------------------------------------------------------------------------------------------


def test_builder_produces_every_boundary_kind():
    rng = random.Random(0)
    ro = build_rollout(
        [
            ("same_step", ["step", "terminated", "step", "truncated", "step"], False),
            ("next_step", ["step", "truncated", "step", "step", "step"], True),
            ("padding", ["step", "step", "terminated", "step", "step"], False),
        ],
        rng,
    )
    assert [row[0] for row in ro.valid] == [True] * 5
    assert [row[1] for row in ro.valid] == [False, True, False, True, True]
    assert [row[2] for row in ro.valid] == [True, True, True, False, False]
    assert ro.next_values[0][0] == ro.values[1][0]
    assert ro.next_values[3][1] == ro.values[4][1]


# --------------------------------------------------------------------------------------------------
# GAE
# --------------------------------------------------------------------------------------------------


@HYP
@given(ro=rollouts(), gamma=unit_floats, lam=unit_floats)
def test_gae_equals_seed_lambda_series(ro, gamma, lam):
    x = ro.tensors()
    advantage = gae(**x, gamma=gamma, lam=lam) - x["values"] * x["valid"]
    close(advantage, brute_gae_advantage(ro, gamma, lam))


@HYP
@given(ro=rollouts(), gamma=unit_floats)
def test_gae_lambda_zero_is_one_step_advantage(ro, gamma):
    x = ro.tensors()
    expected = grid(ro, lambda t, n: ro.rewards[t][n] + gamma * bootstrap(ro, t, n) - ro.values[t][n])
    close(gae(**x, gamma=gamma, lam=0.0) - x["values"] * x["valid"], expected)


@HYP
@given(ro=rollouts(), gamma=unit_floats)
def test_gae_lambda_one_is_monte_carlo_return_minus_value(ro, gamma):
    x = ro.tensors()
    expected = brute_reward_to_go(ro, gamma) - x["values"] * x["valid"]
    close(gae(**x, gamma=gamma, lam=1.0) - x["values"] * x["valid"], expected)


def test_gae_hand_worked():
    # one column, γ = 0.5, λ = 0.5: r = [1, 2], V = [1, 4], V(s_2) = 8, no episode end
    # δ0 = 1 + 0.5·4 − 1 = 2, δ1 = 2 + 0.5·8 − 4 = 2, A1 = 2, A0 = 2 + 0.25·2 = 2.5
    x = {
        "rewards": torch.tensor([[1.0], [2.0]], dtype=DT),
        "values": torch.tensor([[1.0], [4.0]], dtype=DT),
        "next_values": torch.tensor([[4.0], [8.0]], dtype=DT),
        "terminated": torch.zeros(2, 1, dtype=torch.bool),
        "done": torch.zeros(2, 1, dtype=torch.bool),
        "valid": torch.ones(2, 1, dtype=torch.bool),
    }
    close(gae(**x, gamma=0.5, lam=0.5), torch.tensor([[3.5], [6.0]], dtype=DT))


# --------------------------------------------------------------------------------------------------
# n-step, reward-to-go, trajectory return
# --------------------------------------------------------------------------------------------------


@HYP
@given(ro=rollouts(), gamma=unit_floats)
def test_nstep_equals_brute_force_for_every_k(ro, gamma):
    x = ro.tensors()
    for k in range(1, ro.T + 2):
        close(nstep(**x, gamma=gamma, k=k), brute_nstep(ro, gamma, k))


@HYP
@given(ro=rollouts(), gamma=unit_floats)
def test_nstep_one_is_td0_target(ro, gamma):
    x = ro.tensors()
    expected = grid(ro, lambda t, n: ro.rewards[t][n] + gamma * bootstrap(ro, t, n))
    close(nstep(**x, gamma=gamma, k=1), expected)


@HYP
@given(ro=rollouts(), gamma=unit_floats)
def test_reward_to_go_equals_brute_force(ro, gamma):
    close(reward_to_go(**ro.tensors(), gamma=gamma), brute_reward_to_go(ro, gamma))


@HYP
@given(ro=rollouts(), gamma=unit_floats)
def test_trajectory_return_equals_brute_force_and_is_constant_per_episode(ro, gamma):
    out = trajectory_return(**ro.tensors(), gamma=gamma)
    close(out, brute_trajectory_return(ro, gamma))
    for n in range(ro.N):
        for t in range(ro.T):
            if ro.valid[t][n]:
                s = episode_start(ro, t, n)
                assert out[t, n].item() == out[s, n].item()


@HYP
@given(ro=rollouts())
def test_trajectory_return_undiscounted_is_sum_of_rewards_for_terminated_episodes(ro):
    out = trajectory_return(**ro.tensors(), gamma=1.0)
    for n in range(ro.N):
        for e in range(ro.T):
            if ro.valid[e][n] and ro.terminated[e][n]:
                s = episode_start(ro, e, n)
                expected = sum(ro.rewards[j][n] for j in range(s, e + 1))
                for t in range(s, e + 1):
                    assert out[t, n].item() == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_hand_worked_rollout_with_termination_autoreset_row_and_cut():
    # one column, γ = 0.5. Row 1 terminates, row 2 is the next-step autoreset row (garbage), row 3 opens
    # a new episode that the segment cuts, bootstrapped with V(s_4) = 10.
    x = {
        "rewards": torch.tensor([[1.0], [2.0], [1000.0], [4.0]], dtype=DT),
        "values": torch.tensor([[0.5], [3.0], [-999.0], [1.0]], dtype=DT),
        "next_values": torch.tensor([[3.0], [77.0], [1.0], [10.0]], dtype=DT),
        "terminated": torch.tensor([[False], [True], [False], [False]]),
        "done": torch.tensor([[False], [True], [False], [False]]),
        "valid": torch.tensor([[True], [True], [False], [True]]),
    }
    # reward-to-go: R1 = 2, R0 = 1 + 0.5·2 = 2, R2 = 0 (invalid), R3 = 4 + 0.5·10 = 9
    close(reward_to_go(**x, gamma=0.5), torch.tensor([[2.0], [2.0], [0.0], [9.0]], dtype=DT))
    # trajectory return: the first episode's return at its first row, copied to both of its rows
    close(trajectory_return(**x, gamma=0.5), torch.tensor([[2.0], [2.0], [0.0], [9.0]], dtype=DT))
    # undiscounted: 1 + 2 = 3 and 4 + 10 = 14
    close(trajectory_return(**x, gamma=1.0), torch.tensor([[3.0], [3.0], [0.0], [14.0]], dtype=DT))
    # TD(0): 1 + 0.5·3 = 2.5, 2 (terminated: no bootstrap), 0, 9
    close(nstep(**x, gamma=0.5, k=1), torch.tensor([[2.5], [2.0], [0.0], [9.0]], dtype=DT))
    # GAE λ=1 is the Monte-Carlo return: G = R
    close(gae(**x, gamma=0.5, lam=1.0), torch.tensor([[2.0], [2.0], [0.0], [9.0]], dtype=DT))


def test_segment_cut_mid_episode_bootstraps_with_last_next_value():
    # r = [1, 2, 3], nothing ends, V(s_3) = 10, γ = 0.5: R2 = 3 + 5 = 8, R1 = 2 + 4 = 6, R0 = 1 + 3 = 4
    x = {
        "rewards": torch.tensor([[1.0], [2.0], [3.0]], dtype=DT),
        "values": torch.tensor([[0.0], [0.0], [0.0]], dtype=DT),
        "next_values": torch.tensor([[0.0], [0.0], [10.0]], dtype=DT),
        "terminated": torch.zeros(3, 1, dtype=torch.bool),
        "done": torch.zeros(3, 1, dtype=torch.bool),
        "valid": torch.ones(3, 1, dtype=torch.bool),
    }
    expected = torch.tensor([[4.0], [6.0], [8.0]], dtype=DT)
    close(reward_to_go(**x, gamma=0.5), expected)
    close(nstep(**x, gamma=0.5, k=3), expected)
    close(nstep(**x, gamma=0.5, k=10), expected)
    close(trajectory_return(**x, gamma=0.5), torch.tensor([[4.0], [4.0], [4.0]], dtype=DT))
    # 2-step: 1 + 0.5·2 + 0.25·V(s_2)=0 → 2; 2 + 0.5·3 + 0.25·10 = 6; 3 + 0.5·10 = 8
    close(nstep(**x, gamma=0.5, k=2), torch.tensor([[2.0], [6.0], [8.0]], dtype=DT))


# --------------------------------------------------------------------------------------------------
# termination vs truncation
# --------------------------------------------------------------------------------------------------


def _as_all_terminated(ro: Rollout) -> Rollout:
    return replace(ro, terminated=[list(row) for row in ro.done])


def _as_all_truncated(ro: Rollout) -> Rollout:
    return replace(ro, terminated=[[False] * ro.N for _ in range(ro.T)])


@HYP
@given(ro=rollouts(), gamma=unit_floats, lam=unit_floats)
def test_termination_and_truncation_differ_by_exactly_the_bootstrap(ro, gamma, lam):
    term, trunc = _as_all_terminated(ro), _as_all_truncated(ro)
    xt, xu = term.tensors(), trunc.tensors()

    def extra_bootstrap(t: int, n: int, horizon: float) -> float:
        e = stop_row(ro, t, n, horizon)
        return gamma ** (e - t + 1) * ro.next_values[e][n] if ro.done[e][n] else 0.0

    close(
        reward_to_go(**xu, gamma=gamma) - reward_to_go(**xt, gamma=gamma),
        grid(ro, lambda t, n: extra_bootstrap(t, n, math.inf)),
    )
    for k in range(1, ro.T + 2):
        close(
            nstep(**xu, gamma=gamma, k=k) - nstep(**xt, gamma=gamma, k=k),
            grid(ro, lambda t, n, k=k: extra_bootstrap(t, n, k)),
        )

    def gae_extra(t: int, n: int) -> float:
        e = stop_row(ro, t, n)
        return gamma * (gamma * lam) ** (e - t) * ro.next_values[e][n] if ro.done[e][n] else 0.0

    close(gae(**xu, gamma=gamma, lam=lam) - gae(**xt, gamma=gamma, lam=lam), grid(ro, gae_extra))


# --------------------------------------------------------------------------------------------------
# invalid rows
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_invalid_rows_are_zero(name):
    rng = random.Random(3)
    ro = build_rollout(
        [
            ("next_step", ["step", "terminated", "step", "step", "truncated", "step"], True),
            ("padding", ["step", "truncated", "step", "step", "step", "step"], False),
        ],
        rng,
    )
    out = ESTIMATORS[name](**ro.tensors())
    invalid = ~ro.tensors()["valid"]
    assert int(invalid.sum()) == 1 + 2 + 4
    assert torch.all(out[invalid] == 0)
    assert torch.isfinite(out).all()


def test_all_rows_invalid_gives_zeros():
    x = {
        "rewards": torch.full((3, 2), 5.0, dtype=DT),
        "values": torch.full((3, 2), 5.0, dtype=DT),
        "next_values": torch.full((3, 2), 5.0, dtype=DT),
        "terminated": torch.zeros(3, 2, dtype=torch.bool),
        "done": torch.zeros(3, 2, dtype=torch.bool),
        "valid": torch.zeros(3, 2, dtype=torch.bool),
    }
    for fn in ESTIMATORS.values():
        assert torch.equal(fn(**x), torch.zeros(3, 2, dtype=DT))


# --------------------------------------------------------------------------------------------------
# bad arguments
# --------------------------------------------------------------------------------------------------


def _good_inputs(T: int = 4, N: int = 3) -> dict[str, torch.Tensor]:
    return {
        "rewards": torch.zeros(T, N, dtype=DT),
        "values": torch.zeros(T, N, dtype=DT),
        "next_values": torch.zeros(T, N, dtype=DT),
        "terminated": torch.zeros(T, N, dtype=torch.bool),
        "done": torch.zeros(T, N, dtype=torch.bool),
        "valid": torch.ones(T, N, dtype=torch.bool),
    }


@pytest.mark.parametrize("fn", [check_rollout, *ESTIMATORS.values()], ids=lambda f: f.__name__)
@pytest.mark.parametrize("name", ["values", "next_values", "terminated", "done", "valid"])
def test_shape_mismatch_names_the_tensor(fn, name):
    x = _good_inputs()
    x[name] = x[name][:, :2]
    with pytest.raises(ValueError, match=rf"^{name} has shape"):
        fn(**x)
    x = _good_inputs()
    x[name] = x[name].T
    with pytest.raises(ValueError, match=rf"^{name} has shape"):
        fn(**x)


@pytest.mark.parametrize("fn", ESTIMATORS.values(), ids=lambda f: f.__name__)
def test_rewards_must_be_two_dimensional(fn):
    x = {key: value[:, 0] for key, value in _good_inputs().items()}
    with pytest.raises(ValueError, match="rewards"):
        fn(**x)


@pytest.mark.parametrize("fn", ESTIMATORS.values(), ids=lambda f: f.__name__)
@pytest.mark.parametrize("gamma", [-0.01, 1.01, -1.0, 2.0, float("nan")])
def test_gamma_outside_unit_interval_raises(fn, gamma):
    with pytest.raises(ValueError, match="gamma"):
        fn(**_good_inputs(), gamma=gamma)


@pytest.mark.parametrize("lam", [-0.01, 1.01, float("nan")])
def test_lam_outside_unit_interval_raises(lam):
    with pytest.raises(ValueError, match="lam"):
        gae(**_good_inputs(), lam=lam)


@pytest.mark.parametrize("gamma", [0.0, 1.0])
def test_gamma_endpoints_are_accepted(gamma):
    for fn in ESTIMATORS.values():
        fn(**_good_inputs(), gamma=gamma)
    gae(**_good_inputs(), lam=0.0)
    gae(**_good_inputs(), lam=1.0)


@pytest.mark.parametrize("k", [0, -1, 1.5])
def test_nstep_k_below_one_or_fractional_raises(k):
    with pytest.raises(ValueError, match=r"\bk\b"):
        nstep(**_good_inputs(), k=k)
