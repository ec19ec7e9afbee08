"""pglab: the policy-gradient family (REINFORCE → PPO → GRPO/GSPO) as swappable Lightning + Hydra parts.

``import pglab`` registers the ``pglab/*`` gymnasium envs (``gymnasium.make("pglab/Reverse-v0")``) and the config
resolvers; the Python API is :func:`train` and :func:`load_policy` (Lightning, torch and Hydra are imported when
they are called, not here)."""

from pglab.envs import tokens as _tokens  # noqa: F401  (registers pglab/Reverse-v0, Sort-v0, Add-v0)
from pglab.run.naming import register_resolvers as _register_resolvers

__version__ = "0.2.0"
__all__ = ["train", "load_policy", "TrainResult", "Policy", "__version__"]

_register_resolvers()


def __getattr__(name: str):
    # lazy: the API pulls in Lightning (seconds of import) only when used
    if name in ("train", "TrainResult"):
        from pglab.run import api

        return getattr(api, name)
    if name in ("load_policy", "Policy"):
        from pglab.run import policy

        return getattr(policy, name)
    raise AttributeError(f"module 'pglab' has no attribute {name!r}")
