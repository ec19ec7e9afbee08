"""Issue 8: nothing runs from a checkpoint, no silent NaN or no-op training, faults lose nothing.

Each test reproduces one failure of the issue's "Why" list and checks the behaviour that replaced it. Numbers are
compared with references computed another way (torch.distributions for the KL, hand-worked LR fractions).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from pglab.accel.lean import LeanUpdate
from pglab.core.surrogates import KLPenalty
from pglab.core.types import Batch
from pglab.learner.module import NonFiniteError, PolicyGradientModule
from pglab.models.mlp import ActorCritic
from pglab.rollout.datamodule import NonFiniteRolloutError
from pglab.run.checkpoints import CheckpointError, check_finite_weights, load_checkpoint
from pglab.run.checks import ConfigError
from pglab.run.train import build
from pglab.tools.evaluate import evaluate

FAST = ["eval.enabled=false", "checkpoint.enabled=false", "trainer.enable_progress_bar=false"]
ENV = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}


def _train(*args: str, cwd=None, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pglab.run.train", *args], env=ENV, capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def _fit(cfg):
    r = build(cfg)
    r.trainer.fit(r.module, datamodule=r.datamodule)
    return r


def _small_run(tmp_path: Path, *extra: str) -> Path:
    """A finished tiny run with checkpoints; returns its folder."""
    out = tmp_path / "run"
    proc = _train("total_env_steps=1024", "logger=csv", "eval.enabled=false", "trainer.enable_progress_bar=false",
                  "env.num_envs=2", "collector.num_steps=64", *extra, f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


# -- 1. checkpoints are data, never code ----------------------------------------------------------------------
class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_runs_nothing(tmp_path):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "pglab": {"config": {"env": {}, "model": {}}}, "x": _Payload(str(marker))}, evil)
    with pytest.raises(CheckpointError, match="weights_only=True only"):
        load_checkpoint(evil)
    with pytest.raises(CheckpointError):
        evaluate(evil)
    proc = _train(f"ckpt_path={evil}", "logger=csv", f"hydra.run.dir={tmp_path / 'resume'}")
    assert proc.returncode == 2 and "could run code" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "pglab.tools.evaluate", f"ckpt_path={evil}"], env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "could run code" in proc.stderr
    assert not marker.exists(), "unpickling the checkpoint ran code"


def test_corrupted_checkpoint_is_named_as_such(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"PK\x03\x04 this is not a torch checkpoint")
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        load_checkpoint(bad)


# -- 2. adaptive β gets the KL after the rollout's updates ----------------------------------------------------
def test_post_update_kl_is_the_analytic_kl_and_beta_doubles():
    torch.manual_seed(0)
    policy = ActorCritic(4, ("discrete", 2), hidden=(8,))
    surrogate = KLPenalty(beta=1.0, adaptive=True, target_kl=0.01)
    module = PolicyGradientModule(policy, surrogate)
    obs = torch.randn(6, 4)
    actions = torch.tensor([0, 1, 0, 1, 1, 0])
    # π_old far from the current π_θ (which is near uniform): its log-probabilities are set by hand
    p_old = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.95, 0.05], [0.5, 0.5], [0.1, 0.9]])
    mask = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 0.0])  # the last row is padding: it must not count
    zeros = torch.zeros(6)
    batch = Batch(obs, actions, zeros, zeros, p_old.log(), zeros, zeros, mask, torch.zeros(6, dtype=torch.long), 1)
    module._rollout_batch = batch
    assert module.post_update_kl() is None  # no update yet: nothing to measure
    module.updates = 1
    with torch.no_grad():
        p_new = policy.evaluate(obs, actions).dist_params.exp()  # the categorical head's parameters: log-probs
    reference = torch.distributions.kl_divergence(torch.distributions.Categorical(probs=p_old),
                                                  torch.distributions.Categorical(probs=p_new))[:5].mean()
    kl = module.post_update_kl()
    assert kl == pytest.approx(float(reference), rel=1e-5)
    assert kl > 1.5 * surrogate.target_kl
    logged = surrogate.after_rollout(kl)
    assert float(surrogate.beta) == 2.0 and logged == {"beta": 2.0}


def test_one_update_per_rollout_adapts_beta_on_the_real_kl(make_cfg, tmp_path):
    # the case: with one update per rollout the old per-minibatch approx-KL is always 0 and β halved forever
    # anneal_lr=false: at lr 0 (the end of an annealed run) the policy does not move and the KL is truly 0
    cfg = make_cfg("algo=ppo_kl", "learner.epochs=1", "learner.num_minibatches=1", "learner.anneal_lr=false",
                   "total_env_steps=2048", "logger=csv", *FAST)
    r = _fit(cfg)
    import csv

    rows = [row for row in csv.DictReader(open(tmp_path / "csv" / "metrics.csv")) if row.get("train/beta")]
    assert len(rows) >= 5
    assert all(float(row["train/grad_norm_value"]) > 0 and float(row["train/grad_norm_policy"]) > 0 for row in rows)
    kls = [float(row["train/kl_post_update"]) for row in rows]
    assert all(k > 0 for k in kls)  # measured after the update: never the pre-update 0
    beta, target = 1.0, r.module.surrogate.target_kl
    for row, kl in zip(rows, kls, strict=True):  # replay the PPO paper's rule on the logged KLs
        beta = beta * 2 if kl > 1.5 * target else beta / 2 if kl < target / 1.5 else beta
        assert float(row["train/beta"]) == pytest.approx(beta)


# -- 3. non-finite values stop the run (or are skipped and counted) -------------------------------------------
def test_nan_run_stops_with_exit_3_and_keeps_a_finite_checkpoint(tmp_path):
    out = tmp_path / "nan"
    proc = _train("learner.lr=1e30", "learner.max_grad_norm=null", "total_env_steps=3000", "logger=csv",
                  "eval.enabled=false", "trainer.enable_progress_bar=false", f"hydra.run.dir={out}")
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "non-finite" in proc.stderr and "last finite state" in proc.stderr
    ckpt = load_checkpoint(out / "checkpoints" / "last.ckpt")
    check_finite_weights(ckpt, "last.ckpt")  # raises if the saved state were NaN


@pytest.mark.parametrize("gradients", ["autograd", "lean"])
def test_skip_mode_counts_skipped_updates(make_cfg, monkeypatch, gradients):
    cfg = make_cfg("learner.nonfinite=skip", "learner.lr=1e-3", "total_env_steps=512",
                   f"learner.gradients={gradients}", *FAST)
    r = build(cfg)
    calls = {"n": 0}

    def poison(loss):  # every third loss is NaN, as a diverging reward model would make it
        calls["n"] += 1
        return loss * float("nan") if calls["n"] % 3 == 0 else loss

    if gradients == "autograd":
        original = r.module.loss_and_stats

        def poisoned_loss(batch):
            loss, stats = original(batch)
            return poison(loss), stats

        r.module.loss_and_stats = poisoned_loss
    else:  # the lean update's loss and gradient, both NaN
        original_call = LeanUpdate.__call__

        def poisoned(self, batch, prepared=None):
            loss, stats = original_call(self, batch, prepared)
            loss = poison(loss)
            if not torch.isfinite(loss):
                self.flat_grad.fill_(float("nan"))
            return loss, stats

        monkeypatch.setattr(LeanUpdate, "__call__", poisoned)
    r.trainer.fit(r.module, datamodule=r.datamodule)
    assert r.module.update_path == gradients
    assert r.module.skipped_updates == calls["n"] // 3 > 0
    assert all(torch.isfinite(p).all() for p in r.module.policy.parameters())


def test_evaluate_refuses_a_non_finite_checkpoint(tmp_path):
    out = _small_run(tmp_path)
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    key = next(k for k in ckpt["state_dict"] if k.startswith("policy.") and k.endswith("weight"))
    ckpt["state_dict"][key][0, 0] = float("nan")
    bad = tmp_path / "nan.ckpt"
    torch.save(ckpt, bad)
    with pytest.raises(CheckpointError, match="non-finite weights"):
        evaluate(bad, episodes=1, num_envs=1)


class _NanObservationEnv(gym.Env):
    """A 1-D Box env whose observation turns NaN at step 5."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(3, np.float32), {}

    def step(self, action):
        self.t += 1
        obs = np.full(3, np.nan if self.t >= 5 else 0.1, np.float32)
        return obs, 1.0, False, self.t >= 50, {}


def test_nan_observation_stops_the_run_naming_it(make_cfg):
    gym.register("pglab_test/NanObs-v0", entry_point=_NanObservationEnv, max_episode_steps=50)
    cfg = make_cfg("env.id=pglab_test/NanObs-v0", "env.num_envs=2", "collector.num_steps=16", "total_env_steps=256",
                   *FAST)
    with pytest.raises(NonFiniteRolloutError, match="non-finite observation at rollout step 5"):
        _fit(cfg)


def test_nan_metrics_are_logged_not_dropped(make_cfg, tmp_path):
    # one env and 4-step rollouts: explained variance is NaN whenever the targets are constant over a rollout
    cfg = make_cfg("env.num_envs=1", "collector.num_steps=2", "learner.normalize_advantages=false",
                   "total_env_steps=64", "logger=csv", *FAST)
    _fit(cfg)
    import csv

    rows = list(csv.DictReader(open(tmp_path / "csv" / "metrics.csv")))
    skipped = [row for row in rows if row.get("train/skipped_rollouts") not in (None, "")]
    assert any(row["train/explained_variance"] == "nan" for row in skipped)


# -- 4. settings that make training a no-op are refused; empty rollouts are skipped ----------------------------
@pytest.mark.parametrize("overrides, needle", [
    (["learner.num_minibatches=100000"], "learner.num_minibatches=100000"),
    (["env.max_episode_steps=0"], "env.max_episode_steps must be >= 1"),
    (["env.num_envs=0"], "env.num_envs must be >= 1"),
    (["collector.num_steps=0"], "collector.num_steps must be >= 1"),
    (["algo=reinforce", "collector.max_episode_steps=0"], "collector.max_episode_steps must be >= 1"),
    (["env.num_envs=1", "collector.num_steps=1"], "makes every advantage 0"),
    (["seed=abc"], "seed must be an integer"),
    (["learner.lr=fast"], "learner.lr must be a number"),
    (["learner.nonfinite=ignore"], "learner.nonfinite must be stop or skip"),
    (["env.id=FrozenLake-v1"], "env.flatten_obs=true"),
])
def test_no_op_and_ill_typed_settings_are_refused(make_cfg, overrides, needle):
    with pytest.raises(ConfigError, match=None) as err:
        build(make_cfg(*overrides, *FAST))
    assert needle in str(err.value)


@pytest.mark.parametrize("overrides", [
    ["env=pendulum", "collector.num_steps=1", "total_env_steps=1700"],  # 8 envs truncate together at 200
    ["env.num_envs=1", "collector.num_steps=1", "learner.normalize_advantages=false", "total_env_steps=200"],
])
def test_rollouts_without_real_transitions_are_skipped_and_counted(make_cfg, overrides):
    r = _fit(make_cfg(*overrides, *FAST))
    assert r.module.skipped_rollouts > 0
    assert int(r.module.env_steps) >= r.cfg.total_env_steps


# -- 5. faults: signals, resume ---------------------------------------------------------------------------------
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_saves_flushes_and_exits_nonzero(tmp_path, signum, code):
    args = [sys.executable, "-m", "pglab.run.train", "total_env_steps=10000000", "logger=csv", "eval.enabled=false",
            "trainer.enable_progress_bar=false", "checkpoint.every_n_epochs=100000", f"hydra.run.dir={tmp_path}"]
    proc = subprocess.Popen(args, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "csv" / "metrics.csv"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.stat().st_size > 0):
        time.sleep(0.5)  # training is under way once the CSV has rows
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr[-2000:]
    assert f"stopped by {signal.Signals(signum).name}" in stderr and "last.ckpt" in stderr
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    steps = int(ckpt["state_dict"]["env_steps"])
    import csv

    logged = [float(row["env_steps"]) for row in csv.DictReader(open(metrics)) if row["env_steps"]]
    assert max(logged) == steps  # the last epoch's metrics reached the CSV


def test_resume_takes_the_checkpoints_algorithm_appends_and_continues_the_lr(tmp_path):
    out = _small_run(tmp_path, "algo=a2c")
    ckpt_path = out / "checkpoints" / "last.ckpt"
    rows_before = len((out / "csv" / "metrics.csv").read_text().splitlines())
    # the README's command, without algo=a2c, in the same folder and with a larger budget
    proc = _train(f"ckpt_path={ckpt_path}", "total_env_steps=2048", "logger=csv", "eval.enabled=false",
                  "trainer.enable_progress_bar=false", f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    resumed = load_checkpoint(ckpt_path)
    assert resumed["pglab"]["config"]["surrogate"]["_target_"] == "pglab.core.surrogates.Reinforce"  # still a2c
    assert resumed["pglab"]["config"]["estimator"]["_target_"] == "pglab.core.estimators.nstep"
    lines = (out / "csv" / "metrics.csv").read_text().splitlines()
    assert len(lines) > rows_before and lines[0].startswith("env_steps")  # appended under the same header
    assert sum(line.startswith("env_steps") for line in lines) == 1
    import yaml

    hydra_config = yaml.safe_load((out / ".hydra" / "config.yaml").read_text())
    assert hydra_config["surrogate"]["_target_"] == "pglab.core.surrogates.Reinforce"  # the effective config, not PPO's
    assert (out / ".hydra" / "config.command_line.yaml").exists()


def test_lr_schedule_continues_under_a_new_budget():
    module = PolicyGradientModule(ActorCritic(4, ("discrete", 2)), KLPenalty(), total_env_steps=6000)
    checkpoint = {"pglab": {"lr_anchor": [0, 1.0], "total_env_steps": 4000}, "state_dict": {"env_steps": 2000}}
    module.on_load_checkpoint(checkpoint)
    # old schedule at 2000 of 4000: lr·0.5; from there linearly to 0 at the new total of 6000
    assert module.lr_anchor == (2000, 0.5)
    assert module._lr_fraction(2000, *module.lr_anchor, 6000) == pytest.approx(0.5)
    assert module._lr_fraction(4000, *module.lr_anchor, 6000) == pytest.approx(0.25)
    assert module._lr_fraction(6000, *module.lr_anchor, 6000) == 0.0


def test_resume_refuses_contradicting_overrides_and_finished_runs_exit_0(tmp_path):
    out = _small_run(tmp_path)
    ckpt_path = out / "checkpoints" / "last.ckpt"
    proc = _train(f"ckpt_path={ckpt_path}", "algo=a2c", "env=pendulum", "learner.lr=0.5", "total_env_steps=4096",
                  "logger=csv", f"hydra.run.dir={tmp_path / 'x'}")
    assert proc.returncode == 2
    for key in ("algo=a2c", "env=pendulum", "learner.lr"):
        assert key in proc.stderr
    proc = _train(f"ckpt_path={ckpt_path}", "logger=csv", "total_env_steps=1024", f"hydra.run.dir={tmp_path / 'y'}")
    assert proc.returncode == 0 and "finished run" in proc.stdout
    assert not (tmp_path / "y" / "checkpoints").exists()  # no extra rollout


# -- 6. sweeps: a job failing at run time is caught like a start-up failure ------------------------------------
@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_runtime_failure_in_a_sweep_is_summarised(tmp_path, launcher):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher") if launcher == "joblib" else None
    extra = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"] if launcher == "joblib" else []
    proc = _train("-m", "learner.lr=1e30,1e-3", "learner.max_grad_norm=null", "total_env_steps=600", "logger=csv",
                  *FAST, *extra, f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert proc.returncode == 1
    assert "multirun finished: 1 of 2 jobs succeeded" in proc.stderr
    failed = list((tmp_path / "sweep").glob("*/FAILED"))
    assert len(failed) == 1 and "lr=1e+30" in failed[0].parent.name
    assert "NonFiniteError" in failed[0].read_text()
    assert not (tmp_path / "FAILED").exists()  # not in the launch folder


# -- 7. W&B never waits on an unreachable server -----------------------------------------------------------------
def test_unreachable_wandb_server_falls_back_to_offline(tmp_path, monkeypatch, capsys):
    from pglab.run import loggers

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # the discard port: nothing listens
    assert loggers.resolve_wandb_mode(None) == "online"
    assert not loggers.wandb_reachable(timeout=1.0)
    logger = loggers.wandb_logger(project="pglab-test", save_dir=str(tmp_path), name="n", group="g")
    assert logger._wandb_init["mode"] == "offline"
    assert "unreachable" in capsys.readouterr().err


# -- 8. custom envs -------------------------------------------------------------------------------------------
def test_module_colon_env_id_imports_the_module(make_cfg, tmp_path, monkeypatch):
    (tmp_path / "my_envs_for_pglab.py").write_text(
        "import gymnasium as gym\n"
        "gym.register('MyCartPole-v0', entry_point='gymnasium.envs.classic_control:CartPoleEnv', "
        "max_episode_steps=50)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    r = _fit(make_cfg("env.id=my_envs_for_pglab:MyCartPole-v0", "env.num_envs=2", "collector.num_steps=16",
                      "total_env_steps=64", *FAST, output_dir=tmp_path / "out"))
    assert int(r.module.env_steps) >= 64


def test_discrete_observations_train_one_hot(make_cfg):
    r = _fit(make_cfg("env.id=FrozenLake-v1", "env.flatten_obs=true", "env.num_envs=2", "collector.num_steps=16",
                      "total_env_steps=64", *FAST))
    assert r.module.policy.evaluate(torch.eye(16), torch.zeros(16, dtype=torch.long)).logp.shape == (16,)


def test_linear_policy_trains(make_cfg):
    r = _fit(make_cfg("model.hidden=[]", "env.num_envs=2", "collector.num_steps=16", "total_env_steps=64", *FAST))
    assert r.module.updates > 0


def test_nonfinite_error_is_the_modules_own():
    assert issubclass(NonFiniteError, RuntimeError)


def test_last_checkpoint_keeps_the_normalisation_statistics(tmp_path):
    # last.ckpt is written after fit, when the envs are closed: the statistics must survive teardown
    out = _small_run(tmp_path, "env=pendulum")
    ckpt = load_checkpoint(out / "checkpoints" / "last.ckpt")
    state = ckpt["OnPolicyDataModule"]
    assert {"obs_rms", "return_rms"} <= set(state) and state["obs_rms"]["count"] > 1000
    results = evaluate(out / "checkpoints" / "last.ckpt", episodes=1, num_envs=1)
    assert np.isfinite(results["return_mean"])


def test_csv_rows_reach_the_file_without_waiting_for_the_end(tmp_path):
    # Lightning flushes when (step + 1) % 100 == 0, and pglab's step is the env-step count: a killed run lost rows
    from pglab.run.loggers import CSVLogger

    logger = CSVLogger(str(tmp_path), name="csv", version="", flush_seconds=0.0)
    logger.log_metrics({"rollout/episode_return": 1.0}, step=256)
    logger.log_metrics({"rollout/episode_return": 2.0}, step=512)
    import csv

    with open(tmp_path / "csv" / "metrics.csv") as f:  # read before the logger finalises: rows were flushed
        rows = list(csv.DictReader(f))
    assert [(r["rollout/episode_return"], r["step"]) for r in rows] == [("1.0", "256"), ("2.0", "512")]
