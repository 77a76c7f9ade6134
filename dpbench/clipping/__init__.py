"""Exact per-sample gradient clipping for DP-SGD: the engine, the algorithm registry, helpers."""

from dpbench.clipping.algorithms import ALGORITHMS, Algorithm
from dpbench.clipping.batchnorm import replace_batchnorm
from dpbench.clipping.decision import mixed_choice
from dpbench.clipping.engine import PrivacyEngine

__all__ = ["ALGORITHMS", "Algorithm", "PrivacyEngine", "mixed_choice", "replace_batchnorm"]
