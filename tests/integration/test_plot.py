"""``python -m pglab.tools.plot``: the statistics against scipy.stats called directly (the library the module uses) and
closed-form values, the curve/table rules, and the command on a real multirun."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from pglab.tools import plot
from pglab.tools.plot import Run, aggregate_curves, bootstrap_ci, final_score, iqm, read_curve, runs_label, score_table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _oracle_iqm(x, axis=0):
    return stats.trim_mean(x, 0.25, axis=axis)


def _oracle_ci(x, seed=0, resamples=2000):
    res = stats.bootstrap((np.asarray(x, dtype=np.float64),), _oracle_iqm, n_resamples=resamples,
                          confidence_level=0.95, method="percentile", axis=0, rng=np.random.default_rng(seed))
    return res.confidence_interval.low, res.confidence_interval.high


def _run(name, x, y, seed=None):
    return Run(Path(name), np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64),
               config={} if seed is None else {"seed": seed})


# -- statistics ---------------------------------------------------------------------------------------------
def test_iqm_is_the_mean_of_the_middle_half():
    assert iqm([1, 2, 3, 4, 5, 6, 7, 8]) == pytest.approx(4.5)  # mean of 3, 4, 5, 6
    assert iqm([8, 1, 7, 2, 6, 3, 5, 4]) == pytest.approx(4.5)  # order does not matter
    assert iqm([1, 2, 3, 100]) == pytest.approx(2.5)            # mean of 2, 3: the outlier is trimmed
    assert iqm([100, -100, 3, 4, 5, 6, 7, 8]) == pytest.approx(5.5)


def test_iqm_trimming_convention_for_n_not_divisible_by_4():
    # scipy.stats.trim_mean(x, 0.25) (= rliable.metrics.aggregate_iqm) cuts floor(n / 4) values off each end
    assert iqm([7.0]) == 7.0
    assert iqm([0.0, 10.0]) == pytest.approx(5.0)            # n=2, 3: nothing cut, the plain mean
    assert iqm([0.0, 1.0, 11.0]) == pytest.approx(4.0)
    assert iqm([1, 2, 3, 4, 100]) == pytest.approx(3.0)       # n=5: mean of 2, 3, 4
    assert iqm([1, 2, 3, 4, 5, 100]) == pytest.approx(3.5)    # n=6: mean of 2, 3, 4, 5


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 12, 13])
def test_iqm_matches_scipy_trim_mean(n):
    x = np.random.default_rng(n).standard_cauchy(size=(n, 6))
    np.testing.assert_array_equal(iqm(x, axis=0), _oracle_iqm(x, axis=0))
    np.testing.assert_array_equal(iqm(x.T, axis=1), _oracle_iqm(x, axis=0))
    assert iqm(x[:, 0]) == _oracle_iqm(x[:, 0])


def test_iqm_along_an_axis():
    runs = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0]])  # 4 runs x 2 grid points
    np.testing.assert_allclose(iqm(runs, axis=0), [2.5, 25.0])
    with pytest.raises(ValueError):
        iqm([])


@pytest.mark.parametrize("shape", [(2,), (5,), (9,), (7, 4), (3, 50)])
def test_bootstrap_matches_scipy_bootstrap(shape):
    x = np.random.default_rng(sum(shape)).normal(size=shape)
    lo, hi = bootstrap_ci(x, seed=3)
    want_lo, want_hi = _oracle_ci(x, seed=3)
    np.testing.assert_allclose(lo, want_lo, rtol=0, atol=1e-12)
    np.testing.assert_allclose(hi, want_hi, rtol=0, atol=1e-12)
    assert np.all(lo <= iqm(x)) and np.all(iqm(x) <= hi)      # the band contains the point estimate


def test_bootstrap_band_hand_computed():
    # constant group: every resample has the same IQM -> zero-width band
    lo, hi = bootstrap_ci(np.full((5, 3), 2.0))
    np.testing.assert_array_equal(lo, [2.0, 2.0, 2.0])
    np.testing.assert_array_equal(hi, [2.0, 2.0, 2.0])
    # runs {0, 1}: a resample is (0,0) -> 0, (1,1) -> 1 (probability 1/4 each) or mixed -> 0.5,
    # so the 2.5% and 97.5% quantiles of 2000 resamples are exactly 0 and 1
    assert bootstrap_ci([0.0, 1.0]) == (0.0, 1.0)
    # one run: no CI
    assert all(np.isnan(bootstrap_ci([3.0])))
    assert np.isnan(bootstrap_ci([[3.0, 4.0]])).all()
    # same seed -> same band
    x = np.random.default_rng(1).normal(size=(7, 4))
    a, b = bootstrap_ci(x, seed=3), bootstrap_ci(x, seed=3)
    np.testing.assert_array_equal(a[0], b[0])


def test_final_score_is_the_mean_of_the_last_tenth():
    assert final_score(np.arange(20.0)) == pytest.approx(18.5)   # last 2 of 20
    assert final_score(np.arange(21.0)) == pytest.approx(19.0)   # ceil(2.1) = 3 -> 18, 19, 20
    assert final_score([5.0, 7.0]) == 7.0                       # at least one point


# -- curves and table ---------------------------------------------------------------------------------------
def test_curves_run_to_the_longest_run_over_the_runs_still_going():
    g = plot.Group("g", [_run("a", [0.0, 10.0], [0.0, 10.0]), _run("b", [0.0, 20.0], [0.0, 40.0])])
    aggregate_curves(g, points=21)
    np.testing.assert_allclose(g.grid, np.arange(21.0))           # up to the longer run's last x
    np.testing.assert_array_equal(g.count, [2] * 11 + [1] * 10)
    both, one = slice(0, 11), slice(11, 21)
    np.testing.assert_allclose(g.curve[both], 1.5 * g.grid[both])  # mean of y = x and y = 2x (n = 2)
    np.testing.assert_allclose(g.low[both], g.grid[both])          # the band spans the two runs
    np.testing.assert_allclose(g.high[both], 2 * g.grid[both])
    np.testing.assert_allclose(g.curve[one], 2 * g.grid[one])      # only b is left: its own curve, no band
    assert np.isnan(g.low[one]).all() and np.isnan(g.high[one]).all()


def test_curves_match_scipy_on_each_stretch():
    rng = np.random.default_rng(0)
    runs = [_run(f"r{i}", np.arange(0.0, end + 1), rng.normal(size=end + 1)) for i, end in enumerate([4, 8, 8, 8, 6])]
    g = aggregate_curves(plot.Group("g", runs), points=9, seed=5)  # grid = 0, 1, ..., 8
    np.testing.assert_array_equal(g.count, [5] * 5 + [4] * 2 + [3] * 2)
    for idx in (slice(0, 5), slice(5, 7), slice(7, 9)):
        ys = np.stack([r.y[idx] for r in runs if r.x[-1] >= g.grid[idx][-1]])
        np.testing.assert_allclose(g.curve[idx], _oracle_iqm(ys), rtol=0, atol=1e-12)
        lo, hi = _oracle_ci(ys, seed=5)
        np.testing.assert_allclose(g.low[idx], lo, rtol=0, atol=1e-12)
        np.testing.assert_allclose(g.high[idx], hi, rtol=0, atol=1e-12)


def test_table_scores_each_run_at_its_own_end():
    runs = [_run("a", np.arange(10.0), np.arange(10.0), seed=0), _run("b", np.arange(20.0), np.arange(20.0), seed=1),
            _run("c", np.arange(30.0), 2 * np.arange(30.0), seed=1)]
    (row,) = score_table([plot.Group("g", runs)], seed=2)
    scores = np.array([9.0, 18.5, 2 * 28.0])                        # last 1 of 10, 2 of 20, 3 of 30 points
    assert row.iqm == pytest.approx(_oracle_iqm(scores)) and row.mean == pytest.approx(scores.mean())
    assert (row.ci_low, row.ci_high) == pytest.approx(_oracle_ci(scores, seed=2))
    assert (row.runs, row.seeds, row.last_x) == (3, 2, (9.0, 29.0))
    text = plot.format_table([row], "m", 0.1, 2000)
    assert "| g | 3 | 2 | 27.83 | 27.83 |" in text                      # n=3: IQM = mean
    assert "Runs of different length (each scored at its own end), last `env_steps`: g: 9 to 29." in text
    (single,) = score_table([plot.Group("h", runs[:1])])
    assert "| h | 1 | 1 | 9.00 | 9.00 | n/a |" in plot.format_table([single], "m", 0.1, 2000)


def test_labels_count_runs_and_seeds():
    assert runs_label([_run("a", [0], [0], seed=0), _run("b", [0], [0], seed=1)]) == "n=2 seeds"
    assert runs_label([_run("a", [0], [0], seed=0)]) == "n=1 seed"
    shared = [_run(str(i), [0], [0], seed=i % 3) for i in range(6)]
    assert runs_label(shared) == "n=6 runs (3 seeds)"
    assert runs_label([_run("a", [0], [0], seed=4), _run("b", [0], [0], seed=4)]) == "n=2 runs (1 seed)"
    assert runs_label([_run("a", [0], [0]), _run("b", [0], [0], seed=1)]) == "n=2 runs"   # a seed unknown


def test_plot_legend_says_runs_and_draws_partial_curves(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    figures = []
    save = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: (figures.append(self), save(self, *a, **k))[1])
    shared = plot.Group("shared", [_run(str(i), [0.0, 10.0 + i], [0.0, float(i)], seed=i % 2) for i in range(4)])
    alone = plot.Group("alone", [_run("z", [0.0, 5.0], [1.0, 2.0], seed=0)])
    for g in (shared, alone):
        aggregate_curves(g, points=30)
    out = plot.plot_curves([shared, alone], tmp_path / "c.png", "m", "env_steps")
    assert out.read_bytes()[:8] == PNG_MAGIC
    (ax,) = figures[0].axes
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "shared: n=4 runs (2 seeds)" in labels and "alone: n=1 seed" in labels
    assert any("bootstrap over runs" in t for t in labels) and any(t.startswith("dashed") for t in labels)
    assert "IQM over runs" in ax.get_title()
    assert sorted(t.get_text() for t in ax.texts) == ["n=1", "n=2", "n=3"]  # where the shared group's count drops


def test_read_curve_handles_blank_cells_and_split_rows(tmp_path):
    (tmp_path / "metrics.csv").write_text(
        "env_steps,epoch,eval/return_mean,rollout/episode_return,step\n"
        "100,0,,10,5\n"
        ",0,50,,5\n"          # eval logged in its own row at the same step: takes x = 100
        "200,1,,,10\n"        # no episode ended in this rollout
        "300,2,,30,15\n")
    x, y = read_curve(tmp_path / "metrics.csv", "rollout/episode_return", "env_steps")
    np.testing.assert_array_equal(x, [100, 300])
    np.testing.assert_array_equal(y, [10, 30])
    x, y = read_curve(tmp_path / "metrics.csv", "eval/return_mean", "env_steps")
    np.testing.assert_array_equal(x, [100])
    np.testing.assert_array_equal(y, [50])


def test_missing_matplotlib_is_a_clear_error(monkeypatch, capsys, tmp_path):
    run = tmp_path / "r" / "csv"
    run.mkdir(parents=True)
    (run / "metrics.csv").write_text("env_steps,rollout/episode_return,step\n1,2,0\n")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert plot.main([str(tmp_path), "--out", str(tmp_path / "c.png"), "--table", ""]) == 2
    assert "plotting needs matplotlib: pip install 'pglab[plot]'" in capsys.readouterr().err
    # the table alone needs no matplotlib
    assert plot.main([str(tmp_path), "--out", "", "--table", str(tmp_path / "s.md")]) == 0
    assert (tmp_path / "s.md").exists()
    # the statistics need scipy (the plot extra too)
    monkeypatch.setitem(sys.modules, "scipy", None)
    assert plot.main([str(tmp_path), "--out", "", "--table", ""]) == 2
    assert "need scipy: pip install 'pglab[plot]'" in capsys.readouterr().err


# -- the command on a real multirun -------------------------------------------------------------------------
def _env() -> dict:
    return {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}


@pytest.fixture(scope="module")
def multirun(tmp_path_factory) -> Path:
    sweep = tmp_path_factory.mktemp("multirun")
    proc = subprocess.run(
        [sys.executable, "-m", "pglab.run.train", "-m", "seed=0,1", "surrogate=clip,kl_penalty", "total_env_steps=1024",
         "logger=csv", "eval.enabled=false", "checkpoint.enabled=false", "trainer.enable_progress_bar=false",
         f"hydra.sweep.dir={sweep}"],
        cwd=sweep, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list(sweep.rglob("csv/metrics.csv"))) == 4
    return sweep


def _table_rows(text: str) -> list[list[str]]:
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| group")]
    return rows


def test_plot_command_on_a_multirun(multirun, tmp_path):
    out, table = tmp_path / "curves.png", tmp_path / "scores.md"
    proc = subprocess.run([sys.executable, "-m", "pglab.tools.plot", str(multirun), "--out", str(out),
                           "--table", str(table)],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 10_000
    rows = _table_rows(table.read_text())
    assert [r[0] for r in rows] == ["surrogate=clip", "surrogate=kl_penalty"]   # grouped by the swept key
    for _group, runs, seeds, iqm_, mean, ci in rows:
        assert runs == "2" and seeds == "2"
        lo, hi = map(float, re.fullmatch(r"\[(.+), (.+)\]", ci).groups())
        assert lo <= float(iqm_) <= hi and float(mean) > 0
    assert "| surrogate=clip | 2 |" in proc.stdout                              # printed too


def test_group_by_choices_and_config_paths(multirun, tmp_path, capsys):
    table = tmp_path / "s.md"
    assert plot.main([f"{multirun}/*seed=*", "--group-by", "algo", "env.id", "--metric", "rollout/return_mean20",
                      "--out", "", "--table", str(table)]) == 0
    rows = _table_rows(table.read_text())
    assert [(r[0], r[1], r[2]) for r in rows] == [("algo=ppo, env.id=CartPole-v1", "4", "2")]  # 2 runs a seed
    capsys.readouterr()
    assert plot.main([str(multirun), "--group-by", "seed", "surrogate", "--out", "", "--table", ""]) == 0
    rows = _table_rows(capsys.readouterr().out)
    assert [(r[1], r[2], r[5]) for r in rows] == [("1", "1", "n/a")] * 4        # 4 groups of one run: no CI
