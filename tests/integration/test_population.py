"""population=P end to end on real gymnasium envs, against single runs and brute-force estimators."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from pglab.envs.make import EnvConfig, make_vector_env
from pglab.models.build import build_policy
from pglab.rollout.population import flat_member
from pglab.run.checks import ConfigError
from pglab.run.population import build_population
from pglab.run.train import build, run

QUIET = ["eval.enabled=false", "checkpoint.enabled=false", "learner.gradients=autograd"]


def single_run_parameters(make_cfg, tmp_path, steps: int) -> dict[str, torch.Tensor]:
    r = build(make_cfg(f"total_env_steps={steps}", *QUIET, output_dir=tmp_path / "single"))
    r.trainer.fit(r.module, datamodule=r.datamodule)
    return {n: p.detach().clone() for n, p in r.module.policy.named_parameters()}


def population_parameters(make_cfg, tmp_path, steps: int) -> dict[str, torch.Tensor]:
    pop = build_population(make_cfg(f"total_env_steps={steps}", *QUIET, "population=[0]",
                                    output_dir=tmp_path / "pop"))
    while any(pop.learner.trainable()):
        pop.iteration()
    pop.close()
    return pop.learner.member_parameters(0)


def test_population_of_one_is_the_single_run(make_cfg, tmp_path):
    # one rollout and its 20 updates: bit for bit (same env seeds, initial weights, action noise, shuffles, Adam)
    single, pop = single_run_parameters(make_cfg, tmp_path, 1), population_parameters(make_cfg, tmp_path, 1)
    for name, value in single.items():
        assert torch.equal(pop[name], value), name
    # three rollouts: the vmapped matmuls round differently from the single run's fused actor and addmm in the
    # last bits, so equal to float32 rounding (the trajectories themselves are the same)
    single, pop = single_run_parameters(make_cfg, tmp_path, 600), population_parameters(make_cfg, tmp_path, 600)
    for name, value in single.items():
        torch.testing.assert_close(pop[name], value, rtol=0, atol=1e-6)


def brute_force_gae(rewards, values, next_values, terminated, done, gamma=0.99, lam=0.95):
    T, N = rewards.shape
    adv = np.zeros((T, N))
    for n in range(N):
        running = 0.0
        for t in reversed(range(T)):
            bootstrap = 0.0 if terminated[t, n] else next_values[t, n]
            delta = rewards[t, n] + gamma * bootstrap - values[t, n]
            running = delta + (0.0 if done[t, n] else gamma * lam * running)
            adv[t, n] = running
    return adv + values


@pytest.mark.parametrize("vectorization", ["sync", "auto"])
def test_each_member_collects_and_estimates_on_its_own(make_cfg, tmp_path, vectorization):
    """sync: the members' envs are one SyncVectorEnv of P·N envs, each seeded as its member's own run seeds it;
    auto: gymnasium's native (numpy) CartPole of P·N envs from one seed, member k's block its own."""
    pop = build_population(make_cfg("population=3", "seed=5", *QUIET, "collector.num_steps=64",
                                    f"env.vectorization={vectorization}"))
    assert len(pop.envs) == 1 and pop.envs[0].num_envs == 3 * pop.cfg.env.num_envs
    try:
        rollouts = pop.collector.collect(pop.learner.act, pop.learner.value)
        nets = []
        for k, seed in enumerate([5, 6, 7]):
            # each member's episodes are its own columns' (CartPole: return = length = the steps since a reset)
            r = rollouts[k]
            assert len(r.episode_returns) == int((r.done & r.valid).sum())
            np.testing.assert_array_equal(r.episode_returns, r.episode_lengths)
            if vectorization == "sync":  # the member's envs start where a separate run's with its seed start
                fresh = make_vector_env(EnvConfig(**{**pop.cfg.env}))
                first, _ = fresh.reset(seed=seed)
                fresh.close()
                np.testing.assert_array_equal(rollouts[k].obs[0].numpy(), first.astype(np.float32))
            # the rollout was collected by member k's own weights
            net = build_policy(dict(pop.cfg.model), pop.envs[0].single_observation_space,
                               pop.envs[0].single_action_space)
            net.load_state_dict(pop.learner.member_parameters(k))
            nets.append(net)
            r = rollouts[k]
            ev = net.evaluate(r.obs.reshape(-1, r.obs.shape[-1]), r.actions.reshape(-1))
            torch.testing.assert_close(ev.logp.reshape(r.logp.shape), r.logp, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(ev.values.reshape(r.values.shape), r.values, rtol=1e-5, atol=1e-6)
            # targets and advantages: a brute-force GAE loop over this member's rollout alone
            flat, _ = flat_member(r, pop.estimator, pop.baseline)
            targets = brute_force_gae(*(x.double().numpy() for x in (r.rewards, r.values, r.next_values,
                                                                      r.terminated, r.done)),
                                      gamma=float(pop.cfg.gamma), lam=float(pop.cfg.lam))
            valid = r.valid.numpy()
            np.testing.assert_allclose(flat["targets"].numpy(), targets[valid], rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(flat["advantages"].numpy(), targets[valid] - r.values.numpy()[valid],
                                       rtol=1e-4, atol=1e-4)
        # three different networks and three different trajectories
        assert not torch.equal(rollouts[0].obs, rollouts[1].obs)
        assert not torch.equal(nets[0].value_out.weight, nets[1].value_out.weight)
    finally:
        pop.close()


def test_target_kl_stops_each_member_alone(make_cfg, tmp_path):
    """Record each member's approx-KL per update without early stop; then a threshold between two members' KL at
    the same update stops the one above it there, and only it."""
    def first_rollout(target_kl):
        pop = build_population(make_cfg("population=2", *QUIET, "learner.lr=3e-3",
                                        f"learner.target_kl={target_kl}"))
        kls: list[list[float]] = [[], []]
        step = pop.learner.step

        def recording(batch, active):
            applied, stats = step(batch, active)
            for k in range(2):
                if applied[k]:
                    kls[k].append(float(stats["approx_kl"][k]))
            return applied, stats

        pop.learner.step = recording
        pop.iteration()
        pop.close()
        return kls, [m.updates for m in pop.learner.members]

    kls, updates = first_rollout("null")
    assert updates[0] == updates[1] == len(kls[0]) > 4
    i = next(i for i in range(1, len(kls[0])) if abs(kls[0][i] - kls[1][i]) > 1e-4 and max(kls[0][:i] + kls[1][:i])
             < min(kls[0][i], kls[1][i]))
    high, low = (0, 1) if kls[0][i] > kls[1][i] else (1, 0)
    threshold = (kls[0][i] + kls[1][i]) / 2
    _, updates = first_rollout(threshold)
    assert updates[high] == i + 1  # this update happened, the rest of the rollout's did not
    assert updates[low] > i + 1  # the other member went on


def test_outputs_per_member_read_as_runs(make_cfg, tmp_path):
    from pglab.run.checkpoints import load_checkpoint
    from pglab.tools import plot
    from pglab.tools.evaluate import build_checkpoint_policy, make_eval_envs

    out = tmp_path / "run"
    cfg = make_cfg("population=2", "seed=3", "total_env_steps=600", "logger=csv", "eval.enabled=false",
                   output_dir=out)
    metrics, code = run(cfg)
    assert code == 0 and "rollout/episode_return" in metrics
    runs = plot.find_runs([str(out)])
    assert sorted(p.name for p in runs) == ["member-0", "member-1"]
    loaded = [plot.load_run(p, "rollout/episode_return", "env_steps") for p in sorted(runs)]
    assert plot.seed_count(loaded) == 2 and [r.lookup("seed") for r in loaded] == [3, 4]
    with open(out / "member-1" / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert {"env_steps", "rollout/episode_return", "train/policy_loss", "train/value_loss", "train/approx_kl",
            "train/lr", "train/kl_post_update", "train/explained_variance"} <= set(rows[0])
    steps = [float(r["env_steps"]) for r in rows]
    assert steps == sorted(steps) and steps[-1] >= 600
    ckpt = load_checkpoint(out / "member-1" / "checkpoints" / "last.ckpt")
    envs = make_eval_envs(ckpt, 2)
    policy = build_checkpoint_policy(ckpt, envs)
    envs.close()
    assert ckpt["pglab"]["config"]["seed"] == 4
    assert all(torch.isfinite(p).all() for p in policy.parameters())


@pytest.mark.parametrize("override, words", [
    ("trainer=ddp", "trainer=cpu"),
    ("collector.kind=episodes", "collector.kind=segments"),
    ("surrogate=grpo surrogate.beta=0.04 +aggregation=token_mean", "population=1"),  # a reference policy
])
def test_refused_at_start_with_the_fix(make_cfg, override, words):
    with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
        build_population(make_cfg("population=2", *override.split()))


# -- the stacked fast path (learner.gradients=auto) ------------------------------------------------------------------
FAST = ["eval.enabled=false", "checkpoint.enabled=false", "learner.gradients=auto"]


def test_population_of_one_on_the_fast_path_is_the_single_run_as_shipped(make_cfg, tmp_path):
    """P=1 through the stacked actor and update against the single run through the fused actor and the lean update
    (each verified against its own reference): the same run to float32 rounding after a rollout and its updates."""
    r = build(make_cfg("total_env_steps=1", *FAST, output_dir=tmp_path / "single"))
    r.trainer.fit(r.module, datamodule=r.datamodule)
    assert r.module.update_path == "lean" and r.module.collection_path == "fused"
    single = {n: p.detach().clone() for n, p in r.module.policy.named_parameters()}
    pop = build_population(make_cfg("total_env_steps=1", *FAST, "population=[0]", output_dir=tmp_path / "pop"))
    assert pop.learner.path == "stacked", pop.learner.path_reason
    while any(pop.learner.trainable()):
        pop.iteration()
    pop.close()
    mine = pop.learner.member_parameters(0)
    for name, value in single.items():
        torch.testing.assert_close(mine[name], value, rtol=0, atol=2e-6)


def test_fast_population_trains_as_the_vmapped_reference(make_cfg, tmp_path):
    """Three members, two rollouts: the stacked path and the vmapped reference collect the same rollouts and end with
    the same parameters (to float32 rounding); their per-member metrics agree."""
    pops = {}
    for gradients in ("auto", "autograd"):
        pop = build_population(make_cfg("population=3", "seed=2", "total_env_steps=300", "eval.enabled=false",
                                        "checkpoint.enabled=false", f"learner.gradients={gradients}",
                                        "collector.num_steps=32", output_dir=tmp_path / gradients))
        rows = [pop.iteration() for _ in range(2)]
        pop.close()
        pops[gradients] = (pop, rows)
    (fast, fast_rows), (ref, ref_rows) = pops["auto"], pops["autograd"]
    assert fast.learner.path == "stacked" and ref.learner.path == "reference"
    for k in range(3):
        for name, value in ref.learner.member_parameters(k).items():
            torch.testing.assert_close(fast.learner.member_parameters(k)[name], value, rtol=1e-4, atol=1e-5)
        for key in ("train/policy_loss", "train/value_loss", "train/approx_kl", "train/kl_post_update",
                    "rollout/episode_return", "env_steps"):
            assert abs(fast_rows[1][k][key] - ref_rows[1][k][key]) <= 1e-4 * (1 + abs(ref_rows[1][k][key])), key


def test_first_line_says_which_path(make_cfg, tmp_path, capsys):
    _, code = run(make_cfg("population=2", "total_env_steps=256", "logger=csv", *FAST, output_dir=tmp_path / "a"))
    assert code == 0 and "update: stacked lean (verified against the vmapped reference" in capsys.readouterr().out
    _, code = run(make_cfg("population=2", "total_env_steps=256", "logger=csv", "model.activation=elu", *FAST,
                           output_dir=tmp_path / "b"))
    out = capsys.readouterr().out
    assert code == 0 and "the stacked fast path steps aside: member 0's network: policy_trunk.1 is a ELU" in out


def test_members_advantages_computed_together_only_where_columnwise(make_cfg, tmp_path):
    """GAE with the value baseline treats columns independently: all members' targets and advantages come from one
    call, equal to each member's own call; the mean baseline mixes columns: computed per member."""
    import functools

    from pglab.core.baselines import mean_baseline, value_baseline
    from pglab.core.estimators import gae
    from pglab.rollout.advantages import compute_advantages
    from pglab.rollout.population import columnwise

    assert columnwise(functools.partial(gae, gamma=0.9, lam=0.8), value_baseline) is None
    assert "depend on other columns" in columnwise(functools.partial(gae, gamma=0.9, lam=0.8), mean_baseline)
    pop = build_population(make_cfg("population=3", *FAST, "collector.num_steps=48"))
    assert pop.columnwise_reason is None
    rollouts = pop.collector.collect(pop.learner.act, pop.learner.value)
    targets, advantages = compute_advantages(pop.collector.merged(), pop.estimator, pop.baseline)
    for k, r in enumerate(rollouts):
        own = compute_advantages(r, pop.estimator, pop.baseline)
        cols = slice(k * pop.collector.n, (k + 1) * pop.collector.n)
        torch.testing.assert_close(targets[:, cols], own[0], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(advantages[:, cols], own[1], rtol=1e-6, atol=1e-6)
    pop.close()
    assert build_population(make_cfg("population=2", *FAST, "baseline=mean")).columnwise_reason is not None


def test_each_member_is_a_wandb_run_of_its_own(make_cfg, tmp_path, monkeypatch, capsys):
    """logger=wandb (offline): one W&B run per member, named by its seed, all in one group, each with its own
    rows; the CSV beside it."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "run"
    pop = build_population(make_cfg("population=2", "seed=4", "total_env_steps=256", "logger=wandb", *FAST,
                                    output_dir=out))
    pop.open_outputs()
    runs = [next(lg for lg in member if type(lg).__name__ == "WandbLogger").experiment for member in pop.loggers]
    assert runs[0].id != runs[1].id
    assert runs[0].name.endswith("seed4") and runs[1].name.endswith("seed5")
    assert runs[0].group == runs[1].group and runs[0].group
    assert [r.config["seed"] for r in runs] == [4, 5]
    while any(pop.learner.trainable()):
        pop.log(pop.iteration())
    pop.close()
    for k in range(2):
        assert len(list((out / f"member-{k}" / "wandb").glob("offline-run-*"))) == 1
        assert (out / f"member-{k}" / "csv" / "metrics.csv").is_file()
    assert pop.wandb_hint().count("offline-run-") == 2


def test_minibatches_are_each_members_own_shuffles():
    """Equal row counts (the stacked fast case) and unequal ones (padded, masked) draw what each member's own
    MinibatchSampler draws, in order."""
    from pglab.rollout.minibatches import MinibatchSampler
    from pglab.rollout.population import MemberMinibatches

    for sizes in ([12, 12, 12], [12, 7, 0]):
        updates = MemberMinibatches([3, 4, 5], update_epochs=2, num_minibatches=3).draw(sizes)
        for k, (seed, size) in enumerate(zip([3, 4, 5], sizes, strict=True)):
            own = [] if size == 0 else [i for chunk in MinibatchSampler(size, 3, 2, torch.Generator().manual_seed(
                seed)) for i in chunk]
            for u, (index, mask) in enumerate(updates):
                rows = int(mask[k].sum())
                if u < len(own):
                    assert torch.equal(index[k, :rows], own[u]) and rows == own[u].numel()
                else:
                    assert rows == 0


def test_lean_asked_for_but_not_covered_is_refused_with_the_fix(make_cfg):
    with pytest.raises(ConfigError, match=r"stacked lean update does not cover.*ELU.*learner\.gradients=auto"):
        build_population(make_cfg("population=2", "model.activation=elu", "learner.gradients=lean"))


def test_adaptive_kl_penalty_runs_with_a_beta_per_member(tmp_path):
    """algo=ppo_kl as a population: each member's β follows the PPO paper's rule on its own post-update KL,
    replayed here from the member's own logged KLs."""
    out = tmp_path / "pop"
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"} | {"WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "-m", "pglab.run.train", "population=2", "algo=ppo_kl",
                           "surrogate.target_kl=0.003", "total_env_steps=1500", "eval.enabled=false", "logger=csv",
                           f"hydra.run.dir={out}",
                           "trainer.enable_progress_bar=false"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    target = 0.003  # a target the members' KLs straddle (conf/surrogate/kl_penalty.yaml: initial β 1.0)
    betas = []
    for k in range(2):
        (path,) = (out / f"member-{k}").rglob("metrics.csv")
        with open(path) as f:
            rows = [r for r in csv.DictReader(f) if r.get("train/beta")]
        assert rows
        beta = 1.0
        for r in rows:
            kl = float(r["train/kl_post_update"])
            beta = beta / 2 if kl < target / 1.5 else beta * 2 if kl > 1.5 * target else beta
            assert float(r["train/beta"]) == pytest.approx(beta)
        betas.append([float(r["train/beta"]) for r in rows])
    assert betas[0] != betas[1]  # two members, two KLs, two β histories


def test_each_member_is_evaluated_as_its_own_run(tmp_path):
    """eval.* for a population: each member's eval/* columns at the single run's cadence (every_n_epochs and its
    last rollout), its deterministic policy on envs frozen at its own normalisation statistics — the last one equal
    to pglab.tools.evaluate of the member's final checkpoint with the same seed."""
    from pglab.tools.evaluate import evaluate

    out = tmp_path / "pop"
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"} | {"WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "-m", "pglab.run.train", "population=2", "seed=4", "total_env_steps=1024",
                           "env.num_envs=4", "collector.num_steps=32", "env.normalize_obs=true", "logger=csv",
                           "eval.every_n_epochs=3", "eval.episodes=4", "eval.num_envs=2", f"hydra.run.dir={out}",
                           "trainer.enable_progress_bar=false"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for k, seed in enumerate((4, 5)):
        (path,) = (out / f"member-{k}").rglob("metrics.csv")
        with open(path) as f:
            rows = list(csv.DictReader(f))
        evaluated = [i for i, r in enumerate(rows) if r.get("eval/return_mean")]
        assert evaluated == [2, 5, len(rows) - 1]  # rollouts 3 and 6 of 8, and the last
        last = rows[-1]
        reference = evaluate(out / f"member-{k}" / "checkpoints" / "last.ckpt", episodes=4, num_envs=2,
                             seed=seed + 1_000_000 + len(evaluated) - 1)
        assert float(last["eval/return_mean"]) == pytest.approx(reference["return_mean"])
        assert float(last["eval/length_mean"]) == pytest.approx(reference["length_mean"])
