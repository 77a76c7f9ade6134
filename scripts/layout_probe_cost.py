"""The layout probe's cost (dpbench/clipping/layout.py): the first step of a new input signature pays
two extra backwards; later steps pay nothing. Prints one Markdown row per model and algorithm:
probe seconds, the first step, the median of the next steps, one thread, synthetic data.

    .venv/bin/python scripts/layout_probe_cost.py [--batch-size 32] [--steps 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from dpbench.clipping import PrivacyEngine
from dpbench.models import create_model


def step_times(model_name: str, algorithm: str, batch: int, steps: int) -> tuple[float, float, float]:
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=10, image_size=32)
    engine = PrivacyEngine(model, algorithm, max_grad_norm=1.0)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        engine.backward(F.cross_entropy(model(x), y, reduction="none"))
        times.append(time.perf_counter() - start)
        for p in model.parameters():
            p.grad = None
    probe = engine._backend.probe_seconds
    engine.detach()
    return probe, times[0], statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=["cnn", "resnet18", "deit_tiny_patch16_224"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"| model | algorithm | probe (s) | first step (s) | later steps, median (s) |  (batch {args.batch_size}, "
          f"torch {torch.__version__}, 1 thread)")
    print("|---|---|---|---|---|")
    for name in args.models:
        for algorithm in ("mixed_ghost", "bk_mixed"):
            probe, first, later = step_times(name, algorithm, args.batch_size, args.steps)
            print(f"| {name} | {algorithm} | {probe:.3f} | {first:.3f} | {later:.3f} |")


if __name__ == "__main__":
    main()
