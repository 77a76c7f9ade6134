"""Tables (pandas), figures (seaborn) and the paper-reproduction report, built from the result files.
They take seconds and no GPU, so on a cluster they run where Snakemake runs, not as SLURM jobs."""

localrules:
    tables,
    figures,
    reproduction_report,


def table_reports():
    """The CSV tables, each marked for `snakemake --report` with its caption in workflow/report/."""
    return [report(table_path(name, "csv"), caption=f"../report/table_{name}.rst", category="Tables")
            for name in table_names()]


rule tables:
    input:
        bench=bench_files(),
        maxbatch=maxbatch_files(),
        at_max=bench_at_max_files,
        train=train_files(),
        complexity=complexity_files("csv"),
    output:
        table_reports(),
        table_files("md"),
    log:
        "logs/tables.log",
    params:
        epoch_images=config["report"]["epoch_images"],
    threads: 1
    resources:
        runtime=stage_resources("aggregate")["runtime"],
        mem_mb=stage_resources("aggregate")["mem_mb"],
    conda:
        CONDA_ENV
    shell:
        "{DPBENCH} tables --bench {input.bench} --maxbatch {input.maxbatch} --bench-at-max {input.at_max}"
        " --train {input.train} --complexity {input.complexity} --epoch-images {params.epoch_images}"
        " --out-dir {TABLES} > {log} 2>&1"


rule figures:
    input:
        table_files("csv"),
    output:
        [report(f, caption=f"../report/{Path(f).stem}.rst", category="Figures") for f in figure_files("png")],
        figure_files("pdf"),
    log:
        "logs/figures.log",
    params:
        tables=table_options(),
    threads: 1
    resources:
        runtime=stage_resources("aggregate")["runtime"],
        mem_mb=stage_resources("aggregate")["mem_mb"],
    conda:
        CONDA_ENV
    shell:
        "MPLBACKEND=Agg {DPBENCH} figures {params.tables} --dp-algorithm {config[report][dp_algorithm]}"
        " --out-dir {FIGURES} > {log} 2>&1"


rule reproduction_report:
    input:
        table_files("csv"),
        reported=REPORTED,
    output:
        report(REPRODUCTION, caption="../report/reproduction.rst", category="Reproduction"),
    log:
        "logs/reproduction_report.log",
    params:
        tables=table_options(),
    threads: 1
    resources:
        runtime=stage_resources("aggregate")["runtime"],
        mem_mb=stage_resources("aggregate")["mem_mb"],
    conda:
        CONDA_ENV
    shell:
        "{DPBENCH} report --reported {input.reported} {params.tables}"
        " --dp-algorithm {config[report][dp_algorithm]} --out {output} > {log} 2>&1"
