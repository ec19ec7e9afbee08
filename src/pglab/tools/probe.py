"""The derivation as an experiment: how noisy and how biased is each policy-gradient estimator, measured.

``python -m pglab.tools.probe run_dir=outputs/ppo/CartPole-v1/<time>`` (or ``ckpt_path=…``, or
``'ckpt_path=[a.ckpt,b.ckpt]'``; options in ``conf/probe.yaml``). A run trained with ``checkpoint.snapshots=true``
gives early / middle / late policies (``checkpoints/snapshot-epoch=*.ckpt``); without snapshots the probe takes
``last.ckpt``.

For every checkpoint the policy is **frozen**. The probe draws M = ``batches`` independent batches of
``batch_steps`` env steps with it (the repo's ``SegmentCollector`` on the run's own environment, rebuilt by
``make_vector_env`` from the checkpoint's config; every batch starts from fresh resets with its own seeds), and for
every estimator × baseline — ``return``, ``reward_to_go``, ``nstep`` over the grid ``nstep_ks``, ``gae`` over the grid
``gae_lams`` × ``none``, ``mean``, ``value`` — computes the gradient each batch gives:

    ĝ = ∇_θ [ −(1/B) Σ_i A_i log π_θ(a_i|s_i) ]   over the B valid rows of the batch, θ = the policy's parameters only

(the REINFORCE surrogate with per-step mean aggregation; A from ``pglab.core.estimators`` and ``pglab.core.baselines``;
advantage normalisation off; flattened). Bootstrapping estimators and the value baseline read the checkpoint's own
value head (configurations that need it are skipped, with a note, when the checkpoint has none).

**The reference** is the mean gradient of ⌈``reference_steps``/``batch_steps``⌉ further independent batches with a
Monte-Carlo target: ``reference.estimator=reward_to_go`` (default) or ``return``, minus ``reference.baseline``
(default ``auto``: V(s) when there is a value head — a state-dependent baseline adds no bias — else none). Targets
may read past the batch's last row: after the batch, collection goes on (the *tail*, at most ``max_tail_steps``,
default the env's time limit) until every episode open at the batch end has ended, so a reward-to-go is the full
discounted sum, bootstrapped only where an episode is *truncated* (time limit), exactly as training treats
truncation. Note what is estimated: with γ < 1 the reward-to-go targets give the "practical" gradient
Σ_t E[Q^γ(s_t, a_t) ∇log π] that every estimator here shares; ``return`` (R(τ) discounted from the episode's start)
estimates Σ_t E[γ^t Q^γ ∇log π] instead, so it is biased against this reference unless γ = 1 (``gamma=1.0``).
``lookahead=false`` cuts the non-reference targets at the batch end and bootstraps them from V there, as training
does; the reference always reads the tail.

**Reported** per configuration (``probe.json``, ``probe.md``, a printed table):

- ``variance`` = trace of the covariance of the M batch gradients (unbiased, ÷ (M − 1));
- ``snr`` = ‖mean‖² / variance (one batch's signal-to-noise ratio);
- ``cosine`` = cos(mean of the M gradients, reference); ``cosine_batch`` = the mean over batches of cos(ĝ_m, ref);
- ``bias`` = ‖mean − reference‖. Even an unbiased estimator shows ‖mean − ref‖ ≈ ``noise_floor`` =
  √(variance/M + variance_ref/M_ref); ``excess_bias`` = √max(0, bias² − noise_floor²) estimates the true bias.

Plus, per checkpoint, the reference's norm, per-batch variance and relative standard error, the env steps the
checkpoint was trained for and the mean return of the episodes the probe saw; plots ``variance_vs_k.png`` and
``variance_vs_lambda.png`` (variance, and bias beside its noise floor, against k and λ, value baseline, one line per
checkpoint; matplotlib from the ``plot`` extra, imported only when drawing).

**Cost.** Per checkpoint, (M + M_ref) batches, each ``batch_steps`` env steps plus its tail (up to ``num_envs`` ×
the env's time limit: ≈ 0 for a policy with short episodes, ≈ 4,000 steps for a CartPole policy that balances for
500 steps). Measured on one core of a 2-core CPU with a 500-step CartPole policy and a 2,048-step batch: collection
≈ 0.25 s per batch (tail included); the 45 default configurations ≈ 0.8 s per probe batch (one batched backward
pass over the batch for all 45 gradients ≈ 0.6 s, the estimators the rest; the first call ≈ 2 s); a reference batch
(one configuration) ≈ 0.3 s in all. At the defaults (M = 32, M_ref = 128: 330k–850k env steps) that is ≈ 1–1.5 min
per checkpoint; the reduced ladder's probe (M = 16, M_ref = 32) took 49–58 s per checkpoint on a busy machine.
Memory: M × configurations × |θ| float32 (32 × 45 × 9.2k ≈ 53 MB for the default fused 64-64 MLP; entries of the
value head's weights get exactly zero gradient and add nothing to any statistic).

Refusals (exit status 2, one line, no traceback): a file that is not a pglab checkpoint, a policy that is not
pglab's ``ActorCritic`` interface with a categorical or Gaussian head, an unknown estimator / baseline name, and a
missing matplotlib when plots are asked for.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor

from pglab.core.baselines import BASELINES
from pglab.core.distributions import CategoricalHead, GaussianHead
from pglab.core.estimators import ESTIMATORS
from pglab.envs.make import env_config_from_dict, make_frozen_envs
from pglab.models.build import InferenceActor
from pglab.rollout.collectors import Rollout, SegmentCollector
from pglab.run.checkpoints import CheckpointError, check_finite_weights, load_checkpoint
from pglab.tools.evaluate import build_checkpoint_policy

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "conf")
PLOT_MISSING = "plots need matplotlib: pip install 'pglab[plot]' (or pass plots=false)"

__all__ = ["Configuration", "configurations", "find_checkpoints", "make_probe_envs", "collect_batch",
           "policy_parameters", "targets_for", "advantages_for", "batch_gradients", "summarize", "probe_checkpoint",
           "main"]


# -- what is probed -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Configuration:
    """One estimator × baseline; ``estimator`` maps the [T, N] rollout tensors to targets [T, N]."""

    name: str
    estimator_name: str
    baseline: str
    estimator: Callable
    param: float | None = None        # k or λ
    needs_value: bool = False


def configurations(estimators: list[str], baselines: list[str], gamma: float, ks: list[int], lams: list[float],
                   has_value: bool) -> tuple[list[Configuration], list[str]]:
    """Every estimator × baseline (k and λ grids expanded); those that need a value head the checkpoint lacks are
    dropped and named in the returned notes."""
    unknown = [e for e in estimators if e not in ESTIMATORS] + [b for b in baselines if b not in ("none", "mean",
                                                                                                 "value")]
    if unknown:
        raise ValueError(f"unknown estimator/baseline {unknown}: estimators are {sorted(ESTIMATORS)}, baselines are "
                         "none, mean, value (group needs grouped episodes: not probed)")
    targets: list[tuple[str, str, Callable, float | None, bool]] = []
    for est in estimators:
        fn = ESTIMATORS[est]
        if est == "nstep":
            targets += [(f"nstep(k={int(k)})", est, partial(fn, gamma=gamma, k=int(k)), float(k), True) for k in ks]
        elif est == "gae":
            targets += [(f"gae(lam={float(lam):g})", est, partial(fn, gamma=gamma, lam=float(lam)), float(lam), True)
                        for lam in lams]
        else:
            targets.append((est, est, partial(fn, gamma=gamma), None, False))
    configs, notes = [], []
    for name, est, fn, param, bootstraps in targets:
        for base in baselines:
            needs = bootstraps or base == "value"
            if needs and not has_value:
                notes.append(f"{name}/{base}: skipped — it reads V(s) and the checkpoint's model has no value head")
                continue
            configs.append(Configuration(f"{name}/{base}", est, base, fn, param, needs))
    return configs, notes


# -- checkpoints and environments ---------------------------------------------------------------------------------
_SNAPSHOT = re.compile(r"snapshot-epoch=(\d+)")


def find_checkpoints(run_dir: str | Path, count: int = 3) -> list[tuple[str, Path]]:
    """(label, path) of ``count`` evenly spaced snapshots of a run (first and last included), else its last.ckpt."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    if not Path(run_dir).is_dir():
        raise CheckpointError(f"run_dir {run_dir} is not a folder")
    snaps = sorted(((int(m.group(1)), p) for p in ckpt_dir.glob("snapshot-epoch=*.ckpt")
                    if (m := _SNAPSHOT.search(p.name))), key=lambda x: x[0])
    if snaps:
        count = max(1, min(count, len(snaps)))
        idx = [len(snaps) - 1] if count == 1 else \
            sorted(set(np.round(np.linspace(0, len(snaps) - 1, count)).astype(int).tolist()))
        names = {1: ["late"], 2: ["early", "late"], 3: ["early", "middle", "late"]}.get(len(idx))
        return [(names[i] if names else f"snapshot {i + 1}/{len(idx)}", snaps[j][1]) for i, j in enumerate(idx)]
    last = ckpt_dir / "last.ckpt"
    if last.is_file():
        return [("last", last)]
    raise CheckpointError(f"no checkpoints/snapshot-epoch=*.ckpt and no checkpoints/last.ckpt under {run_dir} "
                          "(train with checkpoint.snapshots=true for early / middle / late policies)")


def make_probe_envs(ckpt: dict, num_envs: int):
    """The run's vector env with its observation *and* reward normalisation frozen at the checkpoint's statistics,
    so rewards are on the scale the value head was trained on (raw when the run did not normalise them)."""
    try:
        return make_frozen_envs(env_config_from_dict(ckpt["pglab"]["config"]["env"]), num_envs,
                                ckpt.get("OnPolicyDataModule") or {}, rewards=True)
    except ValueError as err:
        raise CheckpointError(f"{err} (ckpt['OnPolicyDataModule'])") from err


def _check_policy(policy, path: Path) -> None:
    head = getattr(policy, "head", None)
    if not isinstance(policy, torch.nn.Module) or not all(hasattr(policy, m) for m in ("evaluate", "act", "value")) \
            or not isinstance(head, CategoricalHead | GaussianHead):
        raise CheckpointError(f"{path}: the probe handles pglab's ActorCritic interface (evaluate, act, value) with a "
                              f"categorical or Gaussian head; this checkpoint's model is {type(policy).__name__} "
                              f"with head {type(head).__name__}")


# -- batches ------------------------------------------------------------------------------------------------------
_FIELDS = ("obs", "actions", "logp", "values", "next_values", "rewards", "terminated", "done", "valid", "dist_params")


def _concat(parts: list[Rollout]) -> Rollout:
    """Rollouts collected one after another by the same envs, as one [ΣT, N] rollout."""
    if len(parts) == 1:
        return parts[0]
    joined = {f: torch.cat([getattr(p, f) for p in parts]) for f in _FIELDS}
    return Rollout(**joined, episode_returns=np.concatenate([p.episode_returns for p in parts]),
                   episode_lengths=np.concatenate([p.episode_lengths for p in parts]))


def collect_batch(envs, act, value, num_steps: int, max_tail: int, seed: int, param_dim: int,
                  tail_chunk: int = 32) -> Rollout:
    """``num_steps`` rows from fresh resets (seeded ``seed``), then a tail of ``tail_chunk``-row segments until every
    episode open at row ``num_steps − 1`` has ended, or ``max_tail`` rows. [num_steps + tail, N]"""
    main = SegmentCollector(envs, num_steps, param_dim, seed)
    parts = [main.collect(act, value)]
    open_at_end = parts[0].valid[-1] & ~parts[0].done[-1]  # [N] envs whose episode at the batch's last row goes on
    tail = 0
    if max_tail > 0 and bool(open_at_end.any()):
        chunk = SegmentCollector(envs, tail_chunk, param_dim, seed)
        chunk.obs, chunk.prev_done = main.obs, main.prev_done  # continue the same episodes, no reset
        while tail < max_tail and bool(open_at_end.any()):
            part = chunk.collect(act, value)
            parts.append(part)
            tail += tail_chunk
            open_at_end &= ~(part.done & part.valid).any(0)
    return _concat(parts)


def policy_parameters(policy, obs: Tensor, actions: Tensor) -> list[torch.nn.Parameter]:
    """The parameters log π depends on (the trunk(s) and head that produce π; not the value head)."""
    params = [p for p in policy.parameters() if p.requires_grad]
    logp = policy.evaluate(obs[:2], actions[:2]).logp.sum()
    grads = torch.autograd.grad(logp, params, allow_unused=True)
    return [p for p, g in zip(params, grads, strict=True) if g is not None]


def targets_for(config: Configuration, full: Rollout, num_steps: int, lookahead: bool) -> Tensor:
    """G [num_steps, N] of one configuration's estimator: computed over the whole rollout (lookahead) or over the
    batch rows only (cut at the batch end and bootstrapped from V there)."""
    src = full if lookahead else _head(full, num_steps)
    return config.estimator(src.rewards, src.values, src.next_values, src.terminated, src.done, src.valid)[:num_steps]


def advantages_for(config: Configuration, full: Rollout, num_steps: int, lookahead: bool,
                   targets: Tensor | None = None) -> Tensor:
    """A [num_steps, N] of one configuration (``targets`` [num_steps, N]: its estimator's, if already computed)."""
    if targets is None:
        targets = targets_for(config, full, num_steps, lookahead)
    valid, values = full.valid[:num_steps], full.values[:num_steps]
    if config.baseline == "value":
        return BASELINES["value"](targets, valid, values)
    return BASELINES[config.baseline](targets, valid)


def _head(r: Rollout, num_steps: int) -> Rollout:
    """The first ``num_steps`` rows: exactly what a ``num_steps`` segment collector would have returned."""
    return Rollout(**{f: getattr(r, f)[:num_steps] for f in _FIELDS}, episode_returns=r.episode_returns,
                   episode_lengths=r.episode_lengths)


def batch_gradients(policy, params: list[torch.nn.Parameter], full: Rollout, num_steps: int,
                    configs: list[Configuration], lookahead: bool = True) -> Tensor:
    """The flattened gradient of −(1/B) Σ_i A_i log π(a_i|s_i) for every configuration. [C, |θ|]

    One forward pass over the batch's B valid rows and one batched backward pass (the loss is linear in log π,
    so ∂loss/∂log π_i = −A_i / B and the C gradients are C vector-Jacobian products of the same graph)."""
    valid = full.valid[:num_steps]
    obs, actions = full.obs[:num_steps][valid], full.actions[:num_steps][valid]
    with torch.no_grad():
        targets: dict[str, Tensor] = {}  # one estimator pass serves every baseline
        for c in configs:
            key = c.name.rsplit("/", 1)[0]
            if key not in targets:
                targets[key] = targets_for(c, full, num_steps, lookahead)
        weights = torch.stack([advantages_for(c, full, num_steps, lookahead, targets[c.name.rsplit("/", 1)[0]])[valid]
                               for c in configs])  # [C, B]
    weights = -weights / valid.sum().clamp_min(1)
    with torch.enable_grad():
        logp = policy.evaluate(obs, actions).logp
        try:
            grads = torch.autograd.grad(logp, params, grad_outputs=weights.to(logp.dtype), is_grads_batched=True)
            return torch.cat([g.reshape(len(configs), -1) for g in grads], dim=1)
        except RuntimeError:  # an op without a batching rule: one backward pass per configuration
            rows = []
            for i in range(len(configs)):
                grads = torch.autograd.grad(logp, params, grad_outputs=weights[i].to(logp.dtype), retain_graph=True)
                rows.append(torch.cat([g.reshape(-1) for g in grads]))
            return torch.stack(rows)


# -- statistics ---------------------------------------------------------------------------------------------------
def _cos(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-300)


def summarize(grads: Tensor, reference: Tensor, reference_variance: float, reference_batches: int) -> dict:
    """Statistics of M batch gradients [M, P] of one configuration against a reference gradient [P]."""
    g = grads.double()
    m = g.shape[0]
    mean = g.mean(0)
    variance = float(((g - mean) ** 2).sum() / max(m - 1, 1))
    bias = float((mean - reference).norm())
    floor = math.sqrt(variance / m + reference_variance / reference_batches)
    return {
        "variance": variance, "mean_norm": float(mean.norm()),
        "snr": float(mean @ mean) / variance if variance > 0 else math.inf,
        "cosine": float(_cos(mean, reference)), "cosine_batch": float(_cos(g, reference.expand_as(g)).mean()),
        "bias": bias, "noise_floor": floor, "excess_bias": math.sqrt(max(0.0, bias**2 - floor**2)),
    }


@dataclass
class CheckpointResult:
    label: str
    path: str
    env_id: str
    env_steps: int | None
    epoch: int | None
    gamma: float
    episode_return_mean: float
    episodes_seen: int
    reference: dict
    results: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def probe_checkpoint(path: str | Path, label: str, cfg: DictConfig | dict, log=print) -> CheckpointResult:
    """Run the probe on one checkpoint (see the module docstring); ``cfg`` holds conf/probe.yaml's keys."""
    start = time.perf_counter()
    path = Path(path)
    ckpt = load_checkpoint(path)
    check_finite_weights(ckpt, path)
    run_cfg = ckpt["pglab"]["config"]
    gamma = float(cfg["gamma"] if cfg["gamma"] is not None else run_cfg.get("gamma", 0.99))
    num_envs = int(cfg["num_envs"])
    envs = make_probe_envs(ckpt, num_envs)
    try:
        try:
            policy = build_checkpoint_policy(ckpt, envs)
        except CheckpointError:
            raise
        except Exception as err:  # a model _target_ that is gone or does not take these arguments
            raise CheckpointError(f"{path}: cannot build the model its config describes: {err}") from err
        _check_policy(policy, path)
        has_value = bool(getattr(policy, "has_value", getattr(policy, "value_out", None) is not None))
        configs, notes = configurations(list(cfg["estimators"]), list(cfg["baselines"]), gamma,
                                        list(cfg["nstep_ks"]), list(cfg["gae_lams"]), has_value)
        ref_est = str(cfg["reference"]["estimator"])
        if ref_est not in ("reward_to_go", "return"):
            raise ValueError(f"reference.estimator must be reward_to_go or return, got {ref_est!r}")
        ref_base = str(cfg["reference"]["baseline"])
        if ref_base == "auto":
            ref_base = "value" if has_value else "none"
        if ref_base not in ("none", "value"):
            raise ValueError(f"reference.baseline must be auto, none or value, got {ref_base!r}")
        if ref_base == "value" and not has_value:
            raise CheckpointError(f"{path}: reference.baseline=value but the model has no value head")
        reference_cfg = Configuration(f"{ref_est}/{ref_base}", ref_est, ref_base,
                                      partial(ESTIMATORS[ref_est], gamma=gamma))
        num_steps = -(-int(cfg["batch_steps"]) // num_envs)
        limit = envs.spec.max_episode_steps if envs.spec is not None else None
        max_tail = int(cfg["max_tail_steps"] if cfg["max_tail_steps"] is not None else (limit or 1000))
        M = int(cfg["batches"])
        M_ref = max(1, -(-int(cfg["reference_steps"]) // (num_steps * num_envs)))
        if M < 2:
            raise ValueError(f"batches must be >= 2 (a variance needs two batches), got {M}")
        torch.manual_seed(int(cfg["seed"]))
        actor = InferenceActor(policy)
        act = torch.inference_mode()(actor.act)
        value = torch.inference_mode()(actor.value)
        param_dim = policy.head.param_dim
        params: list | None = None
        grads = torch.zeros(M, len(configs), 0)
        ref_sum, ref_norm_sq = None, 0.0
        returns: list[np.ndarray] = []
        for b in range(M + M_ref):
            seed = int(cfg["seed"]) + b * num_envs  # no env seed is used twice
            full = collect_batch(envs, act, value, num_steps, max_tail, seed, param_dim)
            returns.append(full.episode_returns)
            if params is None:
                params = policy_parameters(policy, full.obs[0], full.actions[0])
                grads = torch.zeros(M, len(configs), sum(p.numel() for p in params))
            if b < M:
                grads[b] = batch_gradients(policy, params, full, num_steps, configs, bool(cfg["lookahead"]))
            else:  # reference: Monte-Carlo targets through the tail, always
                g = batch_gradients(policy, params, full, num_steps, [reference_cfg], True)[0].double()
                ref_sum = g if ref_sum is None else ref_sum + g
                ref_norm_sq += float(g @ g)
            if (b + 1) % max(1, (M + M_ref) // 10) == 0:
                log(f"pglab.tools.probe:   {label}: {b + 1}/{M + M_ref} batches")
    finally:
        envs.close()
    reference = ref_sum / M_ref
    ref_var = float((ref_norm_sq - M_ref * reference @ reference) / max(M_ref - 1, 1))  # Σ‖g − ḡ‖² / (M − 1)
    all_returns = np.concatenate(returns) if returns else np.zeros(0)
    sd = ckpt["state_dict"]
    result = CheckpointResult(
        label=label, path=str(path), env_id=run_cfg["env"]["id"],
        env_steps=int(sd["env_steps"]) if "env_steps" in sd else None, epoch=ckpt.get("epoch"), gamma=gamma,
        episode_return_mean=float(all_returns.mean()) if all_returns.size else math.nan,
        episodes_seen=int(all_returns.size), notes=notes,
        reference={"config": reference_cfg.name, "batches": M_ref, "env_steps": M_ref * num_steps * num_envs,
                   "norm": float(reference.norm()), "variance_per_batch": ref_var,
                   "relative_standard_error": math.sqrt(ref_var / M_ref) / max(float(reference.norm()), 1e-300)},
    )
    for i, c in enumerate(configs):
        result.results.append({"config": c.name, "estimator": c.estimator_name, "baseline": c.baseline,
                               "param": c.param, **summarize(grads[:, i], reference, ref_var, M_ref)})
    result.seconds = time.perf_counter() - start
    return result


# -- output -------------------------------------------------------------------------------------------------------
def format_table(r: CheckpointResult, batches: int, batch_steps: int) -> str:
    ref = r.reference
    trained = f"{r.env_steps:,} env steps trained" if r.env_steps is not None else "training steps unknown"
    lines = [f"### {r.label}: {Path(r.path).name} ({r.env_id}, {trained}, mean return of the probe's "
             f"{r.episodes_seen} episodes {r.episode_return_mean:.1f}, γ = {r.gamma:g})", "",
             f"Reference: {ref['config']}, {ref['batches']} batches = {ref['env_steps']:,} env steps; "
             f"‖ref‖ = {ref['norm']:.4g}, relative standard error {ref['relative_standard_error']:.3f}. "
             f"M = {batches} batches of {batch_steps} env steps per configuration.", "",
             "| configuration | variance | SNR | cos(mean, ref) | mean cos(batch, ref) | bias | noise floor | "
             "excess bias |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for x in r.results:
        lines.append(f"| {x['config']} | {x['variance']:.4g} | {x['snr']:.3g} | {x['cosine']:.3f} | "
                     f"{x['cosine_batch']:.3f} | {x['bias']:.4g} | {x['noise_floor']:.4g} | {x['excess_bias']:.4g} |")
    lines += [f"- {note}" for note in r.notes]
    return "\n".join(lines) + "\n"


def _matplotlib():
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(PLOT_MISSING) from err
    return Figure


def plot_sweep(results: list[CheckpointResult], estimator: str, out: Path, baseline: str = "value") -> Path | None:
    """Variance (left) and bias beside its noise floor (right) against k or λ, one baseline, a line per checkpoint."""
    Figure = _matplotlib()  # noqa: N806
    series = []
    for r in results:
        pts = sorted((x["param"], x["variance"], x["bias"], x["noise_floor"]) for x in r.results
                     if x["estimator"] == estimator and x["baseline"] == baseline)
        mc = next((x for x in r.results if x["config"] == f"reward_to_go/{baseline}"), None)
        if pts:
            series.append((r, np.array(pts), mc))
    if not series:
        return None
    fig = Figure(figsize=(11, 4.5), dpi=110, layout="constrained")
    ax_var, ax_bias = fig.subplots(1, 2)
    xlabel = "k (steps before bootstrapping from V)" if estimator == "nstep" else "λ"
    for r, pts, mc in series:
        label = f"{r.label} ({r.env_steps:,} steps, return {r.episode_return_mean:.0f})" if r.env_steps is not None \
            else r.label
        (line,) = ax_var.plot(pts[:, 0], pts[:, 1], "o-", label=label)
        if mc is not None:
            ax_var.axhline(mc["variance"], color=line.get_color(), ls=":", lw=1)
        ax_bias.plot(pts[:, 0], pts[:, 2], "o-", color=line.get_color(), label=label)
        ax_bias.plot(pts[:, 0], pts[:, 3], ls="--", lw=1, color=line.get_color())
    for ax in (ax_var, ax_bias):
        ax.set_xlabel(xlabel)
        ax.grid(True, alpha=0.3)
        if estimator == "nstep":
            ax.set_xscale("log")
    ax_var.set_yscale("log")
    ax_var.set_ylabel("trace of the covariance of the batch gradient")
    ax_var.set_title(f"variance, {estimator} with baseline={baseline}\n(dotted: reward-to-go − {baseline}, "
                     "Monte Carlo)", fontsize=10)
    ax_bias.set_ylabel("‖mean − reference‖")
    ax_bias.set_title("distance of the mean gradient from the Monte-Carlo reference\n(dashed: the noise floor, "
                      "what an unbiased estimator shows)", fontsize=10)
    ax_var.legend(fontsize=8)
    env_id = results[0].env_id
    fig.suptitle(f"pglab.tools.probe on {env_id}: frozen policies, M batches per point")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


def _as_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, ListConfig | list | tuple):
        return [str(v) for v in value]
    return [str(value)]


def checkpoints_from_cfg(cfg: DictConfig) -> list[tuple[str, Path]]:
    paths = _as_list(cfg.ckpt_path)
    if paths and cfg.run_dir is not None:
        raise ValueError("give ckpt_path or run_dir, not both")
    if paths:
        for p in paths:
            if not Path(p).is_file():
                raise CheckpointError(f"checkpoint not found: {p}")
        return [(Path(p).stem, Path(p)) for p in paths]
    if cfg.run_dir is None:
        raise ValueError("which policy? pass run_dir=outputs/<experiment or algo>/<env>/<time> (a training run) or "
                         "ckpt_path=<file.ckpt>")
    return find_checkpoints(cfg.run_dir, int(cfg.snapshots))


def default_output_dir(cfg: DictConfig, first: Path) -> Path:
    if cfg.output_dir is not None:
        return Path(cfg.output_dir)
    if cfg.run_dir is not None:
        return Path(cfg.run_dir) / "probe"
    parent = first.parent
    return (parent.parent if parent.name == "checkpoints" else parent) / "probe"


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="probe")
def main(cfg: DictConfig) -> None:
    torch.set_num_threads(1)
    try:
        if cfg.plots:
            _matplotlib()
        checkpoints = checkpoints_from_cfg(cfg)
        for _, p in checkpoints:  # refuse an unusable file before spending minutes on the others
            load_checkpoint(p)
        out = default_output_dir(cfg, checkpoints[0][1])
        results = []
        for label, path in checkpoints:
            print(f"pglab.tools.probe: {label}: {path}", flush=True)
            results.append(probe_checkpoint(path, label, cfg, log=lambda msg: print(msg, flush=True)))
    except (CheckpointError, ImportError, ValueError) as err:
        print(f"pglab.tools.probe: {err}", file=sys.stderr)
        sys.exit(2)
    batch_steps = -(-int(cfg.batch_steps) // int(cfg.num_envs)) * int(cfg.num_envs)
    tables = [format_table(r, int(cfg.batches), batch_steps) for r in results]
    header = (f"# pglab.tools.probe\n\nPolicy-gradient estimates of frozen policies: variance = trace of the "
              "covariance "
              f"over M = {cfg.batches} batches, SNR = ‖mean‖²/variance, cosine and bias against a Monte-Carlo "
              "reference gradient (definitions: `src/pglab/tools/probe.py`).\n\n")
    text = header + "\n".join(tables)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "probe.md").write_text(text)
    payload = {"config": OmegaConf.to_container(cfg, resolve=True), "batch_steps": batch_steps,
               "checkpoints": [dataclasses.asdict(r) for r in results]}
    (out / "probe.json").write_text(json.dumps(payload, indent=2, default=float) + "\n")
    written = [out / "probe.json", out / "probe.md"]
    if cfg.plots:
        for est, name in (("nstep", "variance_vs_k.png"), ("gae", "variance_vs_lambda.png")):
            p = plot_sweep(results, est, out / name)
            if p is not None:
                written.append(p)
    print("pglab.tools.probe: wrote " + ", ".join(str(p) for p in written))


if __name__ == "__main__":
    main()
