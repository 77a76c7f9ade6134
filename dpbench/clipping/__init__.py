"""Exact per-sample gradient clipping for DP-SGD: the engine, the algorithm registry, helpers."""

from dpbench.clipping.algorithms import ALGORITHMS, Algorithm
from dpbench.clipping.batchnorm import replace_batchnorm
from dpbench.clipping.decision import mixed_choice
from dpbench.clipping.engine import PrivacyEngine
from dpbench.clipping.recurrent import (DPGRU, DPLSTM, DPRNN, DPGRUCell, DPLSTMCell, DPRNNCell, refuse_recurrent,
                                        replace_recurrent)

__all__ = ["ALGORITHMS", "Algorithm", "DPGRU", "DPGRUCell", "DPLSTM", "DPLSTMCell", "DPRNN", "DPRNNCell",
           "PrivacyEngine", "mixed_choice", "refuse_recurrent", "replace_batchnorm", "replace_recurrent"]
