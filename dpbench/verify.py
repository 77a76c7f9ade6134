"""Is an algorithm's computation exact on this model? Its per-sample norms and clipped sum on a few
samples of a run's batch against brute force, once per run (`dpbench bench`, `maxbatch`, `train`).

    verified = verify_algorithm(model, "mixed_ghost", x, y)
    verified["status"]   # "exact" | "wrong" | "skipped"; the run records the whole dict as `verified`

The benchmark compares implementations, so a wrong one must not pass as a slow one (Opacus' per-sample
norms of ConvNeXt's downsample convolutions are an example: see paper/verification.md).

How it checks, on the first k (≤ 4) samples of the batch:
- Both sides run on float64 deep copies of the model; the model, its gradients, the optimizer and torch's
  random number generators (CPU and CUDA, saved and restored) of the run are never touched. Dropout-like
  modules (nn.Dropout*, timm's DropPath/DropBlock, anything with `drop_prob`) and the modules that own them
  directly (timm's attention reads its own `training` for the fused dropout) are put in eval mode on both
  copies, so that both sides compute the same deterministic function; the rest keeps the model's mode.
- Brute force: k single-sample autograd backward passes (no vmap restriction: any model that runs), the
  per-sample gradient norms ‖gᵢ‖ and the clipped sum Σ cᵢ·gᵢ with cᵢ = min(1, R/‖gᵢ‖), R = the median of
  the brute-force norms (so that some samples are clipped and some are not). Opacus clips by its own
  factor min(1, R/(‖gᵢ‖ + 1e-6)): its sum is compared with that factor.
- The algorithm: `PrivacyEngine(copy, algorithm, max_grad_norm=R)`, `engine.backward` of the k per-sample
  losses, `engine.per_sample_norms` and the parameters' `.grad`, then `engine.detach()`.
- "exact" when the largest relative error of the norms and of the clipped sum (per parameter, relative to
  that parameter's expected sum, floored at 1e-3 of the whole sum's norm) is at most TOLERANCES[float64] =
  1e-6: float64 roundoff is ~1e-13 here, so 1e-6 leaves seven orders of magnitude for the summation
  order and still catches any error that matters (Opacus' ConvNeXt norms are off by ~4e-2). "wrong"
  otherwise, with the errors. A model that cannot run in float64 is retried in float32 (tolerance 1e-3)
  and then in its own 16-bit dtype (5e-2), and `why` says so.
- "skipped": nonprivate (nothing is clipped), a DpbenchError of the engine on the copy (its message: the
  run itself then fails the same way), out of memory, or a model that runs in no dtype.
The check is of the algorithm's mathematics, in float64 and without autocast, whatever dtype the run
uses; `seconds` is its cost (it runs once per run, never inside the timed steps).
"""

from __future__ import annotations

import copy
import math
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from dpbench.errors import DpbenchError

SAMPLES = 4
TOLERANCES = {torch.float64: 1e-6, torch.float32: 1e-3, torch.bfloat16: 5e-2, torch.float16: 5e-2}
OPACUS_EPSILON = 1e-6  # Opacus' clip factor R / (‖g‖ + 1e-6)
STORE_LIMIT_BYTES = 512 * 2**20  # brute-force gradients kept between the passes up to this size, else recomputed
SUM_FLOOR = 1e-3  # a parameter's sum error relative to max(its expected sum, this x the whole sum's norm)


def cross_entropy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The per-sample loss of `dpbench bench` and `dpbench train`."""
    return F.cross_entropy(out, y, reduction="none")


def skipped(why: str, samples: int = 0, seconds: float = 0.0) -> dict:
    """The record of a verification that did not run."""
    return {"status": "skipped", "max_relative_error": None, "norm_relative_error": None,
            "sum_relative_error": None, "tolerance": None, "dtype": None, "max_grad_norm": None,
            "why": why, "samples": samples, "seconds": seconds}


def disabled() -> dict:
    """The record of a run started with --no-verify."""
    return skipped("disabled by --no-verify")


def verify_algorithm(model: nn.Module, algorithm: str, x: torch.Tensor, y: torch.Tensor,
                     loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = cross_entropy,
                     samples: int = SAMPLES, max_grad_norm: float | None = None) -> dict:
    """Check `algorithm` on the first `samples` examples of (x, y) against brute force (module docstring).

    `loss(model(x), y)` must return per-sample losses of shape [B]; `max_grad_norm` None = the median of the
    brute-force norms. Returns {"status": "exact" | "wrong" | "skipped", "max_relative_error",
    "norm_relative_error", "sum_relative_error", "tolerance", "dtype", "max_grad_norm" (the R used),
    "why", "samples", "seconds"}."""
    from dpbench.clipping import ALGORITHMS

    started = time.perf_counter()
    if algorithm not in ALGORITHMS:
        raise DpbenchError(f"unknown algorithm '{algorithm}'; choose one of: {', '.join(ALGORITHMS)}")
    if ALGORITHMS[algorithm].backend == "plain":
        return skipped(f"{algorithm}: no per-sample clipping to verify")
    k = min(samples, len(x))
    if k < 1:
        return skipped("no sample to verify")
    cuda = [x.device.index if x.device.index is not None else torch.cuda.current_device()] \
        if x.device.type == "cuda" else []
    notes = []
    with torch.random.fork_rng(devices=cuda):
        for dtype in _dtypes(model):
            try:
                found = _check(model, algorithm, x[:k], y[:k], loss, dtype, max_grad_norm)
            except DpbenchError as error:
                found = skipped(f"the engine refuses the model: {error}", k)
            except (torch.OutOfMemoryError, MemoryError):
                found = skipped(f"out of memory during the verification in {_name(dtype)}", k)
            except (RuntimeError, TypeError, NotImplementedError) as error:
                notes.append(f"{_name(dtype)} failed ({_first_line(error)})")
                continue
            if notes:
                found["why"] = "; ".join(notes + [found["why"] or f"compared in {_name(dtype)} with tolerance "
                                                                   f"{TOLERANCES[dtype]:g}"])
            break
        else:
            found = skipped("the model runs in no dtype here: " + "; ".join(notes), k)
    if cuda:
        torch.cuda.synchronize(x.device)
        torch.cuda.empty_cache()  # the copies' blocks: not the run's
    found["seconds"] = time.perf_counter() - started
    return found


def text(verified: dict | None) -> str:
    """How tables and reports show a `verified` record: 'exact', 'wrong (4.4e-02)', 'skipped (why)', and
    'not recorded' for results written before there was one."""
    if not isinstance(verified, dict) or "status" not in verified:
        return "not recorded"
    status = verified["status"]
    if status == "exact":
        return "exact" if verified.get("dtype") in (None, "float64") else f"exact ({verified['dtype']})"
    if status == "wrong":
        error = verified.get("max_relative_error")
        return "wrong" if error is None else f"wrong ({error:.1e})"
    why = str(verified.get("why") or "").splitlines()[0] if verified.get("why") else ""
    return f"skipped ({why[:120]})" if why else "skipped"


def status_of(shown: str | None) -> str:
    """'exact', 'wrong', 'skipped' or 'not recorded' of a shown text (a table's `verified` cell)."""
    shown = "not recorded" if shown is None or (isinstance(shown, float) and shown != shown) else str(shown)
    return next((s for s in ("exact", "wrong", "skipped") if shown.startswith(s)), "not recorded")


def _dtypes(model: nn.Module) -> list[torch.dtype]:
    own = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return list(dict.fromkeys([torch.float64, torch.float32, *([own] if own in TOLERANCES else [])]))


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return (lines[0] if lines else type(error).__name__)[:200]


def _deterministic_copy(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A deep copy in `dtype` without gradients, its dropout-like modules and their owners in eval mode."""
    work = copy.deepcopy(model).to(dtype)
    work.zero_grad(set_to_none=True)
    for module in work.modules():
        for child in (module, *module.children()):
            if _random(child):
                module.training = False  # the owner: timm's Attention passes dropout_p only when training
                child.training = False
    return work


def _random(module: nn.Module) -> bool:
    return (isinstance(module, nn.modules.dropout._DropoutNd) or type(module).__name__.startswith("Drop")
            or hasattr(module, "drop_prob"))


def _trainable(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    seen, found = set(), []
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            found.append((name, p))
    return found


def _input(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x.to(dtype) if x.is_floating_point() else x


def _sample_gradients(model, params, x, y, loss, i) -> list[torch.Tensor]:
    """The gradient of sample i's loss with respect to every trainable parameter (zeros where unused)."""
    losses = loss(model(x[i:i + 1]), y[i:i + 1])
    if losses.shape != (1,):
        raise DpbenchError(f"the loss must give one value per sample, got shape {tuple(losses.shape)}")
    grads = torch.autograd.grad(losses.sum(), [p for _, p in params], allow_unused=True)
    return [torch.zeros_like(p) if g is None else g.detach() for g, (_, p) in zip(grads, params)]


def _norm(grads: list[torch.Tensor]) -> torch.Tensor:
    return torch.sqrt(sum(g.pow(2).sum() for g in grads))


def _check(model, algorithm, x, y, loss, dtype, max_grad_norm) -> dict:
    from dpbench.clipping import ALGORITHMS, PrivacyEngine

    k = len(x)
    x = _input(x, dtype)
    # brute force, pass 1: the per-sample norms (and the gradients, when they are small enough to keep)
    truth = _deterministic_copy(model, dtype)
    params = _trainable(truth)
    keep = k * sum(p.numel() for _, p in params) * 8 <= STORE_LIMIT_BYTES
    kept, norms = [], []
    for i in range(k):
        grads = _sample_gradients(truth, params, x, y, loss, i)
        norms.append(_norm(grads))
        if keep:
            kept.append(grads)
    norms = torch.stack(norms)
    positive = norms[norms > 0]
    R = float(max_grad_norm) if max_grad_norm is not None else (float(positive.quantile(0.5)) if len(positive) else 1.0)
    opacus = ALGORITHMS[algorithm].backend == "opacus"
    coef = (R / (norms + OPACUS_EPSILON) if opacus else R / norms).clamp(max=1.0)  # ‖g‖ = 0: R/0 = inf -> 1

    # the algorithm, on its own copy
    work = _deterministic_copy(model, dtype)
    engine = PrivacyEngine(work, algorithm=algorithm, max_grad_norm=R)
    try:
        engine.backward(loss(work(x), y))
        got_norms = engine.per_sample_norms
    finally:
        engine.detach()
    got = {name: None if p.grad is None else p.grad.detach() for name, p in _trainable(work)}
    del work, engine

    # brute force, pass 2: the clipped sum
    expected = [torch.zeros_like(p) for _, p in params]
    for i in range(k):
        grads = kept[i] if keep else _sample_gradients(truth, params, x, y, loss, i)
        for total, g in zip(expected, grads):
            total.add_(g, alpha=float(coef[i]))
    del kept, truth

    scale = norms.max().clamp_min(torch.finfo(dtype).tiny) * 1e-9  # a zero norm: absolute errors below this
    norm_error = None
    if got_norms is not None:
        got_norms = got_norms.to(dtype)
        norm_error = float(((got_norms - norms).abs() / torch.maximum(norms, scale)).max())
    whole = float(_norm(expected))
    floor = max(SUM_FLOOR * whole, torch.finfo(dtype).tiny)
    sum_error = 0.0
    for (name, _), want in zip(params, expected):
        have = got.get(name)
        have = torch.zeros_like(want) if have is None else have.to(dtype)
        sum_error = max(sum_error, float((have - want).norm()) / max(float(want.norm()), floor))
    errors = [e for e in (norm_error, sum_error) if e is not None]
    finite = all(math.isfinite(e) for e in errors)
    worst = max(errors) if finite else None
    tolerance = TOLERANCES[dtype]
    exact = finite and norm_error is not None and worst <= tolerance
    if exact:
        why = None
    elif norm_error is None:
        why = f"the engine gave no per-sample norms; clipped sum off by {sum_error:.1e}"
    elif not finite:
        why = "the engine's per-sample norms or clipped sum are not finite"
    else:
        why = (f"per-sample norms off by {norm_error:.1e}, clipped sum by {sum_error:.1e} (relative; tolerance "
               f"{tolerance:g} in {_name(dtype)})")
    return {"status": "exact" if exact else "wrong", "max_relative_error": worst,
            "norm_relative_error": norm_error if norm_error is None or math.isfinite(norm_error) else None,
            "sum_relative_error": sum_error if math.isfinite(sum_error) else None, "tolerance": tolerance,
            "dtype": _name(dtype), "max_grad_norm": R, "why": why, "samples": k, "seconds": 0.0}
