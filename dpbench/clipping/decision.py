"""The mixed ghost clipping rule (Bu, Mao, Xu 2022), per layer and per input shape.

A layer computes, per sample and per group g, a gradient G_gᵀA_g with A_g ∈ R^{T×d} (inputs) and
G_g ∈ R^{T×p} (output gradients); d and p are per group (d = C_in/groups·k…, p = C_out/groups).
Ghost norm costs two T×T Gram matrices per group (space 2T²); instantiation costs the p×d gradient.
"""

from __future__ import annotations

GHOST = "ghost"
INSTANTIATE = "instantiate"


def ghost_space(T: int, groups: int = 1) -> int:
    """Elements per sample of the ghost norm's Gram matrices: 2T² per group."""
    return 2 * T * T * groups


def instantiate_space(d: int, p: int, groups: int = 1) -> int:
    """Elements per sample of the instantiated weight gradient: p·d per group."""
    return p * d * groups


def mixed_choice(T: int, d: int, p: int, groups: int = 1) -> str:
    """The paper's rule: ghost iff 2T² ≤ p·d (per group), else instantiate."""
    return GHOST if ghost_space(T, groups) <= instantiate_space(d, p, groups) else INSTANTIATE
