"""Baselines (pglab.core.baselines) against the direct formulas, computed in plain Python per entry / per group."""

from __future__ import annotations

import random
import statistics

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pglab.core.baselines import BASELINES, group_baseline, mean_baseline, no_baseline, value_baseline

DT = torch.float64
HYP = settings(max_examples=50, deadline=None)


def close(actual: torch.Tensor, expected: torch.Tensor, atol: float = 1e-10) -> None:
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=atol)


@st.composite
def targets_and_mask(draw, max_t: int = 7, max_n: int = 5):
    T = draw(st.integers(1, max_t))
    N = draw(st.integers(1, max_n))
    valid = draw(st.lists(st.lists(st.booleans(), min_size=N, max_size=N), min_size=T, max_size=T))
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    # invalid rows hold garbage that must not leak into anything
    targets = [
        [rng.uniform(-3, 3) if valid[t][n] else rng.uniform(-1e4, 1e4) for n in range(N)] for t in range(T)
    ]
    values = [[rng.uniform(-3, 3) for _ in range(N)] for _ in range(T)]
    return targets, values, valid


def _tensor(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=DT)


# --------------------------------------------------------------------------------------------------
# none / mean / value
# --------------------------------------------------------------------------------------------------


@HYP
@given(data=targets_and_mask())
def test_no_baseline_is_the_target_on_valid_rows(data):
    targets, _, valid = data
    expected = [
        [g if v else 0.0 for g, v in zip(row, vrow, strict=True)]
        for row, vrow in zip(targets, valid, strict=True)
    ]
    close(no_baseline(_tensor(targets), torch.tensor(valid)), _tensor(expected))


@HYP
@given(data=targets_and_mask())
def test_mean_baseline_subtracts_the_mean_of_the_valid_rows(data):
    targets, _, valid = data
    real = [g for row, vrow in zip(targets, valid, strict=True) for g, v in zip(row, vrow, strict=True) if v]
    mean = statistics.fmean(real) if real else 0.0
    expected = [
        [g - mean if v else 0.0 for g, v in zip(row, vrow, strict=True)]
        for row, vrow in zip(targets, valid, strict=True)
    ]
    out = mean_baseline(_tensor(targets), torch.tensor(valid))
    close(out, _tensor(expected), atol=1e-9)
    if real:
        assert abs(float(out.sum())) < 1e-9


@HYP
@given(data=targets_and_mask())
def test_value_baseline_subtracts_the_value(data):
    targets, values, valid = data
    expected = [
        [g - b if v else 0.0 for g, b, v in zip(row, brow, vrow, strict=True)]
        for row, brow, vrow in zip(targets, values, valid, strict=True)
    ]
    close(value_baseline(_tensor(targets), torch.tensor(valid), _tensor(values)), _tensor(expected))


def test_hand_worked_none_mean_value():
    targets = _tensor([[1.0, 2.0], [3.0, 100.0]])
    valid = torch.tensor([[True, True], [True, False]])
    values = _tensor([[0.5, 0.5], [1.0, 1.0]])
    close(no_baseline(targets, valid), _tensor([[1.0, 2.0], [3.0, 0.0]]))
    # mean of 1, 2, 3 is 2
    close(mean_baseline(targets, valid), _tensor([[-1.0, 0.0], [1.0, 0.0]]))
    close(value_baseline(targets, valid, values), _tensor([[0.5, 1.5], [2.0, 0.0]]))


def test_mean_baseline_with_no_valid_row_is_zero_not_nan():
    out = mean_baseline(_tensor([[1.0, 2.0]]), torch.tensor([[False, False]]))
    assert torch.equal(out, torch.zeros(1, 2, dtype=DT))


def test_registry():
    assert BASELINES == {
        "none": no_baseline,
        "mean": mean_baseline,
        "value": value_baseline,
        "group": group_baseline,
    }


# --------------------------------------------------------------------------------------------------
# group (GRPO / Dr. GRPO)
# --------------------------------------------------------------------------------------------------


@st.composite
def grouped_episodes(draw, max_t: int = 6, max_n: int = 8):
    """One column per episode, a valid prefix of random length then padding; targets = the episode's score
    broadcast over its steps (trajectory return), group ids arbitrary integers."""
    N = draw(st.integers(1, max_n))
    T = draw(st.integers(1, max_t))
    id_pool = draw(st.lists(st.integers(-5, 50), min_size=1, max_size=4, unique=True))
    group_ids = draw(st.lists(st.sampled_from(id_pool), min_size=N, max_size=N))
    lengths = draw(st.lists(st.integers(1, T), min_size=N, max_size=N))
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    scores = [rng.uniform(-5, 5) for _ in range(N)]
    valid = [[t < lengths[n] for n in range(N)] for t in range(T)]
    targets = [[scores[n] if valid[t][n] else rng.uniform(-1e3, 1e3) for n in range(N)] for t in range(T)]
    return targets, valid, scores, group_ids


def _group_stats(scores, group_ids):
    members: dict[int, list[float]] = {}
    for s, g in zip(scores, group_ids, strict=True):
        members.setdefault(g, []).append(s)
    return {g: (statistics.fmean(v), statistics.pstdev(v)) for g, v in members.items()}


def _call_group(targets, valid, scores, group_ids, **kwargs):
    return group_baseline(
        _tensor(targets),
        torch.tensor(valid),
        _tensor(scores),
        torch.tensor(group_ids, dtype=torch.long),
        **kwargs,
    )


@HYP
@given(data=grouped_episodes(), scale=st.booleans(), eps=st.sampled_from([0.0, 1e-6, 0.1]))
def test_group_baseline_matches_direct_formula(data, scale, eps):
    targets, valid, scores, group_ids = data
    stats = _group_stats(scores, group_ids)
    if eps == 0.0 and scale and any(std == 0.0 for _, std in stats.values()):
        eps = 1e-6  # eps = 0 is only defined when every group has spread
    expected = []
    for t, row in enumerate(targets):
        expected_row = []
        for n, g in enumerate(row):
            mean, std = stats[group_ids[n]]
            a = (g - mean) / (std + eps) if scale else g - mean
            expected_row.append(a if valid[t][n] else 0.0)
        expected.append(expected_row)
    out = _call_group(targets, valid, scores, group_ids, scale=scale, eps=eps)
    close(out, _tensor(expected), atol=1e-7)
    assert torch.isfinite(out).all()


@HYP
@given(data=grouped_episodes())
def test_group_advantages_have_zero_mean_and_unit_population_std(data):
    targets, valid, scores, group_ids = data
    stats = _group_stats(scores, group_ids)
    # eps = 0 gives unit std exactly; a group without spread needs eps > 0 (then std is std / (std + eps))
    eps = 0.0 if all(std > 0.0 for _, std in stats.values()) else 1e-6
    out = _call_group(targets, valid, scores, group_ids, scale=True, eps=eps)
    assert torch.isfinite(out).all()
    first_row = out[0].tolist()  # every episode's advantage (its target is constant over its valid rows)
    for g, (_, std) in stats.items():
        members = [first_row[n] for n in range(len(scores)) if group_ids[n] == g]
        assert abs(statistics.fmean(members)) < 1e-9
        if std > 0.0:
            assert statistics.pstdev(members) == pytest.approx(std / (std + eps), rel=1e-9, abs=1e-12)
        else:
            assert all(a == 0.0 for a in members)


@HYP
@given(data=grouped_episodes())
def test_dr_grpo_only_centres(data):
    targets, valid, scores, group_ids = data
    stats = _group_stats(scores, group_ids)
    out = _call_group(targets, valid, scores, group_ids, scale=False)
    for t in range(len(targets)):
        for n in range(len(scores)):
            expected = targets[t][n] - stats[group_ids[n]][0] if valid[t][n] else 0.0
            assert out[t, n].item() == pytest.approx(expected, abs=1e-10)
    # centring keeps the spread: within a group the advantages equal the scores minus a constant
    for g, (_mean, _) in stats.items():
        members = [out[0, n].item() for n in range(len(scores)) if group_ids[n] == g]
        assert abs(sum(members)) < 1e-9
        assert statistics.pstdev(members) == pytest.approx(
            statistics.pstdev([scores[n] for n in range(len(scores)) if group_ids[n] == g]), abs=1e-9
        )


def test_group_baseline_hand_worked():
    # group 7: scores 1, 3 → mean 2, population std 1; group 2: scores 0, 0, 6 → mean 2, std √8
    scores = [1.0, 3.0, 0.0, 0.0, 6.0]
    group_ids = [7, 7, 2, 2, 2]
    targets = [scores, [s + 1.0 for s in scores]]  # the second row is a different per-step target
    valid = [[True] * 5, [True, False, True, True, True]]
    s8 = 8.0**0.5
    expected = [
        [-1.0, 1.0, -2.0 / s8, -2.0 / s8, 4.0 / s8],
        [0.0, 0.0, -1.0 / s8, -1.0 / s8, 5.0 / s8],
    ]
    close(_call_group(targets, valid, scores, group_ids, eps=0.0), _tensor(expected))
    close(
        _call_group(targets, valid, scores, group_ids, scale=False),
        _tensor([[-1.0, 1.0, -2.0, -2.0, 4.0], [0.0, 0.0, -1.0, -1.0, 5.0]]),
    )


def test_group_with_identical_returns_gives_zero_advantage_and_no_nan():
    scores = [2.5, 2.5, 2.5, -1.0, 1.0]
    group_ids = [0, 0, 0, 1, 1]
    targets = [scores, scores]
    valid = [[True] * 5, [True, True, False, True, False]]
    out = _call_group(targets, valid, scores, group_ids)
    assert torch.isfinite(out).all()
    assert torch.equal(out[:, :3], torch.zeros(2, 3, dtype=DT))
    # the other group is unaffected: ±1 / (1 + eps)
    close(out[0, 3:], _tensor([-1.0, 1.0]) / (1.0 + 1e-6))


def test_single_episode_group_gives_zero_advantage():
    out = _call_group([[4.0, 1.0, 3.0]], [[True] * 3], [4.0, 1.0, 3.0], [0, 1, 1])
    assert torch.isfinite(out).all()
    assert out[0, 0].item() == 0.0
    close(out[0, 1:], _tensor([-1.0, 1.0]) / (1.0 + 1e-6))


# --------------------------------------------------------------------------------------------------
# bad arguments
# --------------------------------------------------------------------------------------------------


def test_shape_mismatch_names_the_tensor():
    targets = torch.zeros(3, 2, dtype=DT)
    valid = torch.ones(3, 2, dtype=torch.bool)
    for fn in (no_baseline, mean_baseline):
        with pytest.raises(ValueError, match="valid"):
            fn(targets, valid[:2])
    with pytest.raises(ValueError, match="valid"):
        value_baseline(targets, valid[:, :1], targets)
    with pytest.raises(ValueError, match="values"):
        value_baseline(targets, valid, torch.zeros(2, 3, dtype=DT))
    ids = torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="valid"):
        group_baseline(targets, valid.T, torch.zeros(2, dtype=DT), ids)
    with pytest.raises(ValueError, match="episode_scores"):
        group_baseline(targets, valid, torch.zeros(3, dtype=DT), ids)
    with pytest.raises(ValueError, match="group_ids"):
        group_baseline(targets, valid, torch.zeros(2, dtype=DT), torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize("eps", [-1e-6, -1.0])
def test_group_negative_eps_raises(eps):
    with pytest.raises(ValueError, match="eps"):
        _call_group([[1.0, 2.0]], [[True, True]], [1.0, 2.0], [0, 0], eps=eps)
