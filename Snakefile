# dpbench: DP-SGD clipping algorithms benchmarked end to end.
#   snakemake --cores 2                                            the embedded CPU default (minutes)
#   snakemake --profile slurm --configfile config/paper.yaml       the paper's GPU sweep on a SLURM cluster
# See README.md ("The pipeline").

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/default.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/perf_common.smk"
include: "workflow/rules/bench.smk"
include: "workflow/rules/maxbatch.smk"
include: "workflow/rules/complexity.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/profile.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/perf.smk"
include: "workflow/rules/failures.smk"


localrules:
    all,


onerror:
    aggregate_after_failure()


rule all:
    input:
        force_rerun_of_failures,
        table_files("csv"),
        table_files("md"),
        figure_files("png"),
        figure_files("pdf"),
        reproduction_files(),
        performance_files(),
    default_target: True
