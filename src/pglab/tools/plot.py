"""Learning curves and a final-score table from the CSV metrics of pglab runs.

``python -m pglab.tools.plot multirun/2026-11-25_22-00-00 [more dirs or globs] --group-by surrogate``

Runs are found by searching the given paths recursively for ``csv/metrics.csv`` (Lightning's CSVLogger); a run's
directory is the folder above ``csv/``, and its ``.hydra/`` folder gives the config (``config.yaml``), the Hydra
choices (``hydra.yaml``: ``hydra.runtime.choices`` — ``algo``, ``estimator``, ``baseline``, ``surrogate``, …) and
the command-line overrides (``overrides.yaml``).

Statistics (following Agarwal et al., 2021, "Deep RL at the edge of the statistical precipice"), computed with
``scipy.stats`` (the ``plot`` extra), not by hand. (rliable itself is not a dependency: rliable 1.2 pins
``arch<8``, and arch 7.x fails at import with pandas 3 — ``TypeError`` in ``deprecate_kwarg`` — so a plain
``pip install rliable`` next to numpy 2 / pandas 3 does not work without pinning pandas < 3.)

- **IQM** (interquartile mean) of a group's runs: ``scipy.stats.trim_mean(values, 0.25)``, the 25% trimmed mean —
  the same call ``rliable.metrics.aggregate_iqm`` makes. Convention: ``floor(0.25 n)`` values are cut from each end
  of the sorted values and the rest are averaged, so with n divisible by 4 it is the mean of the middle n/2 values
  (IQM(1..8) = mean(3, 4, 5, 6) = 4.5); n = 5 gives the mean of the middle 3, n = 6 the middle 4, and n <= 3 cuts
  nothing (the plain mean).
- **95% CI**: ``scipy.stats.bootstrap`` of the IQM, percentile method, resampling a group's runs with replacement
  (2000 resamples, RNG seeded, so the band is reproducible). Each group is bootstrapped on its own: one group is one
  stratum, which is rliable's stratified bootstrap when a group holds the runs of one task (env). scipy's bootstrap is
  not stratified *within* a group, so a group that pools runs of several envs is resampled as one pool (and its IQM
  mixes the envs' return scales; group by ``env.id`` to avoid both). A group of one run has no CI (``n/a``).
- **Counts**: groups count runs; the labels say "n=4 seeds" when every run has its own ``seed`` and "n=6 runs
  (3 seeds)" when runs share one (e.g. repeats of a seed), and the table has ``runs`` and ``seeds`` columns: the CI
  is over runs, whatever their seeds.
- **Curves**: a group's runs are linearly interpolated onto a common grid of ``--points`` x values from the
  earliest first x to the *longest* run's end. A run covers its x range from its first point of the metric to its
  last row of any metric (it ran until then): where the metric was not logged again at the end (e.g. no CartPole
  episode of 500 steps finished in the last rollouts), its last value is held, so runs of one budget end together.
  Runs that end within one logged interval of each other (one budget: the env-step counts differ by part of a
  rollout) end the curve at the shortest one's end, and runs whose first points are as close start it at the
  latest of them. At each grid point the IQM is over the runs that cover it; the band needs at least 2 of them and
  is dropped where fewer remain. Where fewer than all of the group's runs
  contribute (shorter runs have ended), the curve is dashed and ``n=k`` marks where the count changes.
- **Merged runs**: the command warns when a group holds runs whose configs differ in more than the seed (keys other
  than the grouping keys, where and how a run was recorded left out): one curve would average different
  configurations; add the keys it names to ``--group-by``.
- **Final score** (the table) of a run: the mean of the metric over the last 10% of *its own* logged points (at
  least one point), which smooths the noise of a single last value. Runs of different length are each scored at
  their own end (the table notes such groups and the command warns), so the table's IQM is over all runs of the
  group, like the left part of the curve, not only over the runs still present at the curve's right end.

numpy, scipy and the standard library are needed for the statistics and the table; matplotlib is imported when the
PNG is drawn (both come with the ``plot`` extra).
"""

from __future__ import annotations

import argparse
import csv
import glob
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

__all__ = ["Run", "Group", "iqm", "bootstrap_ci", "runs_label", "final_score", "find_runs", "load_run",
           "default_group_keys", "group_runs", "merged_differences", "aggregate_curves", "score_table",
           "plot_curves", "main"]

MATPLOTLIB_MISSING = "plotting needs matplotlib: pip install 'pglab[plot]'"
SCIPY_MISSING = "the statistics (IQM, bootstrap CI) need scipy: pip install 'pglab[plot]'"
SKIP_KEYS = {"seed"}  # never a default grouping key: seeds are what a group aggregates over
_NON_CONFIG_OVERRIDES = ("hydra.", "hydra/", "paths.", "ckpt_path")

METRIC_LABELS = {
    "rollout/episode_return": "mean episode return per training rollout (undiscounted)",
    "rollout/return_mean20": "mean return of the last 20 training episodes",
    "eval/return_mean": "evaluation return (deterministic policy, mean over episodes)",
    "rollout/episode_length": "episode length (steps)",
}
X_LABELS = {"env_steps": "environment steps (transitions collected)", "epoch": "epoch (= rollouts collected)",
            "step": "optimizer steps"}


# -- statistics ---------------------------------------------------------------------------------------------
IQM_CUT = 0.25  # scipy.stats.trim_mean's proportiontocut: floor(0.25 n) values off each end


def _stats():
    try:
        from scipy import stats
    except ImportError as err:
        raise ImportError(SCIPY_MISSING) from err
    return stats


def iqm(values, axis: int = 0) -> np.ndarray | float:
    """Interquartile mean along ``axis``: ``scipy.stats.trim_mean(values, 0.25, axis)`` (see the module docstring)."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim == 0 or x.shape[axis] < 1:
        raise ValueError("IQM of an empty set")
    out = _stats().trim_mean(x, IQM_CUT, axis=axis)
    return float(out) if np.ndim(out) == 0 else out


def bootstrap_ci(values, stat: Callable = iqm, resamples: int = 2000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[np.ndarray | float, np.ndarray | float]:
    """Percentile bootstrap CI (``scipy.stats.bootstrap``) of ``stat`` over the runs (axis 0) of ``values``.

    Runs are resampled with replacement ``resamples`` times (RNG ``numpy.random.default_rng(seed)``); ``stat`` must
    take ``axis``. Returns (low, high), shaped like one statistic; NaN when there are fewer than 2 runs (no CI).
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim == 0 or x.shape[0] < 1:
        raise ValueError("bootstrap of an empty set")
    if x.shape[0] < 2:
        nan = np.full(x.shape[1:], np.nan)
        return (math.nan, math.nan) if nan.ndim == 0 else (nan, nan.copy())
    res = _stats().bootstrap((x,), stat, n_resamples=resamples, confidence_level=confidence, method="percentile",
                             axis=0, vectorized=True, batch=max(1, 2_000_000 // x.size),
                             rng=np.random.default_rng(seed))
    lo, hi = res.confidence_interval
    if np.ndim(lo) == 0:
        return float(lo), float(hi)
    return np.asarray(lo), np.asarray(hi)


def final_score(y: Sequence[float], last_frac: float = 0.1) -> float:
    """Mean of the last ``last_frac`` of the logged points (at least one)."""
    y = np.asarray(y, dtype=np.float64)
    if y.size == 0:
        return math.nan
    k = max(1, math.ceil(last_frac * y.size))
    return float(y[-k:].mean())


# -- runs ---------------------------------------------------------------------------------------------------
@dataclass
class Run:
    path: Path                        # the run directory (the folder above csv/)
    x: np.ndarray                     # sorted, unique
    y: np.ndarray
    config: dict = field(default_factory=dict)
    choices: dict = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    end: float | None = None          # the last x of any row (the run's own end); None: x[-1]

    @property
    def last_x(self) -> float:
        """Where the run ends: its last row of any metric, never before its last point of this one."""
        return max(float(self.x[-1]), self.end) if self.end is not None else float(self.x[-1])

    def lookup(self, key: str):
        """A Hydra choice (``surrogate``, ``algo``, …) if ``key`` names one, else the dotted config path."""
        if key in self.choices:
            return self.choices[key]
        node = self.config
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return _MISSING
            node = node[part]
        return node


class _Missing:
    def __repr__(self) -> str:
        return "n/a"


_MISSING = _Missing()


def _natural_key(path: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def find_runs(paths: Sequence[str]) -> list[Path]:
    """Run directories (the parents of ``csv/``) under ``paths`` (dirs, metrics files or glob patterns)."""
    found: set[Path] = set()
    for pattern in paths:
        matches = glob.glob(pattern, recursive=True) if glob.has_magic(pattern) else [pattern]
        for match in matches:
            p = Path(match)
            if p.is_file() and p.name == "metrics.csv":
                found.add(p.resolve().parent.parent)
            elif p.is_dir():
                if (p / "csv" / "metrics.csv").is_file():
                    found.add(p.resolve())
                found.update(m.resolve().parent.parent for m in p.rglob("metrics.csv") if m.parent.name == "csv")
    return sorted(found, key=_natural_key)


def _float(value: str | None) -> float | None:
    if value is None or value.strip() == "":
        return None
    try:
        v = float(value)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def read_curve(metrics_csv: Path, metric: str, x_key: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of ``metric`` against ``x_key`` from a CSVLogger file whose rows may each hold only some columns.

    A row with the metric but no x takes the x logged at the same ``step`` in another row. Points are sorted by x;
    for repeated x (e.g. a resumed run) the last logged value is kept."""
    with open(metrics_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    x_at_step: dict[str, float] = {}
    for row in rows:
        x = _float(row.get(x_key))
        if x is not None and row.get("step") not in (None, ""):
            x_at_step[row["step"]] = x
    points: dict[float, float] = {}
    for row in rows:
        y = _float(row.get(metric))
        if y is None:
            continue
        x = _float(row.get(x_key))
        if x is None:
            x = x_at_step.get(row.get("step", ""))
        if x is not None:
            points[x] = y
    xs = np.array(sorted(points), dtype=np.float64)
    return xs, np.array([points[x] for x in xs], dtype=np.float64)


def read_end(metrics_csv: Path, x_key: str) -> float | None:
    """The largest ``x_key`` of any row (of any metric): how far the run got."""
    with open(metrics_csv, newline="") as f:
        xs = [x for row in csv.DictReader(f) if (x := _float(row.get(x_key))) is not None]
    return max(xs) if xs else None


def _read_yaml(path: Path):
    if not path.is_file():
        return None
    with open(path) as f:
        return yaml.safe_load(f)


def load_run(run_dir: Path, metric: str, x_key: str) -> Run:
    x, y = read_curve(run_dir / "csv" / "metrics.csv", metric, x_key)
    end = read_end(run_dir / "csv" / "metrics.csv", x_key) if x.size else None
    hydra_dir = run_dir / ".hydra"
    config = _read_yaml(hydra_dir / "config.yaml") or {}
    hydra_cfg = _read_yaml(hydra_dir / "hydra.yaml") or {}
    choices = ((hydra_cfg.get("hydra") or {}).get("runtime") or {}).get("choices") or {}
    overrides = _read_yaml(hydra_dir / "overrides.yaml") or []
    return Run(run_dir, x, y, config, {k: v for k, v in choices.items() if not k.startswith("hydra/")},
               [str(o) for o in overrides], end)


# -- groups -------------------------------------------------------------------------------------------------
def _override_key(override: str) -> str | None:
    if override.startswith("~") or "=" not in override:
        return None
    key = override.split("=", 1)[0].lstrip("+")
    if key.startswith(_NON_CONFIG_OVERRIDES):
        return None
    return key


def _leaves(node, prefix: str = "") -> dict[str, object]:
    if isinstance(node, dict):
        out: dict[str, object] = {}
        for k, v in node.items():
            out.update(_leaves(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


def _fmt(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def default_group_keys(runs: Sequence[Run]) -> list[str]:
    """The keys whose values differ between runs, seed excluded: first among the command-line overrides (a sweep's
    swept keys), else among the Hydra choices, else among the config's leaves (paths and run_name excluded)."""
    def differing(keys: Sequence[str]) -> list[str]:
        return [k for k in keys if k not in SKIP_KEYS
                and len({_fmt(r.lookup(k)) for r in runs}) > 1]

    override_keys = list(dict.fromkeys(k for r in runs for o in r.overrides if (k := _override_key(o))))
    keys = differing(override_keys)
    if keys:
        return keys
    keys = differing(list(dict.fromkeys(k for r in runs for k in r.choices)))
    if keys:
        return keys
    leaves = dict.fromkeys(k for r in runs for k in _leaves(r.config)
                           if not k.startswith(("paths.", "hydra.")) and k not in ("run_name", "ckpt_path"))
    return differing(list(leaves))


@dataclass
class Group:
    label: str
    runs: list[Run]
    grid: np.ndarray | None = None     # common x grid, up to the longest run's last x
    curve: np.ndarray | None = None    # IQM per grid point over the runs covering it (NaN where none does)
    low: np.ndarray | None = None      # 95% CI per grid point (NaN where fewer than 2 runs cover it)
    high: np.ndarray | None = None
    count: np.ndarray | None = None    # runs covering each grid point


def seed_count(runs: Sequence[Run]) -> int | None:
    """Distinct ``seed`` values among ``runs``; None when some run's config has no seed."""
    seeds = [r.lookup("seed") for r in runs]
    if any(s is _MISSING for s in seeds):
        return None
    return len({_fmt(s) for s in seeds})


def runs_label(runs: Sequence[Run]) -> str:
    """``n=4 seeds`` when every run has its own seed, else ``n=6 runs (3 seeds)`` (``n=6 runs`` if seeds unknown)."""
    n, k = len(runs), seed_count(runs)
    if k == n:
        return f"n={n} seed{'s' if n != 1 else ''}"
    runs_ = f"n={n} run{'s' if n != 1 else ''}"
    return runs_ if k is None else f"{runs_} ({k} seed{'s' if k != 1 else ''})"


# where and how a run was recorded, not what it trained: differences here do not make runs different
_RECORDING_KEYS = {"seed", "run_name", "ckpt_path", "progress_every_s", "population"}
_RECORDING_PREFIXES = ("paths.", "hydra.", "logger.", "trainer.")
_TRAINER_KEYS = ("trainer.accelerator", "trainer.devices", "trainer.num_nodes", "trainer.strategy",
                 "trainer.precision")


def merged_differences(group: Group, keys: Sequence[str]) -> dict[str, list[str]]:
    """Keys (Hydra choices and config leaves) whose values differ between ``group``'s runs, besides the grouping
    ``keys``, the seed (and values named ``*.seed``) and the recording settings: {key: sorted distinct values}."""
    if len(group.runs) < 2:
        return {}
    # choices first: algo=ppo vs algo=a2c is named before the leaves it sets
    candidates = dict.fromkeys(k for r in group.runs for k in r.choices)
    candidates.update(dict.fromkeys(k for r in group.runs for k in _leaves(r.config)))
    out = {}
    for key in candidates:
        if key in keys or key in _RECORDING_KEYS or key.endswith(".seed") or key.startswith("hydra/") or \
                (key.startswith(_RECORDING_PREFIXES) and key not in _TRAINER_KEYS):
            continue
        values = {_fmt(r.lookup(key)) for r in group.runs}
        if len(values) > 1:
            out[key] = sorted(values)
    return out


def group_runs(runs: Sequence[Run], keys: Sequence[str]) -> list[Group]:
    groups: dict[str, list[Run]] = {}
    for r in runs:
        label = ", ".join(f"{k}={_fmt(r.lookup(k))}" for k in keys) if keys else "all runs"
        groups.setdefault(label, []).append(r)
    return [Group(label, members) for label, members in sorted(groups.items())]


def _end_tolerance(runs: Sequence[Run]) -> float:
    """How far apart runs of one budget may end: less than one logged interval (the smallest of the runs' median
    gaps) and at most 2% of the x span."""
    gaps = [float(np.median(np.diff(r.x))) for r in runs if r.x.size > 1]
    span = max(r.last_x for r in runs) - min(float(r.x[0]) for r in runs)
    return min(min(gaps), 0.02 * span) if gaps else 0.0


def ends_differ(runs: Sequence[Run]) -> bool:
    """Whether the runs end apart by more than ``_end_tolerance`` (a shorter budget, a run stopped early); runs of
    one budget end within part of a rollout of each other (the env-step counter skips autoreset rows)."""
    runs = [r for r in runs if r.x.size]
    ends = [r.last_x for r in runs]
    return bool(ends) and max(ends) - min(ends) > _end_tolerance(runs)


def common_end(runs: Sequence[Run]) -> float:
    """The x a group's curve ends at: the longest run's end, or the shortest's when they end together."""
    ends = [r.last_x for r in runs]
    return max(ends) if ends_differ(runs) else min(ends)


def aggregate_curves(group: Group, points: int = 200, resamples: int = 2000, seed: int = 0) -> Group:
    """IQM and bootstrap band per point of a grid up to the longest run, over the runs that cover each point.

    The grid spans [earliest first x, latest last x]; a run contributes (linearly interpolated) where the grid point
    lies within its own logged x range. The band is NaN where fewer than 2 runs contribute."""
    starts = [float(r.x[0]) for r in group.runs]
    # runs whose first points lie within the same tolerance start together (at the latest of them): no dashed
    # stub where the first rollouts' episodes ended at slightly different env steps
    lo = max(starts) if max(starts) - min(starts) <= _end_tolerance(group.runs) else min(starts)
    hi = common_end(group.runs)
    grid = np.linspace(lo, hi, points) if hi > lo else np.array([lo])
    ys = np.full((len(group.runs), grid.size), np.nan)
    for i, r in enumerate(group.runs):
        inside = (grid >= r.x[0]) & (grid <= r.last_x)
        ys[i, inside] = np.interp(grid[inside], r.x, r.y)  # np.interp holds the last value up to the run's end
    present = ~np.isnan(ys)
    curve, low, high = (np.full(grid.size, np.nan) for _ in range(3))
    # contiguous stretches of the grid covered by the same runs: one IQM / bootstrap call per stretch
    cuts = np.flatnonzero((present[:, 1:] != present[:, :-1]).any(axis=0)) + 1
    for idx in np.split(np.arange(grid.size), cuts):
        members = present[:, idx[0]]
        if not members.any():
            continue
        block = ys[members][:, idx]
        curve[idx] = iqm(block, axis=0)
        low[idx], high[idx] = bootstrap_ci(block, iqm, resamples=resamples, seed=seed)
    group.grid, group.curve, group.low, group.high, group.count = grid, curve, low, high, present.sum(axis=0)
    return group


@dataclass
class ScoreRow:
    group: str
    runs: int
    iqm: float
    mean: float
    ci_low: float          # NaN for a single run
    ci_high: float
    seeds: int | None = None
    last_x: tuple[float, float] | None = None   # (min, max) of the runs' last x
    uneven: bool = False                          # the runs end more than one logged interval apart


def score_table(groups: Sequence[Group], last_frac: float = 0.1, resamples: int = 2000,
                seed: int = 0) -> list[ScoreRow]:
    """Per group: IQM, mean and bootstrap CI of the runs' final scores (each run's own last ``last_frac``)."""
    rows = []
    for g in groups:
        scores = np.array([final_score(r.y, last_frac) for r in g.runs])
        low, high = bootstrap_ci(scores, iqm, resamples=resamples, seed=seed)
        ends = [r.last_x for r in g.runs if r.x.size]
        rows.append(ScoreRow(g.label, len(scores), iqm(scores), float(scores.mean()), low, high, seed_count(g.runs),
                             (min(ends), max(ends)) if ends else None, ends_differ(g.runs)))
    return rows


def _ci(low: float, high: float) -> str:
    return "n/a" if math.isnan(low) or math.isnan(high) else f"[{low:.2f}, {high:.2f}]"


def format_table(rows: Sequence[ScoreRow], metric: str, last_frac: float, resamples: int,
                 x_key: str = "env_steps") -> str:
    pct = f"{last_frac * 100:g}%"
    lines = [f"Final score per run = mean of `{metric}` over the last {pct} of its own logged points; "
             f"IQM (25% trimmed mean, scipy.stats.trim_mean) and mean over runs; 95% CI of the IQM by percentile "
             f"bootstrap over runs (scipy.stats.bootstrap, {resamples} resamples; n/a for a single run).", "",
             "| group | runs | seeds | IQM | mean | 95% CI of IQM |", "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        seeds = "n/a" if r.seeds is None else str(r.seeds)
        lines.append(f"| {r.group} | {r.runs} | {seeds} | {r.iqm:.2f} | {r.mean:.2f} | {_ci(r.ci_low, r.ci_high)} |")
    uneven = [r for r in rows if r.last_x and r.uneven]
    if uneven:
        lines += ["", f"Runs of different length (each scored at its own end), last `{x_key}`: "
                  + "; ".join(f"{r.group}: {_si(r.last_x[0])} to {_si(r.last_x[1])}" for r in uneven) + "."]
    return "\n".join(lines) + "\n"


# -- drawing ------------------------------------------------------------------------------------------------
def _matplotlib():
    try:
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
        from matplotlib.patches import Patch
        from matplotlib.ticker import FuncFormatter
    except ImportError as err:
        raise ImportError(MATPLOTLIB_MISSING) from err
    return Figure, Line2D, Patch, FuncFormatter


def _si(value: float, _pos=None) -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= div:
            return f"{value / div:g}{suffix}"
    return f"{value:g}"


def plot_curves(groups: Sequence[Group], out: Path, metric: str, x_key: str, title: str | None = None) -> Path:
    """Draw IQM curves with shaded 95% CIs (groups already aggregated) to a PNG. Needs matplotlib.

    A curve is solid where all of its group's runs contribute and dashed where only some do (shorter runs have
    ended), with ``n=k`` where the count changes; the band is drawn only where at least 2 runs contribute."""
    Figure, Line2D, Patch, FuncFormatter = _matplotlib()  # noqa: N806
    fig = Figure(figsize=(9, 5.5), dpi=120, layout="constrained")
    ax = fig.add_subplot()
    partial_any = False
    for g in groups:
        n = len(g.runs)
        label = f"{g.label}: {runs_label(g.runs)}"
        count = g.count if g.count is not None else np.full(g.grid.size, n)
        if g.grid.size == 1:
            has_ci = bool(np.isfinite(g.low).all() and np.isfinite(g.high).all())
            yerr = [g.curve - g.low, g.high - g.curve] if has_ci else None
            ax.errorbar(g.grid, g.curve, yerr=yerr, fmt="o", capsize=4, label=label)
            continue
        full = count == n
        partial = ~full & (count > 0)
        (line,) = ax.plot(g.grid, np.where(full, g.curve, np.nan), lw=2, label=label)
        color = line.get_color()
        if partial.any():
            partial_any = True
            joined = partial | np.r_[partial[1:], False] | np.r_[False, partial[:-1]]  # meet the solid part
            ax.plot(g.grid, np.where(joined & (count > 0), g.curve, np.nan), lw=1.5, ls="--", color=color)
            for i in np.flatnonzero(np.diff(count)) + 1:
                if count[i] > 0:
                    ax.annotate(f"n={count[i]}", (g.grid[i], g.curve[i]), textcoords="offset points", xytext=(2, 4),
                                fontsize=7, color=color)
        if np.isfinite(g.low).any():
            ax.fill_between(g.grid, g.low, g.high, where=np.isfinite(g.low) & np.isfinite(g.high), color=color,
                            alpha=0.2, lw=0)
    handles, _ = ax.get_legend_handles_labels()
    kind = "shaded" if all(g.grid.size > 1 for g in groups) else \
        "error bars" if all(g.grid.size == 1 for g in groups) else "shaded / error bars"
    handles.append(Patch(facecolor="0.5", alpha=0.3, label=f"{kind}: 95% CI of the IQM (bootstrap over runs)"))
    if partial_any:
        handles.append(Line2D([], [], color="0.3", lw=1.5, ls="--",
                              label="dashed: only the runs still going (n=k); band needs ≥ 2 runs"))
    ax.legend(handles=handles, loc="best", fontsize=9, framealpha=0.9)
    envs = sorted({_fmt(r.lookup("env.id")) for g in groups for r in g.runs} - {"n/a"})
    if title is None:
        title = f"{metric} on {', '.join(envs) or 'unknown env'}"
        title += "\nIQM over runs with 95% bootstrap CI"
    ax.set_title(title)
    ax.set_xlabel(X_LABELS.get(x_key, x_key))
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.xaxis.set_major_formatter(FuncFormatter(_si))
    ax.grid(True, alpha=0.3)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


# -- command line -------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pglab.tools.plot",
        description="Learning curves (IQM over runs, 95% bootstrap CI) and a final-score table from the "
                    "csv/metrics.csv files of pglab runs (e.g. a Hydra multirun directory).")
    p.add_argument("paths", nargs="+", help="run or multirun directories, metrics.csv files, or glob patterns")
    p.add_argument("--group-by", nargs="+", default=None, metavar="KEY",
                   help="config keys (dotted paths like env.id) or Hydra choices (algo, surrogate, estimator, ...); "
                        "default: the keys that differ between runs, seed excluded")
    p.add_argument("--metric", default="rollout/episode_return", help="metric column (default: %(default)s)")
    p.add_argument("--x", default="env_steps", help="x-axis column (default: %(default)s)")
    p.add_argument("--out", default=None, help="PNG to write ('' for none; default: curves.png in the runs' common "
                                               "folder, not the current one)")
    p.add_argument("--table", default=None, help="markdown table to write ('' for none; default: scores.md beside "
                                                 "the curves)")
    p.add_argument("--title", default=None, help="plot title (default: the metric and env)")
    p.add_argument("--points", type=int, default=200, help="x grid points per group (default: %(default)s)")
    p.add_argument("--resamples", type=int, default=2000,
                   help="bootstrap resamples, scipy.stats.bootstrap (default: %(default)s)")
    p.add_argument("--last-frac", type=float, default=0.1,
                   help="final score = mean over this last fraction of logged points (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap RNG seed (default: %(default)s)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def fail(message: str) -> int:
        print(f"pglab.tools.plot: {message}", file=sys.stderr)
        return 2

    try:
        _stats()
        if args.out is None or args.out:  # None: the default file
            _matplotlib()
    except ImportError as err:
        return fail(str(err))
    run_dirs = find_runs(args.paths)
    if not run_dirs:
        return fail(f"no csv/metrics.csv found under {' '.join(args.paths)}")
    runs = []
    for d in run_dirs:
        run = load_run(d, args.metric, args.x)
        if run.x.size == 0:
            print(f"pglab.tools.plot: skipping {d}: no rows with both {args.metric!r} and {args.x!r}", file=sys.stderr)
            continue
        runs.append(run)
    if not runs:
        with open(run_dirs[0] / "csv" / "metrics.csv", newline="") as f:
            columns = next(csv.reader(f), [])
        return fail(f"none of the {len(run_dirs)} runs logged {args.metric!r} against {args.x!r}; "
                    f"columns of {run_dirs[0] / 'csv' / 'metrics.csv'}: {', '.join(columns)}")
    common = Path(os.path.commonpath([str(Path(r).resolve()) for r in run_dirs]))
    if args.out is None:
        args.out = str(common / "curves.png")
    if args.table is None:
        args.table = str(common / "scores.md")
    keys = args.group_by if args.group_by is not None else default_group_keys(runs)
    groups = group_runs(runs, keys)
    for i, g in enumerate(groups):
        aggregate_curves(g, points=args.points, resamples=args.resamples, seed=args.seed + i)
    rows = score_table(groups, last_frac=args.last_frac, resamples=args.resamples, seed=args.seed)
    for g in groups:
        differ = merged_differences(g, keys)
        if differ:
            shown = "; ".join(f"{k} ({', '.join(v[:4])}{', …' if len(v) > 4 else ''})" for k, v in
                              list(differ.items())[:6]) + ("; …" if len(differ) > 6 else "")
            print(f"pglab.tools.plot: {g.label}: merges {len(g.runs)} runs whose configs differ in more than the "
                  f"seed: {shown}; one curve averages them: add the keys to --group-by to split them",
                  file=sys.stderr)
        if 1 < len(g.runs) < 5:
            print(f"pglab.tools.plot: {g.label}: {len(g.runs)} runs only; its 95% band and "
                  "CI are a bootstrap over so few values and say little (5 or more seeds make them meaningful)",
                  file=sys.stderr)
    table = format_table(rows, args.metric, args.last_frac, args.resamples, args.x)
    for r in rows:
        if r.last_x and r.uneven:
            print(f"pglab.tools.plot: {r.group}: runs end at {args.x} {_si(r.last_x[0])} to {_si(r.last_x[1])}; "
                  "the curve beyond the shortest is over the runs still going (dashed), the table scores each run at "
                  "its end",
                  file=sys.stderr)
    print(f"pglab.tools.plot: {len(runs)} run(s) in {len(groups)} group(s) (by {', '.join(keys) or 'nothing'})")
    print(table, end="")
    if args.table:
        Path(args.table).parent.mkdir(parents=True, exist_ok=True)
        Path(args.table).write_text(table)
        print(f"pglab.tools.plot: table written to {args.table}")
    if args.out:
        plot_curves(groups, Path(args.out), args.metric, args.x, args.title)
        print(f"pglab.tools.plot: curves written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
