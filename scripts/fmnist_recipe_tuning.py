"""Choose the Fashion-MNIST recipe's learning rate on a validation split, then report its test accuracy
as the mean and range over several seeds (config/fmnist_recipe.yaml; paper/fashion_mnist.md).

1. Grid: for each --lrs value, `dpbench train --config RECIPE --validation-size N --lr LR --seed 0`
   (N examples held out of the 60000 by a split that does not depend on the seed; the model trains on
   the rest, with σ calibrated for that many examples).
2. Selection: the learning rate whose final model has the highest VALIDATION accuracy. The test set
   plays no part in it.
3. Seeds: the chosen learning rate again with --seed 1, 2, ... (seed 0 is the grid's run); the test
   accuracy of the final models is reported as mean and range.

Every run resumes from its checkpoint (--resume), so a killed tuning continues where it stopped.

    python scripts/fmnist_recipe_tuning.py OUT_DIR [--lrs 4 8 16] [--seeds 3] [--dry-run] [-- EXTRA OPTIONS]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

RECIPE = Path(__file__).resolve().parent.parent / "config" / "fmnist_recipe.yaml"


def run(out: Path, lr: float, seed: int, args, extra: list[str]) -> dict | None:
    """One training run (skipped when its result exists); its result, or None in a dry run."""
    result = out / f"lr{lr:g}_seed{seed}.json"
    command = [sys.executable, "-m", "dpbench", "train", "--config", str(args.recipe), "--validation-size",
               str(args.validation_size), "--lr", f"{lr:g}", "--seed", str(seed), "--out", str(result),
               "--checkpoint", str(out / "checkpoints" / f"lr{lr:g}_seed{seed}.ckpt.pt"), "--resume",
               "--no-progress", *extra]
    if args.dry_run:
        print(" ".join(command))
        return None
    if not result.exists():
        subprocess.run(command, check=True)
    return json.loads(result.read_text())


def summary(grid: dict[float, dict], chosen: float, seeds: list[dict]) -> str:
    """Markdown: the grid's validation and test accuracy, the choice, and the seeds' mean and range."""
    lines = ["| lr | validation accuracy (seed 0) | test accuracy (seed 0) | ε (prv) |", "|---|---|---|---|"]
    for lr, r in sorted(grid.items()):
        mark = " (chosen)" if lr == chosen else ""
        lines.append(f"| {lr:g}{mark} | {100 * r['validation_accuracy']:.2f}% | {100 * r['test_accuracy']:.2f}% | "
                     f"{r['epsilon']:.3f} |")
    tests = [100 * r["test_accuracy"] for r in seeds]
    lines += ["", f"lr {chosen:g}, seeds {', '.join(str(r['config']['seed']) for r in seeds)}: test accuracy "
              f"{', '.join(f'{t:.2f}%' for t in tests)}; mean {statistics.mean(tests):.2f}%, range "
              f"{min(tests):.2f}–{max(tests):.2f}%"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--recipe", type=Path, default=RECIPE)
    parser.add_argument("--lrs", type=float, nargs="+", default=[4.0, 8.0, 16.0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the chosen learning rate (0, 1, ...)")
    parser.add_argument("--validation-size", type=int, default=5000)
    parser.add_argument("--dry-run", action="store_true", help="print the grid's commands and stop")
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    args.extra = argv[split + 1:]  # more `dpbench train` options, after --
    (args.out / "checkpoints").mkdir(parents=True, exist_ok=True)
    grid = {lr: run(args.out, lr, 0, args, args.extra) for lr in args.lrs}
    if args.dry_run:
        return
    chosen = max(grid, key=lambda lr: grid[lr]["validation_accuracy"])
    seeds = [grid[chosen]] + [run(args.out, chosen, seed, args, args.extra) for seed in range(1, args.seeds)]
    text = summary(grid, chosen, seeds)
    (args.out / "summary.md").write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
