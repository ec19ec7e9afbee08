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
