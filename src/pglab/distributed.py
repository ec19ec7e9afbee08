"""Small collectives for what DDP itself does not synchronise (rollout counters, episodes, RNG states, statistics).

Gradients are DDP's; everything here runs once per rollout or per checkpoint, on small Python values, through
``torch.distributed.all_gather_object`` (the process group Lightning's DDP strategy set up: gloo on CPU, nccl on
GPU).
"""

from __future__ import annotations

import torch.distributed as dist

__all__ = ["all_ranks"]


def all_ranks(obj):
    """Every rank's ``obj`` (a small picklable value), in rank order; ``[obj]`` without a process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered
