"""scripts/fmnist_recipe_tuning.py's search, with synthetic runs in place of training: it chooses on
validation accuracy (never test), one hyper-parameter at a time, repeats until a pass changes nothing,
runs no point twice, and names the recipe's own runs as the earlier learning-rate-only search did."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("fmnist_recipe_tuning", REPO / "scripts" / "fmnist_recipe_tuning.py")
tuning = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tuning)

RECIPE = {"lr": 8.0, "epochs": 20, "batch_size": 2048}


def args(tmp_path, **grids) -> argparse.Namespace:
    return argparse.Namespace(lrs=grids.get("lrs", [4.0, 8.0, 16.0]), epochs=grids.get("epochs", [10, 20, 40]),
                              batch_sizes=grids.get("batch_sizes", [1024, 2048, 4096]), passes=3, jobs=2,
                              dry_run=False, recipe_values=RECIPE, out=tmp_path)


def fake_runs(monkeypatch, validation, test):
    """Replace training: each point's result from the two functions; returns the list of runs made."""
    made = []

    def run(out, point, seed, args):
        made.append((tuning.key(point), seed))
        return {"validation_accuracy": validation(point), "test_accuracy": test(point), "noise_multiplier": 1.0,
                "epsilon": 3.0, "mean_epoch_time_s": 1.0, "config": {"seed": seed}}

    monkeypatch.setattr(tuning, "run", run)
    return made


def test_search_chooses_on_validation_coordinate_by_coordinate(monkeypatch, tmp_path):
    # validation prefers lr 4 and 40 epochs, but batch 4096 only once lr is 4; test prefers the opposite
    def validation(p):
        return -abs(p["lr"] - 4) - abs(p["epochs"] - 40) / 10 + (p["batch_size"] == 4096) * (p["lr"] == 4) * 5

    made = fake_runs(monkeypatch, validation, lambda p: -validation(p))
    chosen, results = tuning.search(args(tmp_path))
    assert chosen == {"lr": 4.0, "epochs": 40, "batch_size": 4096}
    assert len(made) == len(set(made)) == len(results)  # no point trained twice
    assert all(seed == 0 for _, seed in made)


def test_search_stops_when_a_pass_keeps_the_recipe(monkeypatch, tmp_path):
    made = fake_runs(monkeypatch, lambda p: -abs(p["lr"] - 8) - abs(p["epochs"] - 20) - abs(p["batch_size"] - 2048),
                     lambda p: 0.0)
    chosen, results = tuning.search(args(tmp_path))
    assert chosen == RECIPE and len(made) == 7  # 3 + 2 + 2 points, one pass


def test_run_names_keep_the_recipe_values_out():
    assert tuning.run_name(dict(RECIPE), RECIPE, 0) == "lr8_seed0"
    assert tuning.run_name(dict(RECIPE, epochs=40, batch_size=4096), RECIPE, 2) == "lr8_e40_b4096_seed2"
