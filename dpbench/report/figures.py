"""The figures (seaborn, PNG and PDF) drawn from the result tables of dpbench.report.tables.

Each function takes a table (a data frame read from results/tables/*.csv) and returns a matplotlib
figure; colours and names of the algorithms come from dpbench.report.style, so an algorithm has the
same colour in every figure. A configuration whose private algorithm was not verified exact
(dpbench.verify, the tables' `verified` column) is marked: its label says "wrong: <algorithm>" or
"not verified: <algorithm>" (Figure 3), or a red cross / grey ring is drawn over its point (Figure 4,
throughput vs batch size)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (after choosing the non-interactive backend)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator, ScalarFormatter  # noqa: E402

from dpbench.report.style import CHOICE_COLOURS, algorithm_label, ordered_algorithms, palette  # noqa: E402
from dpbench.report.ratios import CONFIGURATION  # noqa: E402

sns.set_theme(style="whitegrid", context="notebook", font_scale=0.85)


def _labelled(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str], dict[str, str]]:
    """The frame with an 'Algorithm' display column, the hue order and the palette."""
    algorithms = ordered_algorithms(frame["algorithm"])
    out = frame.assign(Algorithm=frame["algorithm"].map(algorithm_label))
    return out, [algorithm_label(a) for a in algorithms], palette(algorithms)


def _config_label(frame: pd.DataFrame) -> pd.Series:
    """'resnet18' or 'vgg11 @224' when a model appears at several image sizes."""
    sizes = frame.groupby("model")["image_size"].transform("nunique")
    return np.where(sizes > 1, frame["model"] + " @" + frame["image_size"].astype(str), frame["model"])


def _verification(frame: pd.DataFrame, column: str = "verified") -> pd.Series:
    """Per row: 'wrong', 'unverified' (skipped: a private algorithm whose check did not run) or ''
    (exact, non-private, or a table without the column / a result written before there was a check)."""
    from dpbench.verify import status_of

    if column not in frame:
        return pd.Series("", index=frame.index)
    status = frame[column].map(status_of)
    private = frame["algorithm"] != "nonprivate"
    return pd.Series(np.where(status == "wrong", "wrong", np.where((status == "skipped") & private, "unverified", "")),
                     index=frame.index)


def _flagged_labels(data: pd.DataFrame, flags: pd.Series) -> pd.Series:
    """The Configuration labels with a line naming the algorithms that were wrong or not verified."""
    suffix = {}
    for configuration, group in data.assign(_flag=flags).groupby("Configuration", sort=False):
        lines = [f"{kind}: {', '.join(sorted(set(group.loc[group['_flag'] == flag, 'Algorithm'])))}"
                 for flag, kind in (("wrong", "WRONG"), ("unverified", "not verified"))
                 if (group["_flag"] == flag).any()]
        suffix[configuration] = "".join(f"\n{line}" for line in lines)
    return data["Configuration"] + data["Configuration"].map(suffix)


_MARKS = {"wrong": ({"marker": "X", "color": "#d62728", "s": 120}, {"marker": "X", "color": "#d62728"},
                    "computation WRONG (dpbench.verify)"),
          "unverified": ({"marker": "o", "facecolors": "none", "edgecolors": "0.4", "s": 160},
                         {"marker": "o", "markerfacecolor": "none", "color": "0.4"}, "not verified (dpbench.verify)")}


def _mark_points(ax, x, y, flags: pd.Series) -> None:
    """A red cross over each point whose computation was wrong, a grey ring over each one not verified."""
    for flag, (style, _, _) in _MARKS.items():
        chosen = (flags == flag).to_numpy()
        if chosen.any():
            ax.scatter(np.asarray(x)[chosen], np.asarray(y)[chosen], zorder=5, linewidths=1.5, **style)


def _legend_marks(flags: pd.Series) -> list[Line2D]:
    """Legend handles of the marks that `_mark_points` draws for these flags."""
    return [Line2D([], [], linestyle="", label=label, markersize=8, markeredgewidth=1.5, **handle)
            for flag, (_, handle, label) in _MARKS.items() if (flags == flag).any()]


def _devices(frame: pd.DataFrame) -> str:
    return "; ".join(sorted(frame["device"].dropna().unique()))


def _empty(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def _bars(ax, data, y, hue_order, colours, ylabel, title):
    sns.barplot(data=data, x="Configuration", y=y, hue="Algorithm", hue_order=hue_order, palette=colours,
                errorbar=None, ax=ax)
    for container in ax.containers:
        ax.bar_label(container, fmt="%.0f", fontsize=6, rotation=90, padding=2)
    values = data[y].replace(0, np.nan).dropna()
    if len(values) and values.max() / values.min() > 50:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_xlabel("")
    ax.set_title(title)
    ax.margins(y=0.15)


def figure3(maxbatch: pd.DataFrame) -> plt.Figure:
    """Figure 3 pair: maximum batch size (left) and throughput at that batch size (right), per model and algorithm."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    if maxbatch.empty:
        _empty(left, "no maxbatch results")
        _empty(right, "no maxbatch results")
        return fig
    data, hue_order, colours = _labelled(maxbatch)
    data["Configuration"] = _config_label(data)
    flags = _verification(data)
    if "verified_at_max" in data:  # the search's record or the throughput run's: either one not exact flags it
        at_max = _verification(data, "verified_at_max")
        flags = flags.where((flags == "wrong") | (at_max == ""), at_max)
    data["Configuration"] = _flagged_labels(data, flags)
    budgets = sorted({f"{b:.3g} GB" for b in data["memory_budget_gb"].dropna()}) or ["device memory"]
    if len(budgets) > 1:  # say under each configuration which budget it had
        data["Configuration"] += data["memory_budget_gb"].map(lambda b: f"\n{b:.3g} GB" if pd.notna(b) else "")
    _bars(left, data, "max_batch_size", hue_order, colours, "maximum batch size",
          f"Maximum batch size within {budgets[0]}" if len(budgets) == 1 else "Maximum batch size within the memory budget")
    measured = data.groupby("Configuration")["throughput_at_max_img_s"].transform(lambda v: v.notna().any())
    if measured.any():  # configurations whose throughput was not measured are left out, not drawn as 0
        _bars(right, data[measured].fillna({"throughput_at_max_img_s": 0}), "throughput_at_max_img_s", hue_order,
              colours, "throughput (images/s)", "Throughput at the maximum batch size")
        right.get_legend().remove()
    else:
        _empty(right, "throughput at the maximum batch size not measured")
    sns.move_legend(left, "upper left", bbox_to_anchor=(0, -0.12), ncol=min(len(hue_order), 5), title=None,
                    frameon=False)
    fig.suptitle(f"Figure 3: maximum batch size and throughput ({_devices(data)})")
    fig.tight_layout()
    return fig


def _ratio_lines(ax, slopes, lo, hi):
    """The lines y = slope·x, labelled inside the axes: the lower one below, the upper one above."""
    xs = np.array([lo, hi])
    for slope, style, offset in zip(slopes, ["-", "--"], [-11, 4]):
        ax.plot(xs, slope * xs, color="0.4", linestyle=style, linewidth=1, zorder=0)
        x = hi / 2.5
        ax.annotate(f"{slope:g}×", (x, slope * x), textcoords="offset points", xytext=(0, offset), fontsize=8,
                    color="0.3", ha="center")


def _plain_log_ticks(ax) -> None:
    """Log axes labelled 20, 50, 100, 200 ... instead of 2×10¹."""
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axis.set_minor_formatter(NullFormatter())


def figure4(throughput: pd.DataFrame, dp_algorithm: str) -> plt.Figure:
    """Figure 4 scatter: DP vs non-private peak memory (lines 1.0× and 1.1×) and time per image
    (lines 1.5× and 2.0×), one point per configuration measured with both."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5))
    ok = throughput[~throughput["oom"].astype(bool) & throughput["throughput_img_s"].notna()]
    pairs = ok[ok["algorithm"] == "nonprivate"].merge(ok[ok["algorithm"] == dp_algorithm], on=CONFIGURATION,
                                                      suffixes=("_np", "_dp"))
    label = algorithm_label(dp_algorithm)
    if pairs.empty:
        for ax in (left, right):
            _empty(ax, f"no configuration measured with both non-private and {label}")
        return fig
    pairs["Configuration"] = _config_label(pairs)
    pairs["batch"] = pairs["batch_size"].astype(str)
    flags = (_verification(pairs.rename(columns={"verified_dp": "verified", "algorithm_dp": "algorithm"}))
             if "verified_dp" in pairs else pd.Series("", index=pairs.index))
    pairs["ms_np"] = 1000 / pairs["throughput_img_s_np"]
    pairs["ms_dp"] = 1000 / pairs["throughput_img_s_dp"]
    for ax, x, y, slopes, unit, title in [
        (left, "peak_memory_mb_np", "peak_memory_mb_dp", (1.0, 1.1), "peak memory (MB)", "Memory"),
        (right, "ms_np", "ms_dp", (1.5, 2.0), "time per image (ms)", "Time"),
    ]:
        sns.scatterplot(data=pairs, x=x, y=y, hue="Configuration", style="batch", s=70, ax=ax)
        _mark_points(ax, pairs[x], pairs[y], flags)
        lo = min(pairs[x].min(), pairs[y].min()) * 0.8
        hi = max(pairs[x].max(), pairs[y].max()) * 1.2
        _ratio_lines(ax, slopes, lo, hi)
        ax.set_xscale("log")
        ax.set_yscale("log")
        _plain_log_ticks(ax)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi * 2.2)
        ax.set_xlabel(f"non-private {unit}")
        ax.set_ylabel(f"{label} {unit}")
        ax.set_title(f"{title}: {label} vs non-private (lines: {slopes[0]:g}× and {slopes[1]:g}×)")
    left.get_legend().remove()
    marks = _legend_marks(flags)
    if marks:
        legend = right.get_legend()
        right.legend(handles=[*legend.legend_handles, *marks],
                     labels=[*(t.get_text() for t in legend.get_texts()), *(h.get_label() for h in marks)])
    sns.move_legend(right, "upper left", bbox_to_anchor=(1.02, 1), title=None, frameon=False)
    fig.suptitle(f"Figure 4: DP ({label}) vs non-private training ({_devices(pairs)})")
    fig.tight_layout()
    return fig


def layerwise(layers: pd.DataFrame) -> plt.Figure:
    """Per layer: the ghost-norm cost 2T² and the instantiation cost p·d (per sample, log scale), each
    layer coloured by the mixed rule's choice; one panel per (model, image size)."""
    layers = layers[(layers["layer"] != "TOTAL") & layers["ghost_space"].notna()]
    groups = list(layers.groupby(["model", "image_size"], sort=False))
    ncols = 1 if len(groups) == 1 else 2
    nrows = max(1, -(-len(groups) // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(7 * ncols, 3.8 * nrows), squeeze=False)
    for ax in axes.flat[len(groups):]:
        ax.set_visible(False)
    if not groups:
        axes.flat[0].set_visible(True)
        _empty(axes.flat[0], "no layer with a ghost norm")
        return fig
    for ax, ((model, size), group) in zip(axes.flat, groups):
        x = np.arange(len(group))
        colours = group["choice"].map(CHOICE_COLOURS).fillna("0.5")
        ax.plot(x, group["ghost_space"], color="0.75", linewidth=1, zorder=1)
        ax.plot(x, group["instantiate_space"], color="0.75", linewidth=1, linestyle="--", zorder=1)
        ax.scatter(x, group["ghost_space"], c=colours, marker="o", s=36, zorder=2, edgecolors="black", linewidths=0.4)
        ax.scatter(x, group["instantiate_space"], c=colours, marker="s", s=36, zorder=2, edgecolors="black",
                   linewidths=0.4)
        ax.set_yscale("log")
        ax.set_title(f"{model} at {size}×{size}")
        ax.set_ylabel("elements per sample")
        if len(group) <= 30:
            ax.set_xticks(x, group["layer"], rotation=60, ha="right", fontsize=7)
        else:
            ax.set_xlabel("layer (forward order)")
    handles = [Line2D([], [], marker="o", linestyle="", color="0.3", label="ghost norm: 2T²"),
               Line2D([], [], marker="s", linestyle="", color="0.3", label="instantiation: p·d"),
               *[Line2D([], [], marker="o", linestyle="", color=c, label=f"mixed rule chooses {k}")
                 for k, c in CHOICE_COLOURS.items()]]
    fig.legend(handles=handles, loc="lower center", ncol=4, frameon=False)
    fig.suptitle("Layerwise cost of the per-sample norm and the mixed ghost choice (ghost iff 2T² ≤ p·d)")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def throughput_vs_batch(throughput: pd.DataFrame) -> plt.Figure:
    """Throughput against batch size, one panel per model (and image size), one line per algorithm."""
    ok = throughput[~throughput["oom"].astype(bool) & throughput["throughput_img_s"].notna()]
    if ok.empty:
        fig, ax = plt.subplots(figsize=(6, 4))
        _empty(ax, "no successful bench result")
        return fig
    data, hue_order, colours = _labelled(ok)
    data["Configuration"] = _config_label(data)
    grid = sns.relplot(data=data, x="batch_size", y="throughput_img_s", hue="Algorithm", hue_order=hue_order,
                       palette=colours, col="Configuration", col_wrap=min(4, data["Configuration"].nunique()),
                       kind="line", marker="o", errorbar=None, height=3.2, aspect=1.1,
                       facet_kws={"sharey": False, "sharex": False})
    flags = _verification(data)
    for (name, facet), ax in zip(data.groupby("Configuration", sort=False), grid.axes.flat):
        _mark_points(ax, facet["batch_size"], facet["throughput_img_s"], flags[facet.index])
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(facet["batch_size"].unique()))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_locator(NullLocator())
    grid.set_axis_labels("batch size", "throughput (images/s)")
    grid.set_titles("{col_name}")
    if flags.ne("").any():
        grid.figure.legend(handles=_legend_marks(flags), loc="upper center", ncol=2, frameon=False,
                           bbox_to_anchor=(0.5, 0.0))
    grid.figure.suptitle(f"Throughput vs batch size ({_devices(data)})", y=1.03)
    return grid.figure


def accuracy_vs_epsilon(accuracy: pd.DataFrame) -> plt.Figure:
    """Test accuracy against the target epsilon, one line per algorithm and (model, dataset); each
    non-private run (no ε) is a dashed horizontal line: the ceiling of its (model, dataset)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    data = accuracy[accuracy["test_accuracy"].notna()].copy()
    data["accuracy_pct"] = np.where(data["test_accuracy"] <= 1, 100 * data["test_accuracy"], data["test_accuracy"])
    data["Run"] = data["model"] + " on " + data["dataset"].astype(str)
    ceilings = data[data["target_epsilon"].isna() & (data["algorithm"] == "nonprivate")]
    private = data[data["target_epsilon"].notna()]
    if private.empty and ceilings.empty:
        _empty(ax, "no training result")
        return fig
    if not private.empty:
        private, hue_order, colours = _labelled(private)
        sns.lineplot(data=private, x="target_epsilon", y="accuracy_pct", hue="Algorithm", hue_order=hue_order,
                     palette=colours, style="Run", markers=True, markersize=8, errorbar=None, ax=ax)
    colour = palette(["nonprivate"])[algorithm_label("nonprivate")]
    for run, group in ceilings.groupby("Run", sort=True):
        ax.axhline(group["accuracy_pct"].max(), color=colour, linestyle="--", linewidth=1.2,
                   label=f"{algorithm_label('nonprivate')} ceiling, {run}")
    low, high = data["accuracy_pct"].min(), data["accuracy_pct"].max()
    ax.set_ylim(max(0.0, min(low - 2, high - 10)), min(100.0, high + 2))  # a 10-point window at least
    ax.set_xlabel("target ε (δ as in the run)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Accuracy of DP training vs ε ({_devices(data)})")
    if private.empty:  # only ceilings: the x axis has no ε to show
        ax.set_xticks([])
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    fig.tight_layout()
    return fig


def save(fig: plt.Figure, out_dir: Path, name: str) -> list[Path]:
    """Write name.png (150 dpi) and name.pdf; close the figure."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        path = out_dir / f"{name}.{ext}"
        tmp = out_dir / f".{name}.tmp.{ext}"
        fig.savefig(tmp, dpi=150, bbox_inches="tight")
        tmp.replace(path)
        paths.append(path)
    plt.close(fig)
    return paths
