"""Minibatches of a flat rollout: K reshuffled passes in M minibatches, each gathered with one index tensor."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from pglab.core.types import Batch

__all__ = ["MinibatchDataset", "MinibatchSampler"]


class MinibatchDataset(Dataset):
    """Indexable by a list of index tensors: ``ds[[idx, ...]]`` returns one Batch per index tensor (rows, or
    whole episodes in the episode layout), each gathered with a single index operation."""

    def __init__(self, batch: Batch, episode_length: int | None) -> None:
        self.batch = batch
        # whole-episode layout: rows are [E * L] episode-major; an index selects episodes
        self.episode_length = episode_length

    def __len__(self) -> int:
        return self.batch.num_episodes if self.episode_length else self.batch.obs.shape[0]

    def __getitem__(self, indices: list[Tensor]) -> list[Batch]:
        return [self.minibatch(index) for index in indices]

    def minibatch(self, index: Tensor) -> Batch:
        b = self.batch
        if self.episode_length is None:
            rows = index
            return Batch(b.obs[rows], b.actions[rows], b.logp_old[rows], b.values_old[rows],
                         b.dist_params_old[rows], b.advantages[rows], b.targets[rows], b.mask[rows],
                         b.episode_ids[rows], 1)
        length = self.episode_length
        rows = (index.unsqueeze(1) * length + torch.arange(length).unsqueeze(0)).reshape(-1)
        local_ids = torch.arange(index.numel()).repeat_interleave(length)
        return Batch(b.obs[rows], b.actions[rows], b.logp_old[rows], b.values_old[rows], b.dist_params_old[rows],
                     b.advantages[rows], b.targets[rows], b.mask[rows], local_ids, int(index.numel()))


class MinibatchSampler(Sampler):
    """``passes`` reshuffled passes over ``size`` items in ``num_minibatches`` minibatches each (one index tensor
    per minibatch), grouped ``per_step`` minibatches per Lightning step (None: all of them in one step)."""

    def __init__(self, size: int, num_minibatches: int, passes: int, generator: torch.Generator,
                 per_step: int | None = None) -> None:
        self.size, self.passes, self.generator = size, passes, generator
        self.num_minibatches = max(1, min(num_minibatches, size))
        total = self.passes * self.num_minibatches
        self.per_step = total if per_step is None else max(1, min(per_step, total))

    def __len__(self) -> int:
        return -(-self.passes * self.num_minibatches // self.per_step)

    def __iter__(self) -> Iterator[list[Tensor]]:
        chunk: list[Tensor] = []
        for _ in range(self.passes):
            for index in torch.randperm(self.size, generator=self.generator).tensor_split(self.num_minibatches):
                chunk.append(index)
                if len(chunk) == self.per_step:
                    yield chunk
                    chunk = []
        if chunk:
            yield chunk
