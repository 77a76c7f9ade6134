"""Configuration checks, result paths and the sweep expansions shared by every rule file."""

import hashlib
import json
import os
import re
import shlex
import sys
from itertools import product
from pathlib import Path

from snakemake.utils import validate
from snakemake_interface_executor_plugins.settings import DeploymentMethod

validate(config, schema="../schemas/config.schema.yaml")

REPO = Path(workflow.basedir)
sys.path.insert(0, str(REPO))  # dpbench.failures: the format of failure records, read below
from dpbench.failures import is_failure_file


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
BENCH_SWEEPS = {s["name"] for s in config["bench"]}
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

RUN_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]*"

wildcard_constraints:
    sweep=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    run=RUN_NAME,
    model=r"(timm:)?[A-Za-z0-9][A-Za-z0-9_.-]*",
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


# Retries: a measuring job that fails (crash, out of time, killed, lost node) is retried up to
# `retries` times, each attempt with the stage's runtime and mem_mb times the attempt number; the
# last attempt writes a failure record where the result belongs (`dpbench guard`), so that the
# tables and reports are built and list it. The next invocation reruns exactly those (see
# `force_rerun_of_failures` below).
RETRIES = config["retries"]
ATTEMPTS = RETRIES + 1


def grown(stage, key):
    """runtime or mem_mb of the stage for an attempt: the config's value times the attempt number."""
    base = stage_resources(stage)[key]
    return lambda wildcards, attempt: base * attempt


def this_attempt(wildcards, attempt):
    """The attempt number, as a resource (resources are no rerun trigger; params would be)."""
    return attempt


def attempt_resources(stage):
    """runtime and mem_mb growing with the attempt, the attempt and the number of attempts: resources,
    so that changing `retries` or retrying reruns nothing that finished."""
    return dict(runtime=grown(stage, "runtime"), mem_mb=grown(stage, "mem_mb"), attempt=this_attempt,
                attempts=ATTEMPTS)


# ---------------------------------------------------------------- several ranks per job
# A bench sweep's `nproc` ranks run inside one job on one node (`dpbench bench --nproc`: torchrun, each
# rank its own batch); a train entry's `ranks` over `nodes` run as the srun tasks of one SLURM job, or
# under torchrun on this machine outside SLURM (`dpbench guard --ranks`, which picks the launcher when the
# job runs: Snakemake formats the command inside the job, where it cannot tell that it is on a cluster).
# `threads` stays the CPUs of one rank; a 1-rank job asks for what it always did.

for _sweep in config["bench"]:
    if _sweep["nproc"] > 1 and _sweep.get("memory_budget") is not None:
        raise ValueError(f"config: bench sweep {_sweep['name']!r} has nproc {_sweep['nproc']} and a memory_budget; "
                         "a budget applies to one process")
for _run in config["train"]:
    if _run["nodes"] > _run["ranks"]:
        raise ValueError(f"config: train run {_run['name']!r} puts {_run['ranks']} ranks on {_run['nodes']} nodes; "
                         "nodes must be at most ranks")
    if _run["nodes"] > 1 and workflow.nodes is None and not os.environ.get("SLURM_JOB_ID"):
        raise ValueError(f"config: train run {_run['name']!r} asks for {_run['nodes']} nodes, which needs SLURM "
                         "(snakemake --profile slurm); on one machine set nodes: 1")

SCALING = any(s["nproc"] > 1 for s in config["bench"])  # the scaling table of the tables rule
MULTI_RANK_RUNS = [r["name"] for r in config["train"] if r["ranks"] > 1]


def bench_nproc(wildcards):
    """Ranks of one bench run (1 for the throughput runs of maxbatch sweeps)."""
    return SWEEPS[wildcards.sweep].get("nproc", 1)


def bench_threads(wildcards):
    """CPUs of a bench job: threads per rank times its ranks (`dpbench bench --nproc W --threads T` gives
    each rank T / W threads)."""
    return config["threads"] * bench_nproc(wildcards)


def bench_gpus(wildcards):
    return GPUS * bench_nproc(wildcards)


def train_threads(wildcards):
    """CPUs of a train job: threads per rank times its ranks."""
    return config["threads"] * TRAIN_RUNS[wildcards.run]["ranks"]


def run_pattern(names, inside):
    """A wildcard constraint for `run`: one of `names` (inside) or any other name (not inside)."""
    alternatives = "|".join(re.escape(n) for n in names) or "(?!)"
    return f"(?:{alternatives})" if inside else f"(?!(?:{alternatives})(?![A-Za-z0-9_.-])){RUN_NAME}"


def train_launch(wildcards):
    """`dpbench guard` options that start a train run on its ranks (rule train_ranks)."""
    run = TRAIN_RUNS[wildcards.run]
    return (f"--ranks {run['ranks']} --nodes {run['nodes']} --cpus-per-rank {config['threads']}"
            f" --gpus-per-rank {min(GPUS, 1)}")


def rank_resources():
    """SLURM resources of a multi-rank train job (rule train_ranks): `ranks` tasks (the plugin's `mpi`
    resource: the job's command runs in the batch step and starts the tasks itself, with srun), over
    `nodes` nodes, `threads` CPUs per task, on CUDA one GPU per task; memory per node grows with the ranks
    each node holds."""
    def ranks(wildcards):
        return TRAIN_RUNS[wildcards.run]["ranks"]

    def nodes(wildcards):
        return TRAIN_RUNS[wildcards.run]["nodes"]

    def mem_mb(wildcards, attempt):
        run = TRAIN_RUNS[wildcards.run]
        return stage_resources("train")["mem_mb"] * attempt * -(-run["ranks"] // run["nodes"])

    gpus = dict(gpu=lambda wildcards: GPUS * ranks(wildcards), tasks_per_gpu=1) if GPUS else dict(gpu=0)
    return dict(attempt_resources("train"), mem_mb=mem_mb, tasks=ranks, nodes=nodes, mpi="srun",
                cpus_per_task=config["threads"], **gpus)


def guarded(kind, options=""):
    """The `dpbench guard` prefix of a measuring command (see dpbench/commands/guard.py): the
    subcommand after it writes the result; a failure on the last attempt writes a record instead.
    The rule has params dpbench (DPBENCH) and record (the configuration as JSON); `options` are more
    guard options (a train run's ranks). Without options the text is that of earlier versions: a changed
    command makes Snakemake rerun finished results."""
    return (f"{{params.dpbench}} guard --kind {kind} --out {{output.json}} --config {{params.record:q}}"
            f" --attempt {{resources.attempt}} --attempts {{resources.attempts}} --time-limit {{resources.runtime}}"
            f" --log {{log}}{' ' + options if options else ''} --")


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
    run = TRAIN_RUNS[wildcards.run]
    if run["ranks"] == 1:  # the identity of earlier versions, which had no ranks
        run = {k: v for k, v in run.items() if k not in ("ranks", "nodes")}
    identity = {"run": run, "device": config["device"], "seed": config["seed"],
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


def max_batch_size(key):
    """The maximum batch size a finished maxbatch search found (0 for none, or for a failure record);
    asking makes the caller wait for that checkpoint."""
    with open(checkpoints.maxbatch.get(**key).output.json) as fh:
        result = json.load(fh)
    return result.get("max_batch_size") or 0


def bench_at_max_files(wildcards):
    """The throughput runs at each maximum batch size found; known once the maxbatch checkpoints ran."""
    files = []
    for key in maxbatch_keys():
        if SWEEPS[key["sweep"]]["throughput"]:
            batch_size = max_batch_size(key)
            if batch_size > 0:
                files.append(BENCH.format(batch_size=batch_size, **key))
    return files


def at_max_file_on_disk(key):
    """The throughput run at the maximum batch size of the search `key`, read from its result on disk (no
    checkpoint to wait for); None while the search has not finished, failed or found no batch size."""
    path = Path(MAXBATCH.format(**key))
    if not path.exists() or is_failure_file(path):
        return None
    batch_size = json.loads(path.read_text()).get("max_batch_size") or 0
    return BENCH.format(batch_size=batch_size, **key) if batch_size > 0 else None


def at_max_files_so_far():
    """The throughput runs at the maximum batch sizes of the searches finished so far (read at parse time)."""
    files = [at_max_file_on_disk(key) for key in maxbatch_keys() if SWEEPS[key["sweep"]]["throughput"]]
    return [f for f in files if f]


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


def budget_option(sweep, throughput_at_max=False):
    """--memory-budget of a sweep's jobs. The throughput runs at a maximum batch size keep their search's
    budget on CUDA, where the allocator's cap is exact; on the CPU the resident set varies by a few MB
    from run to run and would turn the batch size that fitted into a spurious out-of-memory result."""
    budget = sweep.get("memory_budget")
    if throughput_at_max and not config["device"].startswith("cuda"):
        budget = None
    return "" if budget is None else f" --memory-budget {shlex.quote(str(budget))}"


def nproc_option(wildcards):
    """--nproc of a bench run (none for one rank)."""
    nproc = bench_nproc(wildcards)
    return f" --nproc {nproc}" if nproc > 1 else ""


def bench_options(wildcards):
    sweep = SWEEPS[wildcards.sweep]
    return (f"--model {wildcards.model} --algorithm {wildcards.algorithm} --image-size {wildcards.image_size}"
            f" --batch-size {wildcards.batch_size} --num-classes {sweep['num_classes']}"
            f"{budget_option(sweep, throughput_at_max=wildcards.sweep not in BENCH_SWEEPS)}"
            f"{nproc_option(wildcards)}"
            f" --steps {sweep['steps']} --warmup {sweep['warmup']} --dtype {config['dtype']} {device_options()}")


def maxbatch_options(wildcards):
    sweep = SWEEPS[wildcards.sweep]
    return (f"--model {wildcards.model} --algorithm {wildcards.algorithm} --image-size {wildcards.image_size}"
            f" --num-classes {sweep['num_classes']}{budget_option(sweep)} --start {sweep['start']} --limit {sweep['limit']}"
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
    """Every CSV table of this config (complexity_layers has no Markdown version: it is long); failures
    lists the configurations left with a failure record, whenever anything is measured."""
    names = [n for stage in active_stages() for n in TABLE_NAMES[stage]]
    names += ["scaling"] if SCALING else []
    measured = any(config[stage] for stage in ("bench", "maxbatch", "train"))
    return names + (["complexity_layers"] if config["complexity"] else []) + (["failures"] if measured else [])


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


def table_options(failures=False):
    """The `--<table> FILE` options of the figures and report commands: the tables this config produces
    (with failures: also the failed configurations, for the report)."""
    stage_of = {"throughput_memory": "bench", "maxbatch": "maxbatch", "accuracy": "train",
                "complexity_layers": "complexity"}
    names = [name for name, stage in stage_of.items() if config[stage]]
    names += ["failures"] if failures and "failures" in table_names() else []
    return " ".join(f"--{name.replace('_', '-')} {table_path(name, 'csv')}" for name in names)


# ---------------------------------------------------------------- comparison groups
# One job group (on SLURM: one job, one GPU) per comparison group: a bench sweep's (model, image size,
# batch size), a maxbatch sweep's (model, image size) for its searches and again for its throughput
# runs at the maximum batch sizes. Inside a group the algorithms run one after the other, each in its
# own process, chained by an `ancient` input on the previous one's result (the group is one connected
# piece of the DAG, so Snakemake needs no --group-components; `ancient` keeps a rerun of one result
# from rerunning the rest). The order alternates between consecutive groups of a sweep (forwards,
# backwards, ...), so that a drift of the node over a group's run cancels across groups.


def group_position(sweep, *key):
    """Index of the (model, image size[, batch size]) key among the sweep's groups."""
    lists = [sweep["models"], sweep["image_sizes"]] + ([sweep["batch_sizes"]] if len(key) == 3 else [])
    return list(product(*lists)).index(key)


def algorithm_order(sweep, position):
    """The order of the sweep's algorithms in its group number `position`: forwards, backwards, ..."""
    algorithms = list(sweep["algorithms"])
    return algorithms if position % 2 == 0 else algorithms[::-1]


def _previous(order, algorithm):
    return order[: order.index(algorithm)][::-1]


def bench_group(wildcards):
    if wildcards.sweep in BENCH_SWEEPS:
        return f"bench.{wildcards.sweep}.{wildcards.model}.s{wildcards.image_size}.b{wildcards.batch_size}"
    return f"at_max.{wildcards.sweep}.{wildcards.model}.s{wildcards.image_size}"


def maxbatch_group(wildcards):
    return f"maxbatch.{wildcards.sweep}.{wildcards.model}.s{wildcards.image_size}"


def chain_link(previous, earlier_and_own, rule):
    """The input that runs a job of `rule` after `previous` in its group. Ancient, so that a rerun of
    `previous` reruns nothing after it; but plain from the group's first failure record or forced result
    (-R, -F) on (`earlier_and_own`: the group's result files up to this job's). Snakemake 9.27 does not
    evaluate a job below one it reruns, not even a forced one, unless an input from a rerun job is not
    ancient. With ancient links a group killed from outside (every result a failure record) would redo
    one algorithm per invocation, and `-R bench` the first algorithm of each group; so the failed or
    forced jobs and the ones after them in their group rerun, those before them not. Ancient or not, the
    file is the same: Snakemake sees no change of the input set."""
    redo = any(is_failure_file(f) for f in earlier_and_own) or forced(rule, earlier_and_own)
    return previous if redo else ancient(previous)


def forced(rule, files):
    """Whether the command line forces `rule` (-R rule, -F) or one of `files` (-R file)."""
    dag = workflow.dag
    if dag is None:
        return False
    return rule in {r.name for r in dag.forcerules} or not dag.forcefiles.isdisjoint(files)


def bench_previous(wildcards):
    """The result measured just before this one in its group (none for the first)."""
    sweep = SWEEPS[wildcards.sweep]
    size = int(wildcards.image_size)
    own = BENCH.format(**wildcards)
    if wildcards.sweep in BENCH_SWEEPS:
        order = algorithm_order(sweep, group_position(sweep, wildcards.model, size, int(wildcards.batch_size)))
        earlier = [BENCH.format(**{**wildcards, "algorithm": a}) for a in _previous(order, wildcards.algorithm)]
        return [chain_link(earlier[0], earlier + [own], "bench")] if earlier else []
    # a throughput run at a maximum batch size: after the nearest earlier algorithm that has one
    order = algorithm_order(sweep, group_position(sweep, wildcards.model, size))
    for algorithm in _previous(order, wildcards.algorithm):
        batch_size = max_batch_size(dict(sweep=wildcards.sweep, model=wildcards.model, image_size=size,
                                         algorithm=algorithm))
        if batch_size:
            previous = BENCH.format(sweep=wildcards.sweep, model=wildcards.model, image_size=size,
                                    batch_size=batch_size, algorithm=algorithm)
            return [chain_link(previous, at_max_files_before(wildcards, order) + [own], "bench")]
    return []


def at_max_files_before(wildcards, order):
    """The throughput runs at the maximum batch sizes found so far of the algorithms before this one in its
    at_max group."""
    files = [at_max_file_on_disk(dict(sweep=wildcards.sweep, model=wildcards.model, image_size=wildcards.image_size,
                                      algorithm=algorithm)) for algorithm in _previous(order, wildcards.algorithm)]
    return [f for f in files if f]


def maxbatch_previous(wildcards):
    """The search run just before this one in its group (none for the first)."""
    sweep = SWEEPS[wildcards.sweep]
    order = algorithm_order(sweep, group_position(sweep, wildcards.model, int(wildcards.image_size)))
    earlier = [MAXBATCH.format(**{**wildcards, "algorithm": a}) for a in _previous(order, wildcards.algorithm)]
    return [chain_link(earlier[0], earlier + [MAXBATCH.format(**wildcards)], "maxbatch")] if earlier else []


# ---------------------------------------------------------------- what a failure record names


def measured_config(wildcards, extra=None):
    """The configuration of a measuring job as JSON, copied into its failure record."""
    extra = extra or {}
    numbers = {"image_size", "batch_size"}
    fields = {k: int(v) if k in numbers else v for k, v in dict(wildcards).items()}
    return json.dumps({**fields, **extra, "device": config["device"], "dtype": config["dtype"],
                       "seed": config["seed"]})


def bench_record(wildcards):
    sweep = SWEEPS[wildcards.sweep]
    nproc = bench_nproc(wildcards)
    ranks = {"nproc": nproc} if nproc > 1 else {}  # 1 rank: the record of earlier versions
    return measured_config(wildcards, {"num_classes": sweep["num_classes"], "memory_budget": sweep.get("memory_budget"),
                                       **ranks})


def maxbatch_record(wildcards):
    sweep = SWEEPS[wildcards.sweep]
    return measured_config(wildcards, {"num_classes": sweep["num_classes"], "memory_budget": sweep["memory_budget"]})


def train_record(wildcards):
    run = TRAIN_RUNS[wildcards.run]
    ranks = {"ranks": run["ranks"], "nodes": run["nodes"]} if run["ranks"] > 1 else {}  # as bench_record
    return measured_config(wildcards, {"model": run["model"], "dataset": run["dataset"], **ranks})


def profile_record(wildcards):
    return measured_config(wildcards)


# ---------------------------------------------------------------- rerunning failures


def force_rerun_of_failures(wildcards=None):
    """Every result of this config that is a failure record is rerun, as with `-R FILE`, so that the
    next invocation of the same command redoes exactly the failed configurations (and the missing ones,
    which Snakemake redoes anyway). An input function of rules all and tables that adds no input: it
    runs while Snakemake builds its DAG, whose forced files it extends (the command line's -R is not
    known yet when the Snakefile is read). Only in the main Snakemake process, not inside a cluster job."""
    dag = workflow.dag
    if workflow.is_main_process and dag is not None:
        candidates = bench_files() + maxbatch_files() + train_files() + profile_files() + at_max_files_so_far()
        dag.forcefiles.update(path for path in candidates if is_failure_file(path))
    return []
