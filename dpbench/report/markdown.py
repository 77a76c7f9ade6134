"""Markdown pieces the performance reports share: tables of formatted cells, commits, the
torch.profiler section."""

from __future__ import annotations

import pandas as pd

from dpbench.report.load import device_label
from dpbench.report.ratios import REFERENCE
from dpbench.report.style import algorithm_label, algorithm_rank

REGION_LABELS = {"forward": "forward", "engine.backward": "engine.backward", "engine.add_noise": "noise",
                 "optimizer.step": "optimizer"}


def formatted_table(frame: pd.DataFrame) -> str:
    """A Markdown table of already formatted cells (tabulate would reformat numbers otherwise)."""
    return frame.astype(str).to_markdown(index=False, disable_numparse=True)


def short_commit(commit: str | None) -> str:
    """The first 12 hex digits of a commit, '-dirty' kept (uncommitted changes were measured)."""
    if not commit:
        return "unknown"
    sha, dirty, _ = commit.partition("-dirty")
    return sha[:12] + dirty


def profile_section(profiles: list[dict]) -> str:
    """The profiler section: per configuration, the time of each region and the top operators per algorithm."""
    lines = ["## Where the time goes: torch.profiler, one step per algorithm", ""]
    if not profiles:
        return "\n".join(lines + ["Not measured: no profile results in this run.", ""])
    lines += ["`dpbench profile`: warm-up steps, then one training step under `torch.profiler` in four regions "
              "(ms per step, wall time of the region as the profiler records it, profiler overhead included). "
              "Operators by self CPU time (time inside the operator, not its children); the autograd "
              "engine's `evaluate_function` entries also hold the Python hooks that run inside them.", ""]
    groups: dict[tuple, list[dict]] = {}
    for result in profiles:
        c = result["config"]
        key = (device_label(result["environment"]), c["model"], c["image_size"], c["batch_size"])
        groups.setdefault(key, []).append(result)
    for (device, model, size, batch), results in groups.items():
        results.sort(key=lambda r: algorithm_rank(r["config"]["algorithm"]))
        lines += [f"### {model} {size}², batch {batch}, {device}", "", _region_table(results), ""]
        for result in results:
            lines += [f"**{algorithm_label(result['config']['algorithm'])}**, top operators by self CPU time:", "",
                      _ops_table(result["top_ops"], "self_cpu"), ""]
            if result.get("top_cuda_ops"):
                lines += [f"**{algorithm_label(result['config']['algorithm'])}**, top operators by self CUDA time:", "",
                          _ops_table(result["top_cuda_ops"], "self_device"), ""]
    return "\n".join(lines)


def _region_table(results: list[dict]) -> str:
    reference = next((r for r in results if r["config"]["algorithm"] == REFERENCE), None)
    rows = []
    for r in results:
        row = {"algorithm": algorithm_label(r["config"]["algorithm"])}
        row |= {label: _ms(r["regions"].get(name)) for name, label in REGION_LABELS.items()}
        row["step (ms)"] = _ms(r["step_wall_ms"])
        row["step ÷ non-private"] = ("—" if reference is None else f"{r['step_wall_ms'] / reference['step_wall_ms']:.3g}")
        rows.append(row)
    return formatted_table(pd.DataFrame(rows))


def _ms(value) -> str:
    return "—" if value is None else f"{value:.1f}"


TOP_OPS_SHOWN = 8


def _ops_table(ops: list[dict], prefix: str) -> str:
    rows = [{"operator": f"`{op['name']}`", "self ms": f"{op[f'{prefix}_ms']:.2f}",
             "share": f"{op[f'{prefix}_share']:.1%}", "calls": op["calls"]} for op in ops[:TOP_OPS_SHOWN]]
    return formatted_table(pd.DataFrame(rows))
