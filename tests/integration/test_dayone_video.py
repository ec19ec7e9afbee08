"""Video as a new user meets it: training's clips are encoded beside training (not in its way) and logged at the
evaluation they show; ``pglab.tools.evaluate video=true`` says how far it got while it records, one clip per episode
of one env. (The slowdown itself is measured by benchmarks/video_cost.py, not here.)"""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import pytest

from pglab.run.loggers import finish_wandb
from pglab.run.train import build

pytestmark = pytest.mark.skipif(importlib.util.find_spec("moviepy") is None, reason="video is an optional extra")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "run"))
from wandb_log import history_rows  # noqa: E402

ENV = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}


def _fit_with_video(make_cfg, tmp_path, *overrides, wandb=True):
    cfg = make_cfg(f"logger={'wandb' if wandb else 'csv'}", "env.num_envs=2", "collector.num_steps=32",
                   "total_env_steps=256", "eval.video=true", "eval.every_n_epochs=2", "eval.episodes=1",
                   "eval.num_envs=1", "checkpoint.enabled=false", *overrides, output_dir=tmp_path)
    r = build(cfg)
    try:
        r.trainer.fit(r.module, datamodule=r.datamodule)
    finally:
        finish_wandb()
    clips = {int(p.stem.removeprefix("eval-step")): p for p in (tmp_path / "videos").glob("eval-step*.mp4")}
    if not wandb:
        with open(tmp_path / "csv" / "metrics.csv", newline="") as file:
            evals = [int(float(row["env_steps"])) for row in csv.DictReader(file) if row.get("eval/return_mean")]
        return evals, None, clips
    log = next((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    for _ in range(60):  # wandb.finish() can return before W&B's writer process has written the last rows
        rows = history_rows(log)
        evals = [int(row["env_steps"]) for row in rows if "eval/return_mean" in row]
        # a logged video is a row of eval/video/{_type,videos,captions,count}
        videos = [int(row["env_steps"]) for row in rows if any(k.startswith("eval/video") for k in row)]
        if len(videos) >= len(clips):
            break
        time.sleep(0.5)
    return evals, videos, clips


def test_training_clips_are_made_outside_the_training_process_and_logged_at_their_evaluation(make_cfg, tmp_path,
                                                                                             monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    # no frame is captured in the training process (the recorder process has its own gymnasium)
    monkeypatch.setattr(gym.wrappers.vector.RecordVideo, "_capture_frame", lambda self: pytest.fail("rendered here"))
    evals, videos, clips = _fit_with_video(make_cfg, tmp_path, "eval.every_n_epochs=2")
    assert len(evals) >= 2
    # a clip per evaluation unless one arrived while the recorder was busy (then the later one replaced it); the
    # last evaluation's is always made; each clip is named and logged at the env steps of its evaluation
    assert evals[-1] in clips and set(clips) <= set(evals) and sorted(videos) == sorted(clips)
    assert all(p.stat().st_size > 1000 for p in clips.values())
    assert not list((tmp_path / "videos").glob(".recording-*"))  # the recorder's scratch folders are gone


def test_an_env_the_recorder_process_cannot_make_falls_back_to_recording_here(make_cfg, tmp_path, monkeypatch,
                                                                               capsys):
    """An env registered only in this process (no ``module:`` prefix to import in another): the recorder fails,
    says so once, and the later evaluations are recorded in the training process."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    gym.register("OnlyHereCartPole-v0", entry_point="gymnasium.envs.classic_control:CartPoleEnv",
                 max_episode_steps=200)
    try:
        evals, _, clips = _fit_with_video(make_cfg, tmp_path, "env.id=OnlyHereCartPole-v0",
                                          "eval.every_n_epochs=1", "total_env_steps=192", wandb=False)
    finally:
        gym.registry.pop("OnlyHereCartPole-v0", None)
    err = capsys.readouterr().err
    assert err.count("the eval video recorder process failed") == 1, err
    assert "recording in the training process from now on" in err
    assert evals[-1] in clips and set(clips) <= set(evals)
    assert frame_shape(clips[evals[-1]]) == (400, 600)


def frame_shape(path):
    import imageio.v3 as iio  # moviepy's own dependency

    return iio.imread(path, index=0).shape[:2]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    proc = subprocess.run(
        [sys.executable, "-m", "pglab.run.train", "total_env_steps=2048", "logger=csv", "eval.enabled=false",
         "trainer.enable_progress_bar=false", f"hydra.run.dir={run}"],
        cwd=run, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run / "checkpoints" / "last.ckpt"


def test_evaluate_with_video_reports_progress_and_writes_one_clip_per_episode_of_one_env(checkpoint, tmp_path):
    out = tmp_path / "eval"
    proc = subprocess.run([sys.executable, "-m", "pglab.tools.evaluate", f"ckpt_path={checkpoint}", "video=true",
                           "episodes=4", "num_envs=2", "progress_every_s=1000", f"output_dir={out}"],
                          cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    progress = [i for i, line in enumerate(lines) if "episodes finished" in line]
    results = next(i for i, line in enumerate(lines) if "return_mean" in line)
    # a line at each new clip (the timer is off at 1000 s), all before the results
    assert progress and max(progress) < results, proc.stdout
    assert any(f"clips in {out / 'videos'}" in lines[i] for i in progress), proc.stdout
    clips = sorted((out / "videos").glob("*.mp4"))
    assert len(clips) >= 2  # env 0's quota is 2 episodes: a clip each
    assert frame_shape(clips[0]) == (400, 600)  # one CartPole frame, not a mosaic of both envs
    text = proc.stdout + proc.stderr
    assert "XDG_RUNTIME_DIR" not in text and "pygame-ce" not in text


def test_evaluate_progress_every_few_seconds_without_video(checkpoint, capsys):
    from pglab.tools.evaluate import evaluate

    results = evaluate(checkpoint, episodes=2, num_envs=2, progress_every_s=0.0)
    lines = [line for line in capsys.readouterr().out.splitlines() if "episodes finished" in line]
    assert lines and "clips" not in lines[-1]
    assert lines[-1].startswith("pglab.tools.evaluate: 2/2 episodes finished") and results["episodes"] == 2
