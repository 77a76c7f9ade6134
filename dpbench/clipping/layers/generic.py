"""The exact fallback for trainable parameters that no specific rule covers: a bare nn.Parameter
used in a module's forward (timm's cls_token, pos_embed, layer-scale gamma) or a module type without a
rule. Per-sample gradients of the module's own parameters are vector-Jacobian products of the module's
forward, replayed per sample with torch.func (vmap over the batch of vjp), from the inputs recorded
in forward and the output gradients seen in backward."""

from __future__ import annotations

import warnings
from contextlib import contextmanager, nullcontext

import torch
from torch import nn
from torch.func import functional_call, vjp, vmap
from torch.utils._pytree import tree_flatten, tree_unflatten

from dpbench.clipping.layers.base import Call, LayerRule
from dpbench.errors import DpbenchError


@contextmanager
def _zero_rate_dropouts_off(module: nn.Module):
    """Dropout / DropPath with rate 0 are the identity, but still draw random numbers in training
    mode, which vmap cannot replay: switch them to eval mode while replaying."""
    idle = [m for m in module.modules() if m.training and (
        (isinstance(m, nn.modules.dropout._DropoutNd) and m.p == 0)
        or (type(m).__name__ == "DropPath" and getattr(m, "drop_prob", None) == 0))]
    for m in idle:
        m.training = False
    try:
        yield
    finally:
        for m in idle:
            m.training = True


class GenericRule(LayerRule):
    """Instantiates per-sample gradients of a module's own parameters by replaying its forward.

    It can also adopt parameters of submodules that the module's forward uses directly (for
    example `F.linear(x, self.qkv.weight)`); they are named by their path inside the module."""

    folds = True  # a sample's W slices are replayed as one call of the module on W rows

    def adopt(self, name: str, param: torch.nn.Parameter) -> None:
        """Take over a parameter of a submodule, used directly in this module's forward."""
        self.params[name] = param

    def instantiate(self, calls):
        out = {}
        for c in calls:
            for n, v in self._one_call(c).items():
                out[n] = out[n] + v if n in out else v
        return out

    def clipped_sum(self, calls, coef):
        return {n: torch.tensordot(coef.to(g.dtype), g, dims=1) for n, g in self.instantiate(calls).items()}

    def _one_call(self, call: Call) -> dict[str, torch.Tensor]:
        grads = [g if g is not None else torch.zeros(shape, dtype=dtype, device=device)
                 for g, (shape, dtype, device) in zip(call.grads, call.out_meta)]
        B = grads[0].shape[0]
        leaves, spec = tree_flatten((call.args, call.kwargs))
        batched = [i for i, x in enumerate(leaves) if isinstance(x, torch.Tensor) and x.dim() > 0
                   and x.shape[0] == B]
        if not batched:
            raise DpbenchError(f"module '{self.name}' ({type(self.module).__name__}) got no input with the "
                               f"batch ({B} samples) as leading dimension: dpbench needs batch-first inputs")
        params = {n: p.detach() for n, p in self.params.items()}
        module, out_spec_index = self.module, call.out_index

        def forward(p, xs):
            full = list(leaves)
            for i, x in zip(batched, xs):
                full[i] = x if call.folded > 1 else x.unsqueeze(0)
            args, kwargs = tree_unflatten(full, spec)
            outs, _ = tree_flatten(functional_call(module, p, tuple(args), kwargs))
            return tuple(outs[j] for j in out_spec_index)

        def per_sample(xs, gs):
            _, pullback = vjp(lambda p: forward(p, xs), params)
            return pullback(tuple(g if call.folded > 1 else g.unsqueeze(0) for g in gs))[0]

        try:
            replay_autocast = (torch.autocast(call.autocast[0], dtype=call.autocast[1]) if call.autocast
                               else nullcontext())
            with torch.no_grad(), _zero_rate_dropouts_off(module), replay_autocast, warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet")
                return vmap(per_sample, randomness="error")(tuple(leaves[i] for i in batched), tuple(grads))
        except RuntimeError as err:
            if "randomness" in str(err):
                raise DpbenchError(
                    f"module '{self.name}' ({type(module).__name__}) has trainable parameters without a "
                    "specific rule, so dpbench replays its forward per sample, but that forward is random "
                    "(dropout or similar in training mode) and cannot be replayed exactly; set its dropout "
                    "rates to 0") from err
            raise
