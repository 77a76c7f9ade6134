"""dpbench's own algorithms: hooks record each covered module's inputs in forward; one backward
(`torch.autograd.grad` to the layers' outputs, so autograd forms no parameter gradient) delivers each
layer's output gradient, from which the layer's per-sample norm is taken at once (ghost or
instantiated); then either a second backward of Σ Cᵢ Lᵢ or the book-kept clipped sums."""

from __future__ import annotations

import time
from functools import partial

import torch
from torch import nn
from torch._C._functorch import peek_interpreter_stack
from torch.autograd.graph import get_gradient_edge
from torch.utils._pytree import tree_flatten

from dpbench.clipping.algorithms import Algorithm
from dpbench.clipping.decision import INSTANTIATE
from dpbench.clipping.layout import fold, nonzero_slices, probed_samples, signature, slices_per_sample
from dpbench.clipping.layers import Call, GenericRule, LayerRule, OpRule, specific_rule
from dpbench.clipping.layers.base import batch_slice, chunked_weighted_sum, squared_norms
from dpbench.clipping.layers.ops import OpCall, site_for
from dpbench.clipping.usage import ParameterTracer, Use
from dpbench.errors import DpbenchError


# input signatures whose layouts are remembered (layout.py); the oldest is forgotten beyond this
KNOWN_SIGNATURES = 64

# temporaries of one layer's norm computation (4 MiB in float32): in the first backward of a two-pass
# algorithm every activation is still alive, so anything above this adds to the step's peak memory
CHUNK_ELEMENTS = 2 ** 20


def _tensors(tree) -> list[torch.Tensor]:
    return [x for x in tree_flatten(tree)[0] if isinstance(x, torch.Tensor)]


def _autocast_of(t: torch.Tensor) -> tuple | None:
    """(device type, dtype) when the forward runs under autocast, else None."""
    kind = t.device.type
    return (kind, torch.get_autocast_dtype(kind)) if torch.is_autocast_enabled(kind) else None


def _new_call(cls, args, kwargs, leaves: list, spec, index: tuple, key, **extra) -> Call:
    """The record of one call (a module's or an operation's) whose differentiable outputs are
    `leaves[i]` for i in `index`, its gradients still to come."""
    return cls(args, kwargs, tuple(x._version for x in _tensors((args, kwargs))), spec, index,
               tuple((leaves[i].shape, leaves[i].dtype, leaves[i].device) for i in index),
               [None] * len(index), len(index), _autocast_of(leaves[index[0]]), key, **extra)


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
        self.rules: dict[object, LayerRule] = {}  # module (or the operation rule itself) -> rule
        self._order = {m: i for i, m in enumerate(model.modules())}
        self._full_names = {id(p): n for n, p in model.named_parameters()}
        # each module's frozen parameters, for the layer report (fixed for the engine's life)
        self._frozen_names = {m: names for m in model.modules() if (names := [
            self._full_names[id(p)] for p in m.parameters(recurse=False) if not p.requires_grad])}
        for name, module in model.named_modules():
            rule = specific_rule(module, name or type(model).__name__)
            if rule is not None:
                self.rules[module] = rule
        self.layer_report: list[dict] = []
        self._root_handles = [model.register_forward_pre_hook(self._root_pre_hook, with_kwargs=True),
                              model.register_forward_hook(self._root_post_hook, always_call=True)]
        self._handles = {m: m.register_forward_hook(self._record, with_kwargs=True) for m in self.rules}
        self._calls: dict[object, list[Call]] = {}
        self._candidates: dict[nn.Module, list[Call]] = {}
        self._surveyed_sites: list[OpCall] = []
        self._op_rule_of: dict[int, OpRule] = {}
        self._frontier: list = []
        self._depth = 0
        self._traced = False  # whether the tracer watches the current top-level forward
        self._collecting = False
        self._replaying = False
        self._probing: int | None = None  # the sample whose loss alone is being backpropagated
        self._layouts: dict[tuple, dict] = {}  # input signature -> {(key id, call index): slices per sample}
        self._layout: dict | None = None  # this step's, while it is being found (None: known)
        # id of each parameter whose per-sample gradient this backward formed -> the calls that formed it
        self._covered: dict[int, int] = {}
        self.probe_seconds = 0.0  # time of the layout probes so far (first step of each input signature)
        trainable = [p for p in model.parameters() if p.requires_grad]
        self._trainable = {id(p): p for p in trainable}
        # the first step's forwards are surveyed; later ones watch only the parameters of operation rules
        self._tracer: ParameterTracer | None = ParameterTracer(trainable, self._on_site, survey=True,
                                                               on_output=self._record_candidate)
        self._trains = {m for m in model.modules() if any(p.requires_grad for p in m.parameters())}
        # optional: (rule, calls) -> extra layer_report fields, called before a ghost-capable layer's
        # inputs are released (dpbench.measure.branches times both norm branches with it)
        self.branch_timer = None

    @property
    def generic_params(self) -> list[torch.Tensor]:
        return [p for r in self.rules.values() if isinstance(r, GenericRule) for p in r.params.values()]

    # ---- forward -------------------------------------------------------------------------------
    def _ignored(self) -> bool:
        """Forwards that are not the step's: the engine's own replays, no-grad ones, and those run inside
        a torch.func transform (a user's brute force, whose tensors are not the batch's)."""
        return self._replaying or not torch.is_grad_enabled() or peek_interpreter_stack() is not None

    def _root_pre_hook(self, model, args, kwargs):
        if self._ignored():
            return
        if self._depth == 0:
            # every top-level forward since the last backward joins the step: the losses' graph decides
            # which calls count (a call whose outputs get no gradient adds nothing)
            inputs = _tensors((args, kwargs))
            self._frontier += [x for x in inputs if x.requires_grad]
            batch = next((x.shape[0] for x in inputs if x.dim() > 0), None)
            # an empty batch (Poisson sampling) has no per-sample work and is no ground for the survey
            self._traced = self._tracer is not None and batch != 0
            if self._traced:
                self._tracer.start(model, batch, inputs)
        self._depth += 1

    def _root_post_hook(self, model, args, output):
        if self._replaying or self._depth == 0:
            return
        self._depth -= 1
        if self._depth == 0 and self._traced:
            self._tracer.stop()  # a survey is settled at the first backward, when the losses give the batch

    def _record_candidate(self, module, args, kwargs, output):
        """During the survey: record modules that may become generic hosts."""
        if module not in self.rules and module in self._trains:
            self._record(module, args, kwargs, output, self._candidates)

    def _on_site(self, func, args, kwargs, out, operands, inputs_need_grad):
        """An operation consuming parameter operands (see usage.py): record it like a module call."""
        if self._replaying:
            return
        leaves, spec = tree_flatten(out)
        index = tuple(i for i, t in enumerate(leaves) if isinstance(t, torch.Tensor) and t.requires_grad)
        inputs = tree_flatten((args, kwargs))[0]
        site = site_for(func, inputs, operands, [leaves[i] for i in index])
        if site.grads_at_operands:
            # catch the gradients of the batch-expanded operands; differentiating to their parameters (not
            # to the expanded tensors, whose batched gradients autograd would return) makes backward pass them
            leaves, spec, inputs_need_grad = [inputs[o.position] for o in operands], None, True
            index = tuple(range(len(leaves)))
            self._frontier += [p for o in operands for p in o.params if all(p is not q for q in self._frontier)]
        if not site.needs_inputs:
            args, kwargs = (), {}
        key = self._op_key(operands) if not self._tracer.survey else None
        call = _new_call(OpCall, args, kwargs, leaves, spec, index, key,
                         unbatched=frozenset(o.position for o in operands), func=func, site=site, operands=operands)
        self._hook_outputs(call, leaves, inputs_need_grad)
        if key is None:
            self._surveyed_sites.append(call)
        else:
            self._calls.setdefault(key, []).append(call)

    def _op_key(self, operands) -> OpRule:
        rules = {id(r): r for r in (self._op_rule_of[id(p)] for o in operands for p in o.params)}
        if len(rules) != 1:
            names = ", ".join(self._full_names[id(p)] for o in operands for p in o.params)
            raise DpbenchError(f"parameters {names} are consumed by one operation but were not in the first "
                               "forward: the forward must use parameters the same way at every step")
        return next(iter(rules.values()))

    # ---- at the first backward: module rule, operation rule or generic replay ---------------------
    def _settle(self, uses: list[Use], batch: int) -> None:
        """Give every surveyed parameter its rule (see usage.py) and the first step's calls to them."""
        self._tracer.settle_kinds(batch)
        self._batch = batch
        # the parameters trainable when the engine was built (a change since is refused at backward)
        params = self._trainable
        owners = {id(p): (m, n) for m in self.model.modules() for n, p in m.named_parameters(recurse=False)
                  if id(p) in params}
        by_param: dict[int, list[Use]] = {i: [] for i in params}
        parent = {i: i for i in params}

        def root(i):
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for use in uses:
            ids = [id(p) for p in use.params]
            for i in ids:
                by_param[i].append(use)
                parent[root(i)] = root(ids[0])
        groups: dict[int, list[int]] = {}
        for i in params:
            groups.setdefault(root(i), []).append(i)

        # used only in the forward of their own module, which has a specific rule, on the batch's tensors
        # (a use whose output does not carry the batch goes to an operation rule or an enclosing replay)
        module_only = {i for i in params if owners[i][0] in self.rules and all(
            u.stack[-1] is owners[i][0] and (u.kind == "site" or not self.rules[owners[i][0]].batch_in_dim0)
            for u in by_param[i])}
        for group in groups.values():
            if all(i in module_only for i in group):
                continue
            group_uses = [u for i in group for u in by_param[i]]
            if any(u.kind == "unsupported" for u in group_uses) or not any(u.kind == "site" for u in group_uses):
                hosts = {i: self._host(owners[i][0], by_param[i]) for i in group}  # before any hand-over
                for i in group:
                    self._hand_over(params[i], *owners[i], hosts[i])
            else:
                self._make_op_rule([params[i] for i in group], owners)
        for call in self._surveyed_sites:
            found = [self._op_rule_of.get(id(p)) for o in call.operands for p in o.params]
            rule = found[0]
            if rule is not None and all(r is rule for r in found):
                call.key = rule
                self._calls.setdefault(rule, []).append(call)
        self._surveyed_sites, self._candidates = [], {}
        op_params = [p for r in self.rules.values() if isinstance(r, OpRule) for p in r.params.values()]
        self._tracer = ParameterTracer(op_params, self._on_site) if op_params else None

    def _host(self, owner: nn.Module, uses: list[Use]) -> nn.Module:
        """The innermost module whose forward contains every use of a parameter of `owner` and whose
        calls in the surveyed forward took the batch in dim 0 (else the innermost one: its replay
        then refuses by name)."""
        if not uses:
            return owner
        common = [m for m in uses[0].stack if all(any(m is s for s in u.stack) for u in uses[1:])]
        enclosing = [m for m in reversed(common) if any(s is owner for s in m.modules())]
        return next((m for m in enclosing if self._batch_first(m)), enclosing[0])

    def _batch_first(self, module: nn.Module) -> bool:
        """Whether every surveyed call of a candidate host had an input with the batch in dim 0."""
        calls = self._candidates.get(module)
        batch = self._batch
        return bool(calls) and all(any(x.dim() > 0 and x.shape[0] == batch for x in _tensors((c.args, c.kwargs)))
                                   for c in calls)

    def _release_from_module_rule(self, owner: nn.Module, name: str) -> None:
        rule = self.rules.get(owner)
        if rule is None or isinstance(rule, GenericRule):
            return
        del rule.params[name]
        if not rule.params:
            del self.rules[owner]
            self._handles.pop(owner).remove()
            self._calls.pop(owner, None)

    def _make_op_rule(self, params: list, owners: dict) -> None:
        names = [self._full_names[id(p)] for p in params]
        modules = {id(owners[id(p)][0]): owners[id(p)][0] for p in params}
        label = "+".join(names)
        if len(modules) == 1 and len(params) > 1:  # all of one module's parameters: the module's name
            (module,) = modules.values()
            ids = {id(p) for p in params}
            if all(id(p) in ids for p in module.parameters(recurse=False) if p.requires_grad):
                label = next(n for n, m in self.model.named_modules() if m is module) or type(self.model).__name__
        rule = OpRule(label, dict(zip(names, params)), min(self._order[m] for m in modules.values()))
        for p in params:
            self._release_from_module_rule(*owners[id(p)])
            self._op_rule_of[id(p)] = rule
        self.rules[rule] = rule

    def _hand_over(self, param, owner: nn.Module, name: str, host: nn.Module) -> None:
        """Move a parameter to the generic rule of the module whose forward contains its uses."""
        self._release_from_module_rule(owner, name)
        host_rule = self.rules.get(host)
        if not isinstance(host_rule, GenericRule):
            host_name = next(n for n, m in self.model.named_modules() if m is host) or type(host).__name__
            new = GenericRule(host, host_name)
            new.params = {}
            for own_name, own_param in (host_rule.params.items() if host_rule else ()):
                new.adopt(own_name, own_param)
            self.rules[host] = host_rule = new
            if host not in self._handles:
                self._handles[host] = host.register_forward_hook(self._record, with_kwargs=True)
            if host in self._candidates:
                self._calls[host] = self._candidates.pop(host)
        owner_path = next(n for n, m in host.named_modules() if m is owner)
        host_rule.adopt(f"{owner_path}.{name}" if owner_path else name, param)

    def _record(self, module, args, kwargs, output, store=None):
        if self._ignored():
            return
        leaves, spec = tree_flatten(output)
        index = tuple(i for i, t in enumerate(leaves) if isinstance(t, torch.Tensor) and t.requires_grad)
        if not index:
            return
        call = _new_call(Call, args, kwargs, leaves, spec, index, module)
        (self._calls if store is None else store).setdefault(module, []).append(call)
        self._hook_outputs(call, leaves, any(x.requires_grad for x in _tensors((args, kwargs))))

    def _hook_outputs(self, call: Call, leaves: list, inputs_need_grad: bool) -> None:
        """Catch the gradients of the call's outputs; outputs of calls whose inputs need no gradient
        join the frontier that the first backward differentiates to."""
        for k, i in enumerate(call.out_index):
            leaves[i].register_hook(partial(self._on_grad, call, k))
        if not inputs_need_grad:
            self._frontier += [get_gradient_edge(leaves[i]) for i in call.out_index]

    # ---- backward ------------------------------------------------------------------------------
    def _on_grad(self, call, k, grad):
        calls = self._calls.get(call.key)
        if not self._collecting or calls is None:
            return
        if self._probing is not None:
            self._check_unmodified(self.rules[call.key], call)  # before autograd needs what was modified
            call.probes.append((self._probing, k, nonzero_slices(grad)))
            return
        call.grads[k] = grad
        call.pending -= 1
        if all(c.pending == 0 for c in calls):
            self._process(call.key)

    def _process(self, key) -> None:
        rule = self.rules.get(key)
        calls = [self._laid_out(rule, key, i, c) for i, c in enumerate(self._calls.pop(key, []))
                 if any(g is not None for g in c.grads)]
        if not calls:
            return
        for p in rule.params.values():
            self._covered[id(p)] = self._covered.get(id(p), 0) + len(calls)
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
            "name": rule.name, "rule": type(rule).__name__, **self._path(rule, calls),
            "T": shape.T if shape else None, "d": shape.d if shape else None,
            "p": shape.p if shape else None, "groups": shape.groups if shape else None,
            "calls": len(calls), "choice": choice, "slices_per_sample": calls[0].folded, **timing,
            "_order": rule.order if isinstance(rule, OpRule) else self._order[key]})

    def _path(self, rule: LayerRule, calls: list[Call]) -> dict:
        """How the layer's per-sample gradients were found: `module` (a layer rule), `op` (the operations
        consuming the parameters, named in `type`) or `replay` (the generic replay of a module); its
        trainable `params` and the module's `frozen` ones, which get no per-sample work. A layer whose
        parameters are all frozen has no rule and no row."""
        path = "op" if isinstance(rule, OpRule) else "replay" if isinstance(rule, GenericRule) else "module"
        kind = rule.sites(calls) if isinstance(rule, OpRule) else type(rule.module).__name__
        frozen = [] if isinstance(rule, OpRule) else self._frozen_names.get(rule.module, [])
        return {"type": kind, "path": path, "params": [self._full_names[id(p)] for p in rule.params.values()],
                "frozen": frozen}

    def _chunks(self, rule: LayerRule, calls: list[Call], choice: str):
        """The calls in batch chunks whose temporaries (unfolded inputs, Gram matrices, per-sample
        gradients and the convolution library's copies) stay within CHUNK_ELEMENTS at a time.
        Book-keeping keeps each chunk's instantiated gradients, but not the library's copies (those of a
        whole batch raise the peak: paper/engine_timings.md)."""
        B = self._norm_sq.shape[0]
        size = max(1, CHUNK_ELEMENTS // max(1, rule.working_space(calls, choice)))
        if size >= B:
            return [calls]
        return [batch_slice(calls, slice(i, min(i + size, B)), B) for i in range(0, B, size)]

    def _laid_out(self, rule: LayerRule, key, index: int, call: Call) -> Call:
        """The call with its batch layout established (layout.py): as it is when batch-first, regrouped
        per sample when folded; a layout without a per-sample reading is refused."""
        B = self._norm_sq.shape[0]
        if self._layout is None:
            W = self._known_layout.get((id(key), index), 1)
        else:
            W = slices_per_sample(call.probes, call.out_meta, B)
            call.probes = []
            self._layout[(id(key), index)] = W
        kind = type(rule.module).__name__ if rule.module is not None else rule.sites([call])
        if W is None and any(not len(m[0]) or m[0][0] % B for m in call.out_meta):
            raise DpbenchError(f"module '{rule.name}' ({kind}) has an output with leading dimension "
                               f"{call.out_meta[0][0][0] if len(call.out_meta[0][0]) else 'none'}, but the batch has "
                               f"{B} losses: dpbench needs the batch in dim 0 of every layer (e.g. batch_first=True)")
        if W is None:
            raise DpbenchError(f"module '{rule.name}' ({kind}) has an output whose dim 0 is not the batch: its "
                               "slices depend on several samples' losses (a sequence-first layout, or samples "
                               "mixed), so no per-sample rule applies; give every layer the batch in dim 0 "
                               "(e.g. batch_first=True)")
        if W == 1:
            return call
        if not rule.folds:
            raise DpbenchError(f"module '{rule.name}' ({kind}) gets the batch folded with {W} slices per sample "
                               "into dim 0 (as window attention does), which its rule cannot regroup; keep "
                               "the batch alone in dim 0 there")
        return fold(call, B, W)

    @staticmethod
    def _check_unmodified(rule: LayerRule, call: Call) -> None:
        inputs = _tensors((call.args, call.kwargs))
        if any(x._version != v for x, v in zip(inputs, call.versions)):
            raise DpbenchError(f"an input of module '{rule.name}' was modified in place after the module "
                               "used it; per-sample gradients need it unchanged (use inplace=False there)")

    def _validate(self, rule: LayerRule, call: Call) -> None:
        self._check_unmodified(rule, call)
        B = self._norm_sq.shape[0]
        if isinstance(rule, (GenericRule, OpRule)):
            return
        a, g = call.args[0], next(g for g in call.grads if g is not None)
        if a.is_floating_point() and a.dtype != g.dtype:  # autocast ran the layer in g's precision
            call.args = (a.to(g.dtype), *call.args[1:])
        if rule.batch_size(call) != B:
            raise DpbenchError(f"module '{rule.name}' got an input with leading dimension "
                               f"{rule.batch_size(call)}, but the batch has {B} losses: dpbench needs "
                               "batch-first inputs in every layer")

    def reset(self) -> None:
        """Forget the forwards recorded since the last backward."""
        self._calls, self._frontier = {}, []

    def backward(self, losses: torch.Tensor, reached: list[tuple[torch.Tensor, int]]) -> torch.Tensor:
        """Per-sample norms, then ADD the clipped sum to every trainable p.grad; returns the norms.
        `reached`: the trainable parameters the losses' graph reaches, with their uses there (graph.py);
        each must have its per-sample gradient formed by recorded calls, else nothing is added and the
        parameter is named."""
        if self._tracer is not None and self._tracer.survey and (self._calls or self._surveyed_sites or self._candidates):
            self._settle(self._tracer.uses, losses.shape[0])
        if not self._calls:
            raise DpbenchError("no forward pass was recorded before backward: run the model with "
                               "gradients enabled on the batch whose per-sample losses you pass")
        two_pass = self.algorithm.sums == "second_backward"
        dtype = torch.promote_types(losses.dtype, torch.float32)
        self._norm_sq = torch.zeros(losses.shape[0], dtype=dtype, device=losses.device)
        self._kept: list = []
        self._covered = {}
        self.layer_report = []
        inputs = self._frontier + [p for p in self.generic_params if p.requires_grad]
        sig = signature(self._calls, losses.shape[0])
        self._known_layout = self._layouts.get(sig)
        self._layout = {} if self._known_layout is None else None
        self._collecting = True
        try:
            if self._layout is not None:
                self._probe(losses, inputs)
            torch.autograd.grad(losses, inputs, grad_outputs=torch.ones_like(losses),
                                retain_graph=two_pass, allow_unused=True)
            for module in list(self._calls):
                self._process(module)
            self._check_covered(reached)
        finally:
            self._collecting = False
            self.reset()
        if self._layout is not None:
            while len(self._layouts) >= KNOWN_SIGNATURES:
                self._layouts.pop(next(iter(self._layouts)))
            self._layouts[sig] = {k: w for k, w in self._layout.items() if w != 1}
            self._layout = None
        self.layer_report.sort(key=lambda r: r.pop("_order"))
        norms = self._norm_sq.sqrt()
        coef = (self.max_grad_norm / norms).clamp(max=1.0)
        if two_pass:
            torch.autograd.backward(losses, grad_tensors=coef.to(losses.dtype))
        else:
            self._add_book_kept_sums(coef)
        self._norm_sq, self._kept = None, []
        return norms

    def _probe(self, losses: torch.Tensor, inputs: list) -> None:
        """The layout probe (layout.py): one backward of each probed sample's loss alone, recording which
        dim-0 slices of every call's output gradient are non-zero."""
        start = time.perf_counter()
        try:
            for k in probed_samples(losses.shape[0]):
                self._probing = k
                alone = torch.zeros_like(losses)
                alone[k] = 1
                torch.autograd.grad(losses, inputs, grad_outputs=alone, retain_graph=True, allow_unused=True)
        finally:
            self._probing = None
        self.probe_seconds += time.perf_counter() - start

    def _check_covered(self, reached: list[tuple[torch.Tensor, int]]) -> None:
        """Refuse before anything is added if a parameter the losses reach got no per-sample gradient,
        or (for a layer rule, which uses each parameter once per call) is used by the graph more often
        than its recorded calls account for."""
        module_rule = {id(p) for r in self.rules.values() if not isinstance(r, (GenericRule, OpRule))
                       for p in r.params.values()}
        missing = [p for p, edges in reached if id(p) not in self._covered
                   or (id(p) in module_rule and edges > self._covered[id(p)])]
        if missing:
            names = ", ".join(f"'{self._full_names.get(id(p), tuple(p.shape))}'" for p in missing[:3])
            raise DpbenchError(f"parameter {names} gets a gradient from the losses that no recorded forward call "
                               "accounts for (a loss term computed from it outside the model's forward, or a "
                               "forward run under a context that hid it), so its per-sample gradient cannot be "
                               "clipped; compute every loss term through the model's forward")

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
        if self._tracer is not None:
            self._tracer.stop()

