"""Issue 18, finding 1: a checkpoint is data — nothing its stored config names runs unless pglab trusts it.

A real tiny run's checkpoint is rewritten with one payload at a time planted in its stored config (``env.wrappers``
as a string and as ``{_target_: ...}``, ``model._target_``, the estimator's ``_target_``, a callback, ``env.id``'s
module, and the issue's ``pydoc.pipepager`` shell command). Each payload would create a marker file if it were
called or imported; evaluate, probe and resume (``train ckpt_path=``) must refuse it and the marker must never exist.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from pglab.run.checkpoints import CheckpointError, check_stored_config, load_checkpoint
from pglab.tools.evaluate import evaluate

ENV = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
ENV.update(WANDB_MODE="offline", WANDB_SILENT="true")


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    """A finished tiny run (its last.ckpt is the checkpoint the payloads are planted in)."""
    out = tmp_path_factory.mktemp("base") / "run"
    proc = subprocess.run([sys.executable, "-m", "pglab.run.train", "total_env_steps=256", "logger=csv",
                           "eval.enabled=false", "trainer.enable_progress_bar=false", "env.num_envs=2",
                           "collector.num_steps=64", "env.vectorization=sync", f"hydra.run.dir={out}"],
                          env=ENV, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out / "checkpoints" / "last.ckpt"


@pytest.fixture
def evil_module(tmp_path, monkeypatch):
    """A module whose import and whose every function create ``marker``: any resolution of it is detected."""
    marker = tmp_path / "PWNED"
    pkg = tmp_path / "lib"
    pkg.mkdir()
    (pkg / "evilmod.py").write_text(textwrap.dedent(f"""
        from pathlib import Path
        MARKER = Path({str(marker)!r})
        MARKER.touch()  # importing this module is already the payload (env.id="evilmod:X-v0")

        def wrap(env, **kwargs):
            MARKER.touch()
            return env

        def model(*args, **kwargs):
            MARKER.touch()
            raise SystemExit(0)
    """))
    monkeypatch.syspath_prepend(str(pkg))
    monkeypatch.setenv("PYTHONPATH", str(pkg))
    return marker, pkg


PAYLOADS = {
    "wrapper_string": lambda c, m: c["env"].__setitem__("wrappers", ["evilmod.wrap"]),
    "wrapper_target": lambda c, m: c["env"].__setitem__("wrappers", [{"_target_": "evilmod.wrap"}]),
    "pipepager": lambda c, m: c["env"].__setitem__("wrappers", [{"_target_": "pydoc.pipepager",
                                                                 "cmd": f"touch {m}"}]),
    "model_target": lambda c, m: c["model"].__setitem__("_target_", "evilmod.model"),
    "estimator_target": lambda c, m: c["estimator"].__setitem__("_target_", "evilmod.wrap"),
    "env_id_module": lambda c, m: c["env"].__setitem__("id", "evilmod:CartPole-v1"),
    # through an allowed module to a foreign callable
    "via_allowed_module": lambda c, m: c["env"].__setitem__("wrappers", [{"_target_": "pglab.envs.make.importlib."
                                                                          "import_module", "name": "evilmod"}]),
    # a pglab function that imports what it is given, named where the config is instantiated (the surrogate is)
    "pglab_function_that_imports": lambda c, m: c.__setitem__("surrogate", {
        "_target_": "pglab.envs.make.resolve_env_id", "env_id": "evilmod:CartPole-v1"}),
}


def _plant(base: Path, tmp_path: Path, name: str, marker: Path) -> Path:
    ckpt = torch.load(base, map_location="cpu", weights_only=True)
    config = copy.deepcopy(ckpt["pglab"]["config"])
    PAYLOADS[name](config, marker)
    ckpt["pglab"]["config"] = config
    path = tmp_path / f"{name}.ckpt"
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_planted_payload_is_refused_by_evaluate_probe_and_resume(name, base_run, tmp_path, evil_module, make_cfg):
    from pglab.run.checks import ConfigError
    from pglab.run.train import prepare_resume
    from pglab.tools.probe import probe_checkpoint

    marker, _ = evil_module
    path = _plant(base_run, tmp_path, name, marker)
    with pytest.raises(CheckpointError, match="a checkpoint is data"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="a checkpoint is data"):
        evaluate(path, episodes=1, num_envs=1)
    with pytest.raises(CheckpointError, match="a checkpoint is data"):
        probe_checkpoint(path, "x", {"gamma": None, "num_envs": 1})
    cfg = make_cfg(f"ckpt_path={path}", "eval.enabled=false", "total_env_steps=512", output_dir=tmp_path / "resume")
    with pytest.raises(ConfigError, match="PGLAB_TRUSTED_MODULES"):
        prepare_resume(cfg)
    assert not marker.exists(), f"the {name} payload ran"


def test_a_stored_callback_is_never_resolved(base_run, tmp_path, evil_module, make_cfg):
    # trainer, logger and callbacks are not read back from a checkpoint (a resumed run takes its own command
    # line's), so a foreign callback recorded there neither blocks the checkpoint nor runs
    from pglab.run.train import build, prepare_resume

    marker, _ = evil_module
    ckpt = torch.load(base_run, map_location="cpu", weights_only=True)
    ckpt["pglab"]["config"]["callbacks"] = {"x": {"_target_": "evilmod.wrap"}}
    ckpt["pglab"]["config"]["logger"] = {"x": {"_target_": "evilmod.wrap"}}
    path = tmp_path / "callback.ckpt"
    torch.save(ckpt, path)
    assert evaluate(path, episodes=1, num_envs=1)["episodes"] == 1
    cfg = make_cfg(f"ckpt_path={path}", "eval.enabled=false", "total_env_steps=512", output_dir=tmp_path / "resume")
    resumed, _ = prepare_resume(cfg)
    assert resumed.callbacks == {}
    build(resumed)
    assert not marker.exists()


def test_cli_refusals_name_the_fix_and_run_nothing(base_run, tmp_path, evil_module):
    marker, _ = evil_module
    path = _plant(base_run, tmp_path, "pipepager", marker)
    env = {**ENV, "PYTHONPATH": str(evil_module[1])}
    for argv in (["pglab.run.train", f"ckpt_path={path}", "logger=csv", f"hydra.run.dir={tmp_path / 'r'}"],
                 ["pglab.tools.evaluate", f"ckpt_path={path}"],
                 ["pglab.tools.probe", f"ckpt_path={path}", f"output_dir={tmp_path / 'p'}"]):
        proc = subprocess.run([sys.executable, "-m", *argv], env=env, capture_output=True, text=True, timeout=120,
                              cwd=tmp_path)
        assert proc.returncode == 2, (argv, proc.stderr[-2000:])
        assert "pydoc.pipepager" in proc.stderr and "PGLAB_TRUSTED_MODULES" in proc.stderr, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
    assert not marker.exists()


def test_a_module_the_user_trusts_is_resolved(base_run, tmp_path, evil_module, monkeypatch):
    # the fix the refusal names works: PGLAB_TRUSTED_MODULES=evilmod lets the (here: marker-writing) wrapper run
    marker, _ = evil_module
    path = _plant(base_run, tmp_path, "wrapper_target", marker)
    monkeypatch.setenv("PGLAB_TRUSTED_MODULES", "evilmod")
    results = evaluate(path, episodes=1, num_envs=1)
    assert results["episodes"] == 1 and marker.exists()


def test_resume_trusts_what_its_own_command_line_names(base_run, tmp_path, evil_module, make_cfg):
    from pglab.run.train import prepare_resume

    marker, _ = evil_module
    path = _plant(base_run, tmp_path, "wrapper_string", marker)
    cfg = make_cfg(f"ckpt_path={path}", "eval.enabled=false", "total_env_steps=512", "env.vectorization=sync",
                   "env.wrappers=[evilmod.wrap]", output_dir=tmp_path / "resume")
    resumed, ckpt = prepare_resume(cfg)  # the user typed the target: it is theirs, not the file's
    assert list(resumed.env.wrappers) == ["evilmod.wrap"] and ckpt is not None


def test_pglab_own_targets_pass_and_lookalikes_do_not():
    good = {"env": {"id": "pglab.envs.tokens:pglab/Reverse-v0",
                    "wrappers": [{"_target_": "pglab.envs.atari.atari_wrapper"}, "gymnasium.wrappers.TimeLimit"]},
            "model": {"_target_": "pglab.models.mlp.ActorCritic.from_config"},
            "trainer": {"_target_": "lightning.Trainer",
                        "strategy": {"_target_": "pglab.run.distributed.GradientAllReduceDDP"}},
            "logger": {"tb": {"_target_": "lightning.pytorch.loggers.TensorBoardLogger"}}}
    check_stored_config(good, "x.ckpt")
    for bad in ({"model": {"_target_": "pglabx.models.thing"}}, {"model": {"_target_": "pglab.run.train.__builtins__"}},
                {"model": {"_target_": "lightning.Trainer.__init__.__globals__"}},
                {"model": {"_target_": "pglab.run.train.sys.exit"}}, {"env": {"id": "os:CartPole-v1"}}):
        with pytest.raises(CheckpointError, match="a checkpoint is data"):
            check_stored_config(bad, "x.ckpt")
