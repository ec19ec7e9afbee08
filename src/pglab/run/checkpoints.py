"""Checkpoints: loaded without unpickling code, checked for finite weights, and resumed under their own config.

A pglab checkpoint is a Lightning checkpoint (``state_dict``, optimiser states, loop counters, callback and
DataModule state) plus ``ckpt["pglab"]``: the run's resolved config and Hydra group choices, the update count,
the LR-schedule anchor, the W&B run id and the torch/numpy/python RNG states — all tensors and plain values,
so ``torch.load(weights_only=True)`` reads it. pglab never loads a checkpoint any other way: a pickle can run
arbitrary code when it is loaded.

The stored config is data too, but it *names* code: ``_target_`` entries (the model, estimator, baseline,
surrogate), ``env.wrappers`` (dotted paths called on each env) and ``env.id="module:Id"`` (a module imported to
register the env). A weights-only-clean file could otherwise name ``pydoc.pipepager`` or ``os.system`` there and have
it called. ``load_checkpoint`` therefore checks every name in the sections a checkpoint supplies (``LOCKED_SECTIONS``:
what evaluate, probe and a resumed run read back) against an allowlist before anything is resolved. The other
sections (trainer, logger, callbacks, paths) are never read back from a checkpoint — a resumed run takes them from
its own command line — so a user's own callback recorded there neither blocks the checkpoint nor runs from it. The
allowlist: pglab's own modules, gymnasium's wrappers, Lightning's Trainer, loggers and callbacks (and, for
``env.id``, gymnasium's and the ALE's env modules). Hydra's instantiate target policy is a blocklist of a few
destructive calls, so it is no substitute. Anything else is refused with the fix: name the modules you trust in
``PGLAB_TRUSTED_MODULES`` (comma-separated), or — when resuming — give the same setting on the command line (a
target the command line's own config names is the user's, not the file's).
"""

from __future__ import annotations

import functools
import os
import pickle
import re
import zipfile
from pathlib import Path

import torch

__all__ = ["CheckpointError", "load_checkpoint", "check_finite_weights", "resume_config", "LOCKED_SECTIONS",
           "check_stored_config", "named_targets", "TRUSTED_TARGETS", "TRUSTED_ENV_MODULES", "TRUSTED_ENV_VAR",
           "AtomicModelCheckpoint", "PeriodicLastCheckpoint", "save_checkpoint_atomic", "truncate_csv"]


class CheckpointError(Exception):
    """The checkpoint is missing, unreadable, unsafe, non-finite or not written by pglab training."""


# modules whose callables a checkpoint's config may name (``PGLAB_TRUSTED_MODULES`` adds more); the object a name
# resolves to must be defined under one of them too
TRUSTED_TARGETS = ("pglab", "gymnasium.wrappers", "lightning.pytorch.trainer", "lightning.pytorch.loggers",
                   "lightning.pytorch.callbacks")
_TRUSTED_ALIASES = ("lightning.Trainer", "lightning.pytorch.Trainer")  # re-exports of lightning.pytorch.trainer
# modules an ``env.id="module:Id"`` may import (importing them registers envs): pglab's token tasks, the ALE
TRUSTED_ENV_MODULES = ("pglab", "gymnasium", "ale_py", "shimmy")
TRUSTED_ENV_VAR = "PGLAB_TRUSTED_MODULES"


def _under(path: str, prefixes) -> bool:
    return any(path == p or path.startswith(p + ".") for p in prefixes)


def named_targets(config, sections: tuple[str, ...] | None = None) -> list[tuple[str, str, str]]:
    """Every callable or module a config names: (where, kind, dotted name), kind ``target`` or ``env module``.

    ``_target_`` values anywhere (under ``sections`` only, if given), ``env.wrappers`` string entries, and the module
    part of ``env.id="module:Id"``."""
    found: list[tuple[str, str, str]] = []

    def walk(node, where: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                here = f"{where}.{key}" if where else str(key)
                if key == "_target_":
                    found.append((here, "target", value if isinstance(value, str) else repr(value)))
                else:
                    walk(value, here)
        elif isinstance(node, (list, tuple)):
            for i, value in enumerate(node):
                walk(value, f"{where}[{i}]")

    for section in sections if sections is not None else (config if isinstance(config, dict) else {}):
        if isinstance(config, dict) and section in config:
            walk(config[section], section)
    env = config.get("env") if isinstance(config, dict) and (sections is None or "env" in sections) else None
    if isinstance(env, dict):
        for i, wrapper in enumerate(env.get("wrappers") or []):
            if isinstance(wrapper, str) or not isinstance(wrapper, dict):
                found.append((f"env.wrappers[{i}]", "target", wrapper if isinstance(wrapper, str) else repr(wrapper)))
        env_id = env.get("id")
        if isinstance(env_id, str) and ":" in env_id:
            found.append(("env.id", "env module", env_id.split(":", 1)[0]))
    return found


def _trusted_extra() -> tuple[str, ...]:
    return tuple(m.strip() for m in os.environ.get(TRUSTED_ENV_VAR, "").split(",") if m.strip())


@functools.lru_cache(maxsize=1)
def shipped_targets() -> frozenset[str]:
    """Every ``_target_`` pglab's own configs name (``pglab/conf/**.yaml``): the pglab callables a checkpoint may name.

    Being defined under ``pglab`` is not enough: some pglab functions import or call what they are given (e.g.
    ``pglab.envs.make.resolve_env_id`` imports the module an env id names), so a checkpoint naming one of them in a
    section that is instantiated would run foreign code through trusted code. A fork that adds a component with a
    config file of its own under ``conf/`` is covered the same way."""
    conf = Path(__file__).resolve().parents[1] / "conf"
    return frozenset(m.group(1) for f in conf.rglob("*.yaml")
                     for m in re.finditer(r"_target_:\s*([A-Za-z_][\w.]*)", f.read_text(encoding="utf-8")))


def _target_problem(name: str, prefixes: tuple[str, ...], extra: tuple[str, ...] = ()) -> str | None:
    """Why ``name`` may not be resolved (None when it may). ``extra``: module prefixes the user trusts wholesale
    (``PGLAB_TRUSTED_MODULES``)."""
    if not isinstance(name, str) or not name or any(not part.isidentifier() for part in name.split(".")):
        return "not a dotted Python name"
    if any(part.startswith("__") for part in name.split(".")):
        return "it reaches into dunder attributes"
    if not (_under(name, prefixes) or name in _TRUSTED_ALIASES):
        return "outside the modules pglab trusts"
    if _under(name, ("pglab",)) and name not in shipped_targets() and not _under(name, extra):
        return ("a pglab callable that none of pglab's own configs names (a checkpoint may name only the components "
                "pglab's configs name)")
    # an allowed prefix is not enough: ``pglab.envs.make.importlib.import_module`` walks through an allowed module
    # to a foreign callable. Importing the allowed module is safe (trusted code); the object found must live there too
    from hydra._internal.utils import _locate

    try:
        obj = _locate(name)
    except Exception as err:  # noqa: BLE001 - any failure to find it is a refusal, with its reason
        return f"it cannot be found ({type(err).__name__}: {err})"
    module = getattr(obj, "__module__", None)
    if not isinstance(module, str):
        module = type(obj).__module__
    if not _under(module, prefixes):
        return f"it resolves to an object defined in {module!r}, outside the modules pglab trusts"
    return None


def check_stored_config(config: dict, path: str | Path, trusted: tuple[str, ...] = ()) -> None:
    """Refuse (CheckpointError) a stored config that names any callable or module outside the allowlist.

    ``trusted``: further dotted names the caller vouches for (a resumed run's own command-line config's targets).
    Nothing outside the allowlist is imported: the check is on the name first."""
    targets = TRUSTED_TARGETS + _trusted_extra()
    env_modules = TRUSTED_ENV_MODULES + _trusted_extra()
    problems, refused = [], []
    for where, kind, name in named_targets(config, LOCKED_SECTIONS):
        if name in trusted:
            continue
        if kind == "env module":
            if not _under(name, env_modules):
                problems.append(f"{where} imports module {name!r}, outside the env modules pglab trusts "
                                f"({', '.join(TRUSTED_ENV_MODULES)})")
                refused.append(name)
            continue
        why = _target_problem(name, targets, _trusted_extra())
        if why:
            problems.append(f"{where} = {name!r}: {why}")
            refused.append(name)
    if problems:
        module = (refused[0].split(".")[0] if refused[0].split(".")[0].isidentifier() else "") or "yourmodule"
        raise CheckpointError(
            f"{path}: its stored config names code that loading it would run, and a checkpoint is data, so pglab "
            "refuses it:\n  - " + "\n  - ".join(problems[:8]) + ("\n  - ..." if len(problems) > 8 else "") +
            "\n  pglab resolves only the components its own configs name, gymnasium's wrappers and Lightning's "
            "trainer, loggers and callbacks from a checkpoint. If you wrote this checkpoint "
            f"and trust its code: name the module in {TRUSTED_ENV_VAR} (e.g. {TRUSTED_ENV_VAR}={module}), or, to "
            "resume, give the same settings explicitly on the command line")


def load_checkpoint(path: str | Path, trusted: tuple[str, ...] = ()) -> dict:
    """``torch.load(weights_only=True)``, no fallback; a pglab training checkpoint or CheckpointError.

    The stored config is checked before anything it names is resolved (``check_stored_config``); ``trusted``: dotted
    names the caller vouches for."""
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
    check_stored_config(config, path, trusted)
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


# -- writing checkpoints: periodic, atomic ------------------------------------------------------------------------
def _lightning_checkpoints():
    """The two Lightning callbacks pglab writes checkpoints with (built lazily: importing this module stays cheap)."""
    import lightning as L
    from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint

    class AtomicModelCheckpoint(ModelCheckpoint):
        """Lightning's ModelCheckpoint (best by a monitored metric, snapshots) writing through a temporary file and a
        rename, so a kill mid-write leaves the previous file whole instead of a truncated one."""

        def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
            from weakref import proxy

            save_checkpoint_atomic(trainer, filepath, flush_loggers=False, weights_only=self.save_weights_only)
            self._last_global_step_saved = trainer.global_step
            self._last_checkpoint_saved = filepath
            if trainer.is_global_zero:
                for logger in trainer.loggers:
                    logger.after_save_checkpoint(proxy(self))

    class PeriodicLastCheckpoint(Checkpoint):
        """``last.ckpt`` every ``every_n_epochs`` epochs, whatever eval does.

        Lightning's ModelCheckpoint writes ``last`` only in a step where it also saved a top-k checkpoint, so with
        eval off (no monitor, top-k 0) it wrote nothing during training and with eval on ``last`` went stale once
        the eval return stopped improving. This callback writes it on the schedule alone. Being a ``Checkpoint``,
        Lightning runs it after the module's own epoch-end hook (the epoch's counters and metrics are final).
        The loggers are flushed first, so the CSV holds every row up to the checkpoint; rows written after it (a run
        killed later) are dropped when the run resumes into its folder (``truncate_csv``)."""

        def __init__(self, dirpath: str | Path, every_n_epochs: int) -> None:
            self.path = Path(dirpath) / "last.ckpt"
            self.every_n_epochs = every_n_epochs

        def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
            if (trainer.current_epoch + 1) % self.every_n_epochs == 0 and not trainer.sanity_checking:
                save_checkpoint_atomic(trainer, self.path)

        def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exception: BaseException) -> None:
            # a non-finite stop rolls the weights back to the rollout's start before raising: that state is worth
            # keeping, once checked finite. Any other exception (an env raising mid-rollout) leaves the state
            # mid-epoch: the previous last.ckpt, an epoch boundary, is the one to resume from. One process only: a
            # save under DDP is collective, and the other ranks may not be here
            if type(exception).__name__ not in ("NonFiniteError", "NonFiniteRolloutError") or trainer.world_size > 1:
                return
            import torch

            params = [p for p in module.parameters() if p.is_floating_point()]
            if params and all(bool(torch.isfinite(p).all()) for p in params):
                save_checkpoint_atomic(trainer, self.path)

    return AtomicModelCheckpoint, PeriodicLastCheckpoint


def AtomicModelCheckpoint(**kwargs):  # noqa: N802 - a factory: Lightning is imported on first use
    """``lightning.pytorch.callbacks.ModelCheckpoint`` that writes atomically (see ``_lightning_checkpoints``)."""
    return _lightning_checkpoints()[0](**kwargs)


def PeriodicLastCheckpoint(dirpath: str | Path, every_n_epochs: int):  # noqa: N802
    """``last.ckpt`` every ``every_n_epochs`` epochs, written atomically (see ``_lightning_checkpoints``)."""
    return _lightning_checkpoints()[1](dirpath, every_n_epochs)


def save_checkpoint_atomic(trainer, path: str | Path, flush_loggers: bool = True, weights_only: bool = False) -> None:
    """``trainer.save_checkpoint`` into ``<path>.tmp``, fsync'd, then renamed over ``path`` (rank 0 writes).

    Every rank calls it (the module gathers per-rank state while saving). ``flush_loggers``: write the loggers'
    buffered rows first, so what the logs hold and what the checkpoint holds end at the same step."""
    path = Path(path)
    if flush_loggers:
        for logger in trainer.loggers:
            logger.save()
    tmp = path.with_name(path.name + ".tmp")
    trainer.save_checkpoint(tmp, weights_only)
    if trainer.is_global_zero:
        with open(tmp, "rb") as file:
            os.fsync(file.fileno())
        os.replace(tmp, path)


def truncate_csv(path: str | Path, step: int) -> int:
    """Drop the rows of a Lightning CSV log (``step`` column) logged after ``step``; returns how many were dropped.

    A run killed after its last checkpoint logged rows the checkpoint does not hold; resumed into the same folder it
    logs those env steps again, which without this left the x-axis going backwards and duplicated rows. Written
    through a temporary file and a rename."""
    import csv

    path = Path(path)
    with open(path, newline="") as file:
        reader = csv.reader(file)
        header = next(reader, None)
        rows = list(reader)
    if header is None or "step" not in header:
        return 0
    col = header.index("step")

    def keep(row) -> bool:
        try:
            return float(row[col]) <= step
        except (ValueError, IndexError):
            return True  # a row without a step (none are written by pglab): not pglab's to judge

    kept = [row for row in rows if keep(row)]
    if len(kept) == len(rows):
        return 0
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(kept)
    os.replace(tmp, path)
    return len(rows) - len(kept)
