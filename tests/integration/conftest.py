"""Compose the real Hydra config (conf/) for integration tests, with tiny budgets."""

from __future__ import annotations

import os

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from pglab.run.train import CONFIG_DIR

FAST = [
    "logger=none",
    "trainer.enable_progress_bar=false",
]


def compose_cfg(overrides: list[str], output_dir) -> object:
    """The config ``python -m pglab.run.train <overrides>`` would get, with outputs under ``output_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=FAST + list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        del cfg["hydra"]
    return cfg


@pytest.fixture
def make_cfg(tmp_path):
    def _make(*overrides: str, output_dir=None):
        return compose_cfg(list(overrides), output_dir or tmp_path)

    yield _make
    GlobalHydra.instance().clear()
    HydraConfig.instance().cfg = None  # build() reads HydraConfig: the next test must not see this one's


@pytest.fixture(autouse=True)
def _no_leaked_process_state(monkeypatch):
    """An in-process ``wandb.init`` leaves ``WANDB_SERVICE`` in ``os.environ``, and a subprocess started with
    ``{**os.environ}`` would attach to this pytest process's wandb service; and a test that set ``HydraConfig``
    itself must not hand it to the next one."""
    monkeypatch.delenv("WANDB_SERVICE", raising=False)
    yield
    os.environ.pop("WANDB_SERVICE", None)
    HydraConfig.instance().cfg = None
