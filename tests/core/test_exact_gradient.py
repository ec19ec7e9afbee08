"""The derivation as an experiment, in miniature: pglab's estimators and baselines against an *exact* policy gradient.

Two tiny episodic MDPs with a tabular softmax policy π_θ(a|s) = softmax(θ[s])_a and γ = 1:

- a two-armed **bandit** (one state, horizon 1, stochastic rewards), and
- a 3-state, 2-action **chain** with stochastic transitions, an absorbing goal that ends episodes early and a
  horizon H = 4 (an episode still running after H steps ends there: a finite-horizon MDP, so the last step is a
  termination, nothing is bootstrapped).

The reference gradient ∇J(θ) is autograd of the exact expected return J(θ) = Σ_τ p_θ(τ) R(τ), summed over *every*
trajectory (exhaustive enumeration, 3 · 8⁴ branches at most); dynamic programming gives J and the exact values
V_t(s) a second way. Nothing in the reference goes through ``pglab.core.estimators``.

The estimates go through pglab: trajectories laid out time-major ``[T, N]`` (one column per episode, padded with
``valid = False`` after it ends, as the episode collector does) → ``pglab.core.estimators`` (trajectory_return,
reward_to_go, nstep, gae) → ``pglab.core.baselines`` (none, mean, value) → the per-episode REINFORCE gradient
g_n = Σ_t A_{t,n} ∇_θ log π_θ(a_t|s_t) (closed form for a tabular softmax: ∇_θ[s,·] log π(a|s) = e_a − π(·|s);
checked against autograd of ``pglab.core.surrogates.Reinforce`` with the episode-sum aggregation, docs/theory.md §14).
With γ = 1 the REINFORCE estimator of docs/theory.md §1, (1/N) Σ_n g_n, is unbiased for ∇J.

Statistics: per-episode gradients of independent episodes are i.i.d., so a mean over M episodes has standard error
σ_j/√M per coordinate j. "Unbiased" is tested as |mean_j − ∇J_j| ≤ 5 σ_j/√M for every coordinate (|z| ≤ 5: a
two-sided false alarm probability of 5.7e-7 per coordinate, < 1e-5 over all coordinates of all tests — a failure
means a bug, not bad luck). All sampling uses ``torch.Generator().manual_seed(SEED)`` with SEED = 20240611 and
float64, so the tests are deterministic; each samples M = 40,000 episodes (bandit: 20,000), fully vectorised.
Variances (trace of the covariance of g_n) and the expected estimates of the biased estimators are also computed
exactly by enumeration (Σ_τ p(τ) g(τ), Σ_τ p(τ) ‖g(τ)‖²), so every ordering asserted is first a fact about the MDP,
then checked on samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from pglab.core.baselines import mean_baseline, no_baseline, value_baseline
from pglab.core.estimators import gae, nstep, reward_to_go, trajectory_return
from pglab.core.surrogates import Reinforce, SurrogateInput

SEED = 20240611
Z = 5.0  # |z| threshold: two-sided P(|z| > 5) = 5.7e-7 per coordinate under the null
M = 40_000  # sampled episodes per chain test
DT = torch.float64


# -- the MDPs ---------------------------------------------------------------------------------------------------
@dataclass
class MDP:
    """Tabular episodic MDP. ``P`` [S, A, S+1]: the last index is the absorbing goal (episode ends there)."""

    mu: torch.Tensor          # [S] start distribution
    P: torch.Tensor           # [S, A, S+1] transition probabilities, column S = terminal
    R: torch.Tensor           # [S, A, K] possible rewards of (s, a) ...
    R_prob: torch.Tensor      # [S, A, K] ... and their probabilities (stochastic rewards)
    horizon: int
    theta: torch.Tensor       # [S, A] policy logits

    @property
    def S(self) -> int:  # noqa: N802
        return self.P.shape[0]

    @property
    def A(self) -> int:  # noqa: N802
        return self.P.shape[1]

    def policy(self, theta: torch.Tensor | None = None) -> torch.Tensor:
        return torch.softmax(self.theta if theta is None else theta, dim=-1)


def chain() -> MDP:
    """3 states, 2 actions (0 ≈ left, 1 ≈ right), horizon 4; 'right' from state 2 may reach the goal (+ reward)."""
    P = torch.tensor([
        [[0.8, 0.2, 0.0, 0.0], [0.1, 0.7, 0.2, 0.0]],   # state 0
        [[0.7, 0.3, 0.0, 0.0], [0.0, 0.2, 0.8, 0.0]],   # state 1
        [[0.0, 0.6, 0.4, 0.0], [0.0, 0.0, 0.4, 0.6]],   # state 2: right → goal w.p. 0.6
    ], dtype=DT)
    R = torch.tensor([
        [[0.0, 0.0], [-0.2, -0.2]],
        [[0.5, -0.5], [-0.2, -0.2]],  # left in state 1: a coin flip ±0.5
        [[0.3, 0.3], [2.0, 0.0]],     # right in state 2: 2 or 0
    ], dtype=DT)
    R_prob = torch.tensor([
        [[1.0, 0.0], [1.0, 0.0]],
        [[0.5, 0.5], [1.0, 0.0]],
        [[1.0, 0.0], [0.7, 0.3]],
    ], dtype=DT)
    theta = torch.tensor([[0.3, -0.2], [-0.4, 0.1], [0.2, 0.5]], dtype=DT)
    return MDP(torch.tensor([0.6, 0.3, 0.1], dtype=DT), P, R, R_prob, 4, theta)


def bandit() -> MDP:
    """One state, two arms, one step: arm 0 pays 1 or 0 (p 0.3), arm 1 pays 2 or −1 (p 0.5)."""
    P = torch.tensor([[[0.0, 1.0], [0.0, 1.0]]], dtype=DT)
    R = torch.tensor([[[1.0, 0.0], [2.0, -1.0]]], dtype=DT)
    R_prob = torch.tensor([[[0.3, 0.7], [0.5, 0.5]]], dtype=DT)
    return MDP(torch.ones(1, dtype=DT), P, R, R_prob, 1, torch.tensor([[0.2, -0.3]], dtype=DT))


# -- trajectories in pglab's [T, N] layout ----------------------------------------------------------------------
@dataclass
class Trajectories:
    """N episodes, time-major: states/actions [T, N] (long), rewards and masks [T, N]; ``weight`` [N] is p(τ) for
    an enumeration (None for samples); ``logp_fixed`` [N] the θ-free part of log p(τ) (start, transitions,
    rewards)."""

    states: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    terminated: torch.Tensor
    valid: torch.Tensor
    weight: torch.Tensor | None = None
    logp_fixed: torch.Tensor | None = None

    @property
    def done(self) -> torch.Tensor:
        return self.terminated  # finite horizon: every episode end is a termination (no truncation)


def sample(mdp: MDP, n: int, generator: torch.Generator) -> Trajectories:
    """n independent episodes of π_θ, vectorised over episodes (a loop over the ≤ H time steps only)."""
    H = mdp.horizon
    pi = mdp.policy()
    states = torch.zeros(H, n, dtype=torch.long)
    actions = torch.zeros(H, n, dtype=torch.long)
    rewards = torch.zeros(H, n, dtype=DT)
    terminated = torch.zeros(H, n, dtype=torch.bool)
    valid = torch.zeros(H, n, dtype=torch.bool)
    s = torch.multinomial(mdp.mu, n, replacement=True, generator=generator)
    alive = torch.ones(n, dtype=torch.bool)
    for t in range(H):
        a = torch.multinomial(pi[s], 1, generator=generator).squeeze(1)
        k = torch.multinomial(mdp.R_prob[s, a], 1, generator=generator).squeeze(1)
        s_next = torch.multinomial(mdp.P[s, a], 1, generator=generator).squeeze(1)
        states[t], actions[t], valid[t] = torch.where(alive, s, 0), torch.where(alive, a, 0), alive
        rewards[t] = torch.where(alive, mdp.R[s, a, k], torch.zeros((), dtype=DT))
        ends = alive & ((s_next == mdp.S) | (t == H - 1))
        terminated[t] = ends
        alive = alive & ~ends
        s = torch.where(alive, s_next, 0)
    return Trajectories(states, actions, rewards, terminated, valid)


def enumerate_all(mdp: MDP) -> Trajectories:
    """Every trajectory (start state, and per step: action, reward outcome, next state) with its probability."""
    H, S, A, K = mdp.horizon, mdp.S, mdp.A, mdp.R.shape[-1]
    pi = mdp.policy().detach()
    # partial trajectories as rows; start: one per start state
    states = torch.arange(S).unsqueeze(0)                     # [t, n]
    actions = torch.zeros(0, S, dtype=torch.long)
    rewards = torch.zeros(0, S, dtype=DT)
    terminated = torch.zeros(0, S, dtype=torch.bool)
    valid = torch.zeros(0, S, dtype=torch.bool)
    prob = mdp.mu.clone()
    fixed = mdp.mu.log()
    alive = torch.ones(S, dtype=torch.bool)
    for t in range(H):
        n = prob.numel()
        # branch every live trajectory over (a, k, s'); dead ones get one branch with probability 1
        a, k, s2 = torch.meshgrid(torch.arange(A), torch.arange(K), torch.arange(S + 1), indexing="ij")
        a, k, s2 = a.reshape(-1), k.reshape(-1), s2.reshape(-1)
        B = a.numel()
        s_now = states[t]
        rep = torch.arange(n).repeat_interleave(B)
        aa, kk, ss = a.repeat(n), k.repeat(n), s2.repeat(n)
        live = alive[rep]
        # a dead trajectory keeps only its first branch
        keep = live | ((aa == 0) & (kk == 0) & (ss == 0))
        rep, aa, kk, ss, live = rep[keep], aa[keep], kk[keep], ss[keep], live[keep]
        sn = s_now[rep]
        step_p = torch.where(live, pi[sn, aa] * mdp.R_prob[sn, aa, kk] * mdp.P[sn, aa, ss], torch.ones((), dtype=DT))
        nonzero = step_p > 0
        rep, aa, kk, ss, live, sn, step_p = (x[nonzero] for x in (rep, aa, kk, ss, live, sn, step_p))
        env_p = torch.where(live, mdp.R_prob[sn, aa, kk] * mdp.P[sn, aa, ss], torch.ones((), dtype=DT))
        prob = prob[rep] * step_p
        fixed = fixed[rep] + env_p.log()
        ends = live & ((ss == S) | (t == H - 1))
        actions = torch.cat([actions[:, rep], torch.where(live, aa, 0).unsqueeze(0)])
        rewards = torch.cat([rewards[:, rep], torch.where(live, mdp.R[sn, aa, kk], torch.zeros((), dtype=DT))[None]])
        terminated = torch.cat([terminated[:, rep], ends.unsqueeze(0)])
        valid = torch.cat([valid[:, rep], live.unsqueeze(0)])
        alive = live & ~ends
        states = torch.cat([states[:, rep], torch.where(alive, ss, 0).unsqueeze(0)])
    return Trajectories(states[:H], actions, rewards, terminated, valid, prob, fixed)


# -- exact references (no pglab code) -----------------------------------------------------------------------------
def exact_gradient(mdp: MDP, traj: Trajectories) -> torch.Tensor:
    """∇J(θ), J = Σ_τ p_θ(τ) R(τ) over the enumeration, by autograd. [S·A]"""
    theta = mdp.theta.clone().requires_grad_(True)
    logpi = torch.log_softmax(theta, dim=-1)
    logp = traj.logp_fixed + torch.where(traj.valid, logpi[traj.states, traj.actions], torch.zeros((), dtype=DT)).sum(0)
    J = (logp.exp() * traj.rewards.sum(0)).sum()
    (grad,) = torch.autograd.grad(J, theta)
    return grad.reshape(-1)


def dp_values(mdp: MDP) -> tuple[torch.Tensor, float]:
    """Exact V_t(s) [H+1, S] by backward induction (V_H = 0, the goal is worth 0) and J = Σ μ(s) V_0(s)."""
    pi = mdp.policy().detach()
    V = torch.zeros(mdp.horizon + 1, mdp.S, dtype=DT)
    mean_r = (mdp.R * mdp.R_prob).sum(-1)  # [S, A]
    for t in range(mdp.horizon - 1, -1, -1):
        Q = mean_r + mdp.P[:, :, : mdp.S] @ V[t + 1]
        V[t] = (pi * Q).sum(-1)
    return V, float(mdp.mu @ V[0])


def value_tensors(traj: Trajectories, V: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """values [T, N] = V_t(s_t) and next_values [T, N] = V_{t+1}(s_{t+1}) from a table V [H+1, S] (0 where invalid;
    at a termination the estimators drop the bootstrap anyway)."""
    H = traj.states.shape[0]
    t = torch.arange(H).unsqueeze(1)
    values = torch.where(traj.valid, V[t, traj.states], torch.zeros((), dtype=DT))
    nxt_states = torch.cat([traj.states[1:], torch.zeros_like(traj.states[:1])])
    next_values = torch.where(traj.valid & ~traj.terminated, V[(t + 1).clamp_max(V.shape[0] - 1), nxt_states],
                              torch.zeros((), dtype=DT))
    return values, next_values


# -- the estimate, through pglab ------------------------------------------------------------------------------
def advantages(traj: Trajectories, estimator: str, baseline: str, V: torch.Tensor | None = None,
               **kwargs) -> torch.Tensor:
    """A [T, N] from ``pglab.core.estimators`` + ``pglab.core.baselines`` (γ = 1); V [H+1, S] is the value table they
    see."""
    fn = {"return": trajectory_return, "reward_to_go": reward_to_go, "nstep": nstep, "gae": gae}[estimator]
    if V is None:
        values = next_values = torch.zeros_like(traj.rewards)
    else:
        values, next_values = value_tensors(traj, V)
    G = fn(traj.rewards, values, next_values, traj.terminated, traj.done, traj.valid, gamma=1.0, **kwargs)
    if baseline == "none":
        return no_baseline(G, traj.valid)
    if baseline == "mean":
        return mean_baseline(G, traj.valid)
    return value_baseline(G, traj.valid, values)


def per_episode_gradients(mdp: MDP, traj: Trajectories, adv: torch.Tensor) -> torch.Tensor:
    """g_n = Σ_t A_{t,n} ∇_θ log π(a_t|s_t), closed form for a tabular softmax. [N, S·A]"""
    pi = mdp.policy().detach()
    score = torch.nn.functional.one_hot(traj.actions, mdp.A).to(DT) - pi[traj.states]      # [T, N, A]
    weight = torch.where(traj.valid, adv, torch.zeros((), dtype=DT))                        # [T, N]
    onehot_s = torch.nn.functional.one_hot(traj.states, mdp.S).to(DT)                     # [T, N, S]
    return torch.einsum("tn,tns,tna->nsa", weight, onehot_s, score).reshape(traj.states.shape[1], -1)


def exact_moments(mdp: MDP, traj: Trajectories, adv: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(E[g], trace Cov[g]) of a per-episode estimator, exactly, over an enumeration."""
    g = per_episode_gradients(mdp, traj, adv)
    mean = traj.weight @ g
    second = traj.weight @ (g**2).sum(1)
    return mean, float(second - mean @ mean)


@dataclass
class SampleStats:
    mean: torch.Tensor        # [P] mean per-episode gradient
    se: torch.Tensor          # [P] its standard error
    var: float                # trace of the sample covariance of g_n
    var_se: float             # standard error of ``var`` (delta method: std of ‖g_n − ḡ‖² / √M)


def sample_stats(g: torch.Tensor) -> SampleStats:
    m = g.shape[0]
    mean = g.mean(0)
    centred = g - mean
    sq = (centred**2).sum(1)
    return SampleStats(mean, g.std(0) / math.sqrt(m), float(sq.sum() / (m - 1)), float(sq.std() / math.sqrt(m)))


def assert_within_ci(stats: SampleStats, expected: torch.Tensor, what: str) -> None:
    z = (stats.mean - expected) / stats.se.clamp_min(1e-12)
    assert z.abs().max() <= Z, f"{what}: |z| = {z.abs().max():.2f} > {Z} (mean {stats.mean}, expected {expected})"


# -- fixtures ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mdp() -> MDP:
    return chain()


@pytest.fixture(scope="module")
def everything(mdp) -> Trajectories:
    return enumerate_all(mdp)


@pytest.fixture(scope="module")
def samples(mdp) -> Trajectories:
    return sample(mdp, M, torch.Generator().manual_seed(SEED))


@pytest.fixture(scope="module")
def V(mdp) -> torch.Tensor:
    return dp_values(mdp)[0]


def wrong_values(V: torch.Tensor) -> torch.Tensor:
    """A value table that is wrong in a state-dependent way (V_H stays 0: nothing lies past the horizon)."""
    wrong = torch.zeros_like(V)
    wrong[:-1] = 0.5 * V[:-1] + torch.tensor([1.0, -0.5, 0.8], dtype=DT)
    return wrong


# -- the reference itself ---------------------------------------------------------------------------------------
def test_enumeration_is_exact(mdp, everything, V):
    """The enumeration's probabilities sum to 1, its J equals dynamic programming's, and ∇J equals a central
    finite difference of the DP value (three computations that share no code)."""
    assert float(everything.weight.sum()) == pytest.approx(1.0, abs=1e-12)
    J_enum = float(everything.weight @ everything.rewards.sum(0))
    assert J_enum == pytest.approx(dp_values(mdp)[1], abs=1e-12)
    grad = exact_gradient(mdp, everything)
    eps = 1e-6
    for j in range(grad.numel()):
        plus, minus = chain(), chain()
        plus.theta.view(-1)[j] += eps
        minus.theta.view(-1)[j] -= eps
        fd = (dp_values(plus)[1] - dp_values(minus)[1]) / (2 * eps)
        assert grad[j].item() == pytest.approx(fd, abs=1e-8)
    assert grad.abs().min() > 1e-3  # every coordinate carries signal (a z-test on ~0 would be vacuous)


def test_closed_form_score_matches_the_reinforce_surrogate(mdp, samples):
    """The per-episode closed form, averaged, is exactly −∇ of pglab's Reinforce loss (seed aggregation
    −(1/N) Σ_n Σ_t A log π) computed by autograd on the same 500 episodes."""
    n = 500
    traj = Trajectories(*(x[:, :n] for x in (samples.states, samples.actions, samples.rewards, samples.terminated,
                                              samples.valid)))
    adv = advantages(traj, "reward_to_go", "none")
    closed = per_episode_gradients(mdp, traj, adv).mean(0)
    theta = mdp.theta.clone().requires_grad_(True)
    logp = torch.log_softmax(theta, -1)[traj.states, traj.actions]          # [T, N]
    flat = lambda x: x.transpose(0, 1).reshape(-1)  # noqa: E731  episode-major rows
    batch = SurrogateInput(logp=flat(logp), logp_old=flat(logp).detach(), advantages=flat(adv),
                           mask=flat(traj.valid).to(DT), episode_ids=torch.arange(n).repeat_interleave(mdp.horizon),
                           num_episodes=n)
    loss = Reinforce(aggregation="episode_sum")(batch).loss
    (grad,) = torch.autograd.grad(loss, theta)
    torch.testing.assert_close(-grad.reshape(-1), closed, rtol=1e-12, atol=1e-12)


# -- unbiasedness -----------------------------------------------------------------------------------------------
UNBIASED = [
    ("return", "none", None, {}),
    ("reward_to_go", "none", None, {}),
    ("reward_to_go", "value", "exact", {}),
    ("reward_to_go", "value", "constant", {}),   # b = 1.7 everywhere: state-independent, so no bias
    ("reward_to_go", "value", "wrong", {}),      # any b(s_t): still no bias (it is not bootstrapped from)
    ("nstep", "value", "exact", {"k": 1}),
    ("nstep", "value", "exact", {"k": 2}),
    ("gae", "value", "exact", {"lam": 0.0}),
    ("gae", "value", "exact", {"lam": 0.7}),
    ("gae", "none", "exact", {"lam": 0.5}),       # the λ-return itself as the weight: E[G^λ | s, a] = Q
]


def _table(kind: str | None, V: torch.Tensor) -> torch.Tensor | None:
    if kind is None:
        return None
    if kind == "exact":
        return V
    if kind == "constant":
        table = torch.full_like(V, 1.7)
        table[-1] = 0.0
        return table
    return wrong_values(V)


@pytest.mark.parametrize(("estimator", "baseline", "values", "kwargs"), UNBIASED,
                         ids=[f"{e}-{b}-{v}-{k}" for e, b, v, k in UNBIASED])
def test_unbiased_within_5_sigma(mdp, everything, samples, V, estimator, baseline, values, kwargs):
    """Mean of M = 40,000 per-episode gradients (seed 20240611) within 5 standard errors of ∇J on every coordinate;
    the exact expectation (enumeration) equals ∇J to 1e-12 — the estimator is unbiased, not just close."""
    table = _table(values, V)
    exact_mean, _ = exact_moments(mdp, everything, advantages(everything, estimator, baseline, table, **kwargs))
    grad = exact_gradient(mdp, everything)
    torch.testing.assert_close(exact_mean, grad, rtol=0, atol=1e-12)
    stats = sample_stats(per_episode_gradients(mdp, samples, advantages(samples, estimator, baseline, table,
                                                                        **kwargs)))
    assert_within_ci(stats, grad, f"{estimator}/{baseline}/{values}/{kwargs}")


def test_mean_baseline_unbiased_at_large_batch(mdp, everything, samples):
    """The batch-mean baseline depends on the batch's own actions, so it is biased by O(1/batch); with 20 batches
    of 2,000 episodes (seed 20240611) the mean of the 20 batch gradients lies within 5 standard errors of ∇J."""
    grad = exact_gradient(mdp, everything)
    batches = []
    for b in range(20):
        cols = slice(b * 2000, (b + 1) * 2000)
        traj = Trajectories(*(x[:, cols] for x in (samples.states, samples.actions, samples.rewards,
                                                   samples.terminated, samples.valid)))
        batches.append(per_episode_gradients(mdp, traj, advantages(traj, "reward_to_go", "mean")).mean(0))
    assert_within_ci(sample_stats(torch.stack(batches)), grad, "reward_to_go/mean")


def test_bandit_unbiased_and_baseline_lowers_variance():
    """Bandit (one step): the return, and the return minus the exact V = E[R], are unbiased within 5 σ over
    20,000 pulls (seed 20240611), and the exact-V baseline lowers the exact variance, also seen in the samples."""
    mdp = bandit()
    everything = enumerate_all(mdp)
    V, _ = dp_values(mdp)
    grad = exact_gradient(mdp, everything)
    # closed form: ∂J/∂θ_a = π_a (r̄_a − J)
    pi = mdp.policy()
    r_bar = (mdp.R * mdp.R_prob).sum(-1)[0]
    torch.testing.assert_close(grad, pi[0] * (r_bar - pi[0] @ r_bar), rtol=0, atol=1e-12)
    draws = sample(mdp, 20_000, torch.Generator().manual_seed(SEED))
    plain = sample_stats(per_episode_gradients(mdp, draws, advantages(draws, "return", "none")))
    based = sample_stats(per_episode_gradients(mdp, draws, advantages(draws, "return", "value", V)))
    assert_within_ci(plain, grad, "bandit/return")
    assert_within_ci(based, grad, "bandit/return-V")
    _, var_plain = exact_moments(mdp, everything, advantages(everything, "return", "none"))
    _, var_based = exact_moments(mdp, everything, advantages(everything, "return", "value", V))
    assert var_based < 0.9 * var_plain
    assert based.var + Z * based.var_se < plain.var - Z * plain.var_se


# -- variance ---------------------------------------------------------------------------------------------------
def test_variance_ladder(mdp, everything, samples, V):
    """Trace of the per-episode gradient covariance: return > reward-to-go > reward-to-go − V (exact V).

    Exactly by enumeration first (a fact about this MDP), then on M = 40,000 samples (seed 20240611): each sample
    variance within 5 standard errors of the exact one, and the 5-σ intervals of consecutive rungs disjoint."""
    rungs = [("return", "none", None), ("reward_to_go", "none", None), ("reward_to_go", "value", V)]
    exact = [exact_moments(mdp, everything, advantages(everything, e, b, table))[1] for e, b, table in rungs]
    measured = [sample_stats(per_episode_gradients(mdp, samples, advantages(samples, e, b, table)))
                for e, b, table in rungs]
    assert exact[0] > exact[1] > exact[2]
    for m, e in zip(measured, exact, strict=True):
        assert abs(m.var - e) <= Z * m.var_se, (m.var, e, m.var_se)
    for hi, lo in zip(measured, measured[1:], strict=False):
        assert lo.var + Z * lo.var_se < hi.var - Z * hi.var_se, (hi.var, lo.var)


# -- bias of bootstrapping -------------------------------------------------------------------------------------
def _bias(mdp, traj, grad, estimator, table, **kwargs) -> tuple[float, torch.Tensor]:
    mean, _ = exact_moments(mdp, traj, advantages(traj, estimator, "value", table, **kwargs))
    return float((mean - grad).norm()), mean


def test_bootstrap_bias_shrinks_with_k_and_lambda_when_V_is_wrong(mdp, everything, samples, V):
    """With a wrong V, the exact bias ‖E[ĝ] − ∇J‖ of k-step and GAE advantages falls strictly as k or λ grows and
    is 0 (to 1e-12) at k = H and λ = 1, where no bootstrap is left; with the exact V it is 0 for every k and λ.

    On samples (M = 40,000, seed 20240611): the biased configurations (k = 1, λ = 0) are detected — ‖mean − ∇J‖
    exceeds 5 standard errors of the norm — and every sampled mean lies within 5 σ of its exact expectation,
    so the sampled pipeline measures the same bias the enumeration computes."""
    grad = exact_gradient(mdp, everything)
    wrong = wrong_values(V)
    ks = [1, 2, 3, mdp.horizon]
    lams = [0.0, 0.25, 0.5, 0.75, 1.0]
    k_bias = [_bias(mdp, everything, grad, "nstep", wrong, k=k)[0] for k in ks]
    lam_bias = [_bias(mdp, everything, grad, "gae", wrong, lam=lam)[0] for lam in lams]
    assert all(a > b for a, b in zip(k_bias, k_bias[1:], strict=False)), k_bias
    assert all(a > b for a, b in zip(lam_bias, lam_bias[1:], strict=False)), lam_bias
    assert k_bias[-1] < 1e-12 and lam_bias[-1] < 1e-12
    assert k_bias[0] > 0.05 * float(grad.norm()) and lam_bias[0] > 0.05 * float(grad.norm())
    for k in ks:
        assert _bias(mdp, everything, grad, "nstep", V, k=k)[0] < 1e-12
    for lam in lams:
        assert _bias(mdp, everything, grad, "gae", V, lam=lam)[0] < 1e-12

    for estimator, kwargs in (("nstep", {"k": 1}), ("gae", {"lam": 0.0}), ("nstep", {"k": 2}),
                              ("gae", {"lam": 0.5}), ("gae", {"lam": 1.0})):
        _, expected = _bias(mdp, everything, grad, estimator, wrong, **kwargs)
        stats = sample_stats(per_episode_gradients(mdp, samples, advantages(samples, estimator, "value", wrong,
                                                                            **kwargs)))
        assert_within_ci(stats, expected, f"{estimator}{kwargs} with a wrong V")
        if kwargs in ({"k": 1}, {"lam": 0.0}):
            # the norm of the error of the mean has standard error ≤ ‖se‖ (up to the per-coordinate CLT)
            assert float((stats.mean - grad).norm()) > Z * float(stats.se.norm()), estimator
