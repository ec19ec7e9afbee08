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
    args = ladder.parse_args(["--steps", "1000", "--seeds", "3", "--envs", "cartpole", "--no-probe",
                              "--rungs", "01_reinforce", "13_kl_penalty", "06_nstep_k5"])
    plans = {p.rung.name: p for p in ladder.plan(args, ladder.select_rungs(args.rungs), tmp_path)}
    # the episode collector and adaptive β are refused with pglab's reason; the a2c rung trains as one population
    assert plans["01_reinforce"].population == [] and plans["01_reinforce"].separate == [0, 1, 2]
    assert "collector.kind=episodes" in plans["01_reinforce"].why
    assert plans["13_kl_penalty"].population == [] and "adaptive beta" in plans["13_kl_penalty"].why
    assert plans["06_nstep_k5"].population == [0, 1, 2] and plans["06_nstep_k5"].separate == []
    conf = tmp_path / "conf" / "experiment"
    assert "population: [0, 1, 2]" in (conf / "ladder_06_nstep_k5.yaml").read_text()
    assert "seed: 2" in (conf / "ladder_01_reinforce__seed2.yaml").read_text()
    assert plans["01_reinforce"].jobs() == [f"ladder_01_reinforce__seed{s}" for s in range(3)]
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
