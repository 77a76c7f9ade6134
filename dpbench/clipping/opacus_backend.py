"""The real Opacus 1.6 library behind dpbench's engine contract, as an external baseline:
`opacus` = GradSampleModule hooks (per-sample gradients of every layer), `opacus_ghost` = Opacus'
fast-gradient/ghost clipping module with its two backward passes. Clip factors follow Opacus'
own formula min(1, R/(‖gᵢ‖ + 1e-6)).

Opacus never gets to invent a gradient here: a trainable parameter that autograd reaches but for which
Opacus produced no per-sample gradient (a weight used through `F.linear` outside its module, as timm's
BEiT attention does) is refused with its name, and so is a trainable layer Opacus cannot hook (one
with buffers). A parameter the forward did not use at all has a true per-sample gradient of zero."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from dpbench.errors import DpbenchError

_INPLACE_HINTS = ("BackwardHookFunction", "modified inplace", "modified by an inplace")
_HINT = "freeze it (dpbench train --freeze), or use one of dpbench's own algorithms (e.g. mixed_ghost)"


def _unsupported_layer(model: nn.Module) -> DpbenchError:
    """The error for Opacus' refusal of a trainable layer with buffers, naming the first such module."""
    from opacus.grad_sample import GradSampleModule

    for name, module in model.named_modules():
        own = [n for n, p in module.named_parameters(recurse=False) if p.requires_grad]
        # Opacus hooks such a module through torch.func, which refuses buffers anywhere inside it
        if own and list(module.buffers()) and type(module) not in GradSampleModule.GRAD_SAMPLERS:
            listed = ", ".join(f"{name}.{n}" if name else n for n in own)
            hint = _HINT.replace("freeze it", "freeze them")
            return DpbenchError(f"Opacus cannot compute per-sample gradients of module '{name or type(model).__name__}' "
                                f"({type(module).__name__}: a trainable layer with buffers inside) for {listed}: {hint}")
    return DpbenchError(f"Opacus cannot hook this model (a trainable layer with buffers): {_HINT}")


class OpacusBackend:
    """Wraps a model with Opacus' per-sample machinery in hooks or ghost mode."""

    def __init__(self, model: nn.Module, mode: str, max_grad_norm: float):
        from opacus.grad_sample import GradSampleModule, GradSampleModuleFastGradientClipping

        self.model, self.mode, self.max_grad_norm = model, mode, max_grad_norm
        self.names = {id(p): n for n, p in model.named_parameters()}
        self.params = [p for p in model.parameters() if p.requires_grad]
        try:
            if mode == "hooks":
                self.gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum", strict=False)
            else:
                self.gsm = GradSampleModuleFastGradientClipping(
                    model, batch_first=True, loss_reduction="sum", strict=False,
                    max_grad_norm=max_grad_norm, use_ghost_clipping=True)
        except NotImplementedError as err:
            if "buffers" in str(err):
                raise _unsupported_layer(model) from err
            raise
        self.layer_report: list[dict] = []
        self._forwards = 0  # top-level forwards since the last backward
        self._instance_forward = model.__dict__.get("forward")
        self._forward = model.forward
        model.forward = self._explained_forward

    def _explained_forward(self, *args, **kwargs):
        if torch.is_grad_enabled():
            self._forwards += 1
            if self._forwards > 1:
                raise DpbenchError("the opacus baselines take one forward of the model per backward (Opacus pairs "
                                   "each layer's stored activations with one backward); for several forwards or "
                                   "views per sample use one of dpbench's own algorithms (e.g. mixed_ghost)")
        try:
            return self._forward(*args, **kwargs)
        except RuntimeError as err:
            if any(h in str(err) for h in _INPLACE_HINTS):
                raise DpbenchError(
                    "Opacus cannot run this model: it modifies a hooked layer's output in place "
                    "(ReLU(inplace=True) or `out += identity`); use inplace=False and out-of-place adds, "
                    "or one of dpbench's own algorithms, which handle in-place models") from err
            raise

    def reset(self) -> None:
        """Forget the forward recorded since the last backward."""
        self._forwards = 0
        for module in self.model.modules():
            if hasattr(module, "activations"):
                module.activations = []

    def backward(self, losses: torch.Tensor) -> torch.Tensor:
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                return self._backward(losses)
        finally:
            self._forwards = 0

    def _backward(self, losses: torch.Tensor) -> torch.Tensor:
        saved = [p.grad for p in self.params]
        for p in self.params:
            p.grad = None
        if self.mode == "hooks":
            norms = self._hooks_backward(losses)
        else:
            norms = self._ghost_backward(losses)
        for p, old in zip(self.params, saved):
            if old is not None:
                p.grad = old.add_(p.grad) if p.grad is not None else old
        return norms

    def _missing(self, p: torch.Tensor) -> DpbenchError:
        return DpbenchError(f"Opacus produced no per-sample gradient for trainable parameter "
                            f"'{self.names[id(p)]}' (used outside its module's forward, e.g. through F.linear); "
                            f"dpbench does not invent one: {_HINT}")

    def _hooks_backward(self, losses):
        losses.sum().backward()
        samples = []
        for p in self.params:
            gs = getattr(p, "grad_sample", None)
            if gs is None:
                if p.grad is not None:  # autograd reached it, Opacus did not
                    raise self._missing(p)
                gs = torch.zeros(losses.shape[0], *p.shape, dtype=p.dtype, device=p.device)  # unused: truly 0
            samples.append(gs)
        norms = torch.stack([gs.reshape(gs.shape[0], -1).norm(2, dim=1) for gs in samples]).norm(2, dim=0)
        coef = (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
        for p, gs in zip(self.params, samples):
            p.grad = torch.einsum("i,i...->...", coef.to(gs.dtype), gs)
            p.grad_sample = None
        return norms

    def _ghost_backward(self, losses):
        for p in self.params:
            p._norm_sample = None  # no stale norm of an earlier batch
        losses.sum().backward(retain_graph=True)
        for p in self.params:
            if p._norm_sample is None:
                if p.grad is not None:
                    raise self._missing(p)
                p._norm_sample = torch.zeros(losses.shape[0], dtype=losses.dtype, device=losses.device)
            p.grad = None
        coef = self.gsm.get_clipping_coef()
        norms = self.gsm.per_sample_gradient_norms
        self.gsm.disable_hooks()
        try:
            (coef.to(losses.dtype) * losses).sum().backward()
        finally:
            self.gsm.enable_hooks()
        return norms

    def detach(self) -> None:
        if self._instance_forward is None:
            del self.model.forward  # back to the class's forward
        else:
            self.model.forward = self._instance_forward
        self.gsm._close()
