"""Throughput and peak memory of one configuration per job (`dpbench bench`), run by `dpbench guard`
(a failure on the last attempt leaves a failure record). The jobs of one comparison group form one job
group, run one after the other (common.smk, "comparison groups")."""


rule bench:
    input:
        previous=bench_previous,
    output:
        json=BENCH,
    log:
        "logs/bench/{sweep}/{model}/s{image_size}_b{batch_size}/{algorithm}.log",
    params:
        dpbench=DPBENCH,
        options=bench_options,
        record=bench_record,
    group:
        bench_group
    retries: RETRIES
    threads: bench_threads
    resources:
        **attempt_resources("bench"),
        gpu=bench_gpus,
        device_slot=DEVICE_SLOTS,
    conda:
        CONDA_ENV
    shell:
        "OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads} " + guarded("bench") +
        " bench {params.options} --threads {threads} --out {output.json} > {log} 2>&1"
