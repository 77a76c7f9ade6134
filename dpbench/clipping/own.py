"""dpbench's own algorithms: hooks record each covered module's inputs in forward; one backward
(`torch.autograd.grad` to the layers' outputs, so autograd forms no parameter gradient) delivers each
layer's output gradient, from which the layer's per-sample norm is taken at once (ghost or
instantiated); then either a second backward of Σ Cᵢ Lᵢ or the book-kept clipped sums."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torch.autograd.graph import get_gradient_edge
from torch.utils._pytree import tree_flatten

from dpbench.clipping.algorithms import Algorithm
from dpbench.clipping.decision import INSTANTIATE
from dpbench.clipping.layers import Call, GenericRule, LayerRule, rule_for
from dpbench.clipping.layers.base import batch_slice, chunked_weighted_sum, squared_norms
from dpbench.clipping.usage import ParameterUseCheck
from dpbench.errors import DpbenchError


# temporaries of one layer's norm computation (4 MiB in float32): in the first backward of a two-pass
# algorithm every activation is still alive, so anything above this adds to the step's peak memory
CHUNK_ELEMENTS = 2 ** 20


def _tensors(tree) -> list[torch.Tensor]:
    return [x for x in tree_flatten(tree)[0] if isinstance(x, torch.Tensor)]


def _release(calls: list[Call]) -> None:
    """Drop a layer's inputs and output gradients once used: the output tensors' hooks still point at
    these calls while the graph lives (until the second backward), which would keep them alive."""
    for c in calls:
        c.args, c.kwargs, c.grads = (), {}, []


class OwnBackend:
    """Hooks a model for one of dpbench's own algorithms (see ALGORITHMS)."""

    def __init__(self, model: nn.Module, algorithm: Algorithm, max_grad_norm: float):
        self.model = model
        self.algorithm = algorithm
        self.max_grad_norm = max_grad_norm
        self.rules: dict[nn.Module, LayerRule] = {}
        self._order = {m: i for i, m in enumerate(model.modules())}
        for name, module in model.named_modules():
            rule = rule_for(module, name or type(model).__name__)
            if rule is not None:
                self.rules[module] = rule
        self.layer_report: list[dict] = []
        self._root_handles = [model.register_forward_pre_hook(self._root_pre_hook, with_kwargs=True),
                              model.register_forward_hook(self._root_post_hook, always_call=True)]
        self._handles = {m: m.register_forward_hook(self._record, with_kwargs=True) for m in self.rules}
        self._calls: dict[nn.Module, list[Call]] = {}
        self._candidates: dict[nn.Module, list[Call]] = {}
        self._frontier: list = []
        self._depth = 0
        self._collecting = False
        self._replaying = False
        self._use_check: ParameterUseCheck | None = ParameterUseCheck(model, self.rules, self._record_candidate)
        self._trains = {m for m in model.modules() if any(p.requires_grad for p in m.parameters())}
        # optional: (rule, calls) -> extra layer_report fields, called before a ghost-capable layer's
        # inputs are released (dpbench.measure.branches times both norm branches with it)
        self.branch_timer = None

    @property
    def generic_params(self) -> list[torch.Tensor]:
        return [p for r in self.rules.values() if isinstance(r, GenericRule) for p in r.params.values()]

    # ---- forward -------------------------------------------------------------------------------
    def _root_pre_hook(self, model, args, kwargs):
        if self._replaying or not torch.is_grad_enabled():
            return
        if self._depth == 0:
            self._calls, self._frontier = {}, []
            self._frontier += [x for x in _tensors((args, kwargs)) if x.requires_grad]
            if self._use_check is not None:
                self._use_check.start()
        self._depth += 1

    def _root_post_hook(self, model, args, output):
        if self._replaying or self._depth == 0:
            return
        self._depth -= 1
        if self._depth == 0 and self._use_check is not None:
            check, self._use_check = self._use_check, None
            for param, owner, name, host in check.finish():
                self._hand_over(param, owner, name, host)
            self._candidates = {}

    def _record_candidate(self, module, args, kwargs, output):
        """During the first forward: record modules that may become generic hosts (see usage.py)."""
        if module not in self.rules and module in self._trains:
            self._record(module, args, kwargs, output, self._candidates)

    def _hand_over(self, param, owner: nn.Module, name: str, host: nn.Module) -> None:
        """Move a parameter from its module's rule to the generic rule of the module that uses it."""
        rule = self.rules[owner]
        del rule.params[name]
        if not rule.params:
            del self.rules[owner]
            self._handles.pop(owner).remove()
            self._calls.pop(owner, None)
        host_rule = self.rules.get(host)
        if not isinstance(host_rule, GenericRule):
            host_name = next(n for n, m in self.model.named_modules() if m is host) or type(host).__name__
            new = GenericRule(host, host_name)
            for own_name, own_param in (host_rule.params.items() if host_rule else ()):
                new.adopt(own_name, own_param)
            self.rules[host] = host_rule = new
            if host not in self._handles:
                self._handles[host] = host.register_forward_hook(self._record, with_kwargs=True)
            if host in self._candidates:
                self._calls[host] = self._candidates.pop(host)
        owner_path = next(n for n, m in host.named_modules() if m is owner)
        host_rule.adopt(f"{owner_path}.{name}", param)

    def _record(self, module, args, kwargs, output, store=None):
        if self._replaying or not torch.is_grad_enabled():
            return
        leaves, spec = tree_flatten(output)
        index = tuple(i for i, t in enumerate(leaves) if isinstance(t, torch.Tensor) and t.requires_grad)
        if not index:
            return
        inputs = _tensors((args, kwargs))
        device_type = leaves[index[0]].device.type
        autocast = ((device_type, torch.get_autocast_dtype(device_type))
                    if torch.is_autocast_enabled(device_type) else None)
        call = Call(args, kwargs, tuple(x._version for x in inputs), spec, index,
                    tuple((leaves[i].shape, leaves[i].dtype, leaves[i].device) for i in index),
                    [None] * len(index), len(index), autocast)
        (self._calls if store is None else store).setdefault(module, []).append(call)
        for k, i in enumerate(index):
            leaves[i].register_hook(partial(self._on_grad, module, call, k))
        if not any(x.requires_grad for x in inputs):
            self._frontier += [get_gradient_edge(leaves[i]) for i in index]

    # ---- backward ------------------------------------------------------------------------------
    def _on_grad(self, module, call, k, grad):
        calls = self._calls.get(module)
        if not self._collecting or calls is None:
            return
        call.grads[k] = grad
        call.pending -= 1
        if all(c.pending == 0 for c in calls):
            self._process(module)

    def _process(self, module: nn.Module) -> None:
        calls = [c for c in self._calls.pop(module, []) if any(g is not None for g in c.grads)]
        if not calls:
            return
        rule = self.rules[module]
        for c in calls:
            self._validate(rule, c)
        choice = rule.choose(calls, self.algorithm.norms)
        shape = rule.shape(calls)
        book_keeping = self.algorithm.sums == "bookkeeping"
        self._replaying = True  # the generic rule replays forwards: keep the hooks quiet
        try:
            parts, sqs = [], []
            for chunk in self._chunks(rule, calls, choice):
                if choice == INSTANTIATE:
                    grads = rule.instantiate(chunk)
                    sqs.append(squared_norms(grads))
                    if book_keeping:
                        parts.append(grads)
                else:
                    sqs.append(rule.ghost_norm_sq(chunk))
            timing = self.branch_timer(rule, calls) if self.branch_timer is not None and rule.has_ghost else {}
        finally:
            self._replaying = False
        sq = torch.cat(sqs) if len(sqs) > 1 else sqs[0]
        if choice == INSTANTIATE:
            kept = parts  # the chunks' per-sample gradients, in batch order: never concatenated
            _release(calls)
        else:
            kept = calls
            if not book_keeping:
                _release(calls)
        self._norm_sq += sq.to(self._norm_sq.dtype)
        if book_keeping:
            self._kept.append((rule, choice, kept))
        self.layer_report.append({
            "name": rule.name, "type": type(module).__name__, "rule": type(rule).__name__,
            "T": shape.T if shape else None, "d": shape.d if shape else None,
            "p": shape.p if shape else None, "groups": shape.groups if shape else None,
            "calls": len(calls), "choice": choice, **timing, "_module": module})

    def _chunks(self, rule: LayerRule, calls: list[Call], choice: str):
        """The calls in batch chunks whose temporaries (unfolded inputs, Gram matrices, per-sample
        gradients and the convolution library's copies) stay within CHUNK_ELEMENTS at a time.
        Book-keeping keeps each chunk's instantiated gradients, but not the library's copies (the
        grouped conv weight backward of a whole batch measured +19 MiB of peak on the paper's CNN at
        batch 64)."""
        B = self._norm_sq.shape[0]
        size = max(1, CHUNK_ELEMENTS // max(1, rule.working_space(calls, choice)))
        if size >= B:
            return [calls]
        return [batch_slice(calls, slice(i, min(i + size, B)), B) for i in range(0, B, size)]

    def _validate(self, rule: LayerRule, call: Call) -> None:
        inputs = _tensors((call.args, call.kwargs))
        if any(x._version != v for x, v in zip(inputs, call.versions)):
            raise DpbenchError(f"an input of module '{rule.name}' was modified in place after the module "
                               "used it; per-sample gradients need it unchanged (use inplace=False there)")
        B = self._norm_sq.shape[0]
        if isinstance(rule, GenericRule):
            return
        a, g = call.args[0], next(g for g in call.grads if g is not None)
        if a.is_floating_point() and a.dtype != g.dtype:  # autocast ran the layer in g's precision
            call.args = (a.to(g.dtype), *call.args[1:])
        if a.shape[0] != B:
            raise DpbenchError(f"module '{rule.name}' got an input with leading dimension "
                               f"{call.args[0].shape[0]}, but the batch has {B} losses: dpbench needs "
                               "batch-first inputs in every layer")

    def backward(self, losses: torch.Tensor) -> torch.Tensor:
        """Per-sample norms, then ADD the clipped sum to every trainable p.grad; returns the norms."""
        if not self._calls:
            raise DpbenchError("no forward pass was recorded before backward: run the model with "
                               "gradients enabled on the batch whose per-sample losses you pass")
        two_pass = self.algorithm.sums == "second_backward"
        dtype = torch.promote_types(losses.dtype, torch.float32)
        self._norm_sq = torch.zeros(losses.shape[0], dtype=dtype, device=losses.device)
        self._kept: list = []
        self.layer_report = []
        inputs = self._frontier + [p for p in self.generic_params if p.requires_grad]
        self._collecting = True
        try:
            torch.autograd.grad(losses, inputs, grad_outputs=torch.ones_like(losses),
                                retain_graph=two_pass, allow_unused=True)
            for module in list(self._calls):
                self._process(module)
        finally:
            self._collecting = False
            self._calls, self._frontier = {}, []
        self.layer_report.sort(key=lambda r: self._order[r.pop("_module")])
        norms = self._norm_sq.sqrt()
        coef = (self.max_grad_norm / norms).clamp(max=1.0)
        if two_pass:
            torch.autograd.backward(losses, grad_tensors=coef.to(losses.dtype))
        else:
            self._add_book_kept_sums(coef)
        self._norm_sq, self._kept = None, []
        return norms

    def _add_book_kept_sums(self, coef: torch.Tensor) -> None:
        while self._kept:
            rule, choice, kept = self._kept.pop()
            sums = chunked_weighted_sum(kept, coef) if choice == INSTANTIATE else rule.clipped_sum(kept, coef)
            if choice != INSTANTIATE:
                _release(kept)
            for name, value in sums.items():
                p = rule.params[name]
                value = value.to(p.dtype)
                if p.grad is None:
                    p.grad = value
                else:
                    p.grad.add_(value)

    def detach(self) -> None:
        for h in [*self._root_handles, *self._handles.values()]:
            h.remove()
        self._root_handles, self._handles = [], {}
        if self._use_check is not None:
            self._use_check.abort()

