"""Process memory on CPU (resident set size and its peak) and memory sizes written by people."""

from __future__ import annotations

import ctypes
import re
import resource
import sys
from pathlib import Path

_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3, "t": 1000**4, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")
_STATUS = Path("/proc/self/status")


def parse_memory_size(text: str) -> int:
    """Bytes in a size such as '8GiB', '512MiB', '2GB', '1.5G' or '1048576'; ValueError if malformed.

    Binary units (KiB, MiB, GiB, TiB) are powers of 1024; decimal ones (kB, MB, GB, TB, or k, M, G, T)
    powers of 1000, as in the SI and IEC conventions.
    """
    match = _SIZE.match(str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(f"not a memory size: {text!r} (expected e.g. 8GiB, 512MiB, 2GB or plain bytes)")
    value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise ValueError(f"memory size must be positive: {text!r}")
    return value


def format_bytes(n: int | None) -> str:
    """A short human-readable size (binary units)."""
    if n is None:
        return "n/a"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _status_kib(field: str) -> int | None:
    try:
        text = _STATUS.read_text()
    except OSError:
        return None
    match = re.search(rf"^{field}:\s+(\d+)\s*kB", text, re.MULTILINE)
    return int(match.group(1)) if match else None


def current_rss_bytes() -> int:
    """Resident set size of this process now."""
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    import psutil
    return psutil.Process().memory_info().rss


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS to its current RSS (Linux ≥ 4.0: clear_refs 5); False if unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_bytes() -> int:
    """Peak resident set size of this process since start or since the last reset_peak_rss()."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024  # macOS reports bytes, Linux KiB


def total_memory_bytes(device: str) -> int:
    """The memory of the device: the GPU's total memory on CUDA, the machine's RAM on CPU."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    import psutil
    return psutil.virtual_memory().total


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)
MMAP_THRESHOLD_BYTES = 128 * 1024
# after a memory measurement: glibc's adaptive mmap threshold ends at 32 MiB on 64-bit systems
# (DEFAULT_MMAP_THRESHOLD_MAX); a large trim threshold keeps the freed heap mapped between steps (a
# lower one re-faults pages every step, which slows the timed steps: paper/engine_timings.md)
RESTORED_MMAP_THRESHOLD_BYTES = 32 * 1024**2
RESTORED_TRIM_THRESHOLD_BYTES = 1024**3


def release_freed_memory_promptly() -> bool:
    """glibc only: from now on serve buffers of 128 KiB or more by their own mmap, unmapped when freed
    (a fixed threshold also stops glibc raising it adaptively), and give free heap memory back to the
    system now; afterwards RSS follows live allocations. False where this is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) and libc.mallopt(M_TRIM_THRESHOLD, MMAP_THRESHOLD_BYTES)
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return bool(ok)


def restore_malloc_thresholds() -> None:
    """Undo `release_freed_memory_promptly`: thresholds under which steps run as fast as by default."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(M_MMAP_THRESHOLD, RESTORED_MMAP_THRESHOLD_BYTES)
        libc.mallopt(M_TRIM_THRESHOLD, RESTORED_TRIM_THRESHOLD_BYTES)
    except (OSError, AttributeError):
        pass
