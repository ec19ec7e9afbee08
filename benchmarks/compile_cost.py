"""`learner.compile=true`: what torch.compile of the minibatch loss (forward + backward) costs and saves.

Prints the wall time of the first updates (compilation included; inductor's on-disk cache makes a second run of
the same process cheaper — run this twice to see it warm), the per-update CPU time afterwards, eager vs compiled,
on a CartPole-sized PPO minibatch (128 rows, 64-64 separate trunks, one torch thread), and checks that the compiled
loss and gradients equal the eager ones. Run alone: `python benchmarks/compile_cost.py`.
"""

from __future__ import annotations

import time

import torch

from pglab.core.surrogates import Clip
from pglab.core.types import Batch
from pglab.learner.module import PolicyGradientModule
from pglab.models.mlp import ActorCritic


def batch(rows: int) -> Batch:
    g = torch.Generator().manual_seed(rows)
    obs, actions = torch.randn(rows, 4, generator=g), torch.randint(0, 2, (rows,), generator=g)
    logp = torch.log_softmax(torch.randn(rows, 2, generator=g), -1)
    return Batch(obs, actions, logp.gather(1, actions[:, None]).squeeze(1), torch.randn(rows, generator=g), logp,
                 torch.randn(rows, generator=g), torch.randn(rows, generator=g), torch.ones(rows),
                 torch.zeros(rows, dtype=torch.long), 1)


def main(updates: int = 300) -> None:
    torch.set_num_threads(1)
    per_update = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        module = PolicyGradientModule(ActorCritic(4, ("discrete", 2)), Clip(0.2), compile=compiled)
        opt = torch.optim.Adam(module.policy.parameters(), lr=1e-3, fused=True)
        start = time.perf_counter()
        for rows in (128, 120, 131):  # varying minibatch sizes: one dynamic-shape compilation
            loss = module.minibatch_loss(batch(rows))
            opt.zero_grad()
            loss.backward()
            opt.step()
        first = time.perf_counter() - start
        b = batch(128)
        start = time.thread_time()
        for _ in range(updates):
            loss = module.minibatch_loss(b)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(module.policy.parameters(), 0.5, foreach=True)
            opt.step()
        per_update[compiled] = (time.thread_time() - start) / updates * 1e6
        print(f"compile={compiled!s:<5}  first 3 updates {first:6.1f} s wall (compilation included), then "
              f"{per_update[compiled]:6.0f} µs CPU per update", flush=True)
    saved = (per_update[False] - per_update[True]) * 1e-6
    print(f"compiled / eager per update: {per_update[True] / per_update[False]:.2f}×; it pays back after "
          f"≈ compile time / {saved * 1e3:.2f} ms updates")
    torch.manual_seed(0)
    eager = PolicyGradientModule(ActorCritic(4, ("discrete", 2)), Clip(0.2))
    torch.manual_seed(0)
    compiled = PolicyGradientModule(ActorCritic(4, ("discrete", 2)), Clip(0.2), compile=True)
    b = batch(77)
    loss_e, loss_c = eager.minibatch_loss(b), compiled.minibatch_loss(b)
    loss_e.backward()
    loss_c.backward()
    grad_diff = max(float((p.grad - q.grad).abs().max())
                    for p, q in zip(eager.policy.parameters(), compiled.policy.parameters(), strict=True))
    print(f"compiled vs eager: loss difference {float((loss_e - loss_c).abs()):.2e}, max gradient difference "
          f"{grad_diff:.2e}")


if __name__ == "__main__":
    main()
