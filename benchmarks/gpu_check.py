"""`make gpu-check`: on a machine with a CUDA GPU, run the CUDA tests and a short throughput benchmark (< 5 min).

Prints: the device, PPO CartPole-v1 env steps/s with the learner on the GPU vs on the CPU (same settings), a
large-network update rate at fp32 and bf16-mixed, and the per-update cost on the GPU.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def train(tmp: Path, name: str, *overrides: str) -> float:
    out = tmp / name
    args = [sys.executable, "-m", "pglab.run.train", "logger=csv", "eval.enabled=false", "checkpoint.enabled=false",
            "trainer.enable_progress_bar=false", f"hydra.run.dir={out}", *overrides]
    start = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "disabled"})
    if proc.returncode != 0:
        print(proc.stderr[-3000:])
        raise SystemExit(f"{name} failed")
    rows = [r for r in csv.DictReader(open(out / "csv" / "metrics.csv")) if r.get("perf/sps")]
    print(f"  {name:<34} {float(rows[-1]['perf/sps']):>9,.0f} env steps/s  ({time.perf_counter() - start:.0f} s)")
    return float(rows[-1]["perf/sps"])


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("gpu-check: no CUDA device here (torch.cuda.is_available() is False)")
    print(f"gpu-check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "tests/integration/test_gpu.py"])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        steps = "total_env_steps=50000"
        cpu = train(tmp, "ppo CartPole, learner on CPU", steps)
        gpu = train(tmp, "ppo CartPole, learner on GPU", steps, "trainer=gpu")
        big = ["model.hidden=[1024,1024,1024]", "env.num_envs=64", "collector.num_steps=128", "total_env_steps=200000",
               "learner.num_minibatches=8", "learner.epochs=4"]
        fp32 = train(tmp, "1024³ MLP, 64 envs, GPU fp32", *big, "trainer=gpu")
        bf16 = train(tmp, "1024³ MLP, 64 envs, GPU bf16-mixed", *big, "trainer=gpu", "trainer.precision=bf16-mixed")
    print(f"gpu-check: GPU/CPU learner on CartPole {gpu / cpu:.2f}×; bf16/fp32 on the large MLP {bf16 / fp32:.2f}×")
    raise SystemExit(tests.returncode)


if __name__ == "__main__":
    main()
