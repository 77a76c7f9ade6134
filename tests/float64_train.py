"""`dpbench train` in float64, for tests that compare runs whose float32 results differ by reduction order
alone (2 ranks each sum their share of a logical batch, then the shares are summed; one process sums its
physical batches: the same terms grouped otherwise). In float32 at lr 2 those roundings grow to ~1e-3
relative after 8 steps, depending on the CPU's vector width; in float64 they stay below ~1e-11, so a tight
tolerance still tells them from a real difference.

`with float64(): train(config)` in a test; `python tests/float64_train.py ARGS` runs `dpbench train ARGS`
(under torchrun: one rank) the same way."""

from __future__ import annotations

import contextlib
import dataclasses
import sys

import torch
from torch.utils.data import TensorDataset

import dpbench.train


def _float64(dataset):
    if dataset is None:
        return None
    assert isinstance(dataset, TensorDataset), type(dataset)  # the in-memory sets of the small runs tested
    return TensorDataset(*(t.double() if t.is_floating_point() else t for t in dataset.tensors))


@contextlib.contextmanager
def float64():
    """Inside: models are built in float64 (torch's default dtype) and the run's data is cast to float64."""
    load, dtype = dpbench.train.load_training_data, torch.get_default_dtype()

    def load_float64(config):
        data = load(config)
        return dataclasses.replace(data, train=_float64(data.train), validation=_float64(data.validation),
                                   test=_float64(data.test))

    dpbench.train.load_training_data = load_float64
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(dtype)
        dpbench.train.load_training_data = load


if __name__ == "__main__":
    from dpbench.cli import main

    with float64():
        code = main(["train", *sys.argv[1:]])
    sys.exit(code)
