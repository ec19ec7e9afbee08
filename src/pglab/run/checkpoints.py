"""Checkpoints: loaded without unpickling code, checked for finite weights, and resumed under their own config.

A pglab checkpoint is a Lightning checkpoint (``state_dict``, optimiser states, loop counters, callback and
DataModule state) plus ``ckpt["pglab"]``: the run's resolved config and Hydra group choices, the update count,
the LR-schedule anchor, the W&B run id and the torch/numpy/python RNG states — all tensors and plain values,
so ``torch.load(weights_only=True)`` reads it. pglab never loads a checkpoint any other way: a pickle can run
arbitrary code when it is loaded.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

__all__ = ["CheckpointError", "load_checkpoint", "check_finite_weights", "resume_config", "LOCKED_SECTIONS"]


class CheckpointError(Exception):
    """The checkpoint is missing, unreadable, unsafe, non-finite or not written by pglab training."""


def load_checkpoint(path: str | Path) -> dict:
    """``torch.load(weights_only=True)``, no fallback; a pglab training checkpoint or CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):  # torch.save (and Lightning) write zip archives; anything else is not one
        raise CheckpointError(f"cannot read checkpoint {path}: not a readable torch checkpoint (corrupted or "
                              "truncated?)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message suggests weights_only=False; pglab never does that, so only its reason is shown
        lines = str(err).splitlines()
        reason = next((line.strip() for line in lines if "Unsupported global" in line or "WeightsUnpickler" in line
                       and line.strip() != "WeightsUnpickler error:"), "")
        raise CheckpointError(
            f"{path} holds objects beyond tensors and plain values, and loading those could run code: pglab loads "
            f"checkpoints with weights_only=True only and refuses this one. {reason}".strip()) from err
    except Exception as err:  # truncated or corrupted zip, not a torch file at all, ...
        raise CheckpointError(f"cannot read checkpoint {path}: not a readable torch checkpoint (corrupted or "
                              f"truncated?): {type(err).__name__}: {err}") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no 'state_dict')")
    config = (ckpt.get("pglab") or {}).get("config")
    if not isinstance(config, dict) or "env" not in config or "model" not in config:
        raise CheckpointError(f"{path} was not written by pglab training (no ckpt['pglab']['config'] with env and "
                              "model sections)")
    return ckpt


def check_finite_weights(ckpt: dict, path: str | Path) -> None:
    """Refuse a checkpoint whose policy weights hold NaN or inf (a diverged run's)."""
    bad = [k for k, v in ckpt["state_dict"].items()
           if k.startswith("policy.") and torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{path} has non-finite weights ({', '.join(bad[:4])}{', ...' if len(bad) > 4 else ''})"
                              ": the run diverged; evaluate an earlier checkpoint")


# what a resumed run takes from its checkpoint (the algorithm, env and model); learner execution details may change
LOCKED_SECTIONS = ("env", "model", "estimator", "baseline", "surrogate", "collector", "learner", "gamma", "lam",
                   "nstep_k", "aggregation", "seed")
_FREE_LEARNER_KEYS = ("lightning_optimizer", "minibatches_per_step", "nonfinite", "gradients")
_LOCKED_GROUPS = {"algo": LOCKED_SECTIONS, "experiment": LOCKED_SECTIONS, "env": ("env",), "model": ("model",),
                  "estimator": ("estimator",), "baseline": ("baseline",), "surrogate": ("surrogate",)}


def _differences(new, old, prefix: str) -> list[str]:
    """Dotted keys whose values differ between two plain containers."""
    if isinstance(new, dict) and isinstance(old, dict):
        keys = sorted(set(new) | set(old))
        return [d for k in keys for d in _differences(new.get(k), old.get(k), f"{prefix}.{k}" if prefix else k)]
    if prefix.startswith("learner.") and prefix.split(".")[1] in _FREE_LEARNER_KEYS:
        return []
    return [] if new == old else [prefix]


def _select(container: dict, key: str):
    for part in key.split("."):
        if not isinstance(container, dict) or part not in container:
            return None
        container = container[part]
    return container


def resume_config(current: dict, stored: dict, overrides: list[str], stored_choices: dict | None) -> dict:
    """The config a resumed run trains with: ``current`` (this command line's, resolved) with the algorithm, env
    and model sections taken from the checkpoint's ``stored`` config.

    Raises CheckpointError naming every command-line override (``overrides``, Hydra's task overrides) that
    contradicts the checkpoint: a different algo/env/model group, or a different value under a locked section."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    conflicts = []
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if key in _LOCKED_GROUPS:
            differing = [d for section in _LOCKED_GROUPS[key]
                         for d in _differences(current.get(section), stored.get(section), section)
                         if section in stored]
            if differing:
                was = (stored_choices or {}).get(key)
                conflicts.append(f"{key}={override.get_value_element_as_str()} (the checkpoint's run used "
                                 f"{f'{key}={was}' if was else 'other settings'}; differs in "
                                 f"{', '.join(differing[:5])}{', ...' if len(differing) > 5 else ''})")
        elif key.split(".")[0] in LOCKED_SECTIONS and key.split(".")[0] in stored:
            differing = _differences(_select(current, key), _select(stored, key), key)
            if differing:
                conflicts.append(f"{key}={_select(current, key)!r} (the checkpoint has {_select(stored, key)!r})")
    if conflicts:
        raise CheckpointError(
            "a resumed run keeps its checkpoint's algorithm, env and model, and these overrides contradict it:\n  - "
            + "\n  - ".join(conflicts) + "\n  drop them to resume, or leave out ckpt_path to start a new run")
    merged = dict(current)
    for section in LOCKED_SECTIONS:
        if section not in stored:
            continue
        old, new = stored[section], current.get(section)
        if isinstance(old, dict) and isinstance(new, dict) and "_target_" not in old:
            # plain settings: keys this version added keep their defaults; free learner keys follow the command
            # line. A component (with _target_) is taken whole: another class's arguments would not fit it
            free = {k: new[k] for k in _FREE_LEARNER_KEYS if k in new} if section == "learner" else {}
            merged[section] = {**new, **old, **free}
        else:
            merged[section] = old
    return merged
