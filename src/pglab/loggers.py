"""Weights & Biases without surprises: online only with credentials, never waiting on a missing network.

``wandb`` is imported lazily (it costs ~1 s of start-up) and only when the W&B logger is configured.
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path

__all__ = ["wandb_logger", "resolve_wandb_mode", "finish_wandb", "sync_hint"]


def _has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        auth = netrc.netrc(os.environ.get("NETRC", str(Path.home() / ".netrc")))
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return any(auth.authenticators(host) for host in ("api.wandb.ai",))


def resolve_wandb_mode(mode: str | None) -> str:
    """The config's mode, else $WANDB_MODE, else online with credentials and offline without."""
    mode = mode or os.environ.get("WANDB_MODE")
    if mode in ("dryrun",):
        mode = "offline"
    if mode is None:
        mode = "online" if _has_credentials() else "offline"
    if mode not in ("online", "offline", "disabled"):
        raise ValueError(f"logger.wandb.mode must be online, offline or disabled (or null), got {mode!r}")
    return mode


def wandb_logger(project: str, save_dir: str, name: str, group: str, entity: str | None = None,
                 mode: str | None = None, tags: list[str] | None = None):
    """A Lightning WandbLogger whose mode never blocks on a missing network."""
    try:
        from lightning.pytorch.loggers import WandbLogger
    except ImportError as err:  # pragma: no cover - wandb is a core dependency
        raise ImportError("logger=wandb needs the wandb package: pip install wandb (or use logger=csv)") from err
    resolved = resolve_wandb_mode(mode)
    os.environ.setdefault("WANDB_SILENT", "true")
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(project=project, entity=entity, save_dir=save_dir, name=name, group=group,
                       mode=resolved, tags=list(tags or []))


def sync_hint(save_dir: str) -> str | None:
    """The `wandb sync` command for offline runs under ``save_dir`` (None if there are none)."""
    runs = sorted(Path(save_dir).glob("wandb/offline-run-*"))
    if not runs:
        return None
    return "wandb sync " + " ".join(str(r) for r in runs)


def finish_wandb() -> None:
    """End the live W&B run, if any, so the next multirun job starts a new one."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()
