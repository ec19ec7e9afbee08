"""``trainer=ddp``'s strategy: Lightning's DDP without the DistributedDataParallel wrapper (see below)."""

from __future__ import annotations

__all__ = ["GradientAllReduceDDP"]


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
