"""What the losses' autograd graph reaches: the leaf tensors whose gradients a backward would form.

The engine reads it on every backward (a walk over the graph's nodes, about 0.5 ms for a ViT-B on
one CPU thread) to establish, rather than assume, that every trainable parameter the losses depend on
has its per-sample gradient accounted for by a recorded forward call."""

from __future__ import annotations

import torch


def reachable_leaves(losses: torch.Tensor) -> list[torch.Tensor]:
    """The leaf tensors (requires_grad=True) that a backward of `losses` accumulates gradients into."""
    leaves, seen, stack = [], set(), [losses.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)  # AccumulateGrad: the leaf it writes
        if variable is not None:
            leaves.append(variable)
        stack.extend(f for f, _ in node.next_functions)
    return leaves
