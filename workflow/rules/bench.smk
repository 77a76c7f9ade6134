"""Throughput and peak memory of one configuration per job (`dpbench bench`)."""


rule bench:
    output:
        json=BENCH,
    log:
        "logs/bench/{sweep}/{model}/s{image_size}_b{batch_size}/{algorithm}.log",
    params:
        dpbench=DPBENCH,
        options=bench_options,
    threads: config["threads"]
    resources:
        runtime=stage_resources("bench")["runtime"],
        mem_mb=stage_resources("bench")["mem_mb"],
        gpu=GPUS,
        device_slot=DEVICE_SLOTS,
    conda:
        CONDA_ENV
    shell:
        "OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads} {params.dpbench} bench {params.options}"
        " --threads {threads} --out {output.json} > {log} 2>&1"
