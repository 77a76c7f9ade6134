"""dpbench: exact per-sample gradient clipping for DP-SGD, and a benchmark suite around it."""

__version__ = "0.1.0"
