"""Largest batch size within a memory budget (`dpbench maxbatch`); a checkpoint, because the
throughput run at that batch size (Figure 3, right) is only known once it has finished."""


checkpoint maxbatch:
    output:
        json=MAXBATCH,
    log:
        "logs/maxbatch/{sweep}/{model}/s{image_size}/{algorithm}.log",
    params:
        dpbench=DPBENCH,
        options=maxbatch_options,
    threads: config["threads"]
    resources:
        runtime=stage_resources("maxbatch")["runtime"],
        mem_mb=stage_resources("maxbatch")["mem_mb"],
        gpu=GPUS,
        device_slot=DEVICE_SLOTS,
    conda:
        CONDA_ENV
    shell:
        "OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads} {params.dpbench} maxbatch {params.options}"
        " --threads {threads} --out {output.json} > {log} 2>&1"
