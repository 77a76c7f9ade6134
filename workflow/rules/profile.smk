"""torch.profiler view of one training step per algorithm (`dpbench profile`): where the time goes,
region by region and operator by operator (the profiler section of paper/performance.md)."""


rule profile:
    input:
        previous=profile_previous,
    output:
        json=PROFILE,
    log:
        "logs/profile/{model}_s{image_size}_b{batch_size}/{algorithm}.log",
    params:
        dpbench=DPBENCH,
        options=profile_options,
        record=profile_record,
    group:
        profile_group
    retries: RETRIES
    threads: config["threads"]
    resources:
        **attempt_resources("bench"),
        gpu=GPUS,
        device_slot=DEVICE_SLOTS,
    conda:
        CONDA_ENV
    shell:
        "OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads} " + guarded("profile") + " profile {params.options}"
        " --threads {threads} --out {output.json} > {log} 2>&1"
