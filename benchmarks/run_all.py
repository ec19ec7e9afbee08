"""Speed benchmarks, pglab side by side with Stable-Baselines3 (``make bench``).

Runs start-up, per-update cost, throughput (CartPole / Pendulum / HalfCheetah), pglab as shipped, collection,
per-rollout overhead, time to solve (see ``benchmarks/speed.py``) and populations against sequential runs
(``benchmarks/population.py``), prints every figure and writes ``benchmarks/results/speed.json`` and ``speed.md``.
Needs the ``bench`` extra (stable-baselines3, psutil, MuJoCo). About 12–15 min on a 2-core CPU; ``--quick`` is a
3–4 min smoke run.

    python benchmarks/run_all.py [--quick] [--only startup updates throughput shipped collection solve population]
        [--cases cartpole_cleanrl pendulum_zoo halfcheetah_cleanrl] [--repeats 3] [--seeds 0 1 2]
    python benchmarks/run_all.py --learning      # also run benchmarks/learning.py afterwards (long)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import speed

RESULTS = Path(__file__).resolve().parent / "results"
BENCHMARKS = ("startup", "updates", "throughput", "shipped", "collection", "solve", "population")


def versions() -> str:
    names = ("pglab", "torch", "lightning", "gymnasium", "stable-baselines3", "numpy")
    out = []
    for name in names:
        try:
            out.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            out.append(f"{name} (not installed)")
    return ", ".join(out) + f", Python {platform.python_version()}"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({cpu}), {platform.system()} {platform.release()}"


def load() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def finite(x):
    """JSON without Infinity/NaN: not reached / not measured become null."""
    if isinstance(x, float) and (math.isinf(x) or math.isnan(x)):
        return None
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [finite(v) for v in x]
    return x


def population_bench(quick: bool, repeats: int) -> list[dict]:
    """population=P against P sequential single runs, in this process (benchmarks/population.py)."""
    import population  # imports torch and pglab: only when this benchmark runs

    return population.run(["cartpole", "pendulum"], [1, 8] if quick else [1, 4, 8, 16], None, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 repeat, 1 seed, small budgets")
    parser.add_argument("--only", nargs="*", choices=BENCHMARKS, default=list(BENCHMARKS))
    parser.add_argument("--repeats", type=int, help="repeats of throughput, collection, start-up (default 3)")
    parser.add_argument("--seeds", type=int, nargs="*", help="time-to-solve seeds (default 0..4)")
    parser.add_argument("--steps", type=int, help="env steps of the as-shipped CartPole runs (default 30000)")
    parser.add_argument("--cases", nargs="*", choices=list(speed.CASES), help="throughput cases (default: all)")
    parser.add_argument("--cap", type=int, default=100_000, help="time-to-solve cap in env steps")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    parser.add_argument("--learning", action="store_true", help="then run benchmarks/learning.py too")
    args = parser.parse_args()
    try:
        import stable_baselines3  # noqa: F401
    except ImportError:
        sys.exit("benchmarks/run_all.py needs Stable-Baselines3: pip install -e '.[bench]'")

    repeats = args.repeats or (1 if args.quick else 3)
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2, 3, 4])
    steps = args.steps or (8_192 if args.quick else 30_000)
    collect_steps = 10_000 if args.quick else 30_000
    train_steps = 10_000 if args.quick else 30_000

    start = time.perf_counter()
    res: dict = {"meta": {"command": "python " + shlex.join(["benchmarks/run_all.py", *sys.argv[1:]]),
                          "machine": machine(), "versions": versions(), "load_start": load()}}
    print(f"pglab speed benchmarks: {res['meta']['command']}\n{res['meta']['machine']}\n{res['meta']['versions']}")
    runners = {
        "startup": lambda: speed.startup(repeats),
        "updates": lambda: speed.update_cost(args.quick),
        "throughput": lambda: speed.throughput(repeats, args.quick, args.cases),
        "shipped": lambda: speed.shipped(repeats, steps),
        "collection": lambda: speed.collection(repeats, collect_steps, train_steps),
        "solve": lambda: speed.solve(seeds, args.cap),
        "population": lambda: population_bench(args.quick, repeats),
    }
    for name in BENCHMARKS:
        if name in args.only:
            print(f"\n== {name}", flush=True)
            t = time.perf_counter()
            res[name] = runners[name]()
            print(f"  ({time.perf_counter() - t:.0f} s)", flush=True)
    res["meta"].update(load_end=load(), elapsed_s=time.perf_counter() - start)

    md = speed.markdown(res)
    if "population" in res:
        import population

        md += "\n## Populations (summed env steps/s of population=P ÷ P sequential single runs)\n\n" + \
            population.markdown(res["population"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed.json").write_text(json.dumps(finite(res), indent=1, default=str) + "\n")
    (args.out / "speed.md").write_text(md)
    print("\n" + md)
    print(f"wrote {args.out / 'speed.json'} and {args.out / 'speed.md'}")

    if args.learning:
        subprocess.run([sys.executable, str(Path(__file__).with_name("learning.py"))], check=True)


if __name__ == "__main__":
    main()
