"""Before/after speed of a change: pglab at two git revisions and Stable-Baselines3, interleaved in one session.

``python benchmarks/ab_trees.py --before <rev> [--after WORKTREE] [--repeats 3]`` checks ``<rev>`` out into a
scratch worktree and, per case, runs before / after / SB3 in turn (each a fresh process, one torch thread, the
measured code in each tree's own ``benchmarks/speed_jobs.py``), so machine drift and load hit all three alike.
Prints env steps/s (median, min–max) and the ratios after/before and pglab/SB3 for both trees; writes
``benchmarks/results/ab_<before>.json``. The cases are ``speed.py``'s throughput cases (CleanRL CartPole, rl-zoo3
Pendulum, CleanRL HalfCheetah — the last needs the ``bench`` extra's MuJoCo).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from speed import CASES  # noqa: E402


def _job(tree: Path, name: str, params: dict, timeout: float = 900) -> dict:
    env = dict(os.environ, WANDB_MODE="disabled", WANDB_SILENT="true", PYTHONPATH=str(tree / "src"),
               OMP_NUM_THREADS="1")
    with tempfile.TemporaryDirectory(prefix="pglab-ab-") as cwd:
        proc = subprocess.run([sys.executable, str(tree / "benchmarks" / "speed_jobs.py"), name, json.dumps(params)],
                              cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            return json.loads(line[len("BENCH_RESULT "):])
    raise RuntimeError(f"{name} in {tree} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")


def _stats(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="git revision to compare against")
    parser.add_argument("--after", default=str(ROOT), help="the tree to measure (default: this checkout)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    args = parser.parse_args()
    before = Path(tempfile.gettempdir()) / f"pglab-before-{args.before}"
    if not before.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-f", "--detach", str(before), args.before],
                       check=True, capture_output=True)
    after = Path(args.after)
    results = {}
    for case in args.cases:
        label, overrides, steps, _quick, _target = CASES[case]
        sps: dict[str, list[float]] = {"before": [], "after": [], "sb3": []}
        for seed in range(args.repeats):
            for side, tree in (("before", before), ("after", after)):
                r = _job(tree, "pglab_train", {"overrides": overrides, "steps": steps, "seed": seed})
                sps[side].append(r["sps"])
            r = _job(after, "sb3_train", {"case": case, "steps": steps, "seed": seed})
            sps["sb3"].append(r["sps"])
            print(f"{case} seed {seed}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in sps.items()), flush=True)
        ratios = {"after/before": [a / b for a, b in zip(sps["after"], sps["before"], strict=True)],
                  "before/sb3": [b / s for b, s in zip(sps["before"], sps["sb3"], strict=True)],
                  "after/sb3": [a / s for a, s in zip(sps["after"], sps["sb3"], strict=True)]}
        results[case] = {"label": label, "steps": steps, "sps": {k: _stats(v) for k, v in sps.items()},
                         "ratios": {k: _stats(v) for k, v in ratios.items()}}
        line = "  ".join(f"{k} {v['median']:.2f}× ({v['min']:.2f}–{v['max']:.2f})"
                         for k, v in results[case]["ratios"].items())
        print(f"{label}: {line}", flush=True)
    out = HERE / "results" / f"ab_{args.before}.json"
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
