"""The zoo audit: every timm model family and every torchvision classification model against the
brute-force per-sample gradients, for dpbench's six own algorithms and Opacus 1.6 (hooks).

Which models
- timm: one model per *family*, a family being a module file of `timm/models/` that registers models
  (`timm.list_modules()`). Its model is the registered one (`timm.list_models(module=family)`) with the
  fewest parameters at 10 classes, counted by building every registered model of the family on the meta
  device (no memory, no weights); candidates that then fail to build or to run on CPU at any input size
  are passed over for the next smallest (up to MAX_CANDIDATES), and the table says so. timm's own
  `test_*` models are registered models and count.
- torchvision: every classification model (`torchvision.models.list_models(module=torchvision.models)`).

How each is run
- random weights (timm `pretrained=False`, torchvision `weights=None`), 10 classes, drop rates 0 where
  the constructor takes them and every dropout / drop-path / stochastic-depth module set to 0;
- BatchNorm replaced by GroupNorm: dpbench.clipping.replace_batchnorm, except that timm's
  BatchNormAct2d (a BatchNorm2d followed by its own drop and activation) becomes timm's GroupNormAct
  with that same drop and activation (replace_batchnorm alone would drop the activation);
- torchvision's GoogLeNet and Inception v3 without their auxiliary heads;
- float64, training mode, the smallest square input of SIZES that the model builds at (timm
  `img_size=`, torchvision ViT `image_size=`, MaxViT `input_size=`) and runs at, else its native size;
- B = BATCH samples, two steps of the same engine on two batches (gradients zeroed between), loss
  cross-entropy on random targets, R the median per-sample norm of step 1 (some samples clipped).
  Before any engine runs, the model must be deterministic (two forwards agree) and keep samples apart
  (each sample's output alone equals its row of the batch's); otherwise the model is skipped.

Verdicts, per algorithm and step: `exact` when the per-sample norms and every parameter's clipped sum
agree with brute force (torch.func vmap(grad) per sample; a per-sample autograd loop where vmap cannot
run) within RTOL relative in float64 (norms elementwise; gradients per parameter relative to the larger
of its expected norm and 1e-3 of the largest per-sample norm, as tests/oracle.py), or within 10 times
brute force's own floor where that is larger (`batch_floor`: autograd's gradient of the clipped batch
loss Σᵢ cᵢ Lᵢ against Σᵢ cᵢ gᵢ from the per-sample gradients; a model that computes in float32 inside cannot be judged
closer, and the table names the tolerance used); `refused` when the
engine raises a one-line DpbenchError (at construction, or a step's forward or backward: recorded);
`wrong` with the largest relative error; `crash` for any other exception (or a DpbenchError of several
lines), a defect. For Opacus the same comparison uses its own clip factor min(1, R/(‖gᵢ‖ + 1e-6)); its
verdicts are exact, wrong or error (any exception, dpbench's refusals of what Opacus cannot do
included). Per model the engine's layer report gives the path of every trainable parameter tensor:
a layer rule (`module`), an operation rule (`op`, with the operations) or the generic torch.func replay
(`replay`, with the host modules' types).

Each model runs in its own process (`python -m dpbench.audit ENTRY --jsonl FILE`), with a time limit and
a memory limit; what a killed process had finished is kept, the rest is `skipped`."""

from __future__ import annotations

import copy
import csv
import gc
import io
import json
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

OWN = ("per_sample", "fastgradclip", "ghost", "mixed_ghost", "bk_ghost", "bk_mixed")
OPACUS = "opacus"
RTOL = 1e-8
BATCH = 3
NUM_CLASSES = 10
SIZES = (32, 48, 56, 64, 96, 112, 128, 160, 192, 224)
MAX_CANDIDATES = 4
FEW_GROUPS = 8  # the GroupNorm of a model that cannot run with 32 groups (see audit_one)
# a brute-force floor above this (see batch_floor) is not float32 rounding: the model is not judged
MAX_FLOOR = 1e-5
DEFAULT_TIMEOUT = 300.0
DEFAULT_MAX_PARAMS = 100_000_000
DEFAULT_MEMORY_GIB = 8.0
# the address space of a fresh process that imported torch, timm, torchvision and opacus (measured
# 3.8 GB, most of it mapped CUDA libraries); the memory limit is on top of it
_BASE_ADDRESS_SPACE = 4 << 30
_OOM = ("can't allocate memory", "not enough memory", "out of memory", "Cannot allocate memory")

STATUS_COLUMNS = [*OWN, OPACUS]

# what the audit found out about a model by hand, shown beside its verdicts (which stay as measured)
EXPLAINED = {
    "timm/csatv2": "timm's SpatialTransformerBlock computes its attention across the batch (q, k, v of shape "
                   "[B, N] after unbind, so q @ kᵀ is [B, B]); the forward values do not show it (LayerNorm(1) "
                   "makes every row the same), but in the batch's graph each sample's gradient flows through the "
                   "other samples' rows of qkv, so every method that reads per-sample gradients off batch-first "
                   "layers, Opacus included, attributes them to the wrong samples; brute force is right",
}
CSV_COLUMNS = ["entry", "source", "family", "model", "params", "input", "batch", "status", "note",
               "oracle", "floor", "tolerance", "seconds",
               *[f"{a}{s}" for a in STATUS_COLUMNS for s in ("", "_where", "_error", "_detail", "_seconds")],
               "path_module", "path_op", "path_replay", "path_none", "op_types", "replay_types"]


# ---- the zoo -------------------------------------------------------------------------------------
def zoo_entries() -> list[str]:
    """Every entry of the audit: `timm/<family>` for each timm module that registers models, then
    `torchvision/<model>` for each torchvision classification model."""
    import timm
    import torchvision

    families = [f"timm/{m}" for m in sorted(timm.list_modules()) if timm.list_models(module=m)]
    vision = [f"torchvision/{m}" for m in sorted(torchvision.models.list_models(module=torchvision.models))]
    return families + vision


def sample_entries(entries: list[str], sample: int | None, seed: int) -> list[str]:
    """`sample` entries drawn without replacement by `random.Random(seed)`, in the zoo's order; all of
    them when sample is None or not smaller than the list."""
    if sample is None or sample >= len(entries):
        return list(entries)
    chosen = set(random.Random(seed).sample(list(entries), sample))
    return [e for e in entries if e in chosen]


def _count_on_meta(build) -> int | None:
    import torch

    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            model = build()
    except Exception:
        return None
    return sum(p.numel() for p in model.parameters())


def timm_candidates(family: str) -> tuple[list[tuple[int, str]], list[str]]:
    """The family's registered models as (parameters at 10 classes, name), fewest first, and the names
    that cannot be built on the meta device (not candidates)."""
    import timm

    counted, failed = [], []
    for name in timm.list_models(module=family):
        n = _count_on_meta(lambda: timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES))
        (failed.append(name) if n is None else counted.append((n, name)))
    return sorted(counted), failed


# ---- building a model ------------------------------------------------------------------------------
def _create(factory, kwargs: dict):
    """factory(**kwargs), dropping each keyword the constructor rejects; returns (model, the kwargs used)."""
    kwargs = dict(kwargs)
    for _ in range(len(kwargs) + 1):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return factory(**kwargs), kwargs
        except TypeError as err:
            bad = next((k for k in kwargs if f"'{k}'" in str(err) and "keyword" in str(err)), None)
            if bad is None:
                raise
            del kwargs[bad]
    raise RuntimeError("unreachable")


def convert_norms(model, max_groups: int = 32):
    """BatchNorm to GroupNorm (at most `max_groups` groups): timm's BatchNormAct2d to GroupNormAct keeping
    its drop and activation, every other BatchNorm by dpbench.clipping.replace_batchnorm."""
    from dpbench.clipping import replace_batchnorm
    from dpbench.clipping.batchnorm import group_count

    try:
        from timm.layers import BatchNormAct2d, GroupNormAct
    except ImportError:  # pragma: no cover - timm is a dependency
        BatchNormAct2d = None
    if BatchNormAct2d is not None:
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, BatchNormAct2d):
                    c = child.num_features
                    norm = GroupNormAct(c, group_count(c, max_groups), eps=child.eps, affine=child.affine, apply_act=False)
                    if child.affine:
                        norm.weight.data.copy_(child.weight.data)
                        norm.bias.data.copy_(child.bias.data)
                    norm.drop, norm.act = child.drop, child.act
                    setattr(parent, name, norm)
    return replace_batchnorm(model, max_groups)


def zero_dropout(model) -> None:
    """Every dropout, drop-path, drop-block and stochastic-depth module to probability 0."""
    from torch import nn

    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.p = 0.0
        elif "drop" in type(m).__name__.lower() or "stochastic" in type(m).__name__.lower():
            for attr in ("p", "drop_prob", "drop_rate", "prob"):
                if isinstance(getattr(m, attr, None), float):
                    setattr(m, attr, 0.0)
        if isinstance(m, nn.MultiheadAttention):
            m.dropout = 0.0


def logits(out):
    """The classification output of a forward: the tensor, the first of a tuple, or `.logits`."""
    import torch

    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, dict) and "logits" in out:
        return out["logits"]
    if isinstance(out, (tuple, list)) and out:
        return logits(out[0])
    raise TypeError(f"cannot read logits from a {type(out).__name__}")


def _timm_factory(name):
    import timm

    return lambda **kw: timm.create_model(name, pretrained=False, **kw)


def _torchvision_factory(name):
    import torchvision

    return lambda **kw: torchvision.models.get_model(name, weights=None, **kw)


def _native_size(entry_source: str, name: str) -> tuple[int, int, int]:
    if entry_source == "timm":
        import timm

        cfg = timm.models.get_pretrained_cfg(name)
        size = getattr(cfg, "input_size", None) if cfg is not None else None
        if size:
            return tuple(size)
    if name == "inception_v3":
        return (3, 299, 299)
    return (3, 224, 224)


def _size_kwargs(source: str, name: str, s: int) -> dict:
    if source == "timm":
        return {"img_size": s}
    if name.startswith("vit_"):
        return {"image_size": s}
    if name.startswith("maxvit"):
        return {"input_size": (s, s)}
    return {}


def _base_kwargs(source: str, name: str) -> dict:
    kwargs = {"num_classes": NUM_CLASSES}
    if source == "timm":
        kwargs.update(drop_rate=0.0, drop_path_rate=0.0)
    elif name in ("googlenet", "inception_v3"):
        kwargs.update(aux_logits=False, init_weights=True)
    return kwargs


def _runs(model, shape) -> str | None:
    """None when the model runs a batch of 1 and of 2 at this input shape in training mode, giving
    [B, classes] (one sample alone is how brute force runs it: a GroupNorm over a single value per
    group fails there); else why not."""
    import torch

    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for b in (1, 2):
                got = tuple(logits(model(torch.randn(b, *shape))).shape)
                if got != (b, NUM_CLASSES):
                    return f"output of shape {got}"
        return None
    except Exception as err:
        return f"{type(err).__name__}: {_first_line(err)}"


def build_at_smallest_input(source: str, name: str, max_groups: int = 32):
    """(model in float32, training mode, norms converted, dropout 0; input shape (C, H, W); kwargs) at
    the smallest size of SIZES (below the native one) that it builds at and runs at, else at its native
    size; raises RuntimeError when it runs at none."""
    factory = _timm_factory(name) if source == "timm" else _torchvision_factory(name)
    base = _base_kwargs(source, name)
    native = _native_size(source, name)
    channels = native[0]
    sizes = [s for s in SIZES if s < max(native[1:])]
    fixed = None  # the one model of a constructor without a size argument
    last_error = last_run = None
    for s in [*sizes, None]:
        shape = native if s is None else (channels, s, s)
        if fixed is None:
            extra = _size_kwargs(source, name, s) if s is not None else {}
            try:
                model, used = _create(factory, {**base, **extra})
            except Exception as err:
                last_error = f"{type(err).__name__}: {_first_line(err)}"
                continue
            model = convert_norms(model, max_groups).train()
            zero_dropout(model)
            if not any(k in used for k in extra):
                fixed = (model, used)
        else:
            model, used = fixed
        last_run = _runs(model, shape)
        if last_run is None:
            return model, shape, used
    raise RuntimeError(f"runs at no input size of {list(SIZES)} nor its native {native}"
                       + (f" (at the native size: {last_run})" if last_run else "")
                       + (f" (last build error: {last_error})" if last_error else ""))


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else ""


# ---- brute force ----------------------------------------------------------------------------------
def per_sample_grads(model, x, y, loop: bool = False):
    """({name: [B, *shape]} per-sample gradients of every trainable parameter, "vmap" or "loop"): by
    torch.func vmap(grad) unless it cannot run (or `loop`), else by autograd on one sample at a time."""
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call, grad, vmap

    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    buffers = dict(model.named_buffers())

    def loss(p, xi, yi):
        out = logits(functional_call(model, {**p, **frozen, **buffers}, (xi.unsqueeze(0),)))
        return F.cross_entropy(out, yi.unsqueeze(0))

    if not loop:
        try:
            return vmap(grad(loss), in_dims=(None, 0, 0), randomness="same")(params, x, y), "vmap"
        except Exception:
            pass
    names = list(params)
    tensors = [dict(model.named_parameters())[n] for n in names]
    rows = []
    for i in range(x.shape[0]):
        loss_i = F.cross_entropy(logits(model(x[i:i + 1])), y[i:i + 1])
        g = torch.autograd.grad(loss_i, tensors, allow_unused=True)
        rows.append([torch.zeros_like(t) if gi is None else gi.detach() for t, gi in zip(tensors, g)])
    return {n: torch.stack([r[k] for r in rows]) for k, n in enumerate(names)}, "loop"


def batch_floor(model, x, y, ref: "Reference", R: float) -> float:
    """Brute force's own numerical floor on this model: the largest relative difference (per parameter,
    as in `compare`) between autograd's gradient of the clipped batch loss Σᵢ cᵢ Lᵢ (one ordinary backward,
    cᵢ = min(1, R/‖gᵢ‖)) and Σᵢ cᵢ gᵢ from the per-sample gradients. About 1e-15 in float64; larger where
    the model computes in float32 inside (timm's EfficientViT attention casts to float32, so the weighted
    output gradient is rounded to float32), where no two ways of forming the sum agree more closely."""
    import torch
    import torch.nn.functional as F

    names = list(ref.grads)
    tensors = [dict(model.named_parameters())[n] for n in names]
    coef = (R / ref.norms).clamp(max=1.0)
    loss = (coef * F.cross_entropy(logits(model(x)), y, reduction="none")).sum()
    batch = torch.autograd.grad(loss, tensors, allow_unused=True)
    floor = ref.norms.max().item() * 1e-3
    worst = 0.0
    for n, b in zip(names, batch):
        expected = torch.einsum("b,b...->...", coef, ref.grads[n])
        got = torch.zeros_like(expected) if b is None else b
        err = (got - expected).norm().item() / max(expected.norm().item(), floor, 1e-30)
        worst = max(worst, err)
    return worst


def tolerance(floor: float) -> float:
    """The relative error within which a result counts as exact: RTOL, or 10 times brute force's floor
    where the model's float32 insides make that larger."""
    return max(RTOL, 10.0 * floor)


class Reference:
    """One step's truth: per-sample norms and, for a clipping bound R, the clipped sums under dpbench's
    factor min(1, R/‖gᵢ‖) and under Opacus' min(1, R/(‖gᵢ‖ + 1e-6))."""

    def __init__(self, grads: dict):
        import torch

        self.norms = torch.cat([g.flatten(1) for g in grads.values()], 1).norm(dim=1)
        self.grads = grads
        self.sums: dict[str, dict] = {}

    def settle(self, R: float) -> None:
        import torch

        for kind, coef in (("own", (R / self.norms).clamp(max=1.0)),
                           ("opacus", (R / (self.norms + 1e-6)).clamp(max=1.0))):
            self.sums[kind] = {n: torch.einsum("b,b...->...", coef, g) for n, g in self.grads.items()}
        self.grads = None  # the per-sample gradients are no longer needed


def compare(model, norms, ref: Reference, kind: str) -> tuple[float, str]:
    """The largest relative error of the engine's norms and the parameters' gradients against the
    reference, and what it was (the norms, or a parameter's name)."""
    worst, what = 0.0, "norms"
    if norms is not None:
        err = ((norms.double() - ref.norms).abs() / ref.norms.clamp_min(1e-30)).max().item()
        worst = err
    params = dict(model.named_parameters())
    floor = ref.norms.max().item() * 1e-3
    for name, expected in ref.sums[kind].items():
        got = params[name].grad
        if got is None:
            err = 0.0 if not expected.any() else float("inf")
        else:
            scale = max(expected.norm().item(), floor, 1e-30)
            err = (got.double() - expected).norm().item() / scale
        if not err <= worst:  # NaN counts as worst
            worst, what = err, name
    return worst, what


# ---- one entry, in its own process -----------------------------------------------------------------
def _crash_detail(err: BaseException) -> str:
    """The innermost frames of the exception, as `file:line in function` (site-packages shortened)."""
    frames = traceback.extract_tb(err.__traceback__)
    shown = frames[-2:]
    ours = [f for f in frames if "/dpbench/" in f.filename and "/dpbench/audit.py" not in f.filename]
    if ours and ours[-1] not in shown:
        shown = [ours[-1], *shown]
    return " <- ".join(f"{_short(f.filename)}:{f.lineno} in {f.name}" for f in reversed(shown))


def _short(path: str) -> str:
    for marker in ("site-packages/", "dpbench/"):
        if marker in path:
            return (marker if marker == "dpbench/" else "") + path.split(marker, 1)[1]
    return path


def _trim() -> None:
    """Give freed memory back to the system (glibc keeps it otherwise): other work shares the machine."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, MemoryError) or any(m in str(err) for m in _OOM)


def run_algorithm(pristine, algorithm: str, R: float, steps: list, tol: float = RTOL) -> dict:
    """Two steps of one engine on a copy of the model; the verdict (exact within `tol`) and the layer
    report's paths."""
    import torch
    import torch.nn.functional as F

    from dpbench.clipping import PrivacyEngine
    from dpbench.errors import DpbenchError

    t0 = time.perf_counter()
    own = algorithm in OWN
    result = {"algorithm": algorithm, "status": None, "where": "", "error": None, "detail": ""}
    where, engine, report, model = "copy", None, None, None
    try:
        model = copy.deepcopy(pristine)
        where = "construct"
        engine = PrivacyEngine(model, algorithm=algorithm, max_grad_norm=R)
        worst, what = 0.0, ""
        for k, (x, y, ref) in enumerate(steps, 1):
            for p in model.parameters():
                p.grad = None
            where = f"step {k} forward"
            out = logits(model(x))
            losses = F.cross_entropy(out, y, reduction="none")
            where = f"step {k} backward"
            engine.backward(losses)
            where = f"step {k} check"
            err, name = compare(model, engine.per_sample_norms, ref, "own" if own else "opacus")
            if not err <= worst:
                worst, what = err, f"step {k} {name}"
            if own and k == 1:
                report = [{key: r.get(key) for key in ("name", "type", "path", "params")} for r in engine.layer_report]
        ok = worst <= tol
        result.update(status="exact" if ok else "wrong", error=worst, where="" if ok else what)
    except DpbenchError as err:
        text = str(err)
        one_line = "\n" not in text.strip()
        if own:
            result.update(status="refused" if one_line else "crash", where=where,
                          detail=text if one_line else f"DpbenchError of {len(text.splitlines())} lines: {text}")
        else:
            result.update(status="error", where=where, detail=f"DpbenchError: {text}")
    except Exception as err:  # a crash of the engine, or of Opacus
        if where == "copy":
            result.update(status="skipped", where=where, detail=f"the audit cannot copy the model: "
                          f"{type(err).__name__}: {_first_line(err)}")
        elif _is_oom(err):
            result.update(status="skipped", where=where, detail=f"out of memory: {_first_line(err)}")
        else:
            status = "crash" if own else "error"
            result.update(status=status, where=where,
                          detail=f"{type(err).__name__}: {_first_line(err)} [at {_crash_detail(err)}]")
    finally:
        if engine is not None:
            try:
                engine.detach()
            except Exception:
                pass
    if model is not None:
        # free the copy's parameters and gradients now: the book-keeping engines keep their model alive
        # after detach (their tensor hooks hold recorded calls), which would hold a copy per algorithm
        for p in model.parameters():
            p.grad = None
            p.data = torch.empty(0, dtype=p.dtype)
    del model, engine
    gc.collect()
    _trim()
    result["seconds"] = round(time.perf_counter() - t0, 2)
    if report is not None:
        result["paths"] = paths_of(report, pristine)
    return result


def paths_of(report: list[dict], model) -> dict:
    """How many trainable parameter tensors took each path, the operations of the op rules and the
    module types of the replays."""
    counts = Counter()
    ops, replays = set(), set()
    seen = set()
    for row in report:
        counts[row["path"]] += len(row["params"] or [])
        seen.update(row["params"] or [])
        if row["path"] == "op":
            ops.update(str(row["type"]).split("+"))
        elif row["path"] == "replay":
            replays.add(str(row["type"]))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    return {"module": counts["module"], "op": counts["op"], "replay": counts["replay"],
            "none": sum(1 for n in trainable if n not in seen),
            "op_types": "+".join(sorted(ops)), "replay_types": "+".join(sorted(replays))}


def _emit(fh, record: dict) -> None:
    fh.write(json.dumps(record, default=str) + "\n")
    fh.flush()


def _make_batch(shape, seed: int, dtype):
    import torch

    g = torch.Generator().manual_seed(seed)
    return (torch.randn(BATCH, *shape, generator=g).to(dtype),
            torch.randint(0, NUM_CLASSES, (BATCH,), generator=g))


def _preconditions(model, x) -> str | None:
    """Why the brute force cannot judge this model (randomness, samples mixed), or None."""
    import torch

    with torch.no_grad():
        a, b = logits(model(x)), logits(model(x))
        scale = a.abs().max().item() + 1e-30
        if not torch.isfinite(a).all():
            return "its output is not finite at random weights"
        if (a - b).abs().max().item() > 1e-10 * scale:
            return "its forward is random in training mode (two forwards differ)"
        for i in range(x.shape[0]):
            alone = logits(model(x[i:i + 1]))
            if (alone[0] - a[i]).abs().max().item() > 1e-6 * scale:  # float32 insides agree to ~1e-7
                return "it mixes the samples of a batch (a sample's output depends on the others)"
    return None


def audit_one(entry: str, out, max_params: int = DEFAULT_MAX_PARAMS, seed: int = 0) -> None:
    """Audit one entry, writing JSON lines to the open file `out`: `setup` (model, input, oracle or
    `skipped`), then one `algorithm` record per algorithm, then `done`."""
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    warnings.filterwarnings("ignore")
    t0 = time.perf_counter()
    source, _, name = entry.partition("/")
    setup = {"kind": "setup", "entry": entry, "source": source, "family": name if source == "timm" else "",
             "model": name if source == "torchvision" else "", "status": "ok", "note": ""}
    notes = []
    try:
        if source == "timm":
            counted, meta_failed = timm_candidates(name)
            if meta_failed:
                notes.append(f"{len(meta_failed)} registered model(s) not buildable on meta: {', '.join(meta_failed[:3])}")
            if not counted:
                raise RuntimeError(f"no model of family {name} builds on the meta device")
            candidates = counted[:MAX_CANDIDATES]
        elif source == "torchvision":
            n = _count_on_meta(lambda: _create(_torchvision_factory(name), _base_kwargs(source, name))[0])
            candidates = [(n, name)]
        else:
            raise ValueError(f"unknown source '{source}' in entry '{entry}' (timm/FAMILY or torchvision/MODEL)")
        built = None
        for n, model_name in candidates:
            setup.update(model=model_name, params=n)
            if n is not None and n > max_params:
                setup.update(status="skipped", note="; ".join(
                    notes + [f"{n / 1e6:.1f}M parameters > the cap of {max_params / 1e6:.0f}M (--max-params)"]))
                _emit(out, setup)
                return
            try:
                built = build_at_smallest_input(source, model_name)
                break
            except Exception as err:
                first = f"{type(err).__name__}: {_first_line(err)}"
            try:
                # GroupNorm with 32 groups after a global pool (the 1x1 maps of SK / split attention) holds
                # one value per group, which fails for one sample alone: fewer groups
                built = build_at_smallest_input(source, model_name, max_groups=FEW_GROUPS)
                notes.append(f"GroupNorm with at most {FEW_GROUPS} groups (with 32: {first})")
                break
            except Exception as err:
                notes.append(f"{model_name} passed over: {first}")
        if built is None:
            setup.update(status="skipped", note="; ".join(notes))
            _emit(out, setup)
            return
        model, shape, used = built
        setup["params"] = sum(p.numel() for p in model.parameters())
        setup["input"] = "x".join(str(s) for s in shape)
        setup["batch"] = BATCH
        try:
            model = model.double()
            # the engines run on copies of this one, taken before brute force runs the model: a model
            # that keeps a tensor of its forward (timm's CoaT) would otherwise keep vmap's wrapper
            pristine = copy.deepcopy(model)
            steps = [_make_batch(shape, seed + k, torch.float64) for k in (1, 2)]
            reason = _preconditions(model, steps[0][0])
        except Exception as err:
            reason = f"does not run in float64: {type(err).__name__}: {_first_line(err)}"
        if reason:
            setup.update(status="skipped", note="; ".join(notes + [reason]))
            _emit(out, setup)
            return
        refs, methods, floor, R, vmap_off = [], set(), 0.0, None, 0.0
        for x, y in steps:  # one step's per-sample gradients at a time: they are the peak of memory
            for loop in (False, True):
                grads, method = per_sample_grads(model, x, y, loop=loop)
                ref = Reference(grads)
                del grads
                r = R
                if r is None:  # from step 1
                    positive = ref.norms[ref.norms > 0]
                    r = float(positive.median()) if len(positive) else 1.0
                step_floor = batch_floor(model, x, y, ref, r)
                if step_floor <= MAX_FLOOR or method == "loop":
                    break
                # vmap's gradients disagree with autograd's on the batch (timm's CoaT): one sample at a time
                vmap_off = max(vmap_off, step_floor)
            methods.add(method)
            R, floor = r, max(floor, step_floor)
            ref.settle(R)
            refs.append(ref)
            _trim()
        if vmap_off:
            notes.append(f"vmap's per-sample gradients disagree with autograd's ({vmap_off:.1e}): one sample at a "
                         "time instead")
        if floor > MAX_FLOOR:
            setup.update(status="skipped", note="; ".join(notes + [
                f"brute force's per-sample gradients and autograd's gradient of the batch differ by {floor:.1e} "
                "relative: the model does not keep samples apart in its backward, or is not in float64 inside"]))
            _emit(out, setup)
            return
        del model
        _trim()
        tol = tolerance(floor)
        if tol > RTOL:
            notes.append(f"brute force's floor {floor:.1e} (float32 inside): tolerance {tol:.1e}")
        setup.update(oracle="+".join(sorted(methods)), R=R, floor=floor, tolerance=tol, note="; ".join(notes),
                     setup_seconds=round(time.perf_counter() - t0, 2))
        _emit(out, setup)
    except Exception as err:
        setup.update(status="skipped", note="; ".join(notes + [f"setup failed: {type(err).__name__}: "
                                                               f"{_first_line(err)} [at {_crash_detail(err)}]"]))
        _emit(out, setup)
        return
    steps = [(x, y, ref) for (x, y), ref in zip(steps, refs)]
    for algorithm in STATUS_COLUMNS:
        _emit(out, {"kind": "algorithm", **run_algorithm(pristine, algorithm, R, steps, tol)})
    _emit(out, {"kind": "done", "seconds": round(time.perf_counter() - t0, 2)})


# ---- the driver ---------------------------------------------------------------------------------
def _limit_memory(gib: float):
    """In the child before exec: the address-space limit, and death with the parent (Linux prctl)."""
    def apply():
        limit = _BASE_ADDRESS_SPACE + int(gib * (1 << 30))
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    return apply


def run_entry(entry: str, timeout: float = DEFAULT_TIMEOUT, max_params: int = DEFAULT_MAX_PARAMS,
              memory_gib: float = DEFAULT_MEMORY_GIB, seed: int = 0) -> dict:
    """Audit one entry in a fresh process with a time and memory limit; its row (see CSV_COLUMNS)."""
    t0 = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with tempfile.TemporaryDirectory(prefix="dpbench-audit-") as tmp:
        jsonl = Path(tmp) / "out.jsonl"
        log = Path(tmp) / "log.txt"
        cmd = [sys.executable, "-m", "dpbench.audit", entry, "--jsonl", str(jsonl),
               "--max-params", str(max_params), "--seed", str(seed)]
        with open(log, "w") as log_fh:
            proc = subprocess.Popen(cmd, stdout=log_fh, stderr=subprocess.STDOUT, env=env, cwd=root,
                                    start_new_session=True, preexec_fn=_limit_memory(memory_gib))
            ended = ""
            try:
                proc.wait(timeout=timeout)
                if proc.returncode != 0:
                    ended = f"the process exited with status {proc.returncode}"
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                ended = f"time limit of {timeout:.0f} s reached"
            except BaseException:  # interrupted: the child goes too
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise
        records = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()] \
            if jsonl.exists() else []
        tail = log.read_text()[-2000:].strip().splitlines()[-1:] if log.exists() else []
    row = row_from_records(entry, records, ended + (f" ({tail[0][:200]})" if ended and tail and
                                                    "exited" in ended else ""))
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def row_from_records(entry: str, records: list[dict], ended: str = "") -> dict:
    """One CSV row from a process's records; what it did not reach is `skipped` with `ended`."""
    source, _, name = entry.partition("/")
    row = {c: "" for c in CSV_COLUMNS}
    row.update(entry=entry, source=source, family=name if source == "timm" else "",
               model=name if source == "torchvision" else "")
    setup = next((r for r in records if r["kind"] == "setup"), None)
    if setup is None:
        row.update(status="skipped", note=f"no result: {ended or 'the process wrote nothing'}")
        for a in STATUS_COLUMNS:
            row[a] = "skipped"
        return row
    for key in ("family", "model", "params", "input", "batch", "status", "note", "oracle"):
        if setup.get(key) not in (None, ""):
            row[key] = setup[key]
    for key in ("floor", "tolerance"):
        if setup.get(key) is not None:
            row[key] = f"{setup[key]:.1e}"
    done = {r["algorithm"]: r for r in records if r["kind"] == "algorithm"}
    paths = next((done[a]["paths"] for a in OWN if a in done and "paths" in done[a]), None)
    for a in STATUS_COLUMNS:
        r = done.get(a)
        if r is None:
            row[a] = "skipped"
            if setup["status"] == "ok":
                row[f"{a}_detail"] = ended or "not run"
            continue
        row[a] = r["status"]
        row[f"{a}_where"] = r.get("where") or ""
        row[f"{a}_error"] = "" if r.get("error") is None else f"{r['error']:.2e}"
        row[f"{a}_detail"] = r.get("detail") or ""
        row[f"{a}_seconds"] = r.get("seconds", "")
    if paths:
        row.update(path_module=paths["module"], path_op=paths["op"], path_replay=paths["replay"],
                   path_none=paths["none"], op_types=paths["op_types"], replay_types=paths["replay_types"])
    if setup["status"] == "ok" and ended and len(done) < len(STATUS_COLUMNS):
        row["note"] = "; ".join(x for x in (row["note"], f"stopped: {ended}") if x)
    return row


def audit(entries: list[str] | None = None, sample: int | None = None, seed: int = 0,
          timeout: float = DEFAULT_TIMEOUT, max_params: int = DEFAULT_MAX_PARAMS,
          memory_gib: float = DEFAULT_MEMORY_GIB, done: dict | None = None, progress=None) -> list[dict]:
    """Rows of the audit of `entries` (default: the whole zoo), or of a random sample of `sample` of
    them drawn with `seed`; `done` maps entries to rows already made (kept, not rerun); `progress(row)`
    is called after each new row."""
    chosen = sample_entries(entries if entries is not None else zoo_entries(), sample, seed)
    rows = []
    for entry in chosen:
        if done and entry in done:
            rows.append(done[entry])
            continue
        row = run_entry(entry, timeout=timeout, max_params=max_params, memory_gib=memory_gib)
        rows.append(row)
        if progress is not None:
            progress(row)
    return rows


# ---- the tables ------------------------------------------------------------------------------------
def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    return buf.getvalue()


def read_csv(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def counts(rows: list[dict]) -> dict[str, Counter]:
    """Per algorithm (and opacus), how many models got each status."""
    return {a: Counter(r[a] for r in rows) for a in STATUS_COLUMNS}


def defects(rows: list[dict]) -> list[tuple[str, str, dict]]:
    """(entry, algorithm, row) for every own algorithm that is wrong or crashed."""
    return [(r["entry"], a, r) for r in rows for a in OWN if r[a] in ("wrong", "crash")]


def _cell(row: dict, a: str) -> str:
    s = row[a]
    if s == "wrong":
        return f"**wrong** {row[f'{a}_error']}"
    if s in ("crash",):
        return "**crash**"
    return s


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(rows: list[dict], command: str, env: dict, elapsed: float | None = None) -> str:
    """The audit as Markdown: summary counts, the per-model table, then the refusals, defects, Opacus
    errors and skipped models, each with its message."""
    checked = [r for r in rows if r["status"] == "ok"]
    c = counts(rows)
    statuses = ["exact", "refused", "wrong", "crash", "skipped"]
    lines = ["# Zoo audit: every timm family and torchvision classification model against brute force", "",
             f"Generated by `{command}`" + (f" in {elapsed / 60:.0f} min" if elapsed else "") + "; do not edit.",
             "",
             f"Versions: torch {env.get('torch')}, timm {env.get('timm')}, torchvision {env.get('torchvision')}, "
             f"opacus {env.get('opacus')}, dpbench {env.get('dpbench')} (commit {env.get('git_commit')}); "
             f"{env.get('device_name')}, {env.get('threads')} thread(s).", "",
             "How (dpbench/audit.py's docstring has the details): one model per timm family (a module file of "
             "`timm/models/` that registers models), the registered one with the fewest parameters at 10 "
             "classes (counted on the meta device) that builds and runs; every torchvision classification "
             "model. Random weights, 10 classes, dropout and drop-path 0, BatchNorm replaced by GroupNorm "
             "(timm's BatchNormAct2d by GroupNormAct with its activation), float64, training mode, the "
             "smallest square input that the model accepts (`input`), "
             f"{BATCH} samples, two steps of one engine on two batches, cross-entropy on random targets, R the "
             f"median per-sample norm of step 1. `exact`: per-sample norms and every parameter's clipped sum "
             f"within {RTOL:g} relative of brute force (torch.func vmap(grad), or a per-sample autograd loop "
             "where vmap cannot run) at both steps, or within 10 times brute force's own floor where a model "
             "computes in float32 inside (autograd's gradient of Σᵢ cᵢ Lᵢ against Σᵢ cᵢ gᵢ from its per-sample "
             "gradients; "
             "such models are listed in the notes with their tolerance); `refused`: a one-line DpbenchError; `wrong`: the largest "
             "relative error; `crash`: any other exception. Opacus 1.6 (hooks) is judged the same way with its "
             "own clip factor min(1, R/(‖g‖+1e-6)). `paths`: how many trainable parameter tensors the engine "
             "gave a layer rule / an operation rule / the generic torch.func replay (from the layer report of "
             f"the first own algorithm that ran). Per model: its own process, a time limit and a memory limit; "
             f"models above the parameter cap are skipped.", "",
             f"## Summary: {len(rows)} entries, {len(checked)} checked, {len(rows) - len(checked)} skipped", "",
             "| algorithm | " + " | ".join(statuses) + " |", "|---|" + "---|" * len(statuses)]
    for a in OWN:
        lines.append(f"| {a} | " + " | ".join(str(c[a].get(s, 0)) for s in statuses) + " |")
    op = c[OPACUS]
    lines += ["", "| Opacus 1.6 (hooks) | exact | wrong | error | skipped |", "|---|---|---|---|---|",
              f"| opacus | {op.get('exact', 0)} | {op.get('wrong', 0)} | {op.get('error', 0)} | {op.get('skipped', 0)} |",
              "", "## Per model", "",
              "| entry | model | params | input | " + " | ".join(OWN) + " | paths module/op/replay | ops, replays | opacus |",
              "|---|---|---|---|" + "---|" * len(OWN) + "---|---|---|"]
    for r in rows:
        params = f"{int(r['params']) / 1e6:.2f}M" if str(r["params"]).isdigit() else ""
        if r["status"] != "ok":
            lines.append(f"| {r['entry']} | {r['model']} | {params} | {r['input']} | "
                         + " | ".join("skipped" for _ in OWN) + " | | | skipped |")
            continue
        paths = f"{r['path_module']}/{r['path_op']}/{r['path_replay']}" if r["path_module"] != "" else ""
        if r["path_none"] not in ("", "0", 0):
            paths += f" (+{r['path_none']} unreported)"
        kinds = "; ".join(x for x in (f"op: {r['op_types']}" if r["op_types"] else "",
                                      f"replay: {r['replay_types']}" if r["replay_types"] else "") if x)
        lines.append(f"| {r['entry']} | {r['model']} | {params} | {r['input']} | "
                     + " | ".join(_cell(r, a) for a in OWN) + f" | {paths} | {_md_escape(kinds)} | {_cell(r, OPACUS)} |")

    bad = defects(rows)
    lines += ["", f"## Defects: wrong or crashed own algorithms ({len(bad)})", ""]
    if not bad:
        lines.append("None.")
    grouped: dict[tuple, list[str]] = {}
    for entry, a, r in bad:
        what = (f"relative error up to {r[f'{a}_error']} ({r[f'{a}_where']})" if r[a] == "wrong"
                else f"{r[f'{a}_where']}: {r[f'{a}_detail']}")
        key = (entry, r["model"], r["input"], r[a], what if r[a] == "crash" else "")
        grouped.setdefault(key, []).append(a if r[a] == "crash" else f"{a} {what}")
    for (entry, model, shape, status, what), algorithms in grouped.items():
        listed = "all own" if len(algorithms) == len(OWN) and what else ", ".join(algorithms)
        lines.append(f"- {entry} ({model}, input {shape}), {status}: {_md_escape(listed)}"
                     + (f": {_md_escape(what)}" if what else ""))
    explained = [e for e in dict.fromkeys(e for e, _, _ in bad) if e in EXPLAINED]
    if explained:
        lines += ["", "Explained by hand:", ""]
        lines += [f"- {e}: {EXPLAINED[e]}" for e in explained]

    lines += ["", "## Refusals (one-line DpbenchError), grouped by message", ""]
    by_message: dict[str, list[str]] = {}
    for r in rows:
        for a in OWN:
            if r[a] == "refused":
                by_message.setdefault(f"{r[f'{a}_where']}: {r[f'{a}_detail']}", []).append(f"{r['entry']} ({a})")
    if not by_message:
        lines.append("None.")
    for message, who in sorted(by_message.items()):
        lines.append(f"- {_md_escape(message)} — {', '.join(_collapse(who))}")

    lines += ["", "## Opacus 1.6 (hooks): wrong and errors", ""]
    opacus_rows = [r for r in rows if r[OPACUS] in ("wrong", "error")]
    if not opacus_rows:
        lines.append("None.")
    for r in opacus_rows:
        what = (f"relative error {r['opacus_error']} ({r['opacus_where']})" if r[OPACUS] == "wrong"
                else f"{r['opacus_where']}: {r['opacus_detail']}")
        lines.append(f"- {r['entry']} ({r['model']}): {r[OPACUS]}, {_md_escape(what)}")

    lines += ["", "## Skipped", ""]
    skipped = [r for r in rows if r["status"] != "ok"]
    partial = [(r, a) for r in rows if r["status"] == "ok" for a in STATUS_COLUMNS if r[a] == "skipped"]
    if not skipped and not partial:
        lines.append("None.")
    for r in skipped:
        lines.append(f"- {r['entry']} ({r['model'] or '?'}): {_md_escape(r['note'])}")
    for r, a in partial:
        lines.append(f"- {r['entry']} ({r['model']}), {a}: {_md_escape(r[f'{a}_detail'] or 'not run')}")
    notes = [r for r in rows if r["status"] == "ok" and r["note"]]
    if notes:
        lines += ["", "## Notes", ""]
        lines += [f"- {r['entry']} ({r['model']}): {_md_escape(r['note'])}" for r in notes]
    return "\n".join(lines) + "\n"


def _collapse(who: list[str]) -> list[str]:
    """`entry (a)` items merged per entry: `entry (a, b)`, or `entry (all own)`."""
    merged: dict[str, list[str]] = {}
    for item in who:
        entry, _, a = item.rpartition(" (")
        merged.setdefault(entry, []).append(a.rstrip(")"))
    return [f"{e} ({'all own' if len(a) == len(OWN) else ', '.join(a)})" for e, a in merged.items()]


def environment() -> dict:
    import importlib.metadata

    from dpbench.results import environment as env

    record = env("cpu")
    record["threads"] = 1  # each model's process runs one thread
    for pkg in ("timm", "torchvision"):
        try:
            record[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            record[pkg] = None
    return record


def _main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m dpbench.audit", description="audit one zoo entry (a child "
                                "process of `dpbench audit`)")
    p.add_argument("entry")
    p.add_argument("--jsonl", required=True)
    p.add_argument("--max-params", type=int, default=DEFAULT_MAX_PARAMS)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    with open(args.jsonl, "a") as out:
        audit_one(args.entry, out, max_params=args.max_params, seed=args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
