"""One measured job per process: ``python benchmarks/speed_jobs.py JOB '{"json": "params"}'``.

Started by ``benchmarks/speed.py`` (one fresh interpreter per job, so imports, thread settings and allocator
state never leak between pglab and Stable-Baselines3). Each job prints one ``BENCH_RESULT {json}`` line.
Both libraries train with ``torch.set_num_threads(1)`` (pglab through its ``torch_threads: 1`` config).

Jobs:
  pglab_train / sb3_train   full PPO training for ``steps`` env steps; times ``trainer.fit`` / ``model.learn``
                            (``case``: SB3_CASES; pglab gets the matching overrides from the parent)
  pglab_collect             pglab's SegmentCollector alone (policy act + env step), no training
  pglab_solve / sb3_solve   train until the running mean of the last 20 episode returns ≥ 475 (or the cap)
  update_cost               benchmarks/update_cost.py's µs per update and operator counts
  import_lightning          the time ``import lightning`` takes
"""

from __future__ import annotations

import json
import sys
import time
from collections import deque

SOLVE_THRESHOLD = 475.0
SOLVE_WINDOW = 20

# CleanRL's ppo.py defaults for CartPole-v1 (the throughput benchmark), in pglab's override syntax ...
PGLAB_CLEANRL = ["algo=ppo", "env.num_envs=4", "collector.num_steps=128", "learner.num_minibatches=4",
                 "learner.epochs=4", "learner.lr=2.5e-4", "gamma=0.99", "lam=0.95", "learner.ent_coef=0.01"]
# ... and as SB3 PPO arguments (clip 0.2, vf 0.5, max grad norm 0.5 are both libraries' defaults; stated anyway)
SB3_CLEANRL = dict(n_envs=4, n_steps=128, batch_size=128, n_epochs=4, learning_rate=2.5e-4, gamma=0.99,
                   gae_lambda=0.95, clip_range=0.2, ent_coef=0.01, vf_coef=0.5, max_grad_norm=0.5)
PGLAB_QUIET = ["logger=none", "trainer.enable_progress_bar=false"]

# The throughput cases: the same hyperparameters in both libraries (SB3's PPO defaults — clip 0.2, vf 0.5, max
# grad norm 0.5, 64-64 tanh separate trunks, log-std 0 — are pglab's too).
# rl-zoo3 hyperparams/ppo.yml, Pendulum-v1: 4 envs × 1024 steps, 64-row minibatches (640 updates per rollout),
# VecNormalize(gamma=0.9), constant lr. rl-zoo3 also sets use_sde=True; pglab has no gSDE, so SB3 runs without it.
PGLAB_PENDULUM = ["experiment=pendulum_ppo", "learner.anneal_lr=false"]
SB3_PENDULUM = dict(n_envs=4, n_steps=1024, batch_size=64, gae_lambda=0.95, gamma=0.9, n_epochs=10, ent_coef=0.0,
                    learning_rate=1e-3, clip_range=0.2)
# CleanRL ppo_continuous_action.py defaults: 1 env × 2048 steps, 32 minibatches of 64 (320 updates per rollout),
# lr 3e-4 annealed, normalised observations and rewards clipped at ±10
PGLAB_HALFCHEETAH = ["algo=ppo", "env.id=HalfCheetah-v5", "env.num_envs=1", "collector.num_steps=2048",
                     "learner.num_minibatches=32", "learner.epochs=10", "learner.lr=3e-4", "gamma=0.99", "lam=0.95",
                     "learner.ent_coef=0.0", "env.normalize_obs=true", "env.normalize_reward=true"]
SB3_HALFCHEETAH = dict(n_envs=1, n_steps=2048, batch_size=64, n_epochs=10, learning_rate="lin_3e-4", gamma=0.99,
                       gae_lambda=0.95, clip_range=0.2, ent_coef=0.0, vf_coef=0.5, max_grad_norm=0.5)
SB3_CASES = {  # case → (env id, VecNormalize kwargs or None, PPO hyperparameters)
    "cartpole_cleanrl": ("CartPole-v1", None, SB3_CLEANRL),
    "pendulum_zoo": ("Pendulum-v1", {"gamma": 0.9}, SB3_PENDULUM),
    "halfcheetah_cleanrl": ("HalfCheetah-v5", {"gamma": 0.99, "clip_obs": 10.0, "clip_reward": 10.0},
                            SB3_HALFCHEETAH),
}
# SB3 runs here evaluate nothing and save nothing; pglab's periodic greedy evaluation and checkpoints are switched
# off to match (``++``: harmless if a config lacks the key). The throughput benchmark also runs pglab as shipped.
PGLAB_BARE = ["++eval.enabled=false", "++checkpoint.enabled=false"]


def _result(**fields) -> None:
    print("BENCH_RESULT " + json.dumps(fields), flush=True)


# -- pglab ------------------------------------------------------------------------------------------------
def _pglab_run(overrides: list[str]):
    """compose + build in-process, the way benchmarks/learning.py does."""
    import os

    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from pglab.run.train import CONFIG_DIR, build

    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides + PGLAB_QUIET, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = os.path.abspath("pglab-out")  # cwd: a scratch directory the parent removes
        del cfg["hydra"]
    return build(cfg)


def _time_dataloader(datamodule) -> list[float]:
    """Wrap the DataModule's train_dataloader (collection + advantages) to time it; returns the list it fills."""
    spent: list[float] = []
    original = datamodule.train_dataloader

    def timed():
        t = time.perf_counter()
        out = original()
        spent.append(time.perf_counter() - t)
        return out

    datamodule.train_dataloader = timed
    return spent


def pglab_train(p: dict) -> None:
    overrides = list(p["overrides"]) + [f"seed={p.get('seed', 0)}", f"total_env_steps={p['steps']}"]
    r = _pglab_run(overrides)
    collect_s = _time_dataloader(r.datamodule)
    step_s: list[float] = []  # the module's training steps (a rollout's updates)
    original_step = r.module.training_step

    def timed_step(*args, **kwargs):
        t = time.perf_counter()
        out = original_step(*args, **kwargs)
        step_s.append(time.perf_counter() - t)
        return out

    r.module.training_step = timed_step
    start = time.perf_counter()
    r.trainer.fit(r.module, datamodule=r.datamodule)
    fit_s = time.perf_counter() - start
    steps = int(r.module.env_steps)
    _result(lib="pglab", env_steps=steps, train_s=fit_s, sps=steps / fit_s, collect_s=sum(collect_s),
            update_s=sum(step_s), iterations=len(collect_s), updates=r.module.updates,
            update_path=r.module.update_path)


def pglab_collect(p: dict) -> None:
    import torch

    from pglab.rollout.collectors import SegmentCollector

    r = _pglab_run(list(p["overrides"]) + [f"seed={p.get('seed', 0)}"])
    envs = r.datamodule.make_envs()
    collector = SegmentCollector(envs, int(r.cfg.collector.num_steps), r.module.policy.head.param_dim,
                                 int(r.cfg.seed))
    act, value = r.module.rollout_policy()  # what training collects with (fused snapshot of the weights)
    with torch.inference_mode():
        for _ in range(3):  # warm-up: first reset, first allocations
            collector.collect(act, value)
        steps, calls = 0, 0
        start = time.perf_counter()
        while steps < p["steps"]:
            steps += collector.collect(act, value).num_transitions
            calls += 1
        elapsed = time.perf_counter() - start
    _result(lib="pglab", env_steps=steps, collect_s=elapsed, sps=steps / elapsed, collect_calls=calls)


def pglab_solve(p: dict) -> None:
    import lightning as L

    from pglab.run.callbacks import SolveTracker

    r = _pglab_run(list(p["overrides"]) + [f"seed={p['seed']}", f"total_env_steps={p['cap']}"])
    tracker = next(c for c in r.trainer.callbacks if isinstance(c, SolveTracker))
    tracker.threshold, tracker.stop_when_solved = SOLVE_THRESHOLD, True
    stamp: dict[str, float] = {}

    class Stamp(L.Callback):  # runs after SolveTracker (appended later): wall-clock time of the solve
        def on_train_epoch_end(self, trainer, module) -> None:
            if tracker.solved_at is not None and "t" not in stamp:
                stamp["t"] = time.time()

    r.trainer.callbacks.append(Stamp())
    r.trainer.fit(r.module, datamodule=r.datamodule)
    _result(lib="pglab", seed=p["seed"], solved_at=tracker.solved_at, solved_time=stamp.get("t"),
            env_steps=int(r.module.env_steps), end_time=time.time())


# -- Stable-Baselines3 ------------------------------------------------------------------------------------
def _linear(initial: float):
    """rl-zoo3's ``lin_<x>``: a callable of progress_remaining (1 → 0)."""

    def schedule(progress_remaining: float) -> float:
        return progress_remaining * initial

    return schedule


def _sb3_model(hparams: dict, seed: int, env_id: str = "CartPole-v1", normalize: dict | None = None):
    import torch

    torch.set_num_threads(1)
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    hp = dict(hparams)
    env = make_vec_env(env_id, n_envs=hp.pop("n_envs"), seed=seed)
    if normalize is not None:
        env = VecNormalize(env, **normalize)
    for key in ("learning_rate", "clip_range"):
        if isinstance(hp.get(key), str) and hp[key].startswith("lin_"):
            hp[key] = _linear(float(hp[key][4:]))
    return PPO("MlpPolicy", env, seed=seed, device="cpu", verbose=0, **hp)


def sb3_train(p: dict) -> None:
    env_id, normalize, hparams = SB3_CASES[p.get("case", "cartpole_cleanrl")]
    model = _sb3_model(hparams, p.get("seed", 0), env_id, normalize)
    spent: list[float] = []
    original = model.collect_rollouts

    def timed(*args, **kwargs):
        t = time.perf_counter()
        out = original(*args, **kwargs)
        spent.append(time.perf_counter() - t)
        return out

    model.collect_rollouts = timed
    start = time.perf_counter()
    model.learn(total_timesteps=p["steps"])
    learn_s = time.perf_counter() - start
    _result(lib="sb3", env_steps=int(model.num_timesteps), train_s=learn_s, sps=model.num_timesteps / learn_s,
            collect_s=sum(spent), iterations=len(spent))


# rl-zoo3 hyperparams/ppo.yml, CartPole-v1 (n_timesteps 1e5 is the cap / schedule length)
SB3_ZOO = dict(n_envs=8, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20, ent_coef=0.0,
               learning_rate="lin_1e-3", clip_range="lin_0.2")


def sb3_solve(p: dict) -> None:
    from stable_baselines3.common.callbacks import BaseCallback

    model = _sb3_model(SB3_ZOO, p["seed"])
    rollout_steps = model.n_steps * model.n_envs

    class StopOnSolve(BaseCallback):
        """Running mean of the last 20 finished episodes (Monitor's ``info['episode']``), checked at the end of
        every rollout (the last step of each n_steps × n_envs collection) — pglab checks once per rollout too."""

        def __init__(self) -> None:
            super().__init__()
            self.returns: deque[float] = deque(maxlen=SOLVE_WINDOW)
            self.solved_at: int | None = None
            self.solved_time: float | None = None

        def _on_step(self) -> bool:
            for info in self.locals["infos"]:
                if "episode" in info:
                    self.returns.append(float(info["episode"]["r"]))
            if self.num_timesteps % rollout_steps == 0 and len(self.returns) == SOLVE_WINDOW \
                    and sum(self.returns) / SOLVE_WINDOW >= SOLVE_THRESHOLD:
                self.solved_at, self.solved_time = self.num_timesteps, time.time()
                return False
            return True

    cb = StopOnSolve()
    model.learn(total_timesteps=p["cap"], callback=cb)
    _result(lib="sb3", seed=p["seed"], solved_at=cb.solved_at, solved_time=cb.solved_time,
            env_steps=int(model.num_timesteps), end_time=time.time())


def update_cost(p: dict) -> None:
    """benchmarks/update_cost.py's figures (µs per update, unfused / fused autograd / lean)."""
    import contextlib
    import io

    import update_cost as uc

    with contextlib.redirect_stdout(io.StringIO()):  # its own report; the parent prints the summary
        figures = uc.measure(p.get("reps", 11), p.get("updates", 50))
    _result(figures=figures)


def import_lightning(p: dict) -> None:
    """How long ``import lightning`` takes in a fresh interpreter (the parent subtracts its launch time)."""
    import lightning  # noqa: F401

    _result(imported_time=time.time())


JOBS = {f.__name__: f for f in (pglab_train, pglab_collect, pglab_solve, sb3_train, sb3_solve, update_cost,
                                import_lightning)}

if __name__ == "__main__":
    JOBS[sys.argv[1]](json.loads(sys.argv[2]) if len(sys.argv) > 2 else {})
