"""Does a population learn like separate runs? Steps-to-solve of N seeds as one population and as N separate runs.

    nice -n 10 .venv/bin/python benchmarks/population_stats.py [--seeds 10] [--cap 100000] [--threshold 475]

The ppo preset (algo=ppo: rl-zoo3's CartPole-v1 settings) on CartPole-v1, seeds 0..N−1, once as ``population=N``
(one process, the population as shipped) and once as N separate single runs (as shipped: lean update, fused
actor). "Solved" is the speed benchmark's criterion (``benchmarks/speed.py``): the mean of the last 20 episode
returns reaches 475, checked after every rollout; a run that has not solved by ``--cap`` env steps is censored at
the cap (ranked last; counted). The population trains its members on after they solve (so its wall time is the
whole budget); the separate runs stop when solved. The same seed does not give the same trajectory in the two
arms (the population draws all members' action noise from one stream), so the comparison is of distributions:
Mann–Whitney U (two-sided) and the two-sample Kolmogorov–Smirnov test (scipy), with the medians and quartiles.
Writes ``benchmarks/results/population_stats.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "integration"))
from conftest import compose_cfg  # noqa: E402

from pglab.run.callbacks import SolveTracker  # noqa: E402
from pglab.run.population import build_population  # noqa: E402
from pglab.run.train import build  # noqa: E402

BASE = ["algo=ppo", "eval.enabled=false", "checkpoint.enabled=false", "logger=none", "torch_threads=1"]


def separate(seed: int, cap: int, threshold: float, out: Path) -> int | None:
    r = build(compose_cfg([*BASE, f"seed={seed}", f"total_env_steps={cap}"], out))
    tracker = next(c for c in r.trainer.callbacks if isinstance(c, SolveTracker))
    tracker.threshold, tracker.stop_when_solved = threshold, True
    r.trainer.fit(r.module, datamodule=r.datamodule)
    return tracker.solved_at


def population(seeds: list[int], cap: int, threshold: float, out: Path) -> tuple[list[int | None], str]:
    pop = build_population(compose_cfg([*BASE, f"population={seeds}", f"total_env_steps={cap}"], out))
    solved: list[int | None] = [None] * len(seeds)
    while any(pop.learner.trainable()):
        for k, row in enumerate(pop.iteration()):
            if solved[k] is None and row.get("rollout/return_mean20", -math.inf) >= threshold:
                solved[k] = int(row["env_steps"])
    pop.close()
    return solved, pop.learner.describe()


def summary(values: list[float]) -> dict:
    q = statistics.quantiles(values, n=4, method="inclusive")
    return {"median": statistics.median(values), "q1": q[0], "q3": q[2], "min": min(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--cap", type=int, default=100_000)
    parser.add_argument("--threshold", type=float, default=475.0)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    from scipy import stats

    torch.set_num_threads(1)
    seeds = list(range(args.seeds))
    load_start = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        pop_solved, path = population(seeds, args.cap, args.threshold, Path(tmp) / "pop")
        pop_wall = time.perf_counter() - start
        print(f"population: {pop_solved} ({pop_wall:.0f} s)", flush=True)
        sep_solved = []
        start = time.perf_counter()
        for seed in seeds:
            sep_solved.append(separate(seed, args.cap, args.threshold, Path(tmp) / f"s{seed}"))
            print(f"separate seed {seed}: {sep_solved[-1]}", flush=True)
        sep_wall = time.perf_counter() - start

    def censored(xs):
        return [float(x) if x is not None else float(args.cap) for x in xs]

    a, b = censored(pop_solved), censored(sep_solved)
    mw = stats.mannwhitneyu(a, b, alternative="two-sided")
    ks = stats.ks_2samp(a, b)
    res = {"command": "python benchmarks/population_stats.py " + " ".join(sys.argv[1:]),
           "settings": {"overrides": BASE, "env": "CartPole-v1", "seeds": seeds, "cap": args.cap,
                        "threshold": args.threshold, "window": 20},
           "population": {"solved_at": pop_solved, "unsolved": pop_solved.count(None), "summary": summary(a),
                          "wall_s": pop_wall, "path": path},
           "separate": {"solved_at": sep_solved, "unsolved": sep_solved.count(None), "summary": summary(b),
                        "wall_s": sep_wall},
           "mann_whitney_u": {"statistic": float(mw.statistic), "p_value": float(mw.pvalue)},
           "ks_2samp": {"statistic": float(ks.statistic), "p_value": float(ks.pvalue)},
           "load": [load_start, " / ".join(f"{x:.2f}" for x in os.getloadavg())]}

    def row(name, arm):
        s = arm["summary"]
        return (f"| {name} | {s['median']:,.0f} | {s['q1']:,.0f} – {s['q3']:,.0f} | {s['min']:,.0f} – {s['max']:,.0f} "
                f"| {arm['unsolved']} | {arm['wall_s']:.0f} s |")

    md = "\n".join([
        f"`{res['command']}` — PPO preset (`algo=ppo`) on CartPole-v1, seeds 0–{args.seeds - 1}: env steps until the "
        f"mean of the last 20 episode returns reaches {args.threshold:g} (cap {args.cap:,}; unsolved runs count as "
        f"the cap). Load average {res['load'][0]} → {res['load'][1]} (shared machine).", "",
        "| arm | median | quartiles | range | unsolved | wall time |", "|---|---|---|---|---|---|",
        row(f"population={args.seeds}", res["population"]), row(f"{args.seeds} separate runs", res["separate"]), "",
        f"Mann–Whitney U = {mw.statistic:.1f}, two-sided p = {mw.pvalue:.3f}; Kolmogorov–Smirnov D = "
        f"{ks.statistic:.2f}, p = {ks.pvalue:.3f}. (The population trains every member to the cap; the separate runs "
        "stop when solved, so the wall times are not a speed comparison: `benchmarks/population.py` is.)", "",
        f"population: {pop_solved}", "", f"separate: {sep_solved}", "", f"population path: {path}", ""])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "population_stats.json").write_text(json.dumps(res, indent=1) + "\n")
    (args.out / "population_stats.md").write_text(md)
    print("\n" + md)


if __name__ == "__main__":
    main()
