"""Rules keyed by the operation that consumes a parameter, for parameters that no module rule covers:
bare parameters (timm's cls_token, pos_embed, layer-scale gamma, relative-position tables), weights used
through a functional call outside their module (BEiT's `F.linear(x, qkv.weight, qkv_bias)`) and modules
whose forward differs from a known layer's (timm's LayerNorm subclasses call `F.layer_norm`).

The forward is watched operation by operation (clipping/usage.py). An operand of an operation is either
a parameter or a tensor computed from parameters alone (`qkv_bias = cat(q_bias, k_bias, v_bias)`, a
bias table indexed by a buffer): the first operation whose output is batched consumes it, and one
`Site` gives the per-sample gradient of each such operand from that operation's output gradient. A
computed operand's per-sample gradients are carried back to its parameters by one batched
vector-Jacobian product through the forward's own graph (`torch.autograd.grad(is_grads_batched=True)`).
Operations without a specific site are replayed alone per sample (vmap of vjp of that one operation),
never the module around them."""

from __future__ import annotations

import inspect
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import vjp, vmap
from torch.utils._pytree import tree_flatten, tree_unflatten

from dpbench.clipping.decision import GHOST, INSTANTIATE, mixed_choice
from dpbench.clipping.layers.base import Call, LayerRule, LayerShape, chunked_weighted_sum, gram_inner
from dpbench.clipping.layers.linear import stacked, weighted_weight_sum
from dpbench.clipping.layers.norms import layer_norm_grads


@dataclass(frozen=True, eq=False)
class Operand:
    """A tensor that an operation consumed: a trainable parameter, or a tensor computed from parameters
    (and constants) alone."""

    position: int  # index in the flattened (args, kwargs) of the call
    tensor: Tensor
    params: tuple  # the parameters it is computed from (the tensor itself when direct)

    @property
    def direct(self) -> bool:
        return len(self.params) == 1 and self.params[0] is self.tensor


@dataclass
class OpCall(Call):
    """One call of an operation that consumes parameter operands and has batched outputs."""

    func: object = None
    site: object = None  # the Site computing the operands' per-sample gradients
    operands: tuple = ()


def leaves_of(call: Call) -> list:
    return tree_flatten((call.args, call.kwargs))[0]


def unbroadcast(g: Tensor, shape: torch.Size) -> Tensor:
    """Per-sample gradients [B, *shape] of a batch-free tensor of `shape` broadcast against a batched
    output whose gradient is g [B, ...]: g summed over the broadcast dimensions except the batch."""
    inner = shape[1:] if len(shape) == g.dim() else shape  # a leading dim of size 1 faces the batch
    extra = g.dim() - 1 - len(inner)
    dims = [*range(1, 1 + extra)] + [1 + extra + j for j, n in enumerate(inner)
                                     if n == 1 and g.shape[1 + extra + j] != 1]
    return (g.sum(dims, keepdim=True) if dims else g).reshape(g.shape[0], *shape)


def _batch_free_against(operand: Operand, out: Tensor) -> bool:
    """The operand broadcasts against the batched output without a batch dimension of its own."""
    t = operand.tensor
    return t.dim() < out.dim() or (t.dim() == out.dim() and t.shape[0] == 1)


class Site:
    """How the per-sample gradients of an operation's parameter operands follow from its output gradient."""

    name = "replay"
    needs_inputs = True  # the rule reads the call's inputs after the forward (else they are not kept)
    grads_at_operands = False  # the gradients caught are the (batch-expanded) operands', not the outputs'

    def prepare(self, func, args: tuple, kwargs: dict, operands: tuple, batch: int):
        """Replacement (args, kwargs) for the call before it runs, or None to run it as written."""
        return None

    def fits(self, func, leaves: list, operands: tuple, out: list) -> bool:
        raise NotImplementedError

    def operand_grads(self, call: OpCall, skip=()) -> list:
        """Per-sample gradients [B, *operand.shape] of the call's operands (None for those in `skip`)."""
        raise NotImplementedError


class _Elementwise(Site):
    """Binary elementwise operations with one parameter operand at position 0 or 1 and no other inputs."""

    funcs: dict = {}

    def fits(self, func, leaves, operands, out):
        return (func in self.funcs and len(leaves) == 2 and len(operands) == 1 and operands[0].position < 2
                and isinstance(leaves[1 - operands[0].position], Tensor) and len(out) == 1
                and _batch_free_against(operands[0], out[0]))


class AddSite(_Elementwise):
    """x ± θ (broadcast): the output gradient summed over the broadcast dimensions, with its sign."""

    name = "add"
    needs_inputs = False
    # sign of the operand's gradient by its position (0, 1)
    funcs = {**{f: (1, 1) for f in (torch.add, Tensor.add, Tensor.__add__, Tensor.__radd__, Tensor.__iadd__,
                                    Tensor.add_)},
             **{f: (1, -1) for f in (torch.sub, torch.subtract, Tensor.sub, Tensor.__sub__, Tensor.__isub__,
                                     Tensor.sub_)},
             **{f: (-1, 1) for f in (Tensor.__rsub__, torch.rsub)}}

    def operand_grads(self, call, skip=()):
        (operand,) = call.operands
        g = unbroadcast(call.grads[0], operand.tensor.shape)
        return [g if self.funcs[call.func][operand.position] > 0 else -g]


class MulSite(_Elementwise):
    """θ ⊙ x (layer scale): Σ over the broadcast dimensions of g ⊙ x, per sample."""

    name = "mul"
    funcs = {f: None for f in (torch.mul, torch.multiply, Tensor.mul, Tensor.__mul__, Tensor.__rmul__,
                               Tensor.__imul__, Tensor.mul_)}

    def operand_grads(self, call, skip=()):
        (operand,) = call.operands
        other = leaves_of(call)[1 - operand.position]
        g = call.grads[0]
        return [unbroadcast(g * other.to(g.dtype), operand.tensor.shape)]


class ExpandSite(Site):
    """θ.expand(B, …) (a class token for every sample): the output gradient summed over the broadcast
    dimensions except the batch."""

    name = "expand"
    needs_inputs = False
    funcs = (Tensor.expand, Tensor.expand_as, Tensor.broadcast_to, torch.broadcast_to)

    def fits(self, func, leaves, operands, out):
        return (func in self.funcs and len(operands) == 1 and operands[0].position == 0 and len(out) == 1
                and _batch_free_against(operands[0], out[0]))

    def operand_grads(self, call, skip=()):
        return [unbroadcast(call.grads[0], call.operands[0].tensor.shape)]


class AttentionMaskSite(Site):
    """F.scaled_dot_product_attention with an additive mask computed from parameters (BEiT's
    relative-position bias): the mask is expanded over the batch before the call (a view, the same
    values), so autograd's own attention backward yields its per-sample gradient; nothing is replayed
    and no input is kept."""

    name = "attention_mask"
    needs_inputs = False
    grads_at_operands = True

    @staticmethod
    def _mask(args, kwargs):
        return args[3] if len(args) > 3 else kwargs.get("attn_mask")

    def prepare(self, func, args, kwargs, operands, batch):
        if func is not F.scaled_dot_product_attention or len(operands) != 1:
            return None
        mask, query = self._mask(args, kwargs), args[0] if args else kwargs.get("query")
        if (mask is None or operands[0].tensor is not mask or not mask.is_floating_point()
                or not isinstance(query, Tensor) or query.dim() < 3 or query.shape[0] != batch
                or mask.dim() > query.dim()):
            return None
        padded = (1,) * (query.dim() - mask.dim()) + tuple(mask.shape)
        if padded[0] != 1:
            return None
        expanded = mask.reshape(padded).expand(batch, *padded[1:])
        if len(args) > 3:
            return (*args[:3], expanded, *args[4:]), kwargs
        return args, {**kwargs, "attn_mask": expanded}

    def fits(self, func, leaves, operands, out):
        return (func is F.scaled_dot_product_attention and len(operands) == 1
                and leaves[operands[0].position] is not operands[0].tensor)  # expanded by prepare

    def operand_grads(self, call, skip=()):
        (operand,) = call.operands
        g = call.grads[0]
        return [g.reshape(g.shape[0], *operand.tensor.shape)]


def _bind(func, call: Call) -> dict:
    return inspect.signature(func).bind(*call.args, **call.kwargs).arguments


class LinearSite(Site):
    """F.linear(x, W, b) outside a Linear module: the Linear rule's GᵀA and Σ_t G."""

    name = "linear"

    def fits(self, func, leaves, operands, out):
        if func is not F.linear or len(out) != 1:
            return False
        x = leaves[0]
        return all(o.position > 0 for o in operands) and isinstance(x, Tensor) and x.dim() >= 2

    @staticmethod
    def parts(call: Call) -> tuple:
        """Input, weight and bias of the call."""
        args = list(call.args) + [None] * (3 - len(call.args))
        x, w, b = args[:3]
        return x, call.kwargs.get("weight", w), call.kwargs.get("bias", b)

    def operand_grads(self, call, skip=()):
        x, w, b = self.parts(call)
        g = call.grads[0]
        p = w.shape[0]
        out = []
        for o in call.operands:
            if any(o is s for s in skip):
                out.append(None)
            elif o.tensor is w:
                a, gg = stacked([(x.to(g.dtype), g)], w.shape[1], p)
                out.append(torch.bmm(gg.transpose(1, 2), a))
            else:
                out.append(g.reshape(g.shape[0], -1, p).sum(1).reshape(g.shape[0], *b.shape))
        return out


class LayerNormSite(Site):
    """F.layer_norm(x, shape, w, b): the LayerNorm rule's Σ g·x̂ and Σ g."""

    name = "layer_norm"

    def fits(self, func, leaves, operands, out):
        return func in (F.layer_norm, torch.layer_norm) and len(out) == 1 and all(o.position > 0 for o in operands)

    def operand_grads(self, call, skip=()):
        bound = _bind(F.layer_norm, call)
        w, b = bound.get("weight"), bound.get("bias")
        shape = bound["normalized_shape"]
        grads = layer_norm_grads(bound["input"], call.grads[0], shape, bound.get("eps", 1e-5),
                                 any(o.tensor is w for o in call.operands), any(o.tensor is b for o in call.operands))
        return [grads["weight"] if o.tensor is w else grads["bias"] for o in call.operands]


class ReplaySite(Site):
    """Any other operation: replayed alone per sample (vmap over the batch of a vector-Jacobian product
    of that one operation with respect to its parameter operands)."""

    def fits(self, func, leaves, operands, out):
        return True

    def operand_grads(self, call, skip=()):
        leaves, spec = tree_flatten((call.args, call.kwargs))
        grads = [g if g is not None else torch.zeros(shape, dtype=dtype, device=device)
                 for g, (shape, dtype, device) in zip(call.grads, call.out_meta)]
        B = grads[0].shape[0]
        positions = [o.position for o in call.operands]
        batched = [i for i, x in enumerate(leaves) if i not in call.unbatched and isinstance(x, Tensor)
                   and x.dim() > 0 and x.shape[0] == B]
        func, index = call.func, call.out_index

        def forward(primals, xs):
            full = list(leaves)
            for i, x in zip(batched, xs):
                full[i] = x if call.folded > 1 else x.unsqueeze(0)
            for i, p in zip(positions, primals):
                full[i] = p
            args, kwargs = tree_unflatten(full, spec)
            outs = tree_flatten(func(*args, **kwargs))[0]
            return tuple(outs[j] for j in index)

        def per_sample(xs, gs):
            _, pullback = vjp(lambda *p: forward(p, xs), *(o.tensor.detach() for o in call.operands))
            return pullback(tuple(g if call.folded > 1 else g.unsqueeze(0) for g in gs))

        replay_autocast = torch.autocast(call.autocast[0], dtype=call.autocast[1]) if call.autocast else nullcontext()
        with torch.no_grad(), replay_autocast:
            return list(vmap(per_sample, randomness="error")(tuple(leaves[i] for i in batched), tuple(grads)))


SITES = (AddSite(), MulSite(), ExpandSite(), LinearSite(), LayerNormSite(), AttentionMaskSite())
REPLAY = ReplaySite()


def prepare_call(func, args: tuple, kwargs: dict, operands: tuple, batch: int):
    """The (args, kwargs) a site needs the call to run with (see Site.prepare), or None."""
    return next((new for s in SITES if (new := s.prepare(func, args, kwargs, operands, batch)) is not None), None)


def site_for(func, leaves: list, operands: tuple, out: list) -> Site:
    """The specific site for this call of `func`, or the one-operation replay."""
    return next((s for s in SITES if s.fits(func, leaves, operands, out)), REPLAY)


def site_name(call: OpCall) -> str:
    """The site's name; a replay names the operation it replays."""
    if call.site is REPLAY:
        return f"replay:{getattr(call.func, '__name__', type(call.func).__name__)}"
    return call.site.name


class OpRule(LayerRule):
    """Per-sample gradients of a group of parameters from the operations that consume them; the group
    is every parameter that shares an operation (or a computed operand) with another in the group.

    A group whose only operations are `F.linear` calls on one weight parameter has the Linear rule's
    ghost norm, and takes the mixed decision per call shape like an nn.Linear."""

    folds = True  # every site reads positions between the batch and the operand's own dims

    def __init__(self, name: str, params: dict[str, torch.nn.Parameter], order: int):
        self.module = None
        self.name = name
        self.params = params
        self.order = order
        self.has_ghost = False
        self._name_of = {id(p): n for n, p in params.items()}

    def sites(self, calls: list[OpCall]) -> str:
        """The names of the calls' sites, for the layer report."""
        return "+".join(sorted({site_name(c) for c in calls}))

    def _ghost_weight(self, calls: list[OpCall]):
        """The weight parameter if every call is F.linear on that one parameter, else None."""
        weight = None
        for c in calls:
            if not isinstance(c.site, LinearSite):
                return None
            _, w, _ = LinearSite.parts(c)
            if not (any(o.tensor is w and o.direct for o in c.operands) and (weight is None or w is weight)):
                return None
            weight = w
        return weight

    def _linear_pairs(self, calls):
        return [(LinearSite.parts(c)[0].to(c.grads[0].dtype), c.grads[0]) for c in calls]

    def shape(self, calls):
        w = self._ghost_weight(calls)
        if w is None:
            return None
        T = sum(c.args[0][0].numel() // w.shape[1] for c in calls)
        return LayerShape(T, w.shape[1], w.shape[0])

    def choose(self, calls, strategy):
        self.has_ghost = self._ghost_weight(calls) is not None
        if not self.has_ghost or strategy == INSTANTIATE:
            return INSTANTIATE
        if strategy == GHOST:
            return GHOST
        s = self.shape(calls)
        return mixed_choice(s.T, s.d, s.p)

    def working_space(self, calls, choice):
        """The parameters' per-sample gradients, and one output-sized temporary per call."""
        outputs = sum(m[0][1:].numel() for c in calls for m in c.out_meta)
        params = sum(p.numel() for p in self.params.values())
        if choice == INSTANTIATE:
            return params + outputs
        s = self.shape(calls)
        return 2 * s.T * s.T + params - s.p * s.d + outputs

    def _to_params(self, operand: Operand, g: Tensor):
        """(parameter name, per-sample gradient) pairs of this rule's parameters behind an operand."""
        if operand.direct:
            name = self._name_of.get(id(operand.tensor))
            return [(name, g)] if name is not None else []
        wanted = [p for p in operand.params if id(p) in self._name_of]
        grads = torch.autograd.grad(operand.tensor, wanted, g, retain_graph=True, allow_unused=True,
                                    is_grads_batched=True)
        return [(self._name_of[id(p)], v) for p, v in zip(wanted, grads) if v is not None]

    def _instantiate(self, calls, skip_weight=None) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for c in calls:
            skip = tuple(o for o in c.operands if skip_weight is not None and o.tensor is skip_weight)
            for operand, g in zip(c.operands, c.site.operand_grads(c, skip)):
                if g is None:
                    continue
                for name, v in self._to_params(operand, g):
                    out[name] = out[name] + v if name in out else v
        return out

    def instantiate(self, calls):
        return self._instantiate(calls)

    def ghost_norm_sq(self, calls):
        w = self._ghost_weight(calls)
        a, g = stacked(self._linear_pairs(calls), w.shape[1], w.shape[0])
        total = gram_inner(a, g)
        for v in self._instantiate(calls, skip_weight=w).values():
            total = total + v.reshape(v.shape[0], -1).pow(2).sum(1)
        return total

    def clipped_sum(self, calls, coef):
        w = self._ghost_weight(calls)
        instantiated = self._instantiate(calls, skip_weight=w)
        out = chunked_weighted_sum([instantiated], coef) if instantiated else {}
        if w is not None:
            out[self._name_of[id(w)]] = weighted_weight_sum(self._linear_pairs(calls), coef, w.shape[1], w.shape[0])
        return out
