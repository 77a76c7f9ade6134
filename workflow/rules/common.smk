"""Configuration checks, result paths and the sweep expansions shared by every rule file."""

import hashlib
import json
import shlex
import sys
from itertools import product
from pathlib import Path

from snakemake.utils import validate
from snakemake_interface_executor_plugins.settings import DeploymentMethod

validate(config, schema="../schemas/config.schema.yaml")

REPO = Path(workflow.basedir)


def _check_unique(names, what):
    seen = set()
    for name in names:
        if name in seen:
            raise ValueError(f"config: two {what} are named {name!r}; names must be unique")
        seen.add(name)


_check_unique([s["name"] for s in config["bench"]] + [s["name"] for s in config["maxbatch"]],
              "bench/maxbatch sweeps")
_check_unique([r["name"] for r in config["train"]], "train runs")

# Sweep options by name: bench sweeps and maxbatch sweeps (whose throughput-at-max runs are benches).
SWEEPS = {s["name"]: s for s in config["bench"] + config["maxbatch"]}
TRAIN_RUNS = {r["name"]: r for r in config["train"]}

# Result files: one per job, the only state of the workflow.
BENCH = "results/bench/{sweep}/{model}/s{image_size}_b{batch_size}/{algorithm}.json"
MAXBATCH = "results/maxbatch/{sweep}/{model}/s{image_size}/{algorithm}.json"
COMPLEXITY_CSV = "results/complexity/{model}_s{image_size}.csv"
COMPLEXITY_MD = "results/complexity/{model}_s{image_size}.md"
TRAIN = "results/train/{run}/{algorithm}_eps{epsilon}.json"
TABLES = "results/tables"
FIGURES = "figures"
REPRODUCTION = "paper/reproduction.md"
REPORTED = str(REPO / "paper" / "reported.csv")

wildcard_constraints:
    sweep=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    run=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    model=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    algorithm=r"[a-z_]+",
    image_size=r"\d+",
    batch_size=r"\d+",
    epsilon=r"\d+(\.\d+)?|inf",


def dpbench_command():
    """How a job calls this checkout's dpbench: the interpreter running Snakemake (a venv), or the
    job's conda environment with --software-deployment-method conda; PYTHONPATH points at the
    checkout, so both run the same code."""
    if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method:
        python = "python"
    else:
        python = shlex.quote(sys.executable)
    return f"PYTHONPATH={shlex.quote(str(REPO))}${{PYTHONPATH:+:$PYTHONPATH}} {python} -m dpbench"


DPBENCH = dpbench_command()
CONDA_ENV = "../../envs/dpbench.yaml"
GPUS = (1 if config["device"].startswith("cuda") else 0) if config["gpus_per_job"] == "auto" else config["gpus_per_job"]

# One GPU, one measuring job: on CUDA every measuring/training job takes a `device_slot`, of which
# profiles/default offers one per machine, so that two timing jobs never share the GPU. On the CPU
# the cores are the device: a job takes `threads` cores and Snakemake never oversubscribes --cores
# (threads = cores gives every timing job the whole CPU). A cluster executor (SLURM: --jobs N,
# Snakemake's own sign of cluster submission) gives every job its own allocation: no limit there.
DEVICE_SLOTS = 1 if config["device"].startswith("cuda") else 0
if workflow.nodes is not None:
    workflow.global_resources["device_slot"] = None


def stage_resources(stage):
    """runtime (minutes) and mem_mb of one stage, from the config."""
    return config["resources"][stage]


def fmt_epsilon(epsilon):
    """The epsilon as it appears in file names: 1, 2, 2.93; inf for a non-private run."""
    return f"{float(epsilon):g}"


def train_keys(run):
    """(algorithm, epsilon) of every job of a train entry: nonprivate once at ε = inf, the others per ε."""
    keys = [(a, fmt_epsilon(e)) for a, e in product(run["algorithms"], run.get("epsilons", [])) if a != "nonprivate"]
    return keys + [("nonprivate", "inf")] * ("nonprivate" in run["algorithms"])


def train_checkpoint(wildcards):
    """The run's checkpoint, named after a hash of everything that defines the run: a killed job
    resumes from it (--resume), a changed config starts afresh instead of hitting a foreign one."""
    identity = {"run": TRAIN_RUNS[wildcards.run], "device": config["device"], "seed": config["seed"],
                "algorithm": wildcards.algorithm, "epsilon": wildcards.epsilon}
    digest = hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    return f"results/train/{wildcards.run}/{wildcards.algorithm}_eps{wildcards.epsilon}.{digest}.ckpt.pt"


# ---------------------------------------------------------------- target lists


def bench_files():
    return [
        BENCH.format(sweep=s["name"], model=m, image_size=i, batch_size=b, algorithm=a)
        for s in config["bench"]
        for m, i, b, a in product(s["models"], s["image_sizes"], s["batch_sizes"], s["algorithms"])
    ]


def maxbatch_keys():
    return [
        dict(sweep=s["name"], model=m, image_size=i, algorithm=a)
        for s in config["maxbatch"]
        for m, i, a in product(s["models"], s["image_sizes"], s["algorithms"])
    ]


def maxbatch_files():
    return [MAXBATCH.format(**key) for key in maxbatch_keys()]


def bench_at_max_files(wildcards):
    """The throughput runs at each maximum batch size found; known once the maxbatch checkpoints ran."""
    files = []
    for key in maxbatch_keys():
        if not SWEEPS[key["sweep"]]["throughput"]:
            continue
        result = checkpoints.maxbatch.get(**key).output.json
        with open(result) as fh:
            batch_size = json.load(fh)["max_batch_size"]
        if batch_size > 0:
            files.append(BENCH.format(batch_size=batch_size, **key))
    return files


def complexity_files():
    return [
        COMPLEXITY_CSV.format(model=m, image_size=i)
        for c in config["complexity"]
        for m, i in product(c["models"], c["image_sizes"])
    ]


def train_files():
    return [
        TRAIN.format(run=r["name"], algorithm=a, epsilon=e)
        for r in config["train"]
        for a, e in train_keys(r)
    ]


# ---------------------------------------------------------------- command-line options of the rules
# (passed as params, so that a changed config value reruns the jobs it affects)


def device_options():
    return f"--device {config['device']} --seed {config['seed']}"


def bench_options(wildcards):
    sweep = SWEEPS[wildcards.sweep]
    return (f"--model {wildcards.model} --algorithm {wildcards.algorithm} --image-size {wildcards.image_size}"
            f" --batch-size {wildcards.batch_size} --num-classes {sweep['num_classes']} --steps {sweep['steps']}"
            f" --warmup {sweep['warmup']} --dtype {config['dtype']} {device_options()}")


def maxbatch_options(wildcards):
    sweep = SWEEPS[wildcards.sweep]
    budget = "" if sweep["memory_budget"] is None else f" --memory-budget {shlex.quote(str(sweep['memory_budget']))}"
    return (f"--model {wildcards.model} --algorithm {wildcards.algorithm} --image-size {wildcards.image_size}"
            f" --num-classes {sweep['num_classes']}{budget} --start {sweep['start']} --limit {sweep['limit']}"
            f" --tolerance {sweep['tolerance']} --dtype {config['dtype']} {device_options()}")


def train_options(wildcards):
    """The run's model, data and extra `dpbench train` options (true -> --flag, false -> --no-flag)."""
    run = TRAIN_RUNS[wildcards.run]
    words = ["--model", run["model"], "--dataset", run["dataset"], "--algorithm", wildcards.algorithm]
    if wildcards.epsilon != "inf":
        words += ["--epsilon", wildcards.epsilon]
    for key, value in run["options"].items():
        if isinstance(value, bool):
            words.append(f"--{key}" if value else f"--no-{key}")
        elif isinstance(value, list):
            words += [f"--{key}", *map(str, value)]
        else:
            words += [f"--{key}", str(value)]
    return f"{shlex.join(words)} {device_options()}"


# The tables, figures and the reproduction report that this config produces (a stage switched off
# in the config produces no table and no figure).
TABLE_NAMES = {
    "bench": ["throughput_memory", "table4"],
    "maxbatch": ["maxbatch"],
    "train": ["accuracy"],
    "complexity": ["complexity_totals"],
}
FIGURE_NAMES = {
    "bench": ["fig4_memory_time_scatter", "throughput_vs_batch"],
    "maxbatch": ["fig3_maxbatch_throughput"],
    "train": ["accuracy_vs_epsilon"],
    "complexity": ["layerwise_choice"],
}


def active_stages():
    return [stage for stage in ("bench", "maxbatch", "train", "complexity") if config[stage]]


def table_path(name, ext):
    return f"{TABLES}/{name}.{ext}"


def table_names():
    """Every CSV table of this config (complexity_layers has no Markdown version: it is long)."""
    names = [n for stage in active_stages() for n in TABLE_NAMES[stage]]
    return names + (["complexity_layers"] if config["complexity"] else [])


def table_files(ext):
    names = table_names() if ext == "csv" else [n for n in table_names() if n != "complexity_layers"]
    return [table_path(n, ext) for n in names]


def table_reports():
    """The CSV tables, each marked for `snakemake --report` with its caption in workflow/report/."""
    return [report(table_path(name, "csv"), caption=f"../report/table_{name}.rst", category="Tables")
            for name in table_names()]


def figure_reports():
    """The PNG figures for `snakemake --report`, each with its caption in workflow/report/."""
    return [report(f, caption=f"../report/{Path(f).stem}.rst", category="Figures") for f in figure_files("png")]


def figure_files(ext):
    return [f"{FIGURES}/{n}.{ext}" for stage in active_stages() for n in FIGURE_NAMES[stage]]


def table_options():
    """The `--<table> FILE` options of the figures and report commands: the tables this config produces."""
    stage_of = {"throughput_memory": "bench", "maxbatch": "maxbatch", "accuracy": "train",
                "complexity_layers": "complexity"}
    return " ".join(f"--{name.replace('_', '-')} {table_path(name, 'csv')}"
                    for name, stage in stage_of.items() if config[stage])
