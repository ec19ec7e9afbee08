"""The zoo: every tuned ``experiment=`` preset on N seeds, Stable-Baselines3 at the same settings, published numbers.

For each env: pglab trains ``experiment=<preset>`` on seeds 0..N-1 (one process per run, one at a time, logger=csv);
with ``--peers`` SB3's PPO trains at the *same* settings, translated from the composed pglab config (so the two can
never drift apart), on the same seeds. Two final scores per run, both libraries scored the same way:

- **train**: the mean return of the last 20 training episodes (``rollout/return_mean20``, logged per rollout),
  averaged over the last 10% of the run's rollouts (``pglab.tools.plot.final_score``: one rollout's 20 episodes
  alone swing by tens of percent on Pendulum);
- **eval**: the deterministic policy over 10 episodes after the last update, observation statistics frozen — how
  rl-zoo3's ``benchmark.md`` reports (its ``mean_reward`` is a deterministic evaluation of the trained agent).

Per env the table holds the budget (marked *reduced* with the reference's own budget beside it when a run was
shortened), the IQM and 95% bootstrap CI over seeds (``pglab.tools.plot``), and the published PPO numbers with their
source. Learning curves (IQM over seeds of the train score, with the bootstrap band) go to ``zoo-<env>.png``.

Resumable: a run whose ``result.json`` exists is never redone; an interrupted pglab run resumes from its
``checkpoints/last.ckpt`` (``ckpt_path=``), an interrupted SB3 run from its periodic ``last.zip``. Runs live under
``--runs`` (outside the repo by default for long studies); ``--report-only`` rebuilds the tables from what is there.

  python benchmarks/zoo.py --envs pendulum acrobot --seeds 5 --peers
  python benchmarks/zoo.py --envs hopper --seeds 3 --peers --budget hopper=200000   # a reduced row
  python benchmarks/zoo.py --report-only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
RL_ZOO_BENCH = ("rl-zoo3 benchmark.md, PPO row (github.com/DLR-RM/rl-baselines3-zoo/blob/0088472/benchmark.md; one "
                "agent, deterministic eval)")
CLEANRL_PPO = ("CleanRL docs.cleanrl.dev/rl-algorithms/ppo (vwxyzjn/cleanrl@7a96de2 docs/rl-algorithms/ppo.md; mean "
               "training episodic return over seeds, ± std)")
EVAL_EPISODES = 10
WINDOW = 20  # training episodes in the "train" score (pglab's rollout/return_mean20)


@dataclass
class Reference:
    score: float
    spread: float          # the source's ± (std over episodes or seeds, as the source reports it)
    budget: int
    source: str
    env_version: str       # the env id the source ran (an older version than v5/v3 for several)


@dataclass
class Entry:
    preset: str
    env_id: str
    budget: int                        # the preset's (= the reference's) budget
    refs: list[Reference] = field(default_factory=list)
    needs: str | None = None           # the module the env needs (pytest.importorskip / a clear skip here)


ZOO: dict[str, Entry] = {
    "acrobot": Entry("acrobot_ppo", "Acrobot-v1", 1_000_000, [
        Reference(-73.506, 18.201, 1_000_000, RL_ZOO_BENCH, "Acrobot-v1"),
        Reference(-86.36, 1.32, 500_000, CLEANRL_PPO + ", ppo.py defaults (not these settings)", "Acrobot-v1")]),
    "mountaincar": Entry("mountaincar_ppo", "MountainCar-v0", 1_000_000, [
        Reference(-110.423, 19.473, 1_000_000, RL_ZOO_BENCH, "MountainCar-v0")]),
    "mountaincar_continuous": Entry("mountaincar_continuous_ppo", "MountainCarContinuous-v0", 20_000, [
        Reference(88.343, 2.572, 20_000, RL_ZOO_BENCH + " — with gSDE, which pglab lacks",
                  "MountainCarContinuous-v0")]),
    "pendulum": Entry("pendulum_ppo", "Pendulum-v1", 100_000, [
        Reference(-172.225, 104.159, 100_000, RL_ZOO_BENCH + " — with gSDE, which pglab lacks", "Pendulum-v1")]),
    "lunarlander": Entry("lunarlander_ppo", "LunarLander-v3", 1_000_000, [
        Reference(242.119, 31.823, 1_000_000, RL_ZOO_BENCH, "LunarLander-v2")], needs="Box2D"),
    "lunarlander_continuous": Entry("lunarlander_continuous_ppo", "LunarLanderContinuous-v3", 1_000_000, [
        Reference(270.863, 32.072, 1_000_000, RL_ZOO_BENCH, "LunarLanderContinuous-v2")], needs="Box2D"),
    "bipedalwalker": Entry("bipedalwalker_ppo", "BipedalWalker-v3", 5_000_000, [
        Reference(213.299, 129.490, 5_000_000, RL_ZOO_BENCH, "BipedalWalker-v3")], needs="Box2D"),
    "halfcheetah": Entry("halfcheetah_ppo", "HalfCheetah-v5", 1_000_000, [
        Reference(5819.099, 663.530, 1_000_000, RL_ZOO_BENCH + " (ortho_init=False)", "HalfCheetah-v3"),
        Reference(1442.64, 46.03, 1_000_000, CLEANRL_PPO + ", ppo_continuous_action.py (not these settings)",
                  "HalfCheetah-v4")], needs="mujoco"),
    "hopper": Entry("hopper_ppo", "Hopper-v5", 1_000_000, [
        Reference(2410.435, 10.026, 1_000_000, RL_ZOO_BENCH + " (ortho_init=False)", "Hopper-v3"),
        Reference(2382.86, 271.74, 1_000_000, CLEANRL_PPO + ", ppo_continuous_action.py (not these settings)",
                  "Hopper-v4")], needs="mujoco"),
    "walker2d": Entry("walker2d_ppo", "Walker2d-v5", 1_000_000, [
        Reference(3478.798, 821.708, 1_000_000, RL_ZOO_BENCH, "Walker2d-v3"),
        Reference(2287.95, 571.78, 1_000_000, CLEANRL_PPO + ", ppo_continuous_action.py (not these settings)",
                  "Walker2d-v4")], needs="mujoco"),
    "ant": Entry("ant_ppo", "Ant-v5", 1_000_000, [
        Reference(1327.158, 451.577, 1_000_000, RL_ZOO_BENCH, "Ant-v3")], needs="mujoco"),
    "breakout": Entry("atari_ppo", "ALE/Breakout-v5", 2_500_000, [
        Reference(414.66, 28.09, 2_500_000, CLEANRL_PPO + ", ppo_atari.py, 10M frames", "BreakoutNoFrameskip-v4"),
        Reference(398.033, 33.328, 2_500_000, RL_ZOO_BENCH + ", 10M frames", "BreakoutNoFrameskip-v4")],
        needs="ale_py"),
    "pong": Entry("pong_ppo", "ALE/Pong-v5", 2_500_000, [
        Reference(20.36, 0.20, 2_500_000, CLEANRL_PPO + ", ppo_atari.py, 10M frames", "PongNoFrameskip-v4"),
        Reference(20.989, 0.105, 2_500_000, RL_ZOO_BENCH + ", 10M frames", "PongNoFrameskip-v4")], needs="ale_py"),
}
# the order the default run goes in: cheapest first, so an interrupted study has the most rows
ORDER = ["pendulum", "mountaincar_continuous", "acrobot", "mountaincar", "lunarlander", "lunarlander_continuous",
         "hopper", "halfcheetah", "walker2d", "ant", "bipedalwalker", "pong", "breakout"]
assert sorted(ORDER) == sorted(ZOO)


# -- SB3 at pglab's settings --------------------------------------------------------------------------------
def compose(preset: str, overrides: list[str]):
    """The composed pglab config of ``experiment=<preset>`` (what the pglab run trains with)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from pglab.run.train import CONFIG_DIR

    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return hydra_compose("train", overrides=[f"experiment={preset}", *overrides])


def sb3_settings(cfg) -> dict:
    """SB3 ``PPO`` kwargs, ``VecNormalize`` kwargs and env id equal to a composed pglab PPO config.

    Refuses (ValueError naming the key) any setting SB3's PPO has no equivalent for, rather than run a different
    algorithm under the same name."""
    problems = []
    if cfg.collector.kind != "segments":
        problems.append(f"collector.kind={cfg.collector.kind} (SB3 collects n_steps × n_envs segments)")
    if cfg.surrogate._target_.rsplit(".", 1)[-1] != "Clip" or cfg.surrogate.get("eps_high") not in (None,):
        problems.append("surrogate (SB3's PPO is the symmetric clip)")
    if cfg.estimator._target_.rsplit(".", 1)[-1].lower().find("gae") < 0:
        problems.append(f"estimator {cfg.estimator._target_} (SB3 uses GAE)")
    if cfg.model._target_.split(".")[-2] != "ActorCritic" and "mlp" not in cfg.model._target_:
        problems.append(f"model {cfg.model._target_} (this translation covers the MLP actor-critic)")
    if cfg.model.get("shared", False):
        problems.append("model.shared=true")
    if cfg.env.wrappers or cfg.env.kwargs:
        problems.append("env.wrappers / env.kwargs")
    if cfg.env.max_episode_steps is not None:
        problems.append("env.max_episode_steps")
    if cfg.learner.get("clip_per_group"):
        problems.append("learner.clip_per_group")
    if problems:
        raise ValueError("SB3 has no equivalent of: " + "; ".join(problems) + ". Run this preset without --peers.")
    rows = cfg.env.num_envs * cfg.collector.num_steps
    if rows % cfg.learner.num_minibatches:
        raise ValueError(f"{rows} rows per rollout do not split into {cfg.learner.num_minibatches} equal minibatches")
    ppo = dict(n_steps=int(cfg.collector.num_steps), batch_size=rows // int(cfg.learner.num_minibatches),
               n_epochs=int(cfg.learner.epochs), gamma=float(cfg.gamma), gae_lambda=float(cfg.lam),
               clip_range=float(cfg.surrogate.eps_low), ent_coef=float(cfg.learner.ent_coef),
               vf_coef=float(cfg.learner.vf_coef), max_grad_norm=float(cfg.learner.max_grad_norm),
               normalize_advantage=bool(cfg.learner.normalize_advantages),
               target_kl=None if cfg.learner.target_kl is None else float(cfg.learner.target_kl),
               clip_range_vf=None if cfg.learner.value_clip is None else float(cfg.learner.value_clip),
               learning_rate=float(cfg.learner.lr),
               # linear decay to 0 over the run (pglab's anneal_lr) = rl-zoo3's lin_<lr>
               anneal_lr=bool(cfg.learner.anneal_lr),
               policy_kwargs=dict(net_arch=dict(pi=list(cfg.model.hidden), vf=list(cfg.model.hidden)),
                                  activation=str(cfg.model.activation), log_std_init=float(cfg.model.log_std_init),
                                  ortho_init=True))  # pglab always initialises orthogonally (√2 / 0.01 / 1)
    if float(cfg.learner.adam_eps) != 1e-5:
        raise ValueError(f"learner.adam_eps={cfg.learner.adam_eps}: SB3's PPO uses Adam eps 1e-5")
    norm = None
    if cfg.env.normalize_obs or cfg.env.normalize_reward:
        norm = dict(norm_obs=bool(cfg.env.normalize_obs), norm_reward=bool(cfg.env.normalize_reward),
                    clip_obs=float(cfg.env.clip_obs), clip_reward=float(cfg.env.clip_reward),
                    gamma=float(cfg.env.reward_gamma))
    return dict(env_id=str(cfg.env.id), n_envs=int(cfg.env.num_envs), ppo=ppo, normalize=norm)


def sb3_job(preset: str, seed: int, steps: int, run_dir: Path) -> None:
    """One SB3 run (in its own process): train, checkpoint every ~5% of the budget, evaluate, write result.json."""
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.vec_env import VecNormalize

    s = sb3_settings(compose(preset, [f"seed={seed}", f"total_env_steps={steps}"]))
    hp = dict(s["ppo"])
    anneal, lr0 = hp.pop("anneal_lr"), hp.pop("learning_rate")
    pk = dict(hp.pop("policy_kwargs"))
    pk["activation_fn"] = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}[pk.pop("activation")]
    lr = (lambda progress_remaining: progress_remaining * lr0) if anneal else lr0
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt, norm_file, curve_file = run_dir / "last.zip", run_dir / "vecnormalize.pkl", run_dir / "curve.jsonl"

    env = make_vec_env(s["env_id"], n_envs=s["n_envs"], seed=seed)
    if s["normalize"]:
        env = VecNormalize.load(str(norm_file), env) if ckpt.exists() else VecNormalize(env, **s["normalize"])
    if ckpt.exists():
        model = PPO.load(str(ckpt), env=env, device="cpu")
        # the episode window continues where it stopped (episodes lived in the saved curve)
        history = [json.loads(line) for line in curve_file.read_text().splitlines() if line.strip()]
        history = [h for h in history if h["env_steps"] <= model.num_timesteps]
        curve_file.write_text("".join(json.dumps(h) + "\n" for h in history))
        recent = history[-1]["window"] if history else []
    else:
        model = PPO("MlpPolicy", env, seed=seed, device="cpu", verbose=0, learning_rate=lr, policy_kwargs=pk, **hp)
        curve_file.write_text("")
        recent = []
    every = max(model.n_steps * model.n_envs, steps // 20)

    class Curve(BaseCallback):
        """Per rollout: the mean of the last 20 finished episodes (Monitor's info['episode']) — pglab's
        rollout/return_mean20 — appended to curve.jsonl; last.zip (+ VecNormalize stats) every ``every`` steps."""

        def __init__(self) -> None:
            super().__init__()
            self.window = list(recent)
            self.saved_at = model.num_timesteps

        def _on_step(self) -> bool:
            for info in self.locals["infos"]:
                if "episode" in info:
                    self.window = (self.window + [float(info["episode"]["r"])])[-WINDOW:]
            return True

        def _on_rollout_end(self) -> None:
            if self.window:
                with curve_file.open("a") as f:
                    f.write(json.dumps({"env_steps": int(self.num_timesteps),
                                        "return_mean20": float(np.mean(self.window)), "window": self.window}) + "\n")
            if self.num_timesteps - self.saved_at >= every:
                self.model.save(str(ckpt))
                if isinstance(env, VecNormalize):
                    env.save(str(norm_file))
                self.saved_at = self.num_timesteps

    cb = Curve()
    remaining = steps - model.num_timesteps
    if remaining > 0:
        model.learn(total_timesteps=remaining, callback=cb, reset_num_timesteps=not ckpt.exists())
    model.save(str(run_dir / "final.zip"))  # the trained agent, for looking into a result afterwards
    eval_env = make_vec_env(s["env_id"], n_envs=1, seed=seed + 10_000)
    if isinstance(env, VecNormalize):
        eval_env = VecNormalize(eval_env, training=False, norm_reward=False, **{k: v for k, v in s["normalize"].items()
                                                                               if k not in ("norm_reward",)})
        eval_env.obs_rms = env.obs_rms
    rewards, _ = evaluate_policy(model, eval_env, n_eval_episodes=EVAL_EPISODES, deterministic=True,
                                 return_episode_rewards=True)
    (run_dir / "result.json").write_text(json.dumps({
        "lib": "sb3", "preset": preset, "seed": seed, "env_steps": int(model.num_timesteps),
        "train_score": float(np.mean(cb.window)) if cb.window else math.nan,
        "eval_score": float(np.mean(rewards)), "settings": s}, indent=1))


# -- running --------------------------------------------------------------------------------------------------
def run_dir(runs: Path, env: str, lib: str, seed: int, steps: int) -> Path:
    return runs / env / f"{lib}-{steps}" / f"seed{seed}"


def _cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def launch(env: str, lib: str, seed: int, steps: int, runs: Path, log) -> dict | None:
    """Run one (env, lib, seed) unless its result.json exists; resume an interrupted one. Returns the result."""
    entry = ZOO[env]
    d = run_dir(runs, env, lib, seed, steps)
    done = d / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    d.mkdir(parents=True, exist_ok=True)
    if lib == "pglab":
        cfg = compose(entry.preset, [f"total_env_steps={steps}"])
        rollouts = math.ceil(steps / (cfg.env.num_envs * cfg.collector.num_steps))
        # the score is the final evaluation (run after the last epoch whatever the cadence): no periodic ones,
        # which on short-rollout presets would cost more env steps than training; ~20 checkpoints to resume from
        cmd = [sys.executable, "-m", "pglab.run.train", f"experiment={entry.preset}", f"seed={seed}",
               f"total_env_steps={steps}", "logger=csv", "trainer.enable_progress_bar=false", "torch_threads=1",
               f"eval.episodes={EVAL_EPISODES}", f"eval.num_envs={EVAL_EPISODES}",
               f"eval.every_n_epochs={rollouts + 1}",
               f"checkpoint.every_n_epochs={max(1, rollouts // 20)}", f"hydra.run.dir={d}"]
        last = d / "checkpoints" / "last.ckpt"
        if last.exists():
            cmd.append(f"ckpt_path={last}")
    else:
        cmd = [sys.executable, __file__, "--_sb3", entry.preset, str(seed), str(steps), str(d)]
    env_vars = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cpu0, t0 = _cpu_children(), time.time()
    with (d / "stdout.log").open("a") as out:
        rc = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, env=env_vars, cwd=ROOT)
    cpu, wall = _cpu_children() - cpu0, time.time() - t0
    spent = d / "cpu_s.json"
    prior = json.loads(spent.read_text()) if spent.exists() else {"cpu_s": 0.0, "wall_s": 0.0, "segments": 0}
    prior = {"cpu_s": prior["cpu_s"] + cpu, "wall_s": prior["wall_s"] + wall, "segments": prior["segments"] + 1}
    spent.write_text(json.dumps(prior))
    if rc != 0:
        log(f"  {env} {lib} seed {seed}: exit {rc} (see {d / 'stdout.log'}); it resumes on the next call")
        return None
    if lib == "pglab":
        result = pglab_result(d, entry.preset, seed)
        done.write_text(json.dumps(result, indent=1))
    result = json.loads(done.read_text())
    log(f"  {env} {lib} seed {seed}: train {result['train_score']:.1f}, eval {result['eval_score']:.1f}, "
        f"{prior['cpu_s']:.0f} CPU s")
    return result


def pglab_result(d: Path, preset: str, seed: int) -> dict:
    from pglab.tools.plot import read_curve

    metrics = d / "csv" / "metrics.csv"
    x, y = read_curve(metrics, "rollout/return_mean20", "env_steps")
    ex, ey = read_curve(metrics, "eval/return_mean", "env_steps")
    if not y.size or not ey.size:
        raise RuntimeError(f"{metrics}: no rollout/return_mean20 or eval/return_mean logged")
    return {"lib": "pglab", "preset": preset, "seed": seed, "env_steps": int(max(x[-1], ex[-1])),
            "train_score": float(y[-1]), "eval_score": float(ey[-1])}


def curve(lib: str, d: Path):
    import numpy as np

    if lib == "pglab":
        from pglab.tools.plot import read_curve

        return read_curve(d / "csv" / "metrics.csv", "rollout/return_mean20", "env_steps")
    rows = [json.loads(line) for line in (d / "curve.jsonl").read_text().splitlines() if line.strip()]
    return (np.array([r["env_steps"] for r in rows], dtype=float),
            np.array([r["return_mean20"] for r in rows], dtype=float))


# -- report ---------------------------------------------------------------------------------------------------
def _stat(scores: list[float]) -> dict | None:
    from pglab.tools.plot import bootstrap_ci, iqm

    if not scores:
        return None
    lo, hi = bootstrap_ci(scores, iqm)
    return {"n": len(scores), "iqm": iqm(scores), "ci": [lo, hi], "scores": scores}


def _fmt(st: dict | None) -> str:
    if st is None:
        return "—"
    ci = "" if math.isnan(st["ci"][0]) else f" [{st['ci'][0]:.1f}, {st['ci'][1]:.1f}]"
    return f"{st['iqm']:.1f}{ci} (n={st['n']})"


def collect(runs: Path, previous: dict | None = None) -> dict:
    """Every finished run under ``runs``, per env and budget: the statistics the table shows. ``previous``: an
    earlier ``zoo.json``'s envs; its rows for (env, budget) pairs with no runs here are kept as they were (a study
    resumed on another machine, or after its run folders were removed, does not lose committed results)."""
    from pglab.tools.plot import final_score

    previous = previous or {}
    out = {}
    for env in ORDER:
        entry = ZOO[env]
        budgets = sorted({int(p.name.split("-")[1]) for p in (runs / env).glob("*-*") if p.is_dir()},
                         reverse=True) if (runs / env).exists() else []
        rows = []
        for steps in budgets:
            row = {"budget": steps, "reference_budget": entry.budget, "reduced": steps < entry.budget}
            for lib in ("pglab", "sb3"):
                results, dirs, cpu = [], [], 0.0
                for d in sorted((runs / env / f"{lib}-{steps}").glob("seed*")):
                    if (d / "cpu_s.json").exists():
                        cpu += json.loads((d / "cpu_s.json").read_text())["cpu_s"]
                    if (d / "result.json").exists():
                        results.append(json.loads((d / "result.json").read_text()))
                        dirs.append(d)
                row[lib] = {"train": _stat([final_score(curve(lib, d)[1]) for d in dirs]),
                            "eval": _stat([r["eval_score"] for r in results]),
                            "seeds": [r["seed"] for r in results], "cpu_s": cpu} if results else None
            rows.append(row)
        here = {row["budget"] for row in rows if row["pglab"] or row["sb3"]}
        rows = [row for row in rows if row["budget"] in here]
        rows += [dict(row, kept_from_earlier_results=True) for row in previous.get(env, {}).get("runs", [])
                 if row["budget"] not in here]
        rows.sort(key=lambda row: row["budget"], reverse=True)
        out[env] = {"preset": entry.preset, "env_id": entry.env_id, "command":
                    f"python -m pglab.run.train experiment={entry.preset}",
                    "references": [vars(r) for r in entry.refs], "runs": rows}
    return out


_TOUCH = 1e-3


def verdict(row: dict, refs: list[dict]) -> str:
    """Issue 21's bar: IQM ≥ 90% of the published reference at its budget (a reduced row: ≥ SB3 at that budget,
    judged as overlapping-or-better CIs), and SB3 never better with a non-overlapping CI."""
    p, s = row.get("pglab"), row.get("sb3")
    if not p:
        return "not run"
    notes = []
    score = p["eval"]["iqm"]
    if not row["reduced"] and refs:
        ref = refs[0]["score"]
        bar = ref - 0.1 * abs(ref)
        notes.append(("meets" if score >= bar else "misses") + f" 90% of ref ({bar:.1f})")
    elif row["reduced"] and s:
        notes.append("reduced: eval IQM " + ("≥" if score >= s["eval"]["iqm"] else "<") + " SB3's")
    apart = []
    for key in ("eval", "train"):
        if s and s[key]["n"] >= 2 and p[key]["n"] >= 2:
            # touching bounds (e.g. every seed of both at MountainCarContinuous' −99.9 floor) are not "apart"
            if s[key]["ci"][0] > p[key]["ci"][1] + _TOUCH * (1 + abs(p[key]["ci"][1])):
                apart.append(f"SB3 better ({key}, CIs apart)")
            elif p[key]["ci"][0] > s[key]["ci"][1] + _TOUCH * (1 + abs(s[key]["ci"][1])):
                apart.append(f"pglab better ({key}, CIs apart)")
    if apart:
        notes += apart
    elif s and s["eval"]["n"] >= 2 and p["eval"]["n"] >= 2:
        notes.append("CIs overlap SB3's")
    return "; ".join(notes) or "—"


def write_report(runs: Path, results_dir: Path, log) -> dict:
    earlier = results_dir / "zoo.json"
    data = collect(runs, json.loads(earlier.read_text())["envs"] if earlier.exists() else None)
    lines = ["# The zoo: tuned presets, pglab vs SB3 at the same settings, and published PPO numbers", "",
             "Produced by `benchmarks/zoo.py` (`make zoo`). Scores: IQM over seeds with a 95% percentile-bootstrap CI "
             "(`pglab.tools.plot`); **eval** = deterministic policy, 10 episodes after the last update (how rl-zoo3's "
             "benchmark.md reports), **train** = mean of the last 20 training episodes, averaged over the last 10% of "
             "rollouts. SB3 runs the settings "
             "translated from the composed pglab config (`sb3_settings`), on the same seeds.", "",
             "| env | preset | budget | pglab eval | pglab train | SB3 eval | SB3 train | published PPO | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    total_cpu = 0.0
    sources: dict[str, int] = {}
    for env, d in data.items():
        refs = d["references"]
        tags = [sources.setdefault(r["source"], len(sources) + 1) for r in refs]
        pub = "<br>".join(f"{r['score']:.1f} ± {r['spread']:.1f} @{r['budget'] / 1e6:g}M ({r['env_version']}) [{t}]"
                          for r, t in zip(refs, tags, strict=True))
        if not d["runs"]:
            lines.append(f"| {d['env_id']} | `{d['preset']}` | {ZOO[env].budget:,} | not run: compute | | | | {pub} "
                         "| not run |")
            continue
        for row in d["runs"]:
            p, s = row["pglab"], row["sb3"]
            total_cpu += (p or {}).get("cpu_s", 0.0) + (s or {}).get("cpu_s", 0.0)
            budget = (f"{row['budget']:,} **reduced** (reference {row['reference_budget']:,})" if row["reduced"]
                      else f"{row['budget']:,}")
            lines.append(f"| {d['env_id']} | `{d['preset']}` | {budget} | {_fmt(p and p['eval'])} | "
                         f"{_fmt(p and p['train'])} | {_fmt(s and s['eval']) if s else 'not run'} | "
                         f"{_fmt(s and s['train']) if s else 'not run'} | {pub} | {verdict(row, refs)} |")
    lines += ["", "Sources of the published numbers:", ""] + [f"{n}. {src}" for src, n in sources.items()]
    lines += ["", f"CPU time of all runs listed (children's user + system): {total_cpu / 60:.1f} min.", "",
              "Published rows are one agent (rl-zoo3; ± = std over its evaluation episodes) or seeds (CleanRL; ± = "
              "std over seeds of the mean training return), often on older env versions (noted) — a yardstick, not a "
              "like-for-like comparison; the SB3 columns are the like-for-like one.",
              "Per-env learning curves: `zoo-<env>.png`."]
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "zoo.md").write_text("\n".join(lines) + "\n")
    (results_dir / "zoo.json").write_text(json.dumps({"envs": data, "cpu_s": total_cpu}, indent=1))
    plot_curves(runs, data, results_dir)
    log(f"wrote {results_dir / 'zoo.md'}, zoo.json and curves ({total_cpu / 60:.1f} CPU min in the runs)")
    return data


README_BEGIN, README_END = "<!-- zoo:begin (benchmarks/zoo.py --readme writes this section) -->", "<!-- zoo:end -->"


def readme_section(data: dict) -> str:
    """The README's "Tuned presets" table from zoo.json's data: env, command, budget, pglab, SB3, published."""
    lines = [README_BEGIN, "## Tuned presets", "",
             "PPO presets translated from rl-zoo3's `hyperparams/ppo.yml` (Pong, Breakout: CleanRL's `ppo_atari.py`), "
             "benchmarked by `make zoo` (`benchmarks/zoo.py`; full table, CIs and curves in "
             "[benchmarks/results/zoo.md](benchmarks/results/zoo.md)). Scores: IQM over seeds of the deterministic "
             "evaluation after the last update; SB3 trains the same settings on the same seeds.", "",
             "| env | command | budget | pglab | SB3 (same settings) | published PPO |", "|---|---|---|---|---|---|"]
    for env, d in data.items():
        ref = d["references"][0] if d["references"] else None
        pub = f"{ref['score']:.1f} @{ref['budget'] / 1e6:g}M ({ref['env_version']})" if ref else "—"
        cmd = f"`experiment={d['preset']}`"
        if not d["runs"]:
            lines.append(f"| {d['env_id']} | {cmd} | {ZOO[env].budget:,} | not run: compute | not run | {pub} |")
            continue
        row = d["runs"][0]
        p, sb = row["pglab"], row["sb3"]

        def cell(side):
            return "—" if not side else f"{side['eval']['iqm']:.1f} (n={side['eval']['n']})"
        budget = f"{row['budget']:,}" + (" (reduced)" if row["reduced"] else "")
        lines.append(f"| {d['env_id']} | {cmd} | {budget} | {cell(p)} | {cell(sb)} | {pub} |")
    lines += ["", README_END]
    return "\n".join(lines)


def write_readme(data: dict, readme: Path) -> None:
    text = readme.read_text()
    section = readme_section(data)
    if README_BEGIN in text:
        head, rest = text.split(README_BEGIN, 1)
        if README_END not in rest:
            raise ValueError(f"{readme}: {README_BEGIN!r} without {README_END!r}; fix the markers by hand")
        text = head + section + rest.split(README_END, 1)[1]
    elif "\n## Layout" in text:
        text = text.replace("\n## Layout", "\n" + section + "\n\n## Layout", 1)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    readme.write_text(text)


def plot_curves(runs: Path, data: dict, results_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pglab.tools.plot import Group, Run, aggregate_curves

    for env, d in data.items():
        for row in d["runs"][:1]:   # the largest budget run (rows kept from earlier results: their PNG stays)
            if row.get("kept_from_earlier_results"):
                continue
            fig, ax = plt.subplots(figsize=(6, 4))
            for lib, color in (("pglab", "C0"), ("sb3", "C1")):
                members = []
                for sd in sorted((runs / env / f"{lib}-{row['budget']}").glob("seed*")):
                    if (sd / "result.json").exists():
                        x, y = curve(lib, sd)
                        if x.size:
                            members.append(Run(sd, x, y))
                if not members:
                    continue
                g = aggregate_curves(Group(lib, members), points=100)
                ax.plot(g.grid, g.curve, color=color, label=f"{lib} (IQM of {len(members)} seeds)")
                ax.fill_between(g.grid, g.low, g.high, color=color, alpha=0.2)
            for r in d["references"][:1]:
                ax.axhline(r["score"], color="grey", ls="--", lw=1,
                           label=f"published {r['score']:.0f} (its own metric, see zoo.md)")
            ax.set_xlabel("environment steps")
            ax.set_ylabel("mean return, last 20 training episodes")
            ax.set_title(f"{d['env_id']} — experiment={d['preset']}")
            ax.legend(fontsize=8)
            fig.tight_layout()
            fig.savefig(results_dir / f"zoo-{env}.png", dpi=90)
            plt.close(fig)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--_sb3":
        preset, seed, steps, d = sys.argv[2:6]
        sb3_job(preset, int(seed), int(steps), Path(d))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", nargs="*", default=ORDER, choices=ORDER)
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 per library")
    parser.add_argument("--peers", action="store_true", help="also train SB3 at the same settings")
    parser.add_argument("--budget", nargs="*", default=[], metavar="ENV=STEPS",
                        help="run ENV at a reduced budget (the row is marked reduced, the reference budget beside it)")
    parser.add_argument("--runs", type=Path, default=ROOT / "outputs" / "zoo", help="where the runs live")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where zoo.md/.json/PNGs go")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--readme", action="store_true", help="also rewrite README.md's Tuned presets section")
    args = parser.parse_args()

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    budgets = {}
    for item in args.budget:
        env, _, steps = item.partition("=")
        if env not in ZOO or not steps.isdigit():
            parser.error(f"--budget {item!r}: expected ENV=STEPS with ENV one of {ORDER}")
        budgets[env] = int(steps)
    if not args.report_only:
        for env in args.envs:
            entry = ZOO[env]
            if entry.needs:
                import importlib.util

                if importlib.util.find_spec(entry.needs) is None:
                    log(f"{env}: skipped, needs the module {entry.needs!r} (pip install 'gymnasium[box2d]' / "
                        "'gymnasium[mujoco]' / 'pglab[atari]')")
                    continue
            steps = budgets.get(env, entry.budget)
            log(f"{env}: experiment={entry.preset}, {steps:,} steps, {args.seeds} seeds" +
                (" + SB3" if args.peers else ""))
            for seed in range(args.seeds):
                for lib in ("pglab", "sb3") if args.peers else ("pglab",):
                    launch(env, lib, seed, steps, args.runs, log)
            write_report(args.runs, args.results, log)
    data = write_report(args.runs, args.results, log)
    if args.readme:
        write_readme(data, ROOT / "README.md")
        log("rewrote README.md's Tuned presets section")


if __name__ == "__main__":
    main()
