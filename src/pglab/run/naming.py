"""Names of runs: output folders and W&B groups that say what ran, and tell sweep members apart.

OmegaConf resolvers used by ``conf/train.yaml`` (registered when ``pglab`` is imported, before Hydra resolves
``hydra.run.dir``):

- ``${pglab.preset:}`` — the ``experiment`` preset if one was chosen, else the ``algo`` preset;
- ``${pglab.env_slug:${env.id}}`` — the env id as one path component (``ale_py:ALE/Pong-v5`` → ``ALE-Pong-v5``);
- ``${pglab.run_group:}`` — ``<env>-<preset>-<hash>``: the hash is a stable digest of the resolved config with the
  seed fixed, so runs that differ only in their seed share a group and runs that differ in anything else (an
  ``lr`` sweep, two Optuna trials, GRPO against Dr. GRPO) do not;
- ``${pglab.gpus_per_node:${trainer.accelerator},${trainer.devices}}`` — the GPUs a SLURM job asks for
  (``conf/hydra/launcher/slurm.yaml``): 0 on ``trainer=cpu``, the trainer's devices on a GPU trainer.

A resumed run (``ckpt_path=...``) trains the checkpoint's algorithm, env and model, so its names come from the
checkpoint (its preset, env and W&B group), not from what this command line defaulted to.
"""

from __future__ import annotations

import hashlib
import json
import os

__all__ = ["register_resolvers", "env_slug", "preset", "config_digest", "run_group", "hydra_choices",
           "override_tags", "gpus_per_node", "NOT_THE_RUN"]

# top-level keys that say where and how a run is recorded, not what it trains: left out of the group digest
NOT_THE_RUN = ("seed", "paths", "logger", "run_name", "ckpt_path", "progress_every_s", "trainer")
# trainer.* keys that change what is trained (the rest — progress bar, logging cadence — do not)
TRAINER_KEYS = ("accelerator", "devices", "num_nodes", "strategy", "precision", "max_epochs")


def env_slug(env_id: str, *, _root_=None) -> str:
    """``module:Name/Id-v0`` → ``Name-Id-v0``: the importable module prefix dropped, path separators replaced (a
    resumed run: the checkpoint's env)."""
    env_id = resumed_names(_ckpt_path(_root_)).get("env_id") or env_id
    name = str(env_id).rsplit(":", 1)[-1]
    return name.replace("/", "-").replace("\\", "-") or "env"


def hydra_choices() -> dict[str, str]:
    """The Hydra group choices of the run being composed (``algo``, ``experiment``, ``env``, ...), {} outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    return {k: v for k, v in HydraConfig.get().runtime.choices.items()
            if isinstance(v, str) and not k.startswith("hydra")}


def resumed_names(ckpt_path) -> dict:
    """``{"choices": {...}, "env_id": ..., "run_name": ...}`` of the run a checkpoint holds ({} when there is no
    readable checkpoint there: the resume itself then refuses it, naming the problem). Read once per file."""
    if not ckpt_path or not isinstance(ckpt_path, (str, os.PathLike)):
        return {}
    try:
        stat = os.stat(ckpt_path)
    except OSError:
        return {}
    key = (os.path.abspath(ckpt_path), stat.st_mtime_ns, stat.st_size)
    if key not in _RESUMED:
        names = {}
        try:
            import torch

            payload = torch.load(ckpt_path, map_location="cpu", weights_only=True).get("pglab") or {}
            config = payload.get("config") or {}
            names = {"choices": {k: v for k, v in (payload.get("choices") or {}).items() if isinstance(v, str)},
                     "env_id": (config.get("env") or {}).get("id"), "run_name": config.get("run_name")}
        except Exception:  # noqa: BLE001 - not a pglab checkpoint: named from the command line; resume refuses it
            names = {}
        _RESUMED.clear()  # one resume per process is the rule; keep no more than one checkpoint's names
        _RESUMED[key] = names
    return _RESUMED[key]


_RESUMED: dict = {}


def _ckpt_path(root) -> str | None:
    try:
        return root.get("ckpt_path") if root is not None else None
    except Exception:  # noqa: BLE001 - an unresolvable ckpt_path: no checkpoint to name the run after
        return None


def preset(*, _root_=None) -> str:
    choices = {**hydra_choices(), **resumed_names(_ckpt_path(_root_)).get("choices", {})}
    return choices.get("experiment") or choices.get("algo") or "run"


def _same_numbers(node):
    """Integer-valued floats as ints (``total_env_steps=1e5`` is read as 100000.0): equal settings, one digest."""
    if isinstance(node, dict):
        return {k: _same_numbers(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_same_numbers(v) for v in node]
    if isinstance(node, float) and node.is_integer():
        return int(node)
    return node


def config_digest(root) -> str:
    """Six hex digits of SHA-1 over the resolved config with the seed fixed and the recording keys removed.

    The seed is fixed (not dropped) before resolving, so values interpolated from it (a warm start's own seed)
    do not split one configuration's seeds over several groups."""
    from omegaconf import OmegaConf

    # masked_copy and keys() do not resolve (``in`` and ``pop`` would, and run_name is this very resolver)
    cfg = OmegaConf.masked_copy(root, [k for k in root.keys() if k not in NOT_THE_RUN + ("hydra",)])
    OmegaConf.set_struct(cfg, False)
    cfg.seed = 0
    cfg.paths = {"output_dir": "<output_dir>"}  # callbacks may write under it; where is not what
    trainer_cfg = root.get("trainer") or {}
    trainer = {k: trainer_cfg[k] for k in TRAINER_KEYS if k in trainer_cfg}
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved["trainer"] = trainer
    resolved["choices"] = {k: v for k, v in hydra_choices().items() if k not in ("logger", "trainer")}
    text = json.dumps(_same_numbers(resolved), sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:6]


def run_group(*, _root_) -> str:
    root = _root_
    stored = resumed_names(_ckpt_path(root)).get("run_name")
    if isinstance(stored, str) and stored:
        return stored  # a resumed run continues its checkpoint's W&B group
    env_id = root.env.id if "env" in root and "id" in root.env else "env"
    return f"{env_slug(env_id)}-{preset()}-{config_digest(root)}"


def override_tags(limit: int = 64) -> list[str]:
    """The command line's overrides as W&B tags, ``key=value`` each (as Hydra's ``override_dirname``), without the
    seed and the keys ``hydra.job.config.override_dirname.exclude_keys`` names; W&B caps a tag at 64 characters."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    hydra_cfg = HydraConfig.get()
    excluded = set(hydra_cfg.job.config.override_dirname.exclude_keys or []) | {"seed"}
    tags = []
    for override in hydra_cfg.overrides.task:
        key = override.split("=", 1)[0].lstrip("+~")
        if key in excluded or key.startswith("hydra.") or key.split(".", 1)[0] in excluded:
            continue
        tags.append(override[:limit])
    return tags


def gpus_per_node(accelerator, devices) -> int:
    """GPUs per SLURM node for a trainer: none for ``accelerator=cpu``; ``devices`` (1 when it is ``auto``, a list
    or ``-1``: a job must ask for a number) for ``gpu``/``cuda``/``auto``."""
    if str(accelerator).lower() == "cpu":
        return 0
    if isinstance(devices, int) and not isinstance(devices, bool) and devices > 0:
        return devices
    if isinstance(devices, str) and devices.isdigit() and int(devices) > 0:
        return int(devices)
    if isinstance(devices, (list, tuple)) or type(devices).__name__ == "ListConfig":
        return max(1, len(devices))
    return 1


def register_resolvers() -> None:
    from omegaconf import OmegaConf

    for name, fn in (("pglab.preset", preset), ("pglab.env_slug", env_slug), ("pglab.run_group", run_group),
                     ("pglab.gpus_per_node", gpus_per_node)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
