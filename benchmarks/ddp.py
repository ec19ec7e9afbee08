"""DDP on this CPU: 2 ranks vs 1 rank with the same per-rank settings (default PPO preset on CartPole-v1).

Reports global env steps per second (perf/sps, summed over ranks) and env steps until the running mean of the
last 20 episode returns first reaches 475, per seed, each run in its own process at one torch thread per rank.
With 2 ranks the global batch per update is twice the per-rank one (DDP averages gradients), so steps-to-solve
compares a run whose every update sees 2× the data.

    python benchmarks/ddp.py --steps 100000 --seeds 0 1 2     # ≈ 10 min on 2 cores; writes benchmarks/results/ddp.md
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def run(devices: int, seed: int, steps: int, workdir: Path) -> dict:
    out = workdir / f"d{devices}-s{seed}"
    trainer = ["trainer=ddp", f"trainer.devices={devices}"] if devices > 1 else []
    args = [sys.executable, "-m", "pglab.run.train", *trainer, f"seed={seed}", f"total_env_steps={steps}", "logger=csv",
            "eval.enabled=false", "checkpoint.enabled=false", "trainer.enable_progress_bar=false",
            f"hydra.run.dir={out}"]
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.run(args, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    rows = list(csv.DictReader(open(out / "csv" / "metrics.csv")))
    sps = [float(r["perf/sps"]) for r in rows if r.get("perf/sps")]
    solved = next((float(r["step"]) for r in rows if r.get("rollout/return_mean20")
                   and float(r["rollout/return_mean20"]) >= 475), None)
    return {"sps": sps[-1], "solved_at": solved, "wall_s": wall}


def concurrent_pair(steps: int, workdir: Path) -> float:
    """Summed env steps/s of two independent one-process runs started together (seeds 100, 101)."""
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    outs = [workdir / f"pair{i}" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-m", "pglab.run.train", f"seed={100 + i}", f"total_env_steps={steps}",
                               "logger=csv", "eval.enabled=false", "checkpoint.enabled=false",
                               "trainer.enable_progress_bar=false", f"hydra.run.dir={out}"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i, out in enumerate(outs)]
    for proc in procs:
        proc.wait()
    total = 0.0
    for out in outs:
        rows = [r for r in csv.DictReader(open(out / "csv" / "metrics.csv")) if r.get("perf/sps")]
        total += float(rows[-1]["perf/sps"])
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    results: dict[int, list[dict]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for devices in (1, 2):  # interleaved, so drifting machine load hits both alike
                results[devices].append(run(devices, seed, args.steps, Path(tmp)))
                print(f"devices={devices} seed={seed}: {results[devices][-1]}", flush=True)
        # the machine's own ceiling: two independent one-process runs at once (no communication at all)
        pair = concurrent_pair(args.steps, Path(tmp))
    sps = {d: statistics.median(r["sps"] for r in rs) for d, rs in results.items()}
    lines = [
        "# DDP: 2 ranks vs 1 rank on CPU (gloo), default PPO on CartPole-v1, same per-rank settings",
        "",
        f"`python benchmarks/ddp.py --steps {args.steps} --seeds {' '.join(map(str, args.seeds))}` "
        f"({os.cpu_count()} cores, one torch thread per rank)",
        "",
        "| ranks | global env steps/s (median, min–max) | env steps to mean-20 ≥ 475, per seed | wall s per run |",
        "|---|---|---|---|",
    ]
    for d, rs in results.items():
        lo, hi = min(r["sps"] for r in rs), max(r["sps"] for r in rs)
        solved = ", ".join(f"{r['solved_at']:,.0f}" if r["solved_at"] else "—" for r in rs)
        walls = ", ".join(f"{r['wall_s']:.0f}" for r in rs)
        lines.append(f"| {d} | {sps[d]:,.0f} ({lo:,.0f}–{hi:,.0f}) | {solved} | {walls} |")
    lines += ["", f"Speed-up 2 ranks / 1 rank: **{sps[2] / sps[1]:.2f}×** (target ≥ 1.7×).",
              f"The machine's ceiling: two independent one-process runs side by side reach {pair:,.0f} env steps/s "
              f"together, **{pair / sps[1]:.2f}×** one run alone — DDP's 2 ranks reach "
              f"{sps[2] / pair:.0%} of what these 2 cores give two processes that never communicate."]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ddp.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
