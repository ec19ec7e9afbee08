"""Learning benchmark: each algo preset on CartPole-v1 over seeds; final return and env steps to solve.

Solved = running mean of the last 20 episode returns ≥ 475. Prints a markdown table and writes
benchmarks/results/learning.{json,md}. Usage: python benchmarks/learning.py [--seeds 0 1 2] [--presets ppo a2c]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

BUDGETS = {"ppo": 100_000, "a2c": 500_000, "ppo_kl": 500_000, "grpo": 500_000, "gspo": 500_000,
           # the derivation's ladder (docs/theory.md), at one equal budget
           "reinforce": 300_000, "reinforce_rtg": 300_000, "reinforce_baseline": 300_000}
RESULTS = Path(__file__).resolve().parent / "results"


def run_one(preset: str, seed: int, budget: int) -> dict:
    import tempfile

    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from pglab.run.callbacks import SolveTracker
    from pglab.run.train import CONFIG_DIR, build

    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"algo={preset}", f"seed={seed}", f"total_env_steps={budget}",
                                          "logger=none", "trainer.enable_progress_bar=false"],
                      return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = tempfile.mkdtemp(prefix="pglab-bench-")
        del cfg["hydra"]
    start = time.perf_counter()
    r = build(cfg)
    tracker = next(c for c in r.trainer.callbacks if isinstance(c, SolveTracker))
    tracker.threshold = 475.0
    r.trainer.fit(r.module, datamodule=r.datamodule)
    final = tracker.history[-1][1] if tracker.history else float("nan")
    return {"preset": preset, "seed": seed, "budget": budget, "final_return_mean20": final,
            "solved_at": tracker.solved_at, "wall_s": time.perf_counter() - start,
            "env_steps": int(r.module.env_steps), "updates": r.module.update_path}


def table(rows: list[dict]) -> str:
    lines = ["| preset | updates | budget | final mean return (last 20 ep.), per seed | env steps to 475, per seed "
             "| solved |",
             "|---|---|---|---|---|---|"]
    for preset in dict.fromkeys(r["preset"] for r in rows):
        rs = sorted((r for r in rows if r["preset"] == preset), key=lambda r: r["seed"])
        finals = ", ".join(f"{r['final_return_mean20']:.0f}" for r in rs)
        solved = ", ".join(f"{r['solved_at']:,}" if r["solved_at"] else "—" for r in rs)
        n_solved = sum(r["solved_at"] is not None for r in rs)
        med = statistics.median(r["final_return_mean20"] for r in rs)
        lines.append(f"| {preset} | {rs[0].get('updates', '?')} | {rs[0]['budget']:,} | {finals} (median {med:.0f}) "
                     f"| {solved} | "
                     f"{n_solved}/{len(rs)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="*", default=list(BUDGETS))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--budget-scale", type=float, default=1.0, help="multiply every budget (quick looks)")
    args = parser.parse_args()
    jobs = [(p, s, int(BUDGETS[p] * args.budget_scale)) for p in args.presets for s in args.seeds]
    with ProcessPoolExecutor(args.workers) as pool:
        rows = list(pool.map(run_one, *zip(*jobs, strict=True)))
    for row in rows:
        print(json.dumps(row))
    md = table(rows)
    print(md)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "learning.json").write_text(json.dumps(rows, indent=1))
    (RESULTS / "learning.md").write_text(md + "\n")


if __name__ == "__main__":
    main()
