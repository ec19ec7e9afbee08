"""What the start-up check of the fast paths costs (``pglab.accel.verify``), in-process, one torch thread.

``python benchmarks/verify_cost.py`` prints the median and range over 15 rounds of what the learner runs at fit
start (``PolicyGradientModule._choose_paths``): one float64 copy of the network, the fused actor's check and the
lean update's check on it — each part and the total — for the default CartPole network (4 → 2, 64-64 tanh,
separate trunks) and a HalfCheetah-sized Gaussian one (17 → 6).
"""

from __future__ import annotations

import statistics
import time

import torch

from pglab.accel.verify import float64_copy, verify_fused_actor, verify_lean_update
from pglab.core.surrogates import Clip
from pglab.learner.loss import LossSettings
from pglab.models.mlp import ActorCritic


def main() -> None:
    torch.set_num_threads(1)
    for label, obs_dim, space in (("CartPole 4 → 2 discrete", 4, ("discrete", 2)),
                                  ("HalfCheetah 17 → 6 Gaussian", 17, ("continuous", 6))):
        policy = ActorCritic(obs_dim, space)
        settings = LossSettings(value_clip=0.2)
        times: dict[str, list[float]] = {"float64 copy": [], "fused actor": [], "lean update": [], "total": []}
        for round_ in range(16):  # the first round warms up
            start = time.perf_counter()
            reference = float64_copy(policy)
            copied = time.perf_counter()
            assert verify_fused_actor(policy, reference=reference).problem is None
            middle = time.perf_counter()
            assert verify_lean_update(policy, Clip(0.2), settings, reference=reference).problem is None
            end = time.perf_counter()
            if round_:
                for key, value in (("float64 copy", copied - start), ("fused actor", middle - copied),
                                   ("lean update", end - middle), ("total", end - start)):
                    times[key].append(value)
        parts = [f"{k} {1e3 * statistics.median(v):.1f} ms ({1e3 * min(v):.1f}–{1e3 * max(v):.1f})"
                 for k, v in times.items()]
        print(f"{label}: " + "; ".join(parts))

if __name__ == "__main__":
    main()
