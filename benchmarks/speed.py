"""Speed benchmarks, pglab side by side with Stable-Baselines3 (the parent side; the measured code is in
``speed_jobs.py`` and ``first_step.py``, each job in a fresh subprocess).

1. throughput   env steps/s of full PPO training on CartPole-v1 at CleanRL's defaults (4 envs × 128 steps,
                4 minibatches, 4 epochs), timing ``trainer.fit`` / ``model.learn`` only
2. solve        wall-clock from process launch (imports count) until the mean of the last 20 episode returns
                ≥ 475; pglab ``algo=ppo`` vs SB3 PPO with rl-zoo3's tuned CartPole-v1 hyperparameters
3. collection   pglab's rollout collection alone (act + env step) vs full training, both at the ppo preset
4. startup      seconds from process launch to the first env step, and peak RSS
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from speed_jobs import PGLAB_BARE, PGLAB_CLEANRL, SB3_CLEANRL, SB3_ZOO

HERE = Path(__file__).resolve().parent
STARTUP_ARGS = ["algo=ppo", "logger=none", "trainer.enable_progress_bar=false", "total_env_steps=256"]
PGLAB_THROUGHPUT = PGLAB_CLEANRL + PGLAB_BARE
PGLAB_PPO = ["algo=ppo", *PGLAB_BARE]
TARGETS = {"throughput": 2.5, "solve_time": 0.5, "solve_steps": 1.0, "train_vs_collect": 0.5, "startup_s": 4.0}


# -- running one child -----------------------------------------------------------------------------------
def run_child(argv: list[str], timeout: float) -> dict:
    """Run ``python argv`` in a fresh interpreter (in a scratch directory, so Hydra/Lightning write nothing
    into the repo); returns its BENCH_RESULT plus ``launch_time`` (time.time() just before the launch),
    ``peak_rss_mb`` (the child's own ru_maxrss, from wait4) and ``process_s``."""
    cwd = tempfile.mkdtemp(prefix="pglab-speedjob-")
    env = dict(os.environ, WANDB_MODE="disabled", WANDB_SILENT="true")
    try:
        with tempfile.TemporaryFile("w+") as log:
            launch = time.time()
            proc = subprocess.Popen([sys.executable, *argv], stdout=log, stderr=subprocess.STDOUT, cwd=cwd,
                                    env=env)
            deadline = time.monotonic() + timeout
            timed_out = False
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline:
                    proc.kill()
                    timed_out = True
                    pid, status, usage = os.wait4(proc.pid, 0)
                    break
                time.sleep(0.05)
            proc.returncode = os.waitstatus_to_exitcode(status)
            end = time.time()
            log.seek(0)
            output = log.read()
    finally:
        shutil.rmtree(cwd, ignore_errors=True)
    results = [line[len("BENCH_RESULT "):] for line in output.splitlines() if line.startswith("BENCH_RESULT ")]
    if proc.returncode != 0 or not results:
        tail = "\n".join(output.splitlines()[-25:])
        raise RuntimeError(f"benchmark job failed (rc {proc.returncode}, timed out: {timed_out}): "
                           f"python {' '.join(argv)}\n{tail}")
    out = json.loads(results[-1])
    out.update(launch_time=launch, process_s=end - launch, peak_rss_mb=usage.ru_maxrss / 1024)
    return out


def job(name: str, params: dict, timeout: float = 600) -> dict:
    return run_child([str(HERE / "speed_jobs.py"), name, json.dumps(params)], timeout)


# -- statistics ------------------------------------------------------------------------------------------
def summary(values: list[float]) -> dict:
    """median with min–max (inf stands for 'not reached')."""
    vals = [float(v) for v in values]
    if not vals:
        return {"median": math.nan, "min": math.nan, "max": math.nan, "values": []}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "values": vals}


def fmt(s: dict, digits: int = 0, unit: str = "") -> str:
    def one(x: float) -> str:
        if math.isinf(x):
            return "unsolved"
        if math.isnan(x):
            return "n/a"
        return f"{x:,.{digits}f}{unit}"

    if len(s["values"]) <= 1:
        return one(s["median"])
    return f"{one(s['median'])} ({one(s['min'])}–{one(s['max'])})"


def log(msg: str) -> None:
    print(msg, flush=True)


# -- the four benchmarks ---------------------------------------------------------------------------------
def throughput(repeats: int, steps: int, with_defaults: bool = True) -> dict:
    rows = []
    for i in range(repeats):  # interleaved pairs, so slow phases of a loaded machine hit both
        pg = job("pglab_train", {"overrides": PGLAB_THROUGHPUT, "steps": steps, "seed": i})
        sb = job("sb3_train", {"steps": steps, "seed": i})
        shipped = job("pglab_train", {"overrides": PGLAB_CLEANRL, "steps": steps, "seed": i}) if with_defaults \
            else None
        log(f"  throughput #{i}: pglab {pg['sps']:,.0f} env steps/s ({pg['env_steps']} steps, {pg['train_s']:.1f} s, "
            f"{pg['peak_rss_mb']:.0f} MB) | SB3 {sb['sps']:,.0f} env steps/s ({sb['env_steps']} steps, "
            f"{sb['train_s']:.1f} s, {sb['peak_rss_mb']:.0f} MB) | ratio {pg['sps'] / sb['sps']:.2f}x")
        if shipped:
            log(f"  throughput #{i}: pglab with its default eval + checkpoints on: {shipped['sps']:,.0f} env steps/s")
        rows.append({"pglab": pg, "sb3": sb, "pglab_defaults": shipped})
    return {
        "steps": steps, "runs": rows,
        "pglab_sps": summary([r["pglab"]["sps"] for r in rows]),
        "sb3_sps": summary([r["sb3"]["sps"] for r in rows]),
        "pglab_defaults_sps": summary([r["pglab_defaults"]["sps"] for r in rows if r["pglab_defaults"]]),
        "ratio": summary([r["pglab"]["sps"] / r["sb3"]["sps"] for r in rows]),
        "pglab_collect_share": summary([r["pglab"]["collect_s"] / r["pglab"]["train_s"] for r in rows]),
        "sb3_collect_share": summary([r["sb3"]["collect_s"] / r["sb3"]["train_s"] for r in rows]),
        "pglab_rss_mb": summary([r["pglab"]["peak_rss_mb"] for r in rows]),
        "sb3_rss_mb": summary([r["sb3"]["peak_rss_mb"] for r in rows]),
    }


def collection(repeats: int, collect_steps: int, train_steps: int) -> dict:
    rows = []
    for i in range(repeats):
        col = job("pglab_collect", {"overrides": PGLAB_PPO, "steps": collect_steps, "seed": i})
        tr = job("pglab_train", {"overrides": PGLAB_PPO, "steps": train_steps, "seed": i})
        log(f"  collection #{i}: collection only {col['sps']:,.0f} env steps/s | full training {tr['sps']:,.0f} "
            f"env steps/s (collection {tr['collect_s'] / tr['train_s']:.0%} of it) | "
            f"ratio {tr['sps'] / col['sps']:.0%}")
        rows.append({"collect": col, "train": tr})
    return {
        "collect_steps": collect_steps, "train_steps": train_steps, "runs": rows,
        "collect_sps": summary([r["collect"]["sps"] for r in rows]),
        "train_sps": summary([r["train"]["sps"] for r in rows]),
        "ratio": summary([r["train"]["sps"] / r["collect"]["sps"] for r in rows]),
        "train_collect_share": summary([r["train"]["collect_s"] / r["train"]["train_s"] for r in rows]),
    }


def solve(seeds: list[int], cap: int) -> dict:
    rows = []
    for seed in seeds:
        pair = {}
        for lib, name in (("pglab", "pglab_solve"), ("sb3", "sb3_solve")):
            r = job(name, {"overrides": PGLAB_PPO, "seed": seed, "cap": cap})
            r["wall_s"] = r["solved_time"] - r["launch_time"] if r["solved_at"] is not None else math.inf
            r["steps"] = r["solved_at"] if r["solved_at"] is not None else math.inf
            pair[lib] = r
        log(f"  solve seed {seed}: pglab {_solve_str(pair['pglab'])} | SB3 {_solve_str(pair['sb3'])}")
        rows.append(pair)
    out: dict = {"cap": cap, "seeds": seeds, "runs": rows}
    for lib in ("pglab", "sb3"):
        out[f"{lib}_wall_s"] = summary([r[lib]["wall_s"] for r in rows])
        out[f"{lib}_steps"] = summary([r[lib]["steps"] for r in rows])
        out[f"{lib}_unsolved"] = sum(r[lib]["solved_at"] is None for r in rows)
    out["time_ratio"] = out["pglab_wall_s"]["median"] / out["sb3_wall_s"]["median"]
    out["steps_ratio"] = out["pglab_steps"]["median"] / out["sb3_steps"]["median"]
    return out


def _solve_str(r: dict) -> str:
    if r["solved_at"] is None:
        return f"unsolved after {r['env_steps']:,} steps ({r['end_time'] - r['launch_time']:.1f} s)"
    return f"{r['wall_s']:.1f} s, {r['solved_at']:,} steps"


def startup(repeats: int) -> dict:
    rows = []
    for i in range(repeats):
        pair = {}
        for lib, argv in (("pglab", STARTUP_ARGS), ("sb3", ["--sb3"])):
            r = run_child([str(HERE / "first_step.py"), *argv], timeout=300)
            r["startup_s"] = r["first_step_time"] - r["launch_time"]
            pair[lib] = r
        log(f"  start-up #{i}: pglab {pair['pglab']['startup_s']:.2f} s to first env step "
            f"({pair['pglab']['peak_rss_mb']:.0f} MB peak) | SB3 {pair['sb3']['startup_s']:.2f} s "
            f"({pair['sb3']['peak_rss_mb']:.0f} MB peak)")
        rows.append(pair)
    return {
        "runs": rows,
        "pglab_s": summary([r["pglab"]["startup_s"] for r in rows]),
        "sb3_s": summary([r["sb3"]["startup_s"] for r in rows]),
        "pglab_rss_mb": summary([r["pglab"]["peak_rss_mb"] for r in rows]),
        "sb3_rss_mb": summary([r["sb3"]["peak_rss_mb"] for r in rows]),
    }


# -- report ----------------------------------------------------------------------------------------------
def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**pass**" if ok else "**miss**")


def markdown(res: dict) -> str:
    meta = res["meta"]
    lines = [
        "# Speed: pglab vs Stable-Baselines3",
        "",
        f"Command: `{meta['command']}` (what `make bench` runs; add `ARGS=--quick` for a smoke run).  ",
        f"Machine: {meta['machine']}; load average at start {meta['load_start']}, at end {meta['load_end']}; "
        f"total {meta['elapsed_s']:.0f} s.  ",
        f"Versions: {meta['versions']}. Every job ran in a fresh subprocess with torch.set_num_threads(1).  ",
        "Figures: median over repeats/seeds, (min–max) in brackets; ratios are medians of side-by-side pairs.",
        "",
        "| benchmark | pglab | SB3 | pglab / SB3 | target | result |",
        "|---|---|---|---|---|---|",
    ]
    t = res.get("throughput")
    if t:
        r = t["ratio"]
        lines.append(f"| 1. throughput, PPO CartPole-v1 CleanRL config, env steps/s ({t['steps']:,} steps) | "
                     f"{fmt(t['pglab_sps'])} | {fmt(t['sb3_sps'])} | {fmt(r, 2, '×')} | ≥ 2.5× | "
                     f"{verdict(r['median'] >= TARGETS['throughput'])} |")
        if t["pglab_defaults_sps"]["values"]:
            d = t["pglab_defaults_sps"]
            lines.append(f"| … pglab as shipped (periodic greedy eval + checkpoints on), env steps/s | {fmt(d)} | "
                         f"{fmt(t['sb3_sps'])} | {_ratio(d['median'] / t['sb3_sps']['median'])} | | |")
        lines.append(f"| … share of training time spent collecting | {fmt(t['pglab_collect_share'], 2)} | "
                     f"{fmt(t['sb3_collect_share'], 2)} | | | |")
    s = res.get("solve")
    if s:
        time_ok = s["time_ratio"] <= TARGETS["solve_time"]
        steps_ok = s["steps_ratio"] <= TARGETS["solve_steps"] and s["pglab_unsolved"] <= s["sb3_unsolved"]
        lines.append(f"| 2. time to solve (launch → mean of last 20 returns ≥ 475), s | {fmt(s['pglab_wall_s'], 1)} | "
                     f"{fmt(s['sb3_wall_s'], 1)} | {_ratio(s['time_ratio'])} | ≤ 0.5× | {verdict(time_ok)} |")
        lines.append(f"| … env steps to solve | {fmt(s['pglab_steps'])} | {fmt(s['sb3_steps'])} | "
                     f"{_ratio(s['steps_ratio'])} | ≤ 1× (no worse) | {verdict(steps_ok)} |")
        n = len(s["seeds"])
        lines.append(f"| … unsolved within {s['cap']:,} steps | {s['pglab_unsolved']}/{n} | {s['sb3_unsolved']}/{n} | "
                     "| | |")
    c = res.get("collection")
    if c:
        lines.append(f"| 3. collection only (act + env step), ppo preset, env steps/s | {fmt(c['collect_sps'])} | "
                     "| | | |")
        lines.append(f"| … full training, ppo preset, env steps/s | {fmt(c['train_sps'])} | | | | |")
        lines.append(f"| … full training / collection only | {fmt(c['ratio'], 2)} | | | ≥ 0.50 | "
                     f"{verdict(c['ratio']['median'] >= TARGETS['train_vs_collect'])} |")
    u = res.get("startup")
    if u:
        lines.append(f"| 4. start-up: launch → first env step, s | {fmt(u['pglab_s'], 2)} | {fmt(u['sb3_s'], 2)} | "
                     f"{_ratio(u['pglab_s']['median'] / u['sb3_s']['median'])} | ≤ 4 s | "
                     f"{verdict(u['pglab_s']['median'] <= TARGETS['startup_s'])} |")
        lines.append(f"| … peak RSS, start-up run ({STARTUP_ARGS[-1]}), MB | {fmt(u['pglab_rss_mb'])} | "
                     f"{fmt(u['sb3_rss_mb'])} | {_ratio(u['pglab_rss_mb']['median'] / u['sb3_rss_mb']['median'])} "
                     "| | |")
    if t:
        lines.append(f"| … peak RSS, throughput run, MB | {fmt(t['pglab_rss_mb'])} | {fmt(t['sb3_rss_mb'])} | "
                     f"{_ratio(t['pglab_rss_mb']['median'] / t['sb3_rss_mb']['median'])} | | |")
    lines += ["", "## What ran", ""] + [f"- {line}" for line in how_it_ran(res)]
    return "\n".join(lines) + "\n"


def _ratio(x: float) -> str:
    return "n/a" if math.isnan(x) or math.isinf(x) else f"{x:.2f}×"


def how_it_ran(res: dict) -> list[str]:
    out = []
    t, s, c, u = (res.get(k) for k in ("throughput", "solve", "collection", "startup"))
    if t:
        out.append(f"throughput ({len(t['runs'])} pairs, {t['steps']:,} env steps each; SPS = real transitions / "
                   f"time in `trainer.fit` or `model.learn`): pglab `{' '.join(PGLAB_THROUGHPUT)} "
                   f"total_env_steps={t['steps']}` (the 'as shipped' row drops the last two "
                   f"overrides); SB3 `PPO('MlpPolicy', make_vec_env('CartPole-v1', 4), "
                   f"{_kw(SB3_CLEANRL)})`.")
    if s:
        out.append(f"time to solve (seeds {s['seeds']}, cap {s['cap']:,} env steps = both configs' tuned budget, "
                   "so the lr schedules are the tuned ones; the running mean is checked once per 256-step rollout "
                   f"in both): pglab `{' '.join(PGLAB_PPO)}` with SolveTracker(threshold=475, stop_when_solved=True); "
                   f"SB3 PPO with rl-zoo3's CartPole-v1 hyperparameters `{_kw(SB3_ZOO)}` (lin_x = x · "
                   "progress_remaining) and a callback on Monitor's episode returns. Wall-clock counts from the "
                   "subprocess launch: interpreter start-up and imports included.")
    if c:
        out.append(f"collection ({len(c['runs'])} repeats): pglab `{' '.join(PGLAB_PPO)}` (8 envs × 32 steps); "
                   f"`SegmentCollector(envs, 32, …).collect(*module.rollout_policy())` under torch.inference_mode "
                   f"for {c['collect_steps']:,} env steps after 3 warm-up calls, vs `trainer.fit` of the same preset "
                   f"for {c['train_steps']:,} env steps.")
    if u:
        out.append(f"start-up ({len(u['runs'])} pairs): `python benchmarks/first_step.py {' '.join(STARTUP_ARGS)}` "
                   "(= `python -m pglab.train …` with CartPole's step wrapped to timestamp its first call) and "
                   "`python benchmarks/first_step.py --sb3` (SB3 PPO, rl-zoo3 settings, learn(256)); time from "
                   "the parent's launch to the first CartPole step. Peak RSS is each child's ru_maxrss (wait4).")
    return out


def _kw(d: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in d.items())
