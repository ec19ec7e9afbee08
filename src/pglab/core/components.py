"""What components declare about themselves, read by validation, the DataModule and the learner. Pure Python.

Estimators, baselines and surrogates carry their needs as attributes (``bootstraps_from_value``, ``inputs``,
``needs_whole_episodes``, …) so nothing outside them branches on a component's name or class. Hydra hands
components over as ``functools.partial`` objects; ``requirement`` looks through them.
"""

from __future__ import annotations

import inspect

__all__ = ["requirement", "REQUIRED", "component_name", "parameter_names"]

REQUIRED = object()  # ``requirement(..., default=REQUIRED)``: a declaration that must be present


def _target(component):
    return getattr(component, "func", component)


def requirement(component, name: str, default=False):
    """A component's declared need (an attribute of the function or class, seen through functools.partial);
    ``default=REQUIRED`` raises AttributeError when it is not declared."""
    value = getattr(_target(component), name, REQUIRED)
    if value is REQUIRED:
        if default is REQUIRED:
            raise AttributeError(name)
        return default
    return value


def component_name(component) -> str:
    """A readable name: the function's or class's qualified name."""
    target = _target(component)
    target = target if inspect.isfunction(target) or inspect.isclass(target) else type(target)
    return f"{target.__module__}.{target.__qualname__}"


def parameter_names(component) -> set[str]:
    """The names ``component`` accepts as keyword arguments (all of them when it takes ``**kwargs``)."""
    try:
        params = inspect.signature(component).parameters.values()
    except (TypeError, ValueError):
        return set()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return {"*"}
    return {p.name for p in params if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                  inspect.Parameter.KEYWORD_ONLY)}
