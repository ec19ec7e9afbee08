"""Learning curves and a final-score table from the CSV metrics of pglab runs.

``python -m pglab.plot multirun/2026-11-25_22-00-00 [more dirs or globs] --group-by surrogate``

Runs are found by searching the given paths recursively for ``csv/metrics.csv`` (Lightning's CSVLogger); a run's
directory is the folder above ``csv/``, and its ``.hydra/`` folder gives the config (``config.yaml``), the Hydra
choices (``hydra.yaml``: ``hydra.runtime.choices`` — ``algo``, ``estimator``, ``baseline``, ``surrogate``, …) and
the command-line overrides (``overrides.yaml``).

Statistics (following Agarwal et al., 2021, "Deep RL at the edge of the statistical precipice"):

- **IQM** (interquartile mean) of a group's runs: the mean of the middle 50% of the values. It is computed as the
  trimmed mean with fractional weights — sorted value i (of n) owns the quantile interval [i/n, (i+1)/n) and gets
  weight ∝ its overlap with [0.25, 0.75] — so it is defined for any n: with n divisible by 4 it is exactly the mean
  of the middle n/2 values (IQM([1..8]) = mean(3, 4, 5, 6) = 4.5), n = 1 gives the value, n = 2 the mean, and
  n = 3 weights the sorted values 1/6, 2/3, 1/6.
- **95% CI**: percentile bootstrap of the IQM, resampling runs with replacement within each group (stratified by
  group; 2000 resamples, fixed RNG seed, so the band is reproducible).
- **Curves**: each run's (x, metric) points are linearly interpolated onto a common grid per group that spans only
  the x range every run of the group covers (up to the shortest run's last x); IQM and band are per grid point.
- **Final score** of a run: the mean of the metric over the last 10% of its logged points (at least one point),
  which smooths the noise of a single last value.

Only numpy and the standard library are needed for the statistics and the table; matplotlib (the ``plot`` extra)
is imported when the PNG is drawn.
"""

from __future__ import annotations

import argparse
import csv
import glob
import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

__all__ = ["Run", "Group", "iqm", "iqm_weights", "bootstrap_ci", "final_score", "find_runs", "load_run",
           "default_group_keys", "group_runs", "aggregate_curves", "score_table", "plot_curves", "main"]

MATPLOTLIB_MISSING = "plotting needs matplotlib: pip install 'pglab[plot]'"
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
def iqm_weights(n: int) -> np.ndarray:
    """Weights for the n sorted values: overlap of [i/n, (i+1)/n) with [0.25, 0.75], normalised to sum 1."""
    if n < 1:
        raise ValueError("IQM of an empty set")
    lo, hi = np.arange(n) / n, np.arange(1, n + 1) / n
    w = np.clip(np.minimum(hi, 0.75) - np.maximum(lo, 0.25), 0.0, None)
    return w / w.sum()


def iqm(values, axis: int = 0) -> np.ndarray | float:
    """Interquartile mean along ``axis`` (fractional-weight trimmed mean; see the module docstring)."""
    x = np.sort(np.asarray(values, dtype=np.float64), axis=axis)
    w = iqm_weights(x.shape[axis])
    shape = [1] * x.ndim
    shape[axis] = -1
    out = (x * w.reshape(shape)).sum(axis=axis)
    return float(out) if np.ndim(out) == 0 else out


def bootstrap_ci(values, stat: Callable = iqm, resamples: int = 2000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[np.ndarray | float, np.ndarray | float]:
    """Percentile bootstrap CI of ``stat`` over the runs (axis 0) of ``values`` [n_runs, ...].

    Runs are resampled with replacement (``resamples`` times, RNG seeded with ``seed``); ``stat(sample, axis=1)``
    is evaluated on each [resamples, n_runs, ...] chunk. Returns (low, high), shaped like one statistic.
    """
    x = np.asarray(values, dtype=np.float64)
    n = x.shape[0]
    if n < 1:
        raise ValueError("bootstrap of an empty set")
    rng = np.random.default_rng(seed)
    chunk = max(1, min(resamples, 2_000_000 // max(1, x.size)))  # bound the [chunk, n, ...] gather's memory
    stats = []
    for start in range(0, resamples, chunk):
        idx = rng.integers(0, n, size=(min(chunk, resamples - start), n))
        stats.append(np.asarray(stat(x[idx], axis=1)))
    stats = np.concatenate(stats, axis=0)
    alpha = (1.0 - confidence) / 2
    lo, hi = np.quantile(stats, [alpha, 1.0 - alpha], axis=0)
    if np.ndim(lo) == 0:
        return float(lo), float(hi)
    return lo, hi


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


def _read_yaml(path: Path):
    if not path.is_file():
        return None
    with open(path) as f:
        return yaml.safe_load(f)


def load_run(run_dir: Path, metric: str, x_key: str) -> Run:
    x, y = read_curve(run_dir / "csv" / "metrics.csv", metric, x_key)
    hydra_dir = run_dir / ".hydra"
    config = _read_yaml(hydra_dir / "config.yaml") or {}
    hydra_cfg = _read_yaml(hydra_dir / "hydra.yaml") or {}
    choices = ((hydra_cfg.get("hydra") or {}).get("runtime") or {}).get("choices") or {}
    overrides = _read_yaml(hydra_dir / "overrides.yaml") or []
    return Run(run_dir, x, y, config, {k: v for k, v in choices.items() if not k.startswith("hydra/")},
               [str(o) for o in overrides])


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
    grid: np.ndarray | None = None     # common x grid
    curve: np.ndarray | None = None    # IQM per grid point
    low: np.ndarray | None = None      # 95% CI per grid point
    high: np.ndarray | None = None


def group_runs(runs: Sequence[Run], keys: Sequence[str]) -> list[Group]:
    groups: dict[str, list[Run]] = {}
    for r in runs:
        label = ", ".join(f"{k}={_fmt(r.lookup(k))}" for k in keys) if keys else "all runs"
        groups.setdefault(label, []).append(r)
    return [Group(label, members) for label, members in sorted(groups.items())]


def aggregate_curves(group: Group, points: int = 200, resamples: int = 2000, seed: int = 0) -> Group:
    """Interpolate each run onto the x range all runs of the group cover; IQM and bootstrap band per point."""
    lo = max(float(r.x[0]) for r in group.runs)
    hi = min(float(r.x[-1]) for r in group.runs)
    grid = np.linspace(lo, hi, points) if hi > lo else np.array([lo])
    ys = np.stack([np.interp(grid, r.x, r.y) for r in group.runs])
    group.grid, group.curve = grid, iqm(ys, axis=0)
    group.low, group.high = bootstrap_ci(ys, iqm, resamples=resamples, seed=seed)
    return group


@dataclass
class ScoreRow:
    group: str
    runs: int
    iqm: float
    mean: float
    ci_low: float
    ci_high: float


def score_table(groups: Sequence[Group], last_frac: float = 0.1, resamples: int = 2000,
                seed: int = 0) -> list[ScoreRow]:
    rows = []
    for g in groups:
        scores = np.array([final_score(r.y, last_frac) for r in g.runs])
        low, high = bootstrap_ci(scores, iqm, resamples=resamples, seed=seed)
        rows.append(ScoreRow(g.label, len(scores), iqm(scores), float(scores.mean()), low, high))
    return rows


def format_table(rows: Sequence[ScoreRow], metric: str, last_frac: float, resamples: int) -> str:
    pct = f"{last_frac * 100:g}%"
    lines = [f"Final score per run = mean of `{metric}` over the last {pct} of its logged points; "
             f"IQM and mean over runs; 95% CI of the IQM by bootstrap over runs ({resamples} resamples).", "",
             "| group | runs | IQM | mean | 95% CI of IQM |", "|---|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r.group} | {r.runs} | {r.iqm:.2f} | {r.mean:.2f} | [{r.ci_low:.2f}, {r.ci_high:.2f}] |")
    return "\n".join(lines) + "\n"


# -- drawing ------------------------------------------------------------------------------------------------
def _matplotlib():
    try:
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
        from matplotlib.ticker import FuncFormatter
    except ImportError as err:
        raise ImportError(MATPLOTLIB_MISSING) from err
    return Figure, Patch, FuncFormatter


def _si(value: float, _pos=None) -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= div:
            return f"{value / div:g}{suffix}"
    return f"{value:g}"


def plot_curves(groups: Sequence[Group], out: Path, metric: str, x_key: str, title: str | None = None) -> Path:
    """Draw IQM curves with shaded 95% CIs (groups already aggregated) to a PNG. Needs matplotlib."""
    Figure, Patch, FuncFormatter = _matplotlib()  # noqa: N806
    fig = Figure(figsize=(9, 5.5), dpi=120, layout="constrained")
    ax = fig.add_subplot()
    for g in groups:
        n = len(g.runs)
        label = f"{g.label} (n={n} seed{'s' if n != 1 else ''})"
        if g.grid.size == 1:
            line = ax.errorbar(g.grid, g.curve, yerr=[g.curve - g.low, g.high - g.curve], fmt="o", capsize=4,
                               label=label)[0]
        else:
            (line,) = ax.plot(g.grid, g.curve, lw=2, label=label)
            ax.fill_between(g.grid, g.low, g.high, color=line.get_color(), alpha=0.2, lw=0)
    handles, _ = ax.get_legend_handles_labels()
    kind = "shaded" if all(g.grid.size > 1 for g in groups) else \
        "error bars" if all(g.grid.size == 1 for g in groups) else "shaded / error bars"
    handles.append(Patch(facecolor="0.5", alpha=0.3, label=f"{kind}: 95% CI of the IQM (bootstrap over seeds)"))
    ax.legend(handles=handles, loc="best", fontsize=9, framealpha=0.9)
    envs = sorted({_fmt(r.lookup("env.id")) for g in groups for r in g.runs} - {"n/a"})
    if title is None:
        title = f"{metric} on {', '.join(envs) or 'unknown env'}"
        title += "\nIQM over seeds with 95% bootstrap CI"
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
        prog="python -m pglab.plot",
        description="Learning curves (IQM over seeds, 95%% bootstrap CI) and a final-score table from the "
                    "csv/metrics.csv files of pglab runs (e.g. a Hydra multirun directory).")
    p.add_argument("paths", nargs="+", help="run or multirun directories, metrics.csv files, or glob patterns")
    p.add_argument("--group-by", nargs="+", default=None, metavar="KEY",
                   help="config keys (dotted paths like env.id) or Hydra choices (algo, surrogate, estimator, ...); "
                        "default: the keys that differ between runs, seed excluded")
    p.add_argument("--metric", default="rollout/episode_return", help="metric column (default: %(default)s)")
    p.add_argument("--x", default="env_steps", help="x-axis column (default: %(default)s)")
    p.add_argument("--out", default="curves.png", help="PNG to write (default: %(default)s)")
    p.add_argument("--table", default="scores.md", help="markdown table to write (default: %(default)s)")
    p.add_argument("--title", default=None, help="plot title (default: the metric and env)")
    p.add_argument("--points", type=int, default=200, help="x grid points per group (default: %(default)s)")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default: %(default)s)")
    p.add_argument("--last-frac", type=float, default=0.1,
                   help="final score = mean over this last fraction of logged points (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap RNG seed (default: %(default)s)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def fail(message: str) -> int:
        print(f"pglab.plot: {message}", file=sys.stderr)
        return 2

    if args.out:
        try:
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
            print(f"pglab.plot: skipping {d}: no rows with both {args.metric!r} and {args.x!r}", file=sys.stderr)
            continue
        runs.append(run)
    if not runs:
        with open(run_dirs[0] / "csv" / "metrics.csv", newline="") as f:
            columns = next(csv.reader(f), [])
        return fail(f"none of the {len(run_dirs)} runs logged {args.metric!r} against {args.x!r}; "
                    f"columns of {run_dirs[0] / 'csv' / 'metrics.csv'}: {', '.join(columns)}")
    keys = args.group_by if args.group_by is not None else default_group_keys(runs)
    groups = group_runs(runs, keys)
    for i, g in enumerate(groups):
        aggregate_curves(g, points=args.points, resamples=args.resamples, seed=args.seed + i)
    rows = score_table(groups, last_frac=args.last_frac, resamples=args.resamples, seed=args.seed)
    table = format_table(rows, args.metric, args.last_frac, args.resamples)
    print(f"pglab.plot: {len(runs)} run(s) in {len(groups)} group(s) (by {', '.join(keys) or 'nothing'})")
    print(table, end="")
    if args.table:
        Path(args.table).parent.mkdir(parents=True, exist_ok=True)
        Path(args.table).write_text(table)
        print(f"pglab.plot: table written to {args.table}")
    if args.out:
        plot_curves(groups, Path(args.out), args.metric, args.x, args.title)
        print(f"pglab.plot: curves written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
