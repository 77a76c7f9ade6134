"""Where the time of one DP-SGD training step goes: `torch.profiler` over a step split into regions.

The step is the harness's `train_step` (dpbench.measure.child) cut into four `record_function`
regions: "forward" (model and per-sample losses), "engine.backward", "engine.add_noise" and
"optimizer.step" (the update and zero_grad). Warm-up steps run first, unprofiled. Runs in the calling
process: profiling needs no fresh process, its times include the profiler's own overhead.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile, record_function

from dpbench.device import select, synchronize
from dpbench.measure.child import build, train_step
from dpbench.measure.config import BenchConfig

REGIONS = ("forward", "engine.backward", "engine.add_noise", "optimizer.step")
US_PER_MS = 1000.0


def profiled_step(model, engine, optimizer, x, y) -> None:
    """`train_step` with each of its four parts inside a profiler region (same operations, same order)."""
    with record_function("forward"):
        losses = F.cross_entropy(model(x), y, reduction="none")
    with record_function("engine.backward"):
        engine.backward(losses)
    with record_function("engine.add_noise"):
        engine.add_noise()
    with record_function("optimizer.step"):
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def profile_step(config: BenchConfig, rows: int = 12) -> dict:
    """Profile `config.steps` training steps after `config.warmup` warm-up steps; the measured fields
    of the `kind: profile` result, every time in milliseconds per step."""
    if config.threads:
        torch.set_num_threads(config.threads)
    device = select(config.device)
    model, engine, optimizer, x, y, info = build(config, device)
    for _ in range(config.warmup):
        train_step(model, engine, optimizer, x, y)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    synchronize(device)
    with profile(activities=activities) as profiler:
        start = time.perf_counter()
        for _ in range(config.steps):
            profiled_step(model, engine, optimizer, x, y)
        synchronize(device)
        wall = time.perf_counter() - start
    engine.detach()
    return {**summarise(profiler.key_averages(), config.steps, rows, device.type == "cuda"),
            "step_wall_ms": wall * US_PER_MS / config.steps, **info}


def summarise(events, steps: int, rows: int, cuda: bool) -> dict:
    """Regions, the total self CPU time and the top operators of the profiler's key averages, per step."""
    cpu_events = [e for e in events if e.device_type == torch.autograd.DeviceType.CPU]
    regions = {e.key: e for e in cpu_events if e.key in REGIONS}
    ops = [e for e in cpu_events if not e.is_user_annotation]
    self_cpu_total = sum(e.self_cpu_time_total for e in cpu_events)
    result = {
        "regions": {name: regions[name].cpu_time_total / US_PER_MS / steps for name in REGIONS if name in regions},
        "self_cpu_total_ms": self_cpu_total / US_PER_MS / steps,
        "top_ops": [_op_row(e, steps, self_cpu_total) for e in
                    sorted(ops, key=lambda e: e.self_cpu_time_total, reverse=True)[:rows]],
    }
    if cuda:
        result["regions_device_ms"] = {name: regions[name].device_time_total / US_PER_MS / steps
                                       for name in REGIONS if name in regions}
        self_device_total = sum(e.self_device_time_total for e in ops)
        result["self_device_total_ms"] = self_device_total / US_PER_MS / steps
        result["top_cuda_ops"] = [
            {"name": e.key, "self_device_ms": e.self_device_time_total / US_PER_MS / steps,
             "device_total_ms": e.device_time_total / US_PER_MS / steps, "calls": _per_step(e.count, steps),
             "self_device_share": e.self_device_time_total / self_device_total if self_device_total else 0.0}
            for e in sorted(ops, key=lambda e: e.self_device_time_total, reverse=True)[:rows]
            if e.self_device_time_total > 0]
    return result


def _per_step(count: int, steps: int) -> int | float:
    """Calls per profiled step: an integer when every step made the same number of calls."""
    return count // steps if count % steps == 0 else count / steps


def _op_row(event, steps: int, self_cpu_total: float) -> dict:
    return {"name": event.key, "self_cpu_ms": event.self_cpu_time_total / US_PER_MS / steps,
            "cpu_total_ms": event.cpu_time_total / US_PER_MS / steps, "calls": _per_step(event.count, steps),
            "self_cpu_share": event.self_cpu_time_total / self_cpu_total if self_cpu_total else 0.0}


def summary_table(result: dict) -> str:
    """A short human-readable view of a profile result: the regions, then the top operators."""
    c = result["config"]
    lines = [f"{c['algorithm']} {c['model']} batch {c['batch_size']} {c['image_size']}² {c['device']}: "
             f"{result['step_wall_ms']:.1f} ms/step under the profiler",
             f"{'region':<20}{'ms':>10}"]
    lines += [f"{name:<20}{ms:>10.2f}" for name, ms in result["regions"].items()]
    lines.append(f"{'operator (self CPU)':<44}{'ms':>10}{'share':>8}{'calls':>7}")
    lines += [f"{op['name'][:43]:<44}{op['self_cpu_ms']:>10.2f}{op['self_cpu_share']:>8.1%}{op['calls']:>7}"
              for op in result["top_ops"]]
    if "top_cuda_ops" in result:
        lines.append(f"{'operator (self CUDA)':<44}{'ms':>10}{'share':>8}{'calls':>7}")
        lines += [f"{op['name'][:43]:<44}{op['self_device_ms']:>10.2f}{op['self_device_share']:>8.1%}{op['calls']:>7}"
                  for op in result["top_cuda_ops"]]
    return "\n".join(lines)
