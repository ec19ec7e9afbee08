"""Speed benchmarks, pglab side by side with Stable-Baselines3 (the parent side; the measured code is in
``speed_jobs.py`` and ``first_step.py``, each job in a fresh subprocess).

startup      seconds from process launch to the first env step, ``import lightning`` alone, and peak RSS
updates      µs per PPO update (benchmarks/update_cost.py): autograd through the reference loss, lean
throughput   env steps/s of full PPO training, pglab vs SB3 on the same settings, timing ``trainer.fit`` /
             ``model.learn`` only: CartPole-v1 (CleanRL ppo.py), Pendulum-v1 (rl-zoo3), HalfCheetah-v5 (CleanRL
             ppo_continuous_action)
shipped      pglab at the CleanRL CartPole settings with its periodic eval and checkpoints on
collection   pglab's rollout collection alone (act + env step) vs full training, both at the ppo preset, and
             Lightning's per-rollout cost beyond collection and updates
solve        wall-clock from process launch (imports count) until the mean of the last 20 episode returns
             ≥ 475: pglab ``experiment=cartpole_fast`` and ``algo=ppo`` vs SB3 PPO with rl-zoo3's CartPole settings
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

from speed_jobs import PGLAB_BARE, PGLAB_CLEANRL, PGLAB_HALFCHEETAH, PGLAB_PENDULUM, SB3_CASES, SB3_ZOO

HERE = Path(__file__).resolve().parent
STARTUP_ARGS = ["algo=ppo", "logger=none", "trainer.enable_progress_bar=false", "total_env_steps=256"]
PGLAB_THROUGHPUT = PGLAB_CLEANRL + PGLAB_BARE
PGLAB_PPO = ["algo=ppo", *PGLAB_BARE]
# the wall-clock CartPole preset (conf/experiment/cartpole_fast.yaml) races rl-zoo3's settings too
PGLAB_FAST = ["experiment=cartpole_fast", *PGLAB_BARE]
# throughput cases: (label, pglab overrides, env steps per run, quick-run steps, target pglab/SB3)
CASES = {
    "cartpole_cleanrl": ("PPO CartPole-v1, CleanRL ppo.py settings", PGLAB_THROUGHPUT, 30_000, 8_192, 2.5),
    "pendulum_zoo": ("PPO Pendulum-v1, rl-zoo3 settings", PGLAB_PENDULUM + PGLAB_BARE, 12_288, 4_096, 2.0),
    "halfcheetah_cleanrl": ("PPO HalfCheetah-v5, CleanRL ppo_continuous_action settings",
                            PGLAB_HALFCHEETAH + PGLAB_BARE, 6_144, 2_048, 1.5),
}
TARGETS = {"solve_time": 0.5, "solve_steps": 1.0, "update_speedup": 3.0, "startup_own_s": 0.5}


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
def throughput(repeats: int, quick: bool = False, cases: list[str] | None = None) -> dict:
    """Env steps/s of full training, pglab vs SB3 on the same settings, interleaved pairs per case."""
    out = {}
    for case in cases or list(CASES):
        label, overrides, steps, quick_steps, target = CASES[case]
        steps = quick_steps if quick else steps
        try:
            rows = []
            for i in range(repeats):  # interleaved pairs, so slow phases of a loaded machine hit both
                pg = job("pglab_train", {"overrides": overrides, "steps": steps, "seed": i})
                sb = job("sb3_train", {"case": case, "steps": steps, "seed": i})
                log(f"  {case} #{i}: pglab {pg['sps']:,.0f} env steps/s ({pg['env_steps']} steps, "
                    f"{pg['train_s']:.1f} s, {pg['updates']} {pg['update_path']} updates) | SB3 {sb['sps']:,.0f} "
                    f"env steps/s ({sb['env_steps']} steps, {sb['train_s']:.1f} s) | "
                    f"ratio {pg['sps'] / sb['sps']:.2f}x")
                rows.append({"pglab": pg, "sb3": sb})
        except RuntimeError as err:  # e.g. MuJoCo not installed: report it, run the rest
            log(f"  {case}: could not run ({str(err).splitlines()[-1]})")
            out[case] = {"label": label, "error": str(err).splitlines()[-1], "target": target, "steps": steps}
            continue
        out[case] = {
            "label": label, "steps": steps, "target": target, "runs": rows,
            "pglab_sps": summary([r["pglab"]["sps"] for r in rows]),
            "sb3_sps": summary([r["sb3"]["sps"] for r in rows]),
            "ratio": summary([r["pglab"]["sps"] / r["sb3"]["sps"] for r in rows]),
            "pglab_collect_share": summary([r["pglab"]["collect_s"] / r["pglab"]["train_s"] for r in rows]),
            "sb3_collect_share": summary([r["sb3"]["collect_s"] / r["sb3"]["train_s"] for r in rows]),
            "pglab_update_share": summary([r["pglab"]["update_s"] / r["pglab"]["train_s"] for r in rows]),
            "pglab_rss_mb": summary([r["pglab"]["peak_rss_mb"] for r in rows]),
            "sb3_rss_mb": summary([r["sb3"]["peak_rss_mb"] for r in rows]),
        }
    return out


def shipped(repeats: int, steps: int) -> dict:
    """pglab as shipped (periodic greedy eval + checkpoints on) at the CleanRL CartPole settings."""
    runs = [job("pglab_train", {"overrides": PGLAB_CLEANRL, "steps": steps, "seed": i}) for i in range(repeats)]
    for i, r in enumerate(runs):
        log(f"  as shipped #{i}: {r['sps']:,.0f} env steps/s")
    return {"steps": steps, "runs": runs, "pglab_sps": summary([r["sps"] for r in runs])}


def update_cost(quick: bool) -> dict:
    """µs per PPO update (CartPole and Pendulum-like, 128 rows): autograd, lean."""
    figures = job("update_cost", {"reps": 5 if quick else 15, "updates": 40 if quick else 100})["figures"]
    for case, variants in figures.items():
        log(f"  {case}: " + " | ".join(f"{k} {v['us']:.0f} µs ({v['operator_calls']:.0f} ops)"
                                       for k, v in variants.items()))
    return figures


def collection(repeats: int, collect_steps: int, train_steps: int) -> dict:
    rows = []
    for i in range(repeats):
        col = job("pglab_collect", {"overrides": PGLAB_PPO, "steps": collect_steps, "seed": i})
        tr = job("pglab_train", {"overrides": PGLAB_PPO, "steps": train_steps, "seed": i})
        # what a Lightning epoch costs beyond the DataModule's rollout (collection + advantages) and the module's
        # training step (the rollout's updates): loop bookkeeping, hooks, dataloader set-up, callbacks, loggers
        tr["overhead_ms"] = 1e3 * (tr["train_s"] - tr["collect_s"] - tr["update_s"]) / tr["iterations"]
        log(f"  collection #{i}: collection only {col['sps']:,.0f} env steps/s | full training {tr['sps']:,.0f} "
            f"env steps/s (collection {tr['collect_s'] / tr['train_s']:.0%}, updates "
            f"{tr['update_s'] / tr['train_s']:.0%}, the rest {tr['overhead_ms']:.1f} ms per rollout) | "
            f"ratio {tr['sps'] / col['sps']:.0%}")
        rows.append({"collect": col, "train": tr})
    return {
        "collect_steps": collect_steps, "train_steps": train_steps, "runs": rows,
        "collect_sps": summary([r["collect"]["sps"] for r in rows]),
        "train_sps": summary([r["train"]["sps"] for r in rows]),
        "ratio": summary([r["train"]["sps"] / r["collect"]["sps"] for r in rows]),
        "train_collect_share": summary([r["train"]["collect_s"] / r["train"]["train_s"] for r in rows]),
        "train_update_share": summary([r["train"]["update_s"] / r["train"]["train_s"] for r in rows]),
        "overhead_ms": summary([r["train"]["overhead_ms"] for r in rows]),
    }


def solve(seeds: list[int], cap: int) -> dict:
    rows = []
    runners = (("pglab", "pglab_solve", PGLAB_PPO), ("pglab_fast", "pglab_solve", PGLAB_FAST),
               ("sb3", "sb3_solve", None))
    for seed in seeds:
        pair = {}
        for lib, name, overrides in runners:
            r = job(name, {"overrides": overrides, "seed": seed, "cap": cap})
            r["wall_s"] = r["solved_time"] - r["launch_time"] if r["solved_at"] is not None else math.inf
            r["steps"] = r["solved_at"] if r["solved_at"] is not None else math.inf
            pair[lib] = r
        log(f"  solve seed {seed}: pglab ppo {_solve_str(pair['pglab'])} | pglab cartpole_fast "
            f"{_solve_str(pair['pglab_fast'])} | SB3 {_solve_str(pair['sb3'])}")
        rows.append(pair)
    out: dict = {"cap": cap, "seeds": seeds, "runs": rows}
    for lib, _, _ in runners:
        out[f"{lib}_wall_s"] = summary([r[lib]["wall_s"] for r in rows])
        out[f"{lib}_steps"] = summary([r[lib]["steps"] for r in rows])
        out[f"{lib}_unsolved"] = sum(r[lib]["solved_at"] is None for r in rows)
    for lib in ("pglab", "pglab_fast"):
        out[f"{lib}_time_ratio"] = out[f"{lib}_wall_s"]["median"] / out["sb3_wall_s"]["median"]
        out[f"{lib}_steps_ratio"] = out[f"{lib}_steps"]["median"] / out["sb3_steps"]["median"]
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
        lightning = job("import_lightning", {})
        pair["lightning_s"] = lightning["imported_time"] - lightning["launch_time"]
        pair["pglab_own_s"] = pair["pglab"]["startup_s"] - pair["lightning_s"]
        log(f"  start-up #{i}: pglab {pair['pglab']['startup_s']:.2f} s to first env step "
            f"({pair['pglab']['peak_rss_mb']:.0f} MB peak; `import lightning` alone {pair['lightning_s']:.2f} s) "
            f"| SB3 {pair['sb3']['startup_s']:.2f} s ({pair['sb3']['peak_rss_mb']:.0f} MB peak)")
        rows.append(pair)
    return {
        "runs": rows,
        "pglab_s": summary([r["pglab"]["startup_s"] for r in rows]),
        "lightning_s": summary([r["lightning_s"] for r in rows]),
        "pglab_own_s": summary([r["pglab_own_s"] for r in rows]),
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
    for n, t in enumerate((res.get("throughput") or {}).values(), start=1):
        if "error" in t:
            lines.append(f"| {n}. throughput, {t['label']}, env steps/s | not run: {t['error']} | | | "
                         f"≥ {t['target']}× | n/a |")
            continue
        r = t["ratio"]
        lines.append(f"| {n}. throughput, {t['label']}, env steps/s ({t['steps']:,} steps) | {fmt(t['pglab_sps'])} | "
                     f"{fmt(t['sb3_sps'])} | {fmt(r, 2, '×')} | ≥ {t['target']}× | "
                     f"{verdict(r['median'] >= t['target'])} |")
        lines.append(f"| … share of training time collecting / updating | {fmt(t['pglab_collect_share'], 2)} / "
                     f"{fmt(t['pglab_update_share'], 2)} | {fmt(t['sb3_collect_share'], 2)} / – | | | |")
    d = res.get("shipped")
    cartpole = (res.get("throughput") or {}).get("cartpole_cleanrl", {})
    if d and "sb3_sps" in cartpole:
        lines.append(f"| … CartPole, pglab as shipped (periodic greedy eval + checkpoints on), env steps/s | "
                     f"{fmt(d['pglab_sps'])} | {fmt(cartpole['sb3_sps'])} | "
                     f"{_ratio(d['pglab_sps']['median'] / cartpole['sb3_sps']['median'])} | | |")
    s = res.get("solve")
    if s:
        time_ok = s["pglab_fast_time_ratio"] <= TARGETS["solve_time"]
        lines.append(f"| time to solve CartPole-v1 (launch → mean of last 20 returns ≥ 475), s: pglab "
                     f"`experiment=cartpole_fast` | {fmt(s['pglab_fast_wall_s'], 1)} | {fmt(s['sb3_wall_s'], 1)} | "
                     f"{_ratio(s['pglab_fast_time_ratio'])} | ≤ 0.5× | {verdict(time_ok)} |")
        lines.append(f"| … pglab `algo=ppo` (rl-zoo3's settings) | {fmt(s['pglab_wall_s'], 1)} | "
                     f"{fmt(s['sb3_wall_s'], 1)} | {_ratio(s['pglab_time_ratio'])} | | |")
        for lib, name in (("pglab_fast", "cartpole_fast"), ("pglab", "algo=ppo")):
            ok = s[f"{lib}_steps_ratio"] <= TARGETS["solve_steps"] and s[f"{lib}_unsolved"] <= s["sb3_unsolved"]
            target = "≤ 1× (no worse)" if lib == "pglab_fast" else ""
            lines.append(f"| … env steps to solve, pglab {name} | {fmt(s[f'{lib}_steps'])} | {fmt(s['sb3_steps'])} | "
                         f"{_ratio(s[f'{lib}_steps_ratio'])} | {target} | "
                         f"{verdict(ok) if lib == 'pglab_fast' else ''} |")
        n = len(s["seeds"])
        lines.append(f"| … unsolved within {s['cap']:,} steps (cartpole_fast, ppo / SB3) | "
                     f"{s['pglab_fast_unsolved']}/{n}, {s['pglab_unsolved']}/{n} | {s['sb3_unsolved']}/{n} | | | |")
    u = res.get("updates")
    if u:
        for case, v in u.items():
            lean, autograd = v["lean"], v["autograd"]
            ok = lean["cheaper_than_autograd"] >= TARGETS["update_speedup"]
            lines.append(f"| per-update µs, {case}, 128-row minibatch: lean (autograd) | "
                         f"{lean['us']:.0f} ({lean['min']:.0f}–{lean['max']:.0f}); autograd {autograd['us']:.0f} | | "
                         f"{lean['cheaper_than_autograd']:.2f}× cheaper | ≥ 3× cheaper | {verdict(ok)} |")
            lines.append(f"| … operator calls per update (profiler events) | {lean['operator_calls']:.0f}; autograd "
                         f"{autograd['operator_calls']:.0f} | | | | |")
    c = res.get("collection")
    if c:
        lines.append(f"| collection only (act + env step), ppo preset, env steps/s | {fmt(c['collect_sps'])} | "
                     "| | | |")
        lines.append(f"| … full training, ppo preset, env steps/s (/ collection only) | {fmt(c['train_sps'])} "
                     f"({fmt(c['ratio'], 2)}) | | | | |")
        lines.append(f"| … Lightning's per-rollout cost beyond collection and updates, ms | {fmt(c['overhead_ms'], 1)} "
                     "| | | | |")
    st = res.get("startup")
    if st:
        own_ok = st["pglab_own_s"]["median"] <= TARGETS["startup_own_s"]
        lines.append(f"| start-up beyond `import lightning` (launch → first env step, minus the import), s | "
                     f"{fmt(st['pglab_own_s'], 2)} | | | ≤ 0.5 s | {verdict(own_ok)} |")
        lines.append(f"| … launch → first env step, s (`import lightning` alone) | {fmt(st['pglab_s'], 2)} "
                     f"({fmt(st['lightning_s'], 2)}) | {fmt(st['sb3_s'], 2)} | "
                     f"{_ratio(st['pglab_s']['median'] / st['sb3_s']['median'])} | | |")
        lines.append(f"| … peak RSS, start-up run ({STARTUP_ARGS[-1]}), MB | {fmt(st['pglab_rss_mb'])} | "
                     f"{fmt(st['sb3_rss_mb'])} | {_ratio(st['pglab_rss_mb']['median'] / st['sb3_rss_mb']['median'])} "
                     "| | |")
    lines += ["", "## What ran", ""] + [f"- {line}" for line in how_it_ran(res)]
    return "\n".join(lines) + "\n"


def _ratio(x: float) -> str:
    return "n/a" if math.isnan(x) or math.isinf(x) else f"{x:.2f}×"


def how_it_ran(res: dict) -> list[str]:
    out = []
    t, s, c, u = (res.get(k) for k in ("throughput", "solve", "collection", "startup"))
    for case, tc in (t or {}).items():
        if "runs" not in tc:
            continue
        env_id, normalize, hparams = SB3_CASES[case]
        out.append(f"throughput {case} ({len(tc['runs'])} pairs, {tc['steps']:,} env steps each; SPS = real "
                   f"transitions / time in `trainer.fit` or `model.learn`): pglab `{' '.join(CASES[case][1])} "
                   f"total_env_steps={tc['steps']}`; SB3 `PPO('MlpPolicy', "
                   f"{'VecNormalize(' if normalize else ''}make_vec_env({env_id!r}, {hparams['n_envs']})"
                   f"{', ' + _kw(normalize) + ')' if normalize else ''}, {_kw(hparams)})`.")
    if res.get("shipped"):
        out.append(f"as shipped: pglab `{' '.join(PGLAB_CLEANRL)}` (periodic greedy eval and checkpoints on).")
    if s:
        out.append(f"time to solve (seeds {s['seeds']}, cap {s['cap']:,} env steps; the running mean is checked once "
                   f"per rollout in all three): pglab `{' '.join(PGLAB_FAST)}` and `{' '.join(PGLAB_PPO)}` with "
                   f"SolveTracker(threshold=475, stop_when_solved=True); SB3 PPO with rl-zoo3's CartPole-v1 "
                   f"hyperparameters `{_kw(SB3_ZOO)}` (lin_x = x · progress_remaining) and a callback on Monitor's "
                   "episode returns. Wall-clock counts from the subprocess launch: interpreter start-up and imports "
                   "included.")
    if res.get("updates"):
        out.append("per-update µs: `benchmarks/update_cost.py` in a fresh process (interleaved rounds, thread CPU "
                   "time, 1 thread): one PPO-clip update of a 128-row minibatch through 64-64 tanh separate trunks "
                   "with CleanRL's coefficients; 'autograd' is the reference loss's backward, clip_grad_norm_ and "
                   "Adam.step.")
    if c:
        out.append(f"collection ({len(c['runs'])} repeats): pglab `{' '.join(PGLAB_PPO)}` (8 envs × 32 steps); "
                   f"`SegmentCollector(envs, 32, …).collect(*module.rollout_policy())` under torch.inference_mode "
                   f"for {c['collect_steps']:,} env steps after 3 warm-up calls, vs `trainer.fit` of the same preset "
                   f"for {c['train_steps']:,} env steps; Lightning's per-rollout cost = (fit − DataModule rollouts − "
                   "training steps) / rollouts.")
    if u:
        out.append(f"start-up ({len(u['runs'])} repeats): `python benchmarks/first_step.py {' '.join(STARTUP_ARGS)}` "
                   "(= `python -m pglab.run.train …` with CartPole's step wrapped to timestamp its first call), "
                   "`python benchmarks/first_step.py --sb3` (SB3 PPO, rl-zoo3 settings, learn(256)) and "
                   "`python -c 'import lightning'` (timestamped after the import); times from the parent's launch. "
                   "Peak RSS is each child's ru_maxrss (wait4).")
    return out


def _kw(d: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in d.items())
