"""The measurement itself, run in a fresh process (`python -m dpbench.measure`) per configuration.

The process records its resident memory after the imports and before the model is built (the
baseline), writes it to a status file so the parent can guard the memory budget, builds the model,
engine and a fixed synthetic batch, runs warm-up steps, then times full training steps
(forward, engine.backward, engine.add_noise, optimizer.step, zero_grad) with the device synchronised
before every clock read. Peak memory: on CUDA the allocator's peak (reset after warm-up); on CPU the
peak RSS of this process minus the baseline (the peak is reset to the baseline first where Linux allows).
Step memory (`step_memory_bytes`, measured in two untimed steps before the warm-up): the growth of a
step over the memory in use just before it: activations, gradients and the algorithm's buffers, not
the model or optimizer state (see `step_memory_growth`). The overall peak counts from the warm-up on.

With `--verify` (`dpbench bench`), once the result is written, the process checks the algorithm
against brute force (dpbench.verify, on a model built again from the seed: the first step's weights) and
writes the result again with `verified`; it first marks its status file "measured", after which the
parent's memory guard no longer counts its memory against the budget (nothing measured is left to
inflate), and a process stopped during the check keeps its measured result (runner.py).

Launched by torchrun (`dpbench bench --nproc N`), each of the N ranks runs this with its own batch of
`batch_size` examples (N x batch_size per step), the engine sums the gradients over the ranks once per
step (rank 0 adds the noise), the ranks meet at a barrier before each timed step, and each rank writes
its own result file (RESULT.rankR).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

from dpbench.device import select, synchronize
from dpbench.distributed import World, init_world
from dpbench.errors import DpbenchError
from dpbench.measure.config import BenchConfig
from dpbench.measure.memory import (current_rss_bytes, peak_rss_bytes, release_freed_memory_promptly,
                                    reset_peak_rss, restore_malloc_thresholds)

CUDA_METHOD = "cuda_max_memory_allocated"
CPU_METHOD = "cpu_peak_rss_minus_baseline"

# Error texts that mean "the step did not fit in memory" (CUDA, cuDNN, cuBLAS, CPU allocator).
_OOM_MARKERS = (
    "out of memory",
    "CUDNN_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_NOT_SUPPORTED",  # cuDNN's answer to workspaces it cannot allocate
    "CUBLAS_STATUS_ALLOC_FAILED",
    "DefaultCPUAllocator: can't allocate memory",
    "DefaultCPUAllocator: not enough memory",
)


def is_out_of_memory(error: BaseException) -> bool:
    """True if the error is an allocation failure on the device (the probe does not fit)."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(error, RuntimeError) and any(marker in str(error) for marker in _OOM_MARKERS)


def _quantiles(values: list[float]) -> dict:
    ordered = sorted(values)
    if len(ordered) == 1:
        q25 = q75 = ordered[0]
    else:
        q25, _, q75 = statistics.quantiles(ordered, n=4, method="inclusive")
    return {"median": statistics.median(ordered), "q25": q25, "q75": q75}


def build(config: BenchConfig, device: torch.device, world: World | None = None):
    """Model, engine, optimizer and the fixed synthetic batch of one configuration (each rank its own)."""
    from dpbench.clipping import PrivacyEngine

    model, info = build_model(config, device)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    engine = PrivacyEngine(model, algorithm=config.algorithm, max_grad_norm=config.max_grad_norm,
                           noise_multiplier=config.noise_multiplier, generator=generator, world=world)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = synthetic_batch(config, device, world.rank if world else 0)
    return model, engine, optimizer, x, y, info


def build_model(config: BenchConfig, device: torch.device):
    """The configuration's model (seeded: the same weights in every process), in training mode, and
    what the result records about it."""
    from dpbench.clipping import replace_batchnorm
    from dpbench.models import create_model, default_image_size

    dtype = getattr(torch, config.dtype)
    image_size = config.image_size or default_image_size(config.model)
    torch.manual_seed(config.seed)
    model = create_model(config.model, num_classes=config.num_classes, image_size=image_size, in_channels=3)
    has_batchnorm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if has_batchnorm:
        model = replace_batchnorm(model)
    model = model.to(device=device, dtype=dtype).train()
    info = {"batchnorm_replaced": has_batchnorm,
            "parameters": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    return model, info


def synthetic_batch(config: BenchConfig, device: torch.device, rank: int = 0, samples: int | None = None):
    """The fixed synthetic batch (x, y) of one rank, drawn on the CPU; only its first `samples` examples go
    to the device when given (the verification's, without the whole batch on the device)."""
    from dpbench.models import default_image_size

    image_size = config.image_size or default_image_size(config.model)
    data_generator = torch.Generator().manual_seed(config.seed + rank)
    x = torch.randn(config.batch_size, 3, image_size, image_size, generator=data_generator)
    y = torch.randint(0, config.num_classes, (config.batch_size,), generator=data_generator)
    if samples is not None:
        x, y = x[:samples].clone(), y[:samples].clone()
    return x.to(device, getattr(torch, config.dtype)), y.to(device)


def verify(config: BenchConfig) -> dict:
    """The `verified` record of a configuration (dpbench.verify): the algorithm's per-sample norms and
    clipped sum on the first samples of rank 0's batch, with the weights of the first step (the model is
    built again from the seed), against brute force."""
    from dpbench.clipping import ALGORITHMS
    from dpbench.verify import SAMPLES, verify_algorithm

    device = select(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    if config.algorithm in ALGORITHMS and ALGORITHMS[config.algorithm].backend == "opacus":
        import opacus.grad_sample  # noqa: F401  (its import, ~1 s, is not the verification's cost)
    model, _ = build_model(config, device)
    x, y = synthetic_batch(config, device, 0, samples=SAMPLES)
    return verify_algorithm(model, config.algorithm, x, y, samples=SAMPLES)


def verify_after_measuring(config: BenchConfig) -> dict:
    """`verify(config)` in the measuring process once every measured figure is read (the model, engine and
    optimizer of the timed steps are gone): it can neither slow a timed step nor raise a memory figure.
    Never raises: a failure is a skipped record with its reason."""
    from dpbench.verify import skipped

    gc.collect()  # the engine's hooks keep the timed steps' model in reference cycles
    started = time.perf_counter()
    try:
        return verify(config)
    except Exception as error:  # noqa: BLE001 (the measurement stands; the verification did not run)
        line = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        return skipped(f"the verification failed: {line}", seconds=time.perf_counter() - started)


def train_step(model, engine, optimizer, x, y) -> None:
    """One full DP-SGD step as a user runs it."""
    losses = F.cross_entropy(model(x), y, reduction="none")
    engine.backward(losses)
    engine.add_noise()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def measure(config: BenchConfig, status_path: Path | None = None, memory_budget_bytes: int | None = None,
             world: World | None = None) -> dict:
    """Run one configuration in this (fresh) process, one rank of `world`, and return the measured fields
    of the result."""
    world = world or World()
    # a rank works on the GPU of its LOCAL_RANK, made current by init_world
    device = select("cuda" if world.distributed and config.device.startswith("cuda") else config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    if device.type == "cuda":
        if memory_budget_bytes:
            total = torch.cuda.get_device_properties(device).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, memory_budget_bytes / total), device)
    from dpbench.clipping import ALGORITHMS  # imports belong to the baseline, not to the step
    import dpbench.models  # noqa: F401

    if config.algorithm in ALGORITHMS and ALGORITHMS[config.algorithm].backend == "opacus":
        import opacus.grad_sample  # noqa: F401  (the engine imports it lazily: ~100 MiB that is not the step's)

    baseline = current_rss_bytes()
    peak_reset = reset_peak_rss()
    if status_path is not None:
        status_path.write_text(json.dumps({"baseline_rss_bytes": baseline}))
    result = {"oom": False, "error": None, "step_time_s": None, "throughput_img_s": None, "step_cpu_time_s": None,
              "memory_method": CUDA_METHOD if device.type == "cuda" else CPU_METHOD,
              "baseline_memory_bytes": baseline if device.type == "cpu" else None,
              "cpu_peak_reset": peak_reset if device.type == "cpu" else None}
    info = {}
    try:
        model, engine, optimizer, x, y, info = build(config, device, world)
        step_memory = step_memory_growth(device, lambda: train_step(model, engine, optimizer, x, y))
        for _ in range(config.warmup):
            train_step(model, engine, optimizer, x, y)
        synchronize(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times, cpu_times = [], []
        reduced_before = world.bytes_reduced
        for _ in range(config.steps):
            synchronize(device)
            world.barrier()  # every rank starts the step together: the all-reduce waits for the slowest
            start, cpu_start = time.perf_counter(), time.process_time()
            train_step(model, engine, optimizer, x, y)
            synchronize(device)
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    except Exception as error:  # noqa: BLE001 (only memory failures are results; others re-raised)
        if not is_out_of_memory(error):
            raise
        result.update(oom=True, error=str(error).strip().splitlines()[0][:300])
        times = None
    result["peak_memory_bytes"] = _peak(device, baseline)
    result["step_memory_bytes"] = step_memory if times is not None else None
    result.update(info)
    if times is not None:
        result["step_time_s"] = {**_quantiles(times), "min": min(times), "max": max(times), "samples": times}
        result["throughput_img_s"] = _quantiles([world.size * config.batch_size / t for t in times])
        result["allreduce_bytes_per_step"] = (world.bytes_reduced - reduced_before) / config.steps
        # CPU seconds of this process (all threads) per step: on a shared machine, wall ≫ cpu/threads
        # means the run waited for cores that other work held
        result["step_cpu_time_s"] = {**_quantiles(cpu_times), "samples": cpu_times}
    return result


def step_memory_growth(device: torch.device, step) -> int | None:
    """Run two untimed steps and return the peak memory of the second above the memory in use just
    before it (the first settles what a first step allocates once).

    CUDA: the allocator's peak minus what is allocated. CPU: for these two steps glibc serves every
    buffer of 128 KiB or more by its own mmap, unmapped when freed, so that the resident set follows
    the live tensors: peak RSS minus RSS before. Then glibc's usual thresholds are restored (mmap per
    buffer would slow the timed steps) and the warm-up steps refill its heap. None where unsupported."""
    if device.type == "cuda":
        step()
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - before)
    if not release_freed_memory_promptly():
        step()
        step()
        return None
    try:
        step()
        before = current_rss_bytes()
        supported = reset_peak_rss()
        step()
        return max(0, peak_rss_bytes() - before) if supported else None
    finally:
        restore_malloc_thresholds()


def _peak(device: torch.device, baseline: int) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return max(0, peak_rss_bytes() - baseline)


def main(argv: list[str] | None = None) -> int:
    """Entry of the measuring process: read the configuration, write the result file."""
    parser = argparse.ArgumentParser(prog="python -m dpbench.measure")
    parser.add_argument("--config", required=True, help="BenchConfig as JSON")
    parser.add_argument("--result", required=True, type=Path, help="where to write the result JSON")
    parser.add_argument("--status", type=Path, help="where to write the baseline memory once known")
    parser.add_argument("--memory-budget-bytes", type=int, help="cap the CUDA allocator at this size")
    parser.add_argument("--no-environment", action="store_true", help="skip the environment record (probes)")
    parser.add_argument("--verify", action="store_true",
                        help="after the measurement, check the algorithm against brute force (dpbench.verify) "
                             "and add `verified` to the result")
    parser.add_argument("--verify-only", action="store_true",
                        help="check the algorithm against brute force instead of measuring (maxbatch's record)")
    args = parser.parse_args(argv)
    config = BenchConfig.from_dict(json.loads(args.config))
    if args.verify_only:
        return _verify_main(config, args.result)
    world = World()
    try:
        world = init_world(torch.device(config.device).type)
        if world.distributed:
            args.result = args.result.with_name(f"{args.result.name}.rank{world.rank}")
        result = measure(config, args.status if world.is_main else None, args.memory_budget_bytes, world)
    except DpbenchError as error:
        args.result.write_text(json.dumps({"user_error": str(error)}))
        return 2
    except Exception:  # noqa: BLE001 (shown by the parent, which aborts)
        traceback.print_exc()
        return 1
    finally:
        world.close()
    result["world"] = world.describe()
    if not args.no_environment:
        from dpbench.results import environment

        result["environment"] = environment(config.device, config.dtype, config.seed)
    _write_atomic(args.result, result)
    if args.verify and world.is_main:
        if args.status is not None:
            _write_atomic(args.status, {**_read_json(args.status), "measured": True})
        result["verified"] = verify_after_measuring(config)
        _write_atomic(args.result, result)
    return 0


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_atomic(path: Path, obj: dict) -> None:
    """Write JSON through a temporary file and a rename: the parent never reads half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj))
    tmp.replace(path)


def _verify_main(config: BenchConfig, result_path: Path) -> int:
    """`--verify-only`: write {"verified": record} (a DpbenchError building the model: {"user_error": ...})."""
    try:
        verified = verify(config)
    except DpbenchError as error:
        result_path.write_text(json.dumps({"user_error": str(error)}))
        return 2
    except Exception:  # noqa: BLE001 (the parent records the verification as skipped with the last line)
        traceback.print_exc()
        return 1
    result_path.write_text(json.dumps({"verified": verified}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
