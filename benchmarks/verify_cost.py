"""What the start-up check of the fast paths costs (``pglab.accel.verify``), in-process, one torch thread.

``python benchmarks/verify_cost.py`` prints the median and range over 7 calls of each check, for the default
CartPole network (4 → 2, 64-64 tanh, separate trunks) and a HalfCheetah-sized Gaussian one (17 → 6).
"""

from __future__ import annotations

import statistics
import time

import torch

from pglab.accel.verify import verify_fused_actor, verify_lean_update
from pglab.core.surrogates import Clip
from pglab.learner.loss import LossSettings
from pglab.models.mlp import ActorCritic


def main() -> None:
    torch.set_num_threads(1)
    for label, obs_dim, space in (("CartPole 4 → 2 discrete", 4, ("discrete", 2)),
                                  ("HalfCheetah 17 → 6 Gaussian", 17, ("continuous", 6))):
        policy = ActorCritic(obs_dim, space)
        verify_fused_actor(policy), verify_lean_update(policy, Clip(0.2), LossSettings())  # first-call warm-up
        times = {"fused actor": [], "lean update": []}
        for _ in range(7):
            start = time.perf_counter()
            assert verify_fused_actor(policy).problem is None
            middle = time.perf_counter()
            assert verify_lean_update(policy, Clip(0.2), LossSettings(value_clip=0.2)).problem is None
            times["fused actor"].append(middle - start)
            times["lean update"].append(time.perf_counter() - middle)
        parts = [f"{k} {1e3 * statistics.median(v):.1f} ms ({1e3 * min(v):.1f}–{1e3 * max(v):.1f})"
                 for k, v in times.items()]
        print(f"{label}: " + "; ".join(parts))


if __name__ == "__main__":
    main()
