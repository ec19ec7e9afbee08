"""``python -m pglab.tools.probe`` on a real short run (snapshots), its refusals, and its gradients checked another way.

The numbers asserted are identities that hold whatever the data (λ = 1 GAE minus V *is* the reward-to-go minus V;
λ = 0 GAE without baseline *is* the 1-step return; the batched vector-Jacobian product *is* the gradient of
pglab's Reinforce loss), plus one statistical check with a wide margin: the mean of M = 4 batch gradients of
512 env steps points the same way as the reference from 16 further batches (cosine > 0).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pglab.core.surrogates import Reinforce, SurrogateInput
from pglab.models.build import InferenceActor
from pglab.tools.evaluate import build_checkpoint_policy, load_checkpoint
from pglab.tools.probe import (
    Configuration,
    advantages_for,
    batch_gradients,
    collect_batch,
    configurations,
    find_checkpoints,
    make_probe_envs,
    policy_parameters,
)

TINY = ["batches=4", "batch_steps=512", "reference_steps=8192", "nstep_ks=[1,5]", "gae_lams=[0.0,0.9,1.0]"]


def _env() -> dict:
    return {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}


def _train(run: Path, *overrides: str) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [sys.executable, "-m", "pglab.run.train", "total_env_steps=2048", "logger=csv", "eval.enabled=false",
         "checkpoint.snapshots=true", "checkpoint.every_n_epochs=2", "trainer.enable_progress_bar=false",
         f"hydra.run.dir={run}", *overrides],
        cwd=run, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


def _probe(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pglab.tools.probe", *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """PPO on CartPole, 2048 env steps = 8 epochs of 256, a snapshot every 2 epochs."""
    return _train(tmp_path_factory.mktemp("run"))


def test_snapshots_give_early_and_late(run_dir):
    found = find_checkpoints(run_dir, 3)
    assert [label for label, _ in found] == ["early", "middle", "late"]
    epochs = [int(p.stem.split("=")[1]) for _, p in found]
    assert epochs == sorted(epochs) and len(set(epochs)) == 3


def test_probe_writes_its_outputs_and_agrees_with_its_reference(run_dir, tmp_path):
    out = tmp_path / "probe"
    proc = _probe(f"run_dir={run_dir}", "snapshots=2", f"output_dir={out}", *TINY, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p.name for p in out.iterdir()} == {"probe.json", "probe.md", "variance_vs_k.png", "variance_vs_lambda.png"}
    data = json.loads((out / "probe.json").read_text())
    assert [c["label"] for c in data["checkpoints"]] == ["early", "late"]
    for ck in data["checkpoints"]:
        ref = ck["reference"]
        assert ref["config"] == "reward_to_go/value" and ref["batches"] == 16 and ref["norm"] > 0
        res = {r["config"]: r for r in ck["results"]}
        # 2 MC estimators + 2 k + 3 λ, × 3 baselines; nothing skipped: PPO has a value head
        assert len(res) == 21 and not ck["notes"]
        for r in res.values():
            assert r["variance"] >= 0 and math.isfinite(r["variance"]) and -1 <= r["cosine"] <= 1
            assert r["noise_floor"] > 0 and r["excess_bias"] <= r["bias"]
        # identities: GAE(λ=1) − V is the reward-to-go − V; GAE(λ=0) without baseline is the 1-step return
        for a, b in (("gae(lam=1)/value", "reward_to_go/value"), ("gae(lam=0)/none", "nstep(k=1)/none"),
                     ("gae(lam=1)/mean", "reward_to_go/mean")):
            for key in ("variance", "cosine", "bias"):
                assert res[a][key] == pytest.approx(res[b][key], rel=1e-4, abs=1e-9), (a, b, key)
        # the large-batch estimate (M = 4 batches) and the independent Monte-Carlo reference agree in direction
        assert res["reward_to_go/value"]["cosine"] > 0
        assert res["reward_to_go/none"]["cosine"] > 0
    md = (out / "probe.md").read_text()
    assert "| gae(lam=0.9)/value |" in md and "### late" in md
    assert "reward_to_go/value" in proc.stdout


def test_batch_gradients_equal_the_reinforce_surrogate(run_dir):
    """The batched vector-Jacobian products equal one plain backward pass of pglab.core.surrogates.Reinforce
    (−mean(A·log π), token mean) per configuration, on a real collected batch with lookahead."""
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    envs = make_probe_envs(ckpt, 4)
    try:
        policy = build_checkpoint_policy(ckpt, envs)
        actor = InferenceActor(policy)
        torch.manual_seed(0)
        full = collect_batch(envs, actor.act, actor.value, 64, 500, seed=3, param_dim=policy.head.param_dim)
    finally:
        envs.close()
    # the tail finished every episode that was open at the batch's last row (CartPole ends within 500 steps)
    open_at_end = full.valid[63] & ~full.done[63]
    assert bool(((full.done[63:] & full.valid[63:]).any(0) | ~open_at_end).all())
    configs, _ = configurations(["reward_to_go", "gae"], ["none", "value"], 0.98, [], [0.5], has_value=True)
    params = policy_parameters(policy, full.obs[0], full.actions[0])
    batched = batch_gradients(policy, params, full, 64, configs)
    valid = full.valid[:64]
    for i, c in enumerate(configs):
        adv = advantages_for(c, full, 64, True)[valid]
        logp = policy.evaluate(full.obs[:64][valid], full.actions[:64][valid]).logp
        ones = torch.ones_like(logp)
        loss = Reinforce(aggregation="token_mean")(SurrogateInput(
            logp=logp, logp_old=logp.detach(), advantages=adv, mask=ones, episode_ids=torch.zeros_like(adv).long(),
            num_episodes=1)).loss
        grads = torch.autograd.grad(loss, params)
        torch.testing.assert_close(batched[i], torch.cat([g.reshape(-1) for g in grads]), rtol=1e-5, atol=1e-7)


def test_configurations_without_a_value_head_are_skipped_with_a_note():
    configs, notes = configurations(["return", "reward_to_go", "nstep", "gae"], ["none", "mean", "value"], 0.99,
                                    [1, 5], [0.9], has_value=False)
    assert [c.name for c in configs] == ["return/none", "return/mean", "reward_to_go/none", "reward_to_go/mean"]
    assert all(isinstance(c, Configuration) and not c.needs_value for c in configs)
    assert len(notes) == 2 + 3 * 3 and all("no value head" in n for n in notes)
    assert any(n.startswith("nstep(k=5)/none") for n in notes)


def test_refuses_a_file_that_is_not_a_pglab_checkpoint(tmp_path):
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"layer.weight": torch.zeros(2, 2)}, "epoch": 3}, foreign)
    proc = _probe(f"ckpt_path={foreign}", *TINY, cwd=tmp_path)
    assert proc.returncode == 2
    assert "was not written by pglab training" in proc.stderr and "Traceback" not in proc.stderr
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all")
    proc = _probe(f"ckpt_path={garbage}", *TINY, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("pglab.tools.probe: ") and "Traceback" not in proc.stderr
    assert str(garbage) in proc.stderr
    proc = _probe(f"run_dir={tmp_path}", *TINY, cwd=tmp_path)
    assert proc.returncode == 2 and "no checkpoints/snapshot-epoch" in proc.stderr


def test_refuses_a_policy_type_it_does_not_handle(run_dir, tmp_path):
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    ckpt["pglab"]["config"]["model"]["_target_"] = "torch.nn.Identity"  # builds, but is no actor-critic
    path = tmp_path / "identity.ckpt"
    torch.save(ckpt, path)
    proc = _probe(f"ckpt_path={path}", *TINY, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    # refused before anything is built: the stored model target is outside the allowlist (or, if trusted, not an
    # ActorCritic-like policy)
    assert "pglab.tools.probe:" in proc.stderr and any(
        part in proc.stderr for part in ("do not fit", "handles pglab's", "PGLAB_TRUSTED_MODULES"))


def test_gaussian_policy_with_normalised_rewards(tmp_path):
    """Pendulum (Gaussian head, observation and reward normalisation restored from the checkpoint and frozen)."""
    run = _train(tmp_path / "pendulum", "env=pendulum")
    out = tmp_path / "probe"
    # the latest snapshot: last.ckpt, saved after fit has closed the envs, holds no normalisation statistics
    proc = _probe(f"run_dir={run}", "snapshots=1", f"output_dir={out}", "plots=false",
                  "batches=3", "batch_steps=256", "reference_steps=2048", "estimators=[reward_to_go,gae]",
                  "gae_lams=[0.0,1.0]", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "probe.json").read_text())
    (ck,) = data["checkpoints"]
    assert ck["env_id"] == "Pendulum-v1" and ck["reference"]["norm"] > 0 and ck["label"] == "late"
    assert ck["path"].endswith("snapshot-epoch=7.ckpt")
    res = {r["config"]: r for r in ck["results"]}
    assert all(math.isfinite(r["variance"]) and r["variance"] > 0 for r in res.values())
    assert res["gae(lam=1)/value"]["variance"] == pytest.approx(res["reward_to_go/value"]["variance"], rel=1e-4)
    assert not (out / "variance_vs_k.png").exists()
