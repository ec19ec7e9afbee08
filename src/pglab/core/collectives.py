"""Small collectives for what DDP itself does not synchronise (rollout counters, episodes, RNG states, statistics).

Gradients are DDP's; everything here runs once per rollout or per checkpoint, on small Python values, through
``torch.distributed.all_gather_object`` (the process group Lightning's DDP strategy set up: gloo on CPU, nccl on
GPU).
"""

from __future__ import annotations

import torch.distributed as dist

__all__ = ["all_ranks", "all_reduce_mean_"]


def all_ranks(obj):
    """Every rank's ``obj`` (a small picklable value), in rank order; ``[obj]`` without a process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def all_reduce_mean_(tensors: list) -> None:
    """Average ``tensors`` over ranks in place with one collective (flattened into one buffer). [any shapes]"""
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    flat = _flatten_dense_tensors(tensors)
    dist.all_reduce(flat)
    flat.div_(dist.get_world_size())
    for tensor, synced in zip(tensors, _unflatten_dense_tensors(flat, tensors), strict=True):
        tensor.copy_(synced)
