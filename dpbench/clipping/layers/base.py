"""What every layer rule provides, and the record of one layer's calls during one forward."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from dpbench.clipping.decision import GHOST, INSTANTIATE, mixed_choice


@dataclass
class Call:
    """One call of a hooked module: its inputs as seen in forward, and (later) its output gradients."""

    args: tuple
    kwargs: dict
    versions: tuple[int, ...]
    out_spec: object = None  # pytree spec of the module's output
    out_index: tuple[int, ...] = ()  # which output leaves are differentiable (and hooked)
    out_meta: tuple = ()  # (shape, dtype, device) of those leaves, to fill in gradients that never came
    grads: list = field(default_factory=list)  # one per hooked output leaf, None until seen
    pending: int = 0
    autocast: tuple | None = None  # (device type, dtype) when the forward ran under autocast
    key: object = None  # the module (or operation rule) whose calls this one joins; None: not processed
    unbatched: frozenset = frozenset()  # positions in the flattened (args, kwargs) that are never batch-sliced
    probes: list = field(default_factory=list)  # (sample, output leaf, nonzero dim-0 slices) of the layout probe
    folded: int = 1  # slices of dim 0 per sample (layout.py); > 1: tensors regrouped to [B, W, …]


@dataclass(frozen=True)
class LayerShape:
    """T positions, d inputs and p outputs per group, and the number of groups."""

    T: int
    d: int
    p: int
    groups: int = 1


class LayerRule:
    """Per-sample gradient rules for one module: norms (ghost or instantiated) and clipped sums.

    `calls` is the list of `Call`s of the module in one forward whose gradients arrived; a module
    called several times is one layer whose per-sample gradient is the sum over its calls.
    """

    has_ghost = False
    # whether the rule stays exact on calls whose tensors were regrouped from [B·W, …] to [B, W, …]
    # (the batch folded with W slices per sample into dim 0, see layout.py)
    folds = False
    # whether the batch of a call is its input's dim 0 (EmbeddingBag with offsets: the number of bags)
    batch_in_dim0 = True

    def __init__(self, module: nn.Module, name: str):
        self.module = module
        self.name = name
        self.params = {n: p for n, p in module.named_parameters(recurse=False) if p.requires_grad}

    def shape(self, calls: list[Call]) -> LayerShape | None:
        """T, d, p, groups of the layer for these calls, per sample: the one definition of a layer's
        geometry, read by the mixed rule and by the cost model (dpbench.complexity). None where a rule
        has none (the generic replay)."""
        return None

    def batch_size(self, call: Call) -> int:
        """How many samples one call covers, for the engine's check against the number of losses: the
        leading dimension of the first input (a rule whose input is not batch-first says otherwise,
        e.g. EmbeddingBag with offsets)."""
        return call.args[0].shape[0]

    def choose(self, calls: list[Call], strategy: str) -> str:
        """Ghost or instantiate, for a norm strategy ('instantiate', 'ghost', 'mixed')."""
        if not self.has_ghost or strategy == INSTANTIATE:
            return INSTANTIATE
        if strategy == GHOST:
            return GHOST
        s = self.shape(calls)
        return mixed_choice(s.T, s.d, s.p, s.groups)

    def working_space(self, calls: list[Call], choice: str) -> int:
        """Elements per sample of the temporary tensors of a norm computation with this choice."""
        if choice == INSTANTIATE:
            return sum(p.numel() for p in self.params.values())
        s = self.shape(calls)
        return 2 * s.T * s.T * s.groups

    def instantiate(self, calls: list[Call]) -> dict[str, torch.Tensor]:
        """Per-sample gradients {param name: Tensor[B, *param.shape]}."""
        raise NotImplementedError

    def ghost_norm_sq(self, calls: list[Call]) -> torch.Tensor:
        """Squared per-sample gradient norm over this layer's trainable parameters, Tensor[B]."""
        raise NotImplementedError

    def clipped_sum(self, calls: list[Call], coef: torch.Tensor) -> dict[str, torch.Tensor]:
        """Σᵢ coefᵢ·gᵢ per parameter from the stored inputs and output gradients (book-keeping)."""
        raise NotImplementedError


def batch_slice(calls: list[Call], rows: slice, batch: int) -> list[Call]:
    """The calls restricted to samples `rows`: every tensor with leading dimension `batch` is sliced."""

    def cut(x):
        return x[rows] if isinstance(x, torch.Tensor) and x.dim() > 0 and x.shape[0] == batch else x

    out = []
    for c in calls:
        leaves, spec = tree_flatten((c.args, c.kwargs))
        args, kwargs = tree_unflatten([x if i in c.unbatched else cut(x) for i, x in enumerate(leaves)], spec)
        out.append(replace(c, args=args, kwargs=kwargs, pending=0, grads=[cut(g) for g in c.grads],
                           out_meta=tuple(((rows.stop - rows.start, *m[0][1:]), *m[1:]) for m in c.out_meta)))
    return out


def squared_norms(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    """Σ over parameters of the squared per-sample norms of instantiated gradients."""
    total = None
    for g in grads.values():  # pow + sum: its cascade summation keeps float32 within 1e-7 (vector_norm did not)
        sq = g.reshape(g.shape[0], -1).pow(2).sum(1)
        total = sq if total is None else total + sq
    return total


def chunked_weighted_sum(chunks: list[dict[str, torch.Tensor]], coef: torch.Tensor) -> dict[str, torch.Tensor]:
    """Σᵢ coefᵢ·gᵢ of instantiated per-sample gradients held in consecutive batch chunks."""
    out: dict[str, torch.Tensor] = {}
    start = 0
    for grads in chunks:
        rows = next(iter(grads.values())).shape[0]
        part = coef[start:start + rows]
        for n, g in grads.items():
            value = torch.tensordot(part.to(g.dtype), g, dims=1)
            out[n] = out[n] + value if n in out else value
        start += rows
    return out


def gram_inner(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """⟨a aᵀ, g gᵀ⟩ per leading index for a [N, T, d], g [N, T, p]: ‖aᵀg‖² without forming aᵀg."""
    if a.shape[1] == 1:
        return a.pow(2).sum((1, 2)) * g.pow(2).sum((1, 2))
    aa = torch.bmm(a, a.transpose(1, 2))
    gg = torch.bmm(g, g.transpose(1, 2))
    return (aa * gg).sum((1, 2))
