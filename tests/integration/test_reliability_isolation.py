"""Issue 18, finding 8: no process state leaks from one test into the next (run in file order with -p no:randomly;
in any other order the second test still checks that nothing is left over)."""

from __future__ import annotations

import os

from hydra.core.hydra_config import HydraConfig

from pglab.run.train import build

LEFT_BEHIND: list[str] = []


def test_a_test_that_inits_wandb_in_process_and_composes(make_cfg, tmp_path):
    import wandb

    cfg = make_cfg("eval.enabled=false", "checkpoint.enabled=false", "total_env_steps=64")
    assert HydraConfig.initialized()
    build(cfg)
    run = wandb.init(mode="offline", dir=str(tmp_path), project="isolation")
    run.finish()
    LEFT_BEHIND.append("ran")


def test_the_next_test_sees_neither():
    assert "WANDB_SERVICE" not in os.environ  # a subprocess built from {**os.environ} would attach to it
    assert not HydraConfig.initialized()
