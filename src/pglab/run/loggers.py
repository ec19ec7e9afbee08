"""Loggers without surprises.

W&B runs online only with credentials and a reachable server, and never waits on a missing network: an
unreachable server is found in ``WANDB_PROBE_TIMEOUT`` seconds (a TCP connect) and the run goes offline with a
one-line notice. ``wandb`` is imported lazily (it costs ~1 s of start-up) and only when the W&B logger is
configured. The CSV logger appends to an existing ``metrics.csv`` (a run resumed into its own folder), where
Lightning's deletes it.

A run resumed from a checkpoint logs again the env steps its first run logged after that checkpoint (a run killed
between two checkpoints). The CSV is truncated to the checkpoint's step (``pglab.run.checkpoints.truncate_csv``);
TensorBoard is given ``purge_step`` = the checkpoint's env steps + 1, so TensorBoard (and its ``EventAccumulator``)
hides the old events from that step on — the event files keep them, a reader that ignores TensorBoard's purge marker
sees both. W&B is not truncated: its "rewind" (``wandb.init(resume_from="<id>?_step=N")``) is a server-side
operation keyed on W&B's own ``_step`` counter (pglab's rows are keyed on ``env_steps``, and ``_step`` is not stored
in the checkpoint), so a resumed run that continues a W&B run prints a notice that those rows remain
(``wandb_resume_notice``).
"""

from __future__ import annotations

import csv
import netrc
import os
import socket
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

__all__ = ["wandb_logger", "with_env_steps", "resolve_wandb_mode", "finish_wandb", "sync_hint", "CSVLogger",
           "wandb_reachable", "wandb_base_url", "resume_kwargs", "wandb_resume_notice"]

WANDB_PROBE_TIMEOUT = 3.0  # seconds: how long an online run may wait to learn the server is unreachable
WANDB_INIT_TIMEOUT = 30.0  # seconds: wandb.init's own limit once the server answered (its default is 90)


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, but an existing metrics.csv is continued (its header kept), not deleted."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = list(next(csv.reader(file), []))


class CSVLogger(_LightningCSVLogger):
    """``lightning.pytorch.loggers.CSVLogger`` that appends to ``<save_dir>/<name>/<version>/metrics.csv`` and
    writes at least every ``flush_seconds``.

    Lightning's flushes when ``(step + 1) % flush_logs_every_n_steps == 0``; pglab's step is the env-step count,
    which rarely satisfies that, so a killed run could lose most of its rows. A time-based flush appends only the
    new rows (a cheap write), so the file is at most ``flush_seconds`` behind."""

    def __init__(self, *args, flush_seconds: float = 10.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.flush_seconds = flush_seconds
        self._last_flush = time.monotonic()

    def log_metrics(self, metrics, step=None) -> None:
        super().log_metrics(with_env_steps(metrics, step), step)
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.save()
            self._last_flush = time.monotonic()

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def with_env_steps(metrics: dict, step: int | None) -> dict:
    """``metrics`` with ``env_steps`` = ``step`` where the caller did not set it.

    pglab logs every metric with ``step`` = the env-step count of the rollout it describes; callbacks (eval, the
    running return, a warm start) log their own dicts without an ``env_steps`` key. Without it W&B plots them at
    the last ``env_steps`` it saw (the previous rollout's: its x-axis is ``define_metric(step_metric="env_steps")``)
    and the CSV leaves the cell empty."""
    if step is None or "env_steps" in metrics:
        return metrics
    return {**metrics, "env_steps": float(step)}


def resume_kwargs(logger_cfg, wandb_id: str | None, resume_steps: int | None) -> dict:
    """Extra constructor arguments for one configured logger (``logger.<name>``) of a run resumed at
    ``resume_steps`` env steps (None: not resumed).

    W&B: ``id`` = the checkpoint's W&B run, which the resumed run continues. TensorBoard: ``purge_step`` = the
    checkpoint's env steps + 1. The checkpoint holds every row logged at steps <= its env steps (the loggers are
    flushed before it is written); a run killed later logged more, which this run logs again. SummaryWriter writes a
    session-start marker at ``purge_step``, and TensorBoard then drops the earlier files' events at that step and
    after, so each step appears once."""
    target = str(logger_cfg.get("_target_", ""))
    if target.endswith("wandb_logger"):
        return {"id": wandb_id} if wandb_id else {}
    if resume_steps is not None and target.endswith("TensorBoardLogger") and "purge_step" not in logger_cfg:
        return {"purge_step": int(resume_steps) + 1}
    return {}


def wandb_resume_notice(logger_cfgs, wandb_id: str | None, resume_steps: int) -> str | None:
    """The one-line notice a resumed run prints when it continues a W&B run (None when it does not): the rows the
    first run logged after the checkpoint stay in W&B's history, beside this run's rows for the same env steps."""
    if not wandb_id or not any(str(c.get("_target_", "")).endswith("wandb_logger") and c.get("mode") != "disabled"
                               for c in logger_cfgs):
        return None
    return (f"pglab: continuing W&B run {wandb_id} at {resume_steps} env steps; W&B keeps any rows the first run "
            f"logged after that step (pglab cannot truncate a W&B run's history): on W&B, rows with env_steps > "
            f"{resume_steps} logged before this resume are the stale ones")


def wandb_base_url() -> str:
    """The W&B server a run talks to: $WANDB_BASE_URL, else the installed wandb's own default (it is not
    api.wandb.ai for every wandb version). Read when a run starts and passed to ``wandb.init`` explicitly: wandb
    reads the environment once per process, so a later run in the same process (the Python API, a test) would
    otherwise talk to the first run's server."""
    url = os.environ.get("WANDB_BASE_URL")
    if url:
        return url
    try:
        import wandb

        return str(wandb.Settings().base_url)
    except Exception:  # noqa: BLE001 - an unusable wandb install: fall back to W&B's public server
        return "https://api.wandb.ai"


def _has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        auth = netrc.netrc(os.environ.get("NETRC", str(Path.home() / ".netrc")))
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    hosts = dict.fromkeys(("api.wandb.ai", urlparse(wandb_base_url()).hostname))
    return any(auth.authenticators(host) for host in hosts if host)


def resolve_wandb_mode(mode: str | None) -> str:
    """The config's mode, else $WANDB_MODE, else online with credentials and offline without."""
    mode = mode or os.environ.get("WANDB_MODE") or None  # WANDB_MODE= (empty) is unset, not a bad mode
    if mode in ("dryrun",):
        mode = "offline"
    if mode is None:
        mode = "online" if _has_credentials() else "offline"
    if mode not in ("online", "offline", "disabled"):
        raise ValueError(f"logger.wandb.mode must be online, offline or disabled (or null), got {mode!r}")
    return mode


def wandb_reachable(timeout: float = WANDB_PROBE_TIMEOUT) -> bool:
    """Whether the W&B server (``wandb_base_url()``) accepts a TCP connection and answers an HTTP
    request (any status) within ``timeout`` each: a server that accepts connections and never answers made
    ``wandb.init`` wait 51 s before failing."""
    import urllib.error
    import urllib.request

    base = wandb_base_url()
    url = urlparse(base)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "api.wandb.ai", port), timeout=timeout):
            pass
        urllib.request.urlopen(urllib.request.Request(base, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return True  # it answered (401, 404, ...): what it thinks of the request is wandb.init's business
    except (OSError, ValueError):  # refused, unresolvable, timed out, not HTTP
        return False
    return True


def wandb_logger(project: str, save_dir: str, name: str, group: str, entity: str | None = None,
                 mode: str | None = None, tags: list[str] | None = None, id: str | None = None):
    """A Lightning WandbLogger whose mode never blocks on a missing network.

    ``id``: continue that W&B run (a resumed training run passes the id stored in its checkpoint)."""
    try:
        from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
    except ImportError as err:  # pragma: no cover - wandb is a core dependency
        raise ImportError("logger=wandb needs the wandb package: pip install wandb (or use logger=csv)") from err
    resolved = resolve_wandb_mode(mode)
    if os.environ.get("WANDB_MODE") == "":
        # unset, for pglab and for wandb itself, which reads the variable again and refuses an empty mode
        del os.environ["WANDB_MODE"]
    if resolved == "online" and not wandb_reachable():
        host = urlparse(wandb_base_url()).hostname
        print(f"pglab: W&B server {host} is unreachable; logging offline instead (upload later with wandb sync)",
              file=sys.stderr)
        resolved = "offline"
    os.environ.setdefault("WANDB_SILENT", "true")
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    import wandb

    class WandbLogger(LightningWandbLogger):  # same class name: pglab finds its W&B logger by it
        """Lightning's WandbLogger whose every row carries ``env_steps`` (see ``with_env_steps``)."""

        def log_metrics(self, metrics, step=None) -> None:
            super().log_metrics(with_env_steps(metrics, step), step)

    extra = {"id": id, "resume": "allow"} if id else {}
    # runs can be filtered by preset and group choice (config.algo, config.experiment, config.choices.<group>),
    # and the command line's overrides are tags, as Hydra's override_dirname
    from pglab.run.naming import hydra_choices, override_tags

    choices = hydra_choices()
    extra["config"] = {"choices": choices, "algo": choices.get("algo"), "experiment": choices.get("experiment")}
    tags = list(dict.fromkeys([*(tags or []), *override_tags()]))
    def make(mode: str):
        logger = WandbLogger(project=project, entity=entity, save_dir=save_dir, name=name, group=group,
                             mode=mode, tags=tags, **extra,
                             settings=wandb.Settings(init_timeout=WANDB_INIT_TIMEOUT, base_url=wandb_base_url()))
        # Lightning always passes wandb.init an `anonymous` argument that W&B ≥ 0.19 deprecates (a warning on every
        # run); pglab never uses anonymous mode, so the argument is dropped at its source
        logger._wandb_init.pop("anonymous", None)
        return logger

    logger = make(resolved)
    from pglab.run.hydra_callbacks import started_as_other_rank

    if resolved == "online" and not started_as_other_rank():
        # wandb.init now, where a server error (401 for a bad key, 5xx, a timeout) can still become an offline run
        # with a notice, instead of a traceback at the first log call (rank 0 only: the others never init)
        try:
            logger.experiment  # noqa: B018 - the property runs wandb.init
        except Exception as err:  # noqa: BLE001 - any server-side failure: the run must not die of its logger
            reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
            print(f"pglab: W&B init failed ({type(err).__name__}: {reason}); logging offline instead (upload "
                  "later with wandb sync)", file=sys.stderr)
            if getattr(wandb, "run", None) is not None:
                wandb.finish(exit_code=1)
            logger = make("offline")
    return logger


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
