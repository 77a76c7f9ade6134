"""Largest batch size within a memory budget (`dpbench maxbatch`, run by `dpbench guard`); a checkpoint,
because the throughput run at that batch size (Figure 3, right) is only known once it has finished.
The searches of one (sweep, model, image size) form one job group, one after the other (common.smk)."""


checkpoint maxbatch:
    input:
        previous=maxbatch_previous,
    output:
        json=MAXBATCH,
    log:
        "logs/maxbatch/{sweep}/{model}/s{image_size}/{algorithm}.log",
    params:
        dpbench=DPBENCH,
        options=maxbatch_options,
        record=maxbatch_record,
    group:
        maxbatch_group
    retries: RETRIES
    threads: config["threads"]
    resources:
        **attempt_resources("maxbatch"),
        gpu=GPUS,
        device_slot=DEVICE_SLOTS,
    conda:
        CONDA_ENV
    shell:
        "OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads} " + guarded("maxbatch") +
        " maxbatch {params.options} --threads {threads} --out {output.json} > {log} 2>&1"
