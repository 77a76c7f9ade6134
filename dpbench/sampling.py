"""Logical batches for DP-SGD: Poisson sampling (what the accountants assume) or shuffling.

A logical batch is what one noisy optimizer step sees; over W ranks each takes its share (`rank_share`),
which it splits into physical batches that fit in memory. With Poisson sampling every example joins
each logical batch independently with probability q, so logical batches vary in size and can be empty
(a step of noise only).
"""

from __future__ import annotations

import math

import torch

SAMPLING_METHODS = ("poisson", "shuffle")


def steps_per_epoch(dataset_size: int, batch_size: int) -> int:
    """Logical steps in one epoch, ceil(N/L): at least one pass (in expectation, for Poisson sampling)."""
    return math.ceil(dataset_size / batch_size)


def epoch_plan(dataset_size: int, batch_size: int, sampling: str, generator: torch.Generator) -> list[torch.Tensor]:
    """The logical batches (index tensors) of one epoch, drawn from `generator` (a CPU generator).

    poisson: steps_per_epoch batches, each example in each batch with probability batch_size/N.
    shuffle: a random permutation cut into consecutive batches of batch_size (the last may be smaller);
    the accountants' Poisson analysis does not cover this.
    """
    if sampling == "poisson":
        rate = batch_size / dataset_size
        steps = steps_per_epoch(dataset_size, batch_size)
        return [torch.nonzero(torch.rand(dataset_size, generator=generator) < rate).flatten() for _ in range(steps)]
    if sampling == "shuffle":
        return list(torch.randperm(dataset_size, generator=generator).split(batch_size))
    raise ValueError(f"unknown sampling {sampling!r}; choose one of {', '.join(SAMPLING_METHODS)}")


def physical_batches(logical: torch.Tensor, physical_batch_size: int) -> list[torch.Tensor]:
    """Split one logical batch into chunks of at most physical_batch_size (none for an empty batch)."""
    return list(logical.split(physical_batch_size)) if logical.numel() else []


def rank_share(logical: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """The part of a logical batch that rank `rank` of `world_size` processes: contiguous, sizes differing by
    at most one, possibly empty (that rank still takes part in the step's all-reduce).

    Every rank draws the same global logical batches from the same seeded generator (`epoch_plan` over
    the whole dataset at rate q), so the batches, and hence the privacy analysis, do not depend on W."""
    return logical.tensor_split(world_size)[rank]
