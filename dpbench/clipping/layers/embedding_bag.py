"""nn.EmbeddingBag: bags of indices reduced by sum (optionally weighted per index), mean or max.

Bag i is a row of a 2-D input [B, L], or input[offsets[i]:offsets[i+1]] of a 1-D input (the last bag
ends at the input's end; with include_last_offset the last offset must be that end, as torch assumes);
entries equal to padding_idx are left out of the bag (and of a mean's count). With weights w_j (the
per_sample_weights, 1/|bag| for a mean, 1 otherwise) the per-sample gradient of bag i is
Σ_{j∈i} w_j e_{idx_j} g_iᵀ = c_i g_iᵀ with c_i = Σ_{j∈i} w_j e_{idx_j} ∈ R^V, so its squared norm is
‖c_i‖²‖g_i‖²; ‖c_i‖² = Σ_{j,k∈i} w_j w_k [idx_j = idx_k] sums, over the distinct indices of the bag, the
squared total weight of each (found by sorting the (bag, index) pairs, not by forming the pairs). A module
called several times adds ⟨c_i^(s), c_i^(t)⟩⟨g_i^(s), g_i^(t)⟩ over the pairs of calls. In max mode each
output coordinate d comes from one row a_{i,d} (the row torch's forward chose, found by rerunning that
forward), so the per-sample gradient is Σ_d g_{i,d} e_{a_{i,d}} e_dᵀ and its squared norm ‖g_i‖² (0 for an
empty bag).

With offsets the input's leading dimension counts indices, not samples: `batch_size` says how many bags
there are, and the first rule method to see a call rewrites it in place into a batch-first form (indices
and weights [B, L], padded with weight 0; max mode: the chosen rows [B, D]) that the engine's batch
chunking (base.batch_slice) slices by sample like any other layer's inputs."""

from __future__ import annotations

import torch

from dpbench.clipping.layers.base import Call, LayerRule, LayerShape
from dpbench.clipping.layers.embedding import refuse_batch_dependent_lookup
from dpbench.errors import DpbenchError

_MODES = {"sum": 0, "mean": 1, "max": 2}
# keys of a call's kwargs once it has been rewritten into the batch-first form
_WEIGHTS, _VALID, _LENGTH = "dpbench_bag_weights", "dpbench_bag_valid", "dpbench_bag_length"


def _argument(call: Call, position: int, name: str):
    if len(call.args) > position:
        return call.args[position]
    return call.kwargs.get(name)


class EmbeddingBagRule(LayerRule):
    """nn.EmbeddingBag, 2-D input or 1-D input with offsets; sum (with per_sample_weights), mean, max."""

    has_ghost = True
    batch_in_dim0 = False  # with offsets the batch is the number of bags (batch_size)

    def __init__(self, module, name):
        super().__init__(module, name)
        refuse_batch_dependent_lookup(module, name)
        if module.mode not in _MODES:
            raise DpbenchError(f"module '{name}' (EmbeddingBag) has mode '{module.mode}'; dpbench knows "
                               "sum, mean and max")

    # ---- the calls in batch-first form -----------------------------------------------------------
    def batch_size(self, call: Call) -> int:
        """The number of bags: a 1-D input's leading dimension counts indices."""
        x = call.args[0]
        if _WEIGHTS in call.kwargs or _VALID in call.kwargs or x.dim() != 1:
            return x.shape[0]
        offsets = _argument(call, 1, "offsets")
        if offsets is None:
            return x.shape[0]  # torch refuses this in forward already
        return offsets.shape[0] - 1 if self.module.include_last_offset else offsets.shape[0]

    def _bags(self, call: Call) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Indices [B, L], their per-sample weights [B, L] or None, and which entries are in a bag."""
        x, offsets = call.args[0], _argument(call, 1, "offsets")
        weights = _argument(call, 2, "per_sample_weights")
        if x.is_nested:
            raise DpbenchError(f"module '{self.name}' (EmbeddingBag) got a nested-tensor input; pass a 2-D "
                               "tensor of bags or a 1-D tensor with offsets")
        if weights is not None:
            weights = weights.detach()
        if x.dim() == 2:
            return x, weights, torch.ones_like(x, dtype=torch.bool)
        n = x.shape[0]
        if self.module.include_last_offset:
            if offsets.shape[0] and int(offsets[-1]) != n:  # torch assumes it; its CPU kernel ends at n anyway
                raise DpbenchError(f"module '{self.name}' (EmbeddingBag, include_last_offset=True) got a last offset "
                                   f"of {int(offsets[-1])} for {n} indices; it must equal the number of indices")
            offsets = offsets[:-1]
        starts, ends = offsets, torch.cat([offsets[1:], offsets.new_full((1,), n)])
        lengths = (ends.clamp(max=n) - starts).clamp(min=0)
        width = int(lengths.max()) if lengths.numel() else 0
        pos = torch.arange(width, device=x.device)
        inside = pos.unsqueeze(0) < lengths.unsqueeze(1)
        where = (starts.unsqueeze(1) + pos.unsqueeze(0)).clamp(0, max(n - 1, 0))
        if n == 0:
            return x.new_zeros(lengths.shape[0], 0), None, inside
        idx = torch.where(inside, x[where], 0)
        return idx, None if weights is None else weights[where] * inside.to(weights.dtype), inside

    def _canonical(self, calls: list[Call]) -> None:
        """Rewrite each call (once) into the batch-first form described in the module docstring."""
        for c in calls:
            if _WEIGHTS in c.kwargs or _VALID in c.kwargs:
                continue
            g = next(g for g in c.grads if g is not None)
            idx, weights, inside = self._bags(c)
            pad = self.module.padding_idx
            member = inside if pad is None else inside & (idx != pad)
            if self.module.mode == "max":
                rows, valid = self._argmax(c)
                c.args, c.kwargs = (rows,), {_VALID: valid.to(g.dtype), _LENGTH: idx.shape[1]}
            else:
                w = member.to(g.dtype)
                if weights is not None:
                    w = w * weights.to(g.dtype)
                if self.module.mode == "mean":
                    w = w / member.sum(1, keepdim=True).clamp(min=1).to(g.dtype)
                c.args, c.kwargs = (idx,), {_WEIGHTS: w}
            c.unbatched = frozenset()

    def _argmax(self, call: Call) -> tuple[torch.Tensor, torch.Tensor]:
        """The row chosen for every output coordinate [B, D] and whether the bag is non-empty [B]:
        torch's own forward, rerun on the same weight."""
        x, offsets = call.args[0], _argument(call, 1, "offsets")
        last = self.module.include_last_offset
        if x.dim() == 2:
            offsets = torch.arange(0, x.numel(), x.shape[1], dtype=x.dtype, device=x.device)
            x, last = x.reshape(-1), False
        with torch.no_grad():
            _, _, size, rows = torch.embedding_bag(self.module.weight.detach(), x, offsets, False, _MODES["max"],
                                                   False, None, last, self.module.padding_idx)
        return rows.long(), size > 0

    # ---- geometry --------------------------------------------------------------------------------
    def shape(self, calls):
        self._canonical(calls)
        T = sum(c.kwargs[_LENGTH] if _LENGTH in c.kwargs else c.args[0].shape[1] for c in calls)
        return LayerShape(T, self.module.num_embeddings, self.module.embedding_dim)

    def working_space(self, calls, choice):
        self._canonical(calls)
        V, D = self.module.num_embeddings, self.module.embedding_dim
        if choice != "ghost":
            return V * D
        n = len(calls)
        if self.module.mode == "max":
            return 3 * D * n
        T = sum(c.args[0].shape[1] for c in calls)
        return 3 * T * (n + 1) + n * n + D * n  # keys, weights per call, the Gram of the calls' c and g

    # ---- rules -----------------------------------------------------------------------------------
    def instantiate(self, calls):
        self._canonical(calls)
        B, V, D = calls[0].args[0].shape[0], self.module.num_embeddings, self.module.embedding_dim
        g0 = calls[0].grads[0]
        samples = torch.arange(B, device=g0.device)
        if self.module.mode == "max":
            out = g0.new_zeros(B * V * D)
            cols = torch.arange(D, device=g0.device)
            for c in calls:
                flat = (samples.unsqueeze(1) * V + c.args[0]) * D + cols
                out.index_add_(0, flat.reshape(-1), (c.grads[0] * c.kwargs[_VALID].unsqueeze(1)).reshape(-1))
            return {"weight": out.view(B, V, D)}
        out = g0.new_zeros(B * V, D)
        for c in calls:
            idx, w, g = c.args[0], c.kwargs[_WEIGHTS], c.grads[0]
            rows = (idx + V * samples.unsqueeze(1)).reshape(-1)
            out.index_add_(0, rows, (w.unsqueeze(2) * g.unsqueeze(1)).reshape(-1, D))
        return {"weight": out.view(B, V, D)}

    def ghost_norm_sq(self, calls):
        self._canonical(calls)
        if self.module.mode == "max":
            gs = [c.grads[0] * c.kwargs[_VALID].unsqueeze(1) for c in calls]
            total = sum(g.pow(2).sum(1) for g in gs)
            for s in range(len(calls)):
                for t in range(s + 1, len(calls)):
                    same = (calls[s].args[0] == calls[t].args[0]).to(gs[s].dtype)
                    total = total + 2 * (gs[s] * gs[t] * same).sum(1)
            return total
        B, V = calls[0].args[0].shape[0], self.module.num_embeddings
        g0 = calls[0].grads[0]
        samples = torch.arange(B, device=g0.device).unsqueeze(1)
        keys = torch.cat([(c.args[0] + V * samples).reshape(-1) for c in calls])
        which = torch.cat([torch.full((c.args[0].numel(),), k, device=g0.device) for k, c in enumerate(calls)])
        weights = torch.cat([c.kwargs[_WEIGHTS].reshape(-1) for c in calls])
        unique, inverse = torch.unique(keys, return_inverse=True)
        # total weight of each distinct (sample, row) pair in each call
        m = weights.new_zeros(unique.shape[0], len(calls)).index_put_((inverse, which), weights, accumulate=True)
        owner = unique // V
        if len(calls) == 1:
            cc = weights.new_zeros(B).index_add_(0, owner, m[:, 0].pow(2))
            return cc * g0.pow(2).sum(1)
        cc = weights.new_zeros(B, len(calls), len(calls)).index_add_(0, owner, m.unsqueeze(2) * m.unsqueeze(1))
        g = torch.stack([c.grads[0] for c in calls], 1)
        return (cc * torch.bmm(g, g.transpose(1, 2))).sum((1, 2))

    def clipped_sum(self, calls, coef):
        self._canonical(calls)
        V, D = self.module.num_embeddings, self.module.embedding_dim
        g0 = calls[0].grads[0]
        coef = coef.to(g0.dtype)
        if self.module.mode == "max":
            out = g0.new_zeros(V * D)
            cols = torch.arange(D, device=g0.device)
            for c in calls:
                scaled = c.grads[0] * (c.kwargs[_VALID] * coef).unsqueeze(1)
                out.index_add_(0, (c.args[0] * D + cols).reshape(-1), scaled.reshape(-1))
            return {"weight": out.view(V, D)}
        out = g0.new_zeros(V, D)
        for c in calls:
            idx, w, g = c.args[0], c.kwargs[_WEIGHTS] * coef.unsqueeze(1), c.grads[0]
            out.index_add_(0, idx.reshape(-1), (w.unsqueeze(2) * g.unsqueeze(1)).reshape(-1, D))
        return {"weight": out}
