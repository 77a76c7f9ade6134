"""DP training of one model with one algorithm to one target epsilon (`dpbench train`)."""


rule train:
    output:
        json=TRAIN,
    log:
        "logs/train/{run}/{algorithm}_eps{epsilon}.log",
    params:
        dpbench=DPBENCH,
        options=train_options,
        checkpoint=train_checkpoint,
    threads: config["threads"]
    resources:
        runtime=stage_resources("train")["runtime"],
        mem_mb=stage_resources("train")["mem_mb"],
        gpu=GPUS,
        device_slot=DEVICE_SLOTS,
    conda:
        CONDA_ENV
    shell:
        # HF_HUB_OFFLINE: a job never downloads weights (README, "When a run touches the network")
        "HF_HUB_OFFLINE=1 OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads} {params.dpbench} train {params.options}"
        " --threads {threads} --checkpoint {params.checkpoint} --resume --out {output.json} > {log} 2>&1"
