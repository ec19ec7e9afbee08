"""One update interface: ``update(batch) -> dict[str, Tensor]`` — one optimizer step on one minibatch, returning
its diagnostics by name. The learner chooses one of these once, at fit start, and every training step calls it.

- ``AutogradUpdate``: autograd through the reference loss, the torch optimizer called directly (one process, or
  pglab's ``trainer=ddp``, which averages gradients itself).
- ``LightningUpdate``: autograd through Lightning's optimizer wrappers (mixed precision, Lightning's own DDP
  wrapper, or ``learner.lightning_optimizer=true``).
- ``LeanUpdate``: the hand-derived update of ``pglab.accel.lean``, only after ``pglab.accel.verify`` found it equal
  to the reference on this very network and surrogate.

Whatever the path, the diagnostics are the reference loss's names, so a new diagnostic added to a surrogate is one
line there and reaches the CSV and W&B on every path (the lean update steps aside when its names differ).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from pglab.accel.lean import LeanUpdate as LeanGradient
from pglab.accel.lean import clip_flat_
from pglab.core.collectives import all_reduce_mean_
from pglab.core.types import Batch

if TYPE_CHECKING:
    from pglab.learner.module import PolicyGradientModule

__all__ = ["Update", "AutogradUpdate", "LightningUpdate", "LeanUpdate", "Diagnostics"]


class Diagnostics(Mapping):
    """One update's diagnostics by name, held as one vector [K] (``names`` [K]): a read-only dict to every
    reader, while the learner averages an epoch's vectors in one stack instead of K lists of 0-dim tensors."""

    __slots__ = ("names", "vector", "_index")

    def __init__(self, names: tuple[str, ...], vector: Tensor, index: dict[str, int]) -> None:
        self.names, self.vector, self._index = names, vector, index

    def __getitem__(self, key: str) -> Tensor:
        return self.vector[self._index[key]]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


class Update:
    """Base: ``start(minibatches)`` once per training step (before its first update), then ``__call__`` per
    minibatch. ``name`` says which path runs (logged at start-up and at the end of a run)."""

    name = "autograd"

    def __init__(self, module: PolicyGradientModule) -> None:
        self.module = module

    def start(self, minibatches: list[Batch]) -> None:
        pass

    def __call__(self, batch: Batch, first: bool = False) -> dict[str, Tensor]:
        raise NotImplementedError

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        module = self.module
        if module.hparams.compile:
            if module._compiled_loss is None:
                # inductor compiles the forward and (through AOTAutograd) the backward into fused kernels;
                # minibatch sizes vary with the rollout's real rows, hence dynamic shapes
                module._compiled_loss = torch.compile(module.loss_and_stats, dynamic=True)
            return module._compiled_loss(batch)
        return module.loss_and_stats(batch)


class AutogradUpdate(Update):
    """Autograd, then the torch optimizer directly: Lightning's wrappers add nothing on one process at 32-bit."""

    name = "autograd"

    def __call__(self, batch: Batch, first: bool = False) -> dict[str, Tensor]:
        module = self.module
        loss, stats = self.loss(batch)
        optimizer = module.optimizers().optimizer
        params = module.trainable_parameters
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if module.world_size > 1:  # trainer=ddp (GradientAllReduceDDP): average the gradients over ranks
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            all_reduce_mean_([p.grad for p in params])
        if first or module.hparams.clip_per_group:
            module._record_group_norms()
        grad_norm = module._grad_norm(params, module.hparams.max_grad_norm)
        if module._update_is_finite(float(loss.detach()), float(grad_norm)):
            optimizer.step()
        module._count_direct_step()
        return stats


class LightningUpdate(Update):
    """Through Lightning: precision plugins, DDP's gradient all-reduce (prepared by ``manual_backward`` before every
    backward, so several updates per step stay synchronised), ``trainer.global_step``."""

    name = "autograd (Lightning's optimizer wrappers)"

    def __call__(self, batch: Batch, first: bool = False) -> dict[str, Tensor]:
        module = self.module
        loss, stats = self.loss(batch)
        optimizer = module.optimizers()
        max_norm = module.hparams.max_grad_norm
        optimizer.zero_grad(set_to_none=True)
        module.manual_backward(loss)
        if first or module.hparams.clip_per_group:
            module._record_group_norms()
        if max_norm is not None and not module.hparams.clip_per_group:
            module.clip_gradients(optimizer, gradient_clip_val=max_norm, gradient_clip_algorithm="norm")
            grad_norm = module._grad_norm(module.trainable_parameters, None)
        else:
            grad_norm = module._grad_norm(module.trainable_parameters, max_norm)
        if module._update_is_finite(float(loss.detach()), float(grad_norm)):
            optimizer.step()
        module.updates += 1
        return stats


class LeanUpdate(Update):
    """``pglab.accel.lean``'s hand-derived gradient, then the direct path's steps on the flat gradient buffer."""

    name = "lean"

    def __init__(self, module: PolicyGradientModule, gradient: LeanGradient) -> None:
        super().__init__(module)
        self.gradient = gradient
        self._names = tuple(gradient.keys)
        self._index = {name: i for i, name in enumerate(self._names)}
        self._prepared: list[tuple] = []
        self._next = 0

    def start(self, minibatches: list[Batch]) -> None:
        # the parameters', gradients' and Adam's flat layout checked once per step (a checkpoint load or .to()
        # replaces storages between steps), then the per-minibatch constants of the whole step at once (one set of
        # [M, B] operations)
        if minibatches:
            self.gradient.rebind()
            self.gradient.bind_optimizer(self.module.optimizers().optimizer)
        self._prepared, self._next = (self.gradient.prepare(minibatches) if minibatches else []), 0

    def __call__(self, batch: Batch, first: bool = False) -> dict[str, Tensor]:
        module, gradient = self.module, self.gradient
        prepared = self._prepared[self._next] if self._next < len(self._prepared) else None
        self._next += 1
        loss, diagnostics = gradient(batch, prepared)
        if module.world_size > 1:  # trainer=ddp (GradientAllReduceDDP): one all-reduce of the flat gradient
            all_reduce_mean_([gradient.flat_grad])
        if first:
            module._record_group_norms()
        loss_value, grad_norm = clip_flat_(gradient.flat_grad, module.hparams.max_grad_norm, loss)
        if module._update_is_finite(loss_value, grad_norm):
            gradient.adam_step(module.optimizers().optimizer)
        module._count_direct_step()
        return Diagnostics(self._names, diagnostics, self._index)
