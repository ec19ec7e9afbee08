"""pglab.tools.plot's day-one behaviour: outputs beside the runs, not in the current folder; an honest --help; a
word when a group's interval rests on a handful of runs."""

from __future__ import annotations

import pytest

from pglab.tools import plot


def _runs(root, seeds=(0, 1)):
    for seed in seeds:
        run = root / f"{seed}_seed={seed}"
        (run / "csv").mkdir(parents=True)
        (run / ".hydra").mkdir()
        (run / ".hydra" / "config.yaml").write_text(f"seed: {seed}\nenv: {{id: CartPole-v1}}\n")
        rows = "".join(f"{s},{s / 10 + seed},{s}\n" for s in range(1, 400, 20))
        (run / "csv" / "metrics.csv").write_text("env_steps,rollout/episode_return,step\n" + rows)


def test_default_outputs_go_beside_the_runs(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    pytest.importorskip("scipy")
    sweep, elsewhere = tmp_path / "multirun" / "2026", tmp_path / "elsewhere"
    _runs(sweep)
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert plot.main([str(sweep), "--resamples", "200"]) == 0
    assert (sweep / "curves.png").is_file() and (sweep / "scores.md").is_file()
    assert list(elsewhere.iterdir()) == []
    err = capsys.readouterr().err
    assert "2 runs only; its 95% band and CI are a bootstrap over so few values" in err


def test_help_says_95_percent_once(capsys):
    with pytest.raises(SystemExit):
        plot.main(["--help"])
    text = capsys.readouterr().out
    assert "95% bootstrap" in text and "%%" not in text


def _run_dir(root, name, config, rows, header="env_steps,rollout/episode_return,step"):
    run = root / name
    (run / "csv").mkdir(parents=True)
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text(config)
    (run / "csv" / "metrics.csv").write_text(header + "\n" + "".join(rows))
    return run


def test_merging_runs_of_different_configs_is_named(tmp_path, capsys):
    pytest.importorskip("scipy")
    for seed, lr in ((0, 3e-4), (1, 1e-3), (2, 3e-4)):
        _run_dir(tmp_path, f"{seed}", f"seed: {seed}\nrun_name: r{seed}\nlearner: {{lr: {lr}}}\n"
                 f"paths: {{output_dir: /x/{seed}}}\ncallbacks: {{warm: {{seed: {seed}}}}}\n",
                 [f"{s},{s},{s}\n" for s in range(0, 100, 10)])
    assert plot.main([str(tmp_path), "--group-by", "env.id", "--out", "", "--table", "", "--resamples", "50"]) == 0
    err = capsys.readouterr().err
    assert "merges 3 runs whose configs differ in more than the seed: learner.lr (0.0003, 0.001)" in err
    assert "run_name" not in err and "paths." not in err and "warm.seed" not in err
    # grouped by what differs: no warning (seed, run name, paths and a seed-valued setting are not the config)
    assert plot.main([str(tmp_path), "--group-by", "learner.lr", "--out", "", "--table", "", "--resamples", "50"]) == 0
    assert "merges" not in capsys.readouterr().err


def test_runs_of_one_budget_end_together(tmp_path):
    """A solved CartPole logs no episode return in its last rollouts (no 500-step episode finished there): each run's
    last point of the metric differs, but each ran to 1000 env steps. No run drops out before the end, so there is
    no dashed n=1 stub; the last value is held to the run's end."""
    ends = {"a": 700, "b": 900, "c": 1000}
    for name, last in ends.items():
        rows = [f"{s},{s / 10},{s}\n" for s in range(100, last + 1, 100)]
        rows += [f"{s},,{s}\n" for s in range(last + 100, 1001, 100)]  # rows of other metrics only
        _run_dir(tmp_path, name, "seed: 0\n", rows)
    runs = [plot.load_run(d, "rollout/episode_return", "env_steps") for d in plot.find_runs([str(tmp_path)])]
    assert [r.last_x for r in runs] == [1000.0] * 3
    g = plot.aggregate_curves(plot.Group("g", runs), points=10, resamples=50)
    assert g.grid[-1] == 1000.0 and (g.count == 3).all()  # every run covers every point: nothing dashed
    # at the end: run a holds 70, run b 90, run c reached 100 → the IQM of 3 values cuts none: the mean
    assert g.curve[-1] == pytest.approx((70 + 90 + 100) / 3)


def test_a_shorter_budget_still_ends_early(tmp_path):
    for name, last in (("a", 500), ("b", 1000)):
        _run_dir(tmp_path, name, "seed: 0\n", [f"{s},{s / 10},{s}\n" for s in range(100, last + 1, 100)])
    runs = [plot.load_run(d, "rollout/episode_return", "env_steps") for d in plot.find_runs([str(tmp_path)])]
    g = plot.aggregate_curves(plot.Group("g", runs), points=11, resamples=50)
    assert g.count[0] == 2 and g.count[-1] == 1  # the 500-step run stops at 500: dashed beyond, honestly


def test_runs_ending_within_a_rollout_of_each_other_end_together(tmp_path):
    """Runs of one budget stop at slightly different env-step counts (autoreset rows are not counted): the curve
    ends at the shortest one's end, with every run in it, and no run is said to be of a different length."""
    for name, last in (("a", 10_000), ("b", 10_040), ("c", 10_090)):
        _run_dir(tmp_path, name, "seed: 0\n", [f"{s},{s / 10},{s}\n" for s in [*range(100, 10_000, 100), last]])
    runs = [plot.load_run(d, "rollout/episode_return", "env_steps") for d in plot.find_runs([str(tmp_path)])]
    assert not plot.ends_differ(runs)
    g = plot.aggregate_curves(plot.Group("g", runs), points=10, resamples=50)
    assert g.grid[-1] == 10_000.0 and (g.count == 3).all()
    (row,) = plot.score_table([g], resamples=50)
    assert "Runs of different length" not in plot.format_table([row], "m", 0.1, 50)
