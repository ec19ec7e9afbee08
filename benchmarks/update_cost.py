"""Cost of one PPO learner update: autograd through the reference loss and the lean update (``pglab.accel.lean``).

- autograd: ``pglab.learner.loss.minibatch_loss`` → ``backward`` → ``clip_grad_norm_`` (foreach) → fused Adam
  ``step()`` (what ``learner.gradients=autograd`` runs on one process);
- lean: ``LeanUpdate`` (the same loss, its hand-derived gradient written into one flat buffer, diagnostics in one
  product) → clip of the flat buffer → the fused Adam kernel; plus the finite check's one host sync.

Both on the plain ``ActorCritic`` (CartPole-sized: 4 → 2 discrete; Pendulum-like: 3 → 1 Gaussian), 64-64 tanh
separate trunks, 128-row minibatches, CleanRL's coefficients. Printed: µs per update (thread CPU time, interleaved
rounds), operator calls (profiler events) and
- the lean update's top operators by self CPU time (median over profiled rounds).

    python benchmarks/update_cost.py [--reps 21] [--updates 100] [--quick]

No test asserts these numbers; timings on a shared CPU are noisy, compare ratios rather than absolute µs.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile

from pglab.accel.lean import LeanUpdate, clip_flat_
from pglab.core.surrogates import Clip
from pglab.core.types import Batch
from pglab.learner.module import PolicyGradientModule
from pglab.models.mlp import ActorCritic

CLOCK = time.thread_time  # CPU time of this thread (see the module docstring)
BATCH = 128
HIDDEN = (64, 64)
LEARNER = {"lr": 2.5e-4, "adam_eps": 1e-5, "vf_coef": 0.5, "ent_coef": 0.01, "max_grad_norm": 0.5}
CASES = {"CartPole (4 → 2 discrete)": (4, ("discrete", 2)), "Pendulum-like (3 → 1 Gaussian)": (3, ("continuous", 1))}


def make_batch(policy: ActorCritic, obs_dim: int, action_space: tuple[str, int]) -> Batch:
    """A 128-row minibatch as collection would store it (old log-probs and values from the policy itself)."""
    kind, size = action_space
    obs = torch.randn(BATCH, obs_dim)
    actions = torch.randint(0, size, (BATCH,)) if kind == "discrete" else torch.randn(BATCH, size)
    with torch.no_grad():
        out = policy.evaluate(obs, actions)
    return Batch(obs=obs, actions=actions, logp_old=out.logp, values_old=out.values, dist_params_old=out.dist_params,
                 advantages=torch.randn(BATCH), targets=out.values + torch.randn(BATCH), mask=torch.ones(BATCH),
                 episode_ids=torch.zeros(BATCH, dtype=torch.long), num_episodes=1)


class Learner:
    """A PolicyGradientModule around one network, and its update as training_step's direct path does it."""

    def __init__(self, policy: nn.Module) -> None:
        self.module = PolicyGradientModule(policy, Clip(0.2), **LEARNER)
        self.params = [p for p in policy.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.params, lr=LEARNER["lr"], eps=LEARNER["adam_eps"], fused=True)

    def update(self, batch: Batch) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss, _ = self.module.loss_and_stats(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, LEARNER["max_grad_norm"], foreach=True)
        self.optimizer.step()


def interleaved(fns: dict[str, Callable[[], None]], reps: int, n: int) -> dict[str, list[float]]:
    """µs per call of each fn, timed in ``reps`` rounds of ``n`` calls, the fns taking turns within a round."""
    for fn in fns.values():
        for _ in range(max(n // 4, 5)):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = CLOCK()
            for _ in range(n):
                fn()
            times[name].append((CLOCK() - start) / n * 1e6)
    return times


def operator_calls(fn: Callable[[], object], n: int = 20,
                   rounds: int = 7) -> tuple[float, dict[str, tuple[float, float]]]:
    """Profiler events per call of fn (every aten op and autograd node, forward and backward), and per event
    name (calls per call of fn, median self-CPU µs per call of fn over ``rounds`` profiled rounds)."""
    fn()
    counts, self_us = [], {}
    for _ in range(rounds):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(n):
                fn()
        averages = prof.key_averages()
        counts.append(sum(event.count for event in averages) / n)
        for event in averages:
            self_us.setdefault(event.key, []).append((event.count / n, event.self_cpu_time_total / n))
    per_op = {key: (values[0][0], statistics.median(v for _, v in values)) for key, values in self_us.items()}
    return statistics.median(counts), per_op


class LeanLearner:
    """The same update through ``pglab.accel.lean`` (what ``learner.gradients=lean``/``auto`` runs in training_step):
    hand-derived loss gradient into the flat buffer → clip on the flat buffer → one fused Adam call on flat buffers."""

    def __init__(self, policy: ActorCritic) -> None:
        self.lean = LeanUpdate(policy, Clip(0.2), vf_coef=LEARNER["vf_coef"], ent_coef=LEARNER["ent_coef"],
                               value_clip=None, normalize_advantages=True)
        self.optimizer = torch.optim.Adam(self.lean.params, lr=LEARNER["lr"], eps=LEARNER["adam_eps"], fused=True)
        self.stats: list[dict[str, Tensor]] = []
        self.calls = 0

    def update(self, batch: Batch) -> None:
        # training_step prepares the data-only constants of all a step's minibatches at once (one set of [M, B]
        # operations); this is their cost at CleanRL's M = 16 minibatches per step: the whole cost once in 16
        if self.calls % 16 == 0:  # and checks the flat layout once (LeanUpdate.start)
            self.lean.rebind()
            self.lean.bind_optimizer(self.optimizer)
            self.prepared = self.lean.prepare([batch] * 16)[0]
        self.calls += 1
        loss, diagnostics = self.lean(batch, self.prepared)
        self.stats.append(self.lean.named(diagnostics))
        loss_value, norm = clip_flat_(self.lean.flat_grad, LEARNER["max_grad_norm"], loss)
        if math.isfinite(loss_value) and math.isfinite(norm):  # training_step's finite check
            self.lean.adam_step(self.optimizer)
        if len(self.stats) == 16:
            # the epoch's diagnostics, as on_train_epoch_end averages them
            torch.stack([torch.stack([s[k] for s in self.stats]).mean() for k in self.stats[0]]).tolist()
            self.stats.clear()


def run_case(name: str, obs_dim: int, action_space: tuple[str, int], reps: int, n: int, top: int) -> dict:
    """Print and return one case's figures: µs per update (median, min, max over rounds) and operator calls
    of the autograd update and the lean one."""
    torch.manual_seed(0)
    network = ActorCritic(obs_dim, action_space, hidden=HIDDEN)
    lean_net = ActorCritic(obs_dim, action_space, hidden=HIDDEN)
    lean_net.load_state_dict(network.state_dict())  # the same weights
    batch = make_batch(network, obs_dim, action_space)
    learners = {"autograd": Learner(network), "lean": LeanLearner(lean_net)}

    times = interleaved({k: (lambda lr=lr: lr.update(batch)) for k, lr in learners.items()}, reps, n)
    calls = {k: operator_calls(lambda lr=lr: lr.update(batch)) for k, lr in learners.items()}
    base = times["autograd"]

    print(f"\n## {name}: one PPO update, {BATCH}-row minibatch, {'-'.join(map(str, HIDDEN))} tanh separate trunks")
    print(f"{'':20}{'µs per update (min–max)':>28}{'× cheaper than autograd':>25}{'operator calls':>16}")
    figures = {}
    for key, values in times.items():
        # the ratio: median over rounds of the per-round ratio (load drift within a round cancels)
        cheaper = statistics.median(b / v for b, v in zip(base, values, strict=True))
        figures[key] = {"us": statistics.median(values), "min": min(values), "max": max(values),
                        "cheaper_than_autograd": cheaper, "operator_calls": calls[key][0]}
        print(f"{key:20}{statistics.median(values):12.0f} ({min(values):5.0f}–{max(values):5.0f}){'':4}"
              f"{cheaper:21.2f}×{calls[key][0]:16.0f}")

    per_op = calls["lean"][1]
    total = sum(us for _, us in per_op.values())
    print(f"\nlean update, top {top} operators by self CPU time (per update; profiled, so inflated):")
    for key, (count, us) in sorted(per_op.items(), key=lambda item: item[1][1], reverse=True)[:top]:
        print(f"  {key[:66]:68}{count:5.0f} calls {us:7.1f} µs {100 * us / total:5.1f}%")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=21, help="interleaved timing rounds")
    parser.add_argument("--updates", type=int, default=100, help="updates per round")
    parser.add_argument("--top", type=int, default=15, help="operators listed")
    parser.add_argument("--quick", action="store_true", help="5 rounds of 40 updates")
    args = parser.parse_args()
    reps, n = (5, 40) if args.quick else (args.reps, args.updates)
    measure(reps, n, args.top)


def measure(reps: int = 21, n: int = 100, top: int = 15) -> dict:
    """Every case's figures (also what ``benchmarks/run_all.py`` reports)."""
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, {reps} rounds × {n} updates per variant")
    return {name: run_case(name, obs_dim, action_space, reps, n, top)
            for name, (obs_dim, action_space) in CASES.items()}


if __name__ == "__main__":
    main()
