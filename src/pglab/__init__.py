"""pglab: the policy-gradient family (REINFORCE → PPO → GRPO/GSPO) as swappable Lightning + Hydra parts.

``import pglab`` registers the ``pglab/*`` gymnasium envs (``gymnasium.make("pglab/Reverse-v0")``) and the config
resolvers; the Python API is :func:`train` and :func:`load_policy` (Lightning, torch and Hydra are imported when
they are called, not here)."""

import importlib.abc
import importlib.util
import sys

__version__ = "0.2.0"
__all__ = ["train", "load_policy", "TrainResult", "Policy", "__version__"]


def _register_envs() -> None:
    from pglab.envs import tokens  # noqa: F401  (registers pglab/Reverse-v0, Sort-v0, Add-v0)


class _RegisterEnvsWithGymnasium(importlib.abc.MetaPathFinder):
    """Registers the pglab/* envs as soon as gymnasium is imported, without importing it here: the pure layers
    (``pglab.core``, ``pglab.models``, ``pglab.accel``) must import none of gymnasium, Lightning or Hydra
    (tests/test_layout.py), and every one of them runs this file first."""

    def find_spec(self, name, path=None, target=None):
        if name != "gymnasium":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            _register_envs()

        spec.loader.exec_module = exec_then_register
        return spec


if "gymnasium" in sys.modules:
    _register_envs()
else:
    sys.meta_path.insert(0, _RegisterEnvsWithGymnasium())


def __getattr__(name: str):
    # lazy: the API pulls in Lightning (seconds of import) only when used
    if name in ("train", "TrainResult"):
        from pglab.run import api

        return getattr(api, name)
    if name in ("load_policy", "Policy"):
        from pglab.run import policy

        return getattr(policy, name)
    raise AttributeError(f"module 'pglab' has no attribute {name!r}")
