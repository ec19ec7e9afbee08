"""``trainer=ddp``'s strategy: Lightning's DDP without the DistributedDataParallel wrapper (see below); and the
callback that ends every rank, each with one line, when one rank fails (``RankFailureWatch``)."""

from __future__ import annotations

import os
import sys
import threading
import time

__all__ = ["GradientAllReduceDDP", "RankFailureWatch", "failed_rank_note", "not_rank_zero"]


def _strategy_class():
    from lightning.pytorch.overrides.distributed import _sync_module_states
    from lightning.pytorch.strategies import DDPStrategy

    class GradientAllReduceDDP(DDPStrategy):
        """Lightning's DDP (its launcher, process group, cluster environments, rank-0 checkpointing and logging)
        without the ``DistributedDataParallel`` wrapper: pglab averages gradients itself, one flat all-reduce
        per update (``PolicyGradientModule``).

        Why: one Lightning step holds a whole rollout's K·M updates (manual optimisation), and DDP's reducer needs
        Lightning's optimizer wrappers and per-backward bookkeeping for that — measured on 2 CPU ranks it made a
        2-rank run slower than one rank. Without the wrapper the direct optimizer path works under DDP too."""

        def configure_ddp(self) -> None:
            _sync_module_states(self.model)  # rank 0's initial weights everywhere, as the wrapper would

    return GradientAllReduceDDP


def GradientAllReduceDDP(**kwargs):  # noqa: N802 - a factory, so importing this module does not import Lightning
    """``trainer.strategy`` for ``trainer=ddp``: see ``_strategy_class``; ``kwargs`` go to Lightning's DDPStrategy."""
    return _strategy_class()(**kwargs)


# -- one rank fails: every rank ends, each with one line ------------------------------------------------------------
FAILED_KEY, ACK_KEY, DONE_KEY = "pglab/failed/", "pglab/ack/", "pglab/done/"
WATCH_PERIOD_S = 0.5  # how often each rank looks for another rank's failure (one store round trip)
ACK_TIMEOUT_S = 20.0  # how long a failing rank waits for the others to have reported it before it exits
LOST_GRACE_S = 2.0  # a rank that loses the store waits this long for its own run to end normally before reporting


class _Failure:
    rank: int | None = None  # this process's global rank, once it knows it is one of several (for main's line)
    world_size: int = 1
    rank_zero_gone = False  # the store was gone when this rank failed: rank 0 (its host) had ended first


def failed_rank_note() -> str:
    """`` on rank R`` when this process is one rank of a multi-process run, else "" (for the run's failure line);
    with a note when rank 0 had already ended (a collective then fails on every other rank: the cause is rank 0's)."""
    if _Failure.world_size < 2 or _Failure.rank is None:
        return ""
    if _Failure.rank_zero_gone:
        return (f" on rank {_Failure.rank}, after rank 0 had ended (it hosts the process group's store, which is gone;"
                " rank 0's output says why)")
    return f" on rank {_Failure.rank}"


def not_rank_zero() -> bool:
    """Whether this process is a rank other than 0 of a multi-process run (rank 0 writes the checkpoints)."""
    return _Failure.world_size > 1 and _Failure.rank not in (None, 0)


def _watch_class():
    import lightning as L

    class RankFailureWatch(L.Callback):
        """Under DDP, an exception on one rank (an env that raises on that rank only) ends every rank, at once and
        with one line each, instead of leaving the others blocked in their next all-reduce (until the process
        group's 30-minute timeout) or killed without a word by Lightning's process observer.

        The failing rank publishes ``rank: error`` in the process group's key-value store (``on_exception``) and waits
        until every other rank has acknowledged it (at most ``ACK_TIMEOUT_S``), then ends through ``pglab.run.train``'s
        own failure path (its traceback, then ``the run failed on rank R: ...; the last checkpoint is kept: ...;
        resume: ...``). Every other rank runs a watcher thread that polls the store every ``WATCH_PERIOD_S``; on
        another rank's failure it prints the same line, naming that rank and its error, acknowledges and exits 1 at
        once (``os._exit``: its main thread is blocked inside a collective that can no longer complete, and the
        state mid-rollout is no checkpoint: the last periodic ``last.ckpt`` is what a resume starts from). A rank
        that loses the store (rank 0, which hosts it, died without a word: SIGKILL, OOM) says so and exits too.

        ``saved``: a function that describes what a resume starts from (the kept checkpoint and the command)."""

        def __init__(self, saved) -> None:
            self.saved = saved
            self.store = None
            self.rank, self.world_size = 0, 1
            self.done = threading.Event()  # the fit ended (normally, or this rank is failing): stop watching

        def setup(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
            import torch.distributed as dist

            _Failure.rank, _Failure.world_size = trainer.global_rank, trainer.world_size  # this run's, not the last's
            _Failure.rank_zero_gone = False
            if trainer.world_size < 2 or not dist.is_available() or not dist.is_initialized():
                return
            try:
                self.store = dist.distributed_c10d._get_default_store()
            except Exception:  # noqa: BLE001 - no store to watch (a custom process group): Lightning's behaviour
                return
            self.rank, self.world_size = trainer.global_rank, trainer.world_size
            self.done.clear()
            threading.Thread(target=self._watch, name="pglab-rank-failure-watch", daemon=True).start()

        def _others(self) -> list[int]:
            return [r for r in range(self.world_size) if r != self.rank]

        def _watch(self) -> None:
            keys = [f"{FAILED_KEY}{r}" for r in self._others()]
            while not self.done.wait(WATCH_PERIOD_S):
                try:
                    failed = [k for k in keys if self.store.check([k])]
                    if not failed:
                        continue
                    who = failed[0]
                    error = self.store.get(who).decode(errors="replace")
                except Exception as err:  # noqa: BLE001 - the store is gone: its host (rank 0) ended
                    if self.done.wait(LOST_GRACE_S):
                        return  # this run ended normally meanwhile: rank 0 simply finished first
                    self._end(f"the run failed on rank 0: it ended without reporting ({type(err).__name__} from the "
                              "process group's store; see rank 0's output for why)")
                    return
                if self.done.is_set():
                    return
                self._end(f"the run failed on rank {who[len(FAILED_KEY):]}: {error}", failed=who[len(FAILED_KEY):])
                return

        def _end(self, failure: str, failed: str | None = None) -> None:
            try:
                saved = self.saved()
            except Exception:  # noqa: BLE001 - describing the checkpoint must not keep this rank alive
                saved = "rank 0's output names the kept checkpoint"
            print(f"pglab: {failure}; rank {self.rank} ends too; {saved}", file=sys.stderr, flush=True)
            sys.stdout.flush()
            if failed is not None:
                try:
                    self.store.set(f"{ACK_KEY}{self.rank}", "1")
                    if self.rank == 0:
                        # rank 0 hosts the store: it stays until the failing rank has read every acknowledgement
                        # (its reads would fail, noisily, against a store that is gone)
                        deadline = time.monotonic() + ACK_TIMEOUT_S
                        while not self.store.check([f"{DONE_KEY}{failed}"]) and time.monotonic() < deadline:
                            time.sleep(0.02)
                except Exception:  # noqa: BLE001 - the failing rank stops waiting at its timeout
                    pass
            os._exit(1)

        def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exception: BaseException) -> None:
            if self.store is None or self.done.is_set():
                return
            self.done.set()  # this rank reports through its own failure path, not the watcher's
            line = f"{type(exception).__name__}: {exception}".strip().splitlines()[0][:500]
            try:
                self.store.set(f"{FAILED_KEY}{self.rank}", line)
                # a set is not answered (a write into a dead peer's socket can still succeed): this round trip is
                # what finds out whether the store, and so rank 0, is still there
                self.store.check([f"{FAILED_KEY}{self.rank}"])
            except Exception:  # noqa: BLE001 - the store is gone: rank 0 ended, and this rank's error follows from it
                _Failure.rank_zero_gone = self.rank != 0
                return
            # wait until every other rank reported it (or failed itself, or ended): they exit on their own, and this
            # rank must not exit first — Lightning's observer on rank 0 kills rank 0 silently once a child exits
            waiting = set(self._others())
            deadline = time.monotonic() + ACK_TIMEOUT_S
            while waiting and time.monotonic() < deadline:
                try:
                    waiting = {r for r in waiting if not (self.store.check([f"{ACK_KEY}{r}"]) or
                                                          self.store.check([f"{FAILED_KEY}{r}"]))}
                except Exception:  # noqa: BLE001 - the store went away: rank 0 ended without acknowledging
                    _Failure.rank_zero_gone = self.rank != 0
                    return
                time.sleep(0.02)
            try:
                self.store.set(f"{DONE_KEY}{self.rank}", "1")  # rank 0 may go now; this rank no longer reads the store
            except Exception:  # noqa: BLE001
                pass

        def teardown(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
            self.done.set()

        def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
            self.done.set()  # the last epoch's agreement is behind every rank: rank 0 may exit first from here

    return RankFailureWatch


def RankFailureWatch(saved):  # noqa: N802 - a factory: Lightning is imported on first use
    """The callback that ends every rank of a DDP run when one fails (see ``_watch_class``)."""
    return _watch_class()(saved)
