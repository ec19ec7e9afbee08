"""Training slowdown of ``eval.video=true`` at the default eval frequency, one torch thread.

    .venv/bin/python benchmarks/video_cost.py [--steps 100000] [--repeats 3] [--logger csv]

The default run (``algo=ppo`` on CartPole-v1: 8 envs × 32 steps per rollout, eval every 25 rollouts and after the
last: 16 evaluations in 100k steps) without video, with ``eval.video=true`` as shipped (one clip of one episode of
one env per evaluation, rendered and encoded by a recorder process) and with each clip recorded in the training
process the way gymnasium's RecordVideo does (``EvalCallback.video_recorder = "inline"``).
Cases are interleaved round by round, so a loaded machine slows both alike; the slowdown is taken within each
round and the median printed. Timed: ``Trainer.fit`` (the eval envs, the video env and every clip are made
inside it). Needs moviepy (``pip install 'pglab[video]'``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
from conftest import compose_cfg  # noqa: E402  (the same config composition the tests use)

from pglab.run.callbacks import EvalCallback  # noqa: E402
from pglab.run.train import build  # noqa: E402


def run(steps: int, video: bool, logger: str, out: Path, recorder: str = "process") -> tuple[float, int]:
    EvalCallback.video_recorder = recorder
    cfg = compose_cfg([f"total_env_steps={steps}", f"eval.video={str(video).lower()}", f"logger={logger}",
                       "checkpoint.enabled=false", "torch_threads=1"], out)
    r = build(cfg)
    start = time.perf_counter()
    r.trainer.fit(r.module, datamodule=r.datamodule)
    elapsed = time.perf_counter() - start
    clips = len(list((out / "videos").glob("*.mp4"))) if video else 0
    return int(r.module.env_steps) / elapsed, clips


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--logger", default="csv", help="logger= preset (wandb: set WANDB_MODE=offline)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            off, _ = run(args.steps, False, args.logger, Path(tmp) / f"off{r}")
            on, clips = run(args.steps, True, args.logger, Path(tmp) / f"on{r}")
            inline, _ = run(args.steps, True, args.logger, Path(tmp) / f"inline{r}", recorder="inline")
            rounds.append((off, on, inline))
            print(f"round {r}: video off {off:,.0f} steps/s · video on {on:,.0f} steps/s ({clips} clips, "
                  f"{off / on - 1:+.1%}) · in line {inline:,.0f} steps/s ({off / inline - 1:+.1%})", flush=True)
    print(f"\nCartPole defaults, {args.steps:,} env steps, logger={args.logger}, median of {args.repeats} rounds")
    for i, label in enumerate(("video off", "video on (as shipped)", "video on, recorded in line")):
        sps = statistics.median(row[i] for row in rounds)
        slowdown = "" if i == 0 else f"   slowdown {statistics.median(row[0] / row[i] - 1 for row in rounds):+.1%}"
        print(f"  {label:<28}{sps:>10,.0f} steps/s{slowdown}")
    print("(slowdown: training time with video ÷ without − 1; 'in line': gymnasium's RecordVideo rendering and "
          "writing each clip in the training process before training goes on)")

if __name__ == "__main__":
    main()
