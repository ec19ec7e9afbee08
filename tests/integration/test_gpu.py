"""The learner on CUDA (skipped without a GPU; `make gpu-check` runs these plus a throughput benchmark)."""

from __future__ import annotations

import math

import pytest
import torch

from pglab.run.train import build

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (make gpu-check)")
FAST = ["eval.enabled=false", "checkpoint.enabled=false", "trainer.enable_progress_bar=false",
        "env.num_envs=4", "collector.num_steps=32", "total_env_steps=512"]


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_trains_on_gpu(make_cfg, precision):
    r = build(make_cfg("trainer=gpu", f"trainer.precision={precision}", *FAST))
    r.trainer.fit(r.module, datamodule=r.datamodule)
    assert next(r.module.policy.parameters()).device.type == "cuda"
    assert r.module.updates > 0
    assert math.isfinite(float(r.trainer.callback_metrics["train/policy_loss"]))


def test_gpu_run_matches_cpu_run_in_distribution(make_cfg):
    # same seed, same envs: the first rollout is collected with identical initial weights on either device
    cpu = build(make_cfg(*FAST))
    gpu = build(make_cfg("trainer=gpu", *FAST))
    for a, b in zip(cpu.module.policy.parameters(), gpu.module.policy.parameters(), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_ddp_on_two_gpus(make_cfg):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "pglab.run.train", "trainer=ddp", "trainer.accelerator=gpu",
                           "trainer.devices=2", "logger=csv", *FAST], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_lean_update_on_gpu_agrees_with_autograd(make_cfg, tmp_path):
    """The default (lean) update on CUDA against autograd on CUDA, same seed: the same run up to rounding."""
    runs = {}
    for gradients in ("lean", "autograd"):
        r = build(make_cfg("trainer=gpu", f"learner.gradients={gradients}", *FAST, output_dir=tmp_path / gradients))
        r.trainer.fit(r.module, datamodule=r.datamodule)
        assert r.module.update_path == gradients
        runs[gradients] = r.module
    for p, q in zip(runs["lean"].policy.parameters(), runs["autograd"].policy.parameters(), strict=True):
        assert p.device.type == "cuda"
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-4)
