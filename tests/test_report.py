"""Tables, figures and the reproduction report (dpbench.report, `dpbench tables|figures|report`) on
small synthetic result files written in the agreed result schemas; the complexity table is the real
one of VGG11 at 32x32. About 40 s (figure drawing dominates)."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import matplotlib.image
import matplotlib.pyplot
import numpy as np
import pandas as pd
import pytest
import yaml

from dpbench.cli import main
from dpbench.results import environment
from dpbench.report import figures
from dpbench.report.load import device_label
from dpbench.report.style import ALGORITHM_COLOURS, ALGORITHM_LABELS, ALGORITHM_ORDER

REPO = Path(__file__).resolve().parents[1]
ENV = environment("cpu", "float32", 0)
SLOWDOWN = {"nonprivate": 1.0, "opacus": 4.0, "ghost": 2.0, "mixed_ghost": 1.25, "bk_mixed": 1.1}
MEMORY = {"nonprivate": 100, "opacus": 300, "ghost": 120, "mixed_ghost": 104, "bk_mixed": 106}


def bench_result(model, algorithm, batch, throughput, memory_mb, oom=False):
    step = None if oom else batch / throughput
    return {
        "kind": "bench",
        "config": {"algorithm": algorithm, "model": model, "batch_size": batch, "image_size": 32, "num_classes": 10,
                   "device": "cpu", "dtype": "float32", "steps": 3, "warmup": 1, "seed": 0},
        "oom": oom, "error": "out of memory" if oom else None,
        "step_time_s": None if oom else {"median": step, "q25": step, "q75": step, "min": step, "max": step,
                                         "samples": [step]},
        "throughput_img_s": None if oom else {"median": throughput, "q25": throughput, "q75": throughput},
        "peak_memory_bytes": None if oom else int(memory_mb * 1e6), "memory_method": "cpu_peak_rss_minus_baseline",
        "baseline_memory_bytes": 1, "environment": ENV,
    }


def maxbatch_result(algorithm, max_batch):
    return {
        "kind": "maxbatch",
        "config": {"algorithm": algorithm, "model": "cnn", "image_size": 32, "num_classes": 10, "device": "cpu",
                   "dtype": "float32", "memory_budget_bytes": 2 ** 29, "tolerance": 8, "start": 8, "limit": 4096},
        "max_batch_size": max_batch,
        "probes": [{"batch_size": max_batch, "ok": True, "peak_memory_bytes": 2 ** 28, "reason": None},
                   {"batch_size": 2 * max_batch, "ok": False, "peak_memory_bytes": 2 ** 30, "reason": "over_budget"}],
        "environment": ENV,
    }


def train_result(epsilon, accuracy):
    if epsilon is None:  # the non-private ceiling
        return {"kind": "train", "model": "cnn_mnist", "dataset": "fashion_mnist", "algorithm": "nonprivate",
                "target_epsilon": None, "epsilon": None, "epsilon_by_accountant": None, "steps": 50, "epochs": 1,
                "test_accuracy": accuracy, "wall_time_s": 10.0, "config": {"model": "cnn_mnist"}, "environment": ENV}
    return {"kind": "train", "model": "cnn_mnist", "dataset": "fashion_mnist", "algorithm": "mixed_ghost",
            "target_epsilon": epsilon, "epsilon": epsilon * 0.99, "delta": 1e-5, "noise_multiplier": 1.0,
            "epsilon_by_accountant": {"prv": epsilon * 0.99, "rdp": epsilon * 1.1, "gdp": epsilon * 0.8},
            "accountant": "prv", "steps": 50, "epochs": 1, "test_accuracy": accuracy, "wall_time_s": 20.0,
            "config": {"model": "cnn_mnist", "dataset": "offline", "algorithm": "mixed_ghost", "epsilon": epsilon},
            "environment": ENV}


def write(path: Path, obj) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return str(path)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Result files: cnn and vgg11 at batches 16 and 32 (Opacus out of memory on vgg11 at 32), a
    maxbatch search per algorithm with a throughput run at each maximum, three training runs, and
    the real complexity table of VGG11 at 32x32."""
    root = tmp_path_factory.mktemp("results")
    files = {"bench": [], "maxbatch": [], "at_max": [], "train": []}
    for model, base in [("cnn", 2000.0), ("vgg11", 200.0)]:
        for batch in (16, 32):
            for algorithm in SLOWDOWN:
                oom = model == "vgg11" and batch == 32 and algorithm == "opacus"
                result = bench_result(model, algorithm, batch, base / SLOWDOWN[algorithm],
                                      MEMORY[algorithm] * batch / 16, oom)
                files["bench"].append(write(root / f"bench/{model}_{batch}_{algorithm}.json", result))
    for algorithm, max_batch in [("nonprivate", 1024), ("opacus", 64), ("mixed_ghost", 896)]:
        files["maxbatch"].append(write(root / f"maxbatch/{algorithm}.json", maxbatch_result(algorithm, max_batch)))
        at_max = bench_result("cnn", algorithm, max_batch, 2000.0 / SLOWDOWN[algorithm], 400)
        files["at_max"].append(write(root / f"at_max/{algorithm}.json", at_max))
    for epsilon, accuracy in [(1, 0.70), (3, 0.80), (8, 0.84), (None, 0.90)]:
        files["train"].append(write(root / f"train/{epsilon}.json", train_result(epsilon, accuracy)))
    complexity = root / "complexity/vgg11_s32.csv"
    assert main(["complexity", "--model", "vgg11", "--image-size", "32", "--out-csv", str(complexity)]) == 0
    files["complexity"] = [str(complexity)]
    return files


@pytest.fixture(scope="module")
def tables(results, tmp_path_factory):
    out = tmp_path_factory.mktemp("tables")
    argv = ["tables", "--bench", *results["bench"], "--maxbatch", *results["maxbatch"], "--bench-at-max",
            *results["at_max"], "--train", *results["train"], "--complexity", *results["complexity"],
            "--out-dir", str(out)]
    assert main(argv) == 0
    return out


def test_throughput_table_has_ratios_to_nonprivate(tables):
    table = pd.read_csv(tables / "throughput_memory.csv")
    assert len(table) == 20
    cnn16 = table[(table["model"] == "cnn") & (table["batch_size"] == 16)].set_index("algorithm")
    for algorithm, slowdown in SLOWDOWN.items():
        assert cnn16.loc[algorithm, "throughput_vs_nonprivate"] == pytest.approx(1 / slowdown)
        assert cnn16.loc[algorithm, "memory_vs_nonprivate"] == pytest.approx(MEMORY[algorithm] / 100)
    assert list(cnn16.index) == [a for a in ALGORITHM_ORDER if a in SLOWDOWN]  # paper order
    oom = table[table["oom"]]
    assert list(zip(oom["model"], oom["batch_size"], oom["algorithm"])) == [("vgg11", 32, "opacus")]


def test_table4_layout(tables):
    table = pd.read_csv(tables / "table4.csv")
    row = table[(table["model"] == "cnn") & (table["batch_size"] == 16) & (table["algorithm"] == "ghost")].iloc[0]
    assert row["epoch_time_s"] == pytest.approx(50000 / (2000 / 2.0))
    assert row["memory_gb"] == pytest.approx(0.120)
    markdown = (tables / "table4.md").read_text()
    assert markdown.count("## 32×32, batch") == 2
    assert "| Opacus" in markdown and "OOM" in markdown and "25.0 / 0.100" in markdown


def test_maxbatch_table(tables):
    table = pd.read_csv(tables / "maxbatch.csv").set_index("algorithm")
    assert table.loc["mixed_ghost", "ratio_to_opacus"] == pytest.approx(14.0)
    assert table.loc["opacus", "ratio_to_nonprivate"] == pytest.approx(64 / 1024)
    assert table.loc["mixed_ghost", "throughput_at_max_img_s"] == pytest.approx(1600.0)


def test_accuracy_and_complexity_tables(tables):
    accuracy = pd.read_csv(tables / "accuracy.csv")
    private = accuracy[accuracy["algorithm"] == "mixed_ghost"]
    assert list(private["target_epsilon"]) == [1, 3, 8]
    assert private["test_accuracy"].tolist() == [0.70, 0.80, 0.84]
    assert private["epsilon_gdp"].tolist() == pytest.approx([0.8, 2.4, 6.4])  # ε by every accountant
    assert private["epsilon_rdp"].tolist() == pytest.approx([1.1, 3.3, 8.8])
    ceiling = accuracy[accuracy["algorithm"] == "nonprivate"]
    assert ceiling["test_accuracy"].tolist() == [0.90] and ceiling[["target_epsilon", "epsilon_prv"]].isna().all(axis=None)
    totals = pd.read_csv(tables / "complexity_totals.csv").set_index("algorithm")
    assert totals.loc["nonprivate", "time_vs_nonprivate"] == 1.0
    assert totals.loc["ghost", "ghost_layers"] + totals.loc["ghost", "instantiated_layers"] == totals.loc["ghost", "layers"]
    assert (tables / "complexity_layers.csv").exists() and not (tables / "complexity_layers.md").exists()


def _assert_real_image(path: Path) -> None:
    assert path.stat().st_size > 10_000, path
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and min(pixels.shape[:2]) > 200, path
    assert np.ptp(pixels[..., :3]) > 0.5, f"{path} is blank"


def test_figures_are_drawn(tables, tmp_path):
    argv = ["figures", "--throughput-memory", str(tables / "throughput_memory.csv"), "--maxbatch",
            str(tables / "maxbatch.csv"), "--accuracy", str(tables / "accuracy.csv"), "--complexity-layers",
            str(tables / "complexity_layers.csv"), "--out-dir", str(tmp_path)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no seaborn/matplotlib deprecation warnings
        assert main(argv) == 0
    names = ["fig3_maxbatch_throughput", "fig4_memory_time_scatter", "layerwise_choice", "throughput_vs_batch",
             "accuracy_vs_epsilon"]
    for name in names:
        _assert_real_image(tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.pdf").read_bytes().startswith(b"%PDF")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{n}.{e}" for n in names for e in ("png", "pdf"))


def test_accuracy_figure_draws_the_non_private_run_as_the_ceiling(tables):
    figure = figures.accuracy_vs_epsilon(pd.read_csv(tables / "accuracy.csv"))
    ax = figure.axes[0]
    dashed = [line for line in ax.get_lines() if "ceiling" in line.get_label()]
    assert len(dashed) == 1 and dashed[0].get_ydata()[0] == pytest.approx(90.0)
    assert "ceiling" in " ".join(t.get_text() for t in ax.get_legend().get_texts())
    matplotlib.pyplot.close(figure)


def test_figures_without_data_say_so(tmp_path):
    empty = pd.DataFrame(columns=["model", "image_size", "batch_size", "algorithm", "throughput_img_s",
                                  "peak_memory_mb", "oom", "device"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figures.save(figures.figure4(empty, "mixed_ghost"), tmp_path, "scatter")
    assert (tmp_path / "scatter.png").stat().st_size > 0


def test_reproduction_report(tables, tmp_path):
    out = tmp_path / "reproduction.md"
    argv = ["report", "--reported", str(REPO / "paper" / "reported.csv"), "--throughput-memory",
            str(tables / "throughput_memory.csv"), "--maxbatch", str(tables / "maxbatch.csv"), "--accuracy",
            str(tables / "accuracy.csv"), "--complexity-layers", str(tables / "complexity_layers.csv"),
            "--out", str(out)]
    assert main(argv) == 0
    text = out.read_text()
    for section in ["## Headline claims", "## Table 4", "## Figure 3", "## Figure 4", "## Layerwise choice",
                    "## Book-keeping follow-up", "## Accuracy"]:
        assert section in text
    assert f"- This run: {device_label(ENV)}\n" in text
    # Table 4 row of the CNN: the paper's 11 s vs our 50000 / 1000 img/s = 50 s at batch 32; slowdowns side by side
    cnn_ghost = next(line for line in text.splitlines() if line.startswith("| cnn") and "| Ghost " in line)
    cells = [c.strip() for c in cnn_ghost.strip("|").split("|")]
    assert cells[2:5] == ["11", "50", "4.55"] and cells[8:10] == ["2.2", "2"]
    # the VGG11 layerwise choices at 32x32 come from the real complexity model and match the paper's
    rows = [line.split("|") for line in text.splitlines() if line.startswith("| vgg11   | conv")]
    at_32 = [cells for cells in rows if cells[4].strip() == "32"]
    assert len(at_32) == 8 and all(cells[-2].strip() == "yes" for cells in at_32)
    assert all(cells[-2].strip() == "—" for cells in rows if cells[4].strip() == "224")  # not computed here
    overhead = (r"\| memory overhead of Mixed ghost vs non-private \(worst configuration\) +\| ≤ 10% +\| 4.0% \(\w+ 32², "
                r"batch \d+; of 4 configurations\) +\| yes +\| .* CPU, .*budget none \(the device\)")
    assert re.search(overhead, text)
    # the Fashion-MNIST anchor is matched by the nearest-epsilon run on the same dataset
    assert "| cnn_mnist / Mixed ghost" in text


def test_failure_records_and_budgets_are_listed(tmp_path):
    """A failure record among the results: the tables skip it as a measurement, failures.md and table4.md
    name it (with the reason and its log's last line), and so does the reproduction report; an OOM within
    a memory budget shows as OOM with the budget beside it."""
    from dpbench.failures import failure_record

    fits = bench_result("resnet18", "nonprivate", 256, 1000.0, 3000)
    over = bench_result("resnet18", "opacus", 256, 1.0, 1, oom=True)
    for result in (fits, over):
        result["config"]["memory_budget_bytes"] = 16 * 1024**3
    crash = failure_record("bench", {"sweep": "table4", "model": "resnet18", "image_size": 32, "batch_size": 256,
                                     "algorithm": "ghost", "device": "cpu"}, "crash", "exited with code 1",
                           "RuntimeError: CUDA error: an illegal memory access", 1, 3, 3, "logs/x.log", ENV)
    files = [write(tmp_path / f"{i}.json", r) for i, r in enumerate([fits, over, crash])]
    assert main(["tables", "--bench", *files, "--out-dir", str(tmp_path / "t")]) == 0
    throughput = pd.read_csv(tmp_path / "t/throughput_memory.csv")
    assert sorted(throughput["algorithm"]) == ["nonprivate", "opacus"]
    failures = pd.read_csv(tmp_path / "t/failures.csv")
    assert failures[["algorithm", "failure", "attempt"]].values.tolist() == [["ghost", "crash", 3]]
    listed = (tmp_path / "t/failures.md").read_text()
    assert "bench table4, resnet18, 32², batch 256, Ghost" in listed and "illegal memory access" in listed
    table4 = (tmp_path / "t/table4.md").read_text()
    assert "memory budget 16.0 GiB: OOM = over it" in table4
    assert re.search(r"\| resnet18 +\| OOM +\| failed \(crash\) +\| 50.0 / 3.000 +\|", table4), table4
    from dpbench.report.failures import footnote

    assert footnote(failures, ("bench",)) == ("Failed, not shown: bench table4, resnet18, 32², batch 256, Ghost (crash) "
                                              "(results/tables/failures.md).")
    assert footnote(failures, ("train",)) is None
    assert main(["figures", "--throughput-memory", str(tmp_path / "t/throughput_memory.csv"), "--failures",
                 str(tmp_path / "t/failures.csv"), "--out-dir", str(tmp_path / "f")]) == 0
    assert (tmp_path / "f/fig4_memory_time_scatter.png").stat().st_size > 0
    argv = ["report", "--reported", str(REPO / "paper" / "reported.csv"), "--throughput-memory",
            str(tmp_path / "t/throughput_memory.csv"), "--failures", str(tmp_path / "t/failures.csv"),
            "--out", str(tmp_path / "r.md")]
    assert main(argv) == 0
    report = (tmp_path / "r.md").read_text()
    assert "## Failed configurations" in report and "illegal memory access" in report
    assert re.search(r"\| resnet18 +\| Opacus +\| OOM .*\| 16.0 GiB +\|", report)
    uncovered = report.split("## What this run does not cover")[1]
    assert "resnet18 32² ghost" in uncovered and "GPT2" in uncovered


def test_bad_inputs_give_one_line(tmp_path, capsys):
    assert main(["tables", "--bench", str(tmp_path / "missing.json"), "--out-dir", str(tmp_path)]) == 2
    assert "result file not found" in capsys.readouterr().err
    wrong_kind = write(tmp_path / "m.json", maxbatch_result("opacus", 8))
    assert main(["tables", "--bench", wrong_kind, "--out-dir", str(tmp_path)]) == 2
    assert "is not a bench result" in capsys.readouterr().err
    assert main(["figures", "--maxbatch", "x.csv", "--dp-algorithm", "mixed_gost", "--out-dir", str(tmp_path)]) == 2
    assert "unknown --dp-algorithm 'mixed_gost'" in capsys.readouterr().err
    bad = tmp_path / "reported.csv"
    bad.write_text("quantity,value\nmax_batch,3\n")
    assert main(["report", "--reported", str(bad), "--out", str(tmp_path / "r.md")]) == 2
    assert "lacks the columns" in capsys.readouterr().err


def test_one_name_and_colour_per_algorithm():
    from dpbench.clipping import ALGORITHMS

    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    # the schema is YAML that Snakemake's validate reads by path: its enum is a copy, held to the registry here
    assert schema["definitions"]["algorithm"]["enum"] == list(ALGORITHMS)
    assert set(ALGORITHM_ORDER) == set(ALGORITHMS) and ALGORITHM_ORDER[-1] == "nonprivate"
    assert set(ALGORITHM_LABELS) == set(ALGORITHM_COLOURS) == set(ALGORITHMS)
    assert len(set(ALGORITHM_COLOURS.values())) == len(ALGORITHMS)


def test_reported_csv_is_well_formed():
    reported = pd.read_csv(REPO / "paper" / "reported.csv")
    assert reported["source"].notna().all() and reported["exactness"].isin(["exact", "approx"]).all()
    table4 = reported[reported["source"] == "Table 4"]
    assert len(table4) == 7 * 5 * 2
    assert table4[(table4["model"] == "vgg16") & (table4["algorithm"] == "mixed_ghost")]["value"].tolist() == ["23", "2.84"]


def test_every_file_in_paper_says_what_it_is():
    """paper/README.md names every file of paper/ (input, generated by which command, or measured by which)."""
    listed = (REPO / "paper" / "README.md").read_text()
    missing = [p.name for p in sorted((REPO / "paper").iterdir()) if f"`{p.name}`" not in listed]
    assert not missing, f"paper/README.md does not describe {missing}"


def test_verification_is_shown_beside_every_row_and_a_wrong_row_is_no_evidence(tmp_path):
    """`verified` of each result in the tables, the Table 4 grid, the figures and both reports: a wrong
    computation is flagged and is not counted for a claim or a target; results without it: not recorded."""
    exact = {"status": "exact", "max_relative_error": 1e-15, "dtype": "float64", "seconds": 0.1}
    wrong = {"status": "wrong", "max_relative_error": 0.0443, "dtype": "float64", "seconds": 0.1}
    skipped = {"status": "skipped", "why": "nonprivate: no per-sample clipping to verify", "seconds": 0.0}
    files, at_max, searches = [], [], []
    for batch in (16, 32):
        for algorithm in ("nonprivate", "opacus", "mixed_ghost", "bk_mixed", "ghost"):
            result = bench_result("cnn", algorithm, batch, 2000.0 / SLOWDOWN[algorithm], MEMORY[algorithm])
            result["step_memory_bytes"] = int(MEMORY[algorithm] * 1e6)
            if algorithm != "ghost":  # ghost: a result written before there was a check
                result["verified"] = {"nonprivate": skipped, "opacus": wrong}.get(algorithm, exact)
            if algorithm == "mixed_ghost" and batch == 32:
                result["verified"] = wrong
            files.append(write(tmp_path / f"bench/{batch}_{algorithm}.json", result))
    for algorithm, max_batch in [("nonprivate", 1024), ("opacus", 64), ("mixed_ghost", 896)]:
        search = maxbatch_result(algorithm, max_batch)
        search["verified"] = {"nonprivate": skipped, "opacus": wrong}.get(algorithm, exact)
        searches.append(write(tmp_path / f"maxbatch/{algorithm}.json", search))
        bench = bench_result("cnn", algorithm, max_batch, 2000.0 / SLOWDOWN[algorithm], 400)
        bench["verified"] = search["verified"]
        at_max.append(write(tmp_path / f"at_max/{algorithm}.json", bench))
    out = tmp_path / "t"
    assert main(["tables", "--bench", *files, "--maxbatch", *searches, "--bench-at-max", *at_max,
                 "--out-dir", str(out)]) == 0
    table = pd.read_csv(out / "throughput_memory.csv").set_index(["batch_size", "algorithm"])["verified"]
    assert table[(16, "opacus")] == "wrong (4.4e-02)" and table[(16, "mixed_ghost")] == "exact"
    assert table[(16, "ghost")] == "not recorded" and table[(32, "mixed_ghost")] == "wrong (4.4e-02)"
    assert table[(16, "nonprivate")].startswith("skipped (nonprivate")
    assert "verified" in pd.read_csv(out / "table4.csv").columns
    grid = (out / "table4.md").read_text()
    assert "WRONG (4.4e-02)" in grid and "3 cell(s) WRONG" in grid and "2 private cell(s) have no verification" in grid
    maxbatch = pd.read_csv(out / "maxbatch.csv").set_index("algorithm")
    assert maxbatch.loc["opacus", "verified"] == maxbatch.loc["opacus", "verified_at_max"] == "wrong (4.4e-02)"
    assert maxbatch.loc["mixed_ghost", "verified"] == "exact"
    # figures: the flags are drawn (labels and marks), without warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["figures", "--throughput-memory", str(out / "throughput_memory.csv"), "--maxbatch",
                     str(out / "maxbatch.csv"), "--out-dir", str(tmp_path / "f")]) == 0
    fig3 = figures.figure3(pd.read_csv(out / "maxbatch.csv"))
    assert "cnn\nWRONG: Opacus" in [t.get_text() for t in fig3.axes[0].get_xticklabels()]
    matplotlib.pyplot.close(fig3)
    fig4 = figures.figure4(pd.read_csv(out / "throughput_memory.csv"), "mixed_ghost")
    assert "computation WRONG (dpbench.verify)" in [t.get_text() for t in fig4.axes[1].get_legend().get_texts()]
    matplotlib.pyplot.close(fig4)
    # the reproduction report: shown beside the rows, a wrong configuration left out of the claims
    argv = ["report", "--reported", str(REPO / "paper" / "reported.csv"), "--throughput-memory",
            str(out / "throughput_memory.csv"), "--maxbatch", str(out / "maxbatch.csv"), "--out", str(tmp_path / "r.md")]
    assert main(argv) == 0
    report = (tmp_path / "r.md").read_text()
    cnn_opacus = next(line for line in report.splitlines() if line.startswith("| cnn") and "| Opacus " in line)
    assert cnn_opacus.rstrip(" |").endswith("wrong (4.4e-02)")
    slowdown = next(line for line in report.splitlines() if line.startswith("| slowdown of Mixed ghost"))
    assert "of 1 configurations; 1 left out: computation verified wrong (cnn 32², batch 32)" in slowdown
    # the performance report: the target of a wrong row is not valid, not met
    assert main(["perf-report", "--bench", *files, "--out", str(tmp_path / "p.md")]) == 0
    performance = (tmp_path / "p.md").read_text()
    target = next(line for line in performance.splitlines()
                  if line.startswith("| cnn 32², batch 32") and "Mixed ghost throughput" in line)
    assert "not valid: computation wrong (4.4e-02)" in target
    exact = next(line for line in performance.splitlines()
                 if line.startswith("| cnn 32², batch 16") and "Mixed ghost throughput" in line)
    assert "not valid" not in exact and exact.rstrip(" |").endswith("exact")
