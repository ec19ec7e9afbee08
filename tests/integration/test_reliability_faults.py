"""Issue 18, findings 6 and 7: faults and odd inputs get a clear message (or work) instead of a traceback.

W&B server faults are real servers on localhost (one answering 401 to everything, one that accepts connections
and never answers); the failing env is a real wrapper that raises at a fixed step.
"""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import textwrap
import threading

import pytest
import torch

from pglab.run.checks import ConfigError
from pglab.run.hydra_callbacks import JobSummary
from pglab.run.loggers import resolve_wandb_mode, wandb_logger
from pglab.run.train import build, prepare_resume

ENV = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
ENV.update(WANDB_MODE="offline", WANDB_SILENT="true")
SMALL = ["logger=csv", "trainer.enable_progress_bar=false", "env.num_envs=2", "collector.num_steps=64",
         "learner.epochs=1", "eval.enabled=false"]


def _train(env, *args, cwd, timeout=240):
    return subprocess.run([sys.executable, "-m", "pglab.run.train", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


# -- W&B: any server error at init means an offline run with a notice ---------------------------------------
class _Unauthorized(http.server.BaseHTTPRequestHandler):
    def _deny(self):
        body = b'{"errors":[{"message":"unauthorized"}]}'
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_HEAD = _deny

    def log_message(self, *args):
        pass


@pytest.fixture
def online(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_SILENT", "true")
    yield
    import wandb

    if wandb.run is not None:
        wandb.finish()


def test_wandb_answering_401_goes_offline_with_a_notice(tmp_path, monkeypatch, capsys, online):
    import wandb

    # wandb reads the environment once per process: set it up before WANDB_BASE_URL names the server, as an earlier
    # run in the same process (the Python API, another test) does; the run must still talk to the server named now
    wandb.setup()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Unauthorized)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.server_address[1]}")
    try:
        logger = wandb_logger(project="p", save_dir=str(tmp_path), name="n", group="g")
    finally:
        server.shutdown()
    assert logger._wandb_init["mode"] == "offline"
    err = capsys.readouterr().err
    assert "W&B init failed" in err and "401" in err and "logging offline" in err


def test_wandb_server_that_never_answers_goes_offline_with_a_notice(tmp_path, monkeypatch, capsys, online):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections (the kernel completes the handshake) and never says a word
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{silent.getsockname()[1]}")
    try:
        logger = wandb_logger(project="p", save_dir=str(tmp_path), name="n", group="g")
    finally:
        silent.close()
    assert logger._wandb_init["mode"] == "offline"
    assert "unreachable" in capsys.readouterr().err


def test_empty_wandb_mode_is_unset_not_a_bad_config_key(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "")
    assert resolve_wandb_mode(None) in ("online", "offline")
    # a whole run with the default W&B logger and no credentials: offline, exit 0 (wandb itself refused the empty
    # mode it read back from the environment when the hyperparameters were logged)
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY", "WANDB_SERVICE")}
    env.update(WANDB_MODE="", WANDB_SILENT="true", NETRC=str(tmp_path / "no-netrc"))
    proc = subprocess.run([sys.executable, "-m", "pglab.run.train", "total_env_steps=256", "eval.enabled=false",
                           f"hydra.run.dir={tmp_path / 'run'}", "trainer.enable_progress_bar=false"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list((tmp_path / "run").glob("wandb/offline-run-*")), proc.stderr[-2000:]


# -- an env that raises mid-run ------------------------------------------------------------------------------
def test_env_raising_mid_run_names_the_kept_checkpoint_and_the_resume_line(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "breaking.py").write_text(textwrap.dedent("""
        import gymnasium as gym

        class BreakAt(gym.Wrapper):
            def __init__(self, env, at_step):
                super().__init__(env)
                self.at_step, self.steps = at_step, 0

            def step(self, action):
                self.steps += 1
                if self.steps == self.at_step:
                    raise RuntimeError("the simulator crashed")
                return self.env.step(action)
    """))
    out = tmp_path / "run"
    proc = _train({**ENV, "PYTHONPATH": str(lib)}, *SMALL, "env.vectorization=sync", "checkpoint.every_n_epochs=2",
                  "total_env_steps=100000", "env.wrappers=[{_target_:breaking.BreakAt,at_step:300}]",
                  f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-2000:]
    last_line = proc.stderr.strip().splitlines()[-1]
    assert last_line.startswith("pglab: the run failed: RuntimeError: the simulator crashed"), last_line
    assert "the last checkpoint is kept" in last_line and f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}" in last_line
    assert "total_env_steps=100000" in last_line
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["last.ckpt"]  # no misleading best-*.ckpt
    assert not (out / "FAILED").exists()  # a multirun marker, not a single run's


# -- smaller ------------------------------------------------------------------------------------------------
def test_resuming_a_nan_weight_checkpoint_is_refused(tmp_path, make_cfg):
    out = tmp_path / "run"
    proc = _train(ENV, *SMALL, "total_env_steps=128", f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    key = next(k for k in ckpt["state_dict"] if k.startswith("policy.") and ckpt["state_dict"][k].is_floating_point())
    ckpt["state_dict"][key].fill_(float("nan"))
    bad = tmp_path / "nan.ckpt"
    torch.save(ckpt, bad)
    with pytest.raises(ConfigError, match="non-finite weights"):
        prepare_resume(make_cfg(f"ckpt_path={bad}", "total_env_steps=512", output_dir=tmp_path / "r"))


def test_zero_width_hidden_layer_is_refused(make_cfg):
    with pytest.raises(ConfigError, match="model.hidden sizes must be integers >= 1"):
        build(make_cfg("model.hidden=[0]", "eval.enabled=false", "checkpoint.enabled=false"))


def test_multirun_summary_shows_the_error_not_a_traceback_header(tmp_path, capsys):
    from omegaconf import OmegaConf

    job = tmp_path / "0_seed=1"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("- seed=1\n")
    (job / "FAILED").write_text('Traceback (most recent call last):\n  File "x.py", line 1, in <module>\n'
                                "ValueError: the env id is wrong\n")
    with pytest.raises(SystemExit):
        JobSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    err = capsys.readouterr().err
    assert "ValueError: the env id is wrong" in err and "Traceback (most recent" not in err


def test_slurm_launcher_without_sbatch_is_refused(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    env = {**ENV, "PATH": os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                          if not os.path.exists(os.path.join(p, "sbatch")))}
    proc = _train(env, "-m", "hydra/launcher=slurm", "seed=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                  cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "sbatch" in proc.stderr and "Traceback" not in proc.stderr


def test_lean_gradients_with_lightning_optimizer_is_a_refusal_not_a_traceback(tmp_path):
    proc = _train(ENV, *SMALL, "learner.gradients=lean", "learner.lightning_optimizer=true", "total_env_steps=256",
                  f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "learner.gradients=lean does not cover this run" in proc.stderr and "Traceback" not in proc.stderr
