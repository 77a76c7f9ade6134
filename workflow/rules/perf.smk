"""paper/performance.md (`dpbench perf-report`): the CNN performance targets measured in this run, the
committed before/after table and ratios over alternating runs (paper/perf_before_after.csv,
paper/perf_ratios.csv, when they exist) and the profiler summary; or, where the config's `performance`
section says so, another report from other committed tables (config/vit_cpu.yaml: the vision
transformers', paper/vit_performance.md, `--layout vit`).
Seconds and no GPU: it runs where Snakemake runs."""


localrules:
    perf_report,


rule perf_report:
    input:
        bench=bench_files(),
        maxbatch=maxbatch_files(),
        profile=profile_files(),
        before_after=before_after_input,
        ratios=ratios_input,
        cost_model=cost_model_files(),
    output:
        report(PERFORMANCE, caption=PERFORMANCE_CAPTION, category="Performance"),
    log:
        "logs/perf_report.log",
    params:
        dpbench=DPBENCH,
        before_after=before_after_option,
        ratios=ratios_option,
        cost_model=cost_model_option,
        layout=layout_option(),
    threads: 1
    resources:
        runtime=stage_resources("aggregate")["runtime"],
        mem_mb=stage_resources("aggregate")["mem_mb"],
    conda:
        CONDA_ENV
    shell:
        "{params.dpbench} perf-report {params.layout} --bench {input.bench} --maxbatch {input.maxbatch}"
        " --profile {input.profile} {params.before_after} {params.ratios} {params.cost_model}"
        " --out {output} > {log} 2>&1"
