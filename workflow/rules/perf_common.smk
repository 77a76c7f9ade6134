"""Result paths, target lists and options of the profile and performance-report rules (profile.smk,
perf.smk); included right after common.smk, whose helpers it uses."""

PROFILE = "results/profile/{model}_s{image_size}_b{batch_size}/{algorithm}.json"
# The performance report and the committed tables it reads: the study's (paper/performance.md) unless the
# config's optional `performance` section names others (config/vit_cpu.yaml: the vision transformers').
_PERFORMANCE = {"layout": "study", "out": "paper/performance.md", "before_after": "paper/perf_before_after.csv",
                "ratios": "paper/perf_ratios.csv"} | config.get("performance", {})
PERFORMANCE = _PERFORMANCE["out"]
PERFORMANCE_LAYOUT = _PERFORMANCE["layout"]
PERFORMANCE_CAPTION = {"study": "../report/performance.rst", "vit": "../report/vit_performance.rst"}[PERFORMANCE_LAYOUT]
if PERFORMANCE_LAYOUT == "vit" and (config["bench"] or config["maxbatch"]):
    raise ValueError("config: the performance layout vit reports the committed tables and profiles only; "
                     "bench and maxbatch must be empty")
BEFORE_AFTER = str(REPO / _PERFORMANCE["before_after"])
ALTERNATING_RATIOS = str(REPO / _PERFORMANCE["ratios"])


def profile_entries(wildcards=None):
    """(entry, model, image size, batch size, algorithm) of every profile job; with wildcards, only
    those of that job (the first one's entry gives its warm-up and number of classes)."""
    for entry in config["profile"]:
        for m, i, b, a in product(entry["models"], entry["image_sizes"], entry["batch_sizes"], entry["algorithms"]):
            if wildcards is None or (m, str(i), str(b), a) == (wildcards.model, wildcards.image_size,
                                                               wildcards.batch_size, wildcards.algorithm):
                yield entry, m, i, b, a


def profile_files():
    return sorted({PROFILE.format(model=m, image_size=i, batch_size=b, algorithm=a)
                   for _, m, i, b, a in profile_entries()})


def profile_group(wildcards):
    return f"profile.{wildcards.model}.s{wildcards.image_size}.b{wildcards.batch_size}"


def profile_previous(wildcards):
    """The profile run just before this one in its group (the first entry naming this configuration
    gives the algorithms' order; groups alternate as in common.smk)."""
    entry = next(profile_entries(wildcards))[0]
    key = (wildcards.model, int(wildcards.image_size), int(wildcards.batch_size))
    order = algorithm_order(entry, group_position(entry, *key))
    earlier = [PROFILE.format(**{**wildcards, "algorithm": a}) for a in _previous(order, wildcards.algorithm)]
    return [chain_link(earlier[0], earlier + [PROFILE.format(**wildcards)], "profile")] if earlier else []


def profile_options(wildcards):
    entry = next(profile_entries(wildcards))[0]
    return (f"--model {wildcards.model} --algorithm {wildcards.algorithm} --image-size {wildcards.image_size}"
            f" --batch-size {wildcards.batch_size} --num-classes {entry['num_classes']} --warmup {entry['warmup']}"
            f" --dtype {config['dtype']} {device_options()}")


def performance_files():
    """The performance report, when this config measures anything it reports on (the vit layout: also
    when it only renders the committed tables)."""
    measures = config["bench"] or config["maxbatch"] or config["profile"]
    return [PERFORMANCE] if measures or PERFORMANCE_LAYOUT == "vit" else []


def layout_option():
    return "" if PERFORMANCE_LAYOUT == "study" else f"--layout {PERFORMANCE_LAYOUT}"


def reproduction_files():
    """The paper-reproduction report, when this config makes tables to compare with the paper."""
    return [REPRODUCTION] if table_names() else []


def before_after_input(wildcards):
    """The committed before/after table of the engine's optimisation, where it exists."""
    return [BEFORE_AFTER] if Path(BEFORE_AFTER).exists() else []


def before_after_option(wildcards, input):
    return f"--before-after {shlex.quote(input.before_after[0])}" if input.before_after else ""


def ratios_input(wildcards):
    """The committed ratios to nonprivate over alternating runs, where they exist."""
    return [ALTERNATING_RATIOS] if Path(ALTERNATING_RATIOS).exists() else []


def ratios_option(wildcards, input):
    return f"--ratios {shlex.quote(input.ratios[0])}" if input.ratios else ""


def cost_model_files():
    """The analytic cost tables (rule complexity) of the models whose bounds the vit report shows."""
    return sorted({COMPLEXITY_CSV.format(model=m, image_size=i) for entry in _PERFORMANCE.get("cost_model", [])
                   for m in entry["models"] for i in entry["image_sizes"]})


def cost_model_option(wildcards, input):
    return f"--cost-model {' '.join(shlex.quote(f) for f in input.cost_model)}" if input.cost_model else ""
