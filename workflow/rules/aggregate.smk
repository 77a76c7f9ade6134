"""Tables (pandas), figures (seaborn) and the paper-reproduction report, built from the result files.
They take seconds and no GPU, so on a cluster they run where Snakemake runs, not as SLURM jobs."""


localrules:
    tables,
    figures,
    reproduction_report,


rule tables:
    input:
        rerun_failures=force_rerun_of_failures,
        bench=bench_files(),
        maxbatch=maxbatch_files(),
        at_max=bench_at_max_files,
        train=train_files(),
        complexity=complexity_files(),
    output:
        table_reports(),
        table_files("md"),
    log:
        "logs/tables.log",
    params:
        dpbench=DPBENCH,
        epoch_images=config["report"]["epoch_images"],
        scaling="--scaling" if SCALING else "",
        out_dir=lambda wildcards, output: Path(output[0]).parent,
    threads: 1
    resources:
        runtime=stage_resources("aggregate")["runtime"],
        mem_mb=stage_resources("aggregate")["mem_mb"],
    conda:
        CONDA_ENV
    shell:
        "{params.dpbench} tables --bench {input.bench} --maxbatch {input.maxbatch} --bench-at-max {input.at_max}"
        " --train {input.train} --complexity {input.complexity} --epoch-images {params.epoch_images} "
        "{params.scaling} --out-dir {params.out_dir} > {log} 2>&1"


rule figures:
    input:
        table_files("csv"),
    output:
        figure_reports(),
        figure_files("pdf"),
    log:
        "logs/figures.log",
    params:
        dpbench=DPBENCH,
        tables=table_options(failures=True),
        dp_algorithm=config["report"]["dp_algorithm"],
        out_dir=lambda wildcards, output: Path(output[0]).parent,
    threads: 1
    resources:
        runtime=stage_resources("aggregate")["runtime"],
        mem_mb=stage_resources("aggregate")["mem_mb"],
    conda:
        CONDA_ENV
    shell:
        "MPLBACKEND=Agg {params.dpbench} figures {params.tables} --dp-algorithm {params.dp_algorithm}"
        " --out-dir {params.out_dir} > {log} 2>&1"


rule reproduction_report:
    input:
        table_files("csv"),
        reported=REPORTED,
    output:
        report(REPRODUCTION, caption="../report/reproduction.rst", category="Reproduction"),
    log:
        "logs/reproduction_report.log",
    params:
        dpbench=DPBENCH,
        tables=table_options(failures=True),
        dp_algorithm=config["report"]["dp_algorithm"],
    threads: 1
    resources:
        runtime=stage_resources("aggregate")["runtime"],
        mem_mb=stage_resources("aggregate")["mem_mb"],
    conda:
        CONDA_ENV
    shell:
        "{params.dpbench} report --reported {input.reported} {params.tables}"
        " --dp-algorithm {params.dp_algorithm} --out {output} > {log} 2>&1"
