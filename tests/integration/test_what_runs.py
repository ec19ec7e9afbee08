"""What a researcher reads is what runs: the edits a fork makes first — the clip formula, a LayerNorm in the trunk
or in ``forward``, an edited ``forward``, a new diagnostic — train as edited, with one start-up line saying which
path runs and why; the on-policy ratio at θ = θ_old is 1 whatever the network. Each edit is made here, in the test.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from torch import nn

import pglab.models.mlp as mlp_module
from pglab.core.surrogates import Clip
from pglab.models.mlp import ActorCritic
from pglab.run.train import build

# one update per rollout (1 epoch × 1 minibatch): every update happens at θ = θ_old, where the ratio must be 1
ON_POLICY = ["eval.enabled=false", "checkpoint.enabled=false", "logger=csv", "env.num_envs=4",
             "collector.num_steps=32", "learner.epochs=1", "learner.num_minibatches=1", "total_env_steps=640"]
PPO = ["eval.enabled=false", "checkpoint.enabled=false", "logger=csv", "env.num_envs=4", "collector.num_steps=32",
       "total_env_steps=640"]


def _fit(make_cfg, *overrides, output_dir=None):
    r = build(make_cfg(*overrides, output_dir=output_dir))
    r.trainer.fit(r.module, datamodule=r.datamodule)
    return r


def _rows(r) -> list[dict]:
    paths = list(Path(r.cfg.paths.output_dir).rglob("metrics.csv"))
    assert paths, "metrics.csv was written"
    with open(paths[0]) as f:
        return [row for row in csv.DictReader(f) if row.get("train/ratio_min")]


def _assert_on_policy(r, exact: bool) -> None:
    """Every update's ratio π_θ/π_θ_old at θ = θ_old. ``exact``: collection and update run the same network code
    (the reference), so the ratio is exactly 1; with the fused actor collecting and autograd updating, the two
    float32 forwards may differ in the last bit (≤ 1e-6)."""
    rows = _rows(r)
    assert rows
    for row in rows:
        for key in ("train/ratio_min", "train/ratio_max"):
            if exact:
                assert float(row[key]) == 1.0, (key, row[key])
            else:
                assert float(row[key]) == pytest.approx(1.0, abs=1e-6)


DUAL_CLIP = 1.1  # low enough that PPO's epochs reach it on CartPole (the paper's c = 3 is rarely reached there)


def _dual_clip(self, batch, ratio):
    """Dual-clip PPO written into ``Clip.per_token``: for A < 0 the objective is also bounded below by c·A."""
    loss, stats = _ORIGINAL_PER_TOKEN(self, batch, ratio)
    edited = torch.where(batch.advantages < 0, torch.minimum(loss, -DUAL_CLIP * batch.advantages), loss)
    if ratio.dtype == torch.float32:  # a training call (the start-up check runs on float64 copies)
        _CALLS.append(int(((edited != loss) & (batch.mask > 0)).sum()))
    return edited, stats


_ORIGINAL_PER_TOKEN = Clip.per_token
_CALLS: list[int] = []  # per training call: how many real rows the edit changed


def test_s1_an_edited_clip_formula_trains_and_the_notice_says_so(make_cfg, monkeypatch, capsys):
    plain = _fit(make_cfg, *PPO, "seed=3")
    assert plain.module.update_path == "lean"
    # the unedited formula on the path the edited one will take: any difference below is the edit's
    reference = _fit(make_cfg, *PPO, "seed=3", "learner.gradients=autograd",
                     output_dir=plain.cfg.paths.output_dir + "-autograd")
    capsys.readouterr()
    monkeypatch.setattr(Clip, "per_token", _dual_clip)
    _CALLS.clear()
    edited = _fit(make_cfg, *PPO, "seed=3", output_dir=plain.cfg.paths.output_dir + "-edited")
    notice = capsys.readouterr().out
    assert edited.module.update_path == "autograd"
    assert "the lean update steps aside: the lean update disagrees with the reference loss" in notice
    # the edited formula computed every training loss, and its bound was active on some rows
    assert len(_CALLS) == edited.module.updates and sum(_CALLS) > 0
    # so training changed: the parameters differ from the unedited formula's on the same (autograd) path
    assert any(not torch.equal(a, b) for a, b in zip(reference.module.policy.parameters(),
                                                     edited.module.policy.parameters(), strict=True))
    # and the edited run is on-policy: at θ = θ_old (one update per rollout) the ratio is 1
    on_policy = _fit(make_cfg, *ON_POLICY, output_dir=plain.cfg.paths.output_dir + "-on-policy")
    assert on_policy.module.update_path == "autograd" and on_policy.module.collection_path == "fused"
    _assert_on_policy(on_policy, exact=False)


def _layernorm_mlp(in_dim, hidden, activation):
    """``mlp`` with a LayerNorm after every Linear, as a researcher would write it."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.LayerNorm(width), mlp_module.ACTIVATIONS[activation]()]
        in_dim = width
    return nn.Sequential(*layers)


def test_s2_a_layernorm_in_mlp_runs_on_the_reference_path(make_cfg, monkeypatch, capsys):
    monkeypatch.setattr(mlp_module, "mlp", _layernorm_mlp)
    r = _fit(make_cfg, *ON_POLICY)
    notice = capsys.readouterr().out
    assert any(isinstance(m, nn.LayerNorm) for m in r.module.policy.modules())
    assert r.module.collection_path == "network" and r.module.update_path == "autograd"
    assert "policy_trunk.1 is a LayerNorm" in notice
    norm = r.module.policy.policy_trunk[1]
    assert not torch.equal(norm.weight.detach(), torch.ones_like(norm.weight))  # it trained
    _assert_on_policy(r, exact=True)


def test_s3_a_layernorm_in_forward_gets_exact_gradients_and_stays_on_policy(make_cfg, monkeypatch, capsys):
    original_init = ActorCritic.__init__

    def init(self, obs_dim, action_space, hidden=(64, 64), **kwargs):
        original_init(self, obs_dim, action_space, hidden=hidden, **kwargs)
        self.norm = nn.LayerNorm(hidden[-1])

    def forward(self, obs):
        features = self.norm(self.policy_trunk(obs))
        return self.head.linear(features), self.value_out(self.value_trunk(obs)).squeeze(-1)

    monkeypatch.setattr(ActorCritic, "__init__", init)
    monkeypatch.setattr(ActorCritic, "forward", forward)
    r = _fit(make_cfg, *ON_POLICY)
    notice = capsys.readouterr().out
    assert r.module.collection_path == "network" and r.module.update_path == "autograd"
    assert "module(s) ['norm'] beyond the trunks and heads" in notice
    assert not torch.equal(r.module.policy.norm.weight.detach(), torch.ones(64))  # its gradient is not 0
    _assert_on_policy(r, exact=True)


def test_an_edited_forward_without_new_modules_is_caught_numerically(make_cfg, monkeypatch, capsys):
    original = ActorCritic.forward

    def forward(self, obs):
        head_out, values = original(self, obs)
        return 2.0 * head_out, values  # a temperature: nothing in the module tree shows it

    monkeypatch.setattr(ActorCritic, "forward", forward)
    r = _fit(make_cfg, *ON_POLICY)
    notice = capsys.readouterr().out
    assert r.module.collection_path == "network" and r.module.update_path == "autograd"
    assert "the fused actor disagrees with the network" in notice
    assert "the lean update disagrees with the reference loss" in notice
    _assert_on_policy(r, exact=True)


def test_s4_a_new_diagnostic_reaches_the_csv(make_cfg, monkeypatch, capsys):
    def per_token(self, batch, ratio):
        loss, stats = _ORIGINAL_PER_TOKEN(self, batch, ratio)
        stats["ratio_above_2"] = ((ratio > 2).float() * batch.mask).sum() / batch.mask.sum()
        return loss, stats

    monkeypatch.setattr(Clip, "per_token", per_token)
    r = _fit(make_cfg, *PPO)
    assert "the reference logs ['ratio_above_2'] too" in capsys.readouterr().out
    rows = _rows(r)
    assert all(row["train/ratio_above_2"] != "" for row in rows)


def test_the_default_path_is_the_fast_one_and_says_so(make_cfg, capsys):
    r = _fit(make_cfg, *ON_POLICY)
    notice = capsys.readouterr().out
    assert r.module.collection_path == "fused" and r.module.update_path == "lean"
    assert "pglab: collection: fused actor; update: lean (verified against autograd; start-up checks" in notice
    _assert_on_policy(r, exact=False)


def test_lean_asked_explicitly_is_refused_naming_the_difference(make_cfg, monkeypatch):
    monkeypatch.setattr(Clip, "per_token", _dual_clip)
    r = build(make_cfg(*PPO, "learner.gradients=lean"))
    with pytest.raises(ValueError, match="learner.gradients=lean does not cover this run: the lean update disagrees"):
        r.trainer.fit(r.module, datamodule=r.datamodule)
