"""A one-time check, during the first recorded forward, that every trainable parameter is used only
inside the forward of the module that owns it. A parameter used elsewhere (a tied weight such as
`x @ self.embed.weight.T` in a parent's forward) would escape its layer's per-sample rule."""

from __future__ import annotations

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from dpbench.errors import DpbenchError


class ParameterUseCheck(TorchFunctionMode):
    """Watches every torch function of one forward for parameters used outside their module."""

    def __init__(self, model: nn.Module, rules: dict):
        super().__init__()
        from dpbench.clipping.layers import GenericRule

        self.owner = {}  # id(param) -> (module, parameter name, owner may be an ancestor of the op)
        for module, rule in rules.items():
            for pname, p in rule.params.items():
                self.owner[id(p)] = (module, f"{rule.name}.{pname}", isinstance(rule, GenericRule))
        self.model = model
        self.names = {m: n or type(model).__name__ for n, m in model.named_modules()}
        self.stack: list[nn.Module] = []
        self.violation: str | None = None
        self._handles = []

    def start(self) -> None:
        """Begin watching (called when the root forward starts)."""
        self.stack = [self.model]
        self._handles = [
            nn.modules.module.register_module_forward_pre_hook(lambda m, a: self.stack.append(m)),
            nn.modules.module.register_module_forward_hook(lambda m, a, o: self._pop(m), always_call=True),
        ]
        self.__enter__()

    def _pop(self, module):
        if self.stack and self.stack[-1] is module:
            self.stack.pop()

    def finish(self) -> None:
        """Stop watching (root forward ended) and raise if a parameter escaped its module."""
        self.abort()
        if self.violation:
            raise DpbenchError(self.violation)

    def abort(self) -> None:
        """Stop watching without judging."""
        if self._handles:
            self.__exit__(None, None, None)
            for h in self._handles:
                h.remove()
            self._handles = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.violation is None:
            for x in tree_flatten((args, kwargs))[0]:
                if isinstance(x, torch.Tensor) and id(x) in self.owner:
                    self._judge(x)
        return func(*args, **kwargs)

    def _judge(self, p: torch.Tensor) -> None:
        module, pname, subtree_ok = self.owner[id(p)]
        current = self.stack[-1] if self.stack else None
        if current is module or (subtree_ok and module in self.stack):
            return
        where = self.names.get(current, "outside any module") if current is not None else "outside any module"
        self.violation = (f"parameter '{pname}' is used outside the forward of its module (in '{where}'): "
                          "tied or shared weights across modules are not supported by per-sample clipping; "
                          "untie them or make the parameter a direct parameter of the module that uses it")
