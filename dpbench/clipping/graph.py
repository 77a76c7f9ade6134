"""What the losses' autograd graph reaches: the leaf tensors whose gradients a backward would form,
each with the number of graph edges that feed its gradient (one per use of the tensor that autograd
records).

The engine reads it on every backward (a walk over the graph's nodes, about 0.5 ms for a ViT-B on
one CPU thread) to establish, rather than assume, that every trainable parameter the losses depend on
has its per-sample gradient accounted for by recorded forward calls."""

from __future__ import annotations

import torch


def reachable_leaves(losses: torch.Tensor) -> list[tuple[torch.Tensor, int]]:
    """(leaf, edges) for every leaf tensor (requires_grad=True) that a backward of `losses`
    accumulates a gradient into; `edges` counts the graph's uses of it."""
    edges: dict = {}
    seen, stack = set(), [losses.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for nxt, _ in node.next_functions:
            if nxt is not None and hasattr(nxt, "variable"):  # AccumulateGrad: the leaf it writes
                edges[nxt] = edges.get(nxt, 0) + 1
            stack.append(nxt)
    return [(node.variable, n) for node, n in edges.items()]
