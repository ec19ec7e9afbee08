"""Checkpoints hold the whole learner; a stopped run resumes where it stopped; SIGTERM leaves a checkpoint."""

from __future__ import annotations

import numpy as np
import torch

from pglab.run.train import build

TINY = ["env.num_envs=2", "collector.num_steps=32", "total_env_steps=100000", "eval.enabled=false",
        "checkpoint.enabled=true"]


def _fit(cfg, max_epochs, ckpt_path=None):
    r = build(cfg)
    r.trainer.fit_loop.max_epochs = max_epochs
    r.trainer.fit(r.module, datamodule=r.datamodule, ckpt_path=ckpt_path)
    return r


def _assert_same(a, b, path="state"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert set(a) == set(b), path
        for key in a:
            _assert_same(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), path
    else:
        assert a == b, path


def test_state_after_load_equals_state_before(make_cfg, tmp_path):
    # ppo_kl: adaptive β in the surrogate; normalize_obs/reward: statistics in the env wrappers
    # target_kl=1: the post-update KL stays far below target/1.5, so β halves every rollout
    overrides = ["algo=ppo_kl", "surrogate.target_kl=1.0", "env.normalize_obs=true", "env.normalize_reward=true",
                 *TINY]
    before = _fit(make_cfg(*overrides, output_dir=tmp_path / "a"), max_epochs=3)
    ckpt = tmp_path / "a.ckpt"
    before.trainer.save_checkpoint(ckpt)
    assert float(before.module.surrogate.beta) != 1.0  # β adapted, so the check below is not vacuous
    # resuming with max_epochs already reached restores everything and trains nothing
    after = _fit(make_cfg(*overrides, output_dir=tmp_path / "b"), max_epochs=3, ckpt_path=str(ckpt))
    _assert_same(before.module.state_dict(), after.module.state_dict(), "module")
    _assert_same(before.trainer.optimizers[0].state_dict(), after.trainer.optimizers[0].state_dict(), "optimizer")
    _assert_same(before.datamodule.state_dict(), after.datamodule.state_dict(), "datamodule")
    assert after.trainer.current_epoch == before.trainer.current_epoch == 3
    assert after.module.updates == before.module.updates > 0
    assert int(after.module.env_steps) == int(before.module.env_steps) > 0
    # the loaded checkpoint is loadable without unpickling arbitrary objects
    payload = torch.load(ckpt, weights_only=True)
    assert payload["pglab"]["config"]["surrogate"]["_target_"] == "pglab.core.surrogates.KLPenalty"


def test_grpo_reference_policy_is_restored(make_cfg, tmp_path):
    overrides = ["algo=grpo", "surrogate.beta=0.05", "learner.reference_refresh_every=2", "env.max_episode_steps=20",
                 *TINY]
    before = _fit(make_cfg(*overrides, output_dir=tmp_path / "a"), max_epochs=3)
    ckpt = tmp_path / "g.ckpt"
    before.trainer.save_checkpoint(ckpt)
    after = _fit(make_cfg(*overrides, output_dir=tmp_path / "b"), max_epochs=3, ckpt_path=str(ckpt))
    reference = {k: v for k, v in after.module.state_dict().items() if k.startswith("reference.")}
    assert reference
    _assert_same({k: v for k, v in before.module.state_dict().items() if k.startswith("reference.")}, reference)


def test_stopped_and_resumed_run_continues_numbering(make_cfg, tmp_path):
    overrides = ["algo=ppo", *TINY]
    full = _fit(make_cfg(*overrides, output_dir=tmp_path / "full"), max_epochs=6)
    half = _fit(make_cfg(*overrides, output_dir=tmp_path / "half"), max_epochs=3)
    ckpt = tmp_path / "half.ckpt"
    half.trainer.save_checkpoint(ckpt)
    steps_at_stop = int(half.module.env_steps)
    resumed = _fit(make_cfg(*overrides, output_dir=tmp_path / "resumed"), max_epochs=6, ckpt_path=str(ckpt))
    assert resumed.trainer.current_epoch == full.trainer.current_epoch == 6
    assert resumed.module.updates == full.module.updates
    # the env-step counter continues from the checkpoint; the resumed run restarts its episodes, so it may count
    # a different number of autoreset rows than the uninterrupted run (at most one per env per restart)
    assert int(resumed.module.env_steps) > steps_at_stop
    assert abs(int(resumed.module.env_steps) - int(full.module.env_steps)) <= 2 * 32 * 2
