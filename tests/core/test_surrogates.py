"""Surrogate losses (pglab.core.surrogates) against references computed another way.

References: hand-worked numbers, plain-Python loops over tokens / episodes, closed-form KL of small
categorical distributions, per-sample autograd of log π on a small network (the policy-gradient
formula itself), autograd of an independent torch formula, and finite differences (gradcheck).
"""

from __future__ import annotations

import math
import random

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from pglab.core.surrogates import (
    AGGREGATIONS,
    GRPO,
    GSPO,
    Clip,
    Importance,
    KLPenalty,
    Reinforce,
    SurrogateInput,
    aggregate,
    k3_kl,
    value_loss,
)

DT = torch.float64
HYP = settings(max_examples=50, deadline=None)


def t64(values) -> torch.Tensor:
    return torch.tensor(values, dtype=DT)


def close(actual, expected, atol: float = 1e-10) -> None:
    if not isinstance(expected, torch.Tensor):
        expected = t64(expected)
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=atol)


def make_batch(
    logp, logp_old, advantages, episode_ids, num_episodes=None, mask=None, **extra
) -> SurrogateInput:
    logp = logp if isinstance(logp, torch.Tensor) else t64(logp)
    ids = torch.tensor(episode_ids, dtype=torch.long)
    return SurrogateInput(
        logp=logp,
        logp_old=logp_old if isinstance(logp_old, torch.Tensor) else t64(logp_old),
        advantages=advantages if isinstance(advantages, torch.Tensor) else t64(advantages),
        mask=t64(mask) if mask is not None else torch.ones_like(logp),
        episode_ids=ids,
        num_episodes=num_episodes if num_episodes is not None else int(ids.max()) + 1,
        **extra,
    )


def aggregation_weights(
    mask: list[float],
    episode_ids: list[int],
    num_episodes: int,
    mode: str,
    constant_length: float | None = None,
) -> list[float]:
    """Brute-force per-token weight w_i such that aggregate(ℓ) = Σ_i w_i ℓ_i."""
    lengths = [0.0] * num_episodes
    for m, e in zip(mask, episode_ids, strict=True):
        lengths[e] += m
    count = max(sum(mask), 1.0)
    N = max(num_episodes, 1)
    if mode == "token_mean":
        return [m / count for m in mask]
    if mode == "episode_sum":
        return [m / N for m in mask]
    if mode == "episode_mean":
        return [m / (N * max(lengths[e], 1.0)) for m, e in zip(mask, episode_ids, strict=True)]
    if mode == "constant":
        L = constant_length if constant_length is not None else max(max(lengths), 1.0)
        return [m / (N * L) for m in mask]
    raise AssertionError(mode)


def ppo_clip_term(ratio: float, adv: float, eps_low: float, eps_high: float) -> float:
    clipped = min(max(ratio, 1.0 - eps_low), 1.0 + eps_high)
    return -min(ratio * adv, clipped * adv)


def k3(logp_p: float, logp_q: float) -> float:
    r = math.exp(logp_q - logp_p)
    return r - 1.0 - math.log(r)


# --------------------------------------------------------------------------------------------------
# aggregation
# --------------------------------------------------------------------------------------------------

# per-token losses 1..5; episode 0 has one token, episode 1 has three real tokens and one padding token
AGG_LOSS = [1.0, 2.0, 3.0, 4.0, 5.0]
AGG_IDS = [0, 1, 1, 1, 1]
AGG_MASK = [1.0, 1.0, 1.0, 1.0, 0.0]


@pytest.mark.parametrize(
    ("mode", "constant_length", "expected"),
    [
        ("token_mean", None, 10.0 / 4.0),  # (1+2+3+4) / 4 tokens
        ("episode_sum", None, 10.0 / 2.0),  # (1+2+3+4) / 2 episodes
        ("episode_mean", None, (1.0 / 1.0 + 9.0 / 3.0) / 2.0),  # = 2
        ("constant", 5.0, 10.0 / (2.0 * 5.0)),  # = 1
        ("constant", None, 10.0 / (2.0 * 3.0)),  # L = longest episode in the batch = 3
    ],
)
def test_aggregation_hand_worked(mode, constant_length, expected):
    out = aggregate(t64(AGG_LOSS), t64(AGG_MASK), torch.tensor(AGG_IDS), 2, mode, constant_length)
    assert out.item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("aggregation", "constant_length", "expected"),
    [
        ("token_mean", None, 2.5),
        ("episode_sum", None, 5.0),
        ("episode_mean", None, 2.0),
        ("constant", 5.0, 1.0),
        ("constant", None, 10.0 / 6.0),
    ],
)
def test_aggregation_through_a_surrogate(aggregation, constant_length, expected):
    # Reinforce per token is −A·log π; with log π = −1 it is A
    batch = make_batch([-1.0] * 5, [-1.0] * 5, AGG_LOSS, AGG_IDS, 2, AGG_MASK)
    loss = Reinforce(aggregation=aggregation, constant_length=constant_length)(batch).loss
    assert loss.item() == pytest.approx(expected, rel=1e-12)


@HYP
@given(
    n_tokens=st.integers(1, 12),
    num_episodes=st.integers(1, 5),
    mode=st.sampled_from(AGGREGATIONS),
    constant_length=st.sampled_from([None, 3.0, 16.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_aggregation_equals_brute_force(n_tokens, num_episodes, mode, constant_length, seed):
    rng = random.Random(seed)
    losses = [rng.uniform(-2, 2) for _ in range(n_tokens)]
    ids = [rng.randrange(num_episodes) for _ in range(n_tokens)]
    mask = [float(rng.random() < 0.8) for _ in range(n_tokens)]
    weights = aggregation_weights(mask, ids, num_episodes, mode, constant_length)
    expected = sum(w * x for w, x in zip(weights, losses, strict=True))
    out = aggregate(t64(losses), t64(mask), torch.tensor(ids), num_episodes, mode, constant_length)
    assert out.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_unknown_aggregation_raises():
    with pytest.raises(ValueError, match="aggregation"):
        aggregate(t64(AGG_LOSS), t64(AGG_MASK), torch.tensor(AGG_IDS), 2, "sum")
    for cls in (Reinforce, Importance, KLPenalty, Clip, GRPO):
        with pytest.raises(ValueError, match="aggregation"):
            cls(aggregation="seq_mean")


def test_needs_whole_episodes_follows_aggregation():
    assert not Clip(aggregation="token_mean").needs_whole_episodes
    for mode in ("episode_sum", "episode_mean", "constant"):
        assert Clip(aggregation=mode).needs_whole_episodes
    assert GSPO().needs_whole_episodes
    assert GRPO().needs_whole_episodes  # episode_mean by default
    assert not GRPO().needs_reference
    assert GRPO(beta=0.1).needs_reference


# --------------------------------------------------------------------------------------------------
# REINFORCE / importance sampling on a small policy network
# --------------------------------------------------------------------------------------------------


def small_policy(seed: int, n_obs: int = 3, n_actions: int = 4) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(n_obs, 8), nn.Tanh(), nn.Linear(8, n_actions)).to(DT)


def policy_data(seed: int, B: int = 9, num_episodes: int = 3, n_obs: int = 3, n_actions: int = 4):
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(B, n_obs, generator=g, dtype=DT)
    actions = torch.randint(0, n_actions, (B,), generator=g)
    ids = [i % num_episodes for i in range(B)]
    mask = [1.0] * B
    mask[-1] = 0.0  # one padding token
    episode_adv = torch.randn(num_episodes, generator=g, dtype=DT)
    adv = torch.randn(B, generator=g, dtype=DT)
    return obs, actions, ids, mask, adv, episode_adv


def reference_policy_gradient(net: nn.Module, obs, actions, adv, weights) -> list[torch.Tensor]:
    """−Σ_i w_i A_i ∇ log π(a_i | s_i), each ∇ log π taken by its own backward pass on one sample."""
    params = list(net.parameters())
    total = [torch.zeros_like(p) for p in params]
    for i in range(obs.shape[0]):
        logp_i = torch.log_softmax(net(obs[i : i + 1]), dim=-1)[0, actions[i]]
        grads = torch.autograd.grad(logp_i, params)
        for acc, gr in zip(total, grads, strict=True):
            acc -= weights[i] * float(adv[i]) * gr
    return total


def surrogate_gradient(net, surrogate, obs, actions, adv, ids, mask, num_episodes, with_kl=False):
    logits = net(obs)
    log_probs = torch.log_softmax(logits, dim=-1)
    logp = log_probs.gather(1, actions[:, None])[:, 0]
    extra = {}
    if with_kl:
        old = log_probs.detach()
        extra["kl_old_new"] = (old.exp() * (old - log_probs)).sum(-1)  # analytic KL(π_old ‖ π_θ)
    batch = make_batch(logp, logp.detach(), adv, ids, num_episodes, mask, **extra)
    loss = surrogate(batch).loss
    return torch.autograd.grad(loss, list(net.parameters()))


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("seed", [0, 1])
def test_on_policy_gradients_equal_the_policy_gradient(aggregation, seed):
    """At θ = θ' the gradient of Reinforce, Importance, KLPenalty and Clip is −Σ w A ∇log π."""
    net = small_policy(seed)
    obs, actions, ids, mask, adv, _ = policy_data(seed)
    weights = aggregation_weights(mask, ids, 3, aggregation)
    expected = reference_policy_gradient(net, obs, actions, adv, weights)
    surrogates = {
        "reinforce": Reinforce(aggregation=aggregation),
        "importance": Importance(aggregation=aggregation),
        "kl_k3": KLPenalty(beta=3.0, aggregation=aggregation),
        "clip": Clip(0.2, aggregation=aggregation),
        "clip_higher": Clip(0.1, 0.3, aggregation=aggregation),
        "grpo": GRPO(aggregation=aggregation),
    }
    for name, surrogate in surrogates.items():
        got = surrogate_gradient(net, surrogate, obs, actions, adv, ids, mask, 3)
        for g_got, g_exp in zip(got, expected, strict=True):
            torch.testing.assert_close(g_got, g_exp, rtol=1e-9, atol=1e-12, msg=name)
    got = surrogate_gradient(
        net, KLPenalty(beta=3.0, aggregation=aggregation), obs, actions, adv, ids, mask, 3, with_kl=True
    )
    for g_got, g_exp in zip(got, expected, strict=True):
        torch.testing.assert_close(g_got, g_exp, rtol=1e-9, atol=1e-12, msg="kl_analytic")


@pytest.mark.parametrize("variant", ["sequence", "token"])
def test_gspo_on_policy_gradient_with_episode_advantage(variant):
    """With A constant per episode, GSPO at θ = θ' is −(1/N) Σ_n Â_n (1/|τ_n|) Σ_t ∇log π."""
    net = small_policy(5)
    obs, actions, ids, mask, _, episode_adv = policy_data(5)
    adv = episode_adv[torch.tensor(ids)]
    weights = aggregation_weights(mask, ids, 3, "episode_mean")
    expected = reference_policy_gradient(net, obs, actions, adv, weights)
    got = surrogate_gradient(net, GSPO(0.05, 0.05, variant=variant), obs, actions, adv, ids, mask, 3)
    for g_got, g_exp in zip(got, expected, strict=True):
        torch.testing.assert_close(g_got, g_exp, rtol=1e-9, atol=1e-12)


def test_reinforce_episode_sum_is_the_theory_loss_verbatim():
    # loss = −(1/N) Σ_n Σ_t A log π
    rng = random.Random(0)
    logp = [math.log(rng.uniform(0.05, 1.0)) for _ in range(7)]
    adv = [rng.uniform(-2, 2) for _ in range(7)]
    ids = [0, 0, 0, 1, 1, 2, 2]
    expected = -sum(a * lp for a, lp in zip(adv, logp, strict=True)) / 3
    out = Reinforce(aggregation="episode_sum")(make_batch(logp, logp, adv, ids))
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)


def test_importance_loss_value():
    logp, logp_old, adv = [-0.5, -1.0, -2.0], [-0.7, -0.9, -2.0], [1.0, -2.0, 0.5]
    expected = -sum(math.exp(a - b) * c for a, b, c in zip(logp, logp_old, adv, strict=True)) / 3
    assert Importance()(make_batch(logp, logp_old, adv, [0, 1, 2])).loss.item() == pytest.approx(expected)


# --------------------------------------------------------------------------------------------------
# PPO clip
# --------------------------------------------------------------------------------------------------

# ratio, advantage, per-token loss, gradient w.r.t. log π (before ÷ count) for ε_low = 0.1, ε_high = 0.3
CLIP_CASES = [
    (1.2, 1.0, -1.2, -1.2),  # above 1 + ε_low but below 1 + ε_high: NOT clipped with clip-higher
    (1.4, 1.0, -1.3, 0.0),  # above 1 + ε_high, A > 0: clipped
    (0.85, -2.0, 1.8, 0.0),  # below 1 − ε_low, A < 0: clipped
    (0.95, -2.0, 1.9, 1.9),  # inside
    (0.5, 1.0, -0.5, -0.5),  # below 1 − ε but A > 0: the min keeps ρA
    (1.5, -1.0, 1.5, 1.5),  # above 1 + ε but A < 0: the min keeps ρA
]


def _clip_batch(cases):
    ratios = [c[0] for c in cases]
    logp_old = t64([-1.0, -0.5, -2.0, -1.5, -0.3, -0.8][: len(cases)])
    logp = (logp_old + t64([math.log(r) for r in ratios])).requires_grad_(True)
    adv = t64([c[1] for c in cases])
    return logp, make_batch(logp, logp_old, adv, list(range(len(cases))))


def test_clip_hand_worked_value_and_gradient_with_clip_higher():
    logp, batch = _clip_batch(CLIP_CASES)
    out = Clip(eps_low=0.1, eps_high=0.3)(batch)
    assert out.loss.item() == pytest.approx(sum(c[2] for c in CLIP_CASES) / 6, rel=1e-12)  # 2.2 / 6
    (grad,) = torch.autograd.grad(out.loss, logp)
    close(grad, t64([c[3] for c in CLIP_CASES]) / 6)
    assert out.stats["clip_fraction"].item() == pytest.approx(2 / 6)


def test_clip_symmetric_eps_clips_the_first_case():
    logp, batch = _clip_batch(CLIP_CASES)
    out = Clip(eps_low=0.1)(batch)  # ε_high = ε_low = 0.1: ratios 1.2 and 1.4 with A > 0 are clipped at 1.1
    assert out.loss.item() == pytest.approx((-1.1 - 1.1 + 1.8 + 1.9 - 0.5 + 1.5) / 6, rel=1e-12)
    (grad,) = torch.autograd.grad(out.loss, logp)
    close(grad, t64([0.0, 0.0, 0.0, 1.9, -0.5, 1.5]) / 6)
    assert out.stats["clip_fraction"].item() == pytest.approx(3 / 6)


@HYP
@given(
    ratios_adv=st.lists(
        st.tuples(st.floats(0.3, 2.5), st.floats(-3, 3).filter(lambda a: abs(a) > 1e-3)),
        min_size=1,
        max_size=10,
    ),
    eps_low=st.floats(0.0, 0.9),
    eps_high=st.floats(0.0, 2.0),
    padded=st.booleans(),
)
def test_clip_gradient_is_zero_exactly_where_the_clipped_branch_is_active(
    ratios_adv, eps_low, eps_high, padded
):
    for r, _ in ratios_adv:  # stay off the kinks
        assume(abs(r - (1 + eps_high)) > 1e-6 and abs(r - (1 - eps_low)) > 1e-6)
    ratios = [r for r, _ in ratios_adv]
    adv = [a for _, a in ratios_adv]
    B = len(ratios)
    mask = [1.0] * B
    if padded:
        mask[0] = 0.0
    count = max(sum(mask), 1.0)
    logp_old = t64([-1.0] * B)
    logp = (logp_old + t64([math.log(r) for r in ratios])).requires_grad_(True)
    out = Clip(eps_low, eps_high)(make_batch(logp, logp_old, adv, [0] * B, 1, mask))
    (grad,) = torch.autograd.grad(out.loss, logp)
    expected_grad, expected_loss, active = [], 0.0, 0
    for r, a, m in zip(ratios, adv, mask, strict=True):
        clipped_branch = (r > 1 + eps_high and a > 0) or (r < 1 - eps_low and a < 0)
        expected_grad.append(0.0 if clipped_branch else -a * r * m / count)
        expected_loss += m * ppo_clip_term(r, a, eps_low, eps_high) / count
        active += int(clipped_branch and m > 0)
    close(grad, t64(expected_grad), atol=1e-12)
    assert out.loss.item() == pytest.approx(expected_loss, rel=1e-9, abs=1e-12)
    assert out.stats["clip_fraction"].item() == pytest.approx(active / count, abs=1e-6)


def test_clip_gradcheck():
    g = torch.Generator().manual_seed(0)
    logp_old = -torch.rand(12, generator=g, dtype=DT) - 0.1
    # ratios on a grid that stays away from the kinks 0.8 and 1.2
    ratios = t64([0.5, 0.7, 0.9, 1.0, 1.1, 1.3, 1.6, 0.6, 0.95, 1.05, 1.4, 0.75])
    adv = t64([1.0, -1.0, 0.5, -0.5, 2.0, 1.0, -1.0, -2.0, 1.5, -1.5, -0.3, 0.7])
    ids = [0, 0, 0, 1, 1, 1, 1, 2, 2, 3, 3, 3]
    logp0 = (logp_old + ratios.log()).requires_grad_(True)
    for aggregation in AGGREGATIONS:
        clip = Clip(0.2, aggregation=aggregation)

        def f(lp, clip=clip):
            return clip(make_batch(lp, logp_old, adv, ids)).loss

        assert torch.autograd.gradcheck(f, (logp0,), eps=1e-6, atol=1e-8)


# --------------------------------------------------------------------------------------------------
# k3 KL estimator
# --------------------------------------------------------------------------------------------------

probability_vectors = st.lists(st.floats(0.05, 1.0), min_size=2, max_size=6).map(
    lambda xs: [x / sum(xs) for x in xs]
)


@HYP
@given(p=probability_vectors, q_raw=st.lists(st.floats(0.05, 1.0), min_size=6, max_size=6))
def test_k3_expectation_is_the_exact_kl(p, q_raw):
    q = [x / sum(q_raw[: len(p)]) for x in q_raw[: len(p)]]
    exact = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
    per_sample = k3_kl(t64([math.log(x) for x in p]), t64([math.log(x) for x in q]))
    assert (per_sample >= 0).all()
    expectation = sum(pi * float(v) for pi, v in zip(p, per_sample, strict=True))
    assert expectation == pytest.approx(exact, rel=1e-9, abs=1e-12)
    for lp, lq, v in zip(p, q, per_sample, strict=True):
        assert float(v) == pytest.approx(k3(math.log(lp), math.log(lq)), rel=1e-9, abs=1e-12)


def test_k3_monte_carlo_average_approaches_kl():
    p, q = [0.5, 0.3, 0.2], [0.2, 0.2, 0.6]
    exact = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
    g = torch.Generator().manual_seed(0)
    samples = torch.multinomial(t64(p), 200_000, replacement=True, generator=g)
    values = k3_kl(t64(p).log()[samples], t64(q).log()[samples])
    standard_error = values.std().item() / math.sqrt(values.numel())
    assert abs(values.mean().item() - exact) < 5 * standard_error


def test_k3_is_zero_for_identical_distributions():
    lp = t64([-0.1, -2.0, -3.5])
    assert torch.equal(k3_kl(lp, lp.clone()), torch.zeros(3, dtype=DT))


# --------------------------------------------------------------------------------------------------
# KL penalty
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kl", "expected_beta"),
    [
        (0.0, 0.5),
        (0.005, 0.5),
        (0.0066, 0.5),  # just below 0.01 / 1.5 = 0.00667
        (0.0067, 1.0),  # just above it
        (0.01, 1.0),
        (0.0149, 1.0),
        (0.0151, 2.0),  # just above 1.5 · 0.01
        (0.5, 2.0),
    ],
)
def test_adaptive_beta_rule(kl, expected_beta):
    surrogate = KLPenalty(beta=1.0, adaptive=True, target_kl=0.01)
    surrogate.update_beta(kl)
    assert surrogate.beta.item() == expected_beta
    fixed = KLPenalty(beta=1.0, adaptive=False, target_kl=0.01)
    fixed.update_beta(kl)
    assert fixed.beta.item() == 1.0


def test_adaptive_beta_compounds_and_is_saved_in_the_state_dict():
    surrogate = KLPenalty(beta=0.8, target_kl=0.02)
    for kl in (1.0, 1.0, 0.0):  # ×2, ×2, ÷2
        surrogate.update_beta(kl)
    assert surrogate.beta.item() == pytest.approx(1.6)
    state = surrogate.state_dict()
    assert state["beta"].item() == pytest.approx(1.6)
    restored = KLPenalty(beta=0.8, target_kl=0.02)
    restored.load_state_dict(state)
    assert restored.beta.item() == pytest.approx(1.6)


@pytest.mark.parametrize("analytic", [True, False])
def test_kl_term_is_zero_at_theta_equals_theta_old(analytic):
    logp = t64([-0.2, -1.5, -0.7, -3.0]).requires_grad_(True)
    adv = t64([1.0, -0.5, 2.0, 0.25])
    extra = {"kl_old_new": torch.zeros(4, dtype=DT)} if analytic else {}
    out = KLPenalty(beta=10.0)(make_batch(logp, logp.detach(), adv, [0, 0, 1, 1], **extra))
    # with ρ = 1 and no KL the loss is −mean(A) and its gradient −A / 4
    assert out.loss.item() == pytest.approx(-(1.0 - 0.5 + 2.0 + 0.25) / 4, rel=1e-12)
    (grad,) = torch.autograd.grad(out.loss, logp)
    close(grad, -adv / 4)
    assert out.stats["beta"].item() == 10.0


def test_kl_penalty_value_with_analytic_kl():
    logp, logp_old, adv = [-0.5, -1.2, -0.1], [-0.6, -1.0, -0.3], [1.0, -1.0, 0.5]
    kl = [0.03, 0.2, 0.0]
    beta = 0.75  # exactly representable: β is a float32 buffer
    expected = (
        sum(-math.exp(a - b) * c + beta * k for a, b, c, k in zip(logp, logp_old, adv, kl, strict=True)) / 3
    )
    out = KLPenalty(beta=beta)(make_batch(logp, logp_old, adv, [0, 1, 2], kl_old_new=t64(kl)))
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)


def test_kl_penalty_k3_fallback_estimates_kl_old_new():
    """Each action weighted by π_old(a) (as the mask), A = 0: the loss is β·KL(π_old ‖ π_θ)."""
    p_old, p_new = [0.5, 0.3, 0.2], [0.25, 0.25, 0.5]
    exact = sum(p * math.log(p / q) for p, q in zip(p_old, p_new, strict=True))
    batch = make_batch(
        [math.log(q) for q in p_new], [math.log(p) for p in p_old], [0.0] * 3, [0, 1, 2], mask=p_old
    )
    assert KLPenalty(beta=2.0)(batch).loss.item() == pytest.approx(2.0 * exact, rel=1e-12)
    # per token: β·(ρ − 1 − log ρ), ρ = π_θ / π_old
    single = make_batch([math.log(0.25)], [math.log(0.5)], [0.0], [0])
    assert KLPenalty(beta=1.0)(single).loss.item() == pytest.approx(0.5 - 1 - math.log(0.5), rel=1e-12)


def test_kl_penalty_gradcheck():
    logp_old = t64([-0.4, -1.3, -2.0, -0.9])
    adv = t64([0.5, -1.0, 1.5, -0.2])
    start = (logp_old + t64([0.3, -0.2, 0.1, 0.5])).requires_grad_(True)
    penalty = KLPenalty(beta=0.9)

    def f(lp):
        return penalty(make_batch(lp, logp_old, adv, [0, 0, 1, 1])).loss

    assert torch.autograd.gradcheck(f, (start,), eps=1e-6, atol=1e-8)


# --------------------------------------------------------------------------------------------------
# GRPO
# --------------------------------------------------------------------------------------------------


def _random_token_batch(seed: int, ids: list[int], spread: float = 0.4, with_ref: bool = False):
    rng = random.Random(seed)
    B = len(ids)
    logp_old = [math.log(rng.uniform(0.05, 0.95)) for _ in range(B)]
    logp = [lo + rng.uniform(-spread, spread) for lo in logp_old]
    logp_ref = [math.log(rng.uniform(0.05, 0.95)) for _ in range(B)] if with_ref else None
    adv = [rng.uniform(-2, 2) for _ in range(B)]
    return logp, logp_old, logp_ref, adv


@pytest.mark.parametrize("seed", range(5))
def test_grpo_without_kl_equals_token_clip_with_episode_mean(seed):
    ids = [0, 0, 0, 1, 1, 2, 2, 2, 2]
    mask = [1, 1, 1, 1, 1, 1, 1, 1, 0]
    logp, logp_old, _, adv = _random_token_batch(seed, ids)
    weights = aggregation_weights(mask, ids, 3, "episode_mean")
    expected = sum(
        w * ppo_clip_term(math.exp(a - b), c, 0.2, 0.28)
        for w, a, b, c in zip(weights, logp, logp_old, adv, strict=True)
    )
    batch = make_batch(logp, logp_old, adv, ids, 3, mask)
    grpo = GRPO(eps_low=0.2, eps_high=0.28)(batch).loss
    clip = Clip(eps_low=0.2, eps_high=0.28, aggregation="episode_mean")(batch).loss
    assert grpo.item() == pytest.approx(expected, rel=1e-12)
    assert clip.item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_grpo_with_beta_adds_k3_to_the_reference(seed):
    ids = [0, 0, 1, 1, 1, 2]
    mask = [1, 1, 1, 0, 1, 1]
    beta = 0.04
    logp, logp_old, logp_ref, adv = _random_token_batch(seed, ids, with_ref=True)
    weights = aggregation_weights(mask, ids, 3, "episode_mean")
    expected = sum(
        w * (ppo_clip_term(math.exp(a - b), c, 0.2, 0.2) + beta * k3(a, r))  # k3 of KL(π_θ ‖ π_ref)
        for w, a, b, c, r in zip(weights, logp, logp_old, adv, logp_ref, strict=True)
    )
    out = GRPO(beta=beta)(make_batch(logp, logp_old, adv, ids, 3, mask, logp_ref=t64(logp_ref)))
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)
    real = [i for i, m in enumerate(mask) if m]
    assert out.stats["kl_ref"].item() == pytest.approx(
        sum(k3(logp[i], logp_ref[i]) for i in real) / len(real), rel=1e-12
    )


def test_grpo_kl_term_is_kl_of_policy_to_reference():
    """Each action weighted by π_θ(a), ρ = 1, A = 0: the loss is β·KL(π_θ ‖ π_ref) (not the reverse)."""
    p_theta, p_ref = [0.6, 0.3, 0.1], [0.2, 0.3, 0.5]
    forward = sum(p * math.log(p / q) for p, q in zip(p_theta, p_ref, strict=True))
    reverse = sum(q * math.log(q / p) for p, q in zip(p_theta, p_ref, strict=True))
    assert abs(forward - reverse) > 0.05
    logp = [math.log(p) for p in p_theta]
    batch = make_batch(
        logp, logp, [0.0] * 3, [0, 1, 2], 3, mask=p_theta, logp_ref=t64([math.log(q) for q in p_ref])
    )
    loss = GRPO(beta=0.5, aggregation="token_mean")(batch).loss
    assert loss.item() == pytest.approx(0.5 * forward, rel=1e-12)


def test_grpo_with_beta_requires_reference():
    batch = make_batch([-1.0, -2.0], [-1.0, -2.0], [1.0, -1.0], [0, 1])
    with pytest.raises(ValueError, match="logp_ref"):
        GRPO(beta=0.1)(batch)
    GRPO(beta=0.0)(batch)  # fine without a reference


# --------------------------------------------------------------------------------------------------
# GSPO
# --------------------------------------------------------------------------------------------------

GSPO_IDS = [0, 0, 0, 1, 1, 2, 2, 2, 2, 3]
GSPO_MASK = [1, 1, 1, 1, 1, 1, 1, 1, 0, 1]  # token 8 is padding


def _gspo_batch(seed: int, constant_adv: bool, spread: float = 0.3, requires_grad: bool = False):
    logp, logp_old, _, adv = _random_token_batch(seed, GSPO_IDS, spread=spread)
    logp[8] = 5.0  # garbage on the padding token
    if constant_adv:
        per_episode = [1.3, -0.7, 0.4, -2.0]
        adv = [per_episode[e] for e in GSPO_IDS]
    lp = t64(logp).requires_grad_(requires_grad)
    return lp, logp, logp_old, adv, make_batch(lp, logp_old, adv, GSPO_IDS, 4, GSPO_MASK)


def _brute_sequence_ratios(logp, logp_old, ids, mask, num_episodes):
    products = [1.0] * num_episodes
    lengths = [0] * num_episodes
    for a, b, e, m in zip(logp, logp_old, ids, mask, strict=True):
        if m:
            products[e] *= math.exp(a - b)
            lengths[e] += 1
    return [p ** (1.0 / n) for p, n in zip(products, lengths, strict=True)]


@pytest.mark.parametrize("seed", range(4))
def test_gspo_sequence_ratio_is_geometric_mean_of_token_ratios(seed):
    _, logp, logp_old, _, batch = _gspo_batch(seed, constant_adv=False)
    expected = _brute_sequence_ratios(logp, logp_old, GSPO_IDS, GSPO_MASK, 4)
    close(GSPO().sequence_log_ratio(batch).exp(), t64(expected))
    out = GSPO()(batch)
    assert out.stats["seq_ratio_mean"].item() == pytest.approx(sum(expected) / 4, rel=1e-12)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("eps_low", "eps_high"), [(0.05, 0.05), (0.02, 0.1), (3e-4, 4e-4)])
def test_gspo_sequence_loss_equals_brute_force(seed, eps_low, eps_high):
    _, logp, logp_old, adv, batch = _gspo_batch(seed, constant_adv=False)
    ratios = _brute_sequence_ratios(logp, logp_old, GSPO_IDS, GSPO_MASK, 4)
    expected = 0.0
    for e, s in enumerate(ratios):
        episode_adv = [a for a, i, m in zip(adv, GSPO_IDS, GSPO_MASK, strict=True) if i == e and m]
        expected += ppo_clip_term(s, sum(episode_adv) / len(episode_adv), eps_low, eps_high) / 4
    out = GSPO(eps_low, eps_high)(batch)
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_gspo_token_loss_equals_brute_force(seed):
    _, logp, logp_old, adv, batch = _gspo_batch(seed, constant_adv=False)
    ratios = _brute_sequence_ratios(logp, logp_old, GSPO_IDS, GSPO_MASK, 4)
    weights = aggregation_weights(GSPO_MASK, GSPO_IDS, 4, "episode_mean")
    expected = sum(
        w * ppo_clip_term(ratios[e], a, 0.05, 0.08) for w, e, a in zip(weights, GSPO_IDS, adv, strict=True)
    )
    assert GSPO(0.05, 0.08, variant="token")(batch).loss.item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_gspo_with_one_step_per_episode_is_token_level_clip(seed):
    rng = random.Random(seed)
    B = 6
    logp_old = [math.log(rng.uniform(0.05, 0.95)) for _ in range(B)]
    logp = [lo + rng.uniform(-0.4, 0.4) for lo in logp_old]
    adv = [rng.uniform(-2, 2) for _ in range(B)]
    expected = (
        sum(ppo_clip_term(math.exp(a - b), c, 0.1, 0.15) for a, b, c in zip(logp, logp_old, adv, strict=True))
        / B
    )
    for variant in ("sequence", "token"):
        lp = t64(logp).requires_grad_(True)
        batch = make_batch(lp, logp_old, adv, list(range(B)))
        gspo = GSPO(0.1, 0.15, variant=variant)(batch).loss
        assert gspo.item() == pytest.approx(expected, rel=1e-12)
        (g_gspo,) = torch.autograd.grad(gspo, lp)
        lp2 = t64(logp).requires_grad_(True)
        clip = Clip(0.1, 0.15, aggregation="episode_mean")(
            make_batch(lp2, logp_old, adv, list(range(B)))
        ).loss
        assert clip.item() == pytest.approx(expected, rel=1e-12)
        (g_clip,) = torch.autograd.grad(clip, lp2)
        close(g_gspo, g_clip)


def _independent_gspo_sequence(lp: torch.Tensor, logp_old, adv, eps_low, eps_high) -> torch.Tensor:
    """GSPO sequence loss written directly, episode by episode."""
    total = lp.new_zeros(())
    for e in range(4):
        idx = [i for i in range(len(GSPO_IDS)) if GSPO_IDS[i] == e and GSPO_MASK[i]]
        s = torch.exp(sum(lp[i] - logp_old[i] for i in idx) / len(idx))
        a = sum(adv[i] for i in idx) / len(idx)
        total = total - torch.minimum(s * a, s.clamp(1 - eps_low, 1 + eps_high) * a)
    return total / 4


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("spread", [0.02, 0.3])
def test_gspo_token_equals_sequence_in_value_and_gradient_for_constant_advantage(seed, spread):
    eps_low, eps_high = 0.03, 0.05
    lp_s, _, logp_old, adv, batch_s = _gspo_batch(seed, constant_adv=True, spread=spread, requires_grad=True)
    lp_t, _, _, _, batch_t = _gspo_batch(seed, constant_adv=True, spread=spread, requires_grad=True)
    lp_r, *_ = _gspo_batch(seed, constant_adv=True, spread=spread, requires_grad=True)
    seq = GSPO(eps_low, eps_high, variant="sequence")(batch_s).loss
    tok = GSPO(eps_low, eps_high, variant="token")(batch_t).loss
    ref = _independent_gspo_sequence(lp_r, logp_old, adv, eps_low, eps_high)
    (g_seq,) = torch.autograd.grad(seq, lp_s)
    (g_tok,) = torch.autograd.grad(tok, lp_t)
    (g_ref,) = torch.autograd.grad(ref, lp_r)
    close(seq, ref.detach())
    close(tok, ref.detach())
    close(g_seq, g_ref)
    close(g_tok, g_ref)
    assert g_seq[8].item() == 0.0  # the padding token gets no gradient


@pytest.mark.parametrize(
    ("variant", "constant_adv"), [("sequence", False), ("sequence", True), ("token", True)]
)
def test_gspo_gradcheck(variant, constant_adv):
    # GSPO-token's gradient is, by design (stop-gradients), the gradient of its value only when A is
    # constant per episode; the sequence variant is an ordinary function of log π
    for seed in range(3):
        lp0, _, logp_old, adv, _ = _gspo_batch(
            seed, constant_adv=constant_adv, spread=0.3, requires_grad=True
        )
        gspo = GSPO(0.1, 0.15, variant=variant)

        def f(lp, gspo=gspo, logp_old=logp_old, adv=adv):
            return gspo(make_batch(lp, logp_old, adv, GSPO_IDS, 4, GSPO_MASK)).loss

        assert torch.autograd.gradcheck(f, (lp0,), eps=1e-6, atol=1e-8)


# --------------------------------------------------------------------------------------------------
# diagnostics
# --------------------------------------------------------------------------------------------------


def test_ratio_stats_against_python():
    logp, logp_old = [-0.5, -1.0, -2.0, 3.0], [-0.7, -0.8, -2.1, -1.0]
    mask = [1.0, 1.0, 1.0, 0.0]
    stats = Importance()(make_batch(logp, logp_old, [0.0] * 4, [0, 0, 1, 1], mask=mask)).stats
    log_ratios = [a - b for a, b in zip(logp, logp_old, strict=True)][:3]
    assert stats["approx_kl_k1"].item() == pytest.approx(-sum(log_ratios) / 3)
    assert stats["approx_kl"].item() == pytest.approx(sum(math.exp(x) - 1 - x for x in log_ratios) / 3)
    assert stats["ratio_mean"].item() == pytest.approx(sum(math.exp(x) for x in log_ratios) / 3)
    assert stats["ratio_min"].item() == pytest.approx(min(math.exp(x) for x in log_ratios))
    assert stats["ratio_max"].item() == pytest.approx(max(math.exp(x) for x in log_ratios))


# --------------------------------------------------------------------------------------------------
# value loss
# --------------------------------------------------------------------------------------------------


def test_value_loss_unclipped_is_half_mse():
    values, targets = t64([1.0, 2.0, 0.0]), t64([0.0, 0.0, 1.0])
    # ½·(1 + 4 + 1)/3 = 1
    assert value_loss(values, targets, t64([1.0, 1.0, 1.0])).item() == pytest.approx(1.0)
    # the masked row does not count: ½·(1 + 4)/2 = 1.25
    assert value_loss(values, targets, t64([1.0, 1.0, 0.0])).item() == pytest.approx(1.25)


def test_value_loss_clipped_hand_worked():
    values, targets = t64([1.0, 2.0, 0.0]), t64([0.0, 0.0, 1.0])
    values_old = t64([0.5, 2.5, 0.5])
    # row 0: (1−0)² = 1 vs (0.5+0.2 − 0)² = 0.49 → 1
    # row 1: (2−0)² = 4 vs (2.5−0.2 − 0)² = 5.29 → 5.29
    # row 2: (0−1)² = 1 vs (0.5−0.2 − 1)² = 0.49 → 1
    loss = value_loss(values, targets, t64([1.0, 1.0, 1.0]), values_old=values_old, clip=0.2)
    assert loss.item() == pytest.approx(0.5 * (1.0 + 5.29 + 1.0) / 3, rel=1e-12)
    # a wide clip changes nothing: clipped V is V itself
    wide = value_loss(values, targets, t64([1.0, 1.0, 1.0]), values_old=values_old, clip=10.0)
    assert wide.item() == pytest.approx(1.0, rel=1e-12)


def test_value_loss_gradients():
    values = t64([1.0, 2.0, 0.0]).requires_grad_(True)
    targets, mask = t64([0.0, 0.5, 1.0]), t64([1.0, 1.0, 0.0])
    (grad,) = torch.autograd.grad(value_loss(values, targets, mask), values)
    close(grad, t64([1.0 / 2, 1.5 / 2, 0.0]))  # (V − G)·mask / count
    values_old = t64([0.5, 2.5, 0.5])
    (grad,) = torch.autograd.grad(value_loss(values, targets, mask, values_old, clip=0.2), values)
    # row 0: unclipped (1) wins → 1/2; row 1: clipped (2.3−0.5)² wins, its V is constant → 0
    close(grad, t64([1.0 / 2, 0.0, 0.0]))


def test_value_loss_bad_arguments():
    v = t64([1.0])
    with pytest.raises(ValueError, match="clip"):
        value_loss(v, v, v, values_old=v, clip=-0.1)
    with pytest.raises(ValueError, match="values_old"):
        value_loss(v, v, v, clip=0.1)


# --------------------------------------------------------------------------------------------------
# bad arguments
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("factory", "name"),
    [
        (lambda: Clip(eps_low=-0.1), "eps_low"),
        (lambda: Clip(eps_low=0.2, eps_high=-0.1), "eps_high"),
        (lambda: Clip(eps_low=1.0), "eps_low"),
        (lambda: GRPO(eps_low=-0.01), "eps_low"),
        (lambda: GRPO(eps_high=-0.01), "eps_high"),
        (lambda: GRPO(beta=-1.0), "beta"),
        (lambda: GSPO(eps_low=-1e-4), "eps_low"),
        (lambda: GSPO(eps_high=-1e-4), "eps_high"),
        (lambda: GSPO(variant="tokens"), "variant"),
        (lambda: KLPenalty(beta=-0.5), "beta"),
        (lambda: KLPenalty(target_kl=0.0), "target_kl"),
        (lambda: KLPenalty(target_kl=-0.01), "target_kl"),
    ],
)
def test_bad_constructor_arguments_raise_naming_the_argument(factory, name):
    with pytest.raises(ValueError, match=name):
        factory()


@pytest.mark.parametrize("name", ["logp_old", "advantages", "mask", "episode_ids", "logp_ref", "kl_old_new"])
@pytest.mark.parametrize(
    "surrogate",
    [Reinforce(), Importance(), KLPenalty(), Clip(), GRPO(beta=0.1), GSPO()],
    ids=lambda s: type(s).__name__,
)
def test_shape_mismatch_names_the_tensor(surrogate, name):
    batch = make_batch(
        [-1.0, -2.0, -0.5],
        [-1.0, -2.0, -0.5],
        [1.0, 0.0, -1.0],
        [0, 0, 1],
        logp_ref=t64([-1.0, -1.0, -1.0]),
        kl_old_new=t64([0.0, 0.0, 0.0]),
    )
    bad = getattr(batch, name)[:2]
    setattr(batch, name, bad)
    with pytest.raises(ValueError, match=rf"^{name} has shape"):
        surrogate(batch)
