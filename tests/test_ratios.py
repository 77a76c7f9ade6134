"""The one pairing rule of every ratio to non-private training (dpbench.report.ratios.ratio_to)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from dpbench.report.ratios import predicted_times, ratio_to


def frame(rows):
    return pd.DataFrame(rows, columns=["device", "model", "batch_size", "algorithm", "value"])


def test_each_row_divides_by_the_reference_of_its_own_configuration():
    f = frame([("cpu", "vgg11", 32, "nonprivate", 100.0), ("cpu", "vgg11", 32, "ghost", 50.0),
               ("cpu", "vgg11", 64, "nonprivate", 400.0), ("cpu", "vgg11", 64, "ghost", 100.0),
               ("cuda", "vgg11", 32, "ghost", 10.0)])
    got = ratio_to(f, "value", ["device", "model", "batch_size"])
    assert got.tolist()[:4] == [1.0, 0.5, 1.0, 0.25]
    assert math.isnan(got.iloc[4])  # no non-private result on that device: no ratio, not another device's


def test_several_reference_runs_count_by_their_median_and_missing_values_stay_missing():
    f = frame([("cpu", "m", 1, "nonprivate", 1.0), ("cpu", "m", 1, "nonprivate", 3.0),
               ("cpu", "m", 1, "nonprivate", 2.0), ("cpu", "m", 1, "opacus", 1.0), ("cpu", "m", 1, "ghost", None)])
    got = ratio_to(f, "value", ["device", "model", "batch_size"])
    assert got.iloc[3] == pytest.approx(0.5) and math.isnan(got.iloc[4])


def test_rounds_pair_runs_taken_side_by_side_and_another_reference_can_be_named():
    f = pd.DataFrame({"round": [0, 0, 1, 1], "algorithm": ["nonprivate", "bk_mixed"] * 2, "t": [2.0, 1.0, 4.0, 1.0]})
    assert ratio_to(f, "t", ["round"]).tolist() == [1.0, 0.5, 1.0, 0.25]
    assert ratio_to(f, "t", ["round"], reference="bk_mixed").tolist() == [2.0, 1.0, 4.0, 1.0]


def test_a_zero_reference_gives_an_infinite_ratio_and_keys_may_be_missing():
    f = pd.DataFrame({"budget": [None, None, 1.0], "algorithm": ["opacus", "mixed_ghost", "mixed_ghost"],
                      "max_batch": [0, 8, 8]})
    got = ratio_to(f, "max_batch", ["budget"], reference="opacus")
    assert math.isnan(got.iloc[0]) and math.isinf(got.iloc[1]) and math.isnan(got.iloc[2])


def test_predicted_slowdown_of_the_cost_model():
    layers = pd.DataFrame({"model": ["m"] * 3, "image_size": [32] * 3, "layer": ["a", "b", "TOTAL"],
                           "time_nonprivate": [1.0, 1.0, 2.0], "time_ghost": [2.0, 1.0, 3.0]})
    got = predicted_times(layers).set_index("algorithm")
    assert got.loc["ghost", "time_flops"] == 3.0 and got.loc["ghost", "time_vs_nonprivate"] == pytest.approx(1.5)
