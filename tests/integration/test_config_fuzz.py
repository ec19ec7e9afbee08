"""Fuzz the config space: every combination of overrides is refused at start-up or trains cleanly.

Each example draws a handful of overrides (valid and invalid values, per key) and composes the real Hydra config
in-process. The only acceptable outcomes are:

- a refusal at start-up: a Hydra compose error, or a ``pglab.run.checks.ConfigError`` from ``build`` whose message
  is non-empty and names a config key;
- a short training run whose every logged ``train/*`` metric is finite (``train/explained_variance`` may be NaN:
  it is undefined when the targets have no variance; an update skipped under ``learner.nonfinite=skip`` may log
  its non-finite loss, and counts itself in ``train/skipped_updates``);
- with ``learner.lr=1e30`` only: a clean stop, ``pglab.learner.module.NonFiniteError`` (or the rollout's
  ``NonFiniteRolloutError``) with a message.

Any other exception — a traceback from inside pglab, Lightning or torch — fails the test. A value that is invalid
whatever else is set (``learner.lr=-1``, ``seed=abc``, ...) must be refused.
"""

from __future__ import annotations

import math
import re

from hydra.errors import HydraException
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st
from lightning.pytorch.loggers import Logger
from omegaconf import OmegaConf

from pglab.learner.module import NonFiniteError
from pglab.rollout.datamodule import NonFiniteRolloutError
from pglab.run.checks import ConfigError
from pglab.run.train import build

# key -> the values the fuzz draws for it (as a user types them on the command line)
CHOICES: dict[str, list[str]] = {
    "estimator": ["return", "reward_to_go", "nstep", "gae", "gea"],  # gea: not an option (a compose error)
    "baseline": ["none", "mean", "value", "group"],
    "surrogate": ["reinforce", "importance", "kl_penalty", "clip", "grpo", "gspo"],
    "env": ["cartpole", "pendulum"],
    "model.shared": ["true", "false"],
    "model.value_head": ["true", "false"],
    "model.hidden": ["[]", "[8]", "[16,16]"],
    "collector.kind": ["segments", "episodes", "trajectories"],
    "collector.num_steps": ["0", "1", "4", "16"],
    "env.num_envs": ["0", "1", "2", "4"],
    "collector.num_groups": ["0", "1", "2"],
    "collector.group_size": ["0", "1", "2", "4"],
    "learner.epochs": ["0", "1", "2", "1000"],
    "learner.num_minibatches": ["0", "1", "2", "1000"],
    "learner.lr": ["-1", "1e-3", "1e30"],
    "learner.normalize_advantages": ["true", "false"],
    "learner.max_grad_norm": ["null", "0.5", "-1"],
    "learner.nonfinite": ["stop", "skip"],
    "gamma": ["-0.5", "0.9", "1.0", "2"],
    "lam": ["-0.5", "0.9", "1.0", "2"],
    "nstep_k": ["0", "1", "3"],
    "seed": ["0", "7", "abc"],
    "aggregation": ["null", "token_mean", "episode_sum", "episode_mean", "constant", "sum"],
    "env.max_episode_steps": ["null", "0", "5"],
}
ALGOS = ["ppo", "ppo_kl", "a2c", "reinforce", "reinforce_rtg", "reinforce_baseline", "grpo", "gspo"]

# values no other setting can make valid: the run must be refused at start-up
ALWAYS_INVALID = {
    ("env.num_envs", "0"), ("learner.epochs", "0"), ("learner.num_minibatches", "0"), ("learner.lr", "-1"),
    ("learner.max_grad_norm", "-1"), ("seed", "abc"), ("env.max_episode_steps", "0"),
    ("collector.kind", "trajectories"),
}

# every run: a tiny budget, no eval, no checkpoints, no logger (the test records the metrics itself)
QUIET = ["eval.enabled=false", "checkpoint.enabled=false", "logger=none", "trainer.enable_progress_bar=false"]


class Recorder(Logger):
    """Keeps every row of metrics the module logs (one per epoch)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, float]] = []

    @property
    def name(self) -> str:
        return "recorder"

    @property
    def version(self) -> str:
        return "0"

    def log_metrics(self, metrics, step=None) -> None:
        self.rows.append({k: float(v) for k, v in metrics.items()})

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass


@st.composite
def override_lists(draw) -> list[str]:
    """An algo preset, then a few keys with drawn values (few, so some draws are runnable)."""
    overrides = [f"algo={draw(st.sampled_from(ALGOS))}"]
    keys = draw(st.lists(st.sampled_from(sorted(CHOICES)), unique=True, max_size=5))
    for key in keys:
        overrides.append(f"{key}={draw(st.sampled_from(CHOICES[key]))}")
    overrides.append(f"total_env_steps={draw(st.sampled_from([64, 300]))}")  # lowered for costly updates
    return overrides


GENERIC = {"id", "env", "model", "name", "kind", "kwargs", "_target_", "_partial_"}


def _names_a_key(message: str, cfg) -> bool:
    """Whether a refusal names a setting: a dotted key (``learner.lr``), a top-level or leaf key (``seed``,
    ``eps_low``) or a component group, as a whole word."""
    names: set[str] = {"estimator", "baseline", "surrogate", "algo"}

    def walk(node, prefix: str) -> None:
        for key, value in node.items():
            names.add(f"{prefix}{key}")
            if key not in GENERIC and len(str(key)) > 2:
                names.add(str(key))
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    return any(re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", message) for name in names - GENERIC)


def _updates_per_rollout(cfg) -> tuple[int, int]:
    """(rows, optimizer updates) of one rollout, roughly: the sampler caps minibatches at the rollout's size."""
    env, col, learner = cfg.env, cfg.collector, cfg.learner
    if col.kind == "episodes":
        length = env.max_episode_steps or (200 if env.id.startswith("Pendulum") else 25)
        rows = max(0, col.num_groups) * max(0, col.group_size) * max(1, length)
    else:
        rows = max(0, env.num_envs) * max(0, col.num_steps)
    return rows, max(0, learner.epochs) * max(1, min(learner.num_minibatches, rows))


def check(overrides: list[str], make_cfg) -> str:
    """Run one example; returns the outcome ('compose', 'refused', 'stopped', 'trained') or fails."""
    drawn = {tuple(o.split("=", 1)) for o in overrides}
    must_refuse = bool(drawn & ALWAYS_INVALID)
    diverges = ("learner.lr", "1e30") in drawn
    try:
        cfg = make_cfg(*QUIET, *overrides)
    except HydraException:
        return "compose"
    # bounded compute, not a correctness rule: 1000 epochs x 1000 minibatches is not "a few updates", and a
    # rollout of 1 row needs a rollout (a Lightning epoch) per env step
    rows, updates = _updates_per_rollout(cfg)
    rollouts = max(1, min(16, 400 // max(1, updates)))
    cfg.total_env_steps = min(cfg.total_env_steps, max(1, rows) * rollouts)
    try:
        r = build(cfg)
    except ConfigError as err:
        message = str(err)
        assert message.strip(), f"empty refusal for {overrides}"
        assert _names_a_key(message, cfg), f"refusal names no config key: {message!r} for {overrides}"
        return "refused"
    assert not must_refuse, f"{overrides} should have been refused at start-up"
    assume(updates <= 1000)
    recorder = Recorder()
    r.trainer.loggers = [recorder]
    try:
        r.trainer.fit(r.module, datamodule=r.datamodule)
    except (NonFiniteError, NonFiniteRolloutError) as err:
        assert diverges, f"{type(err).__name__} without learner.lr=1e30 for {overrides}: {err}"
        assert str(err).strip()
        return "stopped"
    assert int(r.module.env_steps) >= 1, f"no env steps for {overrides}"
    assert recorder.rows, f"nothing logged for {overrides}"
    for row in recorder.rows:
        skipped = row.get("train/skipped_updates", 0.0) > 0
        for key, value in row.items():
            if not key.startswith("train/") or key == "train/explained_variance":
                continue
            assert math.isfinite(value) or skipped, f"{key}={value} at env step {row.get('env_steps')} for {overrides}"
    return "trained"


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(overrides=override_lists())
# always tried, whatever the draw: the divergent learning rate under both non-finite policies, a compose error,
# more minibatches than rows without normalisation, and 1-row rollouts
@example(overrides=["algo=ppo", "learner.lr=1e30", "total_env_steps=300"])
@example(overrides=["algo=ppo", "env=pendulum", "learner.lr=1e30", "learner.nonfinite=skip", "total_env_steps=300"])
@example(overrides=["algo=grpo", "learner.lr=1e30", "learner.nonfinite=skip", "env.max_episode_steps=5",
                    "total_env_steps=300"])
@example(overrides=["algo=ppo", "estimator=gea", "total_env_steps=64"])
@example(overrides=["algo=a2c", "env.num_envs=1", "collector.num_steps=1", "learner.num_minibatches=1000",
                    "learner.normalize_advantages=false", "total_env_steps=64"])
def test_config_fuzz(overrides, make_cfg):
    event(check(overrides, make_cfg))  # pytest --hypothesis-show-statistics: how many refused / trained / ...
