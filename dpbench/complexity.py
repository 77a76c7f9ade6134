"""Predicted time (FLOPs) and extra memory (elements) of every clipping algorithm, layer by layer.

The paper's complexity analysis made executable. A layer with trainable parameters computes, per
sample and per group, y = A·Wᵀ (+ b) with A ∈ R^{T×d} its (unfolded) input and W ∈ R^{p×d}:
T = output positions (tokens, pixels), d = inputs per group (C_in/groups·∏kernel for a conv),
p = outputs per group, g = groups. B is the batch size; a multiply-add counts 2 FLOPs, a plain add,
comparison or scale 1. Let F = 2·B·T·p·d·g (one matmul of the layer) and b = p·g if the layer has
a bias (else 0).

Primitives of a Linear or Conv layer (costs of the first layer's input gradient are 0: autograd
skips it because the image needs no gradient):

    forward              F + B·T·b                 (bias add)
    input gradient       F                         (0 for the first layer)
    weight gradient      F + B·T·b                 (Σ over batch; bias: Σ over batch and positions)
    ghost norm           B·g·(2T²d + 2T²p + 2T²)   Gram matrices A Aᵀ, G Gᵀ (T×T) and their inner product;
                                                   for T = 1 it is ‖a‖²·‖g‖²: B·g·(2d + 2p + 1)
                         + B·T·b + 2B·b            per-sample bias gradient Σ_t G and its squared norm
                         memory 2·B·T²·g (the two Grams; 0 if T = 1)
    instantiation        F + 2·B·p·d·g             per-sample gradients Gᵀ A and their squared norms
                         + B·T·b + 2B·b            (bias as above);  memory B·(p·d·g + b)
    unfold (conv only)   memory B·T·d·g            im2col copy of the input that ghost norms need, and
                                                   instantiation when 8T < d (0 FLOPs: a copy); else the
                                                   engine instantiates by one weight backward with the
                                                   batch folded into the groups (same FLOPs, no copy)
    weighted sum         2·B·(p·d·g + b)           Σᵢ Cᵢ gᵢ of instantiated gradients
    book-kept sum        F + B·T·p·g + B·T·b       (Cᵢ·G)ᵀA from the stored output gradient G
                         memory B·T·p·g            G stored from the backward until the clipping factors

nn.Embedding (T indices, d = vocabulary V, p = embedding dim D, no arithmetic in forward):
weight gradient B·T·D (index_add); ghost norm B·(2T²D + 3T²) (Gram of G, index equality mask,
inner product), memory 2·B·T²; instantiation B·T·D + 2·B·V·D, memory B·V·D (a dense per-sample
table); weighted sum 2·B·V·D; book-kept sum 2·B·T·D, stored G memory B·T·D.

LayerNorm / GroupNorm (C affine channels, T positions per channel, P trainable affine parameters):
forward 7·B·T·C (mean 1, centre 1, variance 2, scale 1, affine 2); input gradient 8·B·T·C
(γ·g, two means, x̂-product, two subtractions, scale); weight gradient 3·B·T·C (Σ g·x̂, Σ g);
instantiation = recompute x̂ (5·B·T·C) + 3·B·T·C + norms 2·B·P, memory B·P plus 2·B·T·C scratch;
weighted sum 2·B·P. There is no ghost norm (the per-sample gradient is as small as the layer).

Other trainable parameters (a bare nn.Parameter such as a ViT's cls_token, pos_embed or layer-scale
gamma, a weight used through F.linear outside its module, a LayerNorm subclass; P parameters) take
the engine's operation rules (clipping/layers/ops.py): the consuming operation's output gradient is
reduced to the parameter's shape, modelled as instantiation 4·B·P, held B·P, weighted sum 2·B·P
(F.linear on one weight costs like a Linear layer). Which parameters these are is read from one engine
step on a copy of the model. Parameters that no operation rule serves use the generic rule: it replays
the module's forward per sample (torch.func vmap of a vjp), so its per-sample gradient costs one
forward and one input-gradient pass of every layer inside the module, plus the norms 2·B·P; memory
B·P held, and the replay's layer outputs (Σ over those layers of B·T·p·g) transient. The batch
gradient is modelled as additive use: B·P.

Algorithms, per layer (two-pass algorithms: the first backward forms output gradients and norms but
no parameter gradient, the second backward of Σ Cᵢ Lᵢ forms everything again; book-keeping (BK)
forms the clipped sum from stored output gradients in the single backward):

    nonprivate     fwd + in + wgrad                                  extra memory 0
    opacus         fwd + in + wgrad + inst + wsum                    per-sample gradients of ALL layers held
    opacus_ghost   fwd + 2·in + 2·wgrad + (ghost for Linear/Embedding, inst otherwise)   one layer at a time
    per_sample     fwd + in + inst + wsum                            per-sample gradients of ALL layers held
    fastgradclip   fwd + 2·in + wgrad + inst                         one layer at a time
    ghost          fwd + 2·in + wgrad + ghost (inst where no ghost)  one layer at a time
    mixed_ghost    fwd + 2·in + wgrad + (ghost if 2T²·g ≤ p·d·g else inst)   one layer at a time
    bk_ghost       fwd + in + ghost + bk-sum (inst + wsum where no ghost)   stored G (or gradients) held
    bk_mixed       fwd + in + mixed branch: ghost + bk-sum | inst + wsum    held as above

The engine computes norms in batch chunks whose temporaries stay under a working-memory cap
(dpbench.clipping.own), so at large B the transient memory here is the unchunked upper bound.
Opacus' wgrad counts because autograd still forms the plain parameter gradients; Opacus' ghost mode
(1.6) has true ghost norms only for Linear and Embedding and runs its first backward with parameter
gradients. Memory of a layer = held + transient elements; the model TOTAL is Σ held + max transient
(transient buffers of different layers never coexist). Activations that autograd saves anyway and
parameter-free operations (activations, pooling, attention's matmuls) are the same for every
algorithm and are not counted. The mixed column is the engine's rule (dpbench.clipping.decision).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from dpbench.clipping.algorithms import ALGORITHMS
from dpbench.clipping.decision import GHOST, INSTANTIATE, ghost_space, instantiate_space, mixed_choice
from dpbench.clipping.layers.conv import unfold_is_faster

ALGORITHM_NAMES = tuple(ALGORITHMS)


@dataclass(frozen=True)
class Layer:
    """One module with trainable parameters, as seen in one forward of one sample."""

    name: str
    type: str
    family: str  # "linear", "conv", "embedding", "norm", "op" or "generic" (the engine's rule)
    T: int | None
    d: int | None
    p: int | None
    groups: int | None
    params: int  # trainable parameters of the module itself
    bias: int  # trainable bias elements (0 if none)
    input_grad: bool  # does autograd form the gradient of the layer's input?
    inner: tuple[str, ...] = ()  # generic family: names of the layers inside the module (replayed)

    @property
    def has_ghost(self) -> bool:
        return self.family in ("linear", "conv", "embedding")

    @property
    def choice(self) -> str:
        """The mixed rule: ghost iff 2T²·g ≤ p·d·g; layers without a ghost norm instantiate."""
        return mixed_choice(self.T, self.d, self.p, self.groups) if self.has_ghost else INSTANTIATE


@dataclass(frozen=True)
class Cost:
    """Predicted FLOPs and extra memory (elements): held until clipping, or transient in one layer."""

    time: float
    held: float = 0
    transient: float = 0

    @property
    def memory(self) -> float:
        return self.held + self.transient


# ---- layers ------------------------------------------------------------------------------------

def _family(module: nn.Module, name: str) -> str | None:
    """The engine's rule family for a module's own trainable parameters (None without any)."""
    from dpbench.clipping.layers import rule_for
    from dpbench.clipping.layers.conv import ConvRule
    from dpbench.clipping.layers.embedding import EmbeddingRule
    from dpbench.clipping.layers.linear import LinearRule
    from dpbench.clipping.layers.norms import GroupNormRule, LayerNormRule

    rule = rule_for(module, name)
    if rule is None:
        return None
    for cls, family in ((LinearRule, "linear"), (ConvRule, "conv"), (EmbeddingRule, "embedding"),
                        (LayerNormRule, "norm"), (GroupNormRule, "norm")):
        if isinstance(rule, cls):
            return family
    return "generic"


def collect_layers(model: nn.Module, example: torch.Tensor) -> list[Layer]:
    """Every module with trainable parameters, with its T, d, p, groups from one forward of `example`
    (batch 1).

    The geometry is the engine's own (each rule's `shape`, as the engine reports it after one step on a
    copy of the model); a module called several times is one layer whose T is the sum over its calls.
    """
    seen: dict[nn.Module, dict] = {}
    handles = []
    for name, module in model.named_modules():
        family = _family(module, name or type(model).__name__)
        if family is None:
            continue
        entry = {"name": name or type(model).__name__, "family": family, "input_grad": False}
        seen[module] = entry

        def hook(module, inputs, output, entry=entry):
            entry["input_grad"] |= any(isinstance(x, torch.Tensor) and x.requires_grad for x in inputs)

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.enable_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    report = _engine_report(model, example)
    geometry = {row["name"]: row for row in report if row["path"] != "op"}
    op_rows = [row for row in report if row["path"] == "op"]
    moved = {name for row in op_rows for name in row["params"]}
    full_names = {id(p): n for n, p in model.named_parameters()}
    layers = []
    for module, entry in seen.items():
        own = [(n, p) for n, p in module.named_parameters(recurse=False) if p.requires_grad]
        if all(full_names[id(x)] in moved for _, x in own):
            continue  # an operation rule serves its parameters (below)
        own = [(n, x) for n, x in own if full_names[id(x)] not in moved]
        shape = geometry.get(entry["name"], {})
        generic = entry["family"] == "generic"
        layers.append(Layer(
            name=entry["name"], type=type(module).__name__, family=entry["family"],
            T=shape.get("T"), d=shape.get("d"), p=shape.get("p"), groups=shape.get("groups"),
            params=sum(x.numel() for _, x in own), bias=sum(x.numel() for n, x in own if n == "bias"),
            input_grad=entry["input_grad"] or generic,
            inner=tuple(seen[m]["name"] for m in module.modules() if m is not module and m in seen) if generic else ()))
    sizes = dict(model.named_parameters())
    for row in op_rows:
        params = sum(sizes[n].numel() for n in row["params"])
        linear = row["T"] is not None  # F.linear on one weight: the Linear rule's costs
        layers.append(Layer(name=row["name"], type=row["type"], family="linear" if linear else "op",
                            T=row["T"] if linear else None, d=row["d"], p=row["p"], groups=row["groups"],
                            params=params, bias=params - row["d"] * row["p"] if linear else 0, input_grad=True))
    return layers


def _engine_report(model: nn.Module, example: torch.Tensor) -> list[dict]:
    """The engine's layer_report (each layer's rule, geometry and operation rules) of one engine step on a
    copy of the model with two copies of the example."""
    from dpbench.clipping import PrivacyEngine

    work = copy.deepcopy(model)
    engine = PrivacyEngine(work, algorithm="mixed_ghost", max_grad_norm=1.0)
    try:
        with torch.enable_grad():
            out = work(torch.cat([example, example]))
            out = next(t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor))
            engine.backward(out.flatten(1).float().pow(2).sum(1))
    finally:
        engine.detach()
    return engine.layer_report


# ---- costs -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Primitives:
    """The building blocks of every algorithm's cost for one layer at batch B (see module docstring)."""

    forward: float
    input_grad: float
    weight_grad: float
    ghost: Cost | None  # time and transient memory of the ghost norm; None if the layer has none
    instantiate: Cost  # time; held = the per-sample gradients; transient = scratch (unfold, x̂)
    weighted_sum: float
    bookkept_sum: Cost | None  # time; held = stored output gradients; None without a ghost norm


def primitives(layer: Layer, B: int, replay: Cost = Cost(0)) -> Primitives:
    """Primitive costs of one layer at batch size B (`replay`: the generic rule's per-sample replay)."""
    if layer.family in ("linear", "conv"):
        return _matmul_primitives(layer, B)
    if layer.family == "embedding":
        T, V, D = layer.T, layer.d, layer.p
        return Primitives(
            forward=0, input_grad=0, weight_grad=B * T * D,
            ghost=Cost(B * (2 * T * T * D + 3 * T * T), transient=2 * B * T * T),
            instantiate=Cost(B * T * D + 2 * B * V * D, held=B * V * D),
            weighted_sum=2 * B * V * D, bookkept_sum=Cost(2 * B * T * D, held=B * T * D))
    if layer.family == "norm":
        T, C, P = layer.T, layer.p, layer.params
        weight = P - layer.bias  # affine weight elements (0 without elementwise_affine weight)
        grad_work = (2 * B * T * C if weight else 0) + (B * T * C if layer.bias else 0)
        return Primitives(
            forward=7 * B * T * C, input_grad=8 * B * T * C if layer.input_grad else 0, weight_grad=grad_work,
            ghost=None,
            instantiate=Cost(5 * B * T * C + grad_work + 2 * B * P, held=B * P, transient=2 * B * T * C),
            weighted_sum=2 * B * P, bookkept_sum=None)
    P = layer.params
    if layer.family == "op":  # the consuming operation's output gradient reduced to the parameters
        return Primitives(forward=0, input_grad=0, weight_grad=B * P, ghost=None,
                          instantiate=Cost(4 * B * P, held=B * P), weighted_sum=2 * B * P, bookkept_sum=None)
    return Primitives(forward=0, input_grad=0, weight_grad=B * P, ghost=None,
                      instantiate=Cost(replay.time + 2 * B * P, held=B * P, transient=replay.transient),
                      weighted_sum=2 * B * P, bookkept_sum=None)


def replay_cost(layer: Layer, layers: dict[str, Layer], B: int) -> Cost:
    """Time (forward + input gradient) and transient memory (outputs) of replaying a generic module."""
    time = outputs = 0
    for name in layer.inner:
        inner = layers[name]
        k = primitives(inner, B)
        time += k.forward + k.input_grad
        outputs += B * (inner.T or 0) * (inner.p or 0) * (inner.groups or 1)
    return Cost(time, transient=outputs)


def _matmul_primitives(layer: Layer, B: int) -> Primitives:
    T, d, p, g, b = layer.T, layer.d, layer.p, layer.groups, layer.bias
    F = 2 * B * T * p * d * g
    unfold = B * T * d * g if layer.family == "conv" else 0
    instantiate_unfold = unfold if unfold_is_faster(T, d) else 0
    bias_norm = B * T * b + 2 * B * b
    if T == 1:
        ghost = Cost(B * g * (2 * d + 2 * p + 1) + bias_norm, transient=unfold)
    else:
        ghost = Cost(B * g * (2 * T * T * d + 2 * T * T * p + 2 * T * T) + bias_norm,
                     transient=2 * B * T * T * g + unfold)
    return Primitives(
        forward=F + B * T * b, input_grad=F if layer.input_grad else 0, weight_grad=F + B * T * b,
        ghost=ghost,
        instantiate=Cost(F + 2 * B * p * d * g + bias_norm, held=B * (p * d * g + b), transient=instantiate_unfold),
        weighted_sum=2 * B * (p * d * g + b),
        bookkept_sum=Cost(F + B * T * p * g + B * T * b, held=B * T * p * g))


def algorithm_costs(layer: Layer, B: int = 1, replay: Cost = Cost(0)) -> dict[str, Cost]:
    """Predicted cost of the layer under every algorithm (ALGORITHM_NAMES) at batch size B.

    `replay` is the generic rule's per-sample replay of the module (see `replay_cost`); 0 otherwise.
    """
    k = primitives(layer, B, replay)
    inst = k.instantiate
    ghost = k.ghost or inst
    mixed = ghost if layer.choice == GHOST else inst
    plain = k.forward + k.input_grad + k.weight_grad
    two_pass = k.forward + 2 * k.input_grad + k.weight_grad

    def discarded(norm: Cost, time: float) -> Cost:
        """Norm computed and its buffers freed before the next layer (nothing held)."""
        return Cost(time + norm.time, transient=norm.held + norm.transient)

    def bookkept(norm: Cost) -> Cost:
        if norm is inst:  # instantiated gradients are kept and summed
            return Cost(k.forward + k.input_grad + inst.time + k.weighted_sum, inst.held, inst.transient)
        s = k.bookkept_sum
        return Cost(k.forward + k.input_grad + norm.time + s.time, s.held, norm.transient)

    opacus_norm = ghost if layer.family in ("linear", "embedding") else inst
    norms = {"instantiate": inst, "ghost": ghost, "mixed": mixed}

    def cost(algorithm) -> Cost:
        """The registry's (norm strategy, sum strategy) of the algorithm, priced."""
        if algorithm.backend == "plain":
            return Cost(plain)
        if algorithm.backend == "opacus":
            if algorithm.norms == "hooks":  # every layer's per-sample gradients held, then summed
                return Cost(plain + inst.time + k.weighted_sum, inst.held, inst.transient)
            return discarded(opacus_norm, k.forward + 2 * k.input_grad + 2 * k.weight_grad)
        norm = norms[algorithm.norms]
        return bookkept(norm) if algorithm.sums == "bookkeeping" else discarded(norm, two_pass)

    return {name: cost(algorithm) for name, algorithm in ALGORITHMS.items()}


# ---- the table ---------------------------------------------------------------------------------

def complexity_table(layers: list[Layer], model: str, image_size: int, batch_size: int = 1) -> pd.DataFrame:
    """One row per layer plus a TOTAL row (Σ time; memory Σ held + max transient)."""
    rows, totals = [], {a: [0.0, 0.0, 0.0] for a in ALGORITHM_NAMES}  # time, held, max transient
    by_name = {layer.name: layer for layer in layers}
    for layer in layers:
        costs = algorithm_costs(layer, batch_size, replay_cost(layer, by_name, batch_size))
        ghost_ok = layer.has_ghost
        row = {"model": model, "image_size": image_size, "batch_size": batch_size, "layer": layer.name,
               "type": layer.type, "family": layer.family, "T": layer.T, "d": layer.d, "p": layer.p,
               "groups": layer.groups, "params": layer.params,
               "ghost_space": ghost_space(layer.T, layer.groups) if ghost_ok else None,
               "instantiate_space": instantiate_space(layer.d, layer.p, layer.groups) if ghost_ok else layer.params,
               "choice": layer.choice}
        for a, c in costs.items():
            row[f"time_{a}"] = c.time
            row[f"mem_{a}"] = c.memory
            totals[a][0] += c.time
            totals[a][1] += c.held
            totals[a][2] = max(totals[a][2], c.transient)
        rows.append(row)
    total = {"model": model, "image_size": image_size, "batch_size": batch_size, "layer": "TOTAL",
             "params": sum(layer.params for layer in layers)}
    for a, (time, held, transient) in totals.items():
        total[f"time_{a}"] = time
        total[f"mem_{a}"] = held + transient
    frame = pd.DataFrame(rows + [total])
    for column in ("T", "d", "p", "groups", "ghost_space", "instantiate_space"):
        frame[column] = frame[column].astype("Int64")
    return frame


def model_complexity(model_name: str, image_size: int | None = None, num_classes: int = 10,
                     batch_size: int = 1) -> pd.DataFrame:
    """The complexity table of a registry model at a given input size (BatchNorm → GroupNorm)."""
    from dpbench.clipping import replace_batchnorm
    from dpbench.models import create_model, default_image_size

    image_size = image_size or default_image_size(model_name)
    model = create_model(model_name, num_classes=num_classes, image_size=image_size)
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        model = replace_batchnorm(model)
    model.train()
    in_channels = next((m.in_channels for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)), 3)
    example = torch.zeros(1, in_channels, image_size, image_size)
    return complexity_table(collect_layers(model, example), model_name, image_size, batch_size)


def to_markdown(frame: pd.DataFrame) -> str:
    """A Markdown report: model totals per algorithm (with ratios to nonprivate), then the layers."""
    total = frame[frame["layer"] == "TOTAL"].iloc[0]
    first = frame.iloc[0]
    base = total["time_nonprivate"]
    summary = pd.DataFrame([{"algorithm": a, "time (FLOPs)": f"{total[f'time_{a}']:.3g}",
                             "time / nonprivate": f"{total[f'time_{a}'] / base:.2f}" if base else "n/a",
                             "extra memory (elements)": f"{total[f'mem_{a}']:.3g}"} for a in ALGORITHM_NAMES])
    layers = frame.copy()
    numeric = [c for c in layers.columns if c.startswith(("time_", "mem_")) or c in ("ghost_space", "instantiate_space")]
    for column in numeric:
        layers[column] = layers[column].map(lambda v: "" if pd.isna(v) else f"{v:.3g}")
    layers = layers.drop(columns=["model", "image_size", "batch_size"]).astype(object).fillna("")
    choices = frame["choice"].dropna()
    return "\n".join([
        f"# Complexity of {first['model']} at {first['image_size']}×{first['image_size']}, batch {first['batch_size']}",
        "",
        f"{len(frame) - 1} layers with trainable parameters, {int(total['params'])} parameters; mixed rule: "
        f"{(choices == GHOST).sum()} ghost, {(choices == INSTANTIATE).sum()} instantiate. "
        "Formulas: `dpbench/complexity.py` (module docstring). Memory: extra elements over non-private; "
        "TOTAL = Σ held + max transient.",
        "",
        summary.to_markdown(index=False),
        "",
        layers.to_markdown(index=False),
        "",
    ])
