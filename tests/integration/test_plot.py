"""``python -m pglab.plot``: the statistics against hand-computed values, and the command on a real multirun."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pglab import plot
from pglab.plot import Run, aggregate_curves, bootstrap_ci, final_score, iqm, iqm_weights, read_curve

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# -- statistics ---------------------------------------------------------------------------------------------
def test_iqm_is_the_mean_of_the_middle_half():
    assert iqm([1, 2, 3, 4, 5, 6, 7, 8]) == pytest.approx(4.5)  # mean of 3, 4, 5, 6
    assert iqm([8, 1, 7, 2, 6, 3, 5, 4]) == pytest.approx(4.5)  # order does not matter
    assert iqm([1, 2, 3, 100]) == pytest.approx(2.5)            # mean of 2, 3: the outlier is trimmed
    assert iqm([100, -100, 3, 4, 5, 6, 7, 8]) == pytest.approx(5.5)


def test_iqm_fractional_weights_for_small_n():
    assert iqm([7.0]) == 7.0
    assert iqm([0.0, 10.0]) == pytest.approx(5.0)                        # n=2: both in [0.25, 0.75] by half
    np.testing.assert_allclose(iqm_weights(3), [1 / 6, 2 / 3, 1 / 6])    # overlaps 1/12, 1/3, 1/12 of 1/2
    assert iqm([0.0, 1.0, 10.0]) == pytest.approx(10 / 6 + 2 / 3)
    np.testing.assert_allclose(iqm_weights(5), [0, 0.3, 0.4, 0.3, 0])    # overlaps 0, .15, .2, .15, 0
    assert iqm([1, 2, 3, 4, 100]) == pytest.approx(0.3 * 2 + 0.4 * 3 + 0.3 * 4)
    np.testing.assert_allclose(iqm_weights(4), [0, 0.5, 0.5, 0])


def test_iqm_along_an_axis():
    runs = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0]])  # 4 runs x 2 grid points
    np.testing.assert_allclose(iqm(runs, axis=0), [2.5, 25.0])


def test_bootstrap_band_hand_computed():
    # constant group: every resample has the same IQM -> zero-width band
    lo, hi = bootstrap_ci(np.full((5, 3), 2.0))
    np.testing.assert_array_equal(lo, [2.0, 2.0, 2.0])
    np.testing.assert_array_equal(hi, [2.0, 2.0, 2.0])
    # one run: zero width too
    assert bootstrap_ci([3.0]) == (3.0, 3.0)
    # runs {0, 1}: a resample is (0,0) -> 0, (1,1) -> 1 (probability 1/4 each) or mixed -> 0.5,
    # so the 2.5% and 97.5% quantiles of 2000 resamples are exactly 0 and 1
    assert bootstrap_ci([0.0, 1.0]) == (0.0, 1.0)
    # same seed -> same band; the band contains the point estimate
    x = np.random.default_rng(1).normal(size=(7, 4))
    a, b = bootstrap_ci(x, seed=3), bootstrap_ci(x, seed=3)
    np.testing.assert_array_equal(a[0], b[0])
    assert np.all(a[0] <= iqm(x)) and np.all(iqm(x) <= a[1])


def test_final_score_is_the_mean_of_the_last_tenth():
    assert final_score(np.arange(20.0)) == pytest.approx(18.5)   # last 2 of 20
    assert final_score(np.arange(21.0)) == pytest.approx(19.0)   # ceil(2.1) = 3 -> 18, 19, 20
    assert final_score([5.0, 7.0]) == 7.0                       # at least one point


def test_curves_share_the_x_range_all_runs_cover():
    g = plot.Group("g", [Run(Path("a"), np.array([0.0, 10.0]), np.array([0.0, 10.0])),
                         Run(Path("b"), np.array([0.0, 20.0]), np.array([0.0, 40.0]))])
    aggregate_curves(g, points=11)
    np.testing.assert_allclose(g.grid, np.arange(11.0))           # only up to the shorter run's last x
    np.testing.assert_allclose(g.curve, 1.5 * g.grid)             # mean of y = x and y = 2x (n = 2)
    np.testing.assert_allclose(g.low, g.grid)                     # the band spans the two runs
    np.testing.assert_allclose(g.high, 2 * g.grid)


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


# -- the command on a real multirun -------------------------------------------------------------------------
def _env() -> dict:
    return {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}


@pytest.fixture(scope="module")
def multirun(tmp_path_factory) -> Path:
    sweep = tmp_path_factory.mktemp("multirun")
    proc = subprocess.run(
        [sys.executable, "-m", "pglab.train", "-m", "seed=0,1", "surrogate=clip,kl_penalty", "total_env_steps=1024",
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
    proc = subprocess.run([sys.executable, "-m", "pglab.plot", str(multirun), "--out", str(out), "--table", str(table)],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 10_000
    rows = _table_rows(table.read_text())
    assert [r[0] for r in rows] == ["surrogate=clip", "surrogate=kl_penalty"]   # grouped by the swept key
    for _group, runs, iqm_, mean, ci in rows:
        assert runs == "2"
        lo, hi = map(float, re.fullmatch(r"\[(.+), (.+)\]", ci).groups())
        assert lo <= float(iqm_) <= hi and float(mean) > 0
    assert "| surrogate=clip | 2 |" in proc.stdout                              # printed too


def test_group_by_choices_and_config_paths(multirun, tmp_path, capsys):
    table = tmp_path / "s.md"
    assert plot.main([f"{multirun}/*seed=*", "--group-by", "algo", "env.id", "--metric", "rollout/return_mean20",
                      "--out", "", "--table", str(table)]) == 0
    rows = _table_rows(table.read_text())
    assert [(r[0], r[1]) for r in rows] == [("algo=ppo, env.id=CartPole-v1", "4")]
    assert plot.main([str(multirun), "--group-by", "seed", "surrogate", "--out", "", "--table", ""]) == 0
    assert capsys.readouterr().out.count("| 1 |") == 4                           # 4 groups of one run
