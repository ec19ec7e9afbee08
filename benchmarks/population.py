"""Summed env steps/s of a population (population=P) against P sequential single runs, one torch thread.

    .venv/bin/python benchmarks/population.py [--steps 4096] [--repeats 2] [--sizes 1 4 8]

CleanRL's CartPole settings (experiment=cartpole_ppo_cleanrl: 4 envs × 128 steps, 4 epochs × 4 minibatches),
no eval, no checkpoints, no loggers. Each case trains ``--steps`` env steps per member; the single run is timed as
shipped (``learner.gradients=auto``: the lean update and fused actor where they apply) and on the autograd path
the population differentiates. Cases are interleaved round by round, so a loaded machine slows all of them alike;
the ratios are taken within each round and the median printed. Timed: ``Trainer.fit`` / the population's loop,
not the building of envs and networks (paid once either way).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
from conftest import compose_cfg  # noqa: E402  (the same config composition the tests use)

from pglab.run.population import build_population  # noqa: E402
from pglab.run.train import build  # noqa: E402

BASE = ["experiment=cartpole_ppo_cleanrl", "eval.enabled=false", "checkpoint.enabled=false", "torch_threads=1"]


def single(steps: int, gradients: str, out: Path) -> float:
    r = build(compose_cfg([*BASE, f"total_env_steps={steps}", f"learner.gradients={gradients}"], out))
    start = time.perf_counter()
    r.trainer.fit(r.module, datamodule=r.datamodule)
    return int(r.module.env_steps) / (time.perf_counter() - start)


def population(size: int, steps: int, out: Path) -> float:
    pop = build_population(compose_cfg([*BASE, f"total_env_steps={steps}", f"population={list(range(size))}"],
                                       out))
    start = time.perf_counter()
    while any(pop.learner.trainable()):
        pop.iteration()
    elapsed = time.perf_counter() - start
    pop.close()
    return sum(m.env_steps for m in pop.learner.members) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 8])
    args = parser.parse_args()
    torch.set_num_threads(1)
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            row = {"single (auto)": single(args.steps, "auto", Path(tmp) / f"s{r}"),
                   "single (autograd)": single(args.steps, "autograd", Path(tmp) / f"a{r}")}
            for size in args.sizes:
                row[f"P={size}"] = population(size, args.steps, Path(tmp) / f"p{size}-{r}")
            rounds.append(row)
            print(f"round {r}: " + ", ".join(f"{k} {v:,.0f} steps/s" for k, v in row.items()), flush=True)
    print(f"\nCartPole, CleanRL settings, {args.steps} env steps per member, median of {args.repeats} rounds")
    print(f"{'case':<20}{'summed steps/s':>16}{'÷ single (auto)':>18}{'÷ single (autograd)':>22}")
    for key in rounds[0]:
        sps = statistics.median(r[key] for r in rounds)
        vs_auto = statistics.median(r[key] / r["single (auto)"] for r in rounds)
        vs_grad = statistics.median(r[key] / r["single (autograd)"] for r in rounds)
        print(f"{key:<20}{sps:>16,.0f}{vs_auto:>18.2f}{vs_grad:>22.2f}")
    print("(P sequential single runs sum to the single run's steps/s: the ratio is the population's speed-up)")


if __name__ == "__main__":
    main()
