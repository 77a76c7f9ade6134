"""When a run ends with failed jobs: the measuring results they left missing get failure records, and
the tables, figures and reports are built all the same (`onerror`, at the end of the run).

A measuring job that fails inside its command leaves a failure record itself (`dpbench guard`). One that
is killed from outside on its last attempt (cancelled, over its SLURM time or memory limit, node lost)
leaves nothing, and the jobs after it in its group never run; Snakemake then skips the aggregation,
which needs every result. So after such a run every result this config asks for that is still missing
gets a failure record (kind killed), and Snakemake is run once more, only for the aggregation rules.
Those records, like every failure record, are rerun by the next invocation of the same command."""

import subprocess
import tempfile

import yaml
from snakemake.iocontainers import Wildcards

MISSING_REASON = ("no result: its job ended without one on its last attempt (cancelled, over its time or memory "
                  "limit, node lost), or it never ran (the job before it in its group, or the run, stopped first)")
AGGREGATION_RULES = ["tables", "figures", "reproduction_report", "perf_report", "all"]


def _wildcards(**values):
    return Wildcards(fromdict={k: str(v) for k, v in values.items()})


def expected_results():
    """(result path, kind, its configuration as JSON) of every measuring job this config asks for so far
    (the throughput runs at a maximum batch size: for the searches that finished)."""
    for s in config["bench"]:
        for m, i, b, a in product(s["models"], s["image_sizes"], s["batch_sizes"], s["algorithms"]):
            wc = _wildcards(sweep=s["name"], model=m, image_size=i, batch_size=b, algorithm=a)
            yield BENCH.format(**wc), "bench", bench_record(wc)
    for key in maxbatch_keys():
        wc = _wildcards(**key)
        yield MAXBATCH.format(**wc), "maxbatch", maxbatch_record(wc)
    for path in at_max_files_so_far():
        yield path, "bench", None
    for r in config["train"]:
        for a, e in product(r["algorithms"], r["epsilons"]):
            wc = _wildcards(run=r["name"], algorithm=a, epsilon=fmt_epsilon(e))
            yield TRAIN.format(**wc), "train", train_record(wc)
    for _, m, i, b, a in profile_entries():
        wc = _wildcards(model=m, image_size=i, batch_size=b, algorithm=a)
        yield PROFILE.format(**wc), "profile", profile_record(wc)


def log_of(result):
    """The job log of a result: logs/ + its path below results/, .log for .json."""
    return "logs/" + str(Path(result).relative_to("results").with_suffix(".log"))


def _last_line(path):
    try:
        lines = [line.strip() for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:500] if lines else ""


def record_missing_results():
    """A failure record (kind killed) for every expected result that is missing; their paths."""
    from dpbench.failures import failure_record
    from dpbench.results import write_json_atomic

    written = []
    for path, kind, record in expected_results():
        if Path(path).exists():
            continue
        configuration = json.loads(record) if record else {"result": path}
        environment = {"device": config["device"], "device_name": None, "recorded_by": "the workflow (onerror)"}
        write_json_atomic(path, failure_record(kind, configuration, "killed", MISSING_REASON, _last_line(log_of(path)),
                                               None, ATTEMPTS, ATTEMPTS, log_of(path), environment))
        written.append(path)
    return written


def aggregate_after_failure():
    """Record the missing results, then run Snakemake again for the aggregation rules only (locally,
    with this run's whole config), so that tables, figures and reports exist and list every failure."""
    if os.environ.get("DPBENCH_AGGREGATING") or not (config["bench"] or config["maxbatch"] or config["train"]):
        return
    written = record_missing_results()
    print(f"dpbench: {len(written)} missing result(s) recorded as failed; building the tables, figures and "
          "reports from the rest", file=sys.stderr)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="dpbench-config-", delete=False) as fh:
        yaml.safe_dump(json.loads(json.dumps(config)), fh)
    command = [sys.executable, "-m", "snakemake", "-s", workflow.main_snakefile, "--directory", os.getcwd(),
               "--configfile", fh.name, "--cores", "1", "--nolock", "--allowed-rules", *AGGREGATION_RULES]
    subprocess.run(command, env={**os.environ, "DPBENCH_AGGREGATING": "1"}, check=False)
    os.unlink(fh.name)
