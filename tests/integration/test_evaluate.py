"""``python -m pglab.tools.evaluate``: a checkpoint of a real short run, checked against an independent gymnasium
loop."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.wrappers import vector as vw

from pglab.envs.make import find_wrapper
from pglab.models.mlp import ActorCritic
from pglab.tools.evaluate import CheckpointError, load_checkpoint, make_eval_envs

SEED = 777
EPISODES = 5


def _env() -> dict:
    return {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}


def _evaluate(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pglab.tools.evaluate", *args], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    proc = subprocess.run(
        [sys.executable, "-m", "pglab.run.train", "total_env_steps=4096", "logger=csv", "eval.enabled=false",
         "checkpoint.every_n_epochs=4", "trainer.enable_progress_bar=false", f"hydra.run.dir={run}"],
        cwd=run, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpts = sorted((run / "checkpoints").glob("*.ckpt"), key=lambda p: (p.name != "last.ckpt", p.name))
    assert ckpts, "training wrote no checkpoint"
    return ckpts[0]


def _independent_returns(ckpt_path: Path, episodes: int, seed: int) -> list[float]:
    """A plain gymnasium loop over one env (gym.make), greedy actions from the checkpoint's policy network."""
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    model = ckpt["pglab"]["config"]["model"]
    policy = ActorCritic(4, ("discrete", 2), hidden=tuple(model["hidden"]), activation=model["activation"],
                         shared=model["shared"], value_head=model["value_head"])
    policy.load_state_dict({k.removeprefix("policy."): v for k, v in ckpt["state_dict"].items()
                            if k.startswith("policy.")})
    env = gym.make("CartPole-v1")
    obs, _ = env.reset(seed=seed)
    returns = []
    for _ in range(episodes):
        total, done = 0.0, False
        while not done:
            with torch.no_grad():
                logits = policy.head.linear(policy.policy_trunk(torch.as_tensor(obs, dtype=torch.float32)[None]))
            obs, reward, terminated, truncated, _ = env.step(int(logits.argmax(-1)))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
        obs, _ = env.reset()  # next episode: the env's own RNG continues, as after a vector env's autoreset
    env.close()
    return returns


def _printed_stats(stdout: str) -> dict[str, float]:
    stats = {k: float(v) for k, v in re.findall(r"^\s+(return_\w+|length_mean)\s+(-?[\d.]+)$", stdout, re.M)}
    assert set(stats) == {"return_mean", "return_std", "return_min", "return_max", "length_mean"}, stdout
    return stats


def test_evaluate_matches_an_independent_gymnasium_loop(checkpoint, tmp_path):
    out = tmp_path / "eval"
    proc = _evaluate(f"ckpt_path={checkpoint}", f"episodes={EPISODES}", "num_envs=1", f"seed={SEED}",
                     f"output_dir={out}", "video=false", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = _printed_stats(proc.stdout)
    results = json.loads((out / "evaluation.json").read_text())
    returns = np.array(results["returns"])
    assert len(returns) == EPISODES
    # printed statistics are those of the per-episode list
    assert stats["return_mean"] == pytest.approx(returns.mean(), abs=1e-3)
    assert stats["return_std"] == pytest.approx(returns.std(), abs=1e-3)
    assert stats["return_min"] == returns.min() and stats["return_max"] == returns.max()
    assert stats["length_mean"] == pytest.approx(np.mean(results["lengths"]), abs=1e-3)  # CartPole: r = 1 a step
    # one env, seeded once, autoreset continuing its RNG == a plain gym loop seeded the same way
    expected = _independent_returns(checkpoint, EPISODES, SEED)
    assert returns.tolist() == expected
    assert stats["return_mean"] == pytest.approx(np.mean(expected), abs=1e-3)
    assert np.mean(expected) > 20  # a (partly) trained policy, not the ~9-step constant-action one


def test_default_settings_and_output_dir(checkpoint, tmp_path):
    proc = _evaluate(f"ckpt_path={checkpoint}", "episodes=6", cwd=tmp_path)  # num_envs=4, seed=12345
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = _printed_stats(proc.stdout)
    results = json.loads((checkpoint.parent.parent / "evaluate" / "evaluation.json").read_text())
    assert results["episodes"] == 6 and results["num_envs"] == 4 and results["deterministic"] is True
    assert stats["return_mean"] == pytest.approx(np.mean(results["returns"]), abs=1e-3)
    assert "weights_only=False" not in proc.stderr  # pglab checkpoints load weights-only
    assert not list(tmp_path.iterdir())              # nothing written to the working directory


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope" / "last.ckpt"
    proc = _evaluate(f"ckpt_path={missing}", cwd=tmp_path)
    assert proc.returncode == 2
    assert f"checkpoint not found: {missing}" in proc.stderr
    assert "Traceback" not in proc.stderr
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(missing)


def test_video_without_moviepy_fails_at_start(checkpoint, tmp_path):
    try:
        import moviepy  # noqa: F401
        pytest.skip("moviepy is installed")
    except ImportError:
        pass
    proc = _evaluate(f"ckpt_path={checkpoint}", "video=true", f"output_dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 2
    assert "pip install 'pglab[video]'" in proc.stderr and "Traceback" not in proc.stderr


def test_checkpoint_needing_full_unpickling_is_refused(checkpoint, tmp_path):
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"] = {"extra": argparse.Namespace(a=1)}  # an object weights_only refuses
    path = tmp_path / "full.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="weights_only=True only"):
        load_checkpoint(path)
    (tmp_path / "junk.ckpt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "junk.ckpt")


def test_observation_statistics_are_restored_and_frozen(checkpoint):
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    ckpt["pglab"]["config"]["env"]["normalize_obs"] = True
    mean, var = torch.tensor([0.1, -0.2, 0.3, -0.4], dtype=torch.float64), torch.tensor([1.0, 2.0, 3.0, 4.0],
                                                                                        dtype=torch.float64)
    ckpt["OnPolicyDataModule"] = {"obs_rms": {"mean": mean, "var": var, "count": 1234.0}}
    envs = make_eval_envs(ckpt, num_envs=2)
    ckpt["pglab"]["config"]["env"]["normalize_obs"] = False
    raw_envs = make_eval_envs(ckpt, num_envs=2)
    ckpt["pglab"]["config"]["env"]["normalize_obs"] = True
    try:
        norm = find_wrapper(envs, vw.NormalizeObservation)
        assert norm is not None and norm.update_running_mean is False
        obs, _ = envs.reset(seed=0)
        raw, _ = raw_envs.reset(seed=0)
        for t in range(20):
            expected = np.clip((raw - mean.numpy()) / np.sqrt(var.numpy() + 1e-8), -10, 10)
            np.testing.assert_allclose(obs, expected, rtol=1e-5, atol=1e-6)
            action = np.full(2, t % 2, dtype=np.int64)
            obs, *_ = envs.step(action)
            raw, *_ = raw_envs.step(action)
        np.testing.assert_allclose(norm.obs_rms.mean, mean.numpy())   # frozen: evaluation does not update them
        np.testing.assert_allclose(norm.obs_rms.var, var.numpy())
        assert norm.obs_rms.count == 1234.0
    finally:
        envs.close()
        raw_envs.close()
    del ckpt["OnPolicyDataModule"]
    with pytest.raises(CheckpointError, match="normalize_obs=true but no statistics"):
        make_eval_envs(ckpt, num_envs=2)
