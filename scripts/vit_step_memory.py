"""Peak memory growth and CPU time of one training step of a timm model, optionally with some
parameters frozen: which parameter group costs the engine memory (paper/vit_performance_limits.md).

    MALLOC_MMAP_THRESHOLD_=65536 MALLOC_TRIM_THRESHOLD_=0 \
        python scripts/vit_step_memory.py --algorithm mixed_ghost --model beit_base_patch16_224 --depth 4 \
        --freeze '*relative_position_bias_table'

The malloc settings return every large block to the system when it is freed, so that the resident-set
peak follows the live tensors (the same numbers in every run); run each configuration in a fresh process."""

from __future__ import annotations

import argparse
import fnmatch
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

from dpbench.clipping import ALGORITHMS, PrivacyEngine

STATUS = Path("/proc/self/status")


def _kib(field: str) -> int:
    return int(STATUS.read_text().split(f"{field}:")[1].split()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algorithm", choices=list(ALGORITHMS), required=True)
    parser.add_argument("--model", default="beit_base_patch16_224")
    parser.add_argument("--depth", type=int, default=None, help="blocks (default: the model's)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--freeze", nargs="*", default=[], help="fnmatch patterns of parameter names")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    extra = {"depth": args.depth} if args.depth else {}
    model = timm.create_model(args.model, pretrained=False, num_classes=10, **extra)
    for name, p in model.named_parameters():
        if any(fnmatch.fnmatch(name, pattern) for pattern in args.freeze):
            p.requires_grad_(False)
    engine = PrivacyEngine(model, args.algorithm, max_grad_norm=1.0)
    x, y = torch.randn(args.batch_size, 3, 224, 224), torch.randint(0, 10, (args.batch_size,))

    def step() -> int:
        losses = F.cross_entropy(model(x), y, reduction="none")
        after_forward = _kib("VmRSS")
        engine.backward(losses)
        for p in model.parameters():
            p.grad = None
        return after_forward

    step()  # the first step surveys the forward
    STATUS.with_name("clear_refs").write_text("5")  # reset the peak
    base = _kib("VmRSS")
    start = time.process_time()
    after_forward = step()
    cpu = time.process_time() - start
    print(f"{args.algorithm} freeze={','.join(args.freeze) or '-'} depth={args.depth or 'all'} "
          f"step_growth={(_kib('VmHWM') - base) / 1024:.0f}MiB after_forward={(after_forward - base) / 1024:.0f}MiB "
          f"cpu={cpu:.2f}s")


if __name__ == "__main__":
    main()
