"""The yaml configs and the constructors they feed cannot drift apart: keys = parameters, defaults agree."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import yaml

from pglab.envs.make import EnvConfig
from pglab.learner.module import PolicyGradientModule
from pglab.run.train import SCHEDULE_KEYS

CONF = Path(__file__).resolve().parents[2] / "src" / "pglab" / "conf"


def test_learner_section_is_the_module_constructor():
    learner = yaml.safe_load((CONF / "train.yaml").read_text())["learner"]
    params = inspect.signature(PolicyGradientModule).parameters
    constructor = set(params) - {"self", "policy", "surrogate", "total_env_steps"}
    assert set(learner) - set(SCHEDULE_KEYS) == constructor
    for key in constructor:  # the yaml's defaults are the constructor's (one source of truth for a reader)
        if params[key].default is not inspect.Parameter.empty:
            assert learner[key] == params[key].default, key


def test_every_env_yaml_is_an_env_config():
    fields = {f.name for f in dataclasses.fields(EnvConfig)} - {"record_video_dir"}
    for path in sorted((CONF / "env").glob("*.yaml")):
        env = yaml.safe_load(path.read_text())
        env.pop("defaults", None)
        unknown = set(env) - fields
        assert not unknown, f"{path.name}: keys {unknown} are not EnvConfig fields"
        EnvConfig(**{k: v for k, v in env.items() if not (isinstance(v, str) and v.startswith("${"))})
