"""PrivacyEngine: one contract for every clipping algorithm.

    engine = PrivacyEngine(model, algorithm="mixed_ghost", max_grad_norm=R, noise_multiplier=σ)
    engine.backward(F.cross_entropy(model(x), y, reduction="none"))  # ADDS Σᵢ min(1, R/‖gᵢ‖)·gᵢ to p.grad
    engine.add_noise()   # once per logical batch: N(0, σ²R²) on every trainable p.grad
    engine.detach()

Over W ranks (`world=`, see dpbench.distributed) each rank's backward adds the clipped sum of ITS samples
(per-sample norms are local, so this is exact and needs no communication); add_noise then lets rank 0
alone draw the noise and sums the gradients over the ranks in one all-reduce.
"""

from __future__ import annotations

import torch
from torch import nn

from dpbench.clipping.algorithms import ALGORITHMS
from dpbench.clipping.batchnorm import refuse_batchnorm
from dpbench.clipping.graph import reachable_leaves
from dpbench.clipping.recurrent import refuse_recurrent
from dpbench.distributed import World
from dpbench.errors import DpbenchError


def _shared_parameters(model: nn.Module) -> None:
    """Refuse a parameter registered in two modules neither of which contains the other (tied weights),
    naming both. A module used in several places, or a parameter registered again under another name
    in the same module or in an enclosing one (Opacus' DPLSTM does), is one parameter."""
    owners: dict[int, tuple[str, nn.Module]] = {}
    for mname, module in model.named_modules(remove_duplicate=False):
        for pname, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            full = f"{mname}.{pname}" if mname else pname
            if id(p) in owners:
                first, owner = owners[id(p)]
                if not (owner is module or any(m is module for m in owner.modules())
                        or any(m is owner for m in module.modules())):
                    raise DpbenchError(f"parameter '{full}' is the same tensor as '{first}' (tied weights across "
                                       "modules): per-sample clipping of shared weights is not supported; "
                                       "untie them")
            owners.setdefault(id(p), (full, module))


def _parameter_names(model: nn.Module) -> dict[int, str]:
    return {id(p): n for n, p in model.named_parameters()}


class PrivacyEngine:
    """Per-sample clipping and noise for a model, with the algorithm chosen by name."""

    def __init__(self, model: nn.Module, algorithm: str = "mixed_ghost", max_grad_norm: float = 1.0,
                 noise_multiplier: float = 0.0, generator: torch.Generator | None = None, world: World | None = None):
        if algorithm not in ALGORITHMS:
            raise DpbenchError(f"unknown algorithm '{algorithm}'; choose one of: {', '.join(ALGORITHMS)}")
        if not max_grad_norm > 0:
            raise DpbenchError(f"max_grad_norm must be > 0, got {max_grad_norm}")
        if not noise_multiplier >= 0:
            raise DpbenchError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
        self.model = model
        self.closed = False  # detach() closes the engine for good
        self.algorithm = ALGORITHMS[algorithm]
        self.max_grad_norm = float(max_grad_norm)
        self.noise_multiplier = float(noise_multiplier)
        self.generator = generator
        self.world = world or World()
        self.parameters = list({id(p): p for p in model.parameters() if p.requires_grad}.values())
        # requires_grad=False (dpbench.finetune.freeze_parameters): no gradient, no noise, no per-sample work
        self.frozen_parameters = [n for n, p in model.named_parameters() if not p.requires_grad]
        self.per_sample_norms: torch.Tensor | None = None
        # per layer of the last backward: name, type, rule, T, d, p, groups, calls, choice, params, frozen
        self.layer_report: list[dict] = []
        if self.algorithm.backend != "plain":
            refuse_batchnorm(model)
            refuse_recurrent(model)
            _shared_parameters(model)
        if self.algorithm.backend == "own":
            from dpbench.clipping.own import OwnBackend
            self._backend = OwnBackend(model, self.algorithm, self.max_grad_norm)
        elif self.algorithm.backend == "opacus":
            from dpbench.clipping.opacus_backend import OpacusBackend
            self._backend = OpacusBackend(model, self.algorithm.norms, self.max_grad_norm)
        else:
            self._backend = None

    def backward(self, losses: torch.Tensor) -> None:
        """Add the clipped sum of per-sample gradients of `losses` (shape [B]) to every p.grad. Every
        forward of the model since the last backward joins this step (several views of each sample, as
        augmentation multiplicity uses, give the per-sample gradient of the combined loss); an empty
        batch adds nothing."""
        self._open()
        if not isinstance(losses, torch.Tensor) or losses.dim() != 1:
            shape = tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__
            raise DpbenchError(f"backward needs per-sample losses of shape [B] (use reduction='none'), "
                               f"got {shape}")
        if losses.shape[0] == 0:  # an empty Poisson batch: no sample, no gradient; add_noise still works
            self._forget_forwards()
            self.per_sample_norms = losses.detach().new_zeros(0) if self.algorithm.backend != "plain" else None
            return
        if not losses.requires_grad:
            raise DpbenchError("the losses do not require grad: compute them from the model's output "
                               "with gradients enabled")
        try:
            reached = self._reached_parameters(losses) if self.algorithm.backend != "plain" else []
        except DpbenchError:
            self._forget_forwards()
            raise
        if self._backend is None:
            losses.backward(torch.ones_like(losses))
            self.per_sample_norms = None
        elif self.algorithm.backend == "own":
            self.per_sample_norms = self._backend.backward(losses, reached).detach()
            self.layer_report = self._backend.layer_report
        else:
            self.per_sample_norms = self._backend.backward(losses).detach()
            self.layer_report = self._backend.layer_report

    def _open(self) -> None:
        if self.closed:
            raise DpbenchError("this PrivacyEngine was detached: its hooks are gone, so it can neither clip nor "
                               "noise; build a new PrivacyEngine for the model")

    def _forget_forwards(self) -> None:
        if self._backend is not None:
            self._backend.reset()

    def _reached_parameters(self, losses: torch.Tensor) -> list[tuple[torch.Tensor, int]]:
        """The engine's parameters that the losses' graph reaches, with their uses there (graph.py),
        after checking that the
        trainable parameters are the ones the engine was built with: one frozen, unfrozen or added
        since, or a parameter outside the model that the losses depend on, is named and refused."""
        names = _parameter_names(self.model)
        mine = {id(p) for p in self.parameters}
        frozen = [p for p in self.parameters if not p.requires_grad]
        if frozen:
            raise DpbenchError(f"parameter '{names.get(id(frozen[0]), tuple(frozen[0].shape))}' was frozen after the "
                               "PrivacyEngine was built; build the engine after the model's final requires_grad "
                               "settings (engine.detach(), then a new PrivacyEngine)")
        added = [n for n, p in self.model.named_parameters() if p.requires_grad and id(p) not in mine]
        if added:
            raise DpbenchError(f"parameter '{added[0]}' became trainable (unfrozen or added) after the PrivacyEngine "
                               "was built, so its gradient would be neither clipped nor noised; build the engine "
                               "after the model's final requires_grad settings (engine.detach(), then a new "
                               "PrivacyEngine)")
        reached = []
        for leaf, edges in reachable_leaves(losses):
            if id(leaf) in mine:
                reached.append((leaf, edges))
            elif isinstance(leaf, nn.Parameter):
                raise DpbenchError(f"the losses depend on a trainable parameter of shape {tuple(leaf.shape)} that is "
                                   "not the model's, so dpbench cannot clip its per-sample gradient; make it a "
                                   "parameter of the model, or detach it in the loss")
        return reached

    def set_branch_timer(self, timer) -> None:
        """Time the norm branches layer by layer: after each layer with a ghost norm has its norms, and
        before its inputs and output gradients are released, `timer(rule, calls)` runs and the dict it
        returns joins the layer's `layer_report` row (dpbench.measure.branches). None removes it. The
        dpbench algorithms only (their rules hold the inputs); a DpbenchError for the others."""
        from dpbench.clipping.own import OwnBackend

        if not isinstance(self._backend, OwnBackend):
            raise DpbenchError(f"per-layer branch timing needs one of dpbench's own algorithms, not "
                               f"'{self.algorithm.name}'")
        self._backend.branch_timer = timer

    def add_noise(self) -> None:
        """End of a logical batch: add N(0, σ²R²) to every trainable parameter's gradient (creating zero
        gradients if absent). Over W ranks only rank 0 draws it, then one all-reduce sums the gradients,
        so every rank holds the clipped sum of the whole logical batch plus ONE draw, the same draw as a
        single process with the same generator. `nonprivate` (plain training, the speed and memory
        reference) adds no noise; over W ranks its gradients are summed."""
        self._open()
        if self.algorithm.backend == "plain":
            if self.world.distributed:
                self.world.all_reduce_sum(self._gradients())
            return
        std = self.noise_multiplier * self.max_grad_norm
        grads = self._gradients()
        if std > 0 and self._draws_noise():
            for p, grad in zip(self.parameters, grads):
                if self.generator is not None and self.generator.device.type != p.device.type:
                    raise DpbenchError(f"the noise generator is on {self.generator.device} but parameters are "
                                       f"on {p.device}: pass a generator on the parameters' device")
                # drawn in place into a fresh buffer, as fast as torch.normal on CPU (paper/engine_timings.md);
                # noise is inherent to every private step
                grad.add_(torch.empty_like(grad).normal_(0.0, std, generator=self.generator))
        self.world.all_reduce_sum(grads)

    def _draws_noise(self) -> bool:
        """Whether this process draws the noise of a logical batch: the only one, or rank 0 of W."""
        return self.world.is_main

    def _gradients(self) -> list[torch.Tensor]:
        """Every trainable parameter's gradient, zeros where none was formed (a rank without samples
        still takes part in the all-reduce)."""
        for p in self.parameters:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        return [p.grad for p in self.parameters]

    def detach(self) -> None:
        """Remove every hook: the model is plain again, and the engine is closed (backward and
        add_noise refuse from now on)."""
        if self._backend is not None:
            self._backend.detach()
            self._backend = None
        self.closed = True
