"""Soak: does a long run's memory stay flat? The default PPO on CartPole-v1 for 1,000,000 env steps.

    python benchmarks/soak.py [--steps 1000000] [--out benchmarks/results/soak.md] [hydra overrides ...]

Runs ``python -m pglab.run.train total_env_steps=N logger=csv`` (default eval and checkpoints) in a subprocess with
``PYTHONPATH=benchmarks`` and one extra Lightning callback from the config's hook, ``+callbacks.memory._target_=
soak.MemoryProbe``. The probe runs inside the training process: each time ``env_steps`` crosses a mark (every
100,000 by default) it records the current RSS (``VmRSS`` in /proc/self/status), the peak RSS so far
(``getrusage(RUSAGE_SELF).ru_maxrss``) and the wall time since training started, and rewrites
``<run dir>/memory.json``. The parent then writes a Markdown table. Flat memory: current RSS at the last mark
within a few % of the RSS at 100,000 steps.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L

ROOT = Path(__file__).resolve().parents[1]


def current_rss_mb() -> float:
    """This process's resident set size now (``VmRSS``), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024  # kB
    return float("nan")


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (ru_maxrss is in kB on Linux), MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class MemoryProbe(L.Callback):
    """Records current and peak RSS each time the run's env steps cross a multiple of ``every`` (and at the end)."""

    def __init__(self, path: str, every: int = 100_000) -> None:
        self.path = Path(path)
        self.every = every
        self.rows: list[dict] = []
        self.next_mark = every
        self.start = time.perf_counter()

    def _record(self, module, mark: int | None) -> None:
        self.rows.append({"mark": mark, "env_steps": int(module.env_steps), "rss_mb": round(current_rss_mb(), 1),
                          "peak_rss_mb": round(peak_rss_mb(), 1),
                          "wall_s": round(time.perf_counter() - self.start, 1)})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.rows, indent=1) + "\n")

    def on_train_start(self, trainer: L.Trainer, module) -> None:
        self.start = time.perf_counter()
        self._record(module, 0)

    def on_train_epoch_end(self, trainer: L.Trainer, module) -> None:
        steps = int(module.env_steps)
        if steps >= self.next_mark:
            self._record(module, self.next_mark)
            while self.next_mark <= steps:
                self.next_mark += self.every

    def on_train_end(self, trainer: L.Trainer, module) -> None:
        self._record(module, None)


def _table(rows: list[dict]) -> list[str]:
    lines = ["| env steps (mark) | env steps (actual) | current RSS, MB | peak RSS, MB | wall time, s |",
             "|---|---|---|---|---|"]
    for r in rows:
        mark = "train start" if r["mark"] == 0 else ("end" if r["mark"] is None else f"{r['mark']:,}")
        lines.append(f"| {mark} | {r['env_steps']:,} | {r['rss_mb']:.1f} | {r['peak_rss_mb']:.1f} "
                     f"| {r['wall_s']:.1f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--every", type=int, default=100_000)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "soak.md"))
    parser.add_argument("--run-dir", default=None, help="the run's output dir (default: a temporary one)")
    args, overrides = parser.parse_known_args()

    run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="pglab-soak-")).resolve()
    probe_path = run_dir / "memory.json"
    train_args = [f"total_env_steps={args.steps}", "logger=csv", "trainer.enable_progress_bar=false",
                  "+callbacks.memory._target_=soak.MemoryProbe", f"+callbacks.memory.path={probe_path}",
                  f"+callbacks.memory.every={args.every}", *overrides, f"hydra.run.dir={run_dir}"]
    command = [sys.executable, "-m", "pglab.run.train", *train_args]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT / "benchmarks"), os.environ.get("PYTHONPATH")) if p)}
    load_start = os.getloadavg()
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    load_end = os.getloadavg()
    child_peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if proc.returncode != 0:
        sys.exit(f"soak: training failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    rows = json.loads(probe_path.read_text())

    marks = {r["mark"]: r for r in rows}
    first, last_mark = marks.get(args.every), max((m for m in marks if m), default=None)
    last = marks.get(last_mark)
    verdict = "not enough marks to judge"
    if first and last and last is not first:
        growth = (last["rss_mb"] - first["rss_mb"]) / first["rss_mb"]
        per_100k = (last["rss_mb"] - first["rss_mb"]) / ((last_mark - args.every) / 100_000)
        flat = abs(growth) <= 0.05
        verdict = (f"current RSS {first['rss_mb']:.1f} MB at {args.every:,} → {last['rss_mb']:.1f} MB at "
                   f"{last_mark:,} env steps: {growth:+.1%} ({per_100k:+.2f} MB per 100,000 steps) — "
                   + ("**flat** (within 5%)" if flat else "**not flat** (more than 5%)"))
    shown = " ".join(shlex.quote(a) for a in ["python", "benchmarks/soak.py", *sys.argv[1:]])
    md = [
        f"# Soak: memory over {args.steps:,} env steps",
        "",
        f"Command: `{shown}` — it runs `PYTHONPATH=benchmarks python -m pglab.run.train "
        f"{' '.join(shlex.quote(a) for a in train_args[:-1])} hydra.run.dir=<tmp>` "
        "(the default PPO preset on CartPole-v1, 8 envs × 32 steps per rollout, default eval every 25 epochs and "
        "checkpoints every 25 epochs, CSV logger).  ",
        f"Machine: {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, Python "
        f"{platform.python_version()}; load average at start {load_start[0]:.2f} / {load_start[1]:.2f} / "
        f"{load_start[2]:.2f}, at end {load_end[0]:.2f} / {load_end[1]:.2f} / {load_end[2]:.2f}; "
        f"total {wall:.0f} s (subprocess launch to exit).  ",
        "Current RSS: `VmRSS` of the training process (/proc/self/status); peak RSS: its "
        "`getrusage(RUSAGE_SELF).ru_maxrss`; both recorded by `soak.MemoryProbe` (a Lightning callback given "
        "through the config's `callbacks.<name>._target_` hook) at the first epoch end at or past each mark; "
        "wall time counts from train start.",
        "",
        *_table(rows),
        "",
        f"Peak RSS of the whole child process (`getrusage(RUSAGE_CHILDREN).ru_maxrss` after exit): "
        f"{child_peak_mb:.1f} MB.",
        "",
        f"Verdict: {verdict}.",
        "",
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
