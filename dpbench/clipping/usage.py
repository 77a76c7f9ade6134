"""How the forward consumes trainable parameters, operation by operation (a torch function mode).

The first step's forwards are surveyed: every use of every trainable parameter is recorded with the
modules whose forward was running, as one of
- a *site*: an operation with batched outputs that consumes the parameter or a tensor computed from
  parameters alone (`x + pos_embed`, `cls_token.expand(B, …)`, `F.linear(x, qkv.weight, qkv_bias)`);
- *derived*: an operation on parameters and constants alone (`cat((q_bias, k_bias, v_bias))`, a bias
  table indexed by a buffer); its outputs are watched in turn;
- *unsupported*: batched inputs but an output without the batch, which no per-sample rule can follow.
A tensor carries the batch when it is computed from the forward's inputs (tracked, not read from its
size); whether an output has the batch in dim 0 is decided at the first backward, when the losses give
the batch size, and the layout probe (layout.py) then checks which sample each slice belongs to.
The engine then decides, per group of parameters, between its module rule, an operation rule
(layers/ops.py) and the generic replay of a module. Later forwards watch only the parameters that the
operation rules cover, and hand each site to the engine."""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_unflatten

from dpbench.clipping.layers.ops import Operand, prepare_call
from dpbench.errors import DpbenchError

_INPLACE_DUNDER = {"__iadd__", "__isub__", "__imul__", "__itruediv__", "__idiv__", "__ipow__"}
_EXPANDERS = (Tensor.expand, Tensor.expand_as, Tensor.broadcast_to, torch.broadcast_to)


def _name(func) -> str:
    return getattr(func, "__name__", type(func).__name__)


def _inplace(func) -> bool:
    name = _name(func)
    return name in _INPLACE_DUNDER or (name.endswith("_") and not name.endswith("__"))


@dataclass
class Use:
    """One operation of the surveyed forward that consumed parameters."""

    params: tuple  # the parameters consumed, directly or through a computed tensor
    kind: str  # "site", "derived" or "unsupported"
    stack: tuple  # the modules whose forward was running, outermost first
    op: str
    out_dims: tuple = ()  # dim 0 of each differentiable output
    final: bool = True  # False: site or unsupported, decided by settle_kinds once the batch is known


class ParameterTracer(TorchFunctionMode):
    """Watches the operations of a forward that consume `params` (see the module docstring).

    `on_site(func, args, kwargs, out, operands, inputs_need_grad)` receives every site; with `survey`
    the uses are also collected in `uses`, with the module stack (and `on_output` sees every module's
    output, so that the engine can record the calls of modules that may become generic hosts)."""

    def __init__(self, params, on_site, survey: bool = False, on_output=None):
        super().__init__()
        self.params = {id(p): p for p in params}
        self.on_site = on_site
        self.survey = survey
        self.on_output = on_output
        self.names: dict[int, str] = {}
        self.batch = None
        self.derived: dict[int, tuple] = {}  # id -> (tensor, the parameters it is computed from)
        # survey only: id -> weak reference of every tensor computed from the forward's inputs (the data),
        # so that a tensor of the data is told from a constant by where it comes from, not by its size
        self.from_data: dict[int, weakref.ref] = {}
        self.uses: list[Use] = []
        self.stack: list[nn.Module] = []
        self._handles: list = []
        self._active = False

    def start(self, model: nn.Module, batch: int, inputs: list[Tensor] = ()) -> None:
        """Begin watching a forward of `model` on a batch of `batch` samples (its tensor `inputs`)."""
        self.batch, self.derived = batch, {}
        if self.survey:
            self.from_data = {}
            self._mark_data(inputs)
            self.names = {id(p): n for n, p in model.named_parameters()}
            self.stack = [model]
            self._handles = [
                nn.modules.module.register_module_forward_pre_hook(lambda m, a: self.stack.append(m)),
                nn.modules.module.register_module_forward_hook(self._post, with_kwargs=True, always_call=True)]
        self.__enter__()
        self._active = True

    def stop(self) -> None:
        """Stop watching (idempotent)."""
        if self._active:
            self.__exit__(None, None, None)
            self._active = False
        for h in self._handles:
            h.remove()
        self._handles, self.derived, self.from_data = [], {}, {}

    def _mark_data(self, tensors) -> None:
        for t in tensors:
            if isinstance(t, Tensor):
                self.from_data[id(t)] = weakref.ref(t)

    def _is_data(self, x) -> bool:
        ref = self.from_data.get(id(x))
        return ref is not None and ref() is x

    def _carries_batch(self, x) -> bool:
        """Dim 0 is (a multiple of) the batch; which slices belong to which sample is established at
        backward (layout.py)."""
        return isinstance(x, Tensor) and x.dim() > 0 and x.shape[0] > 0 and x.shape[0] % self.batch == 0

    def _post(self, module, args, kwargs, output):
        if self.stack and self.stack[-1] is module:
            self.stack.pop()
        if self.on_output is not None:
            self.on_output(module, args, kwargs, output)

    def _origin(self, x) -> tuple | None:
        if not isinstance(x, Tensor):
            return None
        p = self.params.get(id(x))
        if p is x:
            return (x,)
        entry = self.derived.get(id(x))
        return entry[1] if entry is not None and entry[0] is x else None

    def _watched(self, args, kwargs) -> bool:
        for x in (*args, *kwargs.values()):
            if isinstance(x, (list, tuple)):
                if any(self._origin(y) for y in x):
                    return True
            elif self._origin(x):
                return True
        return False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self._watched(args, kwargs):
            out = func(*args, **kwargs)
            if self.survey and any(self._is_data(x) for x in tree_flatten((args, kwargs))[0]):
                self._mark_data(tree_flatten(out)[0])
            return out
        leaves, spec = tree_flatten((args, kwargs))
        origins = [(i, x, self._origin(x)) for i, x in enumerate(leaves)]
        operands = tuple(Operand(i, x, params) for i, x, params in origins if params)
        positions = {o.position for o in operands}
        # inputs that carry the batch: computed from the forward's inputs (survey), batch-first (a constant
        # expanded to the batch), or differentiable without being computed from parameters alone (never
        # taken for derived); the layout probe checks at backward what each output's dim 0 holds
        batched = [i for i, x in enumerate(leaves) if i not in positions and isinstance(x, Tensor)
                   and ((self.survey and self._is_data(x)) or (x.dim() > 0 and x.shape[0] == self.batch)
                        or x.requires_grad)]
        inplace = _inplace(func)
        inputs_need_grad = any(leaves[i].requires_grad for i in batched)  # before an in-place operation
        prepared = prepare_call(func, args, kwargs, operands, self.batch) if batched else None
        if prepared is not None:
            args, kwargs = prepared
        recorded = (args, kwargs)
        if inplace and batched:  # the rule needs the inputs as they were before the operation
            kept = [x.detach().clone() if i in batched else x for i, x in enumerate(leaves)]
            recorded = tree_unflatten(kept, spec)
        out = func(*args, **kwargs)
        if self.survey and batched:
            self._mark_data(tree_flatten(out)[0])
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, Tensor) and t.requires_grad]
        if not outs:
            return out
        params = tuple({id(p): p for o in operands for p in o.params}.values())
        all_batched = all(self._carries_batch(t) for t in outs)
        in_place_on_parameter = inplace and 0 in positions
        if batched or (func in _EXPANDERS and all_batched):
            # in the survey the batch is a guess (the first input's dim 0) until the losses give it, so
            # every candidate is recorded and `settle_kinds` decides from the outputs' sizes
            if (all_batched or self.survey) and not in_place_on_parameter:
                self.on_site(func, *recorded, out, operands, inputs_need_grad)
            if all_batched and not in_place_on_parameter:
                kind = "site"
            else:
                kind = "unsupported"
                if not self.survey:
                    raise DpbenchError(f"operation {_name(func)} consumes a trainable parameter in a way "
                                       "dpbench has no per-sample rule for (batched input, output without the "
                                       "batch dimension); it was not used so in the first forward")
        else:
            kind = "derived"
            for t in outs:
                self.derived[id(t)] = (t, params)
        if self.survey:
            self.uses.append(Use(params, kind, tuple(self.stack), _name(func), tuple(t.shape[0] if t.dim() else 0
                                                                                  for t in outs),
                                 final=in_place_on_parameter or kind == "derived"))
        return out

    def settle_kinds(self, batch: int) -> None:
        """Decide site or unsupported for every surveyed use, now that the losses give the batch."""
        for use in self.uses:
            if not use.final:
                use.kind = "site" if all(d > 0 and d % batch == 0 for d in use.out_dims) else "unsupported"
