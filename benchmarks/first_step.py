"""Start-up probe: runs a training command and prints the wall-clock time of its first environment step.

    python benchmarks/first_step.py [hydra overrides]   # == python -m pglab.run.train [overrides]
    python benchmarks/first_step.py --sb3               # SB3 PPO, rl-zoo3 CartPole-v1 settings, 256 steps

CartPole's own ``step`` (the single env that SB3's DummyVecEnv steps and the native vector env pglab uses) is
wrapped to record ``time.time()`` at its first call; the parent (``benchmarks/speed.py``) subtracts the time it
launched this process, so interpreter start-up and every import count. Prints ``BENCH_RESULT {json}`` at exit.
"""

from __future__ import annotations

import atexit
import json
import sys
import time
from pathlib import Path

from gymnasium.envs.classic_control import cartpole

FIRST_STEP: list[float] = []


def _probe(cls: type) -> None:
    original = cls.step

    def step(self, *args, **kwargs):
        if not FIRST_STEP:
            FIRST_STEP.append(time.time())
        return original(self, *args, **kwargs)

    cls.step = step


def _report() -> None:
    print("BENCH_RESULT " + json.dumps({"first_step_time": FIRST_STEP[0] if FIRST_STEP else None,
                                        "end_time": time.time()}), flush=True)


def _sb3() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from speed_jobs import SB3_ZOO, _sb3_model

    _sb3_model(SB3_ZOO, 0).learn(total_timesteps=256)


if __name__ == "__main__":
    _probe(cartpole.CartPoleEnv)
    _probe(cartpole.CartPoleVectorEnv)
    atexit.register(_report)
    if sys.argv[1:] == ["--sb3"]:
        _sb3()
    else:
        from pglab.run.train import main

        main()
