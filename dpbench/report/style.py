"""One display name and one colour per algorithm of dpbench.clipping.ALGORITHMS (a test checks that
both cover exactly the registry), used by every table and figure."""

from __future__ import annotations

from dpbench.clipping.algorithms import ALGORITHMS

# Paper order: the DP algorithms of the registry (from the oldest to the newest), non-private last.
ALGORITHM_ORDER = [*(name for name in ALGORITHMS if name != "nonprivate"), "nonprivate"]

ALGORITHM_LABELS = {
    "nonprivate": "Non-private",
    "opacus": "Opacus",
    "opacus_ghost": "Opacus ghost",
    "per_sample": "Per-sample",
    "fastgradclip": "FastGradClip",
    "ghost": "Ghost",
    "mixed_ghost": "Mixed ghost",
    "bk_ghost": "BK ghost",
    "bk_mixed": "BK mixed",
}

# Colour-blind-safe colours (seaborn "colorblind" palette order), fixed per algorithm.
ALGORITHM_COLOURS = {
    "opacus": "#0173b2",
    "opacus_ghost": "#56b4e9",
    "per_sample": "#949494",
    "fastgradclip": "#de8f05",
    "ghost": "#cc78bc",
    "mixed_ghost": "#029e73",
    "bk_ghost": "#fbafe4",
    "bk_mixed": "#d55e00",
    "nonprivate": "#000000",
}

CHOICE_COLOURS = {"ghost": "#029e73", "instantiate": "#de8f05"}


def algorithm_label(name: str) -> str:
    """The display name of an algorithm (the name itself if unknown)."""
    return ALGORITHM_LABELS.get(name, name)


def algorithm_rank(name: str) -> int:
    """Sort key: the paper order, unknown names last."""
    return ALGORITHM_ORDER.index(name) if name in ALGORITHM_ORDER else len(ALGORITHM_ORDER)


def ordered_algorithms(names) -> list[str]:
    """The distinct names in the paper order."""
    return sorted(set(names), key=lambda n: (algorithm_rank(n), n))


def palette(names) -> dict[str, str]:
    """Display label -> colour for the given algorithm names (for seaborn's palette=)."""
    return {algorithm_label(n): ALGORITHM_COLOURS.get(n, "#7f7f7f") for n in names}
