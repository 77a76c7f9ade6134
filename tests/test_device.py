"""dpbench.device: one check of a device name, resolution (`auto`, the CUDA index) and synchronisation."""

from __future__ import annotations

import pytest
import torch

from dpbench import device
from dpbench.errors import DpbenchError


@pytest.mark.parametrize("name,message", [("tpu", "unknown device 'tpu'"), ("mps", "unsupported device 'mps'"),
                                          ("cuda:99", "cuda:99")])
def test_a_bad_device_is_one_clear_error(name, message):
    if name == "cuda:99" and not torch.cuda.is_available():
        message = "CUDA is not available"
    with pytest.raises(DpbenchError, match=message):
        device.check(name)


def test_auto_and_cpu():
    assert device.resolve("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert device.resolve("cpu") == device.select("cpu") == torch.device("cpu")
    with pytest.raises(DpbenchError):
        device.check("auto")  # `auto` is training's choice only
    device.synchronize(torch.device("cpu"))  # nothing queued on a CPU


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_select_names_the_cuda_device_and_makes_it_current():
    selected = device.select("cuda")
    assert selected.index == torch.cuda.current_device()
    device.synchronize(selected)
