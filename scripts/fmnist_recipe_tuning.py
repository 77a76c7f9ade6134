"""Choose the Fashion-MNIST recipe's learning rate, epochs and expected batch size on a validation split,
then report its test accuracy as the mean and range over several seeds (config/fmnist_recipe.yaml;
paper/fashion_mnist.md).

1. Search, coordinate by coordinate: starting from the recipe's values, each stage varies one
   hyper-parameter over its grid (--lrs, --epochs, --batch-sizes) with the others at the current
   choice, `dpbench train --config RECIPE --validation-size N ... --seed 0` per point (N examples held
   out of the 60000 by a split that does not depend on the seed; the model trains on the rest, σ
   calibrated for the run's own epochs and batch size at the recipe's ε). The stages repeat until a
   pass changes nothing (at most --passes passes); a point already run is not run again.
2. Selection: the highest final VALIDATION accuracy. The test set plays no part in it.
3. Seeds: the chosen point again with --seed 1, 2, ... (seed 0 is the search's run); the test accuracy
   of the final models is reported as mean and range.

Every run resumes from its checkpoint (--resume), so a killed tuning continues where it stopped; a
stage's runs go --jobs at a time (one torch thread each).

    python scripts/fmnist_recipe_tuning.py OUT_DIR [--lrs 4 8 16] [--epochs 10 20 40]
        [--batch-sizes 1024 2048 4096] [--seeds 3] [--jobs 2] [--dry-run] [-- EXTRA OPTIONS]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

RECIPE = Path(__file__).resolve().parent.parent / "config" / "fmnist_recipe.yaml"
KNOBS = {"lr": "lr", "epochs": "e", "batch_size": "b"}  # searched hyper-parameter -> run-name prefix


def run_name(point: dict, recipe: dict, seed: int) -> str:
    """lr8_seed0 for the recipe's epochs and batch size, lr8_e40_b4096_seed0 where they differ."""
    parts = [f"lr{point['lr']:g}"] + [f"{KNOBS[k]}{point[k]}" for k in ("epochs", "batch_size")
                                      if point[k] != recipe[k]]
    return "_".join(parts) + f"_seed{seed}"


def run(out: Path, point: dict, seed: int, args) -> dict | None:
    """One training run (skipped when its result exists); its result, or None in a dry run."""
    name = run_name(point, args.recipe_values, seed)
    result = out / f"{name}.json"
    command = [sys.executable, "-m", "dpbench", "train", "--config", str(args.recipe), "--validation-size",
               str(args.validation_size), "--lr", f"{point['lr']:g}", "--epochs", str(point["epochs"]),
               "--batch-size", str(point["batch_size"]), "--seed", str(seed), "--out", str(result),
               "--checkpoint", str(out / "checkpoints" / f"{name}.ckpt.pt"), "--resume", "--no-progress",
               *args.extra]
    if args.dry_run:
        print(" ".join(command))
        return None
    if not result.exists():
        subprocess.run(command, check=True)
    return json.loads(result.read_text())


def search(args) -> tuple[dict, dict[tuple, dict]]:
    """Coordinate search on validation accuracy: the chosen point and every point's seed-0 result."""
    grids = {"lr": args.lrs, "epochs": args.epochs, "batch_size": args.batch_sizes}
    point = {k: args.recipe_values[k] for k in KNOBS}
    results: dict[tuple, dict] = {}
    with ThreadPoolExecutor(args.jobs) as pool:
        for _ in range(args.passes):
            before = dict(point)
            for knob in KNOBS:
                candidates = [dict(point, **{knob: value}) for value in grids[knob]]
                fresh = [c for c in candidates if key(c) not in results]
                for c, r in zip(fresh, pool.map(lambda c: run(args.out, c, 0, args), fresh)):
                    results[key(c)] = r
                if args.dry_run:
                    continue
                point = max(candidates, key=lambda c: results[key(c)]["validation_accuracy"])
            if point == before or args.dry_run:
                break
    return point, results


def key(point: dict) -> tuple:
    return tuple(point[k] for k in KNOBS)


def summary(results: dict[tuple, dict], chosen: dict, seeds: list[dict]) -> str:
    """Markdown: every searched point's validation and test accuracy, the choice, and the seeds' mean
    and range."""
    lines = ["| lr | epochs | batch size | σ | validation accuracy (seed 0) | test accuracy (seed 0) | ε (prv) | "
             "s per epoch |", "|---|---|---|---|---|---|---|---|"]
    for point, r in sorted(results.items()):
        mark = " (chosen)" if point == key(chosen) else ""
        lines.append(f"| {point[0]:g}{mark} | {point[1]} | {point[2]} | {r['noise_multiplier']:.3f} | "
                     f"{100 * r['validation_accuracy']:.2f}% | {100 * r['test_accuracy']:.2f}% | "
                     f"{r['epsilon']:.3f} | {r['mean_epoch_time_s']:.1f} |")
    tests = [100 * r["test_accuracy"] for r in seeds]
    lines += ["", f"lr {chosen['lr']:g}, {chosen['epochs']} epochs, batch size {chosen['batch_size']}, seeds "
              f"{', '.join(str(r['config']['seed']) for r in seeds)}: test accuracy "
              f"{', '.join(f'{t:.2f}%' for t in tests)}; mean {statistics.mean(tests):.2f}%, range "
              f"{min(tests):.2f}–{max(tests):.2f}%"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--recipe", type=Path, default=RECIPE)
    parser.add_argument("--lrs", type=float, nargs="+", default=[4.0, 8.0, 16.0])
    parser.add_argument("--epochs", type=int, nargs="+", default=[10, 20, 40])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--passes", type=int, default=2, help="most passes over the three stages")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the chosen point (0, 1, ...)")
    parser.add_argument("--validation-size", type=int, default=5000)
    parser.add_argument("--jobs", type=int, default=1, help="runs of a stage at a time")
    parser.add_argument("--dry-run", action="store_true", help="print the first pass's commands (around the recipe's values) and stop")
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    args.extra = argv[split + 1:]  # more `dpbench train` options, after --
    args.recipe_values = yaml.safe_load(args.recipe.read_text())
    (args.out / "checkpoints").mkdir(parents=True, exist_ok=True)
    chosen, results = search(args)
    if args.dry_run:
        return
    with ThreadPoolExecutor(args.jobs) as pool:
        others = list(pool.map(lambda seed: run(args.out, chosen, seed, args), range(1, args.seeds)))
    text = summary(results, chosen, [results[key(chosen)], *others])
    (args.out / "summary.md").write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
