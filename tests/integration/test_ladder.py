"""benchmarks/ladder.py's split of rungs into population jobs and separate seed jobs, decided by pglab's own
population check on the composed rung configs (no training but the probe rung's seconds-long snapshot check)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

LADDER_PY = Path(__file__).resolve().parents[2] / "benchmarks" / "ladder.py"


@pytest.fixture(scope="module")
def ladder():
    spec = importlib.util.spec_from_file_location("ladder", LADDER_PY)
    module = importlib.util.module_from_spec(spec)
    sys.modules["ladder"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_split_follows_check_population(ladder, tmp_path):
    """A rung pglab's check refuses (here one on two devices: a population is one process) trains a job per seed,
    with pglab's reason; one it accepts (the a2c k = 5 rung) trains its seeds as one population job."""
    args = ladder.parse_args(["--steps", "1000", "--seeds", "3", "--envs", "cartpole", "--no-probe"])
    two_devices = ladder.Rung("99_two_devices", "two devices", "estimator", "a2c", values={"trainer": {"devices": 2}})
    rungs = [*ladder.select_rungs(["06_nstep_k5"]), two_devices]
    plans = {p.rung.name: p for p in ladder.plan(args, rungs, tmp_path)}
    refused, accepted = plans["99_two_devices"], plans["06_nstep_k5"]
    assert refused.population == [] and refused.separate == [0, 1, 2]
    assert refused.why.startswith("pglab refuses a population") and "one process" in refused.why
    assert accepted.population == [0, 1, 2] and accepted.separate == []
    conf = tmp_path / "conf" / "experiment"
    assert "population: [0, 1, 2]" in (conf / "ladder_06_nstep_k5.yaml").read_text()
    assert "seed: 2" in (conf / "ladder_99_two_devices__seed2.yaml").read_text()
    assert refused.jobs() == [f"ladder_99_two_devices__seed{s}" for s in range(3)]
    assert ladder.rung_of_experiment("ladder_09_gae_lam0.9__seed3") == "09_gae_lam0.9"
    assert ladder.rung_of_experiment("ladder_09_gae_lam0.9") == "09_gae_lam0.9"
    assert (tmp_path / "ladder_plan.json").is_file()


def test_probe_rung_keeps_a_seed_with_snapshots(ladder, tmp_path):
    """The probe reads seed 0's snapshots: seed 0 is a member only where members keep them."""
    args = ladder.parse_args(["--steps", "1000", "--seeds", "3", "--envs", "cartpole", "--rungs", "14_clip"])
    (p,) = ladder.plan(args, ladder.select_rungs(args.rungs), tmp_path)
    if "member-0's snapshots" in p.why:
        assert p.population == [0, 1, 2] and p.separate == []
    else:
        assert p.population == [1, 2] and p.separate == [0] and "snapshots" in p.why
