"""Both norm branches timed per layer: which of ghost norm and instantiation is faster, next to the
paper's space rule (ghost iff 2T² ≤ p·d) that `mixed_ghost` follows.

One forward and engine backward of a model under `mixed_ghost`; for every layer that has a ghost norm,
the engine hands its recorded inputs and output gradients to a timer that runs each branch `repeats`
times on the whole batch (best time kept; the device synchronised around each run).
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from dpbench.clipping.decision import GHOST, INSTANTIATE
from dpbench.clipping.layers.base import squared_norms
from dpbench.device import synchronize


def best_time(fn, repeats: int, device: torch.device, clock=time.perf_counter) -> float:
    """The shortest of `repeats` runs of `fn` in seconds of `clock`, the device synchronised around each."""
    best = math.inf
    for _ in range(repeats):
        synchronize(device)
        start = clock()
        fn()
        synchronize(device)
        best = min(best, clock() - start)
    return best


def branch_times(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int = 3) -> list[dict]:
    """Per layer with a ghost norm: name, T, d, p, groups, the space rule's choice, the seconds of each
    branch, the faster branch and whether the two rules agree (the model is left without hooks)."""
    from dpbench.clipping import PrivacyEngine

    engine = PrivacyEngine(model, algorithm="mixed_ghost", max_grad_norm=1.0)

    def timer(rule, calls) -> dict:
        ghost = best_time(lambda: rule.ghost_norm_sq(calls), repeats, x.device)
        inst = best_time(lambda: squared_norms(rule.instantiate(calls)), repeats, x.device)
        return {"ghost_s": ghost, "instantiate_s": inst}

    engine.set_branch_timer(timer)
    try:
        engine.backward(F.cross_entropy(model(x), y, reduction="none"))
    finally:
        engine.detach()
        model.zero_grad(set_to_none=True)
    rows = []
    for layer in engine.layer_report:
        if "ghost_s" not in layer:
            continue
        faster = GHOST if layer["ghost_s"] <= layer["instantiate_s"] else INSTANTIATE
        rows.append({k: layer[k] for k in ("name", "type", "T", "d", "p", "groups")}
                    | {"space_rule": layer["choice"], "ghost_s": layer["ghost_s"],
                       "instantiate_s": layer["instantiate_s"], "faster": faster,
                       "rules_agree": faster == layer["choice"]})
    return rows
