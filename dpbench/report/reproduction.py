"""paper/reproduction.md: every number the paper reports (paper/reported.csv) next to this run's
counterpart, their ratio, and the devices; absolute numbers depend on the device, so the report
also compares the ratios that do not (slowdown and memory overhead vs non-private, max batch vs Opacus).
Every row of ours says whether its algorithm's computation was verified exact on the model (dpbench.verify,
the tables' `verified`); a wrong one is shown but neither counted as a counterpart nor as evidence for a
headline claim: a wrong implementation must not pass as a slow one."""

from __future__ import annotations

import math

import pandas as pd

from dpbench.report.ratios import ratio_to
from dpbench.report.style import algorithm_label
from dpbench.verify import status_of

MB_PER_GB = 1000.0
VERIFIED_NOTE = ("Verified = whether the algorithm's per-sample norms and clipped sum matched brute force on the run's "
                 "first step (dpbench.verify): a wrong row is not counted as a counterpart.")


def _num(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, str):
        return value
    if abs(value) >= 10 ** digits:
        return f"{value:.{digits}g}" if abs(value) >= 1e6 else f"{value:.0f}"
    return f"{value:.{digits}g}"


def _ratio(ours, paper) -> float:
    try:
        ours, paper = float(ours), float(paper)
    except (TypeError, ValueError):
        return math.nan
    return ours / paper if paper else math.nan


def _paper_number(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return value  # "OOM", a choice, ...


def _table(rows: list[dict]) -> str:
    return pd.DataFrame(rows).to_markdown(index=False) + "\n" if rows else "Nothing reported in this section.\n"


class Ours:
    """This run's tables, with the look-ups the report needs."""

    def __init__(self, throughput: pd.DataFrame | None, maxbatch: pd.DataFrame | None,
                 accuracy: pd.DataFrame | None, layers: pd.DataFrame | None, epoch_images: int = 50000,
                 failures: pd.DataFrame | None = None):
        self.throughput = throughput if throughput is not None else pd.DataFrame(
            columns=["model", "image_size", "batch_size", "algorithm", "throughput_img_s", "peak_memory_mb", "oom",
                     "device"])
        self.maxbatch = maxbatch if maxbatch is not None else pd.DataFrame(
            columns=["model", "image_size", "algorithm", "max_batch_size", "throughput_at_max_img_s", "device",
                     "memory_budget_gb"])
        self.accuracy = accuracy if accuracy is not None else pd.DataFrame(
            columns=["model", "dataset", "algorithm", "target_epsilon", "epsilon", "test_accuracy", "device"])
        self.layers = layers if layers is not None else pd.DataFrame(
            columns=["model", "image_size", "layer", "type", "ghost_space", "instantiate_space", "choice"])
        self.epoch_images = epoch_images
        # tables written before dpbench recorded a verification
        self.throughput = _with_columns(self.throughput, "verified")
        self.maxbatch = _with_columns(self.maxbatch, "verified", "verified_at_max")
        self.accuracy = _with_columns(self.accuracy, "verified")
        self.maxbatch = self.maxbatch.assign(throughput_at_max_vs_nonprivate=ratio_to(
            self.maxbatch, "throughput_at_max_img_s", ["device", "model", "image_size", "memory_budget_gb"]))
        self.failures = failures

    def devices(self) -> list[str]:
        frames = [self.throughput, self.maxbatch, self.accuracy]
        return sorted({d for f in frames for d in f["device"].dropna().unique()})

    def bench_batch(self, model: str, image_size: int, preferred: int | None) -> int | None:
        """The batch size to compare at: the paper's if we measured it, else our largest with a
        non-private result."""
        rows = self.throughput[(self.throughput["model"] == model) & (self.throughput["image_size"] == image_size)
                               & (self.throughput["algorithm"] == "nonprivate") & ~self.throughput["oom"].astype(bool)]
        if rows.empty:
            return None
        if preferred is not None and preferred in set(rows["batch_size"]):
            return preferred
        return int(rows["batch_size"].max())

    def bench_row(self, model, image_size, batch_size, algorithm) -> pd.Series | None:
        rows = self.throughput[(self.throughput["model"] == model) & (self.throughput["image_size"] == image_size)
                               & (self.throughput["batch_size"] == batch_size)
                               & (self.throughput["algorithm"] == algorithm)]
        return None if rows.empty else rows.iloc[0]

    def epoch_time_and_memory(self, model, image_size, batch_size, algorithm) -> tuple:
        """(s per epoch, GB, device) of one configuration; 'OOM' for out of memory; None if not measured."""
        row = self.bench_row(model, image_size, batch_size, algorithm)
        if row is None:
            return None, None, None
        if bool(row["oom"]):
            return "OOM", "OOM", row["device"]
        return (self.epoch_images / row["throughput_img_s"], row["peak_memory_mb"] / MB_PER_GB, row["device"])

    def maxbatch_row(self, model, image_size, algorithm) -> pd.Series | None:
        rows = self.maxbatch[(self.maxbatch["model"] == model) & (self.maxbatch["image_size"] == image_size)
                             & (self.maxbatch["algorithm"] == algorithm)]
        return None if rows.empty else rows.iloc[0]


def _with_columns(frame: pd.DataFrame, *columns: str) -> pd.DataFrame:
    """The frame with each missing `verified` column as 'not recorded'."""
    return frame.assign(**{c: "not recorded" for c in columns if c not in frame.columns})


def _wrong(row, *columns: str) -> bool:
    """Whether a row of ours was verified wrong (by any of its verification columns)."""
    return row is not None and any(status_of(row.get(c)) == "wrong" for c in columns or ("verified",))


def _verified(row, column: str = "verified") -> str:
    """A row's verification as shown ('—' when there is no row)."""
    if row is None:
        return "—"
    value = row.get(column)
    return "not recorded" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def _slowdown(ours: Ours, model, size, batch, algorithm):
    """Time per epoch ÷ non-private's: 1 ÷ the throughput ratio of the bench table."""
    row = ours.bench_row(model, size, batch, algorithm)
    return math.nan if row is None else _ratio(1.0, row["throughput_vs_nonprivate"])


def _memory_ratio(ours: Ours, model, size, batch, algorithm):
    """Peak memory ÷ non-private's, from the bench table."""
    row = ours.bench_row(model, size, batch, algorithm)
    return math.nan if row is None else float(row["memory_vs_nonprivate"])


def _paper_lookup(reported: pd.DataFrame, **where) -> float | str | None:
    rows = reported
    for key, value in where.items():
        rows = rows[rows[key] == value]
    return None if rows.empty else _paper_number(rows.iloc[0]["value"])


def section_table4(reported: pd.DataFrame, ours: Ours) -> tuple[str, int, int]:
    paper = reported[reported["source"] == "Table 4"]
    rows, found = [], 0
    for (model, algorithm), group in paper.groupby(["model", "algorithm"], sort=False):
        size, batch = int(group["image_size"].iloc[0]), int(group["batch_size"].iloc[0])
        p_time = _paper_lookup(group, quantity="epoch_time_s")
        p_mem = _paper_lookup(group, quantity="memory_gb")
        p_time_np = _paper_lookup(paper, model=model, algorithm="nonprivate", quantity="epoch_time_s")
        p_mem_np = _paper_lookup(paper, model=model, algorithm="nonprivate", quantity="memory_gb")
        our_batch = ours.bench_batch(model, size, batch)
        time, mem, device = ours.epoch_time_and_memory(model, size, our_batch, algorithm)
        ours_row = ours.bench_row(model, size, our_batch, algorithm) if our_batch is not None else None
        if not _wrong(ours_row):  # a wrong computation is no counterpart
            found += (time is not None) + (mem is not None)
        rows.append({
            "model": model, "algorithm": algorithm_label(algorithm),
            "paper s/epoch": _num(p_time), "ours s/epoch": _num(time), "time ours/paper": _num(_ratio(time, p_time)),
            "paper GB": _num(p_mem), "ours GB": _num(mem), "memory ours/paper": _num(_ratio(mem, p_mem)),
            "paper slowdown": _num(_ratio(p_time, p_time_np)),
            "our slowdown": _num(_slowdown(ours, model, size, our_batch, algorithm)),
            "paper memory ratio": _num(_ratio(p_mem, p_mem_np)),
            "our memory ratio": _num(_memory_ratio(ours, model, size, our_batch, algorithm)),
            "our batch": our_batch if our_batch is not None else "—", "our device": device or "—",
            "our budget": _budget(ours.bench_row(model, size, our_batch, algorithm)),
            "verified": _verified(ours_row),
        })
    text = ("## Table 4: time per epoch and memory (CIFAR-10, 32×32)\n\n"
            "Paper: physical batch 256 on a 16 GB GPU, OOM = over 16 GB. Ours: OOM = over our budget (column "
            "\"our budget\"; — = the device's whole memory). Time per epoch = "
            f"{ours.epoch_images} / median throughput at our batch size (the paper's 256 where measured), memory = "
            "peak memory of a step. Slowdown = time / non-private time; memory ratio = memory / non-private memory, "
            "both at the same batch size on the same device. " + VERIFIED_NOTE + "\n\n" + _table(rows))
    return text, found, 2 * len(rows)


def section_figure3(reported: pd.DataFrame, ours: Ours) -> tuple[str, int, int]:
    paper = reported[(reported["source"] == "Figure 3")]
    rows, found = [], 0
    for (model, algorithm), group in paper.groupby(["model", "algorithm"], sort=False):
        size = int(group["image_size"].iloc[0])
        p_max = _paper_lookup(group, quantity="max_batch")
        p_thr = _paper_lookup(group, quantity="throughput_at_max_batch")
        p_max_opacus = _paper_lookup(paper, model=model, algorithm="opacus", quantity="max_batch")
        p_thr_np = _paper_lookup(paper, model=model, algorithm="nonprivate", quantity="throughput_at_max_batch")
        row = ours.maxbatch_row(model, size, algorithm)
        opacus = ours.maxbatch_row(model, size, "opacus")
        o_max = None if row is None else row["max_batch_size"]
        o_thr = None if row is None else row["throughput_at_max_img_s"]
        if not _wrong(row, "verified", "verified_at_max"):
            found += (o_max is not None) + (o_thr is not None and not pd.isna(o_thr))
        rows.append({
            "model": model, "algorithm": algorithm_label(algorithm),
            "paper max batch": _num(p_max), "our max batch": _num(o_max), "batch ours/paper": _num(_ratio(o_max, p_max)),
            "paper ratio to Opacus": _num(_ratio(p_max, p_max_opacus)),
            "our ratio to Opacus": _num(_ratio(o_max, None if opacus is None else opacus["max_batch_size"])),
            "paper img/s at max": _num(p_thr), "our img/s at max": _num(o_thr), "img/s ours/paper": _num(_ratio(o_thr, p_thr)),
            "paper throughput / non-private": _num(_ratio(p_thr, p_thr_np)),
            "ours / non-private": _num(None if row is None else row["throughput_at_max_vs_nonprivate"]),
            "our budget GB": _num(None if row is None else row["memory_budget_gb"]),
            "our device": "—" if row is None else row["device"],
            "verified": _verified(row), "verified at max": _verified(row, "verified_at_max"),
        })
    text = ("## Figure 3: maximum batch size and throughput at it (CIFAR-10, 32×32)\n\n"
            "Paper: 16 GB GPU, values read off the chart (±5%). Ours: the largest batch size whose peak memory "
            "stays within our budget, and the median throughput measured at that batch size. Verified: the "
            "search's and the throughput run's (dpbench.verify); a wrong one is not counted.\n\n" + _table(rows))
    return text, found, 2 * len(rows)


def section_figure4(reported: pd.DataFrame, ours: Ours, dp_algorithm: str) -> tuple[str, int, int]:
    paper = reported[(reported["source"] == "Figure 4")]
    points = paper[paper["quantity"].isin(["memory_gb", "epoch_time_s"])]
    rows, found, total = [], 0, 0
    for model, group in points.groupby("model", sort=False):
        size = int(group["image_size"].iloc[0])
        batch = ours.bench_batch(model, size, None)
        entry = {"model": model, "image size": size}
        for quantity, label in [("memory_gb", "memory"), ("epoch_time_s", "time")]:
            p_np = _paper_lookup(group, quantity=quantity, algorithm="nonprivate")
            p_dp = _paper_lookup(group, quantity=quantity, algorithm="mixed_ghost")
            ratio = _slowdown if quantity == "epoch_time_s" else _memory_ratio
            o_ratio = ratio(ours, model, size, batch, dp_algorithm) if batch is not None else math.nan
            total += 1
            found += not math.isnan(o_ratio)
            entry[f"paper {label} ratio"] = _num(_ratio(p_dp, p_np))
            entry[f"our {label} ratio"] = _num(o_ratio)
        row = ours.bench_row(model, size, batch, dp_algorithm) if batch is not None else None
        entry["our batch"] = batch if batch is not None else "—"
        entry["our device"] = "—" if row is None else row["device"]
        entry["verified"] = _verified(row)
        if _wrong(row):
            found -= sum(not math.isnan(ratio(ours, model, size, batch, dp_algorithm))
                         for ratio in (_memory_ratio, _slowdown))
        rows.append(entry)
    band = _band_check(paper, ours, dp_algorithm)
    text = ("## Figure 4: vision transformers, DP vs non-private (CIFAR-100, 224×224)\n\n"
            f"Paper: mixed ghost clipping; ours: {algorithm_label(dp_algorithm)}. Ratio = DP / non-private at the "
            "same batch size on the same device (time ratio = slowdown).\n\n" + _table(rows) + "\n" + band)
    return text, found, total


def _band_check(paper: pd.DataFrame, ours: Ours, dp_algorithm: str) -> str:
    bounds = {q: _paper_lookup(paper, quantity=q) for q in
              ("memory_ratio_min", "memory_ratio_max", "time_ratio_min", "time_ratio_max")}
    if any(v is None for v in bounds.values()):
        return ""
    models = [m for m in ours.throughput["model"].unique()
              if any(m.startswith(p) for p in ("deit", "crossvit", "convit", "beit", "vit"))]
    lines = [f"Paper: every ViT lies between memory ratios {bounds['memory_ratio_min']:g}–{bounds['memory_ratio_max']:g} "
             f"and time ratios {bounds['time_ratio_min']:g}–{bounds['time_ratio_max']:g}."]
    if not models:
        return lines[0] + " This run measured no ViT.\n"
    inside, wrong = 0, 0
    for model in models:
        size = int(ours.throughput[ours.throughput["model"] == model]["image_size"].max())
        batch = ours.bench_batch(model, size, None)
        if batch is None:
            continue
        if _wrong(ours.bench_row(model, size, batch, dp_algorithm)):
            wrong += 1
            continue
        mem = _memory_ratio(ours, model, size, batch, dp_algorithm)
        time = _slowdown(ours, model, size, batch, dp_algorithm)
        inside += (bounds["memory_ratio_min"] - 0.05 <= mem <= bounds["memory_ratio_max"]
                   and bounds["time_ratio_min"] <= time <= bounds["time_ratio_max"])
    lines.append(f" In this run {inside} of {len(models)} ViTs lie in that band"
                 + (f" ({wrong} left out: their computation was verified wrong)." if wrong else "."))
    return "".join(lines) + "\n"


def section_layerwise(reported: pd.DataFrame, ours: Ours) -> tuple[str, int, int]:
    paper = reported[reported["source"] == "layerwise table"]
    rows, found, total = [], 0, 0
    for (model, layer), group in paper[paper["layer"].str.startswith("conv") & (paper["layer"] != "all convs")
                                       ].groupby(["model", "layer"], sort=False):
        index = int(layer.removeprefix("conv"))
        for size in sorted(group["image_size"].unique(), reverse=True):
            mine = ours.layers[(ours.layers["model"] == model) & (ours.layers["image_size"] == size)
                               & ours.layers["type"].astype(str).str.startswith("Conv")]
            mine = mine.iloc[index] if index < len(mine) else None
            at = group[group["image_size"] == size]
            p_choice = _paper_lookup(at, quantity="choice")
            p_ghost = _paper_lookup(at, quantity="ghost_space")
            p_inst = _paper_lookup(at, quantity="instantiate_space")
            o_choice = None if mine is None else mine["choice"]
            total += 1
            found += o_choice is not None
            rows.append({
                "model": model, "layer": layer, "ours": "—" if mine is None else mine["layer"], "image": size,
                "paper 2T²": _num(p_ghost, 4), "ours 2T²": _num(None if mine is None or p_ghost is None
                                                                 else float(mine["ghost_space"]), 4),
                "paper p·d": _num(p_inst, 4), "ours p·d": _num(None if mine is None or p_inst is None
                                                               else float(mine["instantiate_space"]), 4),
                "paper choice": p_choice, "our choice": o_choice or "—",
                "match": "—" if o_choice is None else ("yes" if o_choice == p_choice else "NO"),
            })
    totals = []
    for quantity, column in [("total_ghost_space", "ghost_space"), ("total_instantiate_space", "instantiate_space"),
                             ("total_mixed_space", None)]:
        for _, p_row in paper[paper["quantity"] == quantity].iterrows():
            convs = ours.layers[(ours.layers["model"] == p_row["model"])
                                & (ours.layers["image_size"] == int(p_row["image_size"]))
                                & ours.layers["type"].astype(str).str.startswith("Conv")]
            value = None
            if not convs.empty:
                value = float(convs[column].sum() if column else
                              convs[["ghost_space", "instantiate_space"]].min(axis=1).sum())
            totals.append({"model": p_row["model"], "image": p_row["image_size"], "quantity": quantity,
                           "paper": _num(float(p_row["value"])), "ours": _num(value),
                           "ours/paper": _num(_ratio(value, p_row["value"]))})
            total += 1
            found += value is not None
    text = ("## Layerwise choice of mixed ghost clipping (VGG11, 3×3 convs)\n\n"
            "Paper: recomputed from the architecture (device independent). Ours: `dpbench complexity`, whose choice "
            "column is the engine's rule (ghost iff 2T² ≤ p·d, per sample).\n\n" + _table(rows)
            + "\nPer-sample space summed over the conv layers:\n\n" + _table(totals))
    return text, found, total


def section_bk(reported: pd.DataFrame, ours: Ours) -> tuple[str, int, int]:
    paper = reported[reported["source"] == "BK follow-up"]
    rows, found = [], 0
    for _, p in paper.iterrows():
        size = int(p["image_size"])
        row = ours.maxbatch_row(p["model"], size, p["algorithm"])
        p_np = _paper_lookup(paper, model=p["model"], image_size=p["image_size"], algorithm="nonprivate")
        o_thr = None if row is None or pd.isna(row["throughput_at_max_img_s"]) else row["throughput_at_max_img_s"]
        found += o_thr is not None and not _wrong(row, "verified", "verified_at_max")
        rows.append({
            "model": p["model"], "image": size, "algorithm": algorithm_label(p["algorithm"]),
            "paper img/s": _num(float(p["value"])), "ours img/s": _num(o_thr),
            "ours/paper": _num(_ratio(o_thr, p["value"])),
            "paper / non-private": _num(_ratio(p["value"], p_np)),
            "ours / non-private": _num(None if row is None else row["throughput_at_max_vs_nonprivate"]),
            "our budget GB": _num(None if row is None else row["memory_budget_gb"]),
            "our device": "—" if row is None else row["device"],
            "verified": _verified(row), "verified at max": _verified(row, "verified_at_max"),
        })
    text = ("## Book-keeping follow-up (Bu et al., ICML 2023): maximum throughput\n\n"
            "Paper: throughput at the largest batch that fits (VGG11 with an ImageNet head; 0 = out of memory). "
            "Ours: throughput at our maximum batch size.\n\n" + _table(rows))
    return text, found, len(rows)


def section_accuracy(reported: pd.DataFrame, ours: Ours) -> tuple[str, int, int]:
    paper = reported[reported["quantity"] == "accuracy"]
    rows, found = [], 0
    for _, p in paper.iterrows():
        mine = ours.accuracy[ours.accuracy["dataset"].astype(str).str.lower() == str(p["dataset"]).lower()]
        mine = mine[mine["test_accuracy"].notna() & mine["target_epsilon"].notna()]  # not the non-private ceiling
        best = None
        if not mine.empty:
            target = float(p["epsilon"])
            best = mine.iloc[(mine["target_epsilon"].astype(float) - target).abs().argsort().iloc[0]]
        found += best is not None and not _wrong(best)
        accuracy = None
        if best is not None:
            accuracy = 100 * best["test_accuracy"] if best["test_accuracy"] <= 1 else best["test_accuracy"]
        rows.append({
            "paper model": p["model"], "dataset": p["dataset"], "paper ε": _num(float(p["epsilon"])),
            "paper accuracy %": _num(float(p["value"])), "source": p["source"],
            "our model / algorithm": "—" if best is None else f"{best['model']} / {algorithm_label(best['algorithm'])}",
            "our ε (spent)": "—" if best is None else _num(best["epsilon"]),
            "our accuracy %": _num(accuracy), "ours/paper": _num(_ratio(accuracy, p["value"])),
            "our device": "—" if best is None else best["device"],
            "verified": _verified(best),
        })
    text = ("## Accuracy of DP training\n\nOurs: the run on the same dataset whose target ε is nearest the "
            "paper's (any model), with the ε actually spent.\n\n" + _table(rows))
    return text, found, len(rows)


def section_headline(reported: pd.DataFrame, ours: Ours, dp_algorithm: str) -> tuple[str, int, int]:
    paper = reported[reported["source"] == "abstract"]
    label = algorithm_label(dp_algorithm)
    t = ours.throughput[~ours.throughput["oom"].astype(bool)]
    configs = t[t["algorithm"] == dp_algorithm][["model", "image_size", "batch_size"]].drop_duplicates()
    mem_ratios, slowdowns = [], []  # (ratio, "model @size, batch B")
    left_out = []  # configurations whose DP row was verified wrong: no evidence for a claim
    for c in configs.itertuples():
        where = f"{c.model} {c.image_size}², batch {c.batch_size}"
        if _wrong(ours.bench_row(c.model, c.image_size, c.batch_size, dp_algorithm)):
            left_out.append(where)
            continue
        mem_ratios.append((_memory_ratio(ours, c.model, c.image_size, c.batch_size, dp_algorithm), where))
        slowdowns.append((_slowdown(ours, c.model, c.image_size, c.batch_size, dp_algorithm), where))
    mem_ratios = [r for r in mem_ratios if not math.isnan(r[0])]
    slowdowns = [r for r in slowdowns if not math.isnan(r[0])]
    rows, found = [], 0

    def claim(text, paper_value, our_value, holds, measured=()):
        nonlocal found
        wrong = [r for r in measured if r is not None
                 and _wrong(r, *[c for c in ("verified", "verified_at_max") if c in r])]
        if wrong:  # a wrong implementation's number is no evidence either way
            our_value = "not valid: " + "; ".join(f"{algorithm_label(r['algorithm'])} {_verified(r)}" for r in wrong)
            holds = None
        found += our_value is not None and holds is not None
        rows.append({"claim": text, "paper": paper_value, "this run": our_value if our_value is not None else "—",
                     "holds here": "—" if our_value is None or holds is None else ("yes" if holds else "no"),
                     "measured on": _measured_on(measured), "verified": _claim_verified(measured)})

    bench_rows = [ours.bench_row(c.model, c.image_size, c.batch_size, a) for c in configs.itertuples()
                  for a in (dp_algorithm, "nonprivate")]
    valid_rows = [r for r in bench_rows if not _wrong(r)]  # the worst-configuration claims leave wrong ones out

    p_over = _paper_lookup(paper, quantity="memory_overhead_max")
    if p_over is not None:
        worst = max(mem_ratios) if mem_ratios else None
        claim(f"memory overhead of {label} vs non-private (worst configuration)", f"≤ {100 * p_over:.0f}%",
              None if worst is None else f"{100 * (worst[0] - 1):.1f}% ({worst[1]}; of {len(mem_ratios)} configurations"
                                         f"{_left_out(left_out)})",
              worst is not None and worst[0] - 1 <= p_over, valid_rows)
    p_slow = _paper_lookup(paper, quantity="slowdown_max")
    if p_slow is not None:
        worst = max(slowdowns) if slowdowns else None
        claim(f"slowdown of {label} vs non-private (worst configuration)", f"< {p_slow:g}×",
              None if worst is None else f"{worst[0]:.2f}× ({worst[1]}; of {len(slowdowns)} configurations"
                                         f"{_left_out(left_out)})",
              worst is not None and worst[0] < p_slow, valid_rows)
    p_speed = _paper_lookup(paper, quantity="speedup_vs_opacus", model="vgg19")
    if p_speed is not None:
        batch = ours.bench_batch("vgg19", 32, 256)
        speed, dp, op = None, None, None
        if batch is not None:
            dp, op = ours.bench_row("vgg19", 32, batch, dp_algorithm), ours.bench_row("vgg19", 32, batch, "opacus")
            if dp is not None and op is not None:
                speed = math.inf if bool(op["oom"]) else _ratio(dp["throughput_img_s"], op["throughput_img_s"])
        claim(f"VGG19: {label} throughput / Opacus", f"{p_speed:g}×",
              None if speed is None else ("Opacus OOM" if math.isinf(speed) else f"{speed:.2f}×"),
              speed is not None and speed >= p_speed, [dp, op])
    p_batch = _paper_lookup(paper, quantity="max_batch_ratio_vs_opacus", model="vgg19")
    if p_batch is not None:
        dp, op = ours.maxbatch_row("vgg19", 32, dp_algorithm), ours.maxbatch_row("vgg19", 32, "opacus")
        ratio = None if dp is None or op is None else _ratio(dp["max_batch_size"], op["max_batch_size"])
        claim(f"VGG19: {label} max batch / Opacus", f"{p_batch:g}×", None if ratio is None else f"{ratio:.1f}×",
              ratio is not None and ratio >= p_batch, [dp, op])
    p_400 = _paper_lookup(paper, quantity="max_batch", model="resnet18", image_size=400, algorithm="ghost")
    if p_400 is not None:
        ghost, mixed = ours.maxbatch_row("resnet18", 400, "ghost"), ours.maxbatch_row("resnet18", 400, "mixed_ghost")
        value = None
        if ghost is not None:
            value = f"ghost max batch {int(ghost['max_batch_size'])}" + (
                "" if mixed is None else f", mixed ghost {int(mixed['max_batch_size'])}")
        claim("ResNet18 at 400×400: plain ghost clipping cannot fit one image (max batch)", f"{p_400:g}", value,
              ghost is not None and ghost["max_batch_size"] == 0 and (mixed is None or mixed["max_batch_size"] >= 1),
              [ghost, mixed])
    text = ("## Headline claims (abstract)\n\nEach claim with the device and the memory budget it was measured "
            "under (the paper's: a 16 GB GPU), and the verification of the rows it rests on (dpbench.verify): a row "
            "whose computation was verified wrong is no evidence, so a claim resting on one is \"not valid\" and "
            "the worst-configuration claims leave such configurations out.\n\n")
    return text + _table(rows), found, len(rows)


def _left_out(configurations: list[str]) -> str:
    """'; 2 left out: computation verified wrong (vgg19 32², batch 256, ...)' or ''."""
    if not configurations:
        return ""
    return f"; {len(configurations)} left out: computation verified wrong ({', '.join(configurations)})"


def _claim_verified(rows) -> str:
    """The verification of the rows a claim rests on: 'exact', 'WRONG: ...', 'not verified: ...'."""
    rows = [r for r in rows if r is not None and r.get("algorithm") != "nonprivate"]
    if not rows:
        return "—"
    statuses = {}
    for r in rows:
        for column in ("verified", "verified_at_max"):
            if column in r:
                statuses.setdefault(status_of(r.get(column)), set()).add(algorithm_label(r["algorithm"]))
    parts = [f"{'WRONG' if s == 'wrong' else s}: {', '.join(sorted(names))}" for s, names in statuses.items()
             if s != "exact"]
    return "; ".join(parts) if parts else "exact"


def _budget(row) -> str:
    """The memory budget a bench result was measured under ('—' for none: the device's memory)."""
    from dpbench.measure.memory import format_bytes

    if row is None or pd.isna(row.get("memory_budget_bytes", math.nan)):
        return "—"
    return format_bytes(int(row["memory_budget_bytes"]))


def _measured_on(rows) -> str:
    """'NVIDIA H100 (cuda), budget 16.0 GiB' for the result rows a claim rests on."""
    from dpbench.measure.memory import format_bytes

    rows = [r for r in rows if r is not None]
    devices = sorted({str(r["device"]) for r in rows if not pd.isna(r.get("device"))})
    budgets = set()
    for r in rows:
        if not pd.isna(r.get("memory_budget_bytes", math.nan)):
            budgets.add(format_bytes(int(r["memory_budget_bytes"])))
        elif not pd.isna(r.get("memory_budget_gb", math.nan)):
            budgets.add(f"{r['memory_budget_gb']:.3g} GB")
    if not devices:
        return "—"
    return "; ".join(devices) + f", budget {' / '.join(sorted(budgets)) if budgets else 'none (the device)'}"


def render(reported: pd.DataFrame, ours: Ours, dp_algorithm: str) -> str:
    """The whole Markdown report."""
    reported = reported.copy()
    reported["layer"] = reported["layer"].fillna("").astype(str)
    sections = [section_headline(reported, ours, dp_algorithm), section_table4(reported, ours),
                section_figure3(reported, ours), section_figure4(reported, ours, dp_algorithm),
                section_layerwise(reported, ours), section_bk(reported, ours), section_accuracy(reported, ours)]
    from dpbench.report.coverage import MEMORY_NOTE, section_failures, section_uncovered
    found = sum(s[1] for s in sections)
    total = sum(s[2] for s in sections)
    devices = ours.devices() or ["(no measurement in this run)"]
    paper_devices = sorted(reported["device"].dropna().unique())
    head = (
        "# Reproduction report: Bu, Mao, Xu, *Scalable and Efficient Training of Large Convolutional Neural "
        "Networks with Differential Privacy* (NeurIPS 2022)\n\n"
        "Generated by the pipeline (`dpbench report`) from `paper/reported.csv` (the paper's numbers, each with "
        "its table or figure and whether it is exact or read off a chart) and this run's tables in "
        "`results/tables/`. Do not edit by hand.\n\n"
        "Absolute times and memory depend on the device and the batch size, so compare the **ratios**: slowdown "
        "and memory overhead vs non-private training, maximum batch size vs Opacus. \"—\" = not measured by "
        "this run's configuration (`config/paper.yaml` on a GPU measures them all).\n\n"
        f"- Paper devices: {'; '.join(paper_devices)}\n"
        f"- This run: {'; '.join(devices)}\n"
        f"- Coverage: {found} of {total} compared quantities have a counterpart in this run (the last section "
        "lists the rest).\n\n" + MEMORY_NOTE + "\n"
    )
    return (head + section_failures(ours.failures) + "\n" + "\n".join(s[0] for s in sections) + "\n"
            + section_uncovered(reported, ours))
