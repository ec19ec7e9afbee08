"""Collection speed of the vector-env back-ends: env steps per second with random actions.

EnvPool vs gymnasium's native / sync / async vector envs, all built through ``pglab.envs.make.make_vector_env`` (so
each includes pglab's RecordEpisodeStatistics wrapper), for CartPole-v1 × 64, a MuJoCo env × 16 (if
gymnasium[mujoco] is installed) and, with ``--atari``, Breakout with the env=atari preset × 8 (if ale-py is).
Random actions are sampled once per step for the whole batch; no policy runs. Results: benchmarks/results/envpool.md.

    nice python benchmarks/envpool_sps.py [--steps 2000] [--atari] [--only cartpole|mujoco|atari]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

from pglab.envs.make import EnvConfig, make_vector_env

warnings.filterwarnings("ignore")


def measure(cfg: EnvConfig, vectorization: str, steps: int, warmup: int = 50) -> float:
    """Env steps/s (vector steps × num_envs) of ``steps`` random-action vector steps after ``warmup``."""
    envs = make_vector_env(cfg, vectorization=vectorization)
    rng = np.random.default_rng(0)
    space = envs.single_action_space
    n = envs.num_envs
    if hasattr(space, "n"):
        sample = lambda: rng.integers(0, int(space.n), size=n)  # noqa: E731
    else:
        low, high = np.maximum(space.low, -1.0), np.minimum(space.high, 1.0)  # finite (EnvPool's MuJoCo: ±1e308)
        sample = lambda: rng.uniform(low, high, size=(n, *space.shape)).astype(space.dtype)  # noqa: E731
    envs.reset(seed=0)
    for _ in range(warmup):
        envs.step(sample())
    start = time.perf_counter()
    for _ in range(steps):
        envs.step(sample())
    elapsed = time.perf_counter() - start
    envs.close()
    return steps * n / elapsed


def _has(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="vector steps per measurement")
    parser.add_argument("--atari", action="store_true", help="also Breakout with the env=atari preset")
    parser.add_argument("--only", choices=["cartpole", "mujoco", "atari"], default=None)
    args = parser.parse_args()
    suites = []
    if args.only in (None, "cartpole"):
        suites.append(("CartPole-v1", EnvConfig(id="CartPole-v1", num_envs=64), ["envpool", "native", "sync", "async"],
                       args.steps))
    if args.only in (None, "mujoco"):
        if _has("mujoco"):
            suites.append(("HalfCheetah-v5 (EnvPool: v4)", EnvConfig(id="HalfCheetah-v5", num_envs=16),
                           ["envpool", "sync", "async"], max(args.steps // 4, 100)))
        else:
            print("skipping MuJoCo: pip install 'gymnasium[mujoco]'")
    if args.atari or args.only == "atari":
        if _has("ale_py") and _has("cv2"):
            from omegaconf import OmegaConf

            atari = OmegaConf.to_container(OmegaConf.load("src/pglab/conf/env/atari.yaml"))
            atari.pop("reward_gamma")
            suites.append(("Breakout (env=atari preset)", EnvConfig(**{**atari, "num_envs": 8}),
                           ["envpool", "sync", "async"], max(args.steps // 8, 50)))
        else:
            print("skipping Atari: pip install 'pglab[atari]'")
    print("| env | envs | back-end | env steps/s |\n|---|---|---|---|")
    for name, cfg, backends, steps in suites:
        for backend in backends:
            sps = measure(cfg, backend, steps)
            print(f"| {name} | {cfg.num_envs} | {backend} | {sps:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
