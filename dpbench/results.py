"""Environment records and atomic result files shared by every command that writes results."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch


def git_commit() -> str | None:
    """The commit of the checkout dpbench runs from, with '-dirty' if it has local changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("-dirty" if dirty else "")


def device_name(device: str | torch.device) -> str:
    """A human-readable name of the device: the GPU model on CUDA, the processor on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def environment(device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None,
                seed: int | None = None) -> dict[str, Any]:
    """Everything a result needs to be reproduced: versions, commit, device, dtype, seed."""
    import dpbench

    try:  # the installed distribution's version: importing opacus would cost seconds
        opacus_version = importlib.metadata.version("opacus")
    except importlib.metadata.PackageNotFoundError:  # opacus is optional on some GPU nodes
        opacus_version = None
    return {
        "dpbench": dpbench.__version__,
        "torch": torch.__version__,
        "opacus": opacus_version,
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "device": str(device),
        "device_name": device_name(device),
        "cuda": torch.version.cuda,
        "threads": torch.get_num_threads(),
        "dtype": str(dtype).replace("torch.", "") if dtype is not None else None,
        "seed": seed,
        "hostname": platform.node(),
    }


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write text to path through a temporary file in the same directory, then rename; the file gets
    the usual permissions (0666 less the umask), not mkstemp's private 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write obj as indented JSON to path atomically (see write_text_atomic)."""
    return write_text_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")
