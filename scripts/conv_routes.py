#!/usr/bin/env python3
"""Time the engine's conv routes on CIFAR VGG/ResNet layer shapes, to set or check the rules in
`dpbench/clipping/layers/conv.py` on a device:

- per-sample weight gradients (`instantiation_route`): one weight backward per sample (loop), one
  with the batch folded into the groups (grouped), unfold + matmul (unfold);
- the batch's weight gradient of the book-kept sum (`unfolded_weight_grad_is_faster`): the library's
  weight backward against unfold + one matmul;
- the ghost norm's A Aᵀ (`patch_gram_is_faster`): the pixel Gram against im2col + Gram.

    .venv/bin/python scripts/conv_routes.py --batch-size 32 --threads 1
    .venv/bin/python scripts/conv_routes.py --device cuda --batch-size 256

Best of `--repeats` after one warm-up; CPU time on a CPU (robust to other load with one thread),
synchronised wall time on CUDA. The route the engine picks is marked with '*'. On a CPU, glibc's
malloc thresholds are those of `dpbench bench`'s timed steps (freed buffers are reused, not unmapped).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from dpbench.clipping.layers import conv as rules
from dpbench.clipping.layers.base import Call
from dpbench.measure.branches import best_time
from dpbench.measure.memory import restore_malloc_thresholds

# (C_in, C_out, input side, kernel, stride): the 3x3 and 1x1 convolutions of CIFAR VGG11 and ResNet18
SHAPES = [(3, 64, 32, 3, 1), (64, 64, 32, 3, 1), (64, 128, 16, 3, 1), (64, 128, 32, 3, 2), (128, 128, 16, 3, 1),
          (128, 256, 8, 3, 1), (128, 256, 16, 3, 2), (256, 256, 8, 3, 1), (256, 512, 4, 3, 1), (256, 512, 8, 3, 2),
          (512, 512, 4, 3, 1), (512, 512, 2, 3, 1), (128, 256, 16, 1, 2)]


def timer(device: torch.device, repeats: int):
    """Milliseconds of the best of `repeats` runs after one warm-up: CPU time on a CPU, synchronised
    wall time on CUDA."""
    clock = time.perf_counter if device.type == "cuda" else time.process_time

    def best_ms(fn) -> float:
        fn()
        return best_time(fn, repeats, device, clock) * 1000
    return best_ms


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cpu":
        restore_malloc_thresholds()
    best_ms = timer(device, args.repeats)
    B = args.batch_size
    print(f"batch {B} on {device} ({torch.get_num_threads()} threads), ms, '*' = the engine's choice")
    print(f"{'layer':28s} {'T':>5s} {'d':>5s} {'p':>4s} | {'loop':>9s} {'grouped':>9s} {'unfold':>9s} | "
          f"{'wgrad lib':>9s} {'unfold+mm':>9s} | {'ghost pix':>9s} {'ghost col':>9s}")
    for c_in, c_out, side, k, stride in SHAPES:
        conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2).to(device)
        x = torch.randn(B, c_in, side, side, device=device)
        g = torch.randn(B, c_out, (side + 2 * (k // 2) - k) // stride + 1, (side + 2 * (k // 2) - k) // stride + 1,
                        device=device)
        rule = rules.ConvRule(conv, "conv")
        calls = [Call((x,), {}, (0,), grads=[g])]
        shape = rule.shape(calls)
        chosen = rules.instantiation_route(device.type, shape)
        per_sample = {
            rules.LOOP: best_ms(lambda: rules.per_sample_weight_grad(conv, x, g, True)),
            rules.GROUPED: best_ms(lambda: rules.per_sample_weight_grad(conv, x, g, False)),
            rules.UNFOLD: best_ms(lambda: torch.matmul(rules.grouped_grad_output(conv, g),
                                                       rules.unfold(conv, x).transpose(2, 3))),
        }
        coef = torch.rand(B, device=device)
        unfolded = rules.unfolded_weight_grad_is_faster(device.type, g)
        library, matmul = (best_ms(lambda: _forced("unfolded_weight_grad_is_faster", forced,
                                                   lambda: rule.clipped_sum(calls, coef)))
                           for forced in (False, True))
        cells = [f"{per_sample[r]:8.2f}{'*' if r == chosen else ' '}" for r in (rules.LOOP, rules.GROUPED, rules.UNFOLD)]
        sums = [f"{library:8.2f}{' ' if unfolded else '*'}", f"{matmul:8.2f}{'*' if unfolded else ' '}"]
        pixel = rule._pixel_gram(calls)
        ghost = [f"{best_ms(lambda: _forced('patch_gram_is_faster', forced, lambda: rule.ghost_norm_sq(calls))):8.2f}"
                 f"{'*' if forced == pixel else ' '}" for forced in (True, False)]
        name = f"{c_in}->{c_out} k{k} s{stride} @{side}"
        print(f"{name:28s} {shape.T:5d} {shape.d:5d} {shape.p:4d} | {' '.join(cells)} | {' '.join(sums)} | "
              f"{' '.join(ghost)}")
    return 0


def _forced(rule_name: str, answer: bool, fn):
    """fn() with the rule `rules.<rule_name>` answering `answer` whatever the layer."""
    original = getattr(rules, rule_name)
    setattr(rules, rule_name, lambda *shape: answer)
    try:
        return fn()
    finally:
        setattr(rules, rule_name, original)


if __name__ == "__main__":
    raise SystemExit(main())
