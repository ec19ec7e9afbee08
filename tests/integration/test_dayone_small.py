"""Issue 19's smaller frictions, each as a new user met it: Hydra's ``+key`` hint, ``1e5`` budgets, the SLURM GPU
count, the Atari hint, a run that finished no episode, Lightning's warnings on the CLI, a resumed run's names, and
``benchmarks/sequence.py --no-doc``."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from pglab.run.callbacks import last_return
from pglab.run.checks import ConfigError, check_types
from pglab.run.train import CONFIG_DIR

ENV = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
ROOT = Path(__file__).resolve().parents[2]
# what Lightning or Python print for a warning or an info line that pglab's CLI should not show
CHATTER = ("Warning", "warn(", "💡", "litlogger", "litmodels", "dirpath has changed",
           "could not find the monitored key", "GPU available", "XDG_RUNTIME_DIR")


def _train(*overrides, cwd, timeout=300):
    return subprocess.run([sys.executable, "-m", "pglab.run.train", *overrides], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def _no_chatter(proc):
    text = proc.stdout + proc.stderr
    leaked = [line for line in text.splitlines() if any(c in line for c in CHATTER)]
    assert not leaked, leaked


# -- refusals that were tracebacks ---------------------------------------------------------------------------
def test_unknown_learner_key_names_the_key_and_its_close_matches(make_cfg):
    with pytest.raises(ConfigError) as err:
        check_types(make_cfg("+learner.lrr=1", "+learner.epoch=3"))
    text = str(err.value)
    assert "learner.lrr is not a learner setting (did you mean learner.lr?)" in text
    assert "learner.epoch is not a learner setting (did you mean learner.epochs?)" in text
    assert "num_minibatches" in text  # the list of what is accepted


def test_a_float_budget_that_is_an_integer_is_accepted(make_cfg):
    cfg = make_cfg("total_env_steps=1e5", "seed=2.0", "collector.num_steps=64.0")
    check_types(cfg)
    assert cfg.total_env_steps == 100_000 and type(cfg.total_env_steps) is int
    assert type(cfg.seed) is int and type(cfg.collector.num_steps) is int
    with pytest.raises(ConfigError, match="total_env_steps must be an integer, got 1000.5"):
        check_types(make_cfg("total_env_steps=1000.5"))


def test_cli_refuses_an_unknown_learner_key_without_a_traceback(tmp_path):
    proc = _train("+learner.lrr=1", "total_env_steps=1e5", "logger=none", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "learner.lrr is not a learner setting (did you mean learner.lr?)" in proc.stderr
    assert "Traceback" not in proc.stderr and "TypeError" not in proc.stderr
    assert "total_env_steps" not in proc.stderr  # 1e5 is an integer budget


def test_cli_refuses_a_budget_that_is_no_number_before_its_first_line(tmp_path):
    # the first line prints the budget: it must come after the type check, not crash on int('abc')
    proc = _train("total_env_steps=abc", "logger=none", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "total_env_steps must be an integer, got 'abc'" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr


# -- SLURM ---------------------------------------------------------------------------------------------------
@pytest.mark.skipif(importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None,
                    reason="hydra-submitit-launcher is the launchers extra")
@pytest.mark.parametrize("overrides,gpus", [([], 0), (["trainer=gpu"], 1),
                                            (["trainer=ddp", "trainer.accelerator=gpu", "trainer.devices=4"], 4)])
def test_slurm_asks_for_the_gpus_the_trainer_uses(overrides, gpus):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
            cfg = compose("train", overrides=["hydra/launcher=slurm", *overrides], return_hydra_config=True)
        assert OmegaConf.select(cfg, "hydra.launcher.gpus_per_node") == gpus
    finally:
        GlobalHydra.instance().clear()


def test_readme_slurm_example_composes_a_gpu_job():
    """The README's `hydra/launcher=slurm ... trainer=gpu` line asks SLURM for a GPU (it asked for 0)."""
    line = next(line for line in (ROOT / "README.md").read_text().splitlines()
                if "hydra/launcher=slurm " in line and "trainer=gpu" in line)
    assert "hydra.launcher.gpus_per_node" not in line  # no hand-kept count to forget
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    test_slurm_asks_for_the_gpus_the_trainer_uses(["trainer=gpu"], 1)


# -- Atari ---------------------------------------------------------------------------------------------------
def test_atari_refusal_names_the_extra(make_cfg, monkeypatch):
    from pglab.envs.atari import atari_wrapper
    from pglab.envs.make import resolve_env_id

    # as without the atari extra, whether or not it is installed here (a None entry makes `import ale_py` fail)
    monkeypatch.setitem(sys.modules, "ale_py", None)

    with pytest.raises(ValueError, match=r"pip install 'pglab\[atari\]'"):
        resolve_env_id("ale_py:ALE/Pong-v5")
    with pytest.raises(ImportError, match=r"pip install 'pglab\[atari\]'"):
        atari_wrapper(None)


# -- the final line, and no Lightning chatter ----------------------------------------------------------------
def test_last_return_phrase():
    assert last_return({}) == "no episode finished yet"
    assert last_return({"rollout/episode_return": float("nan")}) == "no episode finished yet"
    assert last_return({"rollout/episode_return": 12.34}) == "last mean episode return 12.3"


def test_a_run_shorter_than_an_episode_says_so_and_nothing_leaks(tmp_path):
    # Pendulum's episodes are 200 steps: 64 steps finish none
    proc = _train("env=pendulum", "env.num_envs=1", "collector.num_steps=64", "learner.num_minibatches=2",
                  "total_env_steps=64", "logger=csv", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = proc.stdout.strip().splitlines()[-1]
    assert "no episode finished yet" in final and "nan" not in final, final
    _no_chatter(proc)


def test_reverse_preset_and_its_resume_leak_no_warning_and_keep_their_names(tmp_path):
    """The reverse presets evaluate less often than they checkpoint: Lightning warned that the best checkpoint's
    monitored key was missing. Resuming into a new folder, it warned that the dirpath had changed; and the new folder
    and the W&B group were named after the command line's defaults (ppo, CartPole), not the checkpoint's run."""
    small = ["experiment=reverse_grpo", "collector.num_groups=2", "collector.group_size=4",
             "callbacks.pretrain.steps=2", "callbacks.heldout.every_n_epochs=100", "eval.every_n_epochs=4",
             "eval.episodes=2", "checkpoint.every_n_epochs=2", "logger=csv"]
    first = tmp_path / "first"
    proc = _train(*small, "total_env_steps=200", f"hydra.run.dir={first}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _no_chatter(proc)
    stored = torch.load(first / "checkpoints" / "last.ckpt", weights_only=True)["pglab"]["config"]["run_name"]
    assert stored.startswith("pglab-Reverse-v0-reverse_grpo-"), stored

    # resume with a plain command line (its defaults: algo=ppo, env=cartpole), into a new folder
    proc = _train(f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}", "total_env_steps=400", "logger=csv",
                  "trainer.enable_progress_bar=false", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _no_chatter(proc)
    assert proc.stdout.startswith("pglab: training reverse_grpo"), proc.stdout[:300]
    (resumed,) = (tmp_path / "outputs").glob("*/*/*/.hydra")
    resumed = resumed.parent
    assert resumed.parent.parent.name == "reverse_grpo" and resumed.parent.name == "pglab-Reverse-v0", resumed
    config = yaml.safe_load((resumed / ".hydra" / "config.yaml").read_text())
    assert config["run_name"] == stored  # the W&B group (logger.wandb.group is ${run_name})


# -- benchmarks/sequence.py ----------------------------------------------------------------------------------
def test_sequence_no_doc_leaves_the_committed_results_alone(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("sequence_bench", ROOT / "benchmarks" / "sequence.py")
    sequence = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sequence)
    committed = tmp_path / "docs" / "sequence" / "results.json"
    committed.parent.mkdir(parents=True)
    committed.write_text('[{"committed": true}]')
    monkeypatch.setattr(sequence, "ROOT", tmp_path)
    monkeypatch.setattr(sequence, "run_one", lambda preset, seed, *a: {"preset": preset, "seed": seed,
                                                                       "final_exact_match": 0.5})
    monkeypatch.setattr(sequence, "table", lambda results, target: "table")
    monkeypatch.setattr(sequence, "write_doc", lambda *a: pytest.fail("--no-doc wrote the doc"))
    monkeypatch.setattr(sys, "argv", ["sequence.py", "--presets", "reverse_grpo", "--seeds", "1", "--no-doc"])
    sequence.main()
    assert committed.read_text() == '[{"committed": true}]'
    written = json.loads((tmp_path / "benchmarks" / "results" / "sequence.json").read_text())
    assert written == [{"preset": "reverse_grpo", "seed": 0, "final_exact_match": 0.5}]
