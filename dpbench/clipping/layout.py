"""Which slices of dim 0 of every recorded call's output belong to which sample: established, not
guessed from sizes.

On the first step of each new input signature (every call's output shapes, with the batch size written
as 'B'), one extra backward per probed sample k (the first and the last) of that sample's loss alone
shows which dim-0 slices of each output gradient depend on it: autograd's gradient is exactly zero on
the slices that loss does not depend on, in any precision, so the test is exact. Batch-first: only
slice k. Folded (window attention: W slices per sample, sample-major): slices k·W … k·W+W−1. Anything
else (a sequence-first layout, samples mixed) has no per-sample rule and is refused. Later steps with
the same signature reuse the layouts; the probe's cost is paid once per signature."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten


def _dims(shape, batch: int) -> tuple:
    """A shape with the batch written symbolically: dim 0 as ('B', k) when it is k·batch, every other
    size equal to the batch as 'B' (so a coincidence of sizes is a signature of its own)."""
    head = shape[0] if len(shape) else None
    if head is not None and batch and head % batch == 0:
        head = ("B", head // batch)
    return (head, *("B" if s == batch else s for s in shape[1:]))


def signature(calls_by_key: dict, batch: int) -> tuple:
    """The input signature of one step: every recorded call's output shapes, per key, in order."""
    return tuple(sorted((id(key), tuple(tuple(_dims(m[0], batch) for m in c.out_meta) for c in calls))
                        for key, calls in calls_by_key.items()))


def probed_samples(batch: int) -> list[int]:
    """The samples whose losses the probe backpropagates alone: the first and the last."""
    return sorted({0, batch - 1})


def nonzero_slices(grad: torch.Tensor) -> torch.Tensor:
    """Bool [dim 0]: which slices of dim 0 of a gradient are not all zero."""
    return grad.reshape(grad.shape[0], -1).ne(0).any(1) if grad.dim() else grad.ne(0).reshape(1)


def slices_per_sample(probes: list[tuple[int, int, torch.Tensor]], out_meta: tuple, batch: int) -> int | None:
    """W, the number of consecutive dim-0 slices of the call's outputs that each sample owns (1:
    batch-first), from the probes' (sample, output leaf, nonzero slices); None when the outputs'
    dim 0 is not owned sample by sample."""
    widths = set()
    for shape, _, _ in out_meta:
        if not len(shape) or shape[0] % batch:
            return None
        widths.add(shape[0] // batch)
    if len(widths) != 1:
        return None
    (W,) = widths
    for k, _, mask in probes:
        where = mask.nonzero().flatten()
        if where.numel() and bool(((where < k * W) | (where >= (k + 1) * W)).any()):
            return None
    return W


def fold(call, batch: int, W: int):
    """The call with every tensor whose dim 0 is batch·W (inputs, output gradients) reshaped to
    [batch, W, …]: each sample's W slices become positions of that sample."""
    def regroup(x):
        if isinstance(x, torch.Tensor) and x.dim() > 0 and x.shape[0] == batch * W:
            return x.reshape(batch, W, *x.shape[1:])
        return x

    leaves, spec = tree_flatten((call.args, call.kwargs))
    args, kwargs = tree_unflatten([x if i in call.unbatched else regroup(x) for i, x in enumerate(leaves)], spec)
    meta = tuple((torch.Size((batch, W, *m[0][1:])), *m[1:]) for m in call.out_meta)
    return replace(call, args=args, kwargs=kwargs, grads=[regroup(g) for g in call.grads], out_meta=meta,
                   folded=W)
