"""Issue 20, Build 3: a stopped or killed population keeps its work and resumes every member; a sweep's summary names
a population job whose member failed.

The signals are real and sent by the training process to itself from inside an env wrapper given on its command line
(at a fixed step of a fixed rollout), so they land at the same point of the run every time.
"""

from __future__ import annotations

import csv
import os
import shlex
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from pglab.run.checkpoints import load_checkpoint
from pglab.run.checks import ConfigError
from pglab.run.population import build_population, is_population, resume_population
from pglab.run.train import run

ENV = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
ENV.update(WANDB_MODE="offline", WANDB_SILENT="true")
TINY = ["logger=csv", "trainer.enable_progress_bar=false", "env.num_envs=2", "collector.num_steps=32",
        "learner.epochs=1", "eval.enabled=false"]


@pytest.fixture
def wrappers(tmp_path) -> dict:
    """An env-wrapper module on PYTHONPATH: ``Events`` sends this process one signal (the first of ``signals`` whose
    mark file does not exist yet) at step ``at_step`` of its env copies; ``NanRewardForSeed`` makes the rewards of the
    env reset with ``seed`` NaN."""
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "popwrappers.py").write_text(textwrap.dedent("""
        import os
        import gymnasium as gym

        SENT = []  # one signal per process, whichever env copy reaches the step first

        class Events(gym.Wrapper):
            def __init__(self, env, signals, marks, at_step):
                super().__init__(env)
                self.signals, self.marks, self.at_step, self.steps = signals, marks, at_step, 0

            def step(self, action):
                self.steps += 1
                if self.steps == self.at_step and not SENT:
                    for signum, mark in zip(self.signals, self.marks):
                        if not os.path.exists(mark):
                            SENT.append(signum)
                            open(mark, "w").close()
                            os.kill(os.getpid(), signum)
                            break
                return self.env.step(action)

        class NanRewardForSeed(gym.Wrapper):
            def __init__(self, env, seed):
                super().__init__(env)
                self.bad_seed, self.bad = seed, False

            def reset(self, *, seed=None, options=None):
                if seed is not None:
                    self.bad = seed == self.bad_seed
                return self.env.reset(seed=seed, options=options)

            def step(self, action):
                obs, reward, terminated, truncated, info = self.env.step(action)
                return obs, float("nan") if self.bad else reward, terminated, truncated, info
    """))
    return {**ENV, "PYTHONPATH": str(lib)}


def _train(env, *args, cwd, executable=(sys.executable, "-m", "pglab.run.train")):
    return subprocess.run([*executable, *args], env=env, capture_output=True, text=True, timeout=300, cwd=cwd)


def _steps(out: Path, k: int) -> list[float]:
    with open(out / f"member-{k}" / "csv" / "metrics.csv", newline="") as f:
        return [float(row["env_steps"]) for row in csv.DictReader(f)]


def test_stopped_then_killed_population_resumes_with_the_printed_command(tmp_path, wrappers):
    out, marks = tmp_path / "run", [tmp_path / "term", tmp_path / "kill"]
    events = (f"env.wrappers=[{{_target_:popwrappers.Events,signals:[{int(signal.SIGTERM)},{int(signal.SIGKILL)}],"
              f"marks:['{marks[0]}','{marks[1]}'],at_step:70}}]")
    args = [*TINY, "population=2", "seed=3", "env.vectorization=sync", "total_env_steps=640",
            "checkpoint.every_n_epochs=2", "+logger.csv.flush_seconds=0", events]
    ckpt_file = out / "checkpoints" / "population.ckpt"
    trusted = ("popwrappers.Events",)

    # 1. SIGTERM in the third rollout: the population stops at its end, saves, says how to resume, exits 143
    proc = _train(wrappers, *args, f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 143, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("pglab: stopped")]
    assert len(lines) == 1 and "stopped by SIGTERM at rollout 3" in lines[0], proc.stderr[-3000:]
    assert f"checkpoints {ckpt_file}" in lines[0] and "Traceback" not in proc.stderr
    argv = shlex.split(lines[0].split("resume: ", 1)[1])
    assert argv[:3] == ["python", "-m", "pglab.run.train"]
    assert {"population=2", f"ckpt_path={ckpt_file}", f"hydra.run.dir={out}", "total_env_steps=640"} <= set(argv)
    first = load_checkpoint(ckpt_file, trusted=trusted)
    assert first["pglab"]["population"]["rollouts"] == 3
    for k in range(2):  # the checkpoint holds every row logged, and each member's last.ckpt is the same state
        assert _steps(out, k)[-1] == int(first["state_dict"]["env_steps"][k])
        member = load_checkpoint(out / f"member-{k}" / "checkpoints" / "last.ckpt", trusted=trusted)
        assert int(member["state_dict"]["env_steps"]) == int(first["state_dict"]["env_steps"][k])

    # a population of other seeds than the checkpoint's is refused with the fix; the run's files untouched
    kept = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and ".hydra" not in p.parts}
    mismatched = ["population=3" if a == "population=2" else a for a in argv[3:]]
    proc = _train(wrappers, *mismatched, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "a population of 2 with seeds [3, 4]" in proc.stderr and "resume with population=2" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and ".hydra" not in p.parts} == kept

    # 2. the printed command continues the population; SIGKILLed in its third rollout (the sixth), after the periodic
    # checkpoint of the fourth and the logged row of the fifth
    resume = argv[3:]
    proc = _train(wrappers, *resume, cwd=tmp_path)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert "pglab: resuming the population of 2 (seeds [3, 4])" in proc.stdout
    second = load_checkpoint(ckpt_file, trusted=trusted)
    assert second["pglab"]["population"]["rollouts"] == 4
    ckpt_steps = [int(s) for s in second["state_dict"]["env_steps"]]
    assert all(_steps(out, k)[-1] > ckpt_steps[k] for k in range(2))  # rows past the checkpoint, to be dropped

    # 3. the same command again: drops those rows and reaches the budget
    proc = _train(wrappers, *resume, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("rows of") == 2 and "logged after the checkpoint's" in proc.stdout
    final = load_checkpoint(ckpt_file, trusted=trusted)
    for k in range(2):
        steps = _steps(out, k)
        assert steps == sorted(set(steps)), steps  # monotonic, no duplicates
        assert ckpt_steps[k] in steps and steps[-1] >= 640 and steps[-1] == int(final["state_dict"]["env_steps"][k])
        assert final["pglab"]["population"]["learner"]["members"][k]["finished"]
    # one row per rollout (of the member that trained longest): the dropped rollout's row logged once, by this run
    assert final["pglab"]["population"]["rollouts"] == max(len(_steps(out, k)) for k in range(2))


ARGS = [*TINY, "seed=3", "checkpoint.every_n_epochs=1"]


def test_restored_members_equal_their_checkpoint_on_either_path(make_cfg, tmp_path):
    """Trained on the stacked fast path, restored on it and on the vmapped reference (learner.gradients may change on
    resume): each member's parameters equal its last.ckpt's, and its Adam moments and step count, counters,
    minibatch generator, normalisation statistics (each member's own vector env) and env steps equal the population
    checkpoint's."""
    from gymnasium.wrappers import vector as vw

    from pglab.envs.make import find_wrapper

    out = tmp_path / "run"
    norm = ["env.normalize_obs=true", "env.normalize_reward=true"]
    _, code = run(make_cfg(*ARGS, *norm, "population=2", "total_env_steps=192", output_dir=out))
    assert code == 0
    path = out / "checkpoints" / "population.ckpt"
    saved = load_checkpoint(path)
    state = saved["pglab"]["population"]
    assert state["learner"]["adam"]["steps"].tolist() == [m["updates"] for m in state["learner"]["members"]]
    for gradients in ("auto", "autograd"):
        cfg, ckpt = resume_population(make_cfg(*ARGS, *norm, "population=2", "total_env_steps=384",
                                               f"ckpt_path={path}", f"learner.gradients={gradients}", output_dir=out))
        pop = build_population(cfg)
        try:
            assert pop.learner.path == ("stacked" if gradients == "auto" else "reference")
            notes = pop.restore(ckpt)
            for k in range(2):
                member = load_checkpoint(out / f"member-{k}" / "checkpoints" / "last.ckpt")
                for name, value in pop.learner.member_parameters(k).items():
                    assert torch.equal(value, member["state_dict"][f"policy.{name}"]), name
                m = pop.learner.members[k]
                assert m.env_steps == int(member["state_dict"]["env_steps"]) == int(saved["state_dict"]["env_steps"][k])
                assert m.updates == member["pglab"]["updates"] > 0 and not m.finished  # the budget was raised
                assert torch.equal(pop.minibatches.generators[k].get_state(), state["generators"][k])
                obs_rms = find_wrapper(pop.envs[k], vw.NormalizeObservation).obs_rms
                return_rms = find_wrapper(pop.envs[k], vw.NormalizeReward).return_rms
                assert obs_rms.count == member["OnPolicyDataModule"]["obs_rms"]["count"] > 192
                assert torch.equal(torch.as_tensor(obs_rms.mean), member["OnPolicyDataModule"]["obs_rms"]["mean"])
                assert torch.equal(torch.as_tensor(return_rms.var), state["normalization"][k]["return_rms"]["var"])
                # its LR schedule had reached 0 at the old budget: it anneals afresh to the new one (the single run's)
                assert pop.learner.lr_fraction(k) == (384 - m.env_steps) / 384
            assert len(notes) == 2 and "annealed to 0" in notes[0]
            adam = pop.learner.optimizer_state()
            for key in ("exp_avg", "exp_avg_sq", "steps"):
                assert torch.equal(adam[key], state["learner"]["adam"][key]), key
            assert pop.rollouts == state["rollouts"] and pop.pending_rng is not None
        finally:
            pop.close()


def test_a_resume_that_does_not_match_the_checkpoint_is_refused_with_the_fix(make_cfg, tmp_path):
    out = tmp_path / "run"
    assert run(make_cfg(*ARGS, "population=2", "total_env_steps=64", output_dir=out))[1] == 0
    path = out / "checkpoints" / "population.ckpt"
    with pytest.raises(ConfigError, match=r"population of 2 with seeds \[3, 4\].*asks for 3.*resume with population=2"):
        resume_population(make_cfg(*ARGS, "population=3", f"ckpt_path={path}", output_dir=out))
    # population left out: still the population's resume, refused with the same fix
    cfg = make_cfg(*ARGS, f"ckpt_path={path}", output_dir=out)
    assert is_population(cfg)
    with pytest.raises(ConfigError, match=r"resume with population=2"):
        resume_population(cfg)
    # a member's last.ckpt names the population's checkpoint
    member = out / "member-1" / "checkpoints" / "last.ckpt"
    cfg = make_cfg(*ARGS, f"ckpt_path={member}", output_dir=out)
    assert is_population(cfg)
    with pytest.raises(ConfigError, match=rf"member 1's checkpoint.*ckpt_path={path}"):
        resume_population(cfg)
    # the run folder names its population checkpoint too
    _, ckpt = resume_population(make_cfg(*ARGS, "population=2", f"ckpt_path={out}", output_dir=tmp_path / "elsewhere"))
    assert ckpt["pglab"]["population"]["seeds"] == [3, 4]
    # a single run's checkpoint is not a population's
    single = tmp_path / "single"
    assert run(make_cfg(*ARGS, "total_env_steps=64", output_dir=single))[1] == 0
    with pytest.raises(ConfigError, match=r"single run's checkpoint: resume it with population=1"):
        resume_population(make_cfg(*ARGS, "population=2", f"ckpt_path={single / 'checkpoints' / 'last.ckpt'}",
                                   output_dir=tmp_path / "elsewhere"))


def test_a_population_job_whose_member_failed_is_a_failed_job_in_the_sweep_summary(tmp_path, wrappers):
    sweep = tmp_path / "sweep"
    proc = _train(wrappers, "-m", *TINY, "seed=0,10", "population=2", "env.num_envs=1", "env.vectorization=sync",
                  "env.wrappers=[{_target_:popwrappers.NanRewardForSeed,seed:1}]", "total_env_steps=64",
                  "checkpoint.enabled=false", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "pglab: multirun finished: 1 of 2 jobs succeeded" in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.count("pglab: job FAILED:") == 1
    summary = proc.stderr.split("pglab: job FAILED:", 1)[1].splitlines()
    assert summary[0].strip().startswith("0_") and "NonFiniteError: 1 of 2 population members stopped" in summary[1]
    assert "seed=1" in summary[1]
    failed = [p.parent.name for p in sweep.glob("*/FAILED")]
    assert len(failed) == 1 and failed[0].startswith("0_")
    assert (sweep / failed[0] / "member-0" / "csv" / "metrics.csv").is_file()  # the other member trained on


def test_a_population_folder_is_refused_to_a_new_run_with_its_resume_command(tmp_path):
    from pglab.run.hydra_callbacks import foreign_run

    run = tmp_path / "run"
    (run / "member-0" / "csv").mkdir(parents=True)  # killed before its first checkpoint: members' logs only
    assert "holds another run (member-0)" in foreign_run(run, None)
    assert "it has no checkpoint to resume from" in foreign_run(run, None)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "population.ckpt").write_bytes(b"")
    problem = foreign_run(run, None)
    assert f"ckpt_path={run / 'checkpoints' / 'population.ckpt'} hydra.run.dir={run}" in problem
    assert foreign_run(run, str(run / "checkpoints" / "population.ckpt")) is None  # resuming it
