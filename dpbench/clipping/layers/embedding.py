"""nn.Embedding (with padding_idx): T = indices per sample, d = num_embeddings, p = embedding_dim.
The per-sample gradient is Σ_t e_{idx_t} g_tᵀ, so its squared norm is Σ_{s,t} [idx_s = idx_t]⟨g_s, g_t⟩."""

from __future__ import annotations

import torch

from dpbench.clipping.layers.base import Call, LayerRule, LayerShape
from dpbench.errors import DpbenchError


def refuse_batch_dependent_lookup(module, name: str) -> None:
    """Refuse an Embedding or EmbeddingBag whose gradient depends on the batch or is sparse."""
    kind = type(module).__name__
    if module.scale_grad_by_freq:
        raise DpbenchError(f"module '{name}' ({kind}) uses scale_grad_by_freq=True: its gradient "
                           "depends on the whole batch, so per-sample clipping is undefined; disable it")
    if module.sparse:
        raise DpbenchError(f"module '{name}' ({kind}) has sparse=True: dpbench needs dense "
                           "gradients; construct it with sparse=False")


class EmbeddingRule(LayerRule):
    """Embedding lookups; rows at padding_idx get no gradient."""

    has_ghost = True
    folds = True

    def __init__(self, module, name):
        super().__init__(module, name)
        refuse_batch_dependent_lookup(module, name)

    def _stacked(self, calls: list[Call]) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices [B, T] and output gradients [B, T, D], padding positions zeroed."""
        D = self.module.embedding_dim
        idx = torch.cat([c.args[0].reshape(c.args[0].shape[0], -1) for c in calls], 1)
        g = torch.cat([c.grads[0].reshape(c.grads[0].shape[0], -1, D) for c in calls], 1)
        if self.module.padding_idx is not None:
            g = g * (idx != self.module.padding_idx).unsqueeze(-1).to(g.dtype)
        return idx, g

    def shape(self, calls):
        T = sum(c.args[0][0].numel() for c in calls)
        return LayerShape(T, self.module.num_embeddings, self.module.embedding_dim)

    def instantiate(self, calls):
        idx, g = self._stacked(calls)
        B, V, D = idx.shape[0], self.module.num_embeddings, self.module.embedding_dim
        rows = (idx + V * torch.arange(B, device=idx.device).unsqueeze(1)).reshape(-1)
        w = g.new_zeros(B * V, D).index_add_(0, rows, g.reshape(-1, D))
        return {"weight": w.view(B, V, D)}

    def ghost_norm_sq(self, calls):
        idx, g = self._stacked(calls)
        same = idx.unsqueeze(2) == idx.unsqueeze(1)
        gg = torch.bmm(g, g.transpose(1, 2))
        return (gg * same.to(gg.dtype)).sum((1, 2))

    def clipped_sum(self, calls, coef):
        idx, g = self._stacked(calls)
        D = self.module.embedding_dim
        g = g * coef.to(g.dtype).view(-1, 1, 1)
        w = g.new_zeros(self.module.num_embeddings, D).index_add_(0, idx.reshape(-1), g.reshape(-1, D))
        return {"weight": w}
