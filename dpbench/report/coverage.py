"""The parts of paper/reproduction.md that say what this run does not show: the configurations that
failed (with their reasons), the paper's numbers without a counterpart in this run, the paper items no
configuration measures, and how to read the memory columns."""

from __future__ import annotations

import pandas as pd

from dpbench.report.failures import describe

MEMORY_NOTE = (
    "**Memory columns.** *Peak memory* (the tables' `peak_memory_mb`, the GB columns here) is the overall peak "
    "of the measured steps: on CUDA the caching allocator's `max_memory_allocated` from the first timed step on, "
    "which includes the model's weights, gradients and optimizer state; on the CPU the process's peak resident "
    "memory above its memory after the imports. *Step memory* (`step_memory_bytes` in the bench results, the "
    "performance report) is only what one step adds over the memory in use just before it: activations, "
    "gradients and the clipping algorithm's buffers. The paper's Table 4 reports the first kind (\"active "
    "memory\"), so the tables here compare peak memory; the step memory isolates the algorithm's own cost and is "
    "the fairer basis for memory overhead on small models, where weights dominate the peak. A memory budget "
    "(16 GiB for the paper's GPU) caps the peak: OOM means the peak would exceed it.\n")

NOT_MEASURED = [
    ("BK follow-up: GPT2 with book-keeping at 0.83× non-private speed",
     "language models are outside dpbench's model zoo (CNNs and timm vision models)"),
    ("BK follow-up: 1.03× standard training, 0.61× the most efficient DP implementation",
     "an analytic ratio: the complexity tables (complexity_totals.md) give the per-model predicted time ratios"),
    ("Accountant sanity values (RDP and PRV ε for two settings)",
     "checked by the test suite (tests/test_accounting.py), not a measurement of this pipeline"),
    ("Fashion-MNIST anchor (86.0% at ε ≈ 2.93, Tramèr & Boneh)",
     "measured by config/fmnist_recipe.yaml (paper/fashion_mnist.md), not by config/paper.yaml"),
    ("Figure 4: the batch size and GPU of the ViT runs", "the paper does not state them; ours: batch 32"),
]


def section_failures(failures: pd.DataFrame | None) -> str:
    """Every configuration left with a failure record, with the reason and its log's last line."""
    head = "## Failed configurations\n\n"
    if failures is None:
        return head + "This run's tables give no list of failures.\n"
    if failures.empty:
        return head + "None: every configuration of this run has a result (OOM results included).\n"
    rows = [{"configuration": describe(row), "failure": row["failure"], "reason": row["reason"],
             "last error line": str(row["last_error_line"] or "—"), "attempts": row["attempt"],
             "log": row["log"] or "—"} for row in failures.to_dict("records")]
    return (head + f"{len(rows)} configuration(s) have no measurement after every retry; their cells show \"—\" "
            "below. Running the same Snakemake command again redoes exactly these.\n\n"
            + pd.DataFrame(rows).to_markdown(index=False) + "\n")


def _has(frame: pd.DataFrame, **where) -> bool:
    rows = frame
    for key, value in where.items():
        if key not in rows:
            return False
        rows = rows[rows[key] == value]
    return not rows.empty


def section_uncovered(reported: pd.DataFrame, ours) -> str:
    """The paper's numbers whose configuration this run did not measure (or that failed), grouped by the
    table or figure they come from, and the paper items that no configuration measures."""
    tables = {"Table 4": ours.throughput, "Figure 4": ours.throughput, "Figure 3": ours.maxbatch,
              "BK follow-up": ours.maxbatch, "layerwise table": ours.layers}
    missing: dict[str, list[str]] = {}
    for row in reported.to_dict("records"):
        source, model = row["source"], row["model"]
        if source == "abstract" and row["quantity"] == "max_batch":
            frame = ours.maxbatch
        elif source in tables:
            frame = tables[source]
        else:
            continue  # headline ratios and accuracy rows: their sections say what they compare with
        where = {"model": model}
        if not pd.isna(row["image_size"]):
            where["image_size"] = int(row["image_size"])
        if isinstance(row["algorithm"], str) and source != "layerwise table":
            where["algorithm"] = row["algorithm"]
        if not _has(frame, **where):
            label = f"{model}" + (f" {int(row['image_size'])}²" if "image_size" in where else "")
            label += f" {row['algorithm']}" if "algorithm" in where else ""
            missing.setdefault(source, [])
            if label not in missing[source]:
                missing[source].append(label)
    lines = ["## What this run does not cover\n\n"]
    if missing:
        lines.append("The paper's numbers without a measurement in this run (not in its configuration, or failed):\n\n")
        lines += [f"- {source}: {', '.join(labels)}\n" for source, labels in missing.items()]
    else:
        lines.append("Every configuration of the paper's tables and figures has a measurement in this run.\n")
    lines.append("\nPaper items that no configuration of this pipeline measures:\n\n")
    lines += [f"- {item}: {why}\n" for item, why in NOT_MEASURED]
    return "".join(lines)
