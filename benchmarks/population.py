"""Summed env steps/s of a population (population=P) against P sequential single runs, one torch thread.

    .venv/bin/python benchmarks/population.py [--envs cartpole pendulum] [--sizes 1 4 8 16] [--steps N]
        [--repeats 3] [--reference] [--json benchmarks/results/population.json]

Settings: CartPole at CleanRL's (experiment=cartpole_ppo_cleanrl: 4 envs × 128 steps, 4 epochs × 4 minibatches),
Pendulum at rl-zoo3's (experiment=pendulum_ppo: 4 envs × 1024 steps, 10 epochs × 64 minibatches, normalised
observations and rewards), HalfCheetah at rl-zoo3's (experiment=halfcheetah_ppo; needs MuJoCo); no eval, no
checkpoints, no loggers. Each case trains ``--steps`` env steps per member. P sequential single runs take P times
one run's time, so their summed throughput is one single run's steps/s: the ratio population ÷ single run is the
speed-up. The single run is timed as shipped (``learner.gradients=auto``: lean update and fused actor), the
population as shipped (its stacked fast path where it applies); ``--reference`` adds the population on its vmapped
reference path (``learner.gradients=autograd``). Cases are interleaved round by round, so a loaded machine slows
all of them alike; ratios are taken within each round; medians and [min, max] over rounds are printed, with the
load average (the machine may be shared). Timed: ``Trainer.fit`` / the population's loop, not the building of envs
and networks or the start-up check (paid once either way).
"""

from __future__ import annotations

import argparse
import json
import os
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

COMMON = ["eval.enabled=false", "checkpoint.enabled=false", "torch_threads=1", "logger=none"]
ENVS = {"cartpole": ("CartPole-v1, CleanRL settings", ["experiment=cartpole_ppo_cleanrl"], 4096),
        "pendulum": ("Pendulum-v1, rl-zoo3 settings", ["experiment=pendulum_ppo"], 8192),
        "halfcheetah": ("HalfCheetah-v5, rl-zoo3 settings", ["experiment=halfcheetah_ppo"], 2048)}


def single(base: list[str], steps: int, out: Path) -> float:
    r = build(compose_cfg([*base, f"total_env_steps={steps}"], out))
    start = time.perf_counter()
    r.trainer.fit(r.module, datamodule=r.datamodule)
    return int(r.module.env_steps) / (time.perf_counter() - start)


def population(base: list[str], size: int, steps: int, out: Path, gradients: str = "auto") -> tuple[float, str]:
    pop = build_population(compose_cfg([*base, f"total_env_steps={steps}", f"population={list(range(size))}",
                                        f"learner.gradients={gradients}"], out))
    start = time.perf_counter()
    while any(pop.learner.trainable()):
        pop.iteration()
    elapsed = time.perf_counter() - start
    pop.close()
    return sum(m.env_steps for m in pop.learner.members) / elapsed, pop.learner.describe()


def load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def measure(env: str, sizes: list[int], steps: int | None, repeats: int, reference: bool) -> dict:
    title, overrides, default_steps = ENVS[env]
    steps = steps or default_steps
    base = [*overrides, *COMMON]
    rounds, paths = [], {}
    started = load()
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            row = {"single": single(base, steps, Path(tmp) / f"s{r}")}
            for size in sizes:
                row[f"P={size}"], paths[f"P={size}"] = population(base, size, steps, Path(tmp) / f"p{size}-{r}")
                if reference:
                    row[f"P={size} (reference)"], paths[f"P={size} (reference)"] = population(
                        base, size, steps, Path(tmp) / f"r{size}-{r}", "autograd")
            rounds.append(row)
            print(f"{env} round {r} (load {load()}): " + ", ".join(f"{k} {v:,.0f}" for k, v in row.items()),
                  flush=True)
    cases = {}
    for key in rounds[0]:
        sps = [r[key] for r in rounds]
        ratios = [r[key] / r["single"] for r in rounds]
        cases[key] = {"sps": statistics.median(sps), "sps_range": [min(sps), max(sps)],
                      "ratio": statistics.median(ratios), "ratio_range": [min(ratios), max(ratios)],
                      "path": paths.get(key, "single run as shipped")}
    return {"env": env, "title": title, "steps_per_member": steps, "repeats": repeats, "cases": cases,
            "load_start": started, "load_end": load()}


def markdown(results: list[dict]) -> str:
    lines = []
    for res in results:
        lines += [f"**{res['title']}**, {res['steps_per_member']:,} env steps per member, {res['repeats']} "
                  f"interleaved rounds, 1 torch thread, load {res['load_start']} → {res['load_end']}", "",
                  "| case | summed env steps/s (median [min, max]) | ÷ P sequential single runs |",
                  "|---|---|---|"]
        for key, c in res["cases"].items():
            lo, hi = c["sps_range"]
            rlo, rhi = c["ratio_range"]
            lines.append(f"| {key} | {c['sps']:,.0f} [{lo:,.0f}, {hi:,.0f}] | {c['ratio']:.2f}× "
                         f"[{rlo:.2f}, {rhi:.2f}] |")
        first = next((c["path"] for k, c in res["cases"].items() if k.startswith("P=") and "reference" not in k), "")
        lines += ["", f"population path: {first}", ""]
    return "\n".join(lines)


def run(envs: list[str], sizes: list[int], steps: int | None, repeats: int, reference: bool = False) -> list[dict]:
    torch.set_num_threads(1)
    return [measure(env, sizes, steps, repeats, reference) for env in envs]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--envs", nargs="+", choices=list(ENVS), default=["cartpole", "pendulum"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--steps", type=int, help="env steps per member (default: 4096 CartPole, 8192 Pendulum)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference", action="store_true", help="also time the vmapped reference path")
    parser.add_argument("--json", type=Path, help="write the figures here (and a .md beside it)")
    args = parser.parse_args()
    results = run(args.envs, args.sizes, args.steps, args.repeats, args.reference)
    md = markdown(results)
    print("\n" + md)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        command = "python benchmarks/population.py " + " ".join(sys.argv[1:])
        args.json.write_text(json.dumps({"command": command, "results": results}, indent=1) + "\n")
        args.json.with_suffix(".md").write_text(f"`{command}`\n\n{md}\n")


if __name__ == "__main__":
    main()
