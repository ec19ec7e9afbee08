"""Each debug= config runs (real CLI processes), and debug=overfit's losses fall."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

ENV = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
SMALL = ["env.num_envs=2", "collector.num_steps=64"]


def _train(tmp_path, *overrides):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "pglab.run.train", *SMALL, *overrides, f"hydra.run.dir={out}"],
                          env=ENV, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return out, proc


def _rows(out):
    with open(out / "csv" / "metrics.csv", newline="") as file:
        return list(csv.DictReader(file))


def test_fdr_is_one_rollout_and_one_update(tmp_path):
    out, _ = _train(tmp_path, "debug=fdr")
    rows = [r for r in _rows(out) if r.get("train/policy_loss")]
    # 2 envs x 64 steps, less the autoreset rows (not real transitions)
    assert len(rows) == 1 and 100 <= float(rows[0]["env_steps"]) <= 2 * 64
    assert not (out / "checkpoints").exists() and not (out / "wandb").exists()


def test_overfit_losses_fall_on_one_replayed_rollout(tmp_path):
    out, _ = _train(tmp_path, "debug=overfit")
    rows = [r for r in _rows(out) if r.get("train/value_loss")]
    assert len(rows) == 40
    assert len({r["env_steps"] for r in rows}) == 1  # one rollout, no new env steps
    value = [float(r["train/value_loss"]) for r in rows]
    policy = [float(r["train/policy_loss"]) for r in rows]
    assert value[-1] < 0.2 * value[0], value
    assert policy[-1] < policy[0], policy


def test_limit_turns_everything_on(tmp_path):
    out, proc = _train(tmp_path, "debug=limit")
    assert (out / "csv" / "metrics.csv").is_file() and list((out / "wandb").glob("offline-run-*"))
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert list((out / "videos").glob("*.mp4"))
    ckpts = {p.name for p in (out / "checkpoints").iterdir()}
    assert "last.ckpt" in ckpts and any(n.startswith("best-") for n in ckpts) and \
        any(n.startswith("snapshot-") for n in ckpts)
    assert "pglab: phases: collect" in proc.stdout
    assert sum("/1,024 env steps" in line for line in proc.stdout.splitlines()) >= 3  # a progress line per rollout


def test_profiler_writes_lightnings_profile_and_pglabs_phases(tmp_path):
    out, proc = _train(tmp_path, "debug=profiler", "total_env_steps=1024", "logger=csv")
    profile = (out / "fit-profile.txt").read_text()
    assert "run_training_epoch" in profile and "train_dataloader" in profile
    phases = json.loads((out / "phase_timings.json").read_text())
    assert phases["epochs"] >= 8 and set(phases["seconds"]) == {"collect", "update", "epoch_end_and_loop"}
    assert abs(sum(phases["seconds"].values()) - phases["total_s"]) < 1e-6 * max(phases["total_s"], 1)


def test_eval_video_is_one_clip_of_one_env_per_evaluation(tmp_path):
    import imageio.v3 as iio  # moviepy's own dependency (the video extra)

    out, _ = _train(tmp_path, "total_env_steps=512", "eval.every_n_epochs=2", "eval.episodes=4", "eval.num_envs=4",
                    "eval.video=true", "logger=csv", "checkpoint.enabled=false", "trainer.enable_progress_bar=false")
    clips = sorted((out / "videos").glob("*.mp4"))
    evals = [int(float(r["env_steps"])) for r in _rows(out) if r.get("eval/return_mean")]
    # a clip per evaluation as the recorder's share of time allows, named by its env steps; the last always made
    steps = {int(c.stem.removeprefix("eval-step")) for c in clips}
    assert evals[-1] in steps and steps <= set(evals)
    frame = iio.imread(clips[0], index=0)
    assert frame.shape[:2] == (400, 600)  # one CartPole frame (600x400), not a mosaic of the 4 eval envs
