"""The device a command runs on: a name checked once (cpu, cuda, cuda:N; `auto` where training accepts
it), resolved to a torch.device, and synchronised before a clock or a memory counter is read."""

from __future__ import annotations

import torch

from dpbench.errors import DpbenchError


def check(name: str) -> torch.device:
    """The device called `name` (cpu, cuda or cuda:N that exists here); a DpbenchError naming it otherwise."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise DpbenchError(f"unknown device {name!r} (expected cpu, cuda or cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise DpbenchError(f"unsupported device {name!r} (expected cpu, cuda or cuda:N)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DpbenchError(f"device {name!r} requested but CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DpbenchError(f"device {name!r} does not exist ({torch.cuda.device_count()} CUDA devices)")
    return device


def resolve(name: str) -> torch.device:
    """`auto` = cuda if available, else cpu; any other name as `check` takes it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return check(name)


def select(name: str) -> torch.device:
    """The device a measuring process works on: on CUDA with its index (the current device for plain
    `cuda`), made the current device."""
    device = check(name)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    return device


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing to wait for on a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
