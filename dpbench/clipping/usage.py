"""A one-time check, during the first recorded forward, of where every trainable parameter is used.
A parameter used outside the forward of the module that owns it would escape that layer's rule."""

from __future__ import annotations

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten



class ParameterUseCheck(TorchFunctionMode):
    """Watches the first forward for parameters used outside their module's own forward.

    Such a parameter (timm's BEiT computes `F.linear(x, self.qkv.weight, qkv_bias)` in its attention
    module; a tied output layer uses `self.embed.weight` in the model's forward) is handed over to the
    generic rule of the innermost module whose forward contains every use: `finish()` returns these
    hand-overs. Every module's calls are offered to `on_output` meanwhile, so that a module which
    becomes a host has its first forward recorded too."""

    def __init__(self, model: nn.Module, rules: dict, on_output):
        super().__init__()
        from dpbench.clipping.layers import GenericRule

        self.owner = {}  # id(param) -> (param, owning module, its name there, owner's forward covers subtree)
        for module, rule in rules.items():
            for pname, p in rule.params.items():
                self.owner[id(p)] = (p, module, pname, isinstance(rule, GenericRule))
        self.model = model
        self.on_output = on_output
        self.stack: list[nn.Module] = []
        self.handovers: dict[int, tuple] = {}  # id(param) -> (param, owner, name in owner, host)
        self._handles = []

    def start(self) -> None:
        """Begin watching (called when the root forward starts)."""
        self.stack = [self.model]
        self._handles = [
            nn.modules.module.register_module_forward_pre_hook(lambda m, a: self.stack.append(m)),
            nn.modules.module.register_module_forward_hook(self._post, with_kwargs=True, always_call=True),
        ]
        self.__enter__()

    def _post(self, module, args, kwargs, output):
        if self.stack and self.stack[-1] is module:
            self.stack.pop()
        self.on_output(module, args, kwargs, output)

    def finish(self) -> list[tuple]:
        """Stop watching; the hand-overs (param, owner module, name in owner, host module)."""
        self.abort()
        return list(self.handovers.values())

    def abort(self) -> None:
        """Stop watching."""
        if self._handles:
            self.__exit__(None, None, None)
            for h in self._handles:
                h.remove()
            self._handles = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for x in tree_flatten((args, kwargs))[0]:
            if isinstance(x, torch.Tensor) and id(x) in self.owner:
                self._judge(x)
        return func(*args, **kwargs)

    def _judge(self, p: torch.Tensor) -> None:
        p, module, pname, subtree_ok = self.owner[id(p)]
        if self.stack[-1] is module or (subtree_ok and module in self.stack):
            return
        host = next(m for m in reversed(self.stack) if any(s is module for s in m.modules()))
        previous = self.handovers.get(id(p))
        if previous is not None and previous[3] is not host:
            if any(s is host for s in previous[3].modules()):
                return  # the earlier host already contains this use
            if not any(s is previous[3] for s in host.modules()):
                host = self.model  # uses in two branches: only the whole model contains both
        self.handovers[id(p)] = (p, module, pname, host)
