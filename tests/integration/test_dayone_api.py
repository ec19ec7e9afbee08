"""The Python API: README's example as written, gymnasium registration on import, a checkpoint as a policy."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

README = Path(__file__).resolve().parents[2] / "README.md"
ENV = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
# what Lightning prints unless held back (the command line's disabled job logging holds it back too)
CHATTER = ("GPU available", "TPU available", "HPU available", "LOCAL_RANK", "💡", "litlogger", "Tip:", "Warning",
           "warn(")


def readme_api_example() -> str:
    section = README.read_text().split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_readme_python_api_example_runs_quietly(tmp_path):
    code = readme_api_example()
    assert "pglab.train(" in code and "pglab.load_policy(" in code and "policy(obs)" in code
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert not [c for c in CHATTER if c in output], output[-3000:]
    first, out_dir = proc.stdout.splitlines()[-2].split()
    assert float(first) > 0
    run = Path(out_dir)
    assert run.parent.parent == tmp_path / "outputs" / "ppo" and run.parent.name == "CartPole-v1"
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / ".hydra" / "config.yaml").is_file()
    assert re.fullmatch(r"episode return \d+\.0", proc.stdout.splitlines()[-1])


def test_import_pglab_registers_the_token_envs():
    code = "import gymnasium as gym, pglab; env = gym.make('pglab/Reverse-v0'); print(env.spec.id)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "pglab/Reverse-v0", proc.stderr


def test_train_twice_in_one_process_gives_two_folders_and_refuses_bad_config(tmp_path, monkeypatch):
    import pglab
    from pglab.run.checks import ConfigError

    monkeypatch.chdir(tmp_path)
    tiny = ["total_env_steps=256", "env.num_envs=2", "collector.num_steps=64", "logger=csv", "eval.enabled=false",
            "trainer.enable_progress_bar=false", "env.normalize_obs=true"]
    first, second = pglab.train(overrides=tiny), pglab.train(overrides=[*tiny, "seed=1"])
    assert first.output_dir != second.output_dir and first.exit_code == 0
    assert first.metrics["env_steps"] >= 256
    with pytest.raises(ConfigError, match="value_head"):
        pglab.train(overrides=[*tiny, "estimator=gae", "model.value_head=false"])
    # a folder that holds a run is refused before anything is written, as on the command line
    stored = (first.output_dir / ".hydra" / "config.yaml").read_text()
    with pytest.raises(ConfigError, match="ckpt_path="):
        pglab.train(overrides=[*tiny, "algo=a2c", f"hydra.run.dir={first.output_dir}"])
    assert (first.output_dir / ".hydra" / "config.yaml").read_text() == stored

    # the policy normalises as training did: by hand from the checkpoint's statistics, then the network's mode
    policy = pglab.load_policy(first.checkpoint)
    ckpt = torch.load(first.checkpoint, weights_only=True)
    rms = ckpt["OnPolicyDataModule"]["obs_rms"]
    obs = np.array([0.1, -0.5, 0.03, 0.8], dtype=np.float32)
    batch = np.stack([obs, -obs])
    by_hand = np.clip((batch - rms["mean"].numpy()) / np.sqrt(rms["var"].numpy() + 1e-8), -10, 10)
    with torch.inference_mode():
        expected = policy.network.act(torch.as_tensor(by_hand, dtype=torch.float32), deterministic=True).actions
    assert policy(obs) == int(expected[0]) and isinstance(policy(obs), int)
    assert policy(batch).tolist() == expected.tolist()
    with pytest.raises(ValueError, match="shape"):
        policy(np.zeros(3))
